"""What the ``auto`` settings of ``model.torch_compile`` and ``model.split_by_length`` resolve to on this machine."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lightning_modules.cpu import cpu_flags


def compile_backend(torch_compile: bool | str, trainer: L.Trainer, grouped: bool = False) -> str | None:
    """The ``torch.compile`` backend of ``model.torch_compile``, or None for eager. ``auto`` is inductor
    where compiled training steps were measured to pay: ``bf16-mixed`` on a CPU with AMX, on random
    batches (not on length-grouped batches, short and barely padded: scripts/bench/bench_vs_trainer.py --compile). It says which it chose."""
    if torch_compile != "auto":
        return ("inductor" if torch_compile is True else torch_compile) or None

    on_cpu = trainer.strategy.root_device.type == "cpu"
    amx_bf16 = on_cpu and "bf16" in str(trainer.precision) and "amx_bf16" in cpu_flags()
    if amx_bf16 and not grouped:
        rank_zero_info(
            "model.torch_compile auto -> inductor: bf16 on a CPU with AMX, where compiled steps run about "
            "faster after 30 s to 2 min of compiling (--model.torch_compile false turns it off)"
        )
        return "inductor"
    rank_zero_info(
        "model.torch_compile auto -> eager: compiling was measured to pay only for bf16 on CPUs with AMX"
        + (", on random batches (data.group_by_length false)" if amx_bf16 else "")
    )
    return None


def length_split_enabled(split_by_length: bool | str, trainer: L.Trainer) -> bool:
    """Whether training batches run split by length: ``auto`` is on when training on CPU (faster steps on
    random batches: scripts/bench/bench_vs_trainer.py); it says which."""
    if split_by_length != "auto":
        return bool(split_by_length)
    on_cpu = trainer.strategy.root_device.type == "cpu"
    rank_zero_info(
        "model.split_by_length auto -> "
        + (
            "on: each training batch runs as sub-batches of similar length, same rows and gradients, less padding"
            if on_cpu
            else "off: measured on CPU only"
        )
    )
    return on_cpu
