"""``shrink compress``: one command from a fine-tuned teacher (or a recipe that fine-tunes it) to the
fastest int8 model within an accuracy budget.

    shrink compress --config configs/demo-sequence/compress.yaml
    shrink compress --config configs/sst2/compress.yaml --out_dir runs/sst2 \
        --set "data.init_args.data_files={train: train.tsv, validation: dev.tsv}"   # again: it continues

It runs the task's own stage recipes (distill, prune, QAT, export), measures every candidate as
deployed (its int8 ONNX folder in ONNX Runtime on this CPU: score on the validation split, latency,
size), and writes OUT/report.md (+ .json, .png) and OUT/best/ (the chosen int8 ONNX folder and its
fp32 Hugging Face folder). Killed anywhere, the same command continues: finished steps are kept
(keyed by what produced them, so a changed recipe re-runs only what changed), an interrupted
training stage resumes from its last checkpoint.

Exit codes: 0 a candidate meets the budget; 3 none does (the best one found and the report are
written all the same); 4 the teacher is at chance (nothing distilled); 2 bad input; 1 a step failed.
"""

from __future__ import annotations

import argparse
import sys

from datamodules.errors import InputError
from lightning_modules.compress.pipeline import Stop, run_pipeline
from lightning_modules.compress.recipe import read_recipe
from lightning_modules.compress.steps import StepFailed
from lightning_modules.train.wandb_run import wandb_mode_default


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="shrink compress", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a compress recipe: configs/<task>/compress.yaml")
    parser.add_argument(
        "--out_dir", default=None, help="where steps, report and best/ go (default: the recipe's)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the recipe (VALUE is YAML): data.init_args.data_files='{train: train.tsv, validation: "
        "dev.tsv}', teacher.model=runs/teacher/model, budget.points=0.5, "
        "set.finetune.model.init_args.model_name_or_path=/models/mpnet",
    )
    parser.add_argument(
        "--overwrite",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=False,
        help="true: replace what out_dir holds instead of continuing it",
    )
    args = parser.parse_args(argv)
    wandb_mode_default()
    try:
        code = run_pipeline(read_recipe(args.config, args.out_dir, args.set), args.overwrite)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if e.code == 2 else 1)
    except Stop as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.code)
    sys.exit(code)


if __name__ == "__main__":
    main()
