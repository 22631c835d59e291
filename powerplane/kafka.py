"""Thin Kafka shells shared by every stage: a bounded, idempotent producer, consumers, the
dead-letter publisher and topic administration. No policy or math lives here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from powerplane import topics
from powerplane.schemas import DeadLetter

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    pass


def _retry_connect(what: str, bootstrap: str, fn: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except (KafkaTimeoutError, KafkaConnectionError):  # kafka-python 3: 'Unable to bootstrap'
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"no Kafka broker answers at {bootstrap} ({what}): start one with `powerplane dev up` "
                    f"or set PP_KAFKA_BOOTSTRAP") from None
            time.sleep(0.5)


def producer_settings(bootstrap: str, client_id: str, **overrides: Any) -> dict[str, Any]:
    """The delivery guarantees every producer of the product shares: acks=all, idempotence (no
    duplicates on retry), retries without limit, lz4 batches. Callers override timings only."""
    settings: dict[str, Any] = dict(
        bootstrap_servers=bootstrap, client_id=client_id, acks="all", enable_idempotence=True,
        compression_type="lz4", linger_ms=20, batch_size=256 * 1024, retries=2**31 - 1,
        max_in_flight_requests_per_connection=5, request_timeout_ms=15_000)
    settings.update(overrides)
    return settings


class Producer:
    """acks=all + idempotence, lz4 batches, and a bound on records in flight.

    kafka-python has no buffer_memory setting any more, so the bound is ours: beyond
    `max_in_flight` unacknowledged records, send() waits up to `max_block_s` and then drops the
    record and counts it. Every drop and every delivery failure is counted, never silent.
    """

    def __init__(self, bootstrap: str, client_id: str, *, max_in_flight: int = 100_000,
                 max_block_s: float = 5.0, linger_ms: int = 20) -> None:
        self.bootstrap = bootstrap
        self.max_in_flight = max_in_flight
        self.max_block_s = max_block_s
        self._cv = threading.Condition()
        self.in_flight = 0
        self.sent = 0
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self.last_error = ""
        self._p: KafkaProducer = _retry_connect("producer", bootstrap, lambda: KafkaProducer(
            **producer_settings(bootstrap, client_id, linger_ms=linger_ms)))

    def _done(self, ok: bool, err: Any = None) -> None:
        with self._cv:
            self.in_flight -= 1
            if ok:
                self.delivered += 1
            else:
                self.failed += 1
                self.last_error = str(err)
            self._cv.notify_all()

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None,
             partition: int | None = None) -> bool:
        """Queue one record (value None: a tombstone); `partition` None lets the key decide."""
        with self._cv:
            if self.in_flight >= self.max_in_flight and not self._cv.wait_for(
                    lambda: self.in_flight < self.max_in_flight, timeout=self.max_block_s):
                self.dropped += 1
                return False
            self.in_flight += 1
        try:
            fut = self._p.send(topic, value=value, key=key, headers=headers, timestamp_ms=timestamp_ms,
                               partition=partition)
        except KafkaError as e:
            self._done(False, e)
            log.error("send to %s failed: %s", topic, e)
            return False
        fut.add_callback(lambda _md: self._done(True))
        fut.add_errback(lambda e: self._done(False, e))
        self.sent += 1
        return True

    def flush(self, timeout_s: float | None = 30.0) -> None:
        self._p.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush what is buffered, then close: called on every shutdown path."""
        try:
            self._p.flush(timeout=timeout_s)
        finally:
            self._p.close(timeout=timeout_s)


def consumer(bootstrap: str, group: str | None, *topic_names: str, from_beginning: bool = False,
             **kw: Any) -> KafkaConsumer:
    opts: dict[str, Any] = {"enable_auto_commit": group is not None,
                            "auto_offset_reset": "earliest" if from_beginning else "latest",
                            # kafka-python's consumer default is 305 s: one lost request would stall a
                            # stage for five minutes. It must stay above the 10 s session timeout.
                            "request_timeout_ms": 20_000}
    opts.update(kw)
    cons: KafkaConsumer = _retry_connect("consumer", bootstrap, lambda: KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, **opts))
    # Learn the topics' partitions before joining the group: a group leader without that metadata
    # assigns itself nothing ("No partition metadata for topic ...") and can sit idle, consuming nothing.
    deadline = time.monotonic() + 30.0
    for t in topic_names:
        while not cons.partitions_for_topic(t):
            if time.monotonic() > deadline:
                cons.close()
                raise BrokerUnavailable(f"topic '{t}' has no partitions at {bootstrap}: create the topics with "
                                        f"`powerplane topics create`")
            time.sleep(0.2)
    if topic_names:
        cons.subscribe(list(topic_names))
    return cons


class DeadLetters:
    """Publishes a bad record with its reason and origin; logs one line saying what and where."""

    def __init__(self, producer: Producer, component: str) -> None:
        self.producer = producer
        self.component = component
        self.count = 0

    def publish(self, dl: DeadLetter) -> None:
        self.count += 1
        key = dl.key.decode(errors="replace") if dl.key else "-"
        log.warning("%s: bad record %s[%d]@%d key=%s: %s -> %s", self.component, dl.source_topic,
                    dl.partition, dl.offset, key, dl.reason, topics.DEADLETTER.name)
        dl.extra.setdefault("component", self.component)
        self.producer.send(topics.DEADLETTER.name, value=dl.value, key=dl.source_topic.encode(),
                           headers=dl.headers())


def create_topics(bootstrap: str, wanted: Iterable[topics.Topic] = topics.ALL,
                  timeout_s: float = 30.0) -> list[str]:
    """Create missing topics with their declared partitions and configs, replicated as the cluster's
    broker count allows (`topics.replication`); return those created."""
    # The client's own bootstrap wait (30 s by default) must not outlast ours.
    admin: KafkaAdminClient = _retry_connect("admin", bootstrap, lambda: KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="powerplane-admin",
        bootstrap_timeout_ms=max(1, int(timeout_s * 1000))), timeout_s)
    try:
        existing = set(admin.list_topics())
        # Replicas as the cluster allows (topics.replication): 3 copies, 2 in sync, on a 3-broker cluster.
        brokers = len(admin.describe_cluster()["brokers"])
        rf = topics.replication(brokers)[0]
        new = [NewTopic(t.name, t.partitions, rf, topic_configs=t.configs(brokers))
               for t in wanted if t.name not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # raced with another creator: fine, the topic is there
        return [t.name for t in new]
    finally:
        admin.close()
