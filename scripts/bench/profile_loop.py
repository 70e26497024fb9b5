"""Where a training step's time goes: shrink's loop and the Trainer's, each against the bare
PyTorch step on exactly the same batches (benchmark, not CI):

    python scripts/bench/profile_loop.py --model ~/.cache/offline-models/all-MiniLM-L6-v2 \\
        --train DATA/sst2/train.tsv --rows 1024

In one process, fp32, 1 epoch of the first N rows, batch 32, random batches:
1. ``shrink fit`` with the shipped recipe (configs/sst2 or configs/conll2003/finetune.yaml: every
   callback, W&B offline, no validation) under Lightning's SimpleProfiler, which times each hook, and
   a callback that keeps each batch and the time each step ends;
2. ``transformers.Trainer`` with its defaults, keeping each batch ``training_step`` receives;
   both run twice, interleaved, and only the second runs count (a fresh process's first steps at
   each padded length are slower);
3. for each, the bare loop over the kept batches: forward, loss, backward, fused AdamW, schedule,
   zero_grad, nothing else. Step by step on the same batch, the tool's step minus the bare step is
   its loop overhead (the median over steps), and batch composition (padding) cancels.
shrink's time is split by SimpleProfiler into its hooks (data loading and collate, logging,
callbacks, the optimizer step's wrapper) and the once-per-epoch checkpoint; the Trainer has no hook
profiler, so only its total. Then ``torch.profiler`` records a third shrink epoch and its bare replay,
and lists the ops shrink's steps call more often than the bare step (metric updates, ``.item()``
syncs, copies), with calls and self CPU time per step on both sides.
Writes TASK.md / TASK.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # the project, and bench_vs_trainer's Trainer side
KEPT: list[dict[str, torch.Tensor]] = []  # the batches shrink's loop trained on, in order
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class KeepBatches(L.Callback):
    """Keeps each training batch (its model inputs), the time each step starts and ends, and the
    profiler's per-hook durations."""

    durations: dict[str, list[float]] = {}
    marks: list[float] = []
    ops: dict[str, tuple[int, float]] | None = None  # set to {} to record the epoch's ops with torch.profiler

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if KeepBatches.ops is not None:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
        KeepBatches.marks = [time.perf_counter()]  # step i runs from marks[i] to marks[i + 1]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        KEPT.append({k: v.clone() for k, v in batch.items() if k in MODEL_INPUTS})

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        KeepBatches.marks.append(time.perf_counter())
        last = len(KEPT) == trainer.num_training_batches
        if KeepBatches.ops is not None and last:  # stops before the epoch-end checkpoint
            self.profiler.__exit__(None, None, None)
            KeepBatches.ops = op_totals(self.profiler)

    def on_train_end(self, trainer, pl_module) -> None:
        KeepBatches.durations = {k: list(v) for k, v in trainer.profiler.recorded_durations.items()}


def op_totals(profiler: torch.profiler.profile) -> dict[str, tuple[int, float]]:
    """Each op's calls and self CPU milliseconds over a profiled run."""
    return {e.key: (e.count, e.self_cpu_time_total / 1000) for e in profiler.key_averages()}


