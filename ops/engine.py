"""The in-process engine: the same roll-up and policy code as the Kafka path, run over records in
event-time order, with no broker. `powerplane replay DIR --engine` uses it to answer "what would this
policy have done" on a recording.

It composes the stages' pure parts (streams.rollup, streams.site_stage.SiteStage,
controllers.controller.CapController); the stages themselves still never import each other. Time is the
records' event time, so a recorded hour runs in seconds. The loop is open: a recording's plant does not
react to the commands decided here (a closed-loop what-if runs the digital twin instead).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from controllers.capping import CapSettings
from controllers.controller import CapController
from powerplane import topics
from powerplane.config import Config
from powerplane.plausibility import FrameChecker
from powerplane.schemas import (
    Command,
    Event,
    FacilityReading,
    LevelAggregate,
    RackSummary,
    RackSummaryBatch,
    SchemaError,
    TelemetryFrame,
)
from powerplane.signing import Keyring
from powerplane.site import Site
from streams.assembly import Assembler, assembled_outputs
from streams.rollup import Limits, UnknownRack
from streams.site_stage import SiteStage


@dataclass
class EngineResult:
    frames: int = 0
    aggregates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)  # reason -> count
    duplicates: int = 0  # frames whose seq their source had already sent (dropped, counted)
    marked: Counter[str] = field(default_factory=Counter)  # reading marked invalid (set to NaN): reason -> count
    commands: list[Command] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # emergencies opened, updated and resolved
    headroom: int = 0  # headroom records the site stage produced
    windows: int = 0
    first_ts_s: float | None = None
    last_ts_s: float | None = None

    def summary(self) -> str:
        caps = [c for c in self.commands if c.reason != "lease renewal"]
        span = (self.last_ts_s or 0.0) - (self.first_ts_s or 0.0)
        lines = [f"{self.frames} telemetry frames over {span:.0f} s of event time -> {self.aggregates} aggregates, "
                 f"{len(caps)} cap command(s), {len(self.commands) - len(caps)} lease renewal(s)"]
        if caps:
            first = min(c.issued_at_s for c in caps)
            racks = Counter(c.target for c in caps)
            lines.append(f"first cap {first - (self.first_ts_s or first):.1f} s into the recording; racks capped: "
                         + ", ".join(f"{r} x{n}" for r, n in sorted(racks.items())))
        opened = [e for e in self.events if e.state == "open"]
        if self.windows:
            lines.append(f"{self.windows} windows rolled up the trees, {self.headroom} headroom records, "
                         f"{len({e.id for e in opened})} emergencies")
        for e in opened[:10]:
            at = e.ts_s - (self.first_ts_s or e.ts_s)
            lines.append(f"  {e.severity:8s} {e.kind:17s} at +{at:.0f} s: {e.summary}")
        for reason, n in self.dead_letters.most_common(5):
            lines.append(f"dead letter x{n}: {reason}")
        if self.duplicates or self.marked:
            lines.append(f"{self.duplicates} duplicate frame(s) dropped, {sum(self.marked.values())} reading(s) "
                         "marked invalid")
        return "\n".join(lines)


def received_s(ts_ms: object) -> float | None:
    """A recorded record's Kafka timestamp (ms) in seconds; None where the record has none."""
    return float(ts_ms) / 1e3 if isinstance(ts_ms, int | float) and ts_ms >= 0 else None


