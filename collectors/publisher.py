"""Durable publishing: frames -> on-disk spool -> Kafka, in order, each frame once.

`publish` only appends to the spool (a local disk write), so a slow or absent broker never blocks
collection. One sender thread drains the spool in order through an idempotent, acks=all producer,
one bounded batch in flight at a time, and advances the spool's cursor only after Kafka has
acknowledged the whole batch. While the broker is down the producer keeps retrying that batch (its
delivery timeout is effectively infinite, so records are never expired and re-sent, which could
duplicate them) and everything newer waits on disk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from collectors.spool import Spool
from powerplane import topics
from powerplane.kafka import ClientAuth, diagnose, process_auth, producer_settings
from powerplane.schemas import FacilityReading, TelemetryFrame

log = logging.getLogger("powerplane.collectors.publisher")


@dataclass
class PublisherStats:
    spooled: int = 0
    delivered: int = 0
    failed: int = 0  # refused by the broker for good (e.g. too large); logged with the rack
    broker_up: bool = False
    outage_started_s: float | None = None


class SpooledPublisher:
    def __init__(self, bootstrap: str, spool: Spool, client_id: str = "powerplane-collector", *,
                 batch_records: int = 2000, topic: str = topics.TELEMETRY.name,
                 auth: ClientAuth | None = None, facility_topic: str = topics.FACILITY.name) -> None:
        self.bootstrap = bootstrap
        self.auth = auth or process_auth()
        self.spool = spool
        self.client_id = client_id
        self.batch_records = batch_records
        self.topic = topic
        self.facility_topic = facility_topic  # UPS, transfer switch and environment sensor readings
        self.stats = PublisherStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: KafkaProducer | None = None

    # ---- collection side --------------------------------------------------------------------
    def publish(self, frames: Sequence[TelemetryFrame | FacilityReading]) -> None:
        if frames:
            self.spool.append_many([(self.facility_topic if isinstance(f, FacilityReading) else self.topic, f.key(),
                                     f.encode(), int(f.ts_s * 1000)) for f in frames])
            self.stats.spooled += len(frames)

    # ---- sender -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spool-sender", daemon=True)
        self._thread.start()

    def _connect(self) -> KafkaProducer | None:
        if self.auth.problem:  # no credential yet (say, before `dev up`): spool, and say why on every outage
            self._down(self.auth.problem)
            return None
        try:
            return KafkaProducer(**producer_settings(
                self.bootstrap, self.client_id, request_timeout_ms=10_000,
                delivery_timeout_ms=2**31 - 1,  # never expire: the spool already bounds what waits
                bootstrap_timeout_ms=5_000,
                reconnect_backoff_max_ms=1_000, auth=self.auth))  # notice a returning broker within a second
        except KafkaError as e:
            refused = diagnose(self.bootstrap, self.auth)  # a broker that refuses us, not one that is down
            self._down(refused[0] if refused else f"cannot connect: {type(e).__name__}")
            return None

    def _down(self, why: str) -> None:
        if self.stats.broker_up or self.stats.outage_started_s is None:
            log.warning("Kafka at %s unreachable (%s): spooling to %s (%d pending)", self.bootstrap, why,
                        self.spool.dir, self.spool.pending)
            self.stats.outage_started_s = time.time()
        self.stats.broker_up = False

    def _up(self) -> None:
        if not self.stats.broker_up:
            if self.stats.outage_started_s is not None and self.stats.delivered:
                log.info("Kafka is back after %.0f s; draining %d spooled frame(s)",
                         time.time() - self.stats.outage_started_s, self.spool.pending)
            self.stats.broker_up = True
            self.stats.outage_started_s = None

    def _run(self) -> None:
        next_seq = self.spool.cursor
        while not self._stop.is_set() or self.spool.pending:
            if self._producer is None:
                self._producer = self._connect()
                if self._producer is None:
                    if self._stop.wait(1.0):
                        break
                    continue
            next_seq = max(next_seq, self.spool.cursor)  # segments dropped while full
            recs = self.spool.read(next_seq, self.batch_records)
            if not recs:
                if self._stop.is_set():
                    break
                self.spool.wait(0.2)
                continue
            futures: list[tuple[Any, Any]] = [
                (r, self._producer.send(r.topic, key=r.key, value=r.value, timestamp_ms=r.ts_ms)) for r in recs]
            if not self._await(futures):
                break  # stopping with a batch still unacknowledged: it stays in the spool for next start
            for r, fut in futures:
                if fut.failed():
                    self.stats.failed += 1
                    log.error("frame seq %d (key %s) refused by Kafka for good: %s", r.seq, r.key, fut.exception)
                else:
                    self.stats.delivered += 1
            next_seq = recs[-1].seq + 1
            self.spool.commit(next_seq)
            self._up()

    def _await(self, futures: list[tuple[Any, Any]]) -> bool:
        """Wait until every send is settled; False if asked to stop first (after a grace period)."""
        assert self._producer is not None
        stop_deadline: float | None = None
        while True:
            try:
                self._producer.flush(timeout=1.0)
            except KafkaTimeoutError:
                pass
            if all(f.is_done for _, f in futures):
                return True
            self._down("sends not acknowledged")
            if self._stop.is_set():
                stop_deadline = stop_deadline or time.monotonic() + self.close_grace_s
                if time.monotonic() > stop_deadline:
                    return False

    close_grace_s = 10.0

    def close(self, timeout_s: float = 10.0) -> None:
        """Try to deliver what is spooled for up to timeout_s, then stop; the rest stays on disk."""
        self.close_grace_s = min(self.close_grace_s, timeout_s)
        deadline = time.monotonic() + timeout_s
        while self.spool.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._producer is not None:
            self._producer.close(timeout=5)
        self.spool.close()
        if self.spool.pending:
            log.warning("%d frame(s) left in the spool %s; they are sent on the next start",
                        self.spool.pending, self.spool.dir)
