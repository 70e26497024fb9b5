from lightning_modules import quiet  # noqa: F401  (first: before anything imports torchao)
from lightning_modules.base import ClassificationModule, build_classifier
from lightning_modules.callbacks import PredictionWriter, ThroughputLogger
from lightning_modules.distill import DistillationModule
from lightning_modules.finetune import FineTuneModule
from lightning_modules.prune import PruneModule
from lightning_modules.qat import QATModule
from lightning_modules.resume import ResumeCheckpoint

__all__ = [
    "ClassificationModule",
    "DistillationModule",
    "FineTuneModule",
    "PredictionWriter",
    "PruneModule",
    "QATModule",
    "ResumeCheckpoint",
    "ThroughputLogger",
    "build_classifier",
]
