"""reports/tradeoff.png: accuracy against throughput."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_path
from pipeline.evaluate.rows import RANDOM_INIT_WARNING, EvalRow, primary_metric


def tradeoff_plot(rows: Sequence[EvalRow], multi_label: bool, path: str | Path, title: str = "",
                  context: dict[str, Any] | None = None) -> None:
    """Accuracy against throughput: the student's r sweep as a line, compared models as points,
    the teacher as a horizontal line (its accuracy; its speed is not measured here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = primary_metric(multi_label)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    speeds = [row.clips_per_second for row in rows if row.clips_per_second]
    students = [row for row in rows if row.kind == "student" and row.clips_per_second]
    if students:
        xs = [row.clips_per_second for row in students]
        ys = [row.metrics.get(main, float("nan")) for row in students]
        ax.plot(xs, ys, "o-", color="tab:blue", label="student, ToMe r sweep")
        for row, x, y in zip(students, xs, ys):
            _label(ax, f"r={row.r}", x, y, 4, speeds)
    compares = [row for row in rows if row.kind == "compare" and row.clips_per_second]
    if compares:
        ax.plot([row.clips_per_second for row in compares], [row.metrics.get(main, float("nan")) for row in compares],
                "s", color="tab:orange", label="compared checkpoints (r=0)")
        for row in compares:
            _label(ax, row.name, row.clips_per_second, row.metrics.get(main, float("nan")), -10, speeds)
    for row in rows:
        if row.kind == "teacher":
            value = row.metrics.get(main, float("nan"))
            flag = " — RANDOM INIT" if any(RANDOM_INIT_WARNING in n for n in row.notes) else ""
            ax.axhline(value, color="tab:red", linestyle="--", label=f"{row.name}{flag}: {value:.3f}")
    chance = context.get("chance_mAP") if context else None
    if multi_label and isinstance(chance, float) and math.isfinite(chance):
        ax.axhline(chance, color="grey", linestyle=":", label=f"random ranking: {chance:.3f}")
    ax.set_xlabel("throughput (clips/s, model forward)")
    ax.set_ylabel(main)
    # A long checkpoint path or device name is wrapped, never cut at the figure's edges.
    lines = (title or f"{main} against throughput").splitlines()
    ax.set_title("\n".join(textwrap.fill(line, 70) for line in lines), fontsize=9)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _label(ax: Any, text: str, x: float, y: float, dy: float, speeds: Sequence[float]) -> None:
    """A point's label beside it; in the right fifth of the chart it goes to the left of the point,
    so that it never runs past the figure's edge."""
    low, high = min(speeds), max(speeds)
    left = high > low and x > low + 0.8 * (high - low)
    ax.annotate(text, (x, y), textcoords="offset points", xytext=(-4 if left else 4, dy),
                ha="right" if left else "left", fontsize=8)
