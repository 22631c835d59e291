"""The faust-streaming worker: two agents, thin shells around pure code.

1. `racks` (pp.telemetry, partitioned by rack): decode a frame, reduce it with streams.rollup.frame_outputs,
   publish the rack's and its PDUs' aggregates at once (the capping controller's fastest signal) and a
   RackSummary to pp.racks, keyed by site.
2. `site` (pp.racks, one partition per site): streams.site_stage.SiteStage windows the summaries by event time,
   rolls them up the power and cooling trees, forecasts every level, and publishes upper-level aggregates,
   headroom for every level and emergency events. Its state is checkpointed to a faust Table backed by a
   compacted changelog topic, so a worker that replaces a dead one resumes windows, forecasts, breaker heat
   and open emergencies instead of re-paging.

Bad records go to the dead-letter topic with the reason. An exception that escapes a faust agent silently
stops it, so every record is processed inside a guard that dead-letters what fails and keeps consuming.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]
from faust.transport.drivers import aiokafka as faust_aiokafka

from powerplane import topics
from powerplane.config import Config
from powerplane.schemas import DeadLetter, RackSummary, RackSummaryBatch, SchemaError, TelemetryFrame
from powerplane.site import Site
from streams.rollup import Limits, UnknownRack, frame_outputs
from streams.site_stage import SiteStage, SiteStageSettings, StageOutput

log = logging.getLogger("powerplane.streams")


# faust only turns on producer idempotence inside transactions; we want it on every send
# (acks=all alone can still duplicate on retry).
def _idempotent_settings(self: Any) -> dict[str, Any]:
    return {"acks": "all", "enable_idempotence": True}


faust_aiokafka.Producer._settings_extra = _idempotent_settings  # type: ignore[method-assign]


class KeyedBatches:
    """Sends many keyed records as one produce batch per partition, on faust's own (idempotent, acks=all)
    aiokafka producer. Per-record `topic.send` costs ~65 us of Python in faust and aiokafka; a site's
    headroom is thousands of records a second, so the per-record path alone would take a core.
    Partitions are chosen by the Java client's murmur2 hash, as faust and every other producer do."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.partitioner = DefaultPartitioner()
        self.sent = 0

    async def send(self, topic: str, items: list[tuple[bytes, bytes, float]]) -> None:
        if not items:
            return
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        await producer.client._wait_on_metadata(topic)
        parts = sorted(producer.client.cluster.partitions_for_topic(topic) or [0])
        by_part: dict[int, list[tuple[bytes, bytes, float]]] = {}
        for it in items:
            by_part.setdefault(self.partitioner(it[0], parts, parts), []).append(it)
        for p, recs in by_part.items():
            batch, n = producer.create_batch(), 0
            for key, value, ts_s in recs:
                ts_ms = int(ts_s * 1000)
                if batch.append(key=key, value=value, timestamp=ts_ms) is not None:
                    n += 1
                    continue
                if n:  # full: ship it and start another
                    await producer.send_batch(batch, topic, partition=p)
                    batch, n = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=ts_ms) is not None:
                    n += 1
                else:  # larger than a whole batch: sent on its own, never dropped
                    await producer.send(topic, value=value, key=key, partition=p, timestamp_ms=ts_ms)
            if n:
                await producer.send_batch(batch, topic, partition=p)
        self.sent += len(items)


class Counters:
    """What the worker did; exported on /metrics at scrape time (no per-record metric cost)."""

    def __init__(self) -> None:
        self.frames = 0
        self.summaries = 0
        self.aggregates = 0
        self.headroom = 0
        self.events = 0
        self.windows = 0
        self.dead_letters = 0
        self.checkpoints = 0
        self.resumed = False  # the site stage started from a checkpoint
        self.publish_delay_s = 0.0  # wall clock minus the end of the newest window published (live lag)


