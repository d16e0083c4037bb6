"""Read the command lines DVC writes from params.yaml sections.

dvc.yaml runs each stage as `fat <stage> ${<stage>}`: DVC unpacks the params.yaml section into
`--key value` pairs (lists as `--key a b`, booleans as `--key` / `--no-key` with
`parsing.bool: boolean_optional`, null as `--key None`). params.yaml keys are the field names of
the stage's settings dataclass (pipeline.settings), snake_case as DVC users write them
(`dvc exp run -S train.tome_r=16`), while the options are `--tome-r`. This module maps DVC's
spelling onto the options, from the settings' own field list, before argparse sees the line:
- `--tome_r 16` → `--tome-r 16` when `tome_r` is a field of the command's settings;
- `--no-skip_invalid` → `--no-skip-invalid`; for a field whose only option is a `--no-x` flag,
  `--no-no_x` (false: "not given") is dropped;
- `--key None` (a YAML null) → dropped: the option keeps its default.
Tokens that do not name an option of the command are left alone, so ids that start with `-`
and anything argparse would reject are unaffected.
- After an option declared `dash_values` (`fat predict --id`), every token up to the next one
  that names an option of the command is one of its values, even one that starts with `-`
  (AudioSet ids such as `--4gqARaEJE0`): `--id -a b` → `--id=-a --id=b`, which argparse cannot
  mistake for options.

A list in params.yaml where one value belongs (`train.lr: [0.001, 0.002]`) reaches argparse as
`--lr 0.001 0.002`, which it reports as "unrecognized arguments: 0.002"; `one_value_given_many`
turns that into a message naming the option and its params.yaml key.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence

from pipeline.settings import Option, option_table


def _command(commands: Mapping[str, argparse.ArgumentParser], argv: Sequence[str]) -> tuple[int, dict[str, Option]] | None:
    """(position of the command word, its option table), or None when the line names no command."""
    for position, token in enumerate(argv):
        if token == "--":
            return None
        if token in commands:
            parser = commands[token]
            actions = getattr(parser, "commands", {})  # `fat logits import`, `fat bench student`: its own options
            if position + 1 < len(argv) and argv[position + 1] in actions:
                position, parser = position + 1, actions[argv[position + 1]]
            settings = parser.get_default("settings_class")
            return position, option_table(settings) if settings is not None else {}
    return None


def _lookup(table: Mapping[str, Option], name: str) -> Option | None:
    """The option a token names as argparse spells it (`--tome-r`) or as DVC does (`--tome_r`)."""
    return table.get(name) or table.get("--" + name[2:].replace("_", "-"))


def _names_option(table: Mapping[str, Option], token: str) -> bool:
    """True when `token` is an option of the command (help, --x, --no-x, DVC's --x_y), not a value."""
    name = token.partition("=")[0]
    if name in ("-h", "--help") or _lookup(table, name) is not None:
        return True
    return name.startswith("--no-") and _lookup(table, "--" + name[len("--no-"):]) is not None


def normalise_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """`argv` with DVC's spelling of the command's options mapped onto their real names.

    `parser` is fat's parser: its `commands` maps each command word to the sub-parser that knows
    its settings class.
    """
    argv = list(argv)
    found = _command(getattr(parser, "commands", {}), argv)
    if found is None:
        return argv
    position, table = found
    out = argv[: position + 1]
    tokens = argv[position + 1:]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            out += tokens[i - 1:]
            break
        if not token.startswith("--"):
            out.append(token)
            continue
        name, eq, value = token.partition("=")
        opt = _lookup(table, name)
        if opt is not None and opt.spec.dash_values and not eq:
            values = []
            while i < len(tokens) and tokens[i] != "--" and not _names_option(table, tokens[i]):
                values.append(tokens[i])
                i += 1
            out += [f"{opt.flag}={value}" for value in values] or [opt.flag]  # none: argparse says one is needed
            continue
        if opt is not None:
            if not eq and not opt.is_bool and i < len(tokens) and tokens[i] == "None":
                i += 1  # YAML null: leave the option at its default
                continue
            out.append(opt.flag + eq + value)
            continue
        if name.startswith("--no-") and not eq:
            positive = _lookup(table, "--" + name[len("--no-"):])
            if positive is not None and positive.is_bool:
                if not positive.flag.startswith("--no-"):
                    out.append("--no-" + positive.flag[2:])  # `key: false` for an --x/--no-x switch
                continue  # `no_x: false` for a lone --no-x flag: the flag is simply not given
        out.append(token)
    return out


NEGATIVE_NUMBER = re.compile(r"-\d+(\.\d*)?([eE][-+]?\d+)?$|-\.\d+([eE][-+]?\d+)?$")


def _is_value(token: str) -> bool:
    """A token argparse reads as a value, not as an option (negative numbers included)."""
    return not token.startswith("-") or bool(NEGATIVE_NUMBER.match(token))


def _takes_one_token(opt: Option) -> bool:
    """True for an option that reads exactly one value (not a switch, not a list)."""
    if opt.is_bool or opt.spec.nargs is not None:
        return False
    return not opt.many or opt.spec.parse is not None  # a `parse` function reads a whole list from one token


def one_value_given_many(parser: argparse.ArgumentParser, argv: Sequence[str], extras: Sequence[str]) -> str | None:
    """The error for a one-value option followed by several values that argparse left over (`extras`), naming the
    option, the values and the params.yaml key; None when the leftovers are something else."""
    found = _command(getattr(parser, "commands", {}), argv)
    if found is None:
        return None
    position, table = found
    tokens = list(argv[position + 1:])
    left_over = set(extras)
    for i, token in enumerate(tokens):
        if token == "--":
            break
        opt = table.get(token)
        if opt is None or not _takes_one_token(opt):
            continue
        values = []
        for value in tokens[i + 1:]:
            if not _is_value(value):
                break
            values.append(value)
        if len(values) > 1 and values[1] in left_over:
            return (f"{opt.flag} takes one value, got {len(values)}: {' '.join(values)} "
                    f"(params.yaml key {opt.name}: give one value, not a list)")
    return None
