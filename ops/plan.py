"""`powerplane plan`: the shell around controllers.planning. It builds the (seconds x racks) matrix of
rack wall power from a recording or a twin run, shows progress with an ETA, prints the table and writes
the JSON report."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from controllers.planning import ORDER, Costs, LevelPlan, levels_to_plan, plan, plan_inputs, work_of
from ops.progress import Progress
from powerplane.site import PRIORITIES, FloatArray, Site


def check_options(kinds: list[str], high_priority: list[str], risk: float) -> None:
    """Refuse bad options before a long simulation or read, not after."""
    bad = [k for k in kinds if k not in ORDER]
    if bad:
        raise ValueError(f"--kinds: cannot plan level kind {', '.join(bad)} (choose from {', '.join(ORDER)})")
    bad = [c for c in high_priority if c not in PRIORITIES]
    if bad:
        raise ValueError(f"--high-priority: unknown class {', '.join(bad)} (known: {', '.join(PRIORITIES)})")
    if not 0.0 <= risk < 1.0:
        raise ValueError(f"--risk {risk:g} is not a fraction of seconds in [0, 1): try 1e-4")


def power_from_twin(site: Site, minutes: float, seed: int, progress: TextIO | None, trace: Any = None) -> FloatArray:
    """Rack wall power per second from the digital twin running the site's default workload (on `trace`, a
    sim.Trace, where given)."""
    from sim import Twin, default_workload

    n = round(minutes * 60)
    if n < 1:
        raise ValueError(f"--simulate-minutes {minutes:g} is less than one second: give at least 0.02")
    twin = Twin(site, default_workload(site, trace) if trace is not None else None, seed=seed)
    out = np.empty((n, site.n_racks))
    bar = Progress(f"simulating {n} s of {site.name}", n, progress)
    for t in range(n):
        out[t] = twin.step(1.0).rack_power_w
        bar.show(t + 1)
    bar.done()
    return out


def power_from_recording(site: Site, rec_dir: str, progress: TextIO | None) -> FloatArray:
    """Rack wall power per second from recorded pp.telemetry: both PDU meters where a rack has them,
    else its GPUs' readings through the site model; seconds without a reading carry the last one."""
    from powerplane import topics
    from powerplane.recording import iter_records, load_manifest
    from powerplane.schemas import SchemaError, TelemetryFrame
    from streams.assembly import Assembler

    m = load_manifest(rec_dir)
    name = topics.TELEMETRY.name
    if name not in m.get("topics", {}):
        raise ValueError(f"{rec_dir}: no {name} in this recording: record it with `powerplane record --topics {name}`")
    total = int(m["topics"][name].get("records", 0))
    rows: list[tuple[float, int, float, float, float]] = []
    bad = 0
    bar = Progress(f"reading {total:,} frames", total, progress)
    # Frames of a part of a rack (one server's GPUs, one PDU) are assembled into whole-rack views as the
    # streams worker does (streams/assembly.py); a whole-rack frame is its own view.
    asm = Assembler(site)
    for i, (_t, _k, value, _ts, _h) in enumerate(iter_records(rec_dir, [name]), 1):
        try:
            f = TelemetryFrame.decode(value or b"")
            r = site.rack_index(f.rack)
        except (SchemaError, KeyError):
            bad += 1
            continue
        if not asm.layout.canonical(r, f.gpu_server, f.gpu_slot) and asm.layout.locate(
                r, f.gpu_server, f.gpu_slot)[1]:
            bad += 1  # a GPU not in the rack, or twice (the streams worker refuses it too)
            continue
        a, b = [*f.pdu_power_w, math.nan, math.nan][:2]
        views = asm.route(f) if f.power_w.size else []
        if not (len(views) == 1 and views[0] is f):  # a part: its meters now, GPUs once its rack has a view
            rows.append((f.ts_s, r, a, b, math.nan))
            a = b = math.nan
        for v in views:
            p = np.where(np.isfinite(v.power_w), v.power_w, v.limit_w).astype(np.float64)
            rows.append((v.ts_s, r, a, b, site.rack_input_w(r, p, v.util.astype(np.float64))))
        bar.show(i)
    bar.done()
    if not rows:
        raise ValueError(f"{rec_dir}: no telemetry frame of site '{site.name}' ({bad} undecodable or of other "
                         "racks): is --site the site that was recorded?")
    arr = np.array(rows)
    sec = np.floor(arr[:, 0] - arr[:, 0].min()).astype(np.int64)
    n_t = int(sec.max()) + 1
    racks = arr[:, 1].astype(np.int64)
    cols = []
    for j in (2, 3, 4):  # meter A, meter B, GPU estimate: the last reading of each second wins
        g = np.full((n_t, site.n_racks), np.nan)
        ok = np.isfinite(arr[:, j])
        g[sec[ok], racks[ok]] = arr[ok, j]
        cols.append(_carry(g))
    meters = cols[0] + cols[1]
    power = np.where(np.isfinite(meters), meters, cols[2])
    missing = np.flatnonzero(~np.isfinite(power).any(axis=0))
    if missing.size:
        raise ValueError(f"{rec_dir}: no power reading for {missing.size} rack(s) of site '{site.name}' (e.g. "
                         f"{site.rack_ids[int(missing[0])]}): record pp.telemetry while the whole site reports")
    return _carry(power, backward=True)


