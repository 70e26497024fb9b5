"""int8: fake quantization on exactly the intended layers, its numerics by hand, conversion to int8
weights, converted vs fake-quantized logits, int8 checkpoints, ONNX fp32 / int8 parity, the QAT
stage through the CLI, the export and benchmark scripts, and their bad input."""

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from datamodules import InputError
from lightning_modules import FineTuneModule
from lightning_modules.artifacts.classifiers import load_classifier
from lightning_modules.artifacts.onnx_folder import (
    INT8_KERNELS,
    export_onnx,
    fused_ops,
    input_names,
    model_inputs,
    parity,
    pytorch_logits,
)
from lightning_modules.artifacts.onnx_session import OnnxClassifier, set_weight_kernel, weight_kernel
from lightning_modules.cpu import has_int8_dot
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
from tests.test_distill import TINY, datamodule, trainer

import_torchao()
from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear  # noqa: E402


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


GRAPH_OPS = {  # per encoder layer: the int8 matmuls, and what computes activation ranges at run time
    "static": {"MatMulIntegerToFloat": 6, "QuantizeLinear": 4, "ReduceMax": 0, "MatMulInteger": 0},
    "per-token": {"MatMulInteger": 6, "ReduceMax": 4, "MatMulIntegerToFloat": 0, "QuantizeLinear": 0},
}  # Q, K and V share one quantization of their input


