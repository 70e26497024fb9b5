"""int8: fake quantization on exactly the intended layers, its numerics by hand, conversion to int8
weights, converted vs fake-quantized logits, int8 checkpoints, the QAT stage through the CLI, the
export and benchmark scripts, and their bad input."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules import InputError
from lightning_modules import FineTuneModule
from lightning_modules.artifacts.classifiers import load_classifier
from lightning_modules.methods.quantize import (
    SCHEMES,
    calibrate,
    convert_to_int8,
    import_torchao,
    is_quantized,
    prepare_qat,
    save_int8_checkpoint,
    static_quantizers,
    weights_bytes,
)
from tests.conftest import ROOT, run_cli, run_script
from tests.int8_models import TOLERANCE, close, inputs, int8_classifier, loud_classifier, tiny_classifier
from tests.test_distill import TINY, datamodule, trainer

import_torchao()
from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear  # noqa: E402


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("embeddings,head", [(True, False), (False, True)])
def test_fake_quantization_sits_on_exactly_the_intended_layers(embeddings, head, scheme):
    model = prepare_qat(tiny_classifier(), embeddings=embeddings, head=head, scheme=scheme)
    fake_linears = {n for n, m in model.named_modules() if isinstance(m, FakeQuantizedLinear)}
    encoder = {
        f"bert.encoder.layer.{i}.{part}"
        for i in range(TINY["num_hidden_layers"])
        for part in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        )
    }
    assert fake_linears == encoder | ({"bert.pooler.dense", "classifier"} if head else set())
    assert set(static_quantizers(model)) == (fake_linears if scheme == "static" else set())
    fake_tables = {n for n, m in model.named_modules() if isinstance(m, FakeQuantizedEmbedding)}
    assert fake_tables == ({"bert.embeddings.word_embeddings"} if embeddings else set())
    assert is_quantized(model) and not is_quantized(tiny_classifier())


def test_fake_quantization_numerics_by_hand():
    """Weights: per output channel, symmetric, scale = max|w| / 127.5, int8 range [-128, 127].
    Activations: per token, asymmetric, over [min(x, 0), max(x, 0)] on 256 levels."""
    model = prepare_qat(tiny_classifier(), embeddings=False, scheme="per-token")
    layer = model.bert.encoder.layer[0].attention.self.query
    w = layer.weight.detach()
    scale = w.abs().amax(dim=1, keepdim=True) / 127.5
    by_hand = torch.clamp(torch.round(w / scale), -128, 127) * scale
    diff = (layer.weight_fake_quantizer(w) - by_hand).abs()
    tie = (w / scale).abs() > 127.49  # -max|w| sits on the -127.5 rounding tie: either neighbour is right
    assert diff[~tie].max() < 1e-6 and (diff <= scale + 1e-7).all()

    x = torch.randn(3, 5, w.shape[1])
    low, high = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    step = (high - low) / 255
    zero = torch.clamp(-128 - torch.round(low / step), -128, 127)
    by_hand = (torch.clamp(torch.round(x / step) + zero, -128, 127) - zero) * step
    torch.testing.assert_close(layer.activation_fake_quantizer(x), by_hand, atol=1e-5, rtol=0)


def test_static_activation_quantization_by_hand():
    """Before calibration a static quantizer passes its input through and records its range; after,
    one scale and zero point for the whole tensor from [min(range, 0), max(range, 0)], 256 levels."""
    model = prepare_qat(tiny_classifier(), embeddings=False, scheme="static")
    quantizer = static_quantizers(model)["bert.encoder.layer.0.attention.self.query"]
    seen = [torch.randn(2, 7, 32) * 3 + 1, torch.randn(4, 3, 32)]
    for x in seen:
        assert torch.equal(quantizer(x), x)
    quantizer.finish_calibration()
    low, high = min(float(x.min()) for x in seen), max(float(x.max()) for x in seen)
    step = (high - low) / 255
    zero = min(max(-128 - round(low / step), -128), 127)
    assert float(quantizer.scale) == pytest.approx(step, rel=1e-6) and float(quantizer.zero_point) == zero
    x = torch.randn(3, 5, 32) * 4  # values beyond the calibrated range clip to it
    by_hand = (torch.clamp(torch.round(x / step) + zero, -128, 127) - zero) * step
    torch.testing.assert_close(quantizer(x), by_hand, atol=1e-5, rtol=0)
    assert quantizer(x).max() <= high + step and quantizer(x).min() >= low - step
    # a bf16 input (autocast) is quantized in fp32, as the deployed graph computes its levels
    xb = x.bfloat16().float()
    by_hand = (torch.clamp(torch.round(xb / step) + zero, -128, 127) - zero) * step
    torch.testing.assert_close(
        quantizer(x.bfloat16()).float(), by_hand, atol=0, rtol=8e-3
    )  # bf16 output rounding


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("task", ["sequence", "token"])
def test_conversion_gives_int8_weights_and_matches_the_fake_quantized_logits(task, scheme):
    model = prepare_qat(loud_classifier(task), embeddings=True, head=False, scheme=scheme)
    calibrate(model, [inputs(seed=s) for s in range(10, 14)], 32)
    batch = inputs()
    with torch.no_grad():
        fake = model(**batch).logits
        convert_to_int8(model, embeddings=True, head=False, scheme=scheme)
        real = model(**batch).logits
    query = model.bert.encoder.layer[0].attention.self.query.weight
    assert query.qdata.dtype == torch.int8 and query.scale.numel() == query.shape[0]  # per output channel
    assert (query.act_quant_scale is not None) == (scheme == "static")
    table = model.bert.embeddings.word_embeddings.weight
    assert table.qdata.dtype == torch.int8 and table.scale.numel() == table.shape[0]  # per row
    assert type(model.classifier.weight.data) is torch.Tensor  # the head stays fp32
    # the same numerics: only float rounding separates them
    assert close(real, fake, TOLERANCE[scheme])
    with torch.no_grad():
        assert not close(real, loud_classifier(task)(**batch).logits, 1e-3)  # quantization changed them


@pytest.mark.parametrize("scheme", SCHEMES)
def test_int8_checkpoint_round_trip(tmp_path, scheme):
    model = int8_classifier(scheme=scheme)
    path = tmp_path / "int8.ckpt"
    quantization = {"scheme": scheme, "embeddings": True, "head": False}
    save_int8_checkpoint(model, path, {"task": "sequence"}, quantization)
    loaded = load_classifier(str(path), "sequence", int8_ok=True)
    batch = inputs()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    # 90% of this tiny model's weights are int8 (1 byte instead of 4), plus scales and pickling
    assert path.stat().st_size < 0.55 * weights_bytes(tiny_classifier())
    with pytest.raises(InputError, match="already int8-quantized"):
        load_classifier(str(path), "sequence")  # training from it is refused
    with pytest.raises(InputError, match="already int8-quantized"):
        prepare_qat(loaded)


def test_static_conversion_refuses_what_it_cannot_scale():
    """Bad input: no calibration rows, an empty calibration split, a range with no scale."""
    with pytest.raises(InputError, match="calibrate before converting"):
        convert_to_int8(prepare_qat(tiny_classifier(), scheme="static"), scheme="static")
    with pytest.raises(InputError, match="rows > 0"):
        calibrate(prepare_qat(tiny_classifier(), scheme="static"), [inputs()], 0)
    with pytest.raises(InputError, match="got no rows"):
        calibrate(prepare_qat(tiny_classifier(), scheme="static"), [], 10)
    model = prepare_qat(tiny_classifier(), scheme="static")
    quantizer = next(iter(static_quantizers(model).values()))
    quantizer(torch.full((2, 3), float("nan")))
    with pytest.raises(InputError, match="no scale"):
        quantizer.finish_calibration()
    with pytest.raises(InputError, match="not one of"):
        prepare_qat(tiny_classifier(), scheme="per-channel")


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A tiny fine-tuned fp32 sentiment checkpoint written by Lightning."""
    tmp = tmp_path_factory.mktemp("student")
    L.seed_everything(0)
    dm = datamodule("sequence", tmp)
    module = FineTuneModule(
        model_config=TINY, task="sequence", label_names=dm.label_names, learning_rate=1e-3
    )
    run = trainer(max_steps=12)
    run.fit(module, dm)
    run.save_checkpoint(tmp / "student.ckpt")
    return tmp / "student.ckpt"


