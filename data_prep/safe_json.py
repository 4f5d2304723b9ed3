"""Bounded reads of JSON files that arrive from elsewhere (meta.json, serving manifests, artifact
listings, plan specs and plans, run configs).

``json.loads`` recurses once per nesting level, so a file of 100,000 ``[`` ends in a
RecursionError traceback, and a file of many GB is read whole before anything is checked. The
files this project writes are small (a 64x8 Terabyte plan is 0.5 MB) and shallow (under 10
levels), so anything far outside that is refused with one message that names the file. Lives in
data_prep because data_prep is below every layer of mlet_dist: both read through it.
"""

import json
from pathlib import Path
from typing import Any, List, Tuple, Type, Union

MAX_JSON_BYTES = 64 << 20  # 128x the largest file we write; read no further than this
MAX_JSON_DEPTH = 64  # nesting levels (objects and arrays); ours stay under 10


class JSONFileError(ValueError):
    """A JSON file that cannot be used as given; the message names the file."""


def read_json_file(
    path: Union[str, Path],
    what: str = "JSON file",
    error: Type[Exception] = JSONFileError,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """The parsed content of ``path``, or ``error("<what> <path> ...")`` when it cannot be read,
    is larger than ``max_bytes``, is not JSON, or nests deeper than ``max_depth``."""
    where = f"{what} {path}"
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # bounded: a huge file (or /dev/zero) is never read whole
    except OSError as err:
        raise error(f"cannot read {where}: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise error(
            f"{where} is larger than {max_bytes >> 20} MiB, far above any file this project writes; refusing it"
        )
    return parse_json_text(data, where, error, max_depth)


def parse_json_text(
    text: Union[str, bytes],
    where: str,
    error: Type[Exception] = JSONFileError,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """``json.loads(text)`` with its failures (bad syntax or encoding, a 5000-digit number, a
    nesting deep enough for a RecursionError) said as ``error("<where> ...")``, one line."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{where} is nested deeper than {max_depth} levels; refusing it") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise error(f"{where} is not valid JSON: {err}") from None
    if _depth_exceeds(value, max_depth):
        raise error(f"{where} is nested deeper than {max_depth} levels; refusing it")
    return value


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether objects/arrays nest deeper than ``max_depth``; iterative, so no recursion limit."""
    stack: List[Tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
