"""Running an exported classifier in ONNX Runtime, without torch: the session (execution provider,
threads) and the operand types of its int8 matmuls, picked for this CPU. ``shrink classify`` on an
ONNX folder imports only this, ONNX Runtime and the ``tokenizers`` library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from datamodules.errors import InputError
from lightning_modules.cpu import has_int8_dot

ONNX_FILE = "model.onnx"  # the file name optimum's ORTModel classes look for in a folder


def folder_task(config: Any) -> str | None:
    """``sequence`` / ``token`` from a Hugging Face config's (or its ``config.json``'s) architectures."""
    names = " ".join(
        (config.get("architectures") if isinstance(config, dict) else config.architectures) or []
    )
    if "ForTokenClassification" in names:
        return "token"
    if "ForSequenceClassification" in names:
        return "sequence"
    return None


# ONNX Runtime execution providers by name, each with its fallbacks (nodes a provider lacks run on the
# next); TensorRT builds an fp16 engine (and caches nothing: the first batch of each shape is slow)
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": True}),
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ],
}


def provider_name(provider: str) -> str:
    """ONNX Runtime's name of the execution provider ``provider`` (cpu, cuda, tensorrt) asks for."""
    if provider not in PROVIDERS:
        raise InputError(f"provider {provider!r} is not one of {sorted(PROVIDERS)}")
    first = PROVIDERS[provider][0]
    return first[0] if isinstance(first, tuple) else first


def session_providers(provider: str) -> list:
    """ONNX Runtime's provider list for ``provider`` (cpu, cuda, tensorrt); one line when this
    ONNX Runtime lacks it (the CPU wheel has no CUDA or TensorRT)."""
    wanted = provider_name(provider)
    if wanted not in ort.get_available_providers():
        raise InputError(
            f"this ONNX Runtime has no {wanted} (it has {', '.join(ort.get_available_providers())}): "
            "on a GPU machine `pip install onnxruntime-gpu` (in place of onnxruntime), or use --provider cpu"
        )
    return PROVIDERS[provider]


def _int8_matmuls(model: Any) -> list[tuple[Any, int]]:
    """The int8 matmul nodes of a graph with the index of their weight zero-point input."""
    zp_input = {"MatMulInteger": 3, "MatMulIntegerToFloat": 5}
    return [(n, zp_input[n.op_type]) for n in model.graph.node if n.op_type in zp_input]


def weight_kernel(model: Any) -> str | None:
    """``u8s8`` or ``u8u8``: the operand types of an exported graph's int8 matmuls (None: fp32)."""
    types = {i.name: i.data_type for i in model.graph.initializer}
    weights = {types.get(n.input[1]) for n, _ in _int8_matmuls(model)}
    return None if not weights else "u8u8" if TensorProto.UINT8 in weights else "u8s8"


def set_weight_kernel(model: Any, kernel: str) -> int:
    """Rewrite (in place) every int8 matmul's weights to ``kernel``: ``u8u8`` stores ``w + 128`` as
    uint8 with zero point 128, ``u8s8`` stores ``w`` as int8 with none. ``(x - zx) * w`` is the same
    integer either way; u8s8 is exact only where ``has_int8_dot()``. Returns how many changed."""
    weights = {i.name: i for i in model.graph.initializer}
    offset = "int8/w_offset"
    count = 0
    for node, zp in _int8_matmuls(model):
        old = weights[node.input[1]]
        if (old.data_type == TensorProto.UINT8) == (kernel == "u8u8"):
            continue
        inputs = list(node.input) + [""] * max(0, zp + 1 - len(node.input))
        values = numpy_helper.to_array(old).astype(np.int16)
        if kernel == "u8u8":
            if inputs[zp]:  # an int8 weight zero point: fold it in before shifting
                values = values - numpy_helper.to_array(weights[inputs[zp]]).astype(np.int16)
            values, inputs[zp] = values + 128, offset
        else:  # the file's own zero point, whatever it is: a wrong one stays wrong, and parity sees it
            values = values - (
                numpy_helper.to_array(weights[inputs[zp]]).astype(np.int16) if inputs[zp] else 0
            )
            inputs[zp] = ""
        lo, hi = (0, 255) if kernel == "u8u8" else (-128, 127)
        if values.min() < lo or values.max() > hi:
            continue  # not representable in the other type: this layer stays as it is
        while inputs and inputs[-1] == "":
            inputs.pop()
        old.CopyFrom(
            numpy_helper.from_array(values.astype(np.uint8 if kernel == "u8u8" else np.int8), old.name)
        )
        del node.input[:]
        node.input.extend(inputs)
        count += 1
    used = {i for n in model.graph.node for i in n.input}
    if offset in used and offset not in weights:
        model.graph.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), offset))
    elif offset not in used and offset in weights:  # no longer used: ONNX Runtime would warn about it
        model.graph.initializer.remove(weights[offset])
    return count


class OnnxClassifier:
    """An exported classifier run by ONNX Runtime: ``logits = model(batch)``, without torch."""

    def __init__(
        self, path: str | Path, threads: int = 1, kernel: str = "auto", provider: str = "cpu"
    ) -> None:
        """
        Args:
            path: an ``.onnx`` file or an ONNX folder holding ``model.onnx``.
            threads: ONNX Runtime's intra-op threads.
            kernel: ``auto`` runs an int8 graph's matmuls as uint8 x int8 on CPUs where that is exact
                (VNNI / AMX, ``has_int8_dot``) and as uint8 x uint8 elsewhere (AVX2 without VNNI
                saturates u8s8 sums); ``as-exported`` runs the file unchanged. ``self.kernel`` says
                which ran (``None``: no int8 layers).
            provider: ``cpu``, ``cuda`` or ``tensorrt`` (``PROVIDERS``; the GPU ones need onnxruntime-gpu).
        """
        if kernel not in ("auto", "as-exported"):
            raise InputError(f"kernel {kernel!r} is not auto or as-exported")
        if Path(path).is_dir():  # an ONNX folder of shrink export onnx
            path = Path(path) / ONNX_FILE
        if not Path(path).is_file():
            raise InputError(f"ONNX model {path} does not exist: export it first (shrink export onnx)")
        providers = session_providers(provider)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source: str | bytes = str(path)
        graph = onnx.load(str(path))
        self.kernel = weight_kernel(graph)
        if kernel == "auto" and provider == "cpu" and self.kernel:  # the kernel choice is about CPUs
            wanted = "u8s8" if has_int8_dot() else "u8u8"
            if self.kernel != wanted and set_weight_kernel(graph, wanted):
                exact = (
                    "VNNI/AMX: exact here" if wanted == "u8s8" else "no VNNI/AMX here: u8s8 would saturate"
                )
                source, self.kernel = graph.SerializeToString(), f"{wanted} ({exact})"
        self.session = ort.InferenceSession(source, options, providers=providers)
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, Any]) -> Any:
        """Logits of a batch of numpy arrays (as numpy) or of torch tensors (as a torch tensor)."""
        ids = batch["input_ids"]
        feed = {
            name: np.asarray(batch[name] if name in batch else np.zeros_like(np.asarray(ids)), dtype=np.int64)
            for name in self.names  # token types default to zeros (tokenizers without them)
        }
        logits = self.session.run(None, feed)[0]
        if isinstance(ids, np.ndarray):
            return logits
        return sys.modules["torch"].from_numpy(logits)  # a torch batch: torch is loaded already
