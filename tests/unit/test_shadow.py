"""Shadow mode without a broker: a shadow's commands are marked and signed with its own key, and an actuator
refuses one wherever it turns up; the shadow role writes nothing an actuator reads; and the live-against-shadow
comparison (powerplane/shadow.py) pairs, classifies and sums decisions as an operator reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actuators.base import load_actuator
from actuators.guard import Guard
from controllers.capping import CapSettings
from controllers.shadow import ShadowController
from ops.cli import build_parser, kafka_role
from powerplane import access, shadow, topics
from powerplane.schemas import Command
from powerplane.shadow import Decision
from powerplane.signing import Keyring
from powerplane.site_file import load_site
from sim.fleet import Fleet

ROOT = Path(__file__).resolve().parents[2]
LIVE_KEYS = Keyring({"k1": b"\x01" * 32}, "k1")
SHADOW_KEYS = Keyring({"shadow": b"\x02" * 32}, "shadow")


def _shadow_command(keys: Keyring) -> tuple[Command, Fleet]:
    site = load_site(ROOT / "examples" / "lab.toml")
    ctl = ShadowController(site, keys, CapSettings(), 30.0)
    cmd = ctl.command(1, np.array([0, 1]), np.array([400.0, 400.0]), "shedding", 1_000.0)
    return cmd, Fleet(site, seed=1)


def _guard(fleet: Fleet) -> Guard:
    return Guard(load_actuator("twin", {"kind": "twin", "safe_limit": "max"}, context=fleet), LIVE_KEYS, "lab")


def test_a_shadow_command_is_marked_signed_with_the_shadow_key_and_keeps_its_mark_on_the_wire() -> None:
    cmd, _ = _shadow_command(SHADOW_KEYS)
    assert cmd.shadow is True and cmd.issuer == "shadow-controller" and cmd.key_id == "shadow"
    assert SHADOW_KEYS.verify(cmd) is None
    back = Command.decode(cmd.encode())
    assert back.shadow is True and SHADOW_KEYS.verify(back) is None
    back.shadow = None  # stripping the mark breaks the signature: it is part of what is signed
    assert SHADOW_KEYS.verify(back) is not None
    live = Command.decode(LIVE_KEYS.sign(Command(
        id="c", site="lab", target="rack-02", action="power_cap", gpus=np.array([0], np.uint16),
        values=np.array([500.0], np.float32), params={}, reason="r", issuer="i", issued_at_s=1.0,
        lease_s=30.0)).encode())
    assert live.shadow is None and LIVE_KEYS.verify(live) is None  # live commands are as before


def test_an_actuator_refuses_a_shadow_command_copied_onto_pp_commands() -> None:
    cmd, fleet = _shadow_command(SHADOW_KEYS)
    before = fleet.limit_w.copy()
    ack = _guard(fleet).handle(cmd, 1_000.5)
    assert ack.status == "rejected" and "shadow command" in ack.reason
    assert np.array_equal(fleet.limit_w, before)


def test_an_actuator_refuses_a_shadow_command_even_signed_with_its_own_key() -> None:
    """The mark alone is enough: a shadow wrongly given the live command key still moves no GPU."""
    cmd, fleet = _shadow_command(LIVE_KEYS)
    assert LIVE_KEYS.verify(cmd) is None
    guard = _guard(fleet)
    before = fleet.limit_w.copy()
    ack = guard.handle(cmd, 1_000.5)
    assert ack.status == "rejected" and "shadow command" in ack.reason and guard.stats.security == 1
    assert np.array_equal(fleet.limit_w, before)


def test_the_shadow_role_reads_the_controllers_inputs_and_writes_only_the_shadow_topic() -> None:
    g = access.ROLES["shadow"]
    assert set(g.write) == {topics.SHADOW.name, topics.DEADLETTER.name}
    assert set(g.read) <= set(access.ROLES["controller"].read) and topics.ACKS.name not in g.read
    assert all(grp.startswith(access.SHADOW_GROUP) for grp in g.groups)
    assert "powerplane-controller" not in g.groups  # never the live controller's group
    assert topics.SHADOW in topics.ALL
    assert not any(topics.SHADOW.name in r.read for name, r in access.ROLES.items() if name == "actuator")
    parser = build_parser()
    assert kafka_role(parser.parse_args(["controller", "--shadow"])) == "shadow"
    assert kafka_role(parser.parse_args(["controller"])) == "controller"
    assert kafka_role(parser.parse_args(["shadow", "compare"])) == "ops"


def _d(t: float, target: str, values: list[float], gpus: list[int] | None = None,
       action: str = "power_cap") -> Decision:
    return Decision(t, target, action, tuple(gpus if gpus is not None else range(len(values))), tuple(values))


def test_comparison_pairs_within_the_slack_and_classifies_each_decision() -> None:
    live = [_d(10.2, "rack-01", [500, 500]), _d(11.1, "rack-02", [400, 400]), _d(12.0, "rack-03", [300]),
            _d(20.0, "rack-01", [600, 600])]
    shad = [_d(10.9, "rack-01", [505, 495]),  # 0.7 s later, within 10 W: agree
            _d(11.6, "rack-02", [350, 400]),  # 50 W apart: differ
            _d(14.0, "rack-03", [300]),  # 2 s later: beyond the slack, so both sides are unpaired
            _d(30.0, "rack-04", [450]), _d(10.5, "rack-01", [500], action="sm_clock_lock")]
    pairs = shadow.compare(live, shad, tolerance=10.0, slack_s=1.0)
    kinds = [(p.kind, p.target, p.action) for p in pairs]
    assert kinds == [("agree", "rack-01", "power_cap"), ("shadow-only", "rack-01", "sm_clock_lock"),
                     ("differ", "rack-02", "power_cap"), ("live-only", "rack-03", "power_cap"),
                     ("shadow-only", "rack-03", "power_cap"), ("live-only", "rack-01", "power_cap"),
                     ("shadow-only", "rack-04", "power_cap")]
    assert pairs[2].max_diff == pytest.approx(50.0)
    # Different GPUs never agree, whatever the values.
    (p,) = shadow.compare([_d(1.0, "r", [500], [0])], [_d(1.0, "r", [500], [1])])
    assert p.kind == "differ" and p.max_diff == float("inf")


def test_comparison_counts_per_action_and_the_watts_each_side_caps() -> None:
    gmax = {"rack-01": np.full(2, 700.0), "rack-02": np.full(2, 700.0)}
    live = [_d(1.0, "rack-01", [500, 500]), _d(5.0, "rack-01", [700, 700])]  # capped, then released
    shad = [_d(1.3, "rack-01", [500, 500]), _d(2.0, "rack-02", [400, 400])]  # agrees, then caps another rack
    rows = shadow.tally(shadow.compare(live, shad), gmax)
    (row,) = rows
    assert row.count == {"agree": 1, "differ": 0, "shadow-only": 1, "live-only": 1}
    assert row.live_capped_w == pytest.approx(400.0) and row.shadow_capped_w == pytest.approx(400.0 + 600.0)
    assert shadow.held_capped_w(live, gmax) == pytest.approx(0.0)  # the live side released in the end
    assert shadow.held_capped_w(shad, gmax) == pytest.approx(400.0 + 600.0)
    assert np.isnan(shadow.held_capped_w(shad, None))
    text = shadow.table(rows, 0.0, 1000.0, "test window")
    assert "power_cap" in text and "shadow 1.0 kW" in text


def test_renewals_are_not_decisions() -> None:
    def cmd(reason: str) -> Command:
        return Command(id=reason, site="lab", target="rack-01", action="power_cap", gpus=np.array([0], np.uint16),
                       values=np.array([500.0], np.float32), params={}, reason=reason, issuer="i",
                       issued_at_s=1.0, lease_s=30.0)
    assert [d.values for d in shadow.decisions([cmd("lease renewal"), cmd("shedding: pdu")])] == [(500.0,)]


def test_every_controller_decides_at_half_past_the_wall_clock_second() -> None:
    """Live and shadow started at different moments still decide in the same instants (compare pairs them)."""
    from controllers.service import first_tick

    for wall in (1_000.2, 1_000.5, 1_000.9, 2_000.0):
        mono = 50.0
        at = first_tick(1.0, wall, mono)
        assert 0.0 <= at - mono < 1.0 and (wall + at - mono) % 1.0 == pytest.approx(0.5)
