"""A bounded, append-only, on-disk spool of records waiting for Kafka.

Every frame is appended here first; a sender reads from the cursor in order and advances it only
after Kafka has acknowledged. So while the broker is unreachable frames accumulate on disk, not in
memory, and they go out in their original order when it returns. When the spool is over its size
bound the oldest segment is deleted, and the records lost that way are counted, never silent.

Layout: `<dir>/<first seq, 20 digits>.seg` files of length-prefixed records with a CRC, plus
`<dir>/cursor` holding the next sequence number to send. A torn record at the tail (a crash during
a write) is detected by its CRC and truncated on open.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

# seq, ts_ms, topic length, key length (0xFFFFFFFF = no key), value length
_HEAD = struct.Struct("<QqHII")
_CRC = struct.Struct("<I")
_NO_KEY = 0xFFFFFFFF


@dataclass(frozen=True)
class SpoolRecord:
    seq: int
    topic: str
    key: bytes | None
    value: bytes
    ts_ms: int


@dataclass
class _Segment:
    first_seq: int
    path: Path
    size: int
    last_seq: int  # first_seq - 1 while empty


class SpoolError(RuntimeError):
    pass


class Spool:
    def __init__(self, directory: str | Path, *, max_bytes: int = 1 << 30, segment_bytes: int = 16 << 20,
                 fsync: bool = False) -> None:
        if max_bytes < 2 * segment_bytes:
            raise ValueError("spool max_bytes must hold at least two segments")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync  # fsync each append batch: survives power loss, costs throughput
        self.lock = threading.Condition()
        self.dropped_records = 0
        self.appended = 0
        self.segments: list[_Segment] = []
        self._load()
        self.cursor = self._read_cursor()
        if self.segments and self.cursor < self.segments[0].first_seq:
            self.cursor = self.segments[0].first_seq
        self._writer = open(self.segments[-1].path, "ab")  # noqa: SIM115 - kept open for appends
        self._rpos: tuple[int, int, int] | None = None  # (segment first seq, byte offset, seq found there)

    # ---- opening ----------------------------------------------------------------------------
    def _load(self) -> None:
        for path in sorted(self.dir.glob("*.seg")):
            first = int(path.stem)
            last, good_size = self._scan(path, first)
            if good_size < path.stat().st_size:
                with open(path, "r+b") as fh:
                    fh.truncate(good_size)  # a torn record from a crash mid-write
            self.segments.append(_Segment(first, path, good_size, last))
        if not self.segments:
            self.segments.append(self._new_segment(0))

    @staticmethod
    def _scan(path: Path, first: int) -> tuple[int, int]:
        last, pos = first - 1, 0
        with open(path, "rb") as fh:
            data = fh.read()
        while pos + _HEAD.size <= len(data):
            seq, _ts, tl, kl, vl = _HEAD.unpack_from(data, pos)
            n = _HEAD.size + tl + (0 if kl == _NO_KEY else kl) + vl
            if pos + n + _CRC.size > len(data):
                break
            (crc,) = _CRC.unpack_from(data, pos + n)
            if zlib.crc32(data[pos:pos + n]) != crc:
                break
            last, pos = seq, pos + n + _CRC.size
        return last, pos

    def _new_segment(self, first: int) -> _Segment:
        path = self.dir / f"{first:020d}.seg"
        path.touch()
        return _Segment(first, path, 0, first - 1)

    def _read_cursor(self) -> int:
        try:
            return int((self.dir / "cursor").read_text().strip())
        except (OSError, ValueError):
            return self.segments[0].first_seq if self.segments else 0

    # ---- writing ----------------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        return self.segments[-1].last_seq + 1

    def append_many(self, records: list[tuple[str, bytes | None, bytes, int]]) -> None:
        """Append (topic, key, value, ts_ms) records in order."""
        with self.lock:
            buf = bytearray()
            seg = self.segments[-1]
            for topic, key, value, ts_ms in records:
                t = topic.encode()
                seq = seg.last_seq + 1
                rec = bytearray(_HEAD.pack(seq, ts_ms, len(t), _NO_KEY if key is None else len(key), len(value)))
                rec += t
                if key is not None:
                    rec += key
                rec += value
                rec += _CRC.pack(zlib.crc32(rec))
                buf += rec
                seg.last_seq = seq
                seg.size += len(rec)
                if seg.size >= self.segment_bytes:
                    self._flush(buf)
                    buf = bytearray()
                    seg = self._roll()
            self._flush(buf)
            self.appended += len(records)
            self._enforce_bound()
            self.lock.notify_all()

    def _flush(self, buf: bytearray) -> None:
        if buf:
            self._writer.write(buf)
        self._writer.flush()
        if self.fsync:
            os.fsync(self._writer.fileno())

    def _roll(self) -> _Segment:
        self._writer.close()
        seg = self._new_segment(self.segments[-1].last_seq + 1)
        self.segments.append(seg)
        self._writer = open(seg.path, "ab")  # noqa: SIM115
        return seg

    def _enforce_bound(self) -> None:
        while self.total_bytes > self.max_bytes and len(self.segments) > 1:
            old = self.segments.pop(0)
            unsent = max(0, old.last_seq - max(self.cursor, old.first_seq) + 1)
            self.dropped_records += unsent
            old.path.unlink(missing_ok=True)
            if self.cursor <= old.last_seq:
                self.cursor = old.last_seq + 1
                self._write_cursor()
            self._rpos = None

    # ---- reading and committing -------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def pending(self) -> int:
        return self.next_seq - self.cursor

    def read(self, from_seq: int, max_records: int = 5000, max_bytes: int = 8 << 20) -> list[SpoolRecord]:
        """Records with seq >= from_seq, in order (from_seq is clamped to what still exists).

        Sequential reads resume from a remembered file offset, so draining a large spool is linear.
        """
        with self.lock:
            out: list[SpoolRecord] = []
            from_seq = max(from_seq, self.segments[0].first_seq)
            got = 0
            for seg in self.segments:
                if seg.last_seq < from_seq:
                    continue
                start = 0
                if self._rpos is not None and self._rpos[0] == seg.first_seq and self._rpos[2] <= from_seq:
                    start = self._rpos[1]
                with open(seg.path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read(min(seg.size - start, max_bytes + (1 << 20)))
                pos = 0
                while pos + _HEAD.size <= len(data) and len(out) < max_records and got < max_bytes:
                    seq, ts, tl, kl, vl = _HEAD.unpack_from(data, pos)
                    n = _HEAD.size + tl + (0 if kl == _NO_KEY else kl) + vl
                    if pos + n + _CRC.size > len(data):
                        break  # the rest of this record lies beyond what was read; next call
                    if seq >= from_seq:
                        p = pos + _HEAD.size
                        topic = data[p:p + tl].decode()
                        p += tl
                        key = None if kl == _NO_KEY else bytes(data[p:p + kl])
                        p += 0 if kl == _NO_KEY else kl
                        out.append(SpoolRecord(seq, topic, key, bytes(data[p:p + vl]), ts))
                        got += n
                    pos += n + _CRC.size
                    self._rpos = (seg.first_seq, start + pos, seq + 1)
                if len(out) >= max_records or got >= max_bytes:
                    break
            return out

    def commit(self, next_seq: int) -> None:
        """Everything below next_seq has been delivered."""
        with self.lock:
            if next_seq <= self.cursor:
                return
            self.cursor = next_seq
            self._write_cursor()
            # Delivered segments (all but the one being written) are no longer needed.
            while len(self.segments) > 1 and self.segments[0].last_seq < self.cursor:
                self.segments.pop(0).path.unlink(missing_ok=True)

    def _write_cursor(self) -> None:
        tmp = self.dir / "cursor.tmp"
        tmp.write_text(str(self.cursor))
        tmp.replace(self.dir / "cursor")

    def wait(self, timeout_s: float) -> None:
        with self.lock:
            if self.pending == 0:
                self.lock.wait(timeout_s)

    def close(self) -> None:
        with self.lock:
            self._writer.close()
