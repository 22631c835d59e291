"""The recording format: Kafka records in Parquet files, written and read with bounded memory. Recording from
and replaying into Kafka (`powerplane record`, `powerplane replay`) is `ops/recording.py`.

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
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
