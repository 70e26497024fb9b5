"""The ``shrink`` command: LightningCLI with ``fit``, ``validate``, ``test`` and ``predict``.

    shrink fit --config configs/demo-sequence/finetune.yaml
    shrink validate --config configs/demo-sequence/finetune.yaml --ckpt_path last
    shrink fit --config configs/sst2/finetune.yaml --trainer.precision bf16-mixed

The DataModule's ``task`` and ``label_names`` are linked into the model, and ``data.tokenizer``
defaults to ``model.model_name_or_path``, so each is set in one place only.
"""

from __future__ import annotations

import contextlib
import enum
import io
import os
import shlex
import signal
import sys
from pathlib import Path

import torch
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from datamodules.base import ClassificationDataModule
from datamodules.errors import InputError
from datamodules.sequence import SequenceClassificationDataModule  # noqa: F401  (listed in --help)
from datamodules.token import TokenClassificationDataModule  # noqa: F401
from lightning_modules.artifacts.checkpoints import (
    AtomicCheckpointIO,
    best_checkpoint_in,
    check_checkpoint,
    last_checkpoint_in,
)
from lightning_modules.artifacts.model_folder import checkpoint_tokenizer, write_metrics
from lightning_modules.cpu import cpu_has_bf16
from lightning_modules.stages import distill, finetune, prune, qat  # noqa: F401  (--model.class_path)
from lightning_modules.stages.base import ClassificationModule
from lightning_modules.train.messages import config_error_line, data_options, final_scores, input_error_in
from lightning_modules.train.resume import ResumeCheckpoint
from lightning_modules.train.wandb_run import finish_wandb, wandb_mode_default


def _enum_as_value(dumper: yaml.SafeDumper, value: enum.Enum) -> yaml.Node:
    return dumper.represent_data(value.value)


# Lightning callbacks with enum defaults (Timer's ``interval=Interval.step``) must survive jsonargparse's
# YAML round trip when added from the command line (--trainer.callbacks+=...Timer)
yaml.SafeDumper.add_multi_representer(enum.Enum, _enum_as_value)


