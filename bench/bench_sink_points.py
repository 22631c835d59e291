"""InfluxDB sink point building: records -> line protocol, the CPU part of the sink's write.

Builds one second of the 100 MW reference site's sink input (one LevelAggregate and one Headroom per
level, with every optional field present) and times `InfluxSink.to_points` plus `to_line_protocol`, the
work done per batch before the HTTP write. Reports records/s and the share of one core the reference
site needs at 1 Hz. Median over --repeat rounds, garbage collector off inside timed regions.

    .venv/bin/python bench/bench_sink_points.py [--halls 4] [--rows 16] [--racks 16] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from powerplane.refsite import RefSiteParams, reference_site
from powerplane.schemas import Headroom, LevelAggregate, Record
from powerplane.site import KIND_NAMES
from streams.sinks.base import load_sink
from streams.sinks.influx import InfluxSink


def one_second(halls: int, rows: int, racks: int) -> list[Record]:
    site = reference_site(RefSiteParams(halls=halls, rows_per_hall=rows, racks_per_row=racks))
    out: list[Record] = []
    for i, lid in enumerate(site.level_ids):
        kind = KIND_NAMES[site.level_kind[i]]
        limit = float(site.level_rated_w[i]) * 0.8 or 1.0
        out.append(LevelAggregate(site=site.name, level=lid, kind=kind, ts_s=1.7e9, window_s=1.0, power_w=limit * 0.6,
                                  limit_w=limit, rated_w=limit / 0.8, mode="normal", gpus_expected=72,
                                  gpus_reporting=72, inlet_c=25.0, metered_w=limit * 0.61, gap_w=limit * 0.01,
                                  racks_stale=0, age_s=0.0, gpu_temp_max_c=75.0, gpus_throttled=0))
        out.append(Headroom(site=site.name, level=lid, kind=kind, ts_s=1.7e9, mode="normal", horizon_s=10.0,
                            power_w=limit * 0.6, limit_w=limit, forecast_p50_w=limit * 0.61,
                            forecast_p99_w=limit * 0.66, headroom_w=limit * 0.34, plan_horizon_s=1800.0,
                            plan_p99_w=limit * 0.7, inlet_c=25.0, inlet_limit_c=32.0, forecast_inlet_c=25.3,
                            thermal_headroom_c=6.7, time_to_limit_s=None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--halls", type=int, default=4)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--racks", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    records = one_second(args.halls, args.rows, args.racks)
    sink = load_sink("bench", {"kind": "influxdb", "url": "http://unused.invalid", "org": "o", "bucket": "b",
                               "token": "t"})
    assert isinstance(sink, InfluxSink)
    times = []
    for _ in range(args.repeat + 1):
        gc.disable()
        t = time.perf_counter()
        lines = [p.to_line_protocol() for p in sink.to_points(records)]
        times.append(time.perf_counter() - t)
        gc.enable()
    med = statistics.median(times[1:])  # the first round warms up
    print(f"records per second of site: {len(records)} ({len(records) // 2} levels x aggregate + headroom)")
    print(f"line protocol bytes: {sum(map(len, lines)) / len(lines):.0f} per point")
    print(f"to_points + to_line_protocol: median {med * 1e3:.1f} ms, min {min(times[1:]) * 1e3:.1f} ms "
          f"-> {len(records) / med:,.0f} records/s; {med * 100:.0f}% of one core at 1 Hz")


if __name__ == "__main__":
    main()
