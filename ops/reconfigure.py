"""The energy-aware reconfiguration policy (controllers.reconfig) in the evaluation loop, coordinated with
capping and the thermal policy (controllers.coordination): a change that would raise a pool's power while
its level or an ancestor is capped, while the site runs on one feed, or while its cooling zone is under a
thermal action is deferred with its reason; raising changes that remain are staged so that none takes a
level over its derated limit; lowering changes go first.

Critical pools are planned for a burst reserve (controllers.burst): the p99 of their 30 s-smoothed arrival
rate over the last hour or their held burst peak, whichever is larger, and lose at most one instance per
5 minutes; batch pools for the busiest second of the last 2 minutes x 1.1. The memory is seeded with the
hour before the run from the rate the twin replays (``trace_history``): what a deployment's telemetry would
hold. The twin's traces are periodic (10 minutes for a generated one), so that hour holds every burst of
the run: on a real day the memory holds only the bursts already seen (docs/performance.md)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from controllers.burst import BurstMemory, BurstSettings
from controllers.coordination import PlantState, coordinate, raises_power
from powerplane.site import FloatArray

DEFAULT_BURST = BurstSettings()

if TYPE_CHECKING:
    from powerplane.serving_profile import ServingProfile
    from powerplane.site import Site
    from sim import Twin
    from sim.workload import WorkloadSpec


def apply_pool_actions(twin: Twin, actions: Any) -> None:
    """A reconfiguration plan's (pool, knob, value) actions, in order, on the twin."""
    for a in actions:
        if a.knob == "set_tp":
            twin.set_tp(a.pool, int(a.value))
        elif a.knob == "set_instances":
            twin.set_instances(a.pool, int(a.value))
        else:
            twin.lock_clocks(twin.pool_gpus(a.pool), a.value)


def trace_history(twin: Twin, pools: list[int], seconds: int) -> FloatArray:
    """The smoothed arrival rate (requests/s) of these pools over the `seconds` before the twin's present,
    oldest first, from the trace the twin replays (shifted and scaled per pool; surges aside)."""
    from sim.trace import rate_table

    wl = twin.workload
    table = rate_table(wl.resolved_trace(), wl.rate_window_s)
    t = twin.t_s + np.arange(-seconds, 0, dtype=np.float64)
    out = np.zeros((len(pools), seconds))
    for row, i in enumerate(pools):
        spec = twin.pools[i].spec
        sec = np.mod(t + spec.shift_s, table.period_s).astype(np.int64)
        out[row] = table.rate[np.minimum(sec, table.rate.size - 1)] * spec.rate_scale
    return out


