"""The GPU paths, run only where torch sees a CUDA device (skipped elsewhere, e.g. in CI): 16-mixed
with its gradient scaler and torch.compile (inductor) on CUDA, resumed mid-epoch; the benchmark's
``--device cuda`` rows; and, where onnxruntime-gpu is installed, the fp16 ONNX export checked and
timed on ONNX Runtime's CUDA provider."""

from __future__ import annotations

import json

import onnxruntime
import pytest
import torch

from tests.conftest import ROOT, run_script
from tests.test_compile import fine_tune, weights
from tests.test_distill import fine_tuned_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ORT_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def test_16_mixed_compiled_on_cuda_keeps_the_scaler_and_resumes_mid_epoch(tmp_path):
    # 6 steps per epoch; uninterrupted, and stopped after step 3 then resumed from that checkpoint
    whole = fine_tune(tmp_path / "whole", True, precision="16-mixed")
    assert next(whole.model.parameters()).device.type == "cuda"
    fine_tune(tmp_path / "first", True, precision="16-mixed", every=3)
    step3 = next((tmp_path / "first" / "ckpt").glob("*step=3.ckpt"))
    saved = torch.load(step3, map_location="cpu", weights_only=False)
    scaler = [v for k, v in saved.items() if "Precision" in k]  # Lightning's MixedPrecision state
    assert scaler and "scale" in scaler[0], list(saved)
    resumed = fine_tune(tmp_path / "resumed", True, precision="16-mixed", ckpt_path=str(step3))
    # GPU kernels (atomics in the embedding backward) are not bit-reproducible: close, not equal
    resumed_weights = weights(resumed)
    for name, value in weights(whole).items():
        torch.testing.assert_close(resumed_weights[name], value, atol=1e-3, rtol=1e-3, msg=name)


def test_benchmark_on_cuda_scores_what_the_cpu_scores(tmp_path):
    checkpoint = fine_tuned_checkpoint("sequence", tmp_path)
    data = [
        "--data",
        str(ROOT / "configs/demo-sequence/qat.yaml"),
        "--set",
        f"cache_dir={tmp_path}",
        "--latency-samples",
        "8",
        "--long-repeats",
        "2",
        "--throughput-batches",
        "1",
    ]
    rows = {}
    for device in ("cpu", "cuda"):
        result = run_script(
            "benchmark.py",
            "--model",
            f"m={checkpoint}",
            *data,
            "--device",
            device,
            "--out",
            str(tmp_path / device),
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        rows[device] = json.loads((tmp_path / device / "benchmark.json").read_text())["rows"][0]
    assert rows["cuda"]["runtime"] == "pytorch cuda"
    assert abs(rows["cuda"]["accuracy"] - rows["cpu"]["accuracy"]) <= 0.01, rows


@pytest.mark.skipif(not ORT_CUDA, reason="needs onnxruntime-gpu")
def test_fp16_onnx_on_the_cuda_provider_keeps_parity(tmp_path):
    checkpoint = fine_tuned_checkpoint("sequence", tmp_path)
    data = ["--data", str(ROOT / "configs/demo-sequence/qat.yaml"), "--set", f"cache_dir={tmp_path}"]
    out = tmp_path / "onnx-fp16"
    export = run_script(
        "export.py",
        "onnx",
        "--model",
        checkpoint,
        "--out",
        str(out),
        *data,
        "--fp16",
        "--provider",
        "cuda",
        cwd=tmp_path,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    report = json.loads((out / "parity.json").read_text())
    assert report["fp16"] and report["provider"] == "cuda" and report["agreement"] >= 0.995, report
    result = run_script(
        "benchmark.py",
        "--model",
        f"fp16={out}",
        *data,
        "--provider",
        "cuda",
        "--out",
        str(tmp_path / "bench"),
        "--latency-samples",
        "8",
        "--long-repeats",
        "2",
        "--throughput-batches",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads((tmp_path / "bench" / "benchmark.json").read_text())["rows"][0]
    assert row["runtime"] == "onnxruntime cuda" and row["accuracy"] > 0
