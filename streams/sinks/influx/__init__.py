"""InfluxDB sink through influxdb-client (v2 write API; see README.md beside this file).

Points: measurement `pp_level`, tags site/level/kind/mode, float fields only, millisecond time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from urllib3.exceptions import HTTPError

from powerplane import topics
from powerplane.schemas import LevelAggregate, Record
from streams.sinks.base import RetryableSinkError, Sink, SinkConfigError, register

MEASUREMENT = "pp_level"


def aggregate_point(a: LevelAggregate) -> Point:
    p = (Point(MEASUREMENT).tag("site", a.site).tag("level", a.level).tag("kind", a.kind).tag("mode", a.mode)
         .field("power_w", float(a.power_w)).field("limit_w", float(a.limit_w)).field("rated_w", float(a.rated_w))
         .field("gpus_expected", float(a.gpus_expected)).field("gpus_reporting", float(a.gpus_reporting))
         .time(round(a.ts_s * 1000), WritePrecision.MS))
    if a.limit_w > 0:
        p = p.field("load_frac", float(a.power_w / a.limit_w))
    for name in ("inlet_c", "metered_w"):
        v = getattr(a, name)
        if v is not None and math.isfinite(v):
            p = p.field(name, float(v))
    return p


@register("influxdb")
class InfluxSink(Sink):
    topics = (topics.AGGREGATES.name,)

    def configure(self, options: Mapping[str, Any]) -> None:
        for key in ("url", "org", "bucket", "token"):
            if not isinstance(options.get(key), str) or not options[key]:
                raise SinkConfigError(f"sink '{self.name}': '{key}' must be a non-empty string")
        if not str(options["url"]).startswith(("http://", "https://")):
            raise SinkConfigError(f"sink '{self.name}': url must start with http:// or https://")
        self.url, self.org, self.bucket, self.token = (str(options[k]) for k in ("url", "org", "bucket", "token"))
        self.timeout_ms = int(options.get("timeout_ms", 10_000))
        self.client: InfluxDBClient | None = None

    def start(self) -> None:
        self.client = InfluxDBClient(url=self.url, token=self.token, org=self.org, timeout=self.timeout_ms)
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def write(self, records: Sequence[Record]) -> int:
        points = [aggregate_point(r) for r in records if isinstance(r, LevelAggregate)]
        if not points:
            return 0
        try:
            self.api.write(bucket=self.bucket, org=self.org, record=points)  # each Point carries its ms precision
        except ApiException as e:
            if e.status in (408, 429, 500, 502, 503, 504):
                raise RetryableSinkError(f"{self.url} answered {e.status}: {e.reason}") from None
            raise
        except (HTTPError, OSError) as e:
            raise RetryableSinkError(f"{self.url} unreachable: {type(e).__name__}") from None
        return len(points)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
