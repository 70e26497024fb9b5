"""Stage: structured pruning of attention heads and FFN neurons, recovered with distillation.

Starts from a fine-tuned or distilled model (``.ckpt`` or model folder) and trains it with the
distillation losses against a teacher: by default the unpruned model itself, or any fine-tuned
teacher (``model.teacher``; teacher cache included). While it trains, heads and FFN neurons are
switched off by masks in ``pruning_events`` steps spread over the first ``pruning_end`` of training,
on a cubic schedule (Zhu & Gupta 2017: most units go early, while the model can still recover),
each time those with the lowest first-order Taylor importance (``lightning_modules.methods.pruning``) since
the previous step. The rest of training recovers accuracy. When fit ends the best fully pruned
weights become a physically smaller model (``OUT_DIR/model/``).

Why Taylor scores and gradual masking rather than CoFi's learned L0 masks: no extra parameters,
no second learning rate and Lagrangian to tune, scores from the gradients each step computes
anyway, and the target is met exactly (within one head / neuron) by construction.

Masks and scores are buffers (in every checkpoint: exact resume mid-pruning; under DDP rank 0's
are broadcast with the other buffers, so every rank prunes the same units). The checkpoint monitor
only sees fully pruned models: its metric is logged as ``<metric>_pruned``, the worst value
until the last pruning step.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch

from datamodules.errors import InputError
from lightning_modules.artifacts.classifiers import build_classifier
from lightning_modules.methods.pruning import (
    check_prunable,
    encoder_flops,
    encoder_parameters,
    head_importance,
    head_size,
    keep_encoder_layers,
    layers,
    neuron_importance,
    prune_model,
    unit_parameters,
)
from lightning_modules.methods.teacher import Teacher
from lightning_modules.stages.base import ClassificationModule, eager_only

log = logging.getLogger(__name__)


class PruneModule(ClassificationModule):
    def __init__(
        self,
        model_name_or_path: str,
        target_sparsity: float = 0.5,
        teacher: str | None = None,
        prune_heads: bool = True,
        prune_neurons: bool = True,
        keep_layers: list[int] | None = None,
        pruning_events: int = 8,
        pruning_end: float = 0.5,
        temperature: float = 2.0,
        alpha: float = 0.5,
        hidden_weight: float = 0.0,
        attention_weight: float = 0.0,
        layer_map: dict[int, int] | None = None,
        teacher_cache: bool = False,
        cache_dir: str = "~/.cache/shrink",
        trust_remote_code: bool = False,
        learning_rate: float = 5e-5,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            model_name_or_path: the fp32 model to prune: our ``.ckpt`` or a model folder with a
                fine-tuned classification head (BERT-family: BERT, MiniLM, RoBERTa, XLM-R).
            target_sparsity: the fraction of encoder-layer parameters to remove, in (0, 1); met within
                one head and one FFN neuron.
            teacher: the teacher of the recovery distillation; default: the unpruned model itself.
            prune_heads: remove attention heads (at least one stays per layer).
            prune_neurons: remove FFN intermediate neurons (at least one stays per layer).
            keep_layers: keep only these encoder layers (0-based), dropped before pruning starts.
            pruning_events: how many times units are removed on the way to the target.
            pruning_end: the fraction of training steps by which the target is reached; the rest recovers.
            temperature, alpha, hidden_weight, attention_weight, layer_map, teacher_cache, cache_dir:
                the recovery distillation's settings, as in ``DistillationModule``.
            trust_remote_code: allow model code from the hub.
            learning_rate: peak learning rate of the recovery training.
            **kwargs: the shared arguments of ``ClassificationModule``.
        """
        if not 0 < target_sparsity < 1:
            raise InputError(
                f"model.target_sparsity is {target_sparsity}: give a fraction in (0, 1), e.g. 0.5"
            )
        if not (prune_heads or prune_neurons):
            raise InputError("model.prune_heads and model.prune_neurons are both off: nothing to prune")
        if pruning_events < 1 or not 0 < pruning_end <= 1:
            raise InputError(
                f"model.pruning_events {pruning_events} / model.pruning_end {pruning_end}: give at least "
                "one event and an end in (0, 1]"
            )
        eager_only("PruneModule", kwargs)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.save_hyperparameters()
        self.teacher = Teacher(
            teacher or model_name_or_path,
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
        model = build_classifier(self.task, self.label_names, model_name_or_path, None, trust_remote_code)
        self.model = (
            keep_encoder_layers(model, keep_layers, "keep_layers") if keep_layers is not None else model
        )
        self.projections = self.teacher.map_layers(self.model, layer_map)
        check_prunable(self.model, f"model {model_name_or_path}")
        self.target_sparsity, self.pruning_events, self.pruning_end = (
            target_sparsity,
            pruning_events,
            pruning_end,
        )
        d = head_size(self.model)
        for i, layer in enumerate(layers(self.model)):
            heads = layer.attention.self.query.out_features // d
            neurons = layer.intermediate.dense.out_features
            self.register_buffer(f"head_mask_{i}", torch.ones(heads))
            self.register_buffer(f"neuron_mask_{i}", torch.ones(neurons))
            self.register_buffer(f"head_score_{i}", torch.zeros(heads))
            self.register_buffer(f"neuron_score_{i}", torch.zeros(neurons))
            # the gates: a unit's mask multiplies its columns of the output projection's input
            layer.attention.output.dense.register_forward_pre_hook(self._gate(f"head_mask_{i}", d))
            layer.output.dense.register_forward_pre_hook(self._gate(f"neuron_mask_{i}", 1))
        self.register_buffer("events_done", torch.zeros((), dtype=torch.long))
        self.targets = self._unit_targets()
        self._monitor: tuple[str, str] | None = None

    # --- masks and the schedule ------------------------------------------------------------------
    def _gate(self, mask_name: str, width: int):
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            mask = getattr(self, mask_name)
            return (args[0] * mask.repeat_interleave(width).to(args[0].dtype),)

        return hook

    def masks(self, kind: str) -> list[torch.Tensor]:
        """Per layer, 1 for kept units, 0 for removed ones (``kind``: ``head`` or ``neuron``)."""
        return [getattr(self, f"{kind}_mask_{i}") for i in range(len(layers(self.model)))]

    def _unit_targets(self) -> dict[str, int]:
        """How many heads and neurons the final model loses: the same fraction of each pruned kind,
        chosen so that their parameters are ``target_sparsity`` of the encoder's."""
        per_head, per_neuron = unit_parameters(self.model)
        heads = sum(len(m) for m in self.masks("head")) if self.hparams.prune_heads else 0
        neurons = sum(len(m) for m in self.masks("neuron")) if self.hparams.prune_neurons else 0
        prunable = heads * per_head + neurons * per_neuron
        fraction = self.target_sparsity * encoder_parameters(self.model) / prunable
        n_layers = len(layers(self.model))
        if fraction * heads > heads - n_layers or fraction * neurons > neurons - n_layers:
            raise InputError(
                f"model.target_sparsity {self.target_sparsity} would remove every head or neuron of a "
                "layer: lower it, prune both heads and neurons, or drop whole layers with model.keep_layers"
            )
        return {"head": round(fraction * heads), "neuron": round(fraction * neurons)}

    def event_step(self, event: int) -> int:
        """The optimizer step after which pruning event ``event`` (1-based) runs."""
        total = self.trainer.estimated_stepping_batches
        return max(1, round(event * self.pruning_end * total / self.pruning_events))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Sum the step's |Taylor| scores (gradients are unscaled and, under DDP, averaged here)."""
        if int(self.events_done) >= self.pruning_events:
            return
        with torch.no_grad():
            for i, layer in enumerate(layers(self.model)):
                if layer.attention.output.dense.weight.grad is not None:
                    getattr(self, f"head_score_{i}").add_(head_importance(layer).abs().float())
                if layer.output.dense.weight.grad is not None:
                    getattr(self, f"neuron_score_{i}").add_(neuron_importance(layer).abs().float())

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        while int(self.events_done) < self.pruning_events and self.trainer.global_step >= self.event_step(
            int(self.events_done) + 1
        ):
            self.prune_step(int(self.events_done) + 1)
            self.events_done += 1

    @torch.no_grad()
    def prune_step(self, event: int) -> None:
        """Remove the lowest-scoring units until event ``event``'s share of the target is reached
        (cubic schedule), then restart the scores."""
        share = 1 - (1 - event / self.pruning_events) ** 3
        for kind in ("head", "neuron"):
            masks = self.masks(kind)
            scores = [getattr(self, f"{kind}_score_{i}") for i in range(len(masks))]
            goal = round(share * self.targets[kind])
            removed = sum(int((m == 0).sum()) for m in masks)
            candidates = []  # (normalised score, layer, unit); each layer keeps its best unit
            for i, (mask, score) in enumerate(zip(masks, scores, strict=True)):
                normalised = score / score.norm().clamp_min(1e-12)  # Michel et al.: per-layer L2
                kept = torch.nonzero(mask).flatten()
                ranked = kept[torch.argsort(normalised[kept], descending=True)]
                candidates += [(float(normalised[u]), i, int(u)) for u in ranked[1:]]
            for _, i, unit in sorted(candidates)[: max(0, goal - removed)]:
                masks[i][unit] = 0
            for score in scores:
                score.zero_()
        if self.trainer.world_size > 1:  # DDP: every rank must remove the same units
            decisions = torch.cat(self.masks("head") + self.masks("neuron"))
            if not (self.all_gather(decisions) == decisions).all():
                raise RuntimeError("pruning decisions differ between DDP ranks")
        self.log_pruning()

    def log_pruning(self) -> None:
        heads = sum(int(m.sum()) for m in self.masks("head"))
        neurons = sum(int(m.sum()) for m in self.masks("neuron"))
        per_head, per_neuron = unit_parameters(self.model)
        removed = (
            sum(int((m == 0).sum()) for m in self.masks("head")) * per_head
            + sum(int((m == 0).sum()) for m in self.masks("neuron")) * per_neuron
        )
        sparsity = removed / encoder_parameters(self.model)
        self.log_dict(
            {"prune/heads": float(heads), "prune/neurons": float(neurons), "prune/sparsity": sparsity}
        )

    # --- the checkpoint monitor sees fully pruned models only --------------------------------------
    def on_fit_start(self) -> None:
        self.teacher.prepare(self.trainer, self.trainer.datamodule, self.device)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        student = self(batch, labels=batch.get("labels"), **self.teacher.student_outputs())
        return self.log_losses(self.teacher.losses(student, batch, self.run, self.projections), batch)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        callback = self.trainer.checkpoint_callback if stage == "fit" else None
        monitor = getattr(callback, "monitor", None)
        if (
            monitor
            and monitor.startswith("val/")
            and monitor != "val/loss"
            and not monitor.endswith("_pruned")
        ):
            self._monitor = (monitor, callback.mode)
            callback.monitor = f"{monitor}_pruned"
        elif monitor and not monitor.endswith("_pruned"):
            log.warning(
                "checkpoint monitor %s is not a validation metric: the best checkpoint may be "
                "partly pruned (the model folder is built from it)",
                monitor,
            )

    def _log_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        values = super()._log_metrics(stage)
        if stage == "val" and self._monitor is not None and self._monitor[0] in values:
            name, mode = self._monitor
            done = int(self.events_done) >= self.pruning_events
            worst = -math.inf if mode == "max" else math.inf
            self.log(f"{name}_pruned", float(values[name]) if done else worst)
        return values

    # --- the deliverable -------------------------------------------------------------------------
    def deployable_model(self) -> torch.nn.Module:
        """A physically smaller copy of the model: masked heads and neurons removed."""
        model = prune_model(copy.deepcopy(self.model), self.masks("head"), self.masks("neuron"))
        return model

    def card_facts(self) -> dict[str, Any]:
        """Parameters and FLOPs before and after, for the model card."""
        pruned = self.deployable_model()
        return {
            "target_sparsity": self.target_sparsity,
            "heads per layer": [int(m.sum()) for m in self.masks("head")],
            "FFN neurons per layer": [int(m.sum()) for m in self.masks("neuron")],
            "encoder parameters": f"{encoder_parameters(self.model):,} -> {encoder_parameters(pruned):,}",
            "encoder GFLOPs at 128 tokens": f"{encoder_flops(self.model) / 1e9:.2f} -> {encoder_flops(pruned) / 1e9:.2f}",
        }
