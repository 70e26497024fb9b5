"""``shrink compress`` killed (SIGKILL) at a random point, then the same command: it finishes with
the report of an uninterrupted run. Each run is a process of its own (slow tier)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ENV, ROOT
from tests.test_compress import recipe

pytestmark = pytest.mark.slow
COMMAND = "from lightning_modules.commands.shrink import main; main()"


def compress(config: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", COMMAND, "compress", "--config", str(config), "--out_dir", str(out)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def deterministic(report: dict) -> dict:
    """What a rerun must reproduce exactly: scores, sizes, the choice (latencies are measurements)."""
    rows = {r["model"]: (r["accuracy"], r["size_mb"], r["within_budget"]) for r in report["rows"]}
    return {"rows": rows, "chosen": report["chosen"], "test": report["test"], "teacher": report["teacher"]}


def test_killed_anywhere_the_same_command_finishes_with_the_same_report(tmp_path):
    config = recipe(tmp_path, optimise="size")  # size: a choice that does not depend on timing noise
    start = time.perf_counter()
    whole = compress(config, tmp_path / "whole")
    _, err = whole.communicate(timeout=900)
    seconds = time.perf_counter() - start
    assert whole.returncode == 0, err[-3000:]
    seed = random.randrange(10**6)
    kill_at = random.Random(seed).uniform(0.15, 0.85) * seconds
    killed = compress(config, tmp_path / "killed")
    try:
        killed.wait(timeout=kill_at)
    except subprocess.TimeoutExpired:
        killed.kill()
        killed.communicate()
    steps = sorted(p.parent.name for p in (tmp_path / "killed" / "steps").glob("*/done.json"))
    again = compress(config, tmp_path / "killed")
    _, err = again.communicate(timeout=900)
    assert again.returncode == 0, (seed, kill_at, err[-3000:])
    # the steps finished before the kill are reused, not run again
    for step in (s for s in steps if not s.startswith("test-")):  # the chosen one's test score: no line
        kind_name = step.rsplit("-", 1)[0].replace("-", " ", 1)
        assert f"{kind_name} (done)" in err, (seed, step)
    reports = [json.loads((tmp_path / run / "report.json").read_text()) for run in ("whole", "killed")]
    assert deterministic(reports[1]) == deterministic(reports[0]), (seed, kill_at)
