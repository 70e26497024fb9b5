"""LoRA fine-tuning: adapters merged into the weights give the adapter model's logits, checkpoints
hold only what trains, and the recipe's model folder is an ordinary model."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_modules import FineTuneModule
from lightning_modules.artifacts.classifiers import load_classifier
from tests.conftest import ROOT, run_cli
from tests.test_distill import TINY, datamodule


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """A tiny 'pretrained' classifier folder (LoRA adapts a pretrained model)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = tmp_path_factory.mktemp("pretrained") / "bert"
    torch.manual_seed(0)
    config = dict(TINY)
    AutoModelForSequenceClassification.from_config(
        AutoConfig.for_model(config.pop("model_type"), **config)
    ).save_pretrained(folder)
    return str(folder)


def test_merged_lora_model_gives_the_adapter_models_logits(pretrained, tmp_path):
    dm = datamodule("sequence", tmp_path)
    module = FineTuneModule(
        model_name_or_path=pretrained,
        task="sequence",
        label_names=dm.label_names,
        lora={"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]},
    )
    trained = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n or "classifier" in n for n in trained)
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters weights so the merge matters
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    module.eval()
    dm.setup("fit")
    batch = dm.collate([dict(dm.encoded_split("train")[i]) for i in range(8)])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        adapted = module.model(**inputs).logits
        merged = module.deployable_model().eval()
        torch.testing.assert_close(merged(**inputs).logits, adapted, atol=1e-5, rtol=0)
        plain = load_classifier(pretrained, "sequence").eval()(**inputs).logits
    assert (adapted - plain).abs().max() > 1e-3  # the adapters changed the function
    assert type(merged).__name__ == "BertForSequenceClassification"


def test_lora_recipe_checkpoints_hold_adapters_and_the_folder_is_merged(pretrained, tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs/demo-sequence/finetune.yaml"),
        "--model.init_args.model_config",
        "null",
        "--model.init_args.model_name_or_path",
        pretrained,
        "--model.init_args.lora",
        "{r: 4, lora_alpha: 8}",
        "--trainer.max_epochs",
        "1",
        "--data.init_args.max_train_samples",
        "96",
        "--data.init_args.max_eval_samples",
        "32",
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--out_dir",
        str(run),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    full = load_classifier(str(run / "model"), "sequence")
    assert len(last["state_dict"]) < len(full.state_dict()) / 3 and last["lora"]["r"] == 4
    assert all("lora_" in k or "classifier" in k for k in last["state_dict"])
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    # resuming rebuilds the frozen base and loads the adapters: test the best checkpoint
    tested = run_cli(
        "test",
        "--config",
        str(ROOT / "configs/demo-sequence/finetune.yaml"),
        "--model.init_args.model_config",
        "null",
        "--model.init_args.model_name_or_path",
        pretrained,
        "--model.init_args.lora",
        "{r: 4, lora_alpha: 8}",
        "--data.init_args.max_eval_samples",
        "32",
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--out_dir",
        str(run),
        "--ckpt_path",
        "best",
        cwd=tmp_path,
    )
    assert tested.returncode == 0, tested.stderr[-3000:]
    # the adapter checkpoint is not a model: one line pointing at the folder
    teacher = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs/demo-sequence/distill.yaml"),
        "--model.init_args.teacher",
        str(run / "checkpoints" / "last.ckpt"),
        "--out_dir",
        str(tmp_path / "s"),
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        cwd=tmp_path,
    )
    assert teacher.returncode == 2 and "holds LoRA adapters only" in teacher.stderr
