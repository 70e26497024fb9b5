"""Every shipped recipe parses into a full config with one command: the shared callback, logger and
data files it names are composed in (jsonargparse resolves them relative to the recipe)."""

from __future__ import annotations

import pytest
import yaml

from lightning_modules.compress.plan import build_plan
from lightning_modules.compress.recipe import read_recipe
from lightning_modules.train import cli
from tests.conftest import ROOT

STAGES = ("finetune", "distill", "prune", "qat")
GLUE = ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "stsb")  # sst2 is below with the demo and CoNLL
ALL_RECIPES = sorted(p for p in (ROOT / "configs").glob("*/*.yaml") if p.stem in STAGES)
RECIPES = [p for p in ALL_RECIPES if p.parent.name not in GLUE]


def test_one_convention_task_folder_and_stage_name():
    """configs/<task>/<stage>.yaml and nothing else: every folder a task (or the shared callbacks),
    every file a stage, the task's data.yaml, or the one shared logger."""
    folders = sorted(p.name for p in (ROOT / "configs").iterdir() if p.is_dir())
    assert folders == sorted(
        ["callbacks", "conll2003", "sst2", "demo-sequence", "demo-token", "demo-pair", "demo-rating", *GLUE]
    )
    assert [p.name for p in (ROOT / "configs").glob("*.yaml")] == ["wandb.yaml"]
    for folder in folders:
        if folder != "callbacks":
            names = {p.stem for p in (ROOT / "configs" / folder).glob("*.yaml")}
            assert names <= {"data", "compress", *STAGES}, folder
            assert {"data", "finetune", "distill", "qat", "compress"} <= names, folder
    # (demo sequence, demo token, sst2, conll2003) x 4 stages, demo pairs and rating x 3, GLUE x 3
    assert len(RECIPES) == 22 and len(ALL_RECIPES) == 22 + 3 * len(GLUE)


def test_no_figures_in_recipe_comments():
    """Speed-ups and scores go stale in comments: they live in docs/ with their command and CPU."""
    import re

    for path in (ROOT / "configs").rglob("*.yaml"):
        for line in path.read_text().splitlines():
            comment = line.partition("#")[2]
            assert not re.search(r"\d(\.\d+)?x\b|\d+(\.\d+)? points?\b|\d+%", comment), f"{path}: {line}"


@pytest.mark.parametrize(
    "recipe", sorted((ROOT / "configs").glob("*/compress.yaml")), ids=lambda p: p.parent.name
)
def test_compress_recipe_plans_its_chain_on_the_task_recipes(recipe):
    """Every task's compress recipe reads and plans: a teacher, its gate, and per candidate the
    stages through the int8 ONNX folder and its measurement, on the same folder's stage recipes."""
    plan = build_plan(read_recipe(recipe))
    assert plan.teacher is not None and plan.teacher.recipe == recipe.parent / "finetune.yaml"
    for candidate in plan.candidates:
        kinds = [s.kind for s in candidate.steps]
        assert kinds[0] == "distill" and kinds[-3:] == ["qat", "export", "measure"], kinds
        assert all(s.recipe is None or s.recipe.parent == recipe.parent for s in candidate.steps)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_resolves_to_a_full_config(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    callbacks = [c["class_path"].rsplit(".", 1)[-1] for c in config["trainer"]["callbacks"]]
    assert callbacks == [
        "ModelCheckpoint",
        "LearningRateMonitor",
        "ResumeCheckpoint",
        "ThroughputLogger",
        "PredictionWriter",
    ]
    monitor = config["trainer"]["callbacks"][0]["init_args"]["monitor"]
    token = recipe.parent.name in ("demo-token", "conll2003")
    assert monitor == (
        "val/f1" if token else "val/pearson" if recipe.parent.name == "demo-rating" else "val/accuracy"
    )
    assert config["trainer"]["logger"]["class_path"].endswith("WandbLogger")
    # the real-data recipes compile where it pays (auto); the demo's stay eager, as do QAT and pruning
    compiles = not recipe.parent.name.startswith("demo") and recipe.stem in ("finetune", "distill")
    assert config["model"]["init_args"].get("torch_compile", False) == ("auto" if compiles else False)
    # ... and split batches by length on CPU, on random batches: the same batches as the Trainer's default
    assert config["model"]["init_args"].get("split_by_length", False) == ("auto" if compiles else False)
    assert config["data"]["init_args"].get("group_by_length") is False
    assert config["data"]["class_path"].endswith(
        "TokenClassificationDataModule" if token else "SequenceClassificationDataModule"
    )


def test_glue_data_files_are_the_task_table():
    """``configs/TASK/data.yaml`` of the GLUE tasks say what ``datamodules.glue.GLUE_TASKS`` says
    (run_glue.py's task_to_keys in one place)."""
    from datamodules.glue import GLUE_TASKS, data_config

    assert sorted(GLUE_TASKS) == sorted([*GLUE, "sst2"])
    for task in GLUE_TASKS:
        assert yaml.safe_load((ROOT / "configs" / task / "data.yaml").read_text()) == data_config(task)


@pytest.mark.parametrize("recipe", ["cola/finetune", "mrpc/distill", "stsb/distill", "mnli/qat"])
def test_glue_recipes_resolve_with_their_metric_and_pairs(recipe, capsys):
    from datamodules.glue import GLUE_TASKS

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(ROOT / "configs" / f"{recipe}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    spec = GLUE_TASKS[recipe.split("/")[0]]
    assert config["trainer"]["callbacks"][0]["init_args"]["monitor"] == f"val/{spec['monitor']}"
    assert config["model"]["init_args"]["metrics"] == (spec["metrics"] or None)
    assert config["data"]["init_args"]["text_pair_column"] == spec["keys"][1]
