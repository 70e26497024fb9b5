"""The ``shrink compress`` recipe (``configs/<task>/compress.yaml``): the teacher, the students to try,
the int8 scheme, the accuracy budget and what to optimise, read and checked before any work."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datamodules.errors import InputError
from lightning_modules.artifacts.checkpoints import int8_checkpoint
from lightning_modules.artifacts.model_folder import INT8_FILE
from lightning_modules.artifacts.onnx_session import ONNX_FILE

OBJECTIVES = {  # what "fastest" means: the benchmark key, and whether smaller is better
    "latency-b1": ("latency_ms_p50", True),
    "throughput-b32": ("throughput_b32", False),
    "size": ("size_mb", True),
}
STAGES = ("finetune", "distill", "prune", "qat")  # the stage recipes a pipeline runs
KNOWN = {
    "out_dir",
    "seed",
    "data",
    "teacher",
    "students",
    "prune_recipe",
    "prune_vocabulary",
    "quantize",
    "budget",
    "optimise",
    "gate",
    "set",
    "benchmark",
}


@dataclass
class Student:
    """One student architecture: its distill recipe and overrides, and the pruning levels tried on it."""

    name: str
    distill: Path
    overrides: dict[str, Any]
    prune: list[dict[str, Any]]  # prune-recipe overrides per level; {} is "not pruned"


@dataclass
class Recipe:
    path: Path
    out_dir: Path
    seed: int
    data: dict[str, Any]  # the data section, given once for every stage
    teacher_model: str | None  # a fine-tuned folder or .ckpt ...
    teacher_finetune: Path | None  # ... or the fine-tune recipe that trains it
    students: list[Student]
    prune_recipe: Path | None
    prune_vocabulary: dict[str, Any] | None  # shrink prune-vocab's options (keep_first: a ladder); None: off
    quantize: str  # "qat" or "ptq"
    qat_recipe: Path | None
    scheme: str
    budget_points: float | None  # absolute, in points of the metric (1 point = 0.01)
    budget_relative: float | None  # fraction of the teacher's score
    optimise: str
    gate_margin: float
    gate_go_on: bool
    stage_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    benchmark: dict[str, Any] = field(default_factory=dict)

    def floor(self, teacher_score: float) -> float:
        """The lowest validation score within the budget of the teacher's."""
        if self.budget_relative is not None:
            return teacher_score - abs(teacher_score) * self.budget_relative
        return teacher_score - self.budget_points / 100

    def within(self, score: float, teacher_score: float) -> bool:
        return score >= self.floor(teacher_score) - 1e-9  # a score at the floor is within


