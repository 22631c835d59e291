"""Actuator for the in-process simulated fleet (see README.md beside this file)."""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import field_validator

from actuators.base import F64, I64, Actuator, ActuatorConfigError, ActuatorError, ActuatorOptions
from sim.fleet import InProcessLock, Plant


@runtime_checkable
class ClockedPlant(Protocol):
    """A plant that can lock SM clocks (the digital twin; the simple Fleet cannot)."""

    def lock_clocks(self, gpus: I64, mhz: F64) -> F64: ...

    def reset_clocks(self, gpus: I64) -> F64: ...


@runtime_checkable
class FlooredPlant(Protocol):
    """A plant whose GPUs can hold a power floor (the digital twin; the simple Fleet cannot)."""

    limit_w: F64

    def set_floor(self, gpus: I64, floor_w: F64) -> F64: ...

    def clear_floor(self, gpus: I64) -> F64: ...


class Options(ActuatorOptions):
    """An [actuators.NAME] table of kind "twin" (README.md beside this file)."""

    safe_limit: str | float = "max"  # what a lapsed lease reverts to: "max", "min" or watts
    # The racks this actuator serves (rack ids of the site); none given: every rack. `powerplane fleet
    # --actuator-groups N` gives each of its N actuators a share (actuators.service.rack_groups).
    racks: list[str] | None = None
    # A lock shared with code that also changes the fleet (ops' fleet command); never from a file.
    lock: InProcessLock = None
    # False: the GPUs have no power-smoothing floor, as an H100 (every power_floor rejected as NVML's actuator
    # rejects it), so a run measures the controller's fallback through real rejected acks.
    power_floor: bool = True

    @field_validator("safe_limit", mode="plain")
    @classmethod
    def _safe_limit(cls, v: Any) -> str | float:
        if v in ("max", "min"):
            return str(v)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        raise ValueError(f"must be 'max', 'min' or watts, got {v!r}")


class TwinActuator(Actuator):
    kind = "twin"
    options_model = Options

    def configure(self, opts: Options) -> None:
        if not isinstance(self.context, Plant):
            raise ActuatorConfigError(f"{self.path}: the twin actuator needs the simulated fleet in its context")
        self.fleet: Plant = self.context
        self.lock: threading.Lock = opts.lock or threading.Lock()
        self.safe = opts.safe_limit
        self.power_floor = opts.power_floor
        site = self.fleet.site
        every = {rid: r for r, rid in enumerate(site.rack_ids)}
        unknown = [r for r in opts.racks or () if r not in every]
        if unknown:
            raise ActuatorConfigError(f"{self.path}.racks: not racks of site '{site.name}': {', '.join(unknown)}")
        if opts.racks is not None and not opts.racks:
            raise ActuatorConfigError(f"{self.path}.racks: empty (leave it out to serve every rack)")
        self._rack = {r: every[r] for r in opts.racks} if opts.racks is not None else every
        types = site.server_types
        self._fmin = np.array([types[t].gpu_min_sm_mhz for t in site.server_type], dtype=np.float64)[site.gpu_server]
        self._fmax = np.array([types[t].gpu_max_sm_mhz for t in site.server_type], dtype=np.float64)[site.gpu_server]

    def targets(self) -> list[str]:
        return list(self._rack)

    def _global(self, target: str, gpus: I64) -> I64:
        site = self.fleet.site
        r = self._rack.get(target)
        if r is None:
            raise ActuatorError(f"rack '{target}' is not served by actuator '{self.name}'")
        a, b = int(site.rack_gpu_start[r]), int(site.rack_gpu_start[r + 1])
        if gpus.size and (gpus.min() < 0 or gpus.max() >= b - a):
            raise ActuatorError(f"GPU index out of range for rack '{target}' ({b - a} GPUs)")
        return np.asarray(gpus + a, dtype=np.int64)

    def set_power_limit(self, target: str, gpus: I64, limit_w: F64) -> F64:
        g = self._global(target, gpus)
        with self.lock:
            return self.fleet.set_limit(g, limit_w)

    def limits_w(self, target: str, gpus: I64) -> tuple[F64, F64, F64]:
        g = self._global(target, gpus)
        site = self.fleet.site
        lo, hi = site.gpu_min_w[g], site.gpu_max_w[g]
        if self.safe == "max":
            safe = hi
        elif self.safe == "min":
            safe = lo
        else:
            safe = np.clip(np.full(g.size, float(self.safe)), lo, hi)
        return lo, hi, safe

    def _clocked(self) -> ClockedPlant:
        if not isinstance(self.fleet, ClockedPlant):
            raise self._no_clocks()
        return self.fleet

    def clock_range_mhz(self, target: str, gpus: I64) -> tuple[F64, F64]:
        self._clocked()
        g = self._global(target, gpus)
        return self._fmin[g], self._fmax[g]

    def lock_clocks(self, target: str, gpus: I64, mhz: F64) -> F64:
        plant, g = self._clocked(), self._global(target, gpus)
        with self.lock:
            return np.asarray(plant.lock_clocks(g, mhz), dtype=np.float64)

    def reset_clocks(self, target: str, gpus: I64) -> F64:
        plant, g = self._clocked(), self._global(target, gpus)
        with self.lock:
            return np.asarray(plant.reset_clocks(g), dtype=np.float64)

    def _floored(self, target: str) -> FlooredPlant:
        if not self.power_floor or not isinstance(self.fleet, FlooredPlant):
            raise self.no_floor(target)
        return self.fleet

    def enforced_limit_w(self, target: str, gpus: I64) -> F64:
        plant, g = self._floored(target), self._global(target, gpus)
        return np.asarray(plant.limit_w[g], dtype=np.float64)

    def set_power_floor(self, target: str, gpus: I64, floor_w: F64) -> F64:
        plant, g = self._floored(target), self._global(target, gpus)
        with self.lock:
            return np.asarray(plant.set_floor(g, floor_w), dtype=np.float64)

    def clear_power_floor(self, target: str, gpus: I64) -> F64:
        plant, g = self._floored(target), self._global(target, gpus)
        with self.lock:
            return np.asarray(plant.clear_floor(g), dtype=np.float64)
