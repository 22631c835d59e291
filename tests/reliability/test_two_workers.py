"""Issue 13, scale-out: two `powerplane streams worker` processes in one consumer group on the real broker, the
lab site publishing at 1 Hz with feed A lost. A second worker joins while telemetry flows (the group rebalances
and may move the site stage to it), then the worker that owns the site stage (the site's pp.racks partition) is
killed with SIGKILL mid-way between two checkpoints, while the feed-loss emergency is open. The survivor takes its
partitions and the site stage with its changelog state: site windows are published again within 10 s of the
kill, every 1-s window of the run is published (none lost, across the join and the kill), the dead worker's racks
are served again within 10 s, and the open emergency is not paged again (same id, one "open").

The figures of each run are printed on one line (`pytest -s`) and recorded in docs/reliability.md, "Two
streams workers"."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from ops.demo import STREAMS_GROUPS, Services, wait_for_groups
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import process_auth
from powerplane.metrics import LAG
from powerplane.schemas import Event, LevelAggregate, SchemaError
from streams.handover import site_partition
from tests.integration.conftest import free_port
from tests.integration.helpers import end_offsets, start_streams_at_end
from tests.integration.test_streams_site import site_copy

HANDOVER_S = 10.0  # the bound: from the kill to site windows (and every rack's) published again
AFTER_S = 20.0  # the survivor runs on this long after the kill
# Late between two checkpoints (every 5 s of event time), after an offset commit (every 2.8 s): the survivor
# replays the records taken after the checkpoint, and closes those windows again.
KILL_AFTER_CHECKPOINT_S = 4.0
JOINED_S = 8.0  # the kill comes at least this long after the join: the site stage has moved on since
WORKERS = ("worker-1", "worker-2")


@dataclass
class Watch:
    """What a consumer of pp.aggregates and pp.events sees of the site, with the wall clock on arrival."""

    site: str
    aggs: list[tuple[float, LevelAggregate]] = field(default_factory=list)
    events: list[tuple[float, Event]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, c: Config, start: dict[str, dict[int, int]]) -> None:
        cons = KafkaConsumer(bootstrap_servers=c.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                             **process_auth().kafka_python())
        try:
            parts = [TopicPartition(t, p) for t in start for p in start[t]]
            cons.assign(parts)
            for tp in parts:
                cons.seek(tp, start[tp.topic][tp.partition])
            while not self.stop.is_set():
                for tp, msgs in cons.poll(timeout_ms=200).items():
                    now = time.time()
                    for m in msgs:
                        self._take(tp.topic, m.value, now)
        finally:
            cons.close()

    def _take(self, topic: str, value: bytes, now: float) -> None:
        try:
            if topic == topics.AGGREGATES.name:
                a = LevelAggregate.decode(value)
                if a.site == self.site:
                    self.aggs.append((now, a))
            else:
                e = Event.decode(value)
                if e.site == self.site:
                    self.events.append((now, e))
        except SchemaError:
            pass

    def feed_loss(self) -> Event | None:
        return next((e for _, e in self.events if e.kind == "feed_loss" and e.state == "open"), None)

    def site_windows(self) -> list[tuple[float, LevelAggregate]]:
        return [(t, a) for t, a in self.aggs if a.kind == "site"]


def _members(c: Config, group: str) -> int:
    logging.getLogger("kafka.admin").setLevel(logging.ERROR)  # it cannot decode faust's member metadata: says so
    admin = KafkaAdminClient(bootstrap_servers=c.kafka_bootstrap, **process_auth().kafka_python())
    try:
        d = admin.describe_groups([group])[group]
        return len(d.get("members") or []) if d.get("group_state") == "Stable" else -1
    finally:
        admin.close()


def _metrics(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode().splitlines()


def _owns(port: int, partition: int) -> bool:
    """Whether the worker serving /metrics on `port` holds the pp.racks partition (its consumer lag is exported
    for each partition assigned to it)."""
    want = (LAG, f'topic="{topics.RACKS.name}"', f'partition="{partition}"')
    return any(all(w in line for w in want) for line in _metrics(port))


def _holder(ports: dict[str, int], partition: int) -> str | None:
    """The one worker holding the pp.racks partition (None during a rebalance)."""
    held = [n for n in WORKERS if _owns(ports[n], partition)]
    return held[0] if len(held) == 1 else None


def _checkpoints(port: int) -> float:
    return next(float(line.split()[1]) for line in _metrics(port)
                if line.startswith("powerplane_streams_checkpoints_total "))


def _wait(what: str, cond: Any, svc: Services, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        svc.check()
        if v := cond():
            return v
        time.sleep(0.1)
    raise AssertionError(f"not {what} within {timeout_s:.0f} s")


@dataclass
class Run:
    partition: int
    owner_after_join: str = ""
    victim: str = ""
    t_join: float = 0.0
    t_kill: float = 0.0
    t_end: float = 0.0
    event: Event | None = None


def _kill_the_site_owner(svc: Services, ports: dict[str, int], run: Run) -> None:
    """kill -9 the worker holding the site's pp.racks partition, KILL_AFTER_CHECKPOINT_S after a checkpoint."""
    run.victim = _wait("one worker holding the site stage", lambda: _holder(ports, run.partition), svc, 30)
    before = _checkpoints(ports[run.victim])
    _wait("a checkpoint", lambda: _checkpoints(ports[run.victim]) > before, svc, 15)
    time.sleep(KILL_AFTER_CHECKPOINT_S)
    victim = svc.procs.pop(run.victim)
    run.t_kill = time.time()
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()


