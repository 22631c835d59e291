"""The capping controller's Kafka shell.

Consumes PDU aggregates (loads) and telemetry frames (per-GPU power and enforced limits), runs
controllers.capping.decide_caps once per tick, and publishes signed, leased power-cap commands,
one per rack that changes; active caps are renewed before their lease runs out. Acks are read back
to measure command latency and to log what the actuators really applied.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controllers.capping import CapSettings, decide_caps
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import DeadLetters, Producer, consumer
from powerplane.schemas import Ack, Command, DeadLetter, LevelAggregate, SchemaError, TelemetryFrame
from powerplane.signing import Keyring
from powerplane.site import Site

log = logging.getLogger("powerplane.controller")


@dataclass
class ControllerStats:
    commands: int = 0
    renewals: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


class CapController:
    """State and decisions; no I/O (the run loop below feeds it)."""

    def __init__(self, site: Site, keyring: Keyring, settings: CapSettings, lease_s: float,
                 issuer: str = "capping-controller") -> None:
        self.site = site
        self.keyring = keyring
        self.settings = settings
        self.lease_s = lease_s
        self.issuer = issuer
        n_levels = len(site.level_ids)
        self.pdu_power_w = np.full(n_levels, np.nan)
        self.pdu_seen_s = np.full(n_levels, -np.inf)  # arrival time (our clock)
        self.pdu_ts_s = np.full(n_levels, -np.inf)  # event time of the reading (the meter's clock)
        self.settle_s = 0.5  # a cap needs this long to show in a reading (NVML applies in < 100 ms)
        _, self.derated_w = site.limits_w("normal")  # PDUs keep their own limit in every feed state
        self.gpu_power_w = np.full(site.n_gpus, np.nan)
        self.cap_w = np.full(site.n_gpus, np.nan)  # NaN until the enforced limit has been seen
        self.rack_sent_s = np.full(site.n_racks, -np.inf)
        self.rack_changed_s = np.full(site.n_racks, -np.inf)  # when this controller last changed a rack's caps
        self.stats = ControllerStats()
        self.stale_after_s = 10.0

    def on_aggregate(self, agg: LevelAggregate, now_s: float) -> None:
        if agg.kind != "pdu" or agg.site != self.site.name:
            return
        i = self.site.level_index.get(agg.level)
        if i is not None:
            self.pdu_power_w[i] = agg.power_w
            self.pdu_seen_s[i] = now_s
            self.pdu_ts_s[i] = agg.ts_s

    def on_frame(self, fr: TelemetryFrame) -> None:
        if fr.site != self.site.name:
            raise SchemaError(f"telemetry.frame {fr.rack}: site '{fr.site}', this controller serves '{self.site.name}'")
        r = self.site.rack_index(fr.rack)
        a, b = int(self.site.rack_gpu_start[r]), int(self.site.rack_gpu_start[r + 1])
        if fr.power_w.size != b - a:
            raise SchemaError(f"telemetry.frame {fr.rack}: {fr.power_w.size} GPUs, site has {b - a}")
        self.gpu_power_w[a:b] = fr.power_w
        seen = self.cap_w[a:b]
        # Adopt the enforced limit the first time a rack is seen (e.g. after a controller restart).
        self.cap_w[a:b] = np.where(np.isnan(seen), fr.limit_w, seen)

    def decide(self, now_s: float) -> list[Command]:
        pdu = np.where(now_s - self.pdu_seen_s <= self.stale_after_s, self.pdu_power_w, np.nan)
        # A PDU load received before our last change to a rack on it cannot show that change yet; acting
        # on it again would shed (or release) the same watts twice. Hold until a newer load arrives.
        changed_at = np.full(len(self.site.level_ids), -np.inf)
        np.maximum.at(changed_at, self.site.rack_pdu.ravel(), np.repeat(self.rack_changed_s, 2))
        # It must also have been measured after the change had time to settle; otherwise a reading that
        # was in flight when we acted would trigger a second cut. (Assumes NTP-synchronised clocks; with
        # skew this only delays the next decision by the skew.)
        fresh = (self.pdu_seen_s > changed_at) & (self.pdu_ts_s >= changed_at + self.settle_s)
        pdu = np.where(fresh, pdu, np.nan)
        known = ~np.isnan(self.cap_w)
        new = decide_caps(self.site, self.gpu_power_w, self.cap_w, pdu, self.derated_w, self.settings)
        new = np.where(known, new, self.cap_w)
        changed = known & (new != self.cap_w)
        capped = known & (new < self.site.gpu_max_w)
        cmds: list[Command] = []
        rack_changed = np.bincount(self.site.gpu_rack[changed], minlength=self.site.n_racks) > 0
        rack_capped = np.bincount(self.site.gpu_rack[capped], minlength=self.site.n_racks) > 0
        renew = rack_capped & (now_s - self.rack_sent_s > self.lease_s / 3)
        for r in np.flatnonzero(rack_changed | renew):
            a, b = int(self.site.rack_gpu_start[r]), int(self.site.rack_gpu_start[r + 1])
            sel = changed[a:b] | capped[a:b]
            if not sel.any():
                continue
            idx = np.flatnonzero(sel)
            if not rack_changed[r]:
                why = "lease renewal"
            elif (new[a:b][idx] >= self.cap_w[a:b][idx]).all():
                why = "PDU back under the uncap threshold: releasing caps"
            else:
                why = "PDU over the cap threshold"
            cmds.append(self.command(int(r), idx, new[a:b][idx], why, now_s))
            self.rack_sent_s[r] = now_s
            if rack_changed[r]:
                self.rack_changed_s[r] = now_s
                self.stats.commands += 1
            else:
                self.stats.renewals += 1
        self.cap_w = new
        return cmds

    def command(self, rack: int, gpus: np.ndarray, values: np.ndarray, reason: str, now_s: float) -> Command:
        cmd = Command(id=str(uuid.uuid4()), site=self.site.name, target=self.site.rack_ids[rack], action="power_cap",
                      gpus=gpus.astype(np.uint16), values=values.astype(np.float32), params={}, reason=reason,
                      issuer=self.issuer, issued_at_s=now_s, lease_s=self.lease_s)
        return self.keyring.sign(cmd)


class ControllerMetrics:
    """Prometheus collector over the controller's stats, read at scrape time."""

    def __init__(self, ctl: CapController, producer: Producer, dlq: DeadLetters) -> None:
        self.ctl, self.producer, self.dlq = ctl, producer, dlq

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.ctl.stats
        yield CounterMetricFamily("powerplane_controller_commands", "cap changes issued", value=float(st.commands))
        yield CounterMetricFamily("powerplane_controller_renewals", "lease renewals issued", value=float(st.renewals))
        acks = CounterMetricFamily("powerplane_controller_acks", "acknowledgements by status", labels=["status"])
        for status, n in sorted(st.acks.items()):
            acks.add_metric([status], float(n))
        yield acks
        yield CounterMetricFamily("powerplane_controller_dead_letters", "records sent to the dead-letter topic",
                                  value=float(self.dlq.count))
        yield CounterMetricFamily("powerplane_controller_producer_dropped", "records the bounded producer dropped",
                                  value=float(self.producer.dropped + self.producer.failed))
        lat = sorted(st.latencies_s)
        q = GaugeMetricFamily("powerplane_controller_command_ack_seconds",
                              "command-to-acknowledgement latency over the last 10,000 commands", labels=["quantile"])
        for p in (0.5, 0.99):
            q.add_metric([str(p)], lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan"))
        yield q


def run(cfg: Config, site: Site, keyring: Keyring, stop: threading.Event, tick_s: float = 1.0,
        metrics_port: int = 0) -> CapController:
    ctl = CapController(site, keyring, CapSettings(cfg.cap_threshold, cfg.uncap_threshold), cfg.command_lease_s)
    producer = Producer(cfg.kafka_bootstrap, "powerplane-controller")
    dlq = DeadLetters(producer, "controller")
    if metrics_port:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        registry.register(ControllerMetrics(ctl, producer, dlq))
        start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    cons = consumer(cfg.kafka_bootstrap, "powerplane-controller", topics.AGGREGATES.name, topics.TELEMETRY.name,
                    topics.ACKS.name)
    sent_at: dict[str, float] = {}
    next_tick = time.monotonic()
    try:
        while not stop.is_set():
            batch = cons.poll(timeout_ms=100, max_records=5000)
            now = time.time()
            for tp, msgs in batch.items():
                for m in msgs:
                    try:
                        if tp.topic == topics.AGGREGATES.name:
                            ctl.on_aggregate(LevelAggregate.decode(m.value), now)
                        elif tp.topic == topics.TELEMETRY.name:
                            ctl.on_frame(TelemetryFrame.decode(m.value))
                        else:
                            ack = Ack.decode(m.value)
                            ctl.stats.acks[ack.status] = ctl.stats.acks.get(ack.status, 0) + 1
                            t0 = sent_at.pop(ack.command_id, None)
                            if t0 is not None:
                                ctl.stats.latencies_s.append(now - t0)
                            if ack.status not in ("applied", "duplicate"):
                                log.warning("ack %s for %s: %s %s", ack.command_id[:8], ack.target, ack.status,
                                            ack.reason)
                    except (SchemaError, KeyError) as e:
                        dlq.publish(DeadLetter(tp.topic, tp.partition, m.offset, str(e), m.key, m.value or b""))
            if time.monotonic() >= next_tick:
                next_tick += tick_s
                for cmd in ctl.decide(now):
                    data = cmd.encode()
                    producer.send(topics.COMMANDS.name, data, key=cmd.key())
                    producer.send(topics.AUDIT.name, data, key=cmd.id.encode())
                    sent_at[cmd.id] = time.time()
                    log.info("command %s %s: %d GPU(s) -> %s W (%s)", cmd.id[:8], cmd.target, cmd.gpus.size,
                             _summary(cmd.values), cmd.reason)
                while len(sent_at) > 100_000:  # bounded: forget the oldest unacknowledged
                    sent_at.pop(next(iter(sent_at)))
    finally:
        cons.close()
        producer.close()
    return ctl


def _summary(v: np.ndarray) -> str:
    return f"{float(v.min()):.0f}" if float(v.min()) == float(v.max()) else f"{float(v.min()):.0f}-{float(v.max()):.0f}"
