"""The collector interface: configure (validate only) / start (connect) / read / close.

A source is one device (a PDU, a BMC, a node's GPUs) or one in-process plant. A kind is registered
by an entry point (powerplane/plugins.py); `load_source` builds one from a config table. Sources never publish and
never schedule themselves: the scheduler (collectors/scheduler.py) polls every source at its own
interval with a timeout and bounded concurrency, and the publisher owns Kafka, so every source gets
the same delivery guarantees.

`read` is a coroutine so that thousands of network devices share one event loop; a source whose
library is blocking (NVML) runs it with asyncio.to_thread.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from powerplane.plugins import PluginError, Registry
from powerplane.schemas import TelemetryFrame
from powerplane.site import Site


class SourceConfigError(ValueError):
    """A bad option; the message names the source and the key."""


class SourceError(RuntimeError):
    """The device answered wrongly (garbage, partial walk, HTTP error): one line, per device."""


@dataclass
class SourceContext:
    site: Site | None = None
    plant: Any = None  # the in-process simulated plant, for the sim source only


class Source(ABC):
    kind: str = ""
    default_interval_s: float = 10.0

    def __init__(self, name: str, options: Mapping[str, Any], ctx: SourceContext | None = None) -> None:
        self.name = name
        self.ctx = ctx or SourceContext()
        self.options = options
        self.interval_s = self.opt_float("interval_s", self.default_interval_s, lo=0.01)
        # A read that takes longer than this is abandoned; the next tick tries again.
        self.timeout_s = self.opt_float("timeout_s", min(5.0, 0.8 * self.interval_s), lo=0.001)
        self.seq = 0
        self.configure(options)

    # ---- option helpers (raise SourceConfigError naming source and key) ----------------------
    def _bad(self, key: str, msg: str) -> SourceConfigError:
        return SourceConfigError(f"source '{self.name}' ({self.kind}): option '{key}' {msg}")

    def opt_str(self, key: str, default: str | None = None) -> str:
        v = self.options.get(key, default)
        if not isinstance(v, str) or not v:
            raise self._bad(key, f"must be a non-empty string, got {v!r}")
        return v

    def opt_float(self, key: str, default: float | None = None, *, lo: float = -math.inf,
                  hi: float = math.inf) -> float:
        v = self.options.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= float(v) <= hi:
            raise self._bad(key, f"must be a number in [{lo:g}, {hi:g}], got {v!r}")
        return float(v)

    def opt_int(self, key: str, default: int | None = None, *, lo: int = 0, hi: int = 2**31) -> int:
        v = self.options.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self._bad(key, f"must be an integer in [{lo}, {hi}], got {v!r}")
        return v

    def site_name(self) -> str:
        """The `site` option, else the site model's name from the context."""
        default = self.ctx.site.name if self.ctx.site is not None else None
        return self.opt_str("site", default)

    def opt_index_list(self, key: str) -> list[int] | None:
        """An optional non-empty list of distinct indices (e.g. which GPUs of a server); None if absent."""
        v = self.options.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or not v or len(set(v)) != len(v) or any(
                isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < 65536 for g in v):
            raise self._bad(key, f"must be a non-empty list of distinct indices (integers >= 0), got {v!r}")
        return list(v)

    # ---- the interface ------------------------------------------------------------------------
    @abstractmethod
    def configure(self, options: Mapping[str, Any]) -> None:
        """Validate options; raise SourceConfigError naming the bad key. No I/O here."""

    async def start(self) -> None:
        """Open connections."""

    @abstractmethod
    async def read(self) -> list[TelemetryFrame]:
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


REGISTRY: Registry[type[Source]] = Registry("collectors", "collector")


def load_source(name: str, options: Mapping[str, Any], ctx: SourceContext | None = None) -> Source:
    try:
        cls = REGISTRY.get(str(options.get("kind")))
    except PluginError as e:
        raise SourceConfigError(f"source '{name}': {e}") from None
    return cls(name, options, ctx)
