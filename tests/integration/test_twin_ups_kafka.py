"""The twin's UPS signal on the real broker: `powerplane fleet --scenario` loses feed A and publishes the UPS
lineup's on-battery trap, and polls that say on battery, to pp.facility (sim/ups.py, sim/source)."""

from __future__ import annotations

import time
from pathlib import Path

from ops.demo import Services
from powerplane import topics
from powerplane.config import Config
from powerplane.schemas import FacilityReading, SchemaError
from tests.integration.helpers import end_offsets, read_messages

DURATION_S = 10
LOSE_FEED_AT_S = 3

SCENARIO = f"""
name = "it-ups-feed-loss"
site = "lab"

[ups]
trap_latency_ms = [50, 300]
poll_interval_s = 2

[[events]]
at_s = {LOSE_FEED_AT_S}
kind = "lose_feed"
feed = "A"
"""


def _decode(raw: bytes) -> FacilityReading | None:
    try:
        return FacilityReading.decode(raw)
    except SchemaError:
        return None


def test_fleet_publishes_the_on_battery_trap_of_the_lost_feeds_ups_to_pp_facility(cfg: Config, tmp_path: Path) -> None:
    scen_file = tmp_path / "scenario.toml"
    scen_file.write_text(SCENARIO)
    start = end_offsets(cfg, topics.FACILITY.name)  # only what this run publishes
    svc = Services(cfg, tmp_path / "logs")
    t0 = time.time()
    try:
        svc.start("fleet", "fleet", "--scenario", str(scen_file), "--duration", str(DURATION_S), "--seed", "3")
        deadline = time.monotonic() + DURATION_S + 60.0
        while svc.procs["fleet"].poll() is None and time.monotonic() < deadline:
            svc.check()
            time.sleep(0.5)
        assert svc.procs["fleet"].returncode == 0, (tmp_path / "logs" / "fleet.log").read_text()[-3000:]
    finally:
        svc.stop()
    msgs = read_messages(cfg, topics.FACILITY.name, 30.0, start=start)
    ours = [(m, r) for m, r in ((m, _decode(m.value)) for m in msgs)
            if r is not None and r.site == "lab" and r.ts_s >= t0 and r.unit in ("ups-a", "ups-b")]
    traps = [(m, r) for m, r in ours if r.via == "trap" and r.trap == "xupstdOnBattery"]
    assert traps, f"no on-battery trap among {len(ours)} facility records of this run"
    m, trap = traps[0]
    assert (trap.unit, trap.lineup, trap.feed, trap.on_battery, trap.source) == ("ups-a", "ups-a", "A", True,
                                                                               "trap:ups-a")
    assert m.key == b"ups-a" and m.timestamp == int(trap.ts_s * 1000)
    assert not [r for _, r in traps if r.unit == "ups-b"]  # feed B is fine
    polls = [r for _, r in ours if r.via == "poll" and r.unit == "ups-a"]
    assert any(p.on_battery and p.output_source == "battery" for p in polls)
    assert any(p.on_battery is False for p in polls)  # before the loss
