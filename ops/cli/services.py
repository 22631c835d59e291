"""The long-running stages, one process each (fleet, collect, streams, controller, actuate, sink),
and the demo that runs them all together."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops.cli.common import (
    CliError,
    _ack_keyring,
    _add_metrics,
    _add_trace,
    _keyring,
    _metrics_addr,
    _require_broker,
    _serve_metrics,
    _site,
    _site_optional,
    _stop_on_signals,
    _trace,
    log,
)

if TYPE_CHECKING:
    from powerplane.config import Config


def cmd_fleet(args: argparse.Namespace, cfg: Config) -> int:
    import time

    from collectors import service as collector_service
    from collectors.base import SourceContext, load_source
    from sim.fleet import Fleet
    from sim.source import FacilitySource

    site = _site(cfg)
    addr = _metrics_addr(args)
    stop = _stop_on_signals()
    fleet: Any
    trace = _trace(args)
    if args.twin or args.scenario or trace is not None:
        from sim import Twin, default_workload, load_scenario

        # The digital twin: trace-driven pools and training jobs, full physics, optional scenario.
        scenario = load_scenario(args.scenario) if args.scenario else None
        workload = default_workload(site, trace) if trace is not None else None
        fleet = Twin(site, workload, scenario=scenario, seed=args.seed, epoch_s=time.time())
        log.info("fleet: the twin replays %s", fleet.trace.describe())
    else:
        fleet = Fleet(site, seed=args.seed, load_scale=args.load, epoch_s=time.time())
    lock = threading.Lock()
    source = load_source("sim", {"kind": "sim", "interval_s": cfg.sample_interval_s, "lock": lock},
                         SourceContext(site=site, plant=fleet))
    # The UPS lineups' polls and traps (sim/ups.py) to pp.facility, each at its delivery time.
    facility = FacilitySource("sim-ups", {"lock": lock}, SourceContext(site=site, plant=fleet))
    # Telemetry does not wait for the actuators to read their partitions: commands sent meanwhile stay in
    # Kafka and are answered from the groups' committed offsets.
    registry = _serve_metrics(addr)  # one /metrics for the fleet's publisher and its actuators
    acts = _fleet_actuators(cfg, fleet, lock, args.actuator_groups, stop, registry)
    log.info("fleet: %d racks, %d GPUs, publishing every %.1f s%s", site.n_racks, site.n_gpus,
             cfg.sample_interval_s, f"; feed {args.lose_feed} will be lost at t={args.at:.0f} s"
             if args.lose_feed else "")

    def schedule() -> None:
        # at_s: the wall-clock moment in the fleet's time, so the UPS traps date from it, not from the last step.
        if args.lose_feed and not stop.wait(args.at):
            with lock:
                fleet.lose_feed(args.lose_feed, at_s=time.time() - fleet.epoch_s)
            log.warning("fleet: feed %s LOST (scenario)", args.lose_feed)
        if args.restore_at and args.lose_feed and not stop.wait(max(0.0, args.restore_at - args.at)):
            with lock:
                fleet.lose_feed(None, at_s=time.time() - fleet.epoch_s)
            log.warning("fleet: feed %s restored (scenario)", args.lose_feed)

    threading.Thread(target=schedule, daemon=True).start()
    try:
        collector_service.run(cfg, [source, facility], stop, duration_s=args.duration or None,
                              client_id="powerplane-fleet", registry=registry)
    finally:
        stop.set()
        for act in acts:
            act.join(10)
    return 0


def fleet_actuator_names(n_groups: int) -> list[str]:
    """The names of `powerplane fleet --actuator-groups N`'s actuators (their groups are
    powerplane-actuator-<name>): `twin` alone, else `twin-1` .. `twin-N`."""
    return ["twin"] if n_groups == 1 else [f"twin-{k + 1}" for k in range(n_groups)]


def _fleet_actuators(cfg: Config, fleet: Any, lock: threading.Lock, n_groups: int, stop: threading.Event,
                     registry: Any) -> list[threading.Thread]:
    """The fleet's twin actuators, one thread each: one for the whole site, or one per group of racks, each
    reading only the pp.commands partitions of its racks (actuators.service.rack_groups)."""
    from actuators import service as actuator_service
    from actuators.base import load_actuator
    from powerplane import topics

    site = fleet.site
    groups = actuator_service.rack_groups(site.rack_ids, n_groups, topics.COMMANDS.partitions)
    threads = []
    for name, racks in zip(fleet_actuator_names(n_groups), groups, strict=True):
        options: dict[str, Any] = {"kind": "twin", "lock": lock, "safe_limit": "max"}
        if n_groups > 1:
            options["racks"] = racks
        actuator = load_actuator(name, options, context=fleet)
        th = threading.Thread(target=actuator_service.run, args=(cfg, site.name, actuator, _keyring(cfg), stop),
                              kwargs={"ack_keyring": _ack_keyring(cfg), "registry": registry},
                              name=f"actuator-{name}", daemon=True)
        th.start()
        threads.append(th)
    if n_groups > 1:
        log.info("fleet: %d actuators, %s racks each", n_groups, "/".join(str(len(g)) for g in groups))
    return threads


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got '{text}'")
    return int(text)


def cmd_collect(args: argparse.Namespace, cfg: Config) -> int:
    from collectors import service as collector_service
    from collectors.base import SourceContext

    addr = _metrics_addr(args)
    site = _site_optional(cfg)
    sources = collector_service.sources_from_file(args.sources, SourceContext(site=site))
    sched = collector_service.run(cfg, sources, _stop_on_signals(), duration_s=args.duration or None,
                                  registry=_serve_metrics(addr), client_id=args.client_id)
    print(sched.table())
    return 0


def cmd_traps(args: argparse.Namespace, cfg: Config) -> int:
    from collectors.snmp import trap_config, trap_service
    from powerplane.kafka import client_auth

    addr = _metrics_addr(args)
    traps_cfg = trap_config.load(args.config_file, _site_optional(cfg))
    try:
        trap_service.run(traps_cfg, cfg.kafka_bootstrap, _stop_on_signals(), auth=client_auth(cfg, "collector"),
                         registry=_serve_metrics(addr), duration_s=args.duration or None)
    except OSError as e:  # the port: taken, or privileged
        raise CliError(str(e)) from None
    return 0


def cmd_streams(args: argparse.Namespace, cfg: Config) -> int:
    from streams.app import run_worker

    site = _site(cfg)  # a wrong setting first (exit 2), then a missing broker (exit 1)
    addr = _metrics_addr(args)
    _require_broker(cfg.kafka_bootstrap, "streams worker", args.connect_timeout)
    run_worker(cfg, site, from_beginning=args.from_beginning, registry=_serve_metrics(addr))
    return 0


def cmd_controller(args: argparse.Namespace, cfg: Config) -> int:
    from controllers import service

    addr = _metrics_addr(args)
    stop = _stop_on_signals()
    keyring = _shadow_keyring(cfg) if args.shadow else _keyring(cfg)
    if args.shadow:
        log.info("controller: shadow mode: decisions to pp.shadow only, never applied (docs/operations.md)")
    ctl = service.run(cfg, _site(cfg), keyring, stop, registry=_serve_metrics(addr),
                      decide_on_crossing=args.decide_on_crossing, shadow=args.shadow)
    if args.shadow:
        log.info("shadow controller: %d commands, %d renewals (on pp.shadow)", ctl.stats.commands,
                 ctl.stats.renewals)
        return 0
    lat = sorted(ctl.stats.latencies_s)
    p50 = f"{lat[len(lat) // 2] * 1e3:.0f} ms" if lat else "n/a"
    log.info("controller: %d commands, %d renewals, acks %s, command->ack p50 %s", ctl.stats.commands,
             ctl.stats.renewals, ctl.stats.acks, p50)
    return 0


def _shadow_keyring(cfg: Config) -> Any:
    """The shadow's own key (made on first use): never the command key, which it must not hold."""
    from powerplane.signing import SHADOW_KEY_ID, load_keyring, shadow_key_path

    return load_keyring(shadow_key_path(cfg.signing_key_file), SHADOW_KEY_ID, create=True)


