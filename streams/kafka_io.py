"""The streams worker's own Kafka plumbing around faust: batched keyed sends on faust's producer, the
rack-stage output in transit to the site stage, and the broker-outage log filter. Thin shells, no policy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust

from powerplane.kafka import key_partition

log = logging.getLogger("powerplane.streams")


class KeyedBatches:
    """Sends many keyed records as one produce batch per partition, on faust's own (idempotent, acks=all)
    aiokafka producer. Per-record `topic.send` costs ~65 us of Python in faust and aiokafka; a site's
    headroom is thousands of records a second, so the per-record path alone would take a core.
    Partitions are chosen by the Java client's murmur2 hash, as faust and every other producer do."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.sent = 0

    async def send(self, topic: str, items: list[tuple[bytes, bytes, float]]) -> list[asyncio.Future[Any]]:
        """Queue `items`; returns the futures that resolve when the broker has them (acks=all)."""
        futures: list[asyncio.Future[Any]] = []
        if not items:
            return futures
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        await producer.client._wait_on_metadata(topic)
        parts = sorted(producer.client.cluster.partitions_for_topic(topic) or [0])
        by_part: dict[int, list[tuple[bytes, bytes, float]]] = {}
        for it in items:
            by_part.setdefault(key_partition(it[0], parts), []).append(it)
        for p, recs in by_part.items():
            batch, n = producer.create_batch(), 0
            for key, value, ts_s in recs:
                ts_ms = int(ts_s * 1000)
                if batch.append(key=key, value=value, timestamp=ts_ms) is not None:
                    n += 1
                    continue
                if n:  # full: ship it and start another
                    futures.append(await producer.send_batch(batch, topic, partition=p))
                    batch, n = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=ts_ms) is not None:
                    n += 1
                else:  # larger than a whole batch: sent on its own, never dropped
                    futures.append(await producer.send(topic, value=value, key=key, partition=p, timestamp_ms=ts_ms))
            if n:
                futures.append(await producer.send_batch(batch, topic, partition=p))
        self.sent += len(items)
        return futures


@dataclass
class InTransit:
    """Rack-stage output on its way to the site stage of the same worker: batches taken from pp.telemetry whose
    summary record is not sent yet, sent and not acknowledged, or acknowledged at a pp.racks offset the site
    stage has not taken. The input partitions' fetch state cannot show them (taken off pp.telemetry; on pp.racks
    past the highwater the site stage's consumer last heard of), and without them a worker catching up after a
    restart said "no backlog" while a third of its partitions were between the stages (docs/reliability.md)."""

    taking: bool = False  # a batch taken whose summary record is not sent yet
    unacked: int = 0  # summary records sent, not acknowledged (nor failed)
    acked_to: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> newest offset

    def sent(self, futures: Iterable[asyncio.Future[Any]]) -> None:
        """The summary records' produce futures (each resolves to the record's metadata)."""
        for f in futures:
            self.unacked += 1
            f.add_done_callback(self._acked)

    def _acked(self, f: asyncio.Future[Any]) -> None:
        self.unacked -= 1
        if f.cancelled() or f.exception() is not None:  # not on the broker: nothing to wait for
            return
        md = f.result()  # the batch's metadata: its first offset (a summary record is sent alone)
        if md is None:
            return
        key = (md.topic, md.partition)
        self.acked_to[key] = max(self.acked_to.get(key, -1), md.offset)

    def pending(self, read_to: Mapping[tuple[str, int], int]) -> bool:
        """Output still on its way, given the offset the site stage last took per (topic, partition)."""
        return self.taking or self.unacked > 0 or any(read_to.get(tp, -1) < off for tp, off in self.acked_to.items())


@dataclass
class BrokerOutage:
    """Holds back the Kafka client's warnings while the broker cannot be reached (the client repeats them
    several times a second per connection) and says it once at the end, with counts. A logging filter on the
    client's loggers; `over()` is called by a timer once fetches are answered again."""

    since_mono: float | None = None
    since_wall_s: float = 0.0
    held: int = 0
    outages: int = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or "rebalanc" in str(record.msg):  # a rebalance is not an outage
            return True
        if self.since_mono is None:
            self.since_mono = time.monotonic()  # the first error of an outage goes through: it names the broker
            self.since_wall_s = time.time()
            return True
        self.held += 1
        return False

    def over(self, fetched_s: float) -> None:
        """The broker answered a fetch at `fetched_s` (wall clock): the outage is over if that came after it began."""
        if self.since_mono is None or fetched_s <= self.since_wall_s:
            return
        self.outages += 1
        log.warning("Kafka broker reachable again after %.0f s: %d client warnings and errors held back "
                    "(outage %d)", time.monotonic() - self.since_mono, self.held, self.outages)
        self.since_mono, self.held = None, 0
