from lightning_modules.base import ClassificationModule, build_classifier
from lightning_modules.callbacks import PredictionWriter, ThroughputLogger
from lightning_modules.finetune import FineTuneModule

__all__ = [
    "ClassificationModule",
    "FineTuneModule",
    "PredictionWriter",
    "ThroughputLogger",
    "build_classifier",
]
