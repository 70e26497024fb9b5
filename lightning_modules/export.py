"""Deployment: ONNX export of fp32 and int8 classifiers, run by ONNX Runtime on CPU, and the parity
check that compares an exported model with the PyTorch model it came from.

int8 in ONNX Runtime: the fp32 graph is exported (an int8 torchao model is dequantized first: its
int8 weights times their scales), then ``onnxruntime.quantization.quantize_dynamic`` quantizes the
same layers as the PyTorch scheme (``lightning_modules.quantize``): MatMul weights per channel,
symmetric int8; activations dynamic uint8 (per tensor: ONNX Runtime's kernels), and the
word-embedding Gather. torchao's eager int8 is slower than fp32 on CPU; ONNX Runtime's
MatMulInteger kernels are the CPU deployment path.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.errors import InputError
from lightning_modules.quantize import dequantized, is_quantized, quantized_embeddings, quantized_linears

OPSET = 17


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


def _onnx_scope(module_name: str) -> str:
    """``bert.encoder.layer.0.output.dense`` -> ``/model/bert/encoder/layer.0/output/dense/``: how the
    TorchScript exporter names the nodes a module emits (list indices stay joined by a dot)."""
    parts: list[str] = []
    for part in module_name.split("."):
        if part.isdigit() and parts:
            parts[-1] += f".{part}"
        else:
            parts.append(part)
    return "/model/" + "/".join(parts) + "/"


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    int8: bool = False,
    embeddings: bool = True,
    head: bool = False,
) -> Path:
    """Write ``model`` (fp32, or a torchao int8 model) as ONNX; ``int8`` quantizes it for ONNX
    Runtime over the same layers as the PyTorch scheme. Written beside ``path`` and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = dequantized(model) if is_quantized(model) else model
    source.eval()
    names = input_names(source)
    example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    fp32_path = path.with_name(f".{path.name}.fp32.tmp{os.getpid()}")
    wrapper = _LogitsOnly(source, names).eval()  # eval: the exporter restores the wrapper's mode after
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            example,
            str(fp32_path),
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, node names follow modules
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch", 1: "sequence"}},
            opset_version=OPSET,
        )
    if not int8:
        os.replace(fp32_path, path)
        return path
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    scopes = [_onnx_scope(n) for n in quantized_linears(source, head)]
    tables = [_onnx_scope(n) for n in quantized_embeddings(source, embeddings)]
    nodes = [
        node.name
        for node in onnx.load(str(fp32_path), load_external_data=False).graph.node
        if (node.op_type in ("MatMul", "Gemm") and any(node.name.startswith(s) for s in scopes))
        or (node.op_type == "Gather" and any(node.name.startswith(s) for s in tables))
    ]
    int8_path = path.with_name(f".{path.name}.int8.tmp{os.getpid()}")
    try:
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_quantize=nodes,
            op_types_to_quantize=["MatMul", "Gemm", "Gather"],
        )
        os.replace(int8_path, path)
    finally:
        for leftover in (fp32_path, int8_path):
            leftover.unlink(missing_ok=True)
    return path


class OnnxClassifier:
    """An exported classifier run by ONNX Runtime on CPU: ``logits = model(batch)``."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise InputError(f"ONNX model {path} does not exist: export it first (scripts/export.py)")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {k: v.numpy().astype(np.int64) for k, v in model_inputs(batch, self.names).items()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def pytorch_logits(model: torch.nn.Module, names: list[str]):
    """``batch -> logits`` for a PyTorch classifier, in inference mode."""

    def run(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return model(**model_inputs(batch, names)).logits.float()

    return run


def parity(reference, candidate, loader, task: str) -> dict[str, Any]:
    """Max |logit difference| and label agreement of two ``batch -> logits`` functions over a loader
    (tokens: on the first sub-token of each word, where predictions are scored)."""
    from datamodules.token import word_start_mask

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
