"""Polls every source at its own interval, with jitter, a timeout and bounded concurrency.

Each source has its own task on one asyncio loop: a slow or dead device only ever delays itself.
First polls are spread over one interval so thousands of devices do not all fire at once; a read
that overruns its timeout is abandoned and counted; missed ticks are skipped, not bunched.
Per-source status (ok / error / timeout, last error, durations) is kept for the CLI and exported
as Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from collectors.base import Published, Source, SourceError
from powerplane.schemas import SchemaError

log = logging.getLogger("powerplane.collectors")


@dataclass
class SourceStatus:
    name: str
    kind: str
    state: str = "never"  # never | ok | error | timeout
    polls: int = 0
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    frames: int = 0
    last_error: str = ""
    last_duration_s: float = 0.0
    last_ok_s: float = 0.0


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.polls = Counter("powerplane_collector_polls", "Polls by outcome", ["source", "kind", "outcome"],
                             registry=r)
        self.duration = Histogram("powerplane_collector_poll_duration_seconds", "Poll duration", ["kind"], registry=r,
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.up = Gauge("powerplane_collector_source_up", "1 if the last poll succeeded", ["source", "kind"],
                        registry=r)
        self.frames = Counter("powerplane_collector_frames", "Frames collected", ["kind"], registry=r)


class Scheduler:
    def __init__(self, sources: list[Source], sink: Callable[[Sequence[Published]], None], *,
                 max_concurrency: int = 512, jitter: float = 0.1, seed: int | None = None,
                 metrics: Metrics | None = None) -> None:
        names = [s.name for s in sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate source name(s): {', '.join(sorted(dup))}")
        self.sources = sources
        self.sink = sink
        self.max_concurrency = max_concurrency
        self.jitter = jitter
        self.rng = random.Random(seed)
        self.metrics = metrics or Metrics()
        self.status = {s.name: SourceStatus(s.name, s.kind) for s in sources}

    async def run(self, stop: threading.Event, duration_s: float | None = None) -> None:
        sem = asyncio.Semaphore(self.max_concurrency)
        t_end = None if duration_s is None else time.monotonic() + duration_s
        tasks = [asyncio.create_task(self._loop(s, sem, stop, t_end), name=f"source:{s.name}") for s in self.sources]
        try:
            while not stop.is_set() and (t_end is None or time.monotonic() < t_end):
                await asyncio.sleep(0.1)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(self._close(s) for s in self.sources), return_exceptions=True)

    async def _close(self, s: Source) -> None:
        try:
            await asyncio.wait_for(s.close(), 5.0)
        except Exception as e:  # closing one device must not stop the others closing
            log.warning("source %s: close failed: %s", s.name, e)

    async def _loop(self, s: Source, sem: asyncio.Semaphore, stop: threading.Event, t_end: float | None) -> None:
        st = self.status[s.name]
        started = False
        # Spread first polls over one interval.
        next_t = time.monotonic() + self.rng.uniform(0, s.interval_s)
        while not stop.is_set():
            delay = next_t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set() or (t_end is not None and time.monotonic() >= t_end):
                return
            async with sem:
                if not started:
                    started = await self._start(s, st)
                if started:
                    await self._poll(s, st)
            j = self.rng.uniform(-self.jitter, self.jitter) * s.interval_s
            next_t += s.interval_s + j
            if next_t < time.monotonic():  # overran: skip missed ticks rather than bunch them
                next_t = time.monotonic() + s.interval_s

    async def _start(self, s: Source, st: SourceStatus) -> bool:
        try:
            await asyncio.wait_for(s.start(), s.timeout_s)
            return True
        except Exception as e:
            self._fail(s, st, "error", f"start failed: {_describe(e)}")
            return False

    async def _poll(self, s: Source, st: SourceStatus) -> None:
        t0 = time.perf_counter()
        st.polls += 1
        try:
            frames = await asyncio.wait_for(s.read(), s.timeout_s)
            for f in frames:
                f.validate(f"{f.SCHEMA} {f.key().decode()}")  # a source bug must not reach Kafka
        except TimeoutError:
            self._fail(s, st, "timeout", f"no answer within {s.timeout_s:g} s")
            return
        except (SourceError, SchemaError) as e:
            self._fail(s, st, "error", str(e))
            return
        except Exception as e:  # a bug in one source must not stop the others
            self._fail(s, st, "error", f"internal error: {_describe(e)}")
            return
        finally:
            st.last_duration_s = time.perf_counter() - t0
            self.metrics.duration.labels(s.kind).observe(st.last_duration_s)
        self.sink(frames)
        if st.state in ("error", "timeout"):
            log.info("source %s (%s): recovered", s.name, s.kind)
        st.state, st.ok, st.frames, st.last_ok_s = "ok", st.ok + 1, st.frames + len(frames), time.time()
        self.metrics.polls.labels(s.name, s.kind, "ok").inc()
        self.metrics.up.labels(s.name, s.kind).set(1)
        self.metrics.frames.labels(s.kind).inc(len(frames))

    def _fail(self, s: Source, st: SourceStatus, outcome: str, msg: str) -> None:
        if outcome == "timeout":
            st.timeouts += 1
        else:
            st.errors += 1
        if st.last_error != msg or st.state == "ok":  # one line per change, not one per poll
            log.warning("source %s (%s): %s", s.name, s.kind, msg)
        st.state, st.last_error = outcome, msg
        self.metrics.polls.labels(s.name, s.kind, outcome).inc()
        self.metrics.up.labels(s.name, s.kind).set(0)

    def table(self) -> str:
        head = f"{'source':24s} {'kind':8s} {'state':8s} {'ok':>6s} {'err':>5s} {'t/o':>5s} {'last ms':>8s}"
        rows = [head + "  last error"]
        for st in self.status.values():
            rows.append(f"{st.name:24s} {st.kind:8s} {st.state:8s} {st.ok:6d} {st.errors:5d} {st.timeouts:5d} "
                        f"{st.last_duration_s * 1e3:8.1f}  {st.last_error}")
        return "\n".join(rows)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
