"""Looking at the plant: live (dashboard, status) and what it would do (evaluate on the twin, plan)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ops.cli.common import (
    UsageError,
    _add_metrics,
    _add_output,
    _add_trace,
    _emit_json,
    _metrics_addr,
    _site,
    _site_optional,
    _stop_on_signals,
    _trace,
)

if TYPE_CHECKING:
    from powerplane.config import Config


def cmd_dashboard(args: argparse.Namespace, cfg: Config) -> int:
    from dashboards.live.server import run

    if args.replay and not Path(args.replay).is_dir():
        raise UsageError(f"--replay {args.replay}: no such recording (make one with `powerplane record`)")
    site = _site_optional(cfg)  # without it: levels laid out as they arrive
    metrics_addr = _metrics_addr(args)
    try:
        run(site, port=args.port, stop=_stop_on_signals(), host=args.host, speed=args.speed, backfill=args.backfill,
            bootstrap=None if args.replay else cfg.kafka_bootstrap, replay_dir=args.replay,
            metrics_addr=metrics_addr, shadow_estimate=args.shadow_estimate)
    except OSError as e:
        print(f"powerplane: error: cannot serve on {args.host}:{args.port} ({e.strerror or e}): choose another "
              "--port", file=sys.stderr)
        return 2
    return 0


def cmd_evaluate(args: argparse.Namespace, cfg: Config) -> int:
    from ops.cli.day_options import _check, cmd_day
    from ops.cli.slo_options import workload_for
    from ops.evaluate import POLICIES, oversubscription, run_policy
    from ops.progress import Progress
    from ops.report import write_report
    from powerplane.site_file import load_site
    from sim.scenario import load_scenario
    from sim.workload import default_workload, load_workload

    _check(args)
    if args.day:
        return cmd_day(args, _trace(args))
    if args.site == "ref":
        from powerplane.refsite import reference_site

        site, site_name = reference_site(), "the 100 MW reference site"
    else:
        site, site_name = load_site(args.site), args.site
    policies = list(POLICIES) if args.policy == "all" else [p.strip() for p in args.policy.split(",") if p.strip()]
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise ValueError(f"--policy: unknown {', '.join(bad)} (known: {', '.join(POLICIES)}, all)")
    scenario = load_scenario(args.scenario) if args.scenario else None
    trace = _trace(args)
    workload = workload_for(args, site, trace, load_workload, default_workload)
    used = workload.resolved_trace()
    duration = args.duration or int(getattr(scenario, "duration_s", 0) or 300)
    t0 = time.monotonic()
    results = {}
    for pol in policies:
        bar = Progress(f"{pol:>6}: {duration} s simulated", duration, sys.stderr)
        results[pol] = run_policy(site, pol, duration, workload=workload, scenario=scenario, seed=args.seed,
                                  progress=bar, ups_signal=args.ups_signal)
        bar.done()
    oversub = None
    if "none" in results:
        print("planning: how many more racks capping supports (powerplane plan on the uncontrolled run)...",
              file=sys.stderr)
        oversub = oversubscription(site, results["none"]["rack_power_w"])
    meta = {"site": site_name, "scenario": f"{args.scenario or 'none (steady state)'}, UPS signal "
                                          f"{'on' if args.ups_signal else 'off'}", "ups_signal": args.ups_signal,
            "workload": args.workload or _sizing_note(args),
            "slo": workload.slo.describe(),
            "trace": used.describe(), "trace_file": used.source, "trace_attribution": used.attribution,
            "duration_s": duration,
            "seed": args.seed, "wall_s": time.monotonic() - t0, "policies": policies}
    path = write_report(Path(args.out), meta, results, oversub)
    if args.output == "json":
        _emit_json({**json.loads((path.parent / "metrics.json").read_text()), "report_path": str(path),
                    "metrics_path": str(path.parent / "metrics.json")})
        return 0
    print(path.read_text().split("## Policies")[0].rstrip())
    print(f"\nreport: {path}  metrics: {path.parent / 'metrics.json'}")
    return 0


def cmd_plan(args: argparse.Namespace, cfg: Config) -> int:
    from controllers.planning import Costs
    from ops import plan as plan_shell

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    high = [c.strip() for c in args.high_priority.split(",") if c.strip()]
    plan_shell.check_options(kinds, high, args.risk)
    site = _site(cfg, args.site)
    if args.recording:
        power = plan_shell.power_from_recording(site, args.recording, sys.stderr)
        source = f"recording {args.recording}"
    else:
        trace = _trace(args)
        power = plan_shell.power_from_twin(site, args.simulate_minutes, args.seed, sys.stderr, trace)
        source = f"twin run of {args.simulate_minutes:g} min" + (f" on {trace.name}" if trace is not None else "")
    costs = Costs(args.power_usd_per_w, args.cooling_usd_per_w, args.usd_per_kwh, args.pue, args.rack_kw)
    plans, report = plan_shell.run(site, power, risk=args.risk, n_minus_1=args.n_minus_1, seed=args.seed,
                                   kinds=kinds, high_priority=high, costs=costs, source=source, cooling=args.cooling,
                                   max_throttle=args.max_throttle, progress=sys.stderr)
    if args.json:
        plan_shell.write_json(report, args.json)
        print(f"wrote {args.json}", file=sys.stderr if args.output == "json" else sys.stdout)
    if args.output == "json":
        _emit_json(report)
        return 0
    print(plan_shell.table(plans))
    print(plan_shell.summary(report))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds dashboard, evaluate, plan."""
    from ops.cli.day_options import add_day_options
    from ops.cli.slo_options import add_slo_options

    db = sub.add_parser("dashboard", help="serve the live dashboard on localhost (from Kafka, or --replay a recording)")
    db.add_argument("--port", type=int, default=8050)
    db.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    db.add_argument("--replay", metavar="DIR", help="show a recording (made by `powerplane record`) with a time slider")
    db.add_argument("--speed", type=float, default=1.0, help="--replay: N x the recorded pace at the start")
    db.add_argument("--backfill", type=int, metavar="N",
                    help="records read back per partition at start (default: ~a minute of aggregates; 0: only new)")
    db.add_argument("--shadow-estimate", metavar="FILE",
                    help="show this `powerplane shadow estimate --write` file in the shadow panel (live mode)")
    _add_metrics(db)  # /metrics is on --port too; this adds a scrape address apart from the page's
    db.set_defaults(fn=cmd_dashboard)

    ev = sub.add_parser("evaluate", help="closed loop on the digital twin, faster than real time: compare policies, "
                                         "write a report and metrics")
    ev.add_argument("--site", default="ref", help="site file, or 'ref' for the 100 MW reference site (default)")
    ev.add_argument("--workload", help="workload file (default: the site's default workload, sized on the trace)")
    _add_trace(ev)
    add_slo_options(ev)
    ev.add_argument("--scenario", help="scenario file (feed loss, cooling failure, ...); default: none")
    ev.add_argument("--policy", default="all", help="none, static, polca, full, or 'all' (comma-separated list ok)")
    ev.add_argument("--duration", type=int, help="simulated seconds per policy (default: the scenario's, or 300)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--ups-signal", action=argparse.BooleanOptionalAction, default=True,
                    help="feed the twin's UPS polls and traps (pp.facility) to the controllers (default: on)")
    ev.add_argument("--out", default="evaluation", help="output directory for report.md, metrics.json and plots")
    add_day_options(ev)
    _add_output(ev)
    ev.set_defaults(fn=cmd_evaluate)

    pl = sub.add_parser("plan", help="offline oversubscription planning: more racks per level, with and without "
                                     "capping, at a stated risk, and what they are worth")
    pl.add_argument("--site", help="site file (default: PP_SITE_FILE)")
    src = pl.add_mutually_exclusive_group(required=True)
    src.add_argument("--recording", metavar="DIR", help="recording with pp.telemetry (made by `powerplane record`)")
    src.add_argument("--simulate-minutes", type=float, metavar="N", help="run the digital twin for N minutes instead")
    _add_trace(pl)
    pl.add_argument("--risk", type=float, default=1e-4,
                    help="allowed fraction of seconds over a limit (no control) or capping high priority (capped)")
    pl.add_argument("--n-minus-1", action="store_true", help="capped floor must also fit with either feed lost")
    pl.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    pl.add_argument("--seed", type=int, default=0, help="twin and bootstrap seed")
    pl.add_argument("--kinds", default="rpp,ups,utility,row,hall,site",
                    help="level kinds to plan (pdu and zone also possible)")
    pl.add_argument("--cooling", action="store_true",
                    help="also hold cooling zones under their capacity every second (and plan them)")
    pl.add_argument("--max-throttle", type=float, metavar="FRAC",
                    help="capping may shed at most this fraction of low-priority energy (default: no bound)")
    pl.add_argument("--high-priority", default="inference-critical",
                    help="priority classes capped only as a last resort (the rest is shed first)")
    pl.add_argument("--power-usd-per-w", type=float, default=7.0, help="power provisioning cost")
    pl.add_argument("--cooling-usd-per-w", type=float, default=2.5, help="cooling provisioning cost")
    pl.add_argument("--usd-per-kwh", type=float, default=0.04, help="energy price")
    pl.add_argument("--pue", type=float, default=1.2, help="power usage effectiveness")
    pl.add_argument("--rack-kw", type=float, default=50.0, help="provisioned power per rack, for capital avoided")
    _add_output(pl)
    pl.set_defaults(fn=cmd_plan)


def _sizing_note(args: argparse.Namespace) -> str:
    crit_q = max(args.sizing_quantile, args.critical_quantile)
    return (f"default (pools sized so the p{100 * crit_q:g} (critical) and p{100 * args.sizing_quantile:g} (batch) "
            f"of the trace's 30 s-smoothed rate is {args.critical_load:g} (critical) and {args.batch_load:g} (batch) "
            "of their estimated capacity)")
