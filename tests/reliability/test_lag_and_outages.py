"""Issue 12, findings 3 and 7, on the real broker: a streams worker that falls behind (stopped while telemetry
flows, then restarted) or a broker outage while the fleet spools costs time, not windows, and pages no
telemetry loss for racks whose frames were only waiting in the backlog."""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from collectors import service as collector_service
from collectors.base import SourceContext, load_source
from ops import devservers
from ops.demo import STREAMS_GROUPS, Services, wait_for_groups
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import OutagePoll, Producer, consumer
from powerplane.schemas import Event, LevelAggregate
from sim.fleet import Fleet
from tests.integration.conftest import free_port
from tests.integration.helpers import end_offsets, start_streams_at_end
from tests.integration.test_streams_site import decoded, site_copy

DOWN_S = 20.0
# How long a window may stay open after its end on a loaded machine: every rack's next frame (1 s apart), then
# the rack and site stages. CI's 2 cores once left the window ending 2.5 s before the worker's stop returned
# unpublished (the stop itself took 1.5 s on this machine: the worker checkpoints on the way out).
LIVE_CLOSE_S = 3.0


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return {line.split()[0]: float(line.split()[1]) for line in r.read().decode().splitlines()
                if line and not line.startswith("#")}


def _site_windows(c: Config, site: str, start: dict[int, int]) -> list[float]:
    return sorted({a.ts_s for a in decoded(c, topics.AGGREGATES.name, LevelAggregate, site, start) if a.kind == "site"})


def _assert_lag_is_carried(c: Config, site: str, start: dict[int, int], t_gone: float, t_from: float,
                           t_to: float) -> None:
    """The windows closed from the backlog say how old they were when published (the controller holds on
    them); those published live say they are fresh. `t_gone`: when the worker or the broker began to go away;
    `t_from`..`t_to`: when it was away. A window ending less than LIVE_CLOSE_S before `t_gone` may still have
    been open then (it waits for every rack's next frame and then two stages), so it is neither."""
    aggs = [a for a in decoded(c, topics.AGGREGATES.name, LevelAggregate, site, start) if a.kind == "site"]
    backlog = [a for a in aggs if t_from + 2 <= a.ts_s <= t_to - 5]
    assert backlog and all(a.lag_s is not None and a.lag_s >= 4.0 for a in backlog), \
        [(a.ts_s, a.lag_s) for a in backlog][:5]
    live = [a for a in aggs if a.ts_s < t_gone - LIVE_CLOSE_S]
    assert live and all(a.lag_s is not None and a.lag_s < 4.0 for a in live), \
        [(a.ts_s - t_gone, a.lag_s) for a in live if a.lag_s is None or a.lag_s >= 4.0][:5]


def _run_fleet(c: Config, tmp: Path, name: str, stop: threading.Event) -> threading.Thread:
    """The simulated fleet through the real collector service (spooling to disk while Kafka is away)."""
    from powerplane.site_file import load_site

    site = load_site(c.site_file)
    src = load_source(name, {"kind": "sim", "interval_s": 1.0},
                      SourceContext(site=site, plant=Fleet(site, seed=9, epoch_s=time.time())))
    th = threading.Thread(target=lambda: collector_service.run(c, [src], stop, spool_dir=tmp / "spool",
                                                               client_id=name), daemon=True)
    th.start()
    return th


def _wait_windows_through(c: Config, site: str, start: dict[int, int], ts_s: float, timeout_s: float) -> list[float]:
    deadline = time.monotonic() + timeout_s
    ts: list[float] = []
    while time.monotonic() < deadline:
        ts = _site_windows(c, site, start)
        if ts and ts[-1] >= ts_s:
            break
        time.sleep(2.0)
    return ts


def _assert_no_gap(ts: list[float], t_from: float, t_to: float) -> None:
    span = [t for t in ts if t_from <= t <= t_to]
    missing = sorted(set(np.arange(np.ceil(t_from), np.floor(t_to) + 1)) - set(span))
    assert not missing, f"{len(missing)} windows lost between {t_from:.0f} and {t_to:.0f}: {missing[:10]}"


def test_a_worker_down_20s_while_telemetry_flows_loses_no_window_and_pages_no_loss(cfg: Config,
                                                                                   tmp_path: Path) -> None:
    path, site = site_copy(tmp_path, "lab-lag-restart")
    c = cfg.model_copy(update={"site_file": str(path)})
    start_streams_at_end(c)
    start = {t: end_offsets(c, t) for t in (topics.AGGREGATES.name, topics.EVENTS.name)}
    port = free_port()
    first, second = Services(c, tmp_path / "logs-1"), Services(c, tmp_path / "logs-2")
    stop = threading.Event()
    try:
        first.start("streams", "streams", "worker")
        wait_for_groups(c, STREAMS_GROUPS, check=first.check)
        fleet = _run_fleet(c, tmp_path, "lagtest", stop)
        time.sleep(10.0)
        t_gone = time.time()
        first.stop()  # the worker goes away; telemetry keeps flowing into the backlog
        t_down = time.time()
        time.sleep(DOWN_S)
        second.start("streams", "streams", "worker", "--metrics-port", str(port))
        wait_for_groups(c, STREAMS_GROUPS, check=second.check)
        t_end = time.time() + 8.0
        ts = _wait_windows_through(c, site.name, start[topics.AGGREGATES.name], t_end, 40.0)
        second.check()
        m = _metrics(port)
    finally:
        stop.set()
        first.stop()
        second.stop()
    fleet.join(30)
    assert ts and ts[-1] >= t_end, f"the restarted worker did not catch up: last window {ts[-1:]}, want {t_end:.0f}"
    _assert_no_gap(ts, t_down - 5.0, t_end)
    _assert_lag_is_carried(c, site.name, start[topics.AGGREGATES.name], t_gone, t_down, t_down + DOWN_S)
    loss = [e for e in decoded(c, topics.EVENTS.name, Event, site.name, start[topics.EVENTS.name])
            if e.kind == "telemetry_loss" and e.state == "open"]
    assert not loss, [e.summary for e in loss][:5]
    assert m["powerplane_streams_late_frames_total"] == 0  # the backlog is behind, not late
    assert m["powerplane_streams_windows_total"] >= DOWN_S  # it closed the backlog's windows, not skipped them