class Reconfigurer:
    """Every `every_s` it plans each profiled pool's instance count, TP and clock for the forecast load and
    applies the plan's actions to the twin, as far as the coordination allows. The forecast of a batch pool
    is the busiest second of the last `lookback_s` x `headroom`; a critical pool's is at least its burst
    reserve (module docstring; `burst=None`: the busiest-second forecast for every pool, as before). Pools
    whose class the profile lacks are left alone. `controller` (a CapController, optional) gives the zones'
    thermal stages; `deferred` counts refusals by reason."""

    def __init__(self, twin: Twin, every_s: int = 15, lookback_s: int = 120, headroom: float = 1.1,
                 profile: ServingProfile | None = None, controller: Any = None, coordinate: bool = True,
                 burst: BurstSettings | None = DEFAULT_BURST, seed_history: bool = True, smooth_s: int = 1) -> None:
        from controllers.reconfig import ReconfigPolicy
        from powerplane.serving_profile import ServingProfile, class_key

        prof = profile if profile is not None else ServingProfile.load()
        self.names: list[str] = []
        classes: list[int] = []
        self.index: list[int] = []
        for i, p in enumerate(twin.pools):
            key = class_key(p.spec.model, p.gpu.model, p.spec.ttft_slo_s, p.spec.tbt_slo_s, p.spec.max_batch,
                            p.spec.chunk_tokens)
            if key in prof.classes:
                self.names.append(p.spec.name)
                classes.append(prof.class_index(key))
                self.index.append(i)
        self.policy = ReconfigPolicy(prof, self.names, classes)
        self.freq = np.array([float(twin.gpu_fmax[twin.pool_gpus(n)].max()) for n in self.names])
        self.gpus = np.array([twin.pool_gpus(n).size for n in self.names], dtype=np.int64)
        self.every_s, self.headroom = every_s, headroom
        self.recent: list[FloatArray] = []
        self.lookback_s = lookback_s
        # The busiest `smooth_s`-second mean rate of the lookback is the forecast (1: the busiest second). The
        # profile's capacities are for Poisson arrivals, whose second-to-second noise they already absorb.
        self.smooth_s = max(1, int(smooth_s))
        self.t = 0
        self.controller = controller
        self.coordinate = coordinate
        self.deferred: dict[str, int] = {}  # refusals by reason (the level or state named)
        self.last_reasons: dict[str, str] = {}  # pool -> why its last change was deferred
        self.critical = np.array([twin.pools[i].spec.priority == "inference-critical" for i in self.index], bool)
        self.burst = None if burst is None else BurstMemory(len(self.names), burst)
        self.last_down_s = np.full(len(self.names), -np.inf)  # when each pool last lost an instance
        if self.burst is not None and seed_history and self.names:
            self.burst.seed(trace_history(twin, self.index, int(burst.memory_s) if burst else 0))

    def plant(self, twin: Twin, fr: Any) -> PlantState:
        stage = getattr(self.controller, "zone_stage", None)
        return PlantState(np.asarray(fr.level_power_w, dtype=np.float64), np.asarray(fr.level_alive, dtype=bool),
                          np.asarray(fr.limit_w, dtype=np.float64),
                          np.asarray(twin.lock_phi * twin.gpu_fmax, dtype=np.float64),
                          None if stage is None else np.asarray(stage))

    def __call__(self, twin: Twin, fr: Any) -> int:
        from controllers.reconfig import PoolConfigs

        arrivals = np.asarray(fr.pools.arrivals, dtype=np.float64)[self.index]
        self.recent.append(arrivals)
        del self.recent[:-self.lookback_s]
        if self.burst is not None:
            self.burst.add(arrivals)
        self.t += 1
        if not self.names or self.t % self.every_s:
            return 0
        inst, tp = zip(*(twin.pool_config(n) for n in self.names), strict=True)
        current = PoolConfigs.of(inst, tp, self.freq.tolist())
        forecast, floor = self.forecast(current)
        plan, actions = self.policy.decide(float(self.t), forecast, current, self.gpus, min_gpus=floor)
        down = plan.config.instances * plan.config.tp < current.instances * current.tp
        self._raising = np.zeros(len(self.names), dtype=bool)
        allow = self._coordinate(twin, fr, plan, current) if self.coordinate else np.ones(len(self.names), bool)
        self.policy.defer(plan.changed & ~allow)
        # Lowering changes first: the headroom they free is there before anything rises.
        order = sorted(range(len(self.names)), key=lambda i: bool(plan.changed[i] and allow[i] and
                                                                  self._raising[i]))
        chosen = [a for i in order if allow[i] for a in actions if a.pool == self.names[i]]
        apply_pool_actions(twin, chosen)
        self.freq = np.where(allow, plan.config.freq_mhz, self.freq)
        self.last_down_s = np.where(allow & down, float(self.t), self.last_down_s)
        return len(chosen)

    def forecast(self, current: Any) -> tuple[FloatArray, np.ndarray | None]:
        """Each pool's forecast (requests/s) and the GPUs it keeps serving at least (None: no floor). A
        critical pool: at least its burst reserve, and at most one instance fewer per `step_down_s`."""
        busiest = _busiest(np.asarray(self.recent), self.smooth_s) * self.headroom
        if self.burst is None:
            return busiest, None
        fc = np.where(self.critical, np.maximum(busiest, self.burst.reserve_rps()), busiest)
        serving = current.instances * current.tp
        may_drop = (self.t - self.last_down_s) >= self.burst.s.step_down_s
        one_fewer = np.maximum(current.instances - 1, 0) * current.tp
        floor = np.where(self.critical, np.where(may_drop, one_fewer, serving), 0)
        return fc, floor.astype(np.int64)

    def _coordinate(self, twin: Twin, fr: Any, plan: Any, current: Any) -> np.ndarray:
        site = twin.site
        st = self.plant(twin, fr)
        gpus = [np.asarray(twin.pool_gpus(n)) for n in self.names]
        self._raising = np.array([bool(plan.changed[i]) and raises_power(
            int(current.instances[i]), int(plan.config.instances[i]), float(plan.config.freq_mhz[i]),
            st.gpu_lock_mhz[gpus[i]], float(plan.current_power_w[i]), float(plan.power_w[i]))
            for i in range(len(self.names))], dtype=bool)
        feed_lv = site.level_feed >= 0
        _, derated = site.limits_dark_w(feed_lv & ~st.level_alive)
        increase = np.nan_to_num(plan.power_w - plan.current_power_w, nan=0.0)
        # A pool at zero forecast still starts whole instances: count at least their idle draw per GPU added.
        started = np.maximum(plan.config.instances - current.instances, 0) * plan.config.tp
        increase = np.maximum(increase, started * site.gpu_max_w.mean() * 0.2)
        v = coordinate(site, st, gpus, self._raising, increase, derated)
        self.last_reasons = {self.names[i]: why for i, why in v.reasons.items()}
        for why in v.reasons.values():
            self.deferred[why] = self.deferred.get(why, 0) + 1
        return v.allow


