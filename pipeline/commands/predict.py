"""`fat predict`: the top labels of audio files, from a teacher (or a trained student)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import add_command
from pipeline.packed.settings import packed_option
from pipeline.settings import check_values, device_option, from_args, option, precision_option


@dataclass(kw_only=True)
class PredictSettings:
    """The `fat predict` options."""

    audio: list[Path] = option([], "audio file(s) to tag (or clips of packed stores: --packed DIR --id ID...)",
                               positional=True, nargs="*", metavar="AUDIO")
    packed: list[Path] = packed_option()
    id: list[str] = option([], "clip id(s) to tag, read from the --packed stores; ids may start with '-' "
                               "(--id --4gqARaEJE0 -0Qx2kCxA7s): every word up to the next option is an id",
                           metavar="ID", dash_values=True)
    teacher: list[str] = option(["mn10_as"], "released teacher name(s); several = their mean logits (default: mn10_as)",
                                metavar="NAME")
    model: str | None = option(None, "teacher:NAME[,NAME...], student:PATH (a `fat train` checkpoint, .pt or "
                                     ".safetensors, or a Hugging Face AST folder) or onnx:PATH (`fat export --format "
                                     "onnx`, run by ONNX Runtime on the CPU); overrides --teacher (default: the "
                                     "--teacher)", metavar="SPEC")
    r: str | None = option(None, "merge rate of a student: 16, 16,16,8, 16:-1 or a schedule file (.json from fat "
                                 "tune-r) (default: 0); an onnx model must have "
                                 "been exported with it (default: its own)", metavar="R")
    checkpoint: list[Path] = option([], "local teacher checkpoint file(s), one per teacher (default: the cached "
                                        "download)", metavar="PATH")
    random_init: bool = option(False, "RANDOMLY INITIALISED teacher, for tests and the offline demo: meaningless labels")
    labels: Path | None = option(None, "label CSV index,mid,display_name for the class names (default: "
                                       "class_labels_indices.csv in data/datafiles, data/metadata or $FAT_CACHE)")
    top_k: int = option(10, "labels listed per result", minimum=1)
    window: float | None = option(None, "window length in seconds (default: the model's input length, 10 s for "
                                        "teachers)")
    hop: float | None = option(None, "seconds between window starts (default: window/2)")
    pool: str = option("max", "how window probabilities are pooled per class", choices=("max", "mean"))
    json: bool = option(False, "print one JSON document instead of text (default: text)")
    batch_size: int = option(8, "windows per forward pass", minimum=1)
    compile: bool = option(False, "torch.compile a student (merging included; the first batch builds the graph); "
                                  "eager with a warning where it cannot compile")
    device: str = device_option()
    precision: str = precision_option()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "predict", "tag audio files: top-k labels with probabilities (teacher or student)",
        description=(
            "Tag audio files of any format ffmpeg decodes and any sample rate (resampled to the model's).\n"
            "Files are cut into windows of --window seconds every --hop seconds (a shorter file is one\n"
            "padded window); each window gets its top-k, and the pooled result takes each class's maximum\n"
            "(or mean) probability over the windows. Examples:\n"
            "  fat predict street.m4a --teacher mn10_as --labels data/metadata/class_labels_indices.csv\n"
            "  fat predict *.wav --model student:models/student/student.safetensors --r 16 --json\n"
            "  fat predict clip.flac --model onnx:models/exports/student/student_r16.onnx\n"
            "  fat predict --packed data/packed/eval --id --4gqARaEJE0 --random-init"
        ),
        settings=PredictSettings,
    )
    parser.set_defaults(func=run)


def compile_tagger(tagger: object, spec: str) -> None:
    """--compile: torch.compile a student tagger in place (teachers and ONNX files are not compiled here)."""
    from pipeline.core.errors import FatError
    from pipeline.predict import StudentTagger
    from student.compile import compile_student

    if not isinstance(tagger, StudentTagger):
        raise FatError(f"--compile compiles a torch student (--model student:PATH); {spec} is not one")
    compile_student(tagger.model)


def model_class_names(tagger: object):  # noqa: ANN201 - ClassNames | None; kept out of `fat --help`'s imports
    """The class names a Hugging Face checkpoint carries (its id2label), unless they are the LABEL_<i> filler."""
    import re

    from pipeline.predict import ClassNames

    labels = getattr(tagger, "config", {}).get("labels")
    if not isinstance(labels, list) or len(labels) != tagger.num_classes:  # type: ignore[attr-defined]
        return None
    if all(re.fullmatch(r"LABEL_\d+", str(name)) for name in labels):
        return None
    return ClassNames([""] * len(labels), [str(name) for name in labels], "the model's id2label")


def run(namespace: argparse.Namespace) -> int:
    import json

    from pipeline import runtime
    from pipeline.core.errors import FatError
    from pipeline.datafile import load_label_csv
    from pipeline.predict import ClassNames, check_window, format_text, load_tagger, packed_clips, tag_file, tag_samples

    args = from_args(PredictSettings, namespace)
    check_values(args)
    if bool(args.packed) != bool(args.id) or bool(args.audio) == bool(args.id):
        raise FatError("give audio files, or --packed DIR... with --id ID... (not both)")
    for path in args.audio:
        if not path.is_file():
            raise FatError(f"{path}: no such audio file")
    clips = packed_clips(args.id, args.packed) if args.id else None  # every id checked before the model loads
    model = args.model or "teacher:" + ",".join(args.teacher)
    num_classes = None
    if args.random_init and args.labels is not None:
        num_classes = len(load_label_csv(args.labels))
    device = runtime.choose_device(args.device)
    precision = runtime.choose_precision(args.precision, device)
    tagger = load_tagger(model, args.checkpoint, args.random_init, num_classes, device, precision, args.r)
    if args.compile:
        compile_tagger(tagger, model)
    window, hop = check_window(args.window, args.hop, tagger)
    names = model_class_names(tagger) if args.labels is None else None
    names = names or ClassNames.find(args.labels, tagger.num_classes)
    if clips is not None:
        results = [tag_samples(tagger, *clips.read(i, tagger.sample_rate), f"id {clip_id}", names, window, hop,
                               args.top_k, args.pool, args.batch_size) for i, clip_id in enumerate(args.id)]
    else:
        results = [tag_file(tagger, path, names, window, hop, args.top_k, args.pool, args.batch_size)
                   for path in args.audio]
    if args.json:
        print(json.dumps({"model": tagger.describe(), "labels": names.source, "window_s": window, "hop_s": hop,
                          "files": results}, indent=2))
    else:
        if tagger.describe().get("random_init"):
            print("!!! RANDOM-INIT model: these labels mean nothing (demo / test plumbing only)")
        print("\n\n".join(format_text(result, window, hop) for result in results))
    return 0
