"""The offline demo: fine-tune a small from-scratch BERT on the embedded sentiment and NER sets,
test each on its held-out split, and print the scores. No downloads; about 2 minutes on 2 CPU cores.

    python scripts/demo.py [--out_dir outputs/demo]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = [  # (task, config, headline metric)
    ("sequence", "configs/demo/sequence_finetune.yaml", "test/accuracy"),
    ("token", "configs/demo/token_finetune.yaml", "test/f1"),
]


def shrink(*args: str) -> None:
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *args]
    print("$ shrink " + " ".join(args), flush=True)
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=dict(os.environ, WANDB_MODE=os.environ.get("WANDB_MODE", "offline")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"demo step failed:\n{result.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default="outputs/demo", help="where runs, checkpoints and metrics go")
    out = Path(parser.parse_args().out_dir)
    rows = []
    for task, config, metric in STAGES:
        run_dir = out / f"{task}_finetune"
        start = time.perf_counter()
        shrink("fit", "--config", config, "--out_dir", str(run_dir), "--trainer.enable_progress_bar", "false")
        shrink(
            "test",
            "--config",
            config,
            "--out_dir",
            str(run_dir),
            "--ckpt_path",
            "best",
            "--trainer.enable_progress_bar",
            "false",
        )
        scores = json.loads((run_dir / "test_metrics.json").read_text())
        rows.append(
            (task, "fine-tuned BERT 0.5M (from scratch)", metric, scores[metric], time.perf_counter() - start)
        )
    print("\n| task | model | held-out metric | score | seconds |\n|---|---|---|---|---|")
    for task, model, metric, score, seconds in rows:
        print(f"| {task} | {model} | {metric} | {score:.4f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