@pytest.mark.parametrize(
    "task,scheme,head",
    [
        ("sequence", "static", False),
        ("token", "static", False),
        ("sequence", "static", True),
        ("sequence", "per-token", False),
        ("token", "per-token", True),
    ],
)
def test_onnx_fp32_and_int8_parity(task, scheme, head, tmp_path):
    """Every graph form as exported (u8s8, u8u8) and as shrink runs it on this CPU, against the
    PyTorch int8 model, with tolerances relative to the logits' scale."""
    from onnx import load

    fp32 = loud_classifier(task)
    int8 = int8_classifier(task, scheme, head)
    batches = [inputs(seed=s) for s in range(4)]
    for batch in batches:  # word ids for the token-task comparison: every position is a word
        batch["word_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]).clone()
        batch["word_ids"][batch["attention_mask"] == 0] = -1
    path = export_onnx(fp32, tmp_path / "fp32.onnx")
    report = parity(pytorch_logits(fp32, input_names(fp32)), OnnxClassifier(path), batches, task)
    assert report["max_logit_diff"] < 1e-4 and report["agreement"] == 1.0, report

    def scored(logits, batch):  # tokens: the positions predictions are scored on (padding is not)
        logits = np.asarray(logits)
        return logits[(batch["word_ids"] >= 0).numpy()] if task == "token" else logits

    expected = [scored(pytorch_logits(int8, input_names(int8))(batch), batch) for batch in batches]
    for kernel in INT8_KERNELS:
        path = export_onnx(int8, tmp_path / f"int8_{kernel}.onnx", int8_kernel=kernel)
        graph = load(str(path))
        assert weight_kernel(graph) == kernel
        weights = {i.name: i.data_type for i in graph.graph.initializer}
        matmuls = [n for n in graph.graph.node if n.op_type in GRAPH_OPS[scheme]]
        wanted = TensorProto.INT8 if kernel == "u8s8" else TensorProto.UINT8
        assert {weights[n.input[1]] for n in matmuls if n.op_type.startswith("MatMulInteger")} == {wanted}
        # the graph computes torchao's numbers: ONNX's reference evaluator (numpy, no CPU kernel), the
        # file run as exported, and as shrink runs it here (u8s8 with VNNI / AMX, u8u8 without)
        evaluator = reference(str(path))
        runs = {"as exported": OnnxClassifier(path, kernel="as-exported"), "auto": OnnxClassifier(path)}
        assert runs["auto"].kernel.startswith("u8s8" if has_int8_dot() else "u8u8")
        for batch, want in zip(batches, expected, strict=True):
            feed = {k: v.numpy() for k, v in model_inputs(batch, input_names(int8)).items()}
            assert close(scored(evaluator.run(None, feed)[0], batch), want, TOLERANCE[scheme]), kernel
            for name, run in runs.items():
                assert close(scored(run(batch), batch), want, TOLERANCE[scheme]), (kernel, name)
        ops = [node.op_type for node in graph.graph.node]
        for op, per_layer in GRAPH_OPS[scheme].items():
            head_layers = head * (2 if task == "sequence" else 1)  # pooler and classifier / classifier
            assert ops.count(op) == per_layer * TINY["num_hidden_layers"] + (
                head_layers if per_layer else 0
            ), op
        assert "MatMul" in ops  # attention products (and the fp32 head)
        if scheme == "static":  # every Linear's bias is inside its int8 matmul: no Add after it
            produced = {n.output[0]: n.op_type for n in graph.graph.node}
            adds = [n for n in graph.graph.node if n.op_type == "Add"]
            assert not any(
                produced.get(i) == "MatMulIntegerToFloat" and len(weights.keys() & set(n.input))
                for n in adds
                for i in n.input
            )


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_wrong_zero_point_fails_every_parity_check(scheme, tmp_path):
    """A graph whose weight zero point is off by one (128 -> 127 in the u8u8 form) must fail the
    reference evaluator, the file as exported, and the file as shrink runs it on this CPU (which
    rewrites u8u8 to u8s8 here when it has VNNI / AMX: that rewrite must not drop the error)."""
    from onnx import load, save

    int8 = int8_classifier("sequence", scheme)
    path = export_onnx(int8, tmp_path / "int8.onnx", int8_kernel="u8u8")
    graph = load(str(path))
    offset = next(i for i in graph.graph.initializer if i.name == "int8/w_offset")
    offset.CopyFrom(numpy_helper.from_array(np.array(127, np.uint8), offset.name))
    save(graph, str(tmp_path / "wrong.onnx"))
    batch = inputs()
    want = pytorch_logits(int8, input_names(int8))(batch).numpy()
    feed = {k: v.numpy() for k, v in model_inputs(batch, input_names(int8)).items()}
    tolerance = TOLERANCE[scheme]
    assert close(reference(str(path)).run(None, feed)[0], want, tolerance)  # the right file passes
    assert not close(reference(str(tmp_path / "wrong.onnx")).run(None, feed)[0], want, tolerance)
    for kernel in ("as-exported", "auto"):
        assert not close(
            OnnxClassifier(tmp_path / "wrong.onnx", kernel=kernel)(batch).numpy(), want, tolerance
        )


def test_kernel_choice_by_cpu_flags(tmp_path, monkeypatch):
    """No AVX2-only CPU may be lent, so by graph inspection: where the CPU lacks VNNI / AMX, the u8s8
    file runs with uint8 weights (zero point 128: no saturating uint8 x int8 kernel); with them, a
    u8u8 file runs with int8 weights. The logits are the same integers either way."""
    from onnx import load

    from lightning_modules import cpu

    int8 = int8_classifier("sequence", "static")
    files = {k: export_onnx(int8, tmp_path / f"{k}.onnx", int8_kernel=k) for k in INT8_KERNELS}
    batch = inputs()
    as_exported = OnnxClassifier(files["u8s8"], kernel="as-exported")(batch)
    for flags, wanted in (
        ({"avx2", "fma"}, "u8u8"),
        ({"avx2", "avx512_vnni"}, "u8s8"),
        ({"avx2", "amx_int8"}, "u8s8"),
    ):
        monkeypatch.setattr(cpu, "cpu_flags", lambda flags=flags: flags)
        for kernel, path in files.items():
            run = OnnxClassifier(path)
            assert run.kernel.startswith(wanted), (flags, kernel, run.kernel)
            torch.testing.assert_close(run(batch), as_exported, atol=1e-5, rtol=0)
            graph = load(str(path))
            set_weight_kernel(graph, wanted)
            assert weight_kernel(graph) == wanted
            types = {i.name: i.data_type for i in graph.graph.initializer}
            for node in graph.graph.node:
                if node.op_type == "MatMulIntegerToFloat":
                    assert types[node.input[1]] == (
                        TensorProto.UINT8 if wanted == "u8u8" else TensorProto.INT8
                    )
                    assert (len(node.input) > 5 and node.input[5] == "int8/w_offset") == (wanted == "u8u8")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_int8_logits_do_not_depend_on_the_batch(scheme, tmp_path):
    """A sentence's int8 logits alone and inside a padded batch of other sentences, for the PyTorch
    int8 model and the exported graph (ONNX Runtime's per-tensor dynamic quantization fails this)."""
    int8 = int8_classifier("sequence", scheme)
    path = export_onnx(int8, tmp_path / "int8.onnx")
    runs = {"pytorch": pytorch_logits(int8, input_names(int8)), "onnx": OnnxClassifier(path)}
    batch = inputs(batch=6, length=20, seed=3)
    batch["attention_mask"][0, 9:] = 0  # the sentence: 9 tokens, the others longer, with larger values
    alone = {k: v[:1, :9] for k, v in batch.items()}
    for name, run in runs.items():
        together, by_itself = run(batch)[0], run(alone)[0]
        assert close(by_itself.numpy(), together.numpy(), TOLERANCE[scheme]), name


@pytest.mark.parametrize("task", ["sequence", "token"])
def test_fused_onnx_graphs_keep_parity(task, tmp_path):
    """ONNX Runtime's transformer fusions: the fp32 graph's attention, embeddings + LayerNorm and
    residual + LayerNorm become fused ops with the same logits; the int8 graph keeps its arithmetic."""
    fp32 = loud_classifier(task)
    int8 = int8_classifier(task)
    batches = [inputs(seed=s) for s in range(3)]
    for batch in batches:
        batch["word_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]).clone()
        batch["word_ids"][batch["attention_mask"] == 0] = -1
    for name, model in (("fp32", fp32), ("int8", int8)):
        path = export_onnx(model, tmp_path / f"{name}.onnx", fuse=True)
        keep = [(b["word_ids"] >= 0).numpy() if task == "token" else slice(None) for b in batches]
        expected = [
            pytorch_logits(model, input_names(model))(b).numpy()[k]
            for b, k in zip(batches, keep, strict=True)
        ]
        run = OnnxClassifier(path)
        got = [run(b).numpy()[k] for b, k in zip(batches, keep, strict=True)]
        assert all(close(g, want, 1e-4) for g, want in zip(got, expected, strict=True)), name
        ops = fused_ops(path)
        if name == "fp32":
            assert ops.get("Attention") == TINY["num_hidden_layers"] and ops.get("SkipLayerNormalization"), (
                ops
            )
        else:  # around the integer matmuls, only LayerNorm-level fusions apply
            assert "Attention" not in ops
    assert fp32.config._attn_implementation != "eager"  # the model's own attention is restored after export
    assert fused_ops(export_onnx(fp32, tmp_path / "again.onnx")) == {}


def test_fp16_onnx_graph_keeps_ids_in_logits_out_and_fp16_accuracy(tmp_path):
    """``export_onnx(fp16=True)`` (for GPUs): float16 weights, int64 ids in and float32 logits out as
    before, and logits within float16 rounding of PyTorch's; an int8 model is refused."""
    from onnx import load

    model = tiny_classifier("sequence")
    batches = [inputs(seed=s) for s in range(3)]
    path = export_onnx(model, tmp_path / "fp16.onnx", fp16=True)
    graph = load(str(path)).graph
    floats = {
        i.data_type for i in graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
    }
    assert floats == {TensorProto.FLOAT16}
    assert {i.type.tensor_type.elem_type for i in graph.input} == {TensorProto.INT64}
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    report = parity(pytorch_logits(model, input_names(model)), OnnxClassifier(path), batches, "sequence")
    assert report["agreement"] == 1.0 and 0 < report["max_logit_diff"] < 5e-3, report  # fp16: 11-bit mantissa

    def weight_bytes(g):
        return sum(
            len(i.raw_data) for i in g.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
        )

    assert 2 * weight_bytes(graph) == weight_bytes(
        load(str(export_onnx(model, tmp_path / "fp32.onnx"))).graph
    )
    with pytest.raises(InputError, match="fp16 export is for fp32 models"):
        export_onnx(convert_to_int8(prepare_qat(tiny_classifier("sequence"))), tmp_path / "x.onnx", fp16=True)


@pytest.mark.parametrize("kernel", INT8_KERNELS)
def test_int8_matmul_of_the_exported_form_is_exact_on_this_cpu(kernel):
    """The worst case for int16 pair sums: activations 255 times weights of +-127 in the same sign.
    ``u8u8`` (the default) must be exact on every CPU; ``u8s8`` is exact only with VNNI / AMX
    (AVX2's vpmaddubsw saturates at 32767), so it is checked only where the CPU has them."""
    import onnxruntime as ort
    from onnx import helper

    if kernel == "u8s8" and not has_int8_dot():
        pytest.skip("u8s8 saturates on CPUs without VNNI: that is why u8u8 is the default")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 384), dtype=np.uint8)
    a[0] = 255
    w = rng.integers(-127, 128, (384, 96), dtype=np.int8)
    w[:, 0] = 127
    w[:, 1] = -127
    inputs_ = [helper.make_tensor_value_info("a", TensorProto.UINT8, [64, 384])]
    if kernel == "u8u8":
        b = (w.astype(np.int16) + 128).astype(np.uint8)
        consts = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array(128, np.uint8), "zp")]
        node = helper.make_node("MatMulInteger", ["a", "b", "", "zp"], ["y"])
    else:
        consts = [numpy_helper.from_array(w, "b")]
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    graph = helper.make_graph(
        [node], "mm", inputs_, [helper.make_tensor_value_info("y", TensorProto.INT32, None)], consts
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"a": a})[0]
    np.testing.assert_array_equal(got, a.astype(np.int64) @ w.astype(np.int64))


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
