"""Structured pruning of BERT-family encoders: attention heads and FFN neurons, their importance
scores, their masks during training, and the physically smaller model they leave.

Importance is first-order Taylor (Molchanov et al. 2017; for heads, Michel et al. 2019): the effect
on the loss of switching a unit off, ``|dL/d gate|`` for a gate multiplying the unit's output. The
gate of head h multiplies the columns ``cols(h)`` of the attention output projection's input, and
``dL/d gate = sum(W[:, cols(h)] * dL/dW[:, cols(h)])`` (the gradient of a Linear weight is the sum over
tokens of output gradient times input), so the scores come from weights and gradients the step has
anyway: no extra backward pass and no gate parameters. FFN neuron j is column j of the FFN output
projection. Scores are summed over steps and normalised per layer (Michel et al.).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import InputError
from lightning_modules.methods.pruned_encoder import PRUNABLE_TYPES, apply_layout

REMOTE_CODE = Path(__file__).with_name("pruned_encoder.py")  # copied into pruned model folders


def check_prunable(model: torch.nn.Module, role: str = "model") -> None:
    """One line for a model whose layers this module cannot prune."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in PRUNABLE_TYPES:
        raise InputError(
            f"{role} is a {model_type} model: pruning supports {', '.join(PRUNABLE_TYPES)} encoders "
            "(e.g. MiniLM); distill into one of those first, then prune"
        )


def layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.base_model.encoder.layer


def head_size(model: torch.nn.Module) -> int:
    return layers(model)[0].attention.self.attention_head_size


def head_importance(layer: torch.nn.Module) -> torch.Tensor:
    """``dL/d gate`` of each head of one layer, from the attention output projection's weight and
    gradient (zero for heads masked out: their input columns are zero, so is their gradient)."""
    dense = layer.attention.output.dense
    per_column = (dense.weight * dense.weight.grad).sum(0)
    return per_column.view(-1, layer.attention.self.attention_head_size).sum(-1)


def neuron_importance(layer: torch.nn.Module) -> torch.Tensor:
    """``dL/d gate`` of each FFN neuron of one layer, from the FFN output projection."""
    dense = layer.output.dense
    return (dense.weight * dense.weight.grad).sum(0)


def unit_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """Parameters one head (Q, K, V rows and biases, output projection columns) and one FFN neuron
    (intermediate row and bias, output column) hold."""
    hidden, d = model.config.hidden_size, head_size(model)
    return 3 * (hidden * d + d) + hidden * d, 2 * hidden + 1


def encoder_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in layers(model).parameters())


