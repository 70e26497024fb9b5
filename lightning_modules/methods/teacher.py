"""The teacher a stage learns from: a frozen fine-tuned classifier, its checks (labels, tokenizer,
layer map), its logits (live, or from a cache built once per teacher and training split) and the
distillation terms against a student's outputs. Distillation, pruning recovery and QAT each hold one
(pruning and QAT optionally); it is not a child module, so it has no optimizer state, no DDP wrapper
and no place in the student's checkpoints."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import InputError
from lightning_modules.artifacts.classifiers import load_classifier, vocab_digest
from lightning_modules.methods.losses import attention_loss, hidden_state_loss, kd_per_row, per_word

log = logging.getLogger(__name__)


class Teacher:
    def __init__(
        self,
        path: str,
        task: str,
        label_names: list[str],
        temperature: float = 2.0,
        alpha: float = 0.5,
        hidden_weight: float = 0.0,
        attention_weight: float = 0.0,
        cache: bool = False,
        cache_dir: str | Path = "~/.cache/shrink",
        trust_remote_code: bool = False,
    ) -> None:
        """The soft loss is ``alpha`` times KL at ``temperature`` (MSE for regression); ``hidden_weight``
        and ``attention_weight`` add hidden-state and attention-map MSE over a layer map; ``cache``
        keeps the teacher's logits of the training split on disk under ``cache_dir``."""
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise InputError(
                f"model.temperature {temperature} / model.alpha {alpha}: the temperature must be above 0 "
                "and alpha in [0, 1]"
            )
        self.task, self.label_names = task, list(label_names)
        self.temperature, self.alpha = temperature, alpha
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        self.cache, self.cache_dir = cache, Path(cache_dir).expanduser()
        model = load_classifier(path, task, trust_remote_code=trust_remote_code, role="teacher")
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if labels != self.label_names:
            raise InputError(
                f"teacher labels {labels} differ from the data's labels {self.label_names}: "
                "set data.label_names to the teacher's order or distill from a matching teacher"
            )
        self.model = model.eval().requires_grad_(False)
        if attention_weight > 0:  # attention maps are only returned by the eager implementation
            self.model.config._attn_implementation = "eager"
        self.layer_map: dict[int, int] = {}
        self._logits: dict[str, torch.Tensor] | None = None

    @property
    def transfers_states(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0

    def on(self, device: torch.device) -> torch.nn.Module:
        """The teacher model on ``device`` (moved on first use: the stage's device is known late)."""
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        return self.model

    # --- checks ----------------------------------------------------------------------------------
    def map_layers(self, student: torch.nn.Module, layer_map: dict[int, int] | None) -> torch.nn.ModuleList:
        """Fix the student -> teacher layer map of hidden-state / attention transfer (0 = embeddings;
        default student i <- teacher round(i * L_t / L_s)) and return the projections it trains."""
        if not self.transfers_states:
            return torch.nn.ModuleList()
        if self.attention_weight > 0:
            student.config._attn_implementation = "eager"
        n_student, n_teacher = student.config.num_hidden_layers, self.model.config.num_hidden_layers
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
            heads = (student.config.num_attention_heads, self.model.config.num_attention_heads)
            if heads[0] != heads[1]:
                raise InputError(
                    f"attention transfer needs equal head counts (student {heads[0]}, teacher {heads[1]}): "
                    "set model.attention_weight 0"
                )
        self.layer_map = dict(sorted(layer_map.items()))
        widths = (student.config.hidden_size, self.model.config.hidden_size)
        if self.hidden_weight == 0:
            return torch.nn.ModuleList()
        return torch.nn.ModuleList(
            torch.nn.Linear(*widths) if widths[0] != widths[1] else torch.nn.Identity()
            for _ in self.layer_map
        )

    def check_tokenizer(self, datamodule) -> None:
        """The data must tokenize for the teacher with the tokenizer it was fine-tuned with (matched
        by name or by vocabulary), and attention transfer needs one tokenizer for both."""
        trained_with = getattr(self.model.config, "shrink_tokenizer", None)
        given = datamodule.teacher_tokenizer_name or datamodule.tokenizer_name
        same_name = trained_with and (
            os.path.abspath(trained_with) == os.path.abspath(given) or trained_with == given
        )
        recorded = getattr(self.model.config, "shrink_tokenizer_vocab", None)
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

    def prepare(self, trainer, datamodule, device: torch.device) -> None:
        """At fit start: the checks, then the logit cache when asked for (built by rank 0)."""
        self.check_tokenizer(datamodule)
        if not self.cache:
            return
        if self.transfers_states:
            log.warning(
                "teacher cache holds logits only: hidden-state/attention transfer runs the teacher live"
            )
            return
        path = self.cache_dir / "teacher" / f"{self.cache_key(datamodule, trainer.precision)}.pt"
        if trainer.is_global_zero and not path.exists():
            log.warning("teacher cache: none for this teacher, data and preprocessing; building %s", path)
            # building draws no random numbers the training sees: a run that builds the cache and
            # one that reuses it train identically (a DataLoader iterator draws a seed)
            started = time.perf_counter()
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                cache = self.build_cache(datamodule, trainer.precision_plugin, device)
            rows, seconds = len(cache["logits"]), time.perf_counter() - started
            log.warning(
                "teacher cache: scored %d rows in %.1f s (%.0f rows/s)", rows, seconds, rows / seconds
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(cache, f"{path}.tmp{os.getpid()}")
            os.replace(f"{path}.tmp{os.getpid()}", path)
        elif trainer.is_global_zero:
            log.warning("teacher cache: reusing %s", path)
        trainer.strategy.barrier()
        self._logits = {
            k: v.to(device) for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
        }

    # --- logits ----------------------------------------------------------------------------------
    def cache_key(self, datamodule, precision: Any) -> str:
        """A hash of the teacher's weights, the training split as encoded, the task and the precision."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        digest.update(datamodule.split_fingerprint(datamodule.splits["fit"]).encode())
        digest.update(f"{self.task}|{precision}".encode())
        return digest.hexdigest()[:20]

    @torch.no_grad()
    def build_cache(self, datamodule, precision, device: torch.device) -> dict[str, torch.Tensor]:
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
        report_every = max(1, len(loader) // 10)
        for step, batch in enumerate(loader, 1):
            batch = {k: v.to(device) for k, v in batch.items()}
            with precision.forward_context():
                values, mask = self.logits(batch, n_words)
            logits[batch["idx"].cpu()] = values.float().cpu()
            present[batch["idx"].cpu()] = mask.cpu()
            if step % report_every == 0:
                log.warning("teacher cache: %d of %d batches", step, len(loader))
        return {"logits": logits, "present": present}

    @staticmethod
    def inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The teacher's own encoding of the batch (``teacher_*`` columns with another tokenizer)."""
        prefix = "teacher_" if "teacher_input_ids" in batch else ""
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return {k: batch[prefix + k] for k in keys if prefix + k in batch}

    @staticmethod
    def word_ids(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["teacher_word_ids"] if "teacher_input_ids" in batch else batch["word_ids"]

    def logits(self, batch: dict[str, torch.Tensor], n_words: int, output=None):
        """Teacher logits per sentence, or per word ``[batch, n_words, classes]``, with a presence mask."""
        if output is None:
            output = self.on(batch["input_ids"].device)(**self.inputs(batch))
        if self.task == "sequence":
            return output.logits, torch.ones(
                output.logits.shape[0], dtype=torch.bool, device=output.logits.device
            )
        return per_word(output.logits, self.word_ids(batch), n_words)

    # --- losses ----------------------------------------------------------------------------------
    def soft_per_row(self, student, batch, teacher_logits, teacher_present, n_words):
        """The soft loss of each row (sentence, or word for token tasks) and which rows count."""
        if self.task == "sequence":
            present = torch.ones_like(teacher_present)
            if len(self.label_names) == 1:  # regression: match the teacher's number
                return (student.logits.float() - teacher_logits.float()).pow(2).sum(-1), present
            return kd_per_row(student.logits, teacher_logits, self.temperature), present
        student_logits, student_present = per_word(student.logits, batch["word_ids"], n_words)
        return kd_per_row(student_logits, teacher_logits, self.temperature), student_present & teacher_present

    def task_losses(self, student, batch, teacher_logits, teacher_present, n_words):
        """``alpha * soft + (1 - alpha) * hard`` (the soft loss alone on a split without labels)."""
        soft, present = self.soft_per_row(student, batch, teacher_logits, teacher_present, n_words)
        soft = soft[present].mean() if present.any() else student.logits.sum() * 0.0
        losses = {"kd_loss": soft}
        if batch.get("labels") is None:
            return losses, soft
        losses["ce_loss"] = student.loss
        return losses, self.alpha * soft + (1 - self.alpha) * student.loss

    def mixed_losses(self, student, batch, teacher_logits, teacher_present, n_words):
        """A batch of labelled and transfer rows, per row ``r`` of the ``N`` that count:
        ``sum_r (alpha if labelled else 1) * soft_r + (1 - alpha) * [labelled] * hard_r``, over ``N``."""
        soft, present = self.soft_per_row(student, batch, teacher_logits, teacher_present, n_words)
        labelled = batch["labelled"]
        if self.task == "token":
            labelled = labelled[:, None].expand_as(present)
        weight = torch.where(labelled, self.alpha, 1.0)
        labels, logits = batch["labels"], student.logits.float()
        if len(self.label_names) == 1:
            hard = (logits.squeeze(-1) - labels.float()).pow(2)[batch["labelled"]]
        else:  # placeholder labels are -100: cross-entropy ignores them
            hard = torch.nn.functional.cross_entropy(
                logits.flatten(0, -2), labels.flatten(), reduction="none"
            )
            hard = hard[labels.flatten() != -100]
        n = present.sum().clamp(min=1)
        total = ((weight * soft)[present].sum() + (1 - self.alpha) * hard.sum()) / n
        losses = {"kd_loss": soft[present].sum() / n}
        if hard.numel():
            losses["ce_loss"] = hard.mean()
        return losses, total

    def student_outputs(self) -> dict[str, bool]:
        """What the student's forward must return for these losses."""
        return {
            "output_hidden_states": self.hidden_weight > 0,
            "output_attentions": self.attention_weight > 0,
        }

    def losses(self, student, batch: dict[str, torch.Tensor], run, projections) -> dict[str, torch.Tensor]:
        """Each distillation term and their weighted sum as ``loss``: ``student`` is the student's
        output on ``batch`` (with ``student_outputs()``), ``run(model, inputs, **kwargs)`` the stage's
        forward (split by length or not) for the live teacher, ``projections`` the hidden-state maps."""
        n_words = 1
        if self.task == "token" or self.hidden_weight > 0:
            n_words = int(max(batch["word_ids"].max(), self.word_ids(batch).max())) + 1
        teacher_output = None
        if self._logits is not None and not self.transfers_states:
            teacher_logits = self._logits["logits"][batch["idx"]]
            teacher_present = self._logits["present"][batch["idx"]]
            if self.task == "token":
                teacher_logits, teacher_present = teacher_logits[:, :n_words], teacher_present[:, :n_words]
                missing = n_words - teacher_logits.shape[1]
                if missing > 0:  # the teacher's tokenizer truncated these words away: nothing to match
                    teacher_logits = torch.nn.functional.pad(teacher_logits, (0, 0, 0, missing))
                    teacher_present = torch.nn.functional.pad(teacher_present, (0, missing))
        else:
            with torch.no_grad():
                model = self.on(batch["input_ids"].device)
                teacher_output = run(model, self.inputs(batch), **self.student_outputs())
            teacher_logits, teacher_present = self.logits(batch, n_words, teacher_output)

        if "labelled" in batch:  # transfer rows in the batch: their soft loss alone
            losses, total = self.mixed_losses(student, batch, teacher_logits, teacher_present, n_words)
        else:
            losses, total = self.task_losses(student, batch, teacher_logits, teacher_present, n_words)
        if self.hidden_weight > 0:
            pairs = [
                (
                    per_word(student.hidden_states[s], batch["word_ids"], n_words),
                    per_word(teacher_output.hidden_states[t], self.word_ids(batch), n_words),
                )
                for s, t in self.layer_map.items()
            ]
            mask = pairs[0][0][1] & pairs[0][1][1]
            losses["hidden_loss"] = hidden_state_loss(
                [s for (s, _), _ in pairs], [t for _, (t, _) in pairs], projections, mask
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
