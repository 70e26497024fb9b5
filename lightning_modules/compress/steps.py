"""One step of the compress pipeline: a ``shrink`` command run in this process, in its own folder,
named by what produced it, and marked done only when it finished.

A step's folder is ``OUT/steps/<kind>-<name>-<key>``, where ``key`` hashes everything the step's
output depends on (its command's recipe text and arguments, its inputs' keys): a changed recipe
gives a new key and re-runs that step and those after it, and nothing else. ``done.json`` is
written last; a folder without it is an interrupted step, which resumes from its ``last.ckpt``
(training stages: exact resume) or runs again (export, benchmark: they replace their output whole).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamodules.errors import InputError
from lightning_modules.commands.shrink import main as shrink_main

TRAINING = ("fit",)
TERMINAL_LOGGERS = ("lightning.pytorch", "lightning.fabric", "transformers")


@dataclass
class Step:
    """``shrink ARGS`` for one stage of one candidate; ``recipe`` (a file) is hashed into the key."""

    kind: str  # teacher, distill, prune, vocabulary, qat, ptq, export, measure, ...
    name: str  # the candidate (or "teacher")
    args: list[
        str
    ]  # the shrink command: {dir} is the step's folder, {out} the pipeline's, an input's ref its product
    inputs: list[Step] = field(default_factory=list)
    recipe: Path | None = None
    salt: str = ""  # what else the output depends on: the data section, the seed
    output: str = "model"  # what later steps take from the folder

    @functools.cached_property
    def key(self) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps([self.kind, self.args], sort_keys=True).encode())
        digest.update(self.salt.encode())
        if self.recipe is not None:
            digest.update(self.recipe.read_bytes())
        for step in self.inputs:
            digest.update(step.key.encode())
        return digest.hexdigest()[:10]

    @property
    def ref(self) -> str:
        """How a later step's arguments name this step's product."""
        return f"{{step:{self.kind}:{self.name}}}"

    def folder(self, out: Path) -> Path:
        return out / "steps" / f"{self.kind}-{self.name}-{self.key}"

    def product(self, out: Path) -> Path:
        return self.folder(out) / self.output

    def command(self, out: Path) -> list[str]:
        """The arguments with the step's folder and its inputs' products filled in."""
        words = []
        for word in self.args:
            word = word.replace("{dir}", str(self.folder(out))).replace("{out}", str(out))
            for step in self.inputs:
                word = word.replace(step.ref, str(step.product(out)))
            words.append(word)
        return words


def done(step: Step, out: Path) -> dict[str, Any] | None:
    """What a finished step recorded (None: not run, or interrupted)."""
    marker = step.folder(out) / "done.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def run_step(step: Step, out: Path) -> dict[str, Any]:
    """Run ``step`` unless it is done; resume an interrupted training stage from its last checkpoint.
    Its output goes to ``log.txt`` in its folder; a failure is one line naming that file."""
    finished = done(step, out)
    if finished is not None:
        return finished
    folder = step.folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    words = step.command(out)
    if words[0] in TRAINING:
        last = folder / "checkpoints" / "last.ckpt"
        words += ["--ckpt_path", "last"] if last.is_file() else ["--overwrite", "true"]
        words += ["--trainer.enable_progress_bar", "false"]
    start = time.perf_counter()
    log = folder / "log.txt"
    code = _in_process(words, log)
    if code == 2 and "--ckpt_path" in words and "leaves nothing to do" in log.read_text(errors="replace"):
        # killed after training ended but before its model folder was written: train it again (the
        # seeds make it the same run) rather than resume a run that has no step left
        words[words.index("--ckpt_path") : words.index("--ckpt_path") + 2] = ["--overwrite", "true"]
        code = _in_process(words, log)
    if code != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        last_line = next(
            (line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else ""
        )
        raise StepFailed(step, code, last_line.removeprefix("error: "), log)
    record = {"kind": step.kind, "name": step.name, "seconds": round(time.perf_counter() - start, 1)}
    record["command"] = "shrink " + " ".join(words)
    if words[0] in TRAINING:  # finished stages are never resumed: their checkpoints only take space
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        for checkpoint in folder.glob("*.ckpt"):  # QAT's int8.ckpt: model/ holds the same weights
            checkpoint.unlink()
    mark_done(step, out, record)
    return record


def mark_done(step: Step, out: Path, record: dict[str, Any]) -> None:
    """``done.json``, written whole or not at all: the step's last act."""
    folder = step.folder(out)
    (folder / "done.json.tmp").write_text(json.dumps(record, indent=1))
    os.replace(folder / "done.json.tmp", folder / "done.json")


class StepFailed(Exception):
    def __init__(self, step: Step, code: int, line: str, log: Path) -> None:
        super().__init__(f"{step.kind} of {step.name} failed ({line}); its output: {log}")
        self.code = code


def _in_process(words: list[str], log: Path) -> int:
    """``shrink WORDS`` here (no start-up per step), its output (and logging) into ``log``."""
    root = logging.getLogger()
    with open(log, "a", encoding="utf-8") as stream:
        handler = logging.StreamHandler(stream)
        root.addHandler(handler)
        # Lightning's and transformers' loggers hold their own handlers on the terminal: into the log too
        own = [
            h
            for n in TERMINAL_LOGGERS
            for h in logging.getLogger(n).handlers
            if isinstance(h, logging.StreamHandler)
        ]
        streams = [h.setStream(stream) for h in own]
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                print("$ shrink " + " ".join(words), flush=True)
                shrink_main(words)  # the dispatcher: stages to LightningCLI, the rest to their command
        except SystemExit as e:
            return 0 if e.code in (0, None) else int(e.code) if isinstance(e.code, int) else 1
        except InputError as e:
            stream.write(f"error: {e}\n")
            return 2
        except Exception as e:  # noqa: BLE001 - any failure of a step is reported with its log
            traceback.print_exc(file=stream)
            stream.write(
                f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}\n"
            )
            return 1
        finally:
            root.removeHandler(handler)
            for h, previous in zip(own, streams, strict=True):
                h.setStream(previous)
    return 0


def print_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
