"""Is a decoded telemetry frame physically and temporally plausible for this site? Pure code (numpy, no I/O),
shared by the streams worker's rack stage and the in-process engine, so both paths take the same readings as
truth.

The schema (powerplane/schemas.py) checks what any site would refuse (types, finiteness, wide ranges). This
checks a frame against *this* site and *this* receiver:

- refused (one line naming the field and the value; the record goes to the dead-letter topic): a frame dated
  more than `max_ahead_s` ahead of the receiver's clock (one future-dated frame must not move event time) or
  older than `max_age_s`; a reading outside what the hardware can report (a GPU outside [0, 1.5 x its max], a
  PDU meter outside [0, 3 x its breaker's rating], a server outside [0, 1.5 x its PSU rating], an inlet or GPU
  temperature outside sensor range); a frame of another site or an unknown rack; a GPU (gpu_server, gpu_slot)
  that is not in the rack or is carried twice; a frame that carries no reading at all.
- per source, not per rack: a frame may carry any part of its rack (one server's GPUs from NVML or DCGM, one
  PDU's meter and inlets from SNMP with no GPU, a server's power from its BMC), or the whole rack (the
  simulated fleet). An accepted frame with every GPU of its rack is in the site model's order (reordered
  here when it was not), so the roll-up can take it positionally; streams.assembly merges the parts.
- dropped and counted: a duplicate `seq` of its source (same source, rack, a seq not after the last and not
  newer in event time). Gaps in `seq` are counted.
- marked (the reading becomes NaN in what the roll-up takes, counted): readings that are possible but that
  no breaker or room allows between consecutive frames: a PDU meter step larger than the breaker's whole
  rating, an inlet changing faster than air can, a PDU meter stuck on one value while its GPUs' power moves.

The receiver's clock is given to `check` (the streams worker: wall clock). Without one (replay and evaluation
run in event time) the clock is the newest accepted event time, and a frame ahead of it is still taken when
the median of every source's newest claimed time confirms it: a recording that skips ahead is followed, one
source alone cannot move it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from powerplane.rack_layout import RackLayout
from powerplane.schemas import SchemaError, TelemetryFrame
from powerplane.site import Site


class Implausible(SchemaError):
    """A frame refused by the plausibility check; the message is the one-line reason (dead-lettered)."""


@dataclass(frozen=True)
class PlausibilitySettings:
    max_ahead_s: float = 5.0  # clock skew allowed between a collector and the receiver
    max_age_s: float = 86_400.0  # older than this is not "late", it is a replay or a broken clock
    # NVML's averaged power may exceed the enforced limit briefly (boost transients); 1.5 x max is not a GPU.
    gpu_power_factor: float = 1.5
    # A PDU breaker's magnetic (instantaneous) element opens within cycles at 3-5 x its rating for type B
    # curves (5-10 x type C), and the inverse-time element trips in ~30 s at 3 x (powerplane/physics.py): a
    # meter above 3 x the rating cannot be a load the breaker carried through a sample, so it is refused.
    pdu_max_factor: float = 3.0
    inlet_c: tuple[float, float] = (-20.0, 80.0)  # inlet air sensors' range
    gpu_temp_c: tuple[float, float] = (-20.0, 150.0)  # GPU die sensors' range
    # Consecutive PDU meter readings may differ by at most the breaker's rating: even a feed transfer only
    # moves the other side's share onto it. Applied when frames are at most this many intervals apart.
    jump_max_intervals: float = 2.0
    jump_confirm_frames: int = 3  # a marked new level seen this many times in a row (within 10 %) is taken
    inlet_max_rate_c_per_s: float = 2.0  # faster than a failed CRAH heats a cold aisle
    inlet_jump_floor_c: float = 5.0
    stuck_frames: int = 30  # a non-zero meter identical this many frames while its GPUs' power moved
    stuck_gpu_move_frac: float = 0.05  # ... by more than this fraction of the PDU's rating
    server_power_factor: float = 1.5  # a BMC's server power above 1.5 x the PSU nameplate is not a server
    # Bound on the per-source table (sources are named by the frame). A real rack has one GPU source per server,
    # one BMC per server and a PDU per feed: an NVL72-class rack (18 trays) has ~40.
    max_sources_per_rack: int = 48


@dataclass(frozen=True)
class Verdict:
    """What to do with one frame: take `frame` (invalid readings set to NaN), or not (`reason` says why)."""

    frame: TelemetryFrame | None
    reason: str = ""
    dropped: bool = False  # a duplicate: counted, not dead-lettered (at-least-once delivery makes them)
    marks: tuple[str, ...] = ()  # one line per reading marked invalid

    @property
    def refused(self) -> bool:
        return self.frame is None and not self.dropped


@dataclass
class PlausibilityCounts:
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # cause -> frames
    duplicates: int = 0
    seq_gaps: int = 0  # frames missing between consecutive seqs of a source
    seq_resets: int = 0  # a source restarted its seq (lower seq, newer event time)
    marked: Counter[str] = field(default_factory=Counter)  # cause -> readings
    evicted: int = 0  # per-source entries dropped to keep the table bounded


@dataclass
class _Source:
    seq: int
    ts_s: float  # newest accepted event time
    claimed_s: float  # newest event time it claimed, accepted or not (the event-time clock's vote)
    pdu_ref: list[float]  # last meter reading taken as valid, per feed
    pdu_pending: list[float]  # a marked new level and how often it was seen in a row
    pdu_pending_n: list[int]
    pdu_last: list[float]  # last raw reading, per feed
    stuck_n: list[int]
    stuck_gpu_w: list[float]  # GPU sum when the meter last changed
    inlet: list[float]


# Per-GPU fields of a telemetry frame (reordered together when a whole-rack frame is not in site order).
_GPU_FIELDS = ("gpu_server", "gpu_slot", "power_w", "temp_c", "sm_clock_mhz", "limit_w", "util", "mem_clock_mhz",
               "throttle_reasons", "energy_j")


def _carries_a_reading(frame: TelemetryFrame) -> bool:
    """Any finite meter, inlet, server power or PDU current / outlet reading (a frame with no GPU)."""
    scalars = [*frame.pdu_power_w, *frame.inlet_c]
    if any(math.isfinite(x) for x in scalars):
        return True
    arrays = (frame.server_power_w, frame.pdu_phase_current_a, frame.pdu_bank_current_a, frame.pdu_outlet_power_w)
    return any(a is not None and bool(np.isfinite(a).any()) for a in arrays)


def _first_out(values: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float) -> int:
    """Index of the first finite value outside [lo, hi] (NaN = no reading, allowed), or -1."""
    bad = ((values < lo) | (values > hi)) & np.isfinite(values)
    return int(np.flatnonzero(bad)[0]) if bad.any() else -1


class FrameChecker:
    """Per-site bounds, computed once, and per-source state (sequence, last readings)."""

    def __init__(self, site: Site, settings: PlausibilitySettings | None = None) -> None:
        self.site = site
        self.s = settings or PlausibilitySettings()
        rated, _ = site.limits_w("normal")
        self.pdu_rated_w = rated[site.rack_pdu].astype(np.float64)  # (n_racks, 2)
        self.gpu_max_w = site.gpu_max_w.astype(np.float64) * self.s.gpu_power_factor
        self.server_max_w = np.array([site.server_types[t].rating_w for t in site.server_type],
                                     dtype=np.float64) * self.s.server_power_factor
        self.layout = RackLayout(site)
        self._rack_gpus = [np.arange(site.rack_gpu_start[r], site.rack_gpu_start[r + 1]) for r in range(site.n_racks)]
        self.sources: dict[tuple[str, str], _Source] = {}
        self.max_sources = max(64, site.n_racks * self.s.max_sources_per_rack)
        self.newest_s = -math.inf  # newest accepted event time (the event-time clock)
        self.counts = PlausibilityCounts()

    def check(self, frame: TelemetryFrame, now_s: float | None = None) -> Verdict:
        """The verdict on one decoded frame; `now_s` is the receiver's clock (None: event time)."""
        where = f"telemetry.frame {frame.rack}"
        key = (frame.rack, frame.source)
        src = self.sources.get(key)
        reason, cause = self._static(frame, where)
        if not reason:
            reason, cause = self._temporal(frame, where, src, now_s)
        if reason:
            self.counts.refused[cause] += 1
            return Verdict(None, reason)
        return self._admit(self._in_site_order(frame), where, key, src, None)

    def _in_site_order(self, frame: TelemetryFrame) -> TelemetryFrame:
        """A plausible frame with every GPU of its rack, in the site model's order (whole-rack frames are taken
        positionally downstream); any other frame as it is."""
        r = self.site.rack_index(frame.rack)
        lay = self.layout
        if frame.power_w.size != lay.n_gpus[r] or lay.canonical(r, frame.gpu_server, frame.gpu_slot):
            return frame
        pos, _ = lay.locate(r, frame.gpu_server, frame.gpu_slot)
        order = np.argsort(pos)
        return replace(frame, **{name: getattr(frame, name)[order] for name in _GPU_FIELDS
                                 if getattr(frame, name) is not None})

    def check_many(self, frames: Sequence[TelemetryFrame], now_s: float) -> list[Verdict]:
        """check() of each frame, in order, against one receiver clock. The checks of site, shape, ranges and
        clock (a dozen numpy calls on small arrays per frame) are made over the whole batch at once; a frame
        they flag goes through check() itself, so its verdict and reason are exactly check()'s. The stateful
        checks (sequence, jumps, stuck meters) run per frame, in order, as in check()."""
        suspect, gpu_w = self._batch_static(frames, now_s)
        out: list[Verdict] = []
        for i, frame in enumerate(frames):
            if suspect[i]:
                out.append(self.check(frame, now_s))
                continue
            key = (frame.rack, frame.source)
            src = self.sources.get(key)
            if src is not None:  # the source's vote for the event-time clock, as _temporal casts it
                src.claimed_s = max(src.claimed_s, frame.ts_s)
            out.append(self._admit(frame, f"telemetry.frame {frame.rack}", key, src, float(gpu_w[i])))
        return out

    def _batch_static(self, frames: Sequence[TelemetryFrame], now_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(frames _static or _temporal may refuse or check() may reorder, each frame's GPU power sum): a frame of
        another site or an unknown rack, any frame but a whole-rack one in the site model's order (a part of a rack,
        server power: checked by check() itself), any reading out of range, or a time too far from `now_s`."""
        site, s = self.site, self.s
        n = len(frames)
        suspect = np.zeros(n, dtype=bool)
        racks = np.zeros(n, dtype=np.int64)
        for i, f in enumerate(frames):
            try:
                r = site.rack_index(f.rack) if f.site == site.name else -1
            except KeyError:
                r = -1
            if r < 0 or f.power_w.size != site.rack_gpu_start[r + 1] - site.rack_gpu_start[r] or f.servers is not None:
                suspect[i] = True
                continue
            racks[i] = r
            lo_c, hi_c = s.inlet_c
            if any(math.isfinite(x) and not lo_c <= x <= hi_c for x in f.inlet_c):
                suspect[i] = True
        ok = np.flatnonzero(~suspect)
        gpu_w = np.zeros(n)
        if not ok.size:
            return suspect, gpu_w
        sel = [frames[i] for i in ok.tolist()]
        starts = np.concatenate(([0], np.cumsum([f.power_w.size for f in sel])[:-1]))
        gpus = np.concatenate([self._rack_gpus[r] for r in racks[ok].tolist()])
        gmax = self.gpu_max_w[gpus]
        # Whole-rack frames in the site model's order: a frame in another order is reordered by check().
        bad = np.concatenate([f.gpu_server for f in sel]) != self.layout.server_of[gpus]
        bad |= np.concatenate([f.gpu_slot for f in sel]) != self.layout.slot_of[gpus]
        for name, lo, hi in (("power_w", 0.0, gmax), ("limit_w", 0.0, gmax), ("temp_c", *s.gpu_temp_c)):
            v = np.concatenate([getattr(f, name) for f in sel])
            bad |= ((v < lo) | (v > hi)) & np.isfinite(v)
            if name == "power_w":
                gpu_w[ok] = np.add.reduceat(np.where(np.isnan(v), 0.0, v.astype(np.float64)), starts)
        flagged = np.logical_or.reduceat(bad, starts)
        pdu = np.array([f.pdu_power_w for f in sel], dtype=np.float64)
        flagged |= (((pdu < 0.0) | (pdu > self.pdu_rated_w[racks[ok]] * s.pdu_max_factor))
                    & np.isfinite(pdu)).any(axis=1)
        ahead = np.array([f.ts_s for f in sel]) - now_s
        flagged |= (ahead > s.max_ahead_s) | (-ahead > s.max_age_s)
        suspect[ok[flagged]] = True
        return suspect, gpu_w

    def _admit(self, frame: TelemetryFrame, where: str, key: tuple[str, str], src: _Source | None,
               gpu_w: float | None) -> Verdict:
        """A frame past the refusals: dropped as a duplicate, or accepted with its readings marked."""
        if src is not None and frame.seq <= src.seq and frame.ts_s <= src.ts_s:
            self.counts.duplicates += 1
            return Verdict(None, f"{where}: seq {frame.seq} from '{frame.source}' already seen (newest {src.seq})",
                           dropped=True)
        src = self._sequence(frame, key, src)
        marks = self._marks(frame, where, src, gpu_w)
        src.seq, src.ts_s = frame.seq, frame.ts_s
        self.newest_s = max(self.newest_s, frame.ts_s)
        self.counts.accepted += 1
        if not marks:
            return Verdict(frame)
        return Verdict(self._masked(frame, marks), marks=tuple(m for m, _ in marks))

    # ---- refusals -----------------------------------------------------------------------------
    def _static(self, frame: TelemetryFrame, where: str) -> tuple[str, str]:
        """Site, rack, shape and physical ranges: ("", "") when plausible."""
        site = self.site
        if frame.site != site.name:
            return f"{where}: site '{frame.site}', this worker rolls up '{site.name}'", "site"
        try:
            r = site.rack_index(frame.rack)
        except KeyError:
            return f"{where}: rack not in site '{site.name}'", "site"
        g0, g1 = int(site.rack_gpu_start[r]), int(site.rack_gpu_start[r + 1])
        gmax = self.gpu_max_w[g0:g1]
        if not self.layout.canonical(r, frame.gpu_server, frame.gpu_slot):  # a part of the rack: which GPUs
            pos, why = self.layout.locate(r, frame.gpu_server, frame.gpu_slot)
            if why:
                return f"{where} from '{frame.source}': {why}", "gpus"
            gmax = gmax[pos]
        reason, cause = self._servers(frame, where, r)
        if reason:
            return reason, cause
        for name, values, lo, hi in (("power_w", frame.power_w, 0.0, gmax), ("limit_w", frame.limit_w, 0.0, gmax),
                                     ("temp_c", frame.temp_c, *self.s.gpu_temp_c)):
            i = _first_out(values, lo, hi)
            if i >= 0:
                bound = hi[i] if isinstance(hi, np.ndarray) else hi
                return (f"{where}: field '{name}'[{i}] = {values[i]:g} outside [{lo:g}, {bound:g}] (sensor or "
                        f"hardware range)"), "range"
        inlets = np.asarray(frame.inlet_c, dtype=np.float64)
        i = _first_out(inlets, *self.s.inlet_c)
        if i >= 0:
            return f"{where}: field 'inlet_c'[{i}] = {inlets[i]:g} outside the sensor range {self.s.inlet_c}", "range"
        pdu = np.asarray(frame.pdu_power_w, dtype=np.float64)
        hi_w = self.pdu_rated_w[r] * self.s.pdu_max_factor
        i = _first_out(pdu, 0.0, hi_w)
        if i >= 0:
            return (f"{where}: field 'pdu_power_w'[{i}] = {pdu[i]:g} outside [0, {hi_w[i]:g}] "
                    f"({self.s.pdu_max_factor:g} x the PDU breaker's rating)"), "range"
        if not frame.power_w.size and not _carries_a_reading(frame):
            return (f"{where} from '{frame.source}': no reading (no GPU, PDU meter, inlet, server power or PDU "
                    f"current)"), "empty"
        return "", ""

    def _servers(self, frame: TelemetryFrame, where: str, r: int) -> tuple[str, str]:
        """A BMC's server power: each server in the rack, once, within its PSU rating's range."""
        if frame.servers is None or frame.server_power_w is None:
            return "", ""
        s0, n = int(self.site.rack_server_start[r]), int(self.layout.n_servers[r])
        srv = frame.servers.astype(np.int64)
        if (srv >= n).any():
            s = int(srv[srv >= n][0])
            return f"{where} from '{frame.source}': server {s} not in {frame.rack} ({n} servers)", "gpus"
        if np.unique(srv).size != srv.size:
            return f"{where} from '{frame.source}': field 'servers' = {srv.tolist()} names a server twice", "gpus"
        hi = self.server_max_w[s0 + srv]
        i = _first_out(frame.server_power_w, 0.0, hi)
        if i >= 0:
            return (f"{where}: field 'server_power_w'[{i}] = {frame.server_power_w[i]:g} outside [0, {hi[i]:g}] "
                    f"({self.s.server_power_factor:g} x the server's PSU rating)"), "range"
        return "", ""

    def _temporal(self, frame: TelemetryFrame, where: str, src: _Source | None,
                  now_s: float | None) -> tuple[str, str]:
        if src is not None:  # the source's vote for the event-time clock, accepted or not
            src.claimed_s = max(src.claimed_s, frame.ts_s)
        clock = "the receiver's clock"
        if now_s is None:
            if self.newest_s == -math.inf:
                return "", ""  # the first frame of a recording sets the event-time clock
            now_s, clock = self._event_clock(frame.ts_s), "event time"
        ahead = frame.ts_s - now_s
        if ahead > self.s.max_ahead_s:
            return (f"{where}: field 'ts_s' = {frame.ts_s:.3f} is {ahead:.1f} s ahead of {clock} (at most "
                    f"{self.s.max_ahead_s:g} s)"), "ahead"
        if -ahead > self.s.max_age_s:
            return (f"{where}: field 'ts_s' = {frame.ts_s:.3f} is {-ahead:.0f} s old (at most {self.s.max_age_s:g} s; "
                    f"older is a replay or a broken clock)"), "too_old"
        return "", ""

    def _event_clock(self, ts_s: float) -> float:
        """Newest accepted event time; when `ts_s` is further ahead, the median of the sources' claims."""
        now = self.newest_s
        if ts_s - now > self.s.max_ahead_s and self.sources:
            claims = np.fromiter((s.claimed_s for s in self.sources.values()), dtype=np.float64)
            now = max(now, float(np.median(claims)))
        return now

    # ---- sequence -----------------------------------------------------------------------------
    def _sequence(self, frame: TelemetryFrame, key: tuple[str, str], src: _Source | None) -> _Source:
        if src is None:
            if len(self.sources) >= self.max_sources:  # bounded: forget the least recently created source
                self.sources.pop(next(iter(self.sources)))
                self.counts.evicted += 1
            nan2 = [math.nan, math.nan]
            src = _Source(seq=frame.seq, ts_s=frame.ts_s, claimed_s=frame.ts_s, pdu_ref=list(nan2),
                          pdu_pending=list(nan2), pdu_pending_n=[0, 0], pdu_last=list(nan2), stuck_n=[0, 0],
                          stuck_gpu_w=list(nan2), inlet=[])
            self.sources[key] = src
            return src
        if frame.seq > src.seq + 1:
            self.counts.seq_gaps += frame.seq - src.seq - 1
        elif frame.seq <= src.seq:  # lower seq but newer event time: the source restarted its count
            self.counts.seq_resets += 1
        return src

    # ---- marks --------------------------------------------------------------------------------
    def _marks(self, frame: TelemetryFrame, where: str, src: _Source,
               gpu_w: float | None = None) -> list[tuple[str, tuple[str, int]]]:
        """(line, (field, index)) for every reading to take as invalid; updates the source's references."""
        s = self.s
        out: list[tuple[str, tuple[str, int]]] = []
        dt = frame.ts_s - src.ts_s
        consecutive = 0 < dt <= s.jump_max_intervals * frame.interval_s
        r = self.site.rack_index(frame.rack)
        if gpu_w is None:
            gpu_w = float(np.nansum(frame.power_w, dtype=np.float64))
        for f in range(2):
            v, rated = frame.pdu_power_w[f], float(self.pdu_rated_w[r, f])
            if not math.isfinite(v):
                continue
            ref = src.pdu_ref[f]
            stuck = self._pdu_stuck(src, f, v, rated, gpu_w)
            if self._pdu_jump(src, f, v, rated, consecutive):
                out.append((f"{where}: field 'pdu_power_w'[{f}] = {v:g} jumped from {ref:g} in {dt:g} s, "
                            f"more than the breaker's rating {rated:g} W: marked invalid", ("pdu_jump", f)))
            elif stuck:
                out.append((f"{where}: field 'pdu_power_w'[{f}] = {v:g} unchanged for {src.stuck_n[f]} frames while "
                            f"its GPUs' power moved: stuck meter, marked invalid", ("pdu_stuck", f)))
        inlets = list(frame.inlet_c)
        if consecutive and len(src.inlet) == len(inlets):
            max_step = s.inlet_jump_floor_c + s.inlet_max_rate_c_per_s * dt
            for i, (old, new) in enumerate(zip(src.inlet, inlets, strict=True)):
                if math.isfinite(old) and math.isfinite(new) and abs(new - old) > max_step:
                    out.append((f"{where}: field 'inlet_c'[{i}] = {new:g} moved {new - old:+g} C in {dt:g} s (at most "
                                f"{max_step:g}): marked invalid", ("inlet_jump", i)))
                    inlets[i] = old  # the reference stays the last plausible reading
        src.inlet = inlets
        for _, (cause, _i) in out:
            self.counts.marked[cause] += 1
        return out

    def _pdu_jump(self, src: _Source, f: int, v: float, rated: float, consecutive: bool) -> bool:
        ref = src.pdu_ref[f]
        if not (consecutive and math.isfinite(ref)) or abs(v - ref) <= rated:
            src.pdu_ref[f], src.pdu_pending_n[f] = v, 0
            return False
        pend = src.pdu_pending[f]
        same = math.isfinite(pend) and abs(v - pend) <= 0.1 * rated
        src.pdu_pending[f], src.pdu_pending_n[f] = v, (src.pdu_pending_n[f] + 1 if same else 1)
        if src.pdu_pending_n[f] >= self.s.jump_confirm_frames:  # a new level, seen in a row: it is real
            src.pdu_ref[f], src.pdu_pending_n[f] = v, 0
            return False
        return True

    def _pdu_stuck(self, src: _Source, f: int, v: float, rated: float, gpu_w: float) -> bool:
        same = v != 0.0 and v == src.pdu_last[f]  # 0 is a dead feed, not a stuck meter
        src.pdu_last[f] = v
        if not same:
            src.stuck_n[f], src.stuck_gpu_w[f] = 1, gpu_w
            return False
        src.stuck_n[f] += 1
        moved = abs(gpu_w - src.stuck_gpu_w[f]) > self.s.stuck_gpu_move_frac * rated
        return src.stuck_n[f] >= self.s.stuck_frames and moved

    @staticmethod
    def _masked(frame: TelemetryFrame, marks: list[tuple[str, tuple[str, int]]]) -> TelemetryFrame:
        pdu, inlet = list(frame.pdu_power_w), list(frame.inlet_c)
        for _, (cause, i) in marks:
            if cause.startswith("pdu"):
                pdu[i] = math.nan
            else:
                inlet[i] = math.nan
        return replace(frame, pdu_power_w=pdu, inlet_c=inlet)
