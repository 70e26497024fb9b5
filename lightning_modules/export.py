"""Deployment: ONNX export of fp32 and int8 classifiers, run by ONNX Runtime on CPU, and the parity
check that compares an exported model with the PyTorch model it came from.

int8 in ONNX Runtime: the graph of the dequantized model is exported, then each layer that is int8
in the torchao model is rewritten with standard ONNX ops into torchao's own arithmetic: its int8
weights and scales (not re-derived), activations quantized per token (asymmetric int8, as
``lightning_modules.quantize`` does), ``MatMulInteger`` in int32, the zero-point correction and the
two scales. ONNX Runtime's ``quantize_dynamic`` would quantize activations per tensor instead,
which flips about 2% of SST-2 predictions against the PyTorch int8 model. torchao's eager int8 is
slower than fp32 on CPU; ONNX Runtime's integer kernels are the CPU deployment path.

Operand types (``INT8_KERNELS``): the default ``u8u8`` stores the int8 weights shifted into uint8
with a zero point of 128. ONNX Runtime's uint8 x uint8 kernels widen to 16 bits before multiplying
(``vpmaddwd`` on AVX2 / AVX-512, ``vpdpbuud`` on AVX-VNNI-INT8, ``udot`` on ARM64), so every x86 and
ARM CPU computes the exact int32 sums. ``u8s8`` (uint8 activations x int8 weights) is exact only on
CPUs with VNNI or AMX: on AVX2 without VNNI its kernel (``vpmaddubsw``) adds pairs of products into
int16 and saturates, so an exported model silently disagrees with the trained one there.

The file keeps u8u8 (it does not know where it will run), and ``OnnxClassifier`` turns it into u8s8
in memory when the CPU it runs on has VNNI or AMX (``signed_weights``): the same int32 sums, and
ONNX Runtime's faster kernel there (u8u8 widens to 16 bits, half the multiplies per instruction).
"""

from __future__ import annotations

import inspect
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.errors import InputError
from lightning_modules.quantize import dequantized, is_int8_weight, is_quantized

OPSET = 17
ONNX_FILE = "model.onnx"  # the file name optimum's ORTModel classes look for in a folder
INT8_KERNELS = ("u8u8", "u8s8")  # MatMulInteger operand types; u8u8 is exact on every CPU (see above)
# ONNX Runtime execution providers by name, each with its fallbacks (nodes a provider lacks run on the
# next); TensorRT builds an fp16 engine (and caches nothing: the first batch of each shape is slow)
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": [("TensorrtExecutionProvider", {"trt_fp16_enable": True}), "CUDAExecutionProvider", "CPUExecutionProvider"],
}  # fmt: skip


def provider_name(provider: str) -> str:
    """ONNX Runtime's name of the execution provider ``provider`` (cpu, cuda, tensorrt) asks for."""
    if provider not in PROVIDERS:
        raise InputError(f"provider {provider!r} is not one of {sorted(PROVIDERS)}")
    first = PROVIDERS[provider][0]
    return first[0] if isinstance(first, tuple) else first


def session_providers(provider: str) -> list:
    """ONNX Runtime's provider list for ``provider`` (cpu, cuda, tensorrt); one line when this
    ONNX Runtime lacks it (the CPU wheel has no CUDA or TensorRT)."""
    import onnxruntime as ort

    wanted = provider_name(provider)
    if wanted not in ort.get_available_providers():
        raise InputError(
            f"this ONNX Runtime has no {wanted} (it has {', '.join(ort.get_available_providers())}): "
            "on a GPU machine `pip install onnxruntime-gpu` (in place of onnxruntime), or use --provider cpu"
        )
    return PROVIDERS[provider]


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


