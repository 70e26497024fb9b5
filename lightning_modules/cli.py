"""The ``shrink`` command: LightningCLI with ``fit``, ``validate``, ``test`` and ``predict``.

    shrink fit --config configs/demo/sequence_finetune.yaml
    shrink validate --config configs/demo/sequence_finetune.yaml --ckpt_path last
    shrink fit --config configs/sst2/finetune.yaml --trainer.precision bf16-mixed

The DataModule's ``task`` and ``label_names`` are linked into the model, and ``data.tokenizer``
defaults to ``model.model_name_or_path``, so each is set in one place only.
"""

from __future__ import annotations

import netrc
import os
import sys

import torch
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from datamodules.base import ClassificationDataModule
from datamodules.errors import InputError
from lightning_modules.base import ClassificationModule


def wandb_mode_default() -> None:
    """Offline W&B unless an API key is set or the machine is logged in: never a prompt or a hang."""
    if "WANDB_MODE" in os.environ or os.environ.get("WANDB_API_KEY"):
        return
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    if not logged_in:
        os.environ["WANDB_MODE"] = "offline"


class LoggedConfig(SaveConfigCallback):
    """Saves ``config.yaml`` beside the logs (overwriting, so reruns never refuse) and sends the
    resolved config to W&B."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.logger, WandbLogger):
            trainer.logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)


class ShrinkCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.task", "model.init_args.task", apply_on="instantiate")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        data, model = config.data.init_args, config.model.init_args
        if data.get("tokenizer") is None:
            if model.get("model_name_or_path") is None:
                raise InputError(
                    "no tokenizer: set data.tokenizer (a from-scratch model has no model_name_or_path)"
                )
            data.tokenizer = model.model_name_or_path

    def _restore_best_path(self) -> None:
        """Let ``--ckpt_path best`` work in a new process: the best path is read from ``last.ckpt``."""
        callback = self.trainer.checkpoint_callback
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt_path != "best" or callback is None or callback.best_model_path or not callback.dirpath:
            return
        last = os.path.join(callback.dirpath, f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}")
        if not os.path.isfile(last):
            raise InputError(
                f"--ckpt_path best: no {last} to read the best checkpoint from; run fit first "
                "or pass a checkpoint file"
            )
        states = torch.load(last, map_location="cpu", weights_only=True).get("callbacks", {})
        best = next((s["best_model_path"] for s in states.values() if s.get("best_model_path")), None)
        if best is None or not os.path.isfile(best):
            raise InputError(
                f"--ckpt_path best: {last} names no existing best checkpoint ({best}); pass a file"
            )
        callback.best_model_path = best

    before_validate = before_test = before_predict = _restore_best_path


def main(args: list[str] | None = None) -> None:
    wandb_mode_default()
    try:
        ShrinkCLI(
            ClassificationModule,
            ClassificationDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=LoggedConfig,
            save_config_kwargs={"overwrite": True},
            args=args,
            auto_configure_optimizers=False,
        )
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
