"""`fat pack`'s run: a checked datafile → a folder of id-keyed shards of encoded audio.

How a run goes:
1. The datafile's clips, in its order, are cut into shards of `shard_clips`; shard i always
   holds the same clips for the same datafile and settings (the store's identity).
2. Shards already in the folder are kept when they are complete and of this identity; shards of
   another identity are an error unless `--overwrite` (then they are replaced or removed).
   Temporary files of an interrupted run are removed (a lock keeps two runs apart).
3. The remaining shards' clips are encoded by a process pool in batches, results taken in input
   order; each clip is decoded back and checked in its worker. Any error ends the run: the pool
   is shut down, the shard being written is dropped, finished shards stay for the rerun.
4. Each shard is written under a temporary name and renamed when complete (`shard.write_shard`);
   `index.json` lists the shards with their seals (`seal`), rewritten after each shard, and says
   `complete` once every one is in. A rerun compares a kept shard with its recorded seal before
   HDF5 parses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

from pipeline import __version__
from pipeline.core.atomic import is_temp_path, write_json_atomic
from pipeline.core.errors import FatError
from pipeline.datafile import LABEL_CSV_NAME, file_sha256, load_datafile
from pipeline.packed.codecs import EncodedClip, encode_batch
from pipeline.packed.format import FORMAT, INDEX_NAME, SHARD_NAME, identity, identity_sha256, shard_count, shard_name
from pipeline.core.pool import ordered_map
from pipeline.packed.settings import PackSettings
from pipeline.packed.seal import Seal, seal_problem
from pipeline.packed.shard import check_shard_bytes, seal_of, shard_attrs, write_shard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardPlan:
    index: int
    count: int
    start: int  # position of its first clip in the datafile
    stop: int

    @property
    def name(self) -> str:
        return shard_name(self.index, self.count)


@dataclass
class PackOutcome:
    out_dir: Path
    clips: int
    shards: int
    kept: int
    written: int
    bytes: int
    source_bytes: int
    seconds: float
    summary: dict[str, Any]


def plan_shards(clips: int, shard_clips: int) -> list[ShardPlan]:
    """Consecutive runs of the datafile order, `shard_clips` each (the last may be shorter)."""
    count = shard_count(clips, shard_clips)
    return [ShardPlan(i, count, i * shard_clips, min(clips, (i + 1) * shard_clips)) for i in range(count)]


def run_pack(settings: PackSettings) -> PackOutcome:
    """Pack every clip of the datafile; returns what was kept, written and how big it is."""
    settings.check()
    started = time.perf_counter()
    data = load_datafile(settings.datafile)
    if len(data) == 0:
        raise FatError(f"{settings.datafile}: the datafile lists no clips: nothing to pack")
    datafile_sha = file_sha256(settings.datafile)
    labels = settings.labels or settings.datafile.parent / LABEL_CSV_NAME
    label_sha = file_sha256(labels) if labels.is_file() else None
    if settings.labels is not None and label_sha is None:
        raise FatError(f"{settings.labels}: no such label CSV")
    ident = identity(datafile_sha, settings.codec, settings.shard_clips, len(data))
    ident_sha = identity_sha256(ident)
    plans = plan_shards(len(data), settings.shard_clips)
    out = settings.folder
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        _remove_leftovers(out)
        keep = _existing_shards(out, plans, ident, ident_sha, settings)
        todo = [plan for plan in plans if plan.name not in keep]
        provenance = {
            "format": FORMAT, "identity_sha256": ident_sha, "datafile_sha256": datafile_sha,
            "label_csv_sha256": label_sha or "", "codec": settings.codec.codec,
            "codec_settings": json.dumps(settings.codec.as_dict(), sort_keys=True), "fat_version": __version__,
            "libsndfile": sf.__libsndfile_version__,
        }
        index = _index(settings, ident, ident_sha, label_sha, plans, keep, complete=False)
        if todo:
            write_json_atomic(out / INDEX_NAME, index)  # says "incomplete" until the last shard is in
            log.info("%s: %d clips in %d shards; %d kept, %d to write (%s, %d workers)", out, len(data), len(plans),
                     len(keep), len(todo), settings.codec.as_dict(), settings.workers)

            def finished(name: str, info: dict[str, Any]) -> None:
                """A kill from here on keeps the shard's seal: the rerun checks it before parsing the file."""
                keep[name] = info
                write_json_atomic(out / INDEX_NAME, _index(settings, ident, ident_sha, label_sha, plans, keep,
                                                           complete=False))

            _write_shards(settings, data, todo, provenance, finished)
        index = _index(settings, ident, ident_sha, label_sha, plans, keep, complete=True)
        if _read_json(out / INDEX_NAME) != index:
            write_json_atomic(out / INDEX_NAME, index)
    seconds = time.perf_counter() - started
    written = sum(plan.stop - plan.start for plan in todo)
    summary = {
        "clips": len(data), "shards": len(plans), "shards_kept": len(plans) - len(todo), "shards_written": len(todo),
        "clips_written": written, "bytes": index["bytes"], "source_bytes": index["source_bytes"],
        "bytes_vs_source": round(index["bytes"] / index["source_bytes"], 4) if index["source_bytes"] else None,
        "codec": settings.codec.as_dict(), "workers": settings.workers, "seconds": round(seconds, 3),
        "clips_per_second": round(written / seconds, 1) if written and seconds > 0 else None,
    }
    if settings.summary is not None:
        write_json_atomic(settings.summary, summary)
    return PackOutcome(out, len(data), len(plans), len(plans) - len(todo), len(todo), index["bytes"],
                       index["source_bytes"], seconds, summary)


