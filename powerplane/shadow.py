"""Live against shadow decisions (`powerplane shadow compare`, the live dashboard's /api/shadow): pure
functions over decisions, no I/O. Here, not in ops/, because the dashboard (a layer below ops) shows it too.

A decision is one command that changes something (lease renewals repeat what is held and are left out). The
live controller and a shadow decide on their own one-second ticks, so the same decision can land up to a
second apart: a live decision is paired with the shadow decision for the same target and action nearest in
time within `slack_s`, each used once. A pair agrees when both name the same GPUs with values within
`tolerance` (W for power caps, MHz for clock locks), else it differs; what is left is live-only or shadow-only.
"Capped W" is how far a power-cap decision sets its GPUs below their maximum limit (needs the site).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from powerplane.schemas import Command

KINDS = ("agree", "differ", "shadow-only", "live-only")
RENEWAL = "lease renewal"


@dataclass(frozen=True)
class Decision:
    t_s: float
    target: str
    action: str
    gpus: tuple[int, ...]
    values: tuple[float, ...]

    @classmethod
    def of(cls, cmd: Command) -> Decision:
        return cls(cmd.issued_at_s, cmd.target, cmd.action, tuple(int(g) for g in cmd.gpus.tolist()),
                   tuple(float(v) for v in cmd.values.tolist()))


def decisions(cmds: Iterable[Command]) -> list[Decision]:
    """The commands that change something, as decisions (renewals dropped)."""
    return [Decision.of(c) for c in cmds if c.reason != RENEWAL]


@dataclass(frozen=True)
class Pair:
    kind: str  # one of KINDS
    target: str
    action: str
    t_s: float  # the live decision's time, else the shadow's
    live: Decision | None
    shadow: Decision | None
    max_diff: float  # largest |live - shadow| over the GPUs both name; inf when the GPU sets differ; nan unpaired


def capped_w(d: Decision | None, gpu_max_w: Mapping[str, Any] | None) -> float:
    """Watts below the GPUs' maximum limits that a power-cap decision sets (0 for other actions; nan without
    the site's maxima)."""
    if d is None or d.action != "power_cap":
        return 0.0
    if gpu_max_w is None or d.target not in gpu_max_w:
        return float("nan")
    top = np.asarray(gpu_max_w[d.target], dtype=np.float64)[list(d.gpus)]
    return float(np.maximum(top - np.asarray(d.values), 0.0).sum())


def _diff(a: Decision, b: Decision) -> float:
    if a.gpus != b.gpus:
        return float("inf")
    return float(np.max(np.abs(np.subtract(a.values, b.values)))) if a.gpus else 0.0


def compare(live: Sequence[Decision], shadow: Sequence[Decision], *, tolerance: float = 10.0,
            slack_s: float = 1.0) -> list[Pair]:
    """Every live and shadow decision, paired where they can be (see the module's docstring), in time order."""
    by_key: dict[tuple[str, str], list[Decision]] = {}
    for d in sorted(shadow, key=lambda d: d.t_s):
        by_key.setdefault((d.target, d.action), []).append(d)
    used: set[int] = set()
    out: list[Pair] = []
    for d in sorted(live, key=lambda d: d.t_s):
        cands = [s for s in by_key.get((d.target, d.action), ()) if id(s) not in used and abs(s.t_s - d.t_s) <= slack_s]
        if not cands:
            out.append(Pair("live-only", d.target, d.action, d.t_s, d, None, float("nan")))
            continue
        # The nearest in time, and among equally near the one with the closest values.
        best = min(cands, key=lambda s: (abs(s.t_s - d.t_s), _diff(d, s)))
        used.add(id(best))
        diff = _diff(d, best)
        out.append(Pair("agree" if diff <= tolerance else "differ", d.target, d.action, d.t_s, d, best, diff))
    for s in shadow:
        if id(s) not in used:
            out.append(Pair("shadow-only", s.target, s.action, s.t_s, None, s, float("nan")))
    return sorted(out, key=lambda p: p.t_s)


@dataclass
class Row:
    """One action's counts and capped watts per kind of pair."""

    action: str
    count: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    live_capped_w: float = 0.0
    shadow_capped_w: float = 0.0


