"""Every Grafana panel's InfluxQL runs on a real InfluxQL engine (Debian's influxdb 1.6) over the points
the InfluxDB sink itself produces for a realistic stretch of a lab site's life (feed A lost, a breaker
overload, a rack heating up, power caps and their acks): each query returns data, with exactly the
columns the panel shows."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from powerplane.schemas import Ack, Command, Event, Headroom, LevelAggregate, Record
from powerplane.site import KIND_NAMES
from powerplane.site_file import load_site
from streams.sinks.base import load_sink
from streams.sinks.influx import InfluxSink
from tests.integration.conftest import ROOT, free_port
from tests.unit.test_dashboards import DASHBOARDS, queries_of, selected_columns

BINARY = "/usr/bin/influxd"
DB = "powerplane"
SPAN_S = 300
FEED_LOST_AT = 150


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not Path(BINARY).exists():
        pytest.fail(f"{BINARY} missing: apt-get install influxdb (`make test` does: scripts/ensure-debian-packages)")
    d = tmp_path_factory.mktemp("influxdb")
    http = free_port()
    (d / "influxdb.conf").write_text(f"""
reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{http}"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
""")
    log = (d / "influxd.log").open("wb")
    proc = subprocess.Popen([BINARY, "-config", str(d / "influxdb.conf")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.time() + 30
        while not _ping(url):
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail(f"influxd did not start; see {d}/influxd.log")
            time.sleep(0.2)
        _query(url, f"CREATE DATABASE {DB}", post=True)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def _ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=1) as r:
            return bool(r.status == 204)
    except OSError:
        return False


def _query(url: str, q: str, post: bool = False) -> dict[str, Any]:
    params = urllib.parse.urlencode({"db": DB, "q": q, "epoch": "ms"})
    req = urllib.request.Request(f"{url}/query?{params}", method="POST" if post else "GET")
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict(json.loads(r.read()))


def _write(url: str, lines: list[str]) -> None:
    for i in range(0, len(lines), 5000):
        req = urllib.request.Request(f"{url}/write?db={DB}&precision=ms",
                                     data="\n".join(lines[i:i + 5000]).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 204


# ---- a realistic stretch of the lab site ----------------------------------------------------------


def lab_records(t0: float) -> list[Record]:
    """Five minutes of the lab site at 1 s: aggregates and headroom for every level; feed A lost at
    150 s; a breaker overload on a B-side PDU with a deadline; a rack heating up; caps and acks."""
    site = load_site(ROOT / "examples" / "lab.toml")
    rng = np.random.default_rng(7)
    kinds = [KIND_NAMES[k] for k in site.level_kind]
    pdus_b = [site.level_ids[i] for i in site.levels_of_kind("pdu") if site.level_feed[i] == 1]
    hot_rack = site.rack_ids[0]
    util_a = next(site.level_ids[i] for i in site.levels_of_kind("utility") if site.level_feed[i] == 0)
    limits = {mode: site.limits_w(mode) for mode in ("normal", "A-lost")}
    out: list[Record] = []
    for s in range(SPAN_S):
        t = t0 + s
        lost = s >= FEED_LOST_AT
        mode = "A-lost" if lost else "normal"
        for i, (lid, kind) in enumerate(zip(site.level_ids, kinds, strict=True)):
            rated, limit = float(limits[mode][0][i]), float(limits[mode][1][i])
            # Half load in normal mode; a lost feed's levels carry nothing and the other side doubles.
            base = float(limits["normal"][1][i]) * 0.5 * (2.0 if lost and site.level_feed[i] == 1 else 1.0)
            power = 0.0 if limit == 0 else max(0.0, base * (1 + 0.05 * math.sin(s / 20))
                                               + float(rng.normal(0, base * 0.005)))
            thermal = kind in ("rack", "row", "hall", "zone")
            inlet = 24.0 + (6.0 * s / SPAN_S if lid == hot_rack else 0.0) + float(rng.normal(0, 0.1))
            out.append(LevelAggregate(
                site=site.name, level=lid, kind=kind, ts_s=t, window_s=1.0, power_w=power, limit_w=limit,
                rated_w=rated, mode=mode, gpus_expected=64, gpus_reporting=64 if s % 97 else 63,
                inlet_c=inlet if thermal else None,
                metered_w=power * 1.02 if kind == "pdu" else None, gap_w=power * 0.02 if kind == "pdu" else None,
                racks_stale=0 if s % 97 else 1, age_s=0.0 if s % 97 else 2.0,
                gpu_temp_max_c=70.0 + inlet - 24.0 if kind in ("rack", "row", "hall", "site") else None,
                gpus_throttled=(1 if lid == hot_rack and s > 200 else 0) if kind in ("rack", "row", "hall", "site")
                else None))
            p99 = power * 1.08
            out.append(Headroom(
                site=site.name, level=lid, kind=kind, ts_s=t, mode=mode, horizon_s=10.0, power_w=power,
                limit_w=limit, forecast_p50_w=power * 1.01, forecast_p99_w=p99, headroom_w=limit - p99,
                plan_horizon_s=1800.0, plan_p99_w=power * 1.15,
                inlet_c=inlet if kind in ("rack", "zone") else None,
                inlet_limit_c=32.0 if kind in ("rack", "zone") else None,
                forecast_inlet_c=inlet + 0.3 if kind in ("rack", "zone") else None,
                thermal_headroom_c=32.0 - inlet - 0.3 if kind in ("rack", "zone") else None,
                time_to_limit_s=(32.0 - inlet) / (6.0 / SPAN_S) if lid == hot_rack else None))
        out.extend(_events(site.name, t, s, util_a, pdus_b[0], hot_rack))
        out.extend(_commands(site.name, t, s, site.rack_ids[:4]))
    return out


def _events(site: str, t: float, s: int, util: str, pdu: str, rack: str) -> list[Record]:
    out: list[Record] = []
    if FEED_LOST_AT <= s <= 250 and s % 5 == 0:
        state = "resolved" if s == 250 else "open"
        out.append(Event(id="feed-A-1", site=site, kind="feed_loss", severity="critical", state=state,
                         levels=[util], ts_s=t, deadline_s=None if state == "resolved" else
                         (t - s + FEED_LOST_AT) + 10.0, summary="feed A lost: all load on feed B",
                         opened_s=t - s + FEED_LOST_AT, details={"load_frac": 0.0}))
    if s >= FEED_LOST_AT + 1 and s % 2 == 0:
        tt = 120.0 - (s - FEED_LOST_AT)
        out.append(Event(id="brk-1", site=site, kind="breaker_overload", severity="critical", state="open",
                         levels=[pdu], ts_s=t, deadline_s=t + tt, summary=f"{pdu} at 115% of its derated limit",
                         opened_s=t - s + FEED_LOST_AT + 1, details={"load_frac": 1.15, "time_to_trip_s": tt}))
    if s >= 200 and s % 10 == 0:
        out.append(Event(id="therm-1", site=site, kind="thermal_slowdown", severity="warning", state="open",
                         levels=[rack], ts_s=t, deadline_s=None, summary=f"1 GPU in {rack} in thermal slowdown",
                         opened_s=t - s + 200, details={"gpus": 1}))
    return out


def _commands(site: str, t: float, s: int, racks: list[str]) -> list[Record]:
    out: list[Record] = []
    if s < FEED_LOST_AT + 1 or (s - FEED_LOST_AT - 1) % 10:
        return out
    for j, rack in enumerate(racks):
        cid = f"c-{s}-{j}"
        gpus = np.arange(8, dtype=np.uint16)
        vals = np.full(8, 500.0 - 20 * j, dtype=np.float32)
        out.append(Command(id=cid, site=site, target=rack, action="power_cap", gpus=gpus, values=vals, params={},
                           reason="pdu over 80% of derated limit", issuer="capping", issued_at_s=t, lease_s=30.0))
        status = "rejected" if j == 3 and s == FEED_LOST_AT + 1 else "applied"
        out.append(Ack(command_id=cid, site=site, target=rack, status=status, gpus=gpus if status == "applied"
                       else np.zeros(0, np.uint16), applied=vals if status == "applied" else np.zeros(0, np.float32),
                       reason="" if status == "applied" else "signature from unknown key", actuator="twin",
                       ts_s=t + 0.2 + 0.05 * j))
    return out


# ---- the test ---------------------------------------------------------------------------------------


def substitute(q: str, values: dict[str, str], t0_ms: int, t1_ms: int) -> str:
    """What Grafana sends for a panel query: its macros and template variables filled in."""
    q = q.replace("$timeFilter", f"time >= {t0_ms}ms AND time <= {t1_ms}ms").replace("$__interval", "10s")
    for name in sorted(values, key=len, reverse=True):
        q = q.replace(f"${name}", values[name])
    assert not re.search(r"\$\w", q), f"unsubstituted variable in: {q}"
    return q


def test_every_panel_query_returns_its_columns(influx: str) -> None:
    t0 = float(int(time.time()) - SPAN_S - 60)
    sink = load_sink("influxdb", {"kind": "influxdb", "url": "http://unused.invalid", "org": "o", "bucket": DB,
                                  "token": "t"})
    assert isinstance(sink, InfluxSink)
    points = sink.to_points(lab_records(t0))  # the sink's own points, as write() sends them
    _write(influx, [p.to_line_protocol() for p in points])
    t0_ms, t1_ms = int(t0 * 1000), int((t0 + SPAN_S) * 1000)
    site = load_site(ROOT / "examples" / "lab.toml")
    pdu_b = next(site.level_ids[i] for i in site.levels_of_kind("pdu") if site.level_feed[i] == 1)
    zone = site.level_ids[int(site.levels_of_kind("zone")[0])]
    values = {"site": site.name, "kind": "pdu", "level": pdu_b, "zone": zone}

    checked = 0
    problems: list[str] = []
    for name, dash in DASHBOARDS.items():
        for where, raw in queries_of(dash):
            q = substitute(raw, values, t0_ms, t1_ms)
            res = _query(influx, q)["results"][0]
            label = f"{name}: {where}"
            if "error" in res:
                problems.append(f"{label}: {res['error']}\n    {q}")
                continue
            series = res.get("series") or []
            if not series:
                problems.append(f"{label}: no data\n    {q}")
                continue
            if raw.lstrip().upper().startswith("SHOW TAG VALUES"):
                want = ["key", "value"]
                if where.startswith("variable"):
                    var = where.split()[1]
                    got_values = {row[1] for s in series for row in s["values"]}
                    if var in values and values[var] not in got_values:
                        problems.append(f"{label}: {values[var]!r} not among {sorted(got_values)}")
            else:
                want = ["time", *selected_columns(raw)]
            for s in series:
                if s["columns"] != want:
                    problems.append(f"{label}: columns {s['columns']}, expected {want}\n    {q}")
                    break
            for i, col in enumerate(want):
                if all(row[i] is None for s in series for row in s["values"]):
                    problems.append(f"{label}: column {col!r} is empty everywhere\n    {q}")
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 40, f"only {checked} queries checked"
