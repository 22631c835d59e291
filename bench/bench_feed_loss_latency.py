"""Feed loss to acknowledged power cap, through the real broker, on the 100 MW reference site.

Starts Kafka (KRaft, `powerplane dev up`'s machinery) on free ports and the streams worker, then runs
`--losses` episodes. Each episode starts the capping controller and the simulated fleet
(`powerplane fleet --lose-feed A --at WARMUP`: the collectors' sim source, spool and publisher, and the
fleet's actuator thread) as their own processes; the fleet publishes the whole site's telemetry (1,024 racks,
73,728 GPUs, one frame per rack per second), and after WARMUP s the whole site loses feed A, which puts
every rack's load on its feed-B PDU, above the cap threshold. The episode ends when every rack has an
acknowledged cap (or `--window` s after the first cap command); controller and fleet are stopped, and the
next episode starts fresh ones (the broker and the streams worker stay).

Measured per rack, on the broker's clock: the four topics on the path get `message.timestamp.type =
LogAppendTime` on this bench's private broker, so every record's timestamp is the wall time it landed:

  frame   = the rack's first telemetry frame that shows feed A lost (pp.telemetry)
  agg     = the first aggregate of the rack's feed-B PDU in the lost state (pp.aggregates, streams worker)
  command = the first power-cap command for the rack after it (pp.commands; its issued_at_s is the
            controller's decision time)
  ack     = the actuator's acknowledgement of that command (pp.acks)

latency = ack - frame; hops frame->agg (streams worker), agg->decision (controller: consume, wait for its
tick), decision->command (sign, send), command->ack (actuator). Target: p99 < 1 s. While an episode runs
the bench reads only pp.commands and pp.acks; telemetry and aggregates are read back from the broker by
time afterwards, so the bench takes almost no CPU from the stages it measures.

    .venv/bin/python bench/bench_feed_loss_latency.py [--losses 3] [--json FILE]
        [--controller-args '' --controller-args '--decide-on-crossing']   # compare, interleaved
        [--actuator-groups N]   # the fleet applies commands with N actuators (`powerplane fleet --actuator-groups`)

Every process it starts (broker, worker, controller, fleet) is stopped on exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # noqa: E402
from kafka.admin import ConfigResource, ConfigResourceType  # noqa: E402

from bench.common import cpu_s, ref_site_run  # noqa: E402
from ops import devservers  # noqa: E402
from ops.cli.services import fleet_actuator_names  # noqa: E402
from ops.demo import STREAMS_GROUPS, Services, wait_for_groups, wait_for_offsets  # noqa: E402
from powerplane import topics  # noqa: E402
from powerplane.kafka import process_auth  # noqa: E402
from powerplane.schemas import Ack, Command, LevelAggregate, SchemaError, TelemetryFrame  # noqa: E402
from powerplane.site import Site  # noqa: E402
from streams.rollup import feed_mode  # noqa: E402

PATH_TOPICS = (topics.TELEMETRY.name, topics.AGGREGATES.name, topics.COMMANDS.name, topics.ACKS.name)
LOG_APPEND_TIME = 1  # kafka-python's ConsumerRecord.timestamp_type for LogAppendTime
SETTLE_S = 8.0  # seconds of a new episode's telemetry before its controller starts
CONTROLLER_GROUP = "powerplane-controller"
HOPS = ("frame->agg", "agg->decision", "decision->command", "command->ack", "frame->ack")
# The hierarchical controller may cap a rack on the site-wide evidence (its UPS over, other racks' meters)
# before the rack's own PDU meter (10 s SNMP) shows the loss; that cap is then the rack's resulting cap.
# "loss->ack" times it from the episode's first frame showing the loss, for every rack capped after it.
SITE_HOP = "loss->ack"


@dataclass
class Episode:
    """Raw observations of one feed loss; times are wall-clock seconds (broker append time unless noted)."""

    start_s: float
    variant: str = ""  # the controller's extra arguments
    frame: dict[int, float] = field(default_factory=dict)  # rack -> first frame showing the loss
    agg: dict[str, float] = field(default_factory=dict)  # PDU level -> first aggregate in a lost state
    cmds: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)  # rack -> (broker, issued, id)
    acks: dict[str, tuple[float, str]] = field(default_factory=dict)  # command id -> (broker, status)
    acked_racks: set[str] = field(default_factory=set)
    issued: list[float] = field(default_factory=list)  # decision times of every command but renewals
    first_cmd_s: float | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds during the episode
    wall_s: float = 0.0


def set_log_append_time(bootstrap: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **process_auth().kafka_python())
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t, {"message.timestamp.type": "LogAppendTime"})
                             for t in PATH_TOPICS])
    finally:
        admin.close()


def forget_groups(bootstrap: str, groups: tuple[str, ...], timeout_s: float = 30.0) -> None:
    """Delete the consumer groups, so the next episode's controller and actuator start at the end of their
    topics: otherwise an actuator whose last offsets were not committed re-applies the previous
    episode's commands (still within their lease) to the fresh fleet before its feed loss."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **process_auth().kafka_python())
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            errors = {g: res for g, res in admin.delete_groups(list(groups)).items()
                      if res not in ("OK", "GroupIdNotFoundError")}
            if not errors:
                return
            if time.monotonic() > deadline:  # a member that did not leave keeps its group until it times out
                raise RuntimeError(f"could not delete consumer groups: {errors}")
            time.sleep(1.0)
    finally:
        admin.close()


