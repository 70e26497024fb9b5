"""Length-grouped vs shuffled training batches (``data.group_by_length``), side by side: padded tokens
of one epoch (exact, from the real loaders) and, with ``--model``, training-step time of the same
model on each kind of batch, rounds interleaved so machine noise hits both alike.

    python scripts/bench/bench_group_by_length.py --data configs/sst2/finetune.yaml \\
        --set "data_files={train: sst2/train.tsv, validation: sst2/dev.tsv}" --set tokenizer=MINILM_DIR \\
        --model MPNET_DIR --set teacher_tokenizer=MPNET_DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import lightning as L
import torch

from datamodules.from_config import datamodule_from_config, parse_overrides
from lightning_modules import FineTuneModule


def epoch_tokens(loader) -> dict[str, int]:
    """Tokens one epoch feeds the model: real ones, and with padding (student and teacher inputs)."""
    counts = {"real": 0, "padded": 0, "teacher_padded": 0}
    for batch in loader:
        counts["real"] += int(batch["attention_mask"].sum())
        counts["padded"] += batch["input_ids"].numel()
        counts["teacher_padded"] += batch["teacher_input_ids"].numel() if "teacher_input_ids" in batch else 0
    return counts


def step_seconds(model_path: str, data, batches: list[dict], precision: str) -> list[float]:
    """Seconds per training step (forward, backward, AdamW) of ``model_path`` on ``batches``."""
    module = FineTuneModule(model_name_or_path=model_path, label_names=data.label_names, task=data.task)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    times = []
    for batch in batches:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = module.model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a run config whose data: section to read")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="data init arg")
    parser.add_argument("--model", help="also time training steps of this model")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per kind and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="bf16-mixed")
    args = parser.parse_args()

    result: dict = {}
    loaders = {}
    for grouped in (False, True):
        L.seed_everything(0)
        data = datamodule_from_config(args.data, {**parse_overrides(args.set), "group_by_length": grouped})
        data.setup("fit")
        kind = "grouped" if grouped else "shuffled"
        loaders[kind] = data.train_dataloader()
        result[kind] = epoch_tokens(loaders[kind])
    result["padded_tokens_shuffled_vs_grouped"] = round(
        result["shuffled"]["padded"] / result["grouped"]["padded"], 2
    )
    if args.model:
        # the same number of random batches of each kind (the grouped epoch's first batch is its longest)
        batches = {
            k: list(itertools.islice(iter(v), 1, 1 + args.steps * args.rounds)) for k, v in loaders.items()
        }
        times: dict[str, list[float]] = {k: [] for k in batches}
        for round_ in range(args.rounds):
            for kind, kind_batches in batches.items():
                chunk = kind_batches[round_ * args.steps : (round_ + 1) * args.steps]
                times[kind] += step_seconds(args.model, data, chunk, args.precision)[2:]  # 2 warm-up steps
        # an epoch's time is a sum of step times: the mean, not the median
        means = {k: statistics.mean(v) for k, v in times.items()}
        result["mean_step_seconds"] = {k: round(v, 3) for k, v in means.items()}
        result["step_time_shuffled_vs_grouped"] = round(means["shuffled"] / means["grouped"], 2)
        result["timed_steps_per_kind"] = len(times["grouped"])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
