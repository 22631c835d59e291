"""What the long-running services say on /metrics, rendered the way Prometheus scrapes it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from controllers.capping import CapSettings
from controllers.controller import CapController
from controllers.service import ControllerMetrics
from powerplane.signing import Keyring
from powerplane.site_file import load_site
from streams.app import Counters, WorkerMetrics
from streams.site_stage import SiteStage

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
    assert m["powerplane_controller_producer_dropped_total"] == 1
    assert m['powerplane_controller_command_ack_seconds{quantile="0.5"}'] == 0.020
    assert m['powerplane_controller_command_ack_seconds{quantile="0.99"}'] == 0.500


def test_sink_metrics() -> None:
    from streams.sinks.runner import SinkMetrics, SinkStats

    st = SinkStats(written=120, batches=3, retries=2, dead_letters=1, dropped=4, uncommitted=1,
                   last_error="503 Service Unavailable")
    m = scrape(SinkMetrics("influxdb", st))
    assert m['powerplane_sink_uncommitted_total{sink="influxdb"}'] == 1
    assert m['powerplane_sink_written_total{sink="influxdb"}'] == 120
    assert m['powerplane_sink_dropped_total{sink="influxdb"}'] == 4
    assert m['powerplane_sink_store_up{sink="influxdb"}'] == 0.0
