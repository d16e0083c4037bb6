"""`fat logits`: datafiles → one teacher logits store (pipeline.store), resumable and shardable.

How a run goes:
1. The requested clips are the union of the datafiles' entries (first occurrence wins; one id
   with two different files is an error). Every clip is read at 32 kHz and zero-padded or cut
   to `clip_seconds` (10 s, as the teachers were trained).
2. Work already done is reused by clip id: rows of an existing store made with the same
   teacher(s) and settings, and the records of an interrupted run (`<store>.partial/`).
3. The rest is cut into fixed batches over the requested order; under torchrun each rank takes
   every world_size-th batch. DataLoader workers decode the next batches while the model runs.
   Each finished batch is appended to the rank's crash-safe work log, so a kill loses at most
   the batches in flight, and a rerun computes exactly the batches an uninterrupted run would.
4. Rank 0 assembles the store atomically (`complete` only if every clip is in), lists clips
   that could not be decoded, writes the teacher's own metrics when labels exist, and removes
   the partial folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.atomic import write_json_atomic, write_text_atomic
from pipeline.errors import FatError
from pipeline.store import STORE_DTYPES, LogitsStore, LogRecord, WorkLog, write_store

log = logging.getLogger(__name__)

SAMPLE_RATE = 32000
DEFAULT_LABEL_CSV = "class_labels_indices.csv"


@dataclass
class LogitsSettings:
    datafiles: list[Path]
    out: Path
    teachers: list[str] = field(default_factory=lambda: ["mn10_as"])
    checkpoints: list[Path] = field(default_factory=list)  # one per teacher, same order
    random_init: bool = False
    seed: int = 0
    labels: Path | None = None  # label CSV; default: class_labels_indices.csv beside the first datafile
    batch_size: int = 32
    workers: int = 2
    clip_seconds: float = 10.0
    dtype: str = "float16"
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA (float16), off on CPU (where it means bfloat16)
    metrics: Path | None = None
    skip_undecodable: bool = False
    overwrite: bool = False
    progress_every: float = 30.0

    def check(self) -> None:
        if self.dtype not in STORE_DTYPES:
            raise FatError(f"--dtype must be one of {', '.join(STORE_DTYPES)}, got {self.dtype!r}")
        if self.batch_size < 1 or self.workers < 0:
            raise FatError("--batch-size must be at least 1 and --workers at least 0")
        if not self.clip_seconds > 0:
            raise FatError(f"--clip-seconds must be positive, got {self.clip_seconds}")
        if self.random_init and self.checkpoints:
            raise FatError("--random-init and --checkpoint exclude each other")
        if not self.datafiles:
            raise FatError("no datafile given")

    @property
    def partial_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".partial")

    @property
    def failed_csv(self) -> Path:
        return self.out.with_name(self.out.stem + ".failed.csv")

    @property
    def metrics_path(self) -> Path:
        return self.metrics or self.out.with_name(self.out.stem + ".metrics.json")


# -- the requested clips -------------------------------------------------------------------

@dataclass
class Clips:
    ids: list[str]
    paths: list[str]
    sources: list[tuple[Path, Any, list[int]]]  # (datafile, Datafile, its entries' positions in ids)


def load_clips(datafiles: Sequence[Path], labels: Any) -> Clips:
    """The union of the datafiles' clips, in order."""
    from pipeline.datafile import load_datafile

    ids: list[str] = []
    paths: list[str] = []
    where: dict[str, tuple[int, Path]] = {}
    sources = []
    for datafile in datafiles:
        data = load_datafile(datafile, labels)
        positions = []
        for clip_id, path in zip(data.ids, data.paths, strict=True):
            clip_id, path = str(clip_id), str(path)
            if clip_id in where:
                row, first = where[clip_id]
                if paths[row] != path:
                    raise FatError(f"{datafile}: clip {clip_id!r} is {path}, but {first} has it as {paths[row]}")
                positions.append(row)
                continue
            where[clip_id] = (len(ids), Path(datafile))
            positions.append(len(ids))
            ids.append(clip_id)
            paths.append(path)
        sources.append((Path(datafile), data, positions))
    if not ids:
        raise FatError(f"{', '.join(map(str, datafiles))}: no clips listed")
    return Clips(ids, paths, sources)


