"""The first closed loop, end to end through the real broker, as separate processes:

    fleet (sim) --telemetry--> streams worker (faust) --aggregates--> controller --commands-->
    fleet's actuator --acks--> ...           aggregates --> sink --> InfluxDB v2 write API

`powerplane demo` runs it with a feed loss and narrates; the integration test runs the same thing
and asserts on the LoopResult.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ops import devservers
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import process_auth
from powerplane.schemas import Ack, Command, Event, LevelAggregate, SchemaError
from powerplane.site_file import load_site

STREAMS_GROUPS = (topics.STREAMS_APP_ID, topics.STREAMS_RACKS_GROUP)  # the site stage's and the rack stage's
GROUPS = (*STREAMS_GROUPS, "powerplane-controller", "powerplane-sink-influxdb", "powerplane-actuator-twin")


@dataclass
class LoopResult:
    feed_lost_at_s: float | None = None  # wall time the first aggregate showed a lost feed
    first_cap_at_s: float | None = None
    first_ack_at_s: float | None = None
    under_again_at_s: float | None = None  # every PDU back under the high threshold after the loss
    commands: list[Command] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # emergencies the streams worker raised
    pdu_series: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)  # level -> (ts, W, limit)
    aggregates: dict[tuple[str, int], float] = field(default_factory=dict)  # (level, ts_ms) -> power_w
    threshold: float = 0.8
    log_dir: str = ""
    # Windows from before this run (a worker resuming a checkpoint re-closes them, at least once) are not
    # this run's: only aggregates from here on are checked against the store.
    start_ts_s: float = 0.0

    def worst_pdu_frac(self, since_s: float) -> float:
        worst = 0.0
        for series in self.pdu_series.values():
            for ts, w, lim in series:
                if ts >= since_s and lim > 0:
                    worst = max(worst, w / lim)
        return worst


def _env_value(v: Any) -> str:
    return v.get_secret_value() if isinstance(v, SecretStr) else str(v)  # str() of a secret is '****'


class Services:
    """The stage processes, each `python -m ops <stage>`, logging to files."""

    def __init__(self, cfg: Config, log_dir: Path) -> None:
        self.cfg = cfg
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   **{Config.env_name(k): _env_value(v) for k, v in vars(self.cfg).items()})
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "ops", *args], stdout=log,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()[-8:]
                raise RuntimeError(f"{name} exited with {p.returncode}:\n  " + "\n  ".join(tail))

    def stop(self, timeout_s: float = 20.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def wait_for_groups(cfg: Config, groups: tuple[str, ...], timeout_s: float = 90.0,
                    check: Callable[[], None] | None = None) -> None:
    """Block until every consumer group is Stable with members (services are really consuming)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python())
    states: dict[str, str] = {}
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check is not None:
                check()
            try:
                desc = admin.describe_groups(list(groups))
                states = {g: str(d.get("group_state")) for g, d in desc.items()}
                if all(d.get("group_state") == "Stable" and d.get("members") for d in desc.values()):
                    return
            except KafkaError as e:  # the coordinator is not there until the first group joins
                states = {"coordinator": type(e).__name__}
            time.sleep(0.5)
        raise RuntimeError(f"services did not join their consumer groups in {timeout_s:.0f} s: {states}")
    finally:
        admin.close()


