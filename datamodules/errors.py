"""The one exception type for bad user input (config, paths, data). The CLI prints its message as
a single ``error:`` line and exits with status 2; anything else is a bug and keeps its traceback."""


class InputError(ValueError):
    """Bad input: the message names the problem and the fix."""


def check_options(
    batch_size, eval_batch_size, max_length, num_workers, dataset, data_files, label_names
) -> None:
    """The data options that are wrong before any data is read: one line each."""
    for name, value, least in (
        ("batch_size", batch_size, 1),
        ("eval_batch_size", eval_batch_size, 1),
        ("max_length", max_length, 4),
        ("num_workers", num_workers, 0),
    ):
        if value is not None and value < least:
            raise InputError(f"data.{name} is {value}: it must be at least {least}")
    if dataset == "files" and not data_files:
        raise InputError("data.dataset is 'files' but data.data_files is empty: give split -> path pairs")
    repeated = sorted({n for n in label_names or [] if list(label_names).count(n) > 1})
    if repeated:
        raise InputError(f"data.label_names names {repeated} more than once: list each label once")
