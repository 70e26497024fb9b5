"""The compress report: every candidate as deployed beside the two baselines (the teacher in PyTorch,
and the teacher through ONNX Runtime's own int8 quantizer), the Pareto front, the choice within
the accuracy budget; ``report.md``, ``report.json``, ``report.png`` and the same summary in W&B."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lightning_modules.commands.benchmark_report import metric_key
from lightning_modules.compress.recipe import OBJECTIVES, Recipe
from lightning_modules.cpu import cpu_name

TEACHER = "teacher fp32"
PEER = "teacher fp32: ORT dynamic int8"  # what optimum's default recipe gives a user


def front(rows: dict[str, dict], metric: str, optimise: str) -> dict[str, dict]:
    """The candidates no other beats on the metric, latency and size at once, best objective first."""
    keys = [(metric, False), ("latency_ms_p50", True), ("size_mb", True)]

    def beats(a: dict, b: dict) -> bool:
        better_or_equal = all((a[k] <= b[k]) if low else (a[k] >= b[k]) for k, low in keys)
        return better_or_equal and any((a[k] < b[k]) if low else (a[k] > b[k]) for k, low in keys)

    kept = {n: r for n, r in rows.items() if not any(beats(o, r) for m, o in rows.items() if m != n)}
    key, low = OBJECTIVES[optimise]
    return dict(sorted(kept.items(), key=lambda item: item[1][key] if low else -item[1][key]))


def choose(rows: list[dict], recipe: Recipe, metric: str) -> tuple[dict, bool]:
    """The candidate best on the objective among those within the budget of the teacher's score;
    when none is, the one with the highest score (and False)."""
    teacher = next(r for r in rows if r["model"] == TEACHER)
    candidates = [r for r in rows if not r["model"].startswith(TEACHER)]
    within = [r for r in candidates if recipe.within(r[metric], teacher[metric])]
    if not within:
        return max(candidates, key=lambda r: r[metric]), False
    key, low = OBJECTIVES[recipe.optimise]
    return min(within, key=lambda r: ((r[key] if low else -r[key]), -r[metric])), True


def write_report(
    out: Path,
    recipe: Recipe,
    rows: list[dict],
    chosen: dict,
    within: bool,
    test: dict | None,
    seconds: dict[str, float],
    compute: float,
    wall: float,
    report_step: Any,
    notes: list[str],
) -> dict[str, Any]:
    metric = metric_key(rows)
    teacher = next(r for r in rows if r["model"] == TEACHER)
    peer = next((r for r in rows if r["model"] == PEER), None)
    floor = recipe.floor(teacher[metric])
    table = []
    for row in rows:
        entry = {
            "model": row["model"],
            "runtime": row["runtime"],
            metric: row[metric],
            "retention": row["retention"],
            "latency_ms_p50": row["latency_ms_p50"],
            "throughput_b32": row["throughput_b32"],
            "size_mb": row["size_mb"],
            "speedup_vs_teacher": row["speedup_b1"],
            "speedup_vs_ort_int8": round(peer["latency_ms_p50"] / row["latency_ms_p50"], 2) if peer else None,
            "smaller_vs_teacher": row["smaller"],
            "within_budget": recipe.within(row[metric], teacher[metric]),
            "seconds": seconds.get(row["model"]),
        }
        table.append(entry)
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    summary = {
        "recipe": str(recipe.path),
        "cpu": cpu_name(),
        "metric": metric,
        "teacher": teacher[metric],
        "budget": {
            "points": recipe.budget_points,
            "relative": recipe.budget_relative,
            "floor": round(floor, 4),
        },
        "optimise": recipe.optimise,
        "chosen": chosen["model"],
        "within_budget": within,
        "test": {metric: test.get(metric)}
        if test and metric in test
        else {"unavailable": (test or {}).get("error")},
        "compute_seconds": round(compute, 1),
        "wall_seconds_this_run": round(wall, 1),
        "disk_bytes": disk,
        "notes": notes,
        "rows": table,
    }
    _write(out / "report.json", json.dumps(summary, indent=1))
    _write(out / "report.md", markdown(summary))
    shutil.copyfile(report_step.folder(out) / "benchmark.png", out / "report.png")
    wandb_summary(out, summary)
    return summary


def markdown(summary: dict[str, Any]) -> str:
    metric = summary["metric"]
    lines = [
        f"# shrink compress: {summary['recipe']}",
        "",
        f"CPU: {summary['cpu']}. Validation split; latency at batch 1 (p50), 1 thread unless the recipe says.",
        f"Budget: {metric} >= {summary['budget']['floor']} (teacher {summary['teacher']:.4f}); "
        f"optimised for {summary['optimise']}.",
        "",
        f"| model | runtime | {metric} | retention | b1 p50 (ms) | b32 samples/s | size (MB) | "
        "speed-up vs teacher | vs ORT int8 of teacher | smaller | in budget | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        mark = "**" if r["model"] == summary["chosen"] else ""
        lines.append(
            f"| {mark}{r['model']}{mark} | {r['runtime']} | {r[metric]:.4f} | {r['retention']:.4f} | "
            f"{r['latency_ms_p50']:.2f} | {r['throughput_b32']:.1f} | {r['size_mb']:.1f} | "
            f"{r['speedup_vs_teacher']:.1f}x | {r['speedup_vs_ort_int8'] or float('nan'):.1f}x | "
            f"{r['smaller_vs_teacher']:.1f}x | {'yes' if r['within_budget'] else 'no'} | "
            f"{'' if r['seconds'] is None else round(r['seconds'])} |"
        )
    test = summary["test"]
    lines += [
        "",
        f"Chosen: **{summary['chosen']}**"
        + ("" if summary["within_budget"] else " (no candidate is within the budget: the best one found)")
        + (
            f"; test {metric} {test[metric]:.4f}"
            if metric in test
            else f"; no test score ({test.get('unavailable')})"
        ),
        f"Time spent on the steps (all runs of this OUT): {summary['compute_seconds'] / 60:.1f} min; "
        f"disk used {summary['disk_bytes'] / 1e9:.2f} GB.",
        *(f"- {note}" for note in summary["notes"]),
        "",
    ]
    return "\n".join(lines)


def wandb_summary(out: Path, summary: dict[str, Any]) -> None:
    """The report as one W&B run (offline without an API key), beside the stages' own runs."""
    import wandb

    run = wandb.init(
        project="shrink",
        name=f"compress {out.name}",
        dir=str(out),
        job_type="compress",
        reinit="finish_previous",
        settings=wandb.Settings(silent=True),
    )
    try:
        columns = list(summary["rows"][0])
        run.log(
            {
                "candidates": wandb.Table(
                    columns=columns, data=[[r[c] for c in columns] for r in summary["rows"]]
                )
            }
        )
        run.summary.update({k: v for k, v in summary.items() if k != "rows"})
    finally:
        run.finish()


def _write(path: Path, text: str) -> None:
    path.with_suffix(path.suffix + ".tmp").write_text(text)
    os.replace(path.with_suffix(path.suffix + ".tmp"), path)
