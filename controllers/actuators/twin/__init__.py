"""Actuator for the in-process simulated fleet (see README.md beside this file)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from controllers.actuators.base import F64, I64, Actuator, ActuatorConfigError, ActuatorError, register
from powerplane.fleet import Plant


@register("twin")
class TwinActuator(Actuator):
    def configure(self, options: Mapping[str, Any]) -> None:
        if not isinstance(self.context, Plant):
            raise ActuatorConfigError(f"actuator '{self.name}': the twin actuator needs the simulated fleet")
        self.fleet: Plant = self.context
        self.lock: threading.Lock = options.get("lock") or threading.Lock()
        safe = options.get("safe_limit", "max")
        if safe not in ("max", "min") and not isinstance(safe, int | float):
            raise ActuatorConfigError(f"actuator '{self.name}': safe_limit must be 'max', 'min' or watts, got {safe!r}")
        self.safe = safe
        site = self.fleet.site
        self._rack = {rid: r for r, rid in enumerate(site.rack_ids)}

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
