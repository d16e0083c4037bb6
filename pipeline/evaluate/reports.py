"""The reports: eval.json (every figure), the DVC metrics, eval.md (the table) and the chart."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.atomic import write_json_atomic, write_text_atomic
from pipeline.evaluate.plot import tradeoff_plot
from pipeline.evaluate.rows import RANDOM_INIT_WARNING, EvalRow, primary_metric


def rows_to_json(rows: Sequence[EvalRow], context: dict[str, Any]) -> dict[str, Any]:
    """The DVC metrics file: one flat-ish block per row, keyed so `dvc exp show` columns read well."""
    students: dict[str, Any] = {}
    compares: dict[str, Any] = {}
    teacher: dict[str, Any] | None = None
    for row in rows:
        block: dict[str, Any] = {k: _finite(v) for k, v in row.metrics.items()}
        for key in ("clips_per_second", "gflops", "tokens_out", "compile_seconds"):
            value = getattr(row, key)
            if value is not None:
                block[key] = _finite(round(value, 4) if isinstance(value, float) else value)
        if row.kind == "student":
            students[f"r={row.r}"] = block
        elif row.kind == "compare":
            compares[row.name] = block
        else:
            block["random_init"] = any(RANDOM_INIT_WARNING in note for note in row.notes)
            teacher = block
    out: dict[str, Any] = {"student": students}
    if compares:
        out["compare"] = compares
    if teacher is not None:
        out["teacher"] = teacher
    out["eval"] = {k: _finite(v) for k, v in context.items() if isinstance(v, (int, float, str, bool))}
    return out


def tracked_metrics(rows: Sequence[EvalRow], multi_label: bool) -> dict[str, Any]:
    """The few figures DVC tracks (`dvc metrics show`, `dvc exp show`): the main metric and the
    analytic GFLOPs per model and r. eval.json keeps everything; measured clips/s stays out of
    it, because timing moves between two runs of the same code and `dvc exp show --only-changed`
    would list it for every experiment. Short keys keep the table narrow (`r8.mAP`)."""
    main = primary_metric(multi_label)
    out: dict[str, Any] = {}
    for row in rows:
        value = row.metrics.get(main)
        block: dict[str, Any] = {main: _finite(round(value, 4) if isinstance(value, float) else value)}
        if row.gflops is not None:
            block["gflops"] = _finite(round(row.gflops, 3))
        if row.kind == "student":
            out[f"r{row.r}"] = block
        elif row.kind == "compare":
            out.setdefault("compare", {})[row.name] = block
        else:
            out["teacher"] = block
    return out


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def markdown_table(rows: Sequence[EvalRow], multi_label: bool, context: dict[str, Any]) -> str:
    """The human-readable report: one table row per (model, r), then the notes."""
    main = primary_metric(multi_label)
    header = ["model", "r", main, "mAUC", "d'", "clips/s", "GFLOPs/clip", "tokens in→out", "clips"]
    if not multi_label:
        header.insert(3, "mAP")
    lines = [
        f"# Evaluation: {context.get('checkpoint', '')}",
        "",
        f"Eval datafile `{context.get('datafile', '')}` ({context.get('clips', '?')} clips, "
        f"{context.get('classes', '?')} classes{_chance_note(context, multi_label)}). "
        f"Throughput: {context.get('device', '?')}, "
        f"batch {context.get('batch_size', '?')}, {context.get('precision', '?')}, model forward only "
        f"(features precomputed), after warm-up, synchronised.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        m = row.metrics
        cells = [
            row.name + (" ⚠" if row.notes else ""),
            row.r if row.r is not None else "–",
            _fmt(m.get(main), 4),
        ]
        if not multi_label:
            cells.append(_fmt(m.get("mAP"), 4))
        cells += [
            _fmt(m.get("mAUC"), 4), _fmt(m.get("d_prime"), 3), _fmt(row.clips_per_second, 1), _fmt(row.gflops, 3),
            f"{row.tokens_in}→{row.tokens_out}" if row.tokens_in is not None else "–", str(row.clips),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {row.name}: {note}" for row in rows for note in row.notes]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def _chance_note(context: dict[str, Any], multi_label: bool) -> str:
    chance = context.get("chance_mAP")
    if not multi_label or not isinstance(chance, float) or not math.isfinite(chance):
        return ""
    return f"; a random ranking scores mAP ≈ {chance:.3f} on average"


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def write_reports(rows: Sequence[EvalRow], multi_label: bool, context: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """reports/eval.json (every figure), metrics.json (the ones DVC tracks), eval.md (table),
    tradeoff.png (chart); written atomically."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "eval.json", "md": out_dir / "eval.md", "png": out_dir / "tradeoff.png",
             "metrics": out_dir / "metrics.json"}
    write_json_atomic(paths["json"], rows_to_json(rows, context))
    write_json_atomic(paths["metrics"], tracked_metrics(rows, multi_label))
    write_text_atomic(paths["md"], markdown_table(rows, multi_label, context))
    title = f"{primary_metric(multi_label)} against throughput: {context.get('checkpoint', '')}\n{context.get('device', '')}"
    tradeoff_plot(rows, multi_label, paths["png"], title=title, context=context)
    return paths
