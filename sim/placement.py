"""Placement: which GPUs every pool and job of a workload owns, and the instance slots a pool carves."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from powerplane.site import PRIORITIES, IntArray, Site
from powerplane.validation import Problems

if TYPE_CHECKING:
    from sim.workload_config import JobSpec, PoolSpec, WorkloadSpec


@dataclass(frozen=True, eq=False)
class Placement:
    pool_gpus: list[IntArray]
    job_gpus: list[IntArray]


def place(site: Site, spec: WorkloadSpec) -> Placement:
    """Give every pool and job its GPUs: explicit racks first, then per priority class in site order."""
    taken = np.zeros(site.n_gpus, dtype=bool)
    items: list[PoolSpec | JobSpec] = [*spec.pools, *spec.jobs]
    out: list[IntArray | None] = [None] * len(items)
    paths = [*(f"pools[{i}]" for i in range(len(spec.pools))), *(f"jobs[{i}]" for i in range(len(spec.jobs)))]
    problems = Problems()
    for i, s in enumerate(items):
        if s.racks:
            g = np.concatenate([np.arange(site.rack_gpu_start[r], site.rack_gpu_start[r + 1])
                                for r in (site.rack_index(x) for x in s.racks)])
            if taken[g].any():
                problems.add(f"{paths[i]}.racks", f"'{s.name}' overlaps another pool or job")
            taken[g] = True
            out[i] = np.sort(g)
    for cls, _ in enumerate(PRIORITIES):
        members = [i for i, s in enumerate(items) if out[i] is None and s.priority == PRIORITIES[cls]]
        if not members:
            continue
        free = np.flatnonzero((site.gpu_priority == cls) & ~taken)
        total = free.size
        want: dict[int, int] = {}
        for i in members:
            s = items[i]
            if s.gpus is not None:
                want[i] = s.gpus
            elif s.share is not None:
                want[i] = math.floor(s.share * total + 1e-9)
        rest = [i for i in members if i not in want]
        shared = [i for i in members if items[i].share is not None and items[i].gpus is None]
        if not rest and shared and sum(items[i].share or 0.0 for i in shared) > 1.0 - 1e-6:
            for j in range(max(total - sum(want.values()), 0)):  # floor() left a few GPUs: hand them out
                want[shared[j % len(shared)]] += 1
        left = max(total - sum(want.values()), 0)
        for j, i in enumerate(rest):
            want[i] = left // len(rest) + (1 if j < left % len(rest) else 0)
        pos = 0
        for i in members:
            n = want[i]
            if pos + n > total:
                problems.add(paths[i], f"'{items[i].name}' wants {n} GPUs of class '{PRIORITIES[cls]}', "
                                       f"only {max(total - pos, 0)} left")
                n = max(total - pos, 0)
            out[i] = free[pos:pos + n]
            pos += n
    problems.raise_if_any("<workload>")
    res = [o if o is not None else np.zeros(0, dtype=np.int64) for o in out]
    return Placement(res[:len(spec.pools)], res[len(spec.pools):])


def carve(site: Site, gpus: IntArray, tp: int) -> IntArray:
    """Instance slots of tp GPUs each, (n_slots, tp): within one server when tp fits, else within one rack."""
    if gpus.size == 0 or tp < 1:
        return np.zeros((0, max(tp, 1)), dtype=np.int64)
    per_server = np.bincount(site.gpu_server)[site.gpu_server[gpus]]
    dom = site.gpu_server[gpus] if tp <= int(per_server.min()) else site.gpu_rack[gpus]
    brk = np.flatnonzero((np.diff(dom) != 0) | (np.diff(gpus) != 1)) + 1
    starts = np.concatenate(([0], brk))
    lens = np.diff(np.concatenate((starts, [gpus.size])))
    pos = np.arange(gpus.size) - np.repeat(starts, lens)
    usable = pos < np.repeat((lens // tp) * tp, lens)
    return np.asarray(gpus[usable].reshape(-1, tp), dtype=np.int64)
