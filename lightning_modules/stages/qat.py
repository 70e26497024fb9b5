"""Stage 3: quantization-aware training (QAT) to int8 with torchao.

Starts from an fp32 checkpoint (usually the distilled student), puts fake quantization on the
layers of the chosen scheme (``lightning_modules.methods.quantize.SCHEMES``; ``static`` calibrates its
activation scales on training rows when fit starts, then trains the weights under them), and trains with the plain task loss or, when a
teacher is given, with the distillation losses (KD-guided QAT, teacher cache included). When fit
ends, the best checkpoint's weights are converted to a real int8 model and written as
``int8.ckpt`` in the run folder; the CLI then validates that int8 model. ``validate``, ``test``
and ``predict`` accept ``--ckpt_path .../int8.ckpt``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn

from datamodules.errors import InputError
from lightning_modules.artifacts.checkpoints import int8_checkpoint
from lightning_modules.artifacts.classifiers import build_classifier
from lightning_modules.artifacts.model_folder import write_metrics
from lightning_modules.methods.quantize import (
    DEFAULT_SCHEME,
    SCHEMES,
    calibrate,
    check_scheme,
    convert_to_int8,
    import_torchao,
    is_calibrated,
    prepare_qat,
    save_int8_checkpoint,
    scheme_name,
)
from lightning_modules.methods.teacher import Teacher
from lightning_modules.stages.base import ClassificationModule, eager_only

import_torchao()  # lets Lightning's torch.load(weights_only=True) read int8 checkpoints


class QATModule(ClassificationModule):
    def __init__(
        self,
        model_name_or_path: str,
        teacher: str | None = None,
        quantize_embeddings: bool = True,
        quantize_head: bool = False,
        scheme: str = DEFAULT_SCHEME,
        calibration_rows: int = 512,
        temperature: float = 2.0,
        alpha: float = 0.5,
        teacher_cache: bool = False,
        cache_dir: str = "~/.cache/shrink",
        trust_remote_code: bool = False,
        learning_rate: float = 2e-5,
        int8_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            model_name_or_path: the fp32 model to quantize: our ``.ckpt`` (e.g. the distilled student)
                or a folder with a fine-tuned classification head. An int8 checkpoint is refused.
            teacher: optional fine-tuned teacher for KD-guided QAT (the distillation losses and cache).
            temperature, alpha, teacher_cache, cache_dir: the teacher's distillation settings, as in
                ``DistillationModule``.
            trust_remote_code: allow model code from the hub.
            quantize_embeddings: int8 per-row word embeddings (half of a MiniLM's bytes).
            quantize_head: also int8 the pooler / classifier Linear layers (off: they are tiny and
                the logits are most sensitive there).
            scheme: ``static`` (activation scales calibrated, then fixed: the fastest deployed graph,
                batch-invariant) or ``per-token`` (activation scales computed at run time).
            calibration_rows: training rows (in file order) that calibrate the ``static`` scales.
            learning_rate: QAT fine-tunes an already trained model: a small rate (1e-5 .. 5e-5).
            int8_path: where the converted int8 model goes (default: ``int8.ckpt`` in the run folder).
            **kwargs: the shared arguments of ``ClassificationModule`` (``weight_decay``,
                ``warmup_ratio``, ``adam_epsilon``, ``entity_mode``, ...).
        """
        eager_only("QATModule", kwargs)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.save_hyperparameters()
        self.model = build_classifier(
            self.task, self.label_names, model_name_or_path, None, trust_remote_code
        )
        self.teacher = None
        if teacher is not None:
            self.teacher = Teacher(
                teacher,
                self.task,
                self.label_names,
                temperature,
                alpha,
                cache=teacher_cache,
                cache_dir=cache_dir,
                trust_remote_code=trust_remote_code,
            )
        self.quantization = {
            "scheme": check_scheme(scheme),
            "embeddings": quantize_embeddings,
            "head": quantize_head,
        }
        self.calibration_rows = calibration_rows
        self.int8_path = int8_path
        self.is_int8 = False
        prepare_qat(self.model, quantize_embeddings, quantize_head, scheme)

    def on_fit_start(self) -> None:
        """``static``: calibrate the activation scales on the first training rows (file order, so
        every rank and every run gets the same ones) unless a resumed checkpoint brought them."""
        if not self.is_int8 and not is_calibrated(self.model):
            data = self.trainer.datamodule
            rows = calibrate(
                self.model, data.loader("validate", split=data.splits["fit"]), self.calibration_rows
            )
            self.print(f"static int8: activation scales calibrated on {rows} training rows")
        if self.teacher is not None:
            self.teacher.prepare(self.trainer, self.trainer.datamodule, self.device)
        else:  # nothing to distill from: the plain task loss needs labels
            self.trainer.datamodule.require_labels("fit")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.teacher is None:
            return self.log_losses({"loss": self(batch, labels=batch["labels"]).loss}, batch)
        student = self(batch, labels=batch.get("labels"))
        return self.log_losses(self.teacher.losses(student, batch, self.run, None), batch)

    # --- the int8 model --------------------------------------------------------------------------
    def to_int8(self, quantization: dict[str, Any] | None = None) -> None:
        """Convert the fake-quantized model to real int8 weights, in place; with ``quantization`` (an
        int8 checkpoint's record) only the structure its weights and scales are then loaded into."""
        record = quantization or self.quantization
        convert_to_int8(
            self.model,
            record["embeddings"],
            record["head"],
            scheme_name(record),
            structure_only=quantization is not None,
        )
        self.is_int8 = True

    def on_fit_end(self) -> None:
        """Convert the best weights (by the checkpoint monitor; the last ones without one) to int8."""
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if best and os.path.isfile(best):
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            self.load_state_dict(state)
        self.to_int8()
        self.int8_path = self.int8_path or os.path.join(self.trainer.default_root_dir, "int8.ckpt")
        if self.trainer.is_global_zero:
            save_int8_checkpoint(
                self.model,
                self.int8_path,
                dict(self.hparams),
                self.quantization,
                self.hf_config(),
                self.tokenizer_files(),
            )
            self.print(f"int8 model ({SCHEMES[self.quantization['scheme']]}) written to {self.int8_path}")

    # --- the hand-off: the int8 model ---------------------------------------------------------------
    def int8_record(self) -> dict[str, Any] | None:
        return self.quantization if self.is_int8 else None

    def take_best_weights(self) -> None:
        return None  # on_fit_end converted the best weights to int8: they are scored as such

    def hand_off(self, folder: str, command: str, config: str | None) -> dict[str, float]:
        metrics = super().hand_off(folder, command, config)
        if self.trainer.is_global_zero:  # the int8 model's own scores, beside the run's checkpoints
            write_metrics(self.trainer.default_root_dir, "int8_validate", metrics)
        return metrics

    def load_evaluation_checkpoint(self, ckpt_path: str | None) -> bool:
        """An int8 checkpoint (torchao tensors, which Lightning's loader cannot map) is loaded here."""
        int8 = int8_checkpoint(ckpt_path)
        if int8 is None:
            return False
        self.on_load_checkpoint(int8)
        self.load_state_dict(int8["state_dict"])
        return True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """``--ckpt_path int8.ckpt``: take the int8 structure before Lightning loads the weights."""
        if "quantization" not in checkpoint:
            return super().on_load_checkpoint(checkpoint)
        if self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING:
            raise InputError(
                "--ckpt_path names an int8 checkpoint: QAT resumes from its fake-quantized last.ckpt; "
                "use int8.ckpt with validate, test or predict"
            )
        trained = scheme_name(checkpoint["quantization"])
        if trained != self.quantization["scheme"]:
            raise InputError(
                f"--ckpt_path is a {trained} int8 model, but the model is set up for {self.quantization['scheme']}: "
                f"pass --model.scheme {trained}"
            )
        if not self.is_int8:
            self.to_int8(checkpoint["quantization"])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # int8 weights are torchao tensors: assigned, not copied into fp32 parameters
        return super().load_state_dict(state_dict, strict=strict, assign=assign or self.is_int8)

    def configure_optimizers(self):
        if self.is_int8:
            raise InputError("this QAT model is already converted to int8: train from the fp32 checkpoint")
        return super().configure_optimizers()
