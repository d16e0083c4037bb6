"""Stage settings: one dataclass per stage, whose fields are its command line, its params.yaml keys
and its resume rules.

Why: a stage's settings used to be written three or four times (the dataclass, the argparse options
with their defaults, a function copying one into the other, a list of what a resume may not change),
and nothing kept the copies equal. Here a field says it once:

    batch_size: int = option(12, "clips per batch per process", unit="clips", minimum=1, resume=False)

- `add_options(parser, Settings)` makes the options (`--batch-size`; help with unit and default;
  choices; bools as `--x/--no-x`; a nested settings dataclass adds its own fields);
- `from_args(Settings, namespace)` builds the dataclass from what argparse parsed;
- the params.yaml keys of a stage are its field names (`params_keys`), so `option_table` can tell
  pipeline.dvcargs which of DVC's `--snake_case` tokens name an option;
- `resume_invariant(Settings)`: the fields a resumed run may not change (`resume=False`);
- `check_values(settings)`: `choices` and the `minimum=` / `above=` / `maximum=` bounds, as one FatError
  naming the option and the value;
- `RENAMED_OPTIONS`: one table of former spellings (`--amp`, `--no-amp`, `--dtype`) for every command;
  each fails with one line naming the option that replaced it, from the command line and from
  params.yaml, in whichever command has that option.

A plain dataclass field (no `option`) is not on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pipeline.core.errors import FatError

METADATA_KEY = "fat"
BOOL = argparse.BooleanOptionalAction


@dataclass(frozen=True)
class Spec:
    """What a field says about itself beyond its name, type and default."""

    help: str
    unit: str | None = None
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None  # the lowest value allowed
    above: float | None = None  # a bound the value must exceed (e.g. 0 for a time limit)
    maximum: float | None = None  # the highest value allowed
    resume: bool = True  # False: a resumed run must keep the value it started with
    flag: str | None = None  # the option string; default "--" + the field name with hyphens
    nargs: int | str | None = None
    metavar: str | tuple[str, ...] | None = None
    positional: bool = False
    group: str | None = None  # help section
    parse: Callable[[str], Any] | None = None  # argparse `type`; default: from the annotation
    exclusive: str | None = None  # options sharing this name exclude each other
    nested: bool = False  # the field is a settings dataclass whose fields are options themselves
    dash_values: bool = False  # list values may start with '-' (clip ids): pipeline.dvcargs binds them to the option

    def flag_of(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
           **spec: Any) -> Any:
    """A dataclass field that is also a command-line option (keywords: the fields of `Spec`).

    A list default is given as a factory (dataclasses refuse a shared mutable default).
    """
    if isinstance(default, list):
        default, default_factory = dataclasses.MISSING, (lambda value=default: list(value))
    metadata = {METADATA_KEY: Spec(help=help, **spec)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested(cls: type, help: str = "", group: str | None = None) -> Any:
    """A settings dataclass inside another: its fields become options (and params keys) of the stage."""
    return dataclasses.field(default_factory=cls, metadata={METADATA_KEY: Spec(help=help, group=group, nested=True)})


@dataclass(frozen=True)
class Option:
    """One option of a stage as the command line sees it."""

    name: str  # field name = params.yaml key = argparse dest
    spec: Spec
    kind: type  # the element type (bool, int, float, str, Path, ...)
    default: Any  # dataclasses.MISSING when required
    many: bool  # a list or tuple of `kind`

    @property
    def flag(self) -> str:
        return self.spec.flag_of(self.name)

    @property
    def is_bool(self) -> bool:
        return self.kind is bool

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _element_type(hint: Any) -> tuple[type, bool, int | None]:
    """(element type, is a sequence, fixed length) of an annotation such as `Path | None` or `tuple[float, float]`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(members) != 1:
            raise TypeError(f"cannot make an option of {hint}")
        return _element_type(members[0])
    if origin in (list, tuple):
        args = [arg for arg in typing.get_args(hint) if arg is not Ellipsis]
        fixed = len(args) if origin is tuple and Ellipsis not in typing.get_args(hint) else None
        return _element_type(args[0])[0], True, fixed
    return hint, False, None