def wait_for_offsets(cfg: Config, groups: tuple[str, ...], timeout_s: float = 90.0,
                     check: Callable[[], None] | None = None) -> None:
    """Block until every group has committed offsets: how an actuator, whose partitions are assigned rather
    than subscribed (its group never has members), shows it is reading; it commits its starting positions
    first thing. Only a sign of this run where the groups had no offsets before (a fresh or deleted group)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python())
    missing: list[str] = list(groups)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check is not None:
                check()
            for g in list(missing):
                try:
                    if admin.list_group_offsets({g: None}).get(g):
                        missing.remove(g)
                except KafkaError:  # the coordinator is not there until the first group commits
                    pass
            if not missing:
                return
            time.sleep(0.5)
        raise RuntimeError(f"no committed offsets in {timeout_s:.0f} s for {', '.join(missing)}: their "
                           f"actuators are not reading")
    finally:
        admin.close()


def run_loop(cfg: Config, *, duration_s: float, lose_feed_at_s: float, log_dir: Path,
             narrate: bool = False, streams_workers: int = 1) -> LoopResult:
    """`streams_workers` processes of `powerplane streams worker` share its consumer groups (docs/operations.md,
    "More than one streams worker"); their logs are streams.log, streams-2.log, ..."""
    from kafka import KafkaConsumer

    from controllers.capping import CapSettings

    # The level every PDU must come back under: low priority is shed above cap_threshold, everyone above
    # the high threshold, so the high threshold is the guarantee.
    res = LoopResult(threshold=CapSettings(cfg.cap_threshold, cfg.uncap_threshold).high_threshold,
                     log_dir=str(log_dir))
    svc = Services(cfg, log_dir)
    obs = KafkaConsumer(topics.AGGREGATES.name, topics.COMMANDS.name, topics.ACKS.name, topics.EVENTS.name,
                        bootstrap_servers=cfg.kafka_bootstrap, group_id=None, auto_offset_reset="latest",
                        **process_auth().kafka_python())
    try:
        workers = [("streams" if i == 0 else f"streams-{i + 1}", ("streams", "worker")) for i in range(streams_workers)]
        for name, args in (*workers, ("controller", ("controller",)), ("sink", ("sink",))):
            svc.start(name, *args)
        obs.poll(timeout_ms=500)  # join before anything is produced so nothing is missed
        wait_for_groups(cfg, GROUPS[:4], check=svc.check)
        res.start_ts_s = time.time()
        svc.start("fleet", "fleet", "--duration", f"{duration_s:.0f}", "--lose-feed", "A", "--at",
                  f"{lose_feed_at_s:.0f}")
        t_start = time.time()
        last_print = 0.0
        end = t_start + duration_s + 3.0
        while time.time() < end:
            if svc.procs["fleet"].poll() is None:  # the fleet exits at --duration; the others must not
                svc.check()
            for tp, msgs in obs.poll(timeout_ms=200).items():
                for m in msgs:
                    now = time.time()
                    try:
                        if tp.topic == topics.AGGREGATES.name:
                            _on_agg(res, LevelAggregate.decode(m.value), now)
                        elif tp.topic == topics.EVENTS.name:
                            ev = Event.decode(m.value)
                            res.events.append(ev)
                            if narrate and ev.kind != "command_refused":
                                print(f"t={now - t_start:5.1f}s  EVENT {ev.state} {ev.severity} {ev.kind}: "
                                      f"{ev.summary}", flush=True)
                        elif tp.topic == topics.COMMANDS.name:
                            cmd = Command.decode(m.value)
                            res.commands.append(cmd)
                            if res.first_cap_at_s is None and cmd.reason != "lease renewal":
                                res.first_cap_at_s = now
                        else:
                            ack = Ack.decode(m.value)
                            res.acks.append(ack)
                            if res.first_ack_at_s is None and ack.status in ("applied", "clamped"):
                                res.first_ack_at_s = now
                    except SchemaError:
                        continue
            if narrate and time.time() - last_print >= 2.0:
                last_print = time.time()
                _narrate(res, time.time() - t_start)
        # Let the sink write the tail: wait until the store has what the streams worker published.
        deadline = time.time() + 30.0
        while time.time() < deadline and len(res.aggregates.keys() & _stored(cfg)) < len(res.aggregates):
            time.sleep(0.5)
    finally:
        obs.close()
        svc.stop()
    return res


def _stored(cfg: Config) -> set[tuple[str, int]]:
    try:
        return set(export_points(cfg))
    except (OSError, ValueError):  # the store is unreachable right now: nothing confirmed yet
        return set()


def _on_agg(res: LoopResult, a: LevelAggregate, now: float) -> None:
    if a.ts_s < res.start_ts_s:
        return
    res.aggregates[(a.level, round(a.ts_s * 1000))] = a.power_w
    if a.kind != "pdu":
        return
    res.pdu_series.setdefault(a.level, []).append((a.ts_s, a.power_w, a.limit_w))
    if a.mode != "normal" and res.feed_lost_at_s is None:
        res.feed_lost_at_s = a.ts_s
    if res.feed_lost_at_s is not None and res.first_ack_at_s is not None and res.under_again_at_s is None:
        latest = {lvl: s[-1] for lvl, s in res.pdu_series.items()}
        if all(w <= res.threshold * lim for ts, w, lim in latest.values() if ts >= a.ts_s - 0.5):
            res.under_again_at_s = a.ts_s


def _narrate(res: LoopResult, t: float) -> None:
    latest = {lvl: s[-1] for lvl, s in res.pdu_series.items() if s}
    if not latest:
        print(f"t={t:5.1f}s  waiting for telemetry to flow through the streams worker...", flush=True)
        return
    lvl, (_, w, lim) = max(latest.items(), key=lambda kv: kv[1][1] / max(kv[1][2], 1.0))
    caps = sum(1 for c in res.commands if c.reason != "lease renewal")
    applied = sum(1 for a in res.acks if a.status in ("applied", "clamped"))
    state = "FEED A LOST" if res.feed_lost_at_s else "normal    "
    print(f"t={t:5.1f}s  {state}  hottest PDU {lvl}: {w / 1e3:5.1f} kW = {w / lim:5.1%} of derated limit "
          f"(cap at {res.threshold:.0%})  cap commands {caps:3d}  acks applied {applied:3d}", flush=True)


def export_points(cfg: Config, metric: str = "pp_level_power_w", site: str | None = None
                  ) -> dict[tuple[str, int], float]:
    """Read every stored point of a field (of one site, or all) back from VictoriaMetrics' export API."""
    q = urllib.parse.urlencode({"match[]": metric})
    with urllib.request.urlopen(f"{cfg.influx_url}/api/v1/export?{q}", timeout=10) as r:
        body = r.read().decode()
    out: dict[tuple[str, int], float] = {}
    for line in body.splitlines():
        if not line.strip():
            continue
        series = json.loads(line)
        if site is not None and series["metric"].get("site") != site:
            continue
        level = series["metric"].get("level", "")
        for v, ts in zip(series["values"], series["timestamps"], strict=True):
            out[(level, int(ts))] = float(v)
    return out


