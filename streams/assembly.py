"""Per-rack assembly: the per-rack stage's view of a rack from the partial frames real collectors publish.

Real collectors publish parts of a rack, keyed by rack (collectors/README.md): NVML and DCGM one server's GPUs
per read (1 s, 10 s), SNMP one PDU's meter and inlets with no GPU (10 s), Redfish one server's input power from
its BMC. Only the digital twin's fleet publishes whole-rack frames. The roll-up (streams.rollup.frame_outputs,
streams.rack_stage.RackBatcher.outputs) takes whole-rack frames; this module turns parts into them.

State, per rack (only racks that have had a partial frame; a rack fed by whole-rack frames alone takes the
fast path: each frame is its own view, as before, and its newest frame is remembered in case parts arrive):
- per GPU: the newest reading (power, temperature, SM clock, enforced limit, utilization, throttle reasons)
  with its event time and its source's interval; a frame older than the held reading does not replace it;
- per feed: the newest finite PDU meter reading, its time, source and interval (a NaN from the source that
  gave the held reading clears it: that meter now has no reading; a NaN from another source is not about it);
- per source: its inlet readings; per server: its BMC input power.

Staleness, against the rack's newest GPU reading time (event time, so replay and live agree): a GPU reading
older than `gpu_stale_intervals` of its source's interval (3 s at 1 s) is missing, and a missing GPU is taken at
its last enforced limit, or its max (streams.rollup.rack_state), never 0; a meter, inlet or BMC reading older
than its own interval plus `meter_margin_s` (15 s for a PDU polled every 10 s) is dropped from the view.

When a view is emitted (its outputs: the rack's and its PDUs' aggregates and its RackSummary), only on a
frame that carries GPUs (a rack "reports" by its GPU sources):
- at once, when every GPU of the rack that is not known stale has a reading newer than the last view (a
  whole-rack frame always; the last server's frame of a second otherwise);
- else when a GPU frame of a newer window (`window_s`, the site stage's) arrives, the view of what was held
  is emitted first (a server that missed its read delays its rack by at most a window); except while a rack
  just seen (a worker starting, or taking the partition over) still waits for a server's first read, which
  would otherwise count at its max for a window.
A frame with no GPU (PDU, BMC) only updates the state: the next view carries it. So a PDU meter cannot make
a rack look fresh: a rack whose GPU collectors all stop emits nothing and the site stage estimates it (stale,
last reading plus a growing margin; streams/tree.py), while a rack with one silent server keeps reporting
with that server at its limit and `gpus_reporting` down.

A view's event time is the median of its fresh GPU readings' times, so one source ahead of the others (a clock
skewed within what the plausibility check allows) does not move the rack's time, nor the site stage's
watermark; a whole-rack frame's view has the frame's own time. Pure numpy, no I/O: the in-process engine
(per frame, `assembled_outputs`) and the streams worker (per batch, streams.rack_stage.rack_batch) share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from powerplane.rack_layout import RackLayout
from powerplane.schemas import LevelAggregate, RackSummary, TelemetryFrame
from powerplane.site import Site
from streams.rollup import NO_READING, Limits, frame_outputs

SOURCE = "assembled"  # the source of an assembled view (never on the wire: views are rolled up, not published)


@dataclass(frozen=True)
class AssemblySettings:
    window_s: float = 1.0  # the site stage's window (streams.tree.TreeSettings.window_s)
    gpu_stale_intervals: float = 3.0  # a GPU reading older than this many of its intervals is missing
    meter_margin_s: float = 5.0  # a meter, inlet or BMC reading is held for its own interval plus this
    max_inlet_sources: int = 16  # per rack: inlet sources held (the oldest is forgotten past it)


@dataclass
class AssemblyCounts:
    views: int = 0  # assembled views emitted (rolled up)
    held: int = 0  # partial frames taken into a rack's state without a view of their own
    racks: int = 0  # racks assembled from parts


class _Parts:
    """One rack's newest readings (see the module docstring)."""

    def __init__(self, n_gpus: int, n_servers: int) -> None:
        nan32 = np.full(n_gpus, np.nan, dtype=np.float32)
        self.power_w, self.temp_c, self.sm_clock_mhz = nan32.copy(), nan32.copy(), nan32.copy()
        self.limit_w, self.util = nan32.copy(), nan32
        self.throttle = np.full(n_gpus, NO_READING, dtype=np.uint32)
        self.has_throttle = False
        self.ts_s = np.full(n_gpus, -np.inf)
        self.interval_s = np.full(n_gpus, np.nan)
        self.updated = np.zeros(n_gpus, dtype=bool)  # since the last view
        self.gpu_interval_s = 1.0  # of the newest GPU frame: the view's interval
        self.born_s = math.inf  # first frame: a GPU never heard from waits for its first read this long
        self.meter_w = [math.nan, math.nan]
        self.meter_ts_s = [-math.inf, -math.inf]
        self.meter_src = ["", ""]
        self.meter_hold_s = [0.0, 0.0]
        self.inlets: dict[str, tuple[float, float, list[float]]] = {}  # source -> (time, hold, readings)
        self.server_w = np.full(n_servers, np.nan, dtype=np.float32)
        self.server_ts_s = np.full(n_servers, -np.inf)
        self.server_hold_s = np.zeros(n_servers)
        self.open_k: int | None = None  # window of the GPU readings not in a view yet
        self.seq = 0


