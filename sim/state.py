"""What the twin holds between steps.

Constants fixed at construction: :class:`TwinConfig` (the models' constants), :class:`Hardware` (per GPU
type and per GPU), :class:`PowerTree` (feed chains, servers, cooling zones) and :class:`SensorModel`
(per-sensor errors and sampling phases). :class:`Units` is the work-unit layout, rebuilt when a pool
changes tensor parallelism. :class:`TwinState` is everything a step reads and writes and hands to the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from powerplane.physics import ElectricalConfig
from powerplane.site import FEED_KINDS, KIND_NAMES, FloatArray, IntArray, Site
from sim.frames import BoolArray
from sim.physics import GPU_SPECS, GpuSpec, MeasurementConfig, PowerConfig, ThermalConfig, gpu_spec_for
from sim.serving import InstanceTable, Pending, ServingConfig
from sim.workload import TrainingState


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


@dataclass(frozen=True, eq=False)
class Hardware:
    """GPU figures: ``t_*`` per server type (Site.server_types order), ``gpu_*`` per GPU."""

    type_ids: list[str]
    specs: list[GpuSpec]
    gpu_type: IntArray
    t_fmax: FloatArray
    t_fmin: FloatArray
    t_bare: FloatArray  # idle power without a context
    t_ctx: FloatArray  # idle power with a context (a loaded model)
    t_kd: FloatArray  # dynamic (compute) power at max clock
    t_km: FloatArray  # memory power
    t_kd_train: FloatArray  # dynamic power of a training step's compute phase
    t_slow: FloatArray
    t_shut: FloatArray
    gpu_fmax: FloatArray
    gpu_fmin: FloatArray
    gpu_slow: FloatArray
    gpu_shut_c: FloatArray
    gpu_r: FloatArray  # thermal resistance, C per W
    gpu_tau: FloatArray  # thermal time constant, s
    variation: FloatArray  # per-GPU power variation (fixed: silicon lottery)


def build_hardware(site: Site, cfg: TwinConfig, rng: np.random.Generator) -> Hardware:
    types = list(site.server_types)
    srv_t = np.array([types.index(t) for t in site.server_type], dtype=np.int64)
    g = srv_t[site.gpu_server]
    sts = [site.server_types[t] for t in types]
    specs = [cfg.spec(st.gpu_model, st.gpu_max_w) for st in sts]

    def per_type(vals: Sequence[float]) -> FloatArray:
        return np.asarray(vals, dtype=np.float64)

    t_fmax = per_type([st.gpu_max_sm_mhz for st in sts])
    t_fmin = per_type([st.gpu_min_sm_mhz for st in sts])
    t_slow = per_type([st.gpu_slowdown_c for st in sts])
    t_shut = per_type([st.gpu_shutdown_c for st in sts])
    sig = cfg.power.variation_sigma
    return Hardware(
        type_ids=types, specs=specs, gpu_type=g, t_fmax=t_fmax, t_fmin=t_fmin,
        t_bare=per_type([st.gpu_idle_w for st in sts]),
        t_ctx=per_type([max(sp.idle_ctx_w, st.gpu_idle_w) for st, sp in zip(sts, specs, strict=True)]),
        t_kd=per_type([sp.dyn_w for sp in specs]), t_km=per_type([sp.mem_w for sp in specs]),
        t_kd_train=per_type([sp.train_dyn_w for sp in specs]),
        t_slow=t_slow, t_shut=t_shut, gpu_fmax=t_fmax[g], gpu_fmin=t_fmin[g], gpu_slow=t_slow[g],
        gpu_shut_c=t_shut[g], gpu_r=per_type([sp.thermal_r_c_per_w for sp in specs])[g],
        gpu_tau=per_type([sp.thermal_tau_s for sp in specs])[g],
        variation=np.clip(1.0 + sig * rng.standard_normal(site.n_gpus), 1.0 - 3 * sig, 1.0 + 3 * sig),
    )


@dataclass(frozen=True, eq=False)
class PowerTree:
    """Power-tree and cooling constants."""

    brk: IntArray  # levels with a breaker (feed kinds with a rating)
    chain_kinds: list[tuple[IntArray, IntArray]]  # (levels, their parents) for pdu, rpp, ups: the roll-up order
    chain: IntArray  # (n_racks, 2, depth): every rack's chain of levels per feed, padded with the pdu
    srv_rating: FloatArray  # PSU rating per server
    srv_gpus: FloatArray  # GPUs per server
    srv_split_a: FloatArray  # share of a server's load on feed A when both are up
    zone_lv: IntArray  # cooling zone levels
    rack_zpos: IntArray  # every rack's position in zone_lv
    zone_setpoint: FloatArray
    zone_c: FloatArray  # heat capacity per zone, J/K
    rack_rated: FloatArray


def build_power_tree(site: Site, cfg: TwinConfig, rng: np.random.Generator) -> PowerTree:
    s = site
    n_lv = len(s.level_ids)
    feed_kind = np.array([KIND_NAMES[k] in FEED_KINDS for k in s.level_kind])
    depth = 6
    chain = np.repeat(s.rack_pdu[:, :, None], depth, axis=2).copy()
    cur = s.rack_pdu.copy()
    for d in range(1, depth):
        par = s.level_parent[cur]
        cur = np.where(par >= 0, par, cur)
        chain[:, :, d] = cur
    st = [s.server_types[t] for t in s.server_type]
    sig = cfg.electrical.feed_split_sigma
    split_a = 0.5 * (1.0 + np.clip(sig * rng.standard_normal(len(s.server_ids)), -3 * sig, 3 * sig))
    zone_lv = s.levels_of_kind("zone")
    zmap = np.full(n_lv, -1, dtype=np.int64)
    zmap[zone_lv] = np.arange(zone_lv.size)
    return PowerTree(
        brk=np.flatnonzero(feed_kind & (s.level_rated_w > 0)),
        chain_kinds=[(s.levels_of_kind(k), s.level_parent[s.levels_of_kind(k)]) for k in ("pdu", "rpp", "ups")],
        chain=chain, srv_rating=np.array([t.rating_w for t in st], dtype=np.float64),
        srv_gpus=np.bincount(s.gpu_server, minlength=len(s.server_ids)).astype(np.float64),
        srv_split_a=split_a, zone_lv=zone_lv, rack_zpos=zmap[s.rack_zone],
        zone_setpoint=np.array([s.zone_supply_c.get(s.level_ids[z], 20.0) for z in zone_lv]),
        zone_c=s.level_rated_w[zone_lv] / 1e3 * cfg.thermal.zone_heat_capacity_j_per_k_per_kw,
        rack_rated=s.level_rated_w[s.rack_level],
    )


@dataclass(frozen=True, eq=False)
class SensorModel:
    """Fixed sensor errors and sampling phases, and a table of pre-drawn noise."""

    gain: FloatArray  # per-GPU power gain error
    max_sensors: int
    inlet_has: BoolArray  # (n_racks, max_sensors)
    inlet_offset: FloatArray  # (n_racks, max_sensors), NaN where there is no sensor
    pdu_gain: FloatArray  # (n_racks, 2)
    inlet_phase: FloatArray  # per rack: when in its interval a sensor refreshes
    pdu_phase: FloatArray
    gpu_phase: FloatArray
    noise: FloatArray  # standard normals, read at a random offset per step
    noise_gpu: FloatArray  # GPU power readings: (1 + noise), ready to multiply
    var_gain: FloatArray  # variation x gain per GPU


def build_sensors(site: Site, m: MeasurementConfig, variation: FloatArray, rng: np.random.Generator) -> SensorModel:
    s = site
    gain = 1.0 + rng.uniform(-m.gpu_gain_error, m.gpu_gain_error, s.n_gpus)
    max_sensors = int(max(1, s.rack_inlet_sensors.max()))
    has = np.arange(max_sensors)[None, :] < s.rack_inlet_sensors[:, None]
    inlet_offset = np.where(has, rng.uniform(-m.inlet_offset_c, m.inlet_offset_c, has.shape), np.nan)
    pdu_gain = 1.0 + rng.uniform(-m.pdu_gain_error, m.pdu_gain_error, (s.n_racks, 2))
    inlet_phase = rng.uniform(0.0, 1.0, s.n_racks)
    pdu_phase = rng.uniform(0.0, 1.0, s.n_racks)
    gpu_phase = rng.uniform(0.0, 1.0, s.n_racks)
    noise = rng.standard_normal(max(m.noise_table_size, 4 * s.n_gpus + 16))
    return SensorModel(gain=gain, max_sensors=max_sensors, inlet_has=has, inlet_offset=inlet_offset,
                       pdu_gain=pdu_gain, inlet_phase=inlet_phase, pdu_phase=pdu_phase, gpu_phase=gpu_phase,
                       noise=noise, noise_gpu=1.0 + m.gpu_noise_frac * noise, var_gain=variation * gain)


@dataclass(frozen=True, eq=False)
class Units:
    """Work units: every instance slot (pool order), every training job, then one idle unit per server type.

    A unit's GPUs share a clock and a phase; ``u_*`` are its hardware figures (its GPUs are of one type).
    """

    gpu_unit: IntArray  # per GPU
    n_inst: int
    n_jobs: int
    n_work: int  # instances + jobs
    n_units: int
    order: IntArray  # GPUs sorted by unit
    ustart: IntArray  # (n_units + 1,) offsets into order
    unit_gpus: FloatArray
    unit_type: IntArray
    inst_slot: IntArray  # every instance's slot index within its pool
    u_fmax: FloatArray
    u_fmin: FloatArray
    u_phimin: FloatArray
    u_bare: FloatArray
    u_ctx: FloatArray
    u_kd: FloatArray  # instances: serving's Kd; jobs: training's
    u_km: FloatArray

    def unit_min(self, x: FloatArray) -> FloatArray:
        """Minimum of a per-GPU array over each work unit's GPUs (instances, then jobs)."""
        if self.n_work == 0:
            return np.zeros(0)
        # Only the work units' GPUs: reduceat's last segment runs to the end of what it is given, which would
        # otherwise take in the idle GPUs (the per-type units after the work units) too.
        xs = x[self.order][:int(self.ustart[self.n_work])]
        return np.asarray(np.minimum.reduceat(xs, self.ustart[:self.n_work]), dtype=np.float64)


