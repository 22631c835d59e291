"""A day, not a busy hour: the day-long evaluation against DynamoLLM's baseline.

`powerplane evaluate --day` runs, on one site (by default a slice of the reference site: `--site-slice`),
the trace's request mix under a diurnal envelope (sim/diurnal.py: its shape and where it is an assumption)
twice through ops.evaluate.run_policy, same twin, seed and arrivals:

- baseline ("none"): DynamoLLM's baseline, static pools at maximum frequency sized for the PEAK of the day
  (the pools' rate scale puts the day's busiest 30 s at the target utilization), no reconfiguration, no
  capping;
- full: capping, the thermal policy and the energy-aware reconfiguration of the pools (instances, TP, clocks),
  its pools deployed at the tensor parallelism the serving profile picks for the day's peak
  (``deploy_for_peak``): the twin re-shards a whole pool at once, so under load the reconfiguration never
  changes TP, and a pool left at the baseline's TP8 would stay there all day. Its forecast is the busiest
  30 s of the last 2 minutes (``FULL_RECONFIG``), not the busiest second.

The report (ops/day_report.py) gives each run's energy, the full policy's saving against the baseline on
the inference pools' GPU energy (DynamoLLM's measure: the inference cluster) and on the site's, the share
of critical requests within SLO, and the saving split into efficiency (same work, less energy) and
shedding (work not done).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, TextIO

from controllers.burst import BurstSettings
from ops.evaluate import run_policy
from ops.progress import Progress
from ops.reconfigure import deploy_for_peak
from powerplane.refsite import RefSiteParams, reference_site
from powerplane.site import Site
from sim.diurnal import DAY_S, Envelope, diurnal_trace
from sim.trace import Trace
from sim.workload import WorkloadSpec, default_workload

DAY_POLICIES = ("none", "full")
# The full policy's forecast over a day: the busiest 30 s mean (the pools' sizing window) of the last
# 2 minutes x 1.1, not the busiest second. The profile's capacity is a Poisson stream's, so a second's noise
# is already in it: the busiest of 120 seconds of a 15 req/s pool is ~27 req/s, which held the critical
# pools at 13 of 13 instances through the trough (docs/performance.md, issue 14).
FULL_RECONFIG: dict[str, Any] = {"smooth_s": 30}


def day_burst(env: Envelope) -> BurstSettings:
    """The critical pools' burst reserve (controllers.burst) for a day of `env.day_s` simulated seconds: a
    real day's settings, their memory, hold and step-down compressed with the day (a 600 s day would
    otherwise remember its own peak for the whole run). The 30 s smoothing is the trace's burst scale,
    which a compressed day keeps, so it stays."""
    b = BurstSettings()
    f = min(1.0, env.day_s / DAY_S)
    return replace(b, memory_s=max(b.smooth_s, round(b.memory_s * f)), peak_half_life_s=b.peak_half_life_s * f,
                   step_down_s=max(1.0, b.step_down_s * f))
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
    deployed_tp: dict[str, int]  # the full policy's pools deployed at another TP than the baseline's


def run_day(site: Site, site_name: str, base: Trace, env: Envelope, *, duration_s: int | None = None,
            seed: int = 0, policies: tuple[str, ...] = DAY_POLICIES, out: TextIO | None = None) -> DayRun:
    """The baseline and the full policy over one (possibly compressed) day; progress on `out`."""
    trace = diurnal_trace(base, env, seed=seed)
    wl = day_workload(site, trace)
    dur = int(duration_s or env.day_s)
    t0 = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    wl_full, deployed = deploy_for_peak(site, wl, seed) if "full" in policies else (wl, {})
    for pol in policies:
        bar = Progress(f"day {pol:>4}: {dur} s simulated", dur, out)
        full = pol == "full"
        results[pol] = run_policy(site, pol, dur, workload=wl_full if full else wl, seed=seed, progress=bar,
                                  deploy_tp=False,
                                  reconfig_options={**FULL_RECONFIG, "burst": day_burst(env)} if full else None)
        bar.done()
        results[pol].pop("rack_power_w", None)  # 86,400 x racks: only the planner wants it
    return DayRun(site_name, trace, env, dur, seed, results, time.monotonic() - t0, deployed)
