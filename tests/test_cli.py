"""What `fat` says before any stage runs: one-line usage errors, help texts, which input is checked first."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main

STAGES = sorted(next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices)


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """stderr of a command line argparse refuses (exit status 2)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("stage", STAGES)
def test_a_usage_error_is_one_line_naming_the_command(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error([stage, "--no-such-option", "1"], capsys)
    assert err.count("\n") == 1 and err.startswith(f"fat {stage}: error: "), err
    assert f"fat {stage} --help" in err


@pytest.mark.parametrize(("argv", "expected"), [
    (["train", "--lr", "abc"], "fat train: error: argument --lr: invalid float value: 'abc'"),
    (["train", "--warmup_steps", "1.5"], "fat train: error: argument --warmup-steps: invalid int value: '1.5'"),
    ([], "fat: error: the following arguments are required: COMMAND"),
    (["nosuchstage"], "fat: error: argument COMMAND: invalid choice: 'nosuchstage'"),
])
def test_a_bad_value_is_the_only_line_printed(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A value from params.yaml arrives in dvc.yaml's spelling (--warmup_steps); the message names the option."""
    err = usage_error(argv, capsys)
    assert err.count("\n") == 1 and err.startswith(expected), err


@pytest.mark.parametrize(("section", "message"), [
    ({"lr": [0.001, 0.002]}, "--lr takes one value, got 2: 0.001 0.002 (params.yaml key lr: give one value, not a list)"),
    ({"lr_decay_factor": [0.5, 0.25, 0.1]}, "--lr-decay-factor takes one value, got 3: 0.5 0.25 0.1 "
                                            "(params.yaml key lr_decay_factor: give one value, not a list)"),
    ({"kd_temperature": [-1, -2]}, "--kd-temperature takes one value, got 2: -1 -2"),
    ({"out": ["a", "b"]}, "--out takes one value, got 2: a b (params.yaml key out: give one value, not a list)"),
])
def test_a_list_where_one_value_belongs_names_the_option_and_its_key(section: dict, message: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """DVC spreads a params.yaml list as `--lr 0.001 0.002`: argparse alone said "unrecognized arguments: 0.002"."""
    tokens = [token for key, value in section.items() for token in (f"--{key}", *map(str, value))]
    argv = ["train", "--train", "t.json", "--valid", "v.json", "--out", "o", *tokens]
    err = usage_error(argv, capsys)
    assert err.count("\n") == 1 and err.startswith(f"fat train: error: {message}"), err


def test_leftovers_that_are_not_a_list_are_still_unrecognized(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["train", "--train", "t.json", "--valid", "v.json", "--out", "o", "--lr", "0.1", "--wa", "x"],
                      capsys)
    assert err.startswith("fat train: error: unrecognized arguments: x"), err


def help_text(*argv: str) -> str:
    """The help of `fat ARGV --help`, whitespace collapsed (argparse wraps at any space)."""
    parser = build_parser()
    if argv:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[0]]
    return " ".join(parser.format_help().split())


@pytest.mark.parametrize("stage", ["", *STAGES])
def test_help_shows_no_default_for_required_options(stage: str) -> None:
    assert "(default: None)" not in help_text(*filter(None, [stage]))


@pytest.mark.parametrize("stage", ["", "validate", "logits", "train", "evaluate"])
def test_help_names_datafiles_where_validate_writes_them(stage: str) -> None:
    """dvc.yaml's layout: data/datafiles/<split>/<split>.json, one DVC output folder per split."""
    text = help_text(*filter(None, [stage]))
    paths = re.findall(r"data/datafiles/\S*?\.json", text)
    assert paths, text
    for path in paths:
        assert re.fullmatch(r"data/datafiles/([\w<>]+)/\1\.json", path), path


def test_train_names_a_missing_datafile_before_the_missing_teacher(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The default --kd-lambda 0.1 needs --teacher; a missing --train is still the first thing to fix."""
    missing = tmp_path / "data" / "balanced_train.json"
    assert main(["train", "--train", str(missing), "--valid", str(tmp_path / "eval.json"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such file (--train)" in err and "teacher" not in err


def test_validate_checks_the_split_name_before_reading_a_file_it_names(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """--split ../x named <metadata-dir>/../x.csv, which was read before the name was refused."""
    (tmp_path / "metadata").mkdir()
    (tmp_path / "x.csv").write_text("not,a,metadata,file\n")
    assert main(["validate", "--split", "../x", "--metadata-dir", str(tmp_path / "metadata"),
                 "--out-dir", str(tmp_path / "out"), "--report-dir", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert "--split '../x'" in err and "x.csv" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "reports").exists()
