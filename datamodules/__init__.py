"""The names recipes use (``class_path: datamodules.SequenceClassificationDataModule``), loaded on
first use (``datamodules.errors`` stays importable without torch)."""

from importlib import import_module

_WHERE = {
    "InputError": "datamodules.errors",
    "datamodule_from_config": "datamodules.from_config",
    "parse_overrides": "datamodules.from_config",
    "SequenceClassificationDataModule": "datamodules.sequence",
    "TokenClassificationDataModule": "datamodules.token",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
