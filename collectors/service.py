"""The collector process: sources from config -> scheduler -> spooled publisher -> Kafka."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from collectors.base import Source, SourceConfigError, SourceContext, load_source
from collectors.publisher import SpooledPublisher
from collectors.scheduler import Metrics, Scheduler
from collectors.spool import Spool
from powerplane.config import Config, TomlFileError, read_toml
from powerplane.kafka import client_auth

log = logging.getLogger("powerplane.collectors")


def sources_from_file(path: str | Path, ctx: SourceContext) -> list[Source]:
    """Every [sources.NAME] table of a TOML file; SourceConfigError with every mistake of every table."""
    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise SourceConfigError(f"{path}: {e}") from None
    tables = data.get("sources")
    if not isinstance(tables, dict) or not tables:
        raise SourceConfigError(f"{path}: no [sources.NAME] tables (see collectors/*/sample.toml)")
    return build_sources(tables, ctx, source=str(path))


def build_sources(tables: Mapping[str, Any], ctx: SourceContext, source: str = "") -> list[Source]:
    """One source per table; the mistakes of all tables are reported together (`source` names the file)."""
    out: list[Source] = []
    errors: list[str] = []
    for name, opts in tables.items():
        if not isinstance(opts, dict):
            errors.append(f"sources.{name}: expected a table, got {opts!r}")
            continue
        try:
            out.append(load_source(name, opts, ctx))
        except SourceConfigError as e:
            errors.extend(e.errors)
    if errors:
        raise SourceConfigError(errors, source=source)
    return out


class PublisherMetrics:
    """Prometheus collector over the spooled publisher: frames spooled, published, refused, dropped."""

    def __init__(self, pub: SpooledPublisher, spool: Spool) -> None:
        self.pub, self.spool = pub, spool

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.pub.stats
        for name, doc, value in (
                ("spooled", "frames written to the disk spool", st.spooled),
                ("published", "frames the broker acknowledged", st.delivered),
                ("refused", "frames the broker refused for good (logged with the rack)", st.failed),
                ("dropped", "frames dropped unsent from a full spool", self.spool.dropped_records)):
            yield CounterMetricFamily(f"powerplane_collector_frames_{name}", doc, value=float(value))
        yield GaugeMetricFamily("powerplane_collector_broker_up", "1 while the broker takes frames",
                                value=float(st.broker_up))
        yield GaugeMetricFamily("powerplane_collector_spool_pending_records",
                                "frames in the spool not yet acknowledged",
                                value=float(self.spool.pending))


def run(cfg: Config, sources: list[Source], stop: threading.Event, *, duration_s: float | None = None,
        spool_dir: str | Path | None = None, registry: Any = None, client_id: str = "powerplane-collector",
        max_concurrency: int = 512) -> Scheduler:
    """Poll `sources` and publish their frames until `stop` (or `duration_s`). `registry`: a served
    prometheus_client CollectorRegistry that gets the polls and what the publisher did with the frames."""
    spool = Spool(spool_dir or Path(cfg.state_dir) / "spool" / client_id)
    pub = SpooledPublisher(cfg.kafka_bootstrap, spool, client_id, auth=client_auth(cfg, "collector"))
    metrics = Metrics(registry)
    if registry is not None:
        registry.register(PublisherMetrics(pub, spool))
    sched = Scheduler(sources, pub.publish, metrics=metrics, max_concurrency=max_concurrency)
    pub.start()
    log.info("collecting from %d source(s); spool %s", len(sources), spool.dir)
    try:
        asyncio.run(sched.run(stop, duration_s))
    finally:
        pub.close()
        log.info("collector: %d frame(s) spooled, %d delivered, %d refused, %d dropped from a full spool",
                 pub.stats.spooled, pub.stats.delivered, pub.stats.failed, spool.dropped_records)
    return sched
