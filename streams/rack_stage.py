"""The per-rack stage over a batch of telemetry records: decode, check, roll up, in a few numpy calls per batch
instead of a few dozen per frame. Pure code, no I/O.

streams.assembly.assembled_outputs is the reference for one frame (the in-process engine uses it: the rack
views streams.assembly.Assembler makes of the frames, each through streams.rollup.frame_outputs); `rack_batch`
routes the frames through the same assembler and gives the same aggregates and summaries for a batch
(tests/unit/test_rack_stage.py keeps them equal, also on bad input). At 1,024 frames a second for the 100 MW
site the per-frame path spent most of the worker's CPU on numpy's per-call overhead over 72-GPU arrays; a worker
catching up a backlog needs the per-batch one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import msgpack
import numpy as np

from powerplane.plausibility import FrameChecker
from powerplane.schemas import LevelAggregate, RackSummaryBatch, SchemaError, TelemetryFrame
from powerplane.site import FEEDS, MODES, OTHER_IDLE_FRAC, IntArray, Site
from streams.assembly import Assembler, AssemblySettings
from streams.rollup import NO_READING, THERMAL_REASONS, Limits, feed_mode


@dataclass
class RackBatch:
    """What one batch of records gives: aggregates to publish (key, encoded value, event time), the summaries
    for the site stage, and what was refused (index into the batch, one-line reason) or dropped."""

    aggregates: list[tuple[bytes, bytes, float]] = field(default_factory=list)
    summaries: RackSummaryBatch | None = None
    refused: list[tuple[int, str]] = field(default_factory=list)
    dropped: int = 0  # duplicates (counted by the checker)
    marks: list[str] = field(default_factory=list)  # one line per reading marked invalid
    frames: int = 0  # frames taken (rolled up, or held by the assembly until their rack's view)
    views: int = 0  # rack views rolled up (a whole-rack frame is its own view)


class RackBatcher:
    """Per-site index arrays, computed once, that turn a batch of whole-rack frames into concatenated GPU and
    server arrays, and the per-rack assembly that makes whole-rack views of partial frames; `rack_batch` is the
    stage."""

    def __init__(self, site: Site, limits: Limits, assembly: AssemblySettings | None = None) -> None:
        self.site, self.limits = site, limits
        self.assembler = Assembler(site, assembly)
        self.server_start = site.rack_server_start.astype(np.int64)
        gs, ss = site.rack_gpu_start, site.rack_server_start
        self.gpu_max = [site.gpu_max_w[gs[r]:gs[r + 1]].astype(np.float64) for r in range(site.n_racks)]
        self.local_server = [(site.gpu_server[gs[r]:gs[r + 1]] - ss[r]).astype(np.int64) for r in range(site.n_racks)]
        self.n_servers = np.diff(ss).astype(np.int64)
        self.other_w = [site.server_other_w[ss[r]:ss[r + 1]] for r in range(site.n_racks)]
        self.psu_eff = [site.server_psu_eff[ss[r]:ss[r + 1]] for r in range(site.n_racks)]
        self.rack_level = site.rack_level.astype(np.int64)
        self.statics = [_RackStatics.of(site, limits, r) for r in range(site.n_racks)]
        self.shares = {m: [float(x) for x in site.feed_share(m)] for m in MODES}

    def rack_power_w(self, frames: Sequence[TelemetryFrame], racks: IntArray) -> tuple[np.ndarray, np.ndarray]:
        """(wall power of each frame's rack, GPUs reporting): Site.rack_input_w of every frame at once, missing
        GPUs at their enforced limit or their max, as streams.rollup.rack_state takes them."""
        rl = racks.tolist()
        sizes = np.array([f.power_w.size for f in frames], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        p = np.concatenate([f.power_w for f in frames]).astype(np.float64)
        limit = np.concatenate([f.limit_w for f in frames]).astype(np.float64)
        missing = ~np.isfinite(p)
        if missing.any():
            gmax = np.concatenate([self.gpu_max[r] for r in rl])
            p = np.where(missing, np.where(np.isfinite(limit), limit, gmax), p)
        util = np.concatenate([f.util for f in frames]).astype(np.float64)
        u = np.where(np.isfinite(util), util, 1.0)  # unknown activity: nameplate, conservative
        n_srv = self.n_servers[racks]
        srv_base = np.concatenate(([0], np.cumsum(n_srv)[:-1]))
        sid = np.concatenate([self.local_server[r] for r in rl]) + np.repeat(srv_base, sizes)
        total = int(n_srv.sum())
        gsum = np.bincount(sid, weights=p, minlength=total)
        n = np.bincount(sid, minlength=total)
        busy = np.bincount(sid, weights=u, minlength=total) / np.maximum(n, 1)
        other = np.concatenate([self.other_w[r] for r in rl]) * (OTHER_IDLE_FRAC + (1.0 - OTHER_IDLE_FRAC) * busy)
        per_server = (gsum + other) / np.concatenate([self.psu_eff[r] for r in rl])
        for i, f in enumerate(frames):  # a BMC's measured power is a floor on its server's (rollup.rack_state)
            if f.servers is not None and f.server_power_w is not None:
                at = srv_base[i] + f.servers.astype(np.int64)
                per_server[at] = np.fmax(per_server[at], f.server_power_w)
        reporting = sizes - np.add.reduceat(missing.astype(np.int64), starts)
        return np.add.reduceat(per_server, srv_base), reporting

    def outputs(self, frames: Sequence[TelemetryFrame]) -> tuple[list[tuple[bytes, bytes, float]], RackSummaryBatch]:
        """frame_outputs of every frame: (encoded rack and PDU aggregates, the summaries in one batch)."""
        site = self.site
        racks = np.array([site.rack_index(f.rack) for f in frames], dtype=np.int64)
        power_w, reporting = self.rack_power_w(frames, racks)
        starts = np.concatenate(([0], np.cumsum([f.power_w.size for f in frames])[:-1]))
        temps = np.concatenate([f.temp_c for f in frames]).astype(np.float64)
        temp_max = np.fmax.reduceat(temps, starts)  # NaN only where every GPU's reading is missing
        items: list[tuple[bytes, bytes, float]] = []
        inlet = np.full(len(frames), np.nan)
        throttled = _throttled(frames, starts)
        pack = msgpack.Packer(use_bin_type=True).pack
        head = {"schema": LevelAggregate.SCHEMA, "v": LevelAggregate.VERSION, "site": site.name}
        rows = zip(frames, racks.tolist(), power_w.tolist(), reporting.tolist(), temp_max.tolist(),
                   throttled.tolist(), strict=True)
        for i, (f, r, p_w, rep, tmax, thr) in enumerate(rows):
            finite = [x for x in f.inlet_c if x == x]  # NaN != NaN; inf is refused by the schema
            inlet_c = max(finite) if finite else None
            if inlet_c is not None:
                inlet[i] = inlet_c
            mode = feed_mode(f.pdu_power_w)
            rack = _Rack(f, self.statics[r], p_w, rep, mode, inlet_c, tmax if tmax == tmax else None, thr)
            items += rack.aggregates(pack, head, self.shares[mode])
        summaries = RackSummaryBatch(
            site=site.name, racks=[f.rack for f in frames], ts_s=np.array([f.ts_s for f in frames]),
            power_w=power_w, pdu_a_w=np.array([f.pdu_power_w[0] for f in frames], dtype=np.float64),
            pdu_b_w=np.array([f.pdu_power_w[1] for f in frames], dtype=np.float64),
            gpus_expected=np.array([f.power_w.size for f in frames], dtype=np.uint32),
            gpus_reporting=reporting.astype(np.uint32), gpus_throttled=throttled, inlet_c=inlet,
            gpu_temp_max_c=temp_max)
        return items, summaries


def _throttled(frames: Sequence[TelemetryFrame], starts: np.ndarray) -> np.ndarray:
    """GPUs in thermal slowdown per frame, as rack_state counts them (0 where a frame has no reasons)."""
    n = len(frames)
    has = [f.throttle_reasons is not None for f in frames]
    if not any(has):
        return np.zeros(n, dtype=np.uint32)
    tr = np.concatenate([f.throttle_reasons if f.throttle_reasons is not None
                         else np.full(f.power_w.size, NO_READING, dtype=np.uint32) for f in frames])
    hot = ((tr & THERMAL_REASONS) != 0) & (tr != NO_READING)
    return np.add.reduceat(hot.astype(np.uint32), starts).astype(np.uint32)


@dataclass(frozen=True)
class _RackStatics:
    """What a rack's aggregates take from the site model, as plain Python values (numpy scalar indexing, a
    dozen times per frame, was a tenth of the stage)."""

    rated_w: dict[str, float]  # the rack level's, per feed mode
    derated_w: dict[str, float]
    pdus: tuple[tuple[str, float, float], ...]  # per feed: PDU level id, derated and rated limit (normal mode)

    @classmethod
    def of(cls, site: Site, limits: Limits, r: int) -> _RackStatics:
        lvl = int(site.rack_level[r])
        pdus = tuple((site.level_ids[p], float(limits.derated["normal"][p]), float(limits.rated["normal"][p]))
                     for p in (int(site.rack_pdu[r, k]) for k in range(len(FEEDS))))
        return cls(rated_w={m: float(limits.rated[m][lvl]) for m in MODES},
                   derated_w={m: float(limits.derated[m][lvl]) for m in MODES}, pdus=pdus)


@dataclass
class _Rack:
    """One frame's rolled-up values, from which its rack's and PDUs' aggregates are encoded."""

    f: TelemetryFrame
    statics: _RackStatics
    power_w: float
    reporting: int
    mode: str
    inlet_c: float | None
    temp_max_c: float | None
    throttled: int

    def aggregates(self, pack: Callable[[object], bytes], head: dict[str, object],
                   share: list[float]) -> list[tuple[bytes, bytes, float]]:
        """The rack's and its PDUs' LevelAggregate records, encoded, as streams.rollup.frame_outputs makes them.
        The wire maps are built here directly (LevelAggregate.to_wire's layout: three records a frame, and the
        generic path was a third of the stage's time); tests/unit/test_rack_stage.py decodes them against
        frame_outputs."""
        f, st, mode = self.f, self.statics, self.mode
        expected = f.power_w.size
        ts_s, window_s = float(f.ts_s), float(f.interval_s)
        rack = {**head, "level": f.rack, "kind": "rack", "ts_s": ts_s, "window_s": window_s,
                "power_w": self.power_w, "limit_w": st.derated_w[mode], "rated_w": st.rated_w[mode], "mode": mode,
                "gpus_expected": expected, "gpus_reporting": self.reporting}
        if self.inlet_c is not None:
            rack["inlet_c"] = float(self.inlet_c)
        if self.temp_max_c is not None:
            rack["gpu_temp_max_c"] = self.temp_max_c
        rack["gpus_throttled"] = self.throttled
        out = [(f.rack.encode(), pack(rack), ts_s)]
        for k, (level, derated_w, rated_w) in enumerate(st.pdus):
            metered = f.pdu_power_w[k]
            est = self.power_w * share[k]
            agg = {**head, "level": level, "kind": "pdu", "ts_s": ts_s, "window_s": window_s,
                   "power_w": float(metered) if metered == metered else est, "limit_w": derated_w,
                   "rated_w": rated_w, "mode": mode, "gpus_expected": expected, "gpus_reporting": self.reporting}
            if metered == metered:  # not NaN: the PDU has a meter
                agg["metered_w"] = float(metered)
                agg["gap_w"] = float(metered) - est  # a bad meter or unmonitored load
            out.append((level.encode(), pack(agg), ts_s))
        return out


