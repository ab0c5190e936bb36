"""Progress for the snapshot phases: a live stderr line on a terminal, one summary line otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if enabled is None else enabled
        self.count = 0
        self.started = time.monotonic()
        self._last = 0.0

    def add(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if self.live and now - self._last > 0.2:  # redraw at most 5 times a second
            self._last = now
            rate = self.count / max(now - self.started, 1e-9)
            self.stream.write(f"\r{self.label}: {self.count:,} rows ({rate:,.0f}/s)   ")
            self.stream.flush()

    def done(self) -> float:
        secs = time.monotonic() - self.started
        end = "\n" if self.live else ""
        prefix = "\r" if self.live else ""
        self.stream.write(f"{prefix}{self.label}: {self.count:,} rows in {secs:.1f}s   {end}")
        if not self.live:
            self.stream.write("\n")
        self.stream.flush()
        return secs


class Quiet(Progress):
    def __init__(self, label: str = "") -> None:
        super().__init__(label, enabled=False)

    def done(self) -> float:
        return time.monotonic() - self.started
