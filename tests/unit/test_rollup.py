"""Per-frame roll-up: the rack and PDU loads that dashboards and the capping controller act on."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from powerplane.schemas import LevelAggregate, TelemetryFrame
from powerplane.site import Site
from powerplane.site_file import load_site
from streams.rollup import Limits, UnknownRack, feed_mode, frame_aggregates, rack_state

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"
RACK = "rack-05"


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(LAB)


@pytest.fixture(scope="module")
def limits(site: Site) -> Limits:
    return Limits(site)


def frame(site: Site, rack: str = RACK, *, pdu: tuple[float, float] | None = None, **over: Any) -> TelemetryFrame:
    r = site.rack_index(rack)
    a, b = int(site.rack_gpu_start[r]), int(site.rack_gpu_start[r + 1])
    n = b - a
    power = np.linspace(150.0, 650.0, n).astype(np.float32)
    if pdu is None:
        wall = site.rack_input_w(r, power.astype(np.float64), np.full(n, 0.7))
        pdu = (wall / 2, wall / 2)
    kw: dict[str, Any] = dict(
        site="lab", rack=rack, ts_s=1_700_000_010.0, interval_s=1.0, seq=1, source="test",
        gpu_server=(site.gpu_server[a:b] - site.rack_server_start[r]).astype(np.uint16),
        gpu_slot=site.gpu_slot[a:b].astype(np.uint16), power_w=power, temp_c=np.full(n, 60, np.float32),
        sm_clock_mhz=np.full(n, 1980, np.float32), limit_w=np.full(n, 700, np.float32),
        util=np.full(n, 0.7, np.float32), inlet_c=[24.0, 26.5], pdu_power_w=list(pdu))
    kw.update(over)
    return TelemetryFrame(**kw)


def by_kind(aggs: list[LevelAggregate]) -> tuple[LevelAggregate, LevelAggregate, LevelAggregate]:
    rack = [x for x in aggs if x.kind == "rack"]
    pdus = [x for x in aggs if x.kind == "pdu"]
    assert len(rack) == 1 and len(pdus) == 2
    return rack[0], pdus[0], pdus[1]


def test_rack_power_is_wall_power_of_its_gpus(site: Site, limits: Limits) -> None:
    fr = frame(site)
    rack, pa, pb = by_kind(frame_aggregates(site, limits, fr))
    r = site.rack_index(RACK)
    want = site.rack_input_w(r, fr.power_w.astype(np.float64), fr.util.astype(np.float64))
    assert rack.level == RACK
    assert rack.power_w == pytest.approx(want)
    # Sanity: GPUs + 8 x 2 kW other load at 70% GPU activity (half of it at idle), over 94 % efficient PSUs.
    assert want == pytest.approx((float(fr.power_w.sum()) + 8 * 2000.0 * (0.5 + 0.5 * 0.7)) / 0.94, rel=1e-5)
    assert rack.gpus_expected == 64 and rack.gpus_reporting == 64
    assert rack.inlet_c == 26.5
    assert rack.mode == "normal"
    assert (pa.level, pb.level) == ("pdu-a05", "pdu-b05")
    assert rack.limit_w == pytest.approx(52_800.0)  # min(66 kW, 2 x 57.5 kW) x 0.8
    # The aggregates survive the wire (they are published as-is).
    assert LevelAggregate.decode(rack.encode()).power_w == pytest.approx(rack.power_w)


def test_pdu_uses_its_meter_when_present(site: Site, limits: Limits) -> None:
    _, pa, pb = by_kind(frame_aggregates(site, limits, frame(site, pdu=(21_000.0, 23_500.0))))
    assert pa.power_w == 21_000.0 and pa.metered_w == 21_000.0
    assert pb.power_w == 23_500.0 and pb.metered_w == 23_500.0
    assert pa.limit_w == pytest.approx(46_000.0)


def test_pdu_without_meter_gets_computed_share(site: Site, limits: Limits) -> None:
    rack, pa, pb = by_kind(frame_aggregates(site, limits, frame(site, pdu=(math.nan, math.nan))))
    assert pa.metered_w is None and pb.metered_w is None
    assert pa.power_w == pytest.approx(rack.power_w / 2)
    assert pb.power_w == pytest.approx(rack.power_w / 2)
    # One meter missing: that PDU is estimated, the other is read.
    rack, pa, pb = by_kind(frame_aggregates(site, limits, frame(site, pdu=(20_000.0, math.nan))))
    assert pa.power_w == 20_000.0 and pa.metered_w == 20_000.0
    assert pb.metered_w is None and pb.power_w == pytest.approx(rack.power_w / 2)


def test_feed_mode_from_meters() -> None:
    assert feed_mode([0.0, 48_000.0]) == "A-lost"
    assert feed_mode([48_000.0, 0.0]) == "B-lost"
    assert feed_mode([24_000.0, 24_500.0]) == "normal"
    assert feed_mode([100.0, 0.0]) == "normal"  # idle rack: a lost feed cannot be told from quiet
    assert feed_mode([math.nan, 30_000.0]) == "normal"  # no meter: cannot tell


def test_lost_feed_moves_the_limit_and_the_estimate(site: Site, limits: Limits) -> None:
    rack, pa, pb = by_kind(frame_aggregates(site, limits, frame(site, pdu=(0.0, 45_000.0))))
    assert rack.mode == pa.mode == pb.mode == "A-lost"
    # The rack can now draw only what its B PDU delivers: 57.5 kW x 0.8.
    assert rack.limit_w == pytest.approx(46_000.0)
    assert pb.power_w == 45_000.0 and pb.limit_w == pytest.approx(46_000.0)
    assert pa.power_w == 0.0


def test_gpu_without_reading_is_assumed_at_its_limit(site: Site, limits: Limits) -> None:
    base = frame(site)
    power = base.power_w.copy()
    power[3] = np.nan
    limit = base.limit_w.copy()
    limit[3] = 450.0
    rack, _, _ = by_kind(frame_aggregates(site, limits, frame(site, power_w=power, limit_w=limit)))
    assert rack.gpus_reporting == 63 and rack.gpus_expected == 64
    r = site.rack_index(RACK)
    at_zero = power.astype(np.float64)
    at_zero[3] = 0.0
    util = base.util.astype(np.float64)
    assert rack.power_w > site.rack_input_w(r, at_zero, util)
    at_limit = at_zero.copy()
    at_limit[3] = 450.0
    assert rack.power_w == pytest.approx(site.rack_input_w(r, at_limit, util))
    assert math.isfinite(rack.power_w)


def test_gpu_without_reading_or_limit_is_assumed_at_max(site: Site) -> None:
    base = frame(site)
    power = base.power_w.copy()
    limit = base.limit_w.copy()
    power[0] = limit[0] = np.nan
    st = rack_state(site, frame(site, power_w=power, limit_w=limit))
    at_max = base.power_w.astype(np.float64)
    at_max[0] = 700.0
    assert st.power_w == pytest.approx(site.rack_input_w(st.rack, at_max, base.util.astype(np.float64)))


def test_no_inlet_readings_gives_none(site: Site) -> None:
    assert rack_state(site, frame(site, inlet_c=[math.nan, math.nan])).inlet_c is None


def test_unknown_rack_is_refused(site: Site, limits: Limits) -> None:
    fr = frame(site)
    fr.rack = "rack-99"
    with pytest.raises(UnknownRack, match="rack-99"):
        frame_aggregates(site, limits, fr)
    fr.rack = "pdu-a01"  # a level, but not a rack
    with pytest.raises(UnknownRack, match="pdu-a01"):
        frame_aggregates(site, limits, fr)


def test_wrong_gpu_count_is_refused(site: Site, limits: Limits) -> None:
    fr = frame(site)
    short = {k: getattr(fr, k)[:60] for k in ("gpu_server", "gpu_slot", "power_w", "temp_c", "sm_clock_mhz",
                                             "limit_w", "util")}
    with pytest.raises(UnknownRack, match="60 GPUs"):
        frame_aggregates(site, limits, frame(site, **short))
