"""A one-line progress report for long checkpoint jobs: items, bytes, rate, ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


class Progress:
    """Prints ``what: done/total items, bytes, rate, ETA`` at most every ``every`` seconds."""

    def __init__(self, what: str, total_items: int, total_bytes: int, *, enabled: bool = True,
                 every: float = 5.0, stream: TextIO = sys.stderr):
        self.what, self.total_items, self.total_bytes = what, total_items, total_bytes
        self.enabled, self.every, self.stream = enabled, every, stream
        self.items = self.bytes = 0
        self.start = self.last = time.monotonic()

    def update(self, nbytes: int, items: int = 1) -> None:
        self.items += items
        self.bytes += nbytes
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._print(now)

    def done(self) -> float:
        """Prints the final line; returns elapsed seconds."""
        now = time.monotonic()
        self._print(now)
        return now - self.start

    def _print(self, now: float) -> None:
        if not self.enabled:
            return
        elapsed = max(now - self.start, 1e-9)
        rate = self.bytes / elapsed
        left = (self.total_bytes - self.bytes) / rate if rate > 0 else 0.0
        print(f"{self.what}: {self.items}/{self.total_items} tensors, {_size(self.bytes)}/{_size(self.total_bytes)}, "
              f"{_size(rate)}/s, {elapsed:.0f}s elapsed, ETA {left:.0f}s", file=self.stream, flush=True)
