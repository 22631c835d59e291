"""A rack reported as real collectors report it, through the streams worker on the real broker: its two PDUs
read by the `snmp` collector from snmpsim serving a real APC rack PDU recording (one frame per PDU, no GPU), its
GPUs one frame per server (NVML-shaped). The worker assembles the rack (streams/assembly.py): it publishes the
rack's aggregate with every GPU's power summed and each PDU's aggregate with its meter, and refuses nothing."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path

import pytest

from collectors.base import load_source
from ops.demo import STREAMS_GROUPS, Services, wait_for_groups
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import Producer
from powerplane.schemas import LevelAggregate, SchemaError, TelemetryFrame
from powerplane.site import Site
from powerplane.site_file import load_site
from sim.fleet import Fleet, rack_frames
from streams.rollup import Limits, frame_outputs
from tests.integration.conftest import free_port
from tests.integration.helpers import end_offsets, read_messages, start_streams_at_end
from tests.integration.snmp_server import SnmpSim, snmpsim_data
from tests.partial_frames import server_frames

ROOT = Path(__file__).resolve().parents[2]
NAME = "lab-assembly"
SECONDS = 8


def site_copy(tmp: Path) -> tuple[Path, Site]:
    """The lab site under its own name, so this test has its own state in the shared broker."""
    path = tmp / f"{NAME}.toml"
    text = (ROOT / "examples" / "lab.toml").read_text()
    path.write_text(re.sub(r'^name = ".*"$', f'name = "{NAME}"', text, count=1, flags=re.M))
    return path, load_site(path)


def read_pdus(sim: SnmpSim, rack: str) -> list[TelemetryFrame]:
    """One read of each of the rack's PDUs by the snmp collector (feed A and feed B)."""
    async def both() -> list[TelemetryFrame]:
        out: list[TelemetryFrame] = []
        for feed, community in (("A", "pdu-a"), ("B", "pdu-b")):
            s = load_source(f"pdu-{feed.lower()}-{rack}", {
                "kind": "snmp", "host": sim.host, "port": sim.port, "community": community, "site": NAME,
                "rack": rack, "feed": feed, "timeout_s": 3.0})
            await s.start()
            try:
                out += [f for f in await s.read() if isinstance(f, TelemetryFrame)]
            finally:
                await s.close()
        return out
    return asyncio.run(both())


@pytest.mark.integration
def test_a_rack_from_snmp_pdus_and_per_server_frames_is_assembled_by_the_worker(cfg: Config, tmp_path: Path) -> None:
    path, site = site_copy(tmp_path)
    c = cfg.model_copy(update={"site_file": str(path)})
    rack = site.rack_ids[0]
    limits = Limits(site)
    rec = snmpsim_data("UPS/apc-8641.snmprec")  # a real APC AP8641 rack PDU, on both feeds
    svc = Services(c, tmp_path / "logs")
    start_streams_at_end(c)
    since = {t: end_offsets(c, t) for t in (topics.DEADLETTER.name, topics.AGGREGATES.name)}
    producer = Producer(c.kafka_bootstrap, "test-rack-assembly")
    whole_w: dict[float, float] = {}  # event time -> the rack power of the equivalent whole-rack frame
    meters: list[float] = []
    with SnmpSim({"pdu-a": rec, "pdu-b": rec}, tmp_path / "snmpsim") as sim:
        try:
            port = free_port()
            svc.start("streams", "streams", "worker", "--metrics-addr", f"127.0.0.1:{port}")
            wait_for_groups(c, STREAMS_GROUPS, check=svc.check)
            fleet = Fleet(site, seed=5, epoch_s=float(int(time.time())))
            for k in range(1, SECONDS + 1):
                ts = float(int(time.time()))
                whole = rack_frames(site, fleet.step(1.0), ts, 1.0, k, "sim")[0]
                parts = server_frames(whole)
                if k % 4 == 1:  # PDUs every 4 s (their interval is 10 s): each frame from a real SNMP read
                    pdus = read_pdus(sim, rack)
                    assert [f.power_w.size for f in pdus] == [0, 0]
                    meters = [f.pdu_power_w[i] for i, f in enumerate(pdus)]
                    parts = pdus + parts
                whole.pdu_power_w = list(meters)
                whole_w[ts] = frame_outputs(site, limits, whole)[1].power_w
                for f in parts:
                    producer.send(topics.TELEMETRY.name, f.encode(), key=f.key(), timestamp_ms=int(ts * 1000))
                producer.flush()
                time.sleep(max(0.0, ts + 1.0 - time.time()))
            aggs = wait_for_rack(c, rack, since[topics.AGGREGATES.name], max(whole_w))
            svc.check()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                metrics = {line.split()[0]: float(line.split()[1]) for line in r.read().decode().splitlines()
                           if line and not line.startswith("#")}
        finally:
            svc.stop()
            producer.close()
    racks = [a for a in aggs if a.kind == "rack" and a.level == rack]
    assert racks and {a.gpus_reporting for a in racks} == {64}
    for a in racks:  # every GPU's power summed: the whole-rack frame's rack power for the same second
        assert a.power_w == pytest.approx(whole_w[a.ts_s], rel=1e-9)
    pdu_ids = [site.level_ids[int(p)] for p in site.rack_pdu[0]]
    pdus = [a for a in aggs if a.kind == "pdu" and a.level in pdu_ids]
    assert pdus and all(a.metered_w is not None for a in pdus)
    assert {a.metered_w for a in pdus} == set(meters) and min(meters) > 0
    dead = [m for m in read_messages(c, topics.DEADLETTER.name, start=since[topics.DEADLETTER.name])
            if NAME.encode() in (m.value or b"")]
    assert dead == []
    # On /metrics: a view a second made of 8 server frames (7 held each) and the PDU frames (held).
    assert metrics["powerplane_streams_assembled_views_total"] >= SECONDS
    assert metrics["powerplane_streams_held_frames_total"] >= 7 * SECONDS


def wait_for_rack(cfg: Config, rack: str, start: dict[int, int], ts_s: float,
                  timeout_s: float = 30.0) -> list[LevelAggregate]:
    """This site's aggregates, once the rack's aggregate for `ts_s` is out."""
    deadline = time.monotonic() + timeout_s
    out: list[LevelAggregate] = []
    while time.monotonic() < deadline:
        out = []
        for m in read_messages(cfg, topics.AGGREGATES.name, timeout_s=10, start=start):
            try:
                a = LevelAggregate.decode(m.value)
            except SchemaError:
                continue
            if a.site == NAME:
                out.append(a)
        if any(a.level == rack and a.ts_s >= ts_s for a in out):
            return out
        time.sleep(1.0)
    raise AssertionError(f"no aggregate of {rack} up to {ts_s} within {timeout_s} s: {len(out)} of this site")