class LoggedConfig(SaveConfigCallback):
    """Saves ``config.yaml`` beside the logs (overwriting, so reruns never refuse) and sends the
    resolved config to W&B."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.logger, WandbLogger):
            trainer.logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)


class ShrinkCLI(LightningCLI):
    command_line: list[str] = []  # the arguments of this run, for the model card
    final_line: str | None = None  # a fit's final scores: the command's last line

    def instantiate_trainer(self, **kwargs):
        """Checkpoints are written atomically (temporary file + rename) unless a plugin says otherwise."""
        from lightning.pytorch.plugins.io import TorchCheckpointIO

        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        # ResumeCheckpoint last: its epoch-end last.ckpt comes after ModelCheckpoint has recorded the
        # epoch's score, and trainer.checkpoint_callback stays the ModelCheckpoint
        resume = [c for c in trainer.callbacks if isinstance(c, ResumeCheckpoint)]
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ResumeCheckpoint)] + resume
        return trainer

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--out_dir",
            type=str | None,
            default=None,
            help="run folder: checkpoints/, config.yaml, W&B run and predictions go here "
            "unless a callback or the logger names its own path",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit: start afresh in an out_dir that holds an earlier run, replacing its checkpoints and "
            "model/ (without it such a fit stops; --ckpt_path last resumes the earlier run instead)",
        )
        parser.epilog = data_options()
        parser.link_arguments("data.task", "model.init_args.task", apply_on="instantiate")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        """jsonargparse prints the whole usage and a nested report on a bad key; keep one line."""
        report = io.StringIO()
        try:
            with contextlib.redirect_stderr(report):
                super().parse_arguments(parser, args)
        except SystemExit as e:
            if e.code in (0, None):  # --help, --print_config
                sys.stderr.write(report.getvalue())
                raise
            text = report.getvalue()
            message = text[text.find("error:") + len("error:") :] if "error:" in text else text
            line = f"{config_error_line(message)} (see `shrink SUBCOMMAND --help`)"
            if "Problems parsing config" in message:  # not YAML: name the files given
                words = list(self.command_line)
                files = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--config"]
                detail = config_error_line(message).removeprefix("Problems parsing config:").strip()
                line = f"a --config file is not valid YAML ({detail}): fix {' or '.join(files) or 'it'}"
            print(f"error: {line}", file=sys.stderr)
            sys.exit(2)
        sys.stderr.write(report.getvalue())

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the model's hyper-parameters from ``--ckpt_path``; first refuse a corrupt
        file, and, when resuming ``fit``, an int8 checkpoint or one of another stage, with one line each."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        ckpt_path = config.get("ckpt_path") if config else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
            checkpoint = check_checkpoint(ckpt_path)
            if subcommand == "fit":
                if "quantization" in checkpoint:
                    raise InputError(
                        f"--ckpt_path {ckpt_path} is an int8 checkpoint, which cannot be trained: resume "
                        "from the run's last.ckpt, or start QAT from the fp32 checkpoint"
                    )
                found = checkpoint.get("hyper_parameters", {}).get("_class_path")
                wanted = config.model.class_path
                if found and found != wanted:
                    raise InputError(
                        f"--ckpt_path {ckpt_path} is a {found.rpartition('.')[2]} checkpoint but the config "
                        f"trains {wanted.rpartition('.')[2]}: resume with the config of the same stage"
                    )
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        data, model = config.data.init_args, config.model.init_args
        if config.get("out_dir"):
            if os.path.exists(config.out_dir) and not os.path.isdir(config.out_dir):
                raise InputError(
                    f"--out_dir {config.out_dir} is a file: give a folder (it is created if missing)"
                )
            self._place_outputs(config, config.out_dir)
        if self.subcommand == "fit" and config.get("ckpt_path"):
            self._resume_checks(config)
        elif self.subcommand == "fit" and not config.get("overwrite"):
            self._refuse_earlier_run(config)
        self._check_devices(config.trainer)
        self._cpu_precision(config.trainer)
        if data.get("tokenizer") is None:
            source = model.get("model_name_or_path") or model.get("student_model_name_or_path")
            if source is not None and str(source).endswith(".ckpt") and os.path.isfile(source):
                source = checkpoint_tokenizer(check_checkpoint(source))  # the tokenizer stored in it
            if source is None or str(source).endswith(".ckpt"):
                raise InputError(
                    "no tokenizer: set data.tokenizer (the model gives no pretrained folder or hub name)"
                )
            data.tokenizer = source

    @staticmethod
    def _cpu_precision(trainer) -> None:
        """bf16 autocast on a CPU without bf16 instructions (AMD Zen 2/3, older Intel) is emulated and
        slower than fp32: train in fp32 there, and say so."""
        precision = str(trainer.get("precision"))
        accelerator = str(trainer.get("accelerator") or "auto")
        on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
        if "bf16" in precision and on_cpu and not cpu_has_bf16():
            trainer.precision = "32-true"
            print(
                f"trainer.precision {precision} -> 32: this CPU has no bf16 instructions (avx512_bf16 / "
                "amx_bf16), so bf16 would be emulated and slower than fp32",
                file=sys.stderr,
            )

    @staticmethod
    def _check_devices(trainer) -> None:
        """More GPUs than exist (or none at all) gets one line instead of Lightning's backend error."""
        accelerator, devices = str(trainer.get("accelerator") or "auto"), trainer.get("devices")
        if accelerator not in ("gpu", "cuda") and not (accelerator == "auto" and torch.cuda.is_available()):
            return
        have = torch.cuda.device_count()
        if isinstance(devices, str) and devices.strip().isdigit():
            devices = int(devices)
        want = len(devices) if isinstance(devices, list) else devices if isinstance(devices, int) else None
        if have == 0:
            raise InputError(
                f"trainer.accelerator {accelerator} but this machine has no CUDA GPU: "
                "use --trainer.accelerator cpu (or auto)"
            )
        if want is not None and want > have:
            raise InputError(
                f"trainer.devices {want} asks for {want} CUDA GPUs but this machine has {have}: "
                f"use --trainer.devices {have} or fewer"
            )

    @staticmethod
    def _resume_checks(config) -> None:
        """Before resuming: the checkpoint must leave epochs to train, and the W&B logger continues
        the run the checkpoint was logging to (its id is stored by ResumeCheckpoint)."""
        ckpt_path = config.ckpt_path
        if ckpt_path == "last":
            dirs = [
                c.init_args.get("dirpath")
                for c in config.trainer.get("callbacks") or []
                if c.class_path.endswith("ModelCheckpoint")
            ]
            found = [last_checkpoint_in(d) for d in dirs if d]
            ckpt_path = max((p for p in found if p), key=os.path.getmtime, default=None)
        if not ckpt_path or not os.path.isfile(ckpt_path):
            return  # Lightning reports a missing "last" itself (it starts from scratch with a warning)
        checkpoint = check_checkpoint(ckpt_path)
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        epochs = loop.get("epoch_progress", {}).get("current", {})
        done = epochs.get("completed", checkpoint.get("epoch", 0))
        if loop.get("epoch_loop.batch_progress", {}).get("is_last_batch"):  # saved at an epoch's end
            done = max(done, epochs.get("processed", done))
        max_epochs = config.trainer.get("max_epochs")
        if max_epochs is not None and max_epochs != -1 and max_epochs <= done:
            raise InputError(
                f"--ckpt_path {ckpt_path} has already trained {done} epoch(s); trainer.max_epochs "
                f"{max_epochs} leaves nothing to do: raise --trainer.max_epochs"
            )
        run_id = next(
            (s["wandb_run_id"] for s in checkpoint.get("callbacks", {}).values() if s.get("wandb_run_id")),
            None,
        )
        logger = config.trainer.get("logger")
        for item in logger if isinstance(logger, list) else [logger]:
            if run_id and getattr(item, "class_path", "").endswith("WandbLogger"):
                item.init_args.id, item.init_args.resume = run_id, "allow"

    @staticmethod
    def _refuse_earlier_run(config) -> None:
        """A fresh fit would replace an earlier run's checkpoints and model/: transformers' run_glue.py
        refuses a non-empty output folder unless told to overwrite, and so does this."""
        dirs = [
            c.init_args.get("dirpath")
            for c in config.trainer.get("callbacks") or []
            if c.class_path.endswith("ModelCheckpoint") and c.get("init_args")
        ]
        found = [str(p) for d in dirs if d and os.path.isdir(d) for p in sorted(Path(d).glob("*.ckpt"))]
        if config.get("out_dir") and os.path.isdir(os.path.join(config.out_dir, "model")):
            found.append(os.path.join(config.out_dir, "model"))
        if found:
            where = config.get("out_dir") or os.path.dirname(found[0])
            raise InputError(
                f"{where} holds an earlier run ({found[0]}): resume it with --ckpt_path last, start afresh "
                "with --overwrite true, or give another --out_dir"
            )

    @staticmethod
    def _place_outputs(config, out_dir: str) -> None:
        """Fill unset output paths from ``out_dir``: a fixed checkpoint folder is what lets
        ``--ckpt_path last`` find the previous run (W&B's default folder changes per run)."""
        trainer = config.trainer
        trainer.default_root_dir = out_dir
        logger = trainer.get("logger")
        for item in logger if isinstance(logger, list) else [logger]:
            if getattr(item, "init_args", None) is not None and item.init_args.get("save_dir") in (
                None,
                "",
                ".",
            ):
                item.init_args.save_dir = out_dir
            if getattr(item, "class_path", "").endswith("WandbLogger") and not item.init_args.get("name"):
                item.init_args.name = Path(out_dir).name  # the recipes share one logger file
        for callback in trainer.get("callbacks") or []:
            args = callback.get("init_args")  # absent for a callback class without arguments
            if args is None:
                continue
            if callback.class_path.endswith("ModelCheckpoint") and not args.get("dirpath"):
                args.dirpath = os.path.join(out_dir, "checkpoints")
            if callback.class_path.endswith("PredictionWriter") and not args.get("output_file"):
                args.output_file = os.path.join(out_dir, "predictions.jsonl")

    def _restore_best_path(self) -> None:
        """Let ``--ckpt_path best`` work in a new process (the best path is read from the run's last
        checkpoint); the stage loads what Lightning's loader cannot (QAT: an int8 checkpoint)."""
        callback = self.trainer.checkpoint_callback
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt_path == "best" and callback is not None and not callback.best_model_path and callback.dirpath:
            callback.best_model_path = best_checkpoint_in(callback.dirpath)
        if self.model.load_evaluation_checkpoint(ckpt_path):
            self.config_init[self.subcommand]["ckpt_path"] = None

    before_validate = before_test = before_predict = _restore_best_path

    def _write_metrics(self) -> None:
        """``{subcommand}_metrics.json`` in the run folder, for scripts (the demo, benchmarks) to read."""
        if self.trainer.is_global_zero:
            write_metrics(self.trainer.default_root_dir, self.subcommand, self.trainer.callback_metrics)

    after_validate = after_test = _write_metrics

    def after_fit(self) -> None:
        """The stage hands its model on as a Hugging Face folder, ``OUT_DIR/model/``, with a model card."""
        if self.trainer.state.status != "finished":
            return
        folder = os.path.join(self.trainer.default_root_dir, "model")
        try:  # the resolved config, as `--print_config` shows it
            config = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)
        except Exception:  # noqa: BLE001 - a value the dumper cannot write must not lose the model
            config = None
        command = "shrink " + " ".join(shlex.quote(a) for a in self.command_line)
        metrics = self.model.hand_off(folder, command, config)
        if self.trainer.is_global_zero:
            print(
                f"model folder (transformers.pipeline, from_pretrained, push_to_hub): {folder}",
                file=sys.stderr,
            )
            ShrinkCLI.final_line = final_scores(type(self.model).__name__, metrics)  # printed last, after W&B


def main(args: list[str] | None = None) -> None:
    wandb_mode_default()
    ShrinkCLI.command_line = list(sys.argv[1:] if args is None else args)
    ShrinkCLI.final_line = None
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
    except SIGTERMException as e:  # preempted: ResumeCheckpoint wrote the checkpoint
        finish_wandb()
        where = getattr(e, "checkpoint", None)
        print(
            f"preempted: checkpoint written to {where}; rerun with --ckpt_path last to resume",
            file=sys.stderr,
        )
        sys.exit(128 + signal.SIGTERM)  # "terminated": schedulers requeue rather than mark it done
    except Exception as e:  # noqa: BLE001 - only input errors are turned into one line
        finish_wandb()
        cause = input_error_in(e)
        if cause is None and isinstance(e, MisconfigurationException):
            cause = str(e).strip().splitlines()[0]
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
    finish_wandb()
    if ShrinkCLI.final_line:
        print(ShrinkCLI.final_line, file=sys.stderr)


if __name__ == "__main__":
    main()
