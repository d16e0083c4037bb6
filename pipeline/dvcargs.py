"""Read the command lines DVC writes from params.yaml sections.

dvc.yaml runs each stage as `fat <stage> ${<stage>}`: DVC unpacks the params.yaml section into
`--key value` pairs (lists as `--key a b`, booleans as `--key` / `--no-key` with
`parsing.bool: boolean_optional`, null as `--key None`). params.yaml keys are snake_case, as DVC
users write them (`dvc exp run -S train.tome_r=16`), while the options are `--tome-r`. This
module maps DVC's spelling onto the parser's options before argparse sees the line:
- `--tome_r 16` → `--tome-r 16` when `--tome-r` is an option of the command;
- `--no-skip_invalid` for a plain on/off flag (store_true) → dropped: false means "not given";
- `--key None` (a YAML null) → dropped: the option keeps its default.
Tokens that do not name an option of the command are left alone, so ids that start with `-`
and anything argparse would reject are unaffected.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _subparser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[int, argparse.ArgumentParser] | None:
    """(position of the command word, its parser), or None when the line names no command."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        return None
    for position, token in enumerate(argv):
        if token == "--":
            return None
        if token in actions[0].choices:
            return position, actions[0].choices[token]
    return None


def _known(parser: argparse.ArgumentParser, option: str) -> argparse.Action | None:
    return parser._option_string_actions.get(option)


def _is_flag(action: argparse.Action) -> bool:
    """An option that takes no value and is not already an --x/--no-x pair."""
    return action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)


def normalise_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """`argv` with DVC's spelling of the command's options mapped onto their real names."""
    argv = list(argv)
    found = _subparser(parser, argv)
    if found is None:
        return argv
    position, sub = found
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
        spelled = name if _known(sub, name) else "--" + name[2:].replace("_", "-")
        action = _known(sub, spelled)
        if action is not None:
            if not eq and action.nargs != 0 and i < len(tokens) and tokens[i] == "None":
                i += 1  # YAML null: leave the option at its default
                continue
            out.append(spelled + eq + value)
            continue
        hyphenated = spelled
        if hyphenated.startswith("--no-") and not eq:
            positive = _known(sub, "--" + hyphenated[len("--no-"):])
            if positive is not None and _is_flag(positive):
                continue  # `key: false` for an on/off flag: the flag is simply not given
        out.append(token)
    return out
