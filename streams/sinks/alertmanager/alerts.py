"""Events -> Alertmanager v2 alerts: what to post and when. Pure (no I/O): the sink posts what this
returns, so the dedupe, resolve and re-post rules are unit-tested without a server.

One live alert per event id: the id is a label, so two occurrences on one level stay two alerts, and a
re-delivered record (at-least-once) re-posts the same labels, which Alertmanager merges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from powerplane.schemas import Event

SEVERITY_RANK = {s: i for i, s in enumerate(Event.SEVERITIES)}  # info < warning < critical

Alert = dict[str, Any]  # the v2 API's postableAlert: labels, annotations, startsAt, endsAt


def rfc3339(ts_s: float) -> str:
    return datetime.fromtimestamp(ts_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(s: str) -> float | None:
    """Seconds since the epoch, or None; Alertmanager writes nanoseconds, which datetime cannot hold."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", s)
    if m is None:
        return None
    frac = (m.group(2) or ".0")[:7]
    try:
        return datetime.fromisoformat(m.group(1) + frac + m.group(3).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def labels_for(e: Event) -> dict[str, str]:
    labels = {"alertname": e.kind, "site": e.site, "level": e.levels[0] if e.levels else "", "kind": e.kind,
              "severity": e.severity, "event_id": e.id}
    return {k: v for k, v in labels.items() if v}  # Alertmanager treats an empty label as absent anyway


def alert_for(e: Event, runbook_base: str) -> Alert:
    ann = {"summary": e.summary, "runbook_url": f"{runbook_base}#{e.kind}"}
    if e.levels:
        ann["levels"] = ", ".join(e.levels)
    if e.deadline_s is not None:
        ann["deadline"] = rfc3339(e.deadline_s)
        ann["deadline_in_s"] = f"{e.deadline_s - e.ts_s:.0f}"
    return {"labels": labels_for(e), "annotations": ann,
            "startsAt": rfc3339(e.opened_s if e.opened_s is not None else e.ts_s)}


@dataclass
class _Live:
    alert: Alert
    posted_s: float  # wall time of the last post, for re-posting


@dataclass
class AlertBook:
    """The open alerts this sink owns, keyed by event id."""

    runbook_base: str = "docs/runbooks.md"
    repost_s: float = 60.0
    min_severity: str = "warning"
    retry_s: float = 5.0  # after a failed post, try again this soon rather than a full repost_s later
    live: dict[str, _Live] = field(default_factory=dict)

    def update(self, e: Event, now_s: float) -> list[Alert]:
        """The alerts to post now for this event record (often none: an unchanged open alert waits for
        its next re-post, since Alertmanager does not notify on annotation changes)."""
        cur = self.live.get(e.id)
        wanted = SEVERITY_RANK.get(e.severity, 0) >= SEVERITY_RANK.get(self.min_severity, 1)
        if e.state == "resolved" or not wanted:
            if cur is None:
                # Resolved before we saw it open (or after a restart that lost it): post the resolution
                # anyway; Alertmanager ignores it unless it still has the alert firing.
                return [self._ended(alert_for(e, self.runbook_base), e.ts_s, now_s)] if wanted else []
            del self.live[e.id]
            return [self._ended(cur.alert, e.ts_s, now_s)]
        new = alert_for(e, self.runbook_base)
        if cur is not None:
            new["startsAt"] = cur.alert["startsAt"]
        self.live[e.id] = _Live(new, now_s)
        if cur is None:
            return [new]
        if cur.alert["labels"] != new["labels"]:
            # Escalated (say warning -> critical): a new label set is a new alert; end the old one now
            # so it does not linger until resolve_timeout.
            return [self._ended(cur.alert, now_s, now_s), new]
        self.live[e.id].posted_s = cur.posted_s  # same alert: keep the re-post schedule
        return []

    def due(self, now_s: float) -> list[Alert]:
        """Open alerts to re-post so Alertmanager does not expire them (resolve_timeout)."""
        out = []
        for live in self.live.values():
            if now_s - live.posted_s >= self.repost_s:
                live.posted_s = now_s
                out.append(live.alert)
        return out

    def failed(self, alerts: list[Alert], now_s: float) -> None:
        """A post of these alerts failed: re-post them retry_s from now."""
        ids = {a["labels"].get("event_id") for a in alerts}
        for eid, live in self.live.items():
            if eid in ids:
                live.posted_s = now_s - self.repost_s + self.retry_s

    def adopt(self, alerts: list[Alert], now_s: float) -> int:
        """Open alerts Alertmanager already holds from an earlier run of this sink (found by their
        event_id label): keep re-posting them until their resolution comes through Kafka."""
        n = 0
        for a in alerts:
            eid = (a.get("labels") or {}).get("event_id")
            if eid and eid not in self.live and a.get("startsAt"):
                self.live[eid] = _Live({"labels": dict(a["labels"]), "annotations": dict(a.get("annotations") or {}),
                                        "startsAt": a["startsAt"]}, now_s)
                n += 1
        return n

    @staticmethod
    def _ended(alert: Alert, ts_s: float, now_s: float) -> Alert:
        # endsAt at the event time of the resolution, but never in the future (Alertmanager would keep
        # the alert firing until then) and never before it started.
        end_s = min(ts_s, now_s)
        start_s = parse_rfc3339(str(alert["startsAt"]))
        if start_s is not None:
            end_s = max(end_s, start_s)
        return {**alert, "endsAt": rfc3339(end_s)}
