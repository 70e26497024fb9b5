"""Preemptible training: SIGKILL at a random step then ``--ckpt_path last`` ends with the same weights
as an uninterrupted run (mid-epoch included); SIGTERM / SIGUSR1 write a checkpoint and exit for
requeue; a kill during a checkpoint write leaves the previous one loadable; the W&B run continues;
bad resumes get one line. Every run is a real CLI subprocess, except a crash right after an epoch end
(in process: an error raised at a chosen step)."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from lightning_modules.artifacts.checkpoints import AtomicCheckpointIO, check_checkpoint
from tests.conftest import ENV, ROOT, run_cli, run_cli_process


def config(stage: str, tmp: Path, task: str = "sequence", every: int = 3) -> str:
    """The demo recipe of ``stage`` as shipped (its callbacks, logger and data inlined), with last.ckpt
    every ``every`` steps."""
    path = tmp / f"{task}_{stage}_every{every}.yaml"
    if not path.exists():
        source = ROOT / "configs" / f"demo-{task}" / f"{stage}.yaml"
        values = yaml.safe_load(source.read_text())
        for key in ("callbacks", "logger"):  # the shared files the recipe names, inlined
            values["trainer"][key] = yaml.safe_load((source.parent / values["trainer"][key]).read_text())
        values["data"] = yaml.safe_load((source.parent / values["data"]).read_text())
        for callback in values["trainer"]["callbacks"]:
            if callback["class_path"].endswith("ResumeCheckpoint"):
                callback["init_args"]["every_n_train_steps"] = every
        path.write_text(yaml.safe_dump(values))
    return str(path)


def args(stage: str, tmp: Path, run: str, *extra: str) -> list[str]:
    """A 2-epoch demo run of 10 steps per epoch (320 rows, batch 32), last.ckpt every 3 steps."""
    return [
        "--config",
        config(stage, tmp),
        "--data.init_args.max_train_samples",
        "320",
        "--data.init_args.max_eval_samples",
        "64",
        "--data.init_args.cache_dir",
        str(tmp / "cache"),
        "--out_dir",
        str(tmp / run),
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def start(*cli_args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "fit", *cli_args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def step_of(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    except (FileNotFoundError, RuntimeError, KeyError):
        return -1


def wait_for(process: subprocess.Popen, ready, what: str, poll: float = 0.02, timeout: float = 240) -> None:
    """Poll ``ready()`` while the run lives."""
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before {what}: {process.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"no {what} in time"
        time.sleep(poll)


def wait_for_step(process: subprocess.Popen, last: Path, step: int) -> None:
    wait_for(process, lambda: step_of(last) >= step, f"step {step}")


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_training(a: dict, b: dict, steps: int = 20) -> None:
    assert a["global_step"] == b["global_step"] == steps
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, atol=1e-6, rtol=0, msg=key)
    for (_, sa), (_, sb) in zip(
        sorted(a["optimizer_states"][0]["state"].items()),
        sorted(b["optimizer_states"][0]["state"].items()),
        strict=True,
    ):
        torch.testing.assert_close(sb["exp_avg"], sa["exp_avg"], atol=1e-6, rtol=0)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]
    # the callbacks' states are keyed by callback name: compare ModelCheckpoint's best score
    scores = [
        [s["best_model_score"] for name, s in c["callbacks"].items() if name.startswith("ModelCheckpoint")]
        for c in (a, b)
    ]
    assert scores[0] and scores[0][0] is not None
    torch.testing.assert_close(scores[1], scores[0], atol=1e-6, rtol=0)


# --- the shipped recipes, unchanged: 63 batches per epoch, last.ckpt every 50 steps, throughput
# logged over a window of 10 batches. A kill right after the step-50 checkpoint leaves 13 batches of
# the epoch, more than a logging window, which is what real runs see.
RECIPE_STEPS = 63  # 2,000 demo rows / batch 32


def recipe_args(stage: str, task: str, tmp: Path, run: str, *extra: str) -> list[str]:
    """The shipped recipe, last.ckpt every 50 steps: mid-epoch in the demo's 63-step epoch."""
    return [
        "--config",
        config(stage, tmp, task, every=50),
        "--data.init_args.max_eval_samples",
        "64",
        "--data.init_args.cache_dir",
        str(tmp / "cache"),
        "--out_dir",
        str(tmp / run),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


@pytest.fixture(scope="module")
def recipe_teachers(tmp_path_factory) -> dict[str, Path]:
    """A short fine-tune of each task with its shipped recipe: the teacher of distillation and the
    fp32 model that QAT quantizes."""
    tmp = tmp_path_factory.mktemp("teachers")
    found = {}
    for task in ("sequence", "token"):
        extra = ("--data.init_args.max_train_samples", "320")
        result = run_cli("fit", *recipe_args("finetune", task, tmp, task, *extra), cwd=tmp)
        assert result.returncode == 0, result.stderr[-3000:]
        found[task] = tmp / task / "checkpoints" / "last.ckpt"
    return found


@pytest.fixture(scope="module")
def uninterrupted(recipe_teachers, tmp_path_factory):
    """``(stage, task) -> final checkpoint`` of the shipped recipe run without interruption, in a
    process of its own: trained once per module and shared by every test that compares a killed run
    with it (the same command gives the same run)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    runs = {}

    def final(stage: str, task: str) -> dict:
        if (stage, task) not in runs:
            extra = stage_extra(stage, recipe_teachers[task], tmp)
            result = run_cli_process(
                "fit", *recipe_args(stage, task, tmp, f"{stage}-{task}", *extra), cwd=tmp
            )
            assert result.returncode == 0, result.stderr[-3000:]
            runs[stage, task] = final_state(tmp / f"{stage}-{task}")
        return runs[stage, task]

    return final


def stage_extra(stage: str, teacher: Path, tmp: Path) -> list[str]:
    if stage == "finetune":
        return []
    extra = ["--model.init_args.teacher", str(teacher), "--model.init_args.cache_dir", str(tmp / "cache")]
    if stage in ("qat", "prune"):
        extra += ["--model.init_args.model_name_or_path", str(teacher)]
    if stage == "prune":  # events at steps 8, 16, ... 63: the kill at step 50 is mid-pruning
        extra += ["--model.init_args.pruning_end", "1.0"]
    return extra


@pytest.mark.slow
@pytest.mark.parametrize(  # every stage, each task twice (CI time: every pair took 7 x 33 s)
    "stage,task", [("finetune", "sequence"), ("distill", "token"), ("qat", "token"), ("prune", "sequence")]
)
def test_sigkill_mid_epoch_with_the_shipped_recipe_then_resume_equals_an_uninterrupted_run(
    stage, task, recipe_teachers, uninterrupted, tmp_path
):
    extra = stage_extra(stage, recipe_teachers[task], tmp_path)
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    process = start(*recipe_args(stage, task, tmp_path, "killed", *extra), cwd=tmp_path)
    wait_for_step(process, last, 50)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert step_of(last) == 50  # mid-epoch: 13 batches left, more than the throughput window
    resumed = start(
        *recipe_args(stage, task, tmp_path, "killed", *extra), "--ckpt_path", "last", cwd=tmp_path
    )
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert_same_training(uninterrupted(stage, task), final_state(tmp_path / "killed"), RECIPE_STEPS)
    if stage == "prune":  # the killed run had pruned 6 of 8 times: the resumed one finished the schedule
        state = final_state(tmp_path / "killed")["state_dict"]
        assert (
            int(state["events_done"]) == 8
            and min(int(v.sum()) for k, v in state.items() if "_mask_" in k) >= 1
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage,kill_at,grouped",
    [
        ("finetune", random.Random(5).randint(4, 14), True),  # a random step (13: mid second epoch)
        # right after the epoch-end checkpoint: the next epoch's order must match too; random batches,
        # split by length (each part draws its own dropout masks)
        ("finetune", 10, False),
    ],
)
def test_sigkill_at_a_random_step_then_resume_equals_an_uninterrupted_run(stage, kill_at, grouped, tmp_path):
    # grouped: length-grouped batches (data.group_by_length), whose order must resume exactly too
    extra = (
        ["--data.init_args.group_by_length", "true"]
        if grouped
        else ["--model.init_args.split_by_length", "true"]
    )
    whole = run_cli_process("fit", *args(stage, tmp_path, "whole", *extra), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    process = start(*args(stage, tmp_path, "killed", *extra), cwd=tmp_path)
    wait_for_step(process, last, kill_at)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    stopped_at = step_of(last)
    assert 0 < stopped_at < 20
    resumed = run_cli_process(
        "fit", *args(stage, tmp_path, "killed", *extra), "--ckpt_path", "last", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(final_state(tmp_path / "whole"), final_state(tmp_path / "killed"))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_writes_a_checkpoint_and_the_next_run_resumes(signum, uninterrupted, tmp_path):
    """The shipped recipe, preempted right after its step-50 checkpoint (mid-epoch)."""
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    process = start(*recipe_args("finetune", "sequence", tmp_path, "run"), cwd=tmp_path)
    # the first last.ckpt is step 50's; a stat per millisecond, not a load per poll, so the signal
    # lands a step or two later (loading the checkpoint to read its step let the run go 6 steps on)
    wait_for(process, last.exists, "the step-50 checkpoint", poll=0.001)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("preempted: checkpoint written to")
    stopped_at = step_of(last)
    assert 50 <= stopped_at < RECIPE_STEPS - 10  # more than a throughput window left to train
    resumed = run_cli_process(
        "fit", *recipe_args("finetune", "sequence", tmp_path, "run"), "--ckpt_path", "last", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(uninterrupted("finetune", "sequence"), final_state(tmp_path / "run"), RECIPE_STEPS)
    # the resumed run logged into the same W&B run (offline run folders end with the run id)
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    big = {"state_dict": {"w": torch.zeros(30_000_000)}, "global_step": 2}  # ~120 MB: slow enough to kill
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[2]);"
        "from lightning_modules.artifacts.checkpoints import AtomicCheckpointIO;"
        f"AtomicCheckpointIO().save_checkpoint({{'state_dict': {{'w': torch.zeros({big['state_dict']['w'].numel()})}}, "
        "'global_step': 2}, sys.argv[1])"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(path), str(ROOT)])
    deadline = time.time() + 60
    while not any(p.name.startswith(".last.ckpt.tmp") for p in tmp_path.iterdir()):  # mid-write
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert step_of(path) == 1  # the previous checkpoint, intact
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(Exception, match="corrupt or truncated"):
        check_checkpoint(str(truncated))


class CrashAt(Callback):
    """Stops a run with an error at the end of step ``step``, before that step's checkpoint: a
    process lost without the chance to write one (a node failure)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"crashed at step {self.step}")