def options(cls: type) -> Iterator[Option]:
    """The options of a settings dataclass, nested ones flattened, in field order."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        spec = field.metadata.get(METADATA_KEY)
        if spec is None:
            continue
        if spec.nested:
            yield from options(hints[field.name])
            continue
        kind, many, _ = _element_type(hints[field.name])
        yield Option(field.name, spec, kind, _default(field), many)


def params_keys(cls: type) -> list[str]:
    """The params.yaml keys of a stage: its option names."""
    return [opt.name for opt in options(cls)]


def resume_invariant(cls: type) -> tuple[str, ...]:
    """Fields a resume may not change: they change what a saved state means."""
    return tuple(opt.name for opt in options(cls) if not opt.spec.resume)


def help_text(opt: Option) -> str:
    """The option's help: its text and unit (argparse's formatter adds choices and the default)."""
    text = opt.spec.help
    if opt.spec.unit:
        text += f" [{opt.spec.unit}]"
    return text.replace("%", "%%")


@dataclass(frozen=True)
class Renaming:
    """Former spellings of an option, refused with one line that names the option replacing them."""

    old: tuple[str, ...]  # every spelling, a --no-x form included
    fields: tuple[str, ...]  # the replacing option's field: the first of these the command has
    value: str | None = None  # the value that says what the old spelling said (--no-amp → fp32)


# Every renamed option of every command, in one place: a command gets a row's error whenever it has
# the row's field, so an old spelling is never a bare "unrecognized arguments" in one command and
# a helpful error in the next. Test: tests/test_settings.py (every row, every command it applies to).
RENAMED_OPTIONS: tuple[Renaming, ...] = (
    Renaming(("--amp",), ("precision",)),
    Renaming(("--no-amp",), ("precision",), value="fp32"),
    Renaming(("--dtype",), ("store_dtype", "precision")),  # fat logits' store dtype; elsewhere the arithmetic
)


@dataclass(frozen=True)
class RenamedOption:
    """An old spelling as one command sees it: the option that replaced it, and the value to give."""

    old: str
    new: Option
    value: str | None

    @property
    def advice(self) -> str:
        """`--precision fp32`, or `--precision {auto,fp32,bf16,fp16}` when no one value replaces the old spelling."""
        if self.value is not None:
            return f"{self.new.flag} {self.value}"
        choices = self.new.spec.choices
        return self.new.flag + (f" {{{','.join(map(str, choices))}}}" if choices else "")


def renamed_options(cls: type) -> dict[str, RenamedOption]:
    """The former spellings that apply to the command whose settings are `cls` (old spelling → what replaced it)."""
    fields = {opt.name: opt for opt in options(cls) if not opt.spec.positional}
    flags = {opt.flag for opt in fields.values()} | {"--no-" + opt.flag[2:] for opt in fields.values() if opt.is_bool}
    found: dict[str, RenamedOption] = {}
    for row in RENAMED_OPTIONS:
        new = next((fields[name] for name in row.fields if name in fields), None)
        if new is None:
            continue
        for old in row.old:
            if old not in flags:  # an option of the command keeps its own meaning
                found[old] = RenamedOption(old, new, row.value)
    return found


class Renamed(argparse.Action):
    """A former spelling of an option: using it is a usage error that names the new spelling."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", key: str = "", **kwargs: Any) -> None:
        kwargs.update(nargs="?", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new, self.key = new, key

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> NoReturn:
        parser.error(f"{option_string} was renamed: use {self.new} (params.yaml key: {self.key})")


def add_options(parser: argparse.ArgumentParser, cls: type) -> argparse.ArgumentParser:
    """Add one argparse option per field of `cls` (grouped by `group=`) and remember `cls` on the parser."""
    groups: dict[str | None, Any] = {None: parser}
    exclusive: dict[str, Any] = {}
    for opt in options(cls):
        spec = opt.spec
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        container = groups[spec.group]
        if spec.exclusive is not None:
            if spec.exclusive not in exclusive:
                exclusive[spec.exclusive] = container.add_mutually_exclusive_group()
            container = exclusive[spec.exclusive]
        default = None if opt.required else opt.default
        kwargs: dict[str, Any] = {"help": help_text(opt)}
        if opt.is_bool:
            if spec.flag and spec.flag.startswith("--no-"):
                kwargs.update(action="store_false", dest=opt.name, default=default)
            else:
                kwargs.update(action=BOOL, dest=opt.name, default=default)
        else:
            kwargs.update(type=spec.parse or opt.kind, default=default, metavar=spec.metavar)
            if spec.choices is not None:
                kwargs["choices"] = spec.choices
            if spec.nargs is not None:
                kwargs["nargs"] = spec.nargs
            elif opt.many and spec.parse is None:  # a `parse` function reads the whole value from one token
                kwargs["nargs"] = "+"
            if spec.dash_values:  # normalise_argv hands over `--id=-x --id=y`: each adds its value
                kwargs["action"] = "extend"
        if spec.positional:
            if opt.required:
                del kwargs["default"]
            container.add_argument(opt.name, **kwargs)
            continue
        if not opt.is_bool:
            kwargs.update(dest=opt.name, required=opt.required)
        container.add_argument(opt.flag, **kwargs)
    for old, renamed in renamed_options(cls).items():
        parser.add_argument(old, action=Renamed, dest=f"renamed_{old.lstrip('-').replace('-', '_')}",
                            new=renamed.advice, key=renamed.new.name)
    parser.set_defaults(settings_class=cls)
    return parser


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """The settings dataclass the parsed options describe (fields not on the command line keep their default)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        spec = field.metadata.get(METADATA_KEY)
        if spec is None:
            continue
        if spec.nested:
            values[field.name] = from_args(hints[field.name], args)
        elif hasattr(args, field.name):
            values[field.name] = getattr(args, field.name)
    return cls(**values)


def plain_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass as plain types (paths as str, tuples as lists): what a state or model file
    loaded with weights_only=True, a safetensors header or a log can hold."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

    return {key: plain(value) for key, value in dataclasses.asdict(settings).items()}


def check_values(settings: Any) -> None:
    """Refuse a value outside its field's `choices` or its `minimum` / `above` / `maximum` bounds (a FatError naming
    the option and the value), nested settings included: the same rules for a dataclass built in code as for the command line."""
    for field in dataclasses.fields(settings):
        spec = field.metadata.get(METADATA_KEY)
        if spec is None:
            continue
        value = getattr(settings, field.name)
        if spec.nested:
            check_values(value)
            continue
        flag = spec.flag_of(field.name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if spec.choices is not None and item is not None and item not in spec.choices:
                raise FatError(f"{flag} must be one of {', '.join(map(str, spec.choices))}, got {item!r}")
            if spec.minimum is not None and item is not None and not item >= spec.minimum:
                raise FatError(f"{flag} must be ≥ {_number(spec.minimum)}, got {item}")
            if spec.above is not None and item is not None and not item > spec.above:
                raise FatError(f"{flag} must be > {_number(spec.above)}, got {item}")
            if spec.maximum is not None and item is not None and not item <= spec.maximum:
                raise FatError(f"{flag} must be ≤ {_number(spec.maximum)}, got {item}")


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def option_table(cls: type) -> dict[str, Option]:
    """Every option string of a stage (renamed ones included, so that DVC's spelling of them reaches
    the error that names the new one) → its option."""
    table: dict[str, Option] = {}
    for opt in options(cls):
        if not opt.spec.positional:
            table[opt.flag] = opt
    for old, renamed in renamed_options(cls).items():
        table[old] = dataclasses.replace(renamed.new, name=old.lstrip("-").replace("-", "_"),
                                         spec=dataclasses.replace(renamed.new.spec, flag=old))
    return table


def paths(values: Sequence[str | Path] | str | Path) -> tuple[Path, ...]:
    """One path or several, as a tuple of Paths (a field given one value or a list)."""
    if isinstance(values, (str, Path)):
        return (Path(values),)
    return tuple(Path(value) for value in values)


# --------------------------------------------------------------------------- options of every stage that computes
# Declared here, ruled in pipeline.runtime (this module stays free of torch: `fat --help` builds every parser).

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_HELP = ("arithmetic of the model: auto = bf16 autocast on a GPU that supports it, fp16 autocast on one "
                  "that does not, fp32 on the CPU; bf16 on the CPU only when asked for; fp16 needs a GPU")
DEVICE_HELP = ("where the model runs: auto = a CUDA GPU when torch sees one (under torchrun the local rank's), "
               "else the CPU; cuda:N names one GPU")


def device_name(text: str) -> str:
    """argparse type of `--device`: auto, cpu, cuda or cuda:N."""
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def device_option(group: str | None = None) -> Any:
    return option("auto", DEVICE_HELP, parse=device_name, metavar="{auto,cpu,cuda,cuda:N}", group=group)


def precision_option(group: str | None = None, note: str = "") -> Any:
    return option("auto", PRECISION_HELP + note, choices=PRECISIONS, group=group)


def threads_option(group: str | None = None) -> Any:
    return option(0, "torch CPU threads of this process; 0 = torch's default", unit="threads", minimum=0, group=group)