class WorkerMetrics:
    """Prometheus collector over the worker's counters and the site stage's state."""

    def __init__(self, counters: Counters, stage: SiteStage) -> None:
        self.c = counters
        self.stage = stage

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        c, tree = self.c, self.stage.tree
        for name, doc, value in (
                ("frames", "telemetry frames rolled up per rack", c.frames),
                ("rack_summaries", "rack summaries taken by the site stage", c.summaries),
                ("windows", "event-time windows closed and rolled up the trees", c.windows),
                ("aggregates", "level aggregates published", c.aggregates),
                ("headroom", "headroom records published", c.headroom),
                ("events", "emergency events published (open, update, resolved)", c.events),
                ("dead_letters", "records sent to the dead-letter topic", c.dead_letters),
                ("late_frames", "frames that arrived after their window closed (counted, not lost)",
                 tree.late_frames),
                ("dropped_windows", "windows skipped after a clock jump or a long silence", tree.dropped_windows),
                ("checkpoints", "site-stage checkpoints written to the changelog", c.checkpoints)):
            yield CounterMetricFamily(f"powerplane_streams_{name}", doc, value=float(value))
        yield GaugeMetricFamily("powerplane_streams_open_emergencies", "emergencies open now",
                                value=float(len(self.stage.detector.open)))
        yield GaugeMetricFamily("powerplane_streams_publish_delay_seconds",
                                "wall clock minus the end of the newest window published", value=c.publish_delay_s)
        yield GaugeMetricFamily("powerplane_streams_open_windows", "event-time windows open",
                                value=float(len(tree.windows)))


