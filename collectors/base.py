"""The collector interface: configure (validate only) / start (connect) / read_batch / close.

A source module registers itself by name with @register; `collectors.load_source` builds one from a
config table. Sources never publish: the publisher owns Kafka, so every source gets the same
delivery guarantees.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from powerplane.schemas import TelemetryFrame
from powerplane.site import Site


class SourceConfigError(ValueError):
    pass


@dataclass
class SourceContext:
    site: Site
    plant: Any = None  # the in-process simulated plant, for the sim source only


class Source(ABC):
    kind: str = ""

    def __init__(self, name: str, options: Mapping[str, Any], ctx: SourceContext) -> None:
        self.name = name
        self.ctx = ctx
        self.interval_s = float(options.get("interval_s", 1.0))
        if self.interval_s <= 0:
            raise SourceConfigError(f"source '{name}': interval_s must be positive")
        self.configure(options)

    @abstractmethod
    def configure(self, options: Mapping[str, Any]) -> None:
        """Validate options; raise SourceConfigError naming the bad key. No I/O here."""

    def start(self) -> None:
        """Open connections."""

    @abstractmethod
    def read_batch(self) -> list[TelemetryFrame]:
        """One sample of every device this source covers."""

    def close(self) -> None:
        """Release connections."""


REGISTRY: dict[str, type[Source]] = {}


def register(kind: str) -> Callable[[type[Source]], type[Source]]:
    def deco(cls: type[Source]) -> type[Source]:
        if kind in REGISTRY:
            raise ValueError(f"collector kind '{kind}' registered twice")
        cls.kind = kind
        REGISTRY[kind] = cls
        return cls

    return deco


def load_source(name: str, options: Mapping[str, Any], ctx: SourceContext) -> Source:
    import collectors.sim  # noqa: F401 - registration side effect

    kind = options.get("kind")
    if kind not in REGISTRY:
        raise SourceConfigError(f"source '{name}': unknown kind {kind!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[str(kind)](name, options, ctx)
