"""Record Kafka topics to Parquet files and replay them: `powerplane record` and `powerplane replay`.

A recording is a directory: one Parquet file per topic (`<topic>.parquet`) and a `manifest.json`
written last, so a directory without a manifest is an interrupted recording and is refused. Each row is
one Kafka record exactly as it was on the broker: topic, partition, offset, the original timestamp, key
(null kept), value (null kept: a tombstone stays a tombstone), and headers in order. Row groups hold at
most `row_group_size` records (and about `row_group_bytes` of keys and values), so recording and
replaying use bounded memory however long the recording is.

Replay merges the topics by original timestamp while keeping every partition in its original offset
order, and produces each record back with its original key, headers, timestamp and partition. Replaying
a recording into the topics it came from and recording them again gives identical records.
"""

from __future__ import annotations

import heapq
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa  # no py.typed in pyarrow 26
import pyarrow.parquet as pq

FORMAT = "powerplane-recording"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ROW_GROUP_SIZE = 10_000
ROW_GROUP_BYTES = 64 * 1024 * 1024

Headers = list[tuple[str, bytes | None]]

SCHEMA = pa.schema([
    pa.field("topic", pa.string(), nullable=False),
    pa.field("partition", pa.int32(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),
    pa.field("timestamp_ms", pa.int64(), nullable=False),
    pa.field("key", pa.binary()),
    pa.field("value", pa.binary()),
    pa.field("headers", pa.list_(pa.struct([pa.field("key", pa.string(), nullable=False),
                                            pa.field("value", pa.binary())])), nullable=False),
])


@dataclass(frozen=True)
class Recorded:
    """One record of a recording, with where it was on the broker."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers


def file_name(topic: str) -> str:
    return f"{topic}.parquet"


# ---- writing ---------------------------------------------------------------------------------------


class _TopicWriter:
    """Buffers one topic's records and writes them as bounded row groups."""

    def __init__(self, path: Path, row_group_size: int, row_group_bytes: int) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".partial")
        self.row_group_size = row_group_size
        self.row_group_bytes = row_group_bytes
        self._writer: Any = None
        self._cols: dict[str, list[Any]] = {f.name: [] for f in SCHEMA}
        self._bytes = 0
        self.records = 0
        self.row_groups = 0
        self.partitions: dict[int, dict[str, int]] = {}
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    def add(self, r: Recorded) -> None:
        c = self._cols
        c["topic"].append(r.topic)
        c["partition"].append(r.partition)
        c["offset"].append(r.offset)
        c["timestamp_ms"].append(r.timestamp_ms)
        c["key"].append(r.key)
        c["value"].append(r.value)
        c["headers"].append([{"key": k, "value": v} for k, v in r.headers])
        self._bytes += len(r.key or b"") + len(r.value or b"") + sum(len(k) + len(v or b"") for k, v in r.headers)
        self.records += 1
        p = self.partitions.setdefault(r.partition, {"records": 0, "first_offset": r.offset,
                                                     "last_offset": r.offset})
        p["records"] += 1
        p["last_offset"] = r.offset
        self.first_ts = r.timestamp_ms if self.first_ts is None else min(self.first_ts, r.timestamp_ms)
        self.last_ts = r.timestamp_ms if self.last_ts is None else max(self.last_ts, r.timestamp_ms)
        if len(c["offset"]) >= self.row_group_size or self._bytes >= self.row_group_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._cols["offset"] and self._writer is not None:
            return
        table = pa.Table.from_pydict(self._cols, schema=SCHEMA)
        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self.tmp), SCHEMA, compression="zstd")
        if table.num_rows:
            self._writer.write_table(table, row_group_size=self.row_group_size)
            self.row_groups += 1
        self._cols = {f.name: [] for f in SCHEMA}
        self._bytes = 0

    def close(self) -> None:
        self.flush()
        self._writer.close()
        os.replace(self.tmp, self.path)

    def manifest_entry(self) -> dict[str, Any]:
        return {"file": self.path.name, "records": self.records, "row_groups": self.row_groups,
                "first_timestamp_ms": self.first_ts, "last_timestamp_ms": self.last_ts,
                "partitions": {str(p): v for p, v in sorted(self.partitions.items())}}


