"""`powerplane status`: the latest record of every level and the open events, read from the ends of
pp.aggregates, pp.headroom and pp.events, and the summary drawn from them.

The read is bounded by what it needs, not by a clock: each partition is positioned `tail` records before
the end offsets taken at the start and read up to them; records arriving meanwhile are left alone. With
the site known, the tail is about two windows of the site's levels per partition. The timeout only catches
a broker that stops answering; a read it cuts short is a failure, never a partial answer.

`fold` and `summary` are plain functions of the records (no I/O); `read_latest` is the Kafka shell.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from powerplane import topics
from powerplane.kafka import BrokerUnavailable, _retry_connect, process_auth
from powerplane.schemas import Event, Headroom, LevelAggregate, SchemaError, decode_any
from powerplane.site import KIND_NAMES, Site

TOPICS: tuple[str, ...] = (topics.AGGREGATES.name, topics.HEADROOM.name, topics.EVENTS.name)
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


@dataclass
class Latest:
    """The newest record per level (aggregate or headroom, by event time) and per event id."""

    levels: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, Event] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)  # read, per topic
    bad: int = 0  # records that did not decode (the dead-letter topic has the detail)
    left: int = 0  # records not read before the timeout: the answer is incomplete
    clock_s: float = math.nan  # newest event time seen
    site: str | None = None  # only this site's records are kept (None: every site's)


def fold(latest: Latest, rec: Any) -> None:
    """Fold one decoded record. An older window than the one kept is ignored (partitions interleave), and
    so is another site's record when the site is known (one broker may carry several sites)."""
    if latest.site is not None and getattr(rec, "site", latest.site) != latest.site:
        return
    if isinstance(rec, LevelAggregate | Headroom):
        if not latest.clock_s >= rec.ts_s:
            latest.clock_s = rec.ts_s
        cur = latest.levels.setdefault(rec.level, {"kind": rec.kind, "ts_s": -math.inf})
        if rec.ts_s < cur["ts_s"] - 1e-6:
            return
        cur.update(ts_s=rec.ts_s, power_w=rec.power_w, limit_w=rec.limit_w, mode=rec.mode)
        if isinstance(rec, Headroom):
            cur["headroom_w"] = rec.headroom_w
    elif isinstance(rec, Event):
        old = latest.events.get(rec.id)
        if old is None or rec.ts_s >= old.ts_s:
            latest.events[rec.id] = rec


def tails(site: Site | None, partitions: dict[str, int], default: int, events_tail: int) -> dict[str, int]:
    """Records to read back per partition: two windows of every level of the site (keys hash unevenly,
    so twice the mean plus some), else `default`; events by their own bound."""
    out = {}
    for t, n in partitions.items():
        if t == topics.EVENTS.name:
            out[t] = events_tail
        elif site is not None:
            out[t] = math.ceil(2.0 * len(site.level_ids) / max(n, 1)) + 100
        else:
            out[t] = default
    return out


def read_latest(bootstrap: str, site: Site | None, *, default_tail: int = 2000, events_tail: int = 3000,
                timeout_s: float = 10.0, connect_timeout_s: float = 5.0,
                topic_names: Iterable[str] = TOPICS) -> Latest:
    """Read the tails of the topics up to the end offsets seen at the start. Raises BrokerUnavailable
    (one line) when no broker answers or a topic is missing; `left` > 0 when the timeout cut it short."""
    cons: KafkaConsumer = _retry_connect("status", bootstrap, lambda: KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, request_timeout_ms=20_000,
        bootstrap_timeout_ms=int(connect_timeout_s * 1000), fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024, **process_auth().kafka_python()), connect_timeout_s)
    latest = Latest(site=site.name if site is not None else None)
    try:
        parts: list[TopicPartition] = []
        counts: dict[str, int] = {}
        for t in topic_names:
            ids = cons.partitions_for_topic(t)
            if not ids:
                raise BrokerUnavailable(f"topic '{t}' does not exist at {bootstrap}: create the topics with "
                                        "`powerplane topics create`")
            counts[t] = len(ids)
            parts.extend(TopicPartition(t, p) for p in sorted(ids))
        tail = tails(site, counts, default_tail, events_tail)
        cons.assign(parts)
        begin, end = cons.beginning_offsets(parts), cons.end_offsets(parts)
        left: dict[TopicPartition, int] = {}
        for tp in parts:
            start = max(begin[tp], end[tp] - tail[tp.topic])
            if start < end[tp]:
                cons.seek(tp, start)
                left[tp] = start
            else:
                cons.pause(tp)  # nothing to read: no fetches for it
        _read(cons, left, end, latest, time.monotonic() + timeout_s)
        return latest
    finally:
        cons.close()


def _read(cons: KafkaConsumer, left: dict[TopicPartition, int], end: dict[TopicPartition, int], latest: Latest,
          deadline: float) -> None:
    while left and time.monotonic() < deadline:
        for tp, msgs in cons.poll(timeout_ms=100, max_records=20_000).items():
            if tp not in left:
                continue
            for m in msgs:
                if m.offset >= end[tp]:
                    break
                latest.records[tp.topic] = latest.records.get(tp.topic, 0) + 1
                if m.value is None:
                    continue  # a tombstone on the compacted topic
                try:
                    fold(latest, decode_any(m.value))
                except SchemaError:
                    latest.bad += 1
            left[tp] = msgs[-1].offset + 1
            if left[tp] >= end[tp]:
                del left[tp]
                cons.pause(tp)  # done: records arriving meanwhile are not part of this answer
    latest.left = sum(end[tp] - pos for tp, pos in left.items())


