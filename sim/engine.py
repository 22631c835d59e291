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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from powerplane.physics import (
    THROTTLE_APP_CLOCKS,
    THROTTLE_HW_SLOWDOWN,
    THROTTLE_HW_THERMAL,
    THROTTLE_IDLE,
    THROTTLE_SW_POWER_CAP,
    THROTTLE_SW_THERMAL,
    ElectricalConfig,
    breaker_heat_step,
    psu_efficiency,
)
from powerplane.site import FEED_KINDS, FEEDS, KIND_NAMES, PRIORITIES, FloatArray, IntArray, Site
from sim.physics import (
    GPU_SPECS,
    GpuSpec,
    MeasurementConfig,
    PowerConfig,
    ThermalConfig,
    busy_power,
    gpu_spec_for,
    gpu_temp_step,
    quantize_phi,
    solve_phi,
    thermal_ceiling,
    zone_supply_step,
)
from sim.scenario import Action, Event, Scenario, feed_levels
from sim.serving import (
    MODELS,
    OFF,
    SERVING,
    STARTING,
    InstanceTable,
    ModelSpec,
    Pending,
    PhasePower,
    Requests,
    ServeResult,
    ServingConfig,
    instance_constants,
    min_tp,
    representative_phases,
    segments,
    step_serving,
)
from sim.workload import (
    PoolSpec,
    TrainingState,
    WorkloadError,
    WorkloadSpec,
    carve,
    default_workload,
    generate_arrivals,
    place,
    rate_table,
    validate_workload,
)

BoolArray = npt.NDArray[np.bool_]
U32 = npt.NDArray[np.uint32]


def _wsum(idx: IntArray, weights: FloatArray, n: int) -> FloatArray:
    """Weighted counts (np.bincount with weights, typed as floats)."""
    return np.asarray(np.bincount(idx, weights=weights, minlength=n), dtype=np.float64)

# Job phases in JobStats.phase.
JOB_OFF, JOB_COMPUTE, JOB_COMM, JOB_CKPT = 0, 1, 2, 3


