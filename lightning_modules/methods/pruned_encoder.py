"""Encoders with fewer attention heads and FFN neurons per layer, as shrink's pruning stage writes them.

This file is copied into every pruned model folder (``auto_map`` in its ``config.json`` names the
classes below), so ``from_pretrained(folder, trust_remote_code=True)`` and
``pipeline(..., model=folder, trust_remote_code=True)`` rebuild the pruned shapes without shrink.
It imports only torch and transformers.

``config.shrink_pruned`` records the layout: ``{"heads": [kept heads per layer], "intermediate_sizes":
[kept FFN neurons per layer]}``. The stock model is built, then each layer's Q/K/V/output and FFN
Linear layers are replaced by smaller ones (the head size stays ``hidden_size / num_attention_heads``:
attention reshapes with ``-1`` heads, so fewer heads need no other change).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    BertForSequenceClassification,
    BertForTokenClassification,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    XLMRobertaForSequenceClassification,
    XLMRobertaForTokenClassification,
)

PRUNABLE_TYPES = ("bert", "roberta", "xlm-roberta")  # one attention/FFN module layout


def apply_layout(model: torch.nn.Module, layout: dict[str, Any]) -> torch.nn.Module:
    """Give each encoder layer ``layout["heads"][i]`` heads and ``layout["intermediate_sizes"][i]``
    FFN neurons (new, uninitialised Linear layers: load the pruned weights next)."""
    layers = model.base_model.encoder.layer
    if len(layout["heads"]) != len(layers) or len(layout["intermediate_sizes"]) != len(layers):
        raise ValueError(
            f"shrink_pruned describes {len(layout['heads'])} layers, the model has {len(layers)}"
        )
    for layer, heads, neurons in zip(layers, layout["heads"], layout["intermediate_sizes"], strict=True):
        attention = layer.attention.self
        hidden = attention.query.in_features
        width = heads * attention.attention_head_size
        for name in ("query", "key", "value"):
            setattr(attention, name, torch.nn.Linear(hidden, width))
        attention.num_attention_heads, attention.all_head_size = heads, width
        layer.attention.output.dense = torch.nn.Linear(width, hidden)
        layer.intermediate.dense = torch.nn.Linear(hidden, neurons)
        layer.output.dense = torch.nn.Linear(neurons, hidden)
    return model


def _pruned(base: type) -> type:
    class Pruned(base):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            apply_layout(self, config.shrink_pruned)

    # the base's name: transformers.pipeline checks a model's class name against its task's models (a
    # pruned BERT is a BERT classifier of other shapes); auto_map finds it by the module-level names
    Pruned.__name__ = Pruned.__qualname__ = base.__name__
    return Pruned


# named at module level: auto_map refers to them by name
PrunedBertForSequenceClassification = _pruned(BertForSequenceClassification)
PrunedBertForTokenClassification = _pruned(BertForTokenClassification)
PrunedRobertaForSequenceClassification = _pruned(RobertaForSequenceClassification)
PrunedRobertaForTokenClassification = _pruned(RobertaForTokenClassification)
PrunedXLMRobertaForSequenceClassification = _pruned(XLMRobertaForSequenceClassification)
PrunedXLMRobertaForTokenClassification = _pruned(XLMRobertaForTokenClassification)
