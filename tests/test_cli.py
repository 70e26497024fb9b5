"""The real CLI in subprocesses: fit, resume, test, predict, and bad input."""

import csv
import json
from pathlib import Path

import pytest
import torch

from datamodules.demo import demo_split
from tests.conftest import ROOT, run_cli, tiny_args


def csv_logger_config(tmp: Path) -> str:
    """An extra config adding a CSVLogger beside W&B, so the test can read the logged losses."""
    path = tmp / "loggers.yaml"
    path.write_text(f"""trainer:
  logger:
    - class_path: lightning.pytorch.loggers.WandbLogger
      init_args: {{project: shrink-test, save_dir: {tmp / "run"}}}
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args: {{save_dir: {tmp / "csv"}, name: "", version: ""}}
""")
    return str(path)


def logged(tmp: Path, key: str) -> list[float]:
    with open(tmp / "csv" / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


@pytest.mark.parametrize("task,metric", [("sequence", "val/accuracy"), ("token", "val/f1")])
def test_fit_resume_test_predict(tmp_path, task, metric):
    args = tiny_args(task, tmp_path, "--config", csv_logger_config(tmp_path), "--trainer.max_epochs", "2")
    fit = run_cli("fit", *args, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]

    losses = logged(tmp_path, "train/loss")
    steps = len(losses)
    assert steps == 2 * 63  # 2 epochs x 2000 rows / batch 32: more than the 50-step checkpoint interval
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8, losses  # the loss falls
    scores = logged(tmp_path, metric)
    # validated each epoch; the model/ folder gets the best weights, validated once more unless the
    # last epoch was the best (then its scores are the card's)
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    if scores[1] == max(scores[:2]):
        assert len(scores) == 2
    else:
        assert len(scores) == 3 and scores[-1] == pytest.approx(max(scores[:2]), abs=1e-6)
    assert f"| {metric} | {round(max(scores[:2]), 4)} |" in card
    assert logged(tmp_path, "train/device/items_per_sec")[-1] > 0  # non-padding tokens/s
    assert logged(tmp_path, "lr-AdamW/pg1")  # LearningRateMonitor (param group with weight decay)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and len(checkpoints) >= 2, checkpoints
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))  # W&B offline run
    assert (tmp_path / "run" / "config.yaml").exists()

    # resume continues the step count: 1 more epoch on top of the first 2
    resumed = run_cli("fit", *args, "--trainer.max_epochs", "3", "--ckpt_path", "last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the last line: the model folder's validation scores, as its card records them
    final = resumed.stderr.strip().splitlines()[-1]
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert final.startswith("FineTuneModule finished: ") and f"{metric} " in final, final
    score = float(final.split(f"{metric} ")[1].split()[0].rstrip(","))
    in_card = float(card.split(f"| {metric} | ")[1].split(" |")[0])
    assert abs(score - in_card) < 1e-4, (score, in_card)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == steps + 63

    test = run_cli("test", *args, "--ckpt_path", "best", cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    scores = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert 0.0 <= scores[metric.replace("val", "test")] <= 1.0
    if task == "token":  # per entity type beside the micro averages
        assert {
            f"test/{kind}/{name}"
            for kind in ("LOC", "MISC", "ORG", "PER")
            for name in ("precision", "recall", "f1")
        } <= set(scores)

    predict = run_cli("predict", *args, "--ckpt_path", "last", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 64  # max_eval_samples of the test split
    # in file order, though the batches ran longest first
    key = "text" if task == "sequence" else "tokens"
    assert [row[key] for row in rows] == [row[key] for row in demo_split(task, "test")[:64]]
    if task == "sequence":
        assert {row["label"] for row in rows} <= {"negative", "positive"}
        assert all(row["text"] and 0.5 <= row["score"] <= 1.0 for row in rows)
    else:
        names = {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"}
        assert all(len(row["labels"]) == len(row["tokens"]) and set(row["labels"]) <= names for row in rows)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


BAD_INPUTS = {
    "unknown key": (["--model.init_args.learnin_rate", "0.1"], "Option 'learnin_rate' is not accepted"),
    "missing config": (["--config", "TMP/nope.yaml"], "File does not exist"),
    "missing model": (["--model.init_args.model_config", "null"], "exactly one of model.model_name_or_path"),
    "model path": (
        [
            "--model.init_args.model_config",
            "null",
            "--model.init_args.model_name_or_path",
            "/no/such/model",
            "--data.init_args.tokenizer",
            "demo",
        ],
        "model '/no/such/model' is neither a local folder",
    ),
    "label column": (
        [
            "--data.init_args.data_files",
            "{train: TMP/e.tsv, validation: TMP/e.tsv}",
            "--data.init_args.label_names",
            "[negative, positive]",
        ],
        "has no labels (column 'label')",
    ),
    "text column": (
        ["--data.init_args.data_files", "{train: TMP/a.tsv, validation: TMP/a.tsv}"],
        "no text column 'text'",
    ),
    "label": (
        [
            "--data.init_args.data_files",
            "{train: TMP/b.tsv, validation: TMP/b.tsv}",
            "--data.init_args.label_names",
            "[negative, positive]",
        ],
        "label 'meh' in split 'train' is not in the label list",
    ),
    "empty split": (["--data.init_args.data_files", "{train: TMP/c.tsv, validation: TMP/c.tsv}"], "is empty"),
    "conll columns": (
        ["--data.init_args.data_files", "{train: TMP/d.txt, validation: TMP/d.txt}"],
        "d.txt:2: expected 2 columns",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_nonzero_and_overwrites_nothing(tmp_path, case):
    write(tmp_path / "a.tsv", "sentence\tlabel\ngood\t1\n")
    write(tmp_path / "b.tsv", "text\tlabel\ngood\t1\nbad\tmeh\n")
    write(tmp_path / "c.tsv", "text\tlabel\n")
    write(tmp_path / "d.txt", "EU B-ORG\nrejects VBZ O\n")
    write(tmp_path / "e.tsv", "text\tsentiment\ngood\t1\n")
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"earlier run")
    extra, expected = BAD_INPUTS[case]
    task = "token" if case == "conll columns" else "sequence"
    args = tiny_args(task, tmp_path, *[a.replace("TMP", str(tmp_path)) for a in extra])
    result = run_cli("fit", *args, "--overwrite", "true", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert expected in result.stderr, result.stderr[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], result.stderr[-3000:]
    assert checkpoint.read_bytes() == b"earlier run"
    assert not (tmp_path / "run" / "predictions.jsonl").exists()


def test_readme_commands_are_the_ci_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = [
        line for line in readme.splitlines() if line.startswith("pip install") and "pytest" in line
    ]
    assert len(test_command) == 1 and test_command[0].strip() in ci
