"""Issue 12, finding 3 end to end, bounded for CI: a quarter of the 100 MW reference site (256 racks, 18,432
GPUs) as processes on the real broker (streams worker, controller, fleet with its actuator), through a streams
worker killed for 20 s and a broker stopped for 20 s at steady load. The long form (the whole 100 MW site,
60 s outages) is `bench/bench_outages.py`; its figures are in docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_worker_and_broker_outages_on_a_site_cause_no_brake_no_cap_and_lose_no_window(tmp_path: Path) -> None:
    out = tmp_path / "outages.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_outages.py"), "--halls", "1", "--baseline", "15",
                           "--down", "20", "--after", "20", "--drain", "150", "--json", str(out),
                           "--logs", str(tmp_path / "logs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    phases = {p["name"]: p for p in r["phases"]}
    assert set(phases) == {"baseline", "worker down", "worker recovery", "broker down", "broker recovery"}
    # No power brake and no cap change at all: the load is steady and under every threshold throughout.
    assert [(n, p["brakes"], p["commands"]) for n, p in phases.items() if p["brakes"] or p["commands"]] == []
    # The controller noticed its inputs going stale and held, rather than deciding on them.
    assert phases["worker down"]["held_s"] > 0 and phases["broker down"]["held_s"] > 0
    # Racks whose frames only waited in a backlog or a spool are not paged as silent, and no window is lost.
    opened = {n: p["events_opened"].get("telemetry_loss", 0) for n, p in phases.items()}
    assert sum(opened.values()) == 0, (opened, _story(tmp_path / "logs" / "streams.log"))
    assert r["drained_after_s"] is not None, "the worker did not work off the backlog within 150 s"
    assert r["site_windows_missing"] == 0, r["missing_first"]
    assert r["as_expected"], proc.stdout[-2000:]


# The restarted worker's lines that say why racks were paged silent: its resume, the site stage's backlog
# state each time telemetry_loss opened, broker outages, and its counters.
_STORY = ("resumed", "assigned", "telemetry_loss opened", "reachable again", "not committed", "frames=")


def _story(log: Path, per_kind: int = 3) -> str:
    """A short account from the worker's log for the failure message: the lines above (a few of each kind,
    the first ones), the first few telemetry_loss events and how many there were, and its last lines."""
    if not log.exists():
        return f"(no {log.name})"
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()]
    keep: list[str] = []
    for kind in _STORY:
        keep += [ln for ln in lines if kind in ln][:per_kind]
    events = [ln for ln in lines if "event open" in ln and "telemetry_loss" in ln]
    keep += [*events[:per_kind], f"({len(events)} telemetry_loss opened in all)"]
    return "\n".join(keep) + "\n--- last lines ---\n" + _tail(log, 10)


def _tail(log: Path, lines: int = 40) -> str:
    """The worker's last lines (without the client's connection noise), for a failure message."""
    if not log.exists():
        return f"(no {log.name})"
    keep = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip() and "onnect" not in ln]
    return "\n".join(keep[-lines:])