def build_units(site: Site, hw: Hardware, slots: Sequence[tuple[int, IntArray]], job_gpus: Sequence[IntArray],
                n_inst: int) -> Units:
    """slots: (first table row, (n_slots, tp) GPU indices) per pool."""
    n_jobs = len(job_gpus)
    n_types = len(hw.type_ids)
    unit = np.full(site.n_gpus, -1, dtype=np.int64)
    for lo, sl in slots:
        unit[sl.ravel()] = lo + np.repeat(np.arange(sl.shape[0]), sl.shape[1])
    for j, g in enumerate(job_gpus):
        unit[g] = n_inst + j
    idle = unit < 0
    unit[idle] = n_inst + n_jobs + hw.gpu_type[idle]
    n_work = n_inst + n_jobs
    n_units = n_work + n_types
    order = np.argsort(unit, kind="stable")
    counts = np.bincount(unit, minlength=n_units)
    ustart = np.zeros(n_units + 1, dtype=np.int64)
    np.cumsum(counts, out=ustart[1:])
    first = order[np.minimum(ustart[:-1], site.n_gpus - 1)]
    ut = hw.gpu_type[first]
    ut[n_work:] = np.arange(n_types)
    inst_slot = np.concatenate([np.arange(sl.shape[0]) for _, sl in slots]) if slots else \
        np.zeros(0, dtype=np.int64)
    u_fmax, u_fmin = hw.t_fmax[ut], hw.t_fmin[ut]
    u_kd = hw.t_kd[ut]
    u_kd[n_inst:n_work] = hw.t_kd_train[ut[n_inst:n_work]]
    return Units(gpu_unit=unit, n_inst=n_inst, n_jobs=n_jobs, n_work=n_work, n_units=n_units, order=order,
                 ustart=ustart, unit_gpus=counts.astype(np.float64), unit_type=ut, inst_slot=inst_slot,
                 u_fmax=u_fmax, u_fmin=u_fmin, u_phimin=u_fmin / u_fmax, u_bare=hw.t_bare[ut], u_ctx=hw.t_ctx[ut],
                 u_kd=u_kd, u_km=hw.t_km[ut])


