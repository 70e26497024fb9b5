"""What every stage (fine-tune, distill, QAT) shares: building the Hugging Face classifier with
readable labels, the optimizer and schedule, task metrics, and predictions as label names.
A stage subclasses ``ClassificationModule`` and writes its own ``training_step``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from datamodules.errors import InputError
from datamodules.token import word_start_mask
from lightning_modules.length_split import forward_split_by_length
from lightning_modules.metrics import EntityF1, entity_types
from lightning_modules.model_folder import INT8_FILE
from lightning_modules.pruning import model_from_config, prune_model, pruned_from_pretrained, pruned_state
from lightning_modules.quantize import load_int8_state
from lightning_modules.resume import check_checkpoint

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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
        raise InputError(f"model.metrics f1 is the positive class's F1 of two labels, the data has {n_labels}: "
                         "use f1_macro (always logged)")  # fmt: skip
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


def vocab_digest(tokenizer: Any) -> str:
    """A hash of a tokenizer's vocabulary: the same tokenizer under another path or name matches."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]


def _auto_class(task: str):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    if task not in ("sequence", "token"):
        raise InputError(f"task must be 'sequence' or 'token', got {task!r}")
    return AutoModelForSequenceClassification if task == "sequence" else AutoModelForTokenClassification


def read_checkpoint(path: str, role: str = "--model") -> dict[str, Any]:
    """One of this project's ``.ckpt`` files, memory-mapped, checked to record the model config and
    task that export and benchmark scripts need; one line for anything else."""
    if not str(path).endswith(".ckpt"):
        raise InputError(
            f"{role} {path} is not a .ckpt of this project: give one (it records task, labels, tokenizer)"
        )
    if not Path(path).is_file():
        raise InputError(f"{role} {path} does not exist: fix the path")
    checkpoint = check_checkpoint(path)
    if "hf_config" not in checkpoint or "task" not in checkpoint.get("hyper_parameters", {}):
        raise InputError(
            f"{role} {path} is a checkpoint of unknown type (no model config or task): "
            "use checkpoints written by `shrink fit` or scripts/export.py ptq"
        )
    return checkpoint


def compile_backend(torch_compile: bool | str, trainer: L.Trainer, grouped: bool = False) -> str | None:
    """The ``torch.compile`` backend of ``model.torch_compile``, or None for eager. ``auto`` is inductor
    where compiled training steps were measured to pay: ``bf16-mixed`` on a CPU with AMX, on random
    batches (2x per step for MiniLM-L6 on SST-2; on length-grouped batches, short and barely padded,
    1.0x: scripts/bench_vs_trainer.py --compile). It says which it chose."""
    if torch_compile != "auto":
        return ("inductor" if torch_compile is True else torch_compile) or None
    from lightning_modules.export import cpu_flags

    on_cpu = trainer.strategy.root_device.type == "cpu"
    amx_bf16 = on_cpu and "bf16" in str(trainer.precision) and "amx_bf16" in cpu_flags()
    if amx_bf16 and not grouped:
        rank_zero_info(
            "model.torch_compile auto -> inductor: bf16 on a CPU with AMX, where compiled steps run about "
            "2x faster after 30 s to 2 min of compiling (--model.torch_compile false turns it off)"
        )
        return "inductor"
    rank_zero_info(
        "model.torch_compile auto -> eager: compiling was measured to pay only for bf16 on CPUs with AMX"
        + (", on random batches (data.group_by_length false)" if amx_bf16 else "")
    )
    return None


def length_split_enabled(split_by_length: bool | str, trainer: L.Trainer) -> bool:
    """Whether training batches run split by length: ``auto`` is on when training on CPU (on random
    batches, MiniLM-L6 steps 1.4x (bf16) to 1.9x (fp32) faster: scripts/bench_vs_trainer.py); it says which."""
    if split_by_length != "auto":
        return bool(split_by_length)
    on_cpu = trainer.strategy.root_device.type == "cpu"
    rank_zero_info(
        "model.split_by_length auto -> "
        + (
            "on: each training batch runs as sub-batches of similar length, same rows and gradients, less padding"
            if on_cpu
            else "off: measured on CPU only"
        )  # fmt: skip
    )
    return on_cpu


