"""`powerplane status`: the site in a screenful from the latest records on Kafka, or one level with its
children (`--level`); a table, or JSON for scripts (`-o json`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ops.cli.common import Failure, UsageError, _add_output, _emit_json, _site_optional

if TYPE_CHECKING:
    from powerplane.config import Config


def _kw(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e3:,.1f}"


def _table(rows: list[dict[str, Any]], indent: str = "  ") -> list[str]:
    out = [f"{indent}{'level':20s} {'kind':8s} {'load kW':>10s} {'limit kW':>10s} {'load %':>7s} "
           f"{'headroom kW':>11s} mode"]
    for r in rows:
        frac = "-" if r["load_frac"] is None else f"{r['load_frac']:.1%}"
        out.append(f"{indent}{r['level']:20s} {r['kind'] or '?':8s} {_kw(r['power_w']):>10s} "
                   f"{_kw(r['limit_w']):>10s} {frac:>7s} {_kw(r['headroom_w']):>11s} "
                   f"{r['mode'] or ('no record' if not r['reporting'] else '-')}")
    return out


def summary_text(s: dict[str, Any]) -> str:
    age = "" if s["newest_window_age_s"] is None else f", newest window {s['newest_window_age_s']:.0f} s ago"
    expected = f"/{s['levels_expected']}" if s["levels_expected"] is not None else ""
    modes = ", ".join(f"{m} {n}" for m, n in s["levels_by_mode"].items())
    lines = [f"site {s['site'] or '? (no site file)'}: {s['levels_reporting']}{expected} levels reporting{age}",
             f"modes: {modes or '-'}; {s['levels_over_limit']} level(s) over their limit",
             "feeds and top levels:", *_table(s["top_levels"]),
             f"most loaded {len(s['worst_levels'])} levels:", *_table(s["worst_levels"])]
    lines.append(f"open events: {s['open_events']}" + (" (by kind, most severe first):" if s["open_events"] else ""))
    for g in s["open_events_by_kind"]:
        dl = "" if g["next_deadline_in_s"] is None else f", next deadline in {g['next_deadline_in_s']:.0f} s"
        lines.append(f"  {g['count']:6d} {g['kind']} ({g['severity']}{dl}): {g['example']}")
    if s["records_bad"]:
        lines.append(f"({s['records_bad']} record(s) did not decode: see pp.deadletter)")
    return "\n".join(lines)


def drill_text(d: dict[str, Any]) -> str:
    lines = [f"site {d['site'] or '?'}: level {d['level']['level']}", *_table([d["level"]])]
    if d["children"]:
        lines += [f"children ({len(d['children'])}):", *_table(d["children"])]
    lines.append(f"open events naming it: {len(d['open_events'])}")
    for e in d["open_events"]:
        dl = "" if e["deadline_in_s"] is None else f", deadline in {e['deadline_in_s']:.0f} s"
        lines.append(f"  {e['severity']} {e['kind']}{dl}: {e['summary']}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    from ops.status import drill_down, read_latest, summary

    site = _site_optional(cfg)
    if args.level and site is not None and args.level not in site.level_ids:
        raise UsageError(f"--level {args.level}: no such level in site {site.name} (see `powerplane site show`)")
    latest = read_latest(cfg.kafka_bootstrap, site, default_tail=args.tail, timeout_s=args.timeout)
    if latest.left:
        raise Failure(f"read of {cfg.kafka_bootstrap} did not finish within {args.timeout:g} s "
                      f"({latest.left:,} records left): the broker is slow or busy; raise --timeout")
    if not latest.levels:
        raise Failure(f"no level records at the end of pp.aggregates or pp.headroom at {cfg.kafka_bootstrap}: "
                      "is the streams worker running (`powerplane streams worker`)?")
    if args.level:
        if site is None and args.level not in latest.levels:
            raise Failure(f"--level {args.level}: no record of that level at {cfg.kafka_bootstrap}")
        doc = drill_down(latest, site, args.level)
    else:
        doc = summary(latest, site, worst_n=args.worst)
    if args.output == "json":
        _emit_json(doc)
    else:
        print(drill_text(doc) if args.level else summary_text(doc))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds status."""
    st = sub.add_parser("status", help="the site in a screenful from the latest records on Kafka (--level: one "
                                       "level and its children)")
    st.add_argument("--level", metavar="NAME", help="show this level, its children and the open events naming it")
    st.add_argument("--worst", type=int, default=10, metavar="N", help="list the N most loaded levels (default 10)")
    st.add_argument("--tail", type=int, default=2000,
                    help="without a site file: records read back from the end of each partition (with one: "
                         "two windows of the site's levels)")
    st.add_argument("--timeout", type=float, default=10.0,
                    help="seconds the read may take before it is a failure (exit 1)")
    _add_output(st)
    st.set_defaults(fn=cmd_status)