# -- what is already there -----------------------------------------------------------------

@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One `fat pack` per folder at a time (only then may a run remove temporary files it finds).

    The lock is taken on the folder itself, so no lock file ends up in the store.
    """
    handle = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FatError(f"{out}: another `fat pack` is writing this folder") from None
        yield
    finally:
        os.close(handle)  # releases the lock


def _remove_leftovers(out: Path) -> None:
    """Temporary shards and indexes of a run that was killed (never a finished file)."""
    for path in out.iterdir():
        if is_temp_path(path) and path.is_file():
            log.info("removing %s, left by an interrupted run", path)
            path.unlink()


def _existing_shards(out: Path, plans: list[ShardPlan], ident: dict[str, Any], ident_sha: str,
                     settings: PackSettings) -> dict[str, dict]:
    """Finished shards of this identity (name → attributes and seal); errors for, or removal of, any other."""
    planned = {plan.name: plan for plan in plans}
    keep: dict[str, dict[str, Any]] = {}
    foreign: list[Path] = []
    index = _read_json(out / INDEX_NAME)
    same_pack = index is not None and index.get("identity_sha256") == ident_sha
    if index is not None and not same_pack:
        foreign.append(out / INDEX_NAME)
    seals = _recorded_seals(index) if same_pack else {}
    other_attrs: dict[str, Any] | None = None
    for path in sorted(out.iterdir()):
        if not SHARD_NAME.fullmatch(path.name):
            continue
        seal = seals.get(path.name)
        problem = seal_problem(path, seal) if seal is not None else None
        if problem:
            if settings.overwrite:
                foreign.append(path)
                continue
            raise FatError(f"{path}: the shard is damaged ({problem}); nothing was read from it: move it away (or "
                           "pass --overwrite) and rerun `fat pack` to write it again")
        attrs = shard_attrs(path)
        plan = planned.get(path.name)
        if attrs is None or attrs.get("format") != FORMAT:
            if settings.overwrite:
                foreign.append(path)
                continue
            raise FatError(f"{path}: a file with a shard's name that is not a readable packed shard (truncated "
                           "or damaged?); move it away (or pass --overwrite) and rerun `fat pack`")
        if attrs.get("identity_sha256") != ident_sha or plan is None:
            foreign.append(path)
            other_attrs = other_attrs or attrs
            continue
        if attrs.get("complete") is not True or attrs.get("clips") != plan.stop - plan.start:
            raise FatError(f"{path}: a shard of this pack that is not marked complete; move it away and rerun")
        if not _totals_readable(attrs):
            if settings.overwrite:
                foreign.append(path)
                continue
            raise FatError(f"{path}: a shard of this pack whose totals (bytes, source_bytes, sample_rates) are "
                           "damaged; move it away (or pass --overwrite) and rerun `fat pack`")
        if seal is None:  # finished after index.json was last written, or packed before seals (then None)
            seal = seal_of(path)
        if settings.verify_existing:
            bad = check_shard_bytes(path)
            if bad:
                log.warning("%s: %d clips fail their CRC32 (first: %s): writing the shard again", path, len(bad),
                            bad[0])
                continue
        keep[path.name] = {**attrs, "seal": seal.as_dict() if seal is not None else None}
    if foreign and not settings.overwrite:
        listed = ", ".join(p.name for p in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        theirs = index.get("identity") if index is not None and not same_pack else _identity_of_shard(other_attrs)
        differences = "; ".join(_differences(theirs, ident, index if not same_pack else None, settings))
        raise FatError(f"{out}: holds a pack made from another datafile or with other settings ({listed}"
                       f"{': ' + differences if differences else ''}); rerun with the store's settings, pass "
                       "--overwrite to replace it, or choose another --out-dir")
    for path in foreign:
        if path.name not in planned:  # a shard the new layout does not name (replaced ones are renamed over)
            log.warning("--overwrite: removing %s, a shard of an earlier pack", path)
            path.unlink()
    return keep


def _totals_readable(attrs: dict[str, Any]) -> bool:
    """The attributes index.json is summed from: whole numbers and a list of rates."""
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    rates = attrs.get("sample_rates")
    return whole(attrs.get("bytes")) and whole(attrs.get("source_bytes")) and isinstance(rates, list) \
        and all(whole(rate) for rate in rates)


def _recorded_seals(index: dict[str, Any]) -> dict[str, Seal]:
    """The seals `index.json` records, by shard file (one that does not parse counts as none)."""
    seals = {}
    for entry in index.get("shards") or []:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            seals[str(entry["file"])] = Seal.from_dict(entry.get("seal"))
    return seals


def _identity_of_shard(attrs: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a foreign shard's attributes say of its pack's identity (no index.json to ask)."""
    if attrs is None:
        return None
    theirs: dict[str, Any] = {"datafile_sha256": attrs.get("datafile_sha256")}
    with contextlib.suppress(ValueError, TypeError):
        theirs["codec"] = json.loads(str(attrs.get("codec_settings")))
    with contextlib.suppress(ValueError, TypeError):
        if int(attrs["shard"]) < int(attrs["shards"]) - 1:  # only a shard before the last is full
            theirs["shard_clips"] = int(attrs["clips"])
    return theirs


