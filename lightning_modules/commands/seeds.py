"""``shrink seeds``: one training stage over several seeds, its scores as mean and standard deviation.

    shrink seeds --seeds 3 --out_dir runs/kd --config configs/sst2/distill.yaml [stage options]

Each seed ``s`` runs ``shrink fit ... --seed_everything s --out_dir OUT/seed-s`` and then ``shrink test``
on the final weights (``--ckpt_path last``; ``best`` picks the best validation checkpoint instead),
in processes of their own. ``OUT/seeds.json`` and ``OUT/seeds.md`` hold each seed's test metrics and
their mean and sample standard deviation. Rerunning the command skips finished seeds and resumes a
killed one from its last checkpoint; an OUT that holds another command's seeds is refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

OK, FAILED, BAD_INPUT = 0, 1, 2


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="shrink seeds",
        description="Run one training stage over several seeds; report test metrics as mean and std. "
        "Options not listed here go to `shrink fit` / `shrink test` (e.g. --config).",
    )
    parser.add_argument("--seeds", required=True, help="a count (3: seeds 0, 1, 2) or a list (0,7,42)")
    parser.add_argument("--out_dir", required=True, help="one folder per seed goes under it")
    parser.add_argument("--ckpt_path", default="last", choices=["last", "best"], help="weights to test")
    parser.add_argument("--overwrite", default="false", choices=["true", "false"], help="replace OUT's seeds")
    return parser.parse_known_args(argv)


def seed_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if len(values) == 1 and "," not in text:
        values = list(range(values[0])) if values[0] > 0 else []
    if not values or len(set(values)) < len(values):
        raise ValueError(f"--seeds {text!r}: give a count above 0 or distinct integers (0,1,2)")
    return values


def shrink(*args: str, log: Path) -> subprocess.CompletedProcess:
    with log.open("w") as f:
        return subprocess.run(
            [sys.executable, "-m", "lightning_modules.commands.shrink", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def error_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error:")]
    return lines[-1] if lines else f"see {log}"


def summary(results: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of each metric over the seeds."""
    names = sorted(set.intersection(*(set(m) for m in results.values())))
    out = {}
    for name in names:
        values = [results[s][name] for s in results]
        out[name] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values),
        }
    return out


def table(stage_args: list[str], results: dict[int, dict[str, float]], stats: dict) -> str:
    names = list(stats)
    lines = [
        f"`shrink fit {' '.join(stage_args)}` over seeds {', '.join(map(str, results))}",
        "",
        "| seed | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    lines += [f"| {s} | " + " | ".join(f"{m[n]:.4f}" for n in names) + " |" for s, m in results.items()]
    lines.append(
        "| mean ± std | "
        + " | ".join(f"{stats[n]['mean']:.4f} ± {stats[n]['std']:.4f}" for n in names)
        + " |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    options, stage_args = parse(list(sys.argv[1:] if argv is None else argv))
    try:
        seeds = seed_list(options.seeds)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(BAD_INPUT)
    out = Path(options.out_dir)
    if any(a == "--out_dir" or a.startswith(("--out_dir=", "--seed_everything")) for a in stage_args):
        print(
            "error: --out_dir and --seed_everything are set per seed by shrink seeds: drop them",
            file=sys.stderr,
        )
        sys.exit(BAD_INPUT)
    record = {"stage_args": stage_args, "ckpt_path": options.ckpt_path}
    command_file = out / "seeds-command.json"
    if (
        command_file.exists()
        and json.loads(command_file.read_text()) != record
        and options.overwrite != "true"
    ):
        print(
            f"error: {out} holds the seeds of another command: choose another --out_dir or pass --overwrite true",
            file=sys.stderr,
        )
        sys.exit(BAD_INPUT)
    out.mkdir(parents=True, exist_ok=True)
    command_file.write_text(json.dumps(record, indent=1))
    results: dict[int, dict[str, float]] = {}
    for seed in seeds:
        folder = out / f"seed-{seed}"
        metrics_file = folder / "test_metrics.json"
        per_seed = [*stage_args, "--seed_everything", str(seed), "--out_dir", str(folder)]
        if options.overwrite == "true":
            shutil.rmtree(folder, ignore_errors=True)
        if not metrics_file.exists():
            if not (folder / "model").exists():  # not trained to the end: train, or resume a killed run
                resume = (folder / "checkpoints" / "last.ckpt").exists()
                print(f"seed {seed}: training{' (resumed)' if resume else ''} -> {folder}", file=sys.stderr)
                log = folder.with_suffix(".fit.log")
                done = shrink("fit", *per_seed, *(["--ckpt_path", "last"] if resume else []), log=log)
                if done.returncode:
                    print(f"error: seed {seed}: {error_line(log)}", file=sys.stderr)
                    sys.exit(BAD_INPUT if done.returncode == BAD_INPUT else FAILED)
            log = folder.with_suffix(".test.log")
            if shrink("test", *per_seed, "--ckpt_path", options.ckpt_path, log=log).returncode:
                print(f"error: seed {seed}: {error_line(log)}", file=sys.stderr)
                sys.exit(FAILED)
        results[seed] = json.loads(metrics_file.read_text())
        print(
            f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(results[seed].items())),
            file=sys.stderr,
        )
    stats = summary(results)
    (out / "seeds.json").write_text(json.dumps({"seeds": results, "summary": stats, **record}, indent=1))
    (out / "seeds.md").write_text(table(stage_args, results, stats))
    print(table(stage_args, results, stats))
