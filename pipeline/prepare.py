"""Datafiles for datasets other than AudioSet: Speech Commands v0.02 and any one-folder-per-class tree.

Both write, into one folder, `<name>_train.json`, `<name>_valid.json`, `<name>_test.json` (AST
format, with ids = the clip's path under the root without extension) and the label CSV
`class_labels_indices.csv`. Nothing is read but the folder listing; `fat prepare` then runs the
same checks as `fat validate` over every split. ESC-50's release (five fixed folds) is read by
`pipeline.esc50`.

A split that was asked for (train always; valid / test of a folder tree when their fraction is
above 0; every split of Speech Commands) and gets no clip is refused, naming the split and the
folder, unless `--allow-empty` (then a warning): a small tree's hash split can leave one empty,
and an empty valid or test split would only show up later as a run without a score.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core.errors import FatError
from pipeline.datafile import LABEL_CSV_NAME, DatafileEntry, wav_reference, write_datafile, write_label_csv
from pipeline.settings import nested, option
from pipeline.validate.checks import SignalChecks, Thresholds

log = logging.getLogger(__name__)

KINDS = ("speechcommands", "esc50", "folder")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
SPEECH_COMMANDS_NOISE = "_background_noise_"
SPEECH_COMMANDS_LISTS = {"valid": "validation_list.txt", "test": "testing_list.txt"}
SPEECH_COMMANDS_WORDS = 35  # v0.02 (v0.01 has 30)
# Each layout's sample rate (None: any) and longest clip (s), where the options leave them unset.
KIND_CHECKS: dict[str, tuple[int | None, float]] = {"speechcommands": (16000, 1.0), "esc50": (44100, 5.0),
                                                    "folder": (None, 10.0)}
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aif", ".aiff"})


CHECKS = "checks (the same as fat validate)"


@dataclass(kw_only=True)
class PrepareSettings:
    """The `fat prepare` options (params.yaml `prepare:` keys)."""

    kind: str = option(help="dataset layout", choices=KINDS, positional=True)
    root: Path = option(help="the dataset's folder")
    name: str | None = option(None, "prefix of the output files (default: speechcommands, esc50, or the folder's name)")
    out_dir: Path = option(Path("data/prepared"), "folder for the full listings and their label CSV")
    absolute_paths: bool = option(False, "write absolute wav paths (default: relative to the datafile's folder)")
    valid_fraction: float = option(0.1, "folder: share of clips in valid (0..1)")
    test_fraction: float = option(0.1, "folder: share of clips in test (0..1)")
    seed: int = option(0, "folder: seed of the split hash")
    allow_empty: bool = option(
        False, "write a split that gets no clips, with a warning (default: such a split is an error naming it; a "
               "folder split whose fraction is 0 is not asked for and may be empty)")
    validate: bool = option(True, "check every clip and write the datafiles of those that pass", group=CHECKS)
    datafile_dir: Path = option(Path("data/datafiles"), "folder for the checked datafiles and their label CSV",
                                group=CHECKS)
    report_dir: Path = option(Path("data/reports"), "folder for reports and summaries", group=CHECKS)
    workers: int = option(default_factory=lambda: os.cpu_count() or 1, help="worker processes (1 = in this process)",
                          minimum=1, group=CHECKS)
    progress: bool | None = option(None, "show a progress bar (default: when stderr is a terminal)", group=CHECKS)
    sample_rate: int | None = option(
        None, "required sample rate, Hz (default: 16000 for speechcommands, 44100 for esc50, any rate for folder)",
        group=CHECKS)
    channels: int = option(1, "required channel count", group=CHECKS)
    min_seconds: float = option(0.0, "minimum length", unit="s", group=CHECKS)
    max_seconds: float | None = option(
        None, "maximum length, seconds (default: 1 for speechcommands, 5 for esc50, 10 for folder)", group=CHECKS)
    length_tolerance: float = option(0.05, "allowed excess over --max-seconds", unit="s", group=CHECKS)
    signal: SignalChecks = nested(SignalChecks)

    def thresholds(self) -> Thresholds:
        """The checks of `fat validate`, with this kind's defaults where an option is left unset."""
        rate, longest = KIND_CHECKS[self.kind]
        return Thresholds(
            sample_rate=self.sample_rate if self.sample_rate is not None else rate,
            channels=self.channels, length_tolerance=self.length_tolerance, min_seconds=self.min_seconds,
            max_seconds=self.max_seconds if self.max_seconds is not None else longest,
            **asdict(self.signal),
        )