def bare_epoch(
    model_dir: str, task: str, num_labels: int, batches: list[dict], lr: float, ops: dict | None = None
) -> list[float]:
    """Seconds of each bare step (forward, backward, fused AdamW with shrink's groups, schedule,
    zero_grad) over ``batches``, from the pretrained weights; with ``ops`` ({}), the ops it ran
    (torch.profiler) go there instead."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        get_linear_schedule_with_warmup,
    )

    auto = AutoModelForSequenceClassification if task == "sequence" else AutoModelForTokenClassification
    torch.manual_seed(42)
    model = auto.from_pretrained(model_dir, num_labels=num_labels, ignore_mismatched_sizes=True).train()
    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": 0.01},
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
        ],
        lr=lr,
        fused=True,
    )
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * len(batches)), len(batches))
    seconds = []
    profiling = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    with profiling if ops is not None else nullcontext() as profiler:
        for batch in batches:
            started = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - started)
    if ops is not None:
        ops.update(op_totals(profiler))
    return seconds


def run_shrink(args, out: Path) -> dict:
    from lightning_modules.train.cli import main as shrink

    config = ROOT / "configs" / ("sst2" if args.task == "sequence" else "conll2003") / "finetune.yaml"
    sys.modules.setdefault("profile_loop", sys.modules[__name__])  # so the CLI finds KeepBatches
    cli = [
        "fit",
        "--config",
        str(config),
        "--model.init_args.model_name_or_path",
        args.model,
        "--model.init_args.learning_rate",
        str(args.lr),
        "--data.init_args.data_files",
        f"{{train: {args.train}, validation: {args.train}}}",
        "--data.init_args.max_train_samples",
        str(args.rows),
        "--data.init_args.max_eval_samples",
        "32",
        "--data.init_args.group_by_length",
        "false",
        "--data.init_args.cache_dir",
        str(out / "cache"),
        "--trainer.max_epochs",
        "1",
        "--trainer.precision",
        "32",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.profiler",
        "lightning.pytorch.profilers.SimpleProfiler",
        "--trainer.callbacks+=profile_loop.KeepBatches",
        "--out_dir",
        str(out / "run"),
    ]
    if args.task == "token":
        cli += ["--data.init_args.tag_column", "3"]
    if args.log_every:
        cli += ["--trainer.log_every_n_steps", str(args.log_every)]
    KEPT.clear()
    shrink(cli)
    durations = KeepBatches.durations
    steps = len(KEPT)
    per_step, per_epoch = {}, {}
    for name, values in durations.items():
        short = name.split("{")[0]  # ModelCheckpoint's name carries its whole state
        if "epoch_end" in name or name == "save_checkpoint":
            per_epoch[short] = round(sum(values), 2)
        elif len(values) >= steps and name not in ("run_training_epoch", "run_training_batch"):
            per_step[short] = round(1000 * sum(values) / steps, 2)
    marks = KeepBatches.marks
    return {
        "epoch_s": sum(durations["run_training_epoch"]),
        "steps": steps,
        "step_s": [b - a for a, b in zip(marks, marks[1:], strict=False)],
        "per_step_ms": dict(sorted(per_step.items(), key=lambda kv: -kv[1])),
        "epoch_end_s": per_epoch,
    }


def run_trainer(args, out: Path) -> tuple[dict, list[dict]]:
    """The Trainer with its defaults on the same rows; returns its timing and the batches it trained on."""
    from bench_vs_trainer import trainer_setup  # the same rows and encoding as the side-by-side benchmark
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model, train, collator, _ = trainer_setup({**vars(args), "rows": args.rows, "dev": None})
    kept, marks = [], []

    class StepClock(TrainerCallback):  # step i runs from marks[i] to marks[i + 1], as in KeepBatches
        def on_epoch_begin(self, *args, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, *args, **kwargs):
            marks.append(time.perf_counter())

    class KeepingTrainer(Trainer):
        def training_step(self, model, inputs, *rest, **kw):
            kept.append({k: v.clone() for k, v in inputs.items() if k in MODEL_INPUTS})
            return super().training_step(model, inputs, *rest, **kw)

    options = dict(
        output_dir=str(out / "hf"),
        per_device_train_batch_size=32,
        learning_rate=args.lr,
        weight_decay=0.01,
        num_train_epochs=1,
        lr_scheduler_type="linear",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        logging_steps=50,
        seed=42,
        disable_tqdm=True,
    )
    trainer = KeepingTrainer(
        model=model,
        args=TrainingArguments(**options),
        train_dataset=train,
        data_collator=collator,
        callbacks=[StepClock()],
    )
    result = trainer.train()
    steps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    timing = {
        "epoch_s": result.metrics["train_runtime"],
        "steps": len(kept),
        "step_s": steps,
        "num_labels": model.config.num_labels,
    }
    return timing, kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="pretrained encoder folder")
    parser.add_argument("--task", choices=["sequence", "token"], default="sequence")
    parser.add_argument("--train", required=True, help="SST-2 train.tsv or CoNLL-2003 train.txt")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument(
        "--log-every",
        type=int,
        default=None,
        help="shrink's log_every_n_steps (default: the recipe's 50; 1 shows what logging costs)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default="results/profile_loop")
    args = parser.parse_args(argv)
    # what the Trainer's side (bench_vs_trainer.trainer_setup) reads
    args.max_length, args.batch_size, args.warmup_ratio, args.grouped = 128, 32, 0.06, False
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    with tempfile.TemporaryDirectory() as tmp:
        # twice each, interleaved, and only the second runs count: a process's first steps at each
        # padded length run slower (allocator, kernel caches), which would favour whoever runs later
        for rep in range(2):
            shrink = run_shrink(args, Path(tmp) / str(rep))
            print(f"rep {rep} shrink epoch {shrink['epoch_s']:.2f} s", file=sys.stderr)
            shrink_batches = list(KEPT)
            trainer, trainer_batches = run_trainer(args, Path(tmp) / str(rep))
            print(f"rep {rep} Trainer epoch {trainer['epoch_s']:.2f} s", file=sys.stderr)
    # the bare replays, interleaved after both tools so that they share the machine's state
    num_labels = trainer["num_labels"]  # the labels found in the rows (9 for CoNLL-2003's tags)
    for tool, batches in ((shrink, shrink_batches), (trainer, trainer_batches)):
        bare = bare_epoch(args.model, args.task, num_labels, batches, args.lr)
        # step by step on the same batch, the first (warm-up) step left out: the median extra cost
        extra = [t - b for t, b in zip(tool["step_s"][1:], bare[1:], strict=True)]
        tool["bare_s"], tool["bare_step_ms"] = sum(bare), round(1000 * statistics.median(bare[1:]), 1)
        tool["step_ms"] = round(1000 * statistics.median(tool["step_s"][1:]), 1)
        tool["overhead_ms_per_step"] = round(1000 * statistics.median(extra), 1)
        tool["overhead_pct"] = round(100 * statistics.median(extra) / statistics.median(bare[1:]), 1)
    # torch.profiler: the ops shrink's steps run beyond the bare step's, over the same batches (a
    # third run: the profiler slows ops, so the timings above are taken without it)
    KeepBatches.ops = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_shrink(args, Path(tmp))
    shrink_ops, bare_ops = KeepBatches.ops, {}
    bare_epoch(args.model, args.task, num_labels, list(KEPT), args.lr, ops=bare_ops)
    steps = len(KEPT)
    per_step = lambda ops, name: [round(v / steps, 2) for v in ops.get(name, (0, 0.0))]  # noqa: E731
    # ops shrink's step calls more often than the bare step: calls and self CPU ms per step, both sides
    extra = {
        name: per_step(shrink_ops, name) + per_step(bare_ops, name)
        for name, (calls, _) in shrink_ops.items()
        if calls > bare_ops.get(name, (0, 0))[0]
    }
    shrink["more_calls_than_bare"] = dict(sorted(extra.items(), key=lambda kv: kv[1][2] - kv[1][0])[:12])
    from lightning_modules.cpu import cpu_name

    record = {
        "args": vars(args),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "shrink": shrink,
        "trainer": trainer,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.task + (f"-log-every-{args.log_every}" if args.log_every else "")
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    lines = [
        f"{args.task}, {Path(args.model).name}, {args.rows} rows, batch 32, fp32, random batches, {cpu_name()}, "
        f"{torch.get_num_threads()} threads, shrink logs every {args.log_every or 'recipe'} steps",
        "",
        "| tool | steps | epoch s | bare loop on its batches s | step ms (median) | bare step ms | "
        "overhead ms / step (median of paired steps) | overhead |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {t['steps']} | {t['epoch_s']:.2f} | {t['bare_s']:.2f} | {t['step_ms']} | {t['bare_step_ms']} | "
            f"{t['overhead_ms_per_step']} | {t['overhead_pct']}% |"
            for name, t in (("shrink", shrink), ("Trainer", trainer))
        ],
        "",
        "shrink's loop, by Lightning SimpleProfiler action, ms per step (nested: `optimizer_step` holds the "
        "closure, i.e. `training_step`, `backward` and their hooks, and `optimizer.step`):",
        "",
        *[f"- `{name}`: {ms}" for name, ms in shrink["per_step_ms"].items() if ms >= 0.05],
        "",
        "once per epoch, s: "
        + ", ".join(f"`{name}` {s}" for name, s in shrink["epoch_end_s"].items() if s >= 0.01),
        "",
        "torch.profiler: ops shrink's step calls more often than the bare step (calls / self CPU ms per step, "
        "shrink vs bare; `aten::_local_scalar_dense` is `.item()`):",
        "",
        *[
            f"- `{name}`: {c} / {ms} ms vs {bc} / {bms} ms"
            for name, (c, ms, bc, bms) in shrink["more_calls_than_bare"].items()
        ],
    ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
