"""What this CPU can do (from /proc/cpuinfo): the flags that pick int8 kernels, bf16 and torch.compile."""

from __future__ import annotations

from pathlib import Path


def _cpuinfo(field: str) -> str:
    """A field of the first CPU in /proc/cpuinfo ("" off Linux)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(field)), "")


def cpu_flags() -> set[str]:
    """The instruction-set flags of /proc/cpuinfo (x86 ``flags``, ARM ``Features``; empty off Linux)."""
    return set((_cpuinfo("flags") or _cpuinfo("Features")).split())


def cpu_name() -> str:
    """``lscpu``'s model name and the int8 / bf16 instruction sets that change ONNX Runtime's kernels."""
    import platform

    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return f"{_cpuinfo('model name') or platform.processor()} ({' '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def has_int8_dot() -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernel is exact here: x86 VNNI (``vpdpbusd`` sums in int32)
    or AMX. Unknown CPUs (not Linux x86) count as no: the exact u8u8 graph runs there."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (x86: avx512_bf16 or amx_bf16; ARM: bf16). Unknown
    (no /proc/cpuinfo) counts as yes: nothing is changed where nothing is known."""
    flags = cpu_flags()
    return not flags or bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
