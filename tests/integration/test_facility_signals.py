"""A false UPS trap on the real broker: the streams worker puts the lineup lost (unconfirmed) at once, rolls
it back when the PDU meters still read it live past the bound, and raises exactly one faulty_signal event."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from collectors.base import SourceContext
from ops.demo import STREAMS_GROUPS, Services, wait_for_groups
from powerplane import topics
from powerplane.config import Config
from powerplane.facility_checks import SIGNAL_BOUND_S
from powerplane.kafka import Producer
from powerplane.schemas import Event, FacilityReading, LevelAggregate
from sim.fleet import Fleet
from sim.source import FleetSource
from tests.integration.helpers import end_offsets, start_streams_at_end
from tests.integration.test_streams_site import decoded, site_copy, wait_for_window


@pytest.mark.integration
def test_a_false_trap_is_published_unconfirmed_then_rolled_back_with_one_faulty_signal(
        cfg: Config, tmp_path: Path) -> None:
    path, site = site_copy(tmp_path, "lab-false-trap")
    c = cfg.model_copy(update={"site_file": str(path)})
    svc = Services(c, tmp_path / "logs")
    start_streams_at_end(c)
    starts = {t: end_offsets(c, t) for t in (topics.AGGREGATES.name, topics.EVENTS.name)}
    epoch = float(int(time.time())) - 20.0  # the first 20 s go out at once, then real time: the trap is fresh
    fleet = Fleet(site, seed=4, epoch_s=epoch)
    src = FleetSource("sim", {"interval_s": 1.0}, SourceContext(site=site, plant=fleet))
    producer = Producer(c.kafka_bootstrap, "test-false-trap")
    trap_ts = 0.0
    seconds = 20 + 15 + int(SIGNAL_BOUND_S) + 12
    try:
        svc.start("streams", "streams", "worker")
        wait_for_groups(c, STREAMS_GROUPS, check=svc.check)
        for i in range(seconds):
            frames = src.read_batch()
            ts = frames[0].ts_s
            time.sleep(max(0.0, ts - time.time()))
            for f in frames:
                producer.send(topics.TELEMETRY.name, f.encode(), key=f.key(), timestamp_ms=int(f.ts_s * 1000))
            if i == 35:  # the fleet runs normally: no feed is lost, the UPS is wrong
                trap_ts = ts + 0.2
                trap = FacilityReading(site=site.name, unit="ups-a", kind="ups", ts_s=trap_ts, interval_s=10.0,
                                       seq=1, source="ups-a-trap", lineup="ups-a", feed="A", on_battery=True,
                                       via="trap", trap="upsTrapOnBattery")
                producer.send(topics.FACILITY.name, trap.encode(), key=trap.key(), timestamp_ms=int(trap_ts * 1000))
            producer.flush()
        wait_for_window(c, site.name, trap_ts + SIGNAL_BOUND_S + 8)
        svc.check()
    finally:
        svc.stop()
        producer.close()
    ups_a = sorted((a for a in decoded(c, topics.AGGREGATES.name, LevelAggregate, site.name,
                                       starts[topics.AGGREGATES.name]) if a.level == "ups-a"), key=lambda a: a.ts_s)
    unconfirmed = [a for a in ups_a if a.feed_signal == "unconfirmed"]
    assert unconfirmed and unconfirmed[0].ts_s - trap_ts <= 3.0 and unconfirmed[0].limit_w == 0.0
    assert unconfirmed[-1].ts_s <= trap_ts + SIGNAL_BOUND_S + 1.0
    back = [a for a in ups_a if a.ts_s > trap_ts + SIGNAL_BOUND_S + 1.0]
    assert back and all(a.feed_signal is None and a.limit_w > 0 and a.mode == "normal" for a in back)
    events = decoded(c, topics.EVENTS.name, Event, site.name, starts[topics.EVENTS.name])
    faulty = [e for e in events if e.kind == "faulty_signal" and e.state == "open"]
    assert len(faulty) == 1 and "ups-a" in faulty[0].levels, [e.summary for e in events]
