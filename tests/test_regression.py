"""Regression (STS-B-like, one output): Pearson / Spearman against scipy, the MSE distillation loss
against its formula, and the demo rating task through fine-tuning, QAT, int8 ONNX export and
raw-text prediction."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from datamodules import SequenceClassificationDataModule
from lightning_modules import DistillationModule, FineTuneModule
from tests.conftest import ROOT, run_cli, run_script
from tests.test_distill import STUDENT, TINY, trainer


def rating_data(tmp_path) -> SequenceClassificationDataModule:
    return SequenceClassificationDataModule(
        dataset="demo",
        dataset_config="rating",
        text_pair_column="text_pair",
        regression=True,
        tokenizer="demo",
        cache_dir=str(tmp_path / "cache"),
        max_train_samples=96,
        max_eval_samples=32,
        batch_size=16,
    )


def test_pearson_spearman_mse_match_scipy_over_batches():
    from scipy.stats import pearsonr, spearmanr

    from lightning_modules.methods.task_metrics import computed_metrics, task_metrics

    rng = torch.Generator().manual_seed(0)
    labels = torch.rand(301, generator=rng) * 5
    predictions = labels + torch.randn(301, generator=rng)
    metrics = task_metrics("sequence", ["label"])
    for start in range(0, 301, 64):
        metrics.update(predictions[start : start + 64], labels[start : start + 64])
    values = {k: float(v) for k, v in computed_metrics(metrics, "").items()}
    assert values["pearson"] == pytest.approx(pearsonr(predictions, labels).statistic, abs=1e-5)
    assert values["spearman"] == pytest.approx(spearmanr(predictions, labels).statistic, abs=1e-5)
    assert values["mse"] == pytest.approx(float(((predictions - labels) ** 2).mean()), rel=1e-5)


def test_regression_labels_are_numbers_and_kd_is_mse_to_the_teacher(tmp_path):
    dm = rating_data(tmp_path)
    assert dm.label_names == ["label"]
    dm.setup("fit")
    batch = dm.collate([dict(dm.encoded_split("train")[i]) for i in range(8)])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].max() > 1  # scores, not ids
    L.seed_everything(0)
    teacher = FineTuneModule(
        model_config=TINY, task="sequence", label_names=dm.label_names, learning_rate=1e-3
    )
    run = trainer(max_steps=3)
    run.fit(teacher, dm)
    assert teacher.model.config.num_labels == 1
    run.save_checkpoint(tmp_path / "teacher.ckpt")
    module = DistillationModule(
        teacher=str(tmp_path / "teacher.ckpt"),
        student_config=STUDENT,
        task="sequence",
        label_names=dm.label_names,
        alpha=0.3,
        temperature=4.0,
    ).eval()
    losses = module.distillation_losses(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        s, t = module.model(**inputs).logits.squeeze(-1), module.teacher.model(**inputs).logits.squeeze(-1)
    kd = ((s - t) ** 2).mean()  # no temperature: a number, not a distribution
    ce = ((s - batch["labels"]) ** 2).mean()
    assert losses["kd_loss"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert losses["ce_loss"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(0.3 * kd.item() + 0.7 * ce.item(), rel=1e-5)


def test_bad_regression_label_is_one_line(tmp_path):
    path = tmp_path / "sts.tsv"
    path.write_text("a\tb\tlabel\nthe film\tthe plot\t3.5\nthe cast\tthe story\thigh\n")
    dm = SequenceClassificationDataModule(
        data_files={"train": str(path)},
        text_column="a",
        text_pair_column="b",
        regression=True,
        cache_dir=str(tmp_path / "c"),
    )
    with pytest.raises(Exception, match="label 'high' in split 'train' is not a number"):
        dm.encoded_split("train")


def test_demo_rating_fine_tune_qat_export_and_classify(tmp_path, capsys):
    common = [
        "--data.init_args.max_train_samples",
        "128",
        "--data.init_args.max_eval_samples",
        "64",
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.max_epochs",
        "1",
    ]
    teacher = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs/demo-rating/finetune.yaml"),
        *common,
        "--out_dir",
        str(tmp_path / "teacher"),
        cwd=tmp_path,
    )
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    card = (tmp_path / "teacher" / "model" / "README.md").read_text()
    assert "val/pearson" in card and "val/spearman" in card
    teacher_ckpt = str(tmp_path / "teacher" / "checkpoints" / "last.ckpt")
    qat = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs/demo-rating/qat.yaml"),
        *common,
        "--model.init_args.model_name_or_path",
        teacher_ckpt,
        "--model.init_args.teacher",
        "null",
        "--out_dir",
        str(tmp_path / "qat"),
        cwd=tmp_path,
    )
    assert qat.returncode == 0, qat.stderr[-3000:]
    scores = json.loads((tmp_path / "qat" / "int8_validate_metrics.json").read_text())
    # the model's own loss is the MSE metric; the correlations are correlations
    assert (
        scores["val/mse"] == pytest.approx(scores["val/loss"], rel=1e-5) and -1 <= scores["val/pearson"] <= 1
    )
    out = tmp_path / "onnx-int8"
    export = run_script(
        "export.py",
        "onnx",
        "--model",
        str(tmp_path / "qat" / "model"),
        "--out",
        str(out),
        "--data",
        str(ROOT / "configs/demo-rating/qat.yaml"),
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
        "--set",
        "max_eval_samples=64",
        cwd=tmp_path,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert json.loads((out / "parity.json").read_text())["max_logit_diff"] < 1e-3
    from lightning_modules.commands.classify import main as classify

    capsys.readouterr()
    classify([str(out), "--pair", "the plot is good .\tthe plot was great ."])
    row = json.loads(capsys.readouterr().out.strip())
    assert row["text_pair"] == "the plot was great ." and isinstance(row["label"], float)
