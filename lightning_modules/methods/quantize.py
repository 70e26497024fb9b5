"""int8 quantization with torchao: which layers, fake quantization for QAT, calibration, conversion
to a real int8 model, post-training quantization (PTQ), and int8 checkpoints.

Two schemes (``SCHEMES``) for the encoder's Linear layers, both with int8 per-channel symmetric
weights, optionally int8 per-row word embeddings (half of a small model's bytes) and int8 head:

* ``static`` (the default): activations quantized per tensor (asymmetric int8) with a scale and
  zero point fixed before deployment: calibrated on training rows, then kept while QAT trains the
  weights under them. The deployed graph computes no ranges at run time, so ONNX Runtime runs each
  Linear as one quantize + one fused int8 matmul, and a sentence's logits do not depend on the
  other sentences in its batch.
* ``per-token``: activations quantized per token at run time (no calibration, more ops per layer).

Fake quantization during QAT uses exactly the numerics of the converted model, so the converted
logits equal the fake-quantized ones up to float rounding.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import InputError
from lightning_modules import quiet  # noqa: F401  (before torchao: its known-harmless load messages)

SCHEMES = {
    "static": "int8 weights (per-channel, symmetric) + int8 static per-tensor activations (calibrated)",
    "per-token": "int8 weights (per-channel, symmetric) + int8 dynamic per-token activations",
}
DEFAULT_SCHEME = "static"


def scheme_name(quantization: dict[str, Any]) -> str:
    """The scheme of a checkpoint's ``quantization`` record (older ones stored the description of
    the per-token scheme, the only one then)."""
    scheme = quantization.get("scheme", "per-token")
    return scheme if scheme in SCHEMES else "per-token"


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise InputError(f"int8 scheme {scheme!r} is not one of {sorted(SCHEMES)}: use static (the default)")
    return scheme


class StaticActivationQuantizer(torch.nn.Module):
    """Fake quantization of a Linear's input with one fixed scale and zero point (asymmetric int8,
    the arithmetic of torchao's ``Int8StaticActivationInt8WeightConfig``). Until calibrated it
    observes: it records the range of what passes and returns it unchanged. The buffers travel in
    checkpoints, so a resumed QAT run keeps its calibration."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.register_buffer("calibrated", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.calibrated:
            self.low = torch.minimum(self.low, x.detach().min().float())
            self.high = torch.maximum(self.high, x.detach().max().float())
            return x
        xf = x.float()  # under bf16 autocast too: the int8 levels of the deployed fp32 arithmetic
        q = torch.clamp(torch.round(xf * (1.0 / self.scale)) + self.zero_point, -128, 127)  # as torchao
        return x + ((q - self.zero_point) * self.scale - xf).detach().to(x.dtype)  # straight-through gradient

    def finish_calibration(self) -> None:
        """Scale and zero point from the observed range (which always includes 0, so 0 is exact)."""
        scale = (self.high - self.low) / 255
        if not torch.isfinite(scale) or scale <= 0:
            raise InputError(
                f"static int8 calibration saw the range [{float(self.low)}, {float(self.high)}]: no scale "
                "from it; calibrate on more (or non-empty) training rows"
            )
        self.scale = scale
        self.zero_point = torch.clamp(-128 - torch.round(self.low / scale), -128, 127)
        self.calibrated = torch.tensor(True)


def static_quantizers(model: torch.nn.Module) -> dict[str, StaticActivationQuantizer]:
    """The static activation quantizers of a model prepared for static QAT, by Linear name."""
    return {
        name.removesuffix(".activation_fake_quantizer"): module
        for name, module in model.named_modules()
        if isinstance(module, StaticActivationQuantizer)
    }


def is_calibrated(model: torch.nn.Module) -> bool:
    return all(bool(q.calibrated) for q in static_quantizers(model).values())


@torch.no_grad()
def calibrate(model: torch.nn.Module, batches, rows: int) -> int:
    """Run up to ``rows`` rows of ``batches`` (dicts of model inputs) through a model prepared for
    static QAT, then fix every activation quantizer's scale from what it saw. Returns the rows used."""
    quantizers = static_quantizers(model)
    if not quantizers:
        return 0
    if rows <= 0:
        raise InputError(f"static int8 calibration needs rows > 0 (got {rows}): set calibration_rows")
    training, seen = model.training, 0
    keep = ("input_ids", "attention_mask", "token_type_ids")
    model.eval()
    try:
        for batch in batches:
            model(**{k: v.to(model.device) for k, v in batch.items() if k in keep})
            seen += len(batch["input_ids"])
            if seen >= rows:
                break
    finally:
        model.train(training)
    if seen == 0:
        raise InputError("static int8 calibration got no rows: the calibration (training) split is empty")
    for quantizer in quantizers.values():
        quantizer.finish_calibration()
    return seen


