from datamodules.errors import InputError
from datamodules.sequence import SequenceClassificationDataModule
from datamodules.token import TokenClassificationDataModule

__all__ = ["InputError", "SequenceClassificationDataModule", "TokenClassificationDataModule"]
