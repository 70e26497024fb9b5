"""``shrink compress``: the shipped demo recipe end to end (short stages), what a changed pruning
level re-runs, a budget no candidate meets, the teacher gate and bad input. The kill-and-rerun
test needs a process of its own: test_compress_kill.py (slow tier)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification

from datamodules.demo import demo_tokenizer
from lightning_modules.commands.shrink import main as shrink_main
from lightning_modules.compress.plan import build_plan
from lightning_modules.compress.recipe import read_recipe
from tests.conftest import ROOT, run_in_process

DEMO = ROOT / "configs" / "demo-sequence"
SHORT = {  # the shipped stage recipes, shorter: the chain is what is under test here
    "finetune": {"trainer.max_epochs": 4},
    "distill": {"trainer.max_epochs": 1},
    "prune": {"trainer.max_epochs": 1},
    "qat": {"trainer.max_epochs": 1},
}


def recipe(tmp: Path, name: str = "compress.yaml", **changes: object) -> Path:
    """The shipped demo compress recipe with its paths made absolute, shorter stages, and ``changes``."""
    values = yaml.safe_load((DEMO / "compress.yaml").read_text())
    values["data"] = yaml.safe_load((DEMO / "data.yaml").read_text())
    values["data"]["init_args"].update(max_train_samples=640, max_eval_samples=100)
    values["teacher"] = {"finetune": str(DEMO / "finetune.yaml")}
    for student in values["students"].values():
        student["distill"] = str(DEMO / student["distill"])
    values["quantize"]["recipe"] = str(DEMO / values["quantize"]["recipe"])
    values["prune_recipe"] = str(DEMO / "prune.yaml")
    values["set"] = SHORT
    values["budget"] = {"points": 50}
    values.update(changes)
    path = tmp / name
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def compress(config: Path, out: Path, *extra: str):
    return run_in_process(
        shrink_main, ["compress", "--config", str(config), "--out_dir", str(out), *extra], ROOT
    )


def finished(out: Path) -> dict[str, float]:
    """Each finished step folder and when its done.json was written."""
    return {p.parent.name: p.stat().st_mtime for p in (out / "steps").glob("*/done.json")}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compress")
    # stages this short leave the students well below the teacher: a wide budget, so that the choice
    # among candidates is what is tested (the shipped recipe and its budget: python scripts/demo.py)
    result = compress(recipe(tmp), tmp / "out")
    return tmp, result


def test_the_demo_recipe_end_to_end(chain):
    tmp, result = chain
    out = tmp / "out"
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    rows = {r["model"]: r for r in report["rows"]}
    assert set(rows) == {
        "teacher fp32",
        "teacher fp32: ORT dynamic int8",
        "teacher fp32: ORT static int8",
        "small",
        "small-pruned50",
    }
    # the choice: within the budget, the fastest at batch 1 of those (the objective)
    floor = report["budget"]["floor"]
    assert floor == pytest.approx(report["teacher"] - 0.5, abs=1e-4)
    within = [r for n, r in rows.items() if not n.startswith("teacher") and r["accuracy"] >= floor - 1e-9]
    assert report["within_budget"] and within
    assert report["chosen"] == min(within, key=lambda r: r["latency_ms_p50"])["model"]
    assert (
        rows[report["chosen"]]["speedup_vs_teacher"] > 1 and rows[report["chosen"]]["smaller_vs_teacher"] > 3
    )
    # as deployed: the candidate's score is its int8 ONNX folder's, the same as its own measurement
    measured = next((out / "steps").glob(f"measure-{report['chosen']}-*")) / "benchmark.json"
    assert json.loads(measured.read_text())["rows"][0]["accuracy"] == rows[report["chosen"]]["accuracy"]
    assert 0 <= report["test"]["accuracy"] <= 1  # the chosen ONNX folder on the test split
    # OUT/best: the int8 ONNX folder and its fp32 folder, whose card keeps the whole lineage
    assert (out / "best" / "onnx" / "model.onnx").is_file()
    card = (out / "best" / "model" / "README.md").read_text()
    lineage = card[card.index("## Lineage") :]
    expected = (
        ["DistillationModule", "PruneModule"] if "pruned" in report["chosen"] else ["DistillationModule"]
    )
    assert all(stage in lineage for stage in ["FineTuneModule", *expected])
    # the report, its plot and W&B; the progress lines; one teacher cache for every stage
    assert "**" + report["chosen"] + "**" in (out / "report.md").read_text()
    assert (out / "report.png").stat().st_size > 0 and list((out / "wandb").glob("offline-run-*"))
    assert (
        "[1/11] teacher teacher (running)" in result.stderr
        and "[3/11] distill small (running, ETA" in result.stderr
        and "front so far: small" in result.stderr
    )
    assert len(list((out / "cache" / "teacher").glob("*.pt"))) == 1
    assert sum("teacher cache: reusing" in p.read_text() for p in (out / "steps").glob("*/log.txt")) == 3
    # only what resume needs and the final folders: no checkpoints of finished stages
    assert not list(out.rglob("*.ckpt"))
    assert 0 < report["disk_bytes"] <= sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def test_the_same_command_again_runs_nothing_and_a_changed_level_runs_its_branch(chain):
    tmp, _ = chain
    out = tmp / "out"
    before = finished(out)
    again = compress(recipe(tmp), out)
    assert again.returncode == 0 and "running" not in again.stderr.replace("running, ETA", "")
    assert finished(out) == before
    spec = {"small": {"distill": str(DEMO / "distill.yaml"), "prune": [0, 0.3]}}
    changed = compress(recipe(tmp, "changed.yaml", students=spec), out)
    assert changed.returncode in (0, 3), changed.stderr[-3000:]
    after = finished(out)
    kept = {k: v for k, v in before.items() if k in after and after[k] == v}
    new = sorted(k.rsplit("-", 1)[0] for k in set(after) - set(before))
    # the teacher, its gate, the distillation and the unpruned branch are reused; the 30% branch and
    # the report (it times every candidate together) and the chosen one's test score are new
    assert {k.rsplit("-", 1)[0] for k in kept} >= {
        "teacher-teacher",
        "gate-teacher",
        "distill-small",
        "qat-small",
        "export-small",
        "measure-small",
    }
    assert new[:5] == [
        "export-small-pruned30",
        "measure-small-pruned30",
        "prune-small-pruned30",
        "qat-small-pruned30",
        "report-all",
    ]


def test_a_budget_no_candidate_meets_still_writes_the_best_and_exits_3(chain, tmp_path):
    tmp, _ = chain
    teacher = next((tmp / "out" / "steps").glob("teacher-teacher-*")) / "model"
    weak = {"weak": {"distill": str(DEMO / "distill.yaml"), "set": {"trainer.max_steps": 2}, "prune": [0]}}
    short = {**SHORT, "qat": {"trainer.max_steps": 1}}
    config = recipe(
        tmp_path, teacher={"model": str(teacher)}, students=weak, budget={"points": 0.0}, set=short
    )
    result = compress(config, tmp_path / "out")
    assert result.returncode == 3, result.stderr[-3000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("no candidate is within the budget: the best one found (weak")
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["chosen"] == "weak" and not report["within_budget"]
    assert (tmp_path / "out" / "best" / "onnx" / "model.onnx").is_file() and (
        tmp_path / "out" / "report.md"
    ).is_file()


def untrained_teacher(folder: Path) -> Path:
    config = BertConfig(
        vocab_size=1000,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    demo_tokenizer("~/.cache/shrink").save_pretrained(folder)
    return folder


def test_a_teacher_at_chance_stops_the_chain_before_distillation(tmp_path):
    teacher = untrained_teacher(tmp_path / "teacher")
    result = compress(recipe(tmp_path, teacher={"model": str(teacher)}), tmp_path / "out")
    assert result.returncode == 4, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("stopped: the teacher scores accuracy") and "gate: {go_on: true}" in last
    assert not list((tmp_path / "out" / "steps").glob("distill-*"))


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_bad_input_is_one_line_exit_2_and_nothing_lost(chain, tmp_path):
    tmp, _ = chain
    int8 = next((tmp / "out" / "steps").glob("qat-small-*")) / "model"
    token = tmp_path / "token-model"
    token.mkdir()
    (token / "config.json").write_text(json.dumps({"architectures": ["BertForTokenClassification"]}))
    other = tmp_path / "other"  # another pipeline's OUT: same files, other data
    (other / "steps").mkdir(parents=True)
    (other / "compress.json").write_text(
        json.dumps({"task": "datamodules.TokenClassificationDataModule", "data": "{}"})
    )
    stage_run = tmp_path / "stage-run"  # a stage's run folder, not a pipeline's
    (stage_run / "checkpoints").mkdir(parents=True)
    (stage_run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    small = {"small": {"distill": str(DEMO / "distill.yaml"), "prune": [0]}}
    cases = {
        "budget.points in": (recipe(tmp_path, "a.yaml", budget={"points": "one"}), None),
        "an accuracy budget cannot be negative": (recipe(tmp_path, "b.yaml", budget={"points": -1}), None),
        "teacher.model /no/such/teacher does not exist": (
            recipe(tmp_path, "c.yaml", teacher={"model": "/no/such/teacher"}),
            None,
        ),
        "is an int8 model: give the fp32 model": (
            recipe(tmp_path, "d.yaml", teacher={"model": str(int8)}),
            None,
        ),
        "is a token-classification model but the data is sequence": (
            recipe(
                tmp_path,
                "e.yaml",
                students={
                    "t": {**small["small"], "set": {"model.init_args.student_model_name_or_path": str(token)}}
                },
            ),
            None,
        ),
        "holds another pipeline's results": (recipe(tmp_path, "f.yaml", students=small), other),
        "holds files that shrink compress did not write": (
            recipe(tmp_path, "g.yaml", students=small),
            stage_run,
        ),
    }
    for expected, (config, out) in cases.items():
        out = out or tmp_path / "fresh"
        before = digest(out) if out.exists() else {}
        result = compress(config, out)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (
            expected,
            result.stderr[-2000:],
        )
        assert expected in lines[0], (expected, lines[0])
        assert (digest(out) if out.exists() else {}) == before, expected


def keys(plan) -> dict[tuple[str, str], str]:
    steps = [plan.teacher, plan.gate, *(s for c in plan.candidates for s in c.steps)]
    return {(s.kind, s.name): s.key for s in steps}


def test_steps_are_keyed_by_what_produced_them(tmp_path):
    base = keys(build_plan(read_recipe(recipe(tmp_path, "a.yaml"))))
    spec = {"small": {"distill": str(DEMO / "distill.yaml"), "prune": [0, 0.3]}}
    level = keys(build_plan(read_recipe(recipe(tmp_path, "b.yaml", students=spec))))
    # another pruning level: its own branch is new, every other step keeps its key (and its output)
    assert all(base[k] == level[k] for k in base.keys() & level.keys())
    assert set(level) - set(base) == {
        (kind, "small-pruned30") for kind in ("prune", "qat", "export", "measure")
    }
    # a longer QAT: every candidate's int8 step and what follows it, nothing before
    qat = keys(
        build_plan(read_recipe(recipe(tmp_path, "c.yaml", set={**SHORT, "qat": {"trainer.max_epochs": 2}})))
    )
    changed = {k for k in base if base[k] != qat[k]}
    assert changed == {
        (kind, name) for kind in ("qat", "export", "measure") for name in ("small", "small-pruned50")
    }
    # other data: everything
    data = yaml.safe_load((DEMO / "data.yaml").read_text())
    data["init_args"]["max_length"] = 32
    other = keys(build_plan(read_recipe(recipe(tmp_path, "d.yaml", data=data))))
    assert all(base[k] != other[k] for k in base)


def test_the_vocabulary_step_reads_the_students_transfer_text(tmp_path):
    """A student distilled with transfer text learned its tokens: its vocabulary step keeps them too,
    and another transfer file re-runs that step, not the other student's."""
    transfer = {"data.init_args.transfer_files": ["a.txt"], "data.transfer_ratio": 3}
    spec = {
        "small": {"distill": str(DEMO / "distill.yaml"), "prune": [0], "set": transfer},
        "plain": {"distill": str(DEMO / "distill.yaml"), "prune": [0]},
    }
    plan = build_plan(read_recipe(recipe(tmp_path, "a.yaml", students=spec, prune_vocabulary=True)))
    vocabulary = {c.name: next(s for s in c.steps if s.kind == "vocabulary") for c in plan.candidates}
    assert "--set" not in vocabulary["plain-vocab"].args
    args = vocabulary["small-vocab"].args
    assert [args[i + 1] for i, a in enumerate(args) if a == "--set"] == [
        'transfer_files=["a.txt"]',
        "transfer_ratio=3",
    ]
    spec["small"]["set"] = {**transfer, "data.init_args.transfer_files": ["b.txt"]}
    other = keys(build_plan(read_recipe(recipe(tmp_path, "b.yaml", students=spec, prune_vocabulary=True))))
    base = keys(plan)
    assert {k for k in base if base[k] != other[k]} == {("distill", "small")} | {
        (kind, "small-vocab") for kind in ("vocabulary", "qat", "export", "measure")
    }


def test_a_pruned_vocabulary_that_fails_its_check_keeps_the_full_one(chain, tmp_path):
    """prune-vocab refuses a vocabulary that loses accuracy; the chain goes on with the full one and
    the report says so (a negative max_drop makes every check fail)."""
    tmp, _ = chain
    teacher = next((tmp / "out" / "steps").glob("teacher-teacher-*")) / "model"
    config = recipe(
        tmp_path,
        teacher={"model": str(teacher)},
        students={"small": {"distill": str(DEMO / "distill.yaml"), "prune": [0]}},
        prune_vocabulary={"max_drop": -1, "keep_first": 0},
    )
    result = compress(config, tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "small-vocab: the pruned vocabulary failed its check" in result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["chosen"] == "small-vocab" and report["notes"][0].startswith(
        "small-vocab: full vocabulary kept"
    )
    distilled = next((tmp_path / "out" / "steps").glob("distill-small-*")) / "model" / "tokenizer.json"
    assert (tmp_path / "out" / "best" / "model" / "tokenizer.json").read_bytes() == distilled.read_bytes()
