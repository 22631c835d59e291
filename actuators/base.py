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
from pydantic import ConfigDict, Field

from powerplane.plugins import PluginError, Registry
from powerplane.validation import ConfigError, Model, Problems, validate

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
NonEmpty = Annotated[str, Field(min_length=1)]


class ActuatorConfigError(ConfigError):
    """Bad options: one `actuators.<name>.<key>: message` line per mistake, all of a table at once."""


class ActuatorOptions(Model):
    """The keys every actuator kind takes; a kind's `Options` adds its own. Strict: TOML gives real types."""

    model_config = ConfigDict(strict=True)

    kind: str = ""  # the registry picks the class by it (load_actuator)

    def check(self, p: Problems) -> None:
        """Rules across several keys, one `p.add(key, message)` per broken rule (runs once the keys are valid)."""


class ActuatorError(RuntimeError):
    """The device refused or failed; the message goes into the acknowledgement."""


class Actuator(ABC):
    kind: str = ""
    options_model: ClassVar[type[ActuatorOptions]] = ActuatorOptions

    def __init__(self, name: str, options: Mapping[str, Any], context: Any = None) -> None:
        self.name = name
        self.context = context
        self.path = f"actuators.{name}"  # where the table is in an actuators file: the start of every error path
        try:
            self.opts = validate(self.options_model, dict(options), prefix=self.path)
        except ConfigError as e:
            raise ActuatorConfigError(e.errors) from None
        p = Problems(self.path)
        self.opts.check(p)
        if p.lines:
            raise ActuatorConfigError(p.lines)
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

    # Set by actuators that only report what they would do: the Guard says so in every ack.
    dry_run: bool = False

    def close(self) -> None:
        """Release connections."""


REGISTRY: Registry[type[Actuator]] = Registry("actuators", "actuator")


def load_actuator(name: str, options: Mapping[str, Any], context: Any = None) -> Actuator:
    """The actuator an [actuators.NAME] table describes; ActuatorConfigError listing every mistake in it."""
    kind = options.get("kind")
    if kind is None:
        raise ActuatorConfigError(f"actuators.{name}.kind: missing (required; one of {', '.join(REGISTRY.kinds())})")
    try:
        cls = REGISTRY.get(str(kind))
    except PluginError as e:
        raise ActuatorConfigError(f"actuators.{name}.kind: {e}") from None
    return cls(name, options, context)
