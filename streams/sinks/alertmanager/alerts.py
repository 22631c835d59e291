"""Events -> Alertmanager v2 alerts: what to post and when. Pure (no I/O): the sink posts what this
returns, so the dedupe, resolve, re-post and hold rules are unit-tested without a server.

One live alert per label set: alertname, site, severity, the primary level, and the cause-scope labels
`feed` and `lineup` (causes.py) that the shipped config inhibits by. No label is per event (the event id
and kind are annotations), so Alertmanager can group, silence and inhibit by what the alert is about.
Several events with one label set are one alert, ended when the last of them resolves.

A cause (FeedLoss, UpsLoss, SiteTelemetryLoss) that resolves while alerts it silences are still open here
is kept firing until they have ended (at most `cause_hold_max_s`): each detector condition clears on its
own clock, and an overload that outlives its feed loss by a second would otherwise page.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from powerplane.config import RUNBOOK_BASE_URL
from powerplane.schemas import Event
from streams.sinks.alertmanager.causes import INHIBITS, SCOPE_LABELS, SITE_TELEMETRY_LOSS, alertname_for

SEVERITY_RANK = {s: i for i, s in enumerate(Event.SEVERITIES)}  # info < warning < critical

Alert = dict[str, Any]  # the v2 API's postableAlert: labels, annotations, startsAt, endsAt
Key = tuple[tuple[str, str], ...]  # an alert's label set, sorted: its identity in Alertmanager


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


def runbook_url(base_url: str, alertname: str) -> str:
    """docs/runbooks.md has one `## <AlertName>` section per alert; GitHub's anchor is it lowercased."""
    return f"{base_url}#{alertname.lower()}"


def key_of(labels: dict[str, str]) -> Key:
    return tuple(sorted(labels.items()))


@dataclass
class _Live:
    alert: Alert
    posted_s: float  # wall time of the last post, for re-posting
    ids: set[str]  # the open events behind it
    held_since_s: float | None = None  # a resolved cause kept firing for what it silences


