"""A day, not a busy hour: the day-long evaluation against DynamoLLM's baseline.

`powerplane evaluate --day` runs, on one site (by default a slice of the reference site: `--site-slice`),
the trace's request mix under a diurnal envelope (sim/diurnal.py: its shape and where it is an assumption)
twice through ops.evaluate.run_policy, same twin, seed and arrivals:

- baseline ("none"): DynamoLLM's baseline, static pools at maximum frequency sized for the PEAK of the day
  (the pools' rate scale puts the day's busiest 30 s at the target utilization), no reconfiguration, no
  capping;
- full: capping, the thermal policy and the energy-aware reconfiguration of the pools (instances, TP, clocks).

The report (ops/day_report.py) gives each run's energy, the full policy's saving against the baseline on
the inference pools' GPU energy (DynamoLLM's measure: the inference cluster) and on the site's, the share
of critical requests within SLO, and the saving split into efficiency (same work, less energy) and
shedding (work not done).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, TextIO

from ops.evaluate import run_policy
from ops.progress import Progress
from powerplane.refsite import RefSiteParams, reference_site
from powerplane.site import Site
from sim.diurnal import Envelope, diurnal_trace
from sim.trace import Trace
from sim.workload import WorkloadSpec, default_workload

DAY_POLICIES = ("none", "full")
REF = RefSiteParams()


def site_slice(rows: int, racks_per_row: int | None = None) -> tuple[Site, str]:
    """`rows` rows of one hall of the reference site (16 racks each by default: 1,152 GB200-class GPUs per two
    rows), with the utility feed scaled to the slice's share of the 100 MW; every other rating is the
    reference site's, per rack, row and UPS lineup."""
    if not 1 <= rows <= REF.rows_per_hall:
        raise ValueError(f"--site-slice: rows must be 1-{REF.rows_per_hall}, got {rows}")
    per_row = racks_per_row or REF.racks_per_row
    racks = rows * per_row
    params = replace(REF, name=f"ref-slice-{rows}r", halls=1, rows_per_hall=rows, racks_per_row=per_row,
                     utility_mw=REF.utility_mw * racks / REF.n_racks)
    return reference_site(params), (f"a slice of the 100 MW reference site: {rows} row(s) x {per_row} racks = "
                                    f"{racks} racks, {params.n_gpus:,} GPUs, utility {params.utility_mw:.2f} MW "
                                    "per feed")


def day_workload(site: Site, trace: Trace, critical_load: float = 0.7, batch_load: float = 0.85) -> WorkloadSpec:
    """The site's default workload on the day's trace, its pools sized for the day's peak (the busiest 30 s)
    and all in one time zone: default_workload spreads pools over the trace's period so an hour's pools do
    not peak together, which over a day would flatten the envelope. A few minutes apart instead, so pools do
    not draw identical noise."""
    wl = default_workload(site, trace, critical_load=critical_load, batch_load=batch_load, rate_quantile=1.0)
    pools = tuple(replace(p, shift_s=float(97 * i)) for i, p in enumerate(wl.pools))
    return replace(wl, pools=pools)


@dataclass
class DayRun:
    """What the day's report needs: its setting and each policy's metrics."""

    site_name: str
    trace: Trace
    envelope: Envelope
    duration_s: int
    seed: int
    results: dict[str, dict[str, Any]]
    wall_s: float


def run_day(site: Site, site_name: str, base: Trace, env: Envelope, *, duration_s: int | None = None,
            seed: int = 0, policies: tuple[str, ...] = DAY_POLICIES, out: TextIO | None = None) -> DayRun:
    """The baseline and the full policy over one (possibly compressed) day; progress on `out`."""
    trace = diurnal_trace(base, env, seed=seed)
    wl = day_workload(site, trace)
    dur = int(duration_s or env.day_s)
    t0 = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    for pol in policies:
        bar = Progress(f"day {pol:>4}: {dur} s simulated", dur, out)
        results[pol] = run_policy(site, pol, dur, workload=wl, seed=seed, progress=bar)
        bar.done()
        results[pol].pop("rack_power_w", None)  # 86,400 x racks: only the planner wants it
    return DayRun(site_name, trace, env, dur, seed, results, time.monotonic() - t0)