def fold(ep: Episode, site: Site, m: Any) -> None:
    """Fold one record of the four topics into the episode (records from before it started are ignored)."""
    if m.timestamp_type != LOG_APPEND_TIME:
        raise RuntimeError(f"{m.topic}: record timestamps are not LogAppendTime; the bench cannot time it")
    t = m.timestamp / 1000.0
    try:
        if m.topic == topics.TELEMETRY.name:
            fr = TelemetryFrame.decode(m.value)
            r = site.rack_index(fr.rack)
            if fr.ts_s >= ep.start_s and r not in ep.frame and feed_mode(fr.pdu_power_w) != "normal":
                ep.frame[r] = t
        elif m.topic == topics.AGGREGATES.name:
            a = LevelAggregate.decode(m.value)
            if a.kind == "pdu" and a.mode != "normal" and a.ts_s >= ep.start_s:
                ep.agg.setdefault(a.level, t)
        elif m.topic == topics.COMMANDS.name:
            c = Command.decode(m.value)
            if c.reason != "lease renewal" and c.issued_at_s >= ep.start_s:
                ep.issued.append(c.issued_at_s)
            if c.action == "power_cap" and c.reason != "lease renewal" and c.issued_at_s >= ep.start_s:
                ep.cmds.setdefault(c.target, []).append((t, c.issued_at_s, c.id))
                ep.first_cmd_s = ep.first_cmd_s or t
        else:
            ack = Ack.decode(m.value)
            ep.acks.setdefault(ack.command_id, (t, ack.status))
            if ack.status in ("applied", "clamped") and ack.ts_s >= ep.start_s:
                ep.acked_racks.add(ack.target)
    except SchemaError:
        return


