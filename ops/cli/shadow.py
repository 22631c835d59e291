"""`powerplane shadow compare`: what the live controller commanded (pp.commands) against what a shadow
controller would have (pp.shadow, `powerplane controller --shadow`) over a window. The comparison itself is
powerplane/shadow.py; this reads the two topics and prints it.

`powerplane shadow estimate`: the twin's estimate of what the shadow's policy would change in charge
(ops/shadow_estimate.py): both policies closed loop on the twin, side by side."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

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


def _spec(name: str | None, config_file: str | None, cfg: Config | None, source: str) -> Any:
    """One side's policy: the name given (default: what `powerplane controller` runs) with the thresholds of
    `config_file`, else of `cfg`, else the defaults; `source` says where they came from."""
    from ops.evaluate import DEPLOYED
    from ops.shadow_estimate import PolicySpec
    from powerplane.config import load_config

    if config_file:
        cfg, source = load_config(config_file), config_file
    if cfg is None:
        return PolicySpec(name or DEPLOYED, source=source)
    return PolicySpec(name or DEPLOYED, float(cfg.cap_threshold), float(cfg.uncap_threshold), source)


def _running_shadow(cfg: Config, seconds: float, site: str) -> Any:
    """The policy the running shadow stamps on its newest command on pp.shadow in the last `seconds`."""
    from ops.shadow_estimate import EstimateError, spec_of_params
    from powerplane import shadow, topics
    from powerplane.kafka import read_window

    now = time.time()
    cmds, _ = shadow.decode_commands(read_window(cfg.kafka_bootstrap, topics.SHADOW.name, now - seconds, now), site)
    for cmd in sorted(cmds, key=lambda c: -c.issued_at_s):
        spec = spec_of_params(cmd.params, "pp.shadow")
        if spec is not None:
            return spec
    raise EstimateError(f"no shadow command naming its policy on pp.shadow for site {site} in the last "
                        f"{seconds:.0f} s: name the shadow's with --shadow POLICY or --shadow-config FILE")


def cmd_shadow_estimate(args: argparse.Namespace, cfg: Config) -> int:
    from ops.cli.common import _site, _trace
    from ops.shadow_estimate import estimate, table, write
    from sim.scenario import load_scenario
    from sim.workload import default_workload

    site = _site(cfg, args.site_file)
    live = _spec(args.live, args.live_config, cfg, args.config or "the default config")
    live.check("live")  # before reading the topic or running anything
    if args.shadow or args.shadow_config:
        shad = _spec(args.shadow, args.shadow_config, None, "default thresholds")
    else:
        shad = _running_shadow(cfg, args.seconds, site.name)
    scenario = load_scenario(args.scenario) if args.scenario else None
    duration = args.duration or int(getattr(scenario, "duration_s", 0) or 120)
    if duration <= 0:
        raise UsageError("--duration must be above 0")
    trace = _trace(args)
    workload = default_workload(site, trace) if trace is not None else None
    doc = estimate(site, live, shad, duration, workload=workload, scenario=scenario,
                   scenario_name=args.scenario or "", seed=args.seed)
    if args.write:
        write(doc, args.write, time.time())
    if args.output == "json":
        _emit_json(doc)
    else:
        print(table(doc))
        if args.write:
            print(f"(written to {args.write}: `powerplane dashboard --shadow-estimate {args.write}` shows it)")
    return 0


def _dispatch(args: argparse.Namespace, cfg: Config) -> int:
    return (cmd_shadow_estimate if args.action == "estimate" else cmd_shadow_compare)(args, cfg)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `shadow compare` and `shadow estimate`."""
    s = sub.add_parser("shadow", help="compare a shadow controller's decisions (pp.shadow) with the live ones, or "
                                      "estimate on the twin what its policy would change")
    s.add_argument("action", choices=["compare", "estimate"],
                   help="compare: decisions on pp.commands against pp.shadow; estimate: both policies on the twin")
    s.add_argument("--since", metavar="TIME",
                   help="start of the window: ISO 8601 or seconds since the epoch (default: --seconds ago)")
    s.add_argument("--seconds", type=float, default=600.0,
                   help="length of the window (default 600); estimate: how far back to look on pp.shadow for the "
                        "running shadow's policy")
    s.add_argument("--tolerance", type=float, default=10.0,
                   help="values within this agree: W for power caps, MHz for clock locks (default 10)")
    s.add_argument("--slack", type=float, default=1.0, metavar="S",
                   help="pair decisions for the same rack and action up to S seconds apart (default 1: the "
                        "two controllers tick on their own clocks)")
    s.add_argument("--site", help="only this site's commands (default: every site on the topics)")
    _add_estimate(s)
    _add_output(s)
    s.set_defaults(fn=_dispatch)


def _add_estimate(s: argparse.ArgumentParser) -> None:
    from ops.cli.common import _add_trace

    e = s.add_argument_group("estimate (the twin's estimate of the shadow policy in charge)")
    e.add_argument("--live", metavar="POLICY", help="the live policy: controller (what `powerplane controller` "
                   "runs; default), none, static, polca, full")
    e.add_argument("--live-config", metavar="FILE", help="the live controller's config file: its cap_threshold and "
                   "uncap_threshold (default: this command's --config)")
    e.add_argument("--shadow", metavar="POLICY", help="the shadow policy (default: the one the running shadow "
                   "names on pp.shadow, else controller with --shadow-config)")
    e.add_argument("--shadow-config", metavar="FILE", help="the shadow controller's config file (its thresholds)")
    e.add_argument("--site-file", metavar="FILE", help="site file (default: PP_SITE_FILE)")
    e.add_argument("--scenario", help="scenario file (feed loss, grid ramp, ...; default: none, steady state)")
    _add_trace(s, " (estimate)")
    e.add_argument("--duration", type=int, help="simulated seconds per policy (default: the scenario's, or 120)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--write", metavar="FILE", help="also write the estimate as JSON for the live dashboard's "
                   "shadow panel (`powerplane dashboard --shadow-estimate FILE`)")
