"""`powerplane shadow compare`: what the live controller commanded (pp.commands) against what a shadow
controller would have (pp.shadow, `powerplane controller --shadow`) over a window. The comparison itself is
powerplane/shadow.py; this reads the two topics and prints it."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import TYPE_CHECKING

from ops.cli.common import UsageError, _add_output, _emit_json, _site_optional

if TYPE_CHECKING:
    from powerplane.config import Config


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


def cmd_shadow_compare(args: argparse.Namespace, cfg: Config) -> int:
    from powerplane import shadow, topics
    from powerplane.kafka import read_window

    if args.tolerance < 0 or args.slack < 0 or args.seconds <= 0:
        raise UsageError("--seconds must be above 0, --tolerance and --slack at least 0")
    start = _since_s(args.since, args.seconds, time.time())
    end = start + args.seconds
    live, bad_live = shadow.decode_commands(read_window(cfg.kafka_bootstrap, topics.COMMANDS.name, start, end),
                                            args.site)
    shad, bad_shadow = shadow.decode_commands(read_window(cfg.kafka_bootstrap, topics.SHADOW.name, start, end),
                                              args.site)
    doc = shadow.report(live, shad, shadow.site_gpu_max_w(_site_optional(cfg)), tolerance=args.tolerance,
                        slack_s=args.slack)
    if args.output == "json":
        _emit_json({"start_s": start, "end_s": end, **doc, "undecodable": {"live": bad_live, "shadow": bad_shadow}})
        return 0
    rows = [shadow.Row(a["action"], {k: a[k] for k in shadow.KINDS}, a["live_capped_w"], a["shadow_capped_w"])
            for a in doc["actions"]]
    when = datetime.fromtimestamp(start).astimezone().isoformat(timespec="seconds")
    held = doc["held_capped_w"]
    print(shadow.table(rows, held["live"], held["shadow"],
                       f"{args.seconds:.0f} s from {when} ({doc['live_decisions']} live, {doc['shadow_decisions']} "
                       f"shadow; tolerance {args.tolerance:g}, slack {args.slack:g} s)"))
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
