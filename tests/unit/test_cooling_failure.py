"""The cooling-failure page: a zone's hottest inlet climbing fast at a steady load is the plant not keeping up
(critical); the same climb while the zone's own load steps up is its inlets following that load, as when a site
comes back from a demand-response shed, and pages nothing until the load settles."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from powerplane.site_file import load_site
from streams.emergencies import EmergencyDetector

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


def _paged_at(load_w: list[float]) -> list[float]:
    """Seconds at which zone 1 is paged critical, its hottest inlet climbing 5 C/min throughout while its
    load follows `load_w` (one value a second)."""
    site = load_site(LAB)
    det = EmergencyDetector(site)
    det.first_ts_s = 0.0  # past the detector's warm-up
    n = len(site.level_ids)
    zone = int(site.levels_of_kind("zone")[0])
    paged = []
    for k, p in enumerate(load_w):
        load = np.full(n, 100e3)
        load[zone] = p
        snap = SimpleNamespace(ts_s=100.0 + k, load_w=load, limit_w=np.full(n, 1e9), inlet_c=np.full(n, 27.0))
        conds = det._cooling_failure(snap, np.full(n, 5.0 / 60.0), np.full(n, 60.0))  # type: ignore[arg-type]
        c = conds.get(f"cooling_failure:{site.level_ids[zone]}")
        if c is not None and c.severity == "critical":
            paged.append(float(k))
    return paged


def test_a_climb_at_a_steady_load_is_paged_within_seconds() -> None:
    assert _paged_at([200e3] * 10)[:1] == [4.0]


def test_a_climb_while_the_zones_load_steps_up_is_not_paged_until_the_load_settles() -> None:
    ramp = [200e3 * (1.0 + 0.01 * k) for k in range(40)]  # +1 %/s: a 2 MW/s restore of the 100 MW site
    paged = _paged_at(ramp + [ramp[-1]] * 10)
    assert paged and 40.0 <= paged[0] <= 40.0 + 4.0


def test_a_training_zones_swinging_load_does_not_hide_a_climb() -> None:
    swing = [330e3 if (k // 2) % 2 else 240e3 for k in range(20)]  # a third up and down every 4 s iteration
    paged = _paged_at(swing)
    assert paged and paged[0] <= 8.0
