"""Structured pruning: importance scores against a hand computation, masked vs physically pruned
models, the parameter target, the saved folder, the stage run from its recipe, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules import PruneModule
from lightning_modules.artifacts.classifiers import load_classifier
from lightning_modules.artifacts.model_folder import write_model_folder
from lightning_modules.methods.pruning import (
    encoder_flops,
    encoder_parameters,
    head_importance,
    head_size,
    layers,
    neuron_importance,
    unit_parameters,
)
from tests.conftest import ENV, ROOT, run_cli, run_script
from tests.test_distill import datamodule, fine_tuned_checkpoint

TINY4 = {  # 4 heads of 8, 32 FFN neurons per layer: room to prune
    "model_type": "bert",
    "vocab_size": 1000,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 32,
    "max_position_embeddings": 128,
}


@pytest.fixture(scope="module", params=["sequence", "token"])
def fitted(request, tmp_path_factory) -> tuple[str, Path, str]:
    """(task, cache dir, a tiny fine-tuned checkpoint)."""
    task, tmp = request.param, tmp_path_factory.mktemp(f"prune-{request.param}")
    return task, tmp, fine_tuned_checkpoint(task, tmp, TINY4, steps=6)


def batch_of(dm, n: int = 8) -> dict[str, torch.Tensor]:
    dm.setup("fit")
    return dm.collate([dict(dm.encoded_split("train")[i]) for i in range(n)])


@pytest.mark.parametrize("fitted", ["sequence"], indirect=True)
def test_taylor_scores_equal_the_gradient_of_an_explicit_gate(fitted):
    """|dL/d gate| of each head and neuron, with gates put in by hand, equals the score computed
    from the output projections' weights and gradients."""
    task, cache, path = fitted
    dm = datamodule(task, cache)
    batch = batch_of(dm)
    model = load_classifier(path, task).train()
    torch.manual_seed(0)
    model.eval()  # no dropout: the two backward passes see the same function
    d = 8
    gates = [(torch.ones(4, requires_grad=True), torch.ones(32, requires_grad=True)) for _ in layers(model)]
    handles = []
    for layer, (head_gate, neuron_gate) in zip(layers(model), gates, strict=True):
        handles.append(
            layer.attention.output.dense.register_forward_pre_hook(
                lambda m, a, g=head_gate: (a[0] * g.repeat_interleave(d),)
            )
        )
        handles.append(layer.output.dense.register_forward_pre_hook(lambda m, a, g=neuron_gate: (a[0] * g,)))
    loss = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    loss.backward()
    for layer, (head_gate, neuron_gate) in zip(layers(model), gates, strict=True):
        torch.testing.assert_close(head_importance(layer), head_gate.grad, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(neuron_importance(layer), neuron_gate.grad, atol=1e-6, rtol=1e-4)
        assert head_gate.grad.abs().sum() > 0 and neuron_gate.grad.abs().sum() > 0
    for handle in handles:
        handle.remove()


def unpruned(fitted) -> tuple:
    """The fitted model in a PruneModule (eval mode) with its data and a batch."""
    task, cache, path = fitted
    dm = datamodule(task, cache)
    module = PruneModule(model_name_or_path=path, task=task, label_names=dm.label_names, target_sparsity=0.5)
    return task, dm, batch_of(dm), module.eval()


def test_a_pruned_model_computes_what_the_masked_model_computes_and_reloads(fitted, tmp_path):
    task, dm, batch, module = unpruned(fitted)
    head_masks, neuron_masks = module.masks("head"), module.masks("neuron")
    head_masks[0][[1, 3]] = 0
    head_masks[2][0] = 0
    neuron_masks[1][:20] = 0
    neuron_masks[2][5::2] = 0
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        masked = module.model(**inputs).logits
        pruned = module.deployable_model().eval()
        torch.testing.assert_close(pruned(**inputs).logits, masked, atol=1e-5, rtol=0)
    assert pruned.config.shrink_pruned == {"heads": [2, 4, 3], "intermediate_sizes": [32, 12, 18]}
    per_head, per_neuron = unit_parameters(module.model)
    assert encoder_parameters(module.model) - encoder_parameters(pruned) == 3 * per_head + 34 * per_neuron
    assert encoder_flops(pruned) < encoder_flops(module.model)
    # the folder a stage writes: shrink reloads it (plain transformers: the slow test below)
    folder = tmp_path / "model"
    write_model_folder(module.deployable_model(), dm.tokenizer, folder, "card")
    assert (folder / "pruned_encoder.py").is_file()
    reloaded = load_classifier(str(folder), task).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, masked, atol=1e-5, rtol=0)


