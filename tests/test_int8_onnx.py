"""int8 ONNX: fp32 / int8 parity of every graph form against the PyTorch int8 model, a wrong zero
point caught, the kernel chosen by CPU flags, batch independence, fused graphs, fp16, and the exported
int8 matmul exact on this CPU."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, numpy_helper

from datamodules import InputError
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
    convert_to_int8,
    prepare_qat,
)
from tests.int8_models import (
    TOLERANCE,
    close,
    inputs,
    int8_classifier,
    loud_classifier,
    reference,
    tiny_classifier,
)
from tests.test_distill import TINY

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
