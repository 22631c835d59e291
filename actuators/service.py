"""The actuator's Kafka shell: commands in, signed acknowledgements out (and to the audit topic).

Commands are keyed by rack, so each rack's commands arrive in order on one partition, and an actuator
reads only the partitions its racks' keys hash to (assigned, not subscribed: one actuator per host or per
group of racks, each owning its racks whatever else runs; docs/decisions.md). Refusals for
signature reasons also become security events on the events topic. What the guard remembers is journaled
(actuators.journal) before the acks go out, and offsets are committed after: a restart neither applies a
replay again nor leaves a command unanswered.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError

from actuators.base import Actuator
from actuators.guard import Guard
from actuators.journal import Journal, journal_path
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import DeadLetters, OutagePoll, Producer, client_auth, consumer, key_partition
from powerplane.metrics import ConsumerLag, kafka_python_lags, register_merged
from powerplane.schemas import Ack, Command, DeadLetter, Event, SchemaError
from powerplane.signing import Keyring, ack_key_path, load_keyring

log = logging.getLogger("powerplane.actuator")
ASSIGN_EVERY_S = 30.0  # how often the partitions of pp.commands are looked at again (metadata already held)


class ActuatorMetrics:
    """Prometheus collector over the guard's outcomes, read at scrape time."""

    def __init__(self, guard: Guard, producer: Producer, dlq: DeadLetters) -> None:
        self.guard, self.producer, self.dlq = guard, producer, dlq

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.guard.stats
        acks = CounterMetricFamily("powerplane_actuator_acks", "commands answered, by outcome",
                                   labels=["actuator", "status"])
        for status in ("applied", "clamped", "duplicate", "rejected", "expired", "reverted"):
            acks.add_metric([self.guard.actuator.name, status], float(getattr(st, status)))
        yield acks
        yield CounterMetricFamily("powerplane_actuator_security_refusals",
                                  "commands refused for signature or site reasons", value=float(st.security))
        yield CounterMetricFamily("powerplane_actuator_dead_letters", "records sent to the dead-letter topic",
                                  value=float(self.dlq.count))
        yield CounterMetricFamily("powerplane_actuator_producer_dropped_records",
                                  "acks and events the bounded producer dropped or the broker refused",
                                  value=float(self.producer.dropped + self.producer.failed))
        yield GaugeMetricFamily("powerplane_actuator_leases", "GPU leases held (power, clock and floor)",
                                value=float(sum(t.n_leases() for t in self.guard.targets.values())))


