"""Record -> replay -> record on the real broker gives identical records (keys, values, headers,
timestamps, partitions), through the CLI, with nothing but Kafka running."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from ops import cli
from ops.recording import replay
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import Producer, create_topics
from powerplane.recording import Recorded, iter_recorded, load_manifest

Seq = dict[tuple[str, int], list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]]]


def _per_partition(recs: list[Recorded]) -> Seq:
    out: Seq = defaultdict(list)
    for r in sorted(recs, key=lambda r: (r.topic, r.partition, r.offset)):
        out[(r.topic, r.partition)].append((r.key, r.value, r.headers, r.timestamp_ms))
    return dict(out)


@pytest.fixture
def fresh_topics(cfg: Config) -> tuple[str, str]:
    """Two topics of this test's own (unique names), so other tests' records never mix in."""
    marker = uuid.uuid4().hex[:8]
    a = topics.Topic(f"pp.test.rr{marker}.a", 3, "test", topics.DAY_MS)
    b = topics.Topic(f"pp.test.rr{marker}.b", 2, "test", topics.DAY_MS)
    copy_a = topics.Topic(f"copy.{a.name}", 3, "test", topics.DAY_MS)
    assert set(create_topics(cfg.kafka_bootstrap, [a, b, copy_a])) == {a.name, b.name, copy_a.name}
    return a.name, b.name


def _produce(cfg: Config, a: str, b: str) -> int:
    base = int(time.time() * 1000) - 60_000  # in the past: brokers refuse timestamps far in the future
    p = Producer(cfg.kafka_bootstrap, "test-record-replay")
    sent = 0
    for i in range(300):
        topic = a if i % 3 else b
        key = None if i % 7 == 0 else f"rack-{i % 11}".encode()
        value: bytes | None = bytes([i % 256, 0, 255]) * (i % 5)  # binary; empty when i % 5 == 0
        if i == 43:
            value = None  # a tombstone (kafka-python needs a key with it)
        headers = [("pp.i", str(i).encode()), ("bin", bytes([0, i % 256]))] if i % 2 else []
        if i % 13 == 0:
            headers.append(("empty", b""))
        # Timestamps over ~1.5 s, sometimes going backwards inside a partition.
        ts = base + i * 5 - (17 if i % 10 == 9 else 0)
        part = i % 2 if key is None else None  # null keys: a known partition, so the test is deterministic
        assert p.send(topic, value, key=key, headers=headers, timestamp_ms=ts, partition=part)
        sent += 1
    p.close()
    assert p.delivered == sent and p.failed == 0
    return sent


def test_record_replay_record_is_identical(cfg: Config, fresh_topics: tuple[str, str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    a, b = fresh_topics
    n = _produce(cfg, a, b)

    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(["record", "--topics", f"{a},{b}", "--out", str(first), "--from-beginning", "--until-end"]) == 0
    m1 = load_manifest(first)
    assert m1["records"] == n
    rec1 = list(iter_recorded(first))
    assert [r.timestamp_ms for r in rec1] != sorted(r.timestamp_ms for r in rec1)  # backwards steps kept...
    seq1 = _per_partition(rec1)
    assert sum(len(v) for v in seq1.values()) == n
    assert any(v is None for s in seq1.values() for _, v, _, _ in s)
    assert any(k is None for s in seq1.values() for k, _, _, _ in s)
    assert any(v == b"" for s in seq1.values() for _, v, _, _ in s)

    t0 = time.monotonic()
    assert cli.main(["replay", str(first), "--as-fast-as-possible"]) == 0
    replay_s = time.monotonic() - t0
    err = capsys.readouterr().err
    assert "100% 300/300 records  ETA 0:00" in err and "replayed 300/300 records" in err

    assert cli.main(["record", "--topics", f"{a},{b}", "--out", str(second), "--from-beginning", "--until-end"]) == 0
    seq2 = _per_partition(list(iter_recorded(second)))
    # Each partition now holds the original records followed by the replayed ones: both halves identical.
    assert seq2.keys() == seq1.keys()
    for tp, s1 in seq1.items():
        s2 = seq2[tp]
        assert len(s2) == 2 * len(s1), tp
        assert s2[:len(s1)] == s1, tp
        assert s2[len(s1):] == s1, tp
    assert replay_s < 10


def test_paced_replay_into_other_topics(cfg: Config, fresh_topics: tuple[str, str], tmp_path: Path) -> None:
    a, b = fresh_topics
    _produce(cfg, a, b)
    rec = tmp_path / "rec"
    from ops.recording import record

    record(cfg.kafka_bootstrap, [a], rec, from_beginning=True, until_end=True, progress=None)
    m = load_manifest(rec)
    span_s = (m["last_timestamp_ms"] - m["first_timestamp_ms"]) / 1000
    stats = replay(cfg.kafka_bootstrap, rec, speed=5.0, to_prefix="copy.", progress=None)
    assert stats.records == stats.delivered == m["records"] == 200
    assert span_s / 5 * 0.8 <= stats.elapsed_s < span_s / 5 + 5  # paced by the original inter-arrival times
    out = tmp_path / "out"
    record(cfg.kafka_bootstrap, [f"copy.{a}"], out, from_beginning=True, until_end=True, progress=None)
    got = {(tp[1]): s for tp, s in _per_partition(list(iter_recorded(out))).items()}
    want = {(tp[1]): s for tp, s in _per_partition(list(iter_recorded(rec))).items()}
    assert got == want
    with pytest.raises(ValueError, match="does not exist"):
        replay(cfg.kafka_bootstrap, rec, to_prefix="nope.", progress=None)
