"""Distillation (compiled student, teacher cache, GLUE metrics on two splits), pruning and exact
resume under DDP: 2 CPU processes (gloo), launched as a subprocess with a timeout, never inside the
pytest process."""

import json
import re
import subprocess
import sys

import pytest
import torch

from tests.conftest import ENV, ROOT, run_cli, run_cli_process


@pytest.mark.slow
def test_distill_ddp_two_processes_shares_one_teacher_cache(tmp_path):
    small = [  # 128 rows, 1 epoch, shared tokenized-data cache
        "--trainer.max_epochs",
        "1",
        "--data.init_args.max_train_samples",
        "128",
        "--data.init_args.max_eval_samples",
        "64",
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.enable_progress_bar",
        "false",
    ]
    teacher = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs" / "demo-sequence" / "finetune.yaml"),
        "--out_dir",
        str(tmp_path / "teacher"),
        *small,
        cwd=tmp_path,
        timeout=300,
    )
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    # the GLUE metric set under DDP: MCC beside accuracy / macro-F1, on two validation splits (MNLI-like)
    scored = ["--model.init_args.metrics", "[mcc]", "--data.init_args.validation_split", "[validation, test]"]
    args = [
        "--config",
        str(ROOT / "configs" / "demo-sequence" / "distill.yaml"),
        "--model.init_args.teacher",
        str(tmp_path / "teacher" / "checkpoints" / "last.ckpt"),
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--out_dir",
        str(tmp_path / "student"),
        "--model.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--data.init_args.group_by_length",  # Lightning wraps the grouped sampler for the two ranks
        "true",
        "--model.init_args.torch_compile",  # the student compiled inside DDP (AOT autograd, no kernel generation)
        "aot_eager",
        *scored,
        *small,
        "--data.init_args.augment",  # transfer rows: 128 unlabelled augmented copies, labelled by the teacher
        "[mask, swap, ngram]",
        "--data.init_args.augment_factor",
        "2",
        "--data.init_args.transfer_ratio",
        "1",
    ]
    result = run_cli_process("fit", *args, cwd=tmp_path, timeout=300)  # DDP: never in the pytest process
    assert result.returncode == 0, result.stderr[-3000:]
    (cache,) = (tmp_path / "cache" / "teacher").glob("*.pt")  # built once, by rank 0, over the mixed split
    assert torch.load(cache, weights_only=True)["logits"].shape[0] == 256
    assert (tmp_path / "student" / "checkpoints" / "last.ckpt").exists()
    # each rank sees half the data: 128 labelled + 128 transfer rows / (2 ranks x batch 32) = 4 steps
    last = torch.load(
        tmp_path / "student" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert last["global_step"] == 4
    assert not any("teacher" in key for key in last["state_dict"])
    assert last["hyper_parameters"]["torch_compile"] == "aot_eager"
    # the scores synced over the 2 ranks (each validated half of each split), as the model card has
    # them, equal one process validating the whole splits with the same weights
    card = (tmp_path / "student" / "model" / "README.md").read_text()
    synced = {
        k: float(v)
        for k, v in re.findall(r"^\| (val[^ ]*/(?:accuracy|f1_macro|mcc)) \| ([-0-9.]+) \|$", card, re.M)
    }
    assert sorted(synced) == sorted(
        f"{p}/{m}" for p in ("val", "val_test") for m in ("accuracy", "f1_macro", "mcc")
    )
    alone = run_cli(
        "validate",
        *args[:2],
        "--model.init_args.teacher",
        str(tmp_path / "teacher" / "checkpoints" / "last.ckpt"),
        "--ckpt_path",
        str(tmp_path / "student" / "checkpoints" / "last.ckpt"),
        "--out_dir",
        str(tmp_path / "alone"),
        *scored,
        *small,
        cwd=tmp_path,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    metrics = json.loads((tmp_path / "alone" / "validate_metrics.json").read_text())
    for key, value in synced.items():
        assert metrics[key] == pytest.approx(value, abs=1e-4), key  # the card rounds to 4 decimals


@pytest.mark.slow
def test_prune_ddp_two_processes_makes_the_same_decisions_on_both_ranks(tmp_path):
    """Each pruning event checks (all_gather) that both ranks removed the same units; rank 0's
    checkpoint holds the full schedule."""
    small = [
        "--data.init_args.max_train_samples",
        "128",
        "--data.init_args.max_eval_samples",
        "64",
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.enable_progress_bar",
        "false",
    ]
    teacher = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs" / "demo-sequence" / "finetune.yaml"),
        "--out_dir",
        str(tmp_path / "teacher"),
        "--trainer.max_epochs",
        "1",
        *small,
        cwd=tmp_path,
    )
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    args = [
        "--config",
        str(ROOT / "configs" / "demo-sequence" / "prune.yaml"),
        "--model.init_args.model_name_or_path",
        str(tmp_path / "teacher" / "checkpoints" / "last.ckpt"),
        "--model.init_args.teacher",
        "null",
        "--model.init_args.pruning_end",
        "1.0",
        "--model.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "3",
        "--out_dir",
        str(tmp_path / "pruned"),
        *small,
    ]
    result = run_cli_process("fit", *args, cwd=tmp_path, timeout=300)  # DDP: never in the pytest process
    assert result.returncode == 0, result.stderr[-3000:]
    last = torch.load(
        tmp_path / "pruned" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert last["global_step"] == 6 and int(last["state_dict"]["events_done"]) == 8  # 128 rows / (2 x 32) x 3
    assert (tmp_path / "pruned" / "model" / "pruned_encoder.py").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("grouped", [True, False])
def test_ddp_run_crashed_mid_epoch_resumes_exactly(grouped, tmp_path):
    """2 ranks, 3 epochs of 5 steps, last.ckpt every 3 steps; both ranks fail at step 13 (the third
    epoch), the run resumes from step 12 and ends with the uninterrupted run's weights. Grouped:
    the length-grouped sampler shards itself (Lightning's wrapper would re-draw another epoch's
    order); random: Lightning's DistributedSampler."""
    from tests.test_resume import args, assert_same_training, final_state, step_of

    ddp = [
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "3",
        "--data.init_args.group_by_length",
        str(grouped).lower(),
    ]
    env = dict(ENV, PYTHONPATH=str(ROOT))  # the crash callback lives in tests/

    def fit(run: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "train.py"),
                "fit",
                *args("finetune", tmp_path, run, *ddp),
                *extra,
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    whole = fit("whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    crashed = fit(
        "crashed", "--trainer.callbacks+=tests.test_resume.CrashAt", "--trainer.callbacks.step", "13"
    )
    assert crashed.returncode != 0 and "crashed at step 13" in crashed.stderr
    assert step_of(tmp_path / "crashed" / "checkpoints" / "last.ckpt") == 12
    resumed = fit("crashed", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(final_state(tmp_path / "whole"), final_state(tmp_path / "crashed"), steps=15)
