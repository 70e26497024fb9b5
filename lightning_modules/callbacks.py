"""Callbacks the configs use: throughput logging and a prediction writer that writes label names."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class ThroughputLogger(L.Callback):
    """Logs ``train/samples_per_sec``, ``train/tokens_per_sec`` (non-padding tokens),
    ``train/step_time`` (seconds per optimizer-less batch, data loading included) and, on GPU,
    ``train/peak_memory_gb``, averaged over ``window`` batches and summed over DDP ranks."""

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._reset(None)

    def _reset(self, now: float | None) -> None:
        self.started, self.batches, self.samples, self.tokens = now, 0, 0, 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset(time.perf_counter())

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, torch.Tensor],
        batch_idx: int,
    ) -> None:
        self.batches += 1
        self.samples += batch["input_ids"].shape[0]
        self.tokens += int(batch["attention_mask"].sum())
        if self.batches < self.window:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        elapsed, world = now - self.started, trainer.world_size
        values = {
            "train/samples_per_sec": world * self.samples / elapsed,
            "train/tokens_per_sec": world * self.tokens / elapsed,
            "train/step_time": elapsed / self.batches,
        }
        if pl_module.device.type == "cuda":
            values["train/peak_memory_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=1)
        self._reset(now)


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
        with tmp.open("w", encoding="utf-8") as f:
            for batch in predictions:
                for prediction in batch:
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
