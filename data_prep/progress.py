"""A tqdm bar over input bytes (or generated rows) with rows and rows/s, for every kind of preparation."""

from __future__ import annotations

import sys
import time


class Progress:
    """tqdm bar over on-disk input bytes (MB/s), with rows and rows/s in the postfix."""

    def __init__(self, enabled: bool, total_bytes: int, desc: str, unit: str = "B") -> None:
        self.bar = None
        self.rows = 0
        self.t0 = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_bytes,
                unit=unit,
                unit_scale=True,
                unit_divisor=1_000_000 if unit == "B" else 1000,
                desc=desc,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )

    def update(self, nbytes: int, rows: int) -> None:
        self.rows += rows
        if self.bar is not None:
            rate = self.rows / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{self.rows:,} rows, {rate:,.0f} rows/s", refresh=False)
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
