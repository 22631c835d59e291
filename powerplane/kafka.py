"""Thin Kafka shells shared by every stage: a bounded, idempotent producer, consumers, the
dead-letter publisher and topic administration. No policy or math lives here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import errors as kerr
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    NewTopic,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from powerplane import access, topics
from powerplane.kafka_auth import (
    BrokerUnavailable,
    ClientAuth,
    KafkaAccessError,
    client_auth,
    dev_security_dir,
    diagnose,
    explain,
    listening,
    password_path,
    process_auth,
    refused,
    set_process_auth,
)
from powerplane.schemas import DeadLetter


def key_partition(key: bytes, partitions: Sequence[int]) -> int:
    """The partition a keyed record goes to: what kafka-python's DefaultPartitioner, aiokafka's and the Java
    client compute (murmur2 of the key, made positive, modulo the count, among the sorted partitions). Every
    producer here uses it, so consumers that own keys (actuators, the site stage) find their partitions by it."""
    ordered = partitions if isinstance(partitions, range) else sorted(partitions)
    return int(ordered[_positive_murmur2(key) % len(ordered)])


# Keys are level and rack ids, a bounded set per site (~3,700 for the 100 MW site), hashed again every second:
# pure-Python murmur2 was 6 % of the streams worker's catch-up CPU. Bounded for a 10 GW site's ids.
@lru_cache(maxsize=1 << 18)
def _positive_murmur2(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


__all__ = [
    "BrokerUnavailable",
    "ClientAuth",
    "DeadLetters",
    "KafkaAccessError",
    "Producer",
    "admin_client",
    "apply_acls",
    "client_auth",
    "consumer",
    "create_topics",
    "dev_security_dir",
    "diagnose",
    "explain",
    "password_path",
    "process_auth",
    "producer_settings",
    "set_process_auth",
]

log = logging.getLogger(__name__)
REFUSED_FOR_S = 3.0


def _retry_connect(what: str, bootstrap: str, fn: Callable[[], Any], timeout_s: float = 30.0,
                   auth: ClientAuth | None = None) -> Any:
    auth = auth or process_auth()
    if auth.problem:  # no credential: "no broker" first when there is none, which `dev up` fixes both
        if not listening(bootstrap):
            raise BrokerUnavailable(f"no Kafka broker answers at {bootstrap} ({what}): start one with `powerplane "
                                    f"dev up` or set PP_KAFKA_BOOTSTRAP")
        raise KafkaAccessError(f"{what}: {auth.problem}")
    deadline = time.monotonic() + timeout_s
    refused_since = 0.0
    while True:
        try:
            return fn()
        except (KafkaTimeoutError, KafkaConnectionError):  # kafka-python 3: 'Unable to bootstrap'
            verdict = diagnose(bootstrap, auth)
            now = time.monotonic()
            refused_since = (refused_since or now) if verdict else 0.0
            # A TLS failure is certain at once; a connection closed after TLS could be a broker still starting,
            # so it must last a few seconds before it reads as refused credentials.
            if verdict and (verdict[1] or now - refused_since > REFUSED_FOR_S or now > deadline):
                raise KafkaAccessError(f"{what}: {verdict[0]}") from None
            if now > deadline:
                raise BrokerUnavailable(
                    f"no Kafka broker answers at {bootstrap} ({what}): start one with `powerplane dev up` "
                    f"or set PP_KAFKA_BOOTSTRAP") from None
            time.sleep(0.5)
        except KafkaError as e:  # refused, not absent: one line naming the principal, not a retry loop
            raise KafkaAccessError(explain(e, auth, what=f"{what} at {bootstrap}")) from None


def producer_settings(bootstrap: str, client_id: str, *, auth: ClientAuth | None = None,
                      **overrides: Any) -> dict[str, Any]:
    """The delivery guarantees every producer of the product shares: acks=all, idempotence (no
    duplicates on retry), retries without limit, lz4 batches; the credentials of `auth` (default: the
    process's). Callers override timings only."""
    settings: dict[str, Any] = dict(
        bootstrap_servers=bootstrap, client_id=client_id, acks="all", enable_idempotence=True,
        compression_type="lz4", linger_ms=20, batch_size=256 * 1024, retries=2**31 - 1,
        max_in_flight_requests_per_connection=5, request_timeout_ms=15_000,
        bootstrap_timeout_ms=5_000,  # each try; _retry_connect retries, and says why a broker refuses
        **(auth or process_auth()).kafka_python())
    settings.update(overrides)
    return settings


class Producer:
    """acks=all + idempotence, lz4 batches, and a bound on records in flight.

    kafka-python has no buffer_memory setting any more, so the bound is ours: beyond
    `max_in_flight` unacknowledged records, send() waits up to `max_block_s` and then drops the
    record and counts it. Every drop and every delivery failure is counted, never silent.
    """

    def __init__(self, bootstrap: str, client_id: str, *, max_in_flight: int = 100_000,
                 max_block_s: float = 5.0, linger_ms: int = 20, auth: ClientAuth | None = None) -> None:
        self.bootstrap = bootstrap
        self.auth = auth or process_auth()
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
            **producer_settings(bootstrap, client_id, linger_ms=linger_ms, auth=self.auth)), auth=self.auth)

    def _done(self, ok: bool, err: Any = None, topic: str = "") -> None:
        with self._cv:
            self.in_flight -= 1
            if ok:
                self.delivered += 1
            else:
                self.failed += 1
                self.last_error = explain(err, self.auth, topic=topic, op="write")
            self._cv.notify_all()
        if not ok and refused(err):
            log.error("%s", self.last_error)

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None,
             partition: int | None = None, on_done: Callable[[bool], None] | None = None) -> bool:
        """Queue one record (value None: a tombstone); `partition` None lets the key decide. `on_done(ok)` is
        called from the producer's I/O thread once the broker has acknowledged the record (or it failed)."""
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
            self._done(False, e, topic)
            if not refused(e):  # that one _done has logged, naming the principal
                log.error("send to %s failed: %s", topic, self.last_error)
            return False
        fut.add_callback(lambda _md: self._done(True))
        fut.add_errback(lambda e: self._done(False, e, topic))
        if on_done is not None:
            fut.add_callback(lambda _md: on_done(True))
            fut.add_errback(lambda _e: on_done(False))
        self.sent += 1
        return True

    def partitions_for(self, topic: str) -> set[int]:
        """The topic's partitions, fetching its metadata now: a first send then does not wait for it."""
        return set(self._p.partitions_for(topic) or ())

    def flush(self, timeout_s: float | None = 30.0) -> None:
        self._p.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush what is buffered, then close: called on every shutdown path."""
        try:
            self._p.flush(timeout=timeout_s)
        finally:
            self._p.close(timeout=timeout_s)


def consumer(bootstrap: str, group: str | None, *topic_names: str, from_beginning: bool = False,
             auth: ClientAuth | None = None, subscribe: bool = True, **kw: Any) -> KafkaConsumer:
    """A consumer that knows the partitions of `topic_names` and, unless `subscribe` is False (the caller
    assigns partitions itself), has subscribed to them as `group`."""
    auth = auth or process_auth()
    opts: dict[str, Any] = {**auth.kafka_python(),"enable_auto_commit": group is not None,
                            "auto_offset_reset": "earliest" if from_beginning else "latest",
                            # kafka-python's consumer default is 305 s: one lost request would stall a
                            # stage for five minutes. It must stay above the 10 s session timeout.
                            "request_timeout_ms": 20_000, "bootstrap_timeout_ms": 5_000}
    opts.update(kw)
    cons: KafkaConsumer = _retry_connect("consumer", bootstrap, lambda: KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, **opts), auth=auth)
    # Learn the topics' partitions before joining the group: a group leader without that metadata
    # assigns itself nothing ("No partition metadata for topic ...") and can sit idle, consuming nothing.
    deadline = time.monotonic() + 30.0
    for t in topic_names:
        first = True
        while not _partitions(cons, bootstrap, t, auth, first):
            first = False
            if time.monotonic() > deadline:
                cons.close()
                raise BrokerUnavailable(f"topic '{t}' has no partitions at {bootstrap}: create the topics with "
                                        f"`powerplane topics create`")
            time.sleep(0.2)
    if topic_names and subscribe:
        cons.subscribe(list(topic_names))
    return cons


class OutagePoll:
    """`cons.poll` that rides out a broker outage. kafka-python 3 raises a connection error out of poll() when
    the broker is unreachable (its coordinator or metadata lookup fails); a stage must hold and retry, not exit:
    CI lost a controller that way, 20 s into a broker outage. One line when the broker goes, one when it is back;
    an error that retrying cannot mend (an ACL refusal) still raises."""

    QUIET_S = 5.0

    def __init__(self, cons: KafkaConsumer, what: str, stop: threading.Event | None = None) -> None:
        self.cons = cons
        self.what = what
        self.stop = stop or threading.Event()
        self.failures = 0  # polls that raised a retriable error, since start
        self.outages = 0
        self.down_since: float | None = None
        self.last_error = ""
        self._failed_at = 0.0

    def __call__(self, timeout_ms: int, max_records: int | None = None) -> dict[Any, Any]:
        try:
            batch: dict[Any, Any] = self.cons.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as e:
            if not e.retriable:
                raise
            self.failures += 1
            self.last_error = f"{type(e).__name__}: {e}"
            self._failed_at = time.monotonic()
            if self.down_since is None:
                self.down_since = self._failed_at
                self.outages += 1
                log.warning("%s: Kafka broker unreachable (%s); holding and retrying", self.what, self.last_error)
            self.stop.wait(timeout_ms / 1000.0)  # the caller's loop keeps its pace: it does not spin
            return {}
        # An empty poll can also mean a broker still down whose error the client kept to itself: back means
        # records, or a quiet spell with no error, so that one outage is one pair of lines, not a flutter.
        now = time.monotonic()
        if self.down_since is not None and (batch or now - self._failed_at >= self.QUIET_S):
            log.info("%s: Kafka broker reachable again (errors for %.1f s)", self.what,
                     self._failed_at - self.down_since)
            self.down_since = None
        return batch


def _partitions(cons: KafkaConsumer, bootstrap: str, topic: str, auth: ClientAuth, first: bool) -> Any:
    parts = cons.partitions_for_topic(topic)
    if not parts and first and auth.protocol.startswith("SASL"):
        # The consumer's metadata lists only the topics it may see: ask for this one by name, once, so that a
        # refusal is one line now rather than "no partitions" in 30 s.
        admin = admin_client(bootstrap, auth)
        try:
            codes = [d.get("error_code") for d in admin.describe_topics([topic])]
        except KafkaError:
            codes = []  # the caller waits, and says so if the topic never comes
        finally:
            admin.close()
        if kerr.TopicAuthorizationFailedError.errno in codes:
            cons.close()
            raise KafkaAccessError(explain(kerr.TopicAuthorizationFailedError(), auth, topic=topic, op="read"))
    return parts


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


def admin_client(bootstrap: str, auth: ClientAuth, timeout_s: float = 30.0) -> KafkaAdminClient:
    # The client's own bootstrap wait (30 s by default) must not outlast ours.
    return _retry_connect("admin", bootstrap, lambda: KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="powerplane-admin",
        bootstrap_timeout_ms=max(1, int(timeout_s * 1000)), **auth.kafka_python()), timeout_s, auth)


def create_topics(bootstrap: str, wanted: Iterable[topics.Topic] = topics.ALL,
                  timeout_s: float = 30.0, auth: ClientAuth | None = None) -> list[str]:
    """Create missing topics with their declared partitions and configs, and (on a secured broker) the
    ACLs of every role (powerplane.access); return the topics created."""
    auth = auth or process_auth()
    admin = admin_client(bootstrap, auth, timeout_s)
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
            except kerr.AuthorizationError as e:
                raise KafkaAccessError(explain(e, auth, "topics create", new[0].name, "create")) from None
        if auth.protocol.startswith("SASL"):
            apply_acls(admin, auth)
        return [t.name for t in new]
    finally:
        admin.close()


def role_acls(role: str, grants: access.Grants) -> list[ACL]:
    """The broker ACLs of one role: ALLOW from any host; a trailing '*' makes a prefix, '*' alone all."""
    principal = f"User:{access.username(role)}"

    def pattern(kind: ResourceType, name: str) -> ResourcePattern:
        if name == "*":
            return ResourcePattern(kind, "*", ACLResourcePatternType.LITERAL)
        if name.endswith("*"):
            return ResourcePattern(kind, name[:-1], ACLResourcePatternType.PREFIXED)
        return ResourcePattern(kind, name, ACLResourcePatternType.LITERAL)

    wanted = [(ResourceType.TOPIC, n, ACLOperation.READ) for n in grants.read]
    wanted += [(ResourceType.TOPIC, n, ACLOperation.WRITE) for n in grants.write]
    wanted += [(ResourceType.GROUP, n, ACLOperation.READ) for n in grants.groups]
    wanted += [(ResourceType.GROUP, n, ACLOperation.DESCRIBE) for n in grants.describe_groups]
    return [ACL(principal, "*", op, ACLPermissionType.ALLOW, pattern(kind, name)) for kind, name, op in wanted]


def apply_acls(admin: KafkaAdminClient, auth: ClientAuth) -> int:
    """Create every role's ACLs (creating an existing ACL is a no-op on the broker); return how many."""
    acls = [acl for role, grants in access.ROLES.items() for acl in role_acls(role, grants)]
    res = admin.create_acls(acls)
    if res["failed"]:
        raise KafkaAccessError(explain(res["failed"][0](), auth, "creating the role ACLs"))
    # The broker applies them from the metadata log a moment later; a client refused meanwhile would not ask
    # again (kafka-python keeps a topic it may not describe out of its subscription): wait until they serve.
    every = ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY,
                      ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY))
    deadline = time.monotonic() + 10.0
    while len(admin.describe_acls(every)[0]) < len(acls) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(acls)


