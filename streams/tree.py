"""Site stage, part 1: event-time windows over rack summaries and the roll-up of each closed window up the
power tree (PDU -> RPP -> UPS lineup -> utility feed -> site) and the cooling tree (rack -> row -> hall, zone).

Pure numpy, no I/O: the faust agent and the in-process engine both call it. Long because the windows, the
roll-up of a closed window and its checkpoint share one state; the watermark rule is in streams.watermark.

Time: a window k covers event time (k*W, (k+1)*W]; a frame's time is the end of its sample interval.
The watermark (streams.watermark) is the oldest newest-frame time over the racks that are reporting, judged
per source (pp.telemetry partition), so a partition the worker has not caught up on is "behind", not "silent";
never more than the lateness bound behind the head (the k-th newest rack time: one future-dated frame moves
nothing), and the backlog bound while the worker is behind: it says it has a backlog, or the head lags its
clock by more than `behind_after_s` (or did before the batch: a catch-up batch can bring part of the site to the
present while the rest is on its way). A window closes once the watermark
passes its end (or, when no data arrives at all and the input has no backlog, once the clock does: `advance`).
A frame further ahead than `max_future_s` of the head (or, when set, `max_skew_s` of the receiver's clock) is
refused and counted (`future_frames`). A frame for a closed window is late when it is newer than its
rack's newest frame (a redelivery, e.g. after a restart, is counted in `repeated_frames` instead): it is counted
and still refreshes the rack's last known reading (so it is not lost), but closed windows are not re-opened.

A rack with no frame in a closed window is estimated, never zero and never simply rated:
  estimate = min(rated, last + margin * ramp),  margin = max(recent peak - last, estimate_margin * last),
  ramp = clip((age - stale_after_s) / estimate_ramp_s, 0, 1)
(the recent peak decays towards the readings with `peak_tau_s`): its last reading while fresh-ish, then a
margin that grows slowly with age, bounded by what the rack itself drew lately. A frame whose GPUs are all
silent but whose PDU meters read is taken at the meters' sum (the meters are live evidence, rated power is
not). A rack never heard from counts at the 90th percentile of the other racks' load per rated watt times its
rating (rated only when nothing at all has reported). Meters, inlets and GPU counts are carried for
`rated_after_s`; `racks_rated` counts the racks past it (no usable reading: estimated).

Feed state: a feed level (utility, UPS lineup, RPP, PDU) is dark when the PDU meters beneath it read less than
`dark_fraction` of what its racks' load would put on it. Limits are then those of the site with those levels dark
(powerplane.site.Site.limits_dark_w): the surviving side's levels keep their rating and carry everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from powerplane.schemas import RackSummary, RackSummaryBatch
from powerplane.site import FEED_KINDS, FEEDS, KIND, FloatArray, IntArray, Site
from streams.rollup import LOST_FEED_FRACTION, MIN_METERED_W, UnknownRack
from streams.watermark import completeness_s, head_s

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class TreeSettings:
    window_s: float = 1.0
    # A window closes once every rack that is reporting has sent a frame past its end (completeness), or at
    # the latest when the newest event time is this far past its end (the lateness bound).
    lateness_s: float = 5.0
    stale_after_s: float = 3.0  # a rack whose newest reading is older than this is reported stale
    rated_after_s: float = 15.0  # past this a stale rack's meters and inlet are no longer carried
    # While the worker has a backlog (catch-up, after a restart or a broker outage) a lagging partition is
    # waited for up to this far behind the head: it is behind, not silent.
    backlog_lateness_s: float = 60.0
    # Behind also when the head lags the receiver's clock by more than this: the input is old news (a fleet
    # replaying its spool after a broker outage), so a source lagging the head is in transit, not silent.
    behind_after_s: float = 10.0
    # ... and for this long after a backlog clears (receiver's clock): producers that spooled through an
    # outage reconnect and deliver their partitions unevenly for a while (the fleet resent its first frame
    # 12 s after the broker was back, on a loaded machine), so a source lagging the head is still presumed in
    # transit and the worker does not close windows by the clock. Windows then wait up to backlog_lateness_s
    # for a lagging source, which costs time only then.
    backlog_grace_s: float = 20.0
    # A frame further ahead of the receiver's clock than this is refused (future_frames). None: no clock check
    # here (the default: the decode-time checks own the clock skew, and the twin runs faster than real time in
    # tests); the head check below always applies.
    max_skew_s: float | None = None
    max_future_s: float = 300.0  # without a clock: a frame further ahead of the head is refused
    estimate_margin: float = 0.1  # a stale rack's margin: at least this share of its last reading
    estimate_ramp_s: float = 60.0  # the margin grows over this much age past stale_after_s
    peak_tau_s: float = 300.0  # a rack's recent peak decays towards its readings with this time constant
    dark_fraction: float = 0.05  # meters under a feed level below this share of its expected load: dark
    min_expected_w: float = 2_000.0  # below this a level is too idle to tell dark from quiet
    dark_quorum: float = 0.3  # share of a level's metered load that must read dark for the level to be dark
    max_open_windows: int = 96  # bound on windows held open (a clock jump cannot grow memory)

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and 0 <= self.lateness_s <= self.backlog_lateness_s
                and 0 <= self.stale_after_s <= self.rated_after_s and self.estimate_ramp_s > 0):
            raise ValueError("tree settings: need window_s > 0, 0 <= lateness_s <= backlog_lateness_s, "
                             "0 <= stale_after_s <= rated_after_s, estimate_ramp_s > 0")


@dataclass
class Snapshot:
    """Every level of the site over one closed window."""

    ts_s: float  # end of the window
    window_s: float
    load_w: FloatArray  # per level
    rated_w: FloatArray  # per level, with the dark levels' ratings at 0
    limit_w: FloatArray  # derated (zones: cooling capacity)
    dark: BoolArray  # feed levels that carry nothing (lost or tripped upstream)
    dark_top: BoolArray  # dark levels whose parent is not dark: where the loss happened
    dark_share: FloatArray  # per feed level: share of its metered load reading dark (a loss spreading)
    gap_w: FloatArray  # meter minus the sum of the children, where the level has a meter (PDUs); NaN else
    racks_stale: IntArray  # per level: racks beneath with no fresh reading
    racks_rated: IntArray  # per level: racks beneath with no usable reading (past rated_after_s: estimated)
    age_s: FloatArray  # per level: oldest reading used
    inlet_c: FloatArray  # per level: hottest inlet beneath (racks, rows, halls, zones); NaN where none
    gpu_temp_max_c: FloatArray
    gpus_throttled: IntArray
    gpus_expected: IntArray
    gpus_reporting: IntArray
    rack_fresh: BoolArray  # per rack: a frame arrived in this window
    rack_age_s: FloatArray  # per rack
    rack_mode: list[str]
    site_mode: str  # normal, A-lost, B-lost, or degraded (part of a feed dark)
    late_frames: int = 0
    # Wall clock at close minus the window's end: how far the worker is behind (None without a clock). A rack
    # that is silent shows in racks_stale / rack_age_s instead.
    lag_s: float | None = None
    backlog: bool = False  # closed while the worker had a backlog (its inputs may be behind the wall clock)
    # The PDU meters' own verdict when a facility signal (a UPS on battery, streams.feed_signals) also darkened
    # levels in this window; `dark` is then both. None: no signal applied, `dark` is the meters' verdict.
    meter_dark: BoolArray | None = None


_MODE_CODE = {"normal": 0, "A-lost": 1, "B-lost": 2}
_MODE_NAME = ("normal", "A-lost", "B-lost")
_SHARES = np.array([[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]])


@dataclass
class _Window:
    power_sum_w: FloatArray
    count: IntArray
    # The newest frame of each rack within this window: meter A, meter B, inlet, GPU temperature, GPUs
    # throttled, GPUs reporting, and its time. A window closes on its own readings, not on those of a
    # later second that happened to arrive in the same batch (the result must not depend on batching).
    latest: FloatArray
    latest_ts_s: FloatArray

    @classmethod
    def empty(cls, n: int) -> _Window:
        return cls(np.zeros(n), np.zeros(n, dtype=np.int64), np.full((n, 6), np.nan), np.full(n, -np.inf))


@dataclass
class _Readings:
    """Each rack's readings in one closed window (see TreeWindows._readings)."""

    window: _Window
    fresh: BoolArray  # a frame arrived in this window
    age_s: FloatArray  # of the reading used: 0 when fresh, inf when never seen
    usable: BoolArray  # fresh, or its last reading young enough to carry
    own: BoolArray  # its newest frame in this window carries readings
    power_w: FloatArray  # window mean, else the bounded estimate (module docstring)
    meters_w: FloatArray  # (n_racks, 2) meters A and B; NaN where none

    def latest(self, col: int, last: FloatArray, blank: float) -> FloatArray:
        """Column `col` of the window's newest frame, else the last reading while usable, else `blank`."""
        return np.where(self.own, self.window.latest[:, col], np.where(self.usable, last, blank))


