"""The day-long evaluation's report (ops/day.py): metrics.json and report.md with the baseline and the full
policy side by side, the saving against the peak-provisioned baseline split into efficiency and shedding,
and the issue's target (>= 40 % less energy with >= 99 % of critical requests within SLO)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ops.day import DayRun
from ops.report import charts, savings_split, svg_chart
from powerplane.site import PRIORITIES

CRIT = PRIORITIES[0]


def trough_peak(run: DayRun, values: list[float]) -> tuple[float, float] | None:
    """The mean of a per-second series over the twelfth of the day (2 h of a real day) centred on the
    envelope's trough, and on its peak; None where the run does not cover both."""
    env = run.envelope
    v = np.asarray(values, dtype=np.float64)
    half = env.day_s / 24.0
    out = []
    for hour in (env.peak_hour + 12.0, env.peak_hour):
        mid = (hour % 24.0) / 24.0 * env.day_s
        t = np.arange(v.size, dtype=np.float64)
        d = np.abs((t - mid + env.day_s / 2) % env.day_s - env.day_s / 2)  # distance on the day's circle
        sel = d <= half
        if not sel.any():
            return None
        out.append(float(v[sel].mean()))
    return out[0], out[1]


def day_figures(run: DayRun) -> dict[str, Any]:
    """Each run's energy and SLO figures, and the full policy's saving against the baseline."""
    base, full = run.results.get("none"), run.results.get("full")
    out: dict[str, Any] = {"runs": {}}
    for name, r in run.results.items():
        crit = r["slo"].get(CRIT, {})
        out["runs"][name] = {"site_energy_kwh": r["energy_kwh"], "inference_energy_kwh": r["pool_energy_kwh"],
                             "critical_ttft_within_slo": crit.get("ttft_within_slo"),
                             "critical_tbt_within_slo": crit.get("tbt_within_slo"),
                             "processed_tokens": r["tokens"] + r["prompt_tokens"],
                             "seconds_over_rating": r["seconds_over_rating"]}
        serving = r.get("series", {}).get("crit_serving")
        tp = trough_peak(run, serving) if serving else None
        if tp is not None:
            out["runs"][name]["critical_instances_trough_peak"] = list(tp)
    if base is not None and full is not None:
        split = savings_split(full, base)
        crit_ok = full["slo"].get(CRIT, {}).get("ttft_within_slo", 0.0)
        saving = split["saved_kwh"] / base["pool_energy_kwh"] if base["pool_energy_kwh"] > 0 else 0.0
        out["saving"] = {
            "inference_pct": 100.0 * saving,
            "site_pct": 100.0 * (1.0 - full["energy_kwh"] / base["energy_kwh"]) if base["energy_kwh"] > 0 else 0.0,
            **split,
            "efficiency_pct": 100.0 * split["efficiency_kwh"] / max(base["pool_energy_kwh"], 1e-12),
            "shedding_pct": 100.0 * split["work_not_done_kwh"] / max(base["pool_energy_kwh"], 1e-12)}
        out["target_met"] = bool(saving >= 0.40 and crit_ok >= 0.99)
    return out


def _rows(fig: dict[str, Any]) -> list[str]:
    runs = fig["runs"]
    label = {"none": "baseline (static, max clocks, sized for the peak)", "full": "full policy"}

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    lines = ["| | " + " | ".join(label.get(k, k) for k in runs) + " |", "|---|" + "---|" * len(runs)]
    for title, key, fmt in (("inference GPU energy (kWh)", "inference_energy_kwh", "{:.1f}"),
                            ("site energy (kWh)", "site_energy_kwh", "{:.1f}"),
                            ("processed tokens (prompt + output)", "processed_tokens", "{:.4g}"),
                            ("seconds over a rating", "seconds_over_rating", "{:.0f}")):
        lines.append(f"| {title} | " + " | ".join(fmt.format(r[key]) for r in runs.values()) + " |")
    for title, key in (("critical requests within the TTFT SLO", "critical_ttft_within_slo"),
                       ("critical decode tokens within the TBT SLO", "critical_tbt_within_slo")):
        lines.append(f"| {title} | " + " | ".join(pct(r[key]) for r in runs.values()) + " |")
    if all("critical_instances_trough_peak" in r for r in runs.values()):
        lines.append("| critical pools' serving instances, trough / peak (means over 1/12 of the day) | " + " | ".join(
            "{:.1f} / {:.1f}".format(*r["critical_instances_trough_peak"]) for r in runs.values()) + " |")
    return lines


def write_day_report(out_dir: Path, run: DayRun) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = day_figures(run)
    series = {k: v.pop("series") for k, v in run.results.items() if "series" in v}
    meta = {"site": run.site_name, "trace": run.trace.describe(), "trace_attribution": run.trace.attribution,
            "envelope": run.envelope.describe(), "duration_s": run.duration_s, "seed": run.seed,
            "wall_s": run.wall_s}
    (out_dir / "metrics.json").write_text(json.dumps({"meta": meta, "figures": fig, "results": run.results},
                                                     indent=2, default=float))
    drawn = {k: v for k, v in charts(series, run.results).items() if v}
    if all("crit_serving" in v for v in series.values()):
        drawn["critical_instances.svg"] = svg_chart(series, "crit_serving", "Inference-critical instances serving",
                                                    "instances")
    for name, svg in drawn.items():
        (out_dir / name).write_text(svg)
    lines = [f"# Day-long evaluation: {run.site_name}", "",
             f"Trace: {meta['trace']}.", "", f"Attribution: {run.trace.attribution}", "",
             f"{run.duration_s} s simulated per policy, {run.wall_s:.0f} s wall for both; seed {run.seed}. "
             "Baseline: DynamoLLM's, static pools at maximum frequency sized for the day's peak, no "
             "reconfiguration, no capping.", "", *_rows(fig)]
    if run.deployed_tp:
        lines += ["", "The full policy's pools deployed at the TP its serving profile picks for the day's peak "
                  "(before traffic; the twin re-shards a whole pool at once, so not under load): "
                  + ", ".join(f"{n} TP{t}" for n, t in sorted(run.deployed_tp.items())) + "."]
    s = fig.get("saving")
    if s is not None:
        lines += ["", "## Saving against the peak-provisioned baseline", "",
                  f"- inference GPU energy: {s['inference_pct']:.1f}% less ({s['saved_kwh']:.1f} kWh); site energy "
                  f"(training and best-effort included, which the policy leaves alone unless capping): "
                  f"{s['site_pct']:.1f}% less",
                  f"- efficiency (same work, less energy): {s['efficiency_kwh']:.1f} kWh "
                  f"({s['efficiency_pct']:.1f}% of the baseline's)",
                  f"- shedding (work not done, at the baseline's energy per processed token): "
                  f"{s['work_not_done_kwh']:.1f} kWh ({s['shedding_pct']:.1f}%)",
                  f"- target (>= 40% less energy, >= 99% of critical requests within SLO): "
                  f"{'met' if fig['target_met'] else 'not met'}"]
    lines += ["", "## Plots", ""] + [f"![{n}]({n})" for n in drawn]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