def _busiest(recent: FloatArray, smooth_s: int) -> FloatArray:
    """Per pool (columns): the highest `smooth_s`-second mean of the rows (seconds, oldest first)."""
    w = min(smooth_s, recent.shape[0])
    if w <= 1:
        return np.asarray(recent.max(axis=0), dtype=np.float64)
    cs = np.cumsum(np.vstack([np.zeros((1, recent.shape[1])), recent]), axis=0)
    return np.asarray((cs[w:] - cs[:-w]).max(axis=0) / w, dtype=np.float64)


def deploy_for_peak(site: Site, wl: WorkloadSpec, seed: int = 0) -> tuple[WorkloadSpec, dict[str, int]]:
    """The workload with each profiled pool at the TP degree the reconfiguration's own planner picks for
    the pool's busiest 30 s of the trace (of the day, for a day run), before any traffic (so a re-shard costs
    nothing); the TP changed per pool name. What a deployment does once: the twin re-shards a whole pool at
    once, so under load the reconfiguration never changes TP, and a pool left at the default TP8 stays there
    (on GB200-class racks a TP8 llama3-405b instance misses the 0.1 s TBT floor whenever a 2,048-token
    prefill chunk shares its iteration; docs/performance.md, issue 14). The reconfiguration then moves
    instances and clocks."""
    from controllers.reconfig import PoolConfigs, ReconfigSettings, plan_pools
    from sim import Twin
    from sim.profiling import profile_for
    from sim.trace import rate_table

    twin = Twin(site, wl, seed=seed)
    profile, _ = profile_for(twin)
    rec = Reconfigurer(twin, profile=profile, burst=None, seed_history=False)
    if not rec.names:
        return wl, {}
    table = rate_table(wl.resolved_trace(), wl.rate_window_s)
    peak = np.array([float(table.rate.max()) * twin.pools[i].spec.rate_scale for i in rec.index])
    tp = [twin.pool_config(n)[1] for n in rec.names]
    # The planner at each TP degree in turn, from all slots at that degree: before traffic, nothing serves
    # during a re-shard, so its guard (the instances left serving must carry the load) does not apply.
    best: list[tuple[bool, float, int]] = [(False, -np.inf, int(t)) for t in tp]  # (meets margin, -power | cap, tp)
    for deg in profile.tp.tolist():
        n = rec.gpus // deg
        plan = plan_pools(profile, rec.policy.pool_class, peak, PoolConfigs.of(n.tolist(), [deg] * n.size,
                          rec.freq.tolist()), rec.gpus, ReconfigSettings(min_saving_frac=0.0))
        for i in range(len(rec.names)):
            ok = bool(plan.meets_margin[i])
            score = -float(plan.power_w[i]) if ok else float(plan.capacity_rps[i])
            if n[i] > 0 and (ok, score) > best[i][:2]:
                best[i] = (ok, score, int(plan.config.tp[i]))
    chosen = {n: b[2] for n, b, old in zip(rec.names, best, tp, strict=True) if b[2] != int(old)}
    pools = tuple(replace(p, tp=chosen.get(p.name, p.tp)) for p in wl.pools)
    return replace(wl, pools=pools), chosen
