"""sha256 digests of files and the check of a directory against a listing of them: one
implementation for the serving manifest, the export artifact and training checkpoints."""

import hashlib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

_HASH_CHUNK = 8 << 20


def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> Dict[str, Any]:
    """What a listing records of a file: {"bytes": size, "sha256": hex digest}."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def listed_file_problems(
    directory: Path, files: Mapping[str, Mapping[str, Any]], listing: str, names: Optional[Sequence[str]] = None
) -> List[str]:
    """One line per listed file (all, or ``names``) that is outside ``directory``, missing, or
    differs from its recorded size or sha256 (size first: it costs no read). ``listing`` names
    the record in the messages, e.g. "the manifest"."""
    problems = []
    for name in sorted(files if names is None else names):
        entry = files[name]
        path = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"{name}: not a path inside {directory.name or directory}")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry.get("bytes"):
            problems.append(f"{name}: {path.stat().st_size} bytes, {listing} says {entry.get('bytes')}")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{name}: sha256 differs from {listing} (corrupted or replaced)")
    return problems