def _differences(theirs: dict[str, Any] | None, ours: dict[str, Any], their_index: dict[str, Any] | None,
                 settings: PackSettings) -> list[str]:
    """Each identity setting in which the store differs from this run: the store's value and the asked one."""
    if not isinstance(theirs, dict):
        return []
    names = {"datafile_sha256": "datafile sha256", "codec": "--codec/--flac-level/--vorbis-quality",
             "shard_clips": "--shard-clips", "clips": "clips in the datafile", "format": "store format"}
    their_datafile = str(their_index.get("datafile")) if their_index and their_index.get("datafile") else None
    lines = []
    for key, name in names.items():
        if key not in theirs or theirs[key] == ours.get(key):
            continue
        if key == "datafile_sha256":
            store = f"{str(theirs[key])[:12]}…" + (f" ({their_datafile})" if their_datafile else "")
            asked = f"{ours[key][:12]}… ({settings.datafile})"
        elif key == "codec":
            store, asked = _codec_text(theirs[key]), _codec_text(ours[key])
        else:
            store, asked = str(theirs[key]), str(ours[key])
        lines.append(f"{name} {store} in the store, {asked} asked")
    return lines


def _codec_text(codec: Any) -> str:
    if isinstance(codec, dict) and codec.get("codec") == "flac":
        return f"flac level {codec.get('level')}"
    if isinstance(codec, dict) and codec.get("codec") == "vorbis":
        return f"vorbis quality {codec.get('quality')}"
    return str(codec)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _index(settings: PackSettings, ident: dict[str, Any], ident_sha: str, label_sha: str | None,
           plans: list[ShardPlan], done: dict[str, dict[str, Any]], complete: bool) -> dict[str, Any]:
    """The store's `index.json`: identity, provenance and every shard (what a reader opens)."""
    shards = []
    for plan in plans:
        info = done.get(plan.name)
        entry = {"file": plan.name, "first": plan.start, "clips": plan.stop - plan.start,
                 "bytes": int(info["bytes"]) if info else None}
        if info and info.get("seal"):  # none: not written yet, or packed before seals
            entry["seal"] = info["seal"]
        shards.append(entry)
    rates = sorted({int(r) for attrs in done.values() for r in attrs.get("sample_rates", [])})
    return {
        "format": FORMAT, "complete": complete, "identity_sha256": ident_sha, "identity": ident,
        "datafile": str(settings.datafile), "datafile_sha256": ident["datafile_sha256"],
        "label_csv_sha256": label_sha, "codec": settings.codec.as_dict(), "lossless": settings.codec.lossless,
        "clips": ident["clips"], "bytes": sum(int(a["bytes"]) for a in done.values()),
        "source_bytes": sum(int(a["source_bytes"]) for a in done.values()), "sample_rates": rates,
        "fat_version": __version__, "libsndfile": sf.__libsndfile_version__, "shards": shards,
    }


