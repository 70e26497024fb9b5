"""Stage 1: fine-tune a pretrained (or from-scratch) encoder with the plain task loss."""

from __future__ import annotations

from typing import Any

import torch

from lightning_modules.base import ClassificationModule, build_classifier


class FineTuneModule(ClassificationModule):
    def __init__(
        self,
        model_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            model_name_or_path: hub name (``bert-base-uncased``) or local folder of a pretrained encoder.
            model_config: instead of a pretrained model, a from-scratch config, e.g.
                ``{model_type: bert, hidden_size: 128, num_hidden_layers: 2, ...}`` (demo, tests).
            trust_remote_code: allow model code from the hub; off unless you trust the repository.
            **kwargs: task, labels, optimizer and metric arguments of ``ClassificationModule``
                (``learning_rate``, ``weight_decay``, ``warmup_ratio``, ``adam_epsilon``, ``entity_mode``).
        """
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.model = build_classifier(
            self.task, self.label_names, model_name_or_path, model_config, trust_remote_code
        )

    def on_fit_start(self) -> None:
        if self.trainer.datamodule is not None:  # distillation may use unlabelled data; fine-tuning may not
            self.trainer.datamodule.require_labels("fit")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch, labels=batch["labels"]).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=self.batch_size(batch))
        return loss
