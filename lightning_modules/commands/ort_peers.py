"""ONNX Runtime's own int8 quantizers, as a user would run them on an fp32 export: the peers that
shrink's int8 graphs are benchmarked against (``shrink benchmark --ort-peers``).

* dynamic: ``quantize_dynamic(per_channel=True, weight_type=QInt8)``, optimum's default
  ``ORTQuantizer`` recipe (``AutoQuantizationConfig.avx512_vnni(is_static=False)``): activations
  quantized per tensor at run time, over the whole padded batch;
* static: ``quantize_static`` in QDQ format, per-channel int8 weights, uint8 activations calibrated
  (min / max) on training rows, MatMul and Gemm only: optimum's static recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def ort_dynamic_int8(fp32_onnx: str | Path, out: str | Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_onnx), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return Path(out)


class _Batches:
    """ONNX Runtime's CalibrationDataReader over batches of model inputs."""

    def __init__(self, batches: list[dict[str, Any]], names: list[str]) -> None:
        self.feeds = iter(
            [
                {
                    n: b[n].numpy().astype(np.int64) if n in b else np.zeros_like(b["input_ids"].numpy())
                    for n in names
                }
                for b in batches
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def ort_static_int8(fp32_onnx: str | Path, out: str | Path, batches: list[dict[str, Any]]) -> Path:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    names = [i.name for i in onnx.load(str(fp32_onnx), load_external_data=False).graph.input]
    quantize_static(
        str(fp32_onnx),
        str(out),
        _Batches(batches, names),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"MatMulConstBOnly": True},
    )
    return Path(out)
