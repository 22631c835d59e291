"""The faust-streaming worker, `StreamsWorker`: two stages, thin shells around pure code.

1. `rack_loop` (pp.telemetry, partitioned by rack; its own consumer group, streams.rack_input): decode, check and
   reduce batches of frames (streams.rack_stage), publish the racks' and their PDUs' aggregates at once (the
   capping controller's fastest signal) and one RackSummaryBatch per batch to pp.racks, keyed by site.
2. `site_agent` (pp.racks, one partition per site): streams.site_stage.SiteStage windows the summaries by event
   time, rolls them up the power and cooling trees, forecasts every level, and publishes upper-level aggregates,
   headroom for every level and emergency events. Its state is checkpointed to a faust Table backed by a
   compacted changelog topic, so a worker that replaces a dead one resumes windows, forecasts, breaker heat
   and open emergencies instead of re-paging.

Lag: the site stage is told the wall clock and whether the worker has a backlog (records on its input partitions
not read yet, or no fetch answered lately: a broker it cannot reach, so it cannot tell). During a backlog a lagging
partition is behind, not silent, and the idle-close timer closes nothing: frames that arrive late in wall time
but in event-time order (a restart, a broker outage) still find their windows open. Every output carries its
`lag_s`. A broker outage is logged once when it starts (the client's first error) and once when it ends, with
how many client errors were held back, instead of thousands of "Unable connect" lines.

Long because the two stages share the worker's input state, counters and backlog rule (a little over 500 lines);
the policy is in the modules it imports.

Bad records go to the dead-letter topic with the reason. An exception that escapes a faust agent silently
stops it, so every record is processed inside a guard that dead-letters what fails and keeps consuming.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import faust
import numpy as np
from faust.transport.drivers import aiokafka as faust_aiokafka

from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import ClientAuth, client_auth, key_partition
from powerplane.plausibility import FrameChecker, PlausibilityCounts, PlausibilitySettings
from powerplane.schemas import DeadLetter, FacilityReading, RackSummaryBatch, SchemaError
from powerplane.site import IntArray, Site
from streams.assembly import AssemblyCounts
from streams.facility_input import FacilityInput
from streams.handover import SiteHandover, shorten_fetch_wait
from streams.kafka_io import BrokerOutage, InTransit, KeyedBatches
from streams.rack_input import RackInput
from streams.rack_stage import RackBatch, RackBatcher, rack_batch
from streams.rollup import Limits, UnknownRack
from streams.site_stage import SiteStage, SiteStageSettings, StageOutput
from streams.watermark import telemetry_stopped

log = logging.getLogger("powerplane.streams")
T = TypeVar("T")
PRODUCE_BATCH_BYTES = 512 * 1024
FRESH_FETCH_S = 5.0  # an input partition with no fetch answered for this long: the broker may be gone
_CLIENT_LOGGERS = ("aiokafka", "aiokafka.client", "aiokafka.conn", "aiokafka.consumer.fetcher",
                   "aiokafka.consumer.group_coordinator", "aiokafka.producer.sender", "aiokafka.producer.producer")


# faust only turns on producer idempotence inside transactions; we want it on every send
# (acks=all alone can still duplicate on retry).
def _idempotent_settings(self: Any) -> dict[str, Any]:
    return {"acks": "all", "enable_idempotence": True}


faust_aiokafka.Producer._settings_extra = _idempotent_settings  # type: ignore[method-assign]
shorten_fetch_wait()  # a takeover's table recovery must not wait out faust's 1.5 s long polls


def telemetry_partitions(site: Site) -> IntArray:
    """Each rack's pp.telemetry partition (frames are keyed by rack id; the Java client's murmur2 hash, which
    every producer here uses): the sources of the site stage's watermark."""
    parts = list(range(topics.TELEMETRY.partitions))
    return np.array([key_partition(r.encode(), parts) for r in site.rack_ids], dtype=np.int64)


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
        self.plausibility = PlausibilityCounts()  # frames refused, duplicates, seq gaps, readings marked
        self.assembly = AssemblyCounts()  # partial frames held, rack views made of them (streams/assembly.py)


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
                ("headroom_records", "headroom records published", c.headroom),
                ("events", "emergency events published (open, update, resolved)", c.events),
                ("dead_letters", "records sent to the dead-letter topic", c.dead_letters),
                ("late_frames", "frames that arrived after their window closed (counted, not lost)",
                 tree.late_frames),
                ("dropped_windows", "windows skipped after a clock jump or a long silence", tree.dropped_windows),
                ("checkpoints", "site-stage checkpoints written to the changelog", c.checkpoints),
                ("refused_frames", "frames refused as implausible (dead-lettered)",
                 sum(c.plausibility.refused.values())),
                ("duplicate_frames", "frames dropped: their source had sent that seq", c.plausibility.duplicates),
                ("seq_gaps", "frames missing between consecutive seqs of a source", c.plausibility.seq_gaps),
                ("marked_readings", "readings marked invalid (a jump no breaker allows, a stuck meter)",
                 sum(c.plausibility.marked.values())),
                ("assembled_views", "rack views assembled from partial frames (per server, per PDU, per BMC)",
                 c.assembly.views),
                ("held_frames", "partial frames taken into their rack's state without a view of their own",
                 c.assembly.held)):
            yield CounterMetricFamily(f"powerplane_streams_{name}", doc, value=float(value))
        yield GaugeMetricFamily("powerplane_streams_open_emergencies", "emergencies open now",
                                value=float(len(self.stage.detector.open)))
        yield GaugeMetricFamily("powerplane_streams_publish_delay_seconds",
                                "wall clock minus the end of the newest window published", value=c.publish_delay_s)
        yield GaugeMetricFamily("powerplane_streams_open_windows", "event-time windows open",
                                value=float(len(tree.windows)))