@dataclass(eq=False)
class TwinState:
    """Everything that changes as the twin runs. The arrays frames hand out without a copy (limit_w, temp_c,
    gpu_energy_j, energy_meas_j) are replaced, never written in place: frames keep theirs."""

    # ---- time and the workload ----
    t_s: float
    first: bool  # no step yet: temperatures start at equilibrium, every sensor reads
    tab: InstanceTable  # every instance of every pool
    pending: Pending  # waiting requests
    jobs: TrainingState
    job_avail: BoolArray  # jobs whose GPUs are all powered and running
    aborted: FloatArray  # per pool, since the last frame: running sequences lost
    dropped: FloatArray  # per pool, since the last frame: requests with nowhere to go
    avail_dirty: bool  # racks went dark or GPUs shut down: reconcile instances before the next step
    # ---- commands ----
    limit_w: FloatArray  # enforced GPU power limits
    lock_phi: FloatArray  # locked clock, fraction of max (1: unlocked)
    floor_w: FloatArray  # power floor per GPU (power smoothing), W; 0: none. Burnt up to the limit, never above
    limits_dirty: bool  # u_limit / u_lock need recomputing
    u_limit: FloatArray  # per work unit: the lowest limit among its GPUs
    u_lock: FloatArray
    u_floor: FloatArray  # per work unit: the lowest floor among its GPUs
    # ---- GPUs ----
    temp_c: FloatArray
    gpu_shutdown: BoolArray  # thermal shutdown (restart once cooled)
    gpu_energy_j: FloatArray
    hot: bool  # some GPU at or above the software thermal limit
    # ---- power tree and cooling ----
    level_alive: BoolArray
    level_lost: BoolArray  # by an event (vs tripped)
    level_tripped: BoolArray
    breaker_heat: FloatArray
    rack_feed_alive: BoolArray  # (n_racks, 2)
    rack_dark: BoolArray  # racks with neither feed
    zone_supply: FloatArray
    zone_frac: FloatArray  # available cooling capacity, fraction
    site_energy_j: float
    floor_energy_j: float  # cumulative wall energy the power floors burnt beyond the GPUs' own draw
    srv_act: FloatArray  # per server: its GPU activity as its non-GPU load follows it (ElectricalConfig.other_tau_s)
    # ---- sensors ----
    energy_meas_j: FloatArray
    read_power: FloatArray  # last readings (held between refreshes)
    read_instant: FloatArray
    read_inlet: FloatArray
    read_pdu: FloatArray
    dropout: BoolArray  # racks whose telemetry does not arrive
    stuck: dict[tuple[str, int, int], float | None]  # (sensor, rack, index) -> held value (None: next reading)
    events: list[str]  # since the last frame
    # ---- caches of values derived from dt_s or the limits ----
    alpha_dt: float = -1.0
    alpha: FloatArray = field(default_factory=lambda: np.zeros(0))
    lim_gain: FloatArray = field(default_factory=lambda: np.zeros(0))
    lim_gain_src: FloatArray | None = None  # the limit_w lim_gain was computed from (identity tells a change)
    gain_dt: tuple[float, FloatArray] = (0.0, np.zeros(0))
    power_hist: list[tuple[float, FloatArray]] = field(default_factory=list)  # (dt_s, true power) of the
    #   last steps within power.draw's averaging window (steps shorter than the window)


