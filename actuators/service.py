"""The actuator's Kafka shell: commands in, signed acknowledgements out (and to the audit topic).

Commands are keyed by rack, so each rack's commands arrive in order on one partition. Refusals for
signature reasons also become security events on the events topic. What the guard remembers is journaled
(actuators.journal) before the acks go out, and offsets are committed after: a restart neither applies a
replay again nor leaves a command unanswered.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from actuators.base import Actuator
from actuators.guard import Guard
from actuators.journal import Journal, journal_path
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import DeadLetters, Producer, client_auth, consumer
from powerplane.metrics import ConsumerLag, kafka_python_lags
from powerplane.schemas import Ack, Command, DeadLetter, Event, SchemaError
from powerplane.signing import Keyring, ack_key_path, load_keyring

log = logging.getLogger("powerplane.actuator")


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
        yield GaugeMetricFamily("powerplane_actuator_leases", "GPU leases held (power and clock)",
                                value=float(sum(len(t.leases) + len(t.clock_leases)
                                                for t in self.guard.targets.values())))


def run(cfg: Config, site_name: str, actuator: Actuator, keyring: Keyring, stop: threading.Event,
        ready: threading.Event | None = None, registry: Any = None, *, ack_keyring: Keyring | None = None,
        state_dir: str | Path | None = None) -> Guard:
    """Handle commands until `stop`. `ack_keyring` signs the acks (default: the config's ack keyring, created
    if missing); `state_dir` holds the replay journal (default: the config's state_dir); `registry` (a
    prometheus_client CollectorRegistry someone serves) gets this actuator's metrics and consumer lag."""
    if ack_keyring is None:
        ack_keyring = load_keyring(ack_key_path(cfg.signing_key_file, cfg.ack_key_file), cfg.ack_key_id, create=True)
    journal = Journal(journal_path(state_dir or cfg.state_dir, actuator.name))
    guard = Guard(actuator, keyring, site_name, journal=journal)
    served = set(actuator.targets())
    auth = client_auth(cfg, "actuator")
    producer = Producer(cfg.kafka_bootstrap, f"powerplane-actuator-{actuator.name}", auth=auth)
    dlq = DeadLetters(producer, f"actuator-{actuator.name}")
    # Offsets are committed by hand, after the batch's outcomes are journaled and its acks delivered: a
    # command that arrived while this actuator was down, or one it was handling when it died, is read again.
    cons = consumer(cfg.kafka_bootstrap, f"powerplane-actuator-{actuator.name}", topics.COMMANDS.name,
                    enable_auto_commit=False, auth=auth)
    if registry is not None:
        registry.register(ActuatorMetrics(guard, producer, dlq))
        registry.register(ConsumerLag(f"powerplane-actuator-{actuator.name}", partial(kafka_python_lags, cons)))
    actuator.start()
    last_expiry = 0.0
    assigned: set[Any] = set()
    try:
        while not stop.is_set():
            batch = cons.poll(timeout_ms=100, max_records=1000)
            if cons.assignment() != assigned:
                assigned = set(cons.assignment())
                restarted = _start_new_partitions(cons, assigned, cfg.command_lease_s)
                batch = {tp: msgs for tp, msgs in batch.items() if tp not in restarted}  # read again from there
                if ready is not None and assigned:
                    ready.set()
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


def _start_new_partitions(cons: KafkaConsumer, parts: set[Any], lookback_s: float) -> set[Any]:
    """A partition this group has never committed an offset for (a new actuator) starts at the commands of
    the last `lookback_s` (those whose lease may still be running), not at the newest: a command sent
    before this actuator first joined is still answered. Returns the partitions moved."""
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
