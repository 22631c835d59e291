"""A progress line with an ETA for long work (`powerplane plan`, `powerplane evaluate`)."""

from __future__ import annotations

import math
import time
from typing import TextIO


class Progress:
    """One stderr line, rewritten in place: `what  45%  ETA 0:12`, at most every `every_s`."""

    def __init__(self, what: str, total: float, out: TextIO | None, every_s: float = 0.25) -> None:
        self.what, self.total, self.out, self.every_s = what, max(total, 1e-9), out, every_s
        self.t0 = time.monotonic()
        self._last = -math.inf

    def show(self, done: float, force: bool = False) -> None:
        now = time.monotonic()
        if self.out is None or (not force and now - self._last < self.every_s):
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        eta = (now - self.t0) * (1 - frac) / frac if frac > 0 else None
        eta_s = "-:--" if eta is None else f"{int(eta) // 60}:{int(eta) % 60:02d}"
        self.out.write(f"\r{self.what} {frac:4.0%}  ETA {eta_s}   ")
        self.out.flush()

    def done(self) -> None:
        if self.out is not None:
            self.out.write(f"\r{self.what} done in {time.monotonic() - self.t0:.1f} s" + " " * 12 + "\n")
            self.out.flush()
