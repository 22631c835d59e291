"""The controller's Kafka shell (`powerplane controller`): consumes pp.facility, pp.aggregates, pp.headroom,
pp.telemetry and pp.acks into a `CapController` (controllers/controller.py), and the signed demand-response
requests (pp.grid) and job-start notices (pp.jobs) through their inboxes (controllers.grid_inbox, job_inbox);
decides once per tick and as soon as a level crosses its cap threshold, and publishes the commands to
pp.commands and pp.audit. Acks are verified (signed by the actuators' key) and read back to measure command
latency and to log what the actuators really applied; a forged one is dead-lettered and raises a security event.

With `shadow` (`powerplane controller --shadow`, controllers/shadow.py) the same loop runs as the `shadow` role
in its own consumer group, reads no acks, and publishes its commands to pp.shadow only: no pp.commands, no
pp.audit, no pp.events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from controllers.capping import (
    CapSettings,
)
from controllers.controller import CapController, ControllerStats
from controllers.grid_inbox import Answer, GridInbox
from controllers.job_inbox import JobInbox, job_inbox
from controllers.shadow import ShadowController
from powerplane import access, topics
from powerplane.config import Config
from powerplane.grid_input import MAX_AHEAD_S, GridRecords, Ledger
from powerplane.job_input import MAX_AHEAD_S as JOB_MAX_AHEAD_S
from powerplane.kafka import DeadLetters, OutagePoll, Producer, client_auth, consumer, seed_fresh_group
from powerplane.metrics import ConsumerLag, kafka_python_lags
from powerplane.schemas import (
    Ack,
    DeadLetter,
    FacilityReading,
    GridCancel,
    GridRequest,
    Headroom,
    JobNotice,
    LevelAggregate,
    SchemaError,
    TelemetryFrame,
)
from powerplane.signing import Keyring, ack_key_path, ack_refused_event, grid_key_path, load_keyring
from powerplane.site import Site

log = logging.getLogger("powerplane.controller")


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
        yield CounterMetricFamily("powerplane_controller_held_decisions",
                                  "decisions that held every cap because the inputs were stale (docs/safety.md)",
                                  value=float(st.held_decisions))
        yield GaugeMetricFamily("powerplane_controller_holding", "1 while the inputs are stale and every cap is held",
                                value=float(self.ctl.holding is not None))
        now = time.time()  # +Inf until the first per-frame input arrives
        yield GaugeMetricFamily("powerplane_controller_input_arrival_age_seconds",
                                "seconds since the newest per-frame input arrived", value=now - self.ctl.inputs_seen_s)
        yield GaugeMetricFamily("powerplane_controller_input_event_age_seconds",
                                "seconds since the newest per-frame input was measured (its event time)",
                                value=now - self.ctl.inputs_ts_s)
        yield CounterMetricFamily("powerplane_controller_acks_refused", "acks not signed by an actuator key",
                                  value=float(st.acks_refused))
        yield CounterMetricFamily("powerplane_controller_acks_unknown", "signed acks for commands not issued here",
                                  value=float(st.acks_unknown))
        yield CounterMetricFamily("powerplane_controller_floors_refused",
                                  "power_floor commands rejected for want of the knob (GPUs then left for an hour)",
                                  value=float(st.floors_refused))
        yield CounterMetricFamily("powerplane_controller_dead_letters", "records sent to the dead-letter topic",
                                  value=float(self.dlq.count))
        yield CounterMetricFamily("powerplane_controller_producer_dropped_records",
                                  "commands and events the bounded producer dropped or the broker refused",
                                  value=float(self.producer.dropped + self.producer.failed))
        lat = sorted(st.latencies_s)
        q = GaugeMetricFamily("powerplane_controller_command_ack_seconds",
                              "command-to-acknowledgement latency over the last 10,000 commands", labels=["quantile"])
        for p in (0.5, 0.99):
            q.add_metric([str(p)], lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan"))
        yield q


def take_ack(stats: ControllerStats, ack_keyring: Keyring, issued: OrderedDict[str, None],
             sent_at: dict[str, float], ack: Ack, now_s: float, ctl: CapController | None = None) -> str | None:
    """Count an ack an actuator signed for a command this controller issued (latency, outcome); return
    the reason an ack is refused (not signed by an actuator key: dead letter and security event). A signed
    ack for a command id not issued here (another controller, or one from before a restart) is logged and
    counted apart, never taken as an outcome. `ctl` is told of each outcome (CapController.on_ack): a floor
    the hardware cannot hold is its to count and log, not a warning per ack."""
    bad = ack_keyring.verify(ack)
    if bad:
        stats.acks_refused += 1
        return bad
    if ack.command_id not in issued and not ack.command_id.startswith("lease-expiry:"):
        stats.acks_unknown += 1
        if stats.acks_unknown in (1, 10, 100) or stats.acks_unknown % 1000 == 0:
            log.warning("ack '%s' for %s from %s names a command this controller did not issue (%d so far); "
                        "not counted", ack.status, ack.command_id[:40], ack.actuator, stats.acks_unknown)
        return None
    stats.acks[ack.status] = stats.acks.get(ack.status, 0) + 1
    t0 = sent_at.pop(ack.command_id, None)
    if t0 is not None:
        stats.latencies_s.append(now_s - t0)
    if ctl is not None and ctl.on_ack(ack, now_s):
        return None
    if ack.status not in ("applied", "duplicate"):
        log.warning("ack %s for %s: %s %s", ack.command_id[:8], ack.target, ack.status, ack.reason)
    return None


class ControllerLoop:
    """One controller's inputs taken a poll at a time, and its decisions published.

    A poll's records are decoded a topic-partition at a time (`Record.decode_many`: the controller reads the
    whole site's telemetry, aggregates and headroom, ~8,000 records a second at 100 MW, and per-record decoding
    was most of its CPU). Aggregates and headroom are taken first: when a breaker crosses its cap threshold the
    decision goes out before the poll's telemetry and acks are read (a feed loss arrives as thousands of
    records, and reading them all first delayed the commands by ~0.1-0.2 s)."""

    def __init__(self, ctl: CapController, producer: Producer, dlq: DeadLetters, ack_keyring: Keyring,
                 decide_on_crossing: bool, shadow: bool = False, inbox: GridInbox | None = None,
                 jobs: JobInbox | None = None) -> None:
        self.ctl, self.producer, self.dlq, self.ack_keyring = ctl, producer, dlq, ack_keyring
        self.inbox = inbox  # demand-response requests from pp.grid (controllers.grid_inbox)
        self.jobs = jobs  # job-start notices from pp.jobs (controllers.job_inbox)
        self.decide_on_crossing = decide_on_crossing
        self.shadow = shadow  # decisions to pp.shadow only, never to pp.commands or pp.audit
        self.sent_at: dict[str, float] = {}
        self.issued: OrderedDict[str, None] = OrderedDict()  # ids sent here: an ack for another is not believed

    def take(self, batch: dict[Any, list[Any]], now_s: float, which: tuple[str, ...]) -> bool:
        """The records of topics `which`; True when an aggregate crossed a cap threshold (decide now)."""
        urgent = False
        mine = sorted(((tp, msgs) for tp, msgs in batch.items() if tp.topic in which),
                      key=lambda it: which.index(it[0].topic))  # in the order of `which`: facility first
        for tp, msgs in mine:
            cls = _RECORDS[tp.topic]
            for m, rec in zip(msgs, cls.decode_many([m.value for m in msgs]), strict=True):
                try:
                    if isinstance(rec, SchemaError):
                        raise rec
                    urgent = self._take_one(tp, m, rec, now_s) or urgent
                except (SchemaError, KeyError) as e:
                    self.dlq.publish(DeadLetter(tp.topic, tp.partition, m.offset, str(e), m.key, m.value or b""))
        return urgent

    def _take_one(self, tp: Any, m: Any, rec: Any, now_s: float) -> bool:
        ctl = self.ctl
        if isinstance(rec, LevelAggregate):
            urgent = self.decide_on_crossing and ctl.crosses_cap(rec)
            ctl.on_aggregate(rec, now_s)
            return urgent
        if isinstance(rec, FacilityReading):  # a UPS on battery is a crossing: decide now (docs/safety.md)
            urgent, why = ctl.on_facility(rec, now_s)
            if why:
                self.dlq.publish(DeadLetter(tp.topic, tp.partition, m.offset, why, m.key, m.value or b""))
            return urgent
        if isinstance(rec, GridRequest | GridCancel | JobNotice):
            ans = (self.inbox.take(rec, now_s) if isinstance(rec, GridRequest) and self.inbox is not None else
                   self.inbox.cancel(rec, now_s) if isinstance(rec, GridCancel) and self.inbox is not None else
                   self.jobs.take(rec, now_s) if isinstance(rec, JobNotice) and self.jobs is not None else None)
            if ans is not None:
                self.answer(ans, now_s, DeadLetter(tp.topic, tp.partition, m.offset, ans.summary, m.key,
                                                   m.value or b""), m.value or b"")
            return False
        if isinstance(rec, TelemetryFrame):
            ctl.on_frame(rec, now_s)
        elif isinstance(rec, Headroom):
            ctl.on_headroom(rec, now_s)
        else:
            refused = take_ack(ctl.stats, self.ack_keyring, self.issued, self.sent_at, rec, now_s, ctl)
            if refused:
                self.dlq.publish(DeadLetter(tp.topic, tp.partition, m.offset, refused, m.key, m.value or b""))
                ev = ack_refused_event(rec, refused, "controller")
                self.producer.send(topics.EVENTS.name, ev.encode(), key=ev.id.encode())
        return False

    def answer(self, ans: Answer, now_s: float, dead: DeadLetter | None = None, raw: bytes = b"") -> None:
        """Publish the answer to a demand-response request or a job notice: one line in the log always; live, an
        event on pp.events and the record (as received) and its answer on pp.audit, and a refused record on
        pp.deadletter with its reason. A shadow publishes none of it (it takes the record into its own policy
        only)."""
        who = "shadow controller" if self.shadow else "controller"
        (log.warning if ans.status == "refused" else log.info)("%s: %s %s %s: %s", who, ans.what, ans.req.id,
                                                               ans.status, ans.summary)
        if self.shadow:
            return
        if ans.status == "refused" and dead is not None:
            self.dlq.publish(dead)
        ev = ans.event("controller", now_s)
        data = ev.encode()
        self.producer.send(topics.EVENTS.name, data, key=ev.id.encode())
        if raw:
            self.producer.send(topics.AUDIT.name, raw, key=ans.req.id.encode())
        self.producer.send(topics.AUDIT.name, data, key=ans.req.id.encode())

    def grid_due(self, now_s: float) -> None:
        """Start the demand-response requests whose time has come (before the decision that applies them)."""
        if self.inbox is not None:
            for ans in self.inbox.due(now_s):
                self.answer(ans, now_s)

    def decide(self) -> None:
        """Decide now (the decision's time is taken here) and publish: every command first, then their copies
        on pp.audit, so the last command is not queued behind a thousand audit records."""
        cmds = self.ctl.decide(time.time())
        encoded = [(cmd, cmd.encode()) for cmd in cmds]
        if self.shadow:  # what it would have done, and nothing else: no pp.commands, no pp.audit
            for cmd, data in encoded:
                self.producer.send(topics.SHADOW.name, data, key=cmd.key())
            encoded = []
        for cmd, data in encoded:
            self.producer.send(topics.COMMANDS.name, data, key=cmd.key())
            self.sent_at[cmd.id] = time.time()
            self.issued[cmd.id] = None
        for cmd, data in encoded:
            self.producer.send(topics.AUDIT.name, data, key=cmd.id.encode())
            # Per command at debug: a site-wide loss is 1,024 commands in one decision, and a log line each
            # delayed the last of them by a tenth of a second. Every command is on pp.audit.
            log.debug("command %s %s: %d GPU(s) -> %s W (%s)", cmd.id[:8], cmd.target, cmd.gpus.size,
                      _summary(cmd.values), cmd.reason)
        changes = [c for c in cmds if c.reason != "lease renewal"]
        if changes:
            reasons = Counter(c.reason.split(":")[0] for c in changes)
            log.info("%sdecision: %d command(s) for %d rack(s) (%s), %d renewal(s)",
                     "shadow " if self.shadow else "", len(changes),
                     len({c.target for c in changes}), ", ".join(f"{k} x{n}" for k, n in reasons.items()),
                     len(cmds) - len(changes))
        while len(self.sent_at) > 100_000:  # bounded: forget the oldest unacknowledged
            self.sent_at.pop(next(iter(self.sent_at)))
        while len(self.issued) > 100_000:
            self.issued.popitem(last=False)


_RECORDS: dict[str, Any] = {topics.AGGREGATES.name: LevelAggregate, topics.TELEMETRY.name: TelemetryFrame,
                            topics.HEADROOM.name: Headroom, topics.ACKS.name: Ack,
                            topics.FACILITY.name: FacilityReading, topics.GRID.name: GridRecords,
                            topics.JOBS.name: JobNotice}
# What a decision needs, taken before the rest: facility signals first (a UPS on battery is the earliest word of a
# feed loss), then aggregates and headroom.
_FIRST = (topics.FACILITY.name, topics.AGGREGATES.name, topics.HEADROOM.name)
_THEN = (topics.TELEMETRY.name, topics.ACKS.name, topics.GRID.name, topics.JOBS.name)


# Every controller decides at this fraction of a tick past the wall clock's whole ticks (half past each second),
# not at its own start time plus whole ticks: a live controller and a shadow then decide at the same instants,
# so their decisions line up second by second (`powerplane shadow compare`), and the frames stamped on the
# second (collectors sample on interval boundaries) have half a second to arrive before the decision.
TICK_PHASE = 0.5


def first_tick(tick_s: float, wall_s: float, mono_s: float) -> float:
    """The monotonic time of the first tick: the next wall-clock instant TICK_PHASE of a tick past a multiple
    of tick_s. Later ticks follow on the monotonic clock (a step of the wall clock never stalls the loop)."""
    return mono_s + (TICK_PHASE * tick_s - wall_s) % tick_s


def live_actions(cfg: Config) -> frozenset[str]:
    """The knobs the live controller sends: caps and clock locks (no request router consumes routing weights in
    this deployment yet), and power floors where `power_floors = "on"`."""
    return frozenset(("power_cap", "sm_clock_lock", *(("power_floor",) if cfg.power_floors == "on" else ())))


def _wiring(shadow: bool) -> tuple[str, str, tuple[str, ...]]:
    """(Kafka role, consumer group, topics read) of the controller, or of a shadow: its own role and group (it
    never takes the live controller's partitions), and no acks (nothing applies its commands)."""
    inputs = (topics.AGGREGATES.name, topics.TELEMETRY.name, topics.HEADROOM.name, topics.FACILITY.name,
              topics.GRID.name, topics.JOBS.name)
    if shadow:
        return "shadow", access.SHADOW_GROUP, inputs
    return "controller", "powerplane-controller", (*inputs, topics.ACKS.name)


def run(cfg: Config, site: Site, keyring: Keyring, stop: threading.Event, tick_s: float = 1.0,
        registry: Any = None, decide_on_crossing: bool = False, ack_keyring: Keyring | None = None,
        shadow: bool = False) -> CapController:
    """decide_on_crossing: also decide as soon as a PDU load crosses the cap threshold, not only every
    tick_s (a site-wide feed loss is then capped without waiting up to a tick). ack_keyring: the keys acks
    must be signed with (default: the config's ack keyring, created if missing). registry: a served
    prometheus_client CollectorRegistry that gets the controller's metrics and consumer lag. shadow: run as a
    shadow (controllers/shadow.py); `keyring` is then the shadow key."""
    if ack_keyring is None and not shadow:
        ack_keyring = load_keyring(ack_key_path(cfg.signing_key_file, cfg.ack_key_file), cfg.ack_key_id, create=True)
    ctl = (ShadowController if shadow else CapController)(
        site, keyring, CapSettings(cfg.cap_threshold, cfg.uncap_threshold), cfg.command_lease_s,
        actions=live_actions(cfg))
    role, group, inputs = _wiring(shadow)
    auth = client_auth(cfg, role)
    producer = Producer(cfg.kafka_bootstrap, group, auth=auth)
    dlq = DeadLetters(producer, "controller-shadow" if shadow else "controller")
    # A request or notice sent before this group's first start (the utility announces a day ahead, a prolog
    # minutes ahead) is read, not skipped: reading goes back as far ahead as each may start.
    back = {topics.GRID.name: MAX_AHEAD_S, topics.JOBS.name: JOB_MAX_AHEAD_S}
    now = time.time()
    seeded = seed_fresh_group(cfg.kafka_bootstrap, group, {t: now - b for t, b in back.items()}, auth)
    for topic, offsets in seeded.items():
        span = f"{back[topic] / 3600:g} h" if back[topic] >= 3600 else f"{back[topic] / 60:g} min"
        log.info("%s: first start of group %s on %s: reading the records sent in the last %s (offsets %s)",
                 "shadow controller" if shadow else "controller", group, topic, span, offsets)
    cons = consumer(cfg.kafka_bootstrap, group, *inputs, auth=auth)
    if registry is not None:
        registry.register(ControllerMetrics(ctl, producer, dlq))
        registry.register(ConsumerLag(group, partial(kafka_python_lags, cons)))
    state = Path(cfg.state_dir) / ("controller-shadow" if shadow else "controller")  # a shadow's answers are its own
    loop = ControllerLoop(ctl, producer, dlq, ack_keyring or keyring, decide_on_crossing, shadow=shadow,
                          inbox=grid_inbox(cfg, ctl, state), jobs=job_inbox(cfg, ctl, state))
    next_tick = first_tick(tick_s, time.time(), time.monotonic())
    poll = OutagePoll(cons, "shadow controller" if shadow else "controller", stop)
    try:
        while not stop.is_set():
            batch = poll(timeout_ms=100, max_records=5000)  # through an outage: {} and the loop holds on stale
            now = time.time()
            decided = loop.take(batch, now, _FIRST)
            if decided:
                loop.decide()
            loop.take(batch, now, _THEN)
            if time.monotonic() >= next_tick:
                next_tick += tick_s
                loop.grid_due(time.time())
                if not decided:  # one decision a round: a crossing's was a moment ago
                    loop.decide()
    finally:
        cons.close()
        producer.close()
    return ctl


def grid_inbox(cfg: Config, ctl: CapController, state: Path) -> GridInbox:
    """The demand-response inbox, its ledger in the controller's state directory `state`, with the requests still
    held before a restart taken back."""
    keys = load_keyring(grid_key_path(cfg.signing_key_file, cfg.grid_key_file), cfg.grid_key_id, create=True)
    ledger = Ledger(state / "grid-requests.sqlite", GridRequest.decode)
    inbox = GridInbox(ctl, keys, ledger)
    for line in inbox.restore(time.time()):
        log.info("%s", line)
    return inbox


def _summary(v: np.ndarray) -> str:
    return f"{float(v.min()):.0f}" if float(v.min()) == float(v.max()) else f"{float(v.min()):.0f}-{float(v.max()):.0f}"

