"""The actuator interface: configure (take validated options) / start (connect) / apply / close.

An actuator only touches hardware. Signatures, leases, ordering, idempotence and rate limits are
enforced once for all actuators by actuators.guard.Guard.

A kind's options are a pydantic model (`Options` beside the class, named by `options_model`), validated
once by the base class before `configure`: every mistake of the table at once, one
`actuators.<name>.<key>: message` line each.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field

from powerplane.plugins import Registry
from powerplane.validation import ConfigError, Table, validate_table

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
NonEmpty = Annotated[str, Field(min_length=1)]


class ActuatorConfigError(ConfigError):
    """Bad options: one `actuators.<name>.<key>: message` line per mistake, all of a table at once."""


class ActuatorOptions(Table):
    """The keys every actuator kind takes; a kind's `Options` adds its own."""

    kind: str = ""  # the registry picks the class by it (load_actuator)


class ActuatorError(RuntimeError):
    """The device refused or failed; the message goes into the acknowledgement."""


class Actuator(ABC):
    kind: str = ""
    options_model: ClassVar[type[ActuatorOptions]] = ActuatorOptions

    def __init__(self, name: str, options: Mapping[str, Any], context: Any = None) -> None:
        self.name = name
        self.context = context
        self.path = f"actuators.{name}"  # where the table is in an actuators file: the start of every error path
        self.opts = validate_table(self.options_model, options, self.path, ActuatorConfigError)
        self.configure(self.opts)

    @abstractmethod
    def configure(self, opts: Any) -> None:
        """Take the kind's validated options (an instance of its `options_model`). No I/O here."""

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

    # Optional knob: a power floor (action "power_floor", the GPU's power smoothing): the GPU burns at least
    # floor_w while it is on, never above its power limit. The Guard clamps each floor to enforced_limit_w (the
    # limit always wins), leases each floored GPU separately, and calls clear_power_floor when the lease lapses
    # (the safe state: no floor). Where a GPU cannot hold a floor, every method raises no_floor(target), and
    # the controller caps the job's compute peak instead (controllers.grid_limits, docs/grid.md).
    def enforced_limit_w(self, target: str, gpus: I64) -> F64:
        """The power limit each GPU enforces now, W (a floor is clamped to it)."""
        raise self.no_floor(target)

    def set_power_floor(self, target: str, gpus: I64, floor_w: F64) -> F64:
        """Hold a power floor per GPU (W, at most its enforced limit); return the floor the hardware took, W."""
        raise self.no_floor(target)

    def clear_power_floor(self, target: str, gpus: I64) -> F64:
        """Remove the GPUs' floors (the safe state); return the floor now in force, W (0)."""
        raise self.no_floor(target)

    def no_floor(self, target: str) -> ActuatorError:
        return ActuatorError(f"power smoothing floor not supported on {target}: use a clock lock (actuator "
                             f"'{self.name}', kind '{self.kind}')")

    # Set by actuators that only report what they would do: the Guard says so in every ack.
    dry_run: bool = False

    def close(self) -> None:
        """Release connections."""


REGISTRY: Registry[type[Actuator]] = Registry("actuators", "actuator", ActuatorConfigError)


def load_actuator(name: str, options: Mapping[str, Any], context: Any = None) -> Actuator:
    """The actuator an [actuators.NAME] table describes; ActuatorConfigError listing every mistake in it."""
    return REGISTRY.for_table(options, f"actuators.{name}")(name, options, context)
