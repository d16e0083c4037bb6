"""Which DVC stage output, if any, holds a path: a file written there is DVC's to delete.

When `dvc repro` finds a stage cached it checks the stage's outputs out again, and an output folder
comes back as the cache has it: files written into it since are gone. Commands that write where
the user says (`fat export --out`) warn before writing into one.

Read from the files alone (no DVC import, no subprocess): every dvc.yaml from the path's folder up
to the repository root (the folder with `.dvc/`), its stages' `outs`, `metrics` and `plots`, with
`${...}` filled from the dvc.yaml's `vars` and its folder's params.yaml and `foreach` expanded, and
the paths dvc.lock recorded. Anything unreadable is skipped: this is a warning, never a refusal.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

OUTPUT_KEYS = ("outs", "metrics", "plots")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: a long dvc.lock in 0.1 s, not 0.7
_REFERENCE = re.compile(r"\$\{\s*([^}]+?)\s*\}")


@dataclass(frozen=True)
class StageOutput:
    """An output path (absolute) of one stage, and the dvc.yaml that declares it."""

    stage: str
    out: Path
    dvc_yaml: Path


def dvc_output_holding(path: Path) -> StageOutput | None:
    """The DVC stage output that is `path` or a folder above it, if any."""
    target = Path(path).resolve()
    for output in stage_outputs(target.parent):
        if output.out == target or output.out in target.parents:
            return output
    return None


def stage_outputs(folder: Path) -> Iterator[StageOutput]:
    """The outputs of every stage in the dvc.yaml files from `folder` up to its DVC repository root."""
    for directory in (folder, *folder.parents):
        if (directory / "dvc.yaml").is_file():
            yield from _outputs_of(directory)
        if (directory / ".dvc").is_dir():
            return


def _outputs_of(directory: Path) -> Iterator[StageOutput]:
    dvc_yaml = directory / "dvc.yaml"
    pipeline = _load(dvc_yaml)
    stages = pipeline.get("stages") if isinstance(pipeline, dict) else None
    if isinstance(stages, dict):
        context = _context(directory, pipeline)
        for name, stage in stages.items():
            for stage_name, body, scope in _expand(str(name), stage, context):
                for key in OUTPUT_KEYS:
                    for entry in body.get(key) or []:
                        out = next(iter(entry), None) if isinstance(entry, dict) else entry
                        text = _fill(out, scope) if isinstance(out, str) else None
                        if text:
                            yield StageOutput(stage_name, (directory / text).resolve(), dvc_yaml)
    lock = _load(directory / "dvc.lock")
    locked = lock.get("stages") if isinstance(lock, dict) else None
    if isinstance(locked, dict):
        for stage_name, stage in locked.items():
            for entry in (stage.get("outs") or []) if isinstance(stage, dict) else []:
                if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                    yield StageOutput(str(stage_name), (directory / entry["path"]).resolve(), dvc_yaml)


def _load(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.load(path.read_text(), Loader=_LOADER)  # noqa: S506 - a safe loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        log.debug("%s: unreadable (%s); its outputs are not known", path, exc)
        return None


def _context(directory: Path, pipeline: dict[str, Any]) -> dict[str, Any]:
    """The values `${...}` reads: params.yaml beside dvc.yaml, then dvc.yaml's `vars` (files or mappings)."""
    context: dict[str, Any] = {}
    sources: list[Any] = ["params.yaml", *(pipeline.get("vars") or [])]
    for source in sources:
        values = _load(directory / source.split(":")[0]) if isinstance(source, str) else source
        if isinstance(values, dict):
            context.update(values)
    return context


def _expand(name: str, stage: Any, context: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(stage name, body, scope) of a plain stage, or of each `foreach` item (`name@item`)."""
    if not isinstance(stage, dict):
        return
    if "foreach" not in stage:
        yield name, stage, context
        return
    items = stage["foreach"]
    if isinstance(items, str):
        match = _REFERENCE.fullmatch(items.strip())
        items = _lookup(match.group(1), context) if match else None
    body = stage.get("do")
    if not isinstance(body, dict):
        return
    if isinstance(items, dict):
        for key, value in items.items():
            yield f"{name}@{key}", body, {**context, "item": value, "key": key}
    elif isinstance(items, list):
        for value in items:
            yield f"{name}@{value}", body, {**context, "item": value}


def _fill(text: str, scope: dict[str, Any]) -> str | None:
    """`text` with every `${a.b}` replaced from `scope`; None if one is not there."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        found = _lookup(match.group(1), scope)
        if found is None or isinstance(found, (dict, list)):
            missing = True
            return ""
        return str(found)

    filled = _REFERENCE.sub(value, text)
    return None if missing else filled


def _lookup(dotted: str, scope: dict[str, Any]) -> Any:
    value: Any = scope
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
