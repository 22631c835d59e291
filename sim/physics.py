"""GPU power, thermal and measurement models of the digital twin (the electrical models it shares with the
streams live in ``powerplane.physics``).

Pure numpy, no I/O. Every function works on whole arrays (one entry per GPU, per "unit" of work, per
rack, per level), so a step of the 100 MW reference site is a few hundred vectorized operations.
Every constant lives in a frozen config dataclass below, with its source (``/work/shared/BRIEF.md``
figures, a cited paper) or the word "assumption". ``docs/twin.md`` explains each model.

Units: watts, seconds, degrees Celsius, MHz. ``phi`` is the SM clock as a fraction of the GPU's
maximum SM clock (1.0 = 1980 MHz on an H100).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from powerplane.site import FloatArray

BoolArray = npt.NDArray[np.bool_]


# ======================================================================================
# GPU power
# ======================================================================================


@dataclass(frozen=True)
class GpuSpec:
    """Figures of one GPU model that the site file does not carry.

    The site file gives each server type's power limits (max/min), bare idle power, SM clock range and
    thermal thresholds; these are the rest.
    """

    model: str
    peak_tflops: float  # dense BF16 tensor throughput
    hbm_tb_s: float  # HBM bandwidth
    hbm_gb: float  # HBM capacity
    idle_ctx_w: float  # idle with a CUDA context: the SM clock jumps to max
    dyn_w: float  # SM dynamic power at max clock and full compute utilization of serving ("Kd")
    mem_w: float  # power of streaming memory at full bandwidth utilization ("Km"; part follows the clock)
    train_dyn_w: float  # Kd of a training step's compute phase: long, dense GEMMs
    thermal_r_c_per_w: float  # steady-state GPU temperature rise over inlet per watt
    thermal_tau_s: float  # first-order thermal time constant of the GPU + heat sink / cold plate


KD_H100_W = 320.0  # see GPU_SPECS
KM_H100_W = 430.0

GPU_SPECS: dict[str, GpuSpec] = {
    # H100 SXM: 989 TFLOPS dense BF16, 3.35 TB/s, 80 GB (NVIDIA datasheet). Idle with a context ~120 W
    # (BRIEF.md "H100 idle"). Kd/Km are calibrated to measured vLLM serving (BRIEF.md "Real GPU power
    # under LLM serving": Llama-3 70B at TP4 busy reads 444-475 W, median 462 W; 8B on one GPU peaks at
    # 440-454 W): decode and prefill both draw ~450-490 W, far under the 700 W limit (docs/twin-validation.md).
    # Training compute keeps the old figure (a long dense GEMM demands more than the limit: BRIEF.md
    # grid-facing section, "compute near the GPU limit"). R = 0.065 C/W puts a 700 W GPU ~45 C over a
    # 20-25 C inlet (assumption; air-cooled HGX); tau 20 s (assumption: heat-sink mass).
    "H100-SXM": GpuSpec("H100-SXM", peak_tflops=989.0, hbm_tb_s=3.35, hbm_gb=80.0, idle_ctx_w=120.0,
                        dyn_w=KD_H100_W, mem_w=KM_H100_W, train_dyn_w=650.0, thermal_r_c_per_w=0.065,
                        thermal_tau_s=20.0),
    # GB200 (one Blackwell GPU of the superchip): 2.5 PFLOPS dense BF16, 8 TB/s, 186 GB (vendor material,
    # secondary). Idle-with-context 170 W scales H100's 120/70 ratio to the site's 100 W bare idle
    # (assumption); Kd/Km/training Kd are H100's scaled with the 1200 W rating (BRIEF.md "GB200 1200 W
    # rated"; no measured GB200 serving power in the brief: assumption); R 0.035 C/W (liquid cold plate:
    # 1200 W -> ~42 C over coolant inlet, assumption), tau 10 s (assumption).
    "GB200": GpuSpec("GB200", peak_tflops=2500.0, hbm_tb_s=8.0, hbm_gb=186.0, idle_ctx_w=170.0,
                     dyn_w=KD_H100_W * 1200.0 / 700.0, mem_w=KM_H100_W * 1200.0 / 700.0, train_dyn_w=1150.0,
                     thermal_r_c_per_w=0.035, thermal_tau_s=10.0),
}


def gpu_spec_for(model: str, max_w: float) -> GpuSpec:
    """The spec of a GPU model; an unknown model gets H100's, power figures scaled by max_w / 700 W."""
    if model in GPU_SPECS:
        return GPU_SPECS[model]
    h = GPU_SPECS["H100-SXM"]
    k = max_w / 700.0
    return GpuSpec(model, h.peak_tflops * k, h.hbm_tb_s, h.hbm_gb, h.idle_ctx_w * k, h.dyn_w * k, h.mem_w * k,
                   h.train_dyn_w * k, h.thermal_r_c_per_w / k, h.thermal_tau_s)


