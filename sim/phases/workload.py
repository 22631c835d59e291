"""Workload phases: this step's request arrivals and the training jobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from powerplane.site import FloatArray, IntArray
from sim.frames import JOB_CKPT, JOB_COMM, JOB_COMPUTE, JOB_OFF, JobStats
from sim.phases.power import Clocks
from sim.physics import PowerConfig, busy_power
from sim.pools import Pool, routing_probs
from sim.serving import Arrivals
from sim.state import TwinState, Units
from sim.workload import RateTable, generate_arrivals


def arrivals(rates: RateTable, pools: Sequence[Pool], st: TwinState, t0: float, dt_s: float,
             rng: np.random.Generator) -> Arrivals:
    """Requests arriving in [t0, t0 + dt_s), routed to instances (trace rates x each pool's surge)."""
    tab = st.tab
    prob = routing_probs(tab, len(pools))
    mult = np.array([p.surge for p in pools], dtype=np.float64)
    return generate_arrivals(rates, [p.spec for p in pools], mult, tab.pool, prob, t0, dt_s, rng)


@dataclass
class JobStep:
    """The training jobs this step: means over the step, and the phase each job ends it in."""

    power_w: FloatArray  # mean power per GPU
    busy: FloatArray  # busy fraction
    phi: FloatArray  # time-weighted clock
    phase: IntArray  # JOB_OFF, JOB_COMPUTE, JOB_COMM, JOB_CKPT
    p_comp: FloatArray  # power per GPU in each phase
    p_comm: FloatArray
    p_ckpt: FloatArray
    power_natural_w: FloatArray  # mean power per GPU had no floor held it up (= power_w where none is held)


def train(pc: PowerConfig, units: Units, st: TwinState, clk: Clocks, t0: float, dt_s: float, n_sub: int
          ) -> JobStep:
    """Advance every job through its compute, communication and checkpoint phases in n_sub substeps.

    Compute stretches with 1/clock down to the memory-bound share (train_mem_ratio); communication and
    checkpoints run at the ceiling clock. Each phase's power is held under the enforced limit and, where the
    job's GPUs hold a power floor, at least at that floor (up to the limit), phase by phase: the floor fills
    the communication and checkpoint troughs within a step, not only the step's mean.
    """
    h = dt_s / n_sub
    nj = units.n_jobs
    sl_j = slice(units.n_inst, units.n_work)
    jb, jx, jkd, jkm = units.u_bare[sl_j], units.u_ctx[sl_j], units.u_kd[sl_j], units.u_km[sl_j]
    jl = st.u_limit[sl_j]
    phi_job, phi_ceil_j = clk.phi_job, clk.phi_ceil_job
    mr = pc.train_mem_ratio
    stretch = np.maximum(1.0 / phi_job, mr) / max(1.0, mr)
    p_comp = np.minimum(busy_power(phi_job, np.minimum(1.0, (1.0 / phi_job) / np.maximum(1.0 / phi_job, mr)),
                                   mr * phi_job / np.maximum(1.0, mr * phi_job), jb, jx, jkd, jkm, pc), jl)
    comm_uc = np.where(np.isnan(st.jobs.comm_uc), pc.train_comm_uc, st.jobs.comm_uc)
    comm_um = np.where(np.isnan(st.jobs.comm_um), pc.train_comm_um, st.jobs.comm_um)
    p_comm = np.minimum(busy_power(phi_ceil_j, comm_uc, comm_um, jb, jx, jkd, jkm, pc), jl)
    p_ckpt = np.minimum(busy_power(phi_ceil_j, np.full(nj, pc.train_ckpt_uc), np.full(nj, pc.train_ckpt_um),
                                   jb, jx, jkd, jkm, pc), jl)
    floor = np.minimum(st.u_floor[sl_j], jl)
    natural = (p_comp, p_comm, p_ckpt, jb)  # what each phase draws without a floor (the floor energy's baseline)
    floored = bool(floor.any())
    if floored:
        p_comp, p_comm, p_ckpt = np.maximum(p_comp, floor), np.maximum(p_comm, floor), np.maximum(p_ckpt, floor)
    p_off = np.maximum(jb, floor)
    e_job = np.zeros(nj)
    e_nat = np.zeros(nj)
    busy_job = np.zeros(nj)
    phi_t_job = np.zeros(nj)
    ckpt_now = np.zeros(nj)
    on_now = np.zeros(nj)
    for k in range(n_sub):
        fc, fm, fk, on = st.jobs.advance(t0 + k * h, h, stretch, st.job_avail)
        off = 1.0 - on
        e_job += h * (fc * p_comp + fm * p_comm + fk * p_ckpt + off * p_off)
        if floored:
            e_nat += h * (fc * natural[0] + fm * natural[1] + fk * natural[2] + off * natural[3])
        busy_job += h * (fc + fm + 0.1 * fk)
        phi_t_job += h * (fc * phi_job + (fm + fk) * phi_ceil_j + off * units.u_phimin[sl_j])
        ckpt_now, on_now = fk, on
    comp_now = st.jobs.phase_now() * on_now * (1.0 - (ckpt_now > 0))
    job_phase = np.where(on_now <= 0, JOB_OFF, np.where(ckpt_now > 0, JOB_CKPT,
                                                        np.where(comp_now > 0, JOB_COMPUTE, JOB_COMM)))
    return JobStep(power_w=e_job / dt_s, busy=busy_job / dt_s, phi=phi_t_job / dt_s, phase=job_phase,
                   p_comp=p_comp, p_comm=p_comm, p_ckpt=p_ckpt, power_natural_w=(e_nat if floored else e_job) / dt_s)


def job_stats(names: list[str], priority: IntArray, units: Units, st: TwinState, clk: Clocks, js: JobStep
              ) -> JobStats:
    return JobStats(names=names, priority=priority, phase=js.phase.astype(np.int64),
                    iterations=st.jobs.iterations.copy(), power_w=js.power_w.copy(),
                    sm_clock_mhz=clk.phi_job * units.u_fmax[units.n_inst:units.n_work])