def find_label_csv(settings: LogitsSettings) -> Path | None:
    if settings.labels is not None:
        if not settings.labels.is_file():
            raise FatError(f"{settings.labels}: no such label CSV")
        return settings.labels
    beside = settings.datafiles[0].parent / DEFAULT_LABEL_CSV
    return beside if beside.is_file() else None


# -- teachers and their identity -----------------------------------------------------------

def load_teachers(names: Sequence[str], checkpoints: Sequence[Path], random_init: bool, num_classes: int | None,
                  seed: int = 0) -> list[Any]:
    """The ensemble members (one or more; presets such as mn_ensemble expanded), on the CPU, in eval mode."""
    from teacher import TeacherError, expand_names, load_teacher

    try:
        names = expand_names(list(names))
        if checkpoints and len(checkpoints) != len(names):
            raise FatError(f"{len(checkpoints)} --checkpoint files for {len(names)} teachers ({', '.join(names)}): "
                           "give one per teacher, in the same order")
        return [load_teacher(name, checkpoint=checkpoints[i] if checkpoints else None, random_init=random_init,
                             num_classes=num_classes, seed=seed + i) for i, name in enumerate(names)]
    except TeacherError as exc:
        raise FatError(str(exc)) from exc


def identity_of(members: Sequence[Any], settings: LogitsSettings, num_classes: int, label_sha: str,
                precision: str = "fp32") -> dict[str, Any]:
    """Everything that decides the logits' values; a store is reused only under the same identity."""
    described = []
    for member in members:
        prov = member.provenance.to_dict()
        prov.pop("checkpoint_file")  # where the file lies does not change the logits
        described.append(prov)
    return {
        "members": described, "clip_seconds": settings.clip_seconds, "sample_rate": SAMPLE_RATE,
        "dtype": settings.dtype, "num_classes": num_classes, "label_csv_sha256": label_sha,
        "precision": precision,  # fp16 autocast rows must not be mixed silently with fp32 ones
    }


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def store_attrs(members: Sequence[Any], identity: dict[str, Any], settings: LogitsSettings) -> dict[str, Any]:
    provs = [m.provenance for m in members]
    single = len(provs) == 1
    return {
        "teacher": provs[0].name if single else "ensemble(" + ",".join(p.name for p in provs) + ")",
        "checkpoint_sha256": (provs[0].checkpoint_sha256 or "") if single
        else ",".join(p.checkpoint_sha256 or "" for p in provs),
        "random_init": any(p.random_init for p in provs),
        "sample_rate": SAMPLE_RATE,
        "clip_seconds": float(settings.clip_seconds),
        "frontend": json.dumps(provs[0].frontend if single else [p.frontend for p in provs]),
        "members": json.dumps([{**p.to_dict(), "checkpoint_file": Path(p.checkpoint_file).name
                                if p.checkpoint_file else None} for p in provs]),
        "label_csv_sha256": identity["label_csv_sha256"],
        "precision": identity["precision"],
        "identity_sha256": digest(identity),
        "fat_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# -- reading clips in DataLoader workers ---------------------------------------------------

class ClipWaves:
    """Item i → (i, waveform float32 [samples] or zeros, error message or "")."""

    def __init__(self, paths: Sequence[str], samples: int) -> None:
        self.paths = list(paths)
        self.samples = samples

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray, str]:
        from pipeline.audio import fit_length, read_audio, require_finite

        try:
            audio = require_finite(read_audio(self.paths[index], sample_rate=SAMPLE_RATE)[0], self.paths[index])
            return index, fit_length(audio, self.samples), ""
        except Exception as exc:  # any decoder failure is reported per clip, never skipped silently
            message = str(exc) if isinstance(exc, FatError) else f"{self.paths[index]}: {type(exc).__name__}: {exc}"
            return index, np.zeros(self.samples, dtype=np.float32), message


