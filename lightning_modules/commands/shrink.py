"""The ``shrink`` command: training through LightningCLI (``fit``, ``validate``, ``test``, ``predict``)
and the commands that act on what training wrote (``export``, ``benchmark``, ``prune-vocab``,
``classify``). Each command's ``--help`` lists its options."""

from __future__ import annotations

import sys
from importlib import import_module

COMMANDS = {  # name: (module, argument put in front, one-line help)
    "compress": (
        "lightning_modules.commands.compress",
        [],
        "the whole chain in one command: the fastest int8 model within an accuracy budget",
    ),
    "export": ("lightning_modules.commands.export", [], "ONNX folders (fp32 / int8), PTQ, hub upload"),
    "benchmark": ("lightning_modules.commands.benchmark", [], "accuracy, latency and size side by side"),
    "prune-vocab": (
        "lightning_modules.commands.export",
        ["prune-vocab"],
        "keep only the tokens the training split uses",
    ),
    "classify": ("lightning_modules.commands.classify", [], "label texts with a model or ONNX folder"),
    "seeds": ("lightning_modules.commands.seeds", [], "one stage over N seeds: test metrics as mean ± std"),
}
TRAINING = "fit, validate, test, predict: the stages (LightningCLI; shrink fit --help)"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "usage: shrink COMMAND ...\n\n  " + TRAINING + "\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        module, front, _ = COMMANDS[argv[0]]
        return import_module(module).main(front + argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
    import_module("lightning_modules.train.cli").main(argv)  # the training stack, loaded only for it


if __name__ == "__main__":
    main()