def _credentials(auth: ClientAuth) -> Any:
    """aiokafka's view of the streams role's credentials (faust passes them to every client it makes)."""
    if auth.protocol == "SASL_SSL":
        return faust.SASLCredentials(username=auth.username, password=auth.password,
                                     ssl_context=auth.ssl_context(), mechanism=auth.mechanism)
    ctx = auth.ssl_context()
    return faust.SSLCredentials(ctx) if ctx is not None else None


def _faust_app(cfg: Config, app_id: str, from_beginning: bool) -> faust.App:
    return faust.App(
        app_id,
        # faust takes several brokers as a list of URLs, not Kafka's comma-separated string.
        broker=[f"kafka://{a.strip()}" for a in cfg.kafka_bootstrap.split(",") if a.strip()],
        broker_credentials=_credentials(client_auth(cfg, "streams")),
        value_serializer="raw",
        key_serializer="raw",
        producer_acks=-1,
        web_enabled=False,
        topic_allow_declare=False,  # our topics come from `powerplane topics create`, with their configs
        consumer_auto_offset_reset="earliest" if from_beginning else "latest",
        store="memory://",  # tables rebuild from their changelog topics on start
        table_standby_replicas=0,
        # A dead worker holds its partitions until its session times out (faust's default: 60 s). 6 s is the
        # broker's least; a takeover is session + heartbeat + table recovery (docs/decisions.md, "Two or more...").
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        producer_max_request_size=topics.CHECKPOINT_MAX_BYTES,  # the site-stage checkpoint is one big record
        # aiokafka holds one batch per partition until it is sent (acks=all): with its 16 KB default a catch-up
        # of the 100 MW site waited on ~150 round trips per 4,096 frames. Under the brokers' 1 MB record limit.
        producer_max_batch_size=PRODUCE_BATCH_BYTES,
    )


def _items(recs: Sequence[Any]) -> list[tuple[bytes, bytes, float]]:
    """(key, value, event time) of records, for KeyedBatches."""
    return [(r.key(), r.encode(), r.ts_s) for r in recs]


