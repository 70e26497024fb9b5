"""``shrink seeds``: a stage over several seeds, each seed's test metrics and their mean and sample
standard deviation; a rerun skips finished seeds; another command's OUT and bad seeds get one line."""

import json
import statistics

import pytest

from tests.conftest import ROOT, run_script


def stage_args(tmp, epochs: str = "1") -> list[str]:
    return [
        "--config",
        str(ROOT / "configs" / "demo-sequence" / "finetune.yaml"),
        "--data.init_args.max_train_samples",
        "128",
        "--data.init_args.max_eval_samples",
        "64",
        "--data.init_args.cache_dir",
        str(tmp / "cache"),
        "--trainer.max_epochs",
        epochs,
        "--trainer.enable_progress_bar",
        "false",
    ]


@pytest.mark.slow  # a process per seed and per stage: a minute on 2 cores
def test_seeds_report_mean_and_std_of_each_seeds_test_metrics_and_resume(tmp_path):
    out = tmp_path / "seeds"
    result = run_script("seeds", "--seeds", "0,5", "--out_dir", str(out), *stage_args(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "seeds.json").read_text())
    per_seed = {s: json.loads((out / f"seed-{s}" / "test_metrics.json").read_text()) for s in (0, 5)}
    assert set(report["seeds"]) == {"0", "5"}
    for name, stats in report["summary"].items():
        values = [per_seed[0][name], per_seed[5][name]]
        assert stats["mean"] == statistics.fmean(values) and stats["std"] == statistics.stdev(values)
    assert per_seed[0]["test/loss"] != per_seed[5]["test/loss"]  # the seed reached the run
    assert "mean ± std" in result.stdout and "test/accuracy" in (out / "seeds.md").read_text()
    # a rerun trains nothing: every seed has its test metrics
    mtime = (out / "seed-0" / "test_metrics.json").stat().st_mtime
    again = run_script("seeds", "--seeds", "0,5", "--out_dir", str(out), *stage_args(tmp_path), cwd=tmp_path)
    assert again.returncode == 0 and "training" not in again.stderr
    assert (out / "seed-0" / "test_metrics.json").stat().st_mtime == mtime
    # another command into the same OUT is refused, one line, nothing touched
    other = run_script(
        "seeds", "--seeds", "2", "--out_dir", str(out), *stage_args(tmp_path, "2"), cwd=tmp_path
    )
    assert other.returncode == 2 and "holds the seeds of another command" in other.stderr
    assert (out / "seed-0" / "test_metrics.json").stat().st_mtime == mtime


def test_bad_seeds_get_one_line(tmp_path):
    for seeds in ("0", "x", "1,1"):
        result = run_script("seeds", "--seeds", seeds, "--out_dir", str(tmp_path / "o"), cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.startswith("error: --seeds"), result.stderr
    result = run_script(
        "seeds", "--seeds", "2", "--out_dir", str(tmp_path / "o"), "--seed_everything", "3", cwd=tmp_path
    )
    assert result.returncode == 2 and "set per seed" in result.stderr
