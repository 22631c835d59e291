"""What the long-running services say on /metrics, rendered the way Prometheus scrapes it."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controllers.capping import CapSettings
from controllers.controller import CapController
from controllers.service import ControllerMetrics
from powerplane.signing import Keyring
from powerplane.site_file import load_site
from streams.app import Counters, WorkerMetrics
from streams.site_stage import SiteStage

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "examples" / "lab.toml")


def scrape(collector: object) -> dict[str, float]:
    reg = CollectorRegistry()
    reg.register(collector)  # type: ignore[arg-type]
    out = {}
    for line in generate_latest(reg).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_streams_worker_metrics() -> None:
    c = Counters()
    c.frames, c.windows, c.dead_letters, c.publish_delay_s = 1024, 7, 2, 1.5
    stage = SiteStage(SITE)
    stage.tree.late_frames = 3
    m = scrape(WorkerMetrics(c, stage))
    assert m["powerplane_streams_frames_total"] == 1024
    assert m["powerplane_streams_windows_total"] == 7
    assert m["powerplane_streams_dead_letters_total"] == 2
    assert m["powerplane_streams_late_frames_total"] == 3
    assert m["powerplane_streams_publish_delay_seconds"] == 1.5
    assert m["powerplane_streams_open_emergencies"] == 0


def test_controller_metrics() -> None:
    ctl = CapController(SITE, Keyring({"k1": b"k" * 32}, "k1"), CapSettings(), 30.0)
    ctl.stats.commands, ctl.stats.renewals = 5, 2
    ctl.stats.acks = {"applied": 6, "rejected": 1}
    ctl.stats.latencies_s.extend([0.010, 0.020, 0.500])
    producer = SimpleNamespace(dropped=1, failed=0)
    dlq = SimpleNamespace(count=4)
    m = scrape(ControllerMetrics(ctl, producer, dlq))  # type: ignore[arg-type]
    assert m["powerplane_controller_commands_total"] == 5
    assert m['powerplane_controller_acks_total{status="rejected"}'] == 1
    assert m["powerplane_controller_dead_letters_total"] == 4
    assert m["powerplane_controller_producer_dropped_records_total"] == 1
    assert m["powerplane_controller_holding"] == 0
    assert m["powerplane_controller_input_arrival_age_seconds"] == float("inf")  # nothing arrived yet
    assert m['powerplane_controller_command_ack_seconds{quantile="0.5"}'] == 0.020
    assert m['powerplane_controller_command_ack_seconds{quantile="0.99"}'] == 0.500


def test_sink_metrics() -> None:
    from streams.sinks.runner import SinkMetrics, SinkStats

    st = SinkStats(written=120, batches=3, retries=2, dead_letters=1, dropped=4, uncommitted=1,
                   last_error="503 Service Unavailable")
    m = scrape(SinkMetrics("influxdb", st))
    assert m['powerplane_sink_uncommitted_batches_total{sink="influxdb"}'] == 1
    assert m['powerplane_sink_points_written_total{sink="influxdb"}'] == 120
    assert m['powerplane_sink_dropped_records_total{sink="influxdb"}'] == 4
    assert m['powerplane_sink_store_up{sink="influxdb"}'] == 0.0


def test_consumer_lag_per_group_topic_and_partition() -> None:
    from powerplane.metrics import ConsumerLag

    m = scrape(ConsumerLag("powerplane-controller", lambda: {("pp.aggregates", 3): 120, ("pp.acks", 0): 0}))
    lag = 'powerplane_consumer_lag_records{group="powerplane-controller",partition="%d",topic="%s"}'
    assert m[lag % (3, "pp.aggregates")] == 120
    assert m[lag % (0, "pp.acks")] == 0


def test_kafka_python_lag_reads_fetch_state_without_asking_the_broker() -> None:
    """Highwater minus position of what has been fetched; a partition with no fetch answered yet is left out,
    and a client that cannot say gives no lag rather than a failed scrape."""
    from kafka import TopicPartition
    from kafka.consumer.subscription_state import SubscriptionState
    from kafka.structs import OffsetAndMetadata

    from powerplane.metrics import kafka_python_lags

    sub = SubscriptionState()
    a, b = TopicPartition("pp.acks", 0), TopicPartition("pp.acks", 1)
    sub.assign_from_user([a, b])
    sub.seek(a, OffsetAndMetadata(40, "", -1))
    sub.assignment[a].highwater = 100
    sub.seek(b, OffsetAndMetadata(7, "", -1))  # no fetch answered: highwater unknown
    assert kafka_python_lags(SimpleNamespace(_subscription=sub)) == {("pp.acks", 0): 60}
    assert kafka_python_lags(object()) == {}


@pytest.mark.parametrize(("text", "addr"), [("0.0.0.0:9100", ("0.0.0.0", 9100)), (":9100", ("0.0.0.0", 9100)),
                                            ("[::1]:9100", ("::1", 9100)), ("streams:9100", ("streams", 9100))])
def test_metrics_addr_parses(text: str, addr: tuple[str, int]) -> None:
    from powerplane.metrics import parse_addr

    assert parse_addr(text) == addr


@pytest.mark.parametrize(("text", "says"), [("9100", "expected HOST:PORT"), ("host:0", "port 1-65535"),
                                            ("::1:9100", "in brackets"), ("[nope]:9100", "not an IPv6 address")])
def test_a_wrong_metrics_addr_is_one_line(text: str, says: str) -> None:
    from powerplane.metrics import parse_addr

    with pytest.raises(ValueError, match=re.escape(says)):
        parse_addr(text)


def _fakes() -> Iterator[object]:
    """One of each /metrics collector of the long-running processes, on fakes."""
    from actuators.guard import Guard
    from actuators.service import ActuatorMetrics
    from collectors.publisher import PublisherStats
    from collectors.service import PublisherMetrics
    from dashboards.live.server import Metrics as DashboardMetrics
    from powerplane.metrics import ConsumerLag
    from streams.sinks.runner import SinkMetrics, SinkStats

    yield WorkerMetrics(Counters(), SiteStage(SITE))
    producer, dlq = SimpleNamespace(dropped=0, failed=0), SimpleNamespace(count=0)
    yield ControllerMetrics(CapController(SITE, Keyring({"k1": b"k" * 32}, "k1"), CapSettings(), 30.0),
                            producer, dlq)  # type: ignore[arg-type]
    yield SinkMetrics("influxdb", SinkStats())
    guard = SimpleNamespace(stats=SimpleNamespace(applied=0, clamped=0, duplicate=0, rejected=0, expired=0,
                                                  reverted=0, security=0),
                            actuator=SimpleNamespace(name="twin"), targets={})
    yield ActuatorMetrics(guard, producer, dlq)  # type: ignore[arg-type]
    _ = Guard  # the real Guard's stats are what the fake mirrors (tests/unit/test_actuate_cli.py)
    yield PublisherMetrics(SimpleNamespace(stats=PublisherStats()),  # type: ignore[arg-type]
                           SimpleNamespace(dropped_records=0, pending=0))
    yield ConsumerLag("g", lambda: {("t", 0): 1})
    from collectors.scheduler import Metrics as CollectorMetrics

    yield from (CollectorMetrics().registry, DashboardMetrics().registry)


def exported_names() -> set[str]:
    """Every sample name the processes put on /metrics (counters with their _total)."""
    names: set[str] = set()
    for c in _fakes():
        reg = c if isinstance(c, CollectorRegistry) else CollectorRegistry()
        if reg is not c:
            reg.register(c)  # type: ignore[arg-type]
        for fam in reg.collect():
            names |= {s.name for s in fam.samples} | ({fam.name} if fam.type != "counter" else set())
    return names


UNIT_SUFFIXES = ("_seconds", "_bytes", "_records", "_watts", "_up", "_holding")


def test_one_prefix_and_units_in_names() -> None:
    """`powerplane_` then the stage; counters end in _total; a gauge names its unit (or is a count whose name
    says what is counted: open_emergencies, leases, clients, levels)."""
    names = exported_names()
    assert len(names) > 40
    for name in names:
        assert re.fullmatch(r"powerplane_[a-z]+_[a-z0-9_]+", name), f"{name}: off the powerplane_<stage>_ pattern"
        assert not name.endswith(("_total_total", "_ms", "_milliseconds", "_kw", "_w")), name
    for fam in (f for c in _fakes() for f in (c if isinstance(c, CollectorRegistry) else _reg(c)).collect()):
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), fam.name
        if fam.type == "histogram":
            assert fam.name.endswith(("_seconds", "_bytes")), f"{fam.name}: a histogram names its unit"


def _reg(c: object) -> Any:
    reg = CollectorRegistry()
    reg.register(c)  # type: ignore[arg-type]
    return reg


def test_metrics_addr_serves_on_that_address_and_a_busy_one_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """`--metrics-addr` is served where it says (here loopback; 0.0.0.0 in compose), with the collectors the
    service registers; a taken address is refused in one line before anything starts."""
    import argparse

    from ops.cli.common import UsageError, _metrics_addr, _serve_metrics
    from powerplane.metrics import ConsumerLag

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = argparse.Namespace(metrics_addr=f"127.0.0.1:{port}", metrics_port=0)
    addr = _metrics_addr(args)
    registry = _serve_metrics(addr)
    registry.register(ConsumerLag("powerplane-streams", lambda: {("pp.telemetry", 5): 7}))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'powerplane_consumer_lag_records{group="powerplane-streams",partition="5",topic="pp.telemetry"} 7.0' in text
    busy = rf"^--metrics-addr 127.0.0.1:{port}: cannot listen on 127.0.0.1:{port} .*in use"
    with pytest.raises(UsageError, match=busy):
        _metrics_addr(args)
    with pytest.raises(UsageError, match="give one"):
        _metrics_addr(argparse.Namespace(metrics_addr=f"127.0.0.1:{port}", metrics_port=port))
    with pytest.raises(UsageError, match=r"^--metrics-addr 'x': expected HOST:PORT"):
        _metrics_addr(argparse.Namespace(metrics_addr="x", metrics_port=0))
