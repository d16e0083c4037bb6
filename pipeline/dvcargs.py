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
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from pipeline.settings import Option, option_table


def _command(commands: Mapping[str, argparse.ArgumentParser], argv: Sequence[str]) -> tuple[int, dict[str, Option]] | None:
    """(position of the command word, its option table), or None when the line names no command."""
    for position, token in enumerate(argv):
        if token == "--":
            return None
        if token in commands:
            settings = commands[token].get_default("settings_class")
            return position, option_table(settings) if settings is not None else {}
    return None


def _lookup(table: Mapping[str, Option], name: str) -> Option | None:
    """The option a token names as argparse spells it (`--tome-r`) or as DVC does (`--tome_r`)."""
    return table.get(name) or table.get("--" + name[2:].replace("_", "-"))


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
