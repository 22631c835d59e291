"""Streams worker throughput through the real broker, on the 100 MW reference site.

Starts Kafka (KRaft) on free ports and the streams worker (one process: per-rack roll-up, RackSummary
repartition, site windows, roll-up up both trees, forecast, headroom for every level, emergencies,
checkpoints), then publishes the reference site's telemetry (1,024 racks, 73,728 GPUs, one frame per rack
per second, from the digital twin under the default Azure-trace workload):

  live (default): at 1 Hz in real time for `--seconds`; measured: the worker's CPU time (utime+stime from
      /proc) over the run after a warm-up, i.e. the cores it needs to keep up with the site, and its peak
      RSS (VmHWM). Target: <= 0.5 core, < 1 GB.
  --catch-up: all of it first, then the worker with --from-beginning: its maximum rate (GPU samples/s).
      --workers N runs N worker processes of one group (the rack stage's telemetry partitions split between
      them, the site stage in one): the site's rate, and per process.

Either way, in the same run, a kafka-python consumer reads the whole topic with no decoding (the ceiling),
and the ratio of the two rates is printed.

    .venv/bin/python bench/bench_streams.py [--seconds 120] [--catch-up [--workers N]] [--plaintext]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402

from bench.common import cpu_s, free_port  # noqa: E402
from ops import devservers  # noqa: E402
from ops.demo import STREAMS_GROUPS, wait_for_groups  # noqa: E402
from powerplane import topics  # noqa: E402
from powerplane.config import Config, load_config  # noqa: E402
from powerplane.kafka import Producer, client_auth, process_auth, set_process_auth  # noqa: E402
from powerplane.refsite import reference_site_dict, to_toml  # noqa: E402
from powerplane.site_file import load_site  # noqa: E402
from sim import Twin  # noqa: E402
from sim.fleet import rack_frames  # noqa: E402


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def lag(admin: KafkaAdminClient, cons: KafkaConsumer, group: str, topic: str) -> int | None:
    try:
        offs = admin.list_group_offsets(group).get(group, {})
    except KafkaError:  # no coordinator until the group's first join
        return None
    parts = [TopicPartition(topic, p) for p in cons.partitions_for_topic(topic) or []]
    end = cons.end_offsets(parts)
    if not any(tp in offs for tp in parts):
        return None
    return sum(end[tp] - (offs[tp].offset if tp in offs and offs[tp].offset >= 0 else 0) for tp in parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=120, help="simulated seconds of telemetry")
    ap.add_argument("--catch-up", action="store_true", help="measure the maximum rate instead of live 1 Hz")
    ap.add_argument("--warmup", type=int, default=15, help="live: seconds left out of the CPU figure")
    ap.add_argument("--workers", type=int, default=1, help="catch-up: worker processes in the group")
    ap.add_argument("--plaintext", action="store_true",
                    help="a broker without TLS, SASL and ACLs (to measure what security costs; never a deployment)")
    ap.add_argument("--profile", metavar="FILE", help="also sample the worker with py-spy into FILE (speedscope)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    site_file = tmp / "refsite.toml"
    site_file.write_text(to_toml(reference_site_dict()))
    site = load_site(site_file)
    env = {"PP_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "PP_STATE_DIR": str(tmp / "state"),
           "PP_SITE_FILE": str(site_file), "PP_INFLUX_URL": "http://127.0.0.1:9",
           "PP_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT" if args.plaintext else "SASL_SSL"}
    cfg: Config = load_config(env=env)
    set_process_auth(lambda: client_auth(cfg, "admin"))  # the bench writes and watches every topic
    devservers.up(cfg, vm=False)
    worker: subprocess.Popen[bytes] | None = None
    try:
        # ---- telemetry in (live: with the worker already running) -------------------------------------
        wenv = dict(os.environ, PYTHONUNBUFFERED="1", **{Config.env_name(k): str(v) for k, v in vars(cfg).items()})
        others: list[subprocess.Popen[bytes]] = []  # --workers: the second and later

        def start_worker(*extra: str, name: str = "worker") -> subprocess.Popen[bytes]:
            log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
            w = subprocess.Popen([sys.executable, "-m", "ops", "streams", "worker", *extra],
                                 stdout=log, stderr=subprocess.STDOUT, env=wenv, start_new_session=True)
            if args.profile:
                subprocess.Popen(["py-spy", "record", "-p", str(w.pid), "-o", args.profile, "-f", "raw",
                                  "-d", "40", "-r", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return w

        if not args.catch_up:
            worker = start_worker()
            wait_for_groups(cfg, STREAMS_GROUPS)
        twin = Twin(site, seed=1, epoch_s=float(int(time.time())) - (args.seconds if args.catch_up else 0))
        prod = Producer(cfg.kafka_bootstrap, "bench", linger_ms=50)
        t0 = time.perf_counter()
        n_frames = 0
        size = 0
        cpu_warm = t_warm = None
        for k in range(args.seconds):
            if not args.catch_up:
                time.sleep(max(0.0, t0 + k - time.perf_counter()))  # one site-second per wall second
                if k == args.warmup:
                    assert worker is not None
                    cpu_warm, t_warm = cpu_s(worker.pid), time.perf_counter()
            fr = twin.step(1.0)
            ts = twin.epoch_s + fr.t_s
            for f in rack_frames(site, fr, ts, 1.0, k + 1, "twin"):
                v = f.encode()
                size += len(v)
                prod.send(topics.TELEMETRY.name, v, key=f.key(), timestamp_ms=int(ts * 1000))
                n_frames += 1
            if k % 20 == 19:
                print(f"  produced {k + 1}/{args.seconds} s of telemetry", flush=True)
        prod.close()
        gpus = site.n_gpus * args.seconds
        print(f"telemetry: {n_frames:,} frames ({size / 1e6:.0f} MB, {gpus:,} GPU samples) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        if not args.catch_up:
            assert worker is not None and cpu_warm is not None and t_warm is not None
            time.sleep(3.0)  # let the last windows close
            cpu, wall = cpu_s(worker.pid) - cpu_warm, time.perf_counter() - t_warm
            n_live = args.seconds - args.warmup
            print(f"worker, live at 1 Hz: {cpu:.1f} s CPU over {wall:.1f} s wall for {n_live} site-seconds = "
                  f"{cpu / wall:.3f} cores; peak RSS {vm_hwm_mb(worker.pid):.0f} MB", flush=True)
            live_rate = gpus / args.seconds

        # ---- 1. raw consume ---------------------------------------------------------------------
        c = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python(),
                          group_id=None, enable_auto_commit=False,
                          fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20)
        parts = [TopicPartition(topics.TELEMETRY.name, p) for p in c.partitions_for_topic(topics.TELEMETRY.name)]
        c.assign(parts)
        c.seek_to_beginning(*parts)
        t0 = time.perf_counter()
        got = 0
        while got < n_frames:
            for msgs in c.poll(timeout_ms=500, max_records=100_000).values():
                got += len(msgs)
        raw_s = time.perf_counter() - t0
        c.close()
        raw_rate = gpus / raw_s
        print(f"raw consume: {raw_s:.2f} s = {n_frames / raw_s:,.0f} frames/s = {raw_rate:,.0f} GPU samples/s",
              flush=True)

        if not args.catch_up:
            print(f"ratio live rate / raw consume (GPU samples/s): {live_rate / raw_rate:.4f} (the worker is "
                  f"paced by the site at 1 Hz; --catch-up gives its maximum rate)")
        else:
            # ---- 2. the streams worker at its maximum rate ----------------------------------------------
            t_start = time.perf_counter()
            mport = free_port()
            worker = start_worker("--from-beginning", "--metrics-port", str(mport))
            mports = [mport]
            for i in range(1, args.workers):
                mports.append(free_port())
                others.append(start_worker("--from-beginning", "--metrics-port", str(mports[-1]), name=f"worker{i}"))
            procs = [worker, *others]
            admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python())
            cons = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python())
            t_first = cpu_first = None
            deadline = time.monotonic() + 1800
            while time.monotonic() < deadline:
                if any(w.poll() is not None for w in procs):
                    raise RuntimeError(f"a worker exited: {(tmp / 'worker.log').read_text()[-2000:]}")
                lt = lag(admin, cons, topics.STREAMS_RACKS_GROUP, topics.TELEMETRY.name)
                lr = lag(admin, cons, topics.STREAMS_APP_ID, topics.RACKS.name)
                if lt is not None and t_first is None and lt < n_frames:
                    t_first, cpu_first = time.perf_counter(), sum(cpu_s(w.pid) for w in procs)
                    print(f"  worker consuming after {t_first - t_start:.1f} s of start-up", flush=True)
                if lt == 0 and lr == 0:
                    break
                time.sleep(1.0)
            t_end, cpu_end = time.perf_counter(), sum(cpu_s(w.pid) for w in procs)
            time.sleep(3.0)  # the last windows close
            import urllib.request

            m: Counter[str] = Counter()
            for port in mports:  # summed over the workers
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    m.update({ln.split()[0]: float(ln.split()[1]) for ln in resp.read().decode().splitlines()
                              if ln.startswith("powerplane_streams_") and "_created" not in ln})
            print("worker counters: " + ", ".join(f"{k.removeprefix('powerplane_streams_')}={v}" for k, v in
                                                  m.items() if any(x in k for x in ("late", "windows", "frames"))))
            admin.close()
            cons.close()
            assert t_first is not None and cpu_first is not None
            wall = t_end - t_first
            cpu = cpu_end - cpu_first
            rate = gpus / wall
            print(f"{args.workers} worker process(es), catching up: {wall:.1f} s wall, {cpu:.1f} s CPU for "
                  f"{args.seconds} site-seconds = {rate:,.0f} GPU samples/s ({rate / args.workers:,.0f} per process, "
                  f"{gpus / cpu:,.0f} per CPU-second, {args.seconds / wall:.1f}x real time); peak RSS "
                  f"{max(vm_hwm_mb(w.pid) for w in procs):.0f} MB")
            print(f"ratio worker / raw consume (GPU samples/s): {rate / raw_rate:.3f}")
        log_text = (tmp / "worker.log").read_text(errors="replace")
        reports = [line for line in log_text.splitlines() if "frames=" in line]
        if reports:
            print("worker's last report:", reports[-1].split("]")[-1].strip())
        opened = Counter(line.split("event open ")[1].split(":")[0] for line in log_text.splitlines()
                         if "event open " in line)
        print("events opened (severity kind: count):", dict(opened) or "none")
        for line in [x for x in log_text.splitlines() if "bad record" in x or "Traceback" in x][:5]:
            print("worker:", line.split("]")[-1].strip()[:300])
    finally:
        for w in [worker, *others]:
            if w is not None and w.poll() is None:
                os.killpg(w.pid, 15)
                w.wait(30)
        devservers.down(cfg, wipe=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
