"""The low-label benchmark: does distillation earn its keep when labels are few and text is not?

SST-2 with 1,000 labelled rows (the rest of train as unlabelled text) and CoNLL-2003 with 2,000
labelled sentences (the rest without tags). A teacher trained on the labelled part (``--teacher``:
MPNet for SST-2, the student architecture itself for CoNLL by default; ``--teacher mpnet
--teacher_args "--data.batch_size 8 --model.learning_rate 5e-5" --teacher_epochs 6`` gives MPNet
the optimizer steps it needs to learn NER from 2,000 sentences; ``--labelled 0``: all of train, no
transfer text), then MiniLM-L6 students over seeds
with ``shrink seeds``: plain fine-tuning on the labels; KD on the labels; KD + the transfer set;
KD + augmentation; KD + both. Writes ``OUT/<task>/low_label.{json,md}`` (means ± std over seeds,
gain over plain, share of the teacher, teacher-cache throughput). Rerunning skips finished runs and
resumes killed ones.

    python scripts/bench/low_label.py --task sst2 --data DATA --models MODELS --out runs/low-label

DATA holds sst2/ and conll2003/; MODELS holds all-mpnet-base-v2 and all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

from lightning_modules.commands.seeds import seed_list

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ["plain", "kd", "kd-transfer", "kd-augment", "kd-both"]


def prepare_sst2(data: Path, out: Path, labels: int) -> dict[str, str]:
    rows = list(csv.DictReader((data / "sst2" / "train.tsv").open(), delimiter="\t", quoting=csv.QUOTE_NONE))
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "labelled.tsv").open("w") as f:
        f.write(
            "sentence\tlabel\n"
            + "".join(f"{rows[i]['sentence']}\t{rows[i]['label']}\n" for i in order[:labels])
        )
    with (out / "unlabelled.txt").open("w") as f:
        f.write(
            "".join(rows[i]["sentence"].strip() + "\n" for i in order[labels:] if rows[i]["sentence"].strip())
        )
    return {"train": str(out / "labelled.tsv"), "validation": str(data / "sst2" / "dev.tsv")}


def prepare_conll(data: Path, out: Path, labels: int) -> dict[str, str]:
    text = (data / "conll2003" / "train.txt").read_text()
    sentences = [s for s in text.split("\n\n") if s.strip() and not s.startswith("-DOCSTART-")]
    order = list(range(len(sentences)))
    random.Random(0).shuffle(order)
    out.mkdir(parents=True, exist_ok=True)
    (out / "labelled.conll").write_text("\n\n".join(sentences[i].strip() for i in order[:labels]) + "\n")
    words = ["\n".join(line.split()[0] for line in sentences[i].strip().splitlines()) for i in order[labels:]]
    (out / "unlabelled.conll").write_text("\n\n".join(words) + "\n")
    return {
        "train": str(out / "labelled.conll"),
        "validation": str(data / "conll2003" / "valid.txt"),
        "test": str(data / "conll2003" / "test.txt"),
    }


def shrink(*args: str, log: Path) -> None:
    with log.open("w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "lightning_modules.commands.shrink", *args], stdout=f, stderr=f
        )
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): shrink {' '.join(args)}\n  see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["sst2", "conll"], required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder with sst2/ and conll2003/")
    parser.add_argument(
        "--models", type=Path, required=True, help="folder with all-mpnet-base-v2, all-MiniLM-L6-v2"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/low-label"))
    parser.add_argument("--seeds", default="3")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--teacher", choices=["mpnet", "minilm"], help="default: mpnet (SST-2), minilm (CoNLL)"
    )
    parser.add_argument("--transfer_ratio", type=float, default=20.0, help="transfer rows per labelled row")
    parser.add_argument("--augment_factor", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3, help="epochs on the labelled rows alone")
    parser.add_argument("--transfer_epochs", type=int, default=1, help="epochs with transfer rows")
    parser.add_argument("--teacher_epochs", type=int, help="the teacher's epochs (default: --epochs)")
    parser.add_argument(
        "--teacher_args", default="", help='more options for the teacher\'s fit, e.g. "--data.batch_size 8"'
    )
    parser.add_argument("--student_args", default="", help="more options for every student's fit")
    parser.add_argument(
        "--labelled", type=int, help="labelled rows (default 1,000 SST-2, 2,000 CoNLL); 0: all of train"
    )
    options = parser.parse_args()
    sst2 = options.task == "sst2"
    out = options.out / options.task
    labelled = options.labelled if options.labelled is not None else (1000 if sst2 else 2000)
    files = (prepare_sst2 if sst2 else prepare_conll)(options.data, out / "data", labelled or sys.maxsize)
    teacher_kind = options.teacher or ("mpnet" if sst2 else "minilm")
    minilm, mpnet = str(options.models / "all-MiniLM-L6-v2"), str(options.models / "all-mpnet-base-v2")
    teacher_model = mpnet if teacher_kind == "mpnet" else minilm
    folder = "sst2" if sst2 else "conll2003"
    data = [
        "--data.data_files",
        json.dumps(files),
        "--data.num_workers",
        "1",
        *(["--data.tag_column", "3"] if not sst2 else []),
        "--trainer.val_check_interval",
        "1.0",
    ]
    # eager: these runs are short, and inductor's compile (minutes on 2 cores) would dominate them
    lr = ["--model.learning_rate", "1e-4", "--model.torch_compile", "false"]
    student = shlex.split(options.student_args)
    teacher_dir = out / f"teacher-{teacher_kind}"
    variants = options.variants.split(",")
    # plain students need no teacher: their seeds can run beside its training
    if variants != ["plain"]:
        if not (teacher_dir / "model").exists():
            print(f"teacher ({teacher_kind}) -> {teacher_dir}", file=sys.stderr)
            shrink(
                "fit",
                "--config",
                f"{ROOT}/configs/{folder}/finetune.yaml",
                *data,
                *lr,
                "--model.model_name_or_path",
                teacher_model,
                "--trainer.max_epochs",
                str(options.teacher_epochs or options.epochs),
                *shlex.split(options.teacher_args),
                "--out_dir",
                str(teacher_dir),
                log=out / "teacher.log",
            )
        if not (teacher_dir / "test_metrics.json").exists():
            shrink(
                "test",
                "--config",
                f"{ROOT}/configs/{folder}/finetune.yaml",
                *data,
                "--model.model_name_or_path",
                teacher_model,
                "--out_dir",
                str(teacher_dir),
                "--ckpt_path",
                "last",
                log=out / "teacher-test.log",
            )
    kd = [
        "--config",
        f"{ROOT}/configs/{folder}/distill.yaml",
        *data,
        *lr,
        *student,
        "--model.teacher",
        str(teacher_dir / "checkpoints" / "last.ckpt"),
        "--model.student_model_name_or_path",
        minilm,
        "--data.tokenizer",
        minilm,
        *(["--data.teacher_tokenizer", teacher_model] if teacher_model != minilm else []),
    ]
    transfer = [
        "--data.transfer_files",
        f"[{out / 'data' / ('unlabelled.txt' if sst2 else 'unlabelled.conll')}]",
    ]
    augment = [
        "--data.augment",
        "[mask, swap, ngram]" if sst2 else "[swap, mention]",
        "--data.augment_factor",
        str(options.augment_factor),
    ]
    ratio = ["--data.transfer_ratio", str(options.transfer_ratio)]
    epochs = ["--trainer.max_epochs", str(options.epochs)]
    transfer_epochs = ["--trainer.max_epochs", str(options.transfer_epochs)]
    runs = {
        "plain": [
            "--config",
            f"{ROOT}/configs/{folder}/finetune.yaml",
            *data,
            *lr,
            *student,
            "--model.model_name_or_path",
            minilm,
            *epochs,
        ],
        "kd": [*kd, *epochs],
        "kd-transfer": [*kd, *transfer, *ratio, *transfer_epochs],
        "kd-augment": [*kd, *augment, *ratio, *transfer_epochs],
        "kd-both": [*kd, *transfer, *augment, *ratio, *transfer_epochs],
    }
    for name in variants:
        print(f"{name}: shrink seeds --seeds {options.seeds}", file=sys.stderr)
        shrink(
            "seeds",
            "--seeds",
            options.seeds,
            "--out_dir",
            str(out / name),
            *runs[name],
            log=out / f"{name}.log",
        )
    report(out, options, teacher_kind, teacher_dir)


def report(out: Path, options, teacher_kind: str, teacher_dir: Path) -> None:
    metric = "test/accuracy" if options.task == "sst2" else "test/f1"
    scores = teacher_dir / "test_metrics.json"
    teacher = json.loads(scores.read_text())[metric] if scores.exists() else None
    rows, results = [], {"teacher": {"kind": teacher_kind, metric: teacher}, "variants": {}}
    plain = None
    for name in VARIANTS:
        path = out / name / "seeds.json"
        if not path.exists():
            continue
        stats = json.loads(path.read_text())["summary"][metric]
        plain = stats["mean"] if name == "plain" else plain
        throughput = cache_throughput(out / name)
        results["variants"][name] = {**stats, "teacher_cache_rows_per_s": throughput}
        gain = f"{100 * (stats['mean'] - plain):+.2f}" if plain is not None and name != "plain" else ""
        share = f"{100 * stats['mean'] / teacher:.1f}%" if teacher else ""
        rows.append(
            f"| {name} | {stats['mean']:.4f} ± {stats['std']:.4f} | {gain} | {share} | {throughput or ''} |"
        )
    seeds = "seeds " + ", ".join(map(str, seed_list(options.seeds)))
    table = [
        f"Teacher ({teacher_kind}, on the labelled rows): {metric} {'not run' if teacher is None else f'{teacher:.4f}'}",
        "",
        f"| student (MiniLM-L6), {seeds} | {metric} mean ± std | vs plain (points) | of teacher "
        "| teacher scoring, rows/s |",
        "|---|---|---|---|---|",
        *rows,
    ]
    (out / "low_label.md").write_text("\n".join(table) + "\n")
    (out / "low_label.json").write_text(json.dumps(results, indent=1))
    print("\n".join(table))


def cache_throughput(folder: Path) -> float | None:
    """Rows per second of the teacher-cache build, from the first seed that built it."""
    for log in sorted(folder.glob("seed-*.fit.log")):
        found = re.search(r"teacher cache: scored (\d+) rows in ([\d.]+) s", log.read_text(errors="replace"))
        if found:
            return round(int(found[1]) / float(found[2]), 1)
    return None


if __name__ == "__main__":
    main()