@dataclass(frozen=True)
class PreparedSet:
    """What a preparation wrote: the label CSV and one datafile per split, with clip counts."""

    labels: Path
    datafiles: dict[str, Path]
    counts: dict[str, int]


def prepare_speechcommands(root: str | Path, out_dir: str | Path, name: str = "speechcommands",
                           absolute: bool = False, allow_empty: bool = False) -> PreparedSet:
    """Speech Commands v0.02: one folder per word, `_background_noise_` left out, the clips of
    `validation_list.txt` / `testing_list.txt` as valid / test and every other clip as train.

    Classes are the words in alphabetical order with AST's dummy MIDs `/m/spcmd00` … (display
    name = the word), so the 35 columns line up with AST's Speech Commands recipe.
    """
    root = _check_root(root)
    missing_lists = [f for f in SPEECH_COMMANDS_LISTS.values() if not (root / f).is_file()]
    if missing_lists:
        raise FatError(f"{root}: not a Speech Commands folder (no {', '.join(missing_lists)})")
    words = _class_folders(root, exclude={SPEECH_COMMANDS_NOISE})
    if len(words) != SPEECH_COMMANDS_WORDS:
        log.warning("%s: %d word folders; Speech Commands v0.02 has %d", root, len(words), SPEECH_COMMANDS_WORDS)
    clips = {rel: word for word in words for rel in _audio_files(root, word, suffixes={".wav"})}
    chosen: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for split, list_name in SPEECH_COMMANDS_LISTS.items():
        chosen[split] = _read_clip_list(root / list_name, clips)
        for rel in chosen[split]:
            if rel in owner:
                raise FatError(f"{root / list_name}: {rel} is also in {SPEECH_COMMANDS_LISTS[owner[rel]]}")
            owner[rel] = split
    chosen["train"] = [rel for rel in clips if rel not in owner]
    mids = [f"/m/spcmd{i:02d}" for i in range(len(words))]
    asked = {"train": f"every one of the {len(clips)} clips is in {' or '.join(SPEECH_COMMANDS_LISTS.values())}",
             **{split: f"{root / list_name} lists none of them" for split, list_name in SPEECH_COMMANDS_LISTS.items()}}
    splits = {split: [(rel, clips[rel]) for rel in chosen[split]] for split in SPLITS}
    _check_empty_splits(root, splits, asked, allow_empty)
    return _write_set(root, Path(out_dir), name, words, mids, {w: m for w, m in zip(words, mids)}, splits, absolute)


