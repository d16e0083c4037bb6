"""What `fat logits` is asked to do: its options (params.yaml `logits:` keys) and the paths they imply;
and the settings of its two actions, `fat logits import` (`ImportSettings`) and `fat logits verify`
(`VerifySettings`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import FatError
from pipeline.packed.settings import packed_option
from pipeline.settings import check_values, device_option, option, paths, precision_option, threads_option
from pipeline.store import STORE_DTYPES

SAMPLE_RATE = 32000  # the teachers' input rate


@dataclass(kw_only=True)
class LogitsSettings:
    datafile: tuple[Path, ...] = option(
        (), "AST datafile(s) whose clips get logits (required, default: none)", metavar="JSON")
    teacher: list[str] = option(
        ["mn10_as"], "released teacher name(s) (mn, DyMN, PaSST); several (or a preset: mn_ensemble, "
                       "passt_ensemble_many) = mean of their logits; or one teacher.pt file of `fat finetune-teacher` "
                       "(default: mn10_as)",
        metavar="NAME")
    checkpoint: list[Path] = option(
        [], "local checkpoint file(s), one per teacher in order, instead of the download (default: the released file "
            "from the cache or the network)", metavar="PATH")
    random_init: bool = option(
        False, "use RANDOMLY INITIALISED teachers (tests and the offline demo only: the logits carry no knowledge; "
               "recorded as random_init=True in the store)")
    seed: int = option(0, "seed of the --random-init weights")
    oracle_from_labels: bool = option(
        False, "no teacher at all: write logits of ±5 made from the datafiles' OWN LABELS (a teacher that knows the "
               "answers, to show what KD adds when training labels are corrupted: fat train --label-noise); the "
               "store says so (teacher oracle-from-labels, label_derived=True); no audio is read")
    packed: list[Path] = packed_option()
    out: Path | None = option(None, "the store to write (default: data/logits/<teacher>.h5)")
    labels: Path | None = option(
        None, "label CSV index,mid,display_name (default: class_labels_indices.csv beside the first datafile; "
              "without one, no metrics)")
    metrics: Path | None = option(None, "teacher metrics JSON (default: <out stem>.metrics.json beside the store)")
    batch_size: int = option(32, "clips per batch", unit="clips", minimum=1)
    workers: int = option(2, "DataLoader processes decoding audio while the model runs; 0 = in-process", minimum=0)
    clip_seconds: float = option(10.0, "every clip is zero-padded or cut to this length (10 s: as the teachers were "
                                       "trained)", unit="s", above=0)
    store_dtype: str = option("float16", "storage type of the logits in the store (float16: 2 bytes per value)",
                              choices=STORE_DTYPES)
    device: str = device_option()
    precision: str = precision_option(
        note="; the store records it, and rows of another precision are never reused")
    threads: int = threads_option()
    skip_undecodable: bool = option(
        False, "leave clips that cannot be decoded out and still mark the store complete; they are listed in "
               "<out stem>.failed.csv and the `excluded` attribute (default: such clips make the run fail with an "
               "incomplete store)")
    overwrite: bool = option(
        False, "replace a store (or interrupted work) made by another teacher or other settings (default: refuse)")
    progress_every: float = option(30.0, "time between progress lines", unit="s")

    def __post_init__(self) -> None:
        self.datafile = paths(self.datafile)
        self.checkpoint = [Path(p) for p in self.checkpoint]
        self.packed = [Path(p) for p in self.packed]
        if self.out is None:
            # a fine-tuned teacher file (teacher.finetuned.is_teacher_file) is named by its stem
            named = (Path(t).stem if t.endswith(".pt") or "/" in t else t for t in self.teacher)
            self.out = Path("data") / "logits" / f"{'+'.join(named)}.h5"

    def check(self) -> None:
        check_values(self)
        if self.random_init and self.checkpoint:
            raise FatError("--random-init and --checkpoint exclude each other")
        if self.oracle_from_labels and (self.random_init or self.checkpoint):
            raise FatError("--oracle-from-labels uses no teacher model: drop --random-init and --checkpoint")
        if not self.datafile:
            raise FatError("--datafile is required: the AST datafile(s) whose clips get logits")

    @property
    def partial_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".partial")

    @property
    def failed_csv(self) -> Path:
        return self.out.with_name(self.out.stem + ".failed.csv")

    @property
    def metrics_path(self) -> Path:
        return self.metrics or self.out.with_name(self.out.stem + ".metrics.json")


VALUE_KINDS = ("logits", "probabilities")
TEACHER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+()-]{0,99}")  # it names the default store file


@dataclass(kw_only=True)
class ImportSettings:
    """`fat logits import`: a store from predictions someone else computed (no model runs)."""

    logits: Path = option(
        help="the predictions, one row per clip and one column per class: .npy, .npz (one array, or one named "
             "`logits`) or .csv (numbers only, no header), e.g. EfficientAT's passt_enemble_logits_mAP_495.npy",
        metavar="FILE")
    index: Path | None = option(
        None, "EfficientAT's fname_to_index.pkl: a pickled dict clip name → row (read without running any code; "
              "names as upstream writes them: the YouTube id, or Y<id> / Y<id>.mp3); this or --ids, default: none", metavar="PKL",
        exclusive="rows")
    ids: Path | None = option(
        None, "a text file of ids, one per line, line i = row i, matched exactly to the datafiles' ids; this or "
              "--index, default: none",
        metavar="TXT", exclusive="rows")
    datafile: tuple[Path, ...] = option(help="AST datafile(s) whose clips get a row (required)", metavar="JSON")
    teacher: str = option(help="the teacher's name, recorded in the store (e.g. passt_ensemble_495)", metavar="NAME")
    published_map: float | None = option(
        None, "the teacher's published mAP, recorded with it (default: none)", minimum=0.0, metavar="MAP")
    values: str | None = option(
        None, "what the numbers are: logits, or probabilities (stored as logit(p), p clipped to [1e-6, 1 - 1e-6]) "
              "(default: logits, except that input whose values all lie in [0, 1] is refused until declared)",
        choices=VALUE_KINDS)
    min_coverage: float = option(
        0.5, "the least share of the datafiles' clips that must have a row; fewer matches mean the wrong "
             "files or names, and nothing is written", minimum=0.0, metavar="SHARE")
    labels: Path | None = option(
        None, "label CSV index,mid,display_name whose classes the columns are (default: class_labels_indices.csv "
              "beside the first datafile)")
    out: Path | None = option(None, "the store to write (default: data/logits/<teacher>.h5)")
    metrics: Path | None = option(None, "the teacher's metrics JSON (default: <out stem>.metrics.json beside the store)")
    store_dtype: str = option("float16", "storage type of the logits in the store (float16: 2 bytes per value)",
                              choices=STORE_DTYPES)
    overwrite: bool = option(False, "replace an existing store (default: refuse)")

    def __post_init__(self) -> None:
        self.datafile = paths(self.datafile)
        self.logits = Path(self.logits)
        if self.out is None and TEACHER_NAME.fullmatch(self.teacher or ""):
            self.out = Path("data") / "logits" / f"{self.teacher}.h5"

    def check(self) -> None:
        check_values(self)
        if not TEACHER_NAME.fullmatch(self.teacher):
            raise FatError(f"--teacher {self.teacher!r}: use 1-100 letters, digits, '_', '.', '+', '-', '(', ')' "
                           "(not first: '.', '+', '-', '(' or ')')")
        if (self.index is None) == (self.ids is None):
            raise FatError("say which row is which clip: --index PKL (EfficientAT's name → row dict) or --ids TXT "
                           "(one id per line)")
        if self.published_map is not None and self.published_map > 1:
            raise FatError(f"--published-map is a mean average precision in [0, 1], got {self.published_map}")
        if self.min_coverage > 1:
            raise FatError(f"--min-coverage is a share in [0, 1], got {self.min_coverage}")
        if not self.datafile:
            raise FatError("--datafile is required: the AST datafile(s) whose clips get a row")

    @property
    def unmatched_list(self) -> Path:
        """The datafiles' clips the predictions have no row for, one id per line."""
        return self.out.with_name(self.out.stem + ".unmatched.txt")

    @property
    def metrics_path(self) -> Path:
        return self.metrics or self.out.with_name(self.out.stem + ".metrics.json")


@dataclass(kw_only=True)
class VerifySettings:
    """`fat logits verify`: read every row of one or more stores against their checksums."""

    stores: list[Path] = option(help="teacher logits store(s) (.h5)", positional=True, nargs="+", metavar="STORE")

    def __post_init__(self) -> None:
        self.stores = [Path(p) for p in self.stores]
