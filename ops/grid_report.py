"""The evaluation report's grid section (issue 16): what each policy's load looked like to the utility, policy
by policy, from the figures ops.grid_eval measured. Plain formatting, no simulation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Cell = Callable[[dict[str, Any]], str]

GRID_NOTE = ("Grid figures come from the twin's true site (and utility feed) power, one sample per second, "
             "leaving out the first {settle:g} s (the twin starts every job and pool at once). A ramp counts in "
             "every second whose change over the limit's window exceeds the limit. Band amplitudes are the peak "
             "MW of the oscillation within the band over sliding windows (the worst window shown); a 1 s series "
             "resolves only up to 0.5 Hz, so a band above it is 'not resolved' (the GPUs' own power smoothing "
             "must hold it; this measure can neither pass nor fail it) and a band straddling it is measured only "
             "below 0.5 Hz. Training throughput: training-class iterations completed against the no-control run. Floor "
             "energy: each second, the sum over GPUs of what a power floor made a GPU draw beyond what it would "
             "have drawn without one, at the wall through its server's nominal PSU efficiency, over the whole run.")


def _get(r: dict[str, Any], *path: str | int) -> Any:
    x: Any = r.get("grid", {})
    for k in path:
        if isinstance(x, dict) and isinstance(k, str):
            x = x.get(k)
        elif isinstance(x, list) and isinstance(k, int) and k < len(x):
            x = x[k]
        else:
            return None
    return x


def _num(*path: str | int, spec: str = ".2f", scale: float = 1.0) -> Cell:
    def cell(r: dict[str, Any]) -> str:
        v = _get(r, *path)
        return "-" if v is None else format(scale * float(v), spec)
    return cell


def _yes(*path: str | int) -> Cell:
    def cell(r: dict[str, Any]) -> str:
        v = _get(r, *path)
        return "-" if v is None else ("yes" if v else "no")
    return cell


def _limits_rows(label: str, path: tuple[str, ...], g: dict[str, Any]) -> list[tuple[str, Cell]]:
    rows: list[tuple[str, Cell]] = []
    for d in ("up", "down"):
        lim = g.get(f"ramp_{d}_limit_mw_per_s")
        if lim is None:
            continue
        rows += [(f"{label}: seconds over the ramp-{d} limit ({lim:g} MW/s over {g['ramp_window_s']:g} s)",
                  _num(*path, f"seconds_over_ramp_{d}", spec=".0f")),
                 (f"{label}: worst ramp {d} (MW/s)", _num(*path, f"max_ramp_{d}_mw_per_s", spec=".3f")),
                 (f"{label}: worst excess over the ramp-{d} limit (MW/s)",
                  _num(*path, f"worst_over_ramp_{d}_mw_per_s", spec=".3f"))]
    if g.get("range_limit_mw") is not None:
        rows += [(f"{label}: widest dynamic range over {g['range_window_s']:g} s (MW; limit {g['range_limit_mw']:g})",
                  _num(*path, "max_range_mw", spec=".3f")),
                 (f"{label}: seconds over the range limit", _num(*path, "seconds_over_range", spec=".0f"))]
    for i, b in enumerate(g.get("bands", [])):
        seen = {"full": "", "partial": ", below 0.5 Hz only", "none": ", not resolved at 1 s"}[b["resolved"]]
        rows += [(f"{label}: oscillation {b['lo_hz']:g}-{b['hi_hz']:g} Hz, worst amplitude (MW; limit "
                  f"{b['limit_mw']:g}{seen})", _num(*path, "bands", i, "max_amplitude_mw", spec=".3f")),
                 (f"{label}: ... within its limit", _yes(*path, "bands", i, "within_limit"))]
    return rows


def _dr_rows(i: int, ev: dict[str, Any]) -> list[tuple[str, Cell]]:
    p = ("demand_response", i)
    name = f"demand response {ev['id']}" + (f" ({ev['feed']})" if ev.get("feed") else "")
    return [(f"{name}: target (MW)", _num(*p, "target_w", spec=".3f", scale=1e-6)),
            (f"{name}: time to target (s)", _num(*p, "time_to_target_s", spec=".0f")),
            (f"{name}: share of the hold within target (%)", _num(*p, "hold_share", spec=".1f", scale=100)),
            (f"{name}: met (by the deadline, held throughout)", _yes(*p, "met")),
            (f"{name}: restore's worst ramp up (MW/s)", _num(*p, "restore_max_ramp_up_mw_per_s", spec=".3f")),
            (f"{name}: restore within the ramp limit", _yes(*p, "restore_within_limit"))]


def _throughput(none: dict[str, Any] | None, *path: str) -> Cell:
    base = _get(none, *path) if none is not None else None

    def cell(r: dict[str, Any]) -> str:
        v = _get(r, *path)
        if v is None:
            return "-"
        rel = f" ({100 * v / base:.1f}%)" if base else ""
        return f"{v:.1f}{rel}"
    return cell


def _floor_energy(r: dict[str, Any]) -> str:
    f = _get(r, "floor_energy")
    return "-" if f is None else f"{f['kwh']:.3g} kWh ({100 * f['share']:.2g} %)"


def grid_section(results: dict[str, dict[str, Any]]) -> list[str]:
    """'## Grid' with one row per figure and one column per policy; empty where no run measured grid limits."""
    ref = next((r["grid"] for r in results.values() if r.get("grid")), None)
    if ref is None or not any(k in ref for k in ("site", "feeds", "demand_response")):
        return []
    rows: list[tuple[str, Cell]] = []
    if ref.get("site"):
        rows += _limits_rows("site", ("site",), ref["site"])
    for feed, g in (ref.get("feeds") or {}).items():
        rows += _limits_rows(f"feed {feed}", ("feeds", feed), g)
    for i, ev in enumerate(ref.get("demand_response") or []):
        rows += _dr_rows(i, ev)
    none = results.get("none")
    job = ref.get("training_job")
    if job:
        rows.append((f"{job['name']}: iterations completed (vs no control)",
                     _throughput(none, "training_job", "iterations")))
    rows.append(("training class: iterations completed, all jobs (vs no control)",
                 _throughput(none, "training_iterations_total")))
    rows.append(("floor energy: what the power floors burnt beyond the GPUs' own draw (% of the site's energy)",
                 _floor_energy))
    head = ["| metric | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    body = [f"| {label} | " + " | ".join(fn(r) for r in results.values()) + " |" for label, fn in rows]
    return ["", "## Grid (the utility's limits)", "", *head, *body, "",
            GRID_NOTE.format(settle=float(ref.get("settle_s", 0.0)))]
