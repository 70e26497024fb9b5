"""Entity-level precision / recall / F1 for IOB2 tags, with seqeval's semantics.

``mode="strict"`` matches ``seqeval.metrics.f1_score(..., mode="strict", scheme=IOB2)``: an entity is
``B-X`` followed by ``I-X`` tokens; an ``I-X`` that does not continue an ``X`` entity is no entity.
``mode="conlleval"`` matches seqeval's default (the conlleval script): a stray ``I-X`` opens an entity.
Counts are torchmetrics sum-states, so DDP validation syncs exactly.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def _split(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def entities(tags: list[str], mode: str = "strict") -> set[tuple[str, int, int]]:
    """The entities of one tag sequence as ``(type, start, end_exclusive)``."""
    found, kind, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, tag_kind = _split(tag)
        continues = prefix == "I" and tag_kind == kind
        if kind is not None and not continues:
            found.add((kind, start, i))
            kind = None
        if prefix == "B" or (prefix == "I" and not continues and mode == "conlleval"):
            kind, start = tag_kind, i
    return found


class EntityF1(Metric):
    """Micro-averaged entity precision, recall and F1 over sentences of tag names."""

    full_state_update = False

    def __init__(self, mode: str = "strict") -> None:
        super().__init__()
        if mode not in ("strict", "conlleval"):
            raise ValueError(f"mode must be 'strict' or 'conlleval', got {mode!r}")
        self.mode = mode
        for name in ("correct", "predicted", "gold"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: list[list[str]], targets: list[list[str]]) -> None:
        for predicted, gold in zip(predictions, targets, strict=True):
            p, g = entities(predicted, self.mode), entities(gold, self.mode)
            self.correct += len(p & g)
            self.predicted += len(p)
            self.gold += len(g)

    def compute(self) -> dict[str, torch.Tensor]:
        precision = self.correct / self.predicted.clamp(min=1)
        recall = self.correct / self.gold.clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        return {"precision": precision.float(), "recall": recall.float(), "f1": f1.float()}
