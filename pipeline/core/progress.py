"""Progress of long work: one line per ~5% to stderr, with the rate.

A line per step rather than a redrawn bar, because DVC and CI capture
stderr into logs where carriage-return bars turn into noise.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, unit: str = "images", lines: int = 20):
        self.total, self.label, self.unit, self.done = total, label, unit, 0
        self.start = time.monotonic()
        self.step = max(1, total // lines)
        self.next_report = self.step

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.done >= self.next_report or self.done == self.total:
            elapsed = time.monotonic() - self.start
            rate = self.done / max(elapsed, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            print(f"{self.label}: {self.done}/{self.total} {self.unit} ({rate:.0f}/s, "
                  f"{elapsed:.0f}s elapsed, ~{left:.0f}s left)", file=sys.stderr, flush=True)
            while self.next_report <= self.done:
                self.next_report += self.step
