"""What ``shrink compress`` runs: the recipe turned into steps, each an existing ``shrink`` command on
the task's own stage recipes (fine-tune, distill, prune, prune-vocab, QAT or PTQ, export, benchmark).

    teacher (given, or fine-tuned) -> gate (its validation score)
    for each student and pruning level:  distill -> [prune] -> [vocabulary] -> int8 -> ONNX -> measure
    report: the teacher, ONNX Runtime's own int8 of it and every candidate, timed in one run
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.errors import InputError
from lightning_modules.compress.recipe import Recipe, Student
from lightning_modules.compress.steps import Step

# quick timing for a candidate's own measurement: the report times every candidate again, together
QUICK = ["--latency-samples", "40", "--long-repeats", "5", "--throughput-batches", "2", "--rounds", "2"]
SCORE_ONLY = ["--latency-samples", "1", "--long-repeats", "1", "--throughput-batches", "1", "--rounds", "1"]


@dataclass
class Candidate:
    name: str
    steps: list[Step]  # in order: ... int8, export, measure

    @property
    def fp32(self) -> Step:  # the model before int8 (its Hugging Face folder ships beside the ONNX one)
        return self.steps[-4]

    @property
    def onnx(self) -> Step:
        return self.steps[-2]

    @property
    def measure(self) -> Step:
        return self.steps[-1]


@dataclass
class Plan:
    teacher: Step | None  # None: the recipe names a fine-tuned teacher
    teacher_path: str  # the teacher as stages take it (a ref when it is a step)
    gate: Step
    candidates: list[Candidate]

    def report(self, recipe: Recipe) -> Step:
        """The final benchmark: teacher fp32 (PyTorch, the reference), ONNX Runtime's int8 of the
        teacher (what a user gets without shrink), and every candidate's int8 ONNX folder."""
        threads = str(recipe.benchmark.get("threads", 1))
        models = [f"--model=teacher fp32={self.teacher_path}"]
        models += [f"--model={c.name}={c.onnx.ref}" for c in self.candidates]
        timing = [f"--{k.replace('_', '-')}={v}" for k, v in recipe.benchmark.items() if k != "threads"]
        return Step(
            "report",
            "all",
            ["benchmark", *models, "--ort-peers", "teacher fp32", "--data", "{out}/run-data.yaml"]
            + ["--split", "validation", "--threads", threads, "--out", "{dir}", *timing],
            inputs=([self.teacher] if self.teacher else []) + [c.onnx for c in self.candidates],
            salt=salt(recipe),
            output="benchmark.json",
        )


def salt(recipe: Recipe) -> str:
    return json.dumps({"data": recipe.data, "seed": recipe.seed}, sort_keys=True, default=str)


def fingerprint(path: Path) -> str:
    """Names, sizes and modification times of a file or a folder's files."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return json.dumps(
        [
            (str(f.relative_to(path) if path.is_dir() else f.name), f.stat().st_size, f.stat().st_mtime_ns)
            for f in files
        ]
    )


def yaml_value(value: Any) -> str:
    """A value as the command line takes it (YAML)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def fit_args(recipe: Recipe, stage: str, config: Path, *extra: str) -> list[str]:
    """``shrink fit`` of a stage recipe with the pipeline's data, seed and the recipe's overrides."""
    overrides = [f"--{k}={yaml_value(v)}" for k, v in recipe.stage_overrides.get(stage, {}).items()]
    return [
        "fit",
        "--config",
        str(config.resolve()),
        "--data",
        "{out}/data.yaml",
        "--seed_everything",
        str(recipe.seed),
        "--out_dir",
        "{dir}",
        *extra,
        *overrides,
    ]


def teacher_tokenizer_args(teacher: str) -> list[str]:
    """The teacher's own tokenizer for the data of every stage it teaches in (it may differ from the
    student's): a model folder holds it; a checkpoint's stages find it themselves."""
    if teacher.startswith("{step:") or (Path(teacher) / "tokenizer_config.json").is_file():
        return [f"--data.init_args.teacher_tokenizer={teacher}"]
    return []


def transfer_text_args(student: Student) -> list[str]:
    """The student's own transfer text for its vocabulary step: the student trained on those tokens
    too, and a few thousand labelled rows alone leave out many words the validation split uses."""
    args = []
    for key, value in student.overrides.items():
        name = key.removeprefix("data.").removeprefix("init_args.")
        if key.startswith("data.") and name in ("transfer_files", "transfer_ratio", "transfer_seed"):
            args += ["--set", f"{name}={yaml_value(value)}"]
    return args


