"""Grid limits and their measures (powerplane/grid.py): what a utility's limits read on known signals, and a
site file's [grid] tables with every mistake reported at once."""

from __future__ import annotations

import math

import numpy as np
import pytest

from powerplane.grid import (
    DemandResponse,
    GridLimits,
    band_amplitude_mw,
    band_resolved,
    dr_outcome,
    dynamic_range_mw,
    ramp_mw_per_s,
    ramp_step_w,
    ramp_violations,
)
from powerplane.site_file import site_from_dict
from powerplane.validation import ConfigError

MW = 1e6


def test_a_steady_ramp_reads_its_rate_and_a_limit_flags_only_the_excess() -> None:
    # 80 MW rising at 2 MW/s for 10 s, then flat: the ramp reads 2 MW/s over any window inside the rise.
    p = np.concatenate([np.full(20, 80.0), 80.0 + 2.0 * np.arange(1, 11), np.full(20, 100.0)]) * MW
    r = ramp_mw_per_s(p, 1.0, 5.0)
    assert np.isnan(r[:5]).all()
    assert r[25:30] == pytest.approx(2.0)
    assert np.nanmax(r) == pytest.approx(2.0)
    up, down = ramp_violations(p, 1.0, GridLimits(ramp_up_mw_per_s=1.5, ramp_down_mw_per_s=1.0, ramp_window_s=5.0))
    assert up.max() == pytest.approx(0.5)
    assert np.isclose(up, 0.5).sum() == 6  # the 6 windows wholly inside the rise
    assert (up > 0).sum() == 8  # and one each side, 4 of its 5 seconds rising: 1.6 MW/s
    assert not down.any()


def test_dynamic_range_sees_a_swing_only_while_it_is_in_the_window() -> None:
    p = np.full(200, 50.0 * MW)
    p[100:110] = 70.0 * MW
    rng = dynamic_range_mw(p, 1.0, 60.0)
    assert rng[99] == 0.0
    assert rng[100] == pytest.approx(20.0)
    assert rng[169] == pytest.approx(20.0)
    assert rng[171] == 0.0


def test_a_training_swing_reads_its_amplitude_in_its_band_and_nothing_elsewhere() -> None:
    # A 20 MW job swinging +-10 MW with a 4 s iteration (0.25 Hz), sampled at 100 ms for 60 s, on a ramping base.
    dt = 0.1
    t = np.arange(0, 60, dt)
    p = (60.0 + 0.05 * t + 10.0 * np.sin(2 * math.pi * 0.25 * t)) * MW
    amp = band_amplitude_mw(p, dt, [(0.1, 1.0), (1.0, 5.0), (5.0, 20.0)])
    assert amp[0] == pytest.approx(10.0, rel=0.05)
    assert amp[1] < 0.5
    assert math.isnan(amp[2])  # above 5 Hz, the Nyquist frequency of 100 ms samples
    assert band_resolved(5.0, 20.0, dt) == "none"
    assert band_resolved(0.1, 1.0, 1.0) == "partial"  # the 1 s pipeline sees only up to 0.5 Hz


def test_a_square_wave_swing_carries_most_of_its_energy_in_the_fundamental_band() -> None:
    # Compute near the limit, communication near idle: a square wave, 3 s period, 0 to 20 MW.
    dt = 0.1
    t = np.arange(0, 120, dt)
    p = np.where((t % 3.0) < 2.0, 20.0, 0.0) * MW
    amp = band_amplitude_mw(p, dt, [(0.2, 0.5), (0.5, 5.0)])
    fundamental = 2 * 20.0 / math.pi * math.sin(math.pi * 2 / 3)  # Fourier amplitude of a 2/3-duty square wave
    assert amp[0] == pytest.approx(fundamental, rel=0.1)
    assert amp[1] > 1.0  # the harmonics: a square wave is not a sine


def test_demand_response_outcome_reports_time_to_target_and_hold() -> None:
    ev = DemandResponse(id="dr-1", start_s=100.0, reduce_by_pct=25.0, within_s=30.0, hold_s=600.0)
    p = np.full(1000, 80.0 * MW)
    p[120:] = 59.0 * MW  # reached 20 s after the request
    p[500] = 61.0 * MW  # one second above the 60 MW target
    out = dr_outcome(p, 1.0, 0.0, ev)
    assert out["target_w"] == pytest.approx(60.0 * MW)
    assert out["time_to_target_s"] == pytest.approx(20.0)
    assert out["hold_share"] == pytest.approx(1 - 1 / 600)
    assert out["met"] == 0.0
    p[500] = 59.0 * MW
    assert dr_outcome(p, 1.0, 0.0, ev)["met"] == 1.0