class Engine:
    """Feeds telemetry through roll-up and the capping controller, ticking once per `tick_s` of event time."""

    def __init__(self, site: Site, keyring: Keyring, settings: CapSettings, lease_s: float,
                 tick_s: float = 1.0, controller: CapController | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.site = site
        # Plausibility against the site and time; `clock` is the receiver's clock. Replay passes each record's
        # broker timestamp instead (`feed(..., received_s=)`), evaluation the twin's time: without either (event
        # time) the first frame sets the clock, so a future-dated first frame would (docs/safety.md).
        self.checker = FrameChecker(site)
        self.clock = clock
        self.limits = Limits(site)
        self.assembler = Assembler(site)  # partial frames (one server, one PDU) -> whole-rack views
        self.stage = SiteStage(site)
        self.pending: list[RackSummary] = []  # summaries of the current timestamp, rolled up together
        self.controller = controller or CapController(site, keyring, settings, lease_s, issuer="in-process-engine")
        self.tick_s = tick_s
        self.next_tick_s: float | None = None
        self.result = EngineResult()

    @classmethod
    def from_config(cls, cfg: Config, site: Site, keyring: Keyring) -> Engine:
        return cls(site, keyring, CapSettings(cfg.cap_threshold, cfg.uncap_threshold), cfg.command_lease_s)

    def feed_frame(self, frame: TelemetryFrame, received_s: float | None = None) -> list[Command]:
        """One frame in: its aggregates update the controller; every elapsed tick may decide commands.
        `received_s`: when the frame reached the receiver (a recorded record's timestamp); else `clock`."""
        r = self.result
        if received_s is None and self.clock is not None:
            received_s = self.clock()
        v = self.checker.check(frame, received_s)
        if v.frame is None:  # refused (the Kafka path dead-letters it) or a duplicate (dropped)
            if v.dropped:
                r.duplicates += 1
            else:
                r.dead_letters[v.reason] += 1
            return []
        r.marked.update(v.marks)
        frame = v.frame
        out: list[Command] = []
        now = frame.ts_s
        if self.next_tick_s is None:
            self.next_tick_s = now + self.tick_s
        while now >= self.next_tick_s:  # decide on what arrived before this frame, as the live loop does
            out += self.controller.decide(self.next_tick_s)
            self.next_tick_s += self.tick_s
        aggs: list[LevelAggregate] = []
        for rack_aggs, summary in assembled_outputs(self.site, self.limits, self.assembler, frame):
            aggs += rack_aggs
            if self.pending and self.pending[-1].ts_s != summary.ts_s:
                aggs += self._flush(now)
            self.pending.append(summary)  # as the streams worker batches them: one vectorized step per batch
        self.controller.on_frame(frame)
        for a in aggs:
            self.controller.on_aggregate(a, now)
        r.frames += 1
        r.aggregates += len(aggs)
        r.first_ts_s = now if r.first_ts_s is None else min(r.first_ts_s, now)
        r.last_ts_s = now if r.last_ts_s is None else max(r.last_ts_s, now)
        r.commands += out
        return out

    def feed_facility(self, reading: FacilityReading, received_s: float | None = None) -> list[Command]:
        """A facility reading (pp.facility) into the site stage and the controller, through the same calls as the
        streams worker and the controller's loop: a UPS newly on battery is decided on at once, as the live
        controller treats it as a crossing. A refused reading is counted as the Kafka path dead-letters it."""
        if received_s is None and self.clock is not None:
            received_s = self.clock()
        now = reading.ts_s if received_s is None else received_s
        v = self.stage.add_facility(reading, now)
        if v.refused:
            self.result.dead_letters[v.reason] += 1
        urgent, refused = self.controller.on_facility(reading, now)
        if refused and not v.refused:
            self.result.dead_letters[refused] += 1
        if not urgent:
            return []
        out = self.controller.decide(now)
        self.result.commands += out
        return out

    def decide_now(self, now_s: float) -> list[Command]:
        """Roll up what is pending and decide at once: a closed loop calls this after each second's frames,
        as the live controller decides on its own clock within a tick of the data arriving."""
        aggs = self._flush(now_s)
        for a in aggs:
            self.controller.on_aggregate(a, now_s)
        self.result.aggregates += len(aggs)
        out = self.controller.decide(now_s)
        self.next_tick_s = now_s + self.tick_s
        self.result.commands += out
        return out

    def _flush(self, now_s: float | None = None) -> list[LevelAggregate]:
        if not self.pending:
            return []
        r = self.result
        staged = self.stage.add_batch(RackSummaryBatch.of(self.pending))
        self.pending = []
        headroom = staged.headroom
        for h in headroom:  # thermal headroom reaches the controller as pp.headroom does
            self.controller.on_headroom(h, h.ts_s if now_s is None else now_s)
        r.events += staged.events
        r.headroom += len(headroom)
        r.windows += staged.windows
        return staged.aggregates

    def finish(self) -> EngineResult:
        """Roll up what is still pending (the end of a recording)."""
        aggs = self._flush()
        self.result.aggregates += len(aggs)
        return self.result

    def feed(self, topic: str, value: bytes | None, received_s: float | None = None) -> list[Command]:
        """A raw record (pp.telemetry, pp.facility); anything undecodable or of another site is counted, not fatal."""
        if topic not in (topics.TELEMETRY.name, topics.FACILITY.name):
            return []
        try:
            if topic == topics.FACILITY.name:
                return self.feed_facility(FacilityReading.decode(value or b""), received_s)
            frame = TelemetryFrame.decode(value or b"")
            return self.feed_frame(frame, received_s)
        except (SchemaError, UnknownRack) as e:
            self.result.dead_letters[str(e)] += 1
            return []

    def run(self, records: Iterable[tuple[str, bytes | None, bytes | None, int, object]]) -> EngineResult:
        for topic, _key, value, ts_ms, _headers in records:
            # The record's broker timestamp is when it was received: the live worker's wall clock, replayed.
            self.feed(topic, value, received_s(ts_ms))
        return self.finish()
