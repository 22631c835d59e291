"""The 100 MW reference site through a streams worker down 60 s and a broker out 60 s, on the real broker.

Issue 12's finding 3: when the streams worker fell behind, racks counted as silent at rated power and the
controller braked up to 776 racks in one decision. This bench runs the whole loop as processes (Kafka KRaft,
`powerplane streams worker`, `powerplane controller`, `powerplane fleet` with its actuator) on the 100 MW
reference site (1,024 racks, 73,728 GPUs, one frame per rack per second) at steady load, then:

  worker  the streams worker is killed (SIGKILL) for --down s while the fleet keeps publishing, then
          restarted: it resumes from its changelog and works off the backlog;
  broker  the Kafka broker is stopped for --down s (the fleet spools to disk, every client loses its
          connection), then started again on the same log directory.

After each case it watches --after s of recovery. Every command, event and site aggregate is read back from
the broker afterwards and counted per phase (by the controller's decision time, the events' and windows'
event time): commands other than lease renewals (power brakes named apart), `telemetry_loss` and other
events opened, site windows missing, the worst `lag_s` the windows carried. Expected: 0 power brakes and no
cap in any outage or recovery phase when the baseline at the same steady load has none.

    .venv/bin/python bench/bench_outages.py [--halls 4] [--down 60] [--after 60] [--cases worker,broker]
        [--json FILE] [--logs DIR]

Every process it starts is stopped on exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka import KafkaConsumer, TopicPartition  # noqa: E402

from bench.bench_feed_loss_latency import machine, read_back, stop_proc  # noqa: E402
from bench.common import free_port, ref_site_run  # noqa: E402
from ops import devservers  # noqa: E402
from ops.demo import STREAMS_GROUPS, Services, wait_for_groups, wait_for_offsets  # noqa: E402
from powerplane import topics  # noqa: E402
from powerplane.config import Config  # noqa: E402
from powerplane.kafka import process_auth  # noqa: E402
from powerplane.schemas import Command, Event, LevelAggregate, SchemaError  # noqa: E402

SETTLE_S = 20.0  # telemetry before the controller starts (the worker's first windows)
ACTUATOR_GROUP = "powerplane-actuator-twin"


@dataclass
class Phase:
    name: str
    start_s: float
    end_s: float = float("inf")
    commands: int = 0  # other than lease renewals
    brakes: int = 0  # racks braked (commands whose reason is a power brake)
    renewals: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    events_opened: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    max_lag_s: float = 0.0
    held_s: float = 0.0  # how long the controller held every cap on stale inputs (sampled twice a second)

    def holds(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


def phase_of(phases: list[Phase], t: float) -> Phase | None:
    return next((p for p in phases if p.holds(t)), None)


def _records(cfg: Config, topic: str, cls: Any, site_name: str, since_s: float) -> Iterator[Any]:
    """The site's decodable records of one type that landed on the broker since `since_s`."""
    for m in read_back(cfg.kafka_bootstrap, topic, since_s):
        try:
            r = cls.decode(m.value)
        except SchemaError:
            continue
        if r.site == site_name:
            yield r


def count(cfg: Config, site_name: str, phases: list[Phase], since_s: float) -> dict[str, Any]:
    """Folds the run's commands, events and site windows into its phases; returns run-wide counts."""
    for c in _records(cfg, topics.COMMANDS.name, Command, site_name, since_s):
        p = phase_of(phases, c.issued_at_s)
        if p is None:
            continue
        if c.reason == "lease renewal":
            p.renewals += 1
            continue
        p.commands += 1
        p.brakes += c.reason.startswith("power brake")
        head = c.reason.split(":")[0]
        p.reasons[head] = p.reasons.get(head, 0) + 1
    for e in _records(cfg, topics.EVENTS.name, Event, site_name, since_s):
        p = phase_of(phases, e.ts_s)
        if p is not None and e.state == "open":
            p.events_opened[e.kind] = p.events_opened.get(e.kind, 0) + 1
    windows: set[float] = set()
    for a in _records(cfg, topics.AGGREGATES.name, LevelAggregate, site_name, since_s):
        if a.kind != "site":
            continue
        windows.add(a.ts_s)
        p = phase_of(phases, a.ts_s)
        if p is not None:
            p.windows += 1
            if a.lag_s is not None and a.lag_s == a.lag_s:
                p.max_lag_s = max(p.max_lag_s, a.lag_s)
    first, last = phases[0].start_s, phases[-1].end_s
    span = {float(t) for t in range(int(first) + 1, int(last) - 5)}  # whole seconds; the last few may be open
    missing = sorted(span - windows)
    return {"site_windows": len(windows), "site_windows_missing": len(missing), "missing_first": missing[:10]}