class Assembler:
    """The per-rack assembly of a site (module docstring); `route` is the whole interface."""

    def __init__(self, site: Site, settings: AssemblySettings | None = None) -> None:
        self.site, self.s = site, settings or AssemblySettings()
        self.layout = RackLayout(site)
        self.n_gpus = self.layout.n_gpus.tolist()
        self.parts: dict[int, _Parts] = {}
        self.last_whole: dict[int, TelemetryFrame] = {}  # racks on the fast path: their newest frame
        self.counts = AssemblyCounts()

    def route(self, frame: TelemetryFrame) -> list[TelemetryFrame]:
        """The whole-rack views to roll up for an accepted frame (FrameChecker: its GPUs are in its rack, once;
        a frame with all of them is in site order): the frame itself on the fast path, else 0, 1 or 2 views."""
        r = self.site.rack_index(frame.rack)
        if frame.power_w.size == self.n_gpus[r] and r not in self.parts:
            last = self.last_whole.get(r)
            if last is None or frame.ts_s >= last.ts_s:
                self.last_whole[r] = frame
            return [frame]
        p = self.parts.get(r)
        if p is None:
            p = self.parts[r] = self._start(r)
        out: list[TelemetryFrame] = []
        has_gpus = frame.power_w.size > 0
        k = math.ceil(frame.ts_s / self.s.window_s) - 1  # the tree's window of this time
        if has_gpus and p.open_k is not None and k > p.open_k and not self._first_reads_due(p):
            out.append(self._view(r, p))  # a newer window: what was held goes first
        self._apply(r, p, frame)
        if has_gpus:
            p.open_k = k if p.open_k is None else p.open_k
            if self._complete(p):
                out.append(self._view(r, p))
        if not out:
            self.counts.held += 1
        return out

    def _start(self, r: int) -> _Parts:
        """A rack's state, from the whole-rack frame it had (already rolled up) when it has one."""
        self.counts.racks += 1
        p = _Parts(self.n_gpus[r], int(self.layout.n_servers[r]))
        last = self.last_whole.pop(r, None)
        if last is not None:
            self._apply(r, p, last)
            p.updated[:] = False
        return p

    def _apply(self, r: int, p: _Parts, f: TelemetryFrame) -> None:
        """Take a frame's readings where they are newer than the held ones."""
        ts = f.ts_s
        p.born_s = min(p.born_s, ts)
        if f.power_w.size:
            pos = (np.arange(f.power_w.size) if f.power_w.size == self.n_gpus[r]
                   else self.layout.locate(r, f.gpu_server, f.gpu_slot)[0])
            newer = ts >= p.ts_s[pos]
            g = pos[newer]
            for name in ("power_w", "temp_c", "sm_clock_mhz", "limit_w", "util"):
                getattr(p, name)[g] = getattr(f, name)[newer]
            if f.throttle_reasons is not None:
                p.throttle[g] = f.throttle_reasons[newer]
                p.has_throttle = True
            else:
                p.throttle[g] = NO_READING
            p.ts_s[g], p.interval_s[g], p.updated[g] = ts, f.interval_s, True
            if g.size and ts >= p.ts_s.max():
                p.gpu_interval_s = f.interval_s
        hold = f.interval_s + self.s.meter_margin_s
        for k, v in enumerate(f.pdu_power_w):
            if ts < p.meter_ts_s[k] or (not math.isfinite(v) and p.meter_src[k] != f.source):
                continue  # older than the held reading, or a feed this source does not meter
            p.meter_w[k], p.meter_ts_s[k], p.meter_src[k], p.meter_hold_s[k] = v, ts, f.source, hold
        held = p.inlets.get(f.source)
        if (f.inlet_c or held is not None) and (held is None or ts >= held[0]):
            p.inlets[f.source] = (ts, hold, list(f.inlet_c))
            if len(p.inlets) > self.s.max_inlet_sources:
                del p.inlets[min(p.inlets, key=lambda s: p.inlets[s][0])]
        if f.servers is not None and f.server_power_w is not None:
            srv = f.servers.astype(np.int64)
            newer = ts >= p.server_ts_s[srv]
            p.server_w[srv[newer]] = f.server_power_w[newer]
            p.server_ts_s[srv[newer]], p.server_hold_s[srv[newer]] = ts, hold

    def _gpu_bound_s(self, p: _Parts) -> np.ndarray:
        iv = np.where(np.isfinite(p.interval_s), p.interval_s, p.gpu_interval_s)
        return np.asarray(self.s.gpu_stale_intervals * iv, dtype=np.float64)

    def _waiting(self, p: _Parts) -> np.ndarray:
        """GPUs whose next read is due: fresh ones, and ones never heard from while the rack is younger than
        the bound (a worker that just started, or took the rack's partition over)."""
        seen = np.isfinite(p.ts_s)
        return np.asarray(float(p.ts_s.max()) - np.where(seen, p.ts_s, p.born_s) <= self._gpu_bound_s(p))

    def _complete(self, p: _Parts) -> bool:
        """Every GPU not known stale has a reading newer than the last view."""
        return bool((p.updated | ~self._waiting(p)).all())

    def _first_reads_due(self, p: _Parts) -> bool:
        """A young rack still waits for some server's first read: no view yet, or those GPUs would count at
        their max for a window (a spike at every start of the worker, and every partition it takes over)."""
        return bool((self._waiting(p) & ~np.isfinite(p.ts_s)).any())

    def _view(self, r: int, p: _Parts) -> TelemetryFrame:
        """The rack as a whole-rack frame: fresh readings, stale GPUs missing (NaN, limit held), stale meters,
        inlets and BMC readings dropped (module docstring)."""
        ref = float(p.ts_s.max())
        fresh = p.ts_s >= ref - self._gpu_bound_s(p)
        nan = np.float32(np.nan)
        meters = [v if ref - t <= h else math.nan
                  for v, t, h in zip(p.meter_w, p.meter_ts_s, p.meter_hold_s, strict=True)]
        inlets = [x for t, h, xs in p.inlets.values() if ref - t <= h for x in xs]
        srv = np.flatnonzero((ref - p.server_ts_s <= p.server_hold_s) & np.isfinite(p.server_w))
        g0, g1 = int(self.site.rack_gpu_start[r]), int(self.site.rack_gpu_start[r + 1])
        p.seq += 1
        view = TelemetryFrame(
            site=self.site.name, rack=self.site.rack_ids[r], ts_s=float(np.median(p.ts_s[fresh])),
            interval_s=p.gpu_interval_s, seq=p.seq, source=SOURCE, gpu_server=self.layout.server_of[g0:g1],
            gpu_slot=self.layout.slot_of[g0:g1], power_w=np.where(fresh, p.power_w, nan),
            temp_c=np.where(fresh, p.temp_c, nan), sm_clock_mhz=np.where(fresh, p.sm_clock_mhz, nan),
            limit_w=p.limit_w.copy(), util=np.where(fresh, p.util, nan), inlet_c=inlets, pdu_power_w=meters,
            throttle_reasons=np.where(fresh, p.throttle, np.uint32(NO_READING)).astype(np.uint32)
            if p.has_throttle else None,
            servers=srv.astype(np.uint16) if srv.size else None,
            server_power_w=p.server_w[srv].copy() if srv.size else None)
        p.updated[:] = False
        p.open_k = None
        self.counts.views += 1
        return view


def assembled_outputs(site: Site, limits: Limits, assembler: Assembler,
                      frame: TelemetryFrame) -> list[tuple[list[LevelAggregate], RackSummary]]:
    """The per-rack stage for one accepted frame (the in-process engine's reference): the outputs of each view
    the frame gives (streams.rollup.frame_outputs of it); none while a rack's parts are held."""
    return [frame_outputs(site, limits, v) for v in assembler.route(frame)]
