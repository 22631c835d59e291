"""The actuator interface: configure (validate) / start (connect) / apply / close.

An actuator only touches hardware. Signatures, leases, ordering, idempotence and rate limits are
enforced once for all actuators by controllers.actuation.Guard.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from powerplane.plugins import Registry

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

    def close(self) -> None:
        """Release connections."""


REGISTRY: Registry[type[Actuator]] = Registry("actuator")
register = REGISTRY.register


def load_actuator(name: str, options: Mapping[str, Any], context: Any = None) -> Actuator:
    import controllers.actuators.twin  # noqa: F401 - registration side effect

    kind = options.get("kind")
    if kind not in REGISTRY:
        raise ActuatorConfigError(f"actuator '{name}': unknown kind {kind!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[str(kind)](name, options, context)
