"""The offline demo: on the embedded sentiment and NER sets, fine-tune a teacher (2 layers x 128),
distill it into a 4x smaller student (2 layers x 64), fine-tune the same student without a teacher
for comparison, quantize the distilled student to int8 (QAT guided by the teacher, and PTQ for
comparison), prune half of the distilled student's encoder (heads and FFN neurons, recovered with
KD) and quantize that too, export the QAT students as int8 ONNX folders, fine-tune and distill the
sentence-pair and regression (rating) tasks, print held-out scores, then benchmark
teacher vs student vs int8 (PyTorch and the ONNX Runtime folder: metric, size, latency) and print
that table, each stage's model folder, and the int8 folder classifying a sentence. No downloads; a few minutes on 2 CPU cores.

    python scripts/demo.py [--out_dir outputs/demo]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")

from lightning_modules.artifacts.checkpoints import best_checkpoint_in  # noqa: E402
from lightning_modules.commands.shrink import main as shrink_main  # noqa: E402
from lightning_modules.train import cli  # noqa: E402

TASKS = {"sequence": "test/accuracy", "token": "test/f1"}
PAIR_TASKS = {"pair": "test/accuracy", "rating": "test/pearson"}  # review/claim pairs; 0..5 rating
STUDENT = (
    "{model_type: bert, vocab_size: 1000, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, "
    "intermediate_size: 256, max_position_embeddings: 128}"
)


def shrink(*args: str) -> None:
    """One ``shrink`` command, in this process (no start-up per step), its output kept quiet."""
    if args[0] == "fit":
        args = (*args, "--overwrite", "true")  # the demo re-runs from scratch into its own folders
    print("$ shrink " + " ".join(args), flush=True)
    quiet(cli.main, [*args, "--trainer.enable_progress_bar", "false"])


def command(name: str, *args: str) -> None:
    """``shrink export`` / ``shrink benchmark``, in this process too."""
    print(f"$ shrink {name} " + " ".join(args), flush=True)
    quiet(shrink_main, [name, *args])


def quiet(main, args: list[str]) -> None:
    """Run ``main(args)`` with its output captured; on failure print its last lines and stop."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            main(args)
    except SystemExit as e:
        if e.code not in (0, None):
            sys.exit(f"demo step failed:\n{out.getvalue()[-4000:]}")
    except Exception:
        sys.exit(f"demo step failed:\n{out.getvalue()[-2000:]}\n{traceback.format_exc()[-3000:]}")


def int8_score(config: str, run_dir: Path, int8: Path, metric: str, teacher: str) -> float:
    # the teacher of this run, not the config's default path (outputs/ under the repository root)
    shrink(
        "test",
        "--config",
        config,
        "--out_dir",
        str(run_dir),
        "--ckpt_path",
        str(int8),
        "--model.init_args.teacher",
        teacher,
    )
    return json.loads((run_dir / "test_metrics.json").read_text())[metric]


def stage(config: str, run_dir: Path, metric: str, *overrides: str) -> tuple[float, float, int]:
    """fit + test on the best checkpoint: (score, seconds, parameters)."""
    start = time.perf_counter()
    shrink("fit", "--config", config, "--out_dir", str(run_dir), *overrides)
    shrink("test", "--config", config, "--out_dir", str(run_dir), "--ckpt_path", "best", *overrides)
    seconds = time.perf_counter() - start
    return (
        json.loads((run_dir / "test_metrics.json").read_text())[metric],
        seconds,
        parameters(run_dir / "model"),
    )


