"""Recording files without servers: Parquet round trip, merge order, bounded row groups, manifest."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ops import recording as ops_recording
from powerplane.recording import Recorded, RecordingWriter, iter_recorded, iter_records, load_manifest


def _records() -> list[Recorded]:
    return [
        Recorded("pp.telemetry", 0, 0, 1000, b"rack-1", b"\x00\x01\xff", [("pp.a", b"1"), ("pp.b", b"")]),
        Recorded("pp.telemetry", 1, 0, 1001, None, b"null key", []),
        Recorded("pp.telemetry", 0, 1, 1003, b"rack-1", b"", [("dup", b"x"), ("dup", b"y")]),
        Recorded("pp.aggregates", 2, 7, 1002, b"level", None, [("h", None)]),  # tombstone, null header value
        Recorded("pp.aggregates", 2, 8, 1003, b"level", bytes(range(256)), []),
    ]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    w = RecordingWriter(tmp_path, ["pp.telemetry", "pp.aggregates"])
    for r in _records():
        w.add(r)
    m = w.close()
    got = list(iter_recorded(tmp_path))
    assert sorted(got, key=lambda r: (r.topic, r.partition, r.offset)) == sorted(
        _records(), key=lambda r: (r.topic, r.partition, r.offset))
    assert [r.timestamp_ms for r in got] == [1000, 1001, 1002, 1003, 1003]
    # Public API: 5-tuples in timestamp order.
    tuples = list(iter_records(tmp_path, topics=["pp.aggregates"]))
    assert tuples == [("pp.aggregates", b"level", None, 1002, [("h", None)]),
                      ("pp.aggregates", b"level", bytes(range(256)), 1003, [])]
    assert m["records"] == 5


def test_parquet_columns(tmp_path: Path) -> None:
    w = RecordingWriter(tmp_path, ["pp.telemetry"])
    w.add(_records()[0])
    w.close()
    schema = pq.read_schema(tmp_path / "pp.telemetry.parquet")
    assert schema.names == ["topic", "partition", "offset", "timestamp_ms", "key", "value", "headers"]
    assert str(schema.field("key").type) == "binary" and schema.field("key").nullable
    assert str(schema.field("headers").type) == "list<element: struct<key: string not null, value: binary>>"
    row = pq.read_table(tmp_path / "pp.telemetry.parquet").to_pylist()[0]
    assert row["headers"] == [{"key": "pp.a", "value": b"1"}, {"key": "pp.b", "value": b""}]


def test_merge_by_timestamp_keeps_partition_order(tmp_path: Path) -> None:
    rng = random.Random(7)
    recs: list[Recorded] = []
    # Three topics, several partitions each; timestamps mostly rising but jittered, so that within a
    # partition they sometimes go backwards: offset order must still win inside a partition.
    for ti, topic in enumerate(["a", "b", "c"]):
        for p in range(3 + ti):
            ts = 10_000
            for off in range(200):
                ts += rng.randint(-3, 20)
                recs.append(Recorded(topic, p, off, ts, f"{topic}{p}".encode(), rng.randbytes(rng.randint(0, 40)),
                                     []))
    rng.shuffle(recs)
    # The writer sees each partition in offset order (as a consumer delivers it), partitions interleaved.
    recs.sort(key=lambda r: (r.offset, rng.random()))
    w = RecordingWriter(tmp_path, ["a", "b", "c"], row_group_size=64)
    for r in recs:
        w.add(r)
    w.close()
    out = list(iter_recorded(tmp_path))
    assert len(out) == len(recs)
    for topic in "abc":
        for p in range(6):
            offs = [r.offset for r in out if r.topic == topic and r.partition == p]
            assert offs == sorted(offs)
    # Across partitions the merge is by timestamp: each record is not earlier than the head of any other
    # partition stream at that point; equivalently, the output is sorted when every partition is sorted.
    monotone = all(sorted(r.timestamp_ms for r in out if (r.topic, r.partition) == k)
                   == [r.timestamp_ms for r in out if (r.topic, r.partition) == k]
                   for k in {(r.topic, r.partition) for r in out})
    if monotone:
        assert [r.timestamp_ms for r in out] == sorted(r.timestamp_ms for r in out)
    # Only some topics.
    assert {r.topic for r in iter_recorded(tmp_path, ["b"])} == {"b"}
    with pytest.raises(ValueError, match="no topic zz"):
        list(iter_recorded(tmp_path, ["zz"]))


def test_global_timestamp_order_when_partitions_are_monotone(tmp_path: Path) -> None:
    rng = random.Random(3)
    recs = [Recorded(t, p, o, 1_000 + o * 10 + rng.randint(0, 9), None, b"v", [])
            for t in ("x", "y") for p in range(4) for o in range(300)]
    rng.shuffle(recs)
    recs.sort(key=lambda r: r.offset)  # per partition in offset order, partitions interleaved
    w = RecordingWriter(tmp_path, ["x", "y"], row_group_size=100)
    for r in recs:
        w.add(r)
    w.close()
    ts = [t for _, _, _, t, _ in iter_records(tmp_path)]
    assert ts == sorted(ts) and len(ts) == 2400


def test_row_groups_are_bounded(tmp_path: Path) -> None:
    w = RecordingWriter(tmp_path, ["t"], row_group_size=1000)
    for i in range(4500):
        w.add(Recorded("t", i % 3, i // 3, i, None, b"x" * 10, []))
        assert len(w.writers["t"]._cols["offset"]) < 1000  # never more than one row group buffered
    m = w.close()
    md = pq.ParquetFile(tmp_path / "t.parquet").metadata
    assert md.num_row_groups == 5 and m["topics"]["t"]["row_groups"] == 5
    assert max(md.row_group(i).num_rows for i in range(md.num_row_groups)) == 1000
    assert md.num_rows == 4500


def test_row_groups_bounded_by_bytes(tmp_path: Path) -> None:
    w = RecordingWriter(tmp_path, ["t"], row_group_size=10_000, row_group_bytes=100_000)
    for i in range(100):
        w.add(Recorded("t", 0, i, i, None, b"y" * 10_000, []))
    w.close()
    md = pq.ParquetFile(tmp_path / "t.parquet").metadata
    assert md.num_row_groups == 10


def test_manifest(tmp_path: Path) -> None:
    w = RecordingWriter(tmp_path, ["pp.telemetry", "pp.aggregates", "pp.events"], source="127.0.0.1:1")
    for r in _records():
        w.add(r)
    assert not (tmp_path / "manifest.json").exists()  # written last: marks a complete recording
    w.close()
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["format"] == "powerplane-recording" and m["version"] == 1
    assert m["records"] == 5 and m["first_timestamp_ms"] == 1000 and m["last_timestamp_ms"] == 1003
    assert m["topics"]["pp.telemetry"]["records"] == 3
    assert m["topics"]["pp.telemetry"]["partitions"] == {
        "0": {"records": 2, "first_offset": 0, "last_offset": 1},
        "1": {"records": 1, "first_offset": 0, "last_offset": 0}}
    assert m["topics"]["pp.aggregates"]["first_timestamp_ms"] == 1002
    assert m["topics"]["pp.events"]["records"] == 0  # an empty topic still gets a (valid, empty) file
    assert pq.read_table(tmp_path / "pp.events.parquet").num_rows == 0
    assert list(iter_recorded(tmp_path, ["pp.events"])) == []
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(ValueError, match="already holds a recording"):
        RecordingWriter(tmp_path, ["x"])


def test_incomplete_or_foreign_recording_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="interrupted"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "powerplane-recording", "version": 99}))
    with pytest.raises(ValueError, match="unsupported recording format"):
        list(iter_records(tmp_path))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line() -> None:
    out = _Tty()
    bar = ops_recording.Progress(27_000, out, every_s=0)
    bar.show(12_345, 12.0)
    assert out.getvalue() == "\r 45% 12,345/27,000 records  ETA 0:12   "
    bar.show(27_000, 3725.0)
    assert out.getvalue().endswith("100% 27,000/27,000 records  ETA 1:02:05   ")


def test_cli_parses_record_and_replay() -> None:
    from ops.cli import build_parser

    a = build_parser().parse_args(["record", "--topics", "pp.telemetry,pp.aggregates", "--out", "d",
                                   "--from-beginning", "--until-idle", "2"])
    assert a.until_idle == 2.0 and a.from_beginning and a.duration is None
    b = build_parser().parse_args(["replay", "d", "--as-fast-as-possible", "--to-prefix", "copy."])
    assert b.as_fast_as_possible and b.to_prefix == "copy." and b.topics is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", "d", "--speed", "2", "--as-fast-as-possible"])
