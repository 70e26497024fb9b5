"""Shared test helpers: run the real CLI in a subprocess on a tiny from-scratch BERT and the
embedded demo data (offline, CPU, seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# offline W&B and hub in every child process; warnings off so stderr holds only our messages
ENV = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")


def run_script(name: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python scripts/<name> args...`` in a subprocess, output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """The ``shrink`` command (scripts/train.py) in a subprocess."""
    return run_script("train.py", *args, cwd=cwd, timeout=timeout)


def tiny_args(task: str, tmp: Path, *extra: str) -> list[str]:
    """CLI arguments for a short run of the demo config (its 0.5M-parameter BERT) of ``task`` ("sequence" or "token") writing under ``tmp``."""
    return [
        "--config",
        str(ROOT / "configs" / "demo" / f"{task}_finetune.yaml"),
        "--data.init_args.max_eval_samples",
        "64",
        "--data.init_args.cache_dir",
        str(tmp / "cache"),
        "--out_dir",
        str(tmp / "run"),
        "--trainer.max_epochs",
        "3",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")
