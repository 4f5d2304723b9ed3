"""Split policies: which accepted row goes to train, val or test (one per raw dataset kind).

A policy sees row positions only (file index, line numbers, accepted rows before the block), so
every worker count assigns the same rows to the same split.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from data_prep import textio
from data_prep.dataset_format import SPLITS

SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}  # train 0, val 1, test 2


class SplitPolicy:
    """Which accepted rows are train/val/test. Row positions are given as
    (file index, line numbers, accepted rows before this block overall / in its file)."""

    needs_tail_pass = False
    # assign() depends on line numbers, not only on positions among accepted rows (the driver
    # then counts lines before pass 1, and workers compute split codes themselves).
    uses_line_numbers = False

    def count_mask(self, fi: int, lines: np.ndarray) -> Optional[np.ndarray]:
        """Pass 1: rows whose values to count (None: all)."""
        return None

    def finish_pass1(self, rows_per_file: Sequence[int]) -> None:
        pass

    def assign(self, fi: int, lines: np.ndarray, acc: int, acc_file: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        raise NotImplementedError


def chunk_split_bounds(num_rows: int, chunks: int = 7) -> Dict[str, Tuple[int, int]]:
    """[start, stop) of train/val/test over accepted rows, the reference DLRM's Kaggle split:
    `chunks` contiguous chunks as numpy.array_split (its data_utils.py cuts train.txt into 7
    "days" so); the last is halved as its transformCriteoAdData does,
    ``test, val = np.array_split(last, 2)``: **test** the first ceil(rows / 2), val the rest."""
    base, extra = divmod(num_rows, chunks)
    train = sum(base + (1 if k < extra else 0) for k in range(chunks - 1))
    test_end = train + (num_rows - train + 1) // 2
    return {"train": (0, train), "val": (test_end, num_rows), "test": (train, test_end)}


class ChunkSplit(SplitPolicy):
    """Criteo Kaggle: 7 contiguous chunks of all accepted rows, the last halved test first (the
    reference DLRM's split); counts of the tail (test/val) are subtracted in the tail pass."""

    needs_tail_pass = True

    def __init__(self) -> None:
        self.bounds: Optional[Dict[str, Tuple[int, int]]] = None

    def finish_pass1(self, rows_per_file: Sequence[int]) -> None:
        self.bounds = chunk_split_bounds(int(sum(rows_per_file)))

    @property
    def train_end(self) -> int:
        assert self.bounds is not None
        return self.bounds["train"][1]

    def assign(self, fi: int, lines: np.ndarray, acc: int, acc_file: int) -> np.ndarray:
        assert self.bounds is not None
        idx = acc + np.arange(len(lines))
        codes = np.zeros(len(lines), np.int8)
        for split in ("val", "test"):
            lo, hi = self.bounds[split]
            codes[(idx >= lo) & (idx < hi)] = SPLIT_CODES[split]
        return codes

    def describe(self) -> Dict[str, Any]:
        return {
            "method": "dlrm-7-chunks",
            "chunks": 7,
            "val_test": "last chunk halved as the reference: test the first ceil(rows/2), val the rest",
        }


class DaySplit(SplitPolicy):
    """Criteo Terabyte: all files but the last are train; the last file's accepted
    rows are halved, first half (rounded up) val, second half test."""

    def __init__(self, num_files: int) -> None:
        self.num_files = num_files
        self.last_val_rows = 0

    def count_mask(self, fi: int, lines: np.ndarray) -> Optional[np.ndarray]:
        return None if fi < self.num_files - 1 else np.zeros(len(lines), dtype=bool)

    def finish_pass1(self, rows_per_file: Sequence[int]) -> None:
        last = int(rows_per_file[-1]) if rows_per_file else 0
        self.last_val_rows = (last + 1) // 2

    def assign(self, fi: int, lines: np.ndarray, acc: int, acc_file: int) -> np.ndarray:
        if fi < self.num_files - 1:
            return np.zeros(len(lines), np.int8)
        idx = acc_file + np.arange(len(lines))
        return np.where(idx < self.last_val_rows, 1, 2).astype(np.int8)

    def describe(self) -> Dict[str, Any]:
        return {"method": "days", "train_files": self.num_files - 1, "val_test": "last file halved"}


class RandomSplit(SplitPolicy):
    """Avazu: each data line independently, by a seeded hash of its line number
    (so the split does not depend on block size or on other lines being rejected)."""

    uses_line_numbers = True

    def __init__(self, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1) -> None:
        if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction <= 1):
            raise ValueError("val_fraction and test_fraction must be >= 0 with a sum <= 1")
        self.seed, self.val_fraction, self.test_fraction = seed, val_fraction, test_fraction

    def _codes(self, fi: int, lines: np.ndarray) -> np.ndarray:
        salt = np.uint64((self.seed * 0x9E3779B1 + fi * 0x85EBCA77) & 0xFFFFFFFFFFFFFFFF)
        u = (textio.splitmix64(lines.astype(np.uint64) ^ salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        train = 1.0 - self.val_fraction - self.test_fraction
        return (u >= train).astype(np.int8) + (u >= train + self.val_fraction).astype(np.int8)

    def count_mask(self, fi: int, lines: np.ndarray) -> Optional[np.ndarray]:
        return self._codes(fi, lines) == 0

    def assign(self, fi: int, lines: np.ndarray, acc: int, acc_file: int) -> np.ndarray:
        return self._codes(fi, lines)

    def describe(self) -> Dict[str, Any]:
        return {
            "method": "random",
            "seed": self.seed,
            "fractions": [round(1 - self.val_fraction - self.test_fraction, 6), self.val_fraction, self.test_fraction],
        }
