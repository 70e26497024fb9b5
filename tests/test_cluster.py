"""Cluster features through the real CLI in subprocesses: a 2-process DDP validation equals the
1-process one, W&B (offline) receives the losses, KD terms, learning rate, throughput and config but
never the API key, and 16-mixed on CPU falls back to bf16-mixed."""

import json
import os
from pathlib import Path

import pytest
import wandb

from tests.conftest import ROOT, run_cli, run_cli_process, tiny_args


@pytest.mark.slow
def test_ddp_validation_equals_single_process(tmp_path):
    """Entity F1 and loss are synced across ranks: 2 gloo processes give the 1-process numbers."""
    fit = run_cli("fit", *tiny_args("token", tmp_path, "--trainer.max_epochs", "1"), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    scores = {}
    for name, extra in {
        "single": [],
        "ddp": ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"],
    }.items():
        args = tiny_args("token", tmp_path, "--out_dir", str(tmp_path / name), *extra)
        # 64 rows = 2 ranks x 1 batch of 32: no sampler padding, so both runs score the same rows
        result = run_cli_process("validate", *args, "--ckpt_path", ckpt, cwd=tmp_path, timeout=300)  # DDP
        assert result.returncode == 0, result.stderr[-3000:]
        scores[name] = json.loads((tmp_path / name / "validate_metrics.json").read_text())
    assert scores["ddp"].keys() == scores["single"].keys()
    for key, value in scores["single"].items():
        assert scores["ddp"][key] == pytest.approx(value, abs=1e-6), key
    assert 0 < scores["single"]["val/f1"] < 1


def wandb_records(run_dir: Path) -> bytes:
    """The bytes of the offline W&B run files: protobuf stores keys and config values as plain UTF-8."""
    # the wandb-core service writes them after finish() returns; in one process (tests) it stays up,
    # so wait for it as a command's exit does
    wandb.teardown()
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run in {run_dir}"
    return b"".join(f.read_bytes() for f in files)


def test_wandb_gets_losses_kd_terms_lr_throughput_and_config_but_not_the_api_key(tmp_path):
    secret = "0123456789abcdef-not-a-real-key"
    env = {"WANDB_API_KEY": secret, "WANDB_MODE": "offline"}
    teacher = run_cli("fit", *tiny_args("sequence", tmp_path, "--trainer.max_epochs", "1"), cwd=tmp_path)
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    args = [
        "--config",
        str(ROOT / "configs" / "demo-sequence" / "distill.yaml"),
        "--model.init_args.teacher",
        str(tmp_path / "run" / "checkpoints" / "last.ckpt"),
        "--model.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--data.init_args.max_train_samples",
        "320",
        "--data.init_args.max_eval_samples",
        "64",
        "--trainer.max_epochs",
        "1",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--out_dir",
        str(tmp_path / "student"),
    ]
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = run_cli("fit", *args, cwd=tmp_path)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert result.returncode == 0, result.stderr[-3000:]
    records = wandb_records(tmp_path / "student")
    for key in (
        "train/loss",
        "train/kd_loss",
        "train/ce_loss",
        "lr-AdamW",
        "val/accuracy",
        "val/loss",
        "train/device/samples_per_sec",
        "train/device/items_per_sec",
        "train/device/batches_per_sec",
        "trainer/global_step",
    ):
        assert key.encode() in records, key
    assert b"temperature" in records and b"teacher_cache" in records  # the resolved config
    leaked = [
        p for p in (tmp_path / "student").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
    ]
    assert not leaked and secret not in result.stderr


def test_16_mixed_on_cpu_falls_back_to_bf16(tmp_path):
    result = run_cli(
        "fit",
        *tiny_args("sequence", tmp_path, "--trainer.max_epochs", "1", "--trainer.precision", "16-mixed"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Using bfloat16 Automatic Mixed Precision" in result.stderr  # Lightning's fallback, logged
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
