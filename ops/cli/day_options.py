"""evaluate --day: the day-long evaluation (ops/day.py) against DynamoLLM's peak-provisioned baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ops.cli.common import UsageError


def add_day_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--day", action="store_true",
                   help="day-long run: the trace's request mix under a diurnal envelope, the peak-provisioned "
                        "baseline (none) against the full policy (default site: --site-slice 1)")
    p.add_argument("--site-slice", type=int, metavar="ROWS",
                   help="--day: ROWS rows (16 racks, 1,152 GPUs each) of one hall of the reference site (default 1)")
    p.add_argument("--peak-to-trough", type=float, default=3.0, metavar="R",
                   help="--day: the envelope's peak / trough rate (default 3; an assumption, see sim/diurnal.py)")
    p.add_argument("--day-length", type=float, default=86_400.0, metavar="S",
                   help="--day: simulated seconds the day is compressed into (default 86400: a real day)")


def _check(args: argparse.Namespace) -> None:
    bad = []
    if args.site_slice is not None and not args.day:
        bad.append("--site-slice needs --day")
    if args.day and args.site != "ref" and args.site_slice is not None:
        bad.append("--site-slice slices the reference site: drop --site or --site-slice")
    if args.day and (args.scenario or args.workload or args.policy != "all"):
        bad.append("--day runs its own workload, no scenario, and the policies none and full: drop "
                   "--scenario, --workload and --policy")
    if not args.peak_to_trough >= 1.0:
        bad.append(f"--peak-to-trough: must be >= 1, got {args.peak_to_trough:g}")
    if not args.day_length >= 60.0:
        bad.append(f"--day-length: must be >= 60 s, got {args.day_length:g}")
    if bad:
        raise UsageError("; ".join(bad))


def cmd_day(args: argparse.Namespace, trace: Any) -> int:
    """Runs the day and writes its report; the summary on stdout."""
    from ops.day import run_day, site_slice
    from ops.day_report import write_day_report
    from powerplane.site_file import load_site
    from sim.diurnal import Envelope
    from sim.trace_files import default_trace

    _check(args)
    if args.site != "ref":
        site, name = load_site(args.site), args.site
    else:
        site, name = site_slice(args.site_slice or 1)
    env = Envelope(peak_to_trough=args.peak_to_trough, day_s=args.day_length)
    run = run_day(site, name, trace if trace is not None else default_trace(), env, duration_s=args.duration,
                  seed=args.seed, out=sys.stderr)
    path = write_day_report(Path(args.out), run)
    print(path.read_text().rstrip())
    print(f"\nreport: {path}  metrics: {path.parent / 'metrics.json'}")
    return 0
