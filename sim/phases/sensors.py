"""Sensors phase: what the collectors read. GPU power as NVML's power.draw (a ~1 s average of the true power,
gain error, noise, rare glitches) and power.draw.instant (a 25 ms window: the phase it falls in),
temperatures, clocks, utilisation, rack inlets and PDU meters (each refreshing on its own interval),
throttle reasons, and faults: missing readings, stuck sensors, telemetry dropouts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from powerplane.physics import (
    THROTTLE_APP_CLOCKS,
    THROTTLE_HW_SLOWDOWN,
    THROTTLE_HW_THERMAL,
    THROTTLE_IDLE,
    THROTTLE_SW_POWER_CAP,
    THROTTLE_SW_THERMAL,
)
from powerplane.site import FloatArray, Site
from sim.batching import ServeResult
from sim.frames import JOB_CKPT, JOB_COMM, JOB_COMPUTE, JOB_OFF, U32, BoolArray
from sim.phases.power import Clocks, GpuPower
from sim.phases.workload import JobStep
from sim.physics import MeasurementConfig, ThermalConfig
from sim.state import Hardware, SensorModel, TwinState, Units


@dataclass
class Readings:
    power_w: FloatArray
    power_instant_w: FloatArray
    temp_c: FloatArray
    sm_clock_mhz: FloatArray
    util: FloatArray
    inlet_c: FloatArray
    pdu_power_w: FloatArray
    throttle: U32


def read_sensors(site: Site, m: MeasurementConfig, tc: ThermalConfig, hw: Hardware, units: Units,
                 sm: SensorModel, st: TwinState, res: ServeResult, clk: Clocks, js: JobStep, gp: GpuPower,
                 inlet: FloatArray, rack_a: FloatArray, rack_b: FloatArray, t0: float, dt_s: float,
                 rng: np.random.Generator) -> Readings:
    """Every reading of the step (draws from the measurement stream in a fixed order)."""
    u_read_p, u_read_phi, u_capped = unit_readings(hw, units, res, clk, js, rng)
    power, instant, temp, clock, util = gpu_readings(site, m, units, sm, st, t0, dt_s, gp, u_read_p,
                                                     u_read_phi * units.u_fmax, rng)
    inlet_c, pdu = rack_readings(m, sm, st, t0, dt_s, inlet, rack_a, rack_b, rng)
    sensor_faults(site, m, st, (power, instant, temp, clock, util), inlet_c, pdu, rng)
    throttle = throttle_reasons(tc, hw, units, st, u_capped, gp.u_busy, gp.dark_gpu)
    return Readings(power, instant, temp, clock, util, inlet_c, pdu, throttle)


def unit_readings(hw: Hardware, units: Units, res: ServeResult, clk: Clocks, js: JobStep, rng: np.random.Generator
                  ) -> tuple[FloatArray, FloatArray, BoolArray]:
    """What a 25 ms NVML window sees per unit: the phase it falls in (by time share in the last substep),
    that phase's power and clock, and whether the power limit holds that clock down."""
    u = rng.random(units.n_inst)
    in_mix = u < res.last_f_mix
    in_dec = ~in_mix & (u < res.last_f_mix + res.last_f_dec)
    p_i = np.where(in_mix, res.last_p_mix, np.where(in_dec, res.last_p_dec, res.last_p_idle))
    f_i = np.where(in_mix, clk.phi_mix, np.where(in_dec, clk.phi_dec, clk.phi_idle))
    c_i = (in_mix & clk.cap_mix) | (in_dec & clk.cap_dec)
    sl_j = slice(units.n_inst, units.n_work)
    jb = units.u_bare[sl_j]
    job_phase = js.phase
    p_j = np.select([job_phase == JOB_COMPUTE, job_phase == JOB_COMM, job_phase == JOB_CKPT],
                    [js.p_comp, js.p_comm, js.p_ckpt], jb)
    f_j = np.select([job_phase == JOB_COMPUTE, job_phase == JOB_OFF], [clk.phi_job, units.u_phimin[sl_j]],
                    clk.phi_ceil_job)
    c_j = (job_phase == JOB_COMPUTE) & clk.cap_job
    cat = np.concatenate
    n_types = len(hw.type_ids)
    return (cat([p_i, p_j, hw.t_bare]), cat([f_i, f_j, hw.t_fmin / hw.t_fmax]),
            cat([c_i, c_j, np.zeros(n_types, dtype=bool)]))


