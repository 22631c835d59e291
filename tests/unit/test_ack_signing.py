"""Acks are signed by the actuator: what a reader (controller, sink) believes and what it refuses, key
rotation, and that the controller counts only acks an actuator signed for commands it issued."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import msgpack
import numpy as np
import pytest

from controllers.controller import ControllerStats
from controllers.service import take_ack
from powerplane.schemas import Ack, Event
from powerplane.signing import Keyring, ack_key_path, ack_refused_event, load_keyring

A1 = bytes(range(32))
A2 = bytes(range(64, 96))
K1 = bytes(range(32, 64))  # a command key: never valid for an ack


def ack(**over: object) -> Ack:
    a = Ack(command_id="c-1", site="lab", target="rack-03", status="applied", gpus=np.array([0, 1], np.uint16),
            applied=np.array([450, 450], np.float32), reason="", actuator="twin", ts_s=1000.0)
    for k, v in over.items():
        setattr(a, k, v)
    return a


def test_signed_ack_verifies_after_the_wire() -> None:
    ring = Keyring({"a1": A1}, "a1")
    a = ring.sign(ack())
    assert a.key_id == "a1" and len(a.sig) == 64
    assert ring.verify(Ack.decode(a.encode())) is None


@pytest.mark.parametrize("field,value", [
    ("status", "rejected"), ("command_id", "c-2"), ("applied", np.array([250, 250], np.float32)),
    ("target", "rack-04"), ("key_id", "a2"),
])
def test_tampered_ack_is_refused(field: str, value: object) -> None:
    ring = Keyring({"a1": A1, "a2": A2}, "a1")
    a = ring.sign(ack())
    setattr(a, field, value)
    reason = ring.verify(Ack.decode(a.encode()))
    assert reason is not None and "signature" in reason


def test_unsigned_ack_decodes_and_is_refused_as_unsigned() -> None:
    wire = ack().to_wire()
    del wire["key_id"], wire["sig"]  # an ack from a writer that does not sign at all
    a = Ack.decode(msgpack.packb(wire, use_bin_type=True))
    assert a.sig == "" and a.key_id == ""
    assert Keyring({"a1": A1}, "a1").verify(a) == "unsigned ack"


def test_an_ack_signed_with_the_command_key_is_refused() -> None:
    forged = Keyring({"k1": K1}, "k1").sign(ack())
    reason = Keyring({"a1": A1}, "a1").verify(forged)
    assert reason is not None and "k1" in reason


def test_rotation_readers_accept_old_and_new_ack_keys() -> None:
    old = Keyring({"a1": A1}, "a1").sign(ack())
    rotated = Keyring({"a1": A1, "a2": A2}, "a2")
    new = rotated.sign(ack(command_id="c-2"))
    assert new.key_id == "a2"
    assert rotated.verify(old) is None and rotated.verify(new) is None


def test_ack_keyring_lives_beside_the_command_keyring_unless_configured() -> None:
    assert ack_key_path("/s/keys/site.key").as_posix() == "/s/keys/acks.key"
    assert ack_key_path("/s/keys/site.key", "/vault/acks").as_posix() == "/vault/acks"


def test_keyrings_created_concurrently_share_one_key(tmp_path: Path) -> None:
    # fleet, controller and sink start together and each creates the dev keyring if it is missing
    p = tmp_path / "keys" / "acks.key"
    go = threading.Barrier(8)
    rings: list[Keyring] = []

    def create() -> None:
        go.wait()
        rings.append(load_keyring(p, "a1", create=True))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(rings) == 8 and all(r.keys == rings[0].keys for r in rings)
    assert not [f for f in p.parent.iterdir() if f.name != "acks.key"]  # no temporary files left


def test_refusal_event_names_command_and_reason() -> None:
    ev = ack_refused_event(ack(command_id="never-issued"), "unsigned ack", "sink", now_s=5.0)
    ev = Event.decode(ev.encode())
    assert ev.kind == "ack_refused" and ev.levels == ["rack-03"] and "never-issued" in ev.summary
    assert "unsigned ack" in ev.summary and ev.details and ev.details["component"] == "sink"


def test_controller_counts_only_signed_acks_for_its_own_commands() -> None:
    ring = Keyring({"a1": A1}, "a1")
    stats = ControllerStats()
    issued: OrderedDict[str, None] = OrderedDict({"c-1": None})
    sent_at = {"c-1": 100.0}
    # A forged 'applied' for a command that was issued: refused, nothing counted, latency untouched.
    assert take_ack(stats, ring, issued, sent_at, ack(), 100.5) == "unsigned ack"
    forged = Keyring({"a1": K1}, "a1").sign(ack())
    assert "bad signature" in (take_ack(stats, ring, issued, sent_at, forged, 100.5) or "")
    assert stats.acks == {} and not stats.latencies_s and stats.acks_refused == 2
    # A validly signed ack for a command never issued here: not an outcome.
    assert take_ack(stats, ring, issued, sent_at, ring.sign(ack(command_id="ghost")), 100.5) is None
    assert stats.acks == {} and stats.acks_unknown == 1
    # The real one counts once, with its latency; a lease-expiry revert counts too.
    assert take_ack(stats, ring, issued, sent_at, ring.sign(ack()), 100.5) is None
    rev = ring.sign(ack(command_id="lease-expiry:c-1", status="reverted"))
    assert take_ack(stats, ring, issued, sent_at, rev, 131.0) is None
    assert stats.acks == {"applied": 1, "reverted": 1} and list(stats.latencies_s) == [0.5]
