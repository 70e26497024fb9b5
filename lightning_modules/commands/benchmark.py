"""Accuracy vs latency vs size, side by side in one run: teacher fp32, student fp32, student PTQ
int8, student QAT int8, each in PyTorch, (``--compile``) compiled PyTorch and (``--onnx``) ONNX
Runtime on CPU.

    shrink benchmark --data configs/sst2/qat.yaml --onnx --out results/benchmark/sst2 \\
        --model "teacher fp32=outputs/sst2/finetune/checkpoints/BEST.ckpt" \\
        --model "student fp32=outputs/sst2/distill/checkpoints/BEST.ckpt" \\
        --model "student PTQ int8=outputs/sst2/ptq.int8.ckpt" \\
        --model "student QAT int8=outputs/sst2/qat/int8.ckpt"

``--ort-peers NAME`` adds, for the fp32 model NAME, what a user gets from ONNX Runtime's own
quantizer on its fp32 export (``lightning_modules.commands.ort_peers``: dynamic int8, optimum's default
recipe, and calibrated static QDQ int8), scored and timed in the same rounds as every other row.

ONNX folders (``shrink export onnx``) are timed as exported, the file whose parity was checked:

    shrink benchmark --data configs/demo-sequence/qat.yaml --out outputs/demo/benchmark \\
        --model "teacher=outputs/demo/sequence_finetune/model" \\
        --model "student QAT int8 (ORT)=outputs/demo/sequence_qat/onnx-int8"

Per row: the task metric on the split (the checkpoint's own tokenizer), parameters, bytes on disk
(the weights as deployed: the state dict, or the .onnx file), latency p50/p95 at batch 1 on real
sentence lengths and on 128 tokens, throughput at batch 32 (real lengths, dynamic padding). One
process, fixed thread count, warm-up before timing, and the rows timed in interleaved rounds
(``--rounds``): a noisy stretch of the machine slows every row alike, so the ratios to the first row hold.
Writes benchmark.md, benchmark.json and benchmark.png (metric vs latency, marker area = size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from datamodules import InputError, datamodule_from_config, parse_overrides
from lightning_modules.artifacts.classifiers import load_trained
from lightning_modules.artifacts.model_folder import read_json
from lightning_modules.artifacts.onnx_folder import export_onnx, input_names, pytorch_logits
from lightning_modules.artifacts.onnx_session import (
    ONNX_FILE,
    PROVIDERS,
    OnnxClassifier,
    folder_task,
    session_providers,
)
from lightning_modules.commands.benchmark_report import markdown, metric_key, plot
from lightning_modules.commands.ort_peers import ort_dynamic_int8, ort_static_int8
from lightning_modules.methods.quantize import import_torchao, weights_bytes
from lightning_modules.methods.task_metrics import (
    computed_metrics,
    headline_metric,
    predicted,
    task_metrics,
    update_task_metrics,
)

SPLIT_STAGE = {"validation": "validate", "test": "test"}
MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def parse_models(specs: list[str]) -> list[tuple[str, str, dict]]:
    """``NAME=PATH`` pairs (a ``.ckpt``, a model folder, or an ONNX folder of ``shrink export
    onnx``, timed as exported and verified), each with its task, tokenizer and int8 flag; every
    path is checked before any work starts."""
    from transformers import AutoConfig

    models = []
    for spec in specs:
        name, sep, path = spec.rpartition("=")
        name = name if sep else Path(path).stem
        if (Path(path) / ONNX_FILE).is_file():
            parity = read_json(Path(path) / "parity.json")
            task = folder_task(AutoConfig.from_pretrained(path))
            models.append(
                (
                    name,
                    path,
                    {"task": task, "tokenizer": path, "int8": bool(parity.get("int8")), "onnx": True},
                )
            )
            continue
        trained = load_trained(path, role=f"--model {spec}:")
        if trained.tokenizer is None:
            raise InputError(
                f"--model {spec}: {path} records no tokenizer: benchmark checkpoints of `shrink fit`"
            )
        info = {
            "task": trained.task,
            "tokenizer": trained.tokenizer,
            "int8": trained.quantization is not None,
        }
        models.append((name, path, {**info, "onnx": False, "trained": trained}))
    if not models:
        raise InputError(
            "no --model given: pass NAME=PATH (.ckpt, model folder or ONNX folder) at least once"
        )
    return models


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(run, inputs: list[dict]) -> list[float]:
    times = []
    for batch in inputs:
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return times


def unpadded(batch: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    """One example at its real length (no padding), as a batch of 1."""
    length = int(batch["attention_mask"][row].sum())
    return {k: v[row : row + 1, :length] for k, v in batch.items() if k in MODEL_KEYS}


def score(run, batches: list[dict], task: str, label_names: list[str]) -> dict[str, float]:
    """The task metric over the split."""
    metrics = task_metrics(task, label_names)
    for batch in batches:
        update_task_metrics(metrics, task, label_names, predicted(run(batch), label_names), batch)
    key = headline_metric(task, label_names)
    return {key: round(float(computed_metrics(metrics, "")[key]), 4)}


def timing_inputs(batches: list[dict], args) -> dict[str, list[dict]]:
    """What each row is timed on: real sentences at batch 1, 128 real tokens back to back, batches of 32."""
    singles = [unpadded(b, i) for b in batches for i in range(b["input_ids"].shape[0])][
        : args.latency_samples
    ]
    ids = torch.cat([s["input_ids"][0] for s in singles] * 128)[:128]
    full = {"input_ids": ids[None], "attention_mask": torch.ones(1, 128, dtype=torch.long)}
    full["token_type_ids"] = torch.zeros_like(full["input_ids"])
    by32 = [b for b in batches if b["input_ids"].shape[0] == 32][: args.throughput_batches]
    return {"b1": singles, "128": [full] * args.long_repeats, "b32": by32}


def timed_rounds(
    runs: list, inputs: list[dict[str, list[dict]]], rounds: int
) -> list[dict[str, list[float]]]:
    """Each run's times per kind of input, in interleaved rounds: round r times every run on the r-th
    share of its inputs, so a noisy stretch of the machine lands on all rows alike, and the ratios
    between rows hold better than the absolute figures."""
    for run, items in zip(runs, inputs, strict=True):  # warm-up, untimed
        for kind, count in (("b1", 10), ("128", 5), ("b32", 1)):
            for batch in items[kind][:count]:
                run(batch)
    times = [{kind: [] for kind in items} for items in inputs]
    for r in range(rounds):
        for run, items, out in zip(runs, inputs, times, strict=True):
            for kind, batches in items.items():
                out[kind] += timed(run, batches[r::rounds])
    return times


def latencies(times: dict[str, list[float]]) -> dict[str, float]:
    real, long, tput = times["b1"], times["128"], times["b32"]
    return {
        "latency_ms_p50": round(1000 * statistics.median(real), 3),
        "latency_ms_p95": round(1000 * percentile(real, 0.95), 3),
        "latency_128_ms_p50": round(1000 * statistics.median(long), 3),
        "latency_128_ms_p95": round(1000 * percentile(long, 0.95), 3),
        "throughput_b32": round(32 * len(tput) / sum(tput), 1) if tput else float("nan"),
    }


def benchmark(args) -> list[dict]:
    import_torchao()
    torch.set_num_threads(args.threads)
    models = parse_models(args.model)
    overrides = {
        "eval_batch_size": 32,
        **({"max_eval_samples": args.max_eval_samples} if args.max_eval_samples else {}),
    }
    rows, data_by_tokenizer, runs, inputs, peers = [], {}, [], [], []
    unknown = set(args.ort_peers) - {
        name for name, _, info in models if not info["int8"] and not info["onnx"]
    }
    if unknown:
        raise InputError(
            f"--ort-peers {sorted(unknown)}: name fp32 PyTorch models given with --model NAME=PATH"
        )
    session_providers(args.provider)  # before any work: a missing GPU provider is one line
    provider_tag = "" if args.provider == "cpu" else f" {args.provider}"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {args.device}: torch sees no CUDA device here: use --device cpu")
    for name, path, info in models:
        task, tokenizer, int8 = info["task"], info["tokenizer"], info["int8"]
        if tokenizer not in data_by_tokenizer:
            data = datamodule_from_config(args.data, {**overrides, "tokenizer": tokenizer, **args.set})
            data.setup(SPLIT_STAGE[args.split])
            data_by_tokenizer[tokenizer] = data
        data = data_by_tokenizer[tokenizer]
        stage = "validate" if args.split == "validation" else "test"
        if info["onnx"]:  # the file export verified, as deployed
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(path)
            labels = [config.id2label[i] for i in range(config.num_labels)]
            params = read_json(Path(path) / "parity.json").get("parameters") or float("nan")
            onnx_file = Path(path) / ONNX_FILE
            ort_model = OnnxClassifier(onnx_file, args.threads, provider=args.provider)
            runtimes = [(f"onnxruntime{provider_tag}", ort_model, onnx_file.stat().st_size)]
        else:
            model = info["trained"].model
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
            params = sum(p.numel() for p in model.parameters())
            device = "cpu" if int8 else args.device  # torchao's int8 layers here are CPU kernels
            model.to(device)
            tag = "" if device == "cpu" else f" {device}"
            runtimes = [
                (f"pytorch{tag}", pytorch_logits(model, input_names(model), device), weights_bytes(model))
            ]
            # compiled while the metric is computed, so the timings are warm. torchao's int8 too: eager it
            # dispatches every int8 matmul through Python; inductor fuses them
            if args.compile:
                compiled = torch.compile(model, dynamic=True, backend=args.compile)
                run = pytorch_logits(compiled, input_names(model), device)
                runtimes.append((f"pytorch compiled{tag}", run, weights_bytes(model)))
        if args.onnx and not info["onnx"]:  # convenience: export here (shrink export also checks parity)
            onnx_path = Path(args.out) / "onnx" / f"{name.replace(' ', '_')}.onnx"
            export_onnx(model, onnx_path)
            ort_model = OnnxClassifier(onnx_path, args.threads, provider=args.provider)
            runtimes.append((f"onnxruntime{provider_tag}", ort_model, onnx_path.stat().st_size))
        if name in args.ort_peers:  # ONNX Runtime's quantizers on this model's fp32 export, run as they are
            folder = Path(args.out) / "onnx"
            # from the eager-attention export: for ONNX Runtime's quantizer too the faster fp32 graph here
            fp32_path = export_onnx(
                model, folder / f"{name.replace(' ', '_')}.fp32.onnx", eager_attention=True
            )
            calibration = []
            for batch in data.loader("validate", split=data.splits["fit"]):
                calibration.append(batch)
                if sum(len(b["input_ids"]) for b in calibration) >= args.calibration_rows:
                    break
            for peer, path in (
                (
                    "ORT dynamic int8",
                    ort_dynamic_int8(fp32_path, folder / f"{name.replace(' ', '_')}.ort_dynamic.onnx"),
                ),
                (
                    "ORT static int8",
                    ort_static_int8(
                        fp32_path, folder / f"{name.replace(' ', '_')}.ort_static.onnx", calibration
                    ),
                ),
            ):
                run = OnnxClassifier(path, args.threads, kernel="as-exported", provider=args.provider)
                peers.append((f"{name}: {peer}", run, path.stat().st_size))
        # timed on the split's first rows (file order); scored longest first: less padding, the same scores
        timed_on = timing_inputs(list(data.loader(stage)), args)  # one model's runtimes on the same inputs
        batches = list(data.loader(stage, longest_first=True))
        named = [(name, runtime, run, size, int8) for runtime, run, size in runtimes]
        named += [(peer, f"onnxruntime{provider_tag}", run, size, True) for peer, run, size in peers]
        peers.clear()
        for row_name, runtime, run, size, row_int8 in named:
            print(f"scoring {row_name} ({runtime}) ...", file=sys.stderr, flush=True)
            rows.append(
                {
                    "model": row_name,
                    "runtime": runtime,
                    "int8": row_int8,
                    "int8_kernel": getattr(run, "kernel", None),  # ONNX Runtime's MatMulInteger types here
                    "params_m": round(params / 1e6, 2),
                    "size_mb": round(size / 1e6, 2),
                    **score(run, batches, task, labels),
                }
            )
            runs.append(run)
            inputs.append(timed_on)
    print(f"timing {len(runs)} rows in {args.rounds} interleaved rounds ...", file=sys.stderr, flush=True)
    for row, times in zip(rows, timed_rounds(runs, inputs, args.rounds), strict=True):
        row.update(latencies(times))
    reference = rows[0]
    metric = metric_key(rows)
    for row in rows:
        row["retention"] = round(row[metric] / reference[metric], 4) if reference[metric] else float("nan")
        row["speedup_b1"] = round(reference["latency_ms_p50"] / row["latency_ms_p50"], 2)
        row["smaller"] = round(reference["size_mb"] / row["size_mb"], 2)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="shrink benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="NAME=PATH (repeat; a .ckpt, a model folder, or an ONNX folder of shrink export onnx, "
        "timed as exported); the first is the reference",
    )
    parser.add_argument("--data", required=True, help="run config whose data: section names the dataset")
    parser.add_argument(
        "--set", action="append", default=[], help="data init arg override KEY=VALUE (YAML value)"
    )
    parser.add_argument("--split", choices=["validation", "test"], default="validation")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also export each PyTorch model here and time it in ONNX Runtime (unverified; prefer "
        "passing the ONNX folders shrink export onnx wrote and checked)",
    )
    parser.add_argument(
        "--out", required=True, help="folder for benchmark.md / .json / .png and the .onnx files"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch and ONNX Runtime")
    parser.add_argument(
        "--device", default="cpu", help="device of the fp32 PyTorch rows, e.g. cuda (int8 stays on CPU)"
    )
    parser.add_argument(
        "--provider",
        choices=sorted(PROVIDERS),
        default="cpu",
        help="ONNX Runtime provider of the ONNX rows (cuda / tensorrt: onnxruntime-gpu)",
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="add a torch.compile row (dynamic shapes; inductor unless named) for each PyTorch model",
    )
    parser.add_argument("--latency-samples", type=int, default=200, help="real sentences timed at batch 1")
    parser.add_argument("--long-repeats", type=int, default=30, help="timed runs at 128 tokens")
    parser.add_argument("--throughput-batches", type=int, default=5, help="timed batches of 32")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds over all rows")
    parser.add_argument("--max-eval-samples", type=int, default=None, help="score only the first N rows")
    parser.add_argument(
        "--ort-peers",
        action="append",
        default=[],
        metavar="NAME",
        help="add ONNX Runtime's dynamic and static int8 of this fp32 model (repeat)",
    )
    parser.add_argument(
        "--calibration-rows", type=int, default=512, help="training rows that calibrate the static peer"
    )
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        for name in ("threads", "latency_samples", "long_repeats", "throughput_batches", "rounds"):
            if getattr(args, name) < 1:
                raise InputError(
                    f"--{name.replace('_', '-')} is {getattr(args, name)}: it must be at least 1"
                )
        args.set = parse_overrides(args.set)
        threads = torch.get_num_threads()
        try:
            rows = benchmark(args)
        finally:  # the caller's thread count back (the demo and the tests run this in-process)
            torch.set_num_threads(threads)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = args.title or f"{Path(args.data).parent.name} {args.split}, {args.threads} thread(s)"
    table = markdown(rows, title)
    for name, text in (
        ("benchmark.md", table),
        ("benchmark.json", json.dumps({"title": title, "rows": rows}, indent=1)),
    ):
        (out / f".{name}.tmp").write_text(text)
        os.replace(out / f".{name}.tmp", out / name)
    plot(rows, out / "benchmark.png", title)
    print(table)


if __name__ == "__main__":
    main()