def import_torchao() -> None:
    """Import torchao (quietly: ``lightning_modules.quiet``, imported above, set its loggers). The import also
    registers its int8 tensors as safe for ``torch.load(weights_only=True)``."""
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


def prepare_qat(
    model: torch.nn.Module, embeddings: bool = True, head: bool = False, scheme: str = DEFAULT_SCHEME
) -> torch.nn.Module:
    """Swap the chosen layers for torchao's fake-quantized ones (in place): training then sees the
    int8 rounding of weights and activations while gradients flow straight through. ``static``
    layers observe their inputs until ``calibrate`` fixes their scales."""
    import_torchao()
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    check_scheme(scheme)
    if is_quantized(model):
        raise InputError("the model is already int8-quantized: QAT needs an fp32 checkpoint")
    activation, weight = _fake_quant_configs()
    linears = set(quantized_linears(model, head))
    quantize_(
        model,
        QATConfig(
            activation_config=activation if scheme == "per-token" else None,
            weight_config=weight,
            step="prepare",
        ),
        filter_fn=lambda module, name: name in linears,
    )
    if scheme == "static":
        for name, module in model.named_modules():
            if name in linears:
                module.activation_fake_quantizer = StaticActivationQuantizer().to(module.weight.device)
    tables = set(quantized_embeddings(model, embeddings))
    if tables:
        quantize_(
            model,
            QATConfig(weight_config=weight, step="prepare"),
            filter_fn=lambda module, name: name in tables,
        )
    return model


def convert_to_int8(
    model: torch.nn.Module,
    embeddings: bool = True,
    head: bool = False,
    scheme: str = "per-token",
    structure_only: bool = False,
) -> torch.nn.Module:
    """A real int8 model (in place): fake-quantized layers go back to plain ones, then their weights
    become torchao int8 tensors. Also PTQ when applied to a model that never saw QAT (``per-token``;
    ``static`` PTQ is ``ptq``, which calibrates first). ``structure_only``: placeholder activation
    scales, the int8 structure that loading an int8 checkpoint's weights and scales fills in."""
    import_torchao()
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8StaticActivationInt8WeightConfig,
        IntxWeightOnlyConfig,
        MappingType,
        PerAxis,
        PerRow,
        PerTensor,
        quantize_,
    )
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear, QATConfig

    check_scheme(scheme)
    quantizers = {} if structure_only else static_quantizers(model)
    if scheme == "static" and not structure_only and not (quantizers and is_calibrated(model)):
        raise InputError("static int8 needs calibrated activation scales: calibrate before converting")
    quantize_(
        model,
        QATConfig(step="convert"),
        filter_fn=lambda module, name: isinstance(module, (FakeQuantizedLinear, FakeQuantizedEmbedding)),
    )
    linears = set(quantized_linears(model, head))
    if scheme == "per-token":
        quantize_(
            model,
            Int8DynamicActivationInt8WeightConfig(act_mapping_type=MappingType.ASYMMETRIC),
            filter_fn=lambda module, name: name in linears,
        )
    for name in linears if scheme == "static" else ():
        quantizer = quantizers.get(name)
        scale, zero = (
            (quantizer.scale, quantizer.zero_point) if quantizer else (torch.tensor(1.0), torch.tensor(0.0))
        )
        ndim = 3 if ".encoder." in f".{name}." else 2  # the scales' rank follows the input's (tokens or rows)
        config = Int8StaticActivationInt8WeightConfig(
            act_quant_scale=scale.detach().float().reshape([1] * ndim),
            act_quant_zero_point=zero.detach().to(torch.int8).reshape([1] * ndim),
            granularity=[PerTensor(), PerRow()],
            act_mapping_type=MappingType.ASYMMETRIC,
            set_inductor_config=False,
        )
        quantize_(model, config, filter_fn=lambda module, n, name=name: n == name)
    tables = set(quantized_embeddings(model, embeddings))
    if tables:
        quantize_(
            model,
            IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
            filter_fn=lambda module, name: name in tables,
        )
    return model.eval()


def ptq(
    model: torch.nn.Module,
    batches,
    rows: int,
    embeddings: bool = True,
    head: bool = False,
    scheme: str = DEFAULT_SCHEME,
) -> torch.nn.Module:
    """Post-training quantization (in place): ``static`` calibrates on ``rows`` rows of ``batches``
    first; ``per-token`` needs no data."""
    if check_scheme(scheme) == "static":
        prepare_qat(model, embeddings, head, scheme)
        calibrate(model, batches, rows)
    return convert_to_int8(model, embeddings, head, scheme)


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
    convert_to_int8(model, quantization["embeddings"], quantization["head"], scheme_name(quantization), True)
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state, assign=True)  # assign: the int8 tensors replace, not copy into, weights


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights as saved (int8 tensors count their int8 data and scales)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()
