from datamodules.errors import InputError
from datamodules.from_config import datamodule_from_config, parse_overrides
from datamodules.sequence import SequenceClassificationDataModule
from datamodules.token import TokenClassificationDataModule

__all__ = [
    "InputError",
    "datamodule_from_config",
    "parse_overrides",
    "SequenceClassificationDataModule",
    "TokenClassificationDataModule",
]