@dataclass(frozen=True)
class PowerConfig:
    """GPU power model: P = P_static(phi) + Kd * dyn(phi) * u_c + Km * u_m * (1 - s + s * dyn(phi)).

    dyn(phi) = phi * V(phi)^2 is CMOS dynamic power relative to max clock, with the voltage/frequency
    curve V(phi) = max(v_floor, 1 - v_slope * (1 - phi)) (relative to the voltage at max clock).
    P_static(phi) = P_bare + (P_ctx - P_bare) * dyn(phi): the bare-idle floor plus clock-tree/uncore power
    that follows the clock (BRIEF.md: 60-70 W bare at 345 MHz, ~120 W with a context at 1980 MHz).
    s = mem_clock_share: streaming memory keeps the SMs and L2 issuing loads, and that part follows the
    SM clock; the rest (HBM, I/O) does not.
    """

    v_floor: float = 0.65  # relative voltage at and below ~55% of max clock (assumption)
    v_slope: float = 0.8  # relative voltage drop per unit of relative clock (assumption; calibrated so that
    #   1.6 vs 1.98 GHz cuts dynamic power ~42%: Towards Greener LLMs' 1.6 GHz vs 2 GHz trade-off)
    mem_clock_share: float = 0.5  # share of Km that follows the SM clock (calibrated: a decode-bound pool
    #   locked at 1.6 GHz keeps its throughput at ~0.8x the energy, Towards Greener LLMs, BRIEF.md)
    variation_sigma: float = 0.01  # per-GPU fixed power variation (silicon/leakage), fraction (calibrated
    #   with MeasurementConfig.gpu_gain_error: the GPUs of a real TP4 group read within 2.4-2.8%, BRIEF.md)
    clock_step_mhz: float = 15.0  # supported SM clocks are 15 MHz apart (nvidia-smi -q -d SUPPORTED_CLOCKS)
    solve_iters: int = 9  # bisection steps of the cap solver: resolution (1 - phi_min) / 512, < 4 MHz
    # Training phases (utilizations of the two roofline resources; assumption, calibrated so that a rack
    # swings ~37% between compute and communication, POLCA "training 37.5% within 2 s" in BRIEF.md).
    train_mem_ratio: float = 0.35  # memory time / compute time of a training step's compute phase
    train_comm_uc: float = 0.25  # compute utilization during the communication (all-reduce) phase
    train_comm_um: float = 0.15
    train_ckpt_uc: float = 0.03  # during a checkpoint the GPUs mostly wait on storage
    train_ckpt_um: float = 0.05


def volt_rel(phi: FloatArray, cfg: PowerConfig) -> FloatArray:
    return np.maximum(cfg.v_floor, 1.0 - cfg.v_slope * (1.0 - phi))


def dyn_rel(phi: FloatArray, cfg: PowerConfig) -> FloatArray:
    """Dynamic power at relative clock phi, relative to max clock (1.0 at phi = 1)."""
    v = volt_rel(phi, cfg)
    return np.asarray(phi * v * v, dtype=np.float64)


def static_w(phi: FloatArray, bare_w: FloatArray, ctx_w: FloatArray, cfg: PowerConfig) -> FloatArray:
    return np.asarray(bare_w + (ctx_w - bare_w) * dyn_rel(phi, cfg), dtype=np.float64)