def read_back(bootstrap: str, topic: str, since_s: float) -> Iterator[Any]:
    """Every record of a topic that landed on the broker since `since_s`, up to its current end."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, **process_auth().kafka_python(),
                      group_id=None, enable_auto_commit=False,
                      fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        c.assign(parts)
        end = c.end_offsets(parts)
        start = c.offsets_for_times({tp: int(since_s * 1000) for tp in parts})
        for tp in parts:
            c.seek(tp, start[tp].offset if start.get(tp) is not None else end[tp])
        pending = {tp for tp in parts if c.position(tp) < end[tp]}
        while pending:
            for tp, msgs in c.poll(timeout_ms=1000, max_records=50_000).items():
                yield from (m for m in msgs if m.offset < end[tp])
                if c.position(tp) >= end[tp]:
                    pending.discard(tp)
    finally:
        c.close()


def resolve(ep: Episode, site: Site) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Per rack that showed the loss: its hop times (seconds), and counts of what happened."""
    hops: dict[str, list[float]] = {h: [] for h in HOPS}
    n = {"racks_lost": len(ep.frame), "racks_capped": 0, "no_command": 0, "not_applied": 0,
         # The controller acting before the loss (e.g. on state left by the previous episode) muddies the episode.
         "commands_before_loss": sum(t < min(ep.frame.values(), default=0.0) for t in ep.issued)}
    site_t0 = min(ep.frame.values(), default=0.0)
    hops[SITE_HOP] = []
    for r in range(site.n_racks):
        first = next(((tb, ti, cid) for tb, ti, cid in sorted(ep.cmds.get(site.rack_ids[r], []))
                      if ti >= site_t0 - 0.005), None)
        ack = ep.acks.get(first[2]) if first else None
        if ack is not None and ack[1] in ("applied", "clamped"):
            hops[SITE_HOP].append(ack[0] - site_t0)
    for r, t0 in ep.frame.items():
        rack = site.rack_ids[r]
        t_agg = ep.agg.get(site.level_ids[int(site.rack_pdu[r, 1])])
        cmd = next(((tb, ti, cid) for tb, ti, cid in sorted(ep.cmds.get(rack, [])) if ti >= t0 - 0.005), None)
        if cmd is None or t_agg is None:
            n["no_command"] += 1
            continue
        ack = ep.acks.get(cmd[2])
        if ack is None or ack[1] not in ("applied", "clamped"):
            n["not_applied"] += 1
            continue
        n["racks_capped"] += 1
        for hop, v in zip(HOPS, (t_agg - t0, cmd[1] - t_agg, cmd[0] - cmd[1], ack[0] - cmd[0], ack[0] - t0),
                        strict=True):
            hops[hop].append(v)
    return hops, n