def initial_state(site: Site, tree: PowerTree, sensors: SensorModel, tab: InstanceTable, jobs: TrainingState,
                  n_pools: int, n_jobs: int) -> TwinState:
    s = site
    n_lv = len(s.level_ids)
    limit_w = s.gpu_max_w.copy()
    return TwinState(
        t_s=0.0, first=True, tab=tab, pending=Pending.empty(tab.n), jobs=jobs,
        job_avail=np.ones(n_jobs, dtype=bool), aborted=np.zeros(n_pools), dropped=np.zeros(n_pools),
        avail_dirty=False, limit_w=limit_w, lock_phi=np.ones(s.n_gpus), floor_w=np.zeros(s.n_gpus),
        limits_dirty=True, u_limit=np.zeros(0), u_lock=np.zeros(0), u_floor=np.zeros(0), temp_c=np.full(s.n_gpus, 30.0),
        gpu_shutdown=np.zeros(s.n_gpus, dtype=bool), gpu_energy_j=np.zeros(s.n_gpus), hot=False,
        level_alive=np.ones(n_lv, dtype=bool), level_lost=np.zeros(n_lv, dtype=bool),
        level_tripped=np.zeros(n_lv, dtype=bool), breaker_heat=np.zeros(n_lv),
        rack_feed_alive=np.ones((s.n_racks, 2), dtype=bool), rack_dark=np.zeros(s.n_racks, dtype=bool),
        zone_supply=tree.zone_setpoint.copy(), zone_frac=np.ones(tree.zone_lv.size), site_energy_j=0.0,
        floor_energy_j=0.0, srv_act=np.full(len(s.server_ids), np.nan),
        energy_meas_j=np.zeros(s.n_gpus), read_power=np.full(s.n_gpus, np.nan),
        read_instant=np.full(s.n_gpus, np.nan),
        read_inlet=np.full((s.n_racks, sensors.max_sensors), np.nan), read_pdu=np.full((s.n_racks, 2), np.nan),
        dropout=np.zeros(s.n_racks, dtype=bool), stuck={}, events=[], alpha=np.zeros(s.n_gpus),
        lim_gain=limit_w * sensors.gain, lim_gain_src=limit_w, gain_dt=(0.0, sensors.gain * 0.0),
    )
