"""InfluxDB sink through influxdb-client (v2 write API; see README.md beside this file).

Points (built in points.py): `pp_level`, `pp_headroom`, `pp_event`, `pp_command`, `pp_ack`; tags are level
ids and other low-cardinality names, numbers are float fields, time is the record's event time in ms.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from urllib3.exceptions import HTTPError

from powerplane import topics
from powerplane.schemas import Command, Record
from streams.sinks.base import RetryableSinkError, Sink, SinkConfigError, seconds
from streams.sinks.influx.points import LEVEL, aggregate_point, points

__all__ = ["MEASUREMENT", "InfluxSink", "aggregate_point", "points"]

MEASUREMENT = LEVEL  # kept for callers of the first release
# Command issue times kept to compute the command->ack latency of acks that follow (bounded: an ack
# whose command fell out, or came before a restart, is stored without a latency).
ISSUED_MAX = 100_000


def retry_after_s(e: ApiException) -> float | None:
    """The server's Retry-After (seconds form) on a 429/503, if it sent one."""
    headers: Any = getattr(e, "headers", None) or {}
    return seconds(headers.get("Retry-After"))


class InfluxSink(Sink):
    kind = "influxdb"

    topics = (topics.AGGREGATES.name, topics.HEADROOM.name, topics.EVENTS.name, topics.COMMANDS.name,
              topics.ACKS.name)

    def configure(self, options: Mapping[str, Any]) -> None:
        for key in ("url", "org", "bucket", "token"):
            if not isinstance(options.get(key), str) or not options[key]:
                raise SinkConfigError(f"sink '{self.name}': '{key}' must be a non-empty string")
        if not str(options["url"]).startswith(("http://", "https://")):
            raise SinkConfigError(f"sink '{self.name}': url must start with http:// or https://")
        self.url, self.org, self.bucket, self.token = (str(options[k]) for k in ("url", "org", "bucket", "token"))
        timeout_ms = options.get("timeout_ms", 10_000)
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms <= 0:
            raise SinkConfigError(f"sink '{self.name}': 'timeout_ms' must be a positive integer")
        self.timeout_ms = timeout_ms
        self.client: InfluxDBClient | None = None
        self.issued_at: OrderedDict[str, float] = OrderedDict()

    def start(self) -> None:
        self.client = InfluxDBClient(url=self.url, token=self.token, org=self.org, timeout=self.timeout_ms)
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def to_points(self, records: Sequence[Record]) -> list[Point]:
        """The points write() sends for these records (no I/O; the dashboards' test writes them too)."""
        for r in records:
            if isinstance(r, Command):
                self.issued_at[r.id] = r.issued_at_s
                if len(self.issued_at) > ISSUED_MAX:
                    self.issued_at.popitem(last=False)
        return points(records, self.issued_at)

    def write(self, records: Sequence[Record]) -> int:
        pts = self.to_points(records)
        if not pts:
            return 0
        try:
            self.api.write(bucket=self.bucket, org=self.org, record=pts)  # each Point carries its ms precision
        except ApiException as e:
            if e.status in (408, 429, 500, 502, 503, 504):
                raise RetryableSinkError(f"{self.url} answered {e.status}: {e.reason}",
                                         retry_after_s=retry_after_s(e)) from None
            raise
        except (HTTPError, OSError) as e:
            raise RetryableSinkError(f"{self.url} unreachable: {type(e).__name__}") from None
        return len(pts)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