def read_window(bootstrap: str, topic: str, start_s: float, end_s: float, timeout_s: float = 60.0,
                auth: ClientAuth | None = None) -> list[bytes]:
    """The values of the records of `topic` whose broker timestamp is in [start_s, end_s), in partition order,
    read without a consumer group up to the end offsets seen at the start (a bounded read)."""
    from kafka import TopicPartition

    auth = auth or process_auth()
    c = KafkaConsumer(bootstrap_servers=bootstrap, **auth.kafka_python(), group_id=None, enable_auto_commit=False,
                      request_timeout_ms=20_000)
    out: list[bytes] = []
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(parts)
        end = c.end_offsets(parts)
        begin = c.offsets_for_times({tp: int(start_s * 1000) for tp in parts})
        for tp in parts:  # None: nothing from start_s on
            c.seek(tp, begin[tp].offset if begin.get(tp) is not None else end[tp])
        left = {tp for tp in parts if c.position(tp) < end[tp]}
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            for tp, msgs in c.poll(timeout_ms=500, max_records=5000).items():
                for m in msgs:
                    if m.offset >= end[tp] or m.timestamp >= end_s * 1000:
                        left.discard(tp)
                    elif m.value is not None:
                        out.append(m.value)
            left = {tp for tp in left if c.position(tp) < end[tp]}
    finally:
        c.close()
    return out


