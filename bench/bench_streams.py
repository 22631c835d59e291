"""Streams worker throughput through the real broker, on the 100 MW reference site.

Starts Kafka (KRaft) on free ports, writes `--seconds` of the reference site's telemetry (1,024 racks,
73,728 GPUs, one frame per rack per second, from the digital twin under the default Azure-trace workload)
into pp.telemetry, then in one run:
  1. raw consume: a kafka-python consumer reads the whole topic, no decoding (the ceiling);
  2. the streams worker (`powerplane streams worker --from-beginning`, one process) processes the same
     topic: per-rack roll-up, RackSummary repartition, site windows, roll-up up both trees, forecast,
     headroom for every level, emergencies, checkpoints. Measured: wall time until its consumer groups have
     no lag, its CPU time (utime+stime from /proc) and peak RSS (VmHWM).

CPU seconds per simulated second is the number of cores the worker needs to keep up with the site at 1 Hz
(target <= 0.5). The ratio compares the worker's GPU samples/s with raw consumption, measured side by side.

    .venv/bin/python bench/bench_streams.py [--seconds 120]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402

from powerplane import devservers, topics  # noqa: E402
from powerplane.config import Config, load_config  # noqa: E402
from powerplane.fleet import rack_frames  # noqa: E402
from powerplane.kafka import Producer  # noqa: E402
from powerplane.refsite import reference_site_dict, to_toml  # noqa: E402
from powerplane.site import load_site  # noqa: E402
from powerplane.twin import Twin  # noqa: E402


def free_port() -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


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
    ap.add_argument("--profile", metavar="FILE", help="also sample the worker with py-spy into FILE (speedscope)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    site_file = tmp / "refsite.toml"
    site_file.write_text(to_toml(reference_site_dict()))
    site = load_site(site_file)
    env = {"PP_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "PP_STATE_DIR": str(tmp / "state"),
           "PP_SITE_FILE": str(site_file), "PP_INFLUX_URL": "http://127.0.0.1:9"}
    cfg: Config = load_config(env=env)
    devservers.up(cfg, vm=False)
    worker: subprocess.Popen[bytes] | None = None
    try:
        # ---- telemetry in ----------------------------------------------------------------------
        twin = Twin(site, seed=1, epoch_s=float(int(time.time())) - args.seconds)
        prod = Producer(cfg.kafka_bootstrap, "bench", linger_ms=50)
        t0 = time.perf_counter()
        n_frames = 0
        size = 0
        for k in range(args.seconds):
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

        # ---- 1. raw consume ---------------------------------------------------------------------
        c = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, group_id=None, enable_auto_commit=False,
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

        # ---- 2. the streams worker --------------------------------------------------------------
        wenv = dict(os.environ, PYTHONUNBUFFERED="1", **{Config.env_name(k): str(v) for k, v in vars(cfg).items()})
        log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - owned by the child
        t_start = time.perf_counter()
        worker = subprocess.Popen([sys.executable, "-m", "powerplane", "streams", "worker", "--from-beginning"],
                                  stdout=log, stderr=subprocess.STDOUT, env=wenv, start_new_session=True)
        if args.profile:
            subprocess.Popen(["py-spy", "record", "-p", str(worker.pid), "-o", args.profile, "-f", "raw",
                              "-d", "40", "-r", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap)
        cons = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap)
        t_first = cpu_first = None
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited: {(tmp / 'worker.log').read_text()[-2000:]}")
            lt = lag(admin, cons, topics.STREAMS_APP_ID, topics.TELEMETRY.name)
            lr = lag(admin, cons, topics.STREAMS_APP_ID, topics.RACKS.name)
            if lt is not None and t_first is None and lt < n_frames:
                t_first, cpu_first = time.perf_counter(), cpu_s(worker.pid)
                print(f"  worker consuming after {t_first - t_start:.1f} s of start-up", flush=True)
            if lt == 0 and lr == 0:
                break
            if lt is not None:
                print(f"  lag: telemetry {lt:,} frames, racks {lr if lr is not None else '-'}", flush=True)
            time.sleep(1.0)
        t_end, cpu_end = time.perf_counter(), cpu_s(worker.pid)
        hwm = vm_hwm_mb(worker.pid)
        admin.close()
        cons.close()
        assert t_first is not None and cpu_first is not None
        wall = t_end - t_first
        cpu = cpu_end - cpu_first
        rate = gpus / wall
        print(f"worker: {wall:.1f} s wall, {cpu:.1f} s CPU for {args.seconds} simulated s = {rate:,.0f} GPU "
              f"samples/s; {cpu / args.seconds:.3f} CPU-s per site-second (cores needed at 1 Hz); "
              f"peak RSS {hwm:.0f} MB")
        print(f"ratio worker / raw consume (GPU samples/s): {rate / raw_rate:.3f}")
        log_text = (tmp / "worker.log").read_text(errors="replace")
        reports = [line for line in log_text.splitlines() if "frames=" in line]
        if reports:
            print("worker's last report:", reports[-1].split("]")[-1].strip())
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, 15)
            worker.wait(30)
        devservers.down(cfg, wipe=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
