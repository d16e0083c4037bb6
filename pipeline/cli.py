"""The `fat` command: one subcommand per pipeline stage.

Each stage lives in `pipeline.commands.<name>` and exposes `add_parser(subparsers)`, which
registers its sub-parser with `func=run`; its options come from the stage's settings dataclass
(pipeline.settings). Heavy imports (torch, yt-dlp) happen inside `run` so that `fat --help`
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pipeline import __version__
from pipeline.core.errors import FatError
from pipeline.dvcargs import normalise_argv, one_value_given_many
from pipeline.settings import add_options

# Stage order = pipeline order; `fat --help` lists them in this order.
COMMANDS: tuple[str, ...] = (
    "metadata",
    "download",
    "validate",
    "pack",
    "prepare",
    "finetune_teacher",
    "logits",
    "predict",
    "stats",
    "train",
    "evaluate",
    "tune_r",
    "folds_report",
    "bench",
    "export",
    "merges",
    "demo",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the descriptions' line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # A help text that states its default in words ("default: all") is not given a second one, and a
        # required option has no default to show ("(default: None)" only confused).
        if action.required or (action.help and "default:" in action.help):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `fat <command>: error: <what>`, and where the options are listed.

    The stock error prints the whole usage block first (30 lines for `fat train`), so a bad value
    that came from params.yaml through dvc.yaml scrolled out of sight behind it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # command word → its parser
        self.command_dest = "command"  # where the parsed namespace names the chosen word

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction:
        """argparse's, and `commands` becomes its map of command word → sub-parser (filled as commands are added)."""
        action = super().add_subparsers(**kwargs)
        self.commands = action.choices
        self.command_dest = kwargs.get("dest", self.command_dest)
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
                   ) -> argparse.Namespace:  # type: ignore[override]
        """argparse's, except that an unknown option is reported by the command it was given to."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            argv = sys.argv[1:] if args is None else args
            self.command_parser(parsed).error(one_value_given_many(self, argv, extras)
                                              or f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def command_parser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The sub-parser of the command `parsed` names, down to an action such as `fat logits import`
        (this parser when it names none)."""
        chosen = self.commands.get(getattr(parsed, self.command_dest, None))
        return chosen.command_parser(parsed) if isinstance(chosen, Parser) else self


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fat",
        description="faster-audio-transformers: AudioSet → EfficientAT teacher logits → ToMe-AST student.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"pipeline.commands.{name}").add_parser(subparsers)
    return parser


def add_command(subparsers: argparse._SubParsersAction, name: str, summary: str, description: str | None = None,
                settings: type | None = None) -> argparse.ArgumentParser:
    """Register one stage's sub-parser with the shared formatter; `settings`: the dataclass its options come from."""
    parser = subparsers.add_parser(name, help=summary, description=description or summary, formatter_class=HelpFormatter)
    if settings is not None:
        add_options(parser, settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # dvc.yaml passes params.yaml sections as `--snake_case value`: map them onto the options.
    args = parser.parse_args(normalise_argv(parser, sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except FatError as exc:
        print(f"fat {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"fat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