def load_classifier(
    path: str, task: str, trust_remote_code: bool = False, role: str = "model", int8_ok: bool = False
) -> torch.nn.Module:
    """A trained classifier: a ``.ckpt`` of this project (rebuilt from the Hugging Face config stored
    in it, so the original model folder is not needed) or a folder / hub name with a classification head.
    An int8 checkpoint (QAT or PTQ) is refused unless ``int8_ok``: it can be evaluated, not trained."""
    from transformers import AutoConfig

    auto = _auto_class(task)
    if str(path).endswith(".ckpt"):
        if not Path(path).is_file():
            raise InputError(f"{role} checkpoint {path!r} does not exist: fix the path")
        checkpoint = check_checkpoint(path)  # one line for a corrupt file or pickled objects
        found = checkpoint.get("hyper_parameters", {}).get("task")
        if found != task:
            raise InputError(
                f"{role} checkpoint {path} is a {found}-classification model but the data is {task} "
                "classification: use a checkpoint of the same task"
            )
        if "hf_config" not in checkpoint:
            raise InputError(
                f"{role} checkpoint {path} holds no model config: it was not written by this project"
            )
        if "lora" in checkpoint:
            raise InputError(
                f"{role} checkpoint {path} holds LoRA adapters only (for resuming): use its run's model/ "
                "folder, where they are merged into the weights"
            )
        if "quantization" in checkpoint and not int8_ok:
            raise InputError(
                f"{role} checkpoint {path} is already int8-quantized: training (QAT, fine-tuning, "
                "distillation) needs the fp32 checkpoint it was made from"
            )
        config = dict(checkpoint["hf_config"])
        model = model_from_config(auto, AutoConfig.for_model(config.pop("model_type"), **config))
        prefix = "model."
        if "quantization" in checkpoint:
            load_int8_state(model, checkpoint, prefix)
            return model.eval()
        model.load_state_dict(
            {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        )
        masks = pruned_state(checkpoint["state_dict"])
        return prune_model(model, *masks) if masks else model  # a pruning stage's checkpoint
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError:
        raise InputError(
            f"{role} {path!r} is neither a .ckpt, a local model folder nor reachable on the hub: fix the path"
        ) from None
    heads = {"sequence": "ForSequenceClassification", "token": "ForTokenClassification"}
    if not any(heads[task] in name for name in config.architectures or []):
        raise InputError(
            f"{role} {path!r} has no fine-tuned {task}-classification head (architectures: "
            f"{config.architectures}): fine-tune it first with `shrink fit`"
        )
    return pruned_from_pretrained(auto, path) or auto.from_pretrained(
        path, trust_remote_code=trust_remote_code
    )


def build_classifier(
    task: str,
    label_names: list[str],
    model_name_or_path: str | None = None,
    model_config: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """An ``AutoModelFor{Sequence,Token}Classification`` from a hub name or folder, or from a
    config dict (``{"model_type": "bert", "hidden_size": 128, ...}``) for a from-scratch model.
    ``id2label`` is written into the model config so checkpoints and exports stay readable."""
    from transformers import AutoConfig

    auto = _auto_class(task)
    labels = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    if (model_name_or_path is None) == (model_config is None):
        raise InputError(
            "give exactly one of model.model_name_or_path (pretrained) or model.model_config (from scratch)"
        )
    if model_config is not None:
        config = dict(model_config)
        model_type = config.pop("model_type", None)
        if model_type is None:
            raise InputError(
                "model.model_config needs a model_type, e.g. {model_type: bert, hidden_size: 128}"
            )
        return model_from_config(auto, AutoConfig.for_model(model_type, **config, **labels))
    if (Path(model_name_or_path) / INT8_FILE).is_file():
        raise InputError(
            f"model {model_name_or_path} is an int8 model folder: training (QAT, fine-tuning, distillation, "
            "pruning) needs the fp32 model it was made from"
        )
    pruned = pruned_from_pretrained(auto, model_name_or_path)  # a pruned folder: its own shapes
    if model_name_or_path.endswith(".ckpt") or pruned is not None:  # e.g. a distilled student
        model = pruned or load_classifier(model_name_or_path, task, trust_remote_code)
        found = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if found != list(label_names):
            raise InputError(
                f"checkpoint labels {found} differ from the data's labels {list(label_names)}: "
                "set data.label_names to the checkpoint's order"
            )
        return model.train()
    try:
        model = auto.from_pretrained(
            model_name_or_path, trust_remote_code=trust_remote_code, ignore_mismatched_sizes=True, **labels
        )
    except OSError:
        raise InputError(
            f"model {model_name_or_path!r} is neither a local folder with a model nor reachable on "
            "the Hugging Face hub: fix model.model_name_or_path (offline? set HF_HUB_OFFLINE=1 "
            "and use a local folder)"
        ) from None
    # from_pretrained returns eval mode and Lightning keeps each module's mode: without this,
    # dropout would stay off during training
    return model.train()


class ClassificationModule(L.LightningModule):
    """Shared base. Subclasses build ``self.model`` (a Hugging Face classifier) and a ``training_step``."""

    flops_per_batch = None  # ThroughputMonitor asks for it; FLOPs of variable-length batches are not counted
    # QAT (torchao fake-quant tensors, scaled per batch) and pruning (masks set between steps) run
    # eager, on whole batches: no torch_compile, no split_by_length
    compilable = True

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
                where it was measured to pay, bf16 on a CPU with AMX and random batches: MiniLM-L6 steps
                2x faster after about 30 s of compiling (2 minutes the first time); elsewhere eager
                (length-grouped batches on AMX: 1.0x; an AMD EPYC Zen 4: 1.07x; GPUs are not measured
                yet). Fine-tuning and distillation only.
            split_by_length: run each training batch (and the teacher on it) as a few sub-batches of
                similar length, the cut chosen per batch: the same rows, loss and gradients as the
                padded batch, fewer padded tokens (``lightning_modules/length_split.py``). On random
                batches, MiniLM-L6 steps ran 1.4x (SST-2, bf16) to 1.9x (CoNLL, fp32) faster on 2 CPU cores.
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
        for name, value in (("torch_compile", torch_compile), ("split_by_length", split_by_length)):
            if value and value != "auto" and not self.compilable:
                raise InputError(f"model.{name} is for fine-tuning and distillation: {type(self).__name__} "
                                 "trains eager on whole batches")  # fmt: skip
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
            return [{"idx": i, self.label_names[0]: round(v, 6)}
                    for i, v in zip(batch["idx"].tolist(), logits.squeeze(-1).tolist(), strict=True)]  # fmt: skip
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
    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """What the optimizer sees; distillation overrides this to leave the teacher out."""
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
            from lightning_modules.model_folder import tokenizer_files

            self._tokenizer_files = tokenizer_files(datamodule.tokenizer)
        return self._tokenizer_files

    def lineage(self) -> list[dict[str, Any]]:
        """Where this model came from, oldest first (base -> teacher -> student -> int8), for model
        cards: the lineage recorded in the teacher's (or else the source model's) config, then this
        stage. Kept in the model config, so checkpoints and folders carry it to the next stage."""
        teacher = self._teacher[0] if getattr(self, "_teacher", None) else None
        source = teacher if teacher is not None else self.model
        previous = [dict(step) for step in getattr(source.config, "shrink_lineage", None) or []]
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
        if stage == "fit":
            self.model.config.shrink_lineage = self.lineage()
            grouped = bool(getattr(self.trainer.datamodule, "group_by_length", False))
            backend = compile_backend(self.torch_compile, self.trainer, grouped) if self.compilable else None
            self.split_batches = self.compilable and length_split_enabled(self.split_by_length, self.trainer)
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

    def deployable_model(self) -> torch.nn.Module:
        """The model a stage hands on (``OUT_DIR/model/``); the pruning stage's is physically smaller."""
        return self.model
