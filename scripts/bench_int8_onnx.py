"""Why the int8 ONNX graph quantizes activations per token: parity and latency, side by side, of
three ONNX Runtime graphs of one int8 checkpoint (benchmark, not CI):

* ``per-token u8u8``: what ``scripts/export.py onnx`` writes (``lightning_modules.export``): torchao's
  numerics, the checkpoint's int8 weights (stored as uint8 + 128), per-token uint8 activations;
  exact on every CPU; run as exported;
* ``per-token u8u8, auto``: the same file as shrink runs it (``OnnxClassifier``'s default): turned
  into u8s8 in memory where the CPU has VNNI / AMX, as exported elsewhere;
* ``per-token u8s8``: the same graph with int8 weights (uint8 x int8 kernels): exact only with
  VNNI / AMX, saturating on AVX2 without VNNI;
* ``per-tensor``: ONNX Runtime's own ``quantize_dynamic`` on the same layers (weights per channel,
  activations per tensor), the first export of this project;
* ``fp32``: the dequantized model, no integer kernels.

    python scripts/bench_int8_onnx.py --model results/qat/sst2-qat/int8.ckpt --data configs/sst2/qat.yaml \\
        --set "data_files={train: DATA/sst2/train.tsv, validation: DATA/sst2/dev.tsv}"

Parity is label agreement with the PyTorch int8 model on the validation split; latency is the median
of interleaved runs (each round times every graph once, so machine noise hits all alike).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from datamodules import datamodule_from_config, parse_overrides  # noqa: E402
from lightning_modules.base import load_classifier, read_checkpoint  # noqa: E402
from lightning_modules.export import (  # noqa: E402
    OnnxClassifier,
    cpu_name,
    export_onnx,
    input_names,
    onnx_scope,
    parity,
    pytorch_logits,
)
from lightning_modules.model_folder import checkpoint_tokenizer  # noqa: E402
from lightning_modules.quantize import dequantized, quantized_embeddings, quantized_linears  # noqa: E402


def per_tensor_onnx(model: torch.nn.Module, path: Path, embeddings: bool, head: bool) -> Path:
    """ONNX Runtime's dynamic quantization of the dequantized graph, on the scheme's layers."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = dequantized(model)
    fp32 = export_onnx(source, path.with_suffix(".fp32.onnx"))
    scopes = [onnx_scope(n) for n in quantized_linears(source, head)]
    tables = [onnx_scope(n) for n in quantized_embeddings(source, embeddings)]
    nodes = [
        node.name
        for node in onnx.load(str(fp32)).graph.node
        if (node.op_type in ("MatMul", "Gemm") and any(node.name.startswith(s) for s in scopes))
        or (node.op_type == "Gather" and any(node.name.startswith(s) for s in tables))
    ]
    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_quantize=nodes, op_types_to_quantize=["MatMul", "Gemm", "Gather"])  # fmt: skip
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="an int8 .ckpt (QAT or PTQ)")
    parser.add_argument(
        "--data", required=True, help="run config whose data: section gives the validation split"
    )
    parser.add_argument("--set", action="append", default=[], help="data init arg override KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=100, help="timed rounds per input shape")
    args = parser.parse_args(argv)
    checkpoint = read_checkpoint(args.model)
    task, scheme = checkpoint["hyper_parameters"]["task"], checkpoint["quantization"]
    model = load_classifier(args.model, task, int8_ok=True).eval()
    tokenizer = checkpoint_tokenizer(checkpoint)
    data = datamodule_from_config(args.data, {"tokenizer": tokenizer, **parse_overrides(args.set)})
    data.setup("validate")
    batches = list(data.loader("validate"))
    reference = pytorch_logits(model, input_names(model))

    with tempfile.TemporaryDirectory() as tmp:
        graphs = {
            "per-token u8u8": export_onnx(model, Path(tmp) / "token.onnx"),
            "per-token u8s8": export_onnx(model, Path(tmp) / "token_s8.onnx", int8_kernel="u8s8"),
            "per-tensor": per_tensor_onnx(
                model, Path(tmp) / "tensor.onnx", scheme["embeddings"], scheme["head"]
            ),
            "fp32": export_onnx(dequantized(model), Path(tmp) / "fp32.onnx"),
        }
        runners = {name: OnnxClassifier(path, args.threads, kernel="as-exported") for name, path in graphs.items()}
        runners["per-token u8u8, auto"] = OnnxClassifier(graphs["per-token u8u8"], args.threads)
        graphs["per-token u8u8, auto"] = graphs["per-token u8u8"]
        print(f"per-token u8u8, auto runs as {runners['per-token u8u8, auto'].kernel}", file=sys.stderr)
        rows = {name: parity(reference, run, batches, task) for name, run in runners.items()}
        first = {k: batches[0][k][:1] for k in ("input_ids", "attention_mask")}
        length = int(first["attention_mask"].sum())
        shapes = {
            f"b1 {length} tok": {k: v[:, :length] for k, v in first.items()},
            "b1 128 tok": {"input_ids": torch.full((1, 128), 1000), "attention_mask": torch.ones(1, 128, dtype=torch.long)},
            "b32": batches[0],
        }  # fmt: skip
        for shape, batch in shapes.items():
            times = {name: [] for name in runners}
            for round_ in range(args.rounds + 5):
                for name, run in runners.items():
                    start = time.perf_counter()
                    run(batch)
                    if round_ >= 5:  # warm-up rounds are not timed
                        times[name].append(time.perf_counter() - start)
            for name in runners:
                rows[name][f"{shape} p50 ms"] = round(1000 * statistics.median(times[name]), 3)
        for name, path in graphs.items():
            rows[name]["size_mb"] = round(path.stat().st_size / 1e6, 2)
    header = ["graph", *next(iter(rows.values()))]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, row in rows.items():
        print(
            "| "
            + " | ".join([name, *(str(round(v, 5) if isinstance(v, float) else v) for v in row.values())])
            + " |"
        )
    cpu = cpu_name()
    print(f"CPU: {cpu}")
    print(json.dumps({"model": args.model, "threads": args.threads, "cpu": cpu, "rows": rows}))


if __name__ == "__main__":
    main()
