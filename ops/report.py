"""The evaluation's report: metrics.json (every figure, and which of the issue's targets are met), small SVG
line charts per policy, and report.md with the policies side by side. Plain formatting of what
ops.evaluate measured: no simulation here."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from controllers.capping import BREAKER_KINDS
from ops.grid_report import grid_section
from powerplane.site import PRIORITIES

Cell = Callable[[dict[str, Any]], str]

DEFINITIONS = ("Definitions: a request is within SLO when its first token came within its TTFT SLO (the "
               "SLO definition line says which; dropped and aborted requests count as misses); TBT within SLO is "
               "the share of decode tokens within the TBT SLO (per iteration gap, not per request); a request "
               "is throttled when its pool's GPUs ran power-capped below their "
               "maximum or thermally throttled that second (weighted by the pool's throttled share; clocks the "
               "reconfiguration policy locks are its chosen operating point, not throttling). Ratings are "
               "nameplate (a breaker carries 100 % indefinitely); the policies aim at the derated limits. "
               "Energy per token is the inference pools' GPU energy over generated tokens (DynamoLLM's measure) or "
               "over processed tokens (prompt + output); per request, over requests finished. Percentiles come "
               "from a DDSketch over every sample (within 0.5 % of the exact value). Energy saved against no "
               "control splits into work not done (the processed tokens the policy served fewer than no control, "
               "at no control's energy per processed token; negative when it served more) and the rest: the "
               "same work for less energy.")


Line = tuple[float, str]  # (value, label): a limit line at a y value, or an event marker at a time


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _time_label(t_s: float) -> str:
    return f"{t_s / 3600:.1f} h" if t_s >= 7200 else f"{t_s:.0f} s"


def svg_chart(series: dict[str, dict[str, list[float]]], key: str, title: str, unit: str,
              limits: Sequence[Line] = (), markers: Sequence[Line] = ()) -> str:
    """A small line chart, one line per policy, with limit lines (dashed, labelled with their value) and event
    markers (vertical lines, labelled; past MAX_LABELS only the first are labelled, every one is drawn and
    has a tooltip). The axes are labelled with the data's true first and last time and its true lowest and
    highest value, at their places; the plot area is padded around them so lines do not sit on the frame."""
    w, h, pad = 640, 240, 44
    colors = {"none": "#888", "static": "#2a7", "polca": "#d80", "full": "#36c"}
    xs = [v for s in series.values() for v in s["t_s"]]
    data_y = [v for s in series.values() for v in s[key]]
    if not xs or not data_y:
        return ""
    ys = data_y + [v for v, _ in limits]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    y0, y1 = (y0 - 0.05 * (y1 - y0 or 1), y1 + 0.05 * (y1 - y0 or 1))

    def sx(x: float) -> float:
        return pad + (x - x0) / max(x1 - x0, 1e-9) * (w - 2 * pad)

    def sy(y: float) -> float:
        return h - pad + (y - y0) / max(y1 - y0, 1e-9) * (2 * pad - h)

    lo, hi = min(data_y), max(data_y)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{pad}" y="16" font-size="13">{_esc(title)}</text>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#ccc"/>',
             f'<text class="ytick" x="2" y="{sy(hi) + 4:.1f}">{hi:.4g} {_esc(unit)}</text>',
             f'<text class="ytick" x="2" y="{sy(lo) + 4:.1f}">{lo:.4g} {_esc(unit)}</text>',
             f'<text class="xtick" x="{pad}" y="{h - pad + 14}">{_time_label(x0)}</text>',
             f'<text class="xtick" x="{w - pad}" y="{h - pad + 14}" text-anchor="end">{_time_label(x1)}</text>']
    for v, label in limits:
        parts.append(f'<line class="limit" x1="{pad}" y1="{sy(v):.1f}" x2="{w - pad}" y2="{sy(v):.1f}" stroke="red" '
                     f'stroke-dasharray="4 3"><title>{_esc(label)}</title></line>'
                     f'<text class="limit-label" x="{w - pad}" y="{sy(v) - 3:.1f}" text-anchor="end" fill="red">'
                     f'{_esc(label)}: {v:.4g} {_esc(unit)}</text>')
    parts += _marker_parts(markers, sx, pad, h)
    for i, (name, s) in enumerate(series.items()):
        step = max(1, len(s["t_s"]) // 600)
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(s["t_s"][::step], s[key][::step], strict=False))
        c = colors.get(name, "#000")
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{pts}"/>')
        parts.append(f'<text x="{w - pad - 60}" y="{30 + 13 * i}" fill="{c}">{name}</text>')
    parts.append("</svg>")
    return "".join(parts)


MAX_LABELS = 12


def _marker_parts(markers: Sequence[Line], sx: Callable[[float], float], pad: int, h: int) -> list[str]:
    out = []
    for i, (t, label) in enumerate(sorted(markers, key=lambda m: m[0])):
        x = sx(t)
        out.append(f'<line class="marker" x1="{x:.1f}" y1="{pad - 14}" x2="{x:.1f}" y2="{h - pad}" stroke="#a0a" '
                   f'stroke-width="0.8" opacity="0.7"><title>{_esc(label)} at {_time_label(t)}</title></line>')
        if i < MAX_LABELS:
            out.append(f'<text class="marker-label" x="{x + 3:.1f}" y="{pad - 4}" fill="#a0a" font-size="9" '
                       f'transform="rotate(35 {x + 3:.1f} {pad - 4})">{_esc(label)}</text>')
    return out


def event_markers(results: dict[str, dict[str, Any]]) -> list[Line]:
    """The runs' events as chart markers: the scenario's (the same in every run) once, the policies' own
    (emergencies detected, reconfigurations) named by policy."""
    seen: set[tuple[float, str]] = set()
    out: list[Line] = []
    for pol, r in results.items():
        for e in r.get("events", []):
            what = str(e["what"])
            scenario = what.startswith("t=")
            label = _short(what) if scenario else f"{pol}: {what}"
            if (e["t_s"], label) not in seen:
                seen.add((e["t_s"], label))
                out.append((float(e["t_s"]), label))
    return out


def _short(event: str) -> str:
    """'t=20.0s start lose_feed {'feed': 'A'}' -> 'start lose_feed feed=A'."""
    body = event.split(" ", 1)[1] if " " in event else event
    head, _, params = body.partition(" {")
    pairs = [p.strip().replace("'", "").replace(": ", "=") for p in params.rstrip("}").split(",") if p.strip()]
    return " ".join([head, *pairs])


def targets(results: dict[str, dict[str, Any]], extra_racks_pct: float | None) -> list[tuple[str, bool | None, str]]:
    """The issue's targets on the full policy, each met, missed or not measured, with the figure and why."""
    out: list[tuple[str, bool | None, str]] = []
    full = results.get("full")
    none = results.get("none")
    if full is None:
        return out
    out.append(("zero seconds above any breaker rating", full["seconds_over_rating"] == 0,
                f"{full['seconds_over_rating']} s over, worst {full['worst_over_rating']:.2f}x rating, "
                f"{full['breaker_trips']} trip(s)"))
    crit = full["slo"].get(PRIORITIES[0])
    if crit:
        ok = crit["ttft_within_slo"] >= 0.99
        out.append((">= 99% of inference-critical requests within SLO", ok,
                    f"{100 * crit['ttft_within_slo']:.2f}% within the TTFT SLO, "
                    f"TBT {100 * crit['tbt_within_slo']:.2f}%"))
    if extra_racks_pct is None:
        out.append((">= 30% more racks than without control", None, "needs the 'none' policy in the run"))
    else:
        out.append((">= 30% more racks than without control", extra_racks_pct >= 30.0,
                    f"{extra_racks_pct:.1f}% more racks hosted with capping at the same risk (see Oversubscription)"))
    if none is not None:
        saving = 1.0 - full["energy_per_token_j"] / none["energy_per_token_j"]
        processed = 1.0 - full["energy_per_processed_token_j"] / none["energy_per_processed_token_j"]
        out.append((">= 40% less energy per token than no control", saving >= 0.40,
                    f"{100 * saving:.1f}% less per generated token ({full['energy_per_token_j']:.2f} vs "
                    f"{none['energy_per_token_j']:.2f} J); {100 * processed:.1f}% less per processed token"))
    return out