class StreamsWorker:
    """The faust app with its topics, checkpoint table, counters and the site stage. Its agents
    (`rack_loop`, a faust task, and `site_agent`) and timers (`idle_close_timer`, `report`) are the methods below."""

    def __init__(self, cfg: Config, site: Site, app_id: str = topics.STREAMS_APP_ID,
                 settings: SiteStageSettings | None = None, checkpoint_s: float = 5.0,
                 idle_close: bool = True, from_beginning: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app = _faust_app(cfg, app_id, from_beginning)
        self.app_id = app_id
        self.site = site
        self.site_key = site.name.encode()
        self.checkpoint_s = checkpoint_s
        self.idle_close = idle_close
        self.counters = Counters()
        self.limits = Limits(site)
        self.batcher = RackBatcher(site, self.limits)
        self.clock = clock  # the receiver's clock a frame's event time is checked against
        self.checker = FrameChecker(site, PlausibilitySettings(max_ahead_s=cfg.telemetry_max_ahead_s,
                                                               max_age_s=cfg.telemetry_max_age_s))
        self.counters.plausibility = self.checker.counts
        self.counters.assembly = self.batcher.assembler.counts
        self.last_mark_log_s = 0.0
        self.stage = SiteStage(site, settings or SiteStageSettings(), rack_source=telemetry_partitions(site))
        self.read_to: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset of the last record taken
        self.outage = BrokerOutage()
        self.last_fetch_s = 0.0  # wall clock of the newest fetch answered on an input partition
        for name in _CLIENT_LOGGERS:
            logging.getLogger(name).addFilter(self.outage)
        self.racks = app.topic(topics.RACKS.name, key_type=bytes, value_type=bytes, internal=False)
        self.events = app.topic(topics.EVENTS.name, key_type=bytes, value_type=bytes, internal=False)
        self.deadletter = app.topic(topics.DEADLETTER.name, key_type=bytes, value_type=bytes, internal=False)
        self.state_table = app.Table("tree-state", default=None, key_type=bytes, value_type=bytes,
                                     partitions=topics.RACKS.partitions)
        self.batches = KeyedBatches(app)
        self.transit = InTransit()  # rack-stage summaries not yet taken by the site stage (input_backlog)
        self.handover = SiteHandover(cfg, site.name, app, self.state_table, self.stage)
        self.last_checkpoint_s = 0.0  # event time of the last checkpoint
        self.last_record_mono = 0.0  # monotonic clock at the last rack-summary record
        self.backlog_mono = 0.0  # monotonic clock when the input last had a backlog (or the broker was away)
        self.rack_input = RackInput(cfg.kafka_bootstrap, client_auth(cfg, "streams"), from_beginning)
        self.facility_input = FacilityInput(cfg.kafka_bootstrap, client_auth(cfg, "streams"))
        app.task(self.rack_loop)
        app.task(self.facility_loop)
        app.agent(self.racks)(self.site_agent)
        app.timer(interval=1.0)(self.idle_close_timer)
        app.timer(interval=30.0)(self.report)

    # ---- agents ------------------------------------------------------------------------------------
    async def rack_loop(self) -> None:
        """pp.telemetry (streams.rack_input: its own consumer group, batches of up to 4,096 frames or 50 ms),
        rolled up a batch at a time (streams.rack_stage: a few numpy calls per batch, not per frame); the
        outputs of a batch go out as a few produce batches, its summaries as one record, and the offsets are
        committed once the broker has them."""
        rin = self.rack_input
        await rin.start()
        try:
            while True:
                records = await rin.take()
                self.transit.taking = bool(records)  # in transit (no await before): their fetch state says "taken"
                for r in records:
                    self.read_to[(r.topic, r.partition)] = r.offset
                try:
                    for done, recs in await self._guarded_batch(records):
                        rin.produced(await self._rack_outputs(done, recs))
                finally:
                    self.transit.taking = False  # each summary sent is now counted until it is taken
                await rin.commit()  # in the background; a refused output is logged there
        finally:
            await rin.stop()

    async def facility_loop(self) -> None:
        """pp.facility (streams.facility_input) into the site stage: a UPS on battery shows in the next closed
        window (streams.feed_signals); a refused reading is dead-lettered with its reason."""
        fin = self.facility_input
        await fin.start()
        try:
            while True:
                for r in await fin.take():
                    await self._guarded(r, "facility", self._take_facility, r.value)
        finally:
            await fin.stop()

    def _take_facility(self, value: bytes) -> None:
        v = self.stage.add_facility(FacilityReading.decode(value), wall_s=time.time())
        if v.refused:
            raise SchemaError(v.reason)

    async def _rack_outputs(self, done: RackBatch, records: Sequence[Any]) -> list[asyncio.Future[Any]]:
        if done.marks and time.time() - self.last_mark_log_s >= 1.0:  # at most a line a second: on /metrics
            self.last_mark_log_s = time.time()
            log.warning("%s (%d reading(s) marked so far)", done.marks[0], sum(self.checker.counts.marked.values()))
        for i, reason in done.refused:
            await self.dead_letter(records[i], reason)
        self.counters.frames += done.frames
        self.counters.aggregates += len(done.aggregates)
        futures = await self.batches.send(topics.AGGREGATES.name, done.aggregates)
        rb = done.summaries
        if rb is not None:  # one record for the whole batch: the site stage takes it in one vectorized step
            sent = await self.batches.send(topics.RACKS.name, [(rb.key(), rb.encode(), float(rb.ts_s.max()))])
            self.transit.sent(sent)
            futures += sent
        return futures

    async def _guarded_batch(self, records: Sequence[Any]) -> list[tuple[RackBatch, Sequence[Any]]]:
        """rack_batch over the records' values, with the records its refusals point at. An internal error in
        decoding or checking the batch (a bug: bad input is refused per record; one in rolling up is handled
        inside rack_batch) is retried a record at a time, so only the records it fails on are dead-lettered;
        frames the failed call had already checked then count as duplicates."""
        if not records:
            return []
        try:
            return [(rack_batch(self.batcher, self.checker, [r.value for r in records], self.clock()), records)]
        except Exception:
            log.exception("rolling up a batch of %d frames failed; taking them one at a time", len(records))
        out: list[tuple[RackBatch, Sequence[Any]]] = []
        for r in records:
            one = await self._guarded(r, "roll-up", self._roll_up_one, r.value)
            if one is not None:
                out.append((one, [r]))
        return out

    def _roll_up_one(self, value: bytes) -> RackBatch:
        return rack_batch(self.batcher, self.checker, [value], self.clock())

    async def site_agent(self, stream: Any) -> None:
        """pp.racks: one record is a batch of rack summaries. Events are taken one at a time (not take_events):
        the checkpoint must be written while faust knows the current event, which is how a table write finds
        its changelog partition."""
        async for event in stream.events():
            self._read(event)
            if self.handover.fresh:
                await self._resume(event.message.offset)
            if self.handover.skip(event.message.offset):
                continue  # the checkpoint it resumed from has it
            take = partial(self._take_summaries, backlog=self.input_backlog())
            done = await self._guarded(event.message, "site stage", take, event.value)
            if done is None:
                continue
            rb, out = done
            self.stage.input_offset = event.message.offset
            self.counters.summaries += len(rb.racks)
            self.last_record_mono = time.monotonic()
            if out.windows:
                await self._publish_and_checkpoint(out, float(rb.ts_s.max()))

    # ---- timers ------------------------------------------------------------------------------------
    async def idle_close_timer(self) -> None:
        """When telemetry stops altogether no record advances the watermark: let event time run on with the
        clock since the last record, so windows still close (every rack stale) and loss is reported. Not while
        the input has a backlog or the broker cannot be reached: the frames are then late in wall time only,
        and closing their windows by the clock would lose them (finding 7 of issue 12); nor for `backlog_grace_s`
        after one."""
        tree, ts = self.stage.tree, self.stage.settings.tree
        if not self.handover.owned:  # another worker holds the site stage: this one is idle, not the site silent
            return
        backlog = self.input_backlog()
        if backlog:
            self.backlog_mono = time.monotonic()
        else:
            self.outage.over(self.last_fetch_s)
        if not self.idle_close or not self.last_record_mono or tree.max_ts_s == float("-inf"):
            return
        now = time.monotonic()
        idle = now - self.last_record_mono
        if telemetry_stopped(idle, now - self.backlog_mono, backlog, ts):
            try:
                await self.publish(self.stage.advance(tree.head_s + idle, wall_s=time.time()))
            except Exception:
                log.exception("closing idle windows failed")

    def _input_states(self, create: bool) -> list[tuple[Any, Any]]:
        """(partition, aiokafka fetch state) of every input partition: pp.telemetry from the rack stage's
        consumer, pp.racks from faust's. `create`: start faust's consumer if it is not yet (never from the
        metrics thread)."""
        if create:
            c = self.app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
        else:
            c = getattr(getattr(self.app._consumer, "_thread", None), "_consumer", None)
        out = list(self.rack_input.states())
        if c is not None:
            a = c._subscription.subscription.assignment
            out += [(tp, a.state_value(tp)) for tp in list(a.tps) if tp.topic == topics.RACKS.name]
        return out

    def input_backlog(self) -> bool:
        """Whether this worker's input partitions (pp.telemetry, pp.racks) hold records it has not taken yet, or
        one has had no fetch answered for FRESH_FETCH_S (the broker is out of reach: it cannot tell, and says
        so), or the rack stage's summaries are still on their way to the site stage (streams.kafka_io.InTransit:
        the fetch state shows neither those nor records past the highwater of the consumer's last fetch).
        Read from the Kafka clients' fetch state and the produce acks, no request."""
        if self.transit.pending(self.read_to):
            return True
        try:
            states = self._input_states(create=True)
            if not any(tp.topic == topics.TELEMETRY.name for tp, _ in states):
                return True  # between assignments: nothing says the input is caught up
            now_ms = time.time() * 1000.0
            for tp, st in states:
                self.last_fetch_s = max(self.last_fetch_s, (st.timestamp or 0) / 1000.0)
                if st.timestamp is None or st.highwater is None or now_ms - st.timestamp > FRESH_FETCH_S * 1000:
                    return True
                taken = self.read_to.get((tp.topic, tp.partition))
                if st.highwater > (taken + 1 if taken is not None else st.position):
                    return True
            return False
        except Exception:  # a client not started (yet), or its internals changed: cannot tell
            return True

    def backlog_state(self) -> str:
        """One line on what the site stage's backlog rule saw (for the log when racks are paged silent)."""
        tree, t = self.stage.tree, self.transit
        lags = ", ".join(f"{tp}[{p}] {n}" for (tp, p), n in sorted(self.input_lags().items()) if n) or "none"
        return (f"site stage backlog={tree.backlog}, input backlog={self.input_backlog()} (in transit: taking="
                f"{t.taking} unacked={t.unacked} acked={t.acked_to}), head {time.time() - tree.head_s:.1f} s "
                f"behind the clock; records not taken: {lags}")

    def input_lags(self) -> dict[tuple[str, int], int]:
        """Records not taken yet on each input partition (pp.telemetry, pp.racks): highwater minus the next
        offset the stages take (the fetch position before the first), from the clients' fetch state, no
        request; read at scrape time from the HTTP server's thread. Empty before the consumers start."""
        out: dict[tuple[str, int], int] = {}
        try:
            for tp, st in self._input_states(create=False):
                taken = self.read_to.get((tp.topic, tp.partition))
                nxt = taken + 1 if taken is not None else (st.position if st.has_valid_position else None)
                if st.highwater is not None and nxt is not None:
                    out[(tp.topic, tp.partition)] = max(0, st.highwater - nxt)
        except Exception:  # between assignments, or the client's internals changed: no lag rather than no scrape
            return {}
        return out

    def _read(self, event: Any) -> None:
        msg = event.message
        self.read_to[(msg.topic, msg.partition)] = msg.offset

    async def report(self) -> None:
        c = self.counters
        t, p = self.stage.tree, c.plausibility
        log.info("frames=%d summaries=%d windows=%d aggregates=%d headroom=%d events=%d late=%d repeated=%d "
                 "future=%d dead_letters=%d checkpoints=%d refused=%d duplicates=%d seq_gaps=%d marked=%d", c.frames,
                 c.summaries, c.windows, c.aggregates, c.headroom, c.events, t.late_frames, t.repeated_frames,
                 t.future_frames, c.dead_letters, c.checkpoints, sum(p.refused.values()), p.duplicates, p.seq_gaps,
                 sum(p.marked.values()))

    # ---- one record --------------------------------------------------------------------------------
    def _take_summaries(self, value: bytes, backlog: bool) -> tuple[RackSummaryBatch, StageOutput]:
        rb = RackSummaryBatch.decode(value)
        if rb.site != self.site.name:
            raise UnknownRack(f"rack.summaries: site '{rb.site}', this worker rolls up '{self.site.name}'")
        return rb, self.stage.add_batch(rb, wall_s=time.time(), backlog=backlog)

    async def _guarded(self, msg: Any, what: str, fn: Callable[[bytes], T], value: bytes) -> T | None:
        """fn(value), or None once the record is dead-lettered: an exception that escapes a faust agent
        silently stops it."""
        try:
            return fn(value)
        except (SchemaError, UnknownRack) as e:
            await self.dead_letter(msg, str(e))
        except Exception as e:  # never let one record stop the agent
            log.exception("%s failed on %s", what, msg.key)
            await self.dead_letter(msg, f"internal error: {type(e).__name__}: {e}")
        return None

    async def dead_letter(self, msg: Any, reason: str) -> None:
        """`msg`: the record (a faust event's message or an aiokafka ConsumerRecord: topic, partition, offset,
        key, value)."""
        dl = DeadLetter(msg.topic, msg.partition, msg.offset, reason, msg.key, msg.value or b"",
                        {"component": self.app_id})
        self.counters.dead_letters += 1
        key = msg.key.decode(errors="replace") if msg.key else "-"
        log.warning("bad record %s[%d]@%d key=%s: %s -> %s", msg.topic, msg.partition, msg.offset, key, reason,
                    topics.DEADLETTER.name)
        await self.deadletter.send(key=msg.topic.encode(), value=dl.value, headers=dl.headers())

    # ---- output and checkpoints --------------------------------------------------------------------
    async def publish(self, out: StageOutput) -> None:
        c = self.counters
        await self.batches.send(topics.AGGREGATES.name, _items(out.aggregates))
        await self.batches.send(topics.HEADROOM.name, out.headroom_items())
        for e in out.events:
            await self.events.send(key=e.id.encode(), value=e.encode(), timestamp=e.ts_s)
            log.warning("event %s %s %s: %s", e.state, e.severity, e.kind, e.summary)
        lost = [e for e in out.events if e.kind == "telemetry_loss" and e.state == "open"]
        if lost:  # what the site stage's verdict rested on: silent racks, or a backlog it did not see
            log.warning("telemetry_loss opened for %d rack(s), window ending %.0f: %s", len(lost),
                        max(e.ts_s for e in lost), self.backlog_state())
        c.aggregates += len(out.aggregates)
        c.headroom += out.headroom_count()
        if out.aggregates:
            c.publish_delay_s = time.time() - max(a.ts_s for a in out.aggregates)
        c.events += len(out.events)
        c.windows += out.windows

    async def _publish_and_checkpoint(self, out: StageOutput, newest_s: float) -> None:
        try:
            await self.publish(out)
            # Checkpoint by event time, and once an emergency opens or resolves (published first) so a successor
            # does not page it again; inside the agent, so the write lands on this partition's changelog.
            paged = any(e.state == "resolved" or e.ts_s == e.opened_s for e in out.events)
            if paged or newest_s - self.last_checkpoint_s >= self.checkpoint_s:
                self.state_table[self.site_key] = self.stage.state()
                self.last_checkpoint_s = newest_s
                self.counters.checkpoints += 1
        except Exception:  # a failed publish or checkpoint must not stop the agent either
            log.exception("publishing windows up to %.0f failed", newest_s)

    async def _resume(self, offset: int) -> None:
        """Load the checkpoint, replay what was taken after it (streams.handover): at each takeover."""
        records = await self.handover.take_over(self.state_table.get(self.site_key), self.stage, offset)
        self.counters.resumed |= records is not None
        for off, value in records or []:
            try:
                rb, out = self._take_summaries(value, backlog=True)
            except Exception:  # dead-lettered or logged by the worker that took it first; must not stop the agent
                continue
            self.counters.summaries += len(rb.racks)
            self.stage.input_offset = off
            if out.windows:
                await self._publish_and_checkpoint(out, float(rb.ts_s.max()))


def _lags_of(worker: StreamsWorker, topic: str) -> dict[tuple[str, int], int]:
    return {tp: n for tp, n in worker.input_lags().items() if tp[0] == topic}


def run_worker(cfg: Config, site: Site, loglevel: str = "info", from_beginning: bool = False,
               registry: Any = None) -> None:
    """Run the worker until stopped; `registry` (a served prometheus_client CollectorRegistry) gets its metrics
    and the consumer lag of its input partitions."""
    from faust.worker import Worker

    from powerplane.metrics import ConsumerLag

    worker = StreamsWorker(cfg, site, from_beginning=from_beginning)
    if registry is not None:
        registry.register(WorkerMetrics(worker.counters, worker.stage))
        # Each input partition under the group that reads it: pp.racks faust's, pp.telemetry the rack stage's.
        for group, topic in ((worker.app_id, topics.RACKS.name), (topics.STREAMS_RACKS_GROUP, topics.TELEMETRY.name)):
            registry.register(ConsumerLag(group, partial(_lags_of, worker, topic)))
    Worker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()
