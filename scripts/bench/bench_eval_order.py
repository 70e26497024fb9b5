"""Evaluation longest first (what ``shrink validate / test / predict`` and the validation inside ``fit``
run) vs file order (the HF Trainer's), side by side: padded tokens of the split, seconds of
``Trainer.validate`` on the same model, rounds interleaved so machine noise hits both alike, and the
scores of both (they must agree: order changes no prediction).

    python scripts/bench/bench_eval_order.py --data configs/conll2003/finetune.yaml \\
        --set "data_files={train: conll2003/train.txt, validation: conll2003/valid.txt}" --set tag_column=3 \\
        --set tokenizer=MINILM_DIR --model MINILM_DIR
    python scripts/bench/bench_eval_order.py --classify texts.txt --model MODEL_FOLDER --threads 1  # shrink-classify
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch

from datamodules.from_config import datamodule_from_config, parse_overrides
from lightning_modules import FineTuneModule
from lightning_modules.cpu import cpu_name


def validate(module: FineTuneModule, loader, precision: str) -> tuple[float, dict[str, float]]:
    """Seconds of one ``Trainer.validate`` over ``loader``, and its scores."""
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    started = time.perf_counter()
    scores = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    return time.perf_counter() - started, scores


def classify_seconds(model: str, texts: str, threads: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of ``shrink-classify MODEL --file TEXTS`` with its windows longest first, and with them
    in the input's order (as before), rounds interleaved; the output goes to /dev/null."""
    import contextlib
    import os

    from lightning_modules.commands import classify

    sorted_windows = classify.windows_longest_first
    kinds = {
        "input order": lambda t, p, b: [sorted(w) for w in sorted_windows(t, p, b)],
        "longest first": sorted_windows,
    }
    seconds = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind, windows in kinds.items():
            classify.windows_longest_first = windows
            started = time.perf_counter()
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                classify.main([model, "--file", texts, "--threads", str(threads)])
            seconds[kind].append(round(time.perf_counter() - started, 3))
    classify.windows_longest_first = sorted_windows
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--classify", metavar="TEXTS", help="instead: time shrink-classify --model on this file"
    )
    parser.add_argument("--data", help="a run config whose data: section to read")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="data init arg")
    parser.add_argument("--model", required=True, help="the model to evaluate (a folder or hub name)")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="results/bench_eval_order")
    args = parser.parse_args(argv)
    if args.classify:
        seconds = classify_seconds(args.model, args.classify, args.threads, args.rounds)
        median = {kind: statistics.median(s) for kind, s in seconds.items()}
        print(
            f"shrink-classify {Path(args.model).name} --file {Path(args.classify).name}, {args.threads} threads, "
            f"{cpu_name()}: {seconds}; longest first {median['input order'] / median['longest first']:.2f}x"
        )
        return
    if not args.data:
        parser.error("--data is required (or --classify TEXTS)")
    torch.set_num_threads(args.threads)
    data = datamodule_from_config(args.data, parse_overrides(args.set))
    data.setup("validate")
    loaders = {"file order": data.loader("validate"), "longest first": data.val_dataloader()}
    module = FineTuneModule(model_name_or_path=args.model, label_names=data.label_names, task=data.task)
    validate(module, loaders["file order"], args.precision)  # warm-up: allocator, thread pool
    seconds, scores = {name: [] for name in loaders}, {}
    for _ in range(args.rounds):
        for name, loader in loaders.items():
            elapsed, scores[name] = validate(module, loader, args.precision)
            seconds[name].append(round(elapsed, 3))
    tokens = {name: sum(b["input_ids"].numel() for b in loader) for name, loader in loaders.items()}
    real = sum(int(b["attention_mask"].sum()) for b in loaders["file order"])
    median = {name: statistics.median(s) for name, s in seconds.items()}
    shown = [k for k in scores["file order"] if k.count("/") == 1]  # per entity type: in the JSON
    record = {
        "model": Path(args.model).name,
        "rows": len(loaders["file order"].dataset),
        "eval_batch_size": data.eval_batch_size,
        "precision": args.precision,
        "threads": args.threads,
        "cpu": cpu_name(),
        "real_tokens": real,
        "padded_tokens": tokens,
        "seconds": seconds,
        "speed_longest_first": round(median["file order"] / median["longest first"], 2),
        "scores": scores,
    }
    lines = [
        f"{record['model']}, {record['rows']} rows, eval batch {data.eval_batch_size}, precision {args.precision}, "
        f"{args.threads} threads, {args.rounds} rounds, {cpu_name()}",
        "",
        "| order | padded tokens (x real) | seconds (each round) | median | " + " | ".join(shown) + " |",
        "|---|---|---|---|" + "---|" * len(shown),
        *[
            f"| {name} | {tokens[name]} ({tokens[name] / real:.2f}x) | {seconds[name]} | {median[name]:.2f} | "
            + " | ".join(f"{scores[name][k]:.4f}" for k in shown)
            + " |"
            for name in loaders
        ],
        "",
        f"longest first: {record['speed_longest_first']:.2f}x the speed of file order",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{data.task}-{record['model']}-{args.precision}"
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
