"""Grid watch benchmark (issue 16): what watching the utility's limits costs the site stage per second.

The 100 MW reference site (1,024 racks) with a [grid] table for the site and one for each of its two utility
feeds: ramp up/down over 1 s, dynamic range over 60 s, and three oscillation bands (0.05-0.2 Hz, 0.2-0.5 Hz, and
0.2-2 Hz, which straddles the 0.5 Hz a 1 s pipeline resolves), the spectrum taken over `--band-window` s.
Each second `GridWatch.step` checks each series' completeness against the closed window (every rack beneath
fresh, GPUs reporting, nothing dark) and takes all three series' measures: a synchronous-training swing (4 s
iteration, +-8 MW on the site) on a 70 MW base, so the bands read something.

The process pins itself to one CPU, warms up, then times --seconds windows per round for --repeat rounds; the
garbage collector is off while timed. Reported: median and min per-second cost over rounds, for each band window
side by side (60 s and 600 s by default) and for the same run without bands (ramp and range only).

    .venv/bin/python bench/bench_grid_watch.py [--seconds 600] [--repeat 5] [--band-windows 60,600]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import math
import os
import platform
import statistics
import time
from typing import Any

import numpy as np

from powerplane.refsite import RefSiteParams, reference_site_dict
from powerplane.site import Site
from powerplane.site_file import site_from_dict
from streams.grid_watch import GridWatch
from streams.tree import Snapshot

BANDS = [{"lo_hz": 0.05, "hi_hz": 0.2, "limit_mw": 5.0}, {"lo_hz": 0.2, "hi_hz": 0.5, "limit_mw": 5.0},
         {"lo_hz": 0.2, "hi_hz": 2.0, "limit_mw": 5.0}]


def site_with_grid(band_window_s: float | None) -> Site:
    d: dict[str, Any] = reference_site_dict(RefSiteParams())
    grid: dict[str, Any] = {"ramp_up_mw_per_s": 10.0, "ramp_down_mw_per_s": 10.0, "ramp_window_s": 1.0,
                            "range_mw": 30.0, "range_window_s": 60.0}
    if band_window_s is not None:
        grid |= {"bands": BANDS, "band_window_s": band_window_s}
    d["grid"] = grid
    for f in d["feeds"]:
        f["grid"] = dict(grid)
    return site_from_dict(d)


def snapshots(site: Site, seconds: int) -> list[Snapshot]:
    """Closed windows of the site: every rack fresh, the load swinging like a synchronous training job."""
    n, racks = len(site.level_ids), site.rack_level.size
    site_lv = int(site.levels_of_kind("site")[0])
    feeds = site.levels_of_kind("utility")
    exp = np.full(n, 72, dtype=np.int64)
    out = []
    for k in range(seconds):
        load = np.full(n, 1e5)
        load[site_lv] = (70.0 + 8.0 * math.sin(2 * math.pi * 0.25 * k)) * 1e6
        load[feeds] = load[site_lv] / 2
        out.append(Snapshot(
            ts_s=1.75e9 + k, window_s=1.0, load_w=load, rated_w=load * 2, limit_w=load * 2,
            dark=np.zeros(n, dtype=bool), dark_top=np.zeros(n, dtype=bool), dark_share=np.zeros(n),
            gap_w=np.full(n, np.nan), racks_stale=np.zeros(n, dtype=np.int64),
            racks_rated=np.zeros(n, dtype=np.int64), age_s=np.zeros(n), inlet_c=np.full(n, 25.0),
            gpu_temp_max_c=np.full(n, 60.0), gpus_throttled=np.zeros(n, dtype=np.int64), gpus_expected=exp,
            gpus_reporting=exp, rack_fresh=np.ones(racks, dtype=bool), rack_age_s=np.zeros(racks),
            rack_mode=["normal"] * racks, site_mode="normal"))
    return out


def run_once(site: Site, snaps: list[Snapshot]) -> tuple[float, int]:
    """Seconds per window over the run (the first band window is warm-up), and events raised."""
    w = GridWatch.for_site(site, 1.0)
    assert w is not None and len(w.series) == 3
    warm = max(s.ring.cap for s in w.series.values())
    events = 0
    for s in snaps[:warm]:
        events += len(w.step(s))
    gc.disable()
    t0 = time.perf_counter()
    for s in snaps[warm:]:
        events += len(w.step(s))
    el = time.perf_counter() - t0
    gc.enable()
    return el / (len(snaps) - warm), events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=600, help="windows timed per round (after warm-up)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--band-windows", default="60,600", help="band_window_s values to compare, comma-separated")
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cases: list[tuple[str, float | None]] = [("ramp + range, no bands", None)]
    cases += [(f"ramp + range + 3 bands over {float(b):g} s", float(b)) for b in a.band_windows.split(",")]
    sites = {label: site_with_grid(bw) for label, bw in cases}
    site = next(iter(sites.values()))
    assert site.levels_of_kind("utility").size == 2
    longest = max([600.0] + [bw for _, bw in cases if bw is not None])
    snaps = snapshots(site, int(longest) + a.seconds)
    per: dict[str, list[float]] = {label: [] for label, _ in cases}
    events: dict[str, int] = {}
    for r in range(a.repeat + 1):  # round 0: warm-up, not counted
        for label, bw in cases[r % len(cases):] + cases[:r % len(cases)]:  # rotated order
            warm = int(bw or 60) + 1
            el, ev = run_once(sites[label], snaps[:warm + a.seconds])
            if r:
                per[label].append(el)
                events[label] = ev
    cpu = platform.processor() or platform.machine()
    print(f"# bench_grid_watch {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {cpu}, "
          f"load {os.getloadavg()[0]:.2f}, 1,024 racks, site + 2 feeds, {a.seconds} s x {a.repeat} rounds, one core")
    for label, _ in cases:
        xs = per[label]
        print(f"{label:40s} median {statistics.median(xs) * 1e6:8.1f} us/s  min {min(xs) * 1e6:8.1f} us/s  "
              f"events {events[label]}")


if __name__ == "__main__":
    main()
