"""What the dashboard shows, folded from records: pure, bounded, no I/O.

`DashState.apply(record)` folds one decoded record (LevelAggregate, Headroom, Event, Command, Ack) into:
the latest values per level, a short forecast-vs-actual history per level (a numpy ring buffer), the
open events, the commands with their acknowledgements, and a bounded log. `snapshot()` is everything a
page needs to draw; `take_delta()` is what changed since the previous delta, coalesced: a level that
got ten records in a second is sent once. Everything is JSON-ready (NaN and None become null).

Order is per kind of record, by each record's own event time: a level's aggregates are compared with its
aggregates, its headroom with its headroom, an event with the records of the same event id. (PDU
aggregates are stamped with their telemetry frame, N.415 s, headroom with its window, N.0 s: against one
clock per level every headroom record looked late and was dropped.) Values both carry (load, limit,
mode) come from the newer of the two.

The clock is event time: the newest `ts_s` seen in any record. Deadlines, lease expiries and "pending"
are judged against it, so a replayed recording looks the way it looked when it happened.

Commands and acknowledgements are summarised per controller decision (views.Decisions): one log line per
decision, updated as its acks arrive; an emergency whose shedding since it opened is fully applied is not
overdue. Open emergencies are also sent grouped by kind and cause (views.group_events).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dashboards.live.views import KIND_RANK, NOISE_RANK, Decisions, cause_of, group_events
from powerplane.schemas import Ack, Command, Event, Headroom, LevelAggregate, Record
from powerplane.site import KIND_NAMES, Site

# Columns of a level row on the wire, in order (the page maps them by name from the snapshot).
LEVEL_COLS: tuple[str, ...] = (
    "power_w", "limit_w", "headroom_w", "forecast_p50_w", "forecast_p99_w", "mode", "inlet_c",
    "thermal_headroom_c", "ts_s", "horizon_s", "gpu_temp_max_c", "racks_stale", "gpus_reporting",
    "gpus_expected", "time_to_limit_s",
)
# History point columns: event time, actual load, forecast p50 and p99 (made at ts for ts + horizon), limit.
HIST_COLS: tuple[str, ...] = ("ts_s", "power_w", "forecast_p50_w", "forecast_p99_w", "limit_w")
CAP_ACTIONS = frozenset({"power_cap", "sm_clock_lock"})
APPLIED = frozenset({"applied", "clamped"})
# Fields both an aggregate and a headroom record carry: taken from whichever of the two is newer.
SHARED = frozenset({"power_w", "limit_w", "mode", "ts_s", "inlet_c"})


def _hms(ts_s: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts_s)) if math.isfinite(ts_s) else "--:--:--"


def num(x: Any, digits: int = 1) -> float | None:
    """A JSON-safe number: NaN and None are null (missing), never 0."""
    if x is None:
        return None
    f = float(x)
    return None if math.isnan(f) or math.isinf(f) else round(f, digits)


@dataclass
class CommandView:
    id: str
    target: str
    action: str
    n_gpus: int
    value_min: float | None
    value_max: float | None
    reason: str
    issuer: str
    issued_at_s: float
    expires_at_s: float
    ack_status: str | None = None  # None: no acknowledgement yet
    ack_ts_s: float | None = None
    applied_min: float | None = None
    applied_max: float | None = None
    ack_reason: str = ""
    released: str = ""  # a release: the action whose cap it ends ("power_cap" or "sm_clock_lock")

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "target": self.target, "action": self.action, "n_gpus": self.n_gpus,
                "value_min": num(self.value_min), "value_max": num(self.value_max), "reason": self.reason,
                "issuer": self.issuer, "issued_at_s": num(self.issued_at_s, 3),
                "expires_at_s": num(self.expires_at_s, 3), "ack_status": self.ack_status,
                "ack_ts_s": num(self.ack_ts_s, 3), "applied_min": num(self.applied_min),
                "applied_max": num(self.applied_max), "ack_reason": self.ack_reason}


@dataclass
class LevelInfo:
    id: str
    kind: str
    parent: str | None
    feed: str | None  # "A", "B" or None (carries both)


@dataclass
class DashState:
    """Bounded view of the control plane. `site` gives the tree and the heat-map layout; without it the
    levels and racks are laid out as their records arrive."""

    site: Site | None = None
    history_len: int = 300  # points per level: 5 minutes at 1 Hz; ~12 KB per level
    log_len: int = 500
    max_commands: int = 2000
    max_events: int = 20_000  # the 100 MW site opened 5,340 in a feed loss; pages get them grouped
    clock_s: float = math.nan  # event time: the newest ts_s of any record folded
    levels: dict[str, LevelInfo] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    racks: list[str] = field(default_factory=list)  # heat-map order
    rows: list[tuple[str, int, int]] = field(default_factory=list)  # (row id, first rack index, count)
    events: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    commands: OrderedDict[str, CommandView] = field(default_factory=OrderedDict)
    log: deque[dict[str, Any]] = field(default_factory=deque)
    counts: dict[str, int] = field(default_factory=dict)  # records folded per schema
    epoch: int = 0  # bumped by reset(): pages must take a fresh snapshot
    _rack_index: dict[str, int] = field(default_factory=dict)
    _hist: dict[str, np.ndarray] = field(default_factory=dict)
    _hist_n: dict[str, int] = field(default_factory=dict)  # points written (ring position = n % len)
    _dirty: set[str] = field(default_factory=set)
    _new_levels: list[str] = field(default_factory=list)
    _new_racks: list[str] = field(default_factory=list)
    _log_seq: int = 0
    _log_sent: int = 0
    site_mode: str | None = None  # the feed state from the newest site-level record
    site_mode_ts_s: float = -math.inf
    decisions: Decisions = field(default_factory=Decisions)
    _src_ts: dict[tuple[str, str], float] = field(default_factory=dict)  # (level, record kind) -> newest ts
    _cause: dict[tuple[str, str], str] = field(default_factory=dict)  # (rack, action) -> last non-renewal reason
    _dirty_decisions: set[str] = field(default_factory=set)
    _decision_seq: dict[str, int] = field(default_factory=dict)  # decision -> seq of its log line
    _noise: dict[str, tuple[int, list[str], float]] = field(default_factory=dict)  # noisy events per second

    def __post_init__(self) -> None:
        if self.site is not None:
            self._layout(self.site)

    def _layout(self, site: Site) -> None:
        for i, lid in enumerate(site.level_ids):
            p = int(site.level_parent[i])
            kind = KIND_NAMES[int(site.level_kind[i])]
            parent = site.level_ids[p] if p >= 0 else None
            if parent is None and kind in ("utility", "hall"):
                parent = next((site.level_ids[j] for j in site.levels_of_kind("site")), None)
            f = int(site.level_feed[i])
            self.levels[lid] = LevelInfo(lid, kind, parent, "AB"[f] if f >= 0 else None)
        order = np.argsort(site.rack_row, kind="stable")  # racks grouped by row, site order within a row
        for r in order.tolist():
            rid = site.level_ids[int(site.rack_level[r])]
            row = site.level_ids[int(site.rack_row[r])]
            self._rack_index[rid] = len(self.racks)
            self.racks.append(rid)
            if self.rows and self.rows[-1][0] == row:
                name, start, n = self.rows[-1]
                self.rows[-1] = (name, start, n + 1)
            else:
                self.rows.append((row, len(self.racks) - 1, 1))

    def reset(self) -> None:
        """Forget every record (a replay seeking backwards); the layout stays."""
        site = self.site
        fresh = DashState(site=site, history_len=self.history_len, log_len=self.log_len,
                          max_commands=self.max_commands, max_events=self.max_events)
        epoch = self.epoch + 1
        self.__dict__.update(fresh.__dict__)
        self.epoch = epoch

    # ---- folding ------------------------------------------------------------------------------
    def apply(self, rec: Record) -> None:
        """Fold one decoded record. Records of other schemas (telemetry) are ignored."""
        if isinstance(rec, LevelAggregate):
            self._on_level(rec.level, rec.kind, rec.ts_s, "aggregate", {
                "power_w": rec.power_w, "limit_w": rec.limit_w, "mode": rec.mode, "inlet_c": rec.inlet_c,
                "gpu_temp_max_c": rec.gpu_temp_max_c, "racks_stale": rec.racks_stale,
                "gpus_reporting": rec.gpus_reporting, "gpus_expected": rec.gpus_expected, "ts_s": rec.ts_s})
            self._hist_point(rec.level, rec.ts_s, power_w=rec.power_w, limit_w=rec.limit_w)
        elif isinstance(rec, Headroom):
            self._on_level(rec.level, rec.kind, rec.ts_s, "headroom", {
                "power_w": rec.power_w, "limit_w": rec.limit_w, "mode": rec.mode, "headroom_w": rec.headroom_w,
                "forecast_p50_w": rec.forecast_p50_w, "forecast_p99_w": rec.forecast_p99_w,
                "horizon_s": rec.horizon_s, "thermal_headroom_c": rec.thermal_headroom_c,
                "time_to_limit_s": rec.time_to_limit_s, "ts_s": rec.ts_s,
                **({"inlet_c": rec.inlet_c} if rec.inlet_c is not None else {})})
            self._hist_point(rec.level, rec.ts_s, power_w=rec.power_w, limit_w=rec.limit_w,
                             forecast_p50_w=rec.forecast_p50_w, forecast_p99_w=rec.forecast_p99_w)
        elif isinstance(rec, Event):
            self._on_event(rec)
        elif isinstance(rec, Command):
            self._on_command(rec)
        elif isinstance(rec, Ack):
            self._on_ack(rec)
        else:
            return
        self.counts[rec.SCHEMA] = self.counts.get(rec.SCHEMA, 0) + 1

    def _tick(self, ts_s: float) -> None:
        if not (self.clock_s >= ts_s):  # also true while the clock is NaN
            self.clock_s = ts_s

    def _on_level(self, level: str, kind: str, ts_s: float, source: str, vals: dict[str, Any]) -> None:
        self._tick(ts_s)
        if level not in self.levels:
            self.levels[level] = LevelInfo(level, kind, None, None)
            self._new_levels.append(level)
        if kind == "rack" and level not in self._rack_index:
            self._rack_index[level] = len(self.racks)
            self.racks.append(level)
            self._new_racks.append(level)
        if ts_s < self._src_ts.get((level, source), -math.inf) - 1e-6:
            return  # older than the newest record of this kind for this level (a late partition)
        self._src_ts[(level, source)] = ts_s
        if kind == "site" and ts_s >= self.site_mode_ts_s - 1e-6:
            self.site_mode, self.site_mode_ts_s = str(vals["mode"]), ts_s
        cur = self.values.setdefault(level, {})
        if ts_s >= cur.get("ts_s", -math.inf) - 1e-6:
            cur.update(vals)
        else:  # the other kind of record is newer: keep its load, limit and mode
            cur.update({k: x for k, x in vals.items() if k not in SHARED})
        self._dirty.add(level)

    def _hist_point(self, level: str, ts_s: float, **vals: float) -> None:
        buf = self._hist.get(level)
        if buf is None:
            buf = np.full((self.history_len, len(HIST_COLS)), np.nan)
            self._hist[level] = buf
            self._hist_n[level] = 0
        n = self._hist_n[level]
        # An aggregate and the headroom computed from it share the window's ts: merge into one point.
        # Search the last few points only; an older point than those is dropped (it is off the chart).
        for back in range(1, min(n, 4) + 1):
            row = buf[(n - back) % self.history_len]
            if abs(row[0] - ts_s) < 1e-3:
                for k, v in vals.items():
                    row[HIST_COLS.index(k)] = np.nan if v is None else v
                return
            if row[0] < ts_s:
                break
        else:
            if n and buf[(n - 1) % self.history_len][0] > ts_s:
                return
        row = buf[n % self.history_len]
        row[:] = np.nan
        row[0] = ts_s
        for k, v in vals.items():
            row[HIST_COLS.index(k)] = np.nan if v is None else v
        self._hist_n[level] = n + 1

    def _log(self, ts_s: float, kind: str, severity: str, text: str, ref: str = "") -> None:
        self._log_seq += 1
        self.log.append({"seq": self._log_seq, "ts_s": num(ts_s, 3), "kind": kind, "severity": severity,
                         "text": text, "ref": ref})
        while len(self.log) > self.log_len:
            self.log.popleft()

    def _on_event(self, ev: Event) -> None:
        self._tick(ev.ts_s)
        prev = self.events.get(ev.id)
        if prev is not None and ev.ts_s < (prev["ts_s"] or -math.inf) - 1e-6:
            return  # an older record of this event than the one shown (e.g. its "open" after its "resolved")
        row = {"id": ev.id, "kind": ev.kind, "severity": ev.severity, "state": ev.state, "levels": ev.levels,
               "ts_s": num(ev.ts_s, 3), "deadline_s": num(ev.deadline_s, 3),
               "opened_s": num(ev.opened_s if ev.opened_s is not None else
                               (prev["opened_s"] if prev else ev.ts_s), 3),
               "summary": ev.summary, "cause": cause_of(ev.kind, ev.summary, ev.details)}
        self.events[ev.id] = row
        self.events.move_to_end(ev.id)
        while len(self.events) > self.max_events:
            self._drop_oldest_event()
        if prev is None or prev["state"] != ev.state or prev["severity"] != ev.severity:
            verb = "RESOLVED" if ev.state == "resolved" else ("OPEN" if prev is None else ev.severity.upper())
            if KIND_RANK.get(ev.kind, 5) >= NOISE_RANK:  # a thousand racks silent: one line per second
                key = f"{verb} {ev.kind}@{int(ev.ts_s)}"
                n, levels, _ = self._noise.get(key, (0, [], ev.ts_s))
                self._noise[key] = (n + 1, levels + ev.levels[:1] if len(levels) < 3 else levels, ev.ts_s)
                self._dirty_decisions.add(key)
                return
            self._log(ev.ts_s, "event", "info" if ev.state == "resolved" else ev.severity,
                      f"{verb} {ev.kind} {','.join(ev.levels[:3])}: {ev.summary}", ev.id)

    def _drop_oldest_event(self) -> None:
        # Resolved events go first, then the oldest of the noisiest kind: a thousand telemetry losses must
        # never push a feed loss out of the table.
        victim = next((k for k, v in self.events.items() if v["state"] == "resolved"), None)
        if victim is None:
            noisiest = max(KIND_RANK.get(v["kind"], 5) for v in self.events.values())
            victim = next(k for k, v in self.events.items() if KIND_RANK.get(v["kind"], 5) == noisiest)
        self.events.pop(victim)

    def _on_command(self, c: Command) -> None:
        self._tick(c.issued_at_s)
        v = c.values.astype(np.float64)
        cv = CommandView(c.id, c.target, c.action, int(c.gpus.size), float(v.min()) if v.size else None,
                         float(v.max()) if v.size else None, c.reason, c.issuer, c.issued_at_s, c.expires_at_s())
        if c.action == "release":  # a release ends one knob's cap: a power release leaves a clock lock
            cv.released = "sm_clock_lock" if c.params.get("knob") == "clock" else "power_cap"
        old = self.commands.get(c.id)
        if old is not None and old.ack_status is not None:  # the ack came first (partitions interleave)
            cv.ack_status, cv.ack_ts_s, cv.applied_min, cv.applied_max, cv.ack_reason = (
                old.ack_status, old.ack_ts_s, old.applied_min, old.applied_max, old.ack_reason)
        self.commands[c.id] = cv
        while len(self.commands) > self.max_commands:
            self.commands.popitem(last=False)
        if c.reason != "lease renewal":
            self._cause[(c.target, c.action)] = c.reason
        # One log line per decision (flushed with the next delta), not one per rack.
        d = self.decisions.on_command(c.id, c.issuer, c.issued_at_s, c.action, c.reason, c.target)
        self._dirty_decisions.add(d.key)

    def _on_ack(self, a: Ack) -> None:
        self._tick(a.ts_s)
        cv = self.commands.get(a.command_id)
        if cv is None:  # ack before its command: keep it until the command arrives
            cv = CommandView(a.command_id, a.target, "?", int(a.gpus.size), None, None, "", "", a.ts_s, math.inf)
            self.commands[a.command_id] = cv
        ap = a.applied.astype(np.float64)
        ok = ap[~np.isnan(ap)]
        cv.ack_status, cv.ack_ts_s, cv.ack_reason = a.status, a.ts_s, a.reason
        cv.applied_min = float(ok.min()) if ok.size else None
        cv.applied_max = float(ok.max()) if ok.size else None
        d = self.decisions.on_ack(a.command_id, a.status, a.ts_s)
        if d is not None:
            self._dirty_decisions.add(d.key)
        elif a.status not in APPLIED and a.status != "duplicate":  # a refusal of a command not seen: say so now
            self._log(a.ts_s, "ack", "warning", f"{a.status} {a.target} {int(a.gpus.size)} GPU"
                      f"{' ' + a.reason if a.reason else ''}", a.command_id)

    def _flush_decisions(self) -> None:
        """Each decision changed since the last flush: its log line, replacing the one it had."""
        for key in sorted(self._dirty_decisions, key=lambda k: self.decisions.by_key[k].ts_s
                          if k in self.decisions.by_key else self._noise[k][2] if k in self._noise else 0.0):
            d = self.decisions.by_key.get(key)
            noise = self._noise.get(key)
            if d is None and noise is None:
                continue
            old = self._decision_seq.get(key)
            if old is not None:
                for i, e in enumerate(self.log):
                    if e["seq"] == old:
                        del self.log[i]
                        break
            if d is not None:
                self._log(d.ts_s, "command" if d.commands else "renewal", "warning" if d.refused else "info",
                          d.text(_hms(d.ts_s)), key)
            elif noise is not None:
                n, levels, ts = noise
                verb_kind = key.split("@")[0]
                self._log(ts, "event", "info" if verb_kind.startswith("RESOLVED") else "warning",
                          f"{verb_kind} x{n}: {', '.join(levels)}{' ...' if n > len(levels) else ''}", key)
            self._decision_seq[key] = self._log_seq
        self._dirty_decisions.clear()
        if len(self._noise) > 120:  # a line per kind and second is kept open for updates two minutes
            self._noise = dict(list(self._noise.items())[-60:])
        if len(self._decision_seq) > 2 * self.decisions.max_decisions:
            self._decision_seq = {k: v for k, v in self._decision_seq.items()
                                  if k in self.decisions.by_key or k in self._noise}

    # ---- views --------------------------------------------------------------------------------
    def mode_of(self, level: str) -> str | None:
        """The level's mode; a level on a lost feed reads that feed lost even when its own newest record
        (older than the site's) said normal: a PDU whose rack went silent must not read normal on a dead feed."""
        v = self.values.get(level, {})
        mode = v.get("mode")
        info = self.levels.get(level)
        sm = self.site_mode
        if (info is not None and info.feed and sm == f"{info.feed}-lost" and mode != sm
                and self.site_mode_ts_s >= v.get("ts_s", -math.inf) - 1e-6):
            return sm
        return None if mode is None else str(mode)

    def level_row(self, level: str) -> list[Any]:
        v = {**self.values.get(level, {}), "mode": self.mode_of(level)}
        out: list[Any] = [level]
        for c in LEVEL_COLS:
            x = v.get(c)
            out.append(x if isinstance(x, str) or x is None else num(x, 3 if c == "ts_s" else 1))
        return out

    def open_events(self) -> list[dict[str, Any]]:
        """Open events, the nearest deadline first, then critical before warning."""
        sev = {"critical": 0, "warning": 1, "info": 2}
        ev = [e for e in self.events.values() if e["state"] == "open"]
        for e in ev:  # is the shedding it needs done? (the page shows no OVERDUE for it then)
            if e["deadline_s"] is not None:
                e["shed_acked_s"] = num(self.decisions.shed_acked_s(e["opened_s"]), 3)
        return sorted(ev, key=lambda e: (e["deadline_s"] if e["deadline_s"] is not None else math.inf,
                                         sev.get(e["severity"], 3)))

    def open_event_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.events.values():
            if e["state"] == "open":
                for lvl in e["levels"]:
                    out[lvl] = out.get(lvl, 0) + 1
        return out

    def pending(self, limit: int = 200) -> list[dict[str, Any]]:
        """Commands without an acknowledgement whose lease has not run out (the actuator may still act)."""
        now = self.clock_s
        out = [c for c in self.commands.values()
               if c.ack_status is None and not (c.expires_at_s < now) and c.action != "?"]
        return [c.row() for c in out[-limit:]]

    def active_caps(self, limit: int = 500) -> list[dict[str, Any]]:
        """Per rack and action, the newest applied cap whose lease has not expired (a release ends it)."""
        now = self.clock_s
        latest: dict[str, dict[str, CommandView]] = {}
        for c in sorted(self.commands.values(), key=lambda c: c.issued_at_s):
            if c.action == "release":
                latest.get(c.target, {}).pop(c.released, None)
            elif c.action in CAP_ACTIONS and c.ack_status in APPLIED:
                latest.setdefault(c.target, {})[c.action] = c
        caps = [c for t in sorted(latest) for c in latest[t].values() if not (c.expires_at_s < now)]
        # A renewal says "lease renewal": the cap's reason is the change that set it.
        return [{**c.row(), "reason": self._cause.get((c.target, c.action), c.reason)} for c in caps[:limit]]

    def history(self, level: str) -> list[list[float | None]]:
        buf = self._hist.get(level)
        if buf is None:
            return []
        n = self._hist_n[level]
        idx = np.arange(max(0, n - self.history_len), n) % self.history_len
        return [[num(x, 3) for x in buf[i]] for i in idx.tolist()]

    def _common(self) -> dict[str, Any]:
        self._flush_decisions()
        ev = self.open_events()
        # Open events go to the page grouped, with a count per level (for the tree): not one by one.
        return {"clock_s": num(self.clock_s, 3), "groups": group_events(ev), "n_open": len(ev),
                "open_counts": self.open_event_counts(),
                "feed_mode": self.site_mode, "pending": self.pending(),
                "caps": self.active_caps(), "counts": dict(self.counts), "epoch": self.epoch}

    def snapshot(self) -> dict[str, Any]:
        """Everything a page needs to draw from nothing."""
        self._new_levels.clear()
        self._new_racks.clear()
        common = self._common()
        return {"type": "snapshot", "site": self.site.name if self.site is not None else None,
                "cols": list(LEVEL_COLS), "hist_cols": list(HIST_COLS), "kinds": list(KIND_NAMES),
                "tree": [[x.id, x.kind, x.parent, x.feed] for x in self.levels.values()],
                "racks": list(self.racks), "rows": [list(r) for r in self.rows],
                "levels": [self.level_row(lid) for lid in self.values],
                "log": list(self.log), **common}

    def take_delta(self) -> dict[str, Any]:
        """What changed since the last delta (levels coalesced), and the small lists in full."""
        common = self._common()
        out = {"type": "delta",
               "tree": [[x.id, x.kind, x.parent, x.feed] for x in map(self.levels.__getitem__, self._new_levels)],
               "racks": list(self._new_racks),
               "levels": [self.level_row(lid) for lid in self._dirty],
               "log": [e for e in self.log if e["seq"] > self._log_sent], **common}
        self._dirty.clear()
        self._new_levels.clear()
        self._new_racks.clear()
        self._log_sent = self._log_seq
        return out


def status_rows(state: DashState, kinds: set[str] | None = None) -> list[dict[str, Any]]:
    """The power tree as rows for `powerplane status`: depth-first from the roots, site order."""
    children: dict[str | None, list[str]] = {}
    for lvl in state.levels.values():
        children.setdefault(lvl.parent, []).append(lvl.id)
    counts = state.open_event_counts()
    out: list[dict[str, Any]] = []

    def walk(lid: str, depth: int) -> None:
        info = state.levels[lid]
        v = state.values.get(lid)
        if v is not None and (kinds is None or info.kind in kinds):
            power, limit = v.get("power_w"), v.get("limit_w")
            out.append({"level": lid, "kind": info.kind, "depth": depth, "power_w": power, "limit_w": limit,
                        "load_frac": power / limit if power is not None and limit else None,
                        "headroom_w": v.get("headroom_w"), "mode": state.mode_of(lid),
                        "open_events": counts.get(lid, 0)})
            depth += 1
        for c in children.get(lid, []):
            walk(c, depth)

    for root in children.get(None, []):
        walk(root, 0)
    return out