def parameters(folder: Path) -> int:
    """Parameters of a stage's model folder (a pruned one is physically smaller)."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        return sum(torch.Size(weights.get_slice(k).get_shape()).numel() for k in weights.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default="outputs/demo", help="where runs, checkpoints and metrics go")
    out = Path(parser.parse_args().out_dir).resolve()  # the steps run from the repository root
    os.chdir(ROOT)  # the configs' relative paths
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    rows = []
    for task, metric in TASKS.items():
        teacher_dir = out / f"{task}_finetune"
        rows.append(
            (task, "teacher (fine-tuned)", *stage(f"configs/demo-{task}/finetune.yaml", teacher_dir, metric))
        )
        rows.append(
            (
                task,
                "student, distilled",
                *stage(
                    f"configs/demo-{task}/distill.yaml",
                    out / f"{task}_distill",
                    metric,
                    "--model.init_args.teacher",
                    best_checkpoint_in(teacher_dir / "checkpoints"),
                ),
            )
        )
        rows.append(
            (
                task,
                "student, fine-tuned alone",
                *stage(
                    f"configs/demo-{task}/finetune.yaml",
                    out / f"{task}_student_alone",
                    metric,
                    "--model.init_args.model_config",
                    STUDENT,
                ),
            )
        )
        # int8: QAT of the distilled student guided by the teacher, and PTQ of it (no training)
        teacher = best_checkpoint_in(teacher_dir / "checkpoints")
        student = best_checkpoint_in(out / f"{task}_distill" / "checkpoints")
        # pruning: half of the student's encoder parameters (heads and FFN neurons), recovered with KD,
        # then QAT of the smaller model from its model folder
        prune_dir = out / f"{task}_prune"
        rows.append(
            (
                task,
                "student, pruned 50%",
                *stage(
                    f"configs/demo-{task}/prune.yaml",
                    prune_dir,
                    metric,
                    "--model.init_args.model_name_or_path",
                    student,
                    "--model.init_args.teacher",
                    teacher,
                ),
            )
        )
        pruned_qat = out / f"{task}_prune_qat"
        start = time.perf_counter()
        shrink(
            "fit",
            "--config",
            f"configs/demo-{task}/qat.yaml",
            "--out_dir",
            str(pruned_qat),
            "--model.init_args.model_name_or_path",
            str(prune_dir / "model"),
            "--model.init_args.teacher",
            teacher,
        )
        score = int8_score(
            f"configs/demo-{task}/qat.yaml", pruned_qat, pruned_qat / "int8.ckpt", metric, teacher
        )
        rows.append((task, "student, pruned 50%, QAT int8", score, time.perf_counter() - start, rows[-1][4]))
        qat_config, qat_dir = f"configs/demo-{task}/qat.yaml", out / f"{task}_qat"
        start = time.perf_counter()
        shrink(
            "fit",
            "--config",
            qat_config,
            "--out_dir",
            str(qat_dir),
            "--model.init_args.model_name_or_path",
            student,
            "--model.init_args.teacher",
            teacher,
        )
        score = int8_score(qat_config, qat_dir, qat_dir / "int8.ckpt", metric, teacher)
        student_parameters = rows[-4][4]
        rows.append((task, "student, QAT int8", score, time.perf_counter() - start, student_parameters))
        ptq = out / f"{task}_ptq" / "int8.ckpt"
        start = time.perf_counter()
        command("export", "ptq", "--model", student, "--out", str(ptq), "--overwrite", "--data", qat_config)
        score = int8_score(qat_config, out / f"{task}_ptq", ptq, metric, teacher)
        rows.append((task, "student, PTQ int8", score, time.perf_counter() - start, student_parameters))
        # the deployable int8 ONNX folders, checked against PyTorch on the validation split
        for run in (qat_dir, pruned_qat):
            command(
                "export",
                "onnx",
                "--model",
                str(run / "model"),
                "--out",
                str(run / "onnx-int8"),
                "--data",
                qat_config,
                "--overwrite",
            )
        models = {
            "teacher fp32": teacher_dir / "model",
            "student fp32": out / f"{task}_distill" / "model",
            "student PTQ int8": ptq,
            "student QAT int8": qat_dir / "model",
            "student QAT int8 (ONNX folder)": qat_dir / "onnx-int8",
            "student pruned 50% fp32": prune_dir / "model",
            "student pruned 50% QAT int8 (ONNX folder)": pruned_qat / "onnx-int8",
        }
        command(
            "benchmark",
            "--data",
            qat_config,
            "--split",
            "test",
            "--out",
            str(out / f"{task}_benchmark"),
            *[arg for name, path in models.items() for arg in ("--model", f"{name}={path}")],
        )
    for task, metric in PAIR_TASKS.items():  # sentence pairs and regression: teacher and distilled student
        teacher_dir = out / f"{task}_finetune"
        rows.append(
            (task, "teacher (fine-tuned)", *stage(f"configs/demo-{task}/finetune.yaml", teacher_dir, metric))
        )
        rows.append(
            (
                task,
                "student, distilled",
                *stage(
                    f"configs/demo-{task}/distill.yaml",
                    out / f"{task}_distill",
                    metric,
                    "--model.init_args.teacher",
                    best_checkpoint_in(teacher_dir / "checkpoints"),
                ),
            )
        )
    print("\n| task | model | parameters | held-out metric | score | seconds |\n|---|---|---|---|---|---|")
    for task, model, score, seconds, parameters in rows:
        print(
            f"| {task} | {model} | {parameters / 1e6:.2f}M | {(TASKS | PAIR_TASKS)[task]} | {score:.4f} | {seconds:.0f} |"
        )
    for task in TASKS:
        print("\n" + (out / f"{task}_benchmark" / "benchmark.md").read_text())
    print("Hugging Face model folders (transformers.pipeline, from_pretrained, push_to_hub):")
    for folder in sorted(out.glob("*/model")) + sorted(out.glob("*/onnx-int8")):
        print(f"  {folder}")
    onnx = out / "sequence_qat" / "onnx-int8"
    sentence = "a wonderful , moving film"
    print(f"""
The int8 ONNX folder in transformers' pipeline (pip install optimum-onnx; it needs transformers<4.58):
  from optimum.onnxruntime import ORTModelForSequenceClassification
  from transformers import AutoTokenizer, pipeline
  classify = pipeline("text-classification", model=ORTModelForSequenceClassification.from_pretrained("{onnx}"),
                      tokenizer=AutoTokenizer.from_pretrained("{onnx}"))
  classify("{sentence}")
The same folder from the terminal:
$ shrink-classify {onnx} '{sentence}'""")
    from lightning_modules.commands.classify import main as classify

    classify([str(onnx), sentence])


if __name__ == "__main__":
    main()
