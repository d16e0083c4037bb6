"""`fat demo-corpus`: synthesise the small offline AudioSet-style corpus of the default pipeline."""

from __future__ import annotations

import argparse

from pipeline.cli import add_command
from pipeline.core.skipped import write_skipped_note
from pipeline.demo import SKIPPED_WHY, DemoSettings, build_corpus
from pipeline.settings import from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
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
        settings=DemoSettings,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings: DemoSettings = from_args(DemoSettings, args)
    if settings.skip:
        write_skipped_note(settings.out_dir, "fat demo-corpus", SKIPPED_WHY)
        return 0
    build_corpus(settings.out_dir, settings, workers=settings.workers)
    return 0
