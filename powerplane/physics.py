"""Physics shared by the digital twin, the streams and the controllers: the breaker trip curve, breaker heating,
PSU efficiency, NVML's throttle-reason bits, and how long a zone's inlet has climbed at a steady load.

Pure numpy, no I/O. The twin uses these to simulate trips; the streams use the same curve to say how long
an overloaded breaker has left, so both sides of the loop agree on when a breaker trips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from powerplane.site import FloatArray

# NVML clocks-event (throttle) reason bits, as nvidia-smi/NVML report them (nvml.h).
THROTTLE_IDLE = 0x1
THROTTLE_APP_CLOCKS = 0x2  # clocks held by an application-clocks / locked-clocks setting
THROTTLE_SW_POWER_CAP = 0x4
THROTTLE_HW_SLOWDOWN = 0x8
THROTTLE_SW_THERMAL = 0x20
THROTTLE_HW_THERMAL = 0x40


# ======================================================================================
# Electrical
# ======================================================================================


@dataclass(frozen=True)
class ElectricalConfig:
    """Server PSUs, A/B feed split and breakers."""

    # PSU efficiency vs load (fraction of the server's PSU rating carried by one side), as offsets from the
    # server type's psu_efficiency (its peak). Shape after 80 PLUS Titanium (90/94/96/91% at 10/20/50/100%
    # load), flattened at the top for server-grade power shelves (assumption).
    psu_load_points: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)
    psu_eff_offsets: tuple[float, ...] = (-0.08, -0.04, -0.015, 0.0, -0.015)
    feed_split_sigma: float = 0.02  # per-server fixed A/B current-sharing imbalance, fraction (assumption)
    other_idle_frac: float = 0.5  # CPUs/NICs/fans draw this fraction of other_w when the GPUs idle (assumption)
    # The rest follows the server's GPU activity through this lag, not within the second: fans run on BMC curves
    # of temperatures that trail the load by the heat sink's constant (10-20 s in this twin), and a training
    # step's CPU and NIC work does not switch with the GPUs' phase. 0: instantly (the model before issue 16,
    # under which a checkpoint drops a 20 MW job's servers by ~2.5 MW within one second). An assumption.
    other_tau_s: float = 10.0
    # Breaker time-to-trip t = K / (x^p - 1) for load x = I / I_rated > pickup (inverse-time thermal curve).
    # Fit to BRIEF.md: carries 100% indefinitely, ~100 s at 200%, ~1 s at 10x; gives ~880 s at 120%
    # ("trips eventually").
    breaker_pickup: float = 1.0
    breaker_exponent: float = 2.76
    breaker_k_s: float = 577.0
    breaker_cool_tau_s: float = 300.0  # thermal memory of a loaded breaker decays with this constant (assumption)
    breakers: bool = True  # simulate trips of utility/UPS/RPP/PDU breakers


def trip_time_s(load_frac: FloatArray, cfg: ElectricalConfig) -> FloatArray:
    """Seconds to trip at a constant load (fraction of rating); inf at or below the pickup."""
    x = np.maximum(load_frac, 0.0)
    over = x > cfg.breaker_pickup
    denom = np.where(over, np.power(np.maximum(x, 1.0), cfg.breaker_exponent) - 1.0, 1.0)
    return np.where(over, cfg.breaker_k_s / np.maximum(denom, 1e-12), np.inf)


def breaker_heat_step(heat: FloatArray, load_frac: FloatArray, dt_s: float, cfg: ElectricalConfig) -> FloatArray:
    """Accumulated trip fraction (trips at 1.0): + dt / t_trip while overloaded, decays otherwise."""
    t = trip_time_s(load_frac, cfg)
    decay = np.exp(-dt_s / cfg.breaker_cool_tau_s)
    return np.asarray(np.where(np.isfinite(t), heat + dt_s / t, heat * decay), dtype=np.float64)


def psu_efficiency(load_frac: FloatArray, peak: FloatArray, cfg: ElectricalConfig) -> FloatArray:
    off = np.interp(load_frac, cfg.psu_load_points, cfg.psu_eff_offsets)
    return np.asarray(np.minimum(np.maximum(peak + off, 0.5), 1.0), dtype=np.float64)


# ======================================================================================
# Thermal
# ======================================================================================


def climb_clock(now_s: float, climbing: npt.NDArray[np.bool_], load_w: FloatArray, since_s: FloatArray,
                from_w: FloatArray, step_frac: float) -> tuple[FloatArray, FloatArray]:
    """Per cooling zone: (since when its inlet has climbed at a steady load, its load when that clock started).
    The clock restarts, from the load now, whenever the load passes the load it started from by `step_frac`.

    Why: a rack's inlet follows its own load (more heat recirculates), so a zone whose load steps up, as a whole
    site does coming back from a demand-response shed, climbs for as long as the load rises and stops when it
    settles; a cooling plant that is not keeping up climbs at a steady load. The controller (how long a climb
    has lasted before it extrapolates it) and the streams' cooling-failure page both ask "climbing how long at
    a steady load". A training job's load swings tens of percent every few seconds without stepping up: its
    first high phase restarts the clock once, and the climb then counts. An unknown (NaN) load steps nothing.
    Not climbing: (inf, NaN)."""
    stepped = climbing & np.isfinite(from_w) & (load_w > from_w * (1.0 + step_frac))
    since = np.where(climbing, np.where(stepped, now_s, np.minimum(since_s, now_s)), np.inf)
    start = climbing & (stepped | ~np.isfinite(from_w))
    return np.asarray(since, np.float64), np.asarray(np.where(climbing, np.where(start, load_w, from_w), np.nan),
                                                     np.float64)
