"""Reading AST-format datafiles into clip lists.

A datafile is AST's JSON, `{"data": [{"wav": "<path>", "labels": "<mid>,<mid>"}, ...]}`, so
files made for AST load unchanged; `fat validate` and `fat prepare` also write an `id` per
entry. Paths are relative to the datafile's folder or absolute. An entry's id is its `id`
field when present, else its wav path relative to the datafile's folder without extension.

Three readers, one rule each:
- `read_entries`: the entries as listed, repeated ids kept (`fat validate` reports them);
- `load_datafile`: ids unique within the file; with a label set, every MID checked and encoded;
- `load_clips`: one or more datafiles as one list. An id in two of them is an error naming both
  (the stricter of the two rules the project once had: a clip listed twice would be drawn twice
  as often in training, and its teacher row is one), and so is a datafile that lists no clip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.errors import FatError
from pipeline.datafile.clips import ClipList, PackedStrings
from pipeline.datafile.labels import LabelSet


def read_entries(path: str | Path) -> ClipList:
    """Parse an AST datafile into columns without judging ids or labels (see load_datafile)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FatError(f"{path}: no such datafile") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FatError(f"{path}: cannot read the datafile ({exc})") from None
    try:
        document = json.loads(_strip_comment_lines(text))
    except json.JSONDecodeError as exc:
        raise FatError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    entries = document.get("data") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise FatError(f'{path}: expected an AST datafile {{"data": [{{"wav": ..., "labels": ...}}, ...]}}')
    folder = os.path.abspath(path.parent)
    ids: list[str] = []
    paths: list[str] = []
    joined: list[str] = []
    for i, entry in enumerate(entries):
        wav, label_text, clip_id = _entry_fields(path, i, entry)
        absolute = os.path.normpath(os.path.join(folder, wav))
        if clip_id is None:
            clip_id = os.path.splitext(os.path.relpath(absolute, folder))[0]
        ids.append(clip_id)
        paths.append(absolute)
        joined.append(label_text)
    return ClipList(str(path), PackedStrings(ids), PackedStrings(paths), PackedStrings(joined))


def load_datafile(path: str | Path, labels: LabelSet | None = None) -> ClipList:
    """Read an AST datafile; with `labels`, every MID is checked against them and encoded.

    FatErrors name the datafile and the entry (number and id): not JSON, no "data" list, an entry
    without a "wav" string or "labels" string, an empty or repeated id, an unknown MID.
    Leading `#` comment lines (as in AST's shipped sample file) are tolerated.
    """
    raw = read_entries(path)
    seen: dict[str, int] = {}
    for i, clip_id in enumerate(raw.ids):
        if clip_id in seen:
            raise FatError(f"{raw.source}: entry {i}: id {clip_id!r} repeats entry {seen[clip_id]}")
        seen[clip_id] = i
    return raw.encoded(labels) if labels is not None else raw


def load_clips(datafiles: Sequence[str | Path], labels: LabelSet | None = None,
               require_files: bool = False) -> ClipList:
    """Several datafiles as one list (e.g. AudioSet balanced + unbalanced = AST's full training set).

    Each file's relative wav paths resolve against its own folder. An id listed by two files and
    a file that lists no clip are errors naming them. `require_files`: every clip's audio must
    exist (a FatError names the missing ones) before training or evaluation starts.
    """
    if not datafiles:
        raise FatError("no datafile given")
    parts = [load_datafile(path, labels) for path in datafiles]
    first_seen: dict[str, str] = {}
    for part in parts:
        if len(part) == 0:
            raise FatError(f"{part.source}: the datafile lists no clips")
        if len(parts) > 1:
            for clip_id in part.ids:
                if clip_id in first_seen:
                    raise FatError(f"clip {clip_id} is listed in both {first_seen[clip_id]} and {part.source}")
                first_seen[clip_id] = part.source
    clips = ClipList.concatenate(parts)
    if require_files:
        clips.check_files_exist()
    return clips


def _strip_comment_lines(text: str) -> str:
    if not text.lstrip().startswith("#"):
        return text
    lines = text.splitlines(keepends=True)
    # Blank out (not drop) comment lines so JSON error line numbers still match the file.
    return "".join("\n" if line.lstrip().startswith("#") else line for line in lines)


def _entry_fields(path: Path, i: int, entry: Any) -> tuple[str, str, str | None]:
    if not isinstance(entry, dict):
        raise FatError(f"{path}: entry {i} is not an object with \"wav\" and \"labels\"")
    wav, label_text, clip_id = entry.get("wav"), entry.get("labels"), entry.get("id")
    name = f"entry {i}" + (f" (id {clip_id})" if isinstance(clip_id, str) else "")
    if not isinstance(wav, str) or not wav.strip():
        raise FatError(f'{path}: {name} has no "wav" path')
    if not isinstance(label_text, str):
        raise FatError(f'{path}: {name} has no "labels" string (comma-joined MIDs)')
    if clip_id is not None and (not isinstance(clip_id, str) or not clip_id or not clip_id.isprintable()):
        raise FatError(f'{path}: entry {i}: "id" must be a non-empty printable string, got {clip_id!r}')
    return wav, label_text, clip_id
