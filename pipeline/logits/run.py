"""`fat logits`: datafiles → one teacher logits store (pipeline.store), resumable and shardable.

How a run goes:
1. The requested clips are the union of the datafiles' entries (`pipeline.datafile.load_clips`:
   an id listed by two datafiles is an error). Every clip is read at 32 kHz and zero-padded or cut
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

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import runtime
from pipeline.clip_audio import open_clip_audio
from pipeline.core.atomic import write_json_atomic
from pipeline.core.errors import FatError
from pipeline.datafile import LABEL_CSV_NAME, label_csv_beside, load_clips, load_label_csv
from pipeline.logits.assemble import Outcome, finish
from pipeline.logits.compute import compute
from pipeline.logits.settings import LogitsSettings
from pipeline.logits.teacher_metrics import teacher_metrics
from pipeline.logits.teachers import check_teacher_labels, digest, identity_of, load_teachers
from pipeline.logits.worklog import WorkLog, scan_partial
from pipeline.store import LogitsStore

log = logging.getLogger(__name__)


def run_logits(settings: LogitsSettings) -> Outcome | None:
    """Compute (or finish) the store; returns the outcome on rank 0, None on other ranks."""
    settings.check()
    if settings.oracle_from_labels:  # no model, no audio, one process
        from pipeline.logits.oracle import write_oracle_store

        return write_oracle_store(settings, find_label_csv(settings))
    ctx = runtime.start(settings.device, settings.threads)
    try:
        label_csv = find_label_csv(settings)
        labels = load_label_csv(label_csv) if label_csv else None
        if labels is None:
            log.info("no label CSV (%s beside the datafile, or --labels): no teacher metrics", LABEL_CSV_NAME)
        clips = load_clips(settings.datafile, labels)
        # Files or packed stores (--packed), each store checked to be packed from one of these datafiles.
        audio = open_clip_audio(clips, settings.packed, settings.datafile if settings.packed else ())
        requested = list(clips.ids)
        num_classes = len(labels) if labels is not None and settings.random_init else None

        def members_now() -> list[Any]:
            return load_teachers(settings.teacher, settings.checkpoint, settings.random_init, num_classes,
                                 settings.seed)

        if ctx.is_main:  # fetch checkpoints once before the other ranks read the cache
            members = members_now()
        runtime.barrier(ctx)
        if not ctx.is_main:
            members = members_now()
        classes = members[0].num_classes
        if any(m.num_classes != classes for m in members):
            raise FatError("the ensemble members have different class counts")
        if labels is not None and len(labels) != classes:
            raise FatError(f"{label_csv}: {len(labels)} classes, but teacher {members[0].provenance.name} "
                           f"predicts {classes}: the label CSV must be the one the teacher was trained on")
        check_teacher_labels(members, labels, label_csv)
        precision = runtime.choose_precision(settings.precision, ctx.device)
        identity = identity_of(members, settings, classes, labels.sha256 if labels is not None else "", precision.name)
        if not audio.exact:  # lossy packing changes the samples, so the logits: never mixed with exact ones
            identity["audio"] = {key: value for key, value in audio.describe().items() if key != "stores"}
        identity_sha = digest(identity)

        decision = prepare_output(settings, identity_sha) if ctx.is_main else None
        decision = runtime.gather_objects(ctx, decision)[0]
        reuse = LogitsStore(settings.out, allow_incomplete=True) if decision["reuse"] else None
        done, _ = scan_partial(settings.partial_dir)
        if reuse is not None:
            have = reuse.rows_of(requested) >= 0
            done.update(i for i, h in zip(requested, have, strict=True) if h)
        needed = [i for i, clip_id in enumerate(requested) if clip_id not in done]
        # A store from before row checksums is reassembled (rows reused, nothing computed) to gain them.
        if not needed and reuse is not None and reuse.complete and reuse.has_checksums \
                and not any(settings.partial_dir.glob("rank*.log")):
            reuse.close()
            if ctx.is_main:  # nothing to add: leave the finished store untouched
                shutil.rmtree(settings.partial_dir, ignore_errors=True)
                log.info("%s: up to date (all %d clips present, same teacher and settings)", settings.out, len(clips))
                metrics = teacher_metrics(settings, clips, members) if labels is not None else None
                return Outcome(settings.out, True, 0, len(clips), {}, metrics)
            return None
        batches = fixed_batches(requested, done, settings.batch_size)
        mine = batches[ctx.rank::ctx.world_size]
        if ctx.is_main:
            log.info("fat logits: %d clips requested, %d already done, %d to compute in %d batches "
                     "(%d ranks, device %s, teachers %s)", len(clips), len(clips) - len(needed),
                     len(needed), len(batches), ctx.world_size, ctx.device,
                     ", ".join(m.provenance.name for m in members))
        runtime.barrier(ctx)  # everyone has read the logs before anyone appends to them
        worklog = WorkLog(settings.partial_dir / f"rank{ctx.rank}.log")
        seconds = 0.0
        if mine:
            worklog.open_for_append()
            seconds = compute(members, clips, mine, worklog, settings, ctx.device, precision, audio)
        runtime.barrier(ctx)
        if not ctx.is_main:
            return None
        if reuse is not None:
            reuse.close()
        outcome = finish(settings, clips, members, identity, len(needed))
        outcome.compute_seconds = seconds
        return outcome
    finally:
        runtime.stop(ctx)


def find_label_csv(settings: LogitsSettings) -> Path | None:
    """--labels, else the label CSV beside the first datafile if there is one (no label CSV: no teacher metrics)."""
    if settings.labels is not None:
        if not settings.labels.is_file():
            raise FatError(f"{settings.labels}: no such label CSV")
        return settings.labels
    beside = label_csv_beside(settings.datafile[0])
    return beside if beside.is_file() else None


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
