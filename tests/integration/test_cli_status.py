"""`powerplane status -o json` on the 100 MW reference site (3,367 levels) through a real broker: the summary
a script gets is right (every level's newest window, modes, the most loaded levels, open events grouped by
kind) and `--level` drills into one PDU. The time it takes is in docs/performance.md, not asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.cli import main
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import Producer, create_topics
from powerplane.refsite import reference_site_dict, to_toml
from powerplane.schemas import Event, LevelAggregate, decode_any
from powerplane.site_file import load_site
from sim.fleet import Fleet
from tests.dashboard_synth import tree_records

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
N_TELEMETRY_LOSS = 1000


def _event(site: str, eid: str, kind: str, severity: str, level: str, t_s: float, state: str = "open") -> bytes:
    return Event(id=eid, site=site, kind=kind, severity=severity, state=state, levels=[level], ts_s=t_s,
                 deadline_s=t_s + 30.0 if severity == "critical" else None, summary=f"{kind} at {level}",
                 opened_s=t_s).encode()


def test_status_json_on_the_100mw_site(cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    d = reference_site_dict()
    d["name"] = f"ref-status-{int(time.time())}"  # the session's broker is shared: only this site's records count
    path = tmp_path / "refsite.toml"
    path.write_text(to_toml(d))
    site = load_site(path)
    create_topics(cfg.kafka_bootstrap)
    t0 = float(int(time.time()))
    fleet = Fleet(site, seed=3, epoch_s=t0, load_scale=0.8)
    prod = Producer(cfg.kafka_bootstrap, "test-status")
    last: list[tuple[str, bytes, bytes, int]] = []
    for k, mode in enumerate(["normal", "normal", "A-lost"]):  # three windows; the newest is in A-lost
        last = tree_records(site, fleet, t0 + k, mode=mode)
        for topic, key, value, _ts in last:
            prod.send(topic, value, key=key)
    racks = [lid for lid in site.level_ids if lid.startswith("rack-")]
    prod.send(topics.EVENTS.name, _event(site.name, "feed-A", "feed_loss", "critical", "utility-a", t0 + 2), b"feed-A")
    for i, rack in enumerate(racks[:N_TELEMETRY_LOSS + 10]):
        eid = f"tl-{rack}".encode()
        prod.send(topics.EVENTS.name, _event(site.name, eid.decode(), "telemetry_loss", "warning", rack, t0 + 1), eid)
        if i >= N_TELEMETRY_LOSS:  # ten of them resolved since
            prod.send(topics.EVENTS.name, _event(site.name, eid.decode(), "telemetry_loss", "warning", rack, t0 + 2,
                                                 state="resolved"), eid)
    prod.flush()
    prod.close()

    newest = {r.level: r for r in (decode_any(v) for t, _k, v, _ts in last if t == topics.AGGREGATES.name)}
    assert all(isinstance(r, LevelAggregate) for r in newest.values())
    frac = {lid: r.power_w / r.limit_w for lid, r in newest.items() if r.limit_w}  # type: ignore[union-attr]
    worst = sorted(frac, key=lambda lid: -frac[lid])[:5]

    monkeypatch.setenv("PP_SITE_FILE", str(path))
    t_start = time.monotonic()
    assert main(["status", "-o", "json", "--worst", "5"]) == 0
    elapsed_s = time.monotonic() - t_start
    s = json.loads(capsys.readouterr().out)  # stdout is the JSON document and nothing else
    assert s["site"] == site.name
    assert s["levels_expected"] == len(site.level_ids) == 3367
    assert s["levels_reporting"] == 3367 and s["levels_missing"] == 0
    assert s["levels_by_mode"] == {"A-lost": 3367}  # the newest window of every level, none older
    assert s["newest_window_ts_s"] == t0 + 2
    assert [r["level"] for r in s["worst_levels"]] == worst
    assert s["worst_levels"][0]["load_frac"] == pytest.approx(frac[worst[0]], abs=1e-4)
    site_row = next(r for r in s["top_levels"] if r["kind"] == "site")
    assert site_row["power_w"] == pytest.approx(newest[site_row["level"]].power_w, abs=0.1)  # type: ignore[union-attr]
    assert {r["kind"] for r in s["top_levels"]} == {"site", "utility", "hall"}
    groups = {g["kind"]: g for g in s["open_events_by_kind"]}
    assert s["open_events"] == N_TELEMETRY_LOSS + 1
    assert groups["feed_loss"]["count"] == 1 and groups["telemetry_loss"]["count"] == N_TELEMETRY_LOSS
    assert s["open_events_by_kind"][0]["kind"] == "feed_loss"  # critical first, above the telemetry noise

    pdu = next(lid for lid in site.level_ids if lid.startswith("pdu-"))
    assert main(["status", "--level", pdu, "-o", "json"]) == 0
    dd = json.loads(capsys.readouterr().out)
    assert dd["level"]["level"] == pdu and dd["level"]["mode"] == "A-lost"
    assert sorted(c["level"] for c in dd["children"]) == sorted(site.children(pdu))
    assert all(c["reporting"] and c["kind"] == "rack" for c in dd["children"])
    # As a script runs it, a process of its own: stdout is exactly the JSON document, progress goes elsewhere.
    t_start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ops", "status", "-o", "json", "--worst", "5"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    process_s = time.monotonic() - t_start
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["levels_by_mode"] == {"A-lost": 3367}
    # The table form says the same in a screenful, not one line per level.
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") < 40 and "feed_loss" in out and f"{N_TELEMETRY_LOSS} telemetry_loss" in out
    n = sum(s["records_read"].values())
    print(f"status -o json on the 100 MW site: {elapsed_s:.2f} s in-process, {process_s:.2f} s as a process, "
          f"{n} records read")