def run(cfg: Config, site_name: str, actuator: Actuator, keyring: Keyring, stop: threading.Event,
        ready: threading.Event | None = None, registry: Any = None, *, ack_keyring: Keyring | None = None,
        state_dir: str | Path | None = None) -> Guard:
    """Handle commands until `stop`. `ack_keyring` signs the acks (default: the config's ack keyring, created
    if missing); `state_dir` holds the replay journal (default: the config's state_dir); `registry` (a
    prometheus_client CollectorRegistry someone serves) gets this actuator's metrics and consumer lag; `ready`
    is set once the actuator has its partitions and knows where to read them from."""
    served = set(actuator.targets())
    if not served:
        raise ValueError(f"actuator '{actuator.name}' serves no racks: nothing to read from {topics.COMMANDS.name}")
    if ack_keyring is None:
        ack_keyring = load_keyring(ack_key_path(cfg.signing_key_file, cfg.ack_key_file), cfg.ack_key_id, create=True)
    journal = Journal(journal_path(state_dir or cfg.state_dir, actuator.name))
    guard = Guard(actuator, keyring, site_name, journal=journal)
    auth = client_auth(cfg, "actuator")
    group = f"powerplane-actuator-{actuator.name}"
    producer = Producer(cfg.kafka_bootstrap, group, auth=auth)
    dlq = DeadLetters(producer, f"actuator-{actuator.name}")
    # Offsets are committed by hand, after the batch's outcomes are journaled and its acks delivered: a
    # command that arrived while this actuator was down, or one it was handling when it died, is read again.
    # The partitions are assigned, not subscribed: only those its racks' commands land on, and no rebalance
    # with the other actuators (docs/decisions.md); the group only keeps the offsets.
    cons = consumer(cfg.kafka_bootstrap, group, topics.COMMANDS.name, enable_auto_commit=False, auth=auth,
                    subscribe=False)
    if registry is not None:
        register_merged(registry, ActuatorMetrics(guard, producer, dlq))
        register_merged(registry, ConsumerLag(group, partial(kafka_python_lags, cons)))
    actuator.start()
    last_expiry = last_assign = 0.0
    assigned: set[TopicPartition] = set()
    poll = OutagePoll(cons, f"actuator {actuator.name}", stop)
    try:
        while not stop.is_set():
            if time.monotonic() - last_assign >= ASSIGN_EVERY_S:
                last_assign = time.monotonic()
                assign_racks(cons, served)  # again now and then: the topic may have been given more partitions
            if cons.assignment() != assigned:
                assigned = set(cons.assignment())
                _start_new_partitions(cons, assigned, cfg.command_lease_s)
                if ready is not None:
                    ready.set()
            batch = poll(timeout_ms=100, max_records=1000)  # through an outage: leases still expire below
            acks, refused = _handle(guard, served, dlq, batch)
            now = time.time()
            if now - last_expiry >= 0.5:
                last_expiry = now
                acks += guard.expire(now)
            if not acks and not batch:
                continue
            guard.sync()  # durable before any ack says so
            for ack in acks:
                publish_ack(producer, ack_keyring.sign(ack))
            for cmd, reason in refused:
                publish_security_event(producer, cmd, reason)
            if batch:
                _commit(cons, producer)
    finally:
        cons.close()
        producer.close()
        actuator.close()
        journal.close()
    return guard


def _handle(guard: Guard, served: set[str], dlq: DeadLetters,
            batch: dict[TopicPartition, list[Any]]) -> tuple[list[Ack], list[tuple[Command, str]]]:
    """The acks of a polled batch's commands for racks this actuator serves (other racks share its
    partitions), and the commands refused for signature or site reasons; undecodable records are dead-lettered."""
    acks: list[Ack] = []
    refused: list[tuple[Command, str]] = []
    for tp, msgs in batch.items():
        for m in msgs:
            try:
                cmd = Command.decode(m.value)
            except SchemaError as e:
                dlq.publish(DeadLetter(tp.topic, tp.partition, m.offset, str(e), m.key, m.value or b""))
                continue
            if cmd.target not in served:
                continue
            ack = guard.handle(cmd, time.time())
            acks.append(ack)
            if ack.status == "rejected" and guard.security_refusals and guard.security_refusals[-1][0] is cmd:
                refused.append((cmd, ack.reason))
    return acks, refused


def rack_partitions(racks: Iterable[str], partitions: Sequence[int]) -> list[int]:
    """The partitions of a topic keyed by rack id (pp.commands) that these racks' records land on."""
    return sorted({key_partition(r.encode(), partitions) for r in racks})


def assign_racks(cons: KafkaConsumer, racks: Iterable[str]) -> set[TopicPartition]:
    """Assign `cons` the pp.commands partitions of `racks` (from the partitions its metadata knows, which
    `powerplane.kafka.consumer` waited for); returns them. Unchanged if the assignment already is that."""
    known = cons.partitions_for_topic(topics.COMMANDS.name) or set()
    if not known:  # metadata lost for a moment: keep what is assigned
        return set(cons.assignment())
    wanted = {TopicPartition(topics.COMMANDS.name, p) for p in rack_partitions(racks, sorted(known))}
    if wanted != cons.assignment():
        if cons.assignment():
            log.warning("actuator: %s has %d partitions now; reading %s", topics.COMMANDS.name, len(known),
                        sorted(tp.partition for tp in wanted))
        cons.assign(sorted(wanted))
    return wanted


