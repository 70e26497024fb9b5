"""Every shipped recipe parses into a full config with one command: the shared callback, logger and
data files it names are composed in (jsonargparse resolves them relative to the recipe)."""

from __future__ import annotations

import pytest
import yaml

from lightning_modules import cli
from tests.conftest import ROOT

STAGES = ("finetune", "distill", "prune", "qat")
RECIPES = sorted(p for p in (ROOT / "configs").glob("*/*.yaml")
                 if p.stem in STAGES or p.stem.endswith(tuple(f"_{s}" for s in STAGES)))  # fmt: skip


def test_one_recipe_per_task_and_stage():
    # (demo sequence, demo token, sst2, conll2003) x 4 stages, demo pairs and rating x 3 (no pruning)
    assert len(RECIPES) == 22


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_resolves_to_a_full_config(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    callbacks = [c["class_path"].rsplit(".", 1)[-1] for c in config["trainer"]["callbacks"]]
    assert callbacks == ["ModelCheckpoint", "LearningRateMonitor", "ResumeCheckpoint", "ThroughputLogger",
                         "PredictionWriter"]  # fmt: skip
    monitor = config["trainer"]["callbacks"][0]["init_args"]["monitor"]
    token = "token" in recipe.stem or recipe.parent.name == "conll2003"
    assert monitor == ("val/f1" if token else "val/pearson" if "rating" in recipe.stem else "val/accuracy")
    assert config["trainer"]["logger"]["class_path"].endswith("WandbLogger")
    # the real-data recipes compile where it pays (auto); the demo's stay eager, as do QAT and pruning
    compiles = recipe.parent.name != "demo" and recipe.stem in ("finetune", "distill")
    assert config["model"]["init_args"].get("torch_compile", False) == ("auto" if compiles else False)
    # ... and split batches by length on CPU, on random batches: the same batches as the Trainer's default
    assert config["model"]["init_args"].get("split_by_length", False) == ("auto" if compiles else False)
    assert config["data"]["init_args"].get("group_by_length") is False
    assert config["data"]["class_path"].endswith("TokenClassificationDataModule" if token else
                                                  "SequenceClassificationDataModule")  # fmt: skip


def test_glue_data_files_are_the_task_table():
    """``configs/glue/TASK/data.yaml`` say what ``datamodules.glue.GLUE_TASKS`` says (run_glue.py's
    task_to_keys in one place)."""
    from datamodules.glue import GLUE_TASKS, data_config

    assert sorted(p.name for p in (ROOT / "configs" / "glue").iterdir() if p.is_dir()) == sorted(GLUE_TASKS)
    for task in GLUE_TASKS:
        assert yaml.safe_load((ROOT / "configs" / "glue" / task / "data.yaml").read_text()) == data_config(
            task
        )
        assert sorted(p.stem for p in (ROOT / "configs" / "glue" / task).glob("*.yaml")) == [
            "data", "distill", "finetune", "qat"]  # fmt: skip


@pytest.mark.parametrize("recipe", ["cola/finetune", "mrpc/distill", "stsb/distill", "mnli/qat"])
def test_glue_recipes_resolve_with_their_metric_and_pairs(recipe, capsys):
    from datamodules.glue import GLUE_TASKS

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(ROOT / "configs" / "glue" / f"{recipe}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    spec = GLUE_TASKS[recipe.split("/")[0]]
    assert config["trainer"]["callbacks"][0]["init_args"]["monitor"] == f"val/{spec['monitor']}"
    assert config["model"]["init_args"]["metrics"] == (spec["metrics"] or None)
    assert config["data"]["init_args"]["text_pair_column"] == spec["keys"][1]
