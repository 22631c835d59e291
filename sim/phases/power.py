"""Power phases: the limiter's clocks per work unit (before the work runs) and true power per GPU (after)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from powerplane.site import FloatArray, Site
from sim.batching import ServeResult, representative_phases
from sim.frames import BoolArray
from sim.physics import PowerConfig, ThermalConfig, quantize_phi, solve_phi, thermal_ceiling
from sim.state import Hardware, TwinState, Units


@dataclass
class Clocks:
    """This step's clocks (fraction of max) per work unit, and whether the power limit holds them down."""

    phi_mix: FloatArray  # instances: mixed (prefill + decode) iterations
    phi_dec: FloatArray  # instances: decode-only iterations
    phi_idle: FloatArray  # instances: idle (the ceiling: locks and temperature)
    phi_job: FloatArray  # jobs: compute phase
    phi_ceil_job: FloatArray  # jobs: communication and checkpoints (the ceiling)
    cap_mix: BoolArray
    cap_dec: BoolArray
    cap_job: BoolArray


def solve_clocks(site: Site, pc: PowerConfig, tc: ThermalConfig, hw: Hardware, units: Units, st: TwinState
                 ) -> Clocks:
    """One limiter solve for both instance phases and the jobs' compute phase, at the instances' current
    state; sets st.hot (some GPU at the software thermal limit)."""
    if st.limits_dirty:
        st.u_limit = units.unit_min(st.limit_w)
        st.u_lock = units.unit_min(st.lock_phi)
        st.u_floor = units.unit_min(st.floor_w)
        st.limits_dirty = False
    hot = bool(st.temp_c.max() >= tc.sw_thermal_c) if site.n_gpus else False
    st.hot = hot
    th = thermal_ceiling(st.temp_c, hw.gpu_slow, tc) if hot else None
    u_th = units.unit_min(th) if th is not None else np.ones(units.n_work)
    ceiling = np.minimum(st.u_lock, u_th)
    ni, nw, nj = units.n_inst, units.n_work, units.n_jobs
    c_mix, c_dec, mem, over = representative_phases(st.tab)
    cat = np.concatenate
    c_all = cat([c_mix, c_dec, np.ones(nj)])
    m_all = cat([mem, mem, np.full(nj, pc.train_mem_ratio)])
    o_all = cat([over, over, np.zeros(nj)])
    sl_i = slice(0, ni)
    sl_j = slice(ni, nw)

    def two(x: FloatArray) -> FloatArray:  # instance figures twice (both phases), then the jobs'
        return cat([x[sl_i], x[sl_i], x[sl_j]])

    phi_all, capped_all = solve_phi(two(st.u_limit), c_all, m_all, o_all, two(ceiling), two(units.u_phimin[:nw]),
                                    two(units.u_bare[:nw]), two(units.u_ctx[:nw]), two(units.u_kd[:nw]),
                                    two(units.u_km[:nw]), pc)
    phi_all = quantize_phi(phi_all, two(units.u_fmax[:nw]), two(units.u_fmin[:nw]), pc.clock_step_mhz)
    return Clocks(phi_mix=phi_all[:ni], phi_dec=phi_all[ni:2 * ni], phi_idle=ceiling[sl_i],
                  phi_job=phi_all[2 * ni:], phi_ceil_job=ceiling[sl_j], cap_mix=capped_all[:ni],
                  cap_dec=capped_all[ni:2 * ni], cap_job=capped_all[2 * ni:])


@dataclass
class GpuPower:
    """True power per GPU over the step, and per-unit busy fraction and mean clock."""

    p_true: FloatArray
    util_gpu: FloatArray  # busy fraction per GPU
    u_busy: FloatArray
    u_phi: FloatArray
    dark_gpu: BoolArray | None  # GPUs without power (None: all have it)
    # What the power floors made the GPUs draw beyond what they would have without them (the sum over GPUs of
    # max(0, drawn - natural)), W: at the GPUs, and at the wall through each server's nominal PSU efficiency
    # (the load-dependent one belongs to a whole server's load, not to a GPU's few watts).
    floor_gpu_w: float = 0.0
    floor_wall_w: float = 0.0


def gpu_power(site: Site, hw: Hardware, units: Units, st: TwinState, res: ServeResult, job_p_w: FloatArray,
              job_busy: FloatArray, job_phi: FloatArray, job_natural_w: FloatArray | None = None) -> GpuPower:
    """Units' mean power spread to their GPUs (x the GPU's variation, under its limit, at least its power
    floor up to that limit); dark GPUs draw nothing, shut-down ones their bare idle (a floor needs the GPU on).
    job_natural_w: the jobs' power had no floor held them up (default job_p_w), for `floor_extra_w`."""
    cat = np.concatenate
    n_types = len(hw.type_ids)
    u_power = cat([res.avg_power_w, job_p_w, hw.t_bare])
    u_busy = cat([res.busy_frac, job_busy, np.zeros(n_types)])
    u_phi = cat([res.avg_phi, job_phi, hw.t_fmin / hw.t_fmax])
    gu = units.gpu_unit
    p_true = u_power[gu] * hw.variation
    np.minimum(p_true, st.limit_w, out=p_true)
    p_natural: FloatArray | None = None
    if st.floor_w.any():  # the floor burns power, never above the limit (the breaker policy's caps win)
        nat = cat([res.avg_power_w, job_p_w if job_natural_w is None else job_natural_w, hw.t_bare])
        p_natural = np.minimum(nat[gu] * hw.variation, st.limit_w)
        np.maximum(p_true, np.minimum(st.floor_w, st.limit_w), out=p_true)
    dark_gpu: BoolArray | None = None
    if st.rack_dark.any() or st.gpu_shutdown.any():
        dark_gpu = st.rack_dark[site.gpu_rack]
        p_true[dark_gpu] = 0.0
        p_true[st.gpu_shutdown & ~dark_gpu] = site.gpu_idle_w[st.gpu_shutdown & ~dark_gpu]
    out = GpuPower(p_true=p_true, util_gpu=u_busy[gu], u_busy=u_busy, u_phi=u_phi, dark_gpu=dark_gpu)
    if p_natural is not None:
        extra = np.maximum(p_true - p_natural, 0.0)
        if dark_gpu is not None:  # a dark or shut-down GPU burns no floor
            extra[dark_gpu | st.gpu_shutdown] = 0.0
        out.floor_gpu_w = float(extra.sum())
        out.floor_wall_w = float((extra / site.server_psu_eff[site.gpu_server]).sum())
    return out
