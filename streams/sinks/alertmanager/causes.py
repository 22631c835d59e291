"""Alert names, and which alert is the cause of which: the tables the sink labels alerts by and the shipped
Alertmanager config inhibits by (compose/alertmanager.yml; tests/unit/test_alertbook.py checks that its
inhibit_rules are these). Pure: the scopes come from the site model, no I/O.

A feed loss on a 2N site puts the whole load on the other feed: the overloads it causes are on the
*surviving* side, not beneath the lost feed. So the scope of a cause is the 2N pair, not one side: every
level gets a `feed` label naming the pair of utility feeds its racks hang from (`util-a+util-b`), and a
`lineup` label naming the pair of UPS lineups (`ups-a-h1-01+ups-b-h1-01`). A FeedLoss then silences
what carries the same `feed` label in the same site, a UpsLoss what carries the same `lineup`.
"""

from __future__ import annotations

import numpy as np

from powerplane.site import KIND, Site

# Event kind (pp.events) -> alertname. CamelCase, as Prometheus' own alerts are named; docs/runbooks.md has
# one section per name. A kind not listed is CamelCased as it is (alertname_for).
ALERT_NAMES: dict[str, str] = {
    "feed_loss": "FeedLoss",
    "ups_loss": "UpsLoss",
    "power_loss": "PowerLoss",
    "breaker_overload": "BreakerOverload",
    "cooling_failure": "CoolingFailure",
    "thermal_slowdown": "ThermalSlowdown",
    "telemetry_loss": "TelemetryLoss",
    "meter_gap": "MeterGap",
    "command_refused": "CommandRefused",
    "ack_refused": "AckRefused",
    "faulty_signal": "FaultySignal",
    "sensor_disagreement": "SensorDisagreement",
    "grid_ramp": "GridRamp",
    "grid_range": "GridRange",
    "grid_oscillation": "GridOscillation",
    "demand_response": "DemandResponse",
    "job_notice": "JobNotice",
}
# Not an event kind: the sink raises it when a large share of a site's racks has lost telemetry at once
# (a collector, network or broker problem, not one rack), and it silences the per-rack TelemetryLoss.
SITE_TELEMETRY_LOSS = "SiteTelemetryLoss"

# Cause alertname -> (the label whose value says its scope, the alertnames it silences in that scope).
# "site" scope: the whole site. Mirrored by compose/alertmanager.yml's inhibit_rules (equal: site + label).
INHIBITS: dict[str, tuple[str, tuple[str, ...]]] = {
    "FeedLoss": ("feed", ("UpsLoss", "PowerLoss", "BreakerOverload", "TelemetryLoss", "MeterGap")),
    "UpsLoss": ("lineup", ("PowerLoss", "BreakerOverload", "TelemetryLoss", "MeterGap")),
    SITE_TELEMETRY_LOSS: ("site", ("TelemetryLoss",)),
}
SCOPE_LABELS = ("feed", "lineup")


def alertname_for(kind: str) -> str:
    return ALERT_NAMES.get(kind) or "".join(p[:1].upper() + p[1:] for p in kind.split("_") if p)


class _Pairs:
    """Union-find over level indices: two levels are joined when one rack hangs from both (its A and B
    side), so a component is the set of feed levels that back each other up."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, i: int) -> int:
        self.parent.setdefault(i, i)
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def names(self, ids: list[str]) -> dict[int, str]:
        """Each member's component name: its members' ids joined by '+' (the first and a count past 4)."""
        members: dict[int, list[str]] = {}
        for i in self.parent:
            members.setdefault(self.find(i), []).append(ids[i])
        out: dict[int, str] = {}
        for i in self.parent:
            m = sorted(members[self.find(i)])
            out[i] = "+".join(m) if len(m) <= 4 else f"{m[0]}+{len(m) - 1}-more"
        return out


def cause_scopes(site: Site) -> dict[str, dict[str, str]]:
    """Level id -> its scope labels (`feed`, and `lineup` below a UPS), for every level on a feed and every
    rack. Halls, rows, zones and the site carry none: no single feed loss explains an alert on them."""
    parent, kinds, ids = site.level_parent, site.level_kind, site.level_ids
    n = len(ids)
    root = np.full(n, -1)
    ups = np.full(n, -1)
    for lv in np.flatnonzero(np.isin(kinds, [KIND[k] for k in ("utility", "ups", "rpp", "pdu")])).tolist():
        node = lv
        while node >= 0:
            if kinds[node] == KIND["ups"]:
                ups[lv] = node
            root[lv] = node
            node = int(parent[node])
    feeds, lineups = _Pairs(), _Pairs()
    for lv in np.flatnonzero(root >= 0).tolist():
        feeds.find(int(root[lv]))
        if ups[lv] >= 0:
            lineups.find(int(ups[lv]))
    for a, b in site.rack_pdu.tolist():
        feeds.union(int(root[a]), int(root[b]))
        if ups[a] >= 0 and ups[b] >= 0:
            lineups.union(int(ups[a]), int(ups[b]))
    feed_name, lineup_name = feeds.names(ids), lineups.names(ids)

    def labels(lv: int) -> dict[str, str]:
        out = {"feed": feed_name[int(root[lv])]}
        if ups[lv] >= 0:
            out["lineup"] = lineup_name[int(ups[lv])]
        return out

    scopes = {ids[lv]: labels(lv) for lv in np.flatnonzero(root >= 0).tolist()}
    for r, lv in enumerate(site.rack_level.tolist()):
        scopes[ids[lv]] = labels(int(site.rack_pdu[r, 0]))  # both sides are in the same pairs
    return scopes