class RecordingWriter:
    """Writes a recording directory; usable without Kafka (tests, conversions)."""

    def __init__(self, out_dir: str | Path, topics: Iterable[str], *, row_group_size: int = ROW_GROUP_SIZE,
                 row_group_bytes: int = ROW_GROUP_BYTES, source: str = "") -> None:
        self.dir = Path(out_dir)
        if (self.dir / MANIFEST).exists():
            raise ValueError(f"{self.dir} already holds a recording ({MANIFEST}); choose another --out")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.row_group_size = row_group_size
        self.writers = {t: _TopicWriter(self.dir / file_name(t), row_group_size, row_group_bytes)
                        for t in topics}
        self.started = datetime.now(UTC)

    @property
    def records(self) -> int:
        return sum(w.records for w in self.writers.values())

    def add(self, r: Recorded) -> None:
        self.writers[r.topic].add(r)

    def close(self) -> dict[str, Any]:
        """Finish every file, then write the manifest (last: its presence marks a complete recording)."""
        for w in self.writers.values():
            w.close()
        firsts = [w.first_ts for w in self.writers.values() if w.first_ts is not None]
        lasts = [w.last_ts for w in self.writers.values() if w.last_ts is not None]
        manifest: dict[str, Any] = {
            "format": FORMAT, "version": FORMAT_VERSION, "source": self.source,
            "recorded_from": self.started.isoformat(timespec="seconds"),
            "recorded_to": datetime.now(UTC).isoformat(timespec="seconds"),
            "records": self.records, "row_group_size": self.row_group_size,
            "first_timestamp_ms": min(firsts) if firsts else None,
            "last_timestamp_ms": max(lasts) if lasts else None,
            "topics": {t: w.manifest_entry() for t, w in self.writers.items()},
        }
        tmp = self.dir / (MANIFEST + ".partial")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, self.dir / MANIFEST)
        return manifest


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

    from powerplane.kafka import consumer

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
        while not stop.is_set():
            now = time.monotonic()
            if duration_s is not None and now - t0 >= duration_s:
                break
            if until_idle_s is not None and now - last_rec >= until_idle_s:
                break
            if until_end and all(c.position(tp) >= end[tp] for tp in parts):
                break
            batch = c.poll(timeout_ms=200, max_records=5000)
            for tp, msgs in batch.items():
                for m in msgs:
                    if until_end and m.offset >= end[tp]:
                        continue  # arrived after the recording started: not part of this snapshot
                    writer.add(Recorded(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value,
                                        [(k, v) for k, v in (m.headers or [])]))
                if msgs:
                    last_rec = time.monotonic()
            if progress is not None and time.monotonic() - last_note >= 1.0:
                last_note = time.monotonic()
                per = ", ".join(f"{t} {w.records:,}" for t, w in writer.writers.items())
                progress.write(f"\r recorded {writer.records:,} records ({per})  "
                               f"{_fmt_duration(last_note - t0)}  ")
                progress.flush()
        manifest = writer.close()
        writer = None
        if progress is not None:
            progress.write(f"\r recorded {manifest['records']:,} records to {out_dir}" + " " * 20 + "\n")
            progress.flush()
        return manifest
    finally:
        if writer is not None:  # interrupted by an error: keep what was written, but no manifest
            for w in writer.writers.values():
                if w._writer is not None:
                    w._writer.close()
        c.close()


# ---- reading ---------------------------------------------------------------------------------------