def _carry(g: FloatArray, backward: bool = False) -> FloatArray:
    """Fill NaN with the last earlier value in each column (and, with backward, leading NaN with the first)."""
    idx = np.where(np.isfinite(g), np.arange(g.shape[0])[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = g[idx, np.arange(g.shape[1])]
    if backward:
        first = np.argmax(np.isfinite(out), axis=0)
        lead = np.arange(g.shape[0])[:, None] < first
        out = np.where(lead, out[first, np.arange(g.shape[1])], out)
    return out


def _kw(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x / 1e3:.1f}"


def _n(k: int | None) -> str:
    return "unbounded" if k is None else str(k)


def table(plans: list[LevelPlan]) -> str:
    lines = [f"{'level':18s} {'kind':8s} {'limit kW':>9s} {'p99 kW':>9s} {'racks':>6s} {'+no ctl':>8s} "
             f"{'+capped':>8s} {'% more':>7s} {'low thr.':>8s}  binding (capped)"]
    for p in plans:
        pct = "-" if p.pct_more is None else f"{p.pct_more:.0f}%"
        lines.append(f"{p.level:18s} {p.kind:8s} {_kw(p.limit_w):>9s} {_kw(p.p99_load_w):>9s} {p.racks_under:6d} "
                     f"{_n(p.extra_none):>8s} {_n(p.extra_capped):>8s} {pct:>7s} {p.throttled_low_frac:8.1%}  "
                     f"{p.binding_capped or '-'}")
    return "\n".join(lines)


def run(site: Site, power_w: FloatArray, *, risk: float, n_minus_1: bool, seed: int, kinds: list[str],
        high_priority: list[str], costs: Costs, source: str, cooling: bool = False,
        max_throttle: float | None = None, progress: TextIO | None = None
        ) -> tuple[list[LevelPlan], dict[str, Any]]:
    """Plan the site's levels of `kinds`; returns the plans and the JSON report."""
    t0 = time.monotonic()
    inp = plan_inputs(site, power_w, high_priority, cooling)
    levels = levels_to_plan(inp, [*kinds, "zone"] if cooling and "zone" not in kinds else kinds)
    weights = {i: work_of(inp, i) for i in levels}
    bar = Progress(f"planning {len(levels)} levels", sum(weights.values()), progress)
    done = [0.0]

    def step(i: int, _lp: LevelPlan) -> None:
        done[0] += weights[i]
        bar.show(done[0])

    plans = plan(inp, levels, risk, n_minus_1, seed, costs, on_level=step, max_throttle=max_throttle)
    bar.done()
    site_plan = next((p for p in plans if p.kind == "site"), None)
    report: dict[str, Any] = {
        "site": site.name, "source": source, "seconds": inp.seconds, "racks": site.n_racks,
        "risk": risk, "risk_resolution": 1.0 / inp.seconds, "n_minus_1": n_minus_1, "seed": seed,
        "cooling": cooling, "max_throttle": max_throttle,
        "high_priority": high_priority, "costs": asdict(costs), "planning_s": round(time.monotonic() - t0, 3),
        "site_total": asdict(site_plan) if site_plan else None,
        "levels": [asdict(p) for p in plans],
    }
    return plans, report


def summary(report: dict[str, Any]) -> str:
    s = report["site_total"]
    lines = [f"{report['seconds']} s of {report['source']}, risk {report['risk']:g} (resolution "
             f"{report['risk_resolution']:.2g}), {'N-1 checked' if report['n_minus_1'] else 'nominal feeds only'}"
             f"{', cooling zones held' if report['cooling'] else ''}"
             + (f", low-priority throttling <= {report['max_throttle']:.0%}" if report["max_throttle"] is not None
                else "")]
    if s:
        pct = "-" if s["pct_more"] is None else f"{s['pct_more']:.0f}% more"
        v = s["value"]
        lines.append(f"site-wide: {_n(s['extra_none'])} more racks without control, {_n(s['extra_capped'])} with "
                     f"capping ({pct}); capital avoided with capping ${v['capital_avoided_usd_capped'] / 1e6:,.2f}M "
                     f"(${v['capital_avoided_by_capping_usd'] / 1e6:,.2f}M of it thanks to capping); energy of the "
                     f"extra load ${v['energy_cost_usd_per_year_capped'] / 1e6:,.2f}M/year")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    def clean(x: Any) -> Any:  # JSON has no Infinity: an unbounded limit is null
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    Path(path).write_text(json.dumps(clean(report), indent=1) + "\n")