def prepare_folder(root: str | Path, out_dir: str | Path, name: str | None = None, valid_fraction: float = 0.1,
                   test_fraction: float = 0.1, seed: int = 0, absolute: bool = False,
                   allow_empty: bool = False) -> PreparedSet:
    """One subfolder per class (audio files anywhere below it). Each clip's split comes from a hash of
    its path and `seed`, so adding files later never moves the clips already assigned."""
    root = _check_root(root)
    if not (0 <= valid_fraction and 0 <= test_fraction and valid_fraction + test_fraction < 1):
        raise FatError(f"--valid-fraction {valid_fraction} and --test-fraction {test_fraction}: need both ≥ 0, sum < 1")
    classes = []
    files: dict[str, list[str]] = {}
    for folder in _class_folders(root, exclude=set()):
        found = _audio_files(root, folder, suffixes=AUDIO_SUFFIXES)
        if found:
            classes.append(folder)
            files[folder] = found
        else:
            log.warning("%s: no audio files; it is not made a class", root / folder)
    if not classes:
        raise FatError(f"{root}: no class folders with audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    width = max(2, len(str(len(classes) - 1)))
    mids = [f"/m/class{i:0{width}d}" for i in range(len(classes))]
    splits: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    for folder in classes:
        for rel in files[folder]:
            splits[stable_split(rel, valid_fraction, test_fraction, seed)].append((rel, folder))
    total = sum(len(found) for found in files.values())
    hashed = f"of {total} clips, drawn by a hash of each path; raise it or add clips"
    asked = {"train": f"what --valid-fraction {valid_fraction:g} and --test-fraction {test_fraction:g} leave of "
                      f"{total} clips; lower them or add clips"}
    for split, fraction in (("valid", valid_fraction), ("test", test_fraction)):
        if fraction > 0:  # 0: the user asked for no such split
            asked[split] = f"--{split}-fraction {fraction:g} {hashed}, or --{split}-fraction 0 for no {split} split"
    _check_empty_splits(root, splits, asked, allow_empty)
    return _write_set(root, Path(out_dir), name or root.name, classes, mids, dict(zip(classes, mids)), splits, absolute)


def stable_split(relative_path: str, valid_fraction: float, test_fraction: float, seed: int = 0) -> str:
    """'train' / 'valid' / 'test' from a crc32 of (seed, path): fixed per file, independent of the others."""
    position = zlib.crc32(f"{seed}:{relative_path}".encode()) / 2**32
    if position < test_fraction:
        return "test"
    if position < test_fraction + valid_fraction:
        return "valid"
    return "train"


def _check_empty_splits(root: Path, splits: dict[str, list[tuple[str, str]]], asked: dict[str, str],
                        allow_empty: bool) -> None:
    """Refuse (or, with --allow-empty, warn about) each split in `asked` that gets no clip; `asked[split]`
    says how that split was asked for. Runs before anything is written."""
    for split in SPLITS:
        if split in asked and not splits[split]:
            message = f"{root}: the {split} split gets no clips ({asked[split]})"
            if not allow_empty:
                raise FatError(f"{message}; --allow-empty writes it empty")
            log.warning("%s; written empty (--allow-empty)", message)


def _write_set(root: Path, out_dir: Path, name: str, classes: Sequence[str], mids: Sequence[str],
               mid_of: dict[str, str], splits: dict[str, list[tuple[str, str]]], absolute: bool) -> PreparedSet:
    if not name or os.sep in name or name.startswith("."):
        raise FatError(f"--name {name!r}: must be a plain name (it prefixes the output files)")
    labels = out_dir / LABEL_CSV_NAME
    write_label_csv(labels, list(mids), list(classes))
    datafiles: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for split in SPLITS:
        path = out_dir / f"{name}_{split}.json"
        entries = (DatafileEntry(os.path.splitext(rel)[0], wav_reference(root / rel, out_dir, absolute), (mid_of[cls],))
                   for rel, cls in splits[split])
        counts[split] = write_datafile(path, entries)
        datafiles[split] = path
    log.info("%s: %d classes; %s", root, len(classes), ", ".join(f"{s} {n}" for s, n in counts.items()))
    return PreparedSet(labels, datafiles, counts)


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FatError(f"{root}: no such folder")
    return root


def _class_folders(root: Path, exclude: set[str]) -> list[str]:
    names = sorted(entry.name for entry in os.scandir(root)
                   if entry.is_dir() and not entry.name.startswith(".") and entry.name not in exclude)
    if not names:
        raise FatError(f"{root}: no class folders")
    for name in names:
        if any(ch in name for ch in ',"\n\r'):
            raise FatError(f"{root / name}: a class folder name may not hold a comma, quote or line break")
    return names


def _audio_files(root: Path, folder: str, suffixes: frozenset[str] | set[str]) -> list[str]:
    """Paths (relative to root, '/'-separated) of the audio files below root/folder, sorted; hidden ones skipped."""
    found = []
    for directory, subdirs, names in os.walk(root / folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for file_name in names:
            if not file_name.startswith(".") and os.path.splitext(file_name)[1].lower() in suffixes:
                found.append(Path(directory, file_name).relative_to(root).as_posix())
    return sorted(found)


def _read_clip_list(path: Path, clips: dict[str, str]) -> list[str]:
    """The clips a Speech Commands list names; any it names that are not on disk are an error naming them."""
    listed: list[str] = []
    missing: list[str] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            rel = line.strip()
            if not rel or rel in seen:
                continue
            seen.add(rel)
            if rel not in clips:
                missing.append(f"{path}:{line_number}: {rel}")
            listed.append(rel)
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise FatError(f"{path}: {len(missing)} listed clips are not word-folder clips under {path.parent}:\n  {shown}{more}")
    return listed
