"""`fat demo-corpus`: synthesise the small offline AudioSet-style corpus of the default pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    defaults = _default_settings()
    parser = add_command(
        subparsers, "demo-corpus", "synthesise the offline demo corpus (AudioSet layout, real MIDs)",
        description=(
            "Write a small AudioSet-shaped corpus that needs no network:\n"
            "  <out-dir>/audioset/{class_labels_indices,balanced_train_segments,eval_segments}.csv\n"
            "      official raw layouts, for `fat metadata --source <out-dir>/audioset`\n"
            "  <out-dir>/media/<ytid>   one synthesised 'video' per clip (webm, m4a, ogg, mp3 or flac;\n"
            "      no extension, like a video URL): --url-template 'file:///abs/<out-dir>/media/{id}'\n"
            "  <out-dir>/clips.csv   split,ytid,container,labels,fault for every clip\n"
            "Clips mix 1..max-labels synthesisable sounds (sine, white/pink noise, chirp, beep,\n"
            "clicks, mains hum, siren, dial tone, buzzer) labelled with their real AudioSet MIDs.\n"
            "Some are broken as real downloads are (missing, HTML page, silent, truncated, clipped)."
        ),
    )
    parser.add_argument("--out-dir", type=Path, default=Path("data/demo"), help="folder to write the corpus into")
    parser.add_argument("--train-clips", type=int, default=defaults.train_clips, help="clips in balanced_train (count)")
    parser.add_argument("--eval-clips", type=int, default=defaults.eval_clips, help="clips in eval (count)")
    parser.add_argument("--window-seconds", type=float, default=defaults.window_seconds,
                        help="length of each clip's labelled window, seconds (AudioSet: 10)")
    parser.add_argument("--broken-fraction", type=float, default=defaults.broken_fraction,
                        help="fraction of each split broken on purpose (0..0.5)")
    parser.add_argument("--max-labels", type=int, default=defaults.max_labels, help="most sounds mixed into one clip (count)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed; the corpus is byte-identical per seed")
    parser.add_argument("--workers", type=int, default=2, help="parallel ffmpeg encoders (processes)")
    parser.add_argument("--skip", action="store_true",
                        help="make no corpus, only <out-dir>/README.md saying so (the real-AudioSet presets set "
                             "this, so one dvc.yaml serves both) (default: off)")
    parser.set_defaults(func=run)


def _default_settings():  # noqa: ANN202 - keeps numpy out of `fat --help` imports
    from pipeline.demo import DemoSettings

    return DemoSettings()


def run(args: argparse.Namespace) -> int:
    from pipeline.demo import DemoSettings, build_corpus, write_skipped_note

    if args.skip:
        write_skipped_note(args.out_dir)
        return 0
    settings = DemoSettings(
        train_clips=args.train_clips, eval_clips=args.eval_clips, window_seconds=args.window_seconds,
        broken_fraction=args.broken_fraction, max_labels=args.max_labels, seed=args.seed,
    )
    build_corpus(args.out_dir, settings, workers=args.workers)
    return 0
