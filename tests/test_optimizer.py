"""The optimizer every stage shares: fused AdamW with ``trainer.gradient_clip_val`` (the recipes clip
at 1.0, as the HF Trainer's ``max_grad_norm``) in fp32 and bf16-mixed, where Lightning itself
refuses to clip a fused optimizer."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_modules import FineTuneModule
from tests.test_compile import ONE_LAYER
from tests.test_distill import datamodule, trainer


class GradientNorms(L.Callback):
    """The global gradient norm each optimizer step applied (grads stay until the next step zeroes them)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        grads = [p.grad.float().norm() for p in module.parameters() if p.grad is not None]
        self.norms.append(float(torch.stack(grads).norm()))


def gradient_norms(tmp_path, precision: str, clip: float | None) -> list[float]:
    L.seed_everything(0)
    dm = datamodule("sequence", tmp_path / "cache")
    module = FineTuneModule(
        model_config=ONE_LAYER, task="sequence", label_names=dm.label_names, learning_rate=1e-3
    )
    norms = GradientNorms()
    run = trainer(max_steps=4, precision=precision, gradient_clip_val=clip, callbacks=[norms])
    run.fit(module, dm)
    assert run.optimizers[0].defaults["fused"]
    return norms.norms


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gradient_clipping_bounds_the_norm_of_each_step_with_the_fused_optimizer(tmp_path, precision):
    unclipped = gradient_norms(tmp_path, precision, None)
    assert min(unclipped) > 0.01  # so the bound below is the clipping's
    clipped = gradient_norms(tmp_path, precision, 0.005)
    assert len(clipped) == 4
    for norm in clipped:
        assert norm == pytest.approx(0.005, rel=1e-3)  # clip_grad_norm_ scales to the bound exactly