def rack_groups(racks: Sequence[str], n_groups: int, n_partitions: int) -> list[list[str]]:
    """Split racks into `n_groups` actuators' shares of about equal size, so that each reads as few
    pp.commands partitions as it can: whole partitions per group while there are at least as many partitions
    (with racks) as groups, so no two groups read the same one; beyond that, groups of racks that share one
    partition. Racks keep their order within a group."""
    if not 0 < n_groups <= len(racks):
        raise ValueError(f"{n_groups} actuator group(s) for {len(racks)} rack(s): give 1 to {len(racks)}")
    parts = list(range(n_partitions))
    by_part: dict[int, list[str]] = {}
    for r in racks:
        by_part.setdefault(key_partition(r.encode(), parts), []).append(r)
    if n_groups <= len(by_part):
        groups: list[list[str]] = [[] for _ in range(n_groups)]
        # Largest partition to the smallest group so far: the groups' rack counts stay close.
        for _p, rs in sorted(by_part.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            min(groups, key=len).extend(rs)
        index = {r: i for i, r in enumerate(racks)}
        return [sorted(g, key=index.__getitem__) for g in groups]
    ordered = [r for p in sorted(by_part) for r in by_part[p]]
    cut = [round(k * len(ordered) / n_groups) for k in range(n_groups + 1)]
    return [ordered[cut[k]:cut[k + 1]] for k in range(n_groups)]


def _start_new_partitions(cons: KafkaConsumer, parts: set[Any], lookback_s: float) -> set[Any]:
    """A partition this group has never committed an offset for (a new actuator) starts at the commands of
    the last `lookback_s` (those whose lease may still be running), not at the newest: a command sent
    before this actuator first started is still answered. That position is committed at once, so a restart
    before the first batch resumes there too, and the group's offsets say that the actuator is reading
    (ops.demo.wait_for_offsets). Returns the partitions moved."""
    fresh = {tp for tp in parts if cons.committed(tp) is None}
    if not fresh:
        return set()
    at = cons.offsets_for_times({tp: int((time.time() - lookback_s) * 1000) for tp in fresh})
    ends = cons.end_offsets(list(fresh))
    for tp in fresh:
        found = at.get(tp)
        cons.seek(tp, found.offset if found is not None else ends[tp])
    log.info("actuator: %d partition(s) of %s had no committed offset; starting at the commands of the last "
             "%.0f s", len(fresh), topics.COMMANDS.name, lookback_s)
    try:
        cons.commit({tp: OffsetAndMetadata(cons.position(tp), "", -1) for tp in fresh})
    except KafkaError as e:
        log.warning("actuator: starting offsets not committed (%s: %s); committed with the first batch",
                    type(e).__name__, e)
    return fresh


def _commit(cons: KafkaConsumer, producer: Producer) -> None:
    """Commit what was handled once its acks are delivered; a failed commit only means the batch is read
    again, and answered as duplicates."""
    producer.flush(timeout_s=10.0)
    try:
        cons.commit()
    except KafkaError as e:
        log.warning("actuator: offsets not committed (%s: %s); the batch will be read again and answered as "
                    "duplicates", type(e).__name__, e)


def publish_ack(producer: Producer, ack: Ack) -> None:
    data = ack.encode()
    producer.send(topics.ACKS.name, data, key=ack.key())
    producer.send(topics.AUDIT.name, data, key=ack.command_id.encode())
    # Applied acks at debug (a site-wide loss is 1,024 of them at once, all on pp.acks and pp.audit); what
    # did not go as asked at info (refusals are also logged by the guard, as warnings).
    if ack.status in ("applied", "duplicate"):
        log.debug("ack %s %s: %s %s", ack.command_id[:8], ack.target, ack.status, ack.reason)
    else:
        log.info("ack %s %s: %s %s", ack.command_id[:8], ack.target, ack.status, ack.reason)


def publish_security_event(producer: Producer, cmd: Command, reason: str) -> None:
    ev = Event(id=f"security-{uuid.uuid4()}", site=cmd.site, kind="command_refused", severity="warning", state="open",
               levels=[cmd.target], ts_s=time.time(), deadline_s=None,
               summary=f"refused command {cmd.id} from '{cmd.issuer}': {reason}")
    producer.send(topics.EVENTS.name, ev.encode(), key=ev.id.encode())
