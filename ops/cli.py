"""`powerplane`: one CLI for everything a user runs. Errors are one readable line saying what to do."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from powerplane import topics as topics_mod
from powerplane.config import Config, ConfigError, load_config

log = logging.getLogger("powerplane")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("kafka", "aiokafka", "faust", "mode", "urllib3", "influxdb_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # kafka-python logs every failed connection attempt; our own code reports the outcome in one line
        # (and it cannot decode faust's assignor metadata, which it mentions on every describe).
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s; shutting down (flushing what is buffered)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _site(cfg: Config, path: str | None = None) -> Any:
    from powerplane.site import load_site

    return load_site(path or cfg.site_file)


def _keyring(cfg: Config, create: bool = True) -> Any:
    from powerplane.signing import load_keyring

    return load_keyring(cfg.signing_key_file, cfg.signing_key_id, create=create)


# ---- subcommands -------------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace, cfg: Config) -> int:
    from ops import devservers

    if args.action == "up":
        devservers.up(cfg, kafka=not args.no_kafka, vm=not args.no_tsdb)
        print(f"Kafka at {cfg.kafka_bootstrap}, InfluxDB v2 write API (VictoriaMetrics) at {cfg.influx_url}")
    elif args.action == "down":
        devservers.down(cfg, wipe=args.wipe)
    else:
        for name, pid in devservers.status(cfg).items():
            print(f"{name:18s} {'running, pid ' + str(pid) if pid else 'stopped'}")
    return 0


def cmd_topics(args: argparse.Namespace, cfg: Config) -> int:
    from powerplane import topics

    if args.action == "create":
        from powerplane.kafka import create_topics

        created = create_topics(cfg.kafka_bootstrap)
        print(f"created: {', '.join(created)}" if created else "all topics already exist")
    else:
        print(f"{'topic':16s} {'parts':>5s} {'key':18s} {'retention':>9s} cleanup")
        for t in topics.ALL:
            print(f"{t.name:16s} {t.partitions:5d} {t.key:18s} {t.retention_ms / 86_400_000:8.0f}d "
                  f"{t.configs()['cleanup.policy']}")
    return 0


def cmd_site(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "generate":
        from powerplane.refsite import RefSiteParams, reference_site_dict, to_toml

        params = RefSiteParams(halls=args.halls, rows_per_hall=args.rows, racks_per_row=args.racks)
        Path(args.out).write_text(to_toml(reference_site_dict(params)))
        site = _site(cfg, args.out)
        print(f"wrote {args.out}: {site.n_racks} racks, {site.n_gpus} GPUs")
        return 0
    site = _site(cfg, args.file)
    if args.action == "validate":
        print(f"{args.file or cfg.site_file}: ok — {site.n_racks} racks, {len(site.server_ids)} servers, "
              f"{site.n_gpus} GPUs, {len(site.level_ids)} levels")
        return 0
    from powerplane.site import KIND_NAMES

    rated, derated = site.limits_w("normal")
    _, der_a = site.limits_w("A-lost")
    _, der_b = site.limits_w("B-lost")
    print(f"{'level':18s} {'kind':8s} {'rated kW':>9s} {'derated':>9s} {'A lost':>9s} {'B lost':>9s}")
    kinds = set(args.kinds.split(",")) if args.kinds else {"site", "utility", "ups", "rpp", "hall", "row", "zone"}
    for i, lid in enumerate(site.level_ids):
        k = KIND_NAMES[site.level_kind[i]]
        if k in kinds:
            print(f"{lid:18s} {k:8s} {rated[i] / 1e3:9.1f} {derated[i] / 1e3:9.1f} {der_a[i] / 1e3:9.1f} "
                  f"{der_b[i] / 1e3:9.1f}")
    return 0


def cmd_keys(args: argparse.Namespace, cfg: Config) -> int:
    path = Path(cfg.signing_key_file)
    if path.exists():
        print(f"{path} already exists; rotate by adding a new '<id> <hex>' line and setting PP_SIGNING_KEY_ID")
        return 0
    _keyring(cfg, create=True)
    print(f"created signing keyring {path} with key id '{cfg.signing_key_id}'")
    return 0


def cmd_fleet(args: argparse.Namespace, cfg: Config) -> int:
    import time

    from actuators import service as actuator_service
    from actuators.base import load_actuator
    from collectors import service as collector_service
    from collectors.base import SourceContext, load_source
    from sim.fleet import Fleet

    site = _site(cfg)
    stop = _stop_on_signals()
    fleet: Any
    if args.twin or args.scenario:
        from sim import Twin, load_scenario

        # The digital twin: trace-driven pools and training jobs, full physics, optional scenario.
        scenario = load_scenario(args.scenario) if args.scenario else None
        fleet = Twin(site, scenario=scenario, seed=args.seed, epoch_s=time.time())
    else:
        fleet = Fleet(site, seed=args.seed, load_scale=args.load, epoch_s=time.time())
    lock = threading.Lock()
    source = load_source("sim", {"kind": "sim", "interval_s": cfg.sample_interval_s, "lock": lock},
                         SourceContext(site=site, plant=fleet))
    actuator = load_actuator("twin", {"kind": "twin", "lock": lock, "safe_limit": "max"}, context=fleet)
    ready = threading.Event()
    act = threading.Thread(target=actuator_service.run, args=(cfg, site.name, actuator, _keyring(cfg), stop, ready),
                           name="actuator", daemon=True)
    act.start()
    ready.wait(30)
    log.info("fleet: %d racks, %d GPUs, publishing every %.1f s%s", site.n_racks, site.n_gpus,
             cfg.sample_interval_s, f"; feed {args.lose_feed} will be lost at t={args.at:.0f} s"
             if args.lose_feed else "")

    def schedule() -> None:
        if args.lose_feed and not stop.wait(args.at):
            with lock:
                fleet.lose_feed(args.lose_feed)
            log.warning("fleet: feed %s LOST (scenario)", args.lose_feed)
        if args.restore_at and args.lose_feed and not stop.wait(max(0.0, args.restore_at - args.at)):
            with lock:
                fleet.lose_feed(None)
            log.warning("fleet: feed %s restored (scenario)", args.lose_feed)

    threading.Thread(target=schedule, daemon=True).start()
    try:
        collector_service.run(cfg, [source], stop, duration_s=args.duration or None, client_id="powerplane-fleet")
    finally:
        stop.set()
        act.join(10)
    return 0


def cmd_collect(args: argparse.Namespace, cfg: Config) -> int:
    from collectors import service as collector_service
    from collectors.base import SourceContext

    site = _site(cfg) if Path(cfg.site_file).exists() else None
    sources = collector_service.sources_from_file(args.sources, SourceContext(site=site))
    sched = collector_service.run(cfg, sources, _stop_on_signals(), duration_s=args.duration or None,
                                  metrics_port=args.metrics_port, client_id=args.client_id)
    print(sched.table())
    return 0


def cmd_streams(args: argparse.Namespace, cfg: Config) -> int:
    from streams.app import run_worker

    run_worker(cfg, _site(cfg), from_beginning=args.from_beginning, metrics_port=args.metrics_port)
    return 0


def cmd_controller(args: argparse.Namespace, cfg: Config) -> int:
    from controllers import service

    stop = _stop_on_signals()
    ctl = service.run(cfg, _site(cfg), _keyring(cfg), stop, metrics_port=args.metrics_port,
                      decide_on_crossing=args.decide_on_crossing)
    lat = sorted(ctl.stats.latencies_s)
    p50 = f"{lat[len(lat) // 2] * 1e3:.0f} ms" if lat else "n/a"
    log.info("controller: %d commands, %d renewals, acks %s, command->ack p50 %s", ctl.stats.commands,
             ctl.stats.renewals, ctl.stats.acks, p50)
    return 0


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
    guard = actuator_service.run(cfg, _site(cfg).name, actuator, _keyring(cfg), _stop_on_signals(),
                                 metrics_port=args.metrics_port)
    log.info("actuator %s: %s", name, guard.stats)
    return 0


def cmd_sink(args: argparse.Namespace, cfg: Config) -> int:
    from streams.sinks.base import load_sink
    from streams.sinks.runner import SinkMetrics, SinkStats, run

    options: dict[str, dict[str, Any]] = {
        "influxdb": {"kind": "influxdb", "url": cfg.influx_url, "org": cfg.influx_org, "bucket": cfg.influx_bucket,
                     "token": cfg.influx_token},
        "alertmanager": {"kind": "alertmanager", "url": cfg.alertmanager_url},
    }
    sink = load_sink(args.name, options[args.name])
    stats = SinkStats()
    if args.metrics_port:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        registry.register(SinkMetrics(args.name, stats))
        start_http_server(args.metrics_port, addr="127.0.0.1", registry=registry)
    run(cfg, sink, _stop_on_signals(), stats=stats)
    log.info("sink %s: wrote %d points in %d batches (%d retries, %d dead letters, %d dropped)", args.name,
             stats.written, stats.batches, stats.retries, stats.dead_letters, stats.dropped)
    return 0


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    from ops.demo import run_demo

    return run_demo(cfg, duration_s=args.duration, lose_feed_at_s=args.at, keep_servers=args.keep_servers)


def cmd_record(args: argparse.Namespace, cfg: Config) -> int:
    from ops.recording import record, summary

    topic_names = [t.strip() for t in args.topics.split(",") if t.strip()]
    manifest = record(cfg.kafka_bootstrap, topic_names, args.out, from_beginning=args.from_beginning,
                      duration_s=args.duration, until_idle_s=args.until_idle, until_end=args.until_end,
                      stop=_stop_on_signals(), progress=sys.stderr)
    print(summary(manifest))
    return 0


def cmd_replay(args: argparse.Namespace, cfg: Config) -> int:
    if args.engine:
        return _replay_engine(args, cfg)
    from ops.recording import replay

    topic_names = [t.strip() for t in args.topics.split(",") if t.strip()] if args.topics else None
    try:
        stats = replay(cfg.kafka_bootstrap, args.dir, speed=args.speed,
                       as_fast_as_possible=args.as_fast_as_possible, topics=topic_names, to_prefix=args.to_prefix,
                       stop=_stop_on_signals(), progress=sys.stderr)
    except RuntimeError as e:  # records not delivered: say how many, in one line
        print(f"powerplane: error: {e}", file=sys.stderr)
        return 1
    print(f"replayed {stats.records} records in {stats.elapsed_s:.1f} s")
    return 0


def _replay_engine(args: argparse.Namespace, cfg: Config) -> int:
    """What would the policy have done on this recording? Roll-up and policy in-process, no broker."""
    import json

    from ops.engine import Engine
    from powerplane.recording import iter_records, load_manifest
    from powerplane.schemas import as_plain

    manifest = load_manifest(args.dir)
    engine = Engine.from_config(cfg, _site(cfg), _keyring(cfg))
    total = int(manifest.get("topics", {}).get(topics_mod.TELEMETRY.name, {}).get("records", 0))
    for i, (topic, _k, value, _ts, _h) in enumerate(iter_records(args.dir, [topics_mod.TELEMETRY.name]), 1):
        engine.feed(topic, value)
        if total and i % 5000 == 0:
            print(f"\r {i / total:4.0%} {i:,}/{total:,} records", end="", file=sys.stderr, flush=True)
    res = engine.finish()
    print(res.summary())
    if args.commands_out:
        with open(args.commands_out, "w") as fh:
            for c in res.commands:
                fh.write(json.dumps(as_plain(c)) + "\n")
        print(f"wrote {len(res.commands)} command(s) to {args.commands_out}")
    return 0


def cmd_dashboard(args: argparse.Namespace, cfg: Config) -> int:
    from dashboards.live.server import run

    site = _site(cfg) if Path(cfg.site_file).exists() else None  # without it: levels laid out as they arrive
    try:
        run(site, port=args.port, stop=_stop_on_signals(), host=args.host, speed=args.speed, backfill=args.backfill,
            bootstrap=None if args.replay else cfg.kafka_bootstrap, replay_dir=args.replay)
    except OSError as e:
        print(f"powerplane: error: cannot serve on {args.host}:{args.port} ({e.strerror or e}): choose another "
              "--port", file=sys.stderr)
        return 2
    return 0


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    from dashboards.live.feed import read_tail
    from dashboards.live.state import DashState, status_rows

    state = DashState(site=_site(cfg) if Path(cfg.site_file).exists() else None)
    stats = read_tail(cfg.kafka_bootstrap, state.apply, per_partition=args.tail, timeout_s=args.timeout)
    kinds = set(args.kinds.split(",")) if args.kinds else None
    rows = status_rows(state, kinds)
    if not rows:
        print(f"no level aggregates in the last {args.tail} records of each partition at {cfg.kafka_bootstrap}: "
              "is the streams worker running (`powerplane streams worker`)?")
        return 1

    def kw(x: float | None) -> str:
        return "-" if x is None or x != x else f"{x / 1e3:.1f}"

    age = f", newest window {time.time() - state.clock_s:.0f} s ago" if state.clock_s == state.clock_s else ""
    print(f"site {state.site.name if state.site else '?'}: {len(state.values)} levels{age}")
    print(f"{'level':24s} {'kind':8s} {'load kW':>9s} {'limit kW':>9s} {'load %':>7s} {'headroom kW':>11s} "
          f"{'mode':8s} {'events':>6s}")
    for r in rows:
        frac = r["load_frac"]
        print(f"{'  ' * r['depth'] + r['level']:24s} {r['kind']:8s} {kw(r['power_w']):>9s} {kw(r['limit_w']):>9s} "
              f"{'-' if frac is None else f'{frac:.1%}':>7s} {kw(r['headroom_w']):>11s} {r['mode'] or '-':8s} "
              f"{r['open_events'] or '':>6}")
    opened = state.open_events()
    for e in opened[:10]:
        dl = f", deadline in {e['deadline_s'] - state.clock_s:.0f} s" if e["deadline_s"] is not None else ""
        print(f"OPEN {e['severity']:8s} {e['kind']} {','.join(e['levels'][:3])}{dl}: {e['summary']}")
    if stats.lag:
        print(f"(read timed out with {sum(stats.lag.values())} records left; raise --timeout)", file=sys.stderr)
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
        power = plan_shell.power_from_twin(site, args.simulate_minutes, args.seed, sys.stderr)
        source = f"twin run of {args.simulate_minutes:g} min"
    costs = Costs(args.power_usd_per_w, args.cooling_usd_per_w, args.usd_per_kwh, args.pue, args.rack_kw)
    plans, report = plan_shell.run(site, power, risk=args.risk, n_minus_1=args.n_minus_1, seed=args.seed,
                                   kinds=kinds, high_priority=high, costs=costs, source=source, cooling=args.cooling,
                                   max_throttle=args.max_throttle, progress=sys.stderr)
    print(plan_shell.table(plans))
    print(plan_shell.summary(report))
    if args.json:
        plan_shell.write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


# ---- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="powerplane", description=__doc__)
    p.add_argument("--config", help="TOML config file (default: $PP_CONFIG; every key also as PP_<KEY>)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    d = sub.add_parser("dev", help="start/stop the real servers used in development and tests")
    d.add_argument("action", choices=["up", "down", "status"])
    d.add_argument("--no-kafka", action="store_true", help="up: skip Kafka")
    d.add_argument("--no-tsdb", action="store_true", help="up: skip the time-series server")
    d.add_argument("--wipe", action="store_true", help="down: also delete their data")
    d.set_defaults(fn=cmd_dev)

    t = sub.add_parser("topics", help="create the declared Kafka topics, or list them")
    t.add_argument("action", choices=["create", "list"])
    t.set_defaults(fn=cmd_topics)

    s = sub.add_parser("site", help="validate, show or generate a site file")
    s.add_argument("action", choices=["validate", "show", "generate"])
    s.add_argument("file", nargs="?", help="site file (default: PP_SITE_FILE)")
    s.add_argument("--kinds", help="show: comma-separated level kinds to list")
    s.add_argument("--out", default="refsite.toml", help="generate: output file")
    s.add_argument("--halls", type=int, default=4)
    s.add_argument("--rows", type=int, default=16, help="generate: rows per hall")
    s.add_argument("--racks", type=int, default=16, help="generate: racks per row")
    s.set_defaults(fn=cmd_site)

    k = sub.add_parser("keys", help="create the command-signing keyring (development)")
    k.add_argument("action", choices=["init"])
    k.set_defaults(fn=cmd_keys)

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
    f.set_defaults(fn=cmd_fleet)

    co = sub.add_parser("collect", help="poll devices (SNMP PDUs, Redfish BMCs, NVML, DCGM) and publish telemetry")
    co.add_argument("sources", help="TOML file of [sources.NAME] tables (see collectors/*/sample.toml)")
    co.add_argument("--duration", type=float, default=0.0, help="seconds to run (0 = until stopped)")
    co.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on 127.0.0.1:PORT")
    co.add_argument("--client-id", default="powerplane-collector", help="names the spool directory too")
    co.set_defaults(fn=cmd_collect)

    w = sub.add_parser("streams", help="run the faust-streaming worker (telemetry -> aggregates)")
    w.add_argument("action", choices=["worker"])
    w.add_argument("--from-beginning", action="store_true",
                   help="a new consumer group starts at the oldest telemetry kept, not the newest (reprocessing)")
    w.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this loopback port")
    w.set_defaults(fn=cmd_streams)

    c = sub.add_parser("controller", help="run the capping controller (aggregates -> signed commands)")
    c.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this loopback port")
    c.add_argument("--decide-on-crossing", action=argparse.BooleanOptionalAction, default=True,
                   help="decide as soon as a PDU load crosses the cap threshold, not only once a second "
                        "(default: on)")
    c.set_defaults(fn=cmd_controller)

    ac = sub.add_parser("actuate", help="apply signed commands to devices (nvml, redfish): one actuator of a config")
    ac.add_argument("--actuators", required=True, metavar="FILE",
                    help="TOML file with [actuators.<name>] tables (see actuators/*/sample.toml)")
    ac.add_argument("--name", help="which actuator of the file (needed when it has several)")
    ac.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port")
    ac.set_defaults(fn=cmd_actuate)

    k2 = sub.add_parser("sink", help="write aggregates, headroom, events and commands to InfluxDB (v2 write API), "
                                     "or events to Alertmanager")
    k2.add_argument("name", nargs="?", default="influxdb", choices=["influxdb", "alertmanager"],
                    help="which sink (default influxdb; alertmanager posts pp.events to PP_ALERTMANAGER_URL)")
    k2.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this loopback port")
    k2.set_defaults(fn=cmd_sink)

    e = sub.add_parser("demo", help="run the closed loop end to end on real servers and show what happens")
    e.add_argument("--duration", type=float, default=50.0)
    e.add_argument("--at", type=float, default=15.0, help="seconds until feed A is lost")
    e.add_argument("--keep-servers", action="store_true", help="leave Kafka and the TSDB running afterwards")
    e.set_defaults(fn=cmd_demo)

    r = sub.add_parser("record", help="record Kafka topics to Parquet files (original keys, headers, timestamps)")
    r.add_argument("--topics", required=True, help="comma-separated topics, e.g. pp.telemetry,pp.aggregates")
    r.add_argument("--out", required=True, help="directory for the recording (one .parquet per topic + manifest.json)")
    r.add_argument("--from-beginning", action="store_true", help="start at the oldest record, not the newest")
    stop_when = r.add_mutually_exclusive_group()
    stop_when.add_argument("--duration", type=float, help="stop after this many seconds")
    stop_when.add_argument("--until-idle", type=float, metavar="S", help="stop after S seconds without a record")
    stop_when.add_argument("--until-end", action="store_true",
                           help="stop at the end offsets the topics had when recording started")
    r.set_defaults(fn=cmd_record)

    rp = sub.add_parser("replay", help="produce a recording back into Kafka, paced or as fast as possible")
    rp.add_argument("dir", help="recording directory (made by `powerplane record`)")
    pace = rp.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="N x the original pace (default 1)")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no pacing")
    rp.add_argument("--topics", help="comma-separated subset of the recorded topics (default: all)")
    rp.add_argument("--to-prefix", default="", metavar="PREFIX", help="produce topic T to PREFIX+T instead")
    rp.add_argument("--engine", action="store_true",
                    help="no broker: run the recorded telemetry through roll-up and the capping policy in-process "
                         "and report what the policy would have done")
    rp.add_argument("--commands-out", metavar="FILE", help="--engine: write the decided commands as JSON lines")
    rp.set_defaults(fn=cmd_replay)

    db = sub.add_parser("dashboard", help="serve the live dashboard on localhost (from Kafka, or --replay a recording)")
    db.add_argument("--port", type=int, default=8050)
    db.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    db.add_argument("--replay", metavar="DIR", help="show a recording (made by `powerplane record`) with a time slider")
    db.add_argument("--speed", type=float, default=1.0, help="--replay: N x the recorded pace at the start")
    db.add_argument("--backfill", type=int, metavar="N",
                    help="records read back per partition at start (default: ~a minute of aggregates; 0: only new)")
    db.set_defaults(fn=cmd_dashboard)

    ev = sub.add_parser("evaluate", help="closed loop on the digital twin, faster than real time: compare policies, "
                                         "write a report and metrics")
    ev.add_argument("--site", default="ref", help="site file, or 'ref' for the 100 MW reference site (default)")
    ev.add_argument("--workload", help="workload file (default: the site's default workload on the Azure trace)")
    ev.add_argument("--scenario", help="scenario file (feed loss, cooling failure, ...); default: none")
    ev.add_argument("--policy", default="all", help="none, static, polca, full, or 'all' (comma-separated list ok)")
    ev.add_argument("--duration", type=int, help="simulated seconds per policy (default: the scenario's, or 300)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default="evaluation", help="output directory for report.md, metrics.json and plots")
    ev.set_defaults(fn=cmd_evaluate)

    st = sub.add_parser("status", help="print the power tree with load and headroom from the latest aggregates")
    st.add_argument("--kinds", default="site,utility,ups,rpp,pdu,hall,row,zone",
                    help="comma-separated level kinds to list (racks are left out by default)")
    st.add_argument("--tail", type=int, default=2000, help="records read back from the end of each partition")
    st.add_argument("--timeout", type=float, default=10.0, help="seconds to spend reading")
    st.set_defaults(fn=cmd_status)

    pl = sub.add_parser("plan", help="offline oversubscription planning: more racks per level, with and without "
                                     "capping, at a stated risk, and what they are worth")
    pl.add_argument("--site", help="site file (default: PP_SITE_FILE)")
    src = pl.add_mutually_exclusive_group(required=True)
    src.add_argument("--recording", metavar="DIR", help="recording with pp.telemetry (made by `powerplane record`)")
    src.add_argument("--simulate-minutes", type=float, metavar="N", help="run the digital twin for N minutes instead")
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
    pl.set_defaults(fn=cmd_plan)
    return p


def cmd_evaluate(args: argparse.Namespace, cfg: Config) -> int:
    from ops.evaluate import POLICIES, oversubscription, run_policy, write_report
    from ops.progress import Progress
    from powerplane.site import load_site
    from sim.scenario import load_scenario
    from sim.workload import load_workload

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
    workload = load_workload(args.workload) if args.workload else None
    duration = args.duration or int(getattr(scenario, "duration_s", 0) or 300)
    t0 = time.monotonic()
    results = {}
    for pol in policies:
        bar = Progress(f"{pol:>6}: {duration} s simulated", duration, sys.stderr)
        results[pol] = run_policy(site, pol, duration, workload=workload, scenario=scenario, seed=args.seed,
                                  progress=bar)
        bar.done()
    oversub = None
    if "none" in results:
        print("planning: how many more racks capping supports (powerplane plan on the uncontrolled run)...",
              file=sys.stderr)
        oversub = oversubscription(site, results["none"]["rack_power_w"])
    meta = {"site": site_name, "scenario": args.scenario or "none (steady state)",
            "workload": args.workload or "default (Azure conversation trace)", "duration_s": duration,
            "seed": args.seed, "wall_s": time.monotonic() - t0, "policies": policies}
    path = write_report(Path(args.out), meta, results, oversub)
    print(path.read_text().split("## Policies")[0].rstrip())
    print(f"\nreport: {path}  metrics: {path.parent / 'metrics.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from collectors.base import SourceConfigError
    from ops.devservers import DevError
    from powerplane.kafka import BrokerUnavailable
    from powerplane.validation import ConfigError as FileConfigError

    try:
        cfg = load_config(args.config)
        return int(args.fn(args, cfg))
    except FileConfigError as e:
        print(f"powerplane: invalid {e.source or 'configuration'}:", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    except SourceConfigError as e:
        print("powerplane: invalid collector config:\n  " + str(e).replace("\n", "\n  "), file=sys.stderr)
        return 2
    except (ConfigError, DevError, BrokerUnavailable, FileNotFoundError, ValueError) as e:
        print(f"powerplane: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