def onnx_scope(module_name: str) -> str:
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
    int8_kernel: str = "u8u8",
    fuse: bool = False,
    fp16: bool = False,
) -> Path:
    """Write ``model`` as ONNX: fp32, or, for a torchao int8 model, an int8 graph with the same
    numerics (``int8_graph``; ``int8_kernel`` picks the MatMulInteger operand types, see
    ``INT8_KERNELS``); ``fuse`` then applies ONNX Runtime's transformer fusions (``fuse_transformer_ops``);
    ``fp16`` (fp32 models, for GPUs) stores weights and computes in float16, with int64 inputs and
    float32 logits as before. Written beside ``path`` and renamed: never half a file."""
    import onnx

    if int8_kernel not in INT8_KERNELS:
        raise InputError(
            f"int8 kernel {int8_kernel!r} is not one of {INT8_KERNELS}: use u8u8 (exact on every CPU)"
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
    if fuse:  # the eager attention graph is the pattern ONNX Runtime's Attention fusion matches (SDPA's is not)
        source.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
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
            int8_graph(exported.graph, model, int8_kernel)
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

    fused = optimizer.optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    fused.save_model_to_file(str(path))


def fused_ops(path: str | Path) -> dict[str, int]:
    """The fused transformer ops (com.microsoft domain) an ONNX file holds."""
    import onnx

    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "com.microsoft"))


def _cpuinfo(field: str) -> str:
    """A field of the first CPU in /proc/cpuinfo ("" off Linux)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(field)), "")


def cpu_flags() -> set[str]:
    """The instruction-set flags of /proc/cpuinfo (x86 ``flags``, ARM ``Features``; empty off Linux)."""
    return set((_cpuinfo("flags") or _cpuinfo("Features")).split())


def cpu_name() -> str:
    """``lscpu``'s model name and the int8 / bf16 instruction sets that change ONNX Runtime's kernels."""
    import platform

    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return f"{_cpuinfo('model name') or platform.processor()} ({' '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def has_int8_dot() -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernel is exact here: x86 VNNI (``vpdpbusd`` sums in int32)
    or AMX. Unknown CPUs (not Linux x86) count as no: the exact u8u8 graph runs there."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def signed_weights(model: Any) -> int:
    """Rewrite (in place) the u8u8 MatMulIntegers of an exported int8 graph as u8s8: each weight
    ``w + 128`` with zero point 128 becomes ``w`` as int8 with none. ``(x - zx) * w`` is the same
    integer either way; only run it where ``has_int8_dot()``. Returns how many were rewritten."""
    from onnx import numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or len(node.input) != 4 or node.input[3] != "int8/w_offset":
            continue
        old = weights[node.input[1]]
        shifted = numpy_helper.to_array(old).astype(np.int16) - 128
        old.CopyFrom(numpy_helper.from_array(shifted.astype(np.int8), old.name))
        del node.input[2:]
        count += 1
    if count and "int8/w_offset" in weights:  # no longer used: ONNX Runtime would warn about it
        model.graph.initializer.remove(weights["int8/w_offset"])
    return count


def _int8_parts(weight: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 values, scales and zero points (per output row) of a torchao int8 weight."""
    qdata = weight.qdata.numpy()
    scale = weight.scale.float().reshape(qdata.shape[0]).numpy()
    zero = weight.zero_point
    zero = np.zeros_like(scale) if zero is None else zero.float().reshape(qdata.shape[0]).numpy()
    return qdata, scale, zero


