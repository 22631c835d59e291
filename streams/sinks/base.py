"""The sink interface: configure (take validated options, no I/O) / start (connect) / write / close.

The Kafka side (consume, decode, dead-letter, commit only after a successful write) lives once in
streams.sinks.runner, so Kafka is the durable buffer for every sink: when the store is down the
runner stops fetching (backpressure) instead of piling records up in memory.

A kind's options are a pydantic model (`Options` beside the class, named by `options_model`), validated
once by the base class before `configure`: every mistake of the table at once, one
`sinks.<name>.<key>: message` line each.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, Field

from powerplane.plugins import Registry
from powerplane.schemas import Record
from powerplane.validation import ConfigError, Table, validate_table


class SinkConfigError(ConfigError):
    """Bad options: one `sinks.<name>.<key>: message` line per mistake, all of a table at once."""


def _http_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got {url!r}")
    return url


NonEmpty = Annotated[str, Field(min_length=1)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]


class SinkOptions(Table):
    """The keys every sink kind takes; a kind's `Options` adds its own."""

    kind: str = ""  # the registry picks the class by it (load_sink)


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
    options_model: ClassVar[type[SinkOptions]] = SinkOptions
    topics: tuple[str, ...] = ()

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.opts = validate_table(self.options_model, options, f"sinks.{name}", SinkConfigError)
        self.configure(self.opts)

    @abstractmethod
    def configure(self, opts: Any) -> None:
        """Take the kind's validated options (an instance of its `options_model`). No I/O here."""

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


REGISTRY: Registry[type[Sink]] = Registry("sinks", "sink", SinkConfigError)


def load_sink(name: str, options: Mapping[str, Any]) -> Sink:
    """The sink a [sinks.NAME] table describes; SinkConfigError listing every mistake in it."""
    return REGISTRY.for_table(options, f"sinks.{name}")(name, options)