def collate_waves(items: list[tuple[int, np.ndarray, str]]) -> tuple[list[int], Any, list[str]]:
    import torch

    return [i for i, _, _ in items], torch.from_numpy(np.stack([w for _, w, _ in items])), [e for _, _, e in items]


def _quiet_worker(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # decoding and resampling: one thread per worker, the model keeps the rest


# -- the run -------------------------------------------------------------------------------

@dataclass
class Outcome:
    store: Path
    complete: bool
    computed: int
    reused: int
    failed: dict[str, str]
    metrics: dict[str, Any] | None
    compute_seconds: float = 0.0  # rank 0's time from its first batch request to its last record


def run_logits(settings: LogitsSettings) -> Outcome | None:
    """Compute (or finish) the store; returns the outcome on rank 0, None on other ranks."""
    from pipeline.datafile import load_label_csv
    from pipeline.training import distributed

    settings.check()
    ctx = distributed.start(settings.device)
    try:
        label_csv = find_label_csv(settings)
        labels = load_label_csv(label_csv) if label_csv else None
        if labels is None:
            log.info("no label CSV (%s beside the datafile, or --labels): no teacher metrics", DEFAULT_LABEL_CSV)
        clips = load_clips(settings.datafiles, labels)
        num_classes = len(labels) if labels is not None and settings.random_init else None

        def members_now() -> list[Any]:
            return load_teachers(settings.teachers, settings.checkpoints, settings.random_init, num_classes,
                                 settings.seed)

        if ctx.is_main:  # fetch checkpoints once before the other ranks read the cache
            members = members_now()
        distributed.barrier(ctx)
        if not ctx.is_main:
            members = members_now()
        classes = members[0].num_classes
        if any(m.num_classes != classes for m in members):
            raise FatError("the ensemble members have different class counts")
        if labels is not None and len(labels) != classes:
            raise FatError(f"{label_csv}: {len(labels)} classes, but teacher {members[0].provenance.name} "
                           f"predicts {classes}: the label CSV must be the one the teacher was trained on")
        identity = identity_of(members, settings, classes, labels.sha256 if labels is not None else "",
                               compute_precision(ctx.device, settings.amp))
        identity_sha = digest(identity)

        decision = prepare_output(settings, identity_sha) if ctx.is_main else None
        decision = distributed.gather_objects(ctx, decision)[0]
        reuse = LogitsStore(settings.out, allow_incomplete=True) if decision["reuse"] else None
        done, _ = scan_partial(settings.partial_dir)
        if reuse is not None:
            have = reuse.rows_of(clips.ids) >= 0
            done.update(i for i, h in zip(clips.ids, have, strict=True) if h)
        needed = [i for i, clip_id in enumerate(clips.ids) if clip_id not in done]
        if not needed and reuse is not None and reuse.complete and not any(settings.partial_dir.glob("rank*.log")):
            reuse.close()
            if ctx.is_main:  # nothing to add: leave the finished store untouched
                shutil.rmtree(settings.partial_dir, ignore_errors=True)
                log.info("%s: up to date (all %d clips present, same teacher and settings)", settings.out, len(clips.ids))
                metrics = teacher_metrics(settings, clips, members, labels) if labels is not None else None
                return Outcome(settings.out, True, 0, len(clips.ids), {}, metrics)
            return None
        batches = fixed_batches(clips.ids, done, settings.batch_size)
        mine = batches[ctx.rank::ctx.world_size]
        if ctx.is_main:
            log.info("fat logits: %d clips requested, %d already done, %d to compute in %d batches "
                     "(%d ranks, device %s, teachers %s)", len(clips.ids), len(clips.ids) - len(needed),
                     len(needed), len(batches), ctx.world_size, ctx.device,
                     ", ".join(m.provenance.name for m in members))
        distributed.barrier(ctx)  # everyone has read the logs before anyone appends to them
        worklog = WorkLog(settings.partial_dir / f"rank{ctx.rank}.log")
        seconds = 0.0
        if mine:
            worklog.open_for_append()
            seconds = compute(members, clips, mine, worklog, settings, ctx.device)
        distributed.barrier(ctx)
        if not ctx.is_main:
            return None
        if reuse is not None:
            reuse.close()
        outcome = finish(settings, clips, members, identity, labels, len(needed))
        outcome.compute_seconds = seconds
        return outcome
    finally:
        distributed.stop(ctx)


def prepare_output(settings: LogitsSettings, identity_sha: str) -> dict[str, Any]:
    """Check the store and the partial folder at the output against this run's identity (rank 0)."""
    reuse = False
    if settings.out.exists():
        try:
            existing = LogitsStore(settings.out, allow_incomplete=True)
            same = existing.attrs.get("identity_sha256") == identity_sha
            described = f"teacher {existing.attrs.get('teacher', '?')}, dtype {existing.dtype}"
            existing.close()
        except FatError as exc:
            same, described = False, f"unreadable: {exc}"
        if same:
            reuse = True
        elif not settings.overwrite:
            raise FatError(
                f"{settings.out}: already holds logits of another teacher or other settings ({described}); "
                "choose another --out, or pass --overwrite to replace it"
            )
        else:
            log.warning("%s: made by another teacher or settings (%s): it will be replaced", settings.out, described)
    plan = settings.partial_dir / "plan.json"
    if plan.exists():
        try:
            recorded = json.loads(plan.read_text())["identity_sha256"]
        except (ValueError, KeyError) as exc:
            raise FatError(f"{plan}: unreadable ({exc}); remove {settings.partial_dir} to start over") from exc
        if recorded != identity_sha:
            if not settings.overwrite:
                raise FatError(
                    f"{settings.partial_dir}: interrupted work of another teacher or other settings; rerun with those, "
                    "or pass --overwrite to discard it"
                )
            shutil.rmtree(settings.partial_dir)
    settings.partial_dir.mkdir(parents=True, exist_ok=True)
    if not plan.exists():
        write_json_atomic(plan, {"identity_sha256": identity_sha})
    return {"reuse": reuse}


def scan_partial(folder: Path) -> tuple[set[str], dict[str, str]]:
    """Clip ids with logits in the partial folder's logs, and the last failure of the others."""
    done: set[str] = set()
    failures: dict[str, tuple[int, str]] = {}
    for path in sorted(folder.glob("rank*.log")):
        for record in WorkLog(path).records():
            done.update(record.ids)
            for clip_id, reason in record.failed.items():
                if failures.get(clip_id, (-1, ""))[0] <= record.stamp:
                    failures[clip_id] = (record.stamp, reason)
    return done, {k: reason for k, (_, reason) in failures.items() if k not in done}


def fixed_batches(ids: Sequence[str], done: set[str], batch_size: int) -> list[tuple[int, list[int]]]:
    """Batches of a grid fixed over the requested order, each cut down to the clips still to do.

    The grid never moves, so an interrupted run resumed later computes the same batches as an
    uninterrupted one (same batch contents → same numbers).
    """
    batches = []
    for number, start in enumerate(range(0, len(ids), batch_size)):
        todo = [i for i in range(start, min(start + batch_size, len(ids))) if ids[i] not in done]
        if todo:
            batches.append((number, todo))
    return batches


def compute_precision(device: Any, amp: bool | None) -> str:
    """The arithmetic the teacher runs in: fp16 autocast on CUDA, bf16 on CPU, else fp32 (amp None = on for CUDA)."""
    if not ((device.type == "cuda") if amp is None else amp):
        return "fp32"
    return "fp16" if device.type == "cuda" else "bf16"


def autocast_for(device: Any, amp: bool | None):
    import contextlib

    import torch

    precision = compute_precision(device, amp)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def ensemble_logits(members: Sequence[Any], waves: Any, device: Any, amp: bool | None) -> Any:
    """Mean raw logits of the members (float32)."""
    import torch

    with torch.inference_mode(), autocast_for(device, amp):
        outs = [member(waves).float() for member in members]
    return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)


