"""InfluxDB sink through influxdb-client (v2 write API; see README.md beside this file).

Points (built in points.py): `pp_level`, `pp_headroom`, `pp_event`, `pp_command`, `pp_ack`; tags are level
ids and other low-cardinality names, numbers are float fields, time is the record's event time in ms.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from pydantic import Field
from urllib3.exceptions import HTTPError

from powerplane import topics
from powerplane.schemas import Command, Record
from streams.sinks.base import HttpUrl, NonEmpty, RetryableSinkError, Sink, SinkOptions, seconds
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


class Options(SinkOptions):
    """A [sinks.NAME] table of kind "influxdb" (README.md beside this file)."""

    url: HttpUrl
    org: NonEmpty
    bucket: NonEmpty
    token: NonEmpty
    timeout_ms: int = Field(10_000, gt=0)  # HTTP timeout per write


class InfluxSink(Sink):
    kind = "influxdb"
    options_model = Options

    topics = (topics.AGGREGATES.name, topics.HEADROOM.name, topics.EVENTS.name, topics.COMMANDS.name,
              topics.ACKS.name)

    def configure(self, opts: Options) -> None:
        self.url, self.org, self.bucket, self.token = opts.url, opts.org, opts.bucket, opts.token
        self.timeout_ms = opts.timeout_ms
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