def _run(c: Config, tmp: Path, w: Watch) -> Run:
    run = Run(partition=site_partition(w.site))
    ports = {name: free_port() for name in WORKERS}
    svc = Services(c, tmp / "logs")
    try:
        svc.start(WORKERS[0], "streams", "worker", "--metrics-port", str(ports[WORKERS[0]]))
        wait_for_groups(c, STREAMS_GROUPS, check=svc.check)
        svc.start("fleet", "fleet", "--lose-feed", "A", "--at", "3")
        _wait("site windows published", lambda: len(w.site_windows()) >= 3, svc, 60)
        run.t_join = time.time()  # scale out while telemetry flows
        svc.start(WORKERS[1], "streams", "worker", "--metrics-port", str(ports[WORKERS[1]]))
        _wait("both workers in both groups", lambda: all(_members(c, g) == 2 for g in STREAMS_GROUPS), svc, 60)
        run.owner_after_join = _wait("one worker holding the site stage", lambda: _holder(ports, run.partition),
                                     svc, 30)
        run.event = _wait("the feed loss paged", w.feed_loss, svc, 60)
        time.sleep(max(0.0, run.t_join + JOINED_S - time.time()))
        _kill_the_site_owner(svc, ports, run)
        time.sleep(AFTER_S)
        svc.check()
        run.t_end = time.time()
    finally:
        svc.stop()
    return run