def quantiles(v: list[float]) -> dict[str, float]:
    if not v:
        return dict.fromkeys(("min_s", "p50_s", "p99_s", "max_s"), float("nan"))
    a = np.asarray(v)
    return {"min_s": float(a.min()), "p50_s": float(np.percentile(a, 50)), "p99_s": float(np.percentile(a, 99)),
            "max_s": float(a.max())}


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.machine())
    return f"{os.cpu_count()} cores ({model}), shared; Linux {platform.release()}, Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--losses", type=int, default=3, help="feed-loss episodes (each a fresh fleet and controller)")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds of telemetry before each loss")
    ap.add_argument("--window", type=float, default=15.0, help="seconds after a loss to wait for the acks")
    ap.add_argument("--halls", type=int, default=4, help="halls of the reference site (fewer: a quick smoke run)")
    ap.add_argument("--controller-args", action="append", default=None, metavar="ARGS",
                    help="extra arguments for `powerplane controller`; given more than once, the episodes take "
                         "the variants in turn (interleaved, so a change in the shared machine's load hits both)")
    ap.add_argument("--actuator-groups", type=int, default=1, metavar="N",
                    help="the fleet's actuators: N threads, each serving a group of racks and reading only their "
                         "pp.commands partitions (passed to `powerplane fleet --actuator-groups`)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures here")
    ap.add_argument("--logs", metavar="DIR", help="keep the processes' logs here (they are removed otherwise)")
    args = ap.parse_args()
    if args.warmup < SETTLE_S + 8.0:
        ap.error(f"--warmup must be at least {SETTLE_S + 8.0:.0f} s: the controller starts {SETTLE_S:.0f} s into it")
    variants: list[str] = args.controller_args or [""]
    # The actuators' partitions are assigned, so their groups have no members to wait for: they are reading
    # once they have committed offsets (each commits its starting positions first).
    actuator_groups = tuple(f"powerplane-actuator-{n}" for n in fleet_actuator_names(args.actuator_groups))
    args.load_start = os.getloadavg()[0]  # the machine is shared: its load is part of the result

    # Ctrl-C and SIGTERM only set a flag, checked between Kafka calls: a KeyboardInterrupt raised inside
    # kafka-python's blocking wait can be swallowed there and leave the poll hanging (seen here).
    interrupted = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: interrupted.set())
    tmp, site, cfg = ref_site_run(args.halls, "bench-feedloss-")
    print(f"site: {site.n_racks:,} racks, {site.n_gpus:,} GPUs, {args.actuator_groups} actuator(s); machine: "
          f"{machine()}", flush=True)
    svc = Services(cfg, tmp / "logs")

    def check() -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        svc.check()

    episodes: list[Episode] = []
    obs: KafkaConsumer | None = None
    try:
        devservers.up(cfg, vm=False)
        set_log_append_time(cfg.kafka_bootstrap)
        kafka_pid = devservers.status(cfg)["kafka"] or 0
        svc.start("streams", "streams", "worker")
        wait_for_groups(cfg, STREAMS_GROUPS, check=check)
        # Live, only the few records that say when an episode is over; telemetry and aggregates (~4,000
        # records/s) are read back afterwards, so the bench does not compete with the stages while they run.
        obs = KafkaConsumer(topics.COMMANDS.name, topics.ACKS.name, bootstrap_servers=cfg.kafka_bootstrap,
                            **process_auth().kafka_python(), group_id=None, auto_offset_reset="latest")
        obs.poll(timeout_ms=500)  # assigned before anything is produced
        for k in range(args.losses):
            check()
            ep = Episode(start_s=time.time())
            ep.variant = variants[k % len(variants)]
            svc.start("fleet", "fleet", "--lose-feed", "A", "--at", f"{args.warmup:.0f}", "--duration", "3600",
                      "--actuator-groups", str(args.actuator_groups))
            # The controller starts once the streams worker has seen this fleet for a while: after the previous
            # episode its site state holds the lost feed and stale racks (counted at rated power), and a
            # controller acting on those would shed before this episode's loss.
            settle_until = time.time() + SETTLE_S
            while time.time() < settle_until:
                check()
                time.sleep(0.2)
            svc.start("controller", "controller", *shlex.split(ep.variant))
            wait_for_groups(cfg, (CONTROLLER_GROUP,), check=check)
            wait_for_offsets(cfg, actuator_groups, check=check)
            pids = {"kafka": kafka_pid, "streams": svc.procs["streams"].pid, "controller": svc.procs["controller"].pid,
                    "fleet": svc.procs["fleet"].pid, "bench": os.getpid()}
            cpu0 = {p: cpu_s(pid) for p, pid in pids.items() if pid}
            t_cpu0 = time.perf_counter()
            # The fleet loses the feed WARMUP s after its actuator joined, which can take a while after a restart.
            deadline = time.time() + args.warmup + 90.0
            while time.time() < deadline:
                check()
                for msgs in obs.poll(timeout_ms=200).values():
                    for m in msgs:
                        fold(ep, site, m)
                if ep.first_cmd_s is not None:
                    deadline = min(deadline, ep.first_cmd_s + args.window)
                if len(ep.acked_racks) == site.n_racks:
                    break
            ep.wall_s = time.perf_counter() - t_cpu0
            ep.cpu_s = {p: cpu_s(pids[p]) - c for p, c in cpu0.items()}
            # The controller first, so that no command of this episode reaches the next fleet.
            stop_proc(svc, "controller")
            time.sleep(1.0)
            stop_proc(svc, "fleet")
            for msgs in obs.poll(timeout_ms=1000).values():
                for m in msgs:
                    fold(ep, site, m)
            since = (ep.first_cmd_s or time.time()) - 30.0  # the loss frames are before the first command
            for t in (topics.TELEMETRY.name, topics.AGGREGATES.name):
                for m in read_back(cfg.kafka_bootstrap, t, max(since, ep.start_s)):
                    fold(ep, site, m)
            forget_groups(cfg.kafka_bootstrap, (CONTROLLER_GROUP, *actuator_groups))
            episodes.append(ep)
            _, n = resolve(ep, site)
            print(f"loss {k + 1}/{args.losses}: {n['racks_lost']} racks showed it, {n['racks_capped']} capped and "
                  f"acknowledged, {n['no_command']} without a command, {n['not_applied']} not applied, "
                  f"{n['commands_before_loss']} command(s) before the loss", flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping everything this bench started", flush=True)
    finally:
        if obs is not None:
            obs.close()
        svc.stop()
        devservers.down(cfg, wipe=True)
        if args.logs:
            shutil.copytree(tmp / "logs", args.logs, dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if interrupted.is_set():
        return 130
    report(args, site, episodes)
    return 0


def stop_proc(svc: Services, name: str, timeout_s: float = 20.0) -> None:
    p = svc.procs.pop(name)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:  # it ignored SIGTERM
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def report(args: argparse.Namespace, site: Site, episodes: list[Episode]) -> None:
    variants: dict[str, dict[str, Any]] = {}
    for i, ep in enumerate(episodes):
        ep_hops, n = resolve(ep, site)
        v = variants.setdefault(ep.variant, {"losses": 0, "counts": {}, "all": {h: [] for h in (*HOPS, SITE_HOP)},
                                              "per_loss": []})
        v["losses"] += 1
        for h, xs in ep_hops.items():
            v["all"][h] += xs
        for k, c in n.items():
            v["counts"][k] = v["counts"].get(k, 0) + c
        v["per_loss"].append({"loss": i + 1, **n, "hops": {h: quantiles(xs) for h, xs in ep_hops.items()},
                              "cores": {p: round(c / ep.wall_s, 3) for p, c in ep.cpu_s.items()}})
    print(f"\nsite: {site.n_racks:,} racks, {site.n_gpus:,} GPUs; feed A lost across the whole site {len(episodes)} "
          f"time(s); load average (1 min) at start {args.load_start:.2f}, at end {os.getloadavg()[0]:.2f}")
    for name, v in variants.items():
        v["hops"] = q = {h: quantiles(xs) for h, xs in v.pop("all").items()}
        c = v["counts"]
        print(f"\ncontroller `powerplane controller {name}`: {v['losses']} loss(es), {c['racks_lost']} rack losses, "
              f"{c['racks_capped']} capped and acknowledged, {c['no_command']} without a command, "
              f"{c['not_applied']} not applied; {c['commands_before_loss']} command(s) issued before the loss")
        print(f"{'hop (broker append times)':28s} {'min ms':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
        for h in (*HOPS, SITE_HOP):
            print(f"{h:28s} " + " ".join(f"{q[h][k] * 1e3:8.0f}" for k in ("min_s", "p50_s", "p99_s", "max_s")))
        p99 = q["frame->ack"]["p99_s"]
        v["target_met"] = bool(p99 < 1.0)
        print(f"{'TARGET MET' if p99 < 1.0 else 'TARGET MISSED'}: frame->ack p99 {p99 * 1e3:.0f} ms (target < 1000 ms)")
        for pl in v["per_loss"]:
            print(f"  loss {pl['loss']}: p50/p99 ms " + ", ".join(
                f"{h} {pl['hops'][h]['p50_s'] * 1e3:.0f}/{pl['hops'][h]['p99_s'] * 1e3:.0f}" for h in HOPS))
            print(f"          cores used over the episode: {pl['cores']}")
    if args.json:
        out: dict[str, Any] = {
            "command": " ".join([".venv/bin/python", "bench/bench_feed_loss_latency.py",
                                 *(shlex.quote(a) for a in sys.argv[1:])]),
            "machine": machine(), "load_avg_1m_start_end": [args.load_start, os.getloadavg()[0]],
            "racks": site.n_racks, "gpus": site.n_gpus, "actuator_groups": args.actuator_groups, "target_p99_s": 1.0,
            "variants": variants}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    raise SystemExit(main())