def test_demand_response_needs_exactly_one_target() -> None:
    with pytest.raises(ValueError, match="exactly one of reduce_to_mw and reduce_by_pct"):
        DemandResponse(id="x", start_s=0.0, within_s=30.0, hold_s=60.0)


def _site(grid: dict[str, object], feed_grid: dict[str, object] | None = None) -> dict[str, object]:
    feed_a: dict[str, object] = {"id": "util-a", "feed": "A", "rating_kw": 1000.0}
    if feed_grid is not None:
        feed_a["grid"] = feed_grid
    return {
        "name": "g", "grid": grid,
        "server_types": {"s": {"gpus": 8, "gpu_max_w": 700.0, "gpu_min_w": 200.0, "gpu_idle_w": 70.0,
                               "other_w": 2000.0, "psu_efficiency": 0.94, "rating_kw": 10.2}},
        "feeds": [feed_a, {"id": "util-b", "feed": "B", "rating_kw": 1000.0}],
        "ups": [{"id": "ups-a", "parent": "util-a", "rating_kw": 500.0},
                {"id": "ups-b", "parent": "util-b", "rating_kw": 500.0}],
        "rpps": [{"id": "rpp-a", "parent": "ups-a", "rating_kw": 200.0},
                 {"id": "rpp-b", "parent": "ups-b", "rating_kw": 200.0}],
        "pdus": [{"id": "pdu-a", "parent": "rpp-a", "rating_kw": 50.0},
                 {"id": "pdu-b", "parent": "rpp-b", "rating_kw": 50.0}],
        "halls": [{"id": "h", "zones": [{"id": "z", "capacity_kw": 100.0}],
                   "rows": [{"id": "r", "zone": "z", "racks": [
                       {"id": "rk", "pdu_a": "pdu-a", "pdu_b": "pdu-b", "server_type": "s", "servers": 2,
                        "rating_kw": 40.0}]}]}],
    }


def test_site_file_grid_tables_load_per_site_and_per_feed() -> None:
    site = site_from_dict(_site({"ramp_up_mw_per_s": 2.0, "ramp_down_mw_per_s": 3.0,
                                 "bands": [{"lo_hz": 0.1, "hi_hz": 1.0, "limit_mw": 1.5}]},
                                {"ramp_up_mw_per_s": 1.0}))
    assert site.grid is not None and site.grid.ramp_up_mw_per_s == 2.0
    assert site.grid.bands[0].limit_mw == 1.5
    assert site.feed_grid["util-a"].ramp_up_mw_per_s == 1.0
    assert "util-b" not in site.feed_grid


def test_site_file_grid_mistakes_are_all_reported_at_once_with_their_paths() -> None:
    with pytest.raises(ConfigError) as e:
        site_from_dict(_site({"ramp_up_mw_per_s": -1.0, "band_window_s": 10.0,
                              "bands": [{"lo_hz": 1.0, "hi_hz": 0.5, "limit_mw": 1.0}]},
                             {"ramp_up_mw_per_s": "2"}))
    text = str(e.value)
    assert "grid.ramp_up_mw_per_s: input should be greater than 0" in text
    assert "grid.bands[0]: hi_hz 0.5 must be above lo_hz 1" in text
    assert "feeds[0].grid.ramp_up_mw_per_s: input should be a valid number" in text


def test_steps_as_large_as_ramp_step_w_allows_keep_every_window_within_the_limit() -> None:
    lim = GridLimits(ramp_up_mw_per_s=3.0, ramp_down_mw_per_s=2.0, ramp_window_s=2.0)
    assert ramp_step_w(lim) == (4.0 * MW, 6.0 * MW)  # one instant jump alone in its 2 s window
    down, up = ramp_step_w(lim, 0.5)
    assert (down, up) == (1.0 * MW, 1.5 * MW)  # four steps share a window
    # Steps of `up` every 0.5 s, sampled at 0.1 s: the window's ramp reads the limit, never more.
    p = np.repeat(np.arange(20) * up, 5)
    assert np.nanmax(ramp_mw_per_s(p, 0.1, 2.0)) == pytest.approx(3.0)
    assert ramp_step_w(GridLimits()) == (math.inf, math.inf)