def _takeover(tmp: Path, survivor: str) -> tuple[int, float, float]:
    """From the survivor's log: records it replayed after loading the checkpoint, and the wall clock when the
    site's partition was assigned to it and when it resumed from the checkpoint (the last of each)."""
    log = (tmp / "logs" / f"{survivor}.log").read_text(errors="replace")
    stamp = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]"

    def last(pattern: str) -> tuple[float, str]:
        found = re.findall(stamp + r".*" + pattern, log)
        if not found:
            return float("nan"), "-1"
        day, ms, *rest = found[-1]
        return time.mktime(time.strptime(day, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000, (rest or ["-1"])[0]

    assigned, _ = last(r"pp\.racks\[\d+\] assigned to this worker")
    resumed, n = last(r"(\d+) record\(s\) of pp\.racks\[\d+\] taken after it to replay")
    return int(n), assigned, resumed


def _longest_silence_s(arrivals: list[float], t_from: float, t_to: float) -> float:
    seen = sorted(t for t in arrivals if t_from < t < t_to)
    return max(b - a for a, b in zip([t_from, *seen], [*seen, t_to], strict=True))


def _republished(sites: list[tuple[float, LevelAggregate]]) -> tuple[int, list[tuple[float, ...]]]:
    """Site windows published more than once, and those whose figures differ from the first publication."""
    first: dict[float, LevelAggregate] = {}
    differ: list[tuple[float, ...]] = []
    for _, a in sites:
        b = first.setdefault(a.ts_s, a)
        if b is not a and (abs(b.power_w - a.power_w) > 1e-6 * a.power_w or b.racks_stale != a.racks_stale):
            differ.append((a.ts_s, b.power_w, a.power_w, b.racks_stale, a.racks_stale))
    return sum(n - 1 for n in Counter(a.ts_s for _, a in sites).values()), differ


def test_killing_the_worker_with_the_site_stage_hands_it_over_within_10s(cfg: Config, tmp_path: Path) -> None:
    path, site = site_copy(tmp_path, "lab-two-workers")
    c = cfg.model_copy(update={"site_file": str(path)})
    start_streams_at_end(c)
    w = Watch(site.name)
    start = {t: end_offsets(c, t) for t in (topics.AGGREGATES.name, topics.EVENTS.name)}
    th = threading.Thread(target=w.run, args=(c, start), daemon=True)
    th.start()
    try:
        run = _run(c, tmp_path, w)
        time.sleep(2.0)  # the watcher reads the tail
    finally:
        w.stop.set()
        th.join(10)
    assert run.event is not None
    sites = w.site_windows()
    handover_s = min(t for t, _ in sites if t > run.t_kill) - run.t_kill
    # Every rack's aggregates resume: the dead worker's pp.telemetry partitions are served by the survivor.
    rack_s = max(_longest_silence_s([t for t, a in w.aggs if a.level == r], run.t_kill - 3, run.t_end)
                 for r in site.rack_ids)
    # No window lost: every 1-s site window from the first to a few seconds before the end was published.
    ts = {round(a.ts_s) for _, a in sites}
    missing = sorted(set(range(min(ts), round(run.t_end) - 8)) - ts)
    # Windows published twice (closed again from the checkpoint) carry the same figures: consumers keep either.
    again, differ = _republished(sites)
    # The open emergency continues under its id: no second "open" for it, no new id for its feed.
    feed_ids = {e.id for _, e in w.events if e.kind == "feed_loss"}
    # A UPS's on-battery trap (the twin's fleet sends one) can show the loss a window before the meters do; the
    # meters' confirmation then sends the open event again, same id, with `signal_unconfirmed` 0 (an update of
    # the page, streams.feed_signals). Any other "open" for the id after the first is a second page.
    opens = [e for _, e in w.events if e.id == run.event.id and e.state == "open"
             and (e.details or {}).get("signal_unconfirmed") != 0.0]
    loss = [e.summary for _, e in w.events if e.kind == "telemetry_loss" and e.state == "open"]
    replayed, assigned, resumed = _takeover(tmp_path, next(n for n in WORKERS if n != run.victim))
    figures = {"site_partition": run.partition, "owner_after_join": run.owner_after_join,
               "join_pause_s": round(_longest_silence_s([t for t, _ in sites], run.t_join, run.t_kill), 2),
               "killed": run.victim, "kill_after_open_s": round(run.t_kill - run.event.ts_s, 1),
               "handover_s": round(handover_s, 2), "assigned_s": round(assigned - run.t_kill, 2),
               "recovered_s": round(resumed - assigned, 2), "replayed": replayed,
               "replayed_s": round(run.t_kill + handover_s - resumed, 2), "rack_silence_s": round(rack_s, 2),
               "published_twice": again, "differ": len(differ), "missing": len(missing), "feed_loss_ids": len(feed_ids),
               "opens": len(opens), "telemetry_loss": len(loss)}
    print(f"\ntwo workers: {figures}")
    assert handover_s < HANDOVER_S, f"site windows published again {handover_s:.1f} s after the kill"
    assert rack_s < HANDOVER_S, f"a rack's aggregates stopped for {rack_s:.1f} s"
    assert not missing, f"{len(missing)} site windows lost: {missing[:10]}"
    # Open finding (docs/reliability.md, row 10c): now and then one republished window differs from its first
    # publication by part of one rack's load (0.2 % and 1.5 % of the site in two of ~20 runs), the replay
    # having taken a frame the first closing did not (or the other way round). Never more than one rack's
    # rating, never a stale count: what the controller holds on (newest window per level) is not moved by it.
    rack_w = float(max(site.limits_w("normal")[0][site.rack_level]))
    assert all(abs(b - a) <= rack_w and sb == sa for _, b, a, sb, sa in differ), \
        f"windows published again with other figures (ts, W, W, stale, stale): {differ[:5]}"
    assert feed_ids == {run.event.id}, f"the feed loss was paged again under another id: {feed_ids}"
    assert len(opens) == 1, f"the feed loss was opened {len(opens)} times"
    assert not loss, f"racks paged as silent: {loss[:3]}"
