"""The one exception type for bad user input (config, paths, data). The CLI prints its message as
a single ``error:`` line and exits with status 2; anything else is a bug and keeps its traceback."""


class InputError(ValueError):
    """Bad input: the message names the problem and the fix."""
