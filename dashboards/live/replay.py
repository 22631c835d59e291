"""Replay mode: a recording (`powerplane record`) drives the dashboard state by its own event time.

The replay clock is the recording's record timestamps: while playing, it advances `speed` event
seconds per wall second and every record at or before it is folded. Seeking forward folds without
pacing; seeking backward resets the state and folds from the start (a recording is read in bounded
batches, so memory stays bounded; the cost is one pass over the records before the seek point).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashboards.live.feed import TOPICS, FeedStats, _decode
from powerplane.recording import Recorded, iter_recorded, load_manifest
from powerplane.schemas import Record

log = logging.getLogger("powerplane.dashboard")


@dataclass
class ReplayStatus:
    start_ms: int
    end_ms: int
    t_ms: int
    playing: bool
    speed: float
    done: bool

    def as_dict(self) -> dict[str, Any]:
        return {"start_ms": self.start_ms, "end_ms": self.end_ms, "t_ms": self.t_ms, "playing": self.playing,
                "speed": self.speed, "done": self.done}


class Replayer:
    """Plays a recording into `apply` (under `lock`), paced by event time; seek, play, pause, speed."""

    def __init__(self, rec_dir: str | Path, apply: Callable[[Record], None], reset: Callable[[], None],
                 lock: threading.Lock, speed: float = 1.0,
                 on_record: Callable[[str, bool], None] | None = None) -> None:
        m = load_manifest(rec_dir)
        self.rec_dir = rec_dir
        self.topics = [t for t in TOPICS if t in m["topics"]]
        if not self.topics:
            raise ValueError(f"{rec_dir}: the recording has none of the dashboard's topics ({', '.join(TOPICS)}); "
                             f"it has {', '.join(m['topics'])}")
        stamps = [(int(m["topics"][t]["first_timestamp_ms"]), int(m["topics"][t]["last_timestamp_ms"]))
                  for t in self.topics if m["topics"][t].get("records")]
        if not stamps:
            raise ValueError(f"{rec_dir}: the recording's dashboard topics are empty")
        self.start_ms = min(s for s, _ in stamps)
        self.end_ms = max(e for _, e in stamps)
        self.apply = apply
        self.reset = reset
        self.lock = lock
        self.on_record = on_record
        self.stats = FeedStats()
        self._cv = threading.Condition()
        self._speed = speed
        self._playing = True
        self._seek_to: int | None = None
        self._t_ms: float = float(self.start_ms)  # event time shown
        self._anchor = (time.monotonic(), float(self.start_ms))  # (wall, event ms) while playing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._it: Iterator[Recorded] = iter(())
        self._next: Recorded | None = None
        self._done = False

    # ---- control (any thread) ----------------------------------------------------------------
    def status(self) -> ReplayStatus:
        with self._cv:
            return ReplayStatus(self.start_ms, self.end_ms, int(self._t_ms), self._playing, self._speed,
                                self._done)

    def seek(self, t_ms: float) -> None:
        with self._cv:
            self._seek_to = int(min(max(t_ms, self.start_ms), self.end_ms))
            self._cv.notify_all()

    def play(self, playing: bool) -> None:
        with self._cv:
            self._playing = playing
            self._anchor = (time.monotonic(), float(self._t_ms))
            self._cv.notify_all()

    def set_speed(self, speed: float) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0 (got {speed})")
        with self._cv:
            self._speed = speed
            self._anchor = (time.monotonic(), float(self._t_ms))
            self._cv.notify_all()

    def start(self) -> None:
        self._restart()
        self._thread = threading.Thread(target=self._run, name="dashboard-replay", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)

    # ---- the replay thread --------------------------------------------------------------------
    def _restart(self) -> None:
        self._it = iter_recorded(self.rec_dir, self.topics)
        self._next = next(self._it, None)
        self._done = self._next is None

    def _fold_until(self, t_ms: float, max_records: int = 20_000) -> int:
        """Fold records with timestamp <= t_ms; at most max_records per call, so controls stay responsive."""
        n = 0
        with self.lock:
            while self._next is not None and self._next.timestamp_ms <= t_ms and n < max_records:
                r = self._next
                rec = _decode(r.topic, r.value, self.stats)
                self.stats.records[r.topic] = self.stats.records.get(r.topic, 0) + 1
                if self.on_record is not None:
                    self.on_record(r.topic, rec is not None)
                if rec is not None:
                    self.apply(rec)
                self._next = next(self._it, None)
                n += 1
        self._done = self._next is None
        return n

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                seek = self._seek_to
                self._seek_to = None
            if seek is not None:
                if seek < self._t_ms:
                    with self.lock:
                        self.reset()
                    self._restart()
                while self._fold_until(seek) and not self._stop.is_set():
                    pass
                with self._cv:
                    self._t_ms = seek
                    self._anchor = (time.monotonic(), float(seek))
                continue
            with self._cv:
                if not self._playing or self._done:
                    self._cv.wait(0.2)
                    continue
                wall0, ev0 = self._anchor
                target = min(ev0 + (time.monotonic() - wall0) * 1000.0 * self._speed, float(self.end_ms))
            self._fold_until(target)
            with self._cv:
                self._t_ms = target
                if self._done or target >= self.end_ms:
                    self._playing = False  # hold at the end; the slider can take it back
                    self._done = True
            with self._cv:
                self._cv.wait(0.05)