def _due(st: TwinState, t0: float, dt_s: float, interval: float, phase: FloatArray) -> BoolArray:
    """Sensors whose refresh falls in [t0, t0 + dt_s) (all of them on the first step)."""
    if interval <= 0 or st.first:
        return np.ones(phase.size, dtype=bool)
    a = np.floor((t0 + phase * interval) / interval)
    b = np.floor((t0 + dt_s + phase * interval) / interval)
    return np.asarray(b > a)


def _noise(sm: SensorModel, n: int, rng: np.random.Generator) -> FloatArray:
    off = int(rng.integers(0, sm.noise.size - n))
    return sm.noise[off:off + n]


def gpu_readings(site: Site, m: MeasurementConfig, units: Units, sm: SensorModel, st: TwinState, t0: float,
                 dt_s: float, gp: GpuPower, u_read_p: FloatArray, u_read_mhz: FloatArray, rng: np.random.Generator
                 ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """(power.draw, power.draw.instant, temperature, clock, utilisation) per GPU; dark GPUs read NaN.
    Advances the energy counter."""
    n = site.n_gpus
    gu = units.gpu_unit
    # power.draw.instant: the sampled window's phase power, this GPU's variation and limit, gain, noise.
    if st.lim_gain_src is not st.limit_w:  # limits are copied on write: identity tells a change
        st.lim_gain = st.limit_w * sm.gain
        st.lim_gain_src = st.limit_w
    instant = np.minimum(u_read_p[gu] * sm.var_gain, st.lim_gain)
    off = int(rng.integers(0, sm.noise.size - 2 * n))
    instant *= sm.noise_gpu[off:off + n]
    # power.draw: the true power averaged over the last power_avg_s, gain, noise, glitches.
    power = window_mean(st, gp.p_true, dt_s, m.power_avg_s) * sm.gain
    power *= sm.noise_gpu[off + n:off + 2 * n]
    glitches(m, power, rng)
    if st.gain_dt[0] != dt_s:
        st.gain_dt = (dt_s, sm.gain * dt_s)
    st.energy_meas_j = st.energy_meas_j + gp.p_true * st.gain_dt[1]
    if m.gpu_interval_s > 0:
        due = _due(st, t0, dt_s, m.gpu_interval_s, sm.gpu_phase)[site.gpu_rack]
        power = np.where(due, power, st.read_power)
        instant = np.where(due, instant, st.read_instant)
        st.read_instant = instant
    st.read_power = power
    power = power.copy()
    instant = instant.copy()
    res = m.temp_resolution_c
    if res == 1.0:  # NVML's whole degrees, without the divide
        temp = np.round(st.temp_c)
    elif res > 0:
        temp = np.round(st.temp_c / res) * res
    else:
        temp = st.temp_c.copy()
    clock = u_read_mhz[gu]
    util = gp.util_gpu
    if gp.dark_gpu is not None:
        for arr_ in (power, instant, temp, clock, util):
            arr_[gp.dark_gpu] = np.nan
    return power, instant, temp, clock, util


def window_mean(st: TwinState, p_w: FloatArray, dt_s: float, window_s: float) -> FloatArray:
    """The mean of the per-step powers over the last window_s (steps of dt_s; a step of window_s or more is
    its own mean). Keeps the steps it still needs in st.power_hist."""
    if dt_s >= window_s - 1e-9:
        st.power_hist = []
        return p_w
    hist = st.power_hist
    hist.append((dt_s, p_w))
    acc = p_w * dt_s
    total = dt_s
    keep = 1
    for dt_i, p_i in reversed(hist[:-1]):
        if total >= window_s - 1e-9:
            break
        w = min(dt_i, window_s - total)
        acc += p_i * w
        total += w
        keep += 1
    del hist[:len(hist) - keep]
    acc /= total
    return acc


def glitches(m: MeasurementConfig, power: FloatArray, rng: np.random.Generator) -> None:
    """Replace a share of readings by glitches near glitch_low_w and glitch_mid_w, in place.

    Real power.draw readings show them (BRIEF.md); they cannot be the 1 s average of a GPU drawing 460 W,
    so they are a reporting artefact: the energy counter does not see them.
    """
    n = power.size
    for prob, level in ((m.glitch_low_prob, m.glitch_low_w), (m.glitch_mid_prob, m.glitch_mid_w)):
        if prob <= 0 or n == 0:
            continue
        k = int(rng.binomial(n, prob))
        if k:
            power[rng.integers(0, n, k)] = level + m.glitch_sd_w * rng.standard_normal(k)


def rack_readings(m: MeasurementConfig, sm: SensorModel, st: TwinState, t0: float, dt_s: float, inlet: FloatArray,
                  rack_a: FloatArray, rack_b: FloatArray, rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """(inlet, PDU meters per feed) per rack; a dark rack's inlet sensors read NaN, its meters 0 W."""
    fresh = inlet[:, None] + sm.inlet_offset + m.inlet_noise_c * \
        _noise(sm, sm.inlet_offset.size, rng).reshape(sm.inlet_offset.shape)
    due = _due(st, t0, dt_s, m.inlet_interval_s, sm.inlet_phase)
    st.read_inlet = np.where(due[:, None], fresh, st.read_inlet)
    inlet_c = np.where(sm.inlet_has, st.read_inlet, np.nan)
    true_pdu = np.stack([rack_a, rack_b], axis=1)
    fresh_p = true_pdu * sm.pdu_gain * (1.0 + m.pdu_noise_frac * _noise(sm, true_pdu.size, rng).reshape(-1, 2))
    due = _due(st, t0, dt_s, m.pdu_interval_s, sm.pdu_phase)
    st.read_pdu = np.where(due[:, None], fresh_p, st.read_pdu)
    pdu = st.read_pdu.copy()
    if st.rack_dark.any():
        inlet_c[st.rack_dark] = np.nan  # the rack's BMC has no power either
    return inlet_c, pdu


def sensor_faults(site: Site, m: MeasurementConfig, st: TwinState, gpu: tuple[FloatArray, ...], inlet_c: FloatArray,
                  pdu: FloatArray, rng: np.random.Generator) -> None:
    """Random missing readings, stuck sensors and telemetry dropouts, in place. gpu: (power, instant power,
    temperature, clock, utilisation)."""
    power, temp = gpu[0], gpu[2]
    if m.missing_prob > 0:
        for a in gpu:
            k = int(rng.binomial(a.size, m.missing_prob))
            if k:
                a[rng.integers(0, a.size, k)] = np.nan
        for a2 in (inlet_c, pdu):
            k = int(rng.binomial(a2.size, m.missing_prob))
            if k:
                a2.ravel()[rng.integers(0, a2.size, k)] = np.nan
    # Stuck sensors hold the value they had when they stuck.
    for key in list(st.stuck):
        sensor, r, idx = key
        g0 = int(site.rack_gpu_start[r])
        flat_arr, flat_pos = {"inlet": (inlet_c, r * inlet_c.shape[1] + idx), "pdu": (pdu, 2 * r + idx),
                              "gpu_power": (power, g0 + idx), "gpu_temp": (temp, g0 + idx)}[sensor]
        view = flat_arr.reshape(-1)
        held = st.stuck[key]
        if held is None:
            st.stuck[key] = float(view[flat_pos])
        else:
            view[flat_pos] = held
    # Telemetry dropout: nothing arrives from those racks.
    if st.dropout.any():
        for r in (int(x) for x in np.flatnonzero(st.dropout)):
            a0, b0 = int(site.rack_gpu_start[r]), int(site.rack_gpu_start[r + 1])
            for a in gpu:
                a[a0:b0] = np.nan
            inlet_c[r] = np.nan
            pdu[r] = np.nan


def throttle_reasons(tc: ThermalConfig, hw: Hardware, units: Units, st: TwinState, capped: BoolArray,
                     u_busy: FloatArray, dark_gpu: BoolArray | None) -> U32:
    """NVML clocks-event reasons at the sampled instant: power cap (in the sampled phase), locked clocks,
    thermal slowdowns, idle."""
    flags = np.zeros(units.n_units, dtype=np.uint32)
    flags[capped] |= THROTTLE_SW_POWER_CAP
    flags[u_busy <= 0] |= THROTTLE_IDLE
    out = flags[units.gpu_unit]
    out[st.lock_phi < 1.0] |= THROTTLE_APP_CLOCKS
    if st.hot:
        t = st.temp_c
        out[t >= tc.sw_thermal_c] |= THROTTLE_SW_THERMAL
        slow = t >= hw.gpu_slow
        out[slow] |= THROTTLE_HW_SLOWDOWN | THROTTLE_HW_THERMAL
    if dark_gpu is not None:
        out[dark_gpu] = 0
    return np.asarray(out, dtype=np.uint32)
