"""What one step of the twin returns: TwinFrame (what collectors would read, plus the ground truth) and its
per-pool and per-job statistics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from powerplane.site import FloatArray, IntArray
from sim.serving import Requests

BoolArray = npt.NDArray[np.bool_]
U32 = npt.NDArray[np.uint32]

# Job phases in JobStats.phase.
JOB_OFF, JOB_COMPUTE, JOB_COMM, JOB_CKPT = 0, 1, 2, 3


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
    power_w: FloatArray  # measured GPU power, NVML power.draw: a ~1 s average, gain error, noise, glitches
    #   (NaN = missing)
    temp_c: FloatArray  # measured GPU temperature
    sm_clock_mhz: FloatArray  # measured SM clock
    limit_w: FloatArray  # enforced power limit
    util: FloatArray  # measured utilization (busy fraction over the step)
    inlet_c: FloatArray  # (n_racks, max sensors) measured rack inlet; NaN where a rack has fewer sensors
    pdu_power_w: FloatArray  # (n_racks, 2) metered input per feed
    rack_power_w: FloatArray  # ground truth wall power per rack
    energy_j: FloatArray  # measured GPU energy counter (same gain error as power)
    throttle_reasons: U32  # NVML clocks-event reasons per GPU
    power_instant_w: FloatArray  # NVML power.draw.instant: a 25 ms window (the phase it falls in)
    # ---- ground truth ----
    gpu_power_true_w: FloatArray  # mean over the step
    gpu_temp_true_c: FloatArray
    gpu_clock_true_mhz: FloatArray  # time-weighted mean over the step
    gpu_energy_true_j: FloatArray  # cumulative
    gpu_floor_w: FloatArray  # power floor in force per GPU, W: min(floor, limit), 0 where none; what it burns
    #   is already in gpu_power_true_w and the energies
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
    # What the power floors burnt beyond what the GPUs would have drawn without them this step (the sum over
    # GPUs of max(0, drawn - natural)): at the GPUs (DC), and at the wall through each server's nominal PSU
    # efficiency; and the latter summed since the start (all of it in site_energy_j already).
    floor_extra_gpu_w: float
    floor_extra_w: float
    floor_energy_j: float
    pools: PoolStats
    jobs: JobStats
    requests: Requests  # requests that got their first token this step, with their TTFT
    events: list[str] = field(default_factory=list)  # scenario events and breaker trips this step
