"""The offline demo: ``shrink compress`` on the embedded sentiment, NER, sentence-pair and rating
sets. Each chain fine-tunes a teacher (2 layers x 128), distills a smaller student (2 layers x 64),
prunes it (sentiment and NER: unpruned and half of its encoder), quantizes each candidate to int8
with QAT guided by the teacher, exports int8 ONNX folders checked against PyTorch, measures them as
deployed beside the teacher and ONNX Runtime's own int8 of it, and keeps the fastest within the
recipe's accuracy budget. Prints each report and classifies a sentence with the chosen folder. No
downloads; a few minutes on 2 CPU cores. Run it again and it continues where it stopped.

    python scripts/demo.py [--out_dir outputs/demo] [--overwrite]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")

from lightning_modules.commands.classify import main as classify  # noqa: E402
from lightning_modules.commands.shrink import main as shrink  # noqa: E402

TASKS = ("sequence", "token", "pair", "rating")
EXAMPLES = {"sequence": "a wonderful , moving film", "token": "Anna Schmidt flew to Berlin"}


def compress(task: str, out: Path, overwrite: bool) -> int:
    """``shrink compress`` on the task's demo recipe, in this process; its progress lines shown."""
    args = ["compress", "--config", f"configs/demo-{task}/compress.yaml", "--out_dir", str(out)]
    args += ["--overwrite", "true"] if overwrite else []
    print("$ shrink " + " ".join(args), flush=True)
    try:
        shrink(args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default="outputs/demo", help="where the chains, reports and best/ go")
    parser.add_argument("--overwrite", action="store_true", help="start every chain afresh")
    args = parser.parse_args()
    out = Path(args.out_dir).resolve()  # the recipes' relative paths: from the repository root
    os.chdir(ROOT)
    for task in TASKS:
        code = compress(task, out / f"{task}_compress", args.overwrite)
        if code not in (0, 3):  # 3: no candidate within the budget (the best one is written all the same)
            sys.exit(f"demo: shrink compress on demo-{task} failed (exit {code})")
    for task in TASKS:
        print("\n" + (out / f"{task}_compress" / "report.md").read_text())
    for task, sentence in EXAMPLES.items():
        onnx = out / f"{task}_compress" / "best" / "onnx"
        print(f"$ shrink classify {onnx} '{sentence}'")
        with contextlib.redirect_stderr(io.StringIO()):
            classify([str(onnx), sentence])
    print(
        "\nThe chosen folders load in transformers.pipeline (best/model) and in optimum's ORTModelFor* (best/onnx): "
        "docs/deployment.md"
    )


if __name__ == "__main__":
    main()
