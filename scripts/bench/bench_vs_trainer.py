"""shrink vs transformers' Trainer on the same work, side by side (benchmark, not CI):

    python scripts/bench/bench_vs_trainer.py --model ~/.cache/offline-models/all-MiniLM-L6-v2 \\
        --task sequence --train DATA/sst2/train.tsv --dev DATA/sst2/dev.tsv --rows 256 1536 --reps 2
    python scripts/bench/bench_vs_trainer.py --model ... --task token --train DATA/conll2003/train.txt \\
        --dev DATA/conll2003/valid.txt --grouped

Same model, first N training rows, batch size, max_length, precision, AdamW (lr, weight decay, eps),
linear schedule with the same warmup, dynamic padding, and random or length-grouped batches, 1 epoch.
Each run is a fresh process: ``shrink fit`` with the shipped recipe (configs/sst2 or configs/conll2003,
all its callbacks, W&B offline) and a plain Trainer script with the defaults a user gets. The
training loop is timed the same way in both (Lightning's Timer callback / ``train_runtime``, both
from the first to the last training step, no validation inside); process start-up and model load are
reported apart. Seconds per extra row are the slope between the two row counts, so fixed costs
cancel. Then both score the dev split (accuracy or entity F1), so a speed-up that changes learning
shows; that evaluation is timed too (shrink's epoch-end validation, which runs the longest rows first;
the Trainer's ``predict``, in file order), at the training batch size (with ``--defaults``, each
tool's own: shrink's recipe uses it, the Trainer's is 8). Runs are interleaved (shrink, Trainer, shrink, ...) so machine noise hits both alike.
``--defaults`` runs each tool as it comes instead of on the same settings: shrink with its recipe's
precision, batching and compilation (``bf16-mixed`` where the CPU has bf16 instructions, else fp32;
random batches, split by length on CPU; ``torch_compile: auto``, which compiles only for bf16 on AMX
CPUs), the Trainer with ``TrainingArguments``' (fp32, random batches). The dev metric says whether
the two still learn alike.
``--compile`` adds shrink with ``model.torch_compile`` (inductor): its compile time lands in the
training clock's fixed part (reported), its per-row cost in the slope. ``--split`` adds shrink with
``model.split_by_length`` (each batch run as sub-batches of similar length: the same batches and
gradients as the other two, less padding); without ``--defaults`` the plain shrink row runs whole batches.
Writes bench_vs_trainer.md / .json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()  # a Trainer child's start-up is timed from here
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # datamodules.readers: the Trainer reads the rows shrink reads


def trainer_setup(a: dict):
    """The Trainer's side as a user writes it, on the rows shrink reads: the model, the encoded
    training rows, the collator, and a function scoring a trained Trainer on the dev split."""
    import numpy as np
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
    )

    from datamodules.readers import read_conll, read_table

    tok = AutoTokenizer.from_pretrained(a["model"])
    if a["task"] == "sequence":

        def rows(path, n=None):
            r = read_table(path)[:n]
            return [x["sentence"] for x in r], [int(x["label"]) for x in r]

        def encode(texts, labels):
            e = tok(texts, truncation=True, max_length=a["max_length"])
            return Dataset.from_dict({**e, "labels": labels})

        texts, labels = rows(a["train"], a["rows"])
        names = ["negative", "positive"]
        auto, collator = AutoModelForSequenceClassification, DataCollatorWithPadding(tok)
    else:

        def rows(path, n=None):
            r = read_conll(path, 3)[:n]
            return [x["tokens"] for x in r], [x["tags"] for x in r]

        texts, labels = rows(a["train"], a["rows"])
        names = ["O"] + sorted({t for s in labels for t in s} - {"O"})
        ids = {n: i for i, n in enumerate(names)}

        def encode(texts, tags):
            e = tok(texts, is_split_into_words=True, truncation=True, max_length=a["max_length"])
            labels = []
            for i, t in enumerate(tags):
                previous, row = None, []
                for w in e.word_ids(i):
                    row.append(-100 if w is None or w == previous else ids[t[w]])
                    previous = w
                labels.append(row)
            return Dataset.from_dict({**e, "labels": labels})

        auto, collator = AutoModelForTokenClassification, DataCollatorForTokenClassification(tok)
    model = auto.from_pretrained(
        a["model"],
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        ignore_mismatched_sizes=True,
    )

    def evaluate(trainer) -> tuple[float, float]:
        """The dev metric, and the seconds ``trainer.predict`` took on the dev split."""
        dev_texts, dev_labels = rows(a["dev"])
        dev = encode(dev_texts, dev_labels)
        started = time.perf_counter()
        pred = trainer.predict(dev)
        seconds = time.perf_counter() - started
        if a["task"] == "sequence":
            return float((pred.predictions.argmax(-1) == np.array(dev_labels)).mean()), seconds
        from seqeval.metrics import f1_score
        from seqeval.scheme import IOB2

        p, gold = pred.predictions.argmax(-1), pred.label_ids
        y_true = [[names[x] for x in g if x != -100] for g in gold]
        y_pred = [
            [names[x] for x, g in zip(pr, gr, strict=True) if g != -100]
            for pr, gr in zip(p, gold, strict=True)
        ]
        return float(f1_score(y_true, y_pred, mode="strict", scheme=IOB2)), seconds

    return model, encode(texts, labels), collator, evaluate


def trainer_child(a: dict) -> None:
    """One Trainer run in its own process (``--trainer-child SPEC``): prints its timings as JSON."""
    import inspect

    import torch
    from transformers import Trainer, TrainingArguments

    model, train, collator, evaluate = trainer_setup(a)
    loaded = time.perf_counter() - STARTED
    options = inspect.signature(TrainingArguments.__init__).parameters
    version = {}  # transformers 5: warmup_steps takes a ratio, train_sampling_strategy replaces group_by_length
    if "warmup_ratio" in options:
        version["warmup_ratio"], version["group_by_length"] = a["warmup_ratio"], a["grouped"]
    else:
        version["warmup_steps"] = a["warmup_ratio"]
        version["train_sampling_strategy"] = "group_by_length" if a["grouped"] else "random"
    if not a["defaults"]:  # else TrainingArguments' own (8)
        version["per_device_eval_batch_size"] = a["batch_size"]
    args = TrainingArguments(
        output_dir=a["out"],
        per_device_train_batch_size=a["batch_size"],
        learning_rate=a["lr"],
        weight_decay=0.01,
        adam_epsilon=1e-8,
        num_train_epochs=1,
        lr_scheduler_type="linear",
        bf16=a["precision"] == "bf16-mixed",
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        logging_steps=50,
        seed=a["seed"],
        disable_tqdm=True,
        dataloader_num_workers=0,
        **version,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    out = trainer.train()
    metric, eval_s = evaluate(trainer)
    print(
        json.dumps(
            {"train_s": out.metrics["train_runtime"], "startup_s": loaded, "metric": metric, "eval_s": eval_s}
        )
    )


def run_shrink(args, rows: int, out: Path, compiled: bool = False, split: bool = False) -> dict:
    config = ROOT / "configs" / ("sst2" if args.task == "sequence" else "conll2003") / "finetune.yaml"
    files = f"{{train: {args.train}, validation: {args.dev}}}"
    cli = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "fit",
        "--config",
        str(config),
        "--model.init_args.model_name_or_path",
        args.model,
        "--model.init_args.learning_rate",
        str(args.lr),
        "--model.init_args.warmup_ratio",
        str(args.warmup_ratio),
        "--data.init_args.data_files",
        files,
        "--data.init_args.max_train_samples",
        str(rows),
        "--data.init_args.batch_size",
        str(args.batch_size),
        "--data.init_args.max_length",
        str(args.max_length),
        "--data.init_args.cache_dir",
        str(out / "cache"),
        "--trainer.max_epochs",
        "1",
        "--trainer.val_check_interval",
        "1.0",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=lightning.pytorch.callbacks.Timer",
        "--out_dir",
        str(out / "run"),
        "--seed_everything",
        str(args.seed),
    ]
    if not args.defaults:  # else the recipe's own precision (per CPU), batching and splitting
        cli += [
            "--trainer.precision",
            args.precision,
            "--data.init_args.group_by_length",
            str(args.grouped).lower(),
        ]
    if args.task == "token":
        cli += ["--data.init_args.tag_column", "3"]
    if compiled:  # inductor, dynamic shapes: its compile time falls in the first steps, so in the fixed cost
        cli += ["--model.init_args.torch_compile", "true"]
    elif not args.defaults:  # the recipe's auto would compile on AMX CPUs in bf16
        cli += ["--model.init_args.torch_compile", "false"]
    if split or not args.defaults:  # the recipe's auto splits on CPU
        cli += ["--model.init_args.split_by_length", str(split).lower()]
    started = time.perf_counter()
    result = subprocess.run(cli, capture_output=True, text=True, env=dict(os.environ, WANDB_MODE="offline"))
    total = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"shrink failed:\n{result.stderr[-3000:]}")
    import torch

    checkpoint = torch.load(out / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    timer = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("Timer"))
    card = (out / "run" / "model" / "README.md").read_text()
    key = "val/accuracy" if args.task == "sequence" else "val/f1"
    metric = float(card.split(f"| {key} | ")[1].split(" |")[0]) if f"| {key} | " in card else float("nan")
    # Lightning's Timer: the training stage's clock runs through the epoch-end validation; take it out
    evaluated = timer["time_elapsed"].get(
        "validate", float("nan")
    )  # the epoch-end validation on the dev split
    train = timer["time_elapsed"]["train"] - evaluated
    return {"train_s": train, "other_s": total - train, "metric": metric, "eval_s": evaluated}


def run_trainer(args, rows: int, out: Path) -> dict:
    spec = {**vars(args), "rows": rows, "out": str(out / "hf")}
    if args.defaults:  # TrainingArguments' own: fp32, random batches
        spec.update(precision="32", grouped=False)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, __file__, "--trainer-child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=dict(os.environ, WANDB_MODE="disabled"),
    )
    total = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"Trainer failed:\n{result.stderr[-3000:]}")
    values = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "train_s": values["train_s"],
        "other_s": total - values["train_s"],
        "metric": values["metric"],
        "eval_s": values["eval_s"],
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--trainer-child"]:  # internal: one Trainer run, spawned by run_trainer
        return trainer_child(json.loads(argv[1]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="pretrained encoder folder (or hub name)")
    parser.add_argument("--task", choices=["sequence", "token"], default="sequence")
    parser.add_argument("--train", required=True, help="SST-2 train.tsv or CoNLL-2003 train.txt")
    parser.add_argument("--dev", required=True, help="SST-2 dev.tsv or CoNLL-2003 valid.txt")
    parser.add_argument("--rows", type=int, nargs=2, default=[256, 1536], help="two training sizes")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--seed", type=int, default=42, help="both tools' seed: data order, dropout")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--grouped", action="store_true", help="length-grouped batches in both")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="each tool's own precision and batching instead of --precision / --grouped",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also shrink with model.torch_compile (inductor)"
    )
    parser.add_argument("--split", action="store_true", help="also shrink with model.split_by_length")
    parser.add_argument("--out", default="results/bench_vs_trainer")
    args = parser.parse_args(argv)
    tools = {"shrink": run_shrink, "trainer": run_trainer}
    if args.compile:
        tools["shrink compiled"] = lambda *a: run_shrink(*a, compiled=True)
    if args.split:
        tools["shrink split"] = lambda *a: run_shrink(*a, split=True)
    runs = {tool: {n: [] for n in args.rows} for tool in tools}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for rows in args.rows:
                for tool, run in tools.items():
                    result = run(args, rows, Path(tmp) / f"{tool.replace(' ', '-')}-{rows}-{rep}")
                    runs[tool][rows].append(result)
                    print(f"rep {rep} rows {rows} {tool}: {json.dumps(result)}", file=sys.stderr, flush=True)
    small, large = args.rows
    summary = {}
    for tool, by_rows in runs.items():
        slopes = [
            (b["train_s"] - a["train_s"]) / (large - small)
            for a, b in zip(by_rows[small], by_rows[large], strict=True)
        ]
        summary[tool] = {
            "ms_per_row": [round(1000 * s, 2) for s in slopes],
            # the training clock at 0 rows: what compiling (and the first steps) cost once
            "fixed_train_s_median": round(
                statistics.median(
                    a["train_s"] - small * s for a, s in zip(by_rows[small], slopes, strict=True)
                ),
                1,
            ),
            "ms_per_row_median": round(1000 * statistics.median(slopes), 2),
            "other_s_median": round(
                statistics.median(r["other_s"] for rs in by_rows.values() for r in rs), 1
            ),
            f"dev_metric_{large}_rows": [round(r["metric"], 4) for r in by_rows[large]],
            "dev_eval_s_median": round(
                statistics.median(r["eval_s"] for rs in by_rows.values() for r in rs), 2
            ),
        }
    speeds = {
        tool: round(summary["trainer"]["ms_per_row_median"] / v["ms_per_row_median"], 2)
        for tool, v in summary.items()
        if tool != "trainer"
    }
    from lightning_modules.cpu import cpu_name

    record = {
        "args": vars(args),
        "cpu": cpu_name(),
        "summary": summary,
        "shrink_speed_vs_trainer": speeds["shrink"],
        "speed_vs_trainer": speeds,
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setting = "defaults" if args.defaults else f"{'grouped' if args.grouped else 'random'}-{args.precision}"
    name = f"{args.task}-{setting}{'-compile' if args.compile else ''}{'-split' if args.split else ''}"
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    described = (
        "each tool's defaults (shrink: its recipe's precision on this CPU, random batches split by length; "
        "Trainer: fp32, random)"
        if args.defaults
        else f"{'length-grouped' if args.grouped else 'random'} batches, precision {args.precision}"
    )
    lines = [
        f"{args.task}, {described}, {Path(args.model).name}, batch {args.batch_size}, rows {small} -> {large}, "
        f"{args.reps} reps, {cpu_name()}",
        "",
        "| tool | ms per row (each rep) | median | speed vs Trainer | training clock at 0 rows (s) | start-up + load + eval (s) | dev eval (s) | dev metric |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {tool} | {v['ms_per_row']} | {v['ms_per_row_median']} | {speeds.get(tool, 1.0):.2f}x | "
            f"{v['fixed_train_s_median']} | {v['other_s_median']} | {v['dev_eval_s_median']} | {v[f'dev_metric_{large}_rows']} |"
            for tool, v in summary.items()
        ],
        "",
        f"shrink speed vs Trainer: {speeds['shrink']:.2f}x",
    ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
