"""What every stage (fine-tune, distill, QAT) shares: building the Hugging Face classifier with
readable labels, the optimizer and schedule, task metrics, and predictions as label names.
A stage subclasses ``ClassificationModule`` and writes its own ``training_step``."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from torchmetrics import MetricCollection

from datamodules.errors import InputError
from datamodules.token import word_start_mask
from lightning_modules.artifacts.checkpoints import int8_checkpoint
from lightning_modules.artifacts.classifiers import vocab_digest
from lightning_modules.artifacts.model_folder import stage_card, tokenizer_files, write_model_folder
from lightning_modules.methods.length_split import forward_split_by_length
from lightning_modules.methods.task_metrics import (
    computed_metrics,
    predicted,
    task_metrics,
    update_task_metrics,
    word_tags,
)
from lightning_modules.train.auto import compile_backend, length_split_enabled

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# position ids start after the padding index in these models: 514 embeddings hold 512 tokens
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text")


def check_positions(config: Any, max_length: int | None) -> None:
    """Inputs longer than the position embeddings would index past them: one line, not a CUDA assert."""
    positions = getattr(config, "max_position_embeddings", None)
    if max_length is None or positions is None:
        return
    if config.model_type in OFFSET_POSITIONS:
        positions -= (config.pad_token_id or 0) + 1
    if max_length > positions:
        raise InputError(
            f"data.max_length {max_length} is longer than the model's {positions} positions: "
            f"set --data.max_length {positions} or less"
        )


def eager_only(stage: str, options: dict[str, Any]) -> None:
    """QAT (torchao fake-quant tensors, scaled per batch) and pruning (masks set between steps) train
    eager on whole batches: ``torch_compile`` and ``split_by_length`` are refused there."""
    for name in ("torch_compile", "split_by_length"):
        if options.get(name) not in (None, False, "auto"):
            raise InputError(
                f"model.{name} is for fine-tuning and distillation: {stage} trains eager on whole batches"
            )
    options["torch_compile"] = options["split_by_length"] = False


class ClassificationModule(L.LightningModule):
    """Shared base. Subclasses build ``self.model`` (a Hugging Face classifier) and a ``training_step``."""

    flops_per_batch = None  # ThroughputMonitor asks for it; FLOPs of variable-length batches are not counted

    def __init__(
        self,
        task: str = "sequence",
        label_names: list[str] | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.06,
        adam_epsilon: float = 1e-8,
        entity_mode: str = "strict",
        metrics: list[str] | None = None,
        torch_compile: bool | str = False,
        split_by_length: bool | str = False,
    ) -> None:
        """The arguments every stage shares (each stage passes them on as ``**kwargs``).

        Args:
            task: ``sequence`` or ``token``; the CLI links it from the DataModule.
            label_names: labels in id order; the CLI links them from the DataModule.
            learning_rate: peak AdamW learning rate, reached after warmup.
            weight_decay: AdamW decay, not applied to biases and LayerNorm weights.
            warmup_ratio: fraction of all training steps spent warming up linearly; then linear decay to 0.
            adam_epsilon: AdamW epsilon.
            entity_mode: NER entity matching, ``strict`` (IOB2, seqeval strict) or ``conlleval``.
            metrics: sequence metrics beside accuracy and macro-F1: ``mcc`` (Matthews correlation, CoLA),
                ``f1`` (F1 of label id 1 of two: MRPC, QQP), logged as ``val/mcc``, ``val/f1``.
            torch_compile: train the model through ``torch.compile(dynamic=True)`` (one graph for
                every padded length; weights, checkpoints and the model folder are unchanged). ``True``
                is inductor; another string names the backend (``aot_eager``: the same graphs without
                generated kernels). ``auto`` (the SST-2 / CoNLL / GLUE recipes) compiles with inductor
                where it was measured to pay (bf16 on a CPU with AMX, random batches; scripts/bench/bench_vs_trainer.py
                --compile; GPUs are not measured yet). Fine-tuning and distillation only.
            split_by_length: run each training batch (and the teacher on it) as a few sub-batches of
                similar length, the cut chosen per batch: the same rows, loss and gradients as the
                padded batch, fewer padded tokens (``lightning_modules/methods/length_split.py``). On random
                batches, faster steps (scripts/bench/bench_vs_trainer.py measures it).
                ``auto`` (the SST-2 / CoNLL / GLUE recipes): on when training on CPU; GPUs, where padding
                costs less than one more pass, are not measured yet. Fine-tuning and distillation only.
        """
        super().__init__()
        for name, value, ok, rule in (
            ("learning_rate", learning_rate, learning_rate > 0, "above 0, e.g. 5e-5"),
            ("weight_decay", weight_decay, weight_decay >= 0, "0 or more"),
            ("warmup_ratio", warmup_ratio, 0 <= warmup_ratio < 1, "in [0, 1)"),
            ("adam_epsilon", adam_epsilon, adam_epsilon > 0, "above 0"),
        ):
            if not ok:
                raise InputError(f"model.{name} is {value}: it must be {rule}")
        if split_by_length not in (True, False, "auto"):
            raise InputError(f"model.split_by_length is {split_by_length!r}: it takes true, false or auto")
        self.torch_compile, self.split_by_length = torch_compile, split_by_length
        self.split_batches = False  # split_by_length as decided for this run's device (setup)
        if not label_names:
            raise InputError(
                "model.label_names is empty: give the labels or let the CLI read them from the data"
            )
        self.task, self.label_names = task, list(label_names)
        self.learning_rate, self.weight_decay, self.warmup_ratio, self.adam_epsilon = (
            learning_rate,
            weight_decay,
            warmup_ratio,
            adam_epsilon,
        )
        metrics = task_metrics(task, self.label_names, entity_mode, metrics)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # one collection per extra validation split (MNLI mismatched), made when validation starts
        self.extra_val_metrics = torch.nn.ModuleDict()

    # --- forward ---------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], **kwargs: Any):
        return self.run(self.model, {k: batch[k] for k in MODEL_INPUTS if k in batch}, **kwargs)

    def run(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], **kwargs: Any):
        """``model(**inputs, **kwargs)``; in training with ``split_by_length``, in parts of similar length."""
        if self.training and self.split_batches:
            return forward_split_by_length(model, inputs, self.task, **kwargs)
        return model(**inputs, **kwargs)

    @staticmethod
    def batch_size(batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0]

    # --- evaluation --------------------------------------------------------------------------
    def _metrics(self, stage: str) -> MetricCollection:
        """The metric collection of ``val``, ``test`` or an extra validation split (``val_mismatched``)."""
        if stage == "val":
            return self.val_metrics
        return self.test_metrics if stage == "test" else self.extra_val_metrics[stage]

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        output = self(batch, labels=batch["labels"])
        metrics = self._metrics(stage)
        update_task_metrics(
            metrics, self.task, self.label_names, predicted(output.logits, self.label_names), batch
        )
        # weighted by what the loss averages over (sentences, or labelled tokens), so the epoch value
        # is the mean over the whole split however it is batched or split across DDP ranks
        weight = self.batch_size(batch) if self.task == "sequence" else int((batch["labels"] != -100).sum())
        self.log(
            f"{stage}/loss", output.loss, batch_size=max(weight, 1), sync_dist=True, add_dataloader_idx=False
        )

    def _log_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        metrics = self._metrics(stage)
        # metric states are already synced across ranks
        values = computed_metrics(metrics, f"{stage}/")
        self.log_dict(values, sync_dist=False)
        metrics.reset()
        return values

    def on_validation_start(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            datamodule.require_labels("validate")
        self._extra_val_stages = list(getattr(datamodule, "extra_validation_splits", {}))
        for stage in self._extra_val_stages:
            if stage not in self.extra_val_metrics:
                self.extra_val_metrics[stage] = self.val_metrics.clone(prefix=f"{stage}/").to(self.device)

    def on_test_start(self) -> None:
        if self.trainer.datamodule is not None:
            self.trainer.datamodule.require_labels("test")

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._evaluate(batch, "val" if dataloader_idx == 0 else self._extra_val_stages[dataloader_idx - 1])

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        for stage in self._extra_val_stages:
            self._log_metrics(stage)
        if not self.trainer.sanity_checking:  # the weights these scores belong to (see the CLI's after_fit)
            self.validated_at_step = self.trainer.global_step

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict[str, Any]]:
        """One dict per example: ``idx`` (row in the split) and label names (a list per word for NER)."""
        logits = self(batch).logits.float()
        if len(self.label_names) == 1:  # regression: the predicted number
            return [
                {"idx": i, self.label_names[0]: round(v, 6)}
                for i, v in zip(batch["idx"].tolist(), logits.squeeze(-1).tolist(), strict=True)
            ]
        probabilities = logits.softmax(-1)
        if self.task == "sequence":
            scores, ids = probabilities.max(-1)
            return [
                {"idx": i, "label": self.label_names[c], "score": round(s, 6)}
                for i, c, s in zip(batch["idx"].tolist(), ids.tolist(), scores.tolist(), strict=True)
            ]
        starts = word_start_mask(batch["word_ids"])
        tags = word_tags(probabilities.argmax(-1), starts, self.label_names)
        return [{"idx": i, "labels": t} for i, t in zip(batch["idx"].tolist(), tags, strict=True)]

    # --- optimisation -----------------------------------------------------------------------
    def log_losses(self, losses: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log ``loss`` and each term beside it (``kd_loss``, ``ce_loss``, ...); return ``loss``."""
        size = self.batch_size(batch)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=size)
        return losses["loss"]

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """What the optimizer sees (a teacher is not a child module: never in it)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def configure_optimizers(self):
        from transformers import get_linear_schedule_with_warmup

        # no weight decay on biases and normalisation weights (as BERT and run_glue.py)
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
        named = self.trainable_parameters()
        groups = [
            {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": self.weight_decay},
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        # the fused kernel (one pass over all parameters: what transformers' Trainer uses by default)
        # where torch has it for the parameters' device; the per-tensor loop elsewhere
        fused = all(p.device.type in ("cpu", "cuda") for _, p in named)
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate, eps=self.adam_epsilon, fused=fused)
        total = self.trainer.estimated_stepping_batches
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """``trainer.gradient_clip_val`` with the fused AdamW in every precision. Lightning refuses to clip a
        fused optimizer under AMP, since it cannot unscale fp16 gradients first; unscale them here (as
        accelerate does for the HF Trainer: the GradScaler's step then knows), then clip."""
        if not gradient_clip_val:
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            scaler.unscale_(optimizer)  # Lightning unscales only optimizers that do not do it themselves
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)

    def hf_config(self) -> dict[str, Any]:
        """The Hugging Face config plus the tokenizer trained with (``shrink_tokenizer``): enough to
        rebuild the model without its original folder, and to check a teacher's tokenizer."""
        config = self.model.config.to_dict()
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if getattr(datamodule, "tokenizer_name", None):
            config["shrink_tokenizer"] = datamodule.tokenizer_name
            config["shrink_tokenizer_vocab"] = vocab_digest(datamodule.tokenizer)
        elif getattr(self.model.config, "shrink_tokenizer", None):  # loaded from one of our checkpoints
            config["shrink_tokenizer"] = self.model.config.shrink_tokenizer
            config["shrink_tokenizer_vocab"] = getattr(self.model.config, "shrink_tokenizer_vocab", None)
        return config

    def tokenizer_files(self) -> dict[str, bytes] | None:
        """The training tokenizer's files, stored in each checkpoint so that a ``.ckpt`` moved to
        another machine still exports, benchmarks and predicts (computed once per run)."""
        if getattr(self, "_tokenizer_files", None) is None:
            datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            if getattr(datamodule, "tokenizer_name", None) is None:
                return None

            self._tokenizer_files = tokenizer_files(datamodule.tokenizer)
        return self._tokenizer_files

    def lineage(self) -> list[dict[str, Any]]:
        """Where this model came from, oldest first (base -> teacher -> student -> pruned -> int8), for
        model cards: the lineage recorded in the model's own config (a distilled student pruned, then
        quantized, keeps its distillation), else in its teacher's (a fresh student), then this stage.
        Kept in the model config, so checkpoints and folders carry it to the next stage."""
        teacher = getattr(self, "teacher", None)
        previous = getattr(self.model.config, "shrink_lineage", None)
        if not previous and teacher is not None:
            previous = getattr(teacher.model.config, "shrink_lineage", None)
        previous = [dict(step) for step in previous or []]
        keys = (
            "model_name_or_path",
            "model_config",
            "teacher",
            "student_model_name_or_path",
            "student_layers",
            "target_sparsity",
        )
        step = {"stage": type(self).__name__, **{k: self.hparams[k] for k in keys if self.hparams.get(k)}}
        if "model_config" in step:
            step["model_config"] = "from scratch"
        return previous if previous and previous[-1] == step else [*previous, step]

    def setup(self, stage: str) -> None:
        check_positions(self.model.config, getattr(self.trainer.datamodule, "max_length", None))
        if stage == "fit":
            self.model.config.shrink_lineage = self.lineage()
            grouped = bool(getattr(self.trainer.datamodule, "group_by_length", False))
            backend = compile_backend(self.torch_compile, self.trainer, grouped)
            self.split_batches = length_split_enabled(self.split_by_length, self.trainer)
            if backend:  # in place: parameter names, and so checkpoints, stay the same
                self.model.compile(dynamic=True, backend=backend)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hf_config"] = self.hf_config()
        files = self.tokenizer_files()
        if files is not None:
            checkpoint["tokenizer_files"] = files

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint of another model shape gets one line naming the first mismatch."""
        own = self.state_dict()
        for key, value in checkpoint.get("state_dict", {}).items():
            mine = own.get(key)
            # exact type: torchao int8 tensors report their shape differently by design
            if type(mine) is torch.Tensor and mine.shape != value.shape:
                raise InputError(
                    f"the checkpoint's {key} has shape {list(value.shape)} but this model's is "
                    f"{list(mine.shape)}: use the checkpoint with the model config it was trained with"
                )

    # --- the hand-off: what a finished fit leaves in OUT_DIR/model/, what evaluation loads -----------
    def deployable_model(self) -> torch.nn.Module:
        """The model a stage hands on (``OUT_DIR/model/``); the pruning stage's is physically smaller."""
        return self.model

    def int8_record(self) -> dict[str, Any] | None:
        """How the handed-on weights are quantized (``None``: fp32)."""
        return None

    def card_facts(self) -> dict[str, Any]:
        """What the model card says about this stage beyond task, data and size."""
        return {}

    def hand_off(self, folder: str, command: str, config: str | None) -> dict[str, float]:
        """After ``fit``: take the best weights (by the checkpoint monitor), score them on the validation
        split unless the last validation already did, and write them to ``folder`` as a Hugging Face
        folder with a model card. Returns the scores."""
        metrics = self.take_best_weights()
        if metrics is None:
            validated = self.trainer.validate(self, datamodule=self.trainer.datamodule, verbose=False)
            metrics = {k: v for per_loader in validated for k, v in per_loader.items()}  # MNLI: two splits
        if self.trainer.is_global_zero:
            data, out_dir = self.trainer.datamodule, self.trainer.default_root_dir
            card = stage_card(self, data, out_dir, metrics, command, config)
            write_model_folder(self.deployable_model(), data.tokenizer, folder, card, self.int8_record())
        return metrics

    def take_best_weights(self) -> dict[str, float] | None:
        """Load the best checkpoint's weights; when the weights in memory are those and the last
        validation scored them, keep them and return those scores."""
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not best or not os.path.isfile(best):
            return None  # no monitor: the last weights
        current = self.trainer.callback_metrics.get(callback.monitor) if callback.monitor else None
        if (
            current is not None
            and callback.best_model_score is not None
            and getattr(self, "validated_at_step", None) == self.trainer.global_step
            and float(current) == float(callback.best_model_score)
        ):
            return {k: v for k, v in self.trainer.callback_metrics.items() if k.startswith(("val/", "val_"))}
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        self.load_state_dict(state, strict=self.strict_loading)  # LoRA: adapters only
        return None

    def load_evaluation_checkpoint(self, ckpt_path: str | None) -> bool:
        """``validate`` / ``test`` / ``predict --ckpt_path``: load what Lightning's loader cannot read
        here and return True; False leaves the file to Lightning."""
        if int8_checkpoint(ckpt_path) is not None:
            raise InputError(
                f"--ckpt_path {ckpt_path} is an int8 checkpoint: evaluate it with a QAT config "
                "(model.class_path lightning_modules.QATModule)"
            )
        return False