def encoder_flops(model: torch.nn.Module, tokens: int = 128) -> int:
    """Multiply-adds x 2 of the encoder layers for one sequence of ``tokens``: the Linear layers and
    the two attention products (scores and weighted values), which shrink with the heads."""
    flops = 0
    for layer in layers(model):
        linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
        flops += 2 * tokens * sum(m.in_features * m.out_features for m in linears)
        flops += 2 * 2 * tokens * tokens * layer.attention.self.query.out_features
    return flops


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: torch.nn.Linear) -> torch.nn.Linear:
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new = new.to(device=like.weight.device, dtype=like.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new.requires_grad_(like.weight.requires_grad)


def prune_model(
    model: torch.nn.Module, head_masks: list[torch.Tensor], neuron_masks: list[torch.Tensor]
) -> torch.nn.Module:
    """Remove (in place) the heads and FFN neurons whose mask is 0: smaller Linear layers holding the
    kept rows / columns. Records the layout in ``config.shrink_pruned`` and names the classes of
    ``pruned_encoder.py`` in ``config.auto_map``, so the saved folder rebuilds these shapes."""
    check_prunable(model)
    d = head_size(model)
    for layer, heads, neurons in zip(layers(model), head_masks, neuron_masks, strict=True):
        if not heads.bool().any() or not neurons.bool().any():
            raise InputError("a layer would keep no head or no FFN neuron: lower model.target_sparsity")
        kept = torch.nonzero(heads.bool()).flatten()
        cols = (kept[:, None] * d + torch.arange(d, device=kept.device)).flatten().to(heads.device)
        attention = layer.attention.self
        for name in ("query", "key", "value"):
            old = getattr(attention, name)
            cols_ = cols.to(old.weight.device)
            setattr(attention, name, _linear(old.weight[cols_], old.bias[cols_], old))
        attention.num_attention_heads, attention.all_head_size = len(kept), len(cols)
        out = layer.attention.output.dense
        layer.attention.output.dense = _linear(out.weight[:, cols.to(out.weight.device)], out.bias, out)
        keep = torch.nonzero(neurons.bool()).flatten()
        up, down = layer.intermediate.dense, layer.output.dense
        keep_ = keep.to(up.weight.device)
        layer.intermediate.dense = _linear(up.weight[keep_], up.bias[keep_], up)
        layer.output.dense = _linear(down.weight[:, keep_], down.bias, down)
    record_layout(model)
    return model


def record_layout(model: torch.nn.Module) -> None:
    """Write the per-layer head and FFN sizes into the config (with ``auto_map``) when they differ
    from the stock shapes the config alone would build."""
    config = model.config
    layout = {
        "heads": [layer.attention.self.query.out_features // head_size(model) for layer in layers(model)],
        "intermediate_sizes": [layer.intermediate.dense.out_features for layer in layers(model)],
    }
    stock = {
        "heads": [config.num_attention_heads] * len(layout["heads"]),
        "intermediate_sizes": [config.intermediate_size] * len(layout["heads"]),
    }
    if layout == stock:
        return
    config.shrink_pruned = layout
    family = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}[config.model_type]
    config.auto_map = {
        f"AutoModelFor{head}Classification": f"pruned_encoder.Pruned{family}For{head}Classification"
        for head in ("Sequence", "Token")
    }


def model_from_config(auto: Any, config: Any) -> torch.nn.Module:
    """``auto.from_config``, with a pruned layout (``shrink_pruned``) applied: randomly initialised
    Linear layers of the pruned shapes, ready for the pruned weights."""
    model = auto.from_config(config)
    layout = getattr(config, "shrink_pruned", None)
    return apply_layout(model, layout) if layout else model


def pruned_from_pretrained(auto: Any, path: str) -> torch.nn.Module | None:
    """A pruned model folder (``shrink_pruned`` in its config) loaded without remote code: the stock
    classes with ``apply_layout``, then its weights. None for any other folder."""
    from transformers import AutoConfig

    config_file = Path(path) / "config.json"
    if not config_file.is_file() or "shrink_pruned" not in json.loads(config_file.read_text()):
        return None
    from safetensors.torch import load_file

    model = model_from_config(auto, AutoConfig.from_pretrained(path))

    try:
        model.load_state_dict(load_file(str(Path(path) / "model.safetensors")))
    except (RuntimeError, OSError) as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise InputError(f"pruned model {path}: its weights do not match its layout ({first})") from None
    return model


def pruned_state(state_dict: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """The head and FFN masks a pruning stage's checkpoint holds (None: not a pruning checkpoint)."""
    if "head_mask_0" not in state_dict:
        return None
    n = sum(1 for k in state_dict if k.startswith("head_mask_"))
    return [state_dict[f"head_mask_{i}"] for i in range(n)], [
        state_dict[f"neuron_mask_{i}"] for i in range(n)
    ]


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer block list of a Hugging Face encoder (BERT, RoBERTa, MPNet, ...)."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise InputError(
            f"cannot find encoder layers in {type(model).__name__}: student_layers needs a BERT-like encoder"
        )
    return layers


def keep_encoder_layers(
    model: torch.nn.Module, keep: list[int], name: str = "student_layers"
) -> torch.nn.Module:
    """Keep the listed encoder layers (0-based, in order), DistilBERT-style, and update the config."""
    layers = encoder_layers(model)
    bad = [i for i in keep if not 0 <= i < len(layers)]
    if bad or not keep:
        raise InputError(
            f"model.{name} {keep} names layers outside 0..{len(layers) - 1}: pick existing layers"
        )
    model.base_model.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep])
    model.config.num_hidden_layers = len(keep)
    return model