@dataclass
class AlertBook:
    """The open alerts this sink owns, keyed by label set."""

    runbook_base_url: str = RUNBOOK_BASE_URL
    repost_s: float = 60.0
    min_severity: str = "warning"
    retry_s: float = 5.0  # after a failed post, try again this soon rather than a full repost_s later
    cause_hold_max_s: float = 60.0
    site_telemetry_loss_frac: float = 0.5  # this share of a site's racks without telemetry: SiteTelemetryLoss
    scopes: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)  # site -> level -> scope labels
    racks: dict[str, int] = field(default_factory=dict)  # site -> rack count
    live: dict[Key, _Live] = field(default_factory=dict)
    by_id: dict[str, Key] = field(default_factory=dict)
    held: set[Key] = field(default_factory=set)
    # (site, scope label, its value, alertname) -> live alerts: what a cause still silences, in O(1)
    count: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)

    # ---- what an event becomes ------------------------------------------------------------------------
    def labels_for(self, e: Event) -> dict[str, str]:
        level = e.levels[0] if e.levels else ""
        labels = {"alertname": alertname_for(e.kind), "site": e.site, "severity": e.severity, "level": level,
                  **self.scopes.get(e.site, {}).get(level, {})}
        return {k: v for k, v in labels.items() if v}  # Alertmanager treats an empty label as absent anyway

    def alert_for(self, e: Event, labels: dict[str, str]) -> Alert:
        ann = {"summary": e.summary, "runbook_url": runbook_url(self.runbook_base_url, labels["alertname"]),
               "kind": e.kind, "event_id": e.id}
        if e.levels:
            ann["levels"] = ", ".join(e.levels)
        if e.deadline_s is not None:
            ann["deadline"] = rfc3339(e.deadline_s)  # absolute: a countdown would be stale once posted
        return {"labels": labels, "annotations": ann,
                "startsAt": rfc3339(e.opened_s if e.opened_s is not None else e.ts_s)}

    # ---- the rules ------------------------------------------------------------------------------------
    def update(self, e: Event, now_s: float) -> list[Alert]:
        """The alerts to post now for this event record (often none: an unchanged open alert waits for
        its next re-post, since Alertmanager does not notify on annotation changes)."""
        wanted = SEVERITY_RANK.get(e.severity, 0) >= SEVERITY_RANK.get(self.min_severity, 1)
        labels = self.labels_for(e)
        key = key_of(labels)
        old = self.by_id.get(e.id)
        out: list[Alert] = []
        if e.state == "resolved" or not wanted:
            if old is not None:
                out += self._drop(old, e.id, e.ts_s, now_s)
            elif wanted and key not in self.live:
                # Resolved before we saw it open (or after a restart that lost it): post the resolution
                # anyway; Alertmanager ignores it unless it still has the alert firing.
                out.append(self._ended(self.alert_for(e, labels), e.ts_s, now_s))
        else:
            if old is not None and old != key:
                # Escalated (say warning -> critical): a new label set is a new alert; end the old one now
                # so it does not linger until resolve_timeout.
                out += self._drop(old, e.id, now_s, now_s)
            out += self._open(key, self.alert_for(e, labels), e.id, now_s)
        out += self._site_telemetry(e.site, now_s)
        out += self._release(now_s)
        return out

    def due(self, now_s: float) -> list[Alert]:
        """Held causes whose hold is over, and open alerts to re-post so Alertmanager does not expire them
        (resolve_timeout)."""
        out = self._release(now_s)
        for live in self.live.values():
            if now_s - live.posted_s >= self.repost_s:
                live.posted_s = now_s
                out.append(live.alert)
        return out

    def failed(self, alerts: list[Alert], now_s: float) -> None:
        """A post of these alerts failed: re-post them retry_s from now."""
        for a in alerts:
            live = self.live.get(key_of(a["labels"]))
            if live is not None:
                live.posted_s = now_s - self.repost_s + self.retry_s

    def adopt(self, alerts: list[Alert], now_s: float) -> int:
        """Open alerts Alertmanager already holds from an earlier run of this sink (found by their event_id
        annotation): keep re-posting them until their resolution comes through Kafka."""
        n = 0
        for a in alerts:
            labels, ann = a.get("labels") or {}, a.get("annotations") or {}
            eid, key = ann.get("event_id"), key_of(labels)
            if eid and "alertname" in labels and a.get("startsAt") and key not in self.live:
                self.live[key] = _Live({"labels": dict(labels), "annotations": dict(ann), "startsAt": a["startsAt"]},
                                       now_s, {eid})
                self.by_id[eid] = key
                self._index(labels, 1)
                n += 1
        return n

    # ---- book-keeping ---------------------------------------------------------------------------------
    def _open(self, key: Key, alert: Alert, eid: str, now_s: float) -> list[Alert]:
        self.by_id[eid] = key
        cur = self.live.get(key)
        if cur is None:
            self.live[key] = _Live(alert, now_s, {eid})
            self._index(alert["labels"], 1)
            return [alert]
        alert["startsAt"] = cur.alert["startsAt"]
        cur.alert = alert  # the newest annotations go out with the next re-post
        cur.ids.add(eid)
        self.held.discard(key)  # a held cause back again: still firing in Alertmanager, nothing to post
        cur.held_since_s = None
        return []

    def _drop(self, key: Key, eid: str, ts_s: float, now_s: float) -> list[Alert]:
        """Event `eid` no longer holds this alert open; end the alert when no other event does."""
        self.by_id.pop(eid, None)
        cur = self.live.get(key)
        if cur is None:
            return []
        cur.ids.discard(eid)
        if cur.ids or key in self.held:
            return []
        if self._silenced_by(cur.alert["labels"]):
            cur.held_since_s = now_s
            self.held.add(key)
            return []
        return [self._end(key, ts_s, now_s)]

    def _release(self, now_s: float) -> list[Alert]:
        """End the held causes that silence nothing open any more, or have been held long enough."""
        out = []
        for key in sorted(self.held):
            since = self.live[key].held_since_s
            if not self._silenced_by(self.live[key].alert["labels"]) or (
                    since is not None and now_s - since >= self.cause_hold_max_s):
                self.held.discard(key)
                out.append(self._end(key, now_s, now_s))
        return out

    def _end(self, key: Key, ts_s: float, now_s: float) -> Alert:
        live = self.live.pop(key)
        self._index(live.alert["labels"], -1)
        for eid in live.ids:
            self.by_id.pop(eid, None)
        return self._ended(live.alert, ts_s, now_s)

    def _index(self, labels: dict[str, str], step: int) -> None:
        site, name = labels.get("site", ""), labels.get("alertname", "")
        for scope in ("site", *SCOPE_LABELS):
            if labels.get(scope):
                self.count[(site, scope, labels[scope], name)] += step

    def _silenced_by(self, labels: dict[str, str]) -> int:
        """How many open alerts this one silences (0 unless it is a cause)."""
        rule = INHIBITS.get(labels.get("alertname", ""))
        if rule is None or not labels.get(rule[0]):
            return 0
        scope, targets = rule
        return sum(self.count[(labels.get("site", ""), scope, labels[scope], t)] for t in targets)

    def _site_telemetry(self, site: str, now_s: float) -> list[Alert]:
        """Open SiteTelemetryLoss while a large share of the site's racks is without telemetry."""
        n_racks = self.racks.get(site, 0)
        if n_racks <= 0:
            return []
        lost = self.count[(site, "site", site, "TelemetryLoss")]
        need = max(2, math.ceil(self.site_telemetry_loss_frac * n_racks))
        labels = {"alertname": SITE_TELEMETRY_LOSS, "site": site, "severity": "critical"}
        key, eid = key_of(labels), f"site-telemetry-loss:{site}"
        cur = self.live.get(key)
        summary = (f"{lost} of {n_racks} racks without telemetry: a collector, network or broker problem rather "
                   "than the racks; capping runs on conservative estimates")
        if lost >= need and (cur is None or key in self.held):
            alert = {"labels": labels, "startsAt": rfc3339(now_s), "annotations": {
                "summary": summary, "runbook_url": runbook_url(self.runbook_base_url, SITE_TELEMETRY_LOSS),
                "event_id": eid}}
            return self._open(key, alert, eid, now_s)
        if cur is not None and key not in self.held:
            if lost >= need:
                cur.alert["annotations"]["summary"] = summary
                return []
            return self._drop(key, eid, now_s, now_s)
        return []

    @staticmethod
    def _ended(alert: Alert, ts_s: float, now_s: float) -> Alert:
        # endsAt at the event time of the resolution, but never in the future (Alertmanager would keep
        # the alert firing until then) and never before it started.
        end_s = min(ts_s, now_s)
        start_s = parse_rfc3339(str(alert["startsAt"]))
        if start_s is not None:
            end_s = max(end_s, start_s)
        return {**alert, "endsAt": rfc3339(end_s)}
