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
        task: str = "sequence",
        label_names: list[str] | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.06,
        adam_epsilon: float = 1e-8,
        entity_mode: str = "strict",
        trust_remote_code: bool = False,
    ) -> None:
        """
        Args:
            model_name_or_path: hub name (``bert-base-uncased``) or local folder of a pretrained encoder.
            model_config: instead of a pretrained model, a from-scratch config, e.g.
                ``{model_type: bert, hidden_size: 128, num_hidden_layers: 2, ...}`` (demo, tests).
            task: ``sequence`` or ``token``; the CLI links it from the DataModule.
            label_names: labels in id order; the CLI links them from the DataModule.
            learning_rate: peak AdamW learning rate, reached after warmup.
            weight_decay: AdamW decay, not applied to biases and LayerNorm weights.
            warmup_ratio: fraction of all training steps spent warming up linearly; then linear decay to 0.
            adam_epsilon: AdamW epsilon.
            entity_mode: NER entity matching, ``strict`` (IOB2, seqeval strict) or ``conlleval``.
            trust_remote_code: allow model code from the hub; off unless you trust the repository.
        """
        super().__init__(
            task, label_names, learning_rate, weight_decay, warmup_ratio, adam_epsilon, entity_mode
        )
        self.save_hyperparameters()
        self.model = build_classifier(
            task, self.label_names, model_name_or_path, model_config, trust_remote_code
        )

    def on_fit_start(self) -> None:
        if self.trainer.datamodule is not None:  # distillation may use unlabelled data; fine-tuning may not
            self.trainer.datamodule.require_labels("fit")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch, labels=batch["labels"]).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=self.batch_size(batch))
        return loss