def qat_args(student: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(ROOT / "configs" / "demo-sequence" / "qat.yaml"),
        "--model.init_args.model_name_or_path",
        str(student),
        "--model.init_args.teacher",
        "null",
        "--data.init_args.max_train_samples",
        "64",
        "--data.init_args.max_eval_samples",
        "48",
        "--data.init_args.cache_dir",
        str(student.parent),
        "--out_dir",
        str(tmp / "run"),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def test_qat_cli_converts_saves_and_evaluates_int8(student, tmp_path, capsys):
    result = run_cli("fit", *qat_args(student, tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    int8_path = run / "int8.ckpt"
    checkpoint = torch.load(int8_path, map_location="cpu", weights_only=True)
    assert checkpoint["quantization"]["embeddings"] and "optimizer_states" not in checkpoint
    after_fit = json.loads((run / "int8_validate_metrics.json").read_text())
    # validate accepts the int8 checkpoint and scores the same model the fit scored
    result = run_cli("validate", *qat_args(student, tmp_path), "--ckpt_path", str(int8_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((run / "validate_metrics.json").read_text())
    assert again["val/accuracy"] == pytest.approx(after_fit["val/accuracy"], abs=1e-6)
    assert again["val/loss"] == pytest.approx(after_fit["val/loss"], abs=1e-5)
    result = run_cli("predict", *qat_args(student, tmp_path), "--ckpt_path", str(int8_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    first = json.loads((run / "predictions.jsonl").read_text().splitlines()[0])
    assert first["label"] in ("negative", "positive")

    # bad input: QAT from an int8 checkpoint, or resuming fit from one; nothing overwritten
    before = int8_path.stat().st_mtime_ns
    for extra in (["--model.init_args.model_name_or_path", str(int8_path)], ["--ckpt_path", str(int8_path)]):
        result = run_cli("fit", *qat_args(student, tmp_path), *extra, "--overwrite", "true", cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "int8" in errors[0]
    assert int8_path.stat().st_mtime_ns == before

    # export: ONNX int8 from the QAT checkpoint passes parity; a failed parity check writes nothing
    data = [
        "--data",
        str(ROOT / "configs" / "demo-sequence" / "qat.yaml"),
        "--set",
        "max_eval_samples=48",
        "--set",
        f"cache_dir={student.parent}",
    ]
    onnx = tmp_path / "onnx-int8"  # an ONNX folder
    result = run_script(
        "export.py", "onnx", "--model", str(int8_path), "--out", str(onnx), *data, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((onnx / "parity.json").read_text())
    assert report["int8"] and report["agreement"] == 1.0 and report["compared"] == 48
    before = (onnx / "model.onnx").stat().st_mtime_ns
    result = run_script(
        "export.py",
        "onnx",
        "--model",
        str(int8_path),
        "--out",
        str(onnx),
        *data,
        "--overwrite",
        "--min-agreement",
        "1.01",
        cwd=tmp_path,
    )
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(
        "error: parity check failed"
    )
    assert (onnx / "model.onnx").stat().st_mtime_ns == before
    # an int8 model exported as a scheme it was not trained for: one line, nothing written
    from lightning_modules.commands import export  # in-process: the check comes before any work

    with pytest.raises(SystemExit) as stop:
        export.main(
            [
                "onnx",
                "--model",
                str(int8_path),
                "--out",
                str(tmp_path / "other"),
                *data,
                "--scheme",
                "per-token",
            ]
        )
    error = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and "is a static int8 model, not per-token" in error[-1]
    assert not (tmp_path / "other").exists()
    not_ours = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, not_ours)
    result = run_script(
        "export.py", "onnx", "--model", str(not_ours), "--out", str(tmp_path / "x.onnx"), *data, cwd=tmp_path
    )
    assert result.returncode == 2 and "unknown type" in result.stderr.strip().splitlines()[-1]

    # PTQ baseline, then the benchmark over fp32 / PTQ / QAT in PyTorch and ONNX Runtime
    ptq = tmp_path / "ptq.int8.ckpt"
    result = run_script("export.py", "ptq", "--model", str(student), "--out", str(ptq), *data, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("validate", *qat_args(student, tmp_path), "--ckpt_path", str(ptq), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ptq_accuracy = json.loads((tmp_path / "run" / "validate_metrics.json").read_text())["val/accuracy"]
    bench = tmp_path / "bench"
    models = ["--model", f"fp32={student}", "--model", f"ptq int8={ptq}", "--model", f"qat int8={int8_path}"]
    result = run_script(
        "benchmark.py",
        *models,
        *data,
        "--onnx",
        "--out",
        str(bench),
        "--latency-samples",
        "12",
        "--long-repeats",
        "3",
        "--throughput-batches",
        "1",
        "--compile",
        "eager",
        "--ort-peers",
        "fp32",
        "--calibration-rows",
        "32",
        cwd=tmp_path,
    )  # fmt: skip  (dynamo's eager backend: the compiled row without inductor's minute of kernel generation)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((bench / "benchmark.json").read_text())["rows"]
    # ONNX Runtime's own quantizers on the fp32 model's export, scored and timed like every row
    peers = [row for row in rows if row["model"].startswith("fp32: ORT")]
    assert [row["model"] for row in peers] == ["fp32: ORT dynamic int8", "fp32: ORT static int8"]
    fp32_onnx = next(row for row in rows if row["model"] == "fp32" and row["runtime"] == "onnxruntime")
    for row in peers:
        assert row["int8"] and row["size_mb"] < fp32_onnx["size_mb"] and row["latency_ms_p50"] > 0
        assert abs(row["accuracy"] - fp32_onnx["accuracy"]) < 0.2
    rows = [row for row in rows if row not in peers]
    for index, name in enumerate(("fp32", "ptq int8", "qat int8")):  # each PyTorch row, then its compiled row
        eager, compiled = rows[2 * index], rows.pop(2 * index + 1)
        assert (eager["model"], compiled["model"], compiled["runtime"]) == (name, name, "pytorch compiled")
        assert compiled["accuracy"] == eager["accuracy"] and compiled["size_mb"] == eager["size_mb"]
    assert [(r["model"], r["runtime"]) for r in rows] == [
        (m, rt) for m in ("fp32", "ptq int8", "qat int8") for rt in ("pytorch", "onnxruntime")
    ]
    for pytorch, onnxruntime in ((0, 1), (2, 3), (4, 5)):  # fp32, PTQ, QAT: the same numerics in both
        assert rows[pytorch]["accuracy"] == pytest.approx(rows[onnxruntime]["accuracy"])
    assert rows[4]["accuracy"] == pytest.approx(after_fit["val/accuracy"], abs=1e-6)  # QAT int8, PyTorch
    assert rows[2]["accuracy"] == pytest.approx(ptq_accuracy, abs=1e-6)  # PTQ int8, PyTorch
    assert rows[2]["size_mb"] < 0.55 * rows[0]["size_mb"]
    assert rows[4]["retention"] == pytest.approx(rows[4]["accuracy"] / rows[0]["accuracy"], abs=1e-4)
    assert all(r["latency_ms_p50"] > 0 and r["throughput_b32"] > 0 for r in rows)
    table = (bench / "benchmark.md").read_text()  # the header and every row, the 3 compiled ones too
    assert (
        table.count("\n| ") == 1 + len(rows) + 3 + len(peers)
        and (bench / "benchmark.png").stat().st_size > 10_000
    )
    result = run_script(
        "benchmark.py", "--model", f"x={tmp_path / 'missing.ckpt'}", *data, "--out", str(bench), cwd=tmp_path
    )
    assert result.returncode == 2 and "does not exist" in result.stderr.strip().splitlines()[-1]
