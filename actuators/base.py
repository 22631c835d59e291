"""The actuator interface: configure (validate) / start (connect) / apply / close.

An actuator only touches hardware. Signatures, leases, ordering, idempotence and rate limits are
enforced once for all actuators by actuators.guard.Guard.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from powerplane.plugins import PluginError, Registry

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class ActuatorConfigError(ValueError):
    pass


class ActuatorError(RuntimeError):
    """The device refused or failed; the message goes into the acknowledgement."""


class Actuator(ABC):
    kind: str = ""

    def __init__(self, name: str, options: Mapping[str, Any], context: Any = None) -> None:
        self.name = name
        self.context = context
        self.configure(options)

    @abstractmethod
    def configure(self, options: Mapping[str, Any]) -> None:
        """Validate options; raise ActuatorConfigError naming the bad key. No I/O here."""

    def start(self) -> None:
        """Open connections."""

    @abstractmethod
    def targets(self) -> list[str]:
        """The racks this actuator serves."""

    @abstractmethod
    def set_power_limit(self, target: str, gpus: I64, limit_w: F64) -> F64:
        """Set GPU power limits; return what the hardware actually took (after its own clamping)."""

    @abstractmethod
    def limits_w(self, target: str, gpus: I64) -> tuple[F64, F64, F64]:
        """(min, max, safe) power limit of each GPU; safe is what a lapsed lease reverts to."""

    # Optional knob: SM clock locking (action "sm_clock_lock"). The Guard clamps to clock_range_mhz, leases
    # each locked GPU separately from its power limit, and calls reset_clocks when that lease lapses.
    def clock_range_mhz(self, target: str, gpus: I64) -> tuple[F64, F64]:
        """(min, max) SM clock each GPU can be locked to, in MHz."""
        raise self._no_clocks()

    def lock_clocks(self, target: str, gpus: I64, mhz: F64) -> F64:
        """Lock SM clocks (a ceiling per GPU); return the clocks actually locked, in MHz."""
        raise self._no_clocks()

    def reset_clocks(self, target: str, gpus: I64) -> F64:
        """Undo clock locks (the safe state: the GPU may boost again); return the ceiling now in force, MHz."""
        raise self._no_clocks()

    def _no_clocks(self) -> ActuatorError:
        return ActuatorError(f"action 'sm_clock_lock' is not supported: actuator '{self.name}' (kind "
                             f"'{self.kind}') does not support clock locking")

    # Set by actuators that only report what they would do: the Guard says so in every ack.
    dry_run: bool = False

    def close(self) -> None:
        """Release connections."""


REGISTRY: Registry[type[Actuator]] = Registry("actuators", "actuator")


def load_actuator(name: str, options: Mapping[str, Any], context: Any = None) -> Actuator:
    try:
        cls = REGISTRY.get(str(options.get("kind")))
    except PluginError as e:
        raise ActuatorConfigError(f"actuator '{name}': {e}") from None
    return cls(name, options, context)
