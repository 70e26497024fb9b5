"""Checkpoint files: written atomically (a crash or a full disk never leaves a torn file) and read back
safely (weights only, one line for a corrupt or foreign file)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from datamodules.errors import InputError
from lightning_modules.methods.quantize import import_torchao


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, flushes it to disk and renames
    it over the target: a kill during the write leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if get_filesystem(path).protocol not in ("file", ("file", "local")):  # remote: fsspec's own write
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:
            if not disk_full(e):
                raise
            written = tmp.stat().st_size if tmp.exists() else 0
            raise InputError(
                f"no space left on the disk of {path.parent} while writing {path.name} (about "
                f"{checkpoint_bytes(checkpoint) / 2**20:.0f} MB needed, {written / 2**20:.0f} MB written): the "
                "earlier checkpoints there are intact; free space, then rerun with --ckpt_path last"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        check_checkpoint(str(path))
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def disk_full(error: BaseException | None) -> bool:
    """ENOSPC, also when torch's zip writer reports it as ``unexpected pos`` with the OSError as its cause."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if isinstance(error, RuntimeError) and "unexpected pos" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def checkpoint_bytes(checkpoint: Any) -> int:
    """The tensor bytes a checkpoint holds: close to its size on disk."""
    if isinstance(checkpoint, torch.Tensor):
        try:
            return checkpoint.nelement() * checkpoint.element_size()
        except (RuntimeError, NotImplementedError):  # a tensor subclass without a plain layout
            return 0
    if isinstance(checkpoint, dict):
        return sum(checkpoint_bytes(v) for v in checkpoint.values())
    if isinstance(checkpoint, list | tuple):
        return sum(checkpoint_bytes(v) for v in checkpoint)
    return 0


def check_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint at ``path``, memory-mapped (its tensors are read only when used), or one clear
    line for a file that is missing, truncated or not a checkpoint at all."""
    if os.path.isdir(path):
        raise InputError(f"checkpoint {path} is a folder: give a .ckpt file in it (or use 'last' / 'best')")
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path} does not exist: fix --ckpt_path (or use 'last' / 'best')")
    import_torchao()  # int8 checkpoints hold torchao tensors
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        if "Weights only load failed" in str(e):
            raise InputError(
                f"checkpoint {path} holds pickled Python objects, which are never loaded (weights_only): "
                "use a checkpoint written by shrink, or re-save its state_dict with plain tensors"
            ) from None
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise InputError(
            f"checkpoint {path} is corrupt or truncated ({reason}): pass an intact one, e.g. an earlier "
            "checkpoint of the run"
        ) from None


def best_checkpoint_in(dirpath: str | Path) -> str:
    """The best checkpoint recorded by ModelCheckpoint in the newest ``last*.ckpt`` of ``dirpath``
    (a rerun into a folder that holds an old ``last.ckpt`` writes ``last-v1.ckpt``)."""
    last = last_checkpoint_in(dirpath)
    if last is None:
        raise InputError(
            f"--ckpt_path best: no last.ckpt in {dirpath} to read the best checkpoint from; "
            "run fit first or pass a checkpoint file"
        )
    states = torch.load(last, map_location="cpu", weights_only=True).get("callbacks", {})
    best = next((s["best_model_path"] for s in states.values() if s.get("best_model_path")), None)
    if best is None or not os.path.isfile(best):
        raise InputError(f"--ckpt_path best: {last} names no existing best checkpoint ({best}); pass a file")
    return best


def last_checkpoint_in(dirpath: str | Path) -> str | None:
    """The newest ``last*.ckpt`` of a run's checkpoint folder (what ``--ckpt_path last`` resumes)."""
    lasts = sorted(Path(dirpath).glob("last*.ckpt"), key=os.path.getmtime)
    return str(lasts[-1]) if lasts else None


def int8_checkpoint(path: str | None) -> dict | None:
    """The checkpoint at ``path`` when it holds an int8 model (``quantization`` key), else None."""
    if not path or not str(path).endswith(".ckpt") or not os.path.isfile(path):
        return None
    checkpoint = check_checkpoint(path)
    return checkpoint if "quantization" in checkpoint else None
