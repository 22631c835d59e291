"""What every long-running process shares for Prometheus: the `--metrics-addr HOST:PORT` parser, serving a
registry, and consumer lag per group and partition read from the Kafka client's own fetch state (no request
to the broker per scrape).

Names: one `powerplane_` prefix, then the stage, then what is counted with its unit (`_seconds`, `_bytes`,
`_records`, `_watts`); counters end in `_total` (prometheus_client adds it on exposition)."""

from __future__ import annotations

import ipaddress
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

LAG = "powerplane_consumer_lag_records"

Lags = dict[tuple[str, int], int]  # (topic, partition) -> records between the consumer and the end


def parse_addr(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (every interface) into (host, port); ValueError in one line."""
    host, sep, port_s = text.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"'{text}': expected HOST:PORT with a port 1-65535 (e.g. 0.0.0.0:9101 or 127.0.0.1:9101)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"'{text}': '{host}' is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"'{text}': write an IPv6 host in brackets, e.g. [::]:9101")
    return host or "0.0.0.0", int(port_s)


def serve(addr: tuple[str, int]) -> Any:
    """A new registry served on `addr` at /metrics (a daemon thread); services register their collectors in it."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    start_http_server(addr[1], addr=addr[0], registry=registry)
    return registry


class ConsumerLag:
    """Collector of `powerplane_consumer_lag_records{group,topic,partition}`: `lags()` is read at scrape time
    and must not block (read the client's fetch state, see `kafka_python_lags`)."""

    def __init__(self, group: str, lags: Callable[[], Lags]) -> None:
        self.group, self.lags = group, lags

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily(LAG, "records between the consumer's position and the partition's end (highwater), "
                                   "as of the last fetch answered", labels=["group", "topic", "partition"])
        for (topic, partition), lag in sorted(self.lags().items()):
            g.add_metric([self.group, topic, str(partition)], float(lag))
        yield g


def kafka_python_lags(consumer: Any) -> Lags:
    """Highwater minus position of each assigned partition of a kafka-python consumer, from the fetch state it
    keeps (KafkaConsumer.position() may call the broker; this never does). Safe from another thread: the
    subscription state's own lock guards the copy. Partitions with no fetch answered yet are left out."""
    try:
        sub = consumer._subscription
        positions = sub.all_consumed_offsets()  # {tp: OffsetAndMetadata}, under the state's lock
        out: Lags = {}
        for tp, pos in positions.items():
            state = sub.assignment.get(tp)
            if state is not None and state.highwater is not None:
                out[(tp.topic, tp.partition)] = max(0, int(state.highwater) - int(pos.offset))
        return out
    except Exception:  # a closed client, or its internals changed: no lag rather than a failed scrape
        return {}


class Merged:
    """Collectors of the same families in one registry (the simulated fleet's actuators, one per group of
    racks, in one process): the exposition format allows each family once, so this yields one family per
    name with the samples of all, and adds up samples of the same name and labels (counts of the process)."""

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self._lock = threading.Lock()

    def add(self, collector: Any) -> None:
        with self._lock:
            self.parts.append(collector)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            parts = list(self.parts)
        fams: dict[str, Any] = {}
        for part in parts:
            for fam in part.collect():
                have = fams.setdefault(fam.name, fam)
                if have is fam:
                    continue
                at = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(have.samples)}
                for s in fam.samples:
                    i = at.get((s.name, tuple(sorted(s.labels.items()))))
                    if i is None:
                        have.samples.append(s)
                    else:
                        have.samples[i] = have.samples[i]._replace(value=have.samples[i].value + s.value)
        yield from fams.values()


_MERGED: weakref.WeakKeyDictionary[Any, Merged] = weakref.WeakKeyDictionary()
_MERGED_LOCK = threading.Lock()


def register_merged(registry: Any, collector: Any) -> None:
    """Register `collector` in `registry` through the registry's one `Merged` (made at the first call): for
    collectors that several threads of one process register, each with the same families."""
    with _MERGED_LOCK:
        merged = _MERGED.get(registry)
        if merged is None:
            merged = _MERGED[registry] = Merged()
            registry.register(merged)
    merged.add(collector)
