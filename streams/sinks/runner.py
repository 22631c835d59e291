"""Drives a sink from Kafka with at-least-once delivery and backpressure.

Offsets are committed only after the sink has written the batch. While the store is unavailable
the runner pauses its partitions (it keeps polling so the group does not evict it), retries with
exponential backoff (or the server's Retry-After), and resumes where it stopped: memory stays bounded
by one batch. Points are idempotent in the store (same series and timestamp), so a replay after a crash
rewrites rather than duplicates.

Kafka is the bounded buffer: its retention (7 days for aggregates) is the bound. The only way records
are lost is an outage longer than that; the runner then counts and logs what retention deleted before
it was written (`SinkStats.dropped`), instead of letting the consumer skip ahead silently.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from kafka import KafkaConsumer, OffsetAndMetadata
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError

from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import ClientAuth, DeadLetters, OutagePoll, Producer, client_auth, consumer
from powerplane.metrics import ConsumerLag, kafka_python_lags
from powerplane.schemas import Ack, DeadLetter, Record, SchemaError, decode_any
from powerplane.signing import Keyring, ack_key_path, ack_refused_event, load_keyring
from streams.sinks.base import RetryableSinkError, Sink

log = logging.getLogger("powerplane.sink")


@dataclass
class SinkStats:
    written: int = 0
    batches: int = 0
    retries: int = 0
    dead_letters: int = 0
    dropped: int = 0  # records Kafka's retention deleted before the sink wrote them
    uncommitted: int = 0  # batches written whose offsets a group rebalance kept from being committed
    acks_refused: int = 0  # acks not signed by an actuator key: dead-lettered (counted there too), not stored
    last_error: str = ""


def lost_to_retention(cons: KafkaConsumer, committed: bool) -> int:
    """Records between where this group stood (its committed offset, or its position) and the oldest
    record still retained: they are gone, and the consumer would skip them without a word."""
    parts = list(cons.assignment())
    if not parts:
        return 0
    begin = cons.beginning_offsets(parts)
    lost = 0
    for tp in parts:
        at = cons.committed(tp) if committed else cons.position(tp)
        if at is not None and begin.get(tp, 0) > at:
            lost += begin[tp] - at
    return lost


def _report_lost(stats: SinkStats, sink: Sink, cons: KafkaConsumer, committed: bool) -> None:
    try:
        lost = lost_to_retention(cons, committed)
    except Exception as e:  # a failed check must not stop the sink
        log.warning("sink %s: cannot check for records lost to retention: %s", sink.name, e)
        return
    if lost:
        stats.dropped += lost
        log.error("sink %s: %d record(s) expired from Kafka (retention) before they were written; they are "
                  "lost (total dropped %d)", sink.name, lost, stats.dropped)


def _refuse_ack(stats: SinkStats, producer: Producer, ack: Ack, reason: str) -> None:
    """An ack no actuator signed is not stored as what happened: it raises a security event."""
    stats.acks_refused += 1
    ev = ack_refused_event(ack, reason, "sink")
    producer.send(topics.EVENTS.name, ev.encode(), key=ev.id.encode())


class SinkMetrics:
    """Prometheus collector over a running sink's stats, read at scrape time."""

    def __init__(self, name: str, stats: SinkStats) -> None:
        self.name, self.stats = name, stats

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.stats
        for metric, doc, value in (("points_written", "points written to the store", st.written),
                                   ("write_batches", "write batches", st.batches),
                                   ("write_retries", "writes retried (store down or pushing back)", st.retries),
                                   ("dead_letters", "records sent to the dead-letter topic", st.dead_letters),
                                   ("dropped_records", "records Kafka's retention deleted before they were written",
                                    st.dropped),
                                   ("uncommitted_batches",
                                    "written batches a group rebalance kept from being committed", st.uncommitted),
                                   ("acks_refused", "acks not signed by an actuator key", st.acks_refused)):
            c = CounterMetricFamily(f"powerplane_sink_{metric}", doc, labels=["sink"])
            c.add_metric([self.name], float(value))
            yield c
        up = GaugeMetricFamily("powerplane_sink_store_up", "1 when the last write succeeded", labels=["sink"])
        up.add_metric([self.name], 0.0 if st.last_error else 1.0)
        yield up


def _dead_letter(stats: SinkStats, dlq: DeadLetters, tp: Any, m: Any, reason: str) -> None:
    stats.dead_letters += 1
    dlq.publish(DeadLetter(tp.topic, tp.partition, m.offset, reason, m.key, m.value or b""))


def write_batch(sink: Sink, items: list[tuple[Record, Any, Any]], stats: SinkStats, dlq: DeadLetters) -> None:
    """Write (record, partition, message) items. A record the sink cannot write for a reason other than the
    store being away (RetryableSinkError, raised to the caller) is dead-lettered on its own and the rest are
    written: one bad record must not stop the sink, nor stop it again on every restart."""
    try:
        stats.written += sink.write([r for r, _, _ in items])
        return
    except RetryableSinkError:
        raise
    except Exception as e:
        log.warning("sink %s: a batch of %d record(s) failed (%s: %s); writing them one by one", sink.name,
                    len(items), type(e).__name__, e)
    for rec, tp, m in items:
        try:
            stats.written += sink.write([rec])
        except RetryableSinkError:
            raise
        except Exception as e:
            _dead_letter(stats, dlq, tp, m, f"sink {sink.name} cannot write {rec.SCHEMA}: {type(e).__name__}: {e}")