@dataclass
class _Topology:
    """Index arrays derived once from the site model."""

    n_levels: int
    n_racks: int
    rack_level: IntArray
    rack_rated_w: FloatArray
    rack_pdu: IntArray
    feed_up: list[tuple[IntArray, IntArray]]  # per kind bottom-up: (levels of that kind with a parent, parents)
    feed_mask: BoolArray
    pdu_levels: IntArray
    member: list[IntArray]  # rack -> row, hall, zone level
    site_levels: IntArray
    parent: IntArray
    racks_under: list[npt.NDArray[np.int64]] = field(default_factory=list)

    @classmethod
    def of(cls, site: Site) -> _Topology:
        feed_up = []
        for kind in ("pdu", "rpp", "ups"):
            lv = site.levels_of_kind(kind)
            p = site.level_parent[lv]
            feed_up.append((lv[p >= 0], p[p >= 0]))
        feed_mask = np.isin(site.level_kind, [KIND[k] for k in FEED_KINDS])
        members = [m for m in (site.rack_row, site.rack_hall, site.rack_zone)]
        return cls(n_levels=len(site.level_ids), n_racks=site.n_racks, rack_level=site.rack_level,
                   rack_rated_w=site.level_rated_w[site.rack_level].astype(np.float64), rack_pdu=site.rack_pdu,
                   feed_up=feed_up, feed_mask=feed_mask, pdu_levels=site.levels_of_kind("pdu"),
                   member=members, site_levels=site.levels_of_kind("site"), parent=site.level_parent)

    def up_feed(self, per_pdu: FloatArray) -> FloatArray:
        """Sum values given at PDU levels up the feed chains (PDU -> RPP -> UPS -> utility)."""
        out = per_pdu.copy()
        for lv, p in self.feed_up:
            out += np.bincount(p, weights=out[lv], minlength=self.n_levels)
        return out

    def up_racks(self, per_rack: FloatArray, out: FloatArray, how: str = "sum") -> FloatArray:
        """Rack values onto rack, row, hall, zone and site levels (sum or max)."""
        out[self.rack_level] = per_rack
        for m in self.member:
            ok = m >= 0
            if how == "sum":
                out += np.bincount(m[ok], weights=per_rack[ok], minlength=self.n_levels)
            else:
                np.fmax.at(out, m[ok], per_rack[ok])
        if how == "sum":
            out[self.site_levels] = per_rack.sum()
        else:
            out[self.site_levels] = np.nanmax(per_rack) if np.isfinite(per_rack).any() else np.nan
        return out

    def up_pdu_racks(self, per_rack_feed: FloatArray, how: str = "sum") -> FloatArray:
        """(n_racks, 2) values onto the racks' PDUs, then up the feed chains."""
        per_pdu = np.zeros(self.n_levels)
        for f in range(len(FEEDS)):
            if how == "sum":
                per_pdu += np.bincount(self.rack_pdu[:, f], weights=per_rack_feed[:, f], minlength=self.n_levels)
            else:
                np.fmax.at(per_pdu, self.rack_pdu[:, f], per_rack_feed[:, f])
        if how == "sum":
            return self.up_feed(per_pdu)
        for lv, p in self.feed_up:
            np.fmax.at(per_pdu, p, per_pdu[lv])
        return per_pdu


