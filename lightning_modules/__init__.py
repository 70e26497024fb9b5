from lightning_modules import quiet  # noqa: F401  (first: before anything imports torchao)
from lightning_modules.artifacts.classifiers import build_classifier
from lightning_modules.stages.base import ClassificationModule
from lightning_modules.stages.distill import DistillationModule
from lightning_modules.stages.finetune import FineTuneModule
from lightning_modules.stages.prune import PruneModule
from lightning_modules.stages.qat import QATModule
from lightning_modules.train.callbacks import PredictionWriter, ThroughputLogger
from lightning_modules.train.resume import ResumeCheckpoint

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