def load_manifest(rec_dir: str | Path) -> dict[str, Any]:
    path = Path(rec_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a recording, or an interrupted one")
    m: dict[str, Any] = json.loads(path.read_text())
    if m.get("format") != FORMAT or m.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported recording format {m.get('format')!r} version {m.get('version')!r} "
                         f"(this version reads {FORMAT} v{FORMAT_VERSION})")
    return m


class _FileReader:
    """Reads one topic file batch by batch and hands records out per partition, so that each
    partition is an iterator in offset order while the file is read only once."""

    def __init__(self, path: Path, partitions: Iterable[int], batch_size: int) -> None:
        self._batches = pq.ParquetFile(str(path)).iter_batches(batch_size=batch_size)
        self.queues: dict[int, deque[Recorded]] = {p: deque() for p in partitions}
        self.done = False

    def _read_batch(self) -> None:
        try:
            b = next(self._batches)
        except StopIteration:
            self.done = True
            return
        cols = b.to_pydict()
        for t, p, o, ts, k, v, h in zip(cols["topic"], cols["partition"], cols["offset"], cols["timestamp_ms"],
                                        cols["key"], cols["value"], cols["headers"], strict=True):
            self.queues.setdefault(p, deque()).append(
                Recorded(t, p, o, ts, k, v, [(x["key"], x["value"]) for x in h]))

    def partition(self, p: int) -> Iterator[Recorded]:
        q = self.queues.setdefault(p, deque())
        while True:
            while not q and not self.done:
                self._read_batch()
            if not q:
                return
            yield q.popleft()


def iter_recorded(rec_dir: str | Path, topics: Iterable[str] | None = None, *,
                  batch_size: int = 4096) -> Iterator[Recorded]:
    """Every record of a recording, merged by original timestamp across topics and partitions; records of
    one partition keep their offset order (a k-way merge of the partitions), ties go to the earlier
    topic and partition."""
    m = load_manifest(rec_dir)
    wanted = list(m["topics"]) if topics is None else list(topics)
    unknown = [t for t in wanted if t not in m["topics"]]
    if unknown:
        raise ValueError(f"{rec_dir}: no topic {', '.join(unknown)} in this recording "
                         f"(it has {', '.join(m['topics'])})")
    streams: list[Iterator[Recorded]] = []
    for t in wanted:
        entry = m["topics"][t]
        parts = sorted(int(p) for p in entry["partitions"])
        reader = _FileReader(Path(rec_dir) / entry["file"], parts, batch_size)
        streams.extend(reader.partition(p) for p in parts)
    return heapq.merge(*streams, key=lambda r: r.timestamp_ms)


def iter_records(rec_dir: str | Path, topics: Iterable[str] | None = None
                 ) -> Iterator[tuple[str, bytes | None, bytes | None, int, Headers]]:
    """(topic, key, value, timestamp_ms, headers) in timestamp order: the in-process engine's input."""
    for r in iter_recorded(rec_dir, topics):
        yield r.topic, r.key, r.value, r.timestamp_ms, r.headers


# ---- replaying -------------------------------------------------------------------------------------


class Progress:
    """`\\r 45% 12,345/27,000 records  ETA 0:12` on a text stream, at most every `every_s`."""

    def __init__(self, total: int, out: TextIO | None, every_s: float = 0.2) -> None:
        self.total = total
        self.out = out
        self.every_s = every_s
        self._last = 0.0

    def show(self, done: int, eta_s: float | None, force: bool = False) -> None:
        now = time.monotonic()
        if self.out is None or (not force and now - self._last < self.every_s):
            return
        self._last = now
        pct = 100 * done // self.total if self.total else 100
        eta = _fmt_duration(eta_s) if eta_s is not None else "-:--"
        self.out.write(f"\r{pct:3d}% {done:,}/{self.total:,} records  ETA {eta}  ")
        self.out.flush()

    def finish(self, text: str) -> None:
        if self.out is not None:
            self.out.write(f"\r{text}" + " " * 20 + "\n")
            self.out.flush()


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
