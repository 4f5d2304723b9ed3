"""Dataclass config trees to and from JSON, driven by the field types.

A run's configuration is saved as ``config.json`` in its run directory (and in the serving
manifest) so that later tools rebuild the model from what the run *was*, not by replaying its
command line through today's parser: renaming a flag must not orphan old runs. Loading is
strict: an unknown key is an error that names it (a typo in a hand-edited file must not be
silently ignored); a missing key takes the field's default (files written before it existed),
or the class's ``LEGACY_DEFAULTS`` value where today's default differs from what those files meant;
a value of another JSON type than its field's is an error naming the field (``true`` is not an
integer, ``"no"`` is not a boolean), never coerced.
"""

import dataclasses
import enum
import json
import types
import typing
from pathlib import Path
from typing import Any, Dict, Tuple, Type, TypeVar, Union

from data_prep.safe_json import read_json_file

T = TypeVar("T")


def to_jsonable(value: Any) -> Any:
    """Dataclasses -> dicts, Paths -> str, enums -> their value, tuples -> lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


# JSON scalar types a field of each Python type accepts: a bool is an int to Python, so
# ``"batch_size": true`` became 1 and ``"shuffle": "no"`` (a truthy string) left shuffling on.
_SCALARS: Dict[Any, Tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,), Path: (str,)}
_JSON_NAMES = {
    bool: "a boolean (true/false)",
    int: "an integer",
    float: "a number",
    str: "a string",
    Path: "a path string",
}


def _wrong_type(where: str, value: Any, expected: str) -> ValueError:
    """One line naming the field, the value as the file spells it, and what it should be."""
    shown = json.dumps(value) if isinstance(value, (bool, int, float, str, type(None))) else type(value).__name__
    return ValueError(f"{where}: expected {expected}, got {shown[:80]}")


def _scalar(tp: Any, value: Any, where: str) -> Any:
    """``value`` as field type ``tp`` (bool, int, float, str or Path), refusing any other JSON type."""
    allowed = _SCALARS[tp]
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise _wrong_type(where, value, _JSON_NAMES[tp])
    return tp(value)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where) if len(args) == 1 else value
    if origin in (list, typing.List):
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_convert(item, v, f"{where}[]") for v in value]
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise _wrong_type(where, value, "an object")
        return dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_jsonable(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _wrong_type(where, value, f"one of {[m.value for m in tp]}") from None
    if tp in _SCALARS:
        return _scalar(tp, value, where)
    return value


def from_jsonable(cls: Type[T], data: Any, where: str = "config") -> T:
    """Rebuild dataclass ``cls`` from ``to_jsonable`` output (its ``__post_init__`` checks run)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    kwargs = {
        name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items() if fields[name].init
    }
    legacy = getattr(cls, "LEGACY_DEFAULTS", {})  # what files written before a field existed meant
    kwargs.update({name: value for name, value in legacy.items() if name not in data})
    return cls(**kwargs)


def save_config(path: Path, config: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_jsonable(config), indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def load_config(cls: Type[T], path: Path) -> T:
    data = read_json_file(path, "config")  # bounded size and nesting; a ValueError naming the file
    return from_jsonable(cls, data, where=str(path))


def merged(base: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` with dotted-path ``overrides`` applied (e.g. {"embedding.inner_dim": 128})."""
    out = json.loads(json.dumps(base))
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = to_jsonable(value)
    return out


def leaf_paths(cls: type, prefix: str = "") -> Dict[str, str]:
    """{leaf field name: dotted path} of a dataclass tree (a name used twice maps to "")."""
    out: Dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            for name, path in leaf_paths(hint, f"{prefix}{f.name}.").items():
                out[name] = "" if name in out else path
        else:
            out[f.name] = "" if f.name in out else f"{prefix}{f.name}"
    return out


def with_leaves(tree: T, leaves: Dict[str, Any]) -> T:
    """``tree`` with leaf fields set by name wherever they sit ({"inner_dim": 64} sets
    ``tree.embedding.inner_dim``), all at once (checks run on the result, not on each step).
    Unknown or ambiguous names are refused."""
    paths = leaf_paths(type(tree))
    changes: Dict[str, Any] = {}
    for name, value in leaves.items():
        if not paths.get(name):
            why = "is ambiguous" if name in paths else "is not a field"
            known = sorted(n for n, p in paths.items() if p)
            raise TypeError(f"{name!r} {why} of {type(tree).__name__}; known: {known}")
        changes[paths[name]] = value
    return _replaced(tree, changes) if changes else tree


def _replaced(node: Any, changes: Dict[str, Any]) -> Any:
    """``node`` with dotted-path ``changes`` applied, each dataclass rebuilt once."""
    own: Dict[str, Any] = {}
    below: Dict[str, Dict[str, Any]] = {}
    for dotted, value in changes.items():
        head, _, rest = dotted.partition(".")
        if rest:
            below.setdefault(head, {})[rest] = value
        else:
            own[head] = value
    own.update({head: _replaced(getattr(node, head), sub) for head, sub in below.items()})
    return dataclasses.replace(node, **own)
