"""What `fat tune-r` is asked to do: its options (params.yaml `tune_r:` keys)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.evaluate.settings import TimingSettings
from pipeline.packed.settings import packed_option
from pipeline.settings import nested, option, threads_option


@dataclass(kw_only=True)
class TuneSettings:
    """The `fat tune-r` options: a student, a validation set, one budget, the search bound."""

    checkpoint: Path = option(help="trained student: a fat student file (.pt or .safetensors) or a Hugging Face AST "
                                   "folder")
    datafile: Path = option(help="validation datafile (AST JSON) the schedules are scored on")
    packed: list[Path] = packed_option()
    labels: Path | None = option(
        None, "label CSV (index,mid,display_name); default: class_labels_indices.csv beside the datafile")
    speedup: float | None = option(None, "budget: at least this throughput relative to r = 0, measured here "
                                         "(one budget is needed; default: none)",
                                   unit="×", above=1, exclusive="budget")
    clips_per_s: float | None = option(None, "budget: at least this many clips per second (model forward), measured "
                                             "here (default: none)", unit="clips/s", above=0, exclusive="budget")
    gflops: float | None = option(None, "budget: at most this many analytic GFLOPs per clip (default: none)",
                                  unit="GFLOPs", above=0, exclusive="budget")
    max_evaluations: int = option(48, "schedules scored at most (constants and ToMe's schedules first, then the "
                                      "local search)", unit="count", minimum=4)
    metric: str = option("auto", "what is maximised: auto = the student's main metric, else mAP or accuracy",
                         choices=("auto", "map", "accuracy"))
    timing: TimingSettings = nested(TimingSettings)
    threads: int = threads_option()
    workers: int = option(0, "DataLoader worker processes for audio decoding (0: in-process)", minimum=0)
    limit: int | None = option(None, "score on the first N validation clips only (default: all)", minimum=1,
                               metavar="N")
    out_dir: Path = option(Path("reports/tune"), "folder for schedule.json, pareto.json, pareto.png and tune.md")
    skip: bool = option(False, "search nothing, only write <out-dir>/README.md saying so (the demo's params.yaml "
                               "sets it: the search times dozens of schedules; dvc exp run -S tune_r.skip=false)")

    def __post_init__(self) -> None:
        self.packed = [Path(p) for p in self.packed]


SKIPPED_WHY = ("These params (tune_r.skip: true) search no merge schedule. Run it with\n"
               "`dvc exp run -S tune_r.skip=false` or `fat tune-r --checkpoint ... --datafile ... --speedup 1.5`.")
