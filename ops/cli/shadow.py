"""`powerplane shadow compare`: what the live controller commanded (pp.commands) against what a shadow
controller would have (pp.shadow, `powerplane controller --shadow`) over a window. The comparison itself is
ops/shadow.py; this reads the two topics and prints it."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ops.cli.common import UsageError, _add_output, _emit_json, _site_optional

if TYPE_CHECKING:
    from powerplane.config import Config
    from powerplane.schemas import Command


def _since_s(text: str | None, seconds: float, now_s: float) -> float:
    """The window's start: ISO 8601 time or seconds since the epoch; default the last `seconds`."""
    if not text:
        return now_s - seconds
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"--since {text!r}: expected an ISO 8601 time (2026-05-01T12:00:00+00:00) or seconds "
                         "since the epoch") from None


def read_window(cfg: Config, topic: str, start_s: float, end_s: float) -> tuple[list[Command], int]:
    """The commands on `topic` whose broker time is in [start_s, end_s), and how many records there did not
    decode as commands."""
    from kafka import KafkaConsumer, TopicPartition

    from powerplane.kafka import process_auth
    from powerplane.schemas import Command, SchemaError

    c = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python(), group_id=None,
                      enable_auto_commit=False)
    out: list[Command] = []
    bad = 0
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(parts)
        end = c.end_offsets(parts)
        begin = c.offsets_for_times({tp: int(start_s * 1000) for tp in parts})
        live = [tp for tp in parts if begin.get(tp) is not None]  # None: nothing from start_s on
        for tp in live:
            c.seek(tp, begin[tp].offset)
        pending = {tp for tp in live if c.position(tp) < end[tp]}
        deadline = time.monotonic() + 60.0
        while pending and time.monotonic() < deadline:
            for tp, msgs in c.poll(timeout_ms=500, max_records=5000).items():
                for m in msgs:
                    if m.timestamp >= end_s * 1000 or m.offset >= end[tp] - 1:
                        pending.discard(tp)
                    if m.timestamp >= end_s * 1000 or m.offset >= end[tp]:
                        continue
                    try:
                        out.append(Command.decode(m.value or b""))
                    except SchemaError:
                        bad += 1
    finally:
        c.close()
    return out, bad


def _gpu_max(site: Any) -> dict[str, Any] | None:
    if site is None:
        return None
    return {rid: site.gpu_max_w[int(site.rack_gpu_start[r]):int(site.rack_gpu_start[r + 1])]
            for r, rid in enumerate(site.rack_ids)}


def cmd_shadow_compare(args: argparse.Namespace, cfg: Config) -> int:
    from ops import shadow
    from powerplane import topics

    now = time.time()
    start = _since_s(args.since, args.seconds, now)
    end = start + args.seconds
    if args.tolerance < 0 or args.slack < 0 or args.seconds <= 0:
        raise UsageError("--seconds must be above 0, --tolerance and --slack at least 0")
    live_cmds, bad_live = read_window(cfg, topics.COMMANDS.name, start, end)
    shadow_cmds, bad_shadow = read_window(cfg, topics.SHADOW.name, start, end)
    if args.site:
        live_cmds = [c for c in live_cmds if c.site == args.site]
        shadow_cmds = [c for c in shadow_cmds if c.site == args.site]
    live, shad = shadow.decisions(live_cmds), shadow.decisions(shadow_cmds)
    pairs = shadow.compare(live, shad, tolerance=args.tolerance, slack_s=args.slack)
    gmax = _gpu_max(_site_optional(cfg))
    rows = shadow.tally(pairs, gmax)
    held = shadow.held_capped_w(live, gmax), shadow.held_capped_w(shad, gmax)
    if args.output == "json":
        _emit_json({"start_s": start, "end_s": end, "tolerance": args.tolerance, "slack_s": args.slack,
                    "live_decisions": len(live), "shadow_decisions": len(shad),
                    "undecodable": {"live": bad_live, "shadow": bad_shadow},
                    "actions": [{"action": r.action, **r.count, "live_capped_w": r.live_capped_w,
                                 "shadow_capped_w": r.shadow_capped_w} for r in rows],
                    "held_capped_w": {"live": held[0], "shadow": held[1]}})
        return 0
    when = datetime.fromtimestamp(start).astimezone().isoformat(timespec="seconds")
    print(shadow.table(rows, *held, f"{args.seconds:.0f} s from {when} ({len(live)} live, {len(shad)} shadow; "
                                    f"tolerance {args.tolerance:g}, slack {args.slack:g} s)"))
    if bad_live or bad_shadow:
        print(f"({bad_live} record(s) on pp.commands and {bad_shadow} on pp.shadow did not decode: not counted)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `shadow compare`."""
    s = sub.add_parser("shadow", help="compare a shadow controller's decisions (pp.shadow) with the live ones")
    s.add_argument("action", choices=["compare"])
    s.add_argument("--since", metavar="TIME",
                   help="start of the window: ISO 8601 or seconds since the epoch (default: --seconds ago)")
    s.add_argument("--seconds", type=float, default=600.0, help="length of the window (default 600)")
    s.add_argument("--tolerance", type=float, default=10.0,
                   help="values within this agree: W for power caps, MHz for clock locks (default 10)")
    s.add_argument("--slack", type=float, default=1.0, metavar="S",
                   help="pair decisions for the same rack and action up to S seconds apart (default 1: the "
                        "two controllers tick on their own clocks)")
    s.add_argument("--site", help="only this site's commands (default: every site on the topics)")
    _add_output(s)
    s.set_defaults(fn=cmd_shadow_compare)