def int8_graph(graph: Any, model: torch.nn.Module, int8_kernel: str = "u8u8") -> None:
    """Rewrite (in place) the fp32 ONNX graph of ``model``'s dequantized copy: each Linear whose
    weight is int8 in ``model`` becomes per-token activation quantization + ``MatMulInteger``
    (uint8 x uint8 weights shifted by 128, or uint8 x int8 with ``int8_kernel="u8s8"``);
    each int8 embedding table becomes a Gather of int8 rows times their scales."""
    from onnx import TensorProto, helper, numpy_helper

    new_nodes: list[Any] = []
    constants: dict[str, np.ndarray] = {}

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        new_nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def constant(name: str, value: np.ndarray) -> str:
        constants[name] = value
        return name

    zero, qmin, qmax = (
        constant(f"int8/{n}", np.array(v, np.float32))
        for n, v in (("zero", 0.0), ("qmin", 0.0), ("qmax", 255.0))  # uint8: int8 + 128
    )
    levels = constant("int8/levels", np.array(255.0, np.float32))
    w_offset = constant("int8/w_offset", np.array(128, np.uint8))  # u8u8: the weights' zero point
    eps = constant("int8/eps", np.array(np.finfo(np.float32).eps, np.float32))
    tokens: dict[str, tuple[str, str, str]] = {}  # activation -> its quantization, shared by Q, K, V

    def quantize_per_token(x: str) -> tuple[str, str, str]:
        """torchao's choose_qparams_affine + quantize_affine, asymmetric int8, one row per token,
        shifted by 128 into uint8 (ONNX Runtime's fast MatMulInteger kernels are uint8 x int8):
        the values and the zero point move together, so ``q - zp`` is unchanged."""
        if x not in tokens:
            p = f"{x}/int8"
            low = node("Min", [node("ReduceMin", [x], f"{p}/min", axes=[-1], keepdims=1), zero], f"{p}/low")
            high = node("Max", [node("ReduceMax", [x], f"{p}/max", axes=[-1], keepdims=1), zero], f"{p}/high")
            scale = node(
                "Max",
                [node("Div", [node("Sub", [high, low], f"{p}/range"), levels], f"{p}/s"), eps],
                f"{p}/scale",
            )
            offset = node("Round", [node("Div", [low, scale], f"{p}/low_q")], f"{p}/low_r")
            zp = node("Clip", [node("Sub", [qmin, offset], f"{p}/zp_raw"), qmin, qmax], f"{p}/zp")
            scaled = node("Mul", [x, node("Reciprocal", [scale], f"{p}/inv")], f"{p}/scaled")
            q = node(
                "Clip",
                [node("Add", [node("Round", [scaled], f"{p}/r"), zp], f"{p}/shift"), qmin, qmax],
                f"{p}/q",
            )
            tokens[x] = (node("Cast", [q], f"{p}/qi", to=TensorProto.UINT8), scale, zp)
        return tokens[x]

    int8_modules = {
        onnx_scope(name): module
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and is_int8_weight(module.weight)
    }
    rewritten = set()
    for old in graph.node:
        scope = next((s for s in int8_modules if old.name.startswith(s)), None)
        module = int8_modules.get(scope)
        linear = isinstance(module, torch.nn.Linear) and old.op_type in ("MatMul", "Gemm")
        table = isinstance(module, torch.nn.Embedding) and old.op_type == "Gather"
        if not (linear or table):
            new_nodes.append(old)
            continue
        rewritten.add(scope)
        qdata, w_scale, w_zero = _int8_parts(module.weight)
        p, out = scope + old.op_type, old.output[0]
        if table:  # rows of the int8 table, then (row - zero point) * row scale
            ids = old.input[1]
            rows = node(
                "Cast",
                [node("Gather", [constant(f"{p}/q", qdata), ids], f"{p}/rows_q")],
                f"{p}/rows",
                to=TensorProto.FLOAT,
            )
            if w_zero.any():  # asymmetric tables only (torchao's default is symmetric: all zero)
                zeros = node("Gather", [constant(f"{p}/zero", w_zero[:, None]), ids], f"{p}/row_zero")
                rows = node("Sub", [rows, zeros], f"{p}/centred")
            scale = node("Gather", [constant(f"{p}/scale", w_scale[:, None]), ids], f"{p}/row_scale")
            node("Mul", [rows, scale], out)
            continue
        assert not w_zero.any(), "int8 Linear weights are symmetric"
        x = old.input[0]
        xq, x_scale, x_zero = quantize_per_token(x)
        if int8_kernel == "u8u8":  # w + 128 as uint8 with zero point 128: the same products, no saturation
            shifted = (qdata.T.astype(np.int16) + 128).astype(np.uint8)
            weight = [constant(f"{p}/wq", np.ascontiguousarray(shifted)), "", w_offset]
        else:
            weight = [constant(f"{p}/wq", np.ascontiguousarray(qdata.T))]
        acc = node("MatMulInteger", [xq, *weight], f"{p}/acc")
        row_sums = constant(f"{p}/row_sums", qdata.astype(np.int64).sum(1).astype(np.float32))
        centred = node(
            "Sub",
            [
                node("Cast", [acc], f"{p}/accf", to=TensorProto.FLOAT),
                node("Mul", [x_zero, row_sums], f"{p}/zp_corr"),
            ],
            f"{p}/centred",
        )
        scaled = node("Mul", [centred, x_scale], f"{p}/x_scaled")
        if old.op_type == "MatMul":  # the bias is a separate Add node that follows
            node("Mul", [scaled, constant(f"{p}/w_scale", w_scale)], out)
        else:  # Gemm: y = x @ W^T + b in one node (2-D inputs, e.g. the pooler)
            bias = old.input[2] if len(old.input) > 2 else None
            y = node("Mul", [scaled, constant(f"{p}/w_scale", w_scale)], out if bias is None else f"{p}/y")
            if bias is not None:
                node("Add", [y, bias], out)
    missing = set(int8_modules) - rewritten
    if missing:
        raise RuntimeError(f"int8 layers not found in the ONNX graph: {sorted(missing)}")
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    used = {i for n in graph.node for i in n.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for initializer in unused:  # the fp32 weights the int8 ones replace
        graph.initializer.remove(initializer)


class OnnxClassifier:
    """An exported classifier run by ONNX Runtime: ``logits = model(batch)``."""

    def __init__(
        self, path: str | Path, threads: int = 1, kernel: str = "auto", provider: str = "cpu"
    ) -> None:
        """
        Args:
            path: an ``.onnx`` file or an ONNX folder holding ``model.onnx``.
            threads: ONNX Runtime's intra-op threads.
            kernel: ``auto`` runs an int8 graph's uint8 x uint8 MatMulIntegers as uint8 x int8 on CPUs
                where that is exact and faster (VNNI / AMX, ``has_int8_dot``); ``as-exported`` runs
                the file unchanged. ``self.kernel`` says which ran (``None``: no int8 layers).
            provider: ``cpu``, ``cuda`` or ``tensorrt`` (``PROVIDERS``; the GPU ones need onnxruntime-gpu).
        """
        import onnx
        import onnxruntime as ort

        if kernel not in ("auto", "as-exported"):
            raise InputError(f"kernel {kernel!r} is not auto or as-exported")
        if Path(path).is_dir():  # an ONNX folder of scripts/export.py onnx
            path = Path(path) / ONNX_FILE
        if not Path(path).is_file():
            raise InputError(f"ONNX model {path} does not exist: export it first (scripts/export.py onnx)")
        providers = session_providers(provider)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source: str | bytes = str(path)
        graph = onnx.load(str(path))
        types = {i.name: i.data_type for i in graph.graph.initializer}
        weights = [types.get(n.input[1]) for n in graph.graph.node if n.op_type == "MatMulInteger"]
        self.kernel = None if not weights else "u8s8" if onnx.TensorProto.INT8 in weights else "u8u8"
        cpu = provider == "cpu"  # the u8s8 rewrite is about CPU kernels
        if kernel == "auto" and cpu and self.kernel == "u8u8" and has_int8_dot() and signed_weights(graph):
            source, self.kernel = graph.SerializeToString(), "u8s8 (VNNI/AMX: exact here)"
        self.session = ort.InferenceSession(source, options, providers=providers)
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {k: v.numpy().astype(np.int64) for k, v in model_inputs(batch, self.names).items()}
        return torch.from_numpy(self.session.run(None, feed)[0])


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