def cmd_actuate(args: argparse.Namespace, cfg: Config) -> int:
    import tomllib

    from actuators import service as actuator_service
    from actuators.base import ActuatorConfigError, load_actuator

    try:
        tables = tomllib.loads(Path(args.actuators).read_text()).get("actuators", {})
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{args.actuators}: not valid TOML ({e})") from None
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"{args.actuators}: no [actuators.<name>] table (see actuators/*/sample.toml)")
    name = args.name or (next(iter(tables)) if len(tables) == 1 else None)
    if name is None or name not in tables:
        raise ValueError(f"{args.actuators}: choose an actuator with --name ({', '.join(tables)})")
    try:
        actuator = load_actuator(name, tables[name])
    except ActuatorConfigError as e:
        raise ValueError(str(e)) from None
    addr = _metrics_addr(args)
    guard = actuator_service.run(cfg, _site(cfg).name, actuator, _keyring(cfg), _stop_on_signals(),
                                 registry=_serve_metrics(addr), ack_keyring=_ack_keyring(cfg))
    log.info("actuator %s: %s", name, guard.stats)
    return 0


def cmd_sink(args: argparse.Namespace, cfg: Config) -> int:
    from streams.sinks.base import load_sink
    from streams.sinks.runner import SinkStats, run

    options: dict[str, dict[str, Any]] = {
        "influxdb": {"kind": "influxdb", "url": cfg.influx_url, "org": cfg.influx_org, "bucket": cfg.influx_bucket,
                     "token": cfg.influx_token},
        "alertmanager": {"kind": "alertmanager", "url": cfg.alertmanager_url, "runbook_base_url": cfg.runbook_base_url,
                         "site_file": cfg.site_file if Path(cfg.site_file).exists() else ""},
    }
    addr = _metrics_addr(args)
    sink = load_sink(args.name, options[args.name])
    stats = SinkStats()
    run(cfg, sink, _stop_on_signals(), stats=stats, registry=_serve_metrics(addr))
    log.info("sink %s: wrote %d points in %d batches (%d retries, %d dead letters, %d dropped)", args.name,
             stats.written, stats.batches, stats.retries, stats.dead_letters, stats.dropped)
    return 0


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    from ops.demo import run_demo

    return run_demo(cfg, duration_s=args.duration, lose_feed_at_s=args.at, keep_servers=args.keep_servers,
                    streams_workers=args.streams_workers)


