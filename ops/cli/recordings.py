"""Recording Kafka topics to Parquet and playing them back, into Kafka or through the policy in-process."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ops.cli.common import _keyring, _site, _stop_on_signals
from powerplane import topics as topics_mod

if TYPE_CHECKING:
    from powerplane.config import Config


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

    from ops.engine import Engine, received_s
    from ops.progress import Progress
    from powerplane.recording import iter_records, load_manifest
    from powerplane.schemas import as_plain

    manifest = load_manifest(args.dir)
    engine = Engine.from_config(cfg, _site(cfg), _keyring(cfg))
    total = int(manifest.get("topics", {}).get(topics_mod.TELEMETRY.name, {}).get("records", 0))
    bar = Progress(f"replaying {total:,} records through the policy", total, sys.stderr if total else None)
    for i, (topic, _k, value, ts_ms, _h) in enumerate(iter_records(args.dir, [topics_mod.TELEMETRY.name]), 1):
        engine.feed(topic, value, received_s(ts_ms))  # checked against when it was received, as live
        if i % 5000 == 0:
            bar.show(i)
    bar.done()
    res = engine.finish()
    print(res.summary())
    if args.commands_out:
        with open(args.commands_out, "w") as fh:
            for c in res.commands:
                fh.write(json.dumps(as_plain(c)) + "\n")
        print(f"wrote {len(res.commands)} command(s) to {args.commands_out}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds record, replay."""
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