@dataclass(frozen=True)
class TwinConfig:
    """Every constant of the twin, by model; defaults and sources are in each dataclass."""

    power: PowerConfig = field(default_factory=PowerConfig)
    thermal: ThermalConfig = field(default_factory=ThermalConfig)
    electrical: ElectricalConfig = field(default_factory=ElectricalConfig)
    measurement: MeasurementConfig = field(default_factory=MeasurementConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    gpu_specs: tuple[GpuSpec, ...] = tuple(GPU_SPECS.values())  # by GpuSpec.model; others scale H100's

    def spec(self, model: str, max_w: float) -> GpuSpec:
        for s in self.gpu_specs:
            if s.model == model:
                return s
        return gpu_spec_for(model, max_w)


# ======================================================================================
# Frames
# ======================================================================================


@dataclass
class PoolStats:
    """Per pool, this step (arrays in pool order; ``names`` gives the order)."""

    names: list[str]
    priority: IntArray
    arrivals: FloatArray
    first_tokens: FloatArray  # requests that got their first token
    ttft_ok: FloatArray  # ... within the pool's TTFT SLO
    dropped: FloatArray  # timed out waiting, or no instance to go to
    aborted: FloatArray  # running sequences lost when their instance was taken down
    completed: FloatArray  # sequences finished (fluid: fractional)
    tokens: FloatArray  # output tokens generated
    tbt_ok_tokens: FloatArray  # decode tokens generated within the TBT SLO of the previous one
    decode_tokens: FloatArray
    tbt_mean_s: FloatArray  # mean time between tokens (NaN: no decode)
    waiting: FloatArray  # requests queued at the end of the step
    running: FloatArray  # sequences decoding at the end of the step
    serving: IntArray  # instances by state
    starting: IntArray
    off: IntArray
    power_w: FloatArray  # true mean GPU power of the pool's GPUs
    energy_j: FloatArray  # true GPU energy this step


@dataclass
class JobStats:
    names: list[str]
    priority: IntArray
    phase: IntArray  # JOB_OFF, JOB_COMPUTE, JOB_COMM, JOB_CKPT at the end of the step
    iterations: FloatArray  # cumulative training steps completed (fractional)
    power_w: FloatArray  # true mean GPU power of the job's GPUs
    sm_clock_mhz: FloatArray  # clock of the compute phase


@dataclass
class TwinFrame:
    """One step of the twin. The first nine fields match sim.fleet.FleetFrame."""

    t_s: float
    power_w: FloatArray  # measured GPU power (NVML-like: sampled window, gain error, noise; NaN = missing)
    temp_c: FloatArray  # measured GPU temperature
    sm_clock_mhz: FloatArray  # measured SM clock
    limit_w: FloatArray  # enforced power limit
    util: FloatArray  # measured utilization (busy fraction over the step)
    inlet_c: FloatArray  # (n_racks, max sensors) measured rack inlet; NaN where a rack has fewer sensors
    pdu_power_w: FloatArray  # (n_racks, 2) metered input per feed
    rack_power_w: FloatArray  # ground truth wall power per rack
    energy_j: FloatArray  # measured GPU energy counter (same gain error as power)
    throttle_reasons: U32  # NVML clocks-event reasons per GPU
    # ---- ground truth ----
    gpu_power_true_w: FloatArray  # mean over the step
    gpu_temp_true_c: FloatArray
    gpu_clock_true_mhz: FloatArray  # time-weighted mean over the step
    gpu_energy_true_j: FloatArray  # cumulative
    server_power_w: FloatArray  # wall input of every server
    server_dc_w: FloatArray  # what its PSUs deliver: GPUs + CPUs, NICs, fans (input minus PSU losses)
    rack_feed_power_w: FloatArray  # (n_racks, 2) true input per feed
    level_power_w: FloatArray  # every level of the site (Site.level_ids order)
    level_alive: BoolArray  # power-tree levels that carry power (lost and tripped ones do not)
    breaker_heat: FloatArray  # per level: accumulated fraction of the trip curve (trips at 1.0)
    zone_supply_c: FloatArray  # per cooling zone (Site.levels_of_kind("zone") order)
    zone_heat_w: FloatArray
    zone_capacity_w: FloatArray  # available cooling capacity now
    rack_inlet_true_c: FloatArray
    site_power_w: float
    site_energy_j: float  # cumulative wall energy
    pools: PoolStats
    jobs: JobStats
    requests: Requests  # requests that got their first token this step, with their TTFT
    events: list[str] = field(default_factory=list)  # scenario events and breaker trips this step


# ======================================================================================
# The twin
# ======================================================================================


@dataclass
class _Pool:
    spec: PoolSpec
    model: ModelSpec
    gpu: GpuSpec
    gpus: IntArray
    tp: int
    slots: IntArray  # (n_slots, tp) GPU indices
    n_active: int
    lo: int = 0  # slice of the instance table
    hi: int = 0
    surge: float = 1.0


class Twin:
    """Digital twin of a site. See the module docstring; docs/twin.md describes every model."""

    def __init__(self, site: Site, workload: WorkloadSpec | None = None, scenario: Scenario | None = None,
                 config: TwinConfig | None = None, seed: int = 0, epoch_s: float = 0.0) -> None:
        self.site = site
        self.cfg = config or TwinConfig()
        self.seed = seed
        self.epoch_s = epoch_s
        self.t_s = 0.0
        seq = np.random.SeedSequence(seed)
        r_work, r_hw, r_meas = (np.random.default_rng(s) for s in seq.spawn(3))
        self._rng_work, self._rng_meas = r_work, r_meas
        self.workload = workload if workload is not None else default_workload(site, serving_cfg=self.cfg.serving)
        validate_workload(self.workload, site)
        self.trace = self.workload.resolved_trace()
        self._rates = rate_table(self.trace, self.workload.rate_window_s)
        self._init_hardware(r_hw)
        self._init_workload()
        self._init_power_tree(r_hw)
        self._init_sensors(r_meas)
        self.scenario = scenario
        self._actions: list[Action] = []
        if scenario is not None:
            scenario.check(site, [p.spec.name for p in self.pools], [j.name for j in self.workload.jobs])
            self._actions = scenario.actions()
        self._next_action = 0
        self._events: list[str] = []
        self._first = True

    # ---- construction ----------------------------------------------------------------------------
    def _init_hardware(self, rng: np.random.Generator) -> None:
        s = self.site
        types = list(s.server_types)
        self._type_ids = types
        srv_t = np.array([types.index(t) for t in s.server_type], dtype=np.int64)
        self.gpu_type = srv_t[s.gpu_server]
        sts = [s.server_types[t] for t in types]
        specs = [self.cfg.spec(st.gpu_model, st.gpu_max_w) for st in sts]
        self._specs = specs

        def per_type(vals: Sequence[float]) -> FloatArray:
            return np.asarray(vals, dtype=np.float64)

        self.t_fmax = per_type([st.gpu_max_sm_mhz for st in sts])
        self.t_fmin = per_type([st.gpu_min_sm_mhz for st in sts])
        self.t_bare = per_type([st.gpu_idle_w for st in sts])
        self.t_ctx = per_type([max(sp.idle_ctx_w, st.gpu_idle_w) for st, sp in zip(sts, specs, strict=True)])
        self.t_kd = per_type([sp.dyn_w for sp in specs])
        self.t_km = per_type([sp.mem_w for sp in specs])
        self.t_slow = per_type([st.gpu_slowdown_c for st in sts])
        self.t_shut = per_type([st.gpu_shutdown_c for st in sts])
        g = self.gpu_type
        self.gpu_fmax = self.t_fmax[g]
        self.gpu_fmin = self.t_fmin[g]
        self.gpu_slow = self.t_slow[g]
        self.gpu_shut_c = self.t_shut[g]
        self.gpu_r = per_type([sp.thermal_r_c_per_w for sp in specs])[g]
        self.gpu_tau = per_type([sp.thermal_tau_s for sp in specs])[g]
        self.limit_w = s.gpu_max_w.copy()
        self.lock_phi = np.ones(s.n_gpus)
        sig = self.cfg.power.variation_sigma
        self.variation = np.clip(1.0 + sig * rng.standard_normal(s.n_gpus), 1.0 - 3 * sig, 1.0 + 3 * sig)
        self.temp_c = np.full(s.n_gpus, 30.0)
        self.gpu_shutdown = np.zeros(s.n_gpus, dtype=bool)
        self.gpu_energy_j = np.zeros(s.n_gpus)
        self._alpha_dt = -1.0
        self._alpha = np.zeros(s.n_gpus)

    def _init_workload(self) -> None:
        s = self.site
        wl = self.workload
        pl = place(s, wl)
        self.pools: list[_Pool] = []
        errs: list[str] = []
        for spec, gpus in zip(wl.pools, pl.pool_gpus, strict=True):
            types = np.unique(self.gpu_type[gpus]) if gpus.size else np.zeros(0, dtype=np.int64)
            if types.size != 1:
                errs.append(f"{spec.name}: needs GPUs of exactly one server type, got {types.size}")
                continue
            st = s.server_types[self._type_ids[int(types[0])]]
            gspec = self._specs[int(types[0])]
            model = MODELS[spec.model]
            tp = spec.tp
            if tp < min_tp(model, gspec, self.cfg.serving):
                errs.append(f"{spec.name}: {spec.model} does not fit in {tp} x {st.gpu_model} "
                            f"(needs TP >= {min_tp(model, gspec, self.cfg.serving)})")
                continue
            slots = carve(s, gpus, tp)
            if slots.shape[0] == 0:
                errs.append(f"{spec.name}: no instance of {tp} GPUs fits in its {gpus.size} GPUs")
                continue
            n_act = slots.shape[0] if spec.instances is None else max(0, min(spec.instances, slots.shape[0]))
            self.pools.append(_Pool(spec, model, gspec, gpus, tp, slots, n_act))
        for job, gpus in zip(wl.jobs, pl.job_gpus, strict=True):
            if gpus.size == 0:
                errs.append(f"{job.name}: got no GPUs")
        if errs:
            raise WorkloadError("<workload>", errs)
        self.job_gpus = pl.job_gpus
        self.jobs = TrainingState.from_specs(wl.jobs)
        self.job_priority = np.array([PRIORITIES.index(j.priority) for j in wl.jobs], dtype=np.int64)
        self.pool_priority = np.array([PRIORITIES.index(p.spec.priority) for p in self.pools], dtype=np.int64)
        self.job_avail = np.ones(len(wl.jobs), dtype=bool)
        self._job_types = np.array([int(self.gpu_type[g[0]]) for g in self.job_gpus], dtype=np.int64)
        self.tab = self._new_table()
        self.pending = Pending.empty(self.tab.n)
        self._aborted = np.zeros(len(self.pools))
        self._dropped = np.zeros(len(self.pools))
        self._build_units()
        self._limits_dirty = True
        self._avail_dirty = False
        self._hot = False

    def _pool_table(self, pi: int, p: _Pool, serving: bool) -> dict[str, FloatArray | IntArray]:
        k = instance_constants(p.model, p.gpu, p.tp, self.cfg.serving)
        n = p.slots.shape[0]
        one = np.ones(n)
        state = np.where(np.arange(n) < p.n_active, SERVING if serving else STARTING, OFF)
        seq_tok = float(self.trace.prompt.mean() + self.trace.output.mean())
        return {
            "pool": np.full(n, pi, dtype=np.int64), "state": state.astype(np.int64),
            "ready_at": np.where(state == STARTING, self.t_s + self.cfg.serving.reconfig_delay_s, 0.0),
            "weight": one.copy(), "c_tok": one * k.c_tok_s, "mem_w": one * k.mem_w_s,
            "mem_kv": one * k.mem_kv_s, "overhead": one * k.overhead_s, "kv_cap": one * k.kv_cap_tokens,
            "chunk": one * p.spec.chunk_tokens, "max_batch": one * p.spec.max_batch, "seq_tokens": one * seq_tok,
            "ttft_slo": one * p.spec.ttft_slo_s, "tbt_slo": one * p.spec.tbt_slo_s,
            "B": np.zeros(n), "R": np.zeros(n), "ctx": np.zeros(n), "head_done": np.zeros(n),
        }

    def _new_table(self, fresh: int | None = None, old: InstanceTable | None = None) -> InstanceTable:
        """Instance table over all pools; pool `fresh` gets new (reconfiguring) instances, others keep theirs."""
        parts: list[dict[str, FloatArray | IntArray]] = []
        lo = 0
        for pi, p in enumerate(self.pools):
            if old is None or pi == fresh:
                part = self._pool_table(pi, p, serving=old is None)
            else:
                part = {name: getattr(old, name)[p.lo:p.hi].copy() for name in _TABLE_FIELDS}
                part["pool"] = np.full(p.hi - p.lo, pi, dtype=np.int64)
            parts.append(part)
            n = p.slots.shape[0]
            p.lo, p.hi = lo, lo + n
            lo += n
        cols = {name: np.concatenate([pt[name] for pt in parts]) if parts else np.zeros(0)
                for name in _TABLE_FIELDS}
        cols["pool"] = cols["pool"].astype(np.int64)
        cols["state"] = cols["state"].astype(np.int64)
        tab = InstanceTable(**cols)  # type: ignore[arg-type]
        self.inst_slot = np.concatenate([np.arange(p.slots.shape[0]) for p in self.pools]) if self.pools else \
            np.zeros(0, dtype=np.int64)
        return tab

    def _build_units(self) -> None:
        s = self.site
        n_inst = self.tab.n
        n_jobs = len(self.job_gpus)
        n_types = len(self._type_ids)
        unit = np.full(s.n_gpus, -1, dtype=np.int64)
        for p in self.pools:
            unit[p.slots.ravel()] = p.lo + np.repeat(np.arange(p.slots.shape[0]), p.tp)
        for j, g in enumerate(self.job_gpus):
            unit[g] = n_inst + j
        idle = unit < 0
        unit[idle] = n_inst + n_jobs + self.gpu_type[idle]
        self.gpu_unit = unit
        self.n_inst, self.n_jobs = n_inst, n_jobs
        self.n_work = n_inst + n_jobs
        self.n_units = self.n_work + n_types
        self._order = np.argsort(unit, kind="stable")
        counts = np.bincount(unit, minlength=self.n_units)
        self._ustart = np.zeros(self.n_units + 1, dtype=np.int64)
        np.cumsum(counts, out=self._ustart[1:])
        self.unit_gpus = counts.astype(np.float64)
        # Per-unit hardware figures (a unit's GPUs are of one type).
        first = self._order[np.minimum(self._ustart[:-1], s.n_gpus - 1)]
        ut = self.gpu_type[first]
        ut[self.n_work:] = np.arange(n_types)
        self.unit_type = ut
        self.u_fmax, self.u_fmin = self.t_fmax[ut], self.t_fmin[ut]
        self.u_phimin = self.u_fmin / self.u_fmax
        self.u_bare, self.u_ctx = self.t_bare[ut], self.t_ctx[ut]
        self.u_kd, self.u_km = self.t_kd[ut], self.t_km[ut]
        self._inst_gpu_lists = None
        self._limits_dirty = True

    def _unit_min(self, x: FloatArray) -> FloatArray:
        """Minimum of a per-GPU array over each work unit's GPUs (instances, then jobs)."""
        if self.n_work == 0:
            return np.zeros(0)
        return np.asarray(np.minimum.reduceat(x[self._order], self._ustart[:self.n_work]), dtype=np.float64)

    def _init_power_tree(self, rng: np.random.Generator) -> None:
        s = self.site
        n_lv = len(s.level_ids)
        self.level_alive = np.ones(n_lv, dtype=bool)
        self.level_lost = np.zeros(n_lv, dtype=bool)  # by an event (vs tripped)
        self.level_tripped = np.zeros(n_lv, dtype=bool)
        self.breaker_heat = np.zeros(n_lv)
        feed_kind = np.array([KIND_NAMES[k] in FEED_KINDS for k in s.level_kind])
        self._brk = np.flatnonzero(feed_kind & (s.level_rated_w > 0))
        self._chain_kinds = [(s.levels_of_kind(k), s.level_parent[s.levels_of_kind(k)]) for k in ("pdu", "rpp", "ups")]
        # Every rack's chain of power-tree levels per feed (pdu, rpp, ups, utility), padded with the pdu.
        depth = 6
        chain = np.repeat(s.rack_pdu[:, :, None], depth, axis=2).copy()
        cur = s.rack_pdu.copy()
        for d in range(1, depth):
            par = s.level_parent[cur]
            cur = np.where(par >= 0, par, cur)
            chain[:, :, d] = cur
        self._chain = chain
        self.rack_feed_alive = np.ones((s.n_racks, 2), dtype=bool)
        self.rack_dark = np.zeros(s.n_racks, dtype=bool)
        st = [s.server_types[t] for t in s.server_type]
        self.srv_rating = np.array([t.rating_w for t in st], dtype=np.float64)
        self.srv_gpus = np.bincount(s.gpu_server, minlength=len(s.server_ids)).astype(np.float64)
        sig = self.cfg.electrical.feed_split_sigma
        self.srv_split_a = 0.5 * (1.0 + np.clip(sig * rng.standard_normal(len(s.server_ids)), -3 * sig, 3 * sig))
        # Cooling.
        self.zone_lv = s.levels_of_kind("zone")
        zmap = np.full(n_lv, -1, dtype=np.int64)
        zmap[self.zone_lv] = np.arange(self.zone_lv.size)
        self.rack_zpos = zmap[s.rack_zone]
        self.zone_setpoint = np.array([s.zone_supply_c.get(s.level_ids[z], 20.0) for z in self.zone_lv])
        self.zone_supply = self.zone_setpoint.copy()
        self.zone_frac = np.ones(self.zone_lv.size)
        self.zone_c = s.level_rated_w[self.zone_lv] / 1e3 * self.cfg.thermal.zone_heat_capacity_j_per_k_per_kw
        self.rack_rated = s.level_rated_w[s.rack_level]
        self.site_energy_j = 0.0

    def _init_sensors(self, rng: np.random.Generator) -> None:
        s = self.site
        m = self.cfg.measurement
        self.gain = 1.0 + rng.uniform(-m.gpu_gain_error, m.gpu_gain_error, s.n_gpus)
        self.max_sensors = int(max(1, s.rack_inlet_sensors.max()))
        has = np.arange(self.max_sensors)[None, :] < s.rack_inlet_sensors[:, None]
        self.inlet_has = has
        self.inlet_offset = np.where(has, rng.uniform(-m.inlet_offset_c, m.inlet_offset_c, has.shape), np.nan)
        self.pdu_gain = 1.0 + rng.uniform(-m.pdu_gain_error, m.pdu_gain_error, (s.n_racks, 2))
        self.inlet_phase = rng.uniform(0.0, 1.0, s.n_racks)
        self.pdu_phase = rng.uniform(0.0, 1.0, s.n_racks)
        self.gpu_phase = rng.uniform(0.0, 1.0, s.n_racks)
        self.noise = rng.standard_normal(max(m.noise_table_size, 4 * s.n_gpus + 16))
        self.noise_gpu = 1.0 + m.gpu_noise_frac * self.noise  # GPU power readings: (1 + noise), ready to multiply
        self.var_gain = self.variation * self.gain
        self._lim_gain = self.limit_w * self.gain
        self._lim_gain_src = self.limit_w
        self._gain_dt = (0.0, self.gain * 0.0)
        self.energy_meas_j = np.zeros(s.n_gpus)
        self.read_power = np.full(s.n_gpus, np.nan)
        self.read_inlet = np.full((s.n_racks, self.max_sensors), np.nan)
        self.read_pdu = np.full((s.n_racks, 2), np.nan)
        self.dropout = np.zeros(s.n_racks, dtype=bool)
        self.stuck: dict[tuple[str, int, int], float | None] = {}

    # ======================================================================================
    # Commands (each returns what was applied)
    # ======================================================================================
    def clamp_limit(self, gpus: IntArray, limit_w: FloatArray) -> FloatArray:
        return np.asarray(np.clip(limit_w, self.site.gpu_min_w[gpus], self.site.gpu_max_w[gpus]), dtype=np.float64)

    def set_limit(self, gpus: IntArray, limit_w: FloatArray | float) -> FloatArray:
        """Set GPU power limits, clamped to each GPU's [min, max] like the driver does."""
        g = np.asarray(gpus, dtype=np.int64)
        applied = self.clamp_limit(g, np.broadcast_to(np.asarray(limit_w, dtype=np.float64), g.shape))
        lim = self.limit_w.copy()  # copy-on-write: frames already handed out keep their limits
        lim[g] = applied
        self.limit_w = lim
        self._limits_dirty = True
        return applied

    def lock_clocks(self, gpus: IntArray, mhz: FloatArray | float) -> FloatArray:
        """Lock SM clocks (nvidia-smi -lgc): rounded down to a supported clock, clamped to [min, max] MHz.

        NaN unlocks (the GPU may boost to max again). Returns the applied clock (max where unlocked).
        """
        g = np.asarray(gpus, dtype=np.int64)
        want = np.broadcast_to(np.asarray(mhz, dtype=np.float64), g.shape)
        fmax, fmin = self.gpu_fmax[g], self.gpu_fmin[g]
        f = np.where(np.isnan(want), fmax, np.clip(np.nan_to_num(want, nan=0.0), fmin, fmax))
        phi = quantize_phi(f / fmax, fmax, fmin, self.cfg.power.clock_step_mhz)
        lock = self.lock_phi.copy()
        lock[g] = phi
        self.lock_phi = lock
        self._limits_dirty = True
        return np.asarray(phi * fmax, dtype=np.float64)

    def reset_clocks(self, gpus: IntArray) -> FloatArray:
        return self.lock_clocks(gpus, np.nan)

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
        old_tab = self.tab
        active_gpus = p.n_active * p.tp
        self._aborted[pi] += float(old_tab.B[p.lo:p.hi].sum())
        p.tp = applied
        p.slots = carve(self.site, p.gpus, applied)
        p.n_active = min(p.slots.shape[0], max(1 if active_gpus else 0, math.ceil(active_gpus / applied)))
        old_lo_all = np.array([q.lo for q in self.pools], dtype=np.int64)
        self.tab = self._new_table(fresh=pi, old=old_tab)
        new_lo_all = np.array([q.lo for q in self.pools], dtype=np.int64)
        # Map pending requests to the new table: other pools shift, this pool's are re-routed.
        pend = self.pending
        pool_of = old_tab.pool[pend.inst]
        moved = pool_of == pi
        new_inst = np.where(moved, 0, pend.inst - old_lo_all[pool_of] + new_lo_all[pool_of])
        self.pending = Pending(new_inst, pend.t_arr, pend.prompt, pend.output, pend.seg)
        self._build_units()
        self._requeue(moved, pool_of)
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
        self.tab.weight[p.lo:p.hi] = np.clip(np.nan_to_num(w, nan=0.0), 0.0, None)
        return self._routing_probs()[p.lo:p.hi].copy()

    def lose_feed(self, feed: str | None) -> None:
        """Lose every utility level of a feed (None restores all utility levels): fleet compatibility."""
        if feed is None:
            for f in FEEDS:
                for lv in feed_levels(self.site, f):
                    self.restore_level(lv)
            return
        for lv in feed_levels(self.site, feed):
            self.lose_level(lv)

    def lose_level(self, level_id: str) -> None:
        i = self.site.level(level_id)
        self.level_lost[i] = True
        self._update_feeds()

    def restore_level(self, level_id: str) -> None:
        i = self.site.level(level_id)
        self.level_lost[i] = False
        self.level_tripped[i] = False
        self.breaker_heat[i] = 0.0
        self._update_feeds()

    def set_cooling(self, zone_id: str, capacity_frac: float) -> float:
        zi = int(np.flatnonzero(self.zone_lv == self.site.level(zone_id))[0])
        self.zone_frac[zi] = float(np.clip(capacity_frac, 0.0, 1.0))
        return float(self.zone_frac[zi])

    def set_surge(self, factor: float, pools: Sequence[str] | None = None, priority: str | None = None) -> None:
        for p in self.pools:
            if (pools is None and priority is None) or (pools is not None and p.spec.name in pools) or \
                    (priority is not None and p.spec.priority == priority):
                p.surge = float(factor)

    def set_dropout(self, racks: Sequence[str], on: bool) -> None:
        for r in racks:
            self.dropout[self.site.rack_index(r)] = on

    def set_stuck(self, rack: str, sensor: str, index: int, on: bool) -> None:
        key = (sensor, self.site.rack_index(rack), int(index))
        if on:
            self.stuck[key] = None  # captured at the next reading
        else:
            self.stuck.pop(key, None)

    def start_job(self, name: str) -> None:
        j = [x.name for x in self.workload.jobs].index(name)
        self.jobs.start_s[j] = self.t_s
        if self.jobs.stop_s[j] <= self.t_s:
            self.jobs.stop_s[j] = math.inf
        self.jobs.next_ckpt[j] = self.t_s + self.jobs.ckpt_every_s[j]

    def stop_job(self, name: str) -> None:
        j = [x.name for x in self.workload.jobs].index(name)
        self.jobs.stop_s[j] = self.t_s

    # ======================================================================================
    # Internal state changes
    # ======================================================================================
    def _update_feeds(self) -> None:
        self.level_alive = ~(self.level_lost | self.level_tripped)
        alive: BoolArray = np.all(self.level_alive[self._chain], axis=2)  # (n_racks, 2)
        dark: BoolArray = ~np.any(alive, axis=1)
        self.rack_feed_alive = alive
        if (dark != self.rack_dark).any():
            self.rack_dark = dark
            self._avail_dirty = True

    def _routing_probs(self) -> FloatArray:
        tab = self.tab
        n_p = len(self.pools)
        serving = tab.state == SERVING
        starting = tab.state == STARTING
        has_serving = _wsum(tab.pool, serving, n_p) > 0
        elig = serving | (starting & ~has_serving[tab.pool])
        we = np.where(elig, tab.weight, 0.0)
        tot = _wsum(tab.pool, we, n_p)
        cnt = _wsum(tab.pool, elig, n_p)
        uniform = (tot[tab.pool] <= 0) & elig
        prob = np.where(uniform, 1.0 / np.maximum(cnt[tab.pool], 1.0), we / np.maximum(tot[tab.pool], 1e-300))
        return np.asarray(prob, dtype=np.float64)

    def _requeue(self, moved: BoolArray, pool_of: IntArray) -> None:
        """Send the marked waiting requests to other instances of their pool (to the back of the queue).

        pool_of: the pool of every pending request. Requests of a pool with nowhere to go are dropped.
        """
        pend = self.pending
        new_inst = pend.inst.copy()
        keep = np.ones(len(pend), dtype=bool)
        if moved.any():
            prob = self._routing_probs()
            for pi, p in enumerate(self.pools):
                sel = np.flatnonzero(moved & (pool_of == pi))
                if sel.size == 0:
                    continue
                pr = prob[p.lo:p.hi]
                if pr.sum() <= 0:
                    keep[sel] = False
                    self._dropped[pi] += sel.size
                    continue
                cdf = np.cumsum(pr) / pr.sum()
                pick = np.searchsorted(cdf, self._rng_work.random(sel.size), side="right")
                new_inst[sel] = p.lo + np.minimum(pick, pr.size - 1)
        order = np.lexsort((np.arange(len(pend)), moved, new_inst))
        order = order[keep[order]]
        inst = new_inst[order]
        self.pending = Pending(inst, pend.t_arr[order], pend.prompt[order], pend.output[order],
                               segments(inst, self.tab.n))

    def _take_down(self, mask: BoolArray) -> None:
        """Stop instances: running sequences are lost, waiting requests move to the pool's others."""
        tab = self.tab
        if not mask.any():
            return
        self._aborted += np.bincount(tab.pool[mask], weights=tab.B[mask], minlength=len(self.pools))
        tab.B[mask] = 0.0
        tab.R[mask] = 0.0
        tab.ctx[mask] = 0.0
        tab.head_done[mask] = 0.0
        tab.state[mask] = OFF
        pend = self.pending
        self._requeue(mask[pend.inst], tab.pool[pend.inst])

    def _apply_availability(self) -> None:
        """Reconcile instance states with what is wanted (pool sizes) and possible (power, temperature)."""
        s = self.site
        ok_gpu = ~(self.rack_dark[s.gpu_rack] | self.gpu_shutdown)
        ok = self._unit_min(ok_gpu.astype(np.float64)) > 0.5
        inst_ok = ok[:self.n_inst]
        self.job_avail = ok[self.n_inst:]
        tab = self.tab
        n_active = np.array([p.n_active for p in self.pools], dtype=np.int64)
        desired = self.inst_slot < n_active[tab.pool] if tab.n else np.zeros(0, dtype=bool)
        down = (tab.state != OFF) & ~(desired & inst_ok)
        up = (tab.state == OFF) & desired & inst_ok
        self._take_down(down)
        tab.state[up] = STARTING
        tab.ready_at[up] = self.t_s + self.cfg.serving.start_delay_s
        self._avail_dirty = False

    def _fire_events(self, t: float) -> None:
        while self._next_action < len(self._actions) and self._actions[self._next_action].at_s <= t + 1e-9:
            a = self._actions[self._next_action]
            self._next_action += 1
            self._apply_event(a.event, a.start)
            self._events.append(f"t={t:.1f}s {'start' if a.start else 'end'} {a.event.kind} "
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

    # ======================================================================================
    # The step
    # ======================================================================================
    def step(self, dt_s: float = 1.0) -> TwinFrame:
        if not dt_s > 0:
            raise ValueError(f"dt_s must be > 0, got {dt_s}")
        s = self.site
        cfg = self.cfg
        t0 = self.t_s
        self._fire_events(t0)
        tab = self.tab
        ready = (tab.state == STARTING) & (tab.ready_at <= t0 + 1e-9)
        tab.state[ready] = SERVING
        if self._avail_dirty:
            self._apply_availability()
        n_sub = max(1, math.ceil(dt_s / cfg.serving.substep_s - 1e-9))
        h = dt_s / n_sub

        # ---- clock ceilings and power limits per unit --------------------------------------
        if self._limits_dirty:
            self._u_limit = self._unit_min(self.limit_w)
            self._u_lock = self._unit_min(self.lock_phi)
            self._limits_dirty = False
        hot = bool(self.temp_c.max() >= cfg.thermal.sw_thermal_c) if s.n_gpus else False
        self._hot = hot
        th = thermal_ceiling(self.temp_c, self.gpu_slow, cfg.thermal) if hot else None
        u_th = self._unit_min(th) if th is not None else np.ones(self.n_work)
        ceiling = np.minimum(self._u_lock, u_th)
        ni, nw = self.n_inst, self.n_work
        lim = self._u_limit
        phimin = self.u_phimin[:nw]
        bare, ctxw, kd, km = self.u_bare[:nw], self.u_ctx[:nw], self.u_kd[:nw], self.u_km[:nw]
        c_mix, c_dec, mem, over = representative_phases(tab)
        pc = cfg.power
        nj = self.n_jobs
        # One solve for both instance phases and the jobs' compute phase.
        cat = np.concatenate
        c_all = cat([c_mix, c_dec, np.ones(nj)])
        m_all = cat([mem, mem, np.full(nj, pc.train_mem_ratio)])
        o_all = cat([over, over, np.zeros(nj)])
        sl_i = slice(0, ni)
        sl_j = slice(ni, nw)

        def two(x: FloatArray) -> FloatArray:
            return cat([x[sl_i], x[sl_i], x[sl_j]])

        phi_all, capped_all = solve_phi(two(lim), c_all, m_all, o_all, two(ceiling), two(phimin), two(bare),
                                        two(ctxw), two(kd), two(km), pc)
        fmax_u, fmin_u = self.u_fmax[:nw], self.u_fmin[:nw]
        phi_all = quantize_phi(phi_all, two(fmax_u), two(fmin_u), pc.clock_step_mhz)
        phi_mix, phi_dec, phi_job = phi_all[:ni], phi_all[ni:2 * ni], phi_all[2 * ni:]
        cap_mix, cap_dec, cap_job = capped_all[:ni], capped_all[ni:2 * ni], capped_all[2 * ni:]
        phi_idle_i = ceiling[sl_i]
        phi_ceil_j = ceiling[sl_j]

        # ---- inference ------------------------------------------------------------------------
        prob = self._routing_probs()
        mult = np.array([p.surge for p in self.pools], dtype=np.float64)
        arr = generate_arrivals(self._rates, [p.spec for p in self.pools], mult, tab.pool, prob, t0, dt_s,
                                self._rng_work)
        pp = PhasePower(phi_mix, phi_dec, phi_idle_i, bare[sl_i], ctxw[sl_i], kd[sl_i], km[sl_i], lim[sl_i])
        res, self.pending = step_serving(tab, self.pending, arr, t0, dt_s, n_sub, pp, pc, cfg.serving)

        # ---- training ---------------------------------------------------------------------------
        jb, jx, jkd, jkm = bare[sl_j], ctxw[sl_j], kd[sl_j], km[sl_j]
        jl = lim[sl_j]
        mr = pc.train_mem_ratio
        stretch = np.maximum(1.0 / phi_job, mr) / max(1.0, mr)
        p_comp = np.minimum(busy_power(phi_job, np.minimum(1.0, (1.0 / phi_job) / np.maximum(1.0 / phi_job, mr)),
                                       mr * phi_job / np.maximum(1.0, mr * phi_job), jb, jx, jkd, jkm, pc), jl)
        p_comm = np.minimum(busy_power(phi_ceil_j, np.full(nj, pc.train_comm_uc), np.full(nj, pc.train_comm_um),
                                       jb, jx, jkd, jkm, pc), jl)
        p_ckpt = np.minimum(busy_power(phi_ceil_j, np.full(nj, pc.train_ckpt_uc), np.full(nj, pc.train_ckpt_um),
                                       jb, jx, jkd, jkm, pc), jl)
        e_job = np.zeros(nj)
        busy_job = np.zeros(nj)
        phi_t_job = np.zeros(nj)
        ckpt_now = np.zeros(nj)
        on_now = np.zeros(nj)
        for k in range(n_sub):
            fc, fm, fk, on = self.jobs.advance(t0 + k * h, h, stretch, self.job_avail)
            off = 1.0 - on
            e_job += h * (fc * p_comp + fm * p_comm + fk * p_ckpt + off * jb)
            busy_job += h * (fc + fm + 0.1 * fk)
            phi_t_job += h * (fc * phi_job + (fm + fk) * phi_ceil_j + off * self.u_phimin[sl_j])
            ckpt_now, on_now = fk, on
        p_job = e_job / dt_s
        comp_now = self.jobs.phase_now() * on_now * (1.0 - (ckpt_now > 0))
        job_phase = np.where(on_now <= 0, JOB_OFF, np.where(ckpt_now > 0, JOB_CKPT,
                                                            np.where(comp_now > 0, JOB_COMPUTE, JOB_COMM)))

        # ---- per-GPU power ------------------------------------------------------------------------
        n_types = len(self._type_ids)
        u_power = cat([res.avg_power_w, p_job, self.t_bare])
        u_busy = cat([res.busy_frac, busy_job / dt_s, np.zeros(n_types)])
        u_phi = cat([res.avg_phi, phi_t_job / dt_s, self.t_fmin / self.t_fmax])
        gu = self.gpu_unit
        p_true = u_power[gu] * self.variation
        np.minimum(p_true, self.limit_w, out=p_true)
        dark_gpu: BoolArray | None = None
        if self.rack_dark.any() or self.gpu_shutdown.any():
            dark_gpu = self.rack_dark[s.gpu_rack]
            p_true[dark_gpu] = 0.0
            p_true[self.gpu_shutdown & ~dark_gpu] = self.site.gpu_idle_w[self.gpu_shutdown & ~dark_gpu]

        # ---- electrical ------------------------------------------------------------------------------
        ec = cfg.electrical
        n_srv = len(s.server_ids)
        util_gpu = u_busy[gu]
        gsum = _wsum(s.gpu_server, p_true, n_srv)
        srv_util = _wsum(s.gpu_server, util_gpu, n_srv) / np.maximum(self.srv_gpus, 1.0)
        other = s.server_other_w * (ec.other_idle_frac + (1.0 - ec.other_idle_frac) * srv_util)
        alive = self.rack_feed_alive[s.server_rack]
        both = alive[:, 0] & alive[:, 1]
        share_a = np.where(both, self.srv_split_a, alive[:, 0].astype(np.float64))
        share_b = np.where(both, 1.0 - self.srv_split_a, alive[:, 1].astype(np.float64))
        powered = alive[:, 0] | alive[:, 1]
        dc = np.where(powered, gsum + other, 0.0)
        side_a = dc * share_a
        side_b = dc * share_b
        in_a = side_a / psu_efficiency(side_a / self.srv_rating, s.server_psu_eff, ec)
        in_b = side_b / psu_efficiency(side_b / self.srv_rating, s.server_psu_eff, ec)
        srv_in = in_a + in_b
        rack_a = _wsum(s.server_rack, in_a, s.n_racks)
        rack_b = _wsum(s.server_rack, in_b, s.n_racks)
        rack_w = rack_a + rack_b
        levels = self._rollup(rack_a, rack_b, rack_w)
        self._breakers(levels, dt_s)

        # ---- thermal -------------------------------------------------------------------------------------
        tc = cfg.thermal
        nz = self.zone_lv.size
        heat = _wsum(self.rack_zpos, rack_w, nz)
        cap_w = s.level_rated_w[self.zone_lv] * self.zone_frac
        self.zone_supply = zone_supply_step(self.zone_supply, self.zone_setpoint, heat, cap_w, self.zone_c, dt_s)
        inlet = np.maximum(self.zone_supply[self.rack_zpos] + tc.recirc_c_at_rated * rack_w /
                           np.maximum(self.rack_rated, 1.0), tc.inlet_floor_c)
        if self._alpha_dt != dt_s:
            self._alpha = 1.0 - np.exp(-dt_s / self.gpu_tau)
            self._alpha_dt = dt_s
        gpu_inlet = inlet[s.gpu_rack]
        if self._first:
            self.temp_c = gpu_inlet + self.gpu_r * p_true
        else:
            self.temp_c = gpu_temp_step(self.temp_c, gpu_inlet, p_true, self.gpu_r, self._alpha)
        shut_now = self.gpu_shutdown
        if hot or self.gpu_shutdown.any():
            new_shut = (self.temp_c >= self.gpu_shut_c) | (
                self.gpu_shutdown & (self.temp_c >= self.gpu_slow - tc.shutdown_recover_c))
            if (new_shut != shut_now).any():
                self.gpu_shutdown = new_shut
                self._avail_dirty = True

        # ---- energy ---------------------------------------------------------------------------------------
        self.gpu_energy_j = self.gpu_energy_j + p_true * dt_s  # a new array: frames keep theirs
        site_w = float(rack_w.sum())
        self.site_energy_j += site_w * dt_s

        # ---- measurement ----------------------------------------------------------------------------------
        u_read_p, u_read_phi, u_capped = self._unit_readings(res, phi_mix, phi_dec, phi_idle_i, job_phase, phi_job,
                                                             phi_ceil_j, p_comp, p_comm, p_ckpt, cap_mix, cap_dec,
                                                             cap_job)
        frame_meas = self._measure(t0, dt_s, p_true, u_read_p, u_read_phi * self.u_fmax, util_gpu, inlet, rack_a,
                                   rack_b, dark_gpu)
        throttle = self._throttle(u_capped, u_busy, dark_gpu)

        # ---- statistics ---------------------------------------------------------------------------------
        pools = self._pool_stats(res, arr.inst, p_true, dt_s)
        jobs = JobStats(names=[j.name for j in self.workload.jobs], priority=self.job_priority,
                        phase=job_phase.astype(np.int64), iterations=self.jobs.iterations.copy(),
                        power_w=p_job.copy(), sm_clock_mhz=phi_job * fmax_u[sl_j])
        self.t_s = t0 + dt_s
        self._first = False
        events, self._events = self._events, []
        power_w, temp_c, clock, util, inlet_c, pdu = frame_meas
        fr = TwinFrame(
            t_s=self.t_s, power_w=power_w, temp_c=temp_c, sm_clock_mhz=clock, limit_w=self.limit_w,
            util=util, inlet_c=inlet_c, pdu_power_w=pdu, rack_power_w=rack_w,
            energy_j=self.energy_meas_j, throttle_reasons=throttle,
            gpu_power_true_w=p_true, gpu_temp_true_c=self.temp_c,
            gpu_clock_true_mhz=(u_phi * self.u_fmax)[gu], gpu_energy_true_j=self.gpu_energy_j,
            server_power_w=srv_in, server_dc_w=dc, rack_feed_power_w=np.stack([rack_a, rack_b], axis=1),
            level_power_w=levels,
            level_alive=self.level_alive.copy(), breaker_heat=self.breaker_heat.copy(),
            zone_supply_c=self.zone_supply.copy(), zone_heat_w=heat, zone_capacity_w=cap_w,
            rack_inlet_true_c=inlet, site_power_w=site_w, site_energy_j=self.site_energy_j,
            pools=pools, jobs=jobs, requests=res.requests, events=events,
        )
        return fr

    def run(self, duration_s: float, dt_s: float = 1.0) -> list[TwinFrame]:
        """Step for duration_s (convenience for tests and what-ifs)."""
        return [self.step(dt_s) for _ in range(max(1, round(duration_s / dt_s)))]

    # ---- step helpers ------------------------------------------------------------------------------------
    def _rollup(self, rack_a: FloatArray, rack_b: FloatArray, rack_w: FloatArray) -> FloatArray:
        s = self.site
        n = len(s.level_ids)
        out = np.zeros(n)
        out[s.rack_level] = rack_w
        out += _wsum(s.rack_pdu[:, 0], rack_a, n)
        out += _wsum(s.rack_pdu[:, 1], rack_b, n)
        for lv, parents in self._chain_kinds:
            ok = parents >= 0
            out += _wsum(parents[ok], out[lv][ok], n)
        out += _wsum(s.rack_row, rack_w, n)
        out += _wsum(s.rack_hall, rack_w, n)
        out += _wsum(s.rack_zone, rack_w, n)
        out[s.levels_of_kind("site")] = rack_w.sum()
        return out

    def _breakers(self, levels: FloatArray, dt_s: float) -> None:
        ec = self.cfg.electrical
        if not ec.breakers or self._brk.size == 0:
            return
        b = self._brk
        frac = levels[b] / self.site.level_rated_w[b]
        heat = breaker_heat_step(self.breaker_heat[b], frac, dt_s, ec)
        self.breaker_heat[b] = heat
        trip = (heat >= 1.0) & self.level_alive[b]
        if trip.any():
            for i in b[trip]:
                self._events.append(f"t={self.t_s:.1f}s breaker tripped: {self.site.level_ids[i]} at "
                                    f"{levels[i] / self.site.level_rated_w[i]:.2f}x rating")
            self.level_tripped[b[trip]] = True
            self._update_feeds()

    def _unit_readings(self, res: ServeResult, phi_mix: FloatArray, phi_dec: FloatArray, phi_idle: FloatArray,
                       job_phase: IntArray, phi_job: FloatArray, phi_ceil_j: FloatArray, p_comp: FloatArray,
                       p_comm: FloatArray, p_ckpt: FloatArray, cap_mix: BoolArray, cap_dec: BoolArray,
                       cap_job: BoolArray) -> tuple[FloatArray, FloatArray, BoolArray]:
        """What a 25 ms NVML window sees per unit: the phase it falls in (by time share in the last substep),
        that phase's power and clock, and whether the power limit holds that clock down."""
        u = self._rng_meas.random(self.n_inst)
        in_mix = u < res.last_f_mix
        in_dec = ~in_mix & (u < res.last_f_mix + res.last_f_dec)
        p_i = np.where(in_mix, res.last_p_mix, np.where(in_dec, res.last_p_dec, res.last_p_idle))
        f_i = np.where(in_mix, phi_mix, np.where(in_dec, phi_dec, phi_idle))
        c_i = (in_mix & cap_mix) | (in_dec & cap_dec)
        sl_j = slice(self.n_inst, self.n_work)
        jb = self.u_bare[sl_j]
        p_j = np.select([job_phase == JOB_COMPUTE, job_phase == JOB_COMM, job_phase == JOB_CKPT],
                        [p_comp, p_comm, p_ckpt], jb)
        f_j = np.select([job_phase == JOB_COMPUTE, job_phase == JOB_OFF], [phi_job, self.u_phimin[sl_j]], phi_ceil_j)
        c_j = (job_phase == JOB_COMPUTE) & cap_job
        cat = np.concatenate
        n_types = len(self._type_ids)
        return (cat([p_i, p_j, self.t_bare]), cat([f_i, f_j, self.t_fmin / self.t_fmax]),
                cat([c_i, c_j, np.zeros(n_types, dtype=bool)]))

    def _noise(self, n: int) -> FloatArray:
        off = int(self._rng_meas.integers(0, self.noise.size - n))
        return self.noise[off:off + n]

    def _due(self, t0: float, dt_s: float, interval: float, phase: FloatArray) -> BoolArray:
        if interval <= 0 or self._first:
            return np.ones(phase.size, dtype=bool)
        a = np.floor((t0 + phase * interval) / interval)
        b = np.floor((t0 + dt_s + phase * interval) / interval)
        return np.asarray(b > a)

    def _measure(self, t0: float, dt_s: float, p_true: FloatArray, u_read_p: FloatArray, u_read_mhz: FloatArray,
                 util_gpu: FloatArray, inlet: FloatArray, rack_a: FloatArray, rack_b: FloatArray,
                 dark_gpu: BoolArray | None) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray,
                                                      FloatArray]:
        s = self.site
        m = self.cfg.measurement
        n = s.n_gpus
        gu = self.gpu_unit
        rng = self._rng_meas
        # GPU power: the sampled window's phase power, this GPU's variation and limit, gain error, noise.
        if self._lim_gain_src is not self.limit_w:  # limits are copied on write: identity tells a change
            self._lim_gain = self.limit_w * self.gain
            self._lim_gain_src = self.limit_w
        power = np.minimum(u_read_p[gu] * self.var_gain, self._lim_gain)
        off = int(rng.integers(0, self.noise.size - n))
        power *= self.noise_gpu[off:off + n]
        if self._gain_dt[0] != dt_s:
            self._gain_dt = (dt_s, self.gain * dt_s)
        self.energy_meas_j = self.energy_meas_j + p_true * self._gain_dt[1]
        if m.gpu_interval_s > 0:
            due = self._due(t0, dt_s, m.gpu_interval_s, self.gpu_phase)[s.gpu_rack]
            power = np.where(due, power, self.read_power)
        self.read_power = power
        power = power.copy()
        res = m.temp_resolution_c
        if res == 1.0:
            temp = np.round(self.temp_c)
        else:
            temp = np.round(self.temp_c / res) * res if res > 0 else self.temp_c.copy()
        clock = u_read_mhz[gu]
        util = util_gpu
        if dark_gpu is not None:
            for arr_ in (power, temp, clock, util):
                arr_[dark_gpu] = np.nan
        # Rack inlet sensors.
        fresh = inlet[:, None] + self.inlet_offset + m.inlet_noise_c * \
            self._noise(self.inlet_offset.size).reshape(self.inlet_offset.shape)
        due = self._due(t0, dt_s, m.inlet_interval_s, self.inlet_phase)
        self.read_inlet = np.where(due[:, None], fresh, self.read_inlet)
        inlet_c = np.where(self.inlet_has, self.read_inlet, np.nan)
        # PDU meters per feed (a meter on a dead feed reads 0 W).
        true_pdu = np.stack([rack_a, rack_b], axis=1)
        fresh_p = true_pdu * self.pdu_gain * (1.0 + m.pdu_noise_frac * self._noise(true_pdu.size).reshape(-1, 2))
        due = self._due(t0, dt_s, m.pdu_interval_s, self.pdu_phase)
        self.read_pdu = np.where(due[:, None], fresh_p, self.read_pdu)
        pdu = self.read_pdu.copy()
        if self.rack_dark.any():
            inlet_c[self.rack_dark] = np.nan  # the rack's BMC has no power either
        # Random missing readings.
        if m.missing_prob > 0:
            for a in (power, temp, clock, util):
                k = int(rng.binomial(a.size, m.missing_prob))
                if k:
                    a[rng.integers(0, a.size, k)] = np.nan
            for a2 in (inlet_c, pdu):
                k = int(rng.binomial(a2.size, m.missing_prob))
                if k:
                    a2.ravel()[rng.integers(0, a2.size, k)] = np.nan
        # Stuck sensors hold the value they had when they stuck.
        for key in list(self.stuck):
            sensor, r, idx = key
            g0 = int(s.rack_gpu_start[r])
            flat_arr, flat_pos = {"inlet": (inlet_c, r * inlet_c.shape[1] + idx), "pdu": (pdu, 2 * r + idx),
                                  "gpu_power": (power, g0 + idx), "gpu_temp": (temp, g0 + idx)}[sensor]
            view = flat_arr.reshape(-1)
            held = self.stuck[key]
            if held is None:
                self.stuck[key] = float(view[flat_pos])
            else:
                view[flat_pos] = held
        # Telemetry dropout: nothing arrives from those racks.
        if self.dropout.any():
            for r in (int(x) for x in np.flatnonzero(self.dropout)):
                a0, b0 = int(s.rack_gpu_start[r]), int(s.rack_gpu_start[r + 1])
                for a in (power, temp, clock, util):
                    a[a0:b0] = np.nan
                inlet_c[r] = np.nan
                pdu[r] = np.nan
        return power, temp, clock, util, inlet_c, pdu

    def _throttle(self, capped: BoolArray, u_busy: FloatArray, dark_gpu: BoolArray | None) -> U32:
        """NVML clocks-event reasons at the sampled instant: power cap (in the sampled phase), locked clocks,
        thermal slowdowns, idle."""
        flags = np.zeros(self.n_units, dtype=np.uint32)
        flags[capped] |= THROTTLE_SW_POWER_CAP
        flags[u_busy <= 0] |= THROTTLE_IDLE
        out = flags[self.gpu_unit]
        out[self.lock_phi < 1.0] |= THROTTLE_APP_CLOCKS
        if self._hot:
            t = self.temp_c
            out[t >= self.cfg.thermal.sw_thermal_c] |= THROTTLE_SW_THERMAL
            slow = t >= self.gpu_slow
            out[slow] |= THROTTLE_HW_SLOWDOWN | THROTTLE_HW_THERMAL
        if dark_gpu is not None:
            out[dark_gpu] = 0
        return np.asarray(out, dtype=np.uint32)

    def _pool_stats(self, res: ServeResult, arr_inst: IntArray, p_true: FloatArray, dt_s: float) -> PoolStats:
        tab = self.tab
        n_p = len(self.pools)

        def by_pool(x: FloatArray) -> FloatArray:
            return _wsum(tab.pool, x, n_p)

        rq = res.requests
        slo = np.array([p.spec.ttft_slo_s for p in self.pools])
        ok = rq.ttft_s <= slo[rq.pool] if rq.pool.size else np.zeros(0, dtype=bool)
        inst_energy = _wsum(self.gpu_unit, p_true, self.n_units)[:self.n_inst] * dt_s
        n_gpus_pool = np.array([p.gpus.size for p in self.pools], dtype=np.float64)
        pool_e = by_pool(inst_energy)
        # GPUs of a pool outside any instance slot idle at bare power.
        slot_gpus = np.array([p.slots.size for p in self.pools], dtype=np.float64)
        idle_w = np.array([self.t_bare[int(self.gpu_type[p.gpus[0]])] for p in self.pools])
        pool_e += (n_gpus_pool - slot_gpus) * idle_w * dt_s
        dec = by_pool(res.decode_tokens)
        queue = np.bincount(self.pending.inst, minlength=tab.n).astype(np.float64)
        st = tab.state
        stats = PoolStats(
            names=self.pool_names(), priority=self.pool_priority,
            arrivals=np.bincount(tab.pool[arr_inst], minlength=n_p).astype(np.float64),
            first_tokens=np.bincount(rq.pool, minlength=n_p).astype(np.float64),
            ttft_ok=np.bincount(rq.pool[ok], minlength=n_p).astype(np.float64),
            dropped=by_pool(res.dropped) + self._dropped, aborted=self._aborted.copy(),
            completed=by_pool(res.completed), tokens=by_pool(res.tokens), tbt_ok_tokens=by_pool(res.tokens_tbt_ok),
            decode_tokens=dec, tbt_mean_s=np.where(dec > 0, by_pool(res.tbt_weighted_s) / np.maximum(dec, 1e-12),
                                                   np.nan),
            waiting=by_pool(queue), running=by_pool(tab.B),
            serving=np.bincount(tab.pool[st == SERVING], minlength=n_p),
            starting=np.bincount(tab.pool[st == STARTING], minlength=n_p),
            off=np.bincount(tab.pool[st == OFF], minlength=n_p),
            power_w=pool_e / dt_s / np.maximum(n_gpus_pool, 1.0), energy_j=pool_e,
        )
        self._aborted[:] = 0.0
        self._dropped[:] = 0.0
        return stats


_TABLE_FIELDS = ("pool", "state", "ready_at", "weight", "c_tok", "mem_w", "mem_kv", "overhead", "kv_cap", "chunk",
                 "max_batch", "seq_tokens", "ttft_slo", "tbt_slo", "B", "R", "ctx", "head_done")


__all__ = ["JOB_CKPT", "JOB_COMM", "JOB_COMPUTE", "JOB_OFF", "JobStats", "PoolStats", "Twin", "TwinConfig",
           "TwinFrame"]