# -- writing -------------------------------------------------------------------------------

def _write_shards(settings: PackSettings, data: Any, todo: list[ShardPlan], provenance: dict[str, Any],
                  finished: Callable[[str, dict[str, Any]], None]) -> None:
    """Encode the clips of `todo` in the pool and write each shard as its clips arrive (then `finished`)."""
    batches = [(plan.index, range(low, min(low + settings.batch_size, plan.stop)))
               for plan in todo for low in range(plan.start, plan.stop, settings.batch_size)]
    tasks = ((meta, [(str(data.ids[i]), str(data.paths[i])) for i in meta[1]]) for meta in batches)
    work = functools.partial(encode_batch, codec=settings.codec)
    progress = _Progress(settings.progress_every)
    with contextlib.closing(ordered_map(work, tasks, settings.workers,
                                           when_broken="rerun to go on from the last finished shard")) as results:
        for plan in todo:
            per_shard = sum(1 for index, _ in batches if index == plan.index)
            attrs = {**provenance, "shard": plan.index, "shards": plan.count, "first": plan.start}
            ids = [str(i) for i in data.ids[plan.start:plan.stop]]
            totals = write_shard(settings.folder / plan.name, ids,
                                 progress.count(itertools.islice(results, per_shard)), attrs)
            finished(plan.name, {**attrs, **totals, "clips": len(ids)})
            log.info("%s: %d clips, %.1f MB (%.3f of the source); %.1f clips/s so far", plan.name, len(ids),
                     totals["bytes"] / 1e6, totals["bytes"] / max(totals["source_bytes"], 1), progress.rate())


class _Progress:
    """Clips packed so far, logged every `every` seconds."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.clips = 0
        self.started = self.reported = time.perf_counter()

    def count(self, results: Iterator[tuple[Any, list[EncodedClip]]]) -> Iterator[EncodedClip]:
        for _meta, encoded in results:
            yield from encoded
            self.clips += len(encoded)
            if time.perf_counter() - self.reported >= self.every:
                self.reported = time.perf_counter()
                log.info("packed %d clips (%.1f clips/s)", self.clips, self.rate())

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.clips / elapsed if elapsed > 0 else 0.0
