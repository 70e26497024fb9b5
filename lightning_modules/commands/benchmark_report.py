"""The benchmark's tables and plot: benchmark.md and benchmark.png from its rows."""

from __future__ import annotations

from pathlib import Path

# why a row's score may differ from its model card's by a few hundredths of a point
SCORES_NOTE = (
    "Scores are of each model as it runs here: PyTorch rows in fp32, ONNX rows in ONNX Runtime, with each "
    "model's own tokenizer. A model card's validation score was taken during training, under the "
    "training precision (bf16-mixed in the recipes): the two may differ in the last digits."
)


def markdown(rows: list[dict], title: str) -> str:
    metric = metric_key(rows)
    header = [
        "model",
        "runtime",
        metric,
        "retention",
        "params (M)",
        "size (MB)",
        "smaller",
        "b1 p50 (ms)",
        "b1 p95 (ms)",
        "speedup b1",
        "128 tok p50 (ms)",
        "128 tok p95 (ms)",
        "b32 samples/s",
    ]
    keys = [
        "model",
        "runtime",
        metric,
        "retention",
        "params_m",
        "size_mb",
        "smaller",
        "latency_ms_p50",
        "latency_ms_p95",
        "speedup_b1",
        "latency_128_ms_p50",
        "latency_128_ms_p95",
        "throughput_b32",
    ]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[k]) for k in keys) + " |")
    lines += ["", SCORES_NOTE]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric_key(rows)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    names = list(dict.fromkeys(row["model"] for row in rows))
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(names)}
    for row in rows:
        marker = "o" if row["runtime"] == "pytorch" else "s"
        ax.scatter(
            row["latency_ms_p50"],
            row[metric],
            s=20 + 2 * row["size_mb"],
            marker=marker,
            color=colors[row["model"]],
            alpha=0.6,
            edgecolors="black",
            linewidths=0.5,
        )
    for name in names:  # one legend entry per model: its colour, and its sizes on disk
        sizes = sorted({f"{r['size_mb']:.0f}" for r in rows if r["model"] == name})
        ax.scatter([], [], color=colors[name], label=f"{name} ({'/'.join(sizes)} MB)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel("latency at batch 1, p50 (ms, log scale)")
    ax.set_ylabel(metric)
    ax.set_title(f"{title}\ncircles: PyTorch, squares: ONNX Runtime; marker area: size on disk", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def metric_key(rows: list[dict]) -> str:
    """The task metric the rows carry: accuracy (sequences), Pearson (regression) or entity F1 (tokens)."""
    return next(k for k in ("accuracy", "pearson", "f1") if k in rows[0])
