"""The documented quickstart (docs/quickstart.md), run as written: its bash block, from a folder outside
the repository with only the recipes beside it, through the installed ``shrink`` command, on small
local files and small model folders in place of the real ones."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest

from datamodules.demo import demo_split, demo_tokenizer
from tests.conftest import ENV, ROOT


def small_model(folder, tokenizer, layers: int) -> str:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_the_quickstart_runs_as_written_outside_the_repository(tmp_path):
    text = (ROOT / "docs" / "quickstart.md").read_text()
    script = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line for line in script.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) <= 10
    os.symlink(ROOT / "configs", tmp_path / "configs")  # the recipes; no other file of the checkout
    tokenizer = demo_tokenizer(tmp_path / "cache")
    for split, rows in (("train", 96), ("dev", 48)):
        with open(tmp_path / f"{split}.tsv", "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(["sentence", "label"])
            for row in demo_split("sequence", "train" if split == "train" else "validation")[:rows]:
                writer.writerow([row["text"], row["label"]])
    env = dict(
        ENV,
        TRAIN="train.tsv",
        DEV="dev.tsv",
        TEACHER=small_model(tmp_path / "teacher0", tokenizer, 2),
        STUDENT=small_model(tmp_path / "student0", tokenizer, 1),
    )
    # the recipes' settings, but an epoch and 32-bit: CPU time, not what the commands do
    script = script.replace("export TRAIN=", ": ", 1).replace(
        "shrink fit ", "shrink fit --trainer.max_epochs 1 --trainer.precision 32 --model.torch_compile false "
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs" / "int8" / "onnx" / "model.onnx").is_file()
    assert "TracerWarning" not in result.stderr  # known-harmless export warnings are not shown
    # the int8 card's lineage keeps every step, also with a teacher in QAT (its history is not the model's)
    card = (tmp_path / "runs" / "int8" / "model" / "README.md").read_text()
    lineage = card.split("## Lineage")[1].split("##")[0]
    steps = [lineage.index(f"**{s}**") for s in ("FineTuneModule", "DistillationModule", "QATModule")]
    assert steps == sorted(steps), card[:2000]
    assert "int8" in (tmp_path / "runs" / "benchmark" / "benchmark.md").read_text()
    lines = result.stdout.strip().splitlines()[-2:]
    assert [line.split('"text": ')[1].split(",")[0] for line in lines] == [
        '"a wonderful film"',
        '"dull and slow"',
    ]


@pytest.mark.slow
def test_installed_commands_work_from_any_folder_after_a_plain_install(tmp_path):
    """``pip install .`` (not editable) into a fresh environment: ``shrink`` and its commands answer
    --help from a folder outside the checkout, importing the installed copy, not the repository's."""
    target = tmp_path / "installed"  # a plain (non-editable) install, first on the import path
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    env = dict(ENV, PYTHONPATH=str(target), PATH=f"{target / 'bin'}:{ENV.get('PATH', os.environ['PATH'])}")
    where = subprocess.run(
        [sys.executable, "-c", "import lightning_modules; print(lightning_modules.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert str(target) in where.stdout and str(ROOT) not in where.stdout, where.stdout + where.stderr
    for command, expected in (
        ([], "export"),
        (["fit"], "data_files"),
        (["export"], "onnx,ptq"),
        (["benchmark"], "--ort-peers"),
        (["prune-vocab"], "--keep-first"),
        (["classify"], "model [texts"),
    ):
        result = subprocess.run(
            [str(target / "bin" / "shrink"), *command, "--help"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0 and expected in result.stdout, (command, result.stderr[-1500:])
        assert "Failed to load" not in result.stderr and "Warning" not in result.stderr, result.stderr[-1500:]
    assert (
        subprocess.run(
            [str(target / "bin" / "shrink-classify"), "--help"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=120,
        ).returncode
        == 0
    )