def _take(batch: dict[Any, list[Any]], ack_keyring: Keyring | None, stats: SinkStats, producer: Producer,
          dlq: DeadLetters) -> tuple[list[tuple[Record, Any, Any]], dict[object, OffsetAndMetadata]]:
    """The records of a polled batch the sink may write, and the offsets to commit once they are written.
    Decode refuses what no consumer can take (a NaN time, an inf load) and an ack no actuator signed: both
    are dead-lettered (the forged ack also raises a security event)."""
    records: list[tuple[Record, Any, Any]] = []
    offsets: dict[object, OffsetAndMetadata] = {}
    for tp, msgs in batch.items():
        for m in msgs:
            try:
                rec = decode_any(m.value)
                if ack_keyring is not None and isinstance(rec, Ack):
                    refused = ack_keyring.verify(rec)
                    if refused is not None:
                        _refuse_ack(stats, producer, rec, refused)
                        raise SchemaError(refused)
                records.append((rec, tp, m))
            except SchemaError as e:
                _dead_letter(stats, dlq, tp, m, str(e))
        offsets[tp] = OffsetAndMetadata(msgs[-1].offset + 1, "", -1)
    return records, offsets


def run(cfg: Config, sink: Sink, stop: threading.Event, *, batch_max: int = 5000,
        backoff_max_s: float = 30.0, group: str | None = None, stats: SinkStats | None = None,
        ack_keyring: Keyring | None = None, registry: Any = None, auth: ClientAuth | None = None) -> SinkStats:
    """Consume the sink's topics and write them, committing only what the store took. Pass `stats` to
    watch it while it runs (the /metrics collector does). Acks are stored only when an actuator signed
    them (`ack_keyring`, default the config's, created if missing). `registry` (a served prometheus_client
    CollectorRegistry) gets the sink's metrics and its consumer lag."""
    stats = stats if stats is not None else SinkStats()
    if ack_keyring is None and topics.ACKS.name in sink.topics:
        ack_keyring = load_keyring(ack_key_path(cfg.signing_key_file, cfg.ack_key_file), cfg.ack_key_id, create=True)
    auth = auth or client_auth(cfg, "sink")  # tests with their own groups and topics pass the admin's
    producer = Producer(cfg.kafka_bootstrap, f"powerplane-sink-{sink.name}", auth=auth)
    dlq = DeadLetters(producer, f"sink-{sink.name}")
    group = group or f"powerplane-sink-{sink.name}"
    cons = consumer(cfg.kafka_bootstrap, group, *sink.topics,
                    from_beginning=True, enable_auto_commit=False, max_poll_records=batch_max, auth=auth)
    if registry is not None:
        registry.register(SinkMetrics(sink.name, stats))
        registry.register(ConsumerLag(group, partial(kafka_python_lags, cons)))
    sink.start()
    checked_start = False
    poll = OutagePoll(cons, f"sink {sink.name}", stop)
    try:
        while not stop.is_set():
            batch = poll(timeout_ms=200, max_records=batch_max)
            sink.tick(time.time())
            if not checked_start and cons.assignment():
                checked_start = True
                _report_lost(stats, sink, cons, committed=True)
            if not batch:
                continue
            records, offsets = _take(batch, ack_keyring, stats, producer, dlq)
            delay = 0.5
            while True:
                try:
                    write_batch(sink, records, stats, dlq)
                    stats.batches += 1
                    break
                except RetryableSinkError as e:
                    stats.retries += 1
                    if stats.last_error != str(e):
                        log.warning("sink %s: %s; holding %d record(s) and retrying (Kafka keeps the rest)",
                                    sink.name, e, len(records))
                    stats.last_error = str(e)
                    cons.pause(*cons.assignment())
                    poll(timeout_ms=0)  # keeps group membership alive while paused
                    wait = delay if e.retry_after_s is None else e.retry_after_s
                    if stop.wait(wait):
                        # Shutting down mid-outage: do not commit; the batch is read again next start.
                        return stats
                    delay = min(delay * 2, backoff_max_s)
            if stats.last_error:
                log.info("sink %s: store is back; delivered the held batch", sink.name)
                stats.last_error = ""
                _report_lost(stats, sink, cons, committed=False)
            cons.resume(*cons.paused())
            try:
                cons.commit(offsets)
            except KafkaError as e:
                if not (e.retriable or isinstance(e, (CommitFailedError, RebalanceInProgressError))):
                    raise
                # The group is rebalancing (a member joined or left) or the broker is away: the batch is in the
                # store but its offsets are not committed, so it is written again (by whoever reads these
                # partitions next). That is harmless (a point with the same series and time overwrites
                # itself); dying here is not.
                stats.uncommitted += 1
                log.warning("sink %s: offsets of a written batch not committed (%s); it may be written again",
                            sink.name, type(e).__name__)
    finally:
        sink.close()
        cons.close()
        producer.close()
    return stats
