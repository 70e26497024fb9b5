"""Shared test helpers: run the real CLI (in this process, or in a subprocess where a test needs a
process of its own) on a tiny from-scratch BERT and the embedded demo data (offline, CPU, seconds)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# pytest -n (pytest-xdist): one thread per worker. Workers that each spin as many OpenMP threads as
# there are cores oversubscribe them, and every worker slows down several times
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # also for the subprocesses tests start
    torch.set_num_threads(1)


# offline W&B and hub in every command; warnings off so stderr holds only our messages
ENV_OVERRIDES = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
ENV = dict(os.environ, **ENV_OVERRIDES)


@dataclass
class Result:
    """What a command left: like ``subprocess.CompletedProcess``."""

    returncode: int
    stdout: str
    stderr: str


def run_in_process(main, args: list[str], cwd: Path) -> Result:
    """``main(args)`` in this process (no interpreter start-up, the imports are shared) with the
    environment, working folder, output and log lines of a fresh command, captured."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    loggers = [logging.getLogger(name) for name in ("", "lightning.pytorch", "lightning.fabric")]
    saved_env = {k: os.environ.get(k) for k in ENV_OVERRIDES}
    saved_cwd, saved_threads, code = os.getcwd(), torch.get_num_threads(), 0
    os.environ.update(ENV_OVERRIDES)
    for logger in loggers:
        logger.addHandler(handler)
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # noqa: BLE001 - a crash is a failed command, with its traceback
                traceback.print_exc(file=err)
                code = 1
    finally:
        os.chdir(saved_cwd)
        torch.set_num_threads(saved_threads)  # a benchmark sets its own
        for logger in loggers:
            logger.removeHandler(handler)
        for key, value in saved_env.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    return Result(code, out.getvalue(), err.getvalue())


def run_script(name: str, *args: str, cwd: Path, timeout: int = 600) -> Result:
    """``shrink <name> args...`` (``export.py`` or ``export``: the installed command), run in this process."""
    from lightning_modules.commands.shrink import main

    return run_in_process(main, [Path(name).stem, *args], cwd)


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> Result:
    """The ``shrink`` command, run in this process (``lightning_modules.train.cli.main``)."""
    from lightning_modules.train import cli

    return run_in_process(cli.main, list(args), cwd)


def run_cli_process(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """The ``shrink`` command in a subprocess: for what needs a process of its own (kill, signals,
    DDP, comparing a killed run with an uninterrupted one)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_args(task: str, tmp: Path, *extra: str) -> list[str]:
    """CLI arguments for a short run of the demo config (its 0.5M-parameter BERT) of ``task`` ("sequence" or "token") writing under ``tmp``."""
    return [
        "--config",
        str(ROOT / "configs" / f"demo-{task}" / "finetune.yaml"),
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