def seed_fresh_group(bootstrap: str, group: str, since_s: dict[str, float],
                     auth: ClientAuth | None = None) -> dict[str, dict[int, int]]:
    """Where `group` has no committed offset on a partition of a topic in since_s (a group's first start), commit
    the first offset whose broker timestamp is at or after that topic's since_s, so that the group's first poll
    reads the records sent from then on instead of from the end (what `auto_offset_reset="latest"` does). For
    inputs whose records speak of the future (a demand-response request sent before the controller first ran).
    Partitions the group has an offset on are left as they are. Returns {topic: {partition: offset}} of what it
    committed. One consumer for every topic. The group must have no member yet (the caller is about to join)."""
    from kafka import OffsetAndMetadata, TopicPartition

    auth = auth or process_auth()
    c = KafkaConsumer(bootstrap_servers=bootstrap, **auth.kafka_python(), group_id=group, enable_auto_commit=False,
                      request_timeout_ms=20_000)
    try:
        parts = [TopicPartition(t, p) for t in since_s for p in sorted(c.partitions_for_topic(t) or [])]
        fresh = [tp for tp in parts if c.committed(tp) is None]
        if not fresh:
            return {}
        c.assign(fresh)
        end = c.end_offsets(fresh)
        at = c.offsets_for_times({tp: int(since_s[tp.topic] * 1000) for tp in fresh})
        seed = {tp: at[tp].offset if at.get(tp) is not None else end[tp] for tp in fresh}  # None: nothing since
        c.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in seed.items()})
        out: dict[str, dict[int, int]] = {}
        for tp, off in seed.items():
            out.setdefault(tp.topic, {})[tp.partition] = off
        return out
    finally:
        c.close()