def test_a_broker_outage_while_the_fleet_spools_loses_no_window(cfg: Config, tmp_path: Path) -> None:
    path, site = site_copy(tmp_path, "lab-lag-outage")
    c = cfg.model_copy(update={"site_file": str(path)})
    start_streams_at_end(c)
    start = end_offsets(c, topics.AGGREGATES.name)
    ev_start = end_offsets(c, topics.EVENTS.name)
    svc = Services(c, tmp_path / "logs")
    stop = threading.Event()
    try:
        svc.start("streams", "streams", "worker")
        # The kafka-python stages ride it out too: CI once lost the controller 20 s into an outage (poll()
        # raised the connection error); the sink reads and commits through the same client.
        svc.start("controller", "controller")
        svc.start("sink", "sink", "influxdb")
        wait_for_groups(c, STREAMS_GROUPS, check=svc.check)
        fleet = _run_fleet(c, tmp_path, "outagetest", stop)
        time.sleep(10.0)
        t_out = time.time()
        devservers.stop_kafka(c)
        time.sleep(DOWN_S)
        devservers.start_kafka(c, devservers.paths(c))
        t_end = time.time() + 8.0
        ts = _wait_windows_through(c, site.name, start, t_end, 50.0)
        svc.check()
    finally:
        stop.set()
        svc.stop()
    fleet.join(30)
    assert ts and ts[-1] >= t_end, f"no windows after the outage: last {ts[-1:]}, want {t_end:.0f}"
    _assert_no_gap(ts, t_out - 3.0, t_end)  # finding 7: 22 windows dropped (a 23 s gap in the site series)
    _assert_lag_is_carried(c, site.name, start, t_out, t_out, t_out + DOWN_S)
    loss = [e for e in decoded(c, topics.EVENTS.name, Event, site.name, ev_start)
            if e.kind == "telemetry_loss" and e.state == "open"]
    assert not loss, [e.summary for e in loss][:5]
    log = (tmp_path / "logs" / "streams.log").read_text(errors="replace")
    assert log.count("Unable connect") <= 3, "the client's connection errors were not held back"
    assert "Kafka broker reachable again after" in log
    for name in ("controller", "sink"):  # alive at svc.check() after the outage; and one pair of lines at most
        text = (tmp_path / "logs" / f"{name}.log").read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        assert text.count("Kafka broker unreachable") == text.count("Kafka broker reachable again") <= 1, text[-3000:]


def test_a_kafka_python_stage_polls_through_a_broker_outage_and_reads_what_comes_after(
        cfg: Config, caplog: pytest.LogCaptureFixture) -> None:
    """The controller, actuators, sinks and `record` poll through OutagePoll. kafka-python 3.0.12 raises the
    connection error out of poll() when the group's coordinator is unknown while the broker is away (CI lost
    the controller so); a consumer that has not yet joined its group when the broker goes is that case. It is a
    race still: it raised in each of four runs here and in none of one CI run, so the lines are checked when it
    did, and the read after the outage always."""
    group = f"outage-poll-{time.time_ns()}"
    cons = consumer(cfg.kafka_bootstrap, group, topics.AUDIT.name, auto_offset_reset="earliest")
    poll = OutagePoll(cons, "test stage")
    caplog.set_level(logging.INFO, logger="powerplane.kafka")
    devservers.stop_kafka(cfg)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 8.0:
            assert poll(timeout_ms=3000) == {}
    finally:
        devservers.start_kafka(cfg, devservers.paths(cfg))
    try:
        assert poll.outages == (1 if poll.failures else 0), (poll.failures, poll.outages)
        mark = f"after the outage {time.time_ns()}".encode()
        producer = Producer(cfg.kafka_bootstrap, "outage-poll-test")
        producer.send(topics.AUDIT.name, mark, key=b"outage-poll-test")
        producer.close()
        got: list[bytes] = []
        deadline = time.monotonic() + 60.0
        while mark not in got and time.monotonic() < deadline:
            got += [m.value for msgs in poll(timeout_ms=500).values() for m in msgs]
        assert mark in got, "the consumer read nothing after the broker came back"
    finally:
        cons.close()
    lines = [r.getMessage() for r in caplog.records if "test stage" in r.getMessage()]
    said = [ln.split(":")[1].split("(")[0].strip() for ln in lines]
    assert said == (["Kafka broker unreachable", "Kafka broker reachable again"] if poll.failures else []), lines
