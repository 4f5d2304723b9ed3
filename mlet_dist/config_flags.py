"""Command-line flags derived from dataclass config trees: one declaration per flag.

A field names the flag that sets it in its metadata, ``field(default=1, metadata=flag("--epochs"))``;
a field of a nested dataclass declared elsewhere gets its flags from the field that holds it,
``field(default_factory=DCNConfig, metadata=nested(low_rank=flag("--dcn-low-rank")))``. From these
declarations ``add_flags`` builds the argparse arguments, ``tree_from_flags`` builds the tree from
the parsed values, and ``written_paths`` says which fields each flag writes (how flags given beside
``--config FILE`` override it). The parser, the parse-back and the override rule cannot drift
apart, and a field nobody gave a flag (or a reason for having none) is found by a test.

Converters are declared, not coded per flag: ``switch`` (store_true), ``negated`` (``--no-shuffle``
-> shuffle=False), ``choice`` (``--model baseline`` -> mlet=False); ``reads`` lets a field depend on
other flags (``collapse`` on ``--no-collapse`` and ``--model``; ``run_dir_given`` on ``--run-dir``).
"""

import argparse
import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

T = TypeVar("T")
FLAG = "mlet_dist.flag"  # field metadata: this field's Flag (or NoFlag)
NESTED = "mlet_dist.nested"  # field metadata on a dataclass-typed field: {subfield: Flag | NoFlag}
RUN = "run"  # the default group: flags of the run's own CLI (mlet-train)
SHAPE = "shape"  # the model-shape flags mlet-train and mlet-plan share
_FROM_FIELD: Any = object()  # Flag.default: take the field's default


