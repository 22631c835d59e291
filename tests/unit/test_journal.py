"""The actuator's durable replay window (actuators.journal): what a restarted guard still knows.

Each test runs a guard, "restarts" it (a new Guard over the same journal file and a fresh actuator), and
checks what a replayed, older or missed command does to the GPUs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from actuators.base import load_actuator
from actuators.guard import Guard
from actuators.journal import Journal
from powerplane.schemas import Command
from powerplane.signing import Keyring
from powerplane.site import Site
from powerplane.site_file import load_site
from sim.fleet import Fleet

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"
RING = Keyring({"k1": b"\x01" * 32}, "k1")
T0 = 1_000.0
_ids = itertools.count()


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(LAB)


def start(site: Site, path: Path, remember: int = 100_000) -> tuple[Guard, Fleet]:
    """A fresh process: a new fleet (limits at max) and a guard over the journal file."""
    fleet = Fleet(site, seed=1)
    act = load_actuator("twin", {"kind": "twin", "safe_limit": "max"}, context=fleet)
    return Guard(act, RING, "lab", remember=remember, journal=Journal(path, remember=remember)), fleet


def cap(values: float, *, issued_at_s: float = T0, rack: str = "rack-02", lease_s: float = 30.0) -> Command:
    return RING.sign(Command(id=f"c-{next(_ids)}", site="lab", target=rack, action="power_cap",
                             gpus=np.array([0, 1], np.uint16), values=np.array([values, values], np.float32),
                             params={}, reason="test", issuer="pytest", issued_at_s=issued_at_s, lease_s=lease_s))


def limit(fleet: Fleet, rack: str = "rack-02") -> float:
    r = fleet.site.rack_index(rack)
    return float(fleet.limit_w[int(fleet.site.rack_gpu_start[r])])


def test_a_replay_after_restart_is_a_duplicate_and_changes_nothing(site: Site, tmp_path: Path) -> None:
    g, _ = start(site, tmp_path / "j.sqlite")
    captured = cap(450.0)
    assert g.handle(captured, T0 + 1).status == "applied"
    g.sync()
    g.journal.close()  # type: ignore[union-attr]
    g2, fleet2 = start(site, tmp_path / "j.sqlite")
    before = limit(fleet2)
    ack = g2.handle(captured, T0 + 2)
    assert ack.status == "duplicate" and "already handled: applied" in ack.reason
    assert np.allclose(ack.applied, 450.0)  # the duplicate says what the first one applied
    assert limit(fleet2) == before != 450.0  # the replay did not touch the GPUs


def test_order_survives_restart_older_command_refused(site: Site, tmp_path: Path) -> None:
    g, _ = start(site, tmp_path / "j.sqlite")
    old, new = cap(400.0, issued_at_s=T0), cap(500.0, issued_at_s=T0 + 5)
    assert g.handle(new, T0 + 6).status == "applied"
    g.sync()
    g2, fleet2 = start(site, tmp_path / "j.sqlite")
    ack = g2.handle(old, T0 + 7)  # never seen, but older than what the rack last applied
    assert ack.status == "rejected" and "older" in ack.reason and limit(fleet2) != 400.0


def test_crash_between_apply_and_journal_commit_reapplies_once(site: Site, tmp_path: Path) -> None:
    """No sync (the process died before its acks went out): the command is forgotten, Kafka redelivers it,
    and it is applied (the same setpoint) and acknowledged; it does not vanish as a 'duplicate' of
    something no ack ever reported."""
    g, _ = start(site, tmp_path / "j.sqlite")
    c = cap(450.0)
    assert g.handle(c, T0 + 1).status == "applied"
    g.journal._db.close()  # type: ignore[union-attr]  # died here: no sync; the open transaction is lost
    g2, fleet2 = start(site, tmp_path / "j.sqlite")
    assert g2.handle(c, T0 + 2).status == "applied" and limit(fleet2) == 450.0
    g2.sync()
    g3, _ = start(site, tmp_path / "j.sqlite")
    assert g3.handle(c, T0 + 3).status == "duplicate"


def test_leases_survive_restart_and_lapse_to_safe(site: Site, tmp_path: Path) -> None:
    g, _ = start(site, tmp_path / "j.sqlite")
    assert g.handle(cap(450.0, lease_s=30.0), T0 + 1).status == "applied"
    g.sync()
    g2, fleet2 = start(site, tmp_path / "j.sqlite")
    fleet2.set_limit(np.array([int(site.rack_gpu_start[site.rack_index("rack-02")])]), np.array([450.0]))
    assert g2.expire(T0 + 10) == []  # still leased
    reverted = g2.expire(T0 + 40)
    assert [a.status for a in reverted] == ["reverted"] and limit(fleet2) == float(site.gpu_max_w[0])
    g2.sync()
    g3, _ = start(site, tmp_path / "j.sqlite")
    assert g3.expire(T0 + 50) == []  # the revert is remembered: not reverted again after another restart


def test_window_is_bounded_and_keeps_the_newest(site: Site, tmp_path: Path) -> None:
    g, _ = start(site, tmp_path / "j.sqlite", remember=50)
    cmds = [cap(400.0 + i, issued_at_s=T0 + i, rack=f"rack-0{1 + i % 4}") for i in range(200)]
    for i, c in enumerate(cmds):
        g.handle(c, T0 + i + 0.5)
        g.sync()
    assert len(g.seen) == 50
    rows = g.journal._db.execute("SELECT COUNT(*) FROM handled").fetchone()[0]  # type: ignore[union-attr]
    assert 50 <= rows <= 51, rows
    g2, _ = start(site, tmp_path / "j.sqlite", remember=50)
    assert list(g2.seen) == [c.id for c in cmds[-50:]]
    assert g2.handle(cmds[-1], T0 + 300).status == "duplicate"


def test_refusals_for_signature_are_not_remembered(site: Site, tmp_path: Path) -> None:
    """A forged command must not poison the window: the genuine one with the same id still applies."""
    g, _ = start(site, tmp_path / "j.sqlite")
    good = cap(450.0)
    forged = cap(250.0)
    forged.id = good.id  # same id, signed over other values, then relabelled: bad signature
    assert g.handle(forged, T0 + 1).status == "rejected"
    g.sync()
    g2, fleet2 = start(site, tmp_path / "j.sqlite")
    assert g2.handle(good, T0 + 2).status == "applied" and limit(fleet2) == 450.0