@pytest.mark.parametrize("grouped", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_crash_after_an_epoch_end_resumes_from_it_exactly(grouped, tmp_path):
    """The last checkpoint is the epoch-end one: the next epoch's order (drawn by the sampler's own
    generator, which the finished epoch moved on) and RNG must be the uninterrupted run's. In
    process: the epoch end is the one place the subprocess kills above cannot aim at. Random
    batches (the recipes'), and length-grouped ones (their own sampler) in the slow tier."""
    # 3 epochs: a fresh sampler's second order is the second epoch's, so only a resume into the
    # third epoch or later shows whether the generator was restored
    epochs = ("--trainer.max_epochs", "3", "--data.init_args.group_by_length", str(grouped).lower())
    whole = run_cli("fit", *args("finetune", tmp_path, "whole", *epochs), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    crash = [*epochs, "--trainer.callbacks+=tests.test_resume.CrashAt", "--trainer.callbacks.step", "21"]
    crashed = run_cli("fit", *args("finetune", tmp_path, "crashed", *crash), cwd=tmp_path)
    assert crashed.returncode != 0 and "crashed at step 21" in crashed.stderr
    assert step_of(tmp_path / "crashed" / "checkpoints" / "last.ckpt") == 20  # the end of epoch 2 of 3
    resumed = run_cli(
        "fit", *args("finetune", tmp_path, "crashed", *epochs), "--ckpt_path", "last", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(final_state(tmp_path / "whole"), final_state(tmp_path / "crashed"), steps=30)


def test_bad_resumes_get_one_line(tmp_path):
    first = run_cli("fit", *args("finetune", tmp_path, "run", "--trainer.max_epochs", "1"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[:1000])
    before = last.stat().st_mtime_ns
    finetune = args("finetune", tmp_path, "run")
    # a checkpoint whose hyper-parameters say hidden size 64 but whose weights are 128 wide
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["model_config"]["hidden_size"] = 64
    shrunk = tmp_path / "shrunk.ckpt"
    torch.save(checkpoint, shrunk)
    cases = {
        "corrupt or truncated": [*finetune, "--ckpt_path", str(truncated)],
        "leaves nothing to do": [*finetune, "--ckpt_path", "last", "--trainer.max_epochs", "1"],
        "is a FineTuneModule checkpoint but the config trains DistillationModule": [
            *args("distill", tmp_path, "run"),
            "--ckpt_path",
            str(last),
            "--model.init_args.teacher",
            str(last),
        ],
        "CUDA": [*finetune, "--overwrite", "true", "--trainer.accelerator", "gpu", "--trainer.devices", "2"],
        "has shape [1000, 128] but this model's is [1000, 64]": [
            *finetune,
            "--ckpt_path",
            str(shrunk),
            "--model.init_args.model_config.hidden_size",
            "64",
        ],
    }
    for expected, cli_args in cases.items():
        result = run_cli("fit", *cli_args, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and lines[-1].startswith("error:") and expected in lines[-1], (
            expected,
            result.stderr[-1500:],
        )
    assert last.stat().st_mtime_ns == before  # nothing overwritten


class CrashAtStep(Callback):
    """A crash in this process (the fast tier's stand-in for a kill): an error after step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"crashed at step {trainer.global_step}")


def test_a_run_crashed_mid_epoch_resumes_to_the_uninterrupted_weights_in_process(tmp_path):
    """The fast tier's exact-resume check: one epoch of 10 steps, last.ckpt every 3; a crash at step 8
    (last.ckpt at step 6, mid-epoch) then --ckpt_path last must train the same batches, so the weights
    equal the uninterrupted run's. Skipping the restore of the loader position fails it (the epoch
    would start over)."""
    one_epoch = ("--trainer.max_epochs", "1")
    assert run_cli("fit", *args("finetune", tmp_path, "whole", *one_epoch), cwd=tmp_path).returncode == 0
    crash = "--trainer.callbacks+={class_path: tests.test_resume.CrashAtStep, init_args: {step: 8}}"
    crashed = run_cli("fit", *args("finetune", tmp_path, "resumed", *one_epoch, crash), cwd=tmp_path)
    assert crashed.returncode == 1 and "crashed at step 8" in crashed.stderr
    assert step_of(tmp_path / "resumed" / "checkpoints" / "last.ckpt") == 6
    resumed = run_cli(
        "fit", *args("finetune", tmp_path, "resumed", *one_epoch, "--ckpt_path", "last"), cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_training(final_state(tmp_path / "whole"), final_state(tmp_path / "resumed"), steps=10)
