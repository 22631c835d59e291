"""UPS trap -> facility event latency: from the trap leaving the sender to the record being acknowledged by the
broker, and to it being consumed from pp.facility.

A private single-node broker (security on, as in production) and the lab site; the receiver (collectors/snmp/
trap_service.TrapService, exactly what `powerplane traps` runs) in this process as the `collector` role; a
consumer (admin) assigned to pp.facility at its end. Traps go one at a time, each after the previous one was
consumed, so the figures are latency, not queueing. Three ways of sending:

- `v2c`: an SNMPv2c upsTrapOnBattery with its upsEstimatedMinutesRemaining, encoded by the collector's BER
  codec and sent from a socket in this process (no process start-up in the figure);
- `v3`: SNMPv3 authPriv (SHA / AES-128) xupstdOnBattery datagrams made by Net-SNMP's snmptrap beforehand
  and captured, then sent from this process (USM, HMAC and AES are the receiver's real work; snmptrap's
  start-up is kept out). They are replayed within the 150 s USM time window, which a receiver accepts;
- `snmptrap`: `snmptrap -v 2c` run per trap; the clock starts before the process does, so this includes
  Net-SNMP's start-up (tens of ms): an upper bound of what a real agent's trap costs end to end.

    PYTHONPATH=$PWD python bench/bench_trap_latency.py [--traps 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import free_port
from collectors.snmp import ber, trap_config
from collectors.snmp.models import oid
from collectors.snmp.trap_service import TrapService
from ops import devservers
from powerplane import topics
from powerplane.config import Config, load_config
from powerplane.kafka import client_auth, consumer, set_process_auth
from powerplane.schemas import FacilityReading
from powerplane.site_file import load_site

ROOT = Path(__file__).resolve().parents[1]
ENGINE_ID, AUTH, PRIV = "80001f8880beec0001", "bench-auth-key", "bench-priv-key"
ON_BATTERY, MINUTES = oid("1.3.6.1.2.1.33.2.1"), oid("1.3.6.1.2.1.33.1.2.3.0")


class Watch:
    """Consumes pp.facility in a thread and notes when each trap record (by seq) arrives."""

    def __init__(self, cfg: Config) -> None:
        self.c = consumer(cfg.kafka_bootstrap, None, topics.FACILITY.name, subscribe=False)
        from kafka import TopicPartition

        parts = [TopicPartition(topics.FACILITY.name, p) for p in self.c.partitions_for_topic(topics.FACILITY.name)]
        self.c.assign(parts)
        self.c.seek_to_end(*parts)
        for tp in parts:
            self.c.position(tp)
        self.seen: dict[int, float] = {}
        self.cv = threading.Condition()
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self) -> None:
        while not self.stop.is_set():
            for msgs in self.c.poll(timeout_ms=100).values():
                now = time.perf_counter()
                for m in msgs:
                    r = FacilityReading.decode(m.value)
                    if r.via == "trap":
                        with self.cv:
                            self.seen[r.seq] = now
                            self.cv.notify_all()

    def wait_new(self, known: set[int], timeout_s: float = 10.0) -> int:
        with self.cv:
            assert self.cv.wait_for(lambda: set(self.seen) - known, timeout_s), "a trap record never arrived"
            return next(iter(set(self.seen) - known))

    def close(self) -> None:
        self.stop.set()
        self.t.join(5)
        self.c.close()


def capture_v3(n: int) -> list[bytes]:
    """n SNMPv3 authPriv traps as snmptrap sends them, caught on a loopback socket."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    out = []
    for _ in range(n):
        subprocess.run(["snmptrap", "-v", "3", "-u", "bench", "-l", "authPriv", "-a", "SHA", "-A", AUTH, "-x", "AES",
                        "-X", PRIV, "-e", f"0x{ENGINE_ID}", f"127.0.0.1:{s.getsockname()[1]}", "",
                        "1.3.6.1.4.1.534.1.11.4.1.0.3"], check=True, capture_output=True)
        out.append(s.recvfrom(65535)[0])
    s.close()
    return out


def run_case(svc: TrapService, watch: Watch, n: int, send: Callable[[int], float]) -> dict[str, list[float]]:
    """Per trap: send -> arrival, arrival -> broker ack, send -> ack, send -> consumed (ms)."""
    out: dict[str, list[float]] = {"send_to_arrival": [], "arrival_to_ack": [], "send_to_ack": [],
                                   "send_to_consumed": []}
    for i in range(n):
        known = set(watch.seen)
        t_send = send(i)
        seq = watch.wait_new(known)
        deadline = time.monotonic() + 5
        while seq not in svc.stats.acked_at and time.monotonic() < deadline:
            time.sleep(0.001)
        t_arr, t_ack, t_con = svc.stats.arrived[seq], svc.stats.acked_at[seq], watch.seen[seq]
        for k, v in (("send_to_arrival", t_arr - t_send), ("arrival_to_ack", t_ack - t_arr),
                     ("send_to_ack", t_ack - t_send), ("send_to_consumed", t_con - t_send)):
            out[k].append(v * 1e3)
        time.sleep(0.05)
    return out


