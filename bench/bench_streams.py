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
    return int(sum(end[tp] - (offs[tp].offset if tp in offs and offs[tp].offset >= 0 else 0) for tp in parts))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=120, help="simulated seconds of telemetry")
    ap.add_argument("--catch-up", action="store_true", help="measure the maximum rate instead of live 1 Hz")
    ap.add_argument("--warmup", type=int, default=15, help="live: seconds left out of the CPU figure")
    ap.add_argument("--workers", type=int, default=1, help="catch-up: worker processes in the group")
    ap.add_argument("--plaintext", action="store_true",
                    help="a broker without TLS, SASL and ACLs (to measure what security costs; never a deployment)")
    ap.add_argument("--profile", metavar="FILE", help="also sample the worker with py-spy into FILE (speedscope)")
    return ap.parse_args()


class Bench:
    """The broker, the site, the worker processes and what was produced."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-streams-"))
        site_file = self.tmp / "refsite.toml"
        site_file.write_text(to_toml(reference_site_dict()))
        self.site = load_site(site_file)
        env = {"PP_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "PP_STATE_DIR": str(self.tmp / "state"),
               "PP_SITE_FILE": str(site_file), "PP_INFLUX_URL": "http://127.0.0.1:9",
               "PP_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT" if args.plaintext else "SASL_SSL"}
        self.cfg: Config = load_config(env=env)
        self.wenv = dict(os.environ, PYTHONUNBUFFERED="1",
                         **{Config.env_name(k): str(v) for k, v in vars(self.cfg).items()})
        self.workers: list[subprocess.Popen[bytes]] = []
        self.n_frames = 0
        self.gpus: int = self.site.n_gpus * int(args.seconds)

    def start_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker{len(self.workers)}.log", "wb")  # noqa: SIM115 - owned by the child
        w = subprocess.Popen([sys.executable, "-m", "ops", "streams", "worker", *extra],
                             stdout=log, stderr=subprocess.STDOUT, env=self.wenv, start_new_session=True)
        if self.args.profile and not self.workers:
            subprocess.Popen(["py-spy", "record", "-p", str(w.pid), "-o", self.args.profile, "-f", "raw",
                              "-d", "40", "-r", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.workers.append(w)
        return w

    def produce(self) -> float | None:
        """The site's telemetry (live: at 1 Hz, the worker already running); live: the worker's cores."""
        args, site = self.args, self.site
        live = not args.catch_up
        twin = Twin(site, seed=1, epoch_s=float(int(time.time())) - (0 if live else args.seconds))
        prod = Producer(self.cfg.kafka_bootstrap, "bench", linger_ms=50)
        t0 = time.perf_counter()
        size = 0
        cpu_warm = t_warm = 0.0
        for k in range(args.seconds):
            if live:
                time.sleep(max(0.0, t0 + k - time.perf_counter()))  # one site-second per wall second
                if k == args.warmup:
                    cpu_warm, t_warm = cpu_s(self.workers[0].pid), time.perf_counter()
            fr = twin.step(1.0)
            ts = twin.epoch_s + fr.t_s
            for f in rack_frames(site, fr, ts, 1.0, k + 1, "twin"):
                v = f.encode()
                size += len(v)
                prod.send(topics.TELEMETRY.name, v, key=f.key(), timestamp_ms=int(ts * 1000))
                self.n_frames += 1
            if k % 20 == 19:
                print(f"  produced {k + 1}/{args.seconds} s of telemetry", flush=True)
        prod.close()
        print(f"telemetry: {self.n_frames:,} frames ({size / 1e6:.0f} MB, {self.gpus:,} GPU samples) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        if not live:
            return None
        time.sleep(3.0)  # let the last windows close
        w = self.workers[0]
        cpu, wall = cpu_s(w.pid) - cpu_warm, time.perf_counter() - t_warm
        print(f"worker, live at 1 Hz: {cpu:.1f} s CPU over {wall:.1f} s wall for {args.seconds - args.warmup} "
              f"site-seconds = {cpu / wall:.3f} cores; peak RSS {vm_hwm_mb(w.pid):.0f} MB", flush=True)
        return self.gpus / int(args.seconds)

    def raw_consume(self) -> float:
        """The ceiling: kafka-python reading the whole topic, no decoding; GPU samples/s."""
        c = KafkaConsumer(bootstrap_servers=self.cfg.kafka_bootstrap, **process_auth().kafka_python(),
                          group_id=None, enable_auto_commit=False,
                          fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20)
        parts = [TopicPartition(topics.TELEMETRY.name, p) for p in c.partitions_for_topic(topics.TELEMETRY.name)]
        c.assign(parts)
        c.seek_to_beginning(*parts)
        t0 = time.perf_counter()
        got = 0
        while got < self.n_frames:
            for msgs in c.poll(timeout_ms=500, max_records=100_000).values():
                got += len(msgs)
        raw_s = time.perf_counter() - t0
        c.close()
        print(f"raw consume: {raw_s:.2f} s = {self.n_frames / raw_s:,.0f} frames/s = {self.gpus / raw_s:,.0f} GPU "
              f"samples/s", flush=True)
        return self.gpus / raw_s

    def catch_up(self, raw_rate: float) -> None:
        """--workers processes from the beginning of the backlog. Caught up = every window of the backlog published
        (the workers' windows counter, read every 0.25 s); the figures also say when both input groups had
        committed it all (commits run once a second, faust's every 2.8 s: a few seconds of bookkeeping that a
        short run would otherwise count as work)."""
        args, cfg = self.args, self.cfg
        t_start = time.perf_counter()
        mports = [free_port() for _ in range(args.workers)]
        procs = [self.start_worker("--from-beginning", "--metrics-port", str(p)) for p in mports]
        admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python())
        cons = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python())
        t_first = cpu_first = t_done = cpu_done = None
        frames0 = 0.0  # frames already rolled up when the first was seen: not counted in the rate
        deadline, next_lag = time.monotonic() + 1800, 0.0
        while time.monotonic() < deadline:
            if any(w.poll() is not None for w in procs):
                raise RuntimeError(f"a worker exited: {(self.tmp / 'worker0.log').read_text()[-2000:]}")
            if t_first is None or t_done is None:
                m = scrape(mports, quiet=True)
                if t_first is None and m["powerplane_streams_frames_total"] > 0:
                    t_first, cpu_first = time.perf_counter(), sum(cpu_s(w.pid) for w in procs)
                    frames0 = m["powerplane_streams_frames_total"]
                    print(f"  worker consuming after {t_first - t_start:.1f} s of start-up", flush=True)
                if t_first is not None and m["powerplane_streams_windows_total"] >= args.seconds:
                    t_done, cpu_done = time.perf_counter(), sum(cpu_s(w.pid) for w in procs)
            if time.monotonic() >= next_lag:
                next_lag = time.monotonic() + 1.0
                lt = lag(admin, cons, topics.STREAMS_RACKS_GROUP, topics.TELEMETRY.name)
                lr = lag(admin, cons, topics.STREAMS_APP_ID, topics.RACKS.name)
                if lt == 0 and lr == 0 and t_done is not None:
                    break
            time.sleep(0.25)
        t_end = time.perf_counter()
        admin.close()
        cons.close()
        time.sleep(3.0)  # the last windows close
        print("worker counters: " + ", ".join(f"{k.removeprefix('powerplane_streams_')}={v}" for k, v in
                                              scrape(mports).items() if any(x in k for x in ("late", "windows",
                                                                                             "frames"))))
        if t_first is None or cpu_first is None or t_done is None or cpu_done is None:
            raise RuntimeError("the workers did not catch up within 30 minutes")
        wall, cpu = t_done - t_first, cpu_done - cpu_first
        share = 1.0 - frames0 / self.n_frames  # of the backlog, rolled up within the measured interval
        rate = self.gpus * share / wall
        print(f"{args.workers} worker process(es), catching up: {wall:.1f} s wall, {cpu:.1f} s CPU for "
              f"{args.seconds * share:.1f} site-seconds (of {args.seconds}; the rest came in the first batches, before "
              f"the clock started) = {rate:,.0f} GPU samples/s ({rate / args.workers:,.0f} per process, "
              f"{self.gpus * share / cpu:,.0f} per CPU-second, {args.seconds * share / wall:.1f}x real time); peak RSS "
              f"{max(vm_hwm_mb(w.pid) for w in procs):.0f} MB; offsets all committed {t_end - t_first:.1f} s after "
              f"the first record")
        print(f"ratio worker / raw consume (GPU samples/s): {rate / raw_rate:.3f}")

    def report_logs(self) -> None:
        """What the workers' logs say: the last report, emergencies opened, bad records, tracebacks."""
        lines = [ln for p in sorted(self.tmp.glob("worker*.log")) for ln in p.read_text(errors="replace").splitlines()]
        reports = [line for line in lines if "frames=" in line]
        if reports:
            print("worker's last report:", reports[-1].split("]")[-1].strip())
        opened = Counter(line.split("event open ")[1].split(":")[0] for line in lines if "event open " in line)
        print("events opened (severity kind: count):", dict(opened) or "none")
        for line in [x for x in lines if "bad record" in x or "Traceback" in x][:5]:
            print("worker:", line.split("]")[-1].strip()[:300])

    def close(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                os.killpg(w.pid, 15)
                w.wait(30)
        devservers.down(self.cfg, wipe=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def scrape(ports: list[int], quiet: bool = False) -> Counter[str]:
    """The workers' powerplane_streams_* metrics, summed over them; `quiet`: a worker not serving them yet
    (starting up) counts as zeros."""
    import urllib.request

    m: Counter[str] = Counter()
    for port in ports:
        try:
            resp = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        except OSError:
            if quiet:
                continue
            raise
        with resp:
            m.update({ln.split()[0]: float(ln.split()[1]) for ln in resp.read().decode().splitlines()
                      if ln.startswith("powerplane_streams_") and "_created" not in ln})
    return m


def main() -> int:
    args = parse_args()
    b = Bench(args)
    set_process_auth(lambda: client_auth(b.cfg, "admin"))  # the bench writes and watches every topic
    devservers.up(b.cfg, vm=False)
    try:
        if not args.catch_up:
            b.start_worker()
            wait_for_groups(b.cfg, STREAMS_GROUPS)
        live_rate = b.produce()
        raw_rate = b.raw_consume()
        if live_rate is not None:
            print(f"ratio live rate / raw consume (GPU samples/s): {live_rate / raw_rate:.4f} (the worker is "
                  f"paced by the site at 1 Hz; --catch-up gives its maximum rate)")
        else:
            b.catch_up(raw_rate)
        b.report_logs()
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
