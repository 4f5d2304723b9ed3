"""The output directory's life: checks before any work, a staging directory next to OUT, and an
atomic publish (rename) at the end, so a failed or killed run never leaves a half-written dataset
at OUT; staging dirs of killed runs are removed by the next run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

from data_prep.dataset_format import META_FILE
from data_prep.spec import PathLike


def check_output(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(f"output already exists: {out} (use --overwrite / overwrite=True to replace it)")
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"refusing to overwrite {out}: not a directory")
    if not (out / META_FILE).is_file() and any(out.iterdir()):
        # Guard against `--overwrite` pointed at the wrong (non-dataset) directory.
        raise FileExistsError(f"refusing to overwrite {out}: not empty and has no {META_FILE}")


def check_input(src: Path) -> None:
    if not src.exists():
        raise FileNotFoundError(f"input file not found: {src}")
    if not src.is_file():
        raise FileNotFoundError(f"input is not a regular file: {src}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_staging(out: Path) -> List[Path]:
    """Remove ``OUT.tmp-<pid>`` / ``OUT.old-<pid>`` dirs of runs that were killed (their process is
    gone): at Terabyte scale each one holds gigabytes. Live runs' dirs are left alone."""
    removed = []
    for path in out.parent.glob(f"{glob.escape(out.name)}.*-*"):
        kind, _, pid = path.name[len(out.name) + 1 :].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            print(f"removed stale staging dir {path} (left by a killed run)", file=sys.stderr)
    return removed


def checked_paths(sources: Sequence[PathLike], out: PathLike, overwrite: bool) -> Tuple[List[Path], Path]:
    """(input paths, output path) after the checks every preparation makes before any work:
    inputs exist and are files with distinct names (rejects name them), the output may be written."""
    paths = [Path(s) for s in sources]
    if not paths:
        raise ValueError("no input files given")
    for p in paths:
        check_input(p)
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"input file names must be distinct (rejects name them): {names}")
    out_path = Path(out)
    check_output(out_path, overwrite)
    return paths, out_path


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """Temp dir next to `out` (same filesystem, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    check_output(out, overwrite)  # re-check: something may have appeared meanwhile
    if out.exists():
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