def compute(members: Sequence[Any], clips: Clips, batches: list[tuple[int, list[int]]], worklog: WorkLog,
            settings: LogitsSettings, device: Any) -> float:
    """Run this rank's batches, appending each to the work log; returns the seconds it took."""
    import torch
    from torch.utils.data import DataLoader

    members = [m.to(device) for m in members]
    samples = int(round(settings.clip_seconds * SAMPLE_RATE))
    loader = DataLoader(
        ClipWaves(clips.paths, samples), batch_sampler=[todo for _, todo in batches], num_workers=settings.workers,
        collate_fn=collate_waves, pin_memory=device.type == "cuda", worker_init_fn=_quiet_worker,
        prefetch_factor=4 if settings.workers else None,
    )
    started = last_report = time.monotonic()
    finished = 0
    for (number, _), (indices, waves, errors) in zip(batches, loader, strict=True):
        ok = np.array([not e for e in errors], dtype=bool)
        ids = [clips.ids[i] for i in indices]
        failed = {clip_id: error for clip_id, error, good in zip(ids, errors, ok, strict=True) if not good}
        for clip_id, error in failed.items():
            log.warning("could not decode clip %s: %s", clip_id, error)
        rows = np.zeros((0, members[0].num_classes), dtype=settings.dtype)
        if ok.any():
            good = waves if ok.all() else waves[torch.from_numpy(ok)]
            logits = ensemble_logits(members, good.to(device, non_blocking=True), device, settings.amp)
            bad = ~torch.isfinite(logits).all(dim=1).cpu().numpy()
            if bad.any():
                named = [f"{ids[i]} ({clips.paths[indices[i]]})" for i in np.flatnonzero(ok)[bad]]
                raise FatError(f"the teacher produced NaN or infinite logits for clip(s) {', '.join(named[:5])}"
                               f"{' ...' if len(named) > 5 else ''}")
            rows = logits.cpu().numpy().astype(settings.dtype)
            if settings.dtype == "float16" and not np.isfinite(rows).all():
                raise FatError(f"logits of clip(s) {', '.join(np.array(ids)[ok][~np.isfinite(rows).all(1)][:5])} "
                               "overflow float16: use --dtype float32")
        worklog.append(LogRecord(number, [i for i, good in zip(ids, ok, strict=True) if good], rows, failed,
                                 time.time_ns()))
        finished += len(indices)
        now = time.monotonic()
        if now - last_report >= settings.progress_every:
            log.info("  %d / %d clips of this rank, %.1f clips/s", finished, sum(len(t) for _, t in batches),
                     finished / (now - started))
            last_report = now
    elapsed = time.monotonic() - started
    log.info("  %d clips in %.1f s: %.1f clips/s on %s", finished, elapsed, finished / max(elapsed, 1e-9), device)
    return elapsed


