"""``model.split_by_length``: a training batch run as sub-batches of similar length has the loss and
gradients of the whole padded batch (fine-tuning for both tasks, BERT and MPNet; distillation with
hidden-state and attention transfer), the cut is the cheapest, and a fit trains to the same weights.
Exact resume mid-epoch with split batches (dropout on) is in test_resume (slow: it kills a process)."""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch

from datamodules import InputError
from lightning_modules import DistillationModule, FineTuneModule, QATModule
from lightning_modules.methods import length_split
from tests.test_compile import ONE_LAYER, distill_from_teacher_cache, weights
from tests.test_distill import STUDENT, TINY, datamodule, fine_tuned_checkpoint, trainer

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def cost(parts: list[tuple[int, int]], lengths: list[int], overhead: int) -> int:
    """Padded tokens (rows x the part's longest) plus ``overhead`` per part."""
    return sum((end - start) * lengths[end - 1] + overhead for start, end in parts)


def test_the_cut_is_the_cheapest_of_all_cuts():
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        lengths = sorted(torch.randint(1, 60, (7,), generator=generator).tolist())
        overhead = int(torch.randint(0, 200, (), generator=generator))
        best = min(
            cost(list(itertools.pairwise((0, *cuts, len(lengths)))), lengths, overhead)
            for k in range(len(lengths))
            for cuts in itertools.combinations(range(1, len(lengths)), k)
        )
        parts = length_split.length_split(lengths, overhead)
        assert parts[0][0] == 0 and parts[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
        assert cost(parts, lengths, overhead) == best
    assert length_split.length_split([5] * 32) == [(0, 32)]  # equal lengths: nothing to gain


def loss_and_gradients(
    module, batch, split: bool, step
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    module.split_batches = split
    module.zero_grad()
    losses = step(batch)
    losses["loss"].backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def assert_same(split, whole):
    (losses, grads), (losses_whole, grads_whole) = split, whole
    assert losses.keys() == losses_whole.keys() and grads.keys() == grads_whole.keys()
    for k, v in losses.items():
        torch.testing.assert_close(v, losses_whole[k], rtol=1e-5, atol=1e-6, msg=k)
    for k, v in grads.items():
        torch.testing.assert_close(v, grads_whole[k], rtol=1e-4, atol=1e-6, msg=k)


def count_calls(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
@pytest.mark.parametrize("task", ["sequence", "token"])
def test_split_batch_has_the_loss_and_gradients_of_the_padded_batch(tmp_path, monkeypatch, task, model_type):
    monkeypatch.setattr(length_split, "PART_OVERHEAD_TOKENS", 0)  # one part per distinct length
    L.seed_everything(0)
    dm = datamodule(task, tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 3  # the demo batch has rows of several lengths
    if task == "token":  # the shortest rows' part has no labelled token: the model's own mean is NaN there
        batch["labels"][lengths == lengths.min()] = -100
    config = dict(TINY, model_type=model_type, **NO_DROPOUT)
    module = FineTuneModule(model_config=config, task=task, label_names=dm.label_names).train()
    calls = count_calls(module.model)

    def step(b):  # the logits of real tokens (padded positions are zeros when split: no loss reads them)
        output = module(b, labels=b["labels"])
        logits = output.logits if task == "sequence" else output.logits[b["attention_mask"].bool()]
        return {"loss": output.loss, "logits": logits}

    whole = loss_and_gradients(module, batch, False, step)
    assert calls[0] == 1
    split = loss_and_gradients(module, batch, True, step)
    assert calls[0] - 1 == len(set(lengths.tolist()))  # it did run in parts
    assert "model.bert.embeddings.word_embeddings.weight" in split[1] or model_type == "mpnet"
    assert_same(split, whole)


def test_split_distillation_with_hidden_and_attention_transfer_has_the_padded_batchs_losses(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(length_split, "PART_OVERHEAD_TOKENS", 0)
    teacher = fine_tuned_checkpoint("token", tmp_path)
    dm = datamodule("token", tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module = DistillationModule(
        teacher=teacher,
        student_config=dict(STUDENT, **NO_DROPOUT),
        task="token",
        label_names=dm.label_names,
        hidden_weight=1.0,
        attention_weight=1.0,
    ).train()
    teacher_calls = count_calls(module.teacher.model)
    whole = loss_and_gradients(module, batch, False, module.distillation_losses)
    split = loss_and_gradients(module, batch, True, module.distillation_losses)
    assert teacher_calls[0] > 2  # the teacher ran in parts too
    assert set(whole[0]) == {"loss", "kd_loss", "ce_loss", "hidden_loss", "attention_loss"}
    assert_same(split, whole)


def fit(tmp_path, split, compiled=False) -> FineTuneModule:
    L.seed_everything(0)
    dm = datamodule("sequence", tmp_path / "cache")
    module = FineTuneModule(
        model_config=ONE_LAYER,
        task="sequence",
        label_names=dm.label_names,
        learning_rate=1e-3,
        split_by_length=split,
        torch_compile=compiled,
    )
    trainer(max_steps=6).fit(module, dm)
    return module


def test_a_split_fit_trains_to_the_weights_of_a_whole_batch_fit_compiled_or_not(tmp_path, monkeypatch):
    monkeypatch.setattr(length_split, "PART_OVERHEAD_TOKENS", 0)
    whole = fit(tmp_path, False)
    assert not whole.split_batches
    for compiled in (False, "eager"):
        module = fit(tmp_path, "auto", compiled)  # auto: on, training on CPU
        assert module.split_batches
        for key, value in weights(module).items():
            torch.testing.assert_close(value, weights(whole)[key], rtol=0, atol=2e-6, msg=key)


def test_stages_that_train_on_whole_batches_refuse_split_in_one_line(tmp_path):
    checkpoint = fine_tuned_checkpoint("sequence", tmp_path)
    with pytest.raises(InputError, match="split_by_length is for fine-tuning and distillation: QATModule"):
        QATModule(
            model_name_or_path=checkpoint,
            task="sequence",
            label_names=["negative", "positive"],
            split_by_length=True,
        )
    with pytest.raises(InputError, match="split_by_length is 'yes': it takes true, false or auto"):
        FineTuneModule(model_config=TINY, task="sequence", label_names=["a", "b"], split_by_length="yes")
    QATModule(
        model_name_or_path=checkpoint,
        task="sequence",
        label_names=["negative", "positive"],
        split_by_length="auto",
    )


def test_split_distillation_from_the_teacher_cache_trains_to_the_weights_of_whole_batches(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(length_split, "PART_OVERHEAD_TOKENS", 0)
    teacher = fine_tuned_checkpoint("sequence", tmp_path)
    modules = [
        distill_from_teacher_cache(tmp_path, teacher, split_by_length=split) for split in (False, True)
    ]
    assert [m.split_batches for m in modules] == [False, True]
    whole, split = (weights(m) for m in modules)
    for key, value in split.items():
        torch.testing.assert_close(value, whole[key], rtol=0, atol=2e-6, msg=key)
