"""The digital twin engine: a site's GPUs, serving, training, power tree and cooling, stepped in time.

``Twin(site, workload, scenario, config, seed).step(dt_s)`` advances the whole site by ``dt_s`` and returns
a :class:`TwinFrame`: what the collectors would read (the field names of ``sim.fleet.FleetFrame``,
so ``sim/source`` can switch to it) plus the ground truth (true power at every level, request
latencies, energy). Commands (power limits, clock locks, instance count, tensor parallelism, routing
weights) return what was actually applied. Pure numpy, no I/O, deterministic for a seed: the workload,
hardware variation and sensors draw from separate streams spawned from the seed.

Work is organised in *units*: every instance slot of every inference pool, every training job, and one
idle unit per server type for GPUs that run nothing. A unit's GPUs share a clock and a phase, so the
expensive models run per unit (a few thousand) and per-GPU work is a handful of gathers.

What the twin holds is in ``sim/state.py`` (constants and :class:`TwinState`); a step runs the phases of
``sim/phases/`` in order; the pools' instance table and routing are in ``sim/pools.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from powerplane.schemas import FacilityReading
from powerplane.site import FEEDS, PRIORITIES, FloatArray, IntArray, Site
from powerplane.validation import ConfigError
from sim.frames import JOB_CKPT, JOB_COMM, JOB_COMPUTE, JOB_OFF, JobStats, PoolStats, TwinFrame
from sim.phases.electrical import Supply, supply, update_feeds
from sim.phases.power import GpuPower, gpu_power, solve_clocks
from sim.phases.sensors import Readings, read_sensors
from sim.phases.serving import pool_stats, serve
from sim.phases.thermal import Cooling, cool
from sim.phases.workload import arrivals, job_stats, train
from sim.physics import quantize_phi
from sim.pools import Pool, apply_availability, build_pools, new_table, requeue, routing_probs
from sim.scenario import Action, Event, Scenario, feed_levels
from sim.serving import SERVING, STARTING, InstanceTable, Pending, Requests, min_tp
from sim.state import (
    Hardware,
    TwinConfig,
    TwinState,
    build_hardware,
    build_power_tree,
    build_sensors,
    build_units,
    initial_state,
)
from sim.ups import UpsBank
from sim.workload import (
    TrainingState,
    WorkloadSpec,
    carve,
    default_workload,
    place,
    rate_table,
    validate_workload,
)


class Twin:
    """Digital twin of a site. See the module docstring; docs/twin.md describes every model."""

    def __init__(self, site: Site, workload: WorkloadSpec | None = None, scenario: Scenario | None = None,
                 config: TwinConfig | None = None, seed: int = 0, epoch_s: float = 0.0) -> None:
        self.site = site
        self.cfg = config or TwinConfig()
        self.seed = seed
        self.epoch_s = epoch_s
        seq = np.random.SeedSequence(seed)
        r_work, r_hw, r_meas = (np.random.default_rng(s) for s in seq.spawn(3))
        self._rng_work, self._rng_meas = r_work, r_meas
        self.workload = workload if workload is not None else default_workload(site, serving_cfg=self.cfg.serving)
        validate_workload(self.workload, site)
        self.trace = self.workload.resolved_trace()
        self._rates = rate_table(self.trace, self.workload.rate_window_s)
        self._seq_tok = float(self.trace.prompt.mean() + self.trace.output.mean())  # typical sequence context
        self.hw: Hardware = build_hardware(site, self.cfg, r_hw)
        wl = self.workload
        pl = place(site, wl)
        self.pools: list[Pool]
        self.pools, errs = build_pools(site, wl, pl, self.hw, self.cfg.serving)
        errs += [f"{job.name}: got no GPUs" for job, gpus in zip(wl.jobs, pl.job_gpus, strict=True) if gpus.size == 0]
        if errs:
            raise ConfigError(errs, "<workload>")
        self.job_gpus = pl.job_gpus
        self.job_priority = np.array([PRIORITIES.index(j.priority) for j in wl.jobs], dtype=np.int64)
        self.pool_priority = np.array([PRIORITIES.index(p.spec.priority) for p in self.pools], dtype=np.int64)
        tab = new_table(self.pools, 0.0, self._seq_tok, self.cfg.serving)
        self._build_units(tab.n)
        self.tree = build_power_tree(site, self.cfg, r_hw)
        self.sensors = build_sensors(site, self.cfg.measurement, self.hw.variation, r_meas)
        self.state: TwinState = initial_state(site, self.tree, self.sensors, tab, TrainingState.from_specs(wl.jobs),
                                              len(self.pools), len(wl.jobs))
        self.scenario = scenario
        self._actions: list[Action] = []
        if scenario is not None:
            scenario.check(site, [p.spec.name for p in self.pools], [j.name for j in wl.jobs])
            self._actions = scenario.actions()
        self._next_action = 0
        # The UPS lineups and their SNMP signal (sim/ups.py): its own generator, so the frames do not change.
        self.ups = UpsBank(site, scenario.ups if scenario is not None else None, seed=seed, epoch_s=epoch_s)

    def _build_units(self, n_inst: int) -> None:
        self.units = build_units(self.site, self.hw, [(p.lo, p.slots) for p in self.pools], self.job_gpus, n_inst)

    # ---- what callers read -------------------------------------------------------------------------
    @property
    def t_s(self) -> float:
        return self.state.t_s

    @property
    def limit_w(self) -> FloatArray:
        return self.state.limit_w

    @property
    def lock_phi(self) -> FloatArray:
        return self.state.lock_phi

    @property
    def temp_c(self) -> FloatArray:
        return self.state.temp_c

    @property
    def tab(self) -> InstanceTable:
        return self.state.tab

    @property
    def n_inst(self) -> int:
        return self.units.n_inst

    @property
    def gpu_type(self) -> IntArray:
        return self.hw.gpu_type

    @property
    def gpu_fmax(self) -> FloatArray:
        return self.hw.gpu_fmax

    @property
    def variation(self) -> FloatArray:
        return self.hw.variation

    @property
    def gain(self) -> FloatArray:
        return self.sensors.gain

    # ======================================================================================
    # Commands (each returns what was applied)
    # ======================================================================================
    def clamp_limit(self, gpus: IntArray, limit_w: FloatArray) -> FloatArray:
        return np.asarray(np.clip(limit_w, self.site.gpu_min_w[gpus], self.site.gpu_max_w[gpus]), dtype=np.float64)

    def set_limit(self, gpus: IntArray, limit_w: FloatArray | float) -> FloatArray:
        """Set GPU power limits, clamped to each GPU's [min, max] like the driver does."""
        g = np.asarray(gpus, dtype=np.int64)
        applied = self.clamp_limit(g, np.broadcast_to(np.asarray(limit_w, dtype=np.float64), g.shape))
        lim = self.state.limit_w.copy()  # copy-on-write: frames already handed out keep their limits
        lim[g] = applied
        self.state.limit_w = lim
        self.state.limits_dirty = True
        return applied

    def lock_clocks(self, gpus: IntArray, mhz: FloatArray | float) -> FloatArray:
        """Lock SM clocks (nvidia-smi -lgc): rounded down to a supported clock, clamped to [min, max] MHz.

        NaN unlocks (the GPU may boost to max again). Returns the applied clock (max where unlocked).
        """
        g = np.asarray(gpus, dtype=np.int64)
        want = np.broadcast_to(np.asarray(mhz, dtype=np.float64), g.shape)
        fmax, fmin = self.hw.gpu_fmax[g], self.hw.gpu_fmin[g]
        f = np.where(np.isnan(want), fmax, np.clip(np.nan_to_num(want, nan=0.0), fmin, fmax))
        phi = quantize_phi(f / fmax, fmax, fmin, self.cfg.power.clock_step_mhz)
        lock = self.state.lock_phi.copy()
        lock[g] = phi
        self.state.lock_phi = lock
        self.state.limits_dirty = True
        return np.asarray(phi * fmax, dtype=np.float64)

    def reset_clocks(self, gpus: IntArray) -> FloatArray:
        return self.lock_clocks(gpus, np.nan)

    @property
    def floor_w(self) -> FloatArray:
        """Power floor per GPU, W (0: none); what it burns is min(floor, limit) while the GPU is on."""
        return self.state.floor_w

    def set_floor(self, gpus: IntArray, floor_w: FloatArray | float) -> FloatArray:
        """Hold a power floor (GPU power smoothing): each GPU draws at least min(floor, its limit) while on.

        Negative floors count as none; a floor above the GPU's maximum is held at the maximum. Returns the
        floor each GPU now holds, W. NaN or 0 clears it."""
        g = np.asarray(gpus, dtype=np.int64)
        want = np.nan_to_num(np.broadcast_to(np.asarray(floor_w, dtype=np.float64), g.shape), nan=0.0)
        applied = np.clip(want, 0.0, self.site.gpu_max_w[g])
        fl = self.state.floor_w.copy()
        fl[g] = applied
        self.state.floor_w = fl
        self.state.limits_dirty = True
        return np.asarray(applied, dtype=np.float64)

    def clear_floor(self, gpus: IntArray) -> FloatArray:
        return self.set_floor(gpus, 0.0)

    def pool_index(self, pool: str | int) -> int:
        if isinstance(pool, int):
            return pool
        for i, p in enumerate(self.pools):
            if p.spec.name == pool:
                return i
        raise KeyError(f"unknown pool '{pool}' (known: {', '.join(p.spec.name for p in self.pools)})")

    def pool_names(self) -> list[str]:
        return [p.spec.name for p in self.pools]

    def pool_slots(self, pool: str | int) -> IntArray:
        """(n_slots, tp) GPU indices of a pool's instance slots (active ones first)."""
        return self.pools[self.pool_index(pool)].slots

    def pool_gpus(self, pool: str | int) -> IntArray:
        """Every GPU a pool owns (for per-pool commands such as lock_clocks)."""
        return self.pools[self.pool_index(pool)].gpus

    def pool_config(self, pool: str | int) -> tuple[int, int]:
        """(instances wanted, tensor-parallel degree) of a pool now."""
        p = self.pools[self.pool_index(pool)]
        return p.n_active, p.tp

    def set_instances(self, pool: str | int, n: int) -> int:
        """Run n instances of a pool (clamped to its slots). New ones load weights first (start delay)."""
        p = self.pools[self.pool_index(pool)]
        p.n_active = int(max(0, min(int(n), p.slots.shape[0])))
        self._apply_availability()
        return p.n_active

    def allowed_tp(self, pool: str | int) -> list[int]:
        p = self.pools[self.pool_index(pool)]
        lo = min_tp(p.model, p.gpu, self.cfg.serving)
        out = []
        tp = 1
        while tp <= p.gpus.size:
            if tp >= lo and carve(self.site, p.gpus, tp).shape[0] > 0:
                out.append(tp)
            tp *= 2
        return out

    def set_tp(self, pool: str | int, tp: int) -> int:
        """Change a pool's tensor parallelism: every instance re-shards and serves nothing meanwhile.

        The requested degree is clamped to the nearest one the model fits in and the GPUs allow. Running
        sequences are aborted; waiting requests move to the new instances (they wait there).
        """
        pi = self.pool_index(pool)
        p = self.pools[pi]
        allowed = self.allowed_tp(pi)
        if not allowed:
            return p.tp
        applied = min(allowed, key=lambda a: (abs(math.log2(a) - math.log2(max(tp, 1))), a))
        if applied == p.tp:
            return applied
        st = self.state
        old_tab = st.tab
        active_gpus = p.n_active * p.tp
        st.aborted[pi] += float(old_tab.B[p.lo:p.hi].sum())
        p.tp = applied
        p.slots = carve(self.site, p.gpus, applied)
        p.n_active = min(p.slots.shape[0], max(1 if active_gpus else 0, math.ceil(active_gpus / applied)))
        old_lo_all = np.array([q.lo for q in self.pools], dtype=np.int64)
        st.tab = new_table(self.pools, st.t_s, self._seq_tok, self.cfg.serving, fresh=pi, old=old_tab)
        new_lo_all = np.array([q.lo for q in self.pools], dtype=np.int64)
        # Map pending requests to the new table: other pools shift, this pool's are re-routed.
        pend = st.pending
        pool_of = old_tab.pool[pend.inst]
        moved = pool_of == pi
        new_inst = np.where(moved, 0, pend.inst - old_lo_all[pool_of] + new_lo_all[pool_of])
        st.pending = Pending(new_inst, pend.t_arr, pend.prompt, pend.output, pend.seg)
        self._build_units(st.tab.n)
        st.limits_dirty = True
        requeue(st, self.pools, moved, pool_of, self._rng_work)
        return applied

    def set_routing(self, pool: str | int, weights: FloatArray | Sequence[float]) -> FloatArray:
        """Routing weights over a pool's instance slots: negatives become 0; returns the applied weights
        normalized over the instances that can take requests (all zero: uniform over them)."""
        pi = self.pool_index(pool)
        p = self.pools[pi]
        w = np.asarray(weights, dtype=np.float64).ravel()
        n = p.hi - p.lo
        if w.size != n:
            raise ValueError(f"pool '{p.spec.name}' has {n} instance slots, got {w.size} weights")
        self.state.tab.weight[p.lo:p.hi] = np.clip(np.nan_to_num(w, nan=0.0), 0.0, None)
        return routing_probs(self.state.tab, len(self.pools))[p.lo:p.hi].copy()

    def lose_feed(self, feed: str | None, at_s: float | None = None) -> None:
        """Lose every utility level of a feed (None restores all utility levels): fleet compatibility.
        `at_s`: when, in simulated seconds (default: now), for the UPS traps."""
        for f in FEEDS if feed is None else [feed]:
            for lv in feed_levels(self.site, f):
                (self.restore_level if feed is None else self.lose_level)(lv)
        self._sync_ups(self.t_s if at_s is None else at_s)

    def _sync_ups(self, t_s: float) -> None:
        self.ups.sync(t_s, *self.ups.inputs_from_levels(self.state.level_alive))

    def facility_readings(self, now_s: float) -> list[FacilityReading]:
        """The UPS polls and traps delivered by simulated time `now_s` (sim/ups.py), each once: call it after
        each step with the twin's time to feed them to the stage."""
        return self.ups.due(now_s)

    def lose_level(self, level_id: str) -> None:
        i = self.site.level(level_id)
        self.state.level_lost[i] = True
        update_feeds(self.state, self.tree)

    def restore_level(self, level_id: str) -> None:
        i = self.site.level(level_id)
        st = self.state
        st.level_lost[i] = False
        st.level_tripped[i] = False
        st.breaker_heat[i] = 0.0
        update_feeds(st, self.tree)

    def set_cooling(self, zone_id: str, capacity_frac: float) -> float:
        zi = int(np.flatnonzero(self.tree.zone_lv == self.site.level(zone_id))[0])
        self.state.zone_frac[zi] = float(np.clip(capacity_frac, 0.0, 1.0))
        return float(self.state.zone_frac[zi])

    def set_surge(self, factor: float, pools: Sequence[str] | None = None, priority: str | None = None) -> None:
        for p in self.pools:
            if (pools is None and priority is None) or (pools is not None and p.spec.name in pools) or \
                    (priority is not None and p.spec.priority == priority):
                p.surge = float(factor)

    def set_dropout(self, racks: Sequence[str], on: bool) -> None:
        for r in racks:
            self.state.dropout[self.site.rack_index(r)] = on

    def set_stuck(self, rack: str, sensor: str, index: int, on: bool) -> None:
        key = (sensor, self.site.rack_index(rack), int(index))
        if on:
            self.state.stuck[key] = None  # captured at the next reading
        else:
            self.state.stuck.pop(key, None)

    def start_job(self, name: str) -> None:
        j = [x.name for x in self.workload.jobs].index(name)
        jobs, t_s = self.state.jobs, self.state.t_s
        jobs.start_s[j] = t_s
        if jobs.stop_s[j] <= t_s:
            jobs.stop_s[j] = math.inf
        jobs.next_ckpt[j] = t_s + jobs.ckpt_every_s[j]

    def stop_job(self, name: str) -> None:
        j = [x.name for x in self.workload.jobs].index(name)
        self.state.jobs.stop_s[j] = self.state.t_s

    # ======================================================================================
    # Internal state changes
    # ======================================================================================
    def _apply_availability(self) -> None:
        apply_availability(self.site, self.state, self.pools, self.units, self.cfg.serving.start_delay_s,
                           self._rng_work)

    def _fire_events(self, t: float) -> None:
        while self._next_action < len(self._actions) and self._actions[self._next_action].at_s <= t + 1e-9:
            a = self._actions[self._next_action]
            self._next_action += 1
            self._apply_event(a.event, a.start)
            self.state.events.append(f"t={t:.1f}s {'start' if a.start else 'end'} {a.event.kind} "
                                     f"{dict(a.event.params)}")

    def _apply_event(self, e: Event, start: bool) -> None:
        k = e.kind
        if k == "lose_feed":
            for lv in feed_levels(self.site, str(e.get("feed"))):
                (self.lose_level if start else self.restore_level)(lv)
        elif k == "lose_level":
            (self.lose_level if start else self.restore_level)(str(e.get("level")))
        elif k == "restore_level":
            self.restore_level(str(e.get("level")))
        elif k == "cooling_failure":
            self.set_cooling(str(e.get("zone")), float(e.get("capacity_frac", 0.0)) if start else 1.0)
        elif k == "load_surge":
            pools = e.get("pools")
            prio = e.get("priority")
            self.set_surge(float(e.get("factor")) if start else 1.0, pools, prio)
        elif k == "telemetry_dropout":
            self.set_dropout(list(e.get("racks")), start)
        elif k == "stuck_sensor":
            self.set_stuck(str(e.get("rack")), str(e.get("sensor")), int(e.get("index", 0)), start)
        elif k == "job_start":
            self.start_job(str(e.get("job")))
        elif k == "job_stop":
            self.stop_job(str(e.get("job")))
        elif k == "false_trap":
            self.ups.false_trap(str(e.get("lineup")), self.state.t_s)

    # ======================================================================================
    # The step
    # ======================================================================================
    def step(self, dt_s: float = 1.0) -> TwinFrame:
        """Advance the site by dt_s: the phases of sim/phases/, in order (see its docstring)."""
        if not dt_s > 0:
            raise ValueError(f"dt_s must be > 0, got {dt_s}")
        site, cfg, st = self.site, self.cfg, self.state
        hw, units, tree = self.hw, self.units, self.tree
        t0 = st.t_s
        self._fire_events(t0)
        self._sync_ups(t0)  # a feed lost by an event or a call since the last step: its traps date from t0
        tab = st.tab
        ready = (tab.state == STARTING) & (tab.ready_at <= t0 + 1e-9)
        tab.state[ready] = SERVING
        if st.avail_dirty:
            self._apply_availability()
        n_sub = max(1, math.ceil(dt_s / cfg.serving.substep_s - 1e-9))
        clk = solve_clocks(site, cfg.power, cfg.thermal, hw, units, st)
        arr = arrivals(self._rates, self.pools, st, t0, dt_s, self._rng_work)
        res = serve(cfg.power, cfg.serving, units, st, clk, arr, t0, dt_s, n_sub)
        js = train(cfg.power, units, st, clk, t0, dt_s, n_sub)
        gp = gpu_power(site, hw, units, st, res, js.power_w, js.busy, js.phi, js.power_natural_w)
        el = supply(site, cfg.electrical, tree, st, gp.p_true, gp.util_gpu, dt_s)
        co = cool(site, cfg.thermal, hw, tree, st, el.rack_w, gp.p_true, dt_s)
        st.gpu_energy_j = st.gpu_energy_j + gp.p_true * dt_s  # a new array: frames keep theirs
        site_w = float(el.rack_w.sum())
        st.site_energy_j += site_w * dt_s
        st.floor_energy_j += gp.floor_wall_w * dt_s
        rd = read_sensors(site, cfg.measurement, cfg.thermal, hw, units, self.sensors, st, res, clk, js, gp,
                          co.inlet_c, el.rack_a, el.rack_b, t0, dt_s, self._rng_meas)
        pools = pool_stats(self.pools, self.pool_priority, hw, units, st, res, arr.inst, gp.p_true, dt_s)
        jobs = job_stats([j.name for j in self.workload.jobs], self.job_priority, units, st, clk, js)
        st.t_s = t0 + dt_s
        st.first = False
        self._sync_ups(st.t_s)  # a breaker that tripped in this step
        self.ups.advance(st.t_s, el.levels[self.ups.level])
        events, st.events = st.events, []
        return self._frame(gp, el, co, rd, site_w, pools, jobs, res.requests, events)

    def _frame(self, gp: GpuPower, el: Supply, co: Cooling, rd: Readings, site_w: float, pools: PoolStats,
               jobs: JobStats, requests: Requests, events: list[str]) -> TwinFrame:
        st = self.state
        return TwinFrame(
            t_s=st.t_s, power_w=rd.power_w, temp_c=rd.temp_c, sm_clock_mhz=rd.sm_clock_mhz, limit_w=st.limit_w,
            util=rd.util, inlet_c=rd.inlet_c, pdu_power_w=rd.pdu_power_w, rack_power_w=el.rack_w,
            energy_j=st.energy_meas_j, throttle_reasons=rd.throttle, power_instant_w=rd.power_instant_w,
            gpu_power_true_w=gp.p_true, gpu_temp_true_c=st.temp_c,
            gpu_clock_true_mhz=(gp.u_phi * self.units.u_fmax)[self.units.gpu_unit],
            gpu_energy_true_j=st.gpu_energy_j, gpu_floor_w=np.minimum(st.floor_w, st.limit_w),
            server_power_w=el.srv_in, server_dc_w=el.dc,
            rack_feed_power_w=np.stack([el.rack_a, el.rack_b], axis=1), level_power_w=el.levels,
            level_alive=st.level_alive.copy(), breaker_heat=st.breaker_heat.copy(),
            zone_supply_c=st.zone_supply.copy(), zone_heat_w=co.heat_w, zone_capacity_w=co.capacity_w,
            rack_inlet_true_c=co.inlet_c, site_power_w=site_w, site_energy_j=st.site_energy_j,
            floor_extra_gpu_w=gp.floor_gpu_w, floor_extra_w=gp.floor_wall_w, floor_energy_j=st.floor_energy_j,
            pools=pools, jobs=jobs, requests=requests, events=events,
        )

    def run(self, duration_s: float, dt_s: float = 1.0) -> list[TwinFrame]:
        """Step for duration_s (convenience for tests and what-ifs)."""
        return [self.step(dt_s) for _ in range(max(1, round(duration_s / dt_s)))]


__all__ = ["JOB_CKPT", "JOB_COMM", "JOB_COMPUTE", "JOB_OFF", "JobStats", "PoolStats", "Twin",
           "TwinConfig", "TwinFrame"]
