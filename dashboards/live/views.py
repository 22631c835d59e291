"""The dashboard's summaries of many records: pure, no I/O (state.py folds records into them).

- Decisions: the controller sends one command per rack per decision (1,024 on the 100 MW site after a
  feed loss), all with the same issuer and issue time. The log shows one line per decision with its
  acknowledgements counted ("decision 12:00:01 controller: 1024 power_cap, 1024 applied, 0 refused"), and
  an emergency's required shedding counts as acknowledged once a decision since it opened is fully applied.
- Emergency groups: open events grouped by kind and cause with counts; the kinds that can take the site
  down (feed/UPS/power loss, breaker overload, cooling failure) always sort above telemetry noise.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

APPLIED = frozenset({"applied", "clamped"})
# Group order on the page: the lower the rank, the higher the card. Unknown kinds sit between.
KIND_RANK: dict[str, int] = {"feed_loss": 0, "ups_loss": 1, "power_loss": 2, "breaker_overload": 3,
                             "cooling_failure": 4, "thermal_slowdown": 6, "command_refused": 7, "meter_gap": 8,
                             "telemetry_loss": 9}
NOISE_RANK = 8  # kinds from here on are logged collapsed per second (meter gaps, telemetry losses)
CRITICAL_KINDS = frozenset(k for k, r in KIND_RANK.items() if r <= 4)
SEV_RANK = {"critical": 0, "warning": 1, "info": 2}


@dataclass
class Decision:
    """The commands one controller issued at one instant, and their acknowledgements so far."""

    key: str
    issuer: str
    ts_s: float
    commands: int = 0  # changes (not renewals)
    renewals: int = 0
    acked: set[str] = field(default_factory=set)
    applied: int = 0
    refused: int = 0  # any other final status (rejected, expired, reverted)
    last_ack_s: float = math.nan
    actions: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    targets: list[str] = field(default_factory=list)  # the first few, for a one-command decision's line
    cids: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.commands + self.renewals

    @property
    def complete(self) -> bool:
        """Every command of the decision acknowledged as applied."""
        return self.total > 0 and self.applied >= self.total and self.refused == 0

    def add_command(self, cid: str, action: str, reason: str, target: str) -> None:
        self.cids.append(cid)
        if reason == "lease renewal":
            self.renewals += 1
        else:
            self.commands += 1
            self.actions[action] += 1
            self.reasons[reason.split(":")[0]] += 1
        if len(self.targets) < 3:
            self.targets.append(target)

    def add_ack(self, cid: str, status: str, ts_s: float) -> None:
        if cid in self.acked or status == "duplicate":  # at-least-once delivery: count each command once
            return
        self.acked.add(cid)
        if status in APPLIED:
            self.applied += 1
        else:
            self.refused += 1
        self.last_ack_s = ts_s if not (self.last_ack_s >= ts_s) else self.last_ack_s

    def text(self, hms: str) -> str:
        what = ", ".join(f"{n} {a}" for a, n in self.actions.most_common()) or "renewals only"
        why = "; ".join(f"{r} x{n}" if n > 1 else r for r, n in self.reasons.most_common(2))
        where = f" {self.targets[0]}" if self.commands == 1 else ""
        pending = self.total - len(self.acked)
        renew = f" +{self.renewals} renewal(s)" if self.renewals and self.commands else ""
        return (f"decision {hms} {self.issuer}: {what}{where}{renew}{f' ({why})' if why else ''}: "
                f"{self.applied} applied, {self.refused} refused" + (f", {pending} pending" if pending else ""))


class Decisions:
    """Bounded: the newest `max_decisions` decisions, commands mapped to theirs."""

    def __init__(self, max_decisions: int = 200) -> None:
        self.max_decisions = max_decisions
        self.by_key: OrderedDict[str, Decision] = OrderedDict()
        self.of_command: dict[str, str] = {}
        self.early_acks: dict[str, tuple[str, float]] = {}  # ack before its command: status, ts

    def on_command(self, cid: str, issuer: str, issued_at_s: float, action: str, reason: str,
                   target: str) -> Decision:
        key = f"{issuer}@{issued_at_s:.3f}"
        d = self.by_key.get(key)
        if d is None:
            d = self.by_key[key] = Decision(key, issuer, issued_at_s)
            while len(self.by_key) > self.max_decisions:
                for c in self.by_key.popitem(last=False)[1].cids:
                    self.of_command.pop(c, None)
        if cid not in self.of_command:
            self.of_command[cid] = key
            d.add_command(cid, action, reason, target)
        early = self.early_acks.pop(cid, None)
        if early is not None:
            d.add_ack(cid, *early)
        return d

    def on_ack(self, cid: str, status: str, ts_s: float) -> Decision | None:
        key = self.of_command.get(cid)
        if key is None or key not in self.by_key:
            if len(self.early_acks) < 100_000:
                self.early_acks[cid] = (status, ts_s)
            return None
        d = self.by_key[key]
        d.add_ack(cid, status, ts_s)
        return d

    def shed_acked_s(self, since_s: float | None) -> float | None:
        """When the newest fully applied decision with changes, issued at or after `since_s`, was last
        acknowledged. None: there is none, or a newer one was refused somewhere. (A newer one still
        waiting for its acks does not undo the shedding already done.)"""
        if since_s is None:
            return None
        for d in reversed(self.by_key.values()):
            if d.ts_s < since_s - 1.0:  # a decision a second before the event's window still counts
                break
            if not d.commands:
                continue
            if d.refused:
                return None
            if d.complete:
                return d.last_ack_s
        return None


def cause_of(kind: str, summary: str, details: dict[str, Any] | None) -> str:
    """What a group of events has in common beyond its kind: a `cause` in the details when the stage gives
    one, else the nature of a telemetry loss (silent rack or silent GPUs), else nothing."""
    c = (details or {}).get("cause")
    if isinstance(c, str) and c:
        return c
    if kind == "telemetry_loss":
        s = summary
        return "GPUs silent" if "GPUs reporting" in s else "never reported" if "never reported" in s else "no reading"
    return ""


def group_events(events: list[dict[str, Any]], show: int = 6) -> list[dict[str, Any]]:
    """Open events grouped by (kind, cause): count, worst severity, nearest deadline, first opened, the
    levels, and the `show` most urgent members. Critical kinds first, then by severity and deadline."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in events:
        groups.setdefault((e["kind"], e.get("cause", "")), []).append(e)
    out: list[dict[str, Any]] = []
    for (kind, cause), evs in groups.items():
        evs.sort(key=lambda e: (SEV_RANK.get(e["severity"], 3),
                                e["deadline_s"] if e["deadline_s"] is not None else math.inf))
        sev = evs[0]["severity"]
        deadlines = [e["deadline_s"] for e in evs if e["deadline_s"] is not None]
        opened = [e["opened_s"] for e in evs if e["opened_s"] is not None]
        levels: list[str] = []
        for e in evs:
            levels.extend(x for x in e["levels"][:1] if x not in levels)
        out.append({"kind": kind, "cause": cause, "count": len(evs), "severity": sev,
                    "critical_kind": kind in CRITICAL_KINDS, "deadline_s": min(deadlines) if deadlines else None,
                    "opened_s": min(opened) if opened else None, "levels": levels[:8],
                    "shed_acked_s": evs[0].get("shed_acked_s"), "events": evs[:show]})
    out.sort(key=lambda g: (KIND_RANK.get(g["kind"], 5), SEV_RANK.get(g["severity"], 3),
                            g["deadline_s"] if g["deadline_s"] is not None else math.inf))
    return out
