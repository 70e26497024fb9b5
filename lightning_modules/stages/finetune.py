"""Stage 1: fine-tune a pretrained (or from-scratch) encoder with the plain task loss, in full or
with LoRA adapters (``peft``).

LoRA trains low-rank updates of the attention (and optionally FFN) weights plus the classification
head; the encoder itself stays frozen. Checkpoints then hold only what trains (the adapters and the
head: a few MB instead of the whole model; the frozen base is rebuilt from ``model_name_or_path``
on resume), and when fit ends the adapters are merged into the base weights, so ``OUT_DIR/model/``
and every later stage see an ordinary model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from datamodules.errors import InputError
from lightning_modules.artifacts.classifiers import build_classifier
from lightning_modules.stages.base import ClassificationModule


def lora_model(model: torch.nn.Module, task: str, lora: dict[str, Any]) -> torch.nn.Module:
    """``model`` with LoRA adapters (``peft``): ``lora`` holds LoraConfig arguments (``r``,
    ``lora_alpha``, ``lora_dropout``, ``target_modules``; default: the attention projections)."""
    from peft import LoraConfig, TaskType, get_peft_model

    options = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, **lora}
    if options["r"] < 1:
        raise InputError(f"model.lora r is {options['r']}: the adapter rank must be at least 1")
    task_type = TaskType.SEQ_CLS if task == "sequence" else TaskType.TOKEN_CLS  # the head trains too
    try:
        return get_peft_model(model, LoraConfig(task_type=task_type, **options))
    except (TypeError, ValueError) as error:
        raise InputError(
            f"model.lora {lora}: {str(error).splitlines()[0]} (the attention projections: [query, value] "
            "for BERT / RoBERTa, [q, v] for MPNet)"
        ) from None


class FineTuneModule(ClassificationModule):
    def __init__(
        self,
        model_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        lora: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            model_name_or_path: hub name (``bert-base-uncased``) or local folder of a pretrained encoder.
            model_config: instead of a pretrained model, a from-scratch config, e.g.
                ``{model_type: bert, hidden_size: 128, num_hidden_layers: 2, ...}`` (demo, tests).
            trust_remote_code: allow model code from the hub; off unless you trust the repository.
            lora: train LoRA adapters instead of all weights, e.g. ``{r: 8, lora_alpha: 16,
                target_modules: [query, value]}`` (peft ``LoraConfig`` arguments; ``{}`` for the
                defaults); merged into the weights when fit ends. None: full fine-tuning.
            **kwargs: task, labels, optimizer and metric arguments of ``ClassificationModule``
                (``learning_rate``, ``weight_decay``, ``warmup_ratio``, ``adam_epsilon``, ``entity_mode``).
        """
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.model = build_classifier(
            self.task, self.label_names, model_name_or_path, model_config, trust_remote_code
        )
        self.lora = lora
        if lora is not None:
            if model_name_or_path is None:
                raise InputError("model.lora adapts a pretrained model: set model.model_name_or_path")
            self.model = lora_model(self.model, self.task, lora)
            self.strict_loading = False  # checkpoints hold the trained parameters only

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.lora is not None:  # the frozen base comes back from model_name_or_path
            trained = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}
            checkpoint["lora"] = dict(self.lora)

    def deployable_model(self) -> torch.nn.Module:
        """With LoRA: a copy with the adapters merged into the base weights (an ordinary model)."""
        if self.lora is None:
            return self.model
        return copy.deepcopy(self.model).merge_and_unload()

    def on_fit_start(self) -> None:
        if self.trainer.datamodule is not None:  # distillation may use unlabelled data; fine-tuning may not
            self.trainer.datamodule.require_labels("fit")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch, labels=batch["labels"]).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=self.batch_size(batch))
        return loss
