"""Entity-level precision / recall / F1 for IOB2 tags, with seqeval's semantics.

``mode="strict"`` matches ``seqeval.metrics.f1_score(..., mode="strict", scheme=IOB2)``: an entity is
``B-X`` followed by ``I-X`` tokens; an ``I-X`` that does not continue an ``X`` entity is no entity.
``mode="conlleval"`` matches seqeval's default (the conlleval script): a stray ``I-X`` opens an entity.
Counts are torchmetrics sum-states, so DDP validation syncs exactly. With ``types`` (the entity types
of the label set), precision / recall / F1 per type too, as seqeval's ``classification_report``.
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
    """Micro-averaged entity precision, recall and F1 over sentences of tag names, and per entity type
    when ``types`` are given (``PER/f1``, ...)."""

    full_state_update = False

    def __init__(self, mode: str = "strict", types: list[str] | None = None) -> None:
        super().__init__()
        if mode not in ("strict", "conlleval"):
            raise ValueError(f"mode must be 'strict' or 'conlleval', got {mode!r}")
        self.mode, self.types = mode, list(types or [])
        for name in ("correct", "predicted", "gold"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(
                f"{name}_by_type",
                default=torch.zeros(len(self.types), dtype=torch.long),
                dist_reduce_fx="sum",
            )

    def update(self, predictions: list[list[str]], targets: list[list[str]]) -> None:
        index = {kind: i for i, kind in enumerate(self.types)}
        for predicted, gold in zip(predictions, targets, strict=True):
            p, g = entities(predicted, self.mode), entities(gold, self.mode)
            self.correct += len(p & g)
            self.predicted += len(p)
            self.gold += len(g)
            for counts, found in (
                (self.correct_by_type, p & g),
                (self.predicted_by_type, p),
                (self.gold_by_type, g),
            ):
                for kind, _, _ in found:
                    if kind in index:  # a type outside the label set cannot be predicted or scored
                        counts[index[kind]] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        result = _scores(self.correct, self.predicted, self.gold)
        by_type = _scores(self.correct_by_type, self.predicted_by_type, self.gold_by_type)
        for i, kind in enumerate(self.types):
            result.update({f"{kind}/{name}": value[i] for name, value in by_type.items()})
        return result


def _scores(correct: torch.Tensor, predicted: torch.Tensor, gold: torch.Tensor) -> dict[str, torch.Tensor]:
    precision = correct / predicted.clamp(min=1)
    recall = correct / gold.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"precision": precision.float(), "recall": recall.float(), "f1": f1.float()}


def entity_types(label_names: list[str]) -> list[str]:
    """``["O", "B-PER", "I-PER", "B-LOC"]`` -> ``["LOC", "PER"]``."""
    return sorted({_split(tag)[1] for tag in label_names if _split(tag)[1]})
