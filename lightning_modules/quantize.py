"""int8 quantization with torchao: which layers, fake quantization for QAT, conversion to a real
int8 model, post-training quantization (PTQ), and int8 checkpoints.

The scheme (``SCHEME``): int8 per-channel symmetric weights and int8 dynamic per-token
(asymmetric) activations on the encoder's Linear layers; optionally int8 per-row weights on the
word embeddings (half of a small model's bytes) and int8 Linear layers in the classification
head. Fake quantization during QAT uses exactly the numerics of the converted model, so the
converted logits equal the fake-quantized ones up to float rounding.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import InputError

SCHEME = "int8 weights (per-channel, symmetric) + int8 dynamic per-token activations"


def import_torchao() -> None:
    """Import torchao quietly (on CPU-only machines it logs that its CUDA kernels failed to load).
    The import also registers its int8 tensors as safe for ``torch.load(weights_only=True)``."""
    import logging

    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    import torchao.quantization  # noqa: F401


def quantized_linears(model: torch.nn.Module, head: bool) -> list[str]:
    """Names of the Linear layers the scheme quantizes: every Linear inside the encoder, and the
    head's Linear layers (pooler, classifier) when ``head``."""
    base = model.base_model_prefix
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        in_encoder = ".encoder." in f".{name}." and name.startswith(f"{base}.")
        if in_encoder or head:
            names.append(name)
    return names


def quantized_embeddings(model: torch.nn.Module, embeddings: bool) -> list[str]:
    """The word-embedding table (not positions or token types: small, and shared offsets)."""
    if not embeddings:
        return []
    table = model.get_input_embeddings()
    return [name for name, module in model.named_modules() if module is table]


def _fake_quant_configs():
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    activation = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    weight = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    return activation, weight


def prepare_qat(model: torch.nn.Module, embeddings: bool = True, head: bool = False) -> torch.nn.Module:
    """Swap the chosen layers for torchao's fake-quantized ones (in place): training then sees the
    int8 rounding of weights and activations while gradients flow straight through."""
    import_torchao()
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    if is_quantized(model):
        raise InputError("the model is already int8-quantized: QAT needs an fp32 checkpoint")
    activation, weight = _fake_quant_configs()
    linears = set(quantized_linears(model, head))
    quantize_(
        model,
        QATConfig(activation_config=activation, weight_config=weight, step="prepare"),
        filter_fn=lambda module, name: name in linears,
    )
    tables = set(quantized_embeddings(model, embeddings))
    if tables:
        quantize_(
            model,
            QATConfig(weight_config=weight, step="prepare"),
            filter_fn=lambda module, name: name in tables,
        )
    return model


def convert_to_int8(model: torch.nn.Module, embeddings: bool = True, head: bool = False) -> torch.nn.Module:
    """A real int8 model (in place): fake-quantized layers go back to plain ones, then their weights
    become torchao int8 tensors. Also PTQ when applied to a model that never saw QAT."""
    import_torchao()
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        IntxWeightOnlyConfig,
        MappingType,
        PerAxis,
        quantize_,
    )
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear, QATConfig

    quantize_(
        model,
        QATConfig(step="convert"),
        filter_fn=lambda module, name: isinstance(module, (FakeQuantizedLinear, FakeQuantizedEmbedding)),
    )
    linears = set(quantized_linears(model, head))
    quantize_(
        model,
        Int8DynamicActivationInt8WeightConfig(act_mapping_type=MappingType.ASYMMETRIC),
        filter_fn=lambda module, name: name in linears,
    )
    tables = set(quantized_embeddings(model, embeddings))
    if tables:
        quantize_(
            model,
            IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
            filter_fn=lambda module, name: name in tables,
        )
    return model.eval()


def is_quantized(model: torch.nn.Module) -> bool:
    """True when any weight is a torchao int8 tensor or any layer is fake-quantized."""
    import_torchao()
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear

    for module in model.modules():
        if isinstance(module, (FakeQuantizedLinear, FakeQuantizedEmbedding)):
            return True
        if is_int8_weight(getattr(module, "weight", None)):
            return True
    return False


def is_int8_weight(weight: Any) -> bool:
    """True for a torchao quantized tensor (``TorchAOBaseTensor``), bare or inside a Parameter."""
    from torchao.utils import TorchAOBaseTensor

    return isinstance(weight, TorchAOBaseTensor) or isinstance(
        getattr(weight, "data", None), TorchAOBaseTensor
    )


def dequantized(model: torch.nn.Module) -> torch.nn.Module:
    """An fp32 copy whose weights are the int8 weights times their scales (for ONNX export: the
    exporter cannot trace torchao tensors, and ONNX Runtime re-quantizes the same values)."""
    import copy

    fp32 = copy.deepcopy(model)
    for module in fp32.modules():
        if is_int8_weight(getattr(module, "weight", None)):
            module.weight = torch.nn.Parameter(module.weight.dequantize().float(), requires_grad=False)
    return fp32


# --- int8 checkpoints --------------------------------------------------------------------------
def save_int8_checkpoint(
    model: torch.nn.Module,
    path: str | Path,
    hyper_parameters: dict[str, Any],
    quantization: dict[str, Any],
    hf_config: dict[str, Any] | None = None,
    tokenizer_files: dict[str, bytes] | None = None,
) -> None:
    """A Lightning-style checkpoint of the int8 model (no optimizer state) that ``--ckpt_path`` and
    ``load_classifier`` accept. Written to a temporary file and renamed: never half a file."""
    import lightning

    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": dict(hyper_parameters),
        "hf_config": hf_config or model.config.to_dict(),
        "quantization": dict(quantization),
        **({"tokenizer_files": tokenizer_files} if tokenizer_files else {}),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_int8_state(model: torch.nn.Module, checkpoint: dict[str, Any], prefix: str = "model.") -> None:
    """Give an fp32-built model the int8 structure recorded in ``checkpoint``, then its weights."""
    quantization = checkpoint["quantization"]
    convert_to_int8(model, quantization["embeddings"], quantization["head"])
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state, assign=True)  # assign: the int8 tensors replace, not copy into, weights


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights as saved (int8 tensors count their int8 data and scales)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()