def finish(settings: LogitsSettings, clips: Clips, members: Sequence[Any], identity: dict[str, Any], labels: Any,
           computed: int) -> Outcome:
    """Assemble the store from the old store and the work logs; report failures and metrics."""
    reuse = LogitsStore(settings.out, allow_incomplete=True) if settings.out.exists() else None
    if reuse is not None and reuse.attrs.get("identity_sha256") != digest(identity):
        reuse = None  # replaced (--overwrite checked it)
    done, failures = scan_partial(settings.partial_dir)
    old_ids = list(reuse.ids) if reuse is not None else []
    old_set = set(old_ids)
    new_ids = [i for i in clips.ids if i not in old_set and i in done]
    order = old_ids + new_ids
    row_of = {clip_id: row for row, clip_id in enumerate(order)}
    missing = [i for i in clips.ids if i not in row_of]
    failures = {i: failures.get(i, "no logits were computed (interrupted?)") for i in missing}
    complete = not failures or settings.skip_undecodable
    attrs = store_attrs(members, identity, settings)
    attrs.update({"requested": len(clips.ids), "missing": len(failures), "dtype": settings.dtype})
    if failures and settings.skip_undecodable:
        attrs["excluded"] = json.dumps(sorted(failures))

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        step = 16384
        for start in range(0, len(old_ids), step):
            yield start, reuse.read_rows(np.arange(start, min(start + step, len(old_ids))))
        taken = np.zeros(len(order), dtype=bool)
        taken[:len(old_ids)] = True
        for path in sorted(settings.partial_dir.glob("rank*.log")):
            for record in WorkLog(path).records():
                rows = np.array([row_of.get(i, -1) for i in record.ids], dtype=np.int64)
                keep = rows >= 0
                keep[keep] &= ~taken[rows[keep]]
                if not keep.any():
                    continue
                rows, values = rows[keep], record.logits[keep]
                taken[rows] = True
                cuts = np.flatnonzero(np.diff(rows) != 1) + 1
                for run_rows, run_values in zip(np.split(rows, cuts), np.split(values, cuts), strict=True):
                    if np.all(np.diff(run_rows) == 1):
                        yield int(run_rows[0]), run_values
                    else:  # rows out of order within a record: one at a time
                        yield from ((int(r), v[None]) for r, v in zip(run_rows, run_values, strict=True))

    write_store(settings.out, order, blocks(), members[0].num_classes, attrs, complete=complete, dtype=settings.dtype)
    if reuse is not None:
        reuse.close()
    write_failure_report(settings, clips, failures)
    shutil.rmtree(settings.partial_dir, ignore_errors=True)
    metrics = teacher_metrics(settings, clips, members, labels) if labels is not None else None
    outcome = Outcome(settings.out, complete, computed, len(clips.ids) - computed, failures, metrics)
    log.info("%s: %d rows, %s%s", settings.out, len(order), "complete" if complete else "INCOMPLETE",
             f"; teacher mAP {metrics['all']['mAP']:.4f} over {metrics['all']['clips']} clips" if metrics else "")
    if failures and not settings.skip_undecodable:
        shown = "; ".join(f"{k}: {v}" for k, v in list(failures.items())[:3])
        raise FatError(
            f"{len(failures)} of {len(clips.ids)} clips have no logits (listed in {settings.failed_csv}): {shown}"
            f"{' ...' if len(failures) > 3 else ''}. The store was written but marked incomplete. Fix or remove "
            "these clips (fat validate rejects undecodable ones) and rerun, or pass --skip-undecodable"
        )
    return outcome


