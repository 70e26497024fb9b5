"""Stage 2: distill a fine-tuned teacher into a smaller student.

Loss = ``alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE(student, labels)``
       (regression, one output: ``alpha * MSE(student, teacher) + (1 - alpha) * MSE(student, label)``)
       ``+ hidden_weight * MSE(project(student hidden), teacher hidden)``
       ``+ attention_weight * MSE(student attention, teacher attention)``.

The teacher is frozen and kept outside the module's children (a plain list attribute), so it is
not in the optimizer, not wrapped by DDP and not in checkpoints; it runs under the training
precision's autocast. Teacher and student may use different tokenizers: token-level terms line up
on word indices (first sub-token of each word), so any two tokenizers work.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import InputError
from lightning_modules.artifacts.classifiers import build_classifier, load_classifier, vocab_digest
from lightning_modules.methods.losses import attention_loss, hidden_state_loss, kd_loss, per_word
from lightning_modules.stages.base import ClassificationModule

log = logging.getLogger(__name__)


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer block list of a Hugging Face encoder (BERT, RoBERTa, MPNet, ...)."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise InputError(
            f"cannot find encoder layers in {type(model).__name__}: student_layers needs a BERT-like encoder"
        )
    return layers


def keep_layers(model: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """Keep the listed encoder layers (0-based, in order), DistilBERT-style, and update the config."""
    layers = encoder_layers(model)
    bad = [i for i in keep if not 0 <= i < len(layers)]
    if bad or not keep:
        raise InputError(
            f"model.student_layers {keep} names layers outside 0..{len(layers) - 1}: pick existing layers"
        )
    model.base_model.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep])
    model.config.num_hidden_layers = len(keep)
    return model


class DistillationModule(ClassificationModule):
    teacher_required = True  # QAT subclasses this with an optional teacher

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
        task = self.task
        self.save_hyperparameters()
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise InputError(
                f"model.temperature {temperature} / model.alpha {alpha}: the temperature must be above 0 "
                "and alpha in [0, 1]"
            )
        self.temperature, self.alpha = temperature, alpha
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        self.teacher_cache, self.cache_dir = teacher_cache, Path(cache_dir).expanduser()
        self.save_teacher = save_teacher

        self._teacher: list[torch.nn.Module] = []  # a list hides it: no optimizer, no DDP, no checkpoint
        if teacher is None:
            if self.teacher_required:
                raise InputError("model.teacher is not set: give a fine-tuned teacher .ckpt or model folder")
        else:
            self._teacher.append(self._load_teacher(teacher, task, trust_remote_code))

        if student_model_name_or_path is None and student_config is None:
            if student_layers is None:
                raise InputError(
                    "no student: set model.student_model_name_or_path, model.student_config "
                    "or model.student_layers (a layer subset of the teacher)"
                )
            if not self._teacher:
                raise InputError("model.student_layers needs a teacher to copy layers from")
            student = copy.deepcopy(self._teacher[0]).train().requires_grad_(True)
        else:
            student = build_classifier(
                task, self.label_names, student_model_name_or_path, student_config, trust_remote_code
            )
        self.model = keep_layers(student, student_layers) if student_layers is not None else student

        self.projections = torch.nn.ModuleList()
        self.layer_map: dict[int, int] = {}
        if hidden_weight > 0 or attention_weight > 0:
            if not self._teacher:
                raise InputError("hidden-state / attention transfer needs model.teacher")
            if attention_weight > 0:  # attention maps are only returned by the eager implementation
                for model in (self.model, self._teacher[0]):
                    model.config._attn_implementation = "eager"
            self.layer_map = self._check_layer_map(layer_map)
            widths = (self.model.config.hidden_size, self._teacher[0].config.hidden_size)
            if hidden_weight > 0:
                self.projections.extend(
                    torch.nn.Linear(*widths) if widths[0] != widths[1] else torch.nn.Identity()
                    for _ in self.layer_map
                )
        self._cache: dict[str, torch.Tensor] | None = None

    # --- setup ---------------------------------------------------------------------------------
    def _load_teacher(self, teacher: str, task: str, trust_remote_code: bool) -> torch.nn.Module:
        model = load_classifier(teacher, task, trust_remote_code=trust_remote_code, role="teacher")
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if labels != self.label_names:
            raise InputError(
                f"teacher labels {labels} differ from the data's labels {self.label_names}: "
                "set data.label_names to the teacher's order or distill from a matching teacher"
            )
        return model.eval().requires_grad_(False)

    @property
    def teacher(self) -> torch.nn.Module:
        model = self._teacher[0]
        if next(model.parameters()).device != self.device:
            model.to(self.device)
        return model

    def _check_layer_map(self, layer_map: dict[int, int] | None) -> dict[int, int]:
        n_student = self.model.config.num_hidden_layers
        n_teacher = self._teacher[0].config.num_hidden_layers
        if layer_map is None:
            layer_map = {i: round(i * n_teacher / n_student) for i in range(1, n_student + 1)}
        for s, t in layer_map.items():
            if not 0 <= s <= n_student or not 0 <= t <= n_teacher:
                raise InputError(
                    f"model.layer_map {s}: {t} names a layer that does not exist: the student has "
                    f"0..{n_student}, the teacher 0..{n_teacher} (0 = embeddings)"
                )
            if self.attention_weight > 0 and 0 in (s, t):
                raise InputError(
                    "model.layer_map maps the embeddings (0), which have no attention: map blocks 1..L"
                )
        if self.attention_weight > 0:
            heads = (self.model.config.num_attention_heads, self._teacher[0].config.num_attention_heads)
            if heads[0] != heads[1]:
                raise InputError(
                    f"attention transfer needs equal head counts (student {heads[0]}, teacher {heads[1]}): "
                    "set model.attention_weight 0"
                )
        return dict(sorted(layer_map.items()))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.save_teacher and self._teacher:
            checkpoint["teacher_state_dict"] = self._teacher[0].state_dict()

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]  # the teacher is not a child

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if not self._teacher:  # nothing to distill from: the plain task loss needs labels
            datamodule.require_labels("fit")
            return
        trained_with = getattr(self._teacher[0].config, "shrink_tokenizer", None)
        given = datamodule.teacher_tokenizer_name or datamodule.tokenizer_name
        same_name = trained_with and (
            os.path.abspath(trained_with) == os.path.abspath(given) or trained_with == given
        )
        recorded = getattr(self._teacher[0].config, "shrink_tokenizer_vocab", None)
        tokenizer = datamodule.teacher_tokenizer or datamodule.tokenizer
        if trained_with and not same_name and not (recorded and recorded == vocab_digest(tokenizer)):
            raise InputError(
                f"the teacher was fine-tuned with tokenizer {trained_with!r} but the data tokenizes for it "
                f"with {given!r}: set data.teacher_tokenizer {trained_with}"
            )
        if self.attention_weight > 0 and datamodule.teacher_tokenizer_name not in (
            None,
            datamodule.tokenizer_name,
        ):
            raise InputError(
                "attention transfer needs one tokenizer for teacher and student: "
                "drop data.teacher_tokenizer or set model.attention_weight 0"
            )
        if self.teacher_cache:
            if self.hidden_weight > 0 or self.attention_weight > 0:
                log.warning(
                    "teacher cache holds logits only: hidden-state/attention transfer runs the teacher live"
                )
            else:
                self._cache = self._load_or_build_cache(datamodule)

    # --- teacher cache -------------------------------------------------------------------------
    def _cache_key(self, datamodule) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self._teacher[0].state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        digest.update(datamodule.split_fingerprint(datamodule.splits["fit"]).encode())
        digest.update(f"{self.task}|{self.trainer.precision}".encode())
        return digest.hexdigest()[:20]

    def _load_or_build_cache(self, datamodule) -> dict[str, torch.Tensor]:
        path = self.cache_dir / "teacher" / f"{self._cache_key(datamodule)}.pt"
        if self.trainer.is_global_zero and not path.exists():
            log.warning("teacher cache: none for this teacher, data and preprocessing; building %s", path)
            # building draws no random numbers the training sees: a run that builds the cache and
            # one that reuses it train identically (a DataLoader iterator draws a seed)
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                cache = self._build_cache(datamodule)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(cache, f"{path}.tmp{os.getpid()}")
            os.replace(f"{path}.tmp{os.getpid()}", path)
        elif self.trainer.is_global_zero:
            log.warning("teacher cache: reusing %s", path)
        self.trainer.strategy.barrier()
        return {
            k: v.to(self.device) for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
        }

    @torch.no_grad()
    def _build_cache(self, datamodule) -> dict[str, torch.Tensor]:
        data = datamodule.encoded_split(datamodule.splits["fit"])
        # shortest rows first: batches of similar lengths carry little padding (rows go back by index)
        ids = data["teacher_input_ids" if "teacher_input_ids" in data.column_names else "input_ids"]
        order = sorted(range(len(data)), key=lambda i: len(ids[i]))
        loader = torch.utils.data.DataLoader(
            data, batch_size=datamodule.eval_batch_size, sampler=order, collate_fn=datamodule.collate
        )
        word_column = "teacher_word_ids" if "teacher_word_ids" in data.column_names else "word_ids"
        n_words = max(max(ids) + 1 for ids in data[word_column])
        n_classes = len(self.label_names)
        shape = (len(data), n_classes) if self.task == "sequence" else (len(data), n_words, n_classes)
        logits, present = torch.zeros(shape), torch.zeros(shape[:-1], dtype=torch.bool)
        precision = self.trainer.precision_plugin
        report_every = max(1, len(loader) // 10)
        for step, batch in enumerate(loader, 1):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with precision.forward_context():
                values, mask = self._teacher_logits(batch, n_words)
            logits[batch["idx"].cpu()] = values.float().cpu()
            present[batch["idx"].cpu()] = mask.cpu()
            if step % report_every == 0:
                log.warning("teacher cache: %d of %d batches", step, len(loader))
        return {"logits": logits, "present": present}

    # --- losses --------------------------------------------------------------------------------
    def _teacher_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        prefix = "teacher_" if "teacher_input_ids" in batch else ""
        return {
            k: batch[prefix + k]
            for k in ("input_ids", "attention_mask", "token_type_ids")
            if prefix + k in batch
        }

    def _teacher_word_ids(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["teacher_word_ids"] if "teacher_input_ids" in batch else batch["word_ids"]

    def _teacher_logits(self, batch: dict[str, torch.Tensor], n_words: int, output=None):
        """Teacher logits per sentence, or per word ``[batch, n_words, classes]`` with a mask."""
        if output is None:
            output = self.teacher(**self._teacher_inputs(batch))
        if self.task == "sequence":
            return output.logits, torch.ones(output.logits.shape[0], dtype=torch.bool, device=self.device)
        return per_word(output.logits, self._teacher_word_ids(batch), n_words)

    def distillation_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each loss term, and their weighted sum as ``loss``."""
        need_states = self.hidden_weight > 0 or self.attention_weight > 0
        kwargs = {
            "output_hidden_states": self.hidden_weight > 0,
            "output_attentions": self.attention_weight > 0,
        }
        labels = batch.get("labels")
        student = self(batch, labels=labels, **kwargs)
        n_words = 1
        if self.task == "token" or self.hidden_weight > 0:
            n_words = int(max(batch["word_ids"].max(), self._teacher_word_ids(batch).max())) + 1

        teacher_output = None
        if self._cache is not None and not need_states:
            teacher_logits = self._cache["logits"][batch["idx"]]
            teacher_present = self._cache["present"][batch["idx"]]
            if self.task == "token":
                teacher_logits, teacher_present = teacher_logits[:, :n_words], teacher_present[:, :n_words]
                missing = n_words - teacher_logits.shape[1]
                if missing > 0:  # the teacher's tokenizer truncated these words away: nothing to match
                    teacher_logits = torch.nn.functional.pad(teacher_logits, (0, 0, 0, missing))
                    teacher_present = torch.nn.functional.pad(teacher_present, (0, missing))
        else:
            with torch.no_grad():
                teacher_output = self.run(self.teacher, self._teacher_inputs(batch), **kwargs)
            teacher_logits, teacher_present = self._teacher_logits(batch, n_words, teacher_output)

        if self.task == "sequence" and len(self.label_names) == 1:  # regression: match the teacher's number
            soft = torch.nn.functional.mse_loss(student.logits.float(), teacher_logits.float())
        elif self.task == "sequence":
            soft = kd_loss(student.logits, teacher_logits, self.temperature)
        else:
            student_logits, student_present = per_word(student.logits, batch["word_ids"], n_words)
            soft = kd_loss(
                student_logits, teacher_logits, self.temperature, student_present & teacher_present
            )
        losses = {"kd_loss": soft}
        if labels is not None:
            losses["ce_loss"] = student.loss
            total = self.alpha * soft + (1 - self.alpha) * student.loss
        else:  # transfer data without labels: the soft loss alone
            total = soft
        if self.hidden_weight > 0:
            pairs = [
                (
                    per_word(student.hidden_states[s], batch["word_ids"], n_words),
                    per_word(teacher_output.hidden_states[t], self._teacher_word_ids(batch), n_words),
                )
                for s, t in self.layer_map.items()
            ]
            mask = pairs[0][0][1] & pairs[0][1][1]
            losses["hidden_loss"] = hidden_state_loss(
                [s for (s, _), _ in pairs], [t for _, (t, _) in pairs], self.projections, mask
            )
            total = total + self.hidden_weight * losses["hidden_loss"]
        if self.attention_weight > 0:
            losses["attention_loss"] = attention_loss(
                [student.attentions[s - 1] for s in self.layer_map],
                [teacher_output.attentions[t - 1] for t in self.layer_map.values()],
                batch["attention_mask"],
            )
            total = total + self.attention_weight * losses["attention_loss"]
        losses["loss"] = total
        return losses

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if not self._teacher:
            losses = {"loss": self(batch, labels=batch["labels"]).loss}
        else:
            losses = self.distillation_losses(batch)
        size = self.batch_size(batch)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=size)
        return losses["loss"]