def run_demo(cfg: Config, *, duration_s: float, lose_feed_at_s: float, keep_servers: bool,
             streams_workers: int = 1) -> int:
    from powerplane.signing import load_keyring

    was_running = devservers.status(cfg)
    started = not all(was_running.values())
    if started:
        print("Starting Kafka (KRaft) and the time-series server; the first run downloads Kafka's jars...",
              flush=True)
        devservers.up(cfg)
    load_keyring(cfg.signing_key_file, cfg.signing_key_id, create=True)
    log_dir = Path(cfg.state_dir) / "demo"
    print(f"Closed loop on {cfg.site_file}: fleet -> streams -> controller -> actuator, sink -> TSDB. "
          f"Feed A will be lost at t={lose_feed_at_s:.0f}s; run time {duration_s:.0f}s. Logs: {log_dir}/", flush=True)
    try:
        res = run_loop(cfg, duration_s=duration_s, lose_feed_at_s=lose_feed_at_s, log_dir=log_dir, narrate=True,
                       streams_workers=streams_workers)
        stored = export_points(cfg, site=load_site(cfg.site_file).name)
    finally:
        if started and not keep_servers:
            devservers.down(cfg)
    ok = _summary(res, stored)
    return 0 if ok else 1


def _summary(res: LoopResult, stored: dict[tuple[str, int], float]) -> bool:
    print("\nWhat happened:")
    checks: list[tuple[bool, str]] = []
    checks.append((res.feed_lost_at_s is not None, "the streams worker saw feed A lost (all load on feed B PDUs)"))
    caps = [c for c in res.commands if c.reason != "lease renewal"]
    checks.append((bool(caps), f"the controller issued {len(caps)} signed power-cap command(s), "
                               f"{len(res.commands) - len(caps)} lease renewal(s)"))
    applied = [a for a in res.acks if a.status in ("applied", "clamped")]
    checks.append((bool(applied), f"the fleet's actuator acknowledged {len(applied)} of them as applied"))
    loss = [e for e in res.events if e.kind == "feed_loss" and e.state == "open"]
    if loss:
        e = loss[0]
        checks.append((True, f"the streams worker paged a {e.severity} {e.kind} on {e.levels[0]}, deadline "
                             f"{(e.deadline_s or e.ts_s) - e.ts_s:.0f} s (the ride-through for shedding)"))
    else:
        checks.append((False, "no feed_loss emergency on pp.events"))
    if res.feed_lost_at_s and res.under_again_at_s:
        checks.append((True, f"every PDU was back under {res.threshold:.0%} of its derated limit "
                             f"{res.under_again_at_s - res.feed_lost_at_s:.1f} s after the loss"))
    else:
        checks.append((False, "PDUs did not come back under the threshold"))
    tail = res.worst_pdu_frac((res.under_again_at_s or 0) + 5) if res.under_again_at_s else float("nan")
    checks.append((tail <= res.threshold + 0.02, f"afterwards the hottest PDU stayed at {tail:.1%} of its limit"))
    matched = sum(1 for k, v in res.aggregates.items() if k in stored and abs(stored[k] - v) <= 1e-6 * max(1, abs(v)))
    checks.append((matched >= 0.99 * len(res.aggregates) > 0,
                   f"{matched} of {len(res.aggregates)} aggregates are in the time-series store, values equal"))
    for ok, line in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {line}")
    return all(ok for ok, _ in checks)