def apply_override(values: dict[str, Any], override: str) -> None:
    """``--set KEY=VALUE`` (VALUE read as YAML) on the recipe: ``data.init_args.data_files={train: a.tsv}``,
    ``teacher.model=runs/teacher/model``; under ``set.STAGE`` and ``students.NAME.set`` the rest of the
    key is one stage option: ``set.finetune.model.init_args.model_name_or_path=/models/mpnet``."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise InputError(f"--set {override!r} is not KEY=VALUE: e.g. --set teacher.model=runs/teacher/model")
    parts, node, path = key.split("."), values, []
    while len(parts) > 1:
        path.append(parts.pop(0))
        if not isinstance(node.get(path[-1]), dict):
            node[path[-1]] = {}
        node = node[path[-1]]
        if path[0] == "set" and len(path) == 2 or path[0] == "students" and path[2:] == ["set"]:
            break
    node[".".join(parts)] = yaml.safe_load(text)
    if key in ("teacher.model", "teacher.finetune") and node[parts[0]]:  # one teacher: the one given
        node.pop("finetune" if key == "teacher.model" else "model", None)


def _number(value: Any, name: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} in {path} is {value!r}, not a number: give e.g. {name}: 1.0")
    return float(value)


def read_recipe(path: str | Path, out_dir: str | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read and check a compress recipe; relative recipe paths are relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"--config {path} does not exist: give a compress recipe, e.g. configs/sst2/compress.yaml"
        )
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{path} is not valid YAML ({str(e).splitlines()[0]}): fix it") from None
    if not isinstance(values, dict):
        raise InputError(f"{path} is not a compress recipe (a mapping with teacher:, students:, budget:)")
    unknown = sorted(set(values) - KNOWN)
    if unknown:
        raise InputError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(KNOWN))})")
    here = path.parent

    def recipe_file(value: Any, what: str) -> Path:
        file = here / str(value)
        if not file.is_file():
            raise InputError(f"{what} {value!r} in {path} does not exist (paths are relative to the recipe)")
        return file

    if isinstance(values.get("data"), str):
        values["data"] = yaml.safe_load(recipe_file(values["data"], "data").read_text(encoding="utf-8"))
    for override in overrides or []:
        apply_override(values, override)
    data = values.get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise InputError(
            f"data in {path} is not a data section or file with a class_path: e.g. data: data.yaml"
        )

    teacher = values.get("teacher") or {}
    model, finetune = teacher.get("model"), teacher.get("finetune")
    if bool(model) == bool(finetune):
        raise InputError(
            f"teacher in {path}: give either model (a fine-tuned folder or .ckpt) or finetune (a recipe)"
        )
    if model:
        _check_teacher(str(model))

    prune_recipe = values.get("prune_recipe", "prune.yaml")
    prune_recipe = here / prune_recipe if (here / prune_recipe).is_file() else None
    students = []
    for name, spec in (values.get("students") or {}).items():
        spec = spec or {}
        levels = []
        for level in spec.get("prune", [0]):
            if isinstance(level, dict):
                levels.append({f"model.init_args.{k}": v for k, v in level.items()})
            elif _number(level, f"students.{name}.prune", path) > 0:
                if not 0 < level < 1:
                    raise InputError(
                        f"students.{name}.prune in {path} has {level}: target sparsities lie in (0, 1)"
                    )
                levels.append({"model.init_args.target_sparsity": float(level)})
            else:
                levels.append({})
        if any(levels) and prune_recipe is None:
            raise InputError(
                f"students.{name} prunes but {here} has no prune.yaml: add the task's prune recipe"
            )
        students.append(
            Student(
                name=str(name),
                distill=recipe_file(spec.get("distill", "distill.yaml"), f"students.{name}.distill"),
                overrides=dict(spec.get("set") or {}),
                prune=levels,
            )
        )
    if not students:
        raise InputError(f"students in {path} is empty: name at least one student and its distill recipe")

    quantize = values.get("quantize") or {}
    method = quantize.get("method", "qat")
    if method not in ("qat", "ptq"):
        raise InputError(f"quantize.method in {path} is {method!r}: use qat or ptq")
    scheme = quantize.get("scheme", "static")
    if scheme not in ("static", "per-token"):
        raise InputError(f"quantize.scheme in {path} is {scheme!r}: use static or per-token")

    budget = values.get("budget")
    if not isinstance(budget, dict) or len(set(budget) & {"points", "relative"}) != 1:
        raise InputError(f"budget in {path} needs one of points (e.g. 1.0) or relative (e.g. 0.01)")
    key = "points" if "points" in budget else "relative"
    amount = _number(budget[key], f"budget.{key}", path)
    if amount < 0:
        raise InputError(f"budget.{key} in {path} is {amount}: an accuracy budget cannot be negative")

    optimise = values.get("optimise", "latency-b1")
    if optimise not in OBJECTIVES:
        raise InputError(f"optimise in {path} is {optimise!r}: use one of {', '.join(OBJECTIVES)}")
    gate = values.get("gate") or {}
    overrides = values.get("set") or {}
    if set(overrides) - set(STAGES):
        raise InputError(
            f"set in {path} names {sorted(set(overrides) - set(STAGES))}: use {', '.join(STAGES)}"
        )
    return Recipe(
        path=path,
        out_dir=Path(out_dir or values.get("out_dir") or f"outputs/{here.name}/compress"),
        seed=int(values.get("seed", 42)),
        data=data,
        teacher_model=str(model) if model else None,
        teacher_finetune=recipe_file(finetune, "teacher.finetune") if finetune else None,
        students=students,
        prune_recipe=prune_recipe,
        prune_vocabulary=_vocabulary(values.get("prune_vocabulary", False), path),
        quantize=method,
        qat_recipe=recipe_file(quantize.get("recipe", "qat.yaml"), "quantize.recipe")
        if method == "qat"
        else None,
        scheme=scheme,
        budget_points=amount if key == "points" else None,
        budget_relative=amount if key == "relative" else None,
        optimise=optimise,
        gate_margin=_number(gate.get("margin", 0.05), "gate.margin", path),
        gate_go_on=bool(gate.get("go_on", False)),
        stage_overrides={k: dict(v or {}) for k, v in overrides.items()},
        benchmark=dict(values.get("benchmark") or {}),
    )


# the smallest vocabulary that passes prune-vocab's check: the training text's tokens alone, then with
# the tokenizer's first 10,000 / 20,000 ids, which keep more unseen words (names above all) whole
VOCABULARY_LADDER = [0, 10000, 20000]


def _vocabulary(value: Any, path: Path) -> dict[str, Any] | None:
    """``true`` / ``false``, or shrink prune-vocab's options: ``{keep_first: [0, 5000], min_count: 2, max_drop: 0.01}``."""
    if value in (None, False):
        return None
    if value is True:
        value = {}
    known = {"keep_first", "min_count", "max_drop"}
    if not isinstance(value, dict) or set(value) - known:
        raise InputError(
            f"prune_vocabulary in {path} is {value!r}: use true, false or a mapping of {sorted(known)}"
        )
    options = {"keep_first": VOCABULARY_LADDER, **value}
    first = options["keep_first"]
    options["keep_first"] = ",".join(str(n) for n in first) if isinstance(first, list) else str(first)
    return options


def _check_teacher(model: str) -> None:
    """A teacher must exist and be fp32: an int8 model is the end of a chain, not a teacher."""
    where = Path(model)
    if not where.exists():
        raise InputError(f"teacher.model {model} does not exist: give a fine-tuned model folder or .ckpt")
    if (where / ONNX_FILE).is_file():
        raise InputError(f"teacher.model {model} is an ONNX folder: give the fp32 model folder or .ckpt")
    if (where / INT8_FILE).is_file() or int8_checkpoint(model) is not None:
        raise InputError(f"teacher.model {model} is an int8 model: give the fp32 model it came from")