def write_report(out_dir: Path, meta: dict[str, Any], results: dict[str, dict[str, Any]],
                 oversub: dict[str, Any] | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    series = {k: v.pop("series") for k, v in results.items() if "series" in v}
    for v in results.values():
        v.pop("rack_power_w", None)
    tg = targets(results, oversub["more_racks_pct"] if oversub else None)
    none = results.get("none")
    for k, v in results.items():
        if none is not None and k != "none" and none.get("pool_energy_kwh"):
            v["savings_vs_none"] = savings_split(v, none)
    (out_dir / "metrics.json").write_text(json.dumps(
        {"meta": meta, "results": results, "oversubscription": oversub,
         "targets": [{"target": t, "met": m, "figure": f} for t, m, f in tg]},
        indent=2, default=float))
    drawn = charts(series, results)
    for name, svg in drawn.items():
        if svg:
            (out_dir / name).write_text(svg)
    lines = [f"# Closed-loop evaluation: {meta['site']}", "",
             f"Scenario: {meta['scenario']}. Workload: {meta['workload']}. {meta['duration_s']} s simulated per "
             f"policy in {meta['wall_s']:.0f} s wall; seed {meta['seed']}. Metrics are the twin's ground truth.", "",
             *_trace_lines(meta, results), "## Targets (full policy)", "", "| target | met | figure |", "|---|---|---|"]
    for t, m, f in tg:
        lines.append(f"| {t} | {'yes' if m else 'no' if m is not None else 'not measured'} | {f} |")
    lines += ["", "## Policies side by side", "", *_policy_table(results), *_savings_table(results)]
    lines += grid_section(results)
    lines += [f"\n{k}: {v['facility_signal']['text']}." for k, v in results.items() if v.get("facility_signal")]
    if oversub:
        lines += ["", "## Oversubscription", "", _oversubscription(meta, oversub)]
    lines += ["", "## Plots", ""] + [f"![{n}]({n})" for n, svg in drawn.items() if svg]
    lines += ["", DEFINITIONS]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def charts(series: dict[str, dict[str, list[float]]], results: dict[str, dict[str, Any]]) -> dict[str, str]:
    marks = event_markers(results)
    lim: dict[str, Any] = next((r["limits"] for r in results.values() if r.get("limits")), {})
    site_lines = [(v, name) for v, name in ((lim.get("site_rated_mw"), "site rating"),
                                            (lim.get("site_derated_mw"), "site derated limit"),
                                            (lim.get("feed_rated_mw"), "one feed's rating")) if v]
    worst = lim.get("worst_level") or "the most loaded breaker"
    breaker_lines = [(1.0, f"rating of {worst}"), (float(lim.get("derating", 0.8)), "derated limit")]
    return {"site_power.svg": svg_chart(series, "site_mw", "Site power (true)", "MW", site_lines, marks),
            "worst_breaker.svg": svg_chart(series, "worst_frac", "Most loaded breaker / its rating", "x",
                                           breaker_lines, marks),
            "critical_slo.svg": svg_chart(series, "crit_ttft_ok", "Inference-critical requests within TTFT SLO "
                                          "(cumulative)", "", markers=marks)}


def _fmt(key: str, spec: str, scale: float = 1.0, suffix: str = "") -> Cell:
    return lambda r: format(scale * r[key], spec) + suffix


def _peak(kind: str) -> Cell:
    return lambda r: format(r["peak_frac_of_rating"].get(kind, float("nan")), ".2f")


def _count(action: str) -> Cell:
    return lambda r: str(r.get("commands_by_action", {}).get(action, 0))


def _slo(p: str, a: str, b: str | None = None, scale: float = 1.0, spec: str = ".3f", suffix: str = "") -> Cell:
    def cell(r: dict[str, Any]) -> str:
        x = r["slo"].get(p)
        if x is None:
            return "-"
        first = format(scale * x[a], spec) + suffix
        return first if b is None else f"{first} / {format(x[b], spec)}"
    return cell


def _policy_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """One Markdown row per metric, one column per policy."""
    rows: list[tuple[str, Cell]] = [
        ("energy (kWh)", _fmt("energy_kwh", ".1f")),
        ("inference GPU energy per generated token (J)", _fmt("energy_per_token_j", ".3f")),
        ("... per processed token, prompt + output (J)", _fmt("energy_per_processed_token_j", ".3f")),
        ("... per request finished (kJ)", _fmt("energy_per_request_j", ".2f", 1e-3)),
        ("site energy per token (J)", _fmt("site_energy_per_token_j", ".3f")),
        ("mean site power (MW)", _fmt("mean_site_mw", ".2f")),
        *[(f"peak {kind} load / rating", _peak(kind)) for kind in BREAKER_KINDS],
        ("seconds over a rating", _fmt("seconds_over_rating", ".0f")),
        ("kW-s over ratings", _fmt("kw_s_over_rating", ".0f")),
        ("breaker trips", _fmt("breaker_trips", ".0f")),
        ("hottest rack inlet (C)", _fmt("inlet_max_c", ".1f")),
        ("seconds with an inlet over 32 C", _fmt("seconds_inlet_over_limit", ".0f")),
        ("commands issued", _fmt("commands", ".0f")),
    ]
    for action in sorted({a for r in results.values() for a in r.get("commands_by_action", {})}):
        rows.append((f"... {action}", _count(action)))
    for p in PRIORITIES:
        if not any(p in r["slo"] for r in results.values()):
            continue
        rows += [(f"{p}: TTFT within SLO", _slo(p, "ttft_within_slo", scale=100, spec=".2f", suffix="%")),
                 (f"{p}: TBT within SLO", _slo(p, "tbt_within_slo", scale=100, spec=".2f", suffix="%")),
                 (f"{p}: TTFT p50 / p99 (s)", _slo(p, "ttft_p50_s", "ttft_p99_s")),
                 (f"{p}: TBT p50 / p99 (s)", _slo(p, "tbt_p50_s", "tbt_p99_s")),
                 (f"{p}: throttled requests", _slo(p, "throttled_fraction", scale=100, spec=".1f", suffix="%"))]
    head = ["| metric | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    return head + [f"| {label} | " + " | ".join(fn(r) for r in results.values()) + " |" for label, fn in rows]


def _trace_lines(meta: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[str]:
    """Which trace the pools replayed and whose it is (older metrics files lack both), and the serving
    profile the reconfiguration decided from."""
    out = []
    if meta.get("slo"):
        out += [f"SLO definition: {meta['slo']}.", ""]
    if meta.get("trace"):
        out += [f"Trace: {meta['trace']} (`{meta.get('trace_file', '?')}`).", "",
                f"Trace attribution: {meta.get('trace_attribution') or 'none given'}", ""]
    note = results.get("full", {}).get("serving_profile")
    if note:
        out += [f"Serving profile of the full policy's reconfiguration: {note}.", ""]
    deployed = results.get("full", {}).get("deployed_tp") or {}
    if deployed:  # the other policies keep the workload's TP: say which pools differ
        tps = sorted(set(deployed.values()))
        out += [f"The full policy deployed {len(deployed)} pool(s) at the TP its planner picks for the trace's peak "
                f"({', '.join(f'TP{t}' for t in tps)}; the other policies keep the workload's): "
                + ", ".join(sorted(deployed)) + ".", ""]
    return out


def savings_split(run: dict[str, Any], none: dict[str, Any]) -> dict[str, float]:
    """GPU energy the run saved against no control (kWh), split into work not done (processed tokens not
    served, at no control's energy per processed token) and the same work for less energy."""
    saved = none["pool_energy_kwh"] - run["pool_energy_kwh"]
    not_done = (none["tokens"] + none["prompt_tokens"] - run["tokens"] - run["prompt_tokens"]) * \
        none["energy_per_processed_token_j"] / 3.6e6
    return {"saved_kwh": saved, "work_not_done_kwh": not_done, "efficiency_kwh": saved - not_done}


def _savings_table(results: dict[str, dict[str, Any]]) -> list[str]:
    none = results.get("none")
    others = {k: v for k, v in results.items() if k != "none"}
    if none is None or not others or not none.get("pool_energy_kwh"):
        return []
    split = {k: savings_split(v, none) for k, v in others.items()}
    rows = [("inference GPU energy saved (kWh)", "saved_kwh"), ("... work not done (kWh)", "work_not_done_kwh"),
            ("... same work, less energy (kWh)", "efficiency_kwh")]
    return ["", "## Energy saved against no control", "",
            "| | " + " | ".join(split) + " |", "|---|" + "---|" * len(split),
            *[f"| {label} | " + " | ".join(f"{sp[key]:.2f} ({100 * sp[key] / none['pool_energy_kwh']:.1f}%)"
                                           for sp in split.values()) + " |" for label, key in rows]]


def _oversubscription(meta: dict[str, Any], oversub: dict[str, Any]) -> str:
    return (f"From the racks' true power in the uncontrolled run ({meta['duration_s']} s), the planner "
            f"(`powerplane plan`) finds room for {oversub['extra_racks_no_control']} more racks without "
            f"control and {oversub['extra_racks_capped']} with capping, at a risk of {oversub['risk']:g} "
            f"(share of seconds over a derated limit, or needing caps on inference-critical work), capping "
            f"shedding at most {100 * oversub['max_throttle']:.0f}% of low-priority energy (measured: "
            f"{100 * oversub['throttled_low_priority']:.1f}%). On {oversub['racks']} racks that is "
            f"{(oversub['more_racks_pct'] or 0.0):.1f}% more racks hosted. Binding levels: "
            f"{oversub['binding_no_control']} without control, {oversub['binding_capped']} with capping.")
