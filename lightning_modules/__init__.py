"""The names recipes use (``class_path: lightning_modules.DistillationModule``), loaded on first use,
so that a command that needs no torch (``shrink classify`` on an ONNX folder) does not import it."""

from importlib import import_module

_WHERE = {
    "ClassificationModule": "lightning_modules.stages.base",
    "DistillationModule": "lightning_modules.stages.distill",
    "FineTuneModule": "lightning_modules.stages.finetune",
    "PruneModule": "lightning_modules.stages.prune",
    "QATModule": "lightning_modules.stages.qat",
    "PredictionWriter": "lightning_modules.train.callbacks",
    "ThroughputLogger": "lightning_modules.train.callbacks",
    "ResumeCheckpoint": "lightning_modules.train.resume",
    "build_classifier": "lightning_modules.artifacts.classifiers",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'lightning_modules' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
