"""Bad telemetry goes to the dead-letter topic with its reason and original bytes, and the faust
agent keeps consuming: a good frame sent after the bad ones still produces aggregates."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
from kafka import KafkaProducer

from collectors.base import SourceContext
from collectors.sim import FleetSource
from powerplane import topics
from powerplane.config import Config
from powerplane.demo import Services, wait_for_groups
from powerplane.fleet import Fleet
from powerplane.schemas import LevelAggregate
from powerplane.site import load_site
from tests.integration.helpers import read_messages


def test_bad_records_are_dead_lettered_and_the_agent_keeps_going(cfg: Config, tmp_path: Path) -> None:
    site = load_site(cfg.site_file)
    fleet = Fleet(site, seed=3, epoch_s=time.time())
    frames = FleetSource("sim", {"interval_s": 1.0}, SourceContext(site=site, plant=fleet)).read_batch()
    good = frames[0]
    short = frames[1]
    short.temp_c = short.temp_c[:-1]  # one GPU's temperature missing from the array
    marker = uuid.uuid4().hex.encode()
    garbage = b"\xc1not msgpack " + marker
    unknown = frames[2]
    unknown.rack = "rack-99"

    svc = Services(cfg, tmp_path)
    svc.start("streams", "streams", "worker")
    try:
        wait_for_groups(cfg, ("powerplane-streams",), check=svc.check)
        p = KafkaProducer(bootstrap_servers=cfg.kafka_bootstrap, acks="all")
        for key, value in ((b"rack-01", garbage), (short.key(), short.encode()), (b"rack-99", unknown.encode()),
                           (good.key(), good.encode())):
            p.send(topics.TELEMETRY.name, key=key, value=value)
        p.flush()
        p.close()
        deadline = time.time() + 30
        dead: list = []  # type: ignore[type-arg]
        aggs: list[LevelAggregate] = []
        while time.time() < deadline and (len(dead) < 3 or not aggs):
            dead = [m for m in read_messages(cfg, topics.DEADLETTER.name, 5)
                    if m.value in (garbage, short.encode(), unknown.encode())]
            aggs = [a for a in map(LevelAggregate.decode, (m.value for m in read_messages(
                cfg, topics.AGGREGATES.name, 5))) if a.level == good.rack and abs(a.ts_s - good.ts_s) < 1e-3]
            time.sleep(0.5)
        svc.check()
    finally:
        svc.stop()
    reasons = {m.value: dict(m.headers)["pp.reason"].decode() for m in dead}
    assert reasons.get(garbage, "").startswith("telemetry.frame: not a MessagePack record"), reasons
    assert "temp_c" in reasons.get(short.encode(), "") and short.rack in reasons[short.encode()]
    assert "rack-99" in reasons.get(unknown.encode(), "")
    for m in dead:
        h = dict(m.headers)
        assert h["pp.source_topic"] == topics.TELEMETRY.name.encode()
        assert int(h["pp.source_offset"]) >= 0
        assert h["pp.source_key"] in (b"rack-01", short.key(), b"rack-99")  # the original key survives
    # The agent survived the bad records: the good frame after them was rolled up.
    assert aggs and aggs[0].power_w > 0 and np.isfinite(aggs[0].power_w)
