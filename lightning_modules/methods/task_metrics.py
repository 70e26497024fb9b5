"""The task metrics every stage logs (torchmetrics, synced across DDP ranks) and predictions as label ids."""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from datamodules.errors import InputError
from datamodules.token import word_start_mask
from lightning_modules.methods.metrics import EntityF1, entity_types

SEQUENCE_METRICS = ("mcc", "f1")  # the GLUE extras: CoLA's Matthews correlation, MRPC / QQP's F1


def task_metrics(
    task: str, label_names: list[str], entity_mode: str = "strict", extra: list[str] | None = None
) -> MetricCollection:
    """Accuracy and macro-F1 for sequences (plus ``extra``: ``mcc``, Matthews correlation; ``f1``,
    F1 of the positive class, label id 1 of two); entity P/R/F1 (micro and per entity type) and
    token accuracy for tokens. All torchmetrics: synced across DDP ranks."""
    from torchmetrics.classification import BinaryF1Score, MulticlassMatthewsCorrCoef

    n_labels = len(label_names)
    extra = list(extra or [])
    if task == "sequence" and n_labels == 1:  # regression (STS-B): one output
        from torchmetrics import MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef

        if extra:
            raise InputError(f"model.metrics {extra}: a regression task logs pearson, spearman and mse")
        return MetricCollection(
            {"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef(), "mse": MeanSquaredError()}
        )
    unknown = [m for m in extra if m not in SEQUENCE_METRICS]
    if unknown or (extra and task != "sequence"):
        raise InputError(
            f"model.metrics {extra}: sequence tasks take {list(SEQUENCE_METRICS)}; token tasks none"
        )
    if "f1" in extra and n_labels != 2:
        raise InputError(
            f"model.metrics f1 is the positive class's F1 of two labels, the data has {n_labels}: "
            "use f1_macro (always logged)"
        )
    if task == "sequence":
        chosen = {
            "accuracy": MulticlassAccuracy(n_labels, average="micro"),
            "f1_macro": MulticlassF1Score(n_labels, average="macro"),
            "mcc": MulticlassMatthewsCorrCoef(n_labels),
            "f1": BinaryF1Score(),  # label ids 0 / 1 are the binary predictions and targets
        }
        return MetricCollection({k: v for k, v in chosen.items() if k in ("accuracy", "f1_macro", *extra)})
    return MetricCollection(
        {
            "entity": EntityF1(entity_mode, entity_types(label_names)),
            "token_accuracy": MulticlassAccuracy(n_labels, average="micro"),
        }
    )


def headline_metric(task: str, label_names: list[str]) -> str:
    """The one ``task_metrics`` figure a model is compared by: entity F1 (tokens), Pearson
    (regression, one output) or accuracy."""
    return "f1" if task == "token" else "pearson" if len(label_names) == 1 else "accuracy"


def predicted(logits: torch.Tensor, label_names: list[str]) -> torch.Tensor:
    """Class ids (argmax), or the predicted number of a regression model (one output)."""
    return logits.float().squeeze(-1) if len(label_names) == 1 else logits.argmax(-1)


def word_tags(ids: torch.Tensor, starts: torch.Tensor, label_names: list[str]) -> list[list[str]]:
    """Label names of the first sub-token of each word, one list per sentence."""
    return [
        [label_names[x] for x, keep in zip(row, keep_row, strict=True) if keep]
        for row, keep_row in zip(ids.tolist(), starts.tolist(), strict=True)
    ]


def update_task_metrics(
    metrics: MetricCollection,
    task: str,
    label_names: list[str],
    predictions: torch.Tensor,
    batch: dict[str, torch.Tensor],
) -> None:
    """Score predicted ids; token tasks are scored on the first sub-token of each word."""
    if task == "sequence":
        metrics.update(predictions, batch["labels"])
        return
    starts = word_start_mask(batch["word_ids"])
    metrics["token_accuracy"].update(predictions[starts], batch["labels"][starts])
    metrics["entity"].update(
        word_tags(predictions, starts, label_names), word_tags(batch["labels"], starts, label_names)
    )


def computed_metrics(metrics: MetricCollection, prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix}accuracy`` ... with EntityF1's precision / recall / f1 flattened."""
    flat = {}
    for key, value in metrics.compute().items():
        if isinstance(value, dict):
            flat.update({f"{prefix}{k}": v for k, v in value.items()})
        else:
            flat[f"{prefix}{key.removeprefix(metrics.prefix or '')}"] = value
    return flat
