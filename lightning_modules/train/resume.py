"""Runs that survive preemption: checkpoints written atomically, a ``last.ckpt`` every N steps and on
SIGTERM / SIGUSR1, and everything an exact resume needs beyond Lightning's own checkpoint (RNG
states, the W&B run id). The data position is Lightning's: the training DataLoader is a
``StatefulDataLoader``, whose state Lightning stores in the checkpoint."""

from __future__ import annotations

import os
import random
import signal
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint


def _rng_states() -> dict[str, Any]:
    """Plain tensors, tuples and numbers only, so checkpoints load with ``weights_only=True``."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` every ``every_n_train_steps``, at each epoch end, and when the process receives SIGTERM or
    SIGUSR1 (preemption; Lightning stops after the current batch), and stores the RNG states and the
    W&B run id so ``--ckpt_path last`` continues exactly where the run stopped, in the same W&B run.

    A ``Checkpoint`` subclass, so Lightning calls its epoch-end hook with the checkpoint callbacks,
    after the others, and the CLI puts it after ModelCheckpoint: its epoch-end ``last.ckpt`` then
    holds the epoch's validation score in ModelCheckpoint's state. Written before that (a plain
    callback), a kill between the two writes lost the epoch's best score on resume."""

    def __init__(self, every_n_train_steps: int | None = None, dirpath: str | None = None) -> None:
        """
        Args:
            every_n_train_steps: write ``last.ckpt`` every N optimizer steps (None: only on preemption;
                the ModelCheckpoint callback still writes it at validation / epoch end).
            dirpath: where ``last.ckpt`` goes; default: the ModelCheckpoint callback's folder.
        """
        self.every_n_train_steps, self.dirpath = every_n_train_steps, dirpath
        self._previous_sigusr1: Any = None
        self._rng_to_restore: dict[str, Any] | None = None

    def _path(self, trainer: L.Trainer) -> str:
        dirpath = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None)
        return os.path.join(dirpath or os.path.join(trainer.default_root_dir, "checkpoints"), "last.ckpt")

    # --- signals -------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # SIGTERM is Lightning's own (it stops after the current batch, on every rank); SIGUSR1 is
        # turned into SIGTERM unless Lightning's SLURM auto-requeue already owns it
        if hasattr(signal, "SIGUSR1") and not _slurm_requeue_owns_sigusr1(trainer):
            self._previous_sigusr1 = signal.signal(signal.SIGUSR1, _forward_to_sigterm)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigusr1()

    def _restore_sigusr1(self) -> None:
        if self._previous_sigusr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
            self._previous_sigusr1 = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        self._restore_sigusr1()
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            path = self._path(trainer)
            trainer.save_checkpoint(
                path, weights_only=False
            )  # the batch is complete: a consistent mid-epoch state
            _mark_wandb_preempting(trainer)
            exception.checkpoint = path  # the CLI names it in its last line

    # --- periodic checkpoints -------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and trainer.global_step > 0 and not trainer.sanity_checking:
            trainer.save_checkpoint(self._path(trainer), weights_only=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's ModelCheckpoint writes last.ckpt only when it also saves a top-k checkpoint:
        # without this, last.ckpt could trail the end of training by epochs
        trainer.save_checkpoint(self._path(trainer), weights_only=False)

    # --- state in the checkpoint ------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        rng = _rng_states()
        # DDP ranks draw different dropout masks: keep each rank's RNG (every rank saves together;
        # rank 0 writes the file)
        per_rank = [rng]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            per_rank = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_rank, rng)
        return {
            "rng": rng,
            "rng_per_rank": per_rank,
            "wandb_run_id": wandb_run_id(trainer) if trainer else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict.get("rng")
        self._rng_per_rank = state_dict.get("rng_per_rank")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Put the data position and the RNG back, in the order the uninterrupted run used them.
        Uses Lightning's private loop attributes (``_data_fetcher``, ``_combined_loader``,
        ``_combined_loader_states_to_load``): checked on lightning 2.6 and torchdata 0.11, the
        versions pyproject.toml allows."""
        loop, rng, per_rank = trainer.fit_loop, self._rng_to_restore, getattr(self, "_rng_per_rank", None)
        if per_rank and len(per_rank) == trainer.world_size:
            rng = per_rank[trainer.global_rank]
        self._rng_to_restore = self._rng_per_rank = None
        progress = loop.epoch_loop.batch_progress  # as restored, before the loop resets it
        if rng is None or loop._data_fetcher is None:
            return
        mid_epoch = progress.current.processed > 0 and not progress.is_last_batch
        # Lightning never applies the saved loader position here: mid-epoch, configure_optimizers asks
        # for trainer.estimated_stepping_batches, which builds the training DataLoader before the
        # checkpoint is restored (the epoch would start over); at an epoch end it restores no loader,
        # and a fresh sampler's own generator, which each finished epoch moved on, would repeat an
        # earlier epoch's order. So apply the position and start an iterator from it: mid-epoch the
        # rest of the epoch, at an epoch end the finished one, which moves the generator on.
        saved = bool(loop._combined_loader_states_to_load) and loop._combined_loader is not None
        if saved:
            loop._combined_loader._load_state_dicts(loop._combined_loader_states_to_load)
            loop._combined_loader_states_to_load = []
        if saved or mid_epoch:
            iter(loop._data_fetcher)
        _set_rng_states(rng)
        if not mid_epoch:
            # the next epoch's iterator, from the restored RNG (each DataLoader iterator draws a seed
            # from it), as the uninterrupted run started it
            iter(loop._data_fetcher)


def wandb_run_id(trainer: L.Trainer) -> str | None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            return logger.experiment.id
    return None


def _mark_wandb_preempting(trainer: L.Trainer) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            mark = getattr(logger.experiment, "mark_preempting", None)
            if callable(mark):
                mark()


def _forward_to_sigterm(signum: int, frame: Any) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _slurm_requeue_owns_sigusr1(trainer: L.Trainer) -> bool:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = trainer._accelerator_connector.cluster_environment
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue
