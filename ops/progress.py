"""Progress for long work (`powerplane plan`, `evaluate`, `record`, `replay`): on a terminal one stderr line
rewritten in place; anywhere else (a log file, a pipe, CI) one plain line per milestone, never a `\\r`."""

from __future__ import annotations

import math
import time
from typing import TextIO


def is_tty(out: TextIO | None) -> bool:
    isatty = getattr(out, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


class Line:
    """One progress line. `update(text, milestone)`: on a terminal the line is rewritten at most every
    `every_s`; elsewhere `text` is written as a line of its own when `milestone` changes (10%, 20%, ...)."""

    def __init__(self, out: TextIO | None, every_s: float = 0.25) -> None:
        self.out, self.every_s, self.tty = out, every_s, is_tty(out)
        self._last_s = -math.inf
        self._milestone: object = None

    def update(self, text: str, milestone: object, force: bool = False) -> None:
        if self.out is None:
            return
        if self.tty:
            now = time.monotonic()
            if not force and now - self._last_s < self.every_s:
                return
            self._last_s = now
            self.out.write(f"\r{text}   ")
        else:
            if milestone == self._milestone and not force:  # force: the final figures, e.g. ETA 0:00
                return
            self.out.write(text + "\n")
        self._milestone = milestone
        self.out.flush()

    def finish(self, text: str) -> None:
        if self.out is not None:
            self.out.write(f"\r{text}{' ' * 12}\n" if self.tty else text + "\n")
            self.out.flush()


def fmt_eta(eta_s: float | None) -> str:
    return "-:--" if eta_s is None or not math.isfinite(eta_s) else f"{int(eta_s) // 60}:{int(eta_s) % 60:02d}"


class Progress:
    """`what  45%  ETA 0:12`: rewritten in place on a terminal, one line per `step_pct` elsewhere."""

    def __init__(self, what: str, total: float, out: TextIO | None, every_s: float = 0.25,
                 step_pct: int = 10) -> None:
        self.what, self.total, self.step_pct = what, max(total, 1e-9), step_pct
        self.line = Line(out, every_s)
        self.t0 = time.monotonic()

    def show(self, done: float, force: bool = False) -> None:
        frac = min(done / self.total, 1.0)
        elapsed = time.monotonic() - self.t0
        eta = elapsed * (1 - frac) / frac if frac > 0 else None
        pct = int(frac * 100)
        self.line.update(f"{self.what} {frac:4.0%}  ETA {fmt_eta(eta)}", pct - pct % self.step_pct, force)

    def done(self) -> None:
        self.line.finish(f"{self.what} done in {time.monotonic() - self.t0:.1f} s")
