"""Checksums of a training checkpoint, computed and verified by all ranks in parallel.

A bit flip in a shard would otherwise resume silently with other weights; a missing shard or a
truncated ``.metadata`` would end in a DCP traceback. The checkpoint's files are split across the
ranks (file i goes to rank i mod W, of the job that writes or of the job that reads, so a job
resumed on another world size verifies everything too); each rank hashes its share, and the
verdict is agreed by an all-gather, so every rank skips or loads the same checkpoint.
"""

import json
from pathlib import Path
from typing import Dict, List, Optional

import torch.distributed as dist

from mlet_dist.digests import file_entry, listed_file_problems

CHECKSUMS = "checksums.json"
Digests = Dict[str, Dict[str, object]]  # file name -> {"bytes": int, "sha256": str}


class CheckpointCorrupt(RuntimeError):
    """A checkpoint whose files do not match their recorded checksums."""


def _share(names: List[str], rank: int, world_size: int) -> List[str]:
    return [n for i, n in enumerate(sorted(names)) if i % world_size == rank]


def digest_share(directory: Path, rank: int, world_size: int, exclude: tuple = ()) -> Digests:
    """This rank's share of the digests of every file in ``directory`` (collective-free)."""
    names = [p.name for p in directory.iterdir() if p.is_file() and p.name not in exclude]
    return {name: file_entry(directory / name) for name in _share(names, rank, world_size)}


def gather_digests(share: Digests) -> Digests:
    """Every rank's share merged (collective)."""
    parts: List[Optional[Digests]] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, share)
    merged: Digests = {}
    for part in parts:
        merged.update(part or {})
    return merged


def write_checksums(directory: Path, digests: Digests) -> None:
    (directory / CHECKSUMS).write_text(json.dumps(digests, indent=1, sort_keys=True))


def record_checksums(directory: Path, rank: int, world_size: int, is_main: bool) -> None:
    """Hash a written checkpoint, each rank its share, and write ``checksums.json`` from the
    first rank (collective): without it ``verify_share`` refuses the checkpoint."""
    digests = gather_digests(digest_share(directory, rank, world_size, exclude=(CHECKSUMS,)))  # a re-save's old one
    if is_main:
        write_checksums(directory, digests)


def verify_share(directory: Path, rank: int, world_size: int) -> Optional[str]:
    """This rank's verdict on its share: None when intact, else what is wrong (collective-free).

    Every checkpoint this version writes has ``checksums.json``, so a checkpoint without it is
    damaged (or foreign): loading it unverified would let a flipped byte through silently."""
    listing = directory / CHECKSUMS
    if not listing.is_file():
        return f"{CHECKSUMS} missing: nothing to verify its files against (deleted, or not written by mlet_dist)"
    try:
        recorded: Digests = json.loads(listing.read_text())
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        return f"{CHECKSUMS} unreadable ({err})"
    problems = listed_file_problems(directory, recorded, CHECKSUMS, _share(list(recorded), rank, world_size))
    return problems[0] if problems else None


def agreed_verdict(local: Optional[str]) -> Optional[str]:
    """The first rank's complaint, the same on every rank (collective)."""
    verdicts: List[Optional[str]] = [None] * dist.get_world_size()
    dist.all_gather_object(verdicts, local)
    return next((v for v in verdicts if v), None)