def tally(pairs: Iterable[Pair], gpu_max_w: Mapping[str, Any] | None = None) -> list[Row]:
    """Per action: how many pairs of each kind, and the watts the live and the shadow decisions capped."""
    rows: dict[str, Row] = {}
    for p in pairs:
        r = rows.setdefault(p.action, Row(p.action))
        r.count[p.kind] += 1
        r.live_capped_w += capped_w(p.live, gpu_max_w)
        r.shadow_capped_w += capped_w(p.shadow, gpu_max_w)
    return [rows[a] for a in sorted(rows)]


def held_capped_w(ds: Iterable[Decision], gpu_max_w: Mapping[str, Any] | None) -> float:
    """Watts below maximum that the newest power cap of every GPU holds at the end (what a side ends up
    capping), from its decisions in time order."""
    last: dict[tuple[str, int], float] = {}
    for d in sorted(ds, key=lambda d: d.t_s):
        if d.action == "power_cap":
            for g, v in zip(d.gpus, d.values, strict=True):
                last[(d.target, g)] = v
    if gpu_max_w is None:
        return float("nan")
    total = 0.0
    for (target, g), v in last.items():
        top = gpu_max_w.get(target)
        total += float("nan") if top is None else max(float(top[g]) - v, 0.0)
    return total


def table(rows: Sequence[Row], live_held_w: float, shadow_held_w: float, window: str) -> str:
    """The comparison as one table (kW), with what each side holds capped at the end of the window."""
    def kw(x: float) -> str:
        return "-" if x != x else f"{x / 1e3:,.1f}"

    head = f"{'action':15s} {'agree':>7s} {'differ':>7s} {'shadow-only':>12s} {'live-only':>10s} " \
           f"{'live capped kW':>15s} {'shadow capped kW':>17s}"
    lines = [f"live (pp.commands) against shadow (pp.shadow) decisions, {window}", head]
    for r in rows:
        c = r.count
        lines.append(f"{r.action:15s} {c['agree']:7d} {c['differ']:7d} {c['shadow-only']:12d} {c['live-only']:10d} "
                     f"{kw(r.live_capped_w):>15s} {kw(r.shadow_capped_w):>17s}")
    if not rows:
        lines.append("(no decisions on either topic in the window: renewals are not decisions)")
    lines.append(f"held capped at the end of the window: live {kw(live_held_w)} kW, shadow {kw(shadow_held_w)} kW")
    return "\n".join(lines)


def decode_commands(values: Iterable[bytes], site: str | None = None) -> tuple[list[Command], int]:
    """The commands among raw record values (of `site` only, when given), and how many did not decode."""
    from powerplane.schemas import SchemaError

    out: list[Command] = []
    bad = 0
    for v in values:
        try:
            cmd = Command.decode(v)
        except SchemaError:
            bad += 1
            continue
        if site is None or cmd.site == site:
            out.append(cmd)
    return out, bad


def report(live_cmds: Sequence[Command], shadow_cmds: Sequence[Command], gpu_max_w: Mapping[str, Any] | None,
           *, tolerance: float = 10.0, slack_s: float = 1.0) -> dict[str, Any]:
    """The comparison as one JSON-ready document: per action the counts and capped watts, what each side holds
    capped at the end, and the decisions that differ or have no partner (newest 50)."""
    live, shad = decisions(live_cmds), decisions(shadow_cmds)
    pairs = compare(live, shad, tolerance=tolerance, slack_s=slack_s)
    rows = tally(pairs, gpu_max_w)
    odd = [p for p in pairs if p.kind != "agree"][-50:]
    return {"tolerance": tolerance, "slack_s": slack_s, "live_decisions": len(live), "shadow_decisions": len(shad),
            "actions": [{"action": r.action, **r.count, "live_capped_w": r.live_capped_w,
                         "shadow_capped_w": r.shadow_capped_w} for r in rows],
            "held_capped_w": {"live": held_capped_w(live, gpu_max_w), "shadow": held_capped_w(shad, gpu_max_w)},
            "unmatched": [{"t_s": p.t_s, "kind": p.kind, "target": p.target, "action": p.action,
                           "live": _range(p.live), "shadow": _range(p.shadow)} for p in odd]}


def _range(d: Decision | None) -> list[float] | None:
    return None if d is None or not d.values else [min(d.values), max(d.values)]


def site_gpu_max_w(site: Any) -> dict[str, Any] | None:
    """Per rack id, its GPUs' maximum limits (what "capped W" is measured from); None without a site."""
    if site is None:
        return None
    return {rid: site.gpu_max_w[int(site.rack_gpu_start[r]):int(site.rack_gpu_start[r + 1])]
            for r, rid in enumerate(site.rack_ids)}
