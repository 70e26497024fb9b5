"""Callbacks the configs use: throughput logging and a prediction writer that writes label names."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ThroughputMonitor


def samples_in(batch: dict[str, torch.Tensor]) -> int:
    """Sentences in a batch (ThroughputMonitor's ``batch_size_fn``)."""
    return batch["input_ids"].shape[0]


def tokens_in(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens in a batch (ThroughputMonitor's ``length_fn``: "items" are tokens)."""
    return int(batch["attention_mask"].sum())


class ThroughputLogger(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` for our batches: logs ``train/device/samples_per_sec``,
    ``train/device/items_per_sec`` (non-padding tokens) and ``train/device/batches_per_sec`` over a
    sliding window of ``window`` batches, at the trainer's ``log_every_n_steps`` (with DDP also the
    world totals without ``device/``), and on GPU ``train/peak_memory_gb``. Its state restarts at
    every ``fit`` start, so a run resumed mid-epoch measures from its first new batch."""

    def __init__(self, window: int = 10) -> None:
        """
        Args:
            window: batches in the sliding window the rates are averaged over.
        """
        super().__init__(batch_size_fn=samples_in, length_fn=tokens_in, window_size=window)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        if pl_module.device.type == "cuda" and trainer._logger_connector.should_update_logs:
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            pl_module.log("train/peak_memory_gb", peak, on_step=True, on_epoch=False, batch_size=1)


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` output as JSON lines with the input and label names: ``{"text", "label",
    "score"}`` per sentence, or ``{"tokens", "labels"}`` with one tag per word. Written to a
    temporary file and renamed, so a failed run leaves an earlier file intact."""

    def __init__(self, output_file: str | None = None) -> None:
        """
        Args:
            output_file: JSON-lines file to write; default ``predictions.jsonl`` in the CLI's ``out_dir``.
        """
        super().__init__(write_interval="epoch")
        self.output_file = Path(output_file or "predictions.jsonl")

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        datamodule = trainer.datamodule
        rows = datamodule.raw_split(datamodule.splits["predict"])
        path = self.output_file
        if trainer.world_size > 1:  # one file per rank; DistributedSampler interleaves rows
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        # batches ran longest first: back to file order
        in_order = sorted((p for batch in predictions for p in batch), key=lambda p: p["idx"])
        with tmp.open("w", encoding="utf-8") as f:
            for prediction in in_order:
                row = rows[prediction.pop("idx")]
                if "tokens" in row:  # words beyond max_length were not seen: tag them O
                    tags = prediction["labels"]
                    prediction = {
                        "tokens": row["tokens"],
                        "labels": tags + ["O"] * (len(row["tokens"]) - len(tags)),
                    }
                else:
                    prediction = {"text": row["text"], **prediction}
                f.write(json.dumps(prediction, ensure_ascii=False) + "\n")
        tmp.replace(path)
