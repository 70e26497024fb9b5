"""Tiny classifiers, their int8 forms, and ONNX's reference evaluator with ONNX Runtime's int8 op:
what the int8 tests share."""

import numpy as np
import torch
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from lightning_modules.methods.quantize import (
    calibrate,
    convert_to_int8,
    import_torchao,
    prepare_qat,
)
from tests.test_distill import TINY

import_torchao()


def tiny_classifier(task: str = "sequence", seed: int = 0) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    torch.manual_seed(seed)
    config = dict(TINY)
    auto = AutoModelForSequenceClassification if task == "sequence" else AutoModelForTokenClassification
    return auto.from_config(AutoConfig.for_model(config.pop("model_type"), num_labels=3, **config)).eval()


def inputs(batch: int = 8, length: int = 24, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, length // 2 :] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def loud_classifier(task: str = "sequence", seed: int = 0) -> torch.nn.Module:
    """``tiny_classifier`` with logits of order 1 (a random head gives ~0.005), so that tolerances
    relative to the logits' scale bite: an off-by-one zero point moves them by percents."""
    model = tiny_classifier(task, seed)
    with torch.no_grad():
        model.classifier.weight.mul_(300)
    return model


def int8_classifier(task: str = "sequence", scheme: str = "static", head: bool = False) -> torch.nn.Module:
    """A tiny int8 model of ``scheme`` (static: calibrated on four random batches)."""
    model = prepare_qat(loud_classifier(task), head=head, scheme=scheme)
    calibrate(model, [inputs(seed=s) for s in range(10, 14)], 32)
    return convert_to_int8(model, head=head, scheme=scheme)


class MatMulIntegerToFloat(OpRun):
    """ONNX Runtime's contrib op for ONNX's reference evaluator, from its specification: integer
    products of the centred operands, then the two scales, then the bias."""

    op_domain = "com.microsoft"

    def _run(self, a, b, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None):
        a = a.astype(np.int64) - (0 if a_zero_point is None else a_zero_point.astype(np.int64))
        b = b.astype(np.int64) - (0 if b_zero_point is None else b_zero_point.astype(np.int64))
        y = (a @ b).astype(np.float32) * (a_scale * b_scale).astype(np.float32)
        return ((y if bias is None else y + bias).astype(np.float32),)


def reference(model_or_path) -> ReferenceEvaluator:
    return ReferenceEvaluator(model_or_path, new_ops=[MatMulIntegerToFloat])


# parity tolerances relative to the logits' scale. static: only float rounding of the scales differs
# (~1e-7). per-token: ranges computed at run time in ONNX Runtime's float arithmetic can put a value
# at a rounding tie on the next level (one level: ~5e-4 of the logits here). A weight zero point off
# by one moves the logits by ~5e-5 (static) and ~2.5e-3 (per-token): both fail.
TOLERANCE = {"static": 1e-5, "per-token": 1e-3}


def close(got, expected, rel: float = 1e-5) -> bool:
    """Equal within ``rel`` of the logits' scale."""
    return float(np.abs(np.asarray(got) - np.asarray(expected)).max()) <= rel * float(np.abs(expected).max())