class TreeWindows:
    """Windows rack summaries by event time and rolls each closed window up the site's trees."""

    def __init__(self, site: Site, settings: TreeSettings = TreeSettings(),
                 rack_source: IntArray | None = None) -> None:
        """`rack_source`: the source (pp.telemetry partition) each rack's frames come through; None: one source."""
        self.site = site
        self.settings = settings
        self.topo = _Topology.of(site)
        n = site.n_racks
        src = np.zeros(n, dtype=np.int64) if rack_source is None else np.asarray(rack_source, dtype=np.int64)
        if src.shape != (n,) or (src < 0).any():
            raise ValueError(f"tree: rack_source needs one source index >= 0 per rack ({n}), got {src.shape}")
        self.rack_source = src
        self.n_sources = int(src.max()) + 1 if n else 1
        self.windows: dict[int, _Window] = {}
        self.closed_through: int | None = None  # highest closed window index
        self.max_ts_s = -math.inf  # newest frame taken (not the head: one rack can set it)
        self.first_ts_s = math.inf
        # Last known reading per rack, whatever window it came in.
        self.last_ts_s = np.full(n, np.nan)  # newest reading
        self.last_frame_ts_s = np.full(n, np.nan)  # newest frame, with or without readings (completeness)
        self.last_power_w = np.full(n, np.nan)
        self.peak_w = np.full(n, np.nan)  # recent peak (decays towards the readings): a stale rack's margin
        self.last_meter_w = np.full((n, 2), np.nan)
        self.last_inlet_c = np.full(n, np.nan)
        self.last_temp_c = np.full(n, np.nan)
        self.last_throttled = np.zeros(n, dtype=np.int64)
        self.last_reporting = np.zeros(n, dtype=np.int64)
        self.gpus_expected = np.diff(site.rack_gpu_start).astype(np.int64)
        self.late_frames = 0
        self.repeated_frames = 0  # frames not newer than their rack's newest, for a closed window: redelivered
        self.future_frames = 0  # frames refused for being ahead of the clock (or of the head)
        self.dropped_windows = 0  # windows forced closed by the bound on open windows
        self.wall_s: float | None = None  # the receiver's clock at the latest call, when the caller has one
        self.backlog = False  # the caller's word at the latest call: its input has records not yet read
        self.backlog_wall_s = -math.inf  # receiver's clock when a backlog was last known (backlog_grace_s)
        self.resumed = False  # state loaded from a checkpoint, no frame taken since
        self.resume_skipped = 0  # windows the predecessor had published after its last checkpoint
        self._limits_cache: dict[bytes, tuple[FloatArray, FloatArray]] = {}
        # Facility signal (streams.feed_signals): window end -> feed levels a UPS says are lost, not yet seen by
        # the meters (None: none). Set by the site stage; counted as dark PDUs beneath them in the quorum below.
        self.signal_dark: Callable[[float], BoolArray | None] | None = None

    @property
    def head_s(self) -> float:
        """Event time most racks have reached (streams.watermark.head_s)."""
        return head_s(self.last_frame_ts_s)

    # ---- input -----------------------------------------------------------------------------------
    def add(self, s: RackSummary, wall_s: float | None = None, backlog: bool = False) -> list[Snapshot]:
        return self.add_batch(RackSummaryBatch.of([s]), wall_s, backlog)

    def add_batch(self, b: RackSummaryBatch, wall_s: float | None = None, backlog: bool = False) -> list[Snapshot]:
        """Take a batch of rack summaries (vectorized); return the windows this completes.

        `wall_s`: the receiver's clock (refuses frames from the future, gives each closed window its lag);
        `backlog`: the caller has input not read yet (see streams.watermark)."""
        self.wall_s, self.backlog = wall_s, backlog
        if not b.racks:
            return []
        # The head lagging the clock before this batch: the batch is a catch-up, however near the present it
        # brings the head (see _watermark).
        caught_up_from = self.head_s if wall_s is not None else -math.inf  # only a clock can say "behind"
        try:
            r = np.array([self.site.rack_index(x) for x in b.racks], dtype=np.int64)
        except KeyError as e:
            raise UnknownRack(f"rack.summaries: {e.args[0]}") from None
        order = np.argsort(b.ts_s, kind="stable")  # oldest first, so the newest of a rack is assigned last
        r, ts = r[order], b.ts_s[order]
        ok = self._not_future(r, ts, wall_s)
        if not ok.all():
            order, r, ts = order[ok], r[ok], ts[ok]
            if not r.size:
                return []
        prev_newest = self.last_frame_ts_s[r]
        np.fmax.at(self.last_frame_ts_s, r, ts)
        self.first_ts_s = min(self.first_ts_s, float(ts[0]))
        a, bb = b.pdu_a_w[order], b.pdu_b_w[order]
        reporting = b.gpus_reporting[order]
        # A frame with no reading at all (a dropout upstream) says nothing about power: the rack stays at its
        # last reading and ages, instead of jumping to every GPU at its limit. One whose GPUs are silent but
        # whose PDU meters read is taken at the meters (live evidence), not at every GPU at its limit.
        metered = np.isfinite(a) | np.isfinite(bb)
        reading = ~((reporting == 0) & ~metered)
        power = np.where((reporting == 0) & metered, np.nansum(np.column_stack([a, bb]), axis=1), b.power_w[order])
        self._remember(r, ts, reading, power, a, bb, reporting, b, order)
        k = np.ceil(ts / self.settings.window_s).astype(np.int64) - 1  # ts is the end of the sample's interval
        closed = reading & (k <= (self.closed_through if self.closed_through is not None else -(2 ** 62)))
        repeated = closed & (ts <= prev_newest)  # not newer than what the rack had sent: a redelivery
        late = closed & ~repeated
        self.late_frames += int(late.sum())
        self.repeated_frames += int(repeated.sum())
        use = reading & ~closed
        latest = np.column_stack([a, bb, b.inlet_c[order], b.gpu_temp_max_c[order],
                                  b.gpus_throttled[order].astype(np.float64), reporting.astype(np.float64)])
        if self.resumed and use.any():
            self._skip_published(int(k[use].min()))
        self._into_windows(k, use, r, ts, power, latest)
        if (~closed).any():
            self.max_ts_s = max(self.max_ts_s, float(ts[~closed].max()))
        out = self._close_through(self._watermark(caught_up_from))
        while len(self.windows) > self.settings.max_open_windows:  # a clock far ahead: close the oldest
            out += [self._close(min(self.windows))]
            self.dropped_windows += 1
        return out

    def _not_future(self, r: IntArray, ts: FloatArray, wall_s: float | None) -> BoolArray:
        """Frames not too far ahead: of the receiver's clock (plus the skew allowed) when there is one, and of
        the head as this batch would move it (so a rack cannot pull it; the whole site moving on can)."""
        st = self.settings
        newest = self.last_frame_ts_s.copy()
        np.fmax.at(newest, r, ts)
        limit = head_s(newest) + st.max_future_s
        if wall_s is not None and st.max_skew_s is not None:
            limit = min(limit, wall_s + st.max_skew_s)
        ok: BoolArray = ~(ts > limit)
        self.future_frames += int((~ok).sum())
        return ok

    def _remember(self, r: IntArray, ts: FloatArray, reading: BoolArray, power: FloatArray, a: FloatArray,
                  bb: FloatArray, reporting: npt.NDArray[Any], b: RackSummaryBatch, order: IntArray) -> None:
        """Each rack's newest reading, and its recent peak."""
        newer = reading & ~(ts <= self.last_ts_s[r])  # NaN (no reading yet) compares False: newer
        i = np.flatnonzero(newer)
        ri = r[i]
        if ri.size:  # the recent peak decays towards the last reading over the time since it, then takes the new
            dt = np.maximum(ts[i] - np.nan_to_num(self.last_ts_s[ri], nan=-np.inf), 0.0)
            decay = np.exp(-dt / self.settings.peak_tau_s)
            last = self.last_power_w[ri]
            self.peak_w[ri] = np.where(np.isfinite(self.peak_w[ri]), last + (self.peak_w[ri] - last) * decay, np.nan)
            np.fmax.at(self.peak_w, ri, power[i])
        self.last_ts_s[ri] = ts[i]
        self.last_power_w[ri] = power[i]
        self.last_meter_w[ri, 0] = a[i]
        self.last_meter_w[ri, 1] = bb[i]
        self.last_inlet_c[ri] = b.inlet_c[order][i]
        self.last_temp_c[ri] = b.gpu_temp_max_c[order][i]
        self.last_throttled[ri] = b.gpus_throttled[order][i]
        self.last_reporting[ri] = reporting[i]

    def _into_windows(self, k: IntArray, use: BoolArray, r: IntArray, ts: FloatArray, power: FloatArray,
                      latest: FloatArray) -> None:
        for kk in np.unique(k[use]).tolist():
            sel = use & (k == kk)
            w = self.windows.get(kk)
            if w is None:
                w = self.windows[kk] = _Window.empty(self.topo.n_racks)
            np.add.at(w.power_sum_w, r[sel], power[sel])
            np.add.at(w.count, r[sel], 1)
            j = np.flatnonzero(sel)
            j = j[ts[j] >= w.latest_ts_s[r[j]]]
            if j.size:  # the newest per rack: ts ascending, so the last occurrence of each rack
                rr = r[j][::-1]
                _, first = np.unique(rr, return_index=True)
                pick = j[::-1][first]
                w.latest[r[pick]] = latest[pick]
                w.latest_ts_s[r[pick]] = ts[pick]

    def _skip_published(self, first_k: int) -> None:
        """After a resume: the windows between the checkpoint and the first frame read now were closed and
        published by the worker before (it commits its input offsets only after taking them), all but the one
        just before that frame, which it may have held open when it stopped: that one is closed again. Re-closing
        the others from the checkpoint would publish every rack stale, and page telemetry loss, for data that
        was fine."""
        self.resumed = False
        first_k -= 1  # the predecessor's possibly open window
        if self.closed_through is None or first_k <= self.closed_through + 1:
            return
        for kk in [kk for kk in self.windows if kk < first_k]:
            del self.windows[kk]
        self.resume_skipped += first_k - 1 - self.closed_through
        self.closed_through = first_k - 1

    def _watermark(self, head_before_s: float = -math.inf) -> float:
        """Event time up to which the windows are complete (see the module docstring). `head_before_s`: the
        head before the batch just taken; when it lagged the clock by more than `behind_after_s` the batch is
        a catch-up even if it brings the head near the present: after a restart the first catch-up fetch
        carries some partitions to the present while others are still on their way (taken by the rack stage
        but not yet here, which the caller's backlog flag can miss), and without this the site stage took
        them as silent and closed their windows (85 telemetry_loss and 1,653 late frames in CI)."""
        st = self.settings
        head = self.head_s
        if self.wall_s is not None and (self.wall_s - head > st.behind_after_s
                                        or (math.isfinite(head_before_s)
                                            and self.wall_s - head_before_s > st.behind_after_s)):
            self.backlog = True
        if self.wall_s is not None:
            if self.backlog:
                self.backlog_wall_s = self.wall_s
            elif self.wall_s - self.backlog_wall_s < st.backlog_grace_s:
                self.backlog = True  # just out of a backlog: sources still arrive unevenly
        starting = head - self.first_ts_s < st.stale_after_s
        complete = completeness_s(self.last_frame_ts_s, self.rack_source, self.n_sources, head, st.stale_after_s,
                                  self.backlog, starting)
        return max(complete, head - (st.backlog_lateness_s if self.backlog else st.lateness_s))

    def advance(self, now_s: float, wall_s: float | None = None) -> list[Snapshot]:
        """Close every window whose end is at least the lateness bound before `now_s` (event time).

        A timer calls it with event time extrapolated by the clock so that windows still close, with every
        rack stale, when telemetry stops altogether (and only then: not while its input has a backlog)."""
        self.wall_s, self.backlog = wall_s, False
        return self._close_through(now_s - self.settings.lateness_s)

    def _close_through(self, watermark: float) -> list[Snapshot]:
        if not math.isfinite(watermark):
            return []
        W = self.settings.window_s
        last_closable = math.floor(watermark / W + 1e-9) - 1  # window k ends at (k+1)W <= watermark
        out: list[Snapshot] = []
        if self.closed_through is None:
            if not self.windows:
                return out
            start = min(self.windows)
        else:
            start = self.closed_through + 1
        # Close windows in order, including empty ones (every rack stale then), but never more than the
        # open-window bound in one go: after a long silence the gap is skipped, not replayed second by second.
        if last_closable - start >= self.settings.max_open_windows:
            start = last_closable - self.settings.max_open_windows + 1
            for k in [k for k in self.windows if k < start]:
                del self.windows[k]
                self.dropped_windows += 1
        for k in range(start, last_closable + 1):
            out.append(self._close(k))
        return out

    # ---- closing a window ------------------------------------------------------------------------
    def _limits(self, dark: BoolArray) -> tuple[FloatArray, FloatArray]:
        key = np.packbits(dark).tobytes()
        hit = self._limits_cache.get(key)
        if hit is None:
            if len(self._limits_cache) > 64:
                self._limits_cache.clear()
            hit = self._limits_cache[key] = self.site.limits_dark_w(dark)
        return hit

    def _close(self, k: int) -> Snapshot:
        """Close window k: each rack's readings, the dark feed levels, the loads up both trees, and the
        staleness, thermal and GPU figures of every level."""
        st = self.settings
        w = self.windows.pop(k, None) or _Window.empty(self.topo.n_racks)
        self.closed_through = k if self.closed_through is None else max(self.closed_through, k)
        end = (k + 1) * st.window_s
        rd = self._readings(w, end)
        signal = self.signal_dark(end) if self.signal_dark is not None else None
        dark, dark_share, meter_dark = self._dark_levels(rd, signal)
        rated, derated = self._limits(dark)
        par = self.topo.parent
        dark_top = dark & ~np.where(par >= 0, dark[np.maximum(par, 0)], False)
        code, load, gap = self._loads(rd, dark)
        return Snapshot(
            ts_s=end, window_s=st.window_s, load_w=load, rated_w=rated, limit_w=derated, dark=dark,
            dark_top=dark_top, dark_share=dark_share, gap_w=gap, **self._levels_health(rd), rack_fresh=rd.fresh,
            rack_age_s=rd.age_s, rack_mode=[_MODE_NAME[c] for c in code.tolist()], site_mode=self._site_mode(dark),
            late_frames=self.late_frames, lag_s=None if self.wall_s is None else self.wall_s - end,
            backlog=self.backlog, meter_dark=meter_dark)

    def _readings(self, w: _Window, end: float) -> _Readings:
        """What each rack counts with: its own frames in the window, else the bounded estimate of the module
        docstring (last reading plus a margin growing with age; never heard from: the fleet's load per rated
        watt); meters and inlets carried while usable."""
        st = self.settings
        fresh = w.count > 0
        seen = np.isfinite(self.last_ts_s)
        age = np.where(fresh, 0.0, np.where(seen, np.maximum(end - self.last_ts_s, 0.0), np.inf))
        usable = fresh | (age <= st.rated_after_s)
        rated = self.topo.rack_rated_w
        last = self.last_power_w
        margin = np.fmax(np.fmax(self.peak_w - last, 0.0), st.estimate_margin * last)
        ramp = np.clip((age - st.stale_after_s) / st.estimate_ramp_s, 0.0, 1.0)
        with np.errstate(invalid="ignore"):
            estimate = np.minimum(last + np.nan_to_num(margin) * ramp, rated)
        known = fresh | (seen & np.isfinite(last))
        rack_w = np.where(fresh, w.power_sum_w / np.maximum(w.count, 1), estimate)
        if not known.all():  # never heard from: as loaded as the busiest tenth of the others, else rated
            share = rack_w[known] / np.maximum(rated[known], 1.0)
            per_rated = min(1.0, float(np.percentile(share, 90))) if share.size else 1.0
            rack_w = np.where(known, rack_w, rated * per_rated)
        own = fresh & np.isfinite(w.latest_ts_s)  # racks with a frame in this window: its own readings
        meters = np.where(own[:, None], w.latest[:, :2], np.where(usable[:, None], self.last_meter_w, np.nan))
        return _Readings(w, fresh, age, usable, own, rack_w, meters)

    def _dark_levels(self, rd: _Readings, signal: BoolArray | None = None
                     ) -> tuple[BoolArray, FloatArray, BoolArray | None]:
        """Dark feed levels, the share of each one's metered load reading dark, and (with a facility signal)
        the meters' own verdict.

        A PDU is dark when its meter reads ~nothing of what half its racks' load would put on it. PDU meters
        refresh slowly (SNMP, ~10 s) and out of phase, so a lost feed shows up PDU by PDU: a level above is
        dark once a quorum of its metered load is dark, and everything below a dark level is dark with it.
        `signal`: feed levels a UPS says are lost; their PDUs count as dark in the same quorum, so the levels
        the signal darkens are those the meters will once they show the loss (the same event, no second page)."""
        st, topo = self.settings, self.topo
        n, pdus, meters = topo.n_levels, topo.pdu_levels, rd.meters_w
        metered = np.isfinite(meters)
        normal_share = np.repeat(rd.power_w[:, None] * 0.5, 2, axis=1)
        exp_pdu = np.zeros(n)
        got_pdu = np.zeros(n)
        for f in range(len(FEEDS)):
            exp_pdu += np.bincount(topo.rack_pdu[:, f], weights=np.where(metered[:, f], normal_share[:, f], 0.0),
                                   minlength=n)
            got_pdu += np.bincount(topo.rack_pdu[:, f], weights=np.where(metered[:, f], meters[:, f], 0.0),
                                   minlength=n)
        pdu_dark = np.zeros(n, dtype=bool)
        pdu_dark[pdus] = (exp_pdu[pdus] > st.min_expected_w) & (got_pdu[pdus] < st.dark_fraction * exp_pdu[pdus])
        dark, share = self._quorum(pdu_dark, exp_pdu)
        if signal is None or not signal.any():
            return dark, share, None
        below = self.site.dark_below(signal)
        with_signal = pdu_dark.copy()
        with_signal[pdus] |= below[pdus]
        both, share = self._quorum(with_signal, exp_pdu)
        return self.site.dark_below(both | signal), share, dark

    def _quorum(self, pdu_dark: BoolArray, exp_pdu: FloatArray) -> tuple[BoolArray, FloatArray]:
        st, topo, pdus = self.settings, self.topo, self.topo.pdu_levels
        expect = topo.up_feed(exp_pdu)
        with np.errstate(invalid="ignore", divide="ignore"):
            dark_share = np.where(expect > 0, topo.up_feed(np.where(pdu_dark, exp_pdu, 0.0)) / expect, 0.0)
        dark = topo.feed_mask & (expect > st.min_expected_w) & (dark_share >= st.dark_quorum)
        dark[pdus] = pdu_dark[pdus]
        return self.site.dark_below(dark), dark_share

    def _loads(self, rd: _Readings, dark: BoolArray) -> tuple[IntArray, FloatArray, FloatArray]:
        """Each rack's feed mode code, the load of every level, and the PDUs' meter-minus-servers gap."""
        topo, meters = self.topo, rd.meters_w
        n = topo.n_levels
        # Feed state of every rack from its meters, then the share of its load on each feed.
        a, b = meters[:, 0], meters[:, 1]
        both = np.isfinite(a) & np.isfinite(b) & (a + b >= MIN_METERED_W)
        frac = LOST_FEED_FRACTION  # the same rule as the per-rack stage (streams.rollup.feed_mode)
        code = np.where(both & (a < frac * (a + b)), 1, np.where(both & (b < frac * (a + b)), 2, 0))
        # A rack whose PDU sits under a dark level draws everything from the other side, meter or not.
        pdu_off = dark[topo.rack_pdu]
        final = np.where(pdu_off[:, 0] & ~pdu_off[:, 1], 1, np.where(pdu_off[:, 1] & ~pdu_off[:, 0], 2, code))
        # Meters that still show the split from before the loss (they refresh every ~10 s) are not used
        # until they catch up: the rack's servers' estimate on the live side is closer to the truth.
        metered = np.isfinite(meters) & (final == code)[:, None]
        est = rd.power_w[:, None] * _SHARES[final]  # what each rack's servers draw on each feed
        # Loads: PDUs by their meter where they have one, else the estimate; feed levels above sum them.
        per_pdu = np.zeros(n)
        pdu_est = np.zeros(n)
        has_meter = np.zeros(n)
        for f in range(len(FEEDS)):
            per_pdu += np.bincount(topo.rack_pdu[:, f], minlength=n,
                                   weights=np.where(metered[:, f], meters[:, f], est[:, f]))
            pdu_est += np.bincount(topo.rack_pdu[:, f], weights=est[:, f], minlength=n)
            has_meter += np.bincount(topo.rack_pdu[:, f], weights=metered[:, f].astype(np.float64), minlength=n)
        load = topo.up_feed(per_pdu)
        load = topo.up_racks(rd.power_w, load)
        pdus = topo.pdu_levels
        gap = np.full(n, np.nan)
        gap[pdus] = np.where(has_meter[pdus] > 0, per_pdu[pdus] - pdu_est[pdus], np.nan)
        return final, load, gap

    def _levels_health(self, rd: _Readings) -> dict[str, npt.NDArray[Any]]:
        """Per level: racks stale or counted at rated power, the oldest reading used, the hottest inlet and
        GPU, and GPUs throttled, expected and reporting (Snapshot fields by name)."""
        st, topo = self.settings, self.topo
        n = topo.n_levels
        stale = ~rd.fresh & (rd.age_s > st.stale_after_s)
        rated_used = ~rd.usable
        racks_stale = topo.up_racks(stale.astype(np.float64), np.zeros(n))
        racks_stale = np.maximum(racks_stale, topo.up_pdu_racks(np.repeat(stale[:, None], 2, 1).astype(np.float64)))
        racks_rated = topo.up_racks(rated_used.astype(np.float64), np.zeros(n))
        racks_rated = np.maximum(racks_rated,
                                 topo.up_pdu_racks(np.repeat(rated_used[:, None], 2, 1).astype(np.float64)))
        age_f = np.where(np.isfinite(rd.age_s), rd.age_s, st.rated_after_s * 10)
        age_l = topo.up_racks(age_f, np.full(n, -np.inf), how="max")
        age_l = np.fmax(age_l, topo.up_pdu_racks(np.repeat(age_f[:, None], 2, 1), how="max"))
        inlet = rd.latest(2, self.last_inlet_c, np.nan)
        inlet_l = topo.up_racks(inlet, np.full(n, np.nan), how="max")
        temp_l = topo.up_racks(rd.latest(3, self.last_temp_c, np.nan), np.full(n, np.nan), how="max")
        thr = rd.latest(4, self.last_throttled.astype(np.float64), 0.0)
        thr_l = topo.up_racks(thr, np.zeros(n))
        exp_g = self.gpus_expected.astype(np.float64)
        rep_g = rd.latest(5, self.last_reporting.astype(np.float64), 0.0)
        exp_l = topo.up_racks(exp_g, np.zeros(n))
        exp_l = np.where(topo.feed_mask, topo.up_pdu_racks(np.repeat(exp_g[:, None], 2, 1)), exp_l)
        rep_l = topo.up_racks(rep_g, np.zeros(n))
        rep_l = np.where(topo.feed_mask, topo.up_pdu_racks(np.repeat(rep_g[:, None], 2, 1)), rep_l)
        return {"racks_stale": racks_stale.astype(np.int64), "racks_rated": racks_rated.astype(np.int64),
                "age_s": np.where(np.isfinite(age_l), age_l, 0.0), "inlet_c": inlet_l, "gpu_temp_max_c": temp_l,
                "gpus_throttled": thr_l.astype(np.int64), "gpus_expected": exp_l.astype(np.int64),
                "gpus_reporting": rep_l.astype(np.int64)}

    def _site_mode(self, dark: BoolArray) -> str:
        """normal, A-lost / B-lost (every utility feed of a side dark), or degraded (part of a feed dark)."""
        if not dark.any():
            return "normal"
        site_mode = "degraded"
        utils = self.site.levels_of_kind("utility")
        for f, name in enumerate(FEEDS):
            side = utils[self.site.level_feed[utils] == f]
            if side.size and dark[side].all():
                site_mode = f"{name}-lost"
        return site_mode

    # ---- state -----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        arrays = {name: getattr(self, name) for name in _STATE_ARRAYS}
        return {
            "arrays": {k: (str(v.dtype), list(v.shape), v.tobytes()) for k, v in arrays.items()},
            "windows": {str(k): (w.power_sum_w.tobytes(), w.count.tobytes(), w.latest.tobytes(),
                                 w.latest_ts_s.tobytes()) for k, w in self.windows.items()},
            "closed_through": self.closed_through, "max_ts_s": self.max_ts_s if math.isfinite(self.max_ts_s) else None,
            "first_ts_s": self.first_ts_s if math.isfinite(self.first_ts_s) else None,
            "late_frames": self.late_frames, "dropped_windows": self.dropped_windows,
            "repeated_frames": self.repeated_frames, "future_frames": self.future_frames,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for k, (dtype, shape, raw) in state["arrays"].items():
            if k in _STATE_ARRAYS:
                arr = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
                if arr.shape == getattr(self, k).shape:  # a site file that changed shape starts afresh
                    setattr(self, k, arr)
        self.windows = {}
        n = self.topo.n_racks
        for k, (p, c, *rest) in state["windows"].items():
            w = _Window.empty(n)
            if np.frombuffer(p, dtype=np.float64).size != n:
                continue
            w.power_sum_w, w.count = np.frombuffer(p, dtype=np.float64).copy(), np.frombuffer(c, dtype=np.int64).copy()
            if len(rest) == 2:  # checkpoints before the per-window readings have none: the window uses the latest
                w.latest = np.frombuffer(rest[0], dtype=np.float64).reshape(n, 6).copy()
                w.latest_ts_s = np.frombuffer(rest[1], dtype=np.float64).copy()
            self.windows[int(k)] = w
        self.closed_through = state["closed_through"]
        self.max_ts_s = -math.inf if state["max_ts_s"] is None else float(state["max_ts_s"])
        self.first_ts_s = math.inf if state.get("first_ts_s") is None else float(state["first_ts_s"])
        self.late_frames = int(state["late_frames"])
        self.dropped_windows = int(state["dropped_windows"])
        self.repeated_frames = int(state.get("repeated_frames", 0))
        self.future_frames = int(state.get("future_frames", 0))
        self.resumed = True


_STATE_ARRAYS = ("last_ts_s", "last_frame_ts_s", "last_power_w", "peak_w", "last_meter_w", "last_inlet_c",
                 "last_temp_c", "last_throttled", "last_reporting")