def int_list(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


SAYS_DEFAULT = re.compile(r"(^|[(;] ?)default[: ]", re.IGNORECASE)  # a help text naming its own default
INT_LIST_METAVAR = "N,N,..."  # what --help shows for a list flag: the syntax it takes, e.g. 512,256,64


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """--help with every option's default, once, in the syntax the flag takes (``512,256,64``,
    not ``[512, 256, 64]``; a switch "off"), also where the flag has no help text; a help text
    that already speaks of its default keeps its own wording (argparse's
    ArgumentDefaultsHelpFormatter skips flags without help and adds a second default)."""

    def _format_action(self, action: argparse.Action) -> str:
        shown = shown_default(action)
        if shown is not None and not SAYS_DEFAULT.search(action.help or ""):
            action = copy.copy(action)
            action.help = f"{action.help or ''} (default: {shown.replace('%', '%%')})".strip()
        return super()._format_action(action)


def shown_default(action: argparse.Action) -> Optional[str]:
    """An option's default as a user would type it; None where there is none to show (positionals,
    required options, --help)."""
    if not action.option_strings or action.required or action.default is argparse.SUPPRESS:
        return None
    if action.nargs == 0:  # store_true / store_false switches
        return "on" if action.default else "off"
    if isinstance(action.default, (list, tuple)):  # nargs lists take spaces, our int_list flags commas
        return (" " if action.nargs in ("+", "*") else ",").join(str(v) for v in action.default)
    return "none" if action.default is None else str(action.default)


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Flag:
    """How the command line sets one field. ``names`` empty: no flag of its own, the field is
    ``parse(*values of reads)``; else ``parse(own value, *values of reads)``."""

    names: Tuple[str, ...] = ()
    help: Optional[str] = None
    type: Optional[Callable[[str], Any]] = None  # None: from the field's type (int, float, Path, List[int])
    choices: Optional[Sequence[Any]] = None
    default: Any = _FROM_FIELD  # in the flag's terms (e.g. "mlet"); _FROM_FIELD: the field's default
    switch: bool = False  # store_true
    parse: Callable[..., Any] = _same  # flag value(s) -> field value
    reads: Tuple[str, ...] = ()  # dests of other flags this field also depends on
    group: str = RUN  # SHAPE: shared with mlet-plan
    command_choice: bool = False  # never taken from --config (where a run writes is this command's choice)
    to_flag: Optional[Callable[[Any], Any]] = None  # field default -> flag default, where they differ

    @property
    def dest(self) -> str:
        """argparse's dest: the first long name without dashes (``--run-dir`` -> run_dir); "" for none."""
        if not self.names:
            return ""
        long = next((n for n in self.names if n.startswith("--")), self.names[0])
        return long.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class NoFlag:
    """A field deliberately not settable from the command line; ``why`` says where it comes from."""

    why: str


def flag(*names: str, **kw: Any) -> Dict[str, Flag]:
    return {FLAG: Flag(names, **kw)}


def switch(*names: str, **kw: Any) -> Dict[str, Flag]:
    """``--diagnostics``: given -> True (the field's value unless ``parse`` says otherwise)."""
    return {FLAG: Flag(names, switch=True, default=False, **kw)}


def negated(*names: str, **kw: Any) -> Dict[str, Flag]:
    """``--no-shuffle``: given -> the field is False; absent -> True."""
    return switch(*names, parse=lambda given: not given, **kw)


def choice(*names: str, values: Mapping[str, Any], **kw: Any) -> Dict[str, Flag]:
    """``--model baseline`` -> the field is ``values["baseline"]`` (the flag's default: the name
    of the field's default value)."""
    by_value = {v: k for k, v in values.items()}
    return {FLAG: Flag(names, choices=list(values), parse=values.__getitem__, to_flag=by_value.__getitem__, **kw)}


def derived(*reads: str, parse: Callable[..., Any], **kw: Any) -> Dict[str, Flag]:
    """A field set from other flags only (``run_dir_given`` from ``--run-dir``)."""
    return {FLAG: Flag((), reads=reads, parse=parse, **kw)}


def no_flag(why: str) -> Dict[str, NoFlag]:
    return {FLAG: NoFlag(why)}


def nested(**by_field: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Flags for the fields of a dataclass declared elsewhere, given where the tree holds it."""
    return {NESTED: {name: meta[FLAG] for name, meta in by_field.items()}}


@dataclass(frozen=True)
class Declared:
    path: str  # dotted, from the tree's root: "input.shuffle"
    field: dataclasses.Field
    hint: Any  # the field's resolved type
    flag: Any  # Flag, NoFlag, or None (nothing declared)


def declarations(cls: type, prefix: str = "", given: Optional[Mapping[str, Any]] = None) -> Iterator[Declared]:
    """Every leaf field of the tree under ``cls`` with what declares its flag, in field order."""
    hints = typing.get_type_hints(cls)
    stale = sorted(set(given or {}) - set(hints))
    if stale:  # nested(...) naming a field the class does not (or no longer) have
        named = ", ".join(prefix + name for name in stale)
        raise TypeError(f"flags declared for {named}, which {cls.__name__} does not have")
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        path = f"{prefix}{f.name}"
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            yield from declarations(hint, f"{path}.", f.metadata.get(NESTED, {}))
        else:
            yield Declared(path, f, hint, (given or {}).get(f.name, f.metadata.get(FLAG)))


def flags_of(cls: type, groups: Sequence[str] = (RUN, SHAPE)) -> List[Tuple[Declared, Flag]]:
    return [(d, d.flag) for d in declarations(cls) if isinstance(d.flag, Flag) and d.flag.group in groups]


def _arg_type(hint: Any) -> Optional[Callable[[str], Any]]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) in (list, typing.List) and typing.get_args(hint) == (int,):
        return int_list
    if hint in (int, float, Path):
        return hint
    if hint is str:
        return None
    raise TypeError(f"no command-line type for {hint!r}: declare Flag(type=...)")


def _field_default(d: Declared) -> Any:
    if d.field.default is not dataclasses.MISSING:
        return d.field.default
    if d.field.default_factory is not dataclasses.MISSING:
        return d.field.default_factory()
    raise TypeError(f"{d.path} has no default: declare Flag(default=...)")


def add_flags(
    parser: argparse.ArgumentParser, cls: type, groups: Sequence[str] = (RUN, SHAPE), first: Sequence[str] = ()
) -> None:
    """One argparse argument per declared flag of the tree (``groups``: which of them), in field
    order after the dests in ``first`` (what ``--help`` lists on top)."""
    declared = flags_of(cls, groups)
    declared.sort(key=lambda item: first.index(item[1].dest) if item[1].dest in first else len(first))
    for d, fl in declared:
        if not fl.names:
            continue
        if fl.switch:
            parser.add_argument(*fl.names, dest=fl.dest, action="store_true", help=fl.help)
            continue
        default = fl.default
        if default is _FROM_FIELD:
            default = _field_default(d)
            default = fl.to_flag(default) if fl.to_flag else default
        kw: Dict[str, Any] = {"dest": fl.dest, "default": default, "help": fl.help}
        arg_type = fl.type or (None if fl.choices is not None else _arg_type(d.hint))
        if arg_type is not None:
            kw["type"] = arg_type
        if arg_type is int_list:
            kw["metavar"] = INT_LIST_METAVAR
        if fl.choices is not None:
            kw["choices"] = fl.choices
        parser.add_argument(*fl.names, **kw)


def flag_values(cls: type, args: argparse.Namespace, groups: Sequence[str] = (RUN, SHAPE)) -> Dict[str, Any]:
    """{dotted path: field value} from the parsed flags, for every field the flags set."""
    values = vars(args)
    out: Dict[str, Any] = {}
    for d, fl in flags_of(cls, groups):
        own = (values[fl.dest],) if fl.names else ()
        out[d.path] = fl.parse(*own, *(values[r] for r in fl.reads))
    return out


def build_tree(cls: Type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """``cls`` with the fields in ``values`` set, the others at their defaults (``__post_init__`` runs)."""
    hints = typing.get_type_hints(cls)
    kwargs: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        path, hint = f"{prefix}{f.name}", hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[f.name] = build_tree(hint, values, f"{path}.")
        elif path in values:
            kwargs[f.name] = values[path]
    return cls(**kwargs)


def tree_from_flags(cls: Type[T], args: argparse.Namespace, groups: Sequence[str] = (RUN, SHAPE)) -> T:
    return build_tree(cls, flag_values(cls, args, groups))


def written_paths(cls: type, groups: Sequence[str] = (RUN, SHAPE)) -> Dict[str, Tuple[str, ...]]:
    """{flag dest: the fields it writes}: its own field and the fields that read it."""
    out: Dict[str, List[str]] = {}
    for d, fl in flags_of(cls, groups):
        for dest in ((fl.dest,) if fl.names else ()) + fl.reads:
            out.setdefault(dest, []).append(d.path)
    return {dest: tuple(paths) for dest, paths in out.items()}


def command_choices(cls: type) -> List[str]:
    """Dests whose fields are always this command's, never a --config file's."""
    return [fl.dest for _, fl in flags_of(cls) if fl.names and fl.command_choice]