def _workers(text: str) -> int:
    from powerplane import topics

    n = int(text) if text.isdigit() else 0
    if not 1 <= n <= topics.TELEMETRY.partitions:  # a worker beyond the partitions would get none of them
        raise argparse.ArgumentTypeError(f"expected 1-{topics.TELEMETRY.partitions}, got {text!r}")
    return n


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds fleet, collect, traps, streams, controller, actuate, sink, demo."""
    f = sub.add_parser("fleet", help="run the simulated fleet: publishes telemetry, applies commands")
    f.add_argument("--duration", type=float, default=0.0, help="seconds to run (0 = until stopped)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--load", type=float, default=1.0, help="utilization scale")
    f.add_argument("--lose-feed", choices=["A", "B"], help="scenario: lose this feed ...")
    f.add_argument("--at", type=float, default=15.0, help="... this many seconds after start")
    f.add_argument("--restore-at", type=float, default=0.0, help="... and restore it at this time")
    f.add_argument("--twin", action="store_true", help="use the digital twin (trace-driven) instead of the "
                                                        "simple fleet")
    f.add_argument("--scenario", help="digital twin scenario file (implies --twin), e.g. examples/scenarios/*.toml")
    _add_trace(f, "; implies --twin")
    f.add_argument("--actuator-groups", type=_positive_int, default=1, metavar="N",
                   help="apply commands with N actuators (threads), each serving a group of racks and reading only "
                        "the pp.commands partitions of its racks; groups powerplane-actuator-twin-1 .. -N "
                        "(default 1: one actuator for the site, group powerplane-actuator-twin)")
    _add_metrics(f)
    f.set_defaults(fn=cmd_fleet)

    co = sub.add_parser("collect", help="poll devices (SNMP PDUs, Redfish BMCs, NVML, DCGM) and publish telemetry")
    co.add_argument("sources", help="TOML file of [sources.NAME] tables (see collectors/*/sample.toml)")
    co.add_argument("--duration", type=float, default=0.0, help="seconds to run (0 = until stopped)")
    _add_metrics(co)
    co.add_argument("--client-id", default="powerplane-collector", help="names the spool directory too")
    co.set_defaults(fn=cmd_collect)

    tr = sub.add_parser("traps", help="receive UPS traps (SNMP v1/v2c/v3) and publish them as facility events")
    tr.add_argument("config_file", metavar="TRAPS.toml",
                    help="[receiver] and [agents.NAME] tables (see collectors/snmp/traps.toml)")
    tr.add_argument("--duration", type=float, default=0.0, help="seconds to run (0 = until stopped)")
    _add_metrics(tr)
    tr.set_defaults(fn=cmd_traps)

    w = sub.add_parser("streams", help="run the faust-streaming worker (telemetry -> aggregates)")
    w.add_argument("action", choices=["worker"])
    w.add_argument("--from-beginning", action="store_true",
                   help="a new consumer group starts at the oldest telemetry kept, not the newest (reprocessing)")
    _add_metrics(w)
    w.add_argument("--connect-timeout", type=float, default=15.0, metavar="S",
                   help="seconds to wait for the broker at start before giving up (exit 1)")
    w.set_defaults(fn=cmd_streams)

    c = sub.add_parser("controller", help="run the capping controller (aggregates -> signed commands)")
    _add_metrics(c)
    c.add_argument("--decide-on-crossing", action=argparse.BooleanOptionalAction, default=True,
                   help="decide as soon as a PDU load crosses the cap threshold, not only once a second "
                        "(default: on)")
    c.add_argument("--shadow", action="store_true",
                   help="shadow mode: decide on the live inputs in its own consumer group (Kafka role shadow) and "
                        "publish what it would have done to pp.shadow, never pp.commands; compare with "
                        "`powerplane shadow compare`")
    c.set_defaults(fn=cmd_controller)

    ac = sub.add_parser("actuate", help="apply signed commands to devices (nvml, redfish): one actuator of a config")
    ac.add_argument("--actuators", required=True, metavar="FILE",
                    help="TOML file with [actuators.<name>] tables (see actuators/*/sample.toml)")
    ac.add_argument("--name", help="which actuator of the file (needed when it has several)")
    _add_metrics(ac)
    ac.set_defaults(fn=cmd_actuate)

    k2 = sub.add_parser("sink", help="write aggregates, headroom, events and commands to InfluxDB (v2 write API), "
                                     "or events to Alertmanager")
    k2.add_argument("name", nargs="?", default="influxdb", choices=["influxdb", "alertmanager"],
                    help="which sink (default influxdb; alertmanager posts pp.events to PP_ALERTMANAGER_URL)")
    _add_metrics(k2)
    k2.set_defaults(fn=cmd_sink)

    e = sub.add_parser("demo", help="run the closed loop end to end on real servers and show what happens")
    e.add_argument("--duration", type=float, default=50.0)
    e.add_argument("--at", type=float, default=15.0, help="seconds until feed A is lost")
    e.add_argument("--keep-servers", action="store_true", help="leave Kafka and the TSDB running afterwards")
    e.add_argument("--streams-workers", type=_workers, default=1, metavar="N",
                   help="streams worker processes sharing its consumer groups (default 1; up to 12, the pp.telemetry "
                        "partitions)")
    e.set_defaults(fn=cmd_demo)
