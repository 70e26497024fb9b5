"""Deployment: ONNX export of fp32 and int8 classifiers, run by ONNX Runtime on CPU, and the parity
check that compares an exported model with the PyTorch model it came from.

int8 graphs: ``lightning_modules.artifacts.int8_onnx`` (what they compute, and which kernels run them).
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import InputError
from datamodules.token import word_start_mask
from lightning_modules.artifacts.int8_onnx import (
    MS,
    constant_reshapes,
    int8_graph,
)
from lightning_modules.methods.quantize import dequantized, is_quantized

OPSET = 17
INT8_KERNELS = (
    "u8s8",
    "u8u8",
)  # int8 matmul operand types, the file's default first (lightning_modules.artifacts.int8_onnx)


def input_names(model: torch.nn.Module) -> list[str]:
    """The inputs the classifier takes (MPNet and RoBERTa have no token types in use)."""
    names = ["input_ids", "attention_mask"]
    if (
        "token_type_ids" in inspect.signature(model.forward).parameters
        and getattr(model.config, "type_vocab_size", 0) > 1
    ):
        names.append("token_type_ids")
    return names


def model_inputs(batch: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """The graph's inputs from a batch; token types default to zeros (tokenizers without them)."""
    return {name: batch[name] if name in batch else torch.zeros_like(batch["input_ids"]) for name in names}


class _LogitsOnly(torch.nn.Module):
    """ONNX needs positional inputs and one output."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).logits


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    int8_kernel: str = "u8s8",
    fuse: bool = False,
    fp16: bool = False,
    eager_attention: bool | None = None,
) -> Path:
    """Write ``model`` as ONNX: fp32, or, for a torchao int8 model, an int8 graph with the same
    numerics (``int8_graph``; ``int8_kernel`` picks the MatMulInteger operand types, see
    ``INT8_KERNELS``); ``fuse`` then applies ONNX Runtime's transformer fusions (``fuse_transformer_ops``);
    ``fp16`` (fp32 models, for GPUs) stores weights and computes in float16, with int64 inputs and
    float32 logits as before; ``eager_attention`` (default: for int8 and fused graphs) exports the
    model's eager attention instead of SDPA's. Written beside ``path`` and renamed: never half a file."""
    import onnx

    if int8_kernel not in INT8_KERNELS:
        raise InputError(
            f"int8 kernel {int8_kernel!r} is not one of {INT8_KERNELS}: use u8s8 (the default) or u8u8"
        )

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    int8 = is_quantized(model)
    if fp16 and int8:
        raise InputError("fp16 export is for fp32 models; this one is int8: export it without --fp16")
    source = dequantized(model) if int8 else model
    source.eval()
    names = input_names(source)
    example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    wrapper = _LogitsOnly(source, names).eval()  # eval: the exporter restores the wrapper's mode after
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    attention = source.config._attn_implementation
    # eager attention: the pattern ONNX Runtime's Attention fusion matches (SDPA's is not), and for int8
    # graphs fewer ops than SDPA's export (no NaN guard): faster at 128 tokens and batch 32
    if fuse or (int8 if eager_attention is None else eager_attention):
        source.config._attn_implementation = "eager"
    try:
        # the tracer warns that shape-dependent Python branches (transformers' mask and padding code)
        # and negative-index gathers "might" export wrongly; the graph is checked against the model on
        # real data afterwards (parity), which is the test that counts, so these are not shown
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r"Exporting aten::index operator")
            torch.onnx.export(
                wrapper,
                example,
                str(tmp),
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, node names follow modules
                input_names=names,
                output_names=["logits"],
                dynamic_axes={**axes, "logits": {0: "batch", 1: "sequence"}},
                opset_version=OPSET,
            )
        if int8:
            exported = onnx.load(str(tmp))
            constant_reshapes(exported)
            int8_graph(exported.graph, model, int8_kernel)
            if not any(o.domain == MS for o in exported.opset_import):  # MatMulIntegerToFloat's domain
                exported.opset_import.append(onnx.helper.make_opsetid(MS, 1))
            onnx.save(exported, str(tmp))
        if fuse:  # one head count for all layers, unless pruning made them differ
            uniform = not getattr(source.config, "shrink_pruned", None)
            config = source.config
            fuse_transformer_ops(tmp, config.num_attention_heads * uniform, config.hidden_size * uniform)
        if fp16:  # keep_io_types: callers feed the same int64 ids and read float32 logits
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(tmp)), keep_io_types=True), str(tmp))
        os.replace(tmp, path)
    finally:
        source.config._attn_implementation = attention
        tmp.unlink(missing_ok=True)
    return path


def fuse_transformer_ops(path: str | Path, num_heads: int = 0, hidden_size: int = 0) -> None:
    """ONNX Runtime's transformer optimizer on an exported graph, in place: attention (with
    ``num_heads`` and ``hidden_size``; 0 leaves attention unfused, as for pruned layers whose head
    counts differ), embeddings + LayerNorm, bias + GELU and residual + LayerNorm become fused contrib
    ops (``fused_ops`` counts them in the file); the parity check decides whether the result is kept."""
    from onnxruntime.transformers import optimizer

    fused = optimizer.optimize_model(
        str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size
    )
    fused.save_model_to_file(str(path))


def fused_ops(path: str | Path) -> dict[str, int]:
    """The fused transformer ops (com.microsoft domain) an ONNX file holds."""
    import onnx

    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "com.microsoft"))


def pytorch_logits(model: torch.nn.Module, names: list[str], device: str | torch.device = "cpu"):
    """``batch -> logits`` for a PyTorch classifier (on ``device``), in inference mode; the logits come
    back to the CPU, which also waits for a GPU to finish."""

    def run(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            inputs = {k: v.to(device) for k, v in model_inputs(batch, names).items()}
            return model(**inputs).logits.float().cpu()

    return run


def parity(reference, candidate, loader, task: str) -> dict[str, Any]:
    """Max |logit difference| and label agreement of two ``batch -> logits`` functions over a loader
    (tokens: on the first sub-token of each word, where predictions are scored)."""

    max_diff, agree, total = 0.0, 0, 0
    for batch in loader:
        a, b = reference(batch), candidate(batch)
        if task == "token":
            keep = word_start_mask(batch["word_ids"])
            a, b = a[keep], b[keep]
        max_diff = max(max_diff, float((a - b).abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
    return {"max_logit_diff": max_diff, "agreement": agree / max(total, 1), "compared": total}
