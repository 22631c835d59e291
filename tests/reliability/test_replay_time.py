"""Issue 12, finding 1 in replay ("what would this policy have done"): a future-dated frame first in a recording
must not blind the in-process engine. Replay checks each frame against when it was received (the record's
broker timestamp), as the live worker checks against its wall clock; before, the first frame set the event-time
clock, and one frame dated an hour ahead made the engine decide nothing for that hour (0 commands through a feed
loss that capped 8 racks without it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from controllers.capping import CapSettings
from ops.engine import Engine, EngineResult
from powerplane import topics
from powerplane.schemas import TelemetryFrame
from powerplane.signing import Keyring
from powerplane.site_file import load_site
from sim.fleet import Fleet, rack_frames

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "examples" / "lab.toml")
KEYS = Keyring({"k1": b"f" * 32}, "k1")
EPOCH = 1_790_000_000.0


def _recording(future_first: bool) -> list[tuple[str, bytes | None, bytes | None, int, list[tuple[str, bytes | None]]]]:
    """(topic, key, value, timestamp_ms, headers) as `powerplane record` stores them: 120 s of the lab fleet,
    feed A lost at 40 s; each record stamped 0.2 s after its frame's time (when the broker got it)."""
    fleet = Fleet(SITE, seed=11, epoch_s=EPOCH)
    out = []
    for k in range(1, 121):
        if k == 40:
            fleet.lose_feed("A")
        frames: list[TelemetryFrame] = rack_frames(SITE, fleet.step(1.0), EPOCH + k, 1.0, k, "sim")
        if k == 1 and future_first:  # forged: rack-03, dated an hour ahead, received now
            f = frames[2]
            out.append((topics.TELEMETRY.name, None, dataclasses.replace(f, ts_s=f.ts_s + 3600.0, seq=0).encode(),
                        int((f.ts_s + 0.2) * 1000), []))
        out += [(topics.TELEMETRY.name, None, f.encode(), int((f.ts_s + 0.2) * 1000), []) for f in frames]
    return out


def _replay(future_first: bool) -> EngineResult:
    return Engine(SITE, KEYS, CapSettings(), 30.0).run(_recording(future_first))


def test_a_future_dated_first_frame_in_a_recording_is_refused_and_changes_no_decision() -> None:
    clean, forged = _replay(False), _replay(True)
    capped = {c.target for c in clean.commands if c.action == "power_cap"}
    assert len(capped) == 8, f"the feed loss should cap every rack of the lab site; capped {sorted(capped)}"
    reasons = list(forged.dead_letters)
    assert len(reasons) == 1 and "rack-03" in reasons[0] and "ahead of the receiver's clock" in reasons[0], reasons
    assert forged.frames == clean.frames  # every genuine frame taken, the forged one only refused
    key = [(c.issued_at_s, c.target, c.action, c.reason, tuple(c.values.tolist())) for c in clean.commands]
    assert [(c.issued_at_s, c.target, c.action, c.reason, tuple(c.values.tolist())) for c in forged.commands] == key
