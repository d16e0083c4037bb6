"""`fat logits`: teacher logits for the clips of one or more datafiles, into one HDF5 store."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "logits", "EfficientAT teacher logits for datafile clips → one HDF5 store",
        description=(
            "Run an EfficientAT mn teacher (or an ensemble: the mean of several teachers' logits) over\n"
            "every clip of the datafiles at 32 kHz, each padded or cut to --clip-seconds, and write\n"
            "  <out>               ids + logits[N, C] + provenance; `complete` once every clip is in\n"
            "  <out stem>.metrics.json  the teacher's own mAP per datafile (when a label CSV is found)\n"
            "  <out stem>.failed.csv    clips that could not be decoded (only if there are any)\n"
            "Resumable: an interrupted run (even kill -9) leaves its finished batches in <out>.partial/;\n"
            "rerun the same command to finish. Rows of an existing store made with the same teacher and\n"
            "settings are reused. Under torchrun each rank takes a share of the batches and rank 0\n"
            "merges them: torchrun --nproc_per_node 4 -m pipeline.cli logits ...\n"
            "Checkpoints are downloaded once into $FAT_CACHE/teachers (default ~/.cache/fat/teachers);\n"
            "offline, pass the file with --checkpoint. Example:\n"
            "  fat logits --datafile data/datafiles/eval/eval.json --teacher mn10_as --out data/logits/mn10_as.h5"
        ),
    )
    parser.add_argument("--datafile", nargs="+", type=Path, required=True, metavar="JSON",
                        help="AST datafile(s) whose clips get logits (required)")
    parser.add_argument("--teacher", nargs="+", default=["mn10_as"], metavar="NAME",
                        help="released teacher name(s); several (or mn_ensemble) = mean of their logits "
                             "(default: mn10_as)")
    parser.add_argument("--checkpoint", nargs="+", type=Path, default=[], metavar="PATH",
                        help="local checkpoint file(s), one per teacher in order, instead of the download "
                             "(default: the released file from the cache or the network)")
    parser.add_argument("--random-init", action="store_true",
                        help="use RANDOMLY INITIALISED teachers (tests and the offline demo only: the logits carry "
                             "no knowledge; recorded as random_init=True in the store) (default: off)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --random-init weights (default: 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the store to write (default: data/logits/<teacher>.h5)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="label CSV index,mid,display_name (default: class_labels_indices.csv beside the first "
                             "datafile; without one, no metrics)")
    parser.add_argument("--metrics", type=Path, default=None,
                        help="teacher metrics JSON (default: <out stem>.metrics.json beside the store)")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per batch (default: 32)")
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader processes decoding audio while the model runs; 0 = in-process (default: 2)")
    parser.add_argument("--clip-seconds", type=float, default=10.0,
                        help="every clip is zero-padded or cut to this length, in seconds (default: 10.0, "
                             "as the teachers were trained)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="storage type of the logits (default: float16, 2 bytes per value)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto = cuda when available (default: auto)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision: float16 autocast on CUDA, bfloat16 on CPU (default: on for CUDA, "
                             "off for CPU)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch; 0 = torch's default (default: 0)")
    parser.add_argument("--skip-undecodable", action="store_true",
                        help="leave clips that cannot be decoded out and still mark the store complete; they are "
                             "listed in <out stem>.failed.csv and the `excluded` attribute (default: such clips "
                             "make the run fail with an incomplete store)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a store (or interrupted work) made by another teacher or other settings "
                             "(default: refuse)")
    parser.add_argument("--progress-every", type=float, default=30.0,
                        help="seconds between progress lines (default: 30)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from pipeline.logits import LogitsSettings, run_logits

    if args.threads < 0:
        from pipeline.errors import FatError

        raise FatError(f"--threads must be ≥ 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path("data") / "logits" / f"{'+'.join(args.teacher)}.h5"
    settings = LogitsSettings(
        datafiles=list(args.datafile), out=out, teachers=list(args.teacher), checkpoints=list(args.checkpoint),
        random_init=args.random_init, seed=args.seed, labels=args.labels, batch_size=args.batch_size,
        workers=args.workers, clip_seconds=args.clip_seconds, dtype=args.dtype, device=args.device, amp=args.amp,
        metrics=args.metrics, skip_undecodable=args.skip_undecodable, overwrite=args.overwrite,
        progress_every=args.progress_every,
    )
    outcome = run_logits(settings)
    if outcome is not None:
        state = "complete" if outcome.complete else "incomplete"
        print(f"{outcome.store}: {state}; {outcome.computed} clips computed, {outcome.reused} reused"
              + (f"; {len(outcome.failed)} excluded" if outcome.failed else ""))
        if outcome.metrics:
            overall = outcome.metrics["all"]
            if "mAP" in overall:
                print(f"teacher mAP {overall['mAP']:.4f} over {overall['clips']} clips "
                      f"(metrics: {settings.metrics_path})")
    return 0
