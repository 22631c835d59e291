"""The trap receiver's process side: one UDP socket, the Kafka producer, metrics, refusal logging and dead
letters around `trapd.TrapHandler` (the pure part). `powerplane traps FILE` runs `run`.

Publishing: one idempotent, acks=all producer (powerplane.kafka.Producer) with linger 0, so a trap goes to
the broker as soon as it is decoded rather than waiting to fill a batch; its metadata for pp.facility is
fetched before the socket opens, so the first trap does not wait for it either. Unlike the polling
collector there is no disk spool: a trap is an event about now, and one that waited out a broker outage on
disk would arrive as news about the past. While the broker is away the producer holds what it could not
send in memory (and retries) for its delivery timeout, then counts it as failed.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from collectors.snmp import ber
from collectors.snmp.trap_config import TrapConfig
from collectors.snmp.trapd import Ignored, Refusal, TrapHandler
from powerplane import topics
from powerplane.kafka import ClientAuth, DeadLetters, Producer
from powerplane.schemas import DeadLetter, FacilityReading, SchemaError

log = logging.getLogger("powerplane.traps")
DEAD_LETTER_TOPIC = "snmp-trap"  # the dead letters' "source topic": a refused datagram came from no topic
LOG_EVERY_S = 10.0  # one refusal line per sender and reason this often; the rest are counted


@dataclass
class TrapStats:
    received: int = 0
    published: int = 0
    acked: int = 0
    failed: int = 0
    ignored: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    dead_letters_dropped: int = 0
    # arrival -> broker acknowledgement, seconds, of the last traps (bench/bench_trap_latency.py reads them)
    ack_latency_s: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=10_000))
    arrived: dict[int, float] = field(default_factory=dict)  # seq -> perf_counter at arrival (last 10,000)
    acked_at: dict[int, float] = field(default_factory=dict)  # seq -> perf_counter at the broker's ack


class TrapMetrics:
    """Prometheus metrics of the receiver."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        r = registry if registry is not None else CollectorRegistry()
        self.received = Counter("powerplane_traps_received", "Datagrams received", ["version"], registry=r)
        self.refused = Counter("powerplane_traps_refused", "Datagrams refused (spoofed, unknown, malformed)",
                               ["reason"], registry=r)
        self.ignored = Counter("powerplane_traps_ignored", "Authentic traps that say nothing about power state",
                               ["agent"], registry=r)
        self.published = Counter("powerplane_traps_published", "Facility events produced", ["agent"], registry=r)
        self.failed = Counter("powerplane_traps_delivery_failed", "Facility events the broker never took",
                              registry=r)
        self.ack = Histogram("powerplane_trap_ack_seconds", "Trap arrival to broker acknowledgement", registry=r,
                             buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0))


