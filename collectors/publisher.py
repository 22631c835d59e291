"""Polls a source at its interval and publishes its frames, keyed by rack, to the telemetry topic."""

from __future__ import annotations

import logging
import threading
import time

from collectors.base import Source
from powerplane import topics
from powerplane.kafka import Producer

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, source: Source, producer: Producer) -> None:
        self.source = source
        self.producer = producer
        self.frames = 0
        self.errors = 0
        self.last_duration_s = 0.0

    def publish_once(self) -> int:
        t0 = time.perf_counter()
        try:
            frames = self.source.read_batch()
        except Exception as e:  # a failing device must not stop the loop; it is counted and logged
            self.errors += 1
            log.error("source %s: read failed: %s", self.source.name, e)
            return 0
        for fr in frames:
            self.producer.send(topics.TELEMETRY.name, fr.encode(), key=fr.key(), timestamp_ms=int(fr.ts_s * 1000))
        self.frames += len(frames)
        self.last_duration_s = time.perf_counter() - t0
        return len(frames)

    def run(self, stop: threading.Event, max_intervals: int | None = None) -> None:
        """Fixed-rate loop: a slow read delays this source only, and late ticks are not bunched."""
        self.source.start()
        try:
            next_t = time.monotonic()
            n = 0
            while not stop.is_set() and (max_intervals is None or n < max_intervals):
                self.publish_once()
                n += 1
                next_t += self.source.interval_s
                delay = next_t - time.monotonic()
                if delay < 0:
                    next_t = time.monotonic()  # overran: skip the missed ticks
                    delay = 0
                stop.wait(delay)
        finally:
            self.source.close()
