"""The sink interface: configure (validate only) / start (connect) / write / close.

The Kafka side (consume, decode, dead-letter, commit only after a successful write) lives once in
streams.sinks.runner, so Kafka is the durable buffer for every sink: when the store is down the
runner stops fetching (backpressure) instead of piling records up in memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from powerplane.plugins import PluginError, Registry
from powerplane.schemas import Record


class SinkConfigError(ValueError):
    pass


class RetryableSinkError(RuntimeError):
    """The store is unavailable or pushing back (429/503, connection refused): retry later."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # the server's Retry-After, honoured over the runner's backoff


def seconds(retry_after: str | None) -> float | None:
    """A Retry-After header in its seconds form; None when absent or an HTTP date (the backoff applies)."""
    try:
        return max(0.0, float(retry_after)) if retry_after is not None else None
    except ValueError:
        return None


class Sink(ABC):
    kind: str = ""
    topics: tuple[str, ...] = ()

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.configure(options)

    @abstractmethod
    def configure(self, options: Mapping[str, Any]) -> None:
        """Validate options; raise SinkConfigError naming the bad key. No I/O here."""

    def start(self) -> None:
        """Open connections."""

    @abstractmethod
    def write(self, records: Sequence[Record]) -> int:
        """Write all records or raise; return the number of points written."""

    def tick(self, now_s: float) -> None:
        """Called by the runner between polls (about every 200 ms), also when no records come:
        periodic work such as re-posting alerts that would otherwise expire. Raise nothing."""

    def close(self) -> None:
        """Flush and release connections."""


REGISTRY: Registry[type[Sink]] = Registry("sinks", "sink")


def load_sink(name: str, options: Mapping[str, Any]) -> Sink:
    try:
        cls = REGISTRY.get(str(options.get("kind")))
    except PluginError as e:
        raise SinkConfigError(f"sink '{name}': {e}") from None
    return cls(name, options)