class _Throttle:
    """At most one log line per key every `every_s`; the lines held back are counted into the next."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def allow(self, key: tuple[str, str], now: float) -> tuple[bool, int]:
        last, held = self._last.get(key, (-1e18, 0))
        if now - last >= self.every_s:
            if len(self._last) > 10_000:  # a spray from many addresses must not grow this without bound
                self._last.clear()
            self._last[key] = (now, 0)
            return True, held
        self._last[key] = (last, held + 1)
        return False, 0


class TrapService:
    """The socket loop: receive, handle, publish. `serve` returns when `stop` is set."""

    def __init__(self, cfg: TrapConfig, bootstrap: str, auth: ClientAuth | None = None, registry: Any = None,
                 sock: socket.socket | None = None) -> None:
        self.cfg = cfg
        self.handler = TrapHandler(cfg)
        self.stats = TrapStats()
        self.metrics = TrapMetrics(registry)
        self.producer = Producer(bootstrap, cfg.client_id, linger_ms=0, auth=auth)
        self.producer.partitions_for(topics.FACILITY.name)
        self.dead = DeadLetters(self.producer, "traps")
        self._throttle = _Throttle(LOG_EVERY_S)
        self._dl_tokens = cfg.dead_letters_per_s
        self._dl_at = time.monotonic()
        self._lock = threading.Lock()
        self.sock = sock or self._bind()
        self.address = self.sock.getsockname()

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.cfg.host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind((self.cfg.host, self.cfg.port))
        except OSError as e:
            s.close()
            hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" if self.cfg.port < 1024 else ""
            raise OSError(f"cannot listen on udp {self.cfg.host}:{self.cfg.port}: {e.strerror}{hint}") from None
        s.settimeout(0.2)
        return s

    def serve(self, stop: threading.Event) -> None:
        log.info("listening for traps on udp %s:%d: %d agent(s), site %s", self.address[0], self.address[1],
                 len(self.cfg.agents), self.cfg.site)
        try:
            while not stop.is_set():
                try:
                    data, peer = self.sock.recvfrom(65535)
                except TimeoutError:
                    continue
                self.on_datagram(data, peer[:2], time.time(), time.perf_counter())
        finally:
            self.sock.close()
            self.producer.close(timeout_s=10.0)
            log.info("traps: %d received, %d published (%d acknowledged, %d failed), %d ignored, refused %s",
                     self.stats.received, self.stats.published, self.stats.acked, self.stats.failed,
                     self.stats.ignored, dict(self.stats.refused) or "none")

    def on_datagram(self, data: bytes, peer: tuple[str, int], ts_s: float, t0: float) -> None:
        self.stats.received += 1
        try:
            version = {0: "1", 1: "2c", 3: "3"}.get(ber.message_version(data), "other")
        except ber.BerError:
            version = "other"
        self.metrics.received.labels(version).inc()
        try:
            out = self.handler.handle(data, peer, ts_s)
        except Exception as e:  # one bad datagram must not stop the receiver
            out = Refusal("internal", f"trap from {peer[0]}:{peer[1]}: internal error ({type(e).__name__}: {e})")
        if isinstance(out, FacilityReading):
            try:  # what goes out must be what every reader decodes (a trap's odd value must not be dead-lettered there)
                data_out = out.encode()
                FacilityReading.decode(data_out)
            except SchemaError as e:
                self._refuse(Refusal("invalid", f"trap from {peer[0]}:{peer[1]}: makes no valid record ({e})"),
                             data, peer)
                return
            self._publish(out, data_out, t0)
        elif isinstance(out, Ignored):
            self.stats.ignored += 1
            self.metrics.ignored.labels(out.agent).inc()
            ok, _held = self._throttle.allow((out.agent, out.what), time.monotonic())
            if ok:
                log.info("trap from agent %s ignored: %s", out.agent, out.what)
        else:
            self._refuse(out, data, peer)

    def _publish(self, r: FacilityReading, value: bytes, t0: float) -> None:
        self.stats.published += 1
        self.metrics.published.labels(r.source.removeprefix("trap:")).inc()
        arrived = self.stats.arrived
        arrived[r.seq] = t0
        if len(arrived) > 10_000:
            del arrived[next(iter(arrived))]

        def done(ok: bool) -> None:
            t1 = time.perf_counter()
            dt = t1 - t0
            with self._lock:
                if ok:
                    self.stats.acked += 1
                    self.stats.ack_latency_s.append(dt)
                    self.stats.acked_at[r.seq] = t1
                    if len(self.stats.acked_at) > 10_000:
                        del self.stats.acked_at[next(iter(self.stats.acked_at))]
                else:
                    self.stats.failed += 1
            if ok:
                self.metrics.ack.observe(dt)
            else:
                self.metrics.failed.inc()
                log.error("trap event %s seq %d from %s was not delivered: %s", r.trap, r.seq, r.source,
                          self.producer.last_error)

        self.producer.send(topics.FACILITY.name, value, key=r.key(), timestamp_ms=int(r.ts_s * 1000),
                           on_done=done)
        log.debug("trap %s from %s -> %s on_battery=%s on_bypass=%s raised=%s cleared=%s", r.trap, r.source,
                  r.unit, r.on_battery, r.on_bypass, r.alarm_kinds, r.cleared_kinds)

    def _refuse(self, out: Refusal, data: bytes, peer: tuple[str, int]) -> None:
        self.stats.refused[out.reason] += 1
        self.metrics.refused.labels(out.reason).inc()
        now = time.monotonic()
        self._dl_tokens = min(self.cfg.dead_letters_per_s,
                              self._dl_tokens + (now - self._dl_at) * self.cfg.dead_letters_per_s)
        self._dl_at = now
        ok, held = self._throttle.allow((peer[0], out.reason), now)
        if self._dl_tokens >= 1.0:
            self._dl_tokens -= 1.0
            # DeadLetters logs the one line (naming the sender as the key) unless this sender is being throttled
            dl = DeadLetter(DEAD_LETTER_TOPIC, -1, -1, out.message, f"{peer[0]}:{peer[1]}".encode(), data,
                            {"component": "traps", "reason_code": out.reason})
            if ok:
                self.dead.publish(dl)
            else:  # the same record, without the log line
                self.dead.count += 1
                self.producer.send(topics.DEADLETTER.name, value=dl.value, key=dl.source_topic.encode(),
                                   headers=dl.headers())
        else:
            self.stats.dead_letters_dropped += 1
            if ok:
                log.warning("refused %s (dead letters over %g/s: not kept)", out.message,
                            self.cfg.dead_letters_per_s)
        if ok and held:
            log.warning("(%d more refusal(s) from %s for %s in the last %g s)", held, peer[0], out.reason,
                        LOG_EVERY_S)


def run(cfg: TrapConfig, bootstrap: str, stop: threading.Event, *, auth: ClientAuth | None = None,
        registry: Any = None, duration_s: float | None = None) -> TrapService:
    svc = TrapService(cfg, bootstrap, auth=auth, registry=registry)
    if duration_s:
        threading.Timer(duration_s, stop.set).start()
    svc.serve(stop)
    return svc