def roofline(c_s: FloatArray, m_s: FloatArray, o_s: FloatArray,
             phi: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Iteration time and utilizations of one forward pass.

    c_s: compute time at max clock, m_s: memory time (HBM traffic / bandwidth, clock-independent),
    o_s: fixed overhead (launches, synchronization). tau = max(c / phi, m) + o; u_c = (c / phi) / tau,
    u_m = m / tau. Compute-bound work (prefill, training) stretches as 1/phi; memory-bound work
    (decode) does not until phi drops below c/m.
    """
    tc = c_s / phi
    tau = np.maximum(tc, m_s) + o_s
    tau = np.maximum(tau, 1e-12)
    return tau, tc / tau, m_s / tau


def mem_power_w(km_w: FloatArray, d: FloatArray, cfg: PowerConfig) -> FloatArray:
    """Km at dynamic-power factor d (= dyn_rel(phi)): the part that follows the clock, and the rest."""
    s = cfg.mem_clock_share
    return np.asarray(km_w * (1.0 - s + s * d), dtype=np.float64)


def busy_power(phi: FloatArray, uc: FloatArray, um: FloatArray, bare_w: FloatArray, ctx_w: FloatArray,
               kd_w: FloatArray, km_w: FloatArray, cfg: PowerConfig) -> FloatArray:
    d = dyn_rel(phi, cfg)
    return np.asarray(bare_w + (ctx_w - bare_w) * d + kd_w * d * uc + mem_power_w(km_w, d, cfg) * um,
                      dtype=np.float64)


def solve_phi(limit_w: FloatArray, c_s: FloatArray, m_s: FloatArray, o_s: FloatArray, ceiling: FloatArray,
              phi_min: FloatArray, bare_w: FloatArray, ctx_w: FloatArray, kd_w: FloatArray, km_w: FloatArray,
              cfg: PowerConfig) -> tuple[FloatArray, BoolArray]:
    """Highest clock <= ceiling at which the work draws <= limit_w: what the GPU's power limiter settles at.

    Power is increasing in phi for both compute- and memory-bound work, so bisection converges. Returns
    (phi, capped) where capped marks entries whose clock the power limit pulled below the ceiling. If
    even phi_min exceeds the limit, phi_min is returned (the hardware cannot go lower).
    """
    _, uc, um = roofline(c_s, m_s, o_s, ceiling)
    p_top = busy_power(ceiling, uc, um, bare_w, ctx_w, kd_w, km_w, cfg)
    capped = p_top > limit_w
    if not capped.any():
        return ceiling, capped
    idx = np.flatnonzero(capped)
    lo = phi_min[idx].copy()
    hi = ceiling[idx].copy()
    c, m, o, lim = c_s[idx], m_s[idx], o_s[idx], limit_w[idx]
    b, x, kd, km = bare_w[idx], ctx_w[idx], kd_w[idx], km_w[idx]
    for _ in range(cfg.solve_iters):
        mid = 0.5 * (lo + hi)
        _, uc_m, um_m = roofline(c, m, o, mid)
        ok = busy_power(mid, uc_m, um_m, b, x, kd, km, cfg) <= lim
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    out = ceiling.copy()
    out[idx] = lo
    return out, capped


def quantize_phi(phi: FloatArray, fmax_mhz: FloatArray, fmin_mhz: FloatArray, step_mhz: float) -> FloatArray:
    """Round a relative clock down to a supported clock (fmax - k * step), at least fmin."""
    f = fmax_mhz - np.ceil(np.round((fmax_mhz - phi * fmax_mhz) / step_mhz, 6)) * step_mhz
    return np.asarray(np.maximum(f, fmin_mhz) / fmax_mhz, dtype=np.float64)


# ======================================================================================
# Thermal
# ======================================================================================


@dataclass(frozen=True)
class ThermalConfig:
    """Cooling zones, rack inlets and GPU temperatures.

    Zone: the cooling plant removes up to capacity x available fraction; heat beyond that warms the
    zone's air/coolant, of heat capacity C, so supply temperature rises at (heat - removed) / C and falls
    back (not below the set point) when capacity returns. Rack inlet = zone supply + recirculation that
    grows with the rack's load. GPU: first-order response to power and inlet.
    """

    zone_heat_capacity_j_per_k_per_kw: float = 3000.0  # C per kW of zone capacity (assumption: a total
    #   cooling loss warms the zone ~20 C/min, i.e. minutes to the thermal limits, as operators report)
    recirc_c_at_rated: float = 4.0  # inlet rise over supply at rack nameplate load (assumption; keeps a
    #   loaded rack inside ASHRAE's recommended 18-27 C with a 20 C supply, BRIEF.md)
    sw_thermal_c: float = 87.0  # max operating temperature: software thermal slowdown starts (BRIEF.md H100)
    sw_thermal_phi_per_c: float = 0.1  # clock fraction removed per C above sw_thermal_c (assumption)
    hw_slowdown_phi: float = 0.5  # clock ceiling once the slowdown temperature (89 C) is reached (assumption)
    shutdown_recover_c: float = 10.0  # a shut-down GPU restarts once this far below its slowdown temp (assumption)
    inlet_floor_c: float = 10.0  # ASHRAE A2 lower bound (BRIEF.md); guards odd inputs


def zone_supply_step(supply_c: FloatArray, setpoint_c: FloatArray, heat_w: FloatArray, capacity_w: FloatArray,
                     heat_capacity_j_per_k: FloatArray, dt_s: float) -> FloatArray:
    """Supply temperature after dt: rises at (heat - capacity) / C, never below the set point."""
    rate = (heat_w - capacity_w) / np.maximum(heat_capacity_j_per_k, 1.0)
    return np.asarray(np.maximum(setpoint_c, supply_c + rate * dt_s), dtype=np.float64)


def gpu_temp_step(temp_c: FloatArray, inlet_c: FloatArray, power_w: FloatArray, r_c_per_w: FloatArray,
                  alpha: FloatArray) -> FloatArray:
    """Exact first-order step toward inlet + R * P with alpha = 1 - exp(-dt / tau)."""
    return np.asarray(temp_c + alpha * (inlet_c + r_c_per_w * power_w - temp_c), dtype=np.float64)


def thermal_ceiling(temp_c: FloatArray, slowdown_c: FloatArray, cfg: ThermalConfig) -> FloatArray:
    """Clock ceiling imposed by temperature: software slowdown above 87 C, hardware slowdown at 89 C."""
    sw = 1.0 - cfg.sw_thermal_phi_per_c * np.maximum(temp_c - cfg.sw_thermal_c, 0.0)
    ceil = np.where(temp_c >= slowdown_c, cfg.hw_slowdown_phi, np.clip(sw, cfg.hw_slowdown_phi, 1.0))
    return np.asarray(ceil, dtype=np.float64)


# ======================================================================================
# Measurement
# ======================================================================================


@dataclass(frozen=True)
class MeasurementConfig:
    """What the sensors report: sampling, averaging windows, errors, staleness and gaps."""

    nvml_refresh_s: float = 0.1  # NVML power refreshes every 100 ms (BRIEF.md, SC'24 characterization)
    nvml_window_s: float = 0.025  # ... averaging only 25 ms of each 100 ms (BRIEF.md): the instantaneous
    #   reading (power.draw.instant) shows the phase (prefill/decode/idle, compute/communication) the GPU
    #   was in during that window
    power_avg_s: float = 1.0  # power.draw on Hopper is a ~1 s average of the instantaneous power: real
    #   readings ramp idle -> peak in 0.75-1 s and hold within +-2% under steady load (BRIEF.md "Real GPU
    #   power under LLM serving")
    gpu_gain_error: float = 0.01  # per-board gain error, fixed per GPU, uniform +-: NVIDIA states +-5%
    #   (BRIEF.md), but the 4 GPUs of a real TP4 group read within 2.4-2.8% of each other (BRIEF.md), so
    #   boards differ by far less than that (calibrated with PowerConfig.variation_sigma)
    gpu_noise_frac: float = 0.002  # per-reading noise, fraction (calibrated: 1 s change median 2.2 W at
    #   ~460 W, BRIEF.md)
    glitch_low_prob: float = 0.012  # share of power.draw readings that are glitches near glitch_low_w
    glitch_low_w: float = 70.0  # (BRIEF.md: ~1.2% of 250 ms readings near 70 W, 0.4% near 95 W)
    glitch_mid_prob: float = 0.004
    glitch_mid_w: float = 95.0
    glitch_sd_w: float = 2.0  # spread of a glitch's value (assumption)
    gpu_interval_s: float = 0.0  # GPU readings refresh on every step (the collector's poll period)
    temp_resolution_c: float = 1.0  # NVML reports whole degrees
    inlet_interval_s: float = 5.0  # BMC inlet sensors: 1 s to 1 min (BRIEF.md telemetry rates); assumption 5 s
    inlet_noise_c: float = 0.2  # per-reading noise (assumption)
    inlet_offset_c: float = 0.5  # fixed per-sensor offset, uniform +- (assumption; bottom vs top of rack)
    pdu_interval_s: float = 10.0  # PDU SNMP typically 10 s (BRIEF.md)
    pdu_gain_error: float = 0.01  # +-1% metering accuracy, fixed per meter (assumption: IEC class 1)
    pdu_noise_frac: float = 0.002  # per-reading noise (assumption)
    missing_prob: float = 1e-4  # probability that any one reading is missing (NaN) (assumption)
    noise_table_size: int = 1 << 20  # pre-drawn standard normals, read at a random offset per step
