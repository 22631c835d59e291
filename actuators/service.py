"""The actuator's Kafka shell: commands in, acknowledgements out (and to the audit topic).

Commands are keyed by rack, so each rack's commands arrive in order on one partition. Refusals for
signature reasons also become security events on the events topic.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from actuators.base import Actuator
from actuators.guard import Guard
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import DeadLetters, Producer, consumer
from powerplane.schemas import Ack, Command, DeadLetter, Event, SchemaError
from powerplane.signing import Keyring

log = logging.getLogger("powerplane.actuator")


class ActuatorMetrics:
    """Prometheus collector over the guard's outcomes, read at scrape time."""

    def __init__(self, guard: Guard, producer: Producer, dlq: DeadLetters) -> None:
        self.guard, self.producer, self.dlq = guard, producer, dlq

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.guard.stats
        acks = CounterMetricFamily("powerplane_actuator_acks", "commands by outcome", labels=["actuator", "status"])
        for status in ("applied", "clamped", "duplicate", "rejected", "expired", "reverted"):
            acks.add_metric([self.guard.actuator.name, status], float(getattr(st, status)))
        yield acks
        yield CounterMetricFamily("powerplane_actuator_security_refusals",
                                  "commands refused for signature or site reasons", value=float(st.security))
        yield CounterMetricFamily("powerplane_actuator_dead_letters", "records sent to the dead-letter topic",
                                  value=float(self.dlq.count))
        yield CounterMetricFamily("powerplane_actuator_producer_dropped", "acks the bounded producer dropped",
                                  value=float(self.producer.dropped + self.producer.failed))
        yield GaugeMetricFamily("powerplane_actuator_leases", "GPU leases held (power and clock)",
                                value=float(sum(len(t.leases) + len(t.clock_leases)
                                                for t in self.guard.targets.values())))


def run(cfg: Config, site_name: str, actuator: Actuator, keyring: Keyring, stop: threading.Event,
        ready: threading.Event | None = None, metrics_port: int = 0) -> Guard:
    guard = Guard(actuator, keyring, site_name)
    served = set(actuator.targets())
    producer = Producer(cfg.kafka_bootstrap, f"powerplane-actuator-{actuator.name}")
    dlq = DeadLetters(producer, f"actuator-{actuator.name}")
    if metrics_port:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        registry.register(ActuatorMetrics(guard, producer, dlq))
        start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    cons = consumer(cfg.kafka_bootstrap, f"powerplane-actuator-{actuator.name}", topics.COMMANDS.name)
    actuator.start()
    last_expiry = 0.0
    try:
        while not stop.is_set():
            batch = cons.poll(timeout_ms=100, max_records=1000)
            if ready is not None and cons.assignment():
                ready.set()
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
                    publish_ack(producer, ack)
                    if ack.status == "rejected" and guard.security_refusals and guard.security_refusals[-1][0] is cmd:
                        publish_security_event(producer, cmd, ack.reason)
            now = time.time()
            if now - last_expiry >= 0.5:
                last_expiry = now
                for ack in guard.expire(now):
                    publish_ack(producer, ack)
    finally:
        cons.close()
        producer.close()
        actuator.close()
    return guard


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
