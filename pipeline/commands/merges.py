"""`fat merges AUDIO`: draw which spectrogram patches the student merged into one token (PNG)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import add_command
from pipeline.commands.bench import StudentChoice, build_model
from pipeline.settings import check_values, from_args, nested, option

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class MergesSettings:
    """The `fat merges` options."""

    audio: Path = option(help="audio file (any rate: resampled to 16 kHz)", positional=True, metavar="AUDIO")
    r: str = option("16", "merge rate: 16, per-block 16,16,8 or schedule 16:-1")
    out: Path = option(Path("merges.png"), "PNG to write")
    start: float = option(0.0, "where in the file the clip starts", unit="s", minimum=0)
    norm: str = option("audioset", "published fbank statistics to normalise with, unless the student file has its own",
                       choices=("audioset", "esc50", "speechcommands"))
    model: StudentChoice = nested(StudentChoice)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "merges", "draw the student's token merges over a clip's spectrogram (PNG)",
        description=("Run the AST with token merging on one clip, trace which input patches each final token\n"
                     "holds, and save a picture: the fbank, and the fbank with merged groups coloured.\n"
                     "Example: fat merges clip.wav --checkpoint models/exp/best.pt --r 16 --out merges.png"),
        settings=MergesSettings,
    )
    parser.set_defaults(func=run)


def run(namespace: argparse.Namespace) -> int:
    import torch

    from pipeline.checkpoint import student_features
    from pipeline.core.atomic import atomic_path
    from pipeline.core.audio import read_audio
    from pipeline.core.errors import FatError
    from student import StudentError
    from student.features import NORM_STATS, SAMPLE_RATE, normalize
    from student.frontend import BatchFbank, fit_frames_batch
    from student.tome import parse_r_spec, set_tome_r
    from student.vis import draw_merges

    args = from_args(MergesSettings, namespace)
    if not args.audio.is_file():
        raise FatError(f"{args.audio}: no such audio file")
    if args.out.suffix.lower() != ".png":
        raise FatError(f"--out {args.out}: the picture is written as PNG; name it *.png")
    check_values(args)
    model, config = build_model(args.model)
    wave, _ = read_audio(args.audio, SAMPLE_RATE)
    wave = wave[int(args.start * SAMPLE_RATE):]
    features = student_features(config, norm=NORM_STATS[args.norm])
    try:
        r = set_tome_r(model, parse_r_spec(args.r))
        frontend = BatchFbank(features.target_frames, features.num_mel_bins, features.mean, features.std)
        samples = torch.from_numpy(wave)[None]  # the feature module training and evaluation use
        logmel, _ = frontend.fbank(samples, torch.tensor([samples.shape[1]]), SAMPLE_RATE)
        fbank = fit_frames_batch(logmel, features.target_frames)[0]
        with torch.inference_mode():
            _, state = model.forward_traced(normalize(fbank, features.mean, features.std)[None])
    except StudentError as exc:
        raise FatError(f"{args.audio}: {exc}") from None
    if state is None:
        raise FatError("--r 0 merges nothing: give a merge rate above 0 to draw")
    fig = draw_merges(model, fbank, state.owner[0], title=f"{args.audio.name}  (r = {args.r}, {config['size']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    log.info("tokens after each block: %s", " ".join(map(str, state.tokens)))
    print(f"{args.out}: {model.num_tokens} → {state.tokens[-1]} tokens (r per block {r})")
    return 0