# ---- the summary (pure) ---------------------------------------------------------------------------


def level_row(level: str, v: dict[str, Any] | None, kind: str | None = None) -> dict[str, Any]:
    """One level as the JSON output has it: units in the names, null where there is no record."""
    v = v or {}
    power, limit = v.get("power_w"), v.get("limit_w")
    return {"level": level, "kind": v.get("kind", kind), "power_w": _r(power), "limit_w": _r(limit),
            "load_frac": round(power / limit, 4) if power is not None and limit else None,
            "headroom_w": _r(v.get("headroom_w")), "mode": v.get("mode"), "ts_s": _r(v.get("ts_s"), 3),
            "reporting": bool(v)}


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def open_events(latest: Latest) -> list[Event]:
    return [e for e in latest.events.values() if e.state == "open"]


def events_by_kind(events: list[Event], now_s: float) -> list[dict[str, Any]]:
    """Open events grouped by kind: count, worst severity, nearest deadline, one example. Most severe
    first, then the nearest deadline."""
    groups: dict[str, list[Event]] = {}
    for e in events:
        groups.setdefault(e.kind, []).append(e)
    out = []
    for kind, evs in groups.items():
        worst = min(evs, key=lambda e: (SEVERITY_RANK.get(e.severity, 3),
                                        e.deadline_s if e.deadline_s is not None else math.inf))
        deadlines = [e.deadline_s for e in evs if e.deadline_s is not None]
        out.append({"kind": kind, "count": len(evs), "severity": worst.severity,
                    "next_deadline_in_s": _r(min(deadlines) - now_s) if deadlines and math.isfinite(now_s) else None,
                    "levels_sample": sorted({lv for e in evs for lv in e.levels[:1]})[:5], "example": worst.summary})
    return sorted(out, key=lambda g: (SEVERITY_RANK.get(g["severity"], 3),
                                      g["next_deadline_in_s"] if g["next_deadline_in_s"] is not None else math.inf,
                                      -g["count"]))


def summary(latest: Latest, site: Site | None, *, worst_n: int = 10, now_s: float | None = None) -> dict[str, Any]:
    """The whole site in a screenful: top levels, modes, the most loaded levels, open events by kind."""
    now_s = time.time() if now_s is None else now_s
    ids = list(site.level_ids) if site is not None else list(latest.levels)
    kinds = ({lid: KIND_NAMES[int(k)] for lid, k in zip(site.level_ids, site.level_kind, strict=True)}
             if site is not None else {lid: v["kind"] for lid, v in latest.levels.items()})
    reporting = [lid for lid in ids if lid in latest.levels]
    modes: dict[str, int] = {}
    for lid in reporting:
        m = latest.levels[lid].get("mode") or "?"
        modes[m] = modes.get(m, 0) + 1
    rows = [level_row(lid, latest.levels[lid]) for lid in reporting]
    loaded = sorted((r for r in rows if r["load_frac"] is not None), key=lambda r: -r["load_frac"])
    top = [level_row(lid, latest.levels.get(lid), kinds[lid]) for lid in ids
           if kinds[lid] in ("site", "utility", "hall")]
    evs = open_events(latest)
    return {"site": site.name if site is not None else None,
            "newest_window_ts_s": _r(latest.clock_s, 3),
            "newest_window_age_s": _r(now_s - latest.clock_s) if math.isfinite(latest.clock_s) else None,
            "levels_expected": len(site.level_ids) if site is not None else None,
            "levels_reporting": len(reporting), "levels_missing": len(ids) - len(reporting),
            "levels_by_mode": dict(sorted(modes.items(), key=lambda kv: -kv[1])),
            "levels_over_limit": sum(1 for r in rows if r["load_frac"] is not None and r["load_frac"] > 1.0),
            "top_levels": top, "worst_levels": loaded[:worst_n],
            "open_events": len(evs), "open_events_by_kind": events_by_kind(evs, latest.clock_s),
            "records_read": dict(latest.records), "records_bad": latest.bad}


def drill_down(latest: Latest, site: Site | None, level: str) -> dict[str, Any]:
    """One level, its direct children (the site's tree) and the open events that name it."""
    children = site.children(level) if site is not None else []
    kinds = {lid: KIND_NAMES[int(k)] for lid, k in zip(site.level_ids, site.level_kind, strict=True)} if site else {}
    evs = [e for e in open_events(latest) if level in e.levels]
    return {"site": site.name if site is not None else None, "level": level_row(level, latest.levels.get(level),
                                                                                  kinds.get(level)),
            "children": [level_row(c, latest.levels.get(c), kinds.get(c)) for c in children],
            "open_events": [{"id": e.id, "kind": e.kind, "severity": e.severity, "levels": e.levels,
                             "deadline_in_s": _r(e.deadline_s - latest.clock_s)
                             if e.deadline_s is not None and math.isfinite(latest.clock_s) else None,
                             "summary": e.summary} for e in evs]}
