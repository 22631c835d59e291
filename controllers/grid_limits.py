"""The controller's side of the utility's limits (issue 16): demand-response requests as a paced budget on the
site (or one utility feed), caps released no faster than the ramp-up limit, and the ramp limiter's floors through
swinging jobs' low phases, or caps on their compute peak where the GPUs refuse a floor (H100s: `plan`,
`ramp_limit`). Plain state and numpy, no I/O.

Demand response rides on the capping policy rather than beside it: while a request holds, the site level (or
the feed's utility level) gets a power budget, as the thermal policy gives a cooling zone one
(controllers.capping.decide_caps `heat_budget_w`). decide_caps then sheds lowest priority first down to it
(best-effort, training, batch), and inference-critical only if the level runs far above it, across every rack
under the level, with the same fresh-evidence rules as any shed; the breakers' own limits bind as always
(whichever is lower wins). The budget is paced: from the load when the request came, down at the ramp-down
limit, to the target (when the pace cannot reach the target by the deadline, the ramp limit wins and the
request is met late: docs/decisions.md); held; then raised at the ramp-up limit until it no longer binds, and
the caps come back by the ordinary release, itself paced by `limit_release`.

The plans in controllers.demand_response and controllers.grid_control compute the same things open loop (a
schedule fixed when the request arrives); this is their closed-loop form: each decision takes the budget at
its time and the loads as measured, so a burst of inference during the hold is shed too.

This module is long because its parts share one state: the requests' budgets, the releases and the floors all
draw on the same paced ramp allowance and the rest of the site's swing; split, each would reach into the others.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from controllers.capping import CapSettings, gpu_efficiency
from controllers.grid_control import floor_plan, release_step, shed_step
from powerplane.grid import MW, DemandResponse, GridLimits, ramp_step_w
from powerplane.schemas import Ack, Command
from powerplane.site import PRIORITIES, FloatArray, Site

TRAINING = PRIORITIES.index("training")
# The classes that run jobs (synchronous iterations that swing): training, and best-effort (fine-tuning).
JOB_CLASSES = (TRAINING, PRIORITIES.index("best-effort"))
# What an actuator says when its hardware has no power-smoothing floor (actuators.base.Actuator.no_floor: H100,
# H200, Redfish): a refusal that asking again will not change, unlike a rate limit or a stale command.
NO_FLOOR = "floor not supported"

log = logging.getLogger("powerplane.controller")


@dataclass
class _Request:
    ev: DemandResponse
    level: int  # the level the budget is on: the site, or the event's utility feed
    load0_w: float  # the level's load when the request came (NaN: not seen yet; the budget waits for it)
    limits: GridLimits
    cancelled: tuple[float, float] | None = None  # (when, its budget then): called off, restoring from there


@dataclass
class _Notice:
    """A scheduler's word that a job starts on `gpus` at `start_s` (its prolog; controllers.grid_limits
    GridControl.on_job_notice)."""

    name: str
    gpus: npt.NDArray[np.int64]
    start_s: float
    to_w: FloatArray  # per GPU: the power it is expected to compute at (DC W)


@dataclass
class GridControl:
    site: Site
    settings: CapSettings
    requests: list[_Request] = field(default_factory=list)
    held_back_w: float = 0.0  # wall W of cap releases the ramp-up limit put off, summed over decisions
    window_s: int = 10  # how many decisions of readings the training GPUs' high and low phases are taken over
    comm_frac: float = 0.3  # share of an iteration in the low phases, for the floor's energy order (assumption)
    floors_set: int = 0  # GPUs under a floor at the last decision
    notices: list[_Notice] = field(default_factory=list)  # jobs the scheduler said will start
    send_floors: bool = False  # the deployment sends power floors (and so peak caps where they are refused)

    def __post_init__(self) -> None:
        self.site_level = int(self.site.levels_of_kind("site")[0])
        self.eff = gpu_efficiency(self.site)
        self.train = np.flatnonzero(np.isin(self.site.gpu_priority, JOB_CLASSES))  # every job class, not only training
        self.ring = np.full((self.window_s, self.train.size), np.nan, dtype=np.float32)
        self.ring_pos = 0
        # Each job GPU's low phase as seen while no floor held it (a floor hides it: the readings' minimum
        # becomes the floor, and a plan made from that would find no swing and drop the floor again).
        self.low_w = np.full(self.train.size, np.nan)
        self.last_top = np.full(self.train.size, np.inf)  # each job GPU's cap (or maximum) at the last decision
        self.ring_peak_w = np.full(self.train.size, np.nan)  # each job GPU's highest reading in the ring
        self.floor_w = np.full(self.site.n_gpus, np.nan)
        # The caps on the compute peak the plan asks of the job GPUs that refuse a floor (FloorRefusals: an H100
        # has no power smoothing), NaN where none: an upper bound on the caps the controller decides (decide()).
        self.peak_w = np.full(self.site.n_gpus, np.nan)
        self.limited = np.zeros(self.site.n_gpus, dtype=bool)  # GPUs under a peak cap or its release, per GPU
        # The rest of the site's own second-to-second change (all but the running training GPUs), so the floors
        # leave it its share of the ramp allowance: the last minute's site loads and training draws (wall W).
        self.site_hist = np.full((60, 2), np.nan)
        self.hist_pos = 0
        self._site_w = math.nan
        self.other_w = 0.0  # the last other_swing_w
        # The job GPUs' swing the floors in force leave (wall W, high phase less the floor or low phase), and
        # whether the plan held it within its allowance: the releases take what the allowance has left of it.
        self.swing_w = 0.0
        self.floors_hold = True
        self.reserve_w = 0.0  # the share of the allowance the next plan leaves for a release still under way
        self._hi = np.full(self.train.size, np.nan)  # the last plan's high phases and running GPUs (in self.train)
        self._running = np.zeros(self.train.size, dtype=bool)

    def limits_of(self, feed: str | None) -> GridLimits:
        lim = self.site.feed_grid.get(feed) if feed is not None else self.site.grid
        return lim if lim is not None else GridLimits.model_validate({})  # no limit stated: no pacing

    def on_demand_response(self, ev: DemandResponse, level_power_w: FloatArray, load0_w: float | None = None) -> str:
        """Take a request; returns a one-line summary. A request with an id already held is ignored (a
        duplicate delivery), so the budget's starting load is the first one's. load0_w: the load it started from,
        when known from before (a restarted controller taking back a request it held: powerplane.grid_input)."""
        if any(r.ev.id == ev.id for r in self.requests):
            return f"demand response {ev.id}: already held"
        level = self.site.level(ev.feed) if ev.feed is not None else self.site_level
        load0 = float(level_power_w[level]) if load0_w is None else load0_w
        self.requests.append(_Request(ev, level, load0, self.limits_of(ev.feed)))
        target = ev.target_w(load0) if math.isfinite(load0) else math.nan
        return (f"demand response {ev.id}: {self.site.level_ids[level]} from {load0 / MW:.2f} MW to "
                f"{target / MW:.2f} MW within {ev.within_s:g} s, held {ev.hold_s:g} s")

    def cancel(self, request_id: str, now_s: float) -> str:
        """The utility calls a request off: one not started is dropped; a started one restores from its budget now
        at the ramp-up limit, as at the end of its hold. Returns a one-line summary."""
        r = next((r for r in self.requests if r.ev.id == request_id), None)
        if r is None or now_s < r.ev.start_s or not math.isfinite(r.load0_w):
            self.requests = [x for x in self.requests if x is not r]
            return f"demand response {request_id}: dropped before its start"
        if r.cancelled is None:
            r.cancelled = (now_s, self._budget(r, now_s))
        return (f"demand response {request_id}: called off; {self.site.level_ids[r.level]} restores from "
                f"{r.cancelled[1] / MW:.2f} MW at the ramp-up limit")

    def load0_of(self, request_id: str) -> float:
        """The load a held request started from (W; NaN: not held, or its level's load not seen yet)."""
        return next((r.load0_w for r in self.requests if r.ev.id == request_id), math.nan)

    def on_job_notice(self, name: str, gpus: npt.NDArray[np.int64], start_s: float,
                      expected_w: FloatArray | float | None = None) -> str:
        """The scheduler says a job starts on `gpus` at start_s (a prolog hook, ahead of the start): before it,
        the floors take those GPUs from idle up to the power they are expected to compute at (expected_w per
        GPU; default the GPU's maximum), paced within the ramp-up allowance, so the start itself moves the site
        by little more than the difference. A synchronous job's GPUs all start at once: without the notice its
        start is one step of its whole compute power (docs/grid.md). Returns a one-line summary."""
        g = np.asarray(gpus, dtype=np.int64)
        to = np.broadcast_to(np.asarray(self.site.gpu_max_w[g] if expected_w is None else expected_w,
                                        dtype=np.float64), g.shape).copy()
        self.notices = [n for n in self.notices if n.name != name] + [_Notice(name, g, float(start_s), to)]
        rise_w = float(np.sum((to - self.site.gpu_idle_w[g]) / self.eff[g]))
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start_s))
        rise = f"{rise_w / MW:.2f} MW" if rise_w >= 0.1 * MW else f"{rise_w / 1e3:.1f} kW"  # a lab's job is kW
        return f"job {name}: {g.size} GPUs start at {at}; their floors go up {rise} before it"

    def _prefloors(self, now_s: float, cap_w: FloatArray) -> FloatArray:
        """Per GPU, the floor a job notice asks of it now (NaN: none): from idle, up the same step each second (a
        whole multiple of 10 W, the largest the paced share of the ramp-up allowance, paced_w, takes for all its
        GPUs), reaching the expected compute power by the start; held `window_s` past the start (the plan's own
        floors then take the running job; a job that did not come is then let down by them, paced alike)."""
        out = np.full(self.site.n_gpus, np.nan)
        lim = self.site.grid
        if lim is None or lim.ramp_up_mw_per_s is None:
            return out
        _, up = ramp_step_w(lim, 1.0)
        rate_w = self.paced_w(up)
        for n in self.notices:
            top = np.where(np.isfinite(cap_w[n.gpus]), cap_w[n.gpus], self.site.gpu_max_w[n.gpus])
            base = self.site.gpu_idle_w[n.gpus]
            rise = np.maximum(np.minimum(n.to_w, top) - base, 0.0)
            # Every GPU up by the same whole multiple of 10 W a second (the floors' step), the most the pace allows.
            inc_w = max(math.floor(rate_w / float(np.sum(1.0 / self.eff[n.gpus])) / 10.0) * 10.0, 10.0)
            lead_s = math.ceil(float(rise.max(initial=0.0)) / inc_w) + 1.0
            k = math.floor(now_s - (n.start_s - lead_s))
            if k > 0:
                out[n.gpus] = np.fmax(out[n.gpus], base + np.minimum(k * inc_w, rise))
        return out

    def _budget(self, r: _Request, now_s: float) -> float:
        """The load the request allows at now_s (wall W): down from the load it started at by the ramp-down
        limit to the target, held, then up by the ramp-up limit."""
        ev, lim = r.ev, r.limits
        target = ev.target_w(r.load0_w)
        down = lim.ramp_down_mw_per_s * MW if lim.ramp_down_mw_per_s is not None else math.inf
        up = lim.ramp_up_mw_per_s * MW if lim.ramp_up_mw_per_s is not None else math.inf
        if r.cancelled is not None:
            return r.cancelled[1] + up * max(now_s - r.cancelled[0], 0.0)
        end = ev.start_s + ev.within_s + ev.hold_s
        if now_s < end:
            return max(target, r.load0_w - down * (now_s - ev.start_s))
        return target + up * (now_s - end)

    def budget_w(self, now_s: float, level_power_w: FloatArray) -> FloatArray:
        """Level-indexed budgets (NaN where none) for decide_caps, which sheds a level above
        cap_threshold / (cap_threshold - target_margin) (~1.04) x its budget down to the budget: the paced part
        is passed as it is (nothing shed at the request's first second beyond the pace), the target scaled by
        the inverse so that the held load stays at or under it."""
        out = np.full(len(self.site.level_ids), np.nan)
        s = self.settings
        scale = (s.cap_threshold - s.target_margin) / s.cap_threshold
        keep: list[_Request] = []
        self.note_site_load(level_power_w)
        for r in self.requests:
            if now_s < r.ev.start_s:
                keep.append(r)
                continue
            if not math.isfinite(r.load0_w):  # the level's load was unknown when it came: take the first seen
                r.load0_w = float(level_power_w[r.level])
                if not math.isfinite(r.load0_w):
                    keep.append(r)
                    continue
            b = self._budget(r, now_s)
            # Restored far past where it started: the budget no longer binds (the caps it left come back by the
            # ordinary release, paced by limit_release).
            if b > 2.0 * r.load0_w:
                continue
            keep.append(r)
            target = r.ev.target_w(r.load0_w)
            out[r.level] = np.fmin(out[r.level], b if b > target else target * scale)
        self.requests = keep
        return out

    def limit_release(self, cap_w: FloatArray, new_w: FloatArray, gpu_power_w: FloatArray) -> FloatArray:
        """new_w with its rises (releases) held to the paced share of the site's ramp-up allowance for one
        decision (paced_w), highest priority first; every cut stays as decided (a shed is never slowed by a ramp
        limit). A capped GPU's demand is unknown (its reading is its cap), so its rise counts in full."""
        lim = self.site.grid
        asked, self.reserve_w = self.reserve_w, 0.0  # the last plan's room for a release; set again below
        if lim is None or lim.ramp_up_mw_per_s is None:
            return new_w
        old = np.where(np.isfinite(cap_w), cap_w, self.site.gpu_max_w)
        rising = new_w > old
        if not rising.any():
            return new_w
        _, up_all = ramp_step_w(lim, 1.0)
        up = self.paced_w(up_all)
        # A job GPU read in its low phase at its old floor may next be in its high phase at its new cap: the
        # site then rises by the swing the floors allow plus the release, so the release takes only what the
        # swing and the rest of the site leave of the allowance (the 100 MW restore was 2.3 MW/s against 2
        # without this). The first decision of a release may find none: its floors then leave room for the
        # next (reserve_w). Where the floors were asked and still leave under a quarter of the allowance (the
        # rest of the site takes it), a release goes on at that quarter; where they cannot hold the swing at
        # all, at the paced share: that site is over the limit without it, and is never left capped.
        if self.floors_hold:
            room = max(up_all - self.other_w - self.swing_w, 0.0)
            up = max(min(up, room), 0.25 * up_all) if asked > 0 else min(up, room)
        # A job's GPU draws what its compute phase does, not its reading of the moment: one read in its low
        # phase counted its release as adding nothing, and the 100 MW restore rose 2-4 MW/s from training alone.
        peak = gpu_power_w.copy()
        peak[self.train] = np.fmax(peak[self.train], self.ring_peak_w)
        # One whose compute peak the ramp limit capped computes at its maximum (plan()): until it is back there,
        # its readings show a cap it is already past (a release read as free went 16 kW at once on the lab).
        at_cap = ~np.isfinite(peak) | (peak >= old - 0.05 * old) | self.limited
        demand = np.where(at_cap, np.nan, peak)
        to = np.where(rising, new_w, old)
        stepped, used = release_step(old, to, demand, self.site.gpu_priority, up, self.eff)
        total = float(np.sum(np.where(rising, (new_w - old) / self.eff, 0.0)))
        self.held_back_w += max(total - used, 0.0)
        # More to come: this decision's floors leave room for the next decision's release (a floor plan that
        # took the whole allowance would leave it none).
        self.reserve_w = self.paced_w(up_all) if bool(np.any(rising & (stepped < to - 1.0))) else 0.0
        return np.where(rising, stepped, new_w)

    def limit_shed(self, cap_w: FloatArray, base_w: FloatArray, new_w: FloatArray,
                   gpu_power_w: FloatArray) -> FloatArray:
        """new_w (the caps with a demand-response budget) with the cuts only the request asks for (those below
        base_w, the caps without it) held to the paced share of the ramp-down allowance for one decision, lowest
        priority first; every cut base_w makes itself (a breaker, a brake, a heat budget) stays whole. A request
        is voluntary load shed and the utility states how fast it may fall (a sudden drop leaves generation
        with no outlet: BRIEF.md); without the pace decide_caps's band shed the 100 MW site in 10 MW steps."""
        lim = self.site.grid
        if lim is None or lim.ramp_down_mw_per_s is None:
            return new_w
        old = np.where(np.isfinite(cap_w), cap_w, self.site.gpu_max_w)
        start = np.fmin(old, base_w)  # where the caps go without the request
        extra = new_w < start
        if not extra.any():
            return new_w
        down, _ = ramp_step_w(lim, 1.0)
        draw = np.where(np.isfinite(gpu_power_w), np.minimum(gpu_power_w, start), start)
        stepped = shed_step(draw, np.where(extra, new_w, draw), self.site.gpu_priority, self.paced_w(down), self.eff)
        # A GPU the pace did not reach keeps its cap without the request (not one at its draw: that would pin it).
        return np.where(extra, np.where(stepped < draw, np.maximum(stepped, new_w), start), new_w)

    def note_site_load(self, level_power_w: FloatArray) -> None:
        self._site_w = float(level_power_w[self.site_level])

    def other_swing_w(self, train_wall_w: float) -> float:
        """The largest one-second change of the non-training load over the last minute (wall W; 0 until there are
        ten seconds of it), kept in `other_w` for the releases and the job notices. The largest, not a
        percentile: the limit holds in every window, and a p95 leaves the rest of the site over it three
        seconds a minute."""
        self.site_hist[self.hist_pos % self.site_hist.shape[0]] = (self._site_w, train_wall_w)
        self.hist_pos += 1
        n = min(self.hist_pos, self.site_hist.shape[0])
        order = (self.hist_pos - n + np.arange(n)) % self.site_hist.shape[0]
        other = self.site_hist[order, 0] - self.site_hist[order, 1]
        d = np.abs(np.diff(other))
        d = d[np.isfinite(d)]
        self.other_w = float(d.max()) if d.size >= 10 else 0.0
        return self.other_w

    def _train_wall_w(self, tr_now: FloatArray) -> float:
        """The job GPUs' wall W now, a missing reading taken as that GPU's last one (NaN where more than 1 % have
        none). Missing readings are the rule at scale (~1e-4 of 44,000 GPUs each second on the reference site):
        a sum that needed every one was NaN every second there, and the rest of the site's swing read as 0."""
        prev = self.ring[(self.ring_pos - 1) % self.window_s] if self.ring_pos else np.full(tr_now.size, np.nan)
        filled = np.where(np.isfinite(tr_now), tr_now, prev)
        ok = np.isfinite(filled)
        if ok.sum() < 0.99 * filled.size:
            return math.nan
        return float(np.sum(np.where(ok, filled, 0.0) / self.eff[self.train]))

    def paced_w(self, up_w: float) -> float:
        """What a paced rise (cap releases, a job notice's floors) may add in one second of the ramp-up allowance
        up_w: half of it, less where the rest of the site's largest change leaves less, never under a quarter
        (the rest is left to the load no one paces: inference bursts, jobs' own swings, the servers' non-GPU
        load following its GPUs)."""
        return max(min(up_w - self.other_w, 0.5 * up_w), 0.25 * up_w)

    def ramp_limit(self, cap_w: FloatArray, new_w: FloatArray, gpu_power_w: FloatArray,
                   refused: npt.NDArray[np.bool_] | None, now_s: float) -> tuple[FloatArray, FloatArray | None]:
        """One decision's caps and floors for the ramp limit: (the caps, the floors; None where the deployment
        sends none). new_w, the caps the breaker policy decided, with its releases paced (limit_release) and,
        where floors are sent, under the compute-peak caps the plan asks of the GPUs that refuse a floor
        (plan()). A peak cap only ever lowers a cap, never below the GPU's minimum limit; one the plan no longer
        asks for comes back by the next decision's paced release (a held one is not a release to pace)."""
        out = self.limit_release(cap_w, self.under_peaks(new_w), gpu_power_w)
        if not self.send_floors:
            return out, None
        floor, _ = self.plan(gpu_power_w, out, refused, now_s)
        return self.under_peaks(out), floor

    def under_peaks(self, cap_w: FloatArray) -> FloatArray:
        """cap_w bounded by the compute-peak caps held (an unknown cap stays unknown: nothing was sent)."""
        return np.where(np.isnan(cap_w), cap_w, np.fmin(cap_w, self.peak_w))

    def at_peak(self, gpus: npt.NDArray[np.int64], old_w: FloatArray, new_w: FloatArray) -> bool:
        """Whether every one of these GPUs whose cap changes goes to its compute-peak cap (a command's reason)."""
        moved = old_w != new_w
        return bool(moved.any() and np.all(np.abs(new_w[moved] - self.peak_w[gpus[moved]]) < 0.5))

    def floors(self, gpu_power_w: FloatArray, cap_w: FloatArray,
               refused: npt.NDArray[np.bool_] | None = None, now_s: float = math.nan) -> FloatArray:
        """Per GPU, the power floor the ramp limit asks (NaN: none): plan()'s floors."""
        return self.plan(gpu_power_w, cap_w, refused, now_s)[0]

    def plan(self, gpu_power_w: FloatArray, cap_w: FloatArray, refused: npt.NDArray[np.bool_] | None = None,
             now_s: float = math.nan) -> tuple[FloatArray, FloatArray]:
        """Per GPU, (the power floor the ramp limit asks of the running training GPUs through their low phases,
        the cap on their compute peak it asks of those that refuse a floor), NaN where none, from
        controllers.grid_control.floor_plan: a GPU's high phase is the highest of its last `window_s` readings,
        its low phase the lowest while unfloored; every rack's running training GPUs are one group (those that
        refuse a floor another), all taken to swing together (the worst case). The breaker policy's caps bound
        each floor (the guard clamps a floor to the enforced limit as well). Where a job notice holds
        (on_job_notice), the GPUs it names get the higher of that and the plan's floor. `refused`: GPUs whose
        actuator cannot hold a floor (FloorRefusals): none is asked of them; their group's share of the swing
        goes on its compute peak instead (a cap: slower iterations), and the others' floors are not raised to
        make up for them. Also kept in `floor_w` and `peak_w`."""
        lim = self.site.grid
        out = np.full(self.site.n_gpus, np.nan)
        ref = np.zeros(self.site.n_gpus, dtype=bool) if refused is None else refused
        if lim is None or (lim.ramp_up_mw_per_s is None and lim.ramp_down_mw_per_s is None) or not self.train.size:
            self.floor_w, self.peak_w = out, out.copy()
            return out, self.peak_w
        # A notice past its hold is dropped before the plan looks (the plan then takes its GPUs at once: a
        # decision without either would read their floored draw as their low phase and let them swing).
        self.notices = [n for n in self.notices if not now_s > n.start_s + self.window_s]
        other = self.other_swing_w(self._train_wall_w(gpu_power_w[self.train]))
        out = np.fmax(self._plan_floors(gpu_power_w, cap_w, lim, other + self.reserve_w, ref),
                      self._prefloors(now_s, cap_w) if math.isfinite(now_s) else out)
        out[ref] = np.nan
        self.floor_w = out
        self.floors_set = int(np.isfinite(out).sum())
        # The swing these floors and peak caps leave (refused and rounded ones as they are): the next releases'
        # room. A GPU under a peak cap swings from that cap to its own low phase.
        run = self.train[self._running]
        low = np.fmax(self.low_w[self._running], out[run])
        high = np.fmin(np.fmin(self._hi[self._running], self.peak_w[run]), cap_w[run])
        self.swing_w = float(np.sum(np.maximum(high - low, 0.0) / self.eff[run]))
        return out, self.peak_w

    def _plan_floors(self, gpu_power_w: FloatArray, cap_w: FloatArray, lim: GridLimits, other: float,
                     refused: npt.NDArray[np.bool_]) -> FloatArray:
        """The floor plan's floors on the running, swinging job GPUs, and its peak caps on those that refuse a
        floor (into `peak_w`; plan() says how)."""
        out = np.full(self.site.n_gpus, np.nan)
        hi, natural = self._phases(gpu_power_w, cap_w, refused)
        idle = self.site.gpu_idle_w[self.train]
        # Running and swinging: a GPU whose readings hold steady (an inference server in the class) needs no floor.
        running = np.isfinite(hi) & (hi > idle + 50.0) & np.isfinite(self.low_w) & (hi > self.low_w + 50.0)
        # A GPU a job notice is taking up is not swinging: its notice's floors hold it until the job runs.
        for n in self.notices:
            running[np.isin(self.train, n.gpus)] = False
        self._hi, self._running = hi, running
        at = np.flatnonzero(running)  # positions in self.train
        if not at.size:
            self.floors_hold = True
            self.peak_w = np.full(self.site.n_gpus, np.nan)
            return out
        # A rack's GPUs that refuse a floor are groups of their own, by low phase (100 W apart): their share goes
        # on their compute peak, and a cap below a GPU's own low phase would hold it flat (slowed for no swing),
        # so two jobs in one rack (training near idle between iterations, fine-tuning near 500 W) are apart.
        g = self.train[at]
        bucket = np.minimum(np.nan_to_num(self.low_w[at]) // 100.0, 14).astype(np.int64)
        groups, group = np.unique(16 * self.site.gpu_rack[g] + np.where(refused[g], 1 + bucket, 0),
                                  return_inverse=True)
        count = np.bincount(group, minlength=groups.size)
        compute = np.bincount(group, weights=hi[at], minlength=groups.size) / count
        comm = np.bincount(group, weights=self.low_w[at], minlength=groups.size) / count
        order = np.argsort(group, kind="stable")
        jobs = np.split(g[order], np.cumsum(count)[:-1])
        plan = floor_plan(jobs, compute, np.minimum(comm, compute), np.full(len(jobs), self.comm_frac),
                          self.site.gpu_min_w, natural, lim, math.inf, self.eff, other_swing_w=other,
                          has_floor=(groups % 16 == 0).tolist())
        # The floors and peak caps hold the swing (no compute-peak cap is set where a GPU holds a floor: the
        # plan's caps there are its fallback where a floor cannot go higher, and the swing then stays over).
        self.floors_hold = plan.fits and not np.isfinite(plan.gpu_cap_w[~refused]).any()
        # 10 W steps down, at least the minimum; moved only by 40 W or more: the low phase a cap is planned from is
        # read from 1 s samples that mix the phases and wanders by tens of watts (a 20 W band sent a new cap to
        # each rack every ~3 s on the lab twin, 40 W every ~5 s, with the same seconds over the limit: none).
        peak = np.where(refused, np.maximum(np.floor(plan.gpu_cap_w / 10.0) * 10.0, self.site.gpu_min_w), np.nan)
        self.peak_w = self._steady(self.peak_w, peak, 40.0)
        self.limited |= np.isfinite(self.peak_w)
        return self._steady(self.floor_w, np.round(plan.gpu_floor_w / 10.0) * 10.0)

    def _phases(self, gpu_power_w: FloatArray, cap_w: FloatArray,
                refused: npt.NDArray[np.bool_]) -> tuple[FloatArray, FloatArray]:
        """(each job GPU's high phase, each GPU's limit as the plan takes it) from the readings' ring, which it
        advances; the low phases into `low_w` (as seen while unfloored: a floor hides them)."""
        self.ring[self.ring_pos % self.window_s] = gpu_power_w[self.train]
        self.ring_pos += 1
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a GPU with no reading yet: NaN, said aloud by numpy
            hi = np.nanmax(self.ring, axis=0).astype(np.float64)
            self.ring_peak_w = hi  # the ring's peaks, for the next decision's releases (limit_release)
            # Not the minimum: ~1 % of readings are glitches near 70 W (BRIEF.md), which would read as a deep low phase.
            lo = np.nanpercentile(self.ring, 20.0, axis=0).astype(np.float64)
        # A GPU computing at its cap computes at its new cap once that rises (a release): its high phase is the
        # new cap at once, not after its readings show it (the floors would lag a restore by the ring's length).
        top = np.where(np.isfinite(cap_w), cap_w, self.site.gpu_max_w)
        top_tr = top[self.train]
        pinned = np.isfinite(hi) & (hi >= 0.95 * self.last_top)
        hi = np.where(pinned, np.fmax(hi, top_tr), hi)
        self.last_top = top_tr
        # A GPU whose compute peak this limiter capped (until its cap is back at its maximum, even where it holds a
        # floor since) reads no higher than the cap: while it runs (reads above idle), its high phase is its
        # maximum (the breaker's own cap, if any, is not known apart from the peak cap; a higher estimate only
        # costs throughput, never the limit). Taken from its readings, the swing would look within the limit,
        # the cap be lifted, and the GPU swing again the next second.
        self.limited &= top < self.site.gpu_max_w - 0.5
        natural = np.where(self.limited, self.site.gpu_max_w, top)
        held = self.limited[self.train] & np.isfinite(hi) & (hi > self.site.gpu_idle_w[self.train] + 50.0)
        hi = np.where(held, np.fmax(hi, natural[self.train]), hi)
        unfloored = np.isnan(self.floor_w[self.train])
        self.low_w = np.where(unfloored & np.isfinite(lo), lo, self.low_w)
        return hi, natural

    @staticmethod
    def _steady(old_w: FloatArray, new_w: FloatArray, band_w: float = 20.0) -> FloatArray:
        """new_w, but the value held where it moved under band_w (no command for a reading's noise)."""
        keep = np.isfinite(old_w) & np.isfinite(new_w) & (np.abs(new_w - old_w) < band_w)
        return np.where(keep, old_w, new_w)


@dataclass
class FloorRefusals:
    """The power floors the actuators refused because the hardware has none (NO_FLOOR in a rejected ack: an
    H100 answers every power_floor so): those GPUs are not asked again for `retry_s` (a server replaced by one
    that has power smoothing is taken up after that), so a site of H100s with `power_floors = "on"` costs one
    rejected command per rack an hour, not one a second. Counted, and logged once (then at the 10th, 100th
    and every 1000th refusal). Other rejections (a rate limit, a stale command) are not refusals of the knob."""

    site: Site
    retry_s: float = 3600.0
    count: int = 0
    sent: OrderedDict[str, int] = field(default_factory=OrderedDict)  # floor command id -> rack

    def __post_init__(self) -> None:
        self.until_s = np.full(self.site.n_gpus, -np.inf)  # per GPU: no floor asked of it before this time

    def note(self, cmd: Command) -> None:
        """A power_floor command going out: its acks are read against it."""
        self.sent[cmd.id] = self.site.rack_index(cmd.target)
        while len(self.sent) > 10_000:
            self.sent.popitem(last=False)

    def take(self, ack: Ack, now_s: float) -> npt.NDArray[np.int64] | None:
        """The GPUs (site order) whose floor this ack refuses for want of the knob; None for any other ack."""
        if ack.status != "rejected" or NO_FLOOR not in ack.reason:
            return None
        rack = self.sent.pop(ack.command_id, None)
        if rack is None:
            return None
        gpus = int(self.site.rack_gpu_start[rack]) + ack.gpus.astype(np.int64)
        self.until_s[gpus] = now_s + self.retry_s
        self.count += 1
        if self.count in (1, 10, 100) or self.count % 1000 == 0:
            log.warning("power_floor refused by %s for %s (%d GPU(s)): %s; not asked again for %g s (%d refusal(s) "
                        "so far; power_floors = \"off\" stops asking)", ack.actuator, ack.target, gpus.size,
                        ack.reason, self.retry_s, self.count)
        return gpus

    def refused(self, now_s: float) -> npt.NDArray[np.bool_]:
        return np.asarray(self.until_s > now_s)

