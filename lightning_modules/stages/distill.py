"""Stage: distill a fine-tuned teacher into a smaller student.

Loss = ``alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE(student, labels)``
       (regression, one output: ``alpha * MSE(student, teacher) + (1 - alpha) * MSE(student, label)``)
       ``+ hidden_weight * MSE(project(student hidden), teacher hidden)``
       ``+ attention_weight * MSE(student attention, teacher attention)``,
computed by the ``Teacher`` this stage holds (``lightning_modules/methods/teacher.py``). Teacher and
student may use different tokenizers: token-level terms line up on word indices (first sub-token of
each word), so any two tokenizers work.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from datamodules.errors import InputError
from lightning_modules.artifacts.classifiers import build_classifier
from lightning_modules.methods.pruning import keep_encoder_layers
from lightning_modules.methods.teacher import Teacher
from lightning_modules.stages.base import ClassificationModule


class DistillationModule(ClassificationModule):
    def __init__(
        self,
        teacher: str | None,
        student_model_name_or_path: str | None = None,
        student_config: dict[str, Any] | None = None,
        student_layers: list[int] | None = None,
        temperature: float = 2.0,
        alpha: float = 0.5,
        hidden_weight: float = 0.0,
        attention_weight: float = 0.0,
        layer_map: dict[int, int] | None = None,
        teacher_cache: bool = False,
        cache_dir: str = "~/.cache/shrink",
        trust_remote_code: bool = False,
        save_teacher: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            teacher: a ``.ckpt`` of this project's fine-tuning, or a folder / hub name of a model with a
                fine-tuned classification head. Its labels must equal the data's, in order.
            student_model_name_or_path: pretrained small model (``all-MiniLM-L6-v2``) or our ``.ckpt``.
            student_config: from-scratch student config (``{model_type: bert, hidden_size: 128, ...}``).
            student_layers: keep only these encoder layers (0-based) of the student source, or of a copy
                of the teacher when no student source is given (DistilBERT-style, e.g. ``[0, 2, 4, 6, 8, 10]``).
            temperature: softmax temperature T of the soft targets.
            alpha: weight of the soft (KD) loss; ``1 - alpha`` weighs the hard-label cross-entropy.
                Unlabelled transfer data uses the soft loss alone.
            hidden_weight: weight of the hidden-state MSE (0 = off).
            attention_weight: weight of the attention-map MSE (0 = off; needs equal head counts and one tokenizer).
            layer_map: student layer -> teacher layer for hidden/attention transfer, counting the
                embeddings as 0 and block i as i. Default: student i <- teacher round(i * L_t / L_s).
            teacher_cache: compute teacher logits once per training split and reuse them from disk
                (keyed by a hash of teacher weights, tokenizer, data and preprocessing).
            cache_dir: where the teacher cache lives.
            trust_remote_code: allow model code from the hub.
            save_teacher: also store the teacher's weights in checkpoints (off: students stay small).
            **kwargs: task, labels, optimizer and metric arguments of ``ClassificationModule``
                (``learning_rate``, ``weight_decay``, ``warmup_ratio``, ``adam_epsilon``, ``entity_mode``).
        """
        super().__init__(**kwargs)
        self.save_hyperparameters()
        if teacher is None:
            raise InputError("model.teacher is not set: give a fine-tuned teacher .ckpt or model folder")
        self.teacher = Teacher(
            teacher,
            self.task,
            self.label_names,
            temperature,
            alpha,
            hidden_weight,
            attention_weight,
            teacher_cache,
            cache_dir,
            trust_remote_code,
        )
        if student_model_name_or_path is None and student_config is None:
            if student_layers is None:
                raise InputError(
                    "no student: set model.student_model_name_or_path, model.student_config "
                    "or model.student_layers (a layer subset of the teacher)"
                )
            student = copy.deepcopy(self.teacher.model).train().requires_grad_(True)
        else:
            student = build_classifier(
                self.task, self.label_names, student_model_name_or_path, student_config, trust_remote_code
            )
        self.model = keep_encoder_layers(student, student_layers) if student_layers is not None else student
        self.projections = self.teacher.map_layers(self.model, layer_map)
        self.save_teacher = save_teacher

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.save_teacher:
            checkpoint["teacher_state_dict"] = self.teacher.model.state_dict()

    def on_fit_start(self) -> None:
        self.teacher.prepare(self.trainer, self.trainer.datamodule, self.device)

    def distillation_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each loss term, and their weighted sum as ``loss``."""
        student = self(batch, labels=batch.get("labels"), **self.teacher.student_outputs())
        return self.teacher.losses(student, batch, self.run, self.projections)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.log_losses(self.distillation_losses(batch), batch)
