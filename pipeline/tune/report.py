"""What `fat tune-r` writes: schedule.json (the chosen schedule file), pareto.json (every measured
schedule and the front), pareto.png (the chart, in the style of evaluate's tradeoff chart) and tune.md."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_path, write_json_atomic, write_text_atomic
from pipeline.tune.search import Candidate, TuneResult, pareto_front
from student.schedule import schedule_document


def result_json(result: TuneResult, context: dict[str, Any]) -> dict[str, Any]:
    return {
        "budget": result.budget.describe(), "metric": result.main, "verdict": result.verdict,
        "evaluations": result.evaluations, "context": context, "notes": result.notes,
        "final_timing": {name: c.to_json() for name, c in result.final.items()},
        "front": [c.to_json() for c in pareto_front(result.candidates)],
        "candidates": [c.to_json() for c in result.candidates],
    }


def write_reports(result: TuneResult, context: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """schedule.json, pareto.json, pareto.png and tune.md in `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    paths = {"schedule": out_dir / "schedule.json", "pareto": out_dir / "pareto.json",
             "png": out_dir / "pareto.png", "md": out_dir / "tune.md"}
    chosen, constant = result.chosen, result.best_constant
    write_json_atomic(paths["schedule"], schedule_document(
        list(chosen.schedule), kind=chosen.kind, label=chosen.label, metric=result.main, value=chosen.metric,
        clips_per_second=chosen.clips_per_s, speedup=chosen.speedup, gflops=round(chosen.gflops, 4),
        tokens_out=chosen.tokens_out, budget=result.budget.describe(), verdict=result.verdict,
        best_constant=None if constant is None else {"label": constant.label, "value": constant.metric,
                                                     "speedup": constant.speedup},
        **context))
    write_json_atomic(paths["pareto"], result_json(result, context))
    write_text_atomic(paths["md"], markdown(result, context))
    chart(result, paths["png"], context)
    return paths


def markdown(result: TuneResult, context: dict[str, Any]) -> str:
    rows = [("chosen", result.final["chosen"])]
    if "best_constant" in result.final:
        rows.append(("best constant r", result.final["best_constant"]))
    rows.append(("r = 0", result.final["r=0"]))
    lines = [f"# Merge schedule for {context.get('checkpoint', '')}", "",
             f"Budget: {result.budget.describe()}; {result.main} on `{context.get('datafile', '')}` "
             f"({context.get('clips', '?')} clips); throughput on {context.get('device', '?')}, batch "
             f"{context.get('batch_size', '?')}, {context.get('precision', '?')}, timed together in one last run. "
             f"{result.evaluations} schedules scored.", "",
             f"**The chosen schedule {result.verdict} the best constant r.**" if result.best_constant else
             f"**{result.verdict}.**", "",
             f"| | r per block | {result.main} | clips/s | speed-up | GFLOPs/clip | tokens out |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, c in rows:
        lines.append(f"| {name} ({c.label}) | {','.join(map(str, c.schedule))} | {c.metric:.4f} | "
                     f"{c.clips_per_s:.1f} | {c.speedup:.2f}× | {c.gflops:.3f} | {c.tokens_out} |")
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def chart(result: TuneResult, path: Path, context: dict[str, Any]) -> None:
    """Accuracy against measured throughput: every schedule, the constants as a line, the front, the
    chosen one, and the budget as a vertical line when it is a speed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    by_kind = {kind: [c for c in result.candidates if c.kind == kind and c.clips_per_s] for kind in
               ("searched", "decreasing", "constant")}
    styles = {"searched": ("x", "tab:gray", "per-block lists (searched)"),
              "decreasing": ("^", "tab:green", "ToMe's decreasing r:-1"),
              "constant": ("o-", "tab:blue", "constant r")}
    for kind, points in by_kind.items():
        if points:
            points.sort(key=lambda c: c.clips_per_s)
            marker, color, label = styles[kind]
            ax.plot([c.clips_per_s for c in points], [c.metric for c in points], marker, color=color, label=label,
                    markersize=5, alpha=0.8)
    front = pareto_front(result.candidates)
    ax.plot([c.clips_per_s for c in front], [c.metric for c in front], "--", color="tab:purple", label="Pareto front")
    chosen = result.chosen
    ax.plot([chosen.clips_per_s], [chosen.metric], "*", color="tab:red", markersize=14,
            label=f"chosen ({result.verdict} best constant)" if result.best_constant else "chosen")
    base = result.base.clips_per_s
    if result.budget.speedup is not None and base:
        ax.axvline(result.budget.speedup * base, color="tab:red", linestyle=":", label=result.budget.describe())
    elif result.budget.clips_per_s is not None:
        ax.axvline(result.budget.clips_per_s, color="tab:red", linestyle=":", label=result.budget.describe())
    ax.set_xlabel("throughput (clips/s, model forward)")
    ax.set_ylabel(result.main)
    title = f"{result.main} against throughput per merge schedule: {context.get('checkpoint', '')}\n" \
            f"{context.get('device', '')}"
    ax.set_title("\n".join(textwrap.fill(line, 70) for line in title.splitlines()), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def summary_line(result: TuneResult) -> str:
    c = result.final["chosen"]
    line = (f"tune-r: chosen {c.label} ({','.join(map(str, c.schedule))}): {result.main} {c.metric:.4f}, "
            f"{c.speedup:.2f}× r = 0 ({c.clips_per_s:.1f} clips/s)")
    best: Candidate | None = result.final.get("best_constant")
    if best is not None:
        line += (f"; best constant {best.label}: {result.main} {best.metric:.4f}, {best.speedup:.2f}×; the chosen "
                 f"schedule {result.verdict} it")
    return line
