"""Thin shells that feed a DashState: the Kafka topics (live) and bounded reads from their ends.

No consumer group: every dashboard sees every record, and a dashboard starting up reads back a bounded
tail of each partition so the page is filled at once instead of after the next window.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from powerplane import topics
from powerplane.kafka import BrokerUnavailable, _retry_connect, process_auth
from powerplane.schemas import Record, SchemaError, decode_any

log = logging.getLogger("powerplane.dashboard")

TOPICS: tuple[str, ...] = (topics.AGGREGATES.name, topics.HEADROOM.name, topics.EVENTS.name,
                           topics.COMMANDS.name, topics.ACKS.name)
# Records read back per partition at start: about a minute of aggregates at the lab site, the recent
# emergencies and commands everywhere. pp.headroom is compacted, so its tail is the latest per level.
BACKFILL: dict[str, int] = {topics.AGGREGATES.name: 2000, topics.HEADROOM.name: 5000, topics.EVENTS.name: 1000,
                            topics.COMMANDS.name: 500, topics.ACKS.name: 500}


@dataclass
class FeedStats:
    records: dict[str, int] = field(default_factory=dict)
    bad: dict[str, int] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)  # records behind the end, per topic
    last_error: str = ""


def tail_consumer(bootstrap: str, topic_names: Iterable[str], backfill: dict[str, int],
                  connect_timeout_s: float = 30.0) -> tuple[KafkaConsumer, dict[TopicPartition, int]]:
    """A consumer assigned every partition of the topics, positioned `backfill[topic]` records before the
    end; returns it with the end offsets it saw. Raises BrokerUnavailable in one line when there is no
    broker, or a topic is missing."""
    cons: KafkaConsumer = _retry_connect("consumer", bootstrap, lambda: KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, request_timeout_ms=20_000,
        bootstrap_timeout_ms=int(connect_timeout_s * 1000), **process_auth().kafka_python()), connect_timeout_s)
    try:
        parts: list[TopicPartition] = []
        for t in topic_names:
            ids = cons.partitions_for_topic(t)
            if not ids:
                raise BrokerUnavailable(f"topic '{t}' does not exist at {bootstrap}: create the topics with "
                                        "`powerplane topics create`")
            parts.extend(TopicPartition(t, p) for p in sorted(ids))
        cons.assign(parts)
        begin = cons.beginning_offsets(parts)
        end = cons.end_offsets(parts)
        for tp in parts:
            cons.seek(tp, max(begin[tp], end[tp] - backfill.get(tp.topic, 0)))
        return cons, end
    except BaseException:
        cons.close()
        raise


def _decode(topic: str, value: bytes | None, stats: FeedStats) -> Record | None:
    if value is None:
        return None  # a tombstone on a compacted topic: nothing to show
    try:
        return decode_any(value)
    except SchemaError as e:
        n = stats.bad.get(topic, 0) + 1
        stats.bad[topic] = n
        stats.last_error = f"{topic}: {e}"
        if n == 1 or n % 1000 == 0:  # one line, not a flood: the dead-letter topic is the place for detail
            log.warning("dashboard: bad record on %s (%d so far): %s", topic, n, e)
        return None


def read_tail(bootstrap: str, apply: Callable[[Record], None], topic_names: Iterable[str] = TOPICS,
              per_partition: int = 2000, timeout_s: float = 10.0, connect_timeout_s: float = 5.0) -> FeedStats:
    """Fold the last `per_partition` records of every partition, up to the end offsets seen at the start
    (a bounded read: records arriving meanwhile are left for next time)."""
    names = list(topic_names)
    stats = FeedStats()
    cons, end = tail_consumer(bootstrap, names, dict.fromkeys(names, per_partition), connect_timeout_s)
    try:
        deadline = time.monotonic() + timeout_s
        left = {tp for tp in end if cons.position(tp) < end[tp]}
        while left and time.monotonic() < deadline:
            for tp, msgs in cons.poll(timeout_ms=200).items():
                for m in msgs:
                    if m.offset >= end[tp]:
                        continue
                    stats.records[tp.topic] = stats.records.get(tp.topic, 0) + 1
                    rec = _decode(tp.topic, m.value, stats)
                    if rec is not None:
                        apply(rec)
            left = {tp for tp in left if cons.position(tp) < end[tp]}
        stats.lag = {tp.topic: stats.lag.get(tp.topic, 0) + end[tp] - cons.position(tp) for tp in left}
        return stats
    finally:
        cons.close()


class LiveFeed:
    """Consumes the topics in a thread and folds every record into the state under `lock`."""

    def __init__(self, bootstrap: str, apply: Callable[[Record], None], lock: threading.Lock,
                 on_record: Callable[[str, bool], None] | None = None,
                 backfill: dict[str, int] | None = None) -> None:
        self.bootstrap = bootstrap
        self.apply = apply
        self.lock = lock
        self.on_record = on_record
        self.backfill = BACKFILL if backfill is None else backfill
        self.stats = FeedStats()
        self.stop = threading.Event()
        self.ready = threading.Event()  # assigned and positioned: records from now on are seen
        self._thread: threading.Thread | None = None
        self._cons: Any = None

    def open(self) -> None:
        """Connect in the caller's thread so that a missing broker is a one-line error at startup."""
        self._cons, _ = tail_consumer(self.bootstrap, TOPICS, self.backfill)
        self.ready.set()

    def start(self) -> None:
        if self._cons is None:
            self.open()
        self._thread = threading.Thread(target=self._run, name="dashboard-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cons = self._cons
        next_lag = 0.0
        try:
            while not self.stop.is_set():
                try:
                    batch = cons.poll(timeout_ms=200, max_records=5000)
                except Exception as e:  # a broker hiccup must not kill the page's feed
                    self.stats.last_error = str(e)
                    log.warning("dashboard: poll failed (%s); retrying", e)
                    self.stop.wait(1.0)
                    continue
                decoded: list[Record] = []
                for tp, msgs in batch.items():
                    for m in msgs:
                        rec = _decode(tp.topic, m.value, self.stats)
                        self.stats.records[tp.topic] = self.stats.records.get(tp.topic, 0) + 1
                        if self.on_record is not None:
                            self.on_record(tp.topic, rec is not None)
                        if rec is not None:
                            decoded.append(rec)
                if decoded:
                    with self.lock:  # decode outside the lock, fold inside: the page's tick waits less
                        for rec in decoded:
                            self.apply(rec)
                if time.monotonic() >= next_lag:
                    next_lag = time.monotonic() + 5.0
                    self._update_lag(cons)
        finally:
            cons.close()

    def _update_lag(self, cons: Any) -> None:
        try:
            parts = list(cons.assignment())
            end = cons.end_offsets(parts)
            lag: dict[str, int] = {}
            for tp in parts:
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, end[tp] - cons.position(tp))
            self.stats.lag = lag
        except Exception as e:  # lag is a metric; never worth stopping for
            self.stats.last_error = str(e)

    def close(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        elif self._cons is not None:
            self._cons.close()
