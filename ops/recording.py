"""`powerplane record` and `powerplane replay`: Kafka topics to a recording (powerplane/recording.py) and back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ops.progress import Line
from powerplane.recording import (
    ROW_GROUP_SIZE,
    Recorded,
    RecordingWriter,
    iter_recorded,
    load_manifest,
)


def _fmt_duration(s: float) -> str:
    n = max(0, round(s))
    return f"{n // 3600}:{n % 3600 // 60:02d}:{n % 60:02d}" if n >= 3600 else f"{n // 60}:{n % 60:02d}"


def record(bootstrap: str, topic_names: Iterable[str], out_dir: str | Path, *, from_beginning: bool = False,
           duration_s: float | None = None, until_idle_s: float | None = None, until_end: bool = False,
           stop: threading.Event | None = None, ready: threading.Event | None = None,
           row_group_size: int = ROW_GROUP_SIZE, progress: TextIO | None = None) -> dict[str, Any]:
    """Consume `topic_names` (no consumer group; every partition assigned) into a recording directory.

    Starts at the end of each partition, or at the beginning with `from_beginning`. Stops on `stop`,
    after `duration_s`, after `until_idle_s` without a record, or (`until_end`) once every partition
    reaches the end offset it had when recording started; without any of these it runs until stopped.
    Progress goes to `progress` (the CLI passes stderr). `ready` is set once every partition's start
    position is resolved. Returns the manifest.
    """
    from kafka import TopicPartition

    from powerplane.kafka import OutagePoll, consumer

    names = list(dict.fromkeys(topic_names))
    if not names:
        raise ValueError("no topics to record")
    stop = stop or threading.Event()
    c = consumer(bootstrap, None, from_beginning=from_beginning, enable_auto_commit=False)
    writer: RecordingWriter | None = None
    try:
        parts: list[Any] = []
        for t in names:
            ids = c.partitions_for_topic(t)
            if not ids:
                raise ValueError(f"topic '{t}' does not exist on {bootstrap} (create it with `powerplane topics "
                                 "create`)")
            parts.extend(TopicPartition(t, p) for p in sorted(ids))
        c.assign(parts)
        if from_beginning:
            c.seek_to_beginning(*parts)
        else:
            c.seek_to_end(*parts)
        for tp in parts:
            c.position(tp)  # resolve now, so records produced after `ready` are recorded
        end: dict[Any, int] = dict(c.end_offsets(parts)) if until_end else {}
        writer = RecordingWriter(out_dir, names, row_group_size=row_group_size, source=bootstrap)
        if ready is not None:
            ready.set()
        t0 = last_rec = last_note = time.monotonic()
        line = Line(progress, every_s=1.0)
        poll = OutagePoll(c, "record", stop)
        while not stop.is_set():
            now = time.monotonic()
            if duration_s is not None and now - t0 >= duration_s:
                break
            if until_idle_s is not None and now - last_rec >= until_idle_s:
                break
            if until_end and all(c.position(tp) >= end[tp] for tp in parts):
                break
            batch = poll(timeout_ms=200, max_records=5000)  # a broker outage is a pause in the recording
            for tp, msgs in batch.items():
                for m in msgs:
                    if until_end and m.offset >= end[tp]:
                        continue  # arrived after the recording started: not part of this snapshot
                    writer.add(Recorded(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value,
                                        [(k, v) for k, v in (m.headers or [])]))
                if msgs:
                    last_rec = time.monotonic()
            if time.monotonic() - last_note >= 1.0:
                last_note = time.monotonic()
                per = ", ".join(f"{t} {w.records:,}" for t, w in writer.writers.items())
                # A log file gets a line every 10 s; a terminal the same line rewritten every second.
                line.update(f" recorded {writer.records:,} records ({per})  {_fmt_duration(last_note - t0)}",
                            int(last_note - t0) // 10)
        manifest = writer.close()
        writer = None
        line.finish(f" recorded {manifest['records']:,} records to {out_dir}")
        return manifest
    finally:
        if writer is not None:  # interrupted by an error: keep what was written, but no manifest
            for w in writer.writers.values():
                if w._writer is not None:
                    w._writer.close()
        c.close()


# ---- reading ---------------------------------------------------------------------------------------


# ---- replaying -------------------------------------------------------------------------------------


class Progress:
    """` 45% 12,345/27,000 records  ETA 0:12`: rewritten in place on a terminal (at most every `every_s`),
    one line per 10% elsewhere (ops.progress.Line)."""

    def __init__(self, total: int, out: TextIO | None, every_s: float = 0.2) -> None:
        self.total = total
        self.line = Line(out, every_s)

    def show(self, done: int, eta_s: float | None, force: bool = False) -> None:
        pct = 100 * done // self.total if self.total else 100
        eta = _fmt_duration(eta_s) if eta_s is not None else "-:--"
        self.line.update(f"{pct:3d}% {done:,}/{self.total:,} records  ETA {eta}", pct // 10, force)

    def finish(self, text: str) -> None:
        self.line.finish(text)


@dataclass
class ReplayStats:
    records: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    elapsed_s: float = 0.0


def replay(bootstrap: str, rec_dir: str | Path, *, speed: float = 1.0, as_fast_as_possible: bool = False,
           topics: Iterable[str] | None = None, to_prefix: str = "", stop: threading.Event | None = None,
           progress: TextIO | None = None,
           sleep: Callable[[float], bool] | None = None) -> ReplayStats:
    """Produce a recording back into Kafka (only the broker needs to run) with the original keys, headers,
    timestamps and partitions, paced by the original inter-arrival times divided by `speed`, or as fast
    as possible. Topic `T` goes to `to_prefix + T`. Raises RuntimeError if any record is not delivered."""
    from powerplane.kafka import Producer, consumer

    if not as_fast_as_possible and speed <= 0:
        raise ValueError(f"--speed must be > 0 (got {speed})")
    m = load_manifest(rec_dir)
    wanted = list(m["topics"]) if topics is None else list(dict.fromkeys(topics))
    stream = iter_recorded(rec_dir, wanted)  # validates the topic names
    total = sum(int(m["topics"][t]["records"]) for t in wanted)
    stop_ev = stop or threading.Event()
    wait = sleep or stop_ev.wait

    # The target topics must exist (auto-create is off); the partition count decides whether a record
    # can go back to its original partition or is placed by its key instead.
    c = consumer(bootstrap, None)
    try:
        n_parts: dict[str, int] = {}
        for t in wanted:
            ids = c.partitions_for_topic(to_prefix + t)
            if not ids:
                raise ValueError(f"topic '{to_prefix + t}' does not exist on {bootstrap} (create it with "
                                 "`powerplane topics create`)")
            n_parts[t] = len(ids)
    finally:
        c.close()

    stats = ReplayStats()
    bar = Progress(total, progress)
    prod = Producer(bootstrap, "powerplane-replay", max_block_s=120.0)
    t0 = time.monotonic()
    first_ts: int | None = None
    last_ts = m.get("last_timestamp_ms")
    try:
        for r in stream:
            if stop_ev.is_set():
                break
            if first_ts is None:
                first_ts = r.timestamp_ms
            elif not as_fast_as_possible:
                due = t0 + (r.timestamp_ms - first_ts) / 1000.0 / speed
                delay = due - time.monotonic()
                if delay > 0 and wait(delay):
                    break
            part = r.partition if r.partition < n_parts[r.topic] else None
            if r.key is None and r.value is None:  # valid Kafka, but kafka-python cannot produce it
                raise RuntimeError(f"replay: {r.topic}[{r.partition}]@{r.offset} has neither key nor value, "
                                   "which kafka-python cannot produce")
            if not prod.send(to_prefix + r.topic, r.value, key=r.key, headers=r.headers,  # type: ignore[arg-type]
                             timestamp_ms=r.timestamp_ms, partition=part):
                raise RuntimeError(f"replay: could not send {r.topic}[{r.partition}]@{r.offset}: "
                                   f"{prod.last_error or 'producer buffer full'}")
            stats.records += 1
            done = stats.records
            if as_fast_as_possible or last_ts is None:
                el = time.monotonic() - t0
                eta: float | None = el * (total - done) / done if el > 0.5 else None
            else:
                eta = (last_ts - r.timestamp_ms) / 1000.0 / speed
            bar.show(done, eta)
    finally:
        prod.close()
        stats.elapsed_s = time.monotonic() - t0
        stats.delivered, stats.failed, stats.dropped = prod.delivered, prod.failed, prod.dropped
    bar.show(stats.records, 0.0, force=True)
    bar.finish(f"replayed {stats.records:,}/{total:,} records in {_fmt_duration(stats.elapsed_s)} "
               f"({stats.delivered:,} delivered)")
    if stats.failed or stats.dropped or stats.delivered != stats.records:
        raise RuntimeError(f"replay: {stats.delivered} of {stats.records} records delivered, {stats.failed} failed, "
                           f"{stats.dropped} dropped (last error: {prod.last_error or '-'})")
    return stats


def summary(manifest: Mapping[str, Any]) -> str:
    """One line per topic, for the CLI."""
    lines = []
    for t, e in manifest["topics"].items():
        lines.append(f"{t:18s} {e['records']:>10,} records  {len(e['partitions']):>3d} partitions  "
                     f"{e['row_groups']:>4d} row groups")
    return "\n".join(lines)
