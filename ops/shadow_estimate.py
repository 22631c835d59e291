"""`powerplane shadow estimate`: the twin's estimate of what a shadow policy would change were it in charge.

The shadow itself is open loop (controllers/shadow.py): its decisions never reach the GPUs, so the loads it
sees are the ones the live policy shaped, and `shadow compare` can only say where the decisions part. What
running the shadow's policy would do to energy, the SLO and the breakers needs a closed loop: here both
policies run one after the other on the same twin (ops/evaluate.py `run_policy`: same site, seed, workload and
scenario), and the shadow's figures are set against the live ones. It is an estimate of the twin, on the trace
and duration it names, not a measurement of the plant.

A policy is a name `run_policy` knows (ops.evaluate.POLICIES, or `controller`: what `powerplane controller`
runs) with the capping thresholds of its config (cap_threshold, uncap_threshold). A running shadow stamps both
on each of its commands (controllers/shadow.py POLICY_KEYS), so the estimate can take them from pp.shadow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controllers.capping import CapSettings
from controllers.shadow import POLICY_KEYS
from ops.evaluate import DEPLOYED, POLICIES, run_policy
from powerplane.site import PRIORITIES, Site

KNOWN = (*POLICIES, DEPLOYED)
THRESHOLDS = ("cap_threshold", "uncap_threshold")


class EstimateError(ValueError):
    """The twin cannot give an estimate (a policy it does not know, a site without a workload): one line."""


@dataclass(frozen=True)
class PolicySpec:
    """One side's policy: its name on the twin, its thresholds, and where they came from."""

    name: str
    cap_threshold: float = CapSettings.cap_threshold
    uncap_threshold: float = CapSettings.uncap_threshold
    source: str = ""  # the flag, config file or topic it was read from

    def check(self, side: str) -> None:
        if self.name not in KNOWN:
            named = " (named on pp.shadow)" if self.source == "pp.shadow" else ""
            raise EstimateError(f"{side} policy {self.name!r}{named}: the twin has no estimate for it "
                                f"(it knows {', '.join(KNOWN)})")
        if not 0 < self.uncap_threshold < self.cap_threshold:
            raise EstimateError(f"{side} policy{self._from()}: uncap_threshold {self.uncap_threshold:g} must be "
                                f"above 0 and below cap_threshold {self.cap_threshold:g}")

    def _from(self) -> str:
        return f" (from {self.source})" if self.source else ""

    def settings(self) -> CapSettings:
        return CapSettings(cap_threshold=self.cap_threshold, uncap_threshold=self.uncap_threshold)

    def describe(self) -> str:
        if self.name in ("none", "static"):  # no thresholds: nothing came from a config
            return self.name + (" (from pp.shadow)" if self.source == "pp.shadow" else "")
        return f"{self.name}, cap {self.cap_threshold:g} / uncap {self.uncap_threshold:g}{self._from()}"


def spec_of_params(params: Mapping[str, Any], source: str) -> PolicySpec | None:
    """The policy a shadow command names in its params (None: a shadow from before it stamped them)."""
    if not all(k in params for k in POLICY_KEYS):
        return None
    try:
        return PolicySpec(str(params["policy"]), float(params["cap_threshold"]), float(params["uncap_threshold"]),
                          source)
    except (TypeError, ValueError):
        return None


# What the estimate shows: (key, label, unit, format, better when higher; None: neither). None: not in this run.
ROWS = (
    ("energy_kwh", "site energy", "kWh", "{:,.2f}", False),
    ("critical_within_slo_pct", "critical requests within SLO", "%", "{:.1f}", True),
    ("seconds_over_rating", "seconds over a rating", "s", "{:.0f}", False),
    ("grid_ramp_seconds_over", "grid ramp seconds over the limit", "s", "{:.0f}", False),
    ("training_iterations_per_min", "training throughput", "iter/min", "{:,.1f}", True),
    ("commands_per_min", "commands per minute", "/min", "{:.1f}", None),
)


