"""Bad records go to the dead-letter topic with their reason and original bytes, and both faust agents
keep consuming: a good frame sent after the bad ones still produces aggregates, and the site agent still
rolls up the next site-second."""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import numpy as np
from kafka import KafkaProducer

from collectors.base import SourceContext
from ops.demo import STREAMS_GROUPS, Services, wait_for_groups
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import process_auth
from powerplane.schemas import LevelAggregate, RackSummary, RackSummaryBatch
from powerplane.site_file import load_site
from sim.fleet import Fleet
from sim.source import FleetSource
from tests.integration.helpers import end_offsets, read_messages, start_streams_at_end


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
    # The site agent's input too: garbage, and a batch of another site.
    racks_garbage = b"\x92not a batch " + marker
    other = RackSummaryBatch.of([RackSummary(
        site="elsewhere", rack="rack-01", ts_s=good.ts_s, interval_s=1.0, seq=1, power_w=1_000.0,
        pdu_power_w=[500.0, 500.0], mode="normal", gpus_expected=64, gpus_reporting=64, gpus_throttled=0)])
    later = FleetSource("sim", {"interval_s": 1.0}, SourceContext(site=site, plant=fleet)).read_batch()

    svc = Services(cfg, tmp_path)
    # Only this test's records: the worker starts where a deployed one would stand, and the reads below
    # skip what the earlier tests left on the shared broker (a full read from the beginning can outlast
    # the 5 s each read is given).
    start_streams_at_end(cfg)
    since = {t: end_offsets(cfg, t) for t in (topics.DEADLETTER.name, topics.AGGREGATES.name)}
    svc.start("streams", "streams", "worker")
    try:
        wait_for_groups(cfg, STREAMS_GROUPS, check=svc.check)
        p = KafkaProducer(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python(), acks="all")
        for key, value in ((b"rack-01", garbage), (short.key(), short.encode()), (b"rack-99", unknown.encode()),
                           (good.key(), good.encode())):
            p.send(topics.TELEMETRY.name, key=key, value=value)
        for value in (racks_garbage, other.encode()):
            p.send(topics.RACKS.name, key=site.name.encode(), value=value)
        p.flush()
        for f in later:  # a whole site-second after the bad records: the site agent must still roll it up
            p.send(topics.TELEMETRY.name, key=f.key(), value=f.encode())
        p.flush()
        p.close()
        bad = (garbage, short.encode(), unknown.encode(), racks_garbage, other.encode())
        deadline = time.time() + 40
        dead: list = []  # type: ignore[type-arg]
        aggs: list[LevelAggregate] = []
        site_aggs: list[LevelAggregate] = []
        while time.time() < deadline and (len(dead) < 5 or not aggs or not site_aggs):
            dead = [m for m in read_messages(cfg, topics.DEADLETTER.name, 5, since[topics.DEADLETTER.name])
                    if m.value in bad]
            all_aggs = [a for a in map(LevelAggregate.decode, (m.value for m in read_messages(
                cfg, topics.AGGREGATES.name, 5, since[topics.AGGREGATES.name]))) if a.site == site.name]
            aggs = [a for a in all_aggs if a.level == good.rack and abs(a.ts_s - good.ts_s) < 1e-3]
            # the window holding the later frames ends at the next whole second
            site_aggs = [a for a in all_aggs if a.kind == "site" and a.ts_s == math.ceil(later[0].ts_s)]
            time.sleep(0.5)
        svc.check()
    finally:
        svc.stop()
    reasons = {m.value: dict(m.headers)["pp.reason"].decode() for m in dead}
    assert reasons.get(garbage, "").startswith("telemetry.frame: not a MessagePack record"), reasons
    assert "temp_c" in reasons.get(short.encode(), "") and short.rack in reasons[short.encode()]
    assert "rack-99" in reasons.get(unknown.encode(), "")
    assert reasons.get(racks_garbage, "").startswith("rack.summaries: not a MessagePack record") or \
        "rack.summaries" in reasons.get(racks_garbage, ""), reasons
    assert "elsewhere" in reasons.get(other.encode(), ""), reasons
    for m in dead:
        h = dict(m.headers)
        racks_topic = m.value in (racks_garbage, other.encode())
        want_topic = topics.RACKS.name if racks_topic else topics.TELEMETRY.name
        assert h["pp.source_topic"] == want_topic.encode()
        assert int(h["pp.source_offset"]) >= 0
        # the original key survives
        assert h["pp.source_key"] in (b"rack-01", short.key(), b"rack-99", site.name.encode())
    # The site agent survived too: the whole site-second after the bad records was rolled up the trees.
    assert site_aggs and site_aggs[0].gpus_reporting > 0
    # The agent survived the bad records: the good frame after them was rolled up.
    assert aggs and aggs[0].power_w > 0 and np.isfinite(aggs[0].power_w)
