"""The InfluxDB sink on the real server (VictoriaMetrics, InfluxDB v2 write API): every point
arrives, including those published while the store was down for a restart mid-stream."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from ops import devservers
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import Producer, process_auth
from powerplane.schemas import LevelAggregate
from streams.sinks.base import load_sink
from streams.sinks.runner import run
from tests.integration.helpers import start_group_at_end


def _export(cfg: Config, site: str) -> dict[tuple[str, int], float]:
    import json
    import urllib.parse
    import urllib.request

    q = urllib.parse.urlencode({"match[]": f'pp_level_power_w{{site="{site}"}}'})
    try:
        with urllib.request.urlopen(f"{cfg.influx_url}/api/v1/export?{q}", timeout=5) as r:
            body = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in body.splitlines():
        s = json.loads(line)
        for v, ts in zip(s["values"], s["timestamps"], strict=True):
            out[(s["metric"]["level"], int(ts))] = float(v)
    return out


def _publish(p: Producer, site: str, t0: float, start: int, n: int) -> dict[tuple[str, int], float]:
    sent = {}
    for i in range(start, start + n):
        for lvl in ("rack-01", "pdu-a01"):
            a = LevelAggregate(site=site, level=lvl, kind="rack", ts_s=t0 + i, window_s=1.0, power_w=1000.0 + i,
                               limit_w=46000.0, rated_w=57500.0, mode="normal", gpus_expected=64, gpus_reporting=64)
            p.send(topics.AGGREGATES.name, a.encode(), key=a.key())
            sent[(lvl, round((t0 + i) * 1000))] = a.power_w
    p.flush()
    return sent


def test_no_point_lost_across_a_store_restart(cfg: Config) -> None:
    site = f"sinktest-{uuid.uuid4().hex[:8]}"
    sink = load_sink("influxdb", {"kind": "influxdb", "url": cfg.influx_url, "org": cfg.influx_org,
                                  "bucket": cfg.influx_bucket, "token": cfg.influx_token})
    stop = threading.Event()
    result = {}
    start_group_at_end(cfg, f"g-{site}", sink.topics)  # not the earlier tests' hundreds of thousands of records
    auth = process_auth()  # its own group (and topics): the admin, not the sink role
    th = threading.Thread(target=lambda: result.setdefault("stats", run(cfg, sink, stop, group=f"g-{site}", auth=auth,
                                                                        backoff_max_s=1.0)))
    th.start()
    p = Producer(cfg.kafka_bootstrap, "sink-test")
    t0 = time.time() - 600
    try:
        sent = _publish(p, site, t0, 0, 50)
        _wait_for(lambda: len(_export(cfg, site)) >= len(sent), 20)
        devservers.stop_vm(cfg)  # the store goes away mid-stream
        sent |= _publish(p, site, t0, 50, 50)
        time.sleep(2.0)  # the sink is now retrying with backoff
        devservers.start_vm(cfg, devservers.paths(cfg))
        sent |= _publish(p, site, t0, 100, 50)
        _wait_for(lambda: len(_export(cfg, site)) >= len(sent), 30)
    finally:
        stop.set()
        th.join(30)
        p.close()
    stored = _export(cfg, site)
    assert set(sent) == set(stored), f"missing {len(set(sent) - set(stored))} point(s)"
    assert all(stored[k] == v for k, v in sent.items())
    assert result["stats"].retries > 0, "the outage was never noticed"


def _wait_for(cond: object, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.3)
    pytest.fail(f"condition not met within {timeout_s} s")


def test_records_lost_to_retention_are_counted_not_skipped_silently(cfg: Config) -> None:
    """Kafka is the sink's bounded buffer: what its retention deletes before the sink wrote it is
    reported (SinkStats.dropped), the rest still arrives."""
    from kafka import KafkaAdminClient, KafkaConsumer, OffsetAndMetadata, TopicPartition
    from kafka.admin import NewTopic

    site = f"droptest-{uuid.uuid4().hex[:8]}"
    topic, group = f"test.{site}", f"g-{site}"
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python())
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
        p = Producer(cfg.kafka_bootstrap, "drop-test")
        t0 = time.time() - 600
        for i in range(10):
            a = LevelAggregate(site=site, level="rack-01", kind="rack", ts_s=t0 + i, window_s=1.0, power_w=1000.0 + i,
                               limit_w=46000.0, rated_w=57500.0, mode="normal", gpus_expected=64, gpus_reporting=64)
            p.send(topic, a.encode(), key=a.key())
        p.close()
        tp = TopicPartition(topic, 0)
        c = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python(),
                          group_id=group, enable_auto_commit=False)
        c.assign([tp])
        c.commit({tp: OffsetAndMetadata(2, "", -1)})  # the sink had written 2 records, then went away
        c.close()
        admin.delete_records({tp: 6})  # retention deletes 4 it never wrote
    finally:
        admin.close()
    sink = load_sink("influxdb", {"kind": "influxdb", "url": cfg.influx_url, "org": cfg.influx_org,
                                  "bucket": cfg.influx_bucket, "token": cfg.influx_token})
    sink.topics = (topic,)
    stop = threading.Event()
    result = {}
    auth = process_auth()  # its own group (and topics): the admin, not the sink role
    th = threading.Thread(target=lambda: result.setdefault("stats", run(cfg, sink, stop, group=group, auth=auth)))
    th.start()
    try:
        _wait_for(lambda: len(_export(cfg, site)) >= 4, 20)
    finally:
        stop.set()
        th.join(30)
    assert sorted(ts for _, ts in _export(cfg, site)) == [round((t0 + i) * 1000) for i in range(6, 10)]
    assert result["stats"].dropped == 4
