"""Stage settings declared once (pipeline.settings): the command line, params.yaml keys and resume rules
all come from the dataclass fields; and device / precision / threads have one home (pipeline.runtime)."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import runtime
from pipeline.cli import Parser, add_command, build_parser, main
from pipeline.core.errors import FatError
from pipeline.dvcargs import normalise_argv
from pipeline.settings import (
    RENAMED_OPTIONS, check_values, from_args, nested, option, options, params_keys, renamed_options, resume_invariant,
)
from pipeline.training.config import RESUME_INVARIANT, TrainConfig, saved_config
from pipeline.training.state import check_compatible

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILES = ["params.yaml", "configs/audioset-balanced.yaml", "configs/audioset-full.yaml",
                "configs/speechcommands.yaml", "configs/esc50.yaml"]
SECTION_COMMAND = {"demo": "demo-corpus", "metadata": "metadata", "download": "download", "validate": "validate",
                   "pack": "pack", "logits": "logits", "train": "train", "evaluate": "evaluate",
                   "prepare": "prepare", "finetune": "finetune-teacher", "report": "folds-report", "tune_r": "tune-r"}


@dataclass(frozen=True, kw_only=True)
class Inner:
    rate: int = option(32000, "sample rate", unit="Hz", minimum=1, group="inner")


@dataclass(kw_only=True)
class Toy:
    out: Path = option(help="where to write")
    mode: str = option("fast", "how", choices=("fast", "slow"), resume=False)
    sizes: tuple[int, ...] = option((1, 2), "sizes", unit="clips")
    inner: Inner = nested(Inner)
    note: str = "not an option"


def toy_parser() -> Parser:
    parser = Parser(prog="fat")
    add_command(parser.add_subparsers(dest="command"), "toy", "a toy stage", settings=Toy)
    return parser


def test_help_shows_unit_choices_and_default_of_each_field() -> None:
    text = " ".join(toy_parser().commands["toy"].format_help().split())
    assert "--mode {fast,slow} how (default: fast)" in text
    assert "--rate RATE sample rate [Hz] (default: 32000)" in text
    assert "--sizes SIZES [SIZES ...] sizes [clips] (default: (1, 2))" in text
    assert "inner:" in text and "--note" not in text  # a group per `group=`; a plain field is no option


def test_the_dataclass_comes_back_from_the_command_line_nested_fields_included() -> None:
    parser = toy_parser()
    settings = from_args(Toy, parser.parse_args(["toy", "--out", "x", "--sizes", "3", "4", "--rate", "16000"]))
    assert settings == Toy(out=Path("x"), sizes=[3, 4], inner=Inner(rate=16000))
    assert params_keys(Toy) == ["out", "mode", "sizes", "rate"]
    assert resume_invariant(Toy) == ("mode",)


def test_check_values_names_the_option_for_a_value_built_in_code() -> None:
    with pytest.raises(FatError, match=r"--rate must be ≥ 1, got 0"):
        check_values(Toy(out=Path("x"), inner=Inner(rate=0)))
    with pytest.raises(FatError, match=r"--mode must be one of fast, slow, got 'medium'"):
        check_values(Toy(out=Path("x"), mode="medium"))


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--lr", "-0.001", "--lr must be > 0, got -0.001"),
    ("--lr", "0", "--lr must be > 0, got 0.0"),
    ("--kd-temperature", "-2", "--kd-temperature must be > 0, got -2.0"),
    ("--norm-std", "0", "--norm-std must be > 0, got 0.0"),
    ("--lr-decay-factor", "1.5", "--lr-decay-factor must be ≤ 1, got 1.5"),
    ("--lr-decay-step", "0", "--lr-decay-step must be ≥ 1, got 0"),
    ("--lr-decay-start", "-1", "--lr-decay-start must be ≥ 0, got -1"),
])
def test_a_bad_training_value_is_one_line_naming_its_option_and_value(option: str, value: str, message: str,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`--lr -0.001` used to be "--lr, --kd-temperature and --norm-std must be positive", without the value."""
    for name in ("train.json", "valid.json", "class_labels_indices.csv"):
        (tmp_path / name).write_text('{"data": []}')
    argv = ["train", "--train", str(tmp_path / "train.json"), "--valid", str(tmp_path / "valid.json"),
            "--out", str(tmp_path / "out"), "--kd-lambda", "1", option, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"fat train: error: {message}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("params_file", PARAMS_FILES)
def test_params_keys_are_the_field_names_of_the_stage_settings(params_file: str) -> None:
    """A params.yaml key that is no field would reach the command line as an unknown option (or worse, be
    mapped to some other option): every key of every section is a field of its stage's settings."""
    commands = build_parser().commands
    params = yaml.safe_load((ROOT / params_file).read_text())
    for section, values in params.items():
        if section == "data":
            continue
        settings = commands[SECTION_COMMAND[section]].get_default("settings_class")
        assert settings is not None, section
        unknown = set(values) - set(params_keys(settings))
        assert not unknown, f"{params_file}: {section}: {sorted(unknown)} are not fields of {settings.__name__}"


def test_every_command_builds_its_settings_from_its_own_defaults() -> None:
    """argparse's defaults are the dataclass defaults: the same object comes back from an empty command line."""
    required = {"download": ["--split", "eval"], "validate": ["--split", "eval"], "train": ["--train", "t.json",
                "--valid", "v.json", "--out", "o"], "logits": ["--datafile", "d.json"],
                "evaluate": ["--checkpoint", "s.pt", "--datafile", "d.json"],
                "tune-r": ["--checkpoint", "s.pt", "--datafile", "d.json"], "prepare": ["folder", "--root", "r"],
                "predict": ["a.wav"], "stats": ["d.json"], "merges": ["a.wav"], "pack": ["--datafile", "d.json"],
                "logits import": ["--logits", "p.npy", "--ids", "i.txt", "--datafile", "d.json", "--teacher", "t"],
                "logits verify": ["s.h5"], "finetune-teacher": ["--train", "t.json", "--valid", "v.json", "--out", "o"],
                "folds-report": ["e1.json", "e2.json"]}
    parser = build_parser()
    checked = 0
    variants = [(name, sub) for name, sub in parser.commands.items()]
    variants += [(f"{name} {nested_name}", nested_parser) for name, sub in parser.commands.items()
                 for nested_name, nested_parser in getattr(sub, "commands", {}).items()]  # fat bench student
    for name, sub in variants:
        settings = sub.get_default("settings_class")
        if settings is None:
            continue
        given = required.get(name, required.get(name.split()[0], []))
        args = parser.parse_args([*name.split(), *given])
        built = from_args(settings, args)
        for opt in options(settings):
            if not opt.required and not opt.spec.positional and opt.flag not in given:
                value = getattr(args, opt.name)
                assert value == opt.default, (name, opt.name, value, opt.default)
        assert dataclasses.is_dataclass(built)
        checked += 1
    assert checked >= 12


def test_resume_invariant_comes_from_the_fields_and_is_what_a_resume_checks() -> None:
    config = TrainConfig(train=[Path("t.json")], valid=Path("v.json"), out=Path("o"))
    assert set(RESUME_INVARIANT) == {opt.name for opt in options(TrainConfig) if not opt.spec.resume}
    assert {"batch_size", "adam_betas", "norm_mean", "tome_r"} <= set(RESUME_INVARIANT)
    assert not {"epochs", "wa_end", "precision", "threads", "device"} & set(RESUME_INVARIANT)
    saved = config.to_dict()
    check_compatible(Path("state"), saved, dataclasses.replace(config, epochs=40).to_dict(), RESUME_INVARIANT)
    with pytest.raises(FatError, match=r"batch_size: 12 → 24"):
        check_compatible(Path("state"), saved, dataclasses.replace(config, batch_size=24).to_dict(), RESUME_INVARIANT)
    # a state written when the Adam betas were two fields reads as one
    old = {key: value for key, value in saved.items() if key != "adam_betas"} | {"beta1": 0.95, "beta2": 0.999}
    check_compatible(Path("state"), saved_config(old), saved, RESUME_INVARIANT)
    with pytest.raises(FatError, match="adam_betas"):
        check_compatible(Path("state"), saved_config({**old, "beta1": 0.9}), saved, RESUME_INVARIANT)


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command line that has a settings class (`bench student` included) → its parser."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(words: str, parser: argparse.ArgumentParser) -> None:
        if parser.get_default("settings_class") is not None:
            found[words] = parser
        for word, sub in getattr(parser, "commands", {}).items():
            walk(f"{words} {word}".strip(), sub)

    walk("", build_parser())
    return found


def renamed_cases() -> list[tuple[str, str, str, str]]:
    """(command words, old spelling, advice, params key): every row of RENAMED_OPTIONS in every command it reaches."""
    cases = []
    for words, parser in sorted(command_parsers().items()):
        for old, renamed in renamed_options(parser.get_default("settings_class")).items():
            cases.append((words, old, renamed.advice, renamed.new.name))
    return cases


RENAMED_CASES = renamed_cases()


def test_every_row_of_the_renamed_table_reaches_a_command_and_every_command_with_its_option() -> None:
    reached = {old for _, old, _, _ in RENAMED_CASES}
    assert reached == {old for row in RENAMED_OPTIONS for old in row.old}
    # the spellings users tried where only a bare "unrecognized arguments" came back
    pairs = {(words, old) for words, old, _, _ in RENAMED_CASES}
    assert {("train", "--no-amp"), ("evaluate", "--amp"), ("evaluate", "--no-amp"), ("evaluate", "--dtype"),
            ("bench student", "--amp"), ("train", "--amp"), ("logits", "--amp"), ("logits", "--dtype")} <= pairs
    for words, parser in command_parsers().items():  # every command with --precision knows all its old names
        names = {opt.name for opt in options(parser.get_default("settings_class"))}
        if "precision" in names:
            assert {(words, "--amp"), (words, "--no-amp"), (words, "--dtype")} <= pairs, words


@pytest.mark.parametrize(("words", "old", "advice", "key"), RENAMED_CASES,
                         ids=[f"{words}:{old}" for words, old, _, _ in RENAMED_CASES])
def test_a_renamed_option_is_one_line_naming_the_new_one(words: str, old: str, advice: str, key: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """From the command line (with or without a value), and in DVC's spelling of a params.yaml key."""
    for argv in ([*words.split(), old], [*words.split(), old, "fp16"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"fat {words}: error: {old} was renamed: use {advice} "
                                                        f"(params.yaml key: {key})"), err
    assert "--precision fp32" in advice if old == "--no-amp" else "{" in advice


@pytest.mark.parametrize(("section", "yaml_value", "message"), [
    ("train", "{amp: false}", "--no-amp was renamed: use --precision fp32 (params.yaml key: precision)"),
    ("train", "{amp: bf16}", "--amp was renamed: use --precision {auto,fp32,bf16,fp16} (params.yaml key: precision)"),
    ("evaluate", "{amp: true}", "--amp was renamed: use --precision {auto,fp32,bf16,fp16}"),
    ("evaluate", "{dtype: bf16}", "--dtype was renamed: use --precision {auto,fp32,bf16,fp16}"),
    ("logits", "{dtype: float32}", "--dtype was renamed: use --store-dtype {float16,float32} (params.yaml key: store_dtype)"),
])
def test_an_old_params_key_reaches_the_same_error_through_dvc_spelling(section: str, yaml_value: str, message: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """DVC writes a params.yaml section as `--key value`, a false boolean as `--no-key`."""
    argv = [SECTION_COMMAND[section], *dvc_tokens(yaml.safe_load(yaml_value))]
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def dvc_tokens(section: dict) -> list[str]:
    """A params.yaml section as dvc.yaml's `${section}` unpacks it (parsing.bool: boolean_optional)."""
    tokens: list[str] = []
    for key, value in section.items():
        if isinstance(value, bool):
            tokens.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, list):
            tokens += [f"--{key}", *map(str, value)]
        else:
            tokens += [f"--{key}", "None" if value is None else str(value)]
    return tokens


# --------------------------------------------------------------------------- one runtime module

def test_precision_rules_on_the_cpu() -> None:
    cpu = torch.device("cpu")
    assert runtime.choose_precision("auto", cpu).name == "fp32"
    assert runtime.choose_precision("fp32", cpu).name == "fp32"
    bf16 = runtime.choose_precision("bf16", cpu)
    assert bf16.name == "bf16" and not bf16.needs_scaler
    with bf16.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with pytest.raises(FatError, match="fp16 needs a CUDA device"):
        runtime.choose_precision("fp16", cpu)
    assert runtime.choose_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert runtime.choose_device("auto") == cpu
        with pytest.raises(FatError, match="no CUDA device"):
            runtime.choose_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_precision_rules_on_a_gpu() -> None:
    gpu = runtime.choose_device("auto")
    assert gpu.type == "cuda" and runtime.choose_device("cuda:0") == torch.device("cuda", 0)
    auto = runtime.choose_precision("auto", gpu)
    assert auto.name == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    fp16 = runtime.choose_precision("fp16", gpu)
    assert fp16.needs_scaler and fp16.scaler().is_enabled()
    with pytest.raises(FatError, match="CUDA devices 0.."):
        runtime.choose_device(f"cuda:{torch.cuda.device_count()}")


# Where each runtime decision may be made: anywhere else in pipeline/ it is a second copy of a rule.
RUNTIME_ONLY = [r"torch\.cuda\.is_available\(", r"is_bf16_supported\(", r"torch\.autocast\(", r"GradScaler\(",
                r"set_num_threads\(", r"init_process_group\(", r"\bdef (choose|resolve|compute|select)_\w*(device|precision)\w*\(",
                r"\bdef \w*autocast\w*\("]


def test_device_precision_and_threads_are_decided_only_in_pipeline_runtime() -> None:
    offenders = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if path == ROOT / "pipeline" / "runtime.py":
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.relative_to(ROOT)}: {pattern}" for pattern in RUNTIME_ONLY if re.search(pattern, text)]
    assert not offenders, offenders


def test_no_stage_reaches_into_argparse_internals() -> None:
    """pipeline.dvcargs maps DVC's spelling from the settings' field list, not from argparse's private tables."""
    for path in (ROOT / "pipeline").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\._(actions|option_string_actions|name_parser_map)\b", text), path


def test_one_spelling_of_precision_device_and_threads_in_every_command_that_computes() -> None:
    """Same option, same choices, same default wherever a model runs."""
    commands = build_parser().commands
    computing = {"train": commands["train"], "logits": commands["logits"], "evaluate": commands["evaluate"],
                 "predict": commands["predict"], "bench student": commands["bench"].commands["student"]}
    for name, parser in computing.items():
        fields = {opt.name: opt for opt in options(parser.get_default("settings_class"))}
        assert fields["precision"].default == "auto" and fields["precision"].spec.choices == (
            "auto", "fp32", "bf16", "fp16"), name
        assert fields["device"].default == "auto", name
        if name not in ("predict", "evaluate"):
            assert fields["threads"].default == 0, name
    # evaluate times the student: one thread by default, which a shared 2-core machine measured faster and steadier
    assert {opt.name: opt for opt in options(commands["evaluate"].get_default("settings_class"))}["threads"].default == 1
    assert isinstance(commands["train"], argparse.ArgumentParser)


def test_building_every_parser_imports_no_torch() -> None:
    """The settings dataclasses are read when `fat --help` builds its parsers: their modules (and the stage
    packages' __init__) must not pull in torch, which runtime and the stages import at their top."""
    code = "import sys; from pipeline.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"
