"""Training-step time of distillation vs plain fine-tuning of the same student, side by side in one
process: plain fine-tune, KD with the teacher cache, KD with the teacher run live. Rounds are
interleaved so machine noise hits all three alike; prints median step times and ratios.

    python scripts/bench/bench_distill_step.py --teacher T.ckpt --student MINILM_DIR --teacher_tokenizer MPNET_DIR \\
        --train_file sst2/train.tsv --validation_file sst2/dev.tsv
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import lightning as L

from datamodules import SequenceClassificationDataModule
from lightning_modules import DistillationModule, FineTuneModule


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--teacher_tokenizer", required=True)
    parser.add_argument("--train_file", required=True)
    parser.add_argument("--validation_file", required=True)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--cache_dir", default="~/.cache/shrink")
    args = parser.parse_args()

    data = SequenceClassificationDataModule(
        data_files={"train": args.train_file, "validation": args.validation_file},
        text_column="sentence",
        label_names=["negative", "positive"],
        tokenizer=args.student,
        teacher_tokenizer=args.teacher_tokenizer,
        batch_size=args.batch_size,
        max_train_samples=args.steps * args.batch_size,
        cache_dir=args.cache_dir,
    )

    def make(kind: str) -> L.LightningModule:
        if kind == "plain":
            return FineTuneModule(model_name_or_path=args.student, label_names=data.label_names)
        return DistillationModule(
            teacher=args.teacher,
            student_model_name_or_path=args.student,
            label_names=data.label_names,
            teacher_cache=kind == "kd_cache",
            cache_dir=args.cache_dir,
        )

    times: dict[str, list[float]] = {"plain": [], "kd_cache": [], "kd_live": []}
    setup: dict[str, list[float]] = {k: [] for k in times}
    for _ in range(args.rounds):
        for kind in times:
            L.seed_everything(0)
            timer = StepTimer()
            trainer = L.Trainer(
                max_steps=args.steps,
                precision=args.precision,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                limit_val_batches=0,
                callbacks=[timer],
            )
            start = time.perf_counter()
            trainer.fit(make(kind), data)
            total = time.perf_counter() - start
            times[kind] += timer.times[3:]  # the first steps warm up
            setup[kind].append(total - sum(timer.times))
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "median_step_seconds": {k: round(v, 4) for k, v in medians.items()},
        "kd_cache_vs_plain": round(medians["kd_cache"] / medians["plain"], 3),
        "kd_live_vs_plain": round(medians["kd_live"] / medians["plain"], 3),
        "median_setup_seconds": {k: round(statistics.median(v), 1) for k, v in setup.items()},
        "steps_per_run": args.steps,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "precision": args.precision,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