def write_failure_report(settings: LogitsSettings, clips: Clips, failures: dict[str, str]) -> None:
    if not failures:
        settings.failed_csv.unlink(missing_ok=True)  # a stale list from an earlier run no longer holds
        return
    path_of = dict(zip(clips.ids, clips.paths, strict=True))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "path", "reason"])
    for clip_id, reason in failures.items():
        writer.writerow([clip_id, path_of.get(clip_id, ""), reason])
    write_text_atomic(settings.failed_csv, buffer.getvalue())


def teacher_metrics(settings: LogitsSettings, clips: Clips, members: Sequence[Any], labels: Any) -> dict[str, Any]:
    """The teacher's own mAP / mAUC / d' on the clips, per datafile and over all (JSON, atomic)."""
    from pipeline.metrics import multilabel_metrics

    store = LogitsStore(settings.out, allow_incomplete=True)
    result: dict[str, Any] = {
        "teacher": store.attrs["teacher"], "random_init": bool(store.attrs["random_init"]),
        "published_mAP": members[0].provenance.published_map if len(members) == 1 else None,
        "dtype": settings.dtype, "splits": {},
    }
    all_targets, all_scores = [], []
    for datafile, data, positions in clips.sources:
        ids = [clips.ids[p] for p in positions]
        scores, present = store.fetch(ids)
        targets = np.stack([data.multi_hot(i, labels) for i in range(len(ids))]).astype(np.float32)
        values = multilabel_metrics(targets[present], scores[present]) if present.any() else {}
        result["splits"][datafile.stem] = {**values, "clips": int(present.sum()), "missing": int((~present).sum())}
        all_targets.append(targets[present])
        all_scores.append(scores[present])
    targets, scores = np.concatenate(all_targets), np.concatenate(all_scores)
    result["all"] = {**(multilabel_metrics(targets, scores) if len(targets) else {}), "clips": int(len(targets))}
    store.close()
    write_json_atomic(settings.metrics_path, result)
    return result