def create_app(cfg: Config, site: Site, app_id: str = topics.STREAMS_APP_ID,
               settings: SiteStageSettings | None = None, checkpoint_s: float = 5.0,
               idle_close: bool = True, from_beginning: bool = False) -> tuple[faust.App, Counters]:
    app = faust.App(
        app_id,
        broker=f"kafka://{cfg.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        producer_acks=-1,
        web_enabled=False,
        topic_allow_declare=False,  # our topics come from `powerplane topics create`, with their configs
        consumer_auto_offset_reset="earliest" if from_beginning else "latest",
        store="memory://",  # tables rebuild from their changelog topics on start
        table_standby_replicas=0,
        # A worker that dies without leaving the group holds its partitions until the session times out:
        # faust's 60 s default would leave a site unwatched for a minute after a crash.
        broker_session_timeout=10.0,
        producer_max_request_size=topics.CHECKPOINT_MAX_BYTES,  # the site-stage checkpoint is one big record
        broker_heartbeat_interval=3.0,
    )
    counters = Counters()
    limits = Limits(site)
    stage = SiteStage(site, settings or SiteStageSettings())
    telemetry = app.topic(topics.TELEMETRY.name, key_type=bytes, value_type=bytes, internal=False)
    racks = app.topic(topics.RACKS.name, key_type=bytes, value_type=bytes, internal=False)
    events = app.topic(topics.EVENTS.name, key_type=bytes, value_type=bytes, internal=False)
    deadletter = app.topic(topics.DEADLETTER.name, key_type=bytes, value_type=bytes, internal=False)
    state_table = app.Table("tree-state", default=None, key_type=bytes, value_type=bytes,
                            partitions=topics.RACKS.partitions)
    site_key = site.name.encode()
    live = {"loaded": False, "last_checkpoint_s": 0.0, "last_record_mono": 0.0}

    async def dead_letter(event: Any, reason: str) -> None:
        msg = event.message
        dl = DeadLetter(msg.topic, msg.partition, msg.offset, reason, msg.key, msg.value or b"",
                        {"component": app_id})
        counters.dead_letters += 1
        key = msg.key.decode(errors="replace") if msg.key else "-"
        log.warning("bad record %s[%d]@%d key=%s: %s -> %s", msg.topic, msg.partition, msg.offset, key, reason,
                    topics.DEADLETTER.name)
        await deadletter.send(key=msg.topic.encode(), value=dl.value, headers=dl.headers())

    batches = KeyedBatches(app)

    def items(recs: list[Any]) -> list[tuple[bytes, bytes, float]]:
        return [(r.key(), r.encode(), r.ts_s) for r in recs]

    async def publish(out: StageOutput) -> None:
        await batches.send(topics.AGGREGATES.name, items(out.aggregates))
        await batches.send(topics.HEADROOM.name, items(out.headroom))
        for e in out.events:
            await events.send(key=e.id.encode(), value=e.encode(), timestamp=e.ts_s)
            log.warning("event %s %s %s: %s", e.state, e.severity, e.kind, e.summary)
        counters.aggregates += len(out.aggregates)
        counters.headroom += len(out.headroom)
        if out.aggregates:
            counters.publish_delay_s = time.time() - max(a.ts_s for a in out.aggregates)
        counters.events += len(out.events)
        counters.windows += out.windows

    @app.agent(telemetry)
    async def rack_agent(stream: Any) -> None:
        # In batches of up to 2,048 frames or 50 ms, whichever comes first: the outputs of a batch go out as a
        # few produce batches instead of four sends per frame.
        async for batch in stream.take_events(2048, within=0.05):
            aggs_out: list[tuple[bytes, bytes, float]] = []
            summaries: list[RackSummary] = []
            for event in batch:
                try:
                    frame = TelemetryFrame.decode(event.value)
                    aggs, summary = frame_outputs(site, limits, frame)
                except (SchemaError, UnknownRack) as e:
                    await dead_letter(event, str(e))
                    continue
                except Exception as e:  # never let one record stop the agent
                    log.exception("roll-up failed on %s", event.message.key)
                    await dead_letter(event, f"internal error: {type(e).__name__}: {e}")
                    continue
                counters.frames += 1
                aggs_out += items(aggs)
                summaries.append(summary)
            await batches.send(topics.AGGREGATES.name, aggs_out)
            if summaries:  # one record for the whole batch: the site stage takes it in one vectorized step
                rb = RackSummaryBatch.of(summaries)
                await racks.send(key=rb.key(), value=rb.encode(), timestamp=float(rb.ts_s.max()))
            counters.aggregates += len(aggs_out)

    def resume() -> None:
        """Load the checkpoint once, after faust has rebuilt the table from its changelog."""
        if live["loaded"]:
            return
        live["loaded"] = True
        raw = state_table.get(site_key)
        if raw and stage.load_state(raw):
            counters.resumed = True
            log.info("site stage resumed from its checkpoint: %d windows closed before", stage.windows_closed)

    @app.agent(racks)
    async def site_agent(stream: Any) -> None:
        # One record is a batch of rack summaries. Events are taken one at a time (not take_events): the
        # checkpoint below must be written while faust knows the current event, which is how a table write
        # finds its changelog partition.
        async for event in stream.events():
            resume()
            try:
                rb = RackSummaryBatch.decode(event.value)
                if rb.site != site.name:
                    raise UnknownRack(f"rack.summaries: site '{rb.site}', this worker rolls up '{site.name}'")
                out = stage.add_batch(rb)
            except (SchemaError, UnknownRack) as e:
                await dead_letter(event, str(e))
                continue
            except Exception as e:
                log.exception("site stage failed on %s", event.message.key)
                await dead_letter(event, f"internal error: {type(e).__name__}: {e}")
                continue
            counters.summaries += len(rb.racks)
            live["last_record_mono"] = time.monotonic()
            if not out.windows:
                continue
            newest = float(rb.ts_s.max())
            try:
                await publish(out)
                # Checkpoint by event time; inside the agent, so the write lands on this partition's changelog.
                if newest - live["last_checkpoint_s"] >= checkpoint_s:
                    state_table[site_key] = stage.state()
                    live["last_checkpoint_s"] = newest
                    counters.checkpoints += 1
            except Exception:  # a failed publish or checkpoint must not stop the agent either
                log.exception("publishing windows up to %.0f failed", newest)

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def idle_close_timer() -> None:
        # When telemetry stops altogether no record advances the watermark: let event time run on with
        # the clock since the last record, so windows still close (every rack stale) and loss is reported.
        if not idle_close or not live["last_record_mono"] or stage.tree.max_ts_s == float("-inf"):
            return
        idle = time.monotonic() - float(live["last_record_mono"])
        if idle > stage.settings.tree.window_s + stage.settings.tree.lateness_s:
            try:
                await publish(stage.advance(stage.tree.max_ts_s + idle))
            except Exception:
                log.exception("closing idle windows failed")

    @app.timer(interval=30.0)  # type: ignore[untyped-decorator]
    async def report() -> None:
        log.info("frames=%d summaries=%d windows=%d aggregates=%d headroom=%d events=%d late=%d dead_letters=%d "
                 "checkpoints=%d", counters.frames, counters.summaries, counters.windows, counters.aggregates,
                 counters.headroom, counters.events, stage.tree.late_frames, counters.dead_letters,
                 counters.checkpoints)

    app.pp_stage = stage  # type: ignore[attr-defined]  # for tests and the bench
    return app, counters


def run_worker(cfg: Config, site: Site, loglevel: str = "info", from_beginning: bool = False,
               metrics_port: int = 0) -> None:
    from faust.worker import Worker

    app, counters = create_app(cfg, site, from_beginning=from_beginning)
    if metrics_port:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        registry.register(WorkerMetrics(counters, app.pp_stage))  # type: ignore[attr-defined]
        start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    worker = Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
