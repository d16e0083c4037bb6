"""`fat predict`: the top labels of audio files, from a teacher (or a trained student)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "predict", "tag audio files: top-k labels with probabilities (teacher or student)",
        description=(
            "Tag audio files of any format ffmpeg decodes and any sample rate (resampled to the model's).\n"
            "Files are cut into windows of --window seconds every --hop seconds (a shorter file is one\n"
            "padded window); each window gets its top-k, and the pooled result takes each class's maximum\n"
            "(or mean) probability over the windows. Examples:\n"
            "  fat predict street.m4a --teacher mn10_as --labels data/metadata/class_labels_indices.csv\n"
            "  fat predict *.wav --model student:models/student/student.pt --json"
        ),
    )
    parser.add_argument("audio", nargs="+", type=Path, metavar="AUDIO", help="audio file(s) to tag")
    parser.add_argument("--teacher", nargs="+", default=["mn10_as"], metavar="NAME",
                        help="released teacher name(s); several = their mean logits (default: mn10_as)")
    parser.add_argument("--model", default=None, metavar="SPEC",
                        help="teacher:NAME[,NAME...] or student:PATH (a `fat train` checkpoint); overrides "
                             "--teacher (default: the --teacher)")
    parser.add_argument("--checkpoint", nargs="+", type=Path, default=[], metavar="PATH",
                        help="local teacher checkpoint file(s), one per teacher (default: the cached download)")
    parser.add_argument("--random-init", action="store_true",
                        help="RANDOMLY INITIALISED teacher, for tests and the offline demo: meaningless labels "
                             "(default: off)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="label CSV index,mid,display_name for the class names (default: "
                             "class_labels_indices.csv in data/datafiles, data/metadata or $FAT_CACHE)")
    parser.add_argument("--top-k", type=int, default=10, help="labels listed per result (default: 10)")
    parser.add_argument("--window", type=float, default=None,
                        help="window length in seconds (default: the model's input length, 10 s for teachers)")
    parser.add_argument("--hop", type=float, default=None, help="seconds between window starts (default: window/2)")
    parser.add_argument("--pool", choices=("max", "mean"), default="max",
                        help="how window probabilities are pooled per class (default: max)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text (default: text)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: 8)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto = cuda when available (default: auto)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision (float16 on CUDA, bfloat16 on CPU) (default: on for CUDA only)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from pipeline.errors import FatError
    from pipeline.predict import ClassNames, check_window, format_text, load_tagger, tag_file
    from pipeline.training.distributed import choose_device

    if args.top_k < 1 or args.batch_size < 1:
        raise FatError("--top-k and --batch-size must be at least 1")
    for path in args.audio:
        if not path.is_file():
            raise FatError(f"{path}: no such audio file")
    model = args.model or "teacher:" + ",".join(args.teacher)
    num_classes = None
    if args.random_init and args.labels is not None:
        from pipeline.datafile import load_label_csv

        num_classes = len(load_label_csv(args.labels))
    tagger = load_tagger(model, args.checkpoint, args.random_init, num_classes, choose_device(args.device, 0), args.amp)
    window, hop = check_window(args.window, args.hop, tagger)
    names = ClassNames.find(args.labels, tagger.num_classes)
    results = [tag_file(tagger, path, names, window, hop, args.top_k, args.pool, args.batch_size) for path in args.audio]
    if args.json:
        print(json.dumps({"model": tagger.describe(), "labels": names.source, "window_s": window, "hop_s": hop,
                          "files": results}, indent=2))
    else:
        if tagger.describe().get("random_init"):
            print("!!! RANDOM-INIT model: these labels mean nothing (demo / test plumbing only)")
        print("\n\n".join(format_text(result, window, hop) for result in results))
    return 0
