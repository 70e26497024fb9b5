"""The int8 ONNX graph of a torchao int8 classifier, and the operand types its int8 matmuls run with.

int8 in ONNX Runtime: the graph of the dequantized model is exported, then each layer that is int8
in the torchao model is rewritten into torchao's own arithmetic with its int8 weights and scales
(not re-derived), so what was evaluated in PyTorch is what ships:

* ``static`` layers: one ``QuantizeLinear`` with the calibrated scale (shared by Q, K and V) and one
  ``MatMulIntegerToFloat`` (ONNX Runtime's fused int8 matmul, scales, zero points and bias inside).
  Nothing is computed about the activations at run time, so the graph is batch-invariant and has
  fewer ops than ONNX Runtime's own ``quantize_dynamic`` graph (which also quantizes per batch).
* ``per-token`` layers: the per-row range, ``MatMulInteger`` in int32, the zero-point correction and
  the two scales in standard ONNX ops.

Operand types (``INT8_KERNELS``): the default ``u8s8`` stores int8 weights (uint8 activations x
int8 weights: what ONNX Runtime's quantizer writes, and its fast kernel on VNNI / AMX CPUs, where
the int32 sums are exact). On AVX2 without VNNI that kernel (``vpmaddubsw``) adds pairs of products
into int16 and saturates; ``u8u8`` (weights shifted into uint8 with a zero point of 128) widens to
16 bits first and is exact on every x86 and ARM CPU, but slower on VNNI / AMX. The file is
u8s8, and ``OnnxClassifier`` (every shrink command that runs ONNX) rewrites it to u8u8 in memory on
a CPU without VNNI / AMX (``onnx_session.set_weight_kernel``); export with ``--int8-kernel u8u8`` for a file that
plain ONNX Runtime runs exactly on such CPUs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lightning_modules.methods.quantize import is_int8_weight

MS = "com.microsoft"  # ONNX Runtime's contrib ops (MatMulIntegerToFloat)


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


def constant_reshapes(model: Any) -> int:
    """Give every Reshape whose target the exporter computes at run time (Shape -> Gather ->
    Unsqueeze -> Concat, four per attention layer) a constant target, 0 keeping a dimension: the
    same shapes with ~15 fewer small ops per layer, which batch-1 latency feels. In place; returns
    how many Reshapes changed (0 where symbolic shape inference cannot follow the graph)."""
    from onnx import numpy_helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # noqa: BLE001 - an op it does not know: the graph stays as exported
        return 0
    shapes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims]
    count = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        source, target = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not source or not target:
            continue
        known = [
            0 if i < len(source) and source[i] == d and d != 0 else d if isinstance(d, int) and d > 0 else -1
            for i, d in enumerate(target)
        ]
        if known.count(-1) > 1:
            continue
        name = f"{node.name}/target"
        model.graph.initializer.append(numpy_helper.from_array(np.array(known, np.int64), name))
        node.input[1] = name
        count += 1
    outputs = {o.name for o in model.graph.output}
    while True:  # drop what computed the old targets
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            return count
        for n in dead:
            model.graph.node.remove(n)


def _int8_parts(weight: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 values, scales and zero points (per output row) of a torchao int8 weight."""
    qdata = weight.qdata.numpy()
    scale = weight.scale.float().reshape(qdata.shape[0]).numpy()
    zero = weight.zero_point
    zero = np.zeros_like(scale) if zero is None else zero.float().reshape(qdata.shape[0]).numpy()
    return qdata, scale, zero


def int8_graph(graph: Any, model: torch.nn.Module, int8_kernel: str = "u8s8") -> None:
    """Rewrite (in place) the fp32 ONNX graph of ``model``'s dequantized copy: each Linear whose
    weight is int8 in ``model`` becomes its scheme's int8 ops (static: ``QuantizeLinear`` +
    ``MatMulIntegerToFloat`` with the bias folded in; per-token: run-time ranges + ``MatMulInteger``),
    with int8 weights (``u8s8``) or weights shifted by 128 into uint8 (``u8u8``); each int8
    embedding table becomes a Gather of int8 rows times their scales."""
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
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    initializers = {i.name: i for i in graph.initializer}
    folded: set[str] = set()  # bias Adds taken into the int8 matmul that precedes them
    static_inputs: dict[tuple, tuple[str, str, str]] = {}  # (activation, scale, zero) -> its QuantizeLinear

    def bias_after(matmul: Any) -> tuple[str | None, str]:
        """The bias of the Add that alone consumes a MatMul (how a Linear on 3-D input exports)."""
        after = consumers.get(matmul.output[0], [])
        if len(after) == 1 and after[0].op_type == "Add":
            other = [i for i in after[0].input if i != matmul.output[0]]
            if len(other) == 1 and other[0] in initializers and len(initializers[other[0]].dims) == 1:
                folded.add(after[0].name)
                return other[0], after[0].output[0]
        return None, matmul.output[0]

    def quantize_static(x: str, module: torch.nn.Module) -> tuple[str, str, str]:
        """One QuantizeLinear per activation and scale (Q, K and V share theirs): int8 values and
        zero point shifted by 128 into uint8, so ``q - zp`` is torchao's and the kernel is uint8 x int8."""
        scale = float(module.weight.act_quant_scale.reshape(()))
        zero = int(module.weight.act_quant_zero_point.reshape(())) + 128
        key = (x, scale, zero)
        if key not in static_inputs:
            p = f"{x}/int8_static{len(static_inputs)}"
            s, z = (
                constant(f"{p}/scale", np.array(scale, np.float32)),
                constant(f"{p}/zero", np.array(zero, np.uint8)),
            )
            static_inputs[key] = (node("QuantizeLinear", [x, s, z], f"{p}/q"), s, z)
        return static_inputs[key]

    rewritten = set()
    for old in graph.node:
        if old.name in folded:
            continue
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
        if int8_kernel == "u8u8":  # w + 128 as uint8 with zero point 128: the same products, no saturation
            wq = constant(f"{p}/wq", np.ascontiguousarray((qdata.T.astype(np.int16) + 128).astype(np.uint8)))
        else:
            wq = constant(f"{p}/wq", np.ascontiguousarray(qdata.T))
        w_zp = w_offset if int8_kernel == "u8u8" else ""
        x = old.input[0]
        if getattr(module.weight, "act_quant_scale", None) is not None:  # static: one fused op, bias inside
            xq, x_scale, x_zero = quantize_static(x, module)
            if old.op_type == "MatMul":
                bias, out = bias_after(old)
            else:
                bias = old.input[2] if len(old.input) > 2 else None
            inputs = [xq, wq, x_scale, constant(f"{p}/w_scale", w_scale), x_zero, w_zp, bias or ""]
            while inputs[-1] == "":
                inputs.pop()
            new_nodes.append(
                helper.make_node("MatMulIntegerToFloat", inputs, [out], name=f"{p}/int8", domain=MS)
            )
            continue
        xq, x_scale, x_zero = quantize_per_token(x)
        acc = node("MatMulInteger", [xq, wq, *(["", w_zp] if w_zp else [])], f"{p}/acc")
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
