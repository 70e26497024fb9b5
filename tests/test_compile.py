"""``model.torch_compile``: the compiled model computes what the eager one does, keeps its parameter
names (so checkpoints and model folders), resumes mid-epoch exactly in bf16-mixed, and distils with
the teacher cache; the stages that train eager refuse it with one line. These use dynamo's ``eager``
backend: the same graph capture, guards and recompiles as inductor, without AOT autograd and kernel
generation (5 s here; ``aot_eager`` 11 s, inductor 80 s on 2 cores). DDP with ``aot_eager`` is in
test_ddp; inductor's speed is measured by ``scripts/bench/bench_vs_trainer.py --compile``."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules import InputError
from lightning_modules import DistillationModule, FineTuneModule, QATModule
from tests.test_distill import STUDENT, TINY, datamodule, fine_tuned_checkpoint, trainer

# compiled graphs draw other dropout masks than eager: compare without dropout
ONE_LAYER = dict(TINY, num_hidden_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def weights(module: L.LightningModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def fine_tune(tmp_path, compiled, ckpt_path=None, precision="32-true", every=None) -> FineTuneModule:
    L.seed_everything(0)
    dm = datamodule("sequence", tmp_path / "cache")
    module = FineTuneModule(
        model_config=ONE_LAYER,
        task="sequence",
        label_names=dm.label_names,
        learning_rate=1e-3,
        torch_compile=compiled,
    )
    saving = [ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=every, save_top_k=-1)] if every else []
    run = trainer(max_steps=6, precision=precision, callbacks=saving, enable_checkpointing=bool(every))
    run.fit(module, dm, ckpt_path=ckpt_path)
    return module


def test_compiled_fine_tuning_equals_eager_and_resumes_mid_epoch_exactly_in_bf16_mixed(tmp_path):
    eager = weights(fine_tune(tmp_path / "eager", False, precision="bf16-mixed"))
    # 96 rows / batch 16 = 6 steps per epoch: compiled throughout, and killed after step 3 then resumed
    compiled = fine_tune(tmp_path / "whole", "eager", precision="bf16-mixed", every=3)
    assert compiled.model._compiled_call_impl is not None  # it did run compiled
    whole = weights(compiled)
    assert whole.keys() == eager.keys()  # no _orig_mod. prefix: checkpoints stay loadable
    for key, value in whole.items():
        torch.testing.assert_close(value, eager[key], rtol=0, atol=1e-6, msg=key)
    step3 = next((tmp_path / "whole" / "ckpt").glob("*step=3.ckpt"))
    resumed = weights(fine_tune(tmp_path / "resumed", "eager", precision="bf16-mixed", ckpt_path=str(step3)))
    for key, value in resumed.items():
        assert torch.equal(value, whole[key]), key


def distill_from_teacher_cache(tmp_path, teacher: str, **options) -> DistillationModule:
    """6 steps of a 1-layer student without dropout, from the teacher's cached logits."""
    student = dict(STUDENT, num_hidden_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    L.seed_everything(0)
    dm = datamodule("sequence", tmp_path / "cache")
    module = DistillationModule(
        teacher=teacher,
        student_config=student,
        task="sequence",
        label_names=dm.label_names,
        teacher_cache=True,
        cache_dir=str(tmp_path / "cache"),
        learning_rate=1e-3,
        **options,
    )
    trainer(max_steps=6).fit(module, dm)
    assert module.teacher._logits is not None
    return module


def test_compiled_distillation_with_teacher_cache_equals_eager(tmp_path):
    teacher = fine_tuned_checkpoint("sequence", tmp_path)
    results = [
        weights(distill_from_teacher_cache(tmp_path, teacher, torch_compile=c)) for c in (False, "eager")
    ]
    assert len(list((tmp_path / "cache" / "teacher").glob("*.pt"))) == 1  # built once, reused compiled
    for key, value in results[1].items():
        torch.testing.assert_close(value, results[0][key], rtol=0, atol=1e-6, msg=key)


def test_stages_that_train_eager_refuse_compile_in_one_line(tmp_path):
    with pytest.raises(InputError, match="torch_compile is for fine-tuning and distillation: QATModule"):
        QATModule(
            model_name_or_path=fine_tuned_checkpoint("sequence", tmp_path),
            task="sequence",
            label_names=["negative", "positive"],
            torch_compile=True,
        )


def test_auto_compiles_with_inductor_only_for_bf16_on_a_cpu_with_amx(tmp_path, monkeypatch):
    """``torch_compile: auto`` (the SST-2 / CoNLL / GLUE recipes) compiles where it was measured to pay:
    bf16 on AMX with random batches (2x per step); not on length-grouped batches there (1.0x), not on
    an AVX-512 bf16 CPU without AMX (AMD Zen 4: 1.07x), nor in fp32."""
    from lightning_modules.stages import base
    from lightning_modules.train import auto

    cases = [  # CPU flags, precision, backend
        ({"avx512f", "avx512_bf16", "amx_bf16"}, "bf16-mixed", "inductor"),
        ({"avx512f", "avx512_bf16", "amx_bf16"}, "32-true", None),
        ({"avx512f", "avx512_bf16"}, "bf16-mixed", None),
        (set(), "bf16-mixed", None),
    ]
    for flags, precision, backend in cases:
        monkeypatch.setattr(auto, "cpu_flags", lambda flags=flags: flags)
        run = L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False)
        assert base.compile_backend("auto", run) == backend, (flags, precision)
        assert base.compile_backend("auto", run, grouped=True) is None
    for value, backend in ((True, "inductor"), ("aot_eager", "aot_eager"), (False, None)):
        assert base.compile_backend(value, run) == backend
    # through a real fit on an AMX CPU in bf16: length-grouped batches (the recipes'), so it trains eager
    monkeypatch.setattr(auto, "cpu_flags", lambda: {"amx_bf16"})
    L.seed_everything(0)
    dm = datamodule("sequence", tmp_path / "cache", group_by_length=True)
    module = FineTuneModule(
        model_config=ONE_LAYER, task="sequence", label_names=dm.label_names, torch_compile="auto"
    )
    trainer(max_steps=2, precision="bf16-mixed", enable_checkpointing=False).fit(module, dm)
    assert module.model._compiled_call_impl is None
    # the stages that never compile accept auto
    QATModule(
        model_name_or_path=fine_tuned_checkpoint("sequence", tmp_path),
        task="sequence",
        label_names=["negative", "positive"],
        torch_compile="auto",
    )
