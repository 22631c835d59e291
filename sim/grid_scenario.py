"""The grid side of a scenario (issue 16): one large synchronous training job, the utility's limits set or
overridden for the run, and demand-response events.

A scenario file may carry, besides its ``[[events]]``::

    [training_job]            # one synchronous job, in phase over all its GPUs: what swings a site
    power_mw = 20             # its wall power at full compute (or gpus = N, share = 0.25, racks = [...])
    iter_s = 3.0              # one iteration at max clock
    compute_frac = 0.7        # compute share of it; the rest is communication
    comm_uc = 0.05            # communication near idle (arXiv 2508.14318); omit for the twin's calibration

    [grid]                    # replaces the site file's [grid] for this run (powerplane.grid.GridLimits)
    ramp_up_mw_per_s = 3.0
    ramp_down_mw_per_s = 3.0

    [feed_grid.util-a]        # replaces one utility feed's [feeds.grid]
    ramp_up_mw_per_s = 1.5

    [[demand_response]]       # powerplane.grid.DemandResponse
    id = "dr-1"
    start_s = 120
    reduce_by_pct = 25
    within_s = 30
    hold_s = 600

    job_notice_s = 30         # top level: the scheduler announces every job's start 30 s ahead (default: never)
    measure_from_s = 30       # top level: evaluate's ramp, range and band measures start here (default 10 s;
                              # before it the twin is starting every pool and job from cold)
    gpu_power_floor = false   # top level: the GPUs have no power-smoothing floor, as H100s (default true): the
                              # twin's actuator rejects every power_floor, and the controller caps compute peaks

The job takes its GPUs first from its priority class; the workload's other jobs of that class share what is
left (their own share or size is dropped), so the site stays as loaded as its default workload; a job left
no GPUs at all is dropped.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated

from pydantic import Field, model_validator

from powerplane.grid import MW, GridLimits
from powerplane.site import PRIORITIES, Site
from sim.placement import place
from sim.workload_config import JobConfig, JobSpec, WorkloadSpec, validate_workload

__all__ = ["TrainingJob", "grid_site", "job_gpus_for_power", "with_training_job"]


class TrainingJob(JobConfig):
    """``[training_job]``: a workload job (sim.workload_config.JobConfig) sized by GPUs, share, racks or its
    wall power at full compute (``power_mw``), with defaults for a large synchronous job: a 3 s iteration,
    70 % compute, communication near idle."""

    name: str = "sync-train"
    power_mw: Annotated[float, Field(strict=True, gt=0, le=1e5)] | None = None
    iter_s: Annotated[float, Field(strict=True, gt=0)] = 3.0
    compute_frac: Annotated[float, Field(strict=True, gt=0, le=1)] = 0.7
    comm_uc: Annotated[float, Field(strict=True, ge=0, le=1)] | None = 0.05
    comm_um: Annotated[float, Field(strict=True, ge=0, le=1)] | None = 0.05

    @model_validator(mode="after")
    def _one_size(self) -> TrainingJob:
        given = [k for k in ("gpus", "share", "power_mw") if getattr(self, k) is not None] + \
            (["racks"] if self.racks else [])
        if len(given) != 1:
            raise ValueError("give exactly one of gpus, share, racks and power_mw"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


def job_gpus_for_power(site: Site, priority: str, power_mw: float) -> int:
    """GPUs of the class whose servers draw `power_mw` at the wall with every GPU at its maximum: a GPU's
    share is (its max + its server's other load / GPUs per server) / PSU efficiency."""
    cls = PRIORITIES.index(priority)
    gpus = [int(g) for g in (site.gpu_priority == cls).nonzero()[0][:1]]
    if not gpus:
        raise ValueError(f"training_job: the site has no GPUs of class '{priority}'")
    g = gpus[0]
    srv = int(site.gpu_server[g])
    per_server = int((site.gpu_server == srv).sum())
    wall_w = (float(site.gpu_max_w[g]) + float(site.server_other_w[srv]) / per_server) / float(site.server_psu_eff[srv])
    return max(1, math.floor(power_mw * MW / wall_w))


def with_training_job(site: Site, workload: WorkloadSpec, job: TrainingJob) -> WorkloadSpec:
    """The workload with the job first in its class (replacing a job of the same name); the class's other
    jobs without racks of their own share what is left. Checked against the site (one ConfigError)."""
    fields = job.model_dump(exclude={"power_mw"})
    if job.power_mw is not None:
        fields["gpus"] = job_gpus_for_power(site, job.priority, job.power_mw)
    spec = JobSpec(**fields)
    others = tuple(replace(j, gpus=None, share=None) if j.priority == job.priority and not j.racks else j
                   for j in workload.jobs if j.name != job.name)
    out = replace(workload, jobs=(spec, *others))
    validate_workload(out, site, "training_job")
    # A job the big one left no GPUs to (it took the whole class) is not run, rather than an error.
    got = place(site, out).job_gpus
    return replace(out, jobs=tuple(j for j, g in zip(out.jobs, got, strict=True) if g.size or j is spec))


def grid_site(site: Site, grid: GridLimits | None, feed_grid: Mapping[str, GridLimits]) -> Site:
    """The site with its utility limits replaced where the scenario gives them (a shallow copy: the
    topology is shared, only `grid` and `feed_grid` differ)."""
    if grid is None and not feed_grid:
        return site
    out = copy.copy(site)
    if grid is not None:
        out.grid = grid
    out.feed_grid = {**site.feed_grid, **feed_grid}
    return out