def rack_batch(batcher: RackBatcher, checker: FrameChecker, values: Sequence[bytes], now_s: float) -> RackBatch:
    """The per-rack stage over `values` (encoded telemetry frames, in partition order): each decoded, checked
    against the site and the receiver's clock `now_s`, assembled into rack views (streams.assembly: a
    whole-rack frame is its own) and rolled up."""
    out = RackBatch()
    decoded = TelemetryFrame.decode_many(values)
    idx = [i for i, d in enumerate(decoded) if not isinstance(d, SchemaError)]
    for i, d in enumerate(decoded):
        if isinstance(d, SchemaError):
            out.refused.append((i, str(d)))
    frames = [d for d in decoded if not isinstance(d, SchemaError)]
    views: list[TelemetryFrame] = []
    where: list[int] = []  # the record each view came from (the frame that completed it)
    route = batcher.assembler.route
    verdicts = checker.check_many(frames, now_s)
    for i, v in zip(idx, verdicts, strict=True):
        if v.frame is not None:
            out.marks += v.marks
            try:
                got = route(v.frame)
            except Exception as e:  # a bug, not bad input: that frame is lost, said so, the others go on
                out.refused.append((i, f"internal error: {type(e).__name__}: {e}"))
                continue
            out.frames += 1
            views += got
            where += [i] * len(got)
        elif v.dropped:
            out.dropped += 1
        else:
            out.refused.append((i, v.reason))
    if views:
        try:
            out.aggregates, out.summaries = batcher.outputs(views)
            out.views = len(views)
        except Exception:  # a bug, not bad input (refused above): only the views it fails on are lost
            _outputs_one_by_one(batcher, views, where, out)
    out.refused.sort()
    return out


def _outputs_one_by_one(batcher: RackBatcher, views: list[TelemetryFrame], where: list[int], out: RackBatch) -> None:
    """outputs() a view at a time, after it failed on the batch: the records whose views it fails on are refused
    with the error (dead-lettered by the worker), the others rolled up. The checker's and the assembly's state
    already count them all."""
    parts: list[RackSummaryBatch] = []
    failed: set[int] = set()
    for i, view in zip(where, views, strict=True):
        try:
            items, summary = batcher.outputs([view])
        except Exception as e:
            if i not in failed:
                failed.add(i)
                out.refused.append((i, f"internal error: {type(e).__name__}: {e}"))
            continue
        out.aggregates += items
        parts.append(summary)
        out.views += 1
    out.frames -= len(failed)
    if parts:
        out.summaries = RackSummaryBatch(
            site=parts[0].site, racks=[r for p in parts for r in p.racks],
            **{f: np.concatenate([getattr(p, f) for p in parts]) for f in _SUMMARY_COLUMNS})


_SUMMARY_COLUMNS = tuple(f.name for f in fields(RackSummaryBatch) if f.name not in ("site", "racks"))