def figures(run: Mapping[str, Any]) -> dict[str, float | None]:
    """The figures of one `run_policy` result that the estimate sets side by side."""
    minutes = max(float(run["seconds"]), 1.0) / 60.0
    crit = run["slo"].get(PRIORITIES[0])
    grid = run.get("grid", {})
    ramp = grid.get("site")  # only where the site (or the scenario) has [grid] limits
    iters = grid.get("training_iterations_total")
    return {
        "energy_kwh": float(run["energy_kwh"]),
        "critical_within_slo_pct": 100.0 * float(crit["ttft_within_slo"]) if crit else None,
        "seconds_over_rating": float(run["seconds_over_rating"]),
        "grid_ramp_seconds_over": float(ramp["seconds_over_ramp_up"] + ramp["seconds_over_ramp_down"])
        if ramp else None,
        "training_iterations_per_min": float(iters) / minutes if iters else None,
        "commands_per_min": float(run["commands"]) / minutes,
    }


def estimate(site: Site, live: PolicySpec, shadow: PolicySpec, duration_s: int, *, workload: Any = None,
             scenario: Any = None, scenario_name: str = "", seed: int = 0) -> dict[str, Any]:
    """Both policies on the same twin; the figures of each and the shadow's change against the live one."""
    from sim.workload import default_workload

    live.check("live")
    shadow.check("shadow")
    try:
        workload = workload if workload is not None else default_workload(site)
        runs = {side: run_policy(site, spec.name, duration_s, workload=workload, scenario=scenario, seed=seed,
                                 cap=spec.settings())
                for side, spec in (("live", live), ("shadow", shadow))}
    except (ValueError, IndexError) as e:  # e.g. no pools or GPUs to serve the trace on: nothing to run
        raise EstimateError(f"site {site.name}: the twin cannot give an estimate ({e})") from None
    fig = {side: figures(r) for side, r in runs.items()}
    change = {k: _minus(fig["shadow"][k], fig["live"][k]) for k, *_ in ROWS}
    return {"kind": "twin estimate", "site": site.name, "scenario": scenario_name or "none (steady state)",
            "trace": workload.resolved_trace().describe(), "duration_s": duration_s, "seed": seed,
            "live": {"policy": live.describe(), **fig["live"]},
            "shadow": {"policy": shadow.describe(), **fig["shadow"]}, "change": change}


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _cell(fmt: str, x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def table(doc: Mapping[str, Any]) -> str:
    """The estimate as an operator reads it: what it is, under what, and each figure live / shadow / change."""
    lines = [f"The twin's estimate (not a measurement) of the shadow policy in charge: site {doc['site']}, "
             f"{doc['duration_s']} s simulated, seed {doc['seed']}",
             f"  scenario: {doc['scenario']}", f"  trace: {doc['trace']}",
             f"  live:   {doc['live']['policy']}", f"  shadow: {doc['shadow']['policy']}",
             f"{'':34s} {'live':>12s} {'shadow':>12s} {'change':>12s}"]
    for key, label, unit, fmt, higher in ROWS:
        d = doc["change"][key]
        shown = _cell(fmt, d)
        # No verdict on a change that shows as none at the table's precision.
        verdict = "" if d is None or higher is None or float(shown.replace(",", "")) == 0 else \
            ("  better" if (d > 0) == higher else "  worse")
        sign = "+" if d is not None and d > 0 else ""
        lines.append(f"{label + ' (' + unit + ')':34s} {_cell(fmt, doc['live'][key]):>12s} "
                     f"{_cell(fmt, doc['shadow'][key]):>12s} {sign + shown:>12s}{verdict}")
    lines.append("(-: not in this run: no critical requests, no [grid] limits, or no training job)")
    return "\n".join(lines)


def write(doc: Mapping[str, Any], path: str | Path, written_s: float) -> None:
    """The estimate as a JSON file the live dashboard's shadow panel shows (`dashboard --shadow-estimate`);
    written whole then renamed, so the dashboard never reads half of one."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps({**doc, "written_s": written_s}, indent=1))
    tmp.replace(p)
