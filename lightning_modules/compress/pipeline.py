"""Running a compress plan: the output folder's ownership, the teacher gate, every candidate's
steps with a progress line each (stage, candidate, ETA, the front so far), then the report and
``OUT/best/``."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from datamodules.errors import InputError
from datamodules.from_config import datamodule_from_config
from lightning_modules.artifacts.onnx_session import folder_task
from lightning_modules.commands.benchmark_report import metric_key
from lightning_modules.compress.plan import SCORE_ONLY, Plan, build_plan, salt
from lightning_modules.compress.recipe import Recipe
from lightning_modules.compress.report import choose, front, write_report
from lightning_modules.compress.steps import Step, StepFailed, done, mark_done, print_line, run_step

NO_CANDIDATE_IN_BUDGET = 3  # exit code: the best candidate and the report are written all the same
TEACHER_AT_CHANCE = 4  # exit code: the gate stopped the chain before any distillation
TRAINED = ("teacher", "distill", "prune", "qat")  # the steps that train (the others take seconds)


class Stop(Exception):
    """The pipeline ends early with one line and an exit code (the gate)."""

    def __init__(self, line: str, code: int) -> None:
        super().__init__(line)
        self.code = code


def claim_out_dir(recipe: Recipe, overwrite: bool) -> None:
    """``OUT`` is this pipeline's: new, or holding a compress run of the same task and data (a changed
    recipe re-runs only what changed). Anything else is refused, unless ``--overwrite``."""
    out = recipe.out_dir
    identity = {"task": recipe.data["class_path"], "data": salt(recipe)}
    record = out / "compress.json"
    if out.exists() and any(out.iterdir()) and not overwrite:
        if not record.is_file():
            raise InputError(
                f"out_dir {out} holds files that shrink compress did not write: give another out_dir "
                "(or --overwrite true to replace them)"
            )
        if json.loads(record.read_text()) != identity:
            raise InputError(
                f"out_dir {out} holds another pipeline's results (other task or data): give another "
                "out_dir (or --overwrite true to replace them)"
            )
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(identity, indent=1))
    data = {**recipe.data, "init_args": {**(recipe.data.get("init_args") or {})}}
    data["init_args"].setdefault("cache_dir", str((out / "cache").resolve()))  # one teacher cache for all
    for name, content in (("data.yaml", data), ("run-data.yaml", {"data": data})):
        (out / name).write_text(yaml.safe_dump(content, sort_keys=False))


def check_tasks(recipe: Recipe, plan: Plan) -> None:
    """The teacher and every pretrained student must be able to take the data's task."""
    task = "token" if recipe.data["class_path"].endswith("TokenClassificationDataModule") else "sequence"
    models = {} if plan.teacher else {"teacher.model": plan.teacher_path}
    for student in recipe.students:
        recipe_model = (
            (yaml.safe_load(student.distill.read_text()) or {}).get("model", {}).get("init_args", {})
        )
        given = student.overrides.get("model.init_args.student_model_name_or_path")
        models[f"students.{student.name}"] = given or recipe_model.get("student_model_name_or_path")
    for what, model in models.items():
        config = Path(str(model)) / "config.json"
        found = folder_task(json.loads(config.read_text())) if model and config.is_file() else None
        if found and found != task:
            raise InputError(
                f"{what} {model} is a {found}-classification model but the data is {task} classification: "
                f"give a {task}-classification {what.split('.')[0].rstrip('s')} (or a base model without a head)"
            )


def chance_level(out: Path, metric: str, teacher: str) -> float:
    """What a constant prediction scores: the majority class's share for accuracy, 0 for F1,
    Matthews correlation and Pearson."""
    if metric != "accuracy":
        return 0.0
    data = datamodule_from_config(out / "run-data.yaml", {"tokenizer": teacher})
    labels = Counter(row.get("label") for row in data.raw_split(data.splits["validate"]))
    return max(labels.values()) / sum(labels.values())


class Progress:
    """``[n/N] stage candidate (ETA)``: the ETA from the seconds the finished steps of each kind took."""

    def __init__(self, steps: list[Step], out: Path) -> None:
        self.steps, self.out, self.seconds, self.shown = steps, out, {}, []
        for step in steps:
            record = done(step, out)
            if record:
                self.seconds.setdefault(step.kind, []).append(record["seconds"])

    def eta(self, after: int) -> str:
        left = 0.0
        for step in self.steps[after:]:
            if done(step, self.out) is None:  # a kind not seen yet: as the training (or other) steps seen
                alike = [
                    s for k, v in self.seconds.items() if (k in TRAINED) == (step.kind in TRAINED) for s in v
                ]
                students = [s for k, v in self.seconds.items() if k in TRAINED and k != "teacher" for s in v]
                alike = students if step.kind in TRAINED and students else alike  # not the larger teacher
                known = self.seconds.get(step.kind) or alike or [0]
                left += sum(known) / len(known)
        return f"{left / 60:.0f} min" if left >= 60 else f"{left:.0f} s"

    def run(self, step: Step) -> dict[str, Any]:
        if step in self.shown:  # a step candidates share (their distillation) is run and shown once
            return run_step(step, self.out)
        self.shown.append(step)
        index = self.steps.index(step) + 1
        state = (
            "done"
            if done(step, self.out)
            else f"running, ETA {self.eta(index - 1)}"
            if self.seconds
            else "running"
        )
        print_line(f"[{index}/{len(self.steps)}] {step.kind} {step.name} ({state})")
        record = run_step(step, self.out)
        self.seconds.setdefault(step.kind, []).append(record["seconds"])
        return record


def benchmark_rows(step: Step, out: Path) -> list[dict[str, Any]]:
    return json.loads((step.folder(out) / "benchmark.json").read_text())["rows"]


