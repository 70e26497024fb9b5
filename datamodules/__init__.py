from datamodules.base import datamodule_from_config
from datamodules.errors import InputError
from datamodules.sequence import SequenceClassificationDataModule
from datamodules.token import TokenClassificationDataModule

__all__ = [
    "InputError",
    "datamodule_from_config",
    "SequenceClassificationDataModule",
    "TokenClassificationDataModule",
]
