"""The collector interface: configure (take validated options, no I/O) / start (connect) / read / close.

A source is one device (a PDU, a BMC, a node's GPUs) or one in-process plant. A kind is registered
by an entry point (powerplane/plugins.py); `load_source` builds one from a config table. Sources never publish and
never schedule themselves: the scheduler (collectors/scheduler.py) polls every source at its own
interval with a timeout and bounded concurrency, and the publisher owns Kafka, so every source gets
the same delivery guarantees.

`read` is a coroutine so that thousands of network devices share one event loop; a source whose
library is blocking (NVML) runs it with asyncio.to_thread.

A kind's options are a pydantic model (`Options` beside the class, named by `options_model`). The base
class validates the table once, before `configure`, and reports every mistake of the table at once, one
`sources.<name>.<key>: message` line each (unknown keys included).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import AfterValidator, Field

from powerplane.plugins import Registry
from powerplane.schemas import FacilityReading, TelemetryFrame
from powerplane.site import Site
from powerplane.validation import ConfigError, Table, validate_table

# What a source's read returns: telemetry frames (pp.telemetry) or facility readings (pp.facility).
Published = TelemetryFrame | FacilityReading


class SourceConfigError(ConfigError):
    """Bad options: one `sources.<name>.<key>: message` line per mistake, all of a table at once."""


class SourceError(RuntimeError):
    """The device answered wrongly (garbage, partial walk, HTTP error): one line, per device."""


def _distinct(v: list[int]) -> list[int]:
    if len(set(v)) != len(v):
        raise ValueError(f"must list each index once, got {v!r}")
    return v


NonEmpty = Annotated[str, Field(min_length=1)]
# A non-empty list of distinct indices (which GPUs of a server).
Indices = Annotated[list[Annotated[int, Field(ge=0, le=65535)]], Field(min_length=1), AfterValidator(_distinct)]


class SourceOptions(Table):
    """The keys every source kind takes; a kind's `Options` adds its own."""

    kind: str = ""  # the registry picks the class by it (load_source)
    interval_s: float | None = Field(None, ge=0.01)  # default: the kind's default_interval_s
    # A read that takes longer than this is abandoned; the next tick tries again. Default min(5, 0.8 x interval_s).
    timeout_s: float | None = Field(None, ge=0.001)


class DeviceOptions(SourceOptions):
    """A source for one device of one rack."""

    site: NonEmpty  # load_source fills it from the site model when the table leaves it out
    rack: NonEmpty


@dataclass
class SourceContext:
    site: Site | None = None
    plant: Any = None  # the in-process simulated plant, for the sim source only


class Source(ABC):
    kind: str = ""
    options_model: ClassVar[type[SourceOptions]] = SourceOptions
    default_interval_s: float = 10.0

    def __init__(self, name: str, options: Mapping[str, Any], ctx: SourceContext | None = None) -> None:
        self.name = name
        self.ctx = ctx or SourceContext()
        self.path = f"sources.{name}"  # where the table is in a sources file: the start of every error path
        self.opts = self._validate(options)
        self.interval_s = self.opts.interval_s if self.opts.interval_s is not None else self.default_interval_s
        self.timeout_s = self.opts.timeout_s if self.opts.timeout_s is not None else min(5.0, 0.8 * self.interval_s)
        self.seq = 0
        self.configure(self.opts)

    def _validate(self, options: Mapping[str, Any]) -> SourceOptions:
        data = dict(options)
        if "site" in self.options_model.model_fields and "site" not in data and self.ctx.site is not None:
            data["site"] = self.ctx.site.name
        return validate_table(self.options_model, data, self.path, SourceConfigError)

    def config_error(self, key: str, message: str) -> SourceConfigError:
        """A mistake found later than validation (a CA file that cannot be loaded at start)."""
        return SourceConfigError(f"{self.path}.{key}: {message}")

    # ---- the interface ------------------------------------------------------------------------
    @abstractmethod
    def configure(self, opts: Any) -> None:
        """Take the kind's validated options (an instance of its `options_model`). No I/O here."""

    async def start(self) -> None:
        """Open connections."""

    @abstractmethod
    async def read(self) -> Sequence[Published]:
        """One sample of the device(s) this source covers; raise SourceError on bad answers."""

    async def close(self) -> None:
        """Release connections."""

    # ---- frame helper ---------------------------------------------------------------------------
    def frame(self, site: str, rack: str, ts_s: float | None = None, **fields: Any) -> TelemetryFrame:
        """A frame with only what this device knows; everything else empty or NaN (never 0)."""
        self.seq += 1
        f32 = np.zeros(0, np.float32)
        u16 = np.zeros(0, np.uint16)
        base: dict[str, Any] = dict(
            site=site, rack=rack, ts_s=time.time() if ts_s is None else ts_s, interval_s=self.interval_s,
            seq=self.seq, source=self.name, gpu_server=u16, gpu_slot=u16, power_w=f32, temp_c=f32,
            sm_clock_mhz=f32, limit_w=f32, util=f32, inlet_c=[], pdu_power_w=[math.nan, math.nan])
        base.update(fields)
        return TelemetryFrame(**base)


REGISTRY: Registry[type[Source]] = Registry("collectors", "collector", SourceConfigError)


def load_source(name: str, options: Mapping[str, Any], ctx: SourceContext | None = None) -> Source:
    """The source a [sources.NAME] table describes; SourceConfigError listing every mistake in it."""
    return REGISTRY.for_table(options, f"sources.{name}")(name, options, ctx)