def run_pipeline(recipe: Recipe, overwrite: bool = False) -> int:
    """Run (or continue) the whole chain; returns the exit code."""
    started = time.perf_counter()
    plan: Plan = build_plan(recipe)
    check_tasks(recipe, plan)
    claim_out_dir(recipe, overwrite)
    out = recipe.out_dir.resolve()
    steps = ([plan.teacher] if plan.teacher else []) + [plan.gate]
    for step in (s for c in plan.candidates for s in c.steps):
        if step not in steps:  # the candidates of one student share its distillation
            steps.append(step)
    report_step = plan.report(recipe)
    steps.append(report_step)
    progress = Progress(steps, out)
    for step in steps[: steps.index(plan.gate) + 1]:
        progress.run(step)
    teacher_row = benchmark_rows(plan.gate, out)[0]
    metric = metric_key([teacher_row])
    teacher_path = plan.teacher.product(out) if plan.teacher else Path(plan.teacher_path)
    chance = chance_level(out, metric, str(teacher_path))
    if teacher_row[metric] - chance < recipe.gate_margin and not recipe.gate_go_on:
        raise Stop(
            f"the teacher scores {metric} {teacher_row[metric]:.4f} on the validation split, within "
            f"{recipe.gate_margin} of chance ({chance:.4f}): it has nothing to teach. Fine-tune it further, "
            "or set gate: {go_on: true} to distill from it anyway",
            TEACHER_AT_CHANCE,
        )
    measured = {}
    for candidate in plan.candidates:
        for step in candidate.steps:
            try:
                progress.run(step)
            except StepFailed as e:
                if step.kind != "vocabulary" or "vocabulary check failed" not in str(e):
                    raise
                keep_full_vocabulary(step, out, str(e))
        measured[candidate.name] = benchmark_rows(candidate.measure, out)[0]
        shown = front(measured, metric, recipe.optimise)
        print_line(
            "front so far: "
            + "; ".join(
                f"{n} {r[metric]:.4f}{'' if recipe.within(r[metric], teacher_row[metric]) else ' (over budget)'}, "
                f"{r['latency_ms_p50']:.2f} ms, {r['size_mb']:.1f} MB"
                for n, r in shown.items()
            )
        )
    progress.run(report_step)
    shutil.rmtree(report_step.folder(out) / "onnx", ignore_errors=True)  # the teacher's exports: timed, done
    rows = benchmark_rows(report_step, out)
    chosen, within = choose(rows, recipe, metric)
    best = next(c for c in plan.candidates if c.name == chosen["model"])
    test = test_score(best, out, recipe)
    copy_best(best, out)
    seconds = {c.name: sum(done(s, out)["seconds"] for s in c.steps) for c in plan.candidates}
    if plan.teacher:
        seconds["teacher fp32"] = done(plan.teacher, out)["seconds"]
    records = [done(s, out) for s in steps]
    compute = sum(r["seconds"] for r in records)  # over every run that built this OUT
    notes = [f"{r['name']}: {r['note']}" for r in records if "note" in r]
    write_report(
        out,
        recipe,
        rows,
        chosen,
        within,
        test,
        seconds,
        compute,
        time.perf_counter() - started,
        report_step,
        notes,
    )
    if not within:
        print_line(
            f"no candidate is within the budget: the best one found ({chosen['model']}, {metric} "
            f"{chosen[metric]:.4f}) and the report are in {out}"
        )
        return NO_CANDIDATE_IN_BUDGET
    print_line(
        f"chosen: {chosen['model']} ({metric} {chosen[metric]:.4f}, {chosen['speedup_b1']:.1f}x faster and "
        f"{chosen['smaller']:.1f}x smaller than the teacher in PyTorch): {out / 'best'}; report: {out / 'report.md'}"
    )
    return 0


def keep_full_vocabulary(step: Step, out: Path, why: str) -> None:
    """A pruned vocabulary that fails its check on the validation split (too few training rows saw the
    tokens it needs) is not a reason to stop the chain: the candidate keeps the full vocabulary."""
    shutil.rmtree(step.product(out), ignore_errors=True)
    shutil.copytree(step.inputs[0].product(out), step.product(out))
    reason = why.split("(", 1)[1].split(";", 1)[0] if "(" in why else why
    mark_done(
        step,
        out,
        {"kind": step.kind, "name": step.name, "seconds": 0.0, "note": f"full vocabulary kept: {reason}"},
    )
    print_line(
        f"{step.name}: the pruned vocabulary failed its check ({reason}): it keeps the full vocabulary"
    )


def test_score(candidate, out: Path, recipe: Recipe) -> dict[str, Any] | None:
    """The chosen model's score on the test split (when the data has one with labels)."""
    step = Step(
        "test",
        candidate.name,
        ["benchmark", f"--model={candidate.name}={candidate.onnx.ref}", "--data", "{out}/run-data.yaml"]
        + ["--split", "test", "--out", "{dir}", *SCORE_ONLY],
        inputs=[candidate.onnx],
        salt=salt(recipe),
        output="benchmark.json",
    )
    try:
        run_step(step, out)
    except Exception as e:  # noqa: BLE001 - no test split with labels: the report says so
        return {"error": str(e)}
    return benchmark_rows(step, out)[0]


def copy_best(candidate, out: Path) -> None:
    """``OUT/best/onnx`` (the int8 ONNX folder) and ``OUT/best/model`` (its fp32 Hugging Face folder),
    replaced whole."""
    tmp = out / "best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copytree(candidate.onnx.product(out), tmp / "onnx")
    shutil.copytree(candidate.fp32.product(out), tmp / "model")
    if (out / "best").exists():
        shutil.rmtree(out / "best")
    os.replace(tmp, out / "best")