@pytest.mark.slow  # a process of its own: transformers without shrink imported
@pytest.mark.parametrize("fitted", ["sequence"], indirect=True)
def test_a_pruned_folder_loads_in_transformers_with_its_remote_code_only(fitted, tmp_path):
    task, dm, batch, module = unpruned(fitted)
    module.head_mask_0[[1, 3]] = 0
    module.neuron_mask_1[:20] = 0
    folder = tmp_path / "model"
    write_model_folder(module.deployable_model(), dm.tokenizer, folder, "card")
    code = (
        "import json, sys, torch, transformers\n"
        "m = transformers.AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "ids = torch.tensor(json.loads(sys.argv[2]))\n"
        "p = transformers.pipeline('text-classification', model=m, tokenizer=sys.argv[1])\n"
        "print(json.dumps({'names': sorted(sys.modules.keys() & {'lightning_modules', 'datamodules'}),"
        " 'logits': m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.tolist()}))"
    )
    ids = batch["input_ids"][:2, :6]
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder), json.dumps(ids.tolist())],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.splitlines()[-1])
    with torch.no_grad():
        expected = module.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert result["names"] == []
    # the pipeline takes it as the classifier it is
    assert "is not supported" not in out.stderr, out.stderr[-2000:]
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fitted", ["sequence"], indirect=True)
def test_scores_accumulate_the_magnitude_and_the_least_important_heads_go(fitted):
    """What training does between events: each optimizer step adds |dL/d gate| (the explicit gates'
    gradients, as above) to the scores, and an event removes the units with the lowest scores, never
    the highest (a negated score would remove the most important heads and still reach the target)."""
    task, dm, batch, module = unpruned(fitted)
    model = module.model
    d = head_size(model)
    gates = [torch.ones(4, requires_grad=True) for _ in layers(model)]
    handles = [
        layer.attention.output.dense.register_forward_pre_hook(
            lambda m, a, g=g: (a[0] * g.repeat_interleave(d),)
        )
        for layer, g in zip(layers(model), gates, strict=True)
    ]
    model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss.backward()
    for handle in handles:
        handle.remove()
    module.on_before_optimizer_step(None)
    module.on_before_optimizer_step(None)  # a second step with the same gradients: twice the score
    for i, gate in enumerate(gates):
        torch.testing.assert_close(
            getattr(module, f"head_score_{i}"), 2 * gate.grad.abs(), atol=1e-6, rtol=1e-4
        )
    # an event on those scores: the heads removed are the lowest-scoring (per-layer normalised) ones
    scores = [getattr(module, f"head_score_{i}").clone() for i in range(len(gates))]
    normalised = torch.cat([s / s.norm() for s in scores])
    module.log_pruning = lambda: None  # no trainer attached: nothing to log to
    module.trainer = type("Single", (), {"world_size": 1})()
    module.prune_step(module.pruning_events)  # the last event: the whole target
    removed = torch.cat(module.masks("head")) == 0
    assert 0 < int(removed.sum()) < len(removed)
    assert normalised[removed].max() <= normalised[~removed].max()
    # every removed head scores at most what any kept head of its own layer scores
    for i, mask in enumerate(module.masks("head")):
        if (mask == 0).any() and (mask == 1).any():
            assert scores[i][mask == 0].max() <= scores[i][mask == 1].min()


def test_pruning_events_reach_the_parameter_target_and_keep_a_head_per_layer(fitted):
    task, cache, path = fitted
    dm = datamodule(task, cache)
    module = PruneModule(
        model_name_or_path=path, task=task, label_names=dm.label_names, target_sparsity=0.6, pruning_events=3
    )
    before = encoder_parameters(module.model)
    torch.manual_seed(1)
    for i in range(3):  # scores as training would leave them: different per unit
        getattr(module, f"head_score_{i}").copy_(torch.rand(4))
        getattr(module, f"neuron_score_{i}").copy_(torch.rand(32))
    low_head = int(module.head_score_1.argmin())
    module.log_pruning = lambda: None  # no trainer attached: nothing to log to
    module.trainer = type("Single", (), {"world_size": 1})()
    module.prune_step(1)  # cubic schedule: 1 - (2/3)^3 = 70% of the target at the first event
    assert module.head_mask_1[low_head] == 0 or sum(int((m == 0).sum()) for m in module.masks("head")) < 3
    assert all(s.sum() == 0 for s in (module.head_score_0, module.neuron_score_2))  # scores restart
    removed_first = sum(int((m == 0).sum()) for m in module.masks("neuron"))
    assert removed_first == round((1 - (2 / 3) ** 3) * module.targets["neuron"])
    for event in (2, 3):
        for i in range(3):
            getattr(module, f"head_score_{i}").copy_(torch.rand(4))
            getattr(module, f"neuron_score_{i}").copy_(torch.rand(32))
        module.prune_step(event)
    assert all(m.sum() >= 1 for m in module.masks("head"))
    pruned = module.deployable_model()
    per_head, per_neuron = unit_parameters(module.model)
    removed = before - encoder_parameters(pruned)
    assert abs(removed - 0.6 * before) <= per_head + per_neuron  # within one head and one neuron
    # the same fraction of the FLOPs at 128 tokens, give or take the attention products
    assert encoder_flops(pruned) / encoder_flops(module.model) == pytest.approx(0.4, abs=0.05)


