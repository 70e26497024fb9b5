"""What the CLI says: the one-line form of input and config errors, and the data options in ``fit --help``."""

from __future__ import annotations

import inspect

from datamodules import SequenceClassificationDataModule, TokenClassificationDataModule
from datamodules.base import ClassificationDataModule
from datamodules.errors import InputError


def data_options() -> str:
    """The data modules' options for ``fit --help`` (subclass mode hides them behind ``--data.help``)."""
    names: dict[str, None] = {}
    for cls in (SequenceClassificationDataModule, TokenClassificationDataModule, ClassificationDataModule):
        params = inspect.signature(cls.__init__).parameters.values()
        names.update(
            dict.fromkeys(
                p.name
                for p in params
                if p.name != "self"
                and p.kind == p.KEYWORD_ONLY
                or p.kind == p.POSITIONAL_OR_KEYWORD
                and p.name != "self"
            )
        )
    return (
        "data options, set as --data.NAME VALUE (e.g. --data.data_files '{train: a.tsv, validation: b.tsv}'; "
        "each explained by --data.help SequenceClassificationDataModule or TokenClassificationDataModule): "
        + ", ".join(names)
    )


def input_error_in(error: BaseException | None) -> InputError | None:
    """The InputError behind ``error``: jsonargparse wraps errors raised while instantiating classes."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, InputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def config_error_line(message: str) -> str:
    """Condense a jsonargparse error (union subtypes, nested reasons) to the line that names the problem."""
    lines = list(dict.fromkeys(line.strip() for line in message.splitlines() if line.strip()))
    if not lines:
        return "invalid arguments"
    head, rest = lines[0], lines[1:]
    keywords = ("not accepted", "required", "nrecognized", "does not exist", "No such")
    specific = [line for line in rest if any(k in line for k in keywords)]
    if specific:
        return f"{head} {specific[0]}"
    inner = [line for line in rest if line.startswith("Parser key")]
    given = [line for line in rest if line.startswith("Given value:")]
    if inner and given:  # a value of the wrong type deep inside a class's arguments
        return f"{head} {inner[-1]} invalid value ({given[0]})"
    return head


def final_scores(stage: str, metrics: dict) -> str:
    """The last line of a fit: the model folder's validation scores (per-entity-type ones left to the card)."""
    shown = {k: float(v) for k, v in metrics.items() if k.count("/") == 1 and not k.endswith("loss")}
    scores = ", ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items()))
    return f"{stage} finished: {scores or 'no validation scores'} (the model folder's weights)"