class Holding:
    """Samples the controller's `powerplane_controller_holding` gauge into the current phase."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.last_s: float | None = None

    def sample(self, phases: list[Phase]) -> None:
        now = time.time()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=1.0) as r:
                body = r.read().decode()
        except OSError:
            return
        held = any(ln.startswith("powerplane_controller_holding ") and float(ln.split()[1]) > 0
                   for ln in body.splitlines())
        if held and phases and self.last_s is not None:
            phases[-1].held_s += now - self.last_s
        self.last_s = now


def wait(seconds: float, check: Any, hold: Holding | None = None, phases: list[Phase] | None = None) -> None:
    until = time.time() + seconds
    while time.time() < until:
        check()
        if hold is not None and phases is not None:
            hold.sample(phases)
        time.sleep(0.5)


def drain(cfg: Config, site_name: str, until_ts_s: float, timeout_s: float, check: Any) -> float | None:
    """Seconds until the streams worker closed the site window of `until_ts_s` (None: not within timeout_s),
    so the counts cover the backlog it was still working off, not only what it had closed by then."""
    t0 = time.time()
    c = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python(),
                      group_id=None, consumer_timeout_ms=1000)
    try:
        name = topics.AGGREGATES.name
        parts = [TopicPartition(name, p) for p in sorted(c.partitions_for_topic(name) or ())]
        c.assign(parts)
        for tp, end in c.end_offsets(parts).items():  # the window may be closed already: look a little back
            c.seek(tp, max(end - 20_000, 0))
        while time.time() - t0 < timeout_s:
            check()
            for m in c:
                try:
                    a = LevelAggregate.decode(m.value)
                except SchemaError:
                    continue
                if a.kind == "site" and a.site == site_name and a.ts_s >= until_ts_s:
                    return time.time() - t0
    finally:
        c.close()
    return None


def run_case(case: str, cfg: Config, svc: Services, args: argparse.Namespace, phases: list[Phase], check: Any,
             hold: Holding) -> None:
    t0 = time.time()
    phases[-1].end_s = t0
    if case == "worker":
        p = svc.procs.pop("streams")
        os.killpg(p.pid, signal.SIGKILL)  # a crash, not a clean leave: the group waits out its session
        p.wait()
    else:
        devservers.stop_kafka(cfg)
    print(f"{case}: down at {time.strftime('%H:%M:%S', time.localtime(t0))} for {args.down:.0f} s", flush=True)
    phases.append(Phase(f"{case} down", t0))
    wait(args.down, check, hold, phases)
    t1 = time.time()
    phases[-1].end_s = t1
    if case == "worker":
        svc.start("streams", "streams", "worker")
    else:
        devservers.start_kafka(cfg, devservers.paths(cfg))
    phases.append(Phase(f"{case} recovery", t1))
    print(f"{case}: back after {t1 - t0:.0f} s; watching {args.after:.0f} s of recovery", flush=True)
    wait(args.after, check, hold, phases)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--halls", type=int, default=4, help="halls of the reference site (4: 100 MW)")
    ap.add_argument("--baseline", type=float, default=40.0, help="seconds of steady load before the first case")
    ap.add_argument("--down", type=float, default=60.0, help="seconds each outage lasts")
    ap.add_argument("--after", type=float, default=60.0, help="seconds of recovery watched after each outage")
    ap.add_argument("--drain", type=float, default=300.0,
                    help="seconds to wait, after the fleet stops, for the worker to close the run's last windows")
    ap.add_argument("--cases", default="worker,broker", help="comma list of: worker, broker (in this order)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures here")
    ap.add_argument("--logs", metavar="DIR", help="keep the processes' logs here (they are removed otherwise)")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in ("worker", "broker") for c in cases):
        ap.error(f"--cases: expected a comma list of worker and broker, got {args.cases!r}")
    interrupted = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: interrupted.set())
    load_start = os.getloadavg()[0]
    tmp, site, cfg = ref_site_run(args.halls, "bench-outages-")
    print(f"site: {site.n_racks:,} racks, {site.n_gpus:,} GPUs; machine: {machine()}", flush=True)
    svc = Services(cfg, tmp / "logs")

    def check() -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        svc.check()

    phases: list[Phase] = []
    totals: dict[str, Any] = {}
    try:
        devservers.up(cfg, vm=False)
        svc.start("streams", "streams", "worker")
        wait_for_groups(cfg, STREAMS_GROUPS, check=check)
        svc.start("fleet", "fleet", "--duration", "0")
        wait(SETTLE_S, check)
        hold = Holding(free_port())
        svc.start("controller", "controller", "--metrics-port", str(hold.port))
        wait_for_groups(cfg, ("powerplane-controller",), check=check)
        wait_for_offsets(cfg, (ACTUATOR_GROUP,), check=check)  # partitions assigned: no members, offsets
        phases.append(Phase("baseline", time.time()))
        print(f"baseline: {args.baseline:.0f} s of steady load", flush=True)
        wait(args.baseline, check, hold, phases)
        for case in cases:
            run_case(case, cfg, svc, args, phases, check, hold)
        phases[-1].end_s = time.time()
        stop_proc(svc, "controller")
        stop_proc(svc, "fleet")
        print(f"waiting up to {args.drain:.0f} s for the streams worker to close the last windows", flush=True)
        drained = drain(cfg, site.name, phases[-1].end_s - 5.0, args.drain, check)
        totals = count(cfg, site.name, phases, phases[0].start_s - 5.0)
        totals["drained_after_s"] = drained
    except KeyboardInterrupt:
        print("interrupted: stopping everything this bench started", flush=True)
    finally:
        svc.stop()
        devservers.down(cfg, wipe=True)
        if args.logs:
            shutil.copytree(tmp / "logs", args.logs, dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if interrupted.is_set():
        return 130
    return report(args, site.n_racks, site.n_gpus, phases, totals, load_start)


def report(args: argparse.Namespace, racks: int, gpus: int, phases: list[Phase], totals: dict[str, Any],
           load_start: float) -> int:
    print(f"\nsite: {racks:,} racks, {gpus:,} GPUs, steady load; outages {args.down:.0f} s; load average (1 min) "
          f"at start {load_start:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(f"{'phase':18s} {'s':>4s} {'held s':>6s} {'cmds':>6s} {'brakes':>6s} {'renew':>6s} {'windows':>7s} "
          f"{'max lag s':>9s}  events opened; command reasons")
    for p in phases:
        ev = ", ".join(f"{k} {v}" for k, v in sorted(p.events_opened.items())) or "-"
        why = ", ".join(f"{k} {v}" for k, v in sorted(p.reasons.items())) or "-"
        print(f"{p.name:18s} {p.end_s - p.start_s:4.0f} {p.held_s:6.0f} {p.commands:6d} {p.brakes:6d} {p.renewals:6d} "
              f"{p.windows:7d} "
              f"{p.max_lag_s:9.1f}  {ev}; {why}")
    drained = totals.get("drained_after_s")
    print(f"site windows in the run: {totals.get('site_windows', 0)}, missing {totals.get('site_windows_missing', '?')}"
          f" {totals.get('missing_first', [])}; the worker closed the last window "
          + (f"{drained:.0f} s after the fleet stopped" if drained is not None else f"not within {args.drain:.0f} s"))
    base = phases[0].commands if phases else 0
    outage = [p for p in phases[1:]]
    ok = bool(phases) and all(p.brakes == 0 for p in phases) and all(p.commands <= base for p in outage) \
        and all(p.events_opened.get("telemetry_loss", 0) == 0 for p in outage) \
        and totals.get("site_windows_missing", 1) == 0
    print(f"{'EXPECTED' if ok else 'NOT AS EXPECTED'}: 0 brakes, no more commands in any outage or recovery phase "
          f"than in the baseline ({base}), no telemetry_loss opened, no site window missing")
    if args.json:
        out = {"command": " ".join([".venv/bin/python", "bench/bench_outages.py", *map(shlex.quote, sys.argv[1:])]),
               "machine": machine(), "load_avg_1m_start_end": [load_start, os.getloadavg()[0]], "racks": racks,
               "gpus": gpus, "phases": [p.__dict__ for p in phases], **totals, "as_expected": ok}
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