def test_prune_stage_from_its_recipe_hands_on_a_smaller_folder_qat_and_export_take(fitted, tmp_path):
    """The demo recipe, shortened: the best checkpoint is fully pruned, the model folder is
    smaller, QAT starts from the folder, and the int8 ONNX export agrees with PyTorch."""
    task, cache, path = fitted
    run = tmp_path / "run"
    result = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs" / f"demo-{task}" / "prune.yaml"),
        "--model.init_args.model_name_or_path",
        path,
        "--model.init_args.teacher",
        "null",
        "--model.init_args.target_sparsity",
        "0.5",
        "--trainer.max_epochs",
        "2",
        "--data.init_args.max_train_samples",
        "160",
        "--data.init_args.max_eval_samples",
        "32",
        "--data.init_args.cache_dir",
        str(cache),
        "--out_dir",
        str(run),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((run / "model" / "config.json").read_text())
    full = TINY4["num_hidden_layers"] * TINY4["num_attention_heads"]
    assert sum(config["shrink_pruned"]["heads"]) < full
    model = load_classifier(str(run / "model"), task)
    before = load_classifier(path, task)
    ratio = encoder_parameters(model) / encoder_parameters(before)
    assert ratio == pytest.approx(0.5, abs=0.05)
    card = (run / "model" / "README.md").read_text()
    assert "trust_remote_code=True" in card and "target_sparsity" in card
    best_path = next((run / "checkpoints").glob("epoch*.ckpt"))
    ptq = run_script(
        "export.py",
        "ptq",
        "--model",
        str(best_path),
        "--out",
        str(tmp_path / "ptq.int8.ckpt"),
        "--data",
        str(ROOT / "configs" / f"demo-{task}" / "qat.yaml"),
        "--set",
        f"cache_dir={cache}",
        "--set",
        "max_train_samples=64",
        cwd=tmp_path,
    )
    assert ptq.returncode == 0, ptq.stderr[-2000:]
    assert encoder_parameters(
        load_classifier(str(tmp_path / "ptq.int8.ckpt"), task, int8_ok=True)
    ) < encoder_parameters(before)
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    assert int(best["state_dict"]["events_done"]) == 8  # the monitor only saw fully pruned models
    if task == "token":  # QAT and export of a pruned model: the same code for both tasks
        return
    qat = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs" / f"demo-{task}" / "qat.yaml"),
        "--model.init_args.model_name_or_path",
        str(run / "model"),
        "--model.init_args.teacher",
        "null",
        "--trainer.max_epochs",
        "1",
        "--data.init_args.max_train_samples",
        "64",
        "--data.init_args.max_eval_samples",
        "32",
        "--data.init_args.cache_dir",
        str(cache),
        "--out_dir",
        str(tmp_path / "qat"),
        cwd=tmp_path,
    )
    assert qat.returncode == 0, qat.stderr[-3000:]
    int8 = json.loads((tmp_path / "qat" / "model" / "config.json").read_text())
    assert int8["shrink_pruned"] == config["shrink_pruned"] and "shrink_quantization" in int8
    out = tmp_path / "onnx-int8"
    export = run_script(
        "export.py",
        "onnx",
        "--model",
        str(tmp_path / "qat" / "model"),
        "--out",
        str(out),
        "--data",
        str(ROOT / "configs" / f"demo-{task}" / "qat.yaml"),
        "--int8",
        "--set",
        f"cache_dir={cache}",
        "--set",
        "max_eval_samples=64",
        cwd=tmp_path,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["agreement"] >= 0.99 and parity["max_logit_diff"] < 1e-3, parity
    assert "auto_map" not in json.loads((out / "config.json").read_text())  # an ONNX graph needs no code


@pytest.mark.parametrize("fitted", ["sequence"], indirect=True)
@pytest.mark.parametrize(
    "args,message",
    [
        (["--model.init_args.target_sparsity", "1.5"], "target_sparsity is 1.5: give a fraction in (0, 1)"),
        (["--model.init_args.target_sparsity", "0"], "target_sparsity is 0.0: give a fraction in (0, 1)"),
        (["--model.init_args.keep_layers", "[0, 7]"], "names layers outside 0..2"),
        (["--model.init_args.target_sparsity", "0.99"], "would remove every head or neuron of a layer"),
    ],
)
def test_bad_pruning_input_is_one_line(fitted, tmp_path, args, message):
    task, cache, path = fitted
    result = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs" / f"demo-{task}" / "prune.yaml"),
        "--model.init_args.model_name_or_path",
        path,
        "--model.init_args.teacher",
        "null",
        *args,
        "--data.init_args.cache_dir",
        str(cache),
        "--out_dir",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        line for line in result.stderr.splitlines() if "error" in line.lower()
    ]
    assert not (tmp_path / "run" / "checkpoints").exists()