def build_plan(recipe: Recipe) -> Plan:
    s = salt(recipe)
    teacher = None
    if recipe.teacher_finetune is not None:
        teacher = Step(
            "teacher",
            "teacher",
            fit_args(recipe, "finetune", recipe.teacher_finetune),
            recipe=recipe.teacher_finetune,
            salt=s,
        )
        teacher_path = teacher.ref
    else:
        teacher_path = str(Path(recipe.teacher_model).resolve())
        s += fingerprint(Path(teacher_path))  # a teacher replaced at the same path is another teacher
    with_teacher = [f"--model.init_args.teacher={teacher_path}", *teacher_tokenizer_args(teacher_path)]
    with_teacher.append("--model.init_args.cache_dir={out}/cache")  # one teacher cache, built once
    upstream = [teacher] if teacher else []
    gate = Step(
        "gate",
        "teacher",
        ["benchmark", f"--model=teacher={teacher_path}", "--data", "{out}/run-data.yaml"]
        + ["--split", "validation", "--out", "{dir}", *SCORE_ONLY],
        inputs=upstream,
        salt=s,
        output="benchmark.json",
    )
    candidates = []
    for student in recipe.students:
        overrides = [f"--{k}={yaml_value(v)}" for k, v in student.overrides.items()]
        distill = Step(
            "distill",
            student.name,
            fit_args(recipe, "distill", student.distill, *with_teacher, *overrides),
            inputs=upstream,
            recipe=student.distill,
            salt=s,
        )
        for level in student.prune:
            steps, name = [distill], student.name
            if level:
                sparsity = level.get("model.init_args.target_sparsity")
                name += f"-pruned{round(100 * sparsity)}" if sparsity else "-pruned"
                prune_args = [f"--model.init_args.model_name_or_path={steps[-1].ref}", *with_teacher]
                prune_args += [f"--{k}={yaml_value(v)}" for k, v in level.items()]
                steps.append(
                    Step(
                        "prune",
                        name,
                        fit_args(recipe, "prune", recipe.prune_recipe, *prune_args),
                        inputs=[*upstream, steps[-1]],
                        recipe=recipe.prune_recipe,
                        salt=s,
                    )
                )
            if recipe.prune_vocabulary is not None:
                name += "-vocab"
                steps.append(
                    Step(
                        "vocabulary",
                        name,
                        ["export", "prune-vocab", f"--model={steps[-1].ref}", "--out", "{dir}/model"]
                        + ["--data", "{out}/run-data.yaml", "--overwrite", *transfer_text_args(student)]
                        + [f"--{k.replace('_', '-')}={v}" for k, v in recipe.prune_vocabulary.items()],
                        inputs=[steps[-1]],
                        salt=s,
                    )
                )
            steps.append(int8_step(recipe, name, steps[-1], with_teacher, upstream, s))
            steps.append(
                Step(
                    "export",
                    name,
                    ["export", "onnx", f"--model={steps[-1].ref}", "--out", "{dir}/onnx"]
                    + ["--data", "{out}/run-data.yaml", "--overwrite"],
                    inputs=[steps[-1]],
                    salt=s,
                    output="onnx",
                )
            )
            steps.append(
                Step(
                    "measure",
                    name,
                    ["benchmark", f"--model={name}={steps[-1].ref}", "--data", "{out}/run-data.yaml"]
                    + ["--split", "validation", "--out", "{dir}", *QUICK],
                    inputs=[steps[-1]],
                    salt=s,
                    output="benchmark.json",
                )
            )
            candidates.append(Candidate(name, steps))
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise InputError(f"two candidates are both named {max(names, key=names.count)!r}: rename a student")
    return Plan(teacher, teacher_path, gate, candidates)


def int8_step(
    recipe: Recipe, name: str, source: Step, with_teacher: list[str], upstream: list, s: str
) -> Step:
    """QAT (the task's qat recipe, guided by the teacher) or PTQ (no training) of the fp32 model."""
    if recipe.quantize == "ptq":
        return Step(
            "ptq",
            name,
            ["export", "ptq", f"--model={source.ref}", "--out", "{dir}/int8.ckpt", "--scheme", recipe.scheme]
            + ["--data", "{out}/run-data.yaml", "--overwrite"],
            inputs=[source],
            salt=s,
            output="int8.ckpt",
        )
    qat_args = [f"--model.init_args.model_name_or_path={source.ref}", *with_teacher]
    qat_args.append(f"--model.init_args.scheme={recipe.scheme}")
    return Step(
        "qat",
        name,
        fit_args(recipe, "qat", recipe.qat_recipe, *qat_args),
        inputs=[*upstream, source],
        recipe=recipe.qat_recipe,
        salt=s,
    )