def handler_cpu(tcfg: trap_config.TrapConfig, datagrams: dict[str, bytes], n: int = 2000) -> dict[str, float]:
    """CPU per datagram of the pure part (decode, authenticate, build the record), ms; no socket, no Kafka."""
    from collectors.snmp.trapd import TrapHandler

    h = TrapHandler(tcfg)
    out = {}
    for name, data in datagrams.items():
        h.handle(data, ("127.0.0.1", 1), time.time())  # a v3 agent's first message localizes its keys
        t0 = time.process_time()
        for _ in range(n):
            h.handle(data, ("127.0.0.1", 1), time.time())
        out[name] = (time.process_time() - t0) / n * 1e3
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traps", type=int, default=50, help="traps per case")
    args = ap.parse_args()
    if not shutil.which("snmptrap"):
        print("snmptrap is missing: apt-get install snmp (scripts/ensure-debian-packages)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-traps-"))
    cfg = load_config(env={"PP_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "PP_STATE_DIR": str(tmp / "state"),
                           "PP_SITE_FILE": str(ROOT / "examples" / "lab.toml"), "PP_INFLUX_URL": "http://127.0.0.1:9",
                           "PP_SIGNING_KEY_FILE": str(tmp / "site.key")})
    set_process_auth(lambda: client_auth(cfg, "admin"))  # the bench's own consumer reads as admin
    os.environ.update(BENCH_TRAP_AUTH=AUTH, BENCH_TRAP_PRIV=PRIV)
    v3_datagrams = capture_v3(args.traps)
    tcfg = trap_config.parse({"receiver": {"listen": "127.0.0.1:0"}, "agents": {
        "bench-v2c": {"lineup": "ups-a", "address": "127.0.0.1", "community": "bench"},
        "bench-v3": {"lineup": "ups-b", "version": "3", "engine_id": ENGINE_ID, "user": "bench", "auth_protocol": "SHA",
                     "auth_key_env": "BENCH_TRAP_AUTH", "priv_key_env": "BENCH_TRAP_PRIV"}}},
        load_site(ROOT / "examples" / "lab.toml"))
    v2c_trap = ber.encode_message(ber.VERSION_2C, b"bench", ber.TRAP_V2, 1, 0, 0, [
        (oid("1.3.6.1.2.1.1.3.0"), ber.encode_integer(1, ber.TIME_TICKS)),
        (ber.SNMP_TRAP_OID, ber.encode_oid(ON_BATTERY)), (MINUTES, ber.encode_integer(9))])
    bad_v3 = bytearray(v3_datagrams[0])
    bad_v3[-1] ^= 0xFF  # the encrypted PDU changed: the HMAC no longer matches
    cpu = handler_cpu(tcfg, {"v2c accepted": v2c_trap, "v2c wrong community": v2c_trap.replace(b"bench", b"bunch"),
                             "v3 authPriv accepted": v3_datagrams[0], "v3 wrong digest": bytes(bad_v3)})
    results: dict[str, dict[str, list[float]]] = {}
    stop = threading.Event()
    try:
        devservers.up(cfg, vm=False)
        svc = TrapService(tcfg, cfg.kafka_bootstrap, auth=client_auth(cfg, "collector"))
        port = svc.address[1]
        th = threading.Thread(target=svc.serve, args=(stop,), daemon=True)
        th.start()
        watch = Watch(cfg)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        def v2c(i: int) -> float:
            data = ber.encode_message(ber.VERSION_2C, b"bench", ber.TRAP_V2, i + 1, 0, 0, [
                (oid("1.3.6.1.2.1.1.3.0"), ber.encode_integer(i, ber.TIME_TICKS)),
                (ber.SNMP_TRAP_OID, ber.encode_oid(ON_BATTERY)), (MINUTES, ber.encode_integer(i))])
            t = time.perf_counter()
            tx.sendto(data, ("127.0.0.1", port))
            return t

        def v3(i: int) -> float:
            t = time.perf_counter()
            tx.sendto(v3_datagrams[i], ("127.0.0.1", port))
            return t

        def snmptrap(i: int) -> float:
            t = time.perf_counter()
            subprocess.Popen(["snmptrap", "-v", "2c", "-c", "bench", f"127.0.0.1:{port}", "", str(".".join(
                map(str, ON_BATTERY)))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return t

        run_case(svc, watch, 5, v2c)  # warm-up: connections, first batches
        for name, fn in (("v2c", v2c), ("v3", v3), ("snmptrap", snmptrap)):
            results[name] = run_case(svc, watch, args.traps, fn)
        watch.close()
    finally:
        stop.set()
        time.sleep(0.5)
        devservers.down(cfg, wipe=True)
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, results)
    print("\nreceiver CPU per datagram (decode, authenticate, build the record; no I/O):")
    for name, ms in cpu.items():
        print(f"  {name:22s} {ms:.3f} ms")
    return 0


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> None:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.machine())
    print(f"\n{args.traps} traps per case, one at a time; {model}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f}; Python {platform.python_version()}")
    print(f"{'case':10s} {'measure':18s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'mean ms':>8s}")
    for case, m in results.items():
        for k, xs in m.items():
            print(f"{case:10s} {k:18s} {pct(xs, 0.5):8.2f} {pct(xs, 0.99):8.2f} {max(xs):8.2f} "
                  f"{statistics.fmean(xs):8.2f}")


if __name__ == "__main__":
    sys.exit(main())
