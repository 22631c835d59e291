"""Command signatures: what an actuator accepts and refuses, key rotation, and the key file."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import numpy as np
import pytest

from powerplane.schemas import Command
from powerplane.signing import Keyring, load_keyring

K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def cmd(**over: object) -> Command:
    c = Command(id="c-1", site="lab", target="rack-02", action="power_cap", gpus=np.array([0, 1], np.uint16),
                values=np.array([400, 500], np.float32), params={}, reason="test", issuer="pytest",
                issued_at_s=1000.0, lease_s=30.0)
    for k, v in over.items():
        setattr(c, k, v)
    return c


def test_sign_then_verify() -> None:
    ring = Keyring({"k1": K1}, "k1")
    c = ring.sign(cmd())
    assert c.key_id == "k1" and len(c.sig) == 64
    assert ring.verify(c) is None
    # Survives the wire.
    assert ring.verify(Command.decode(c.encode())) is None


@pytest.mark.parametrize("field,value", [
    ("values", np.array([400, 700], np.float32)),
    ("target", "rack-03"),
    ("gpus", np.array([0, 2], np.uint16)),
    ("lease_s", 3600.0),
])
def test_tampered_command_is_refused(field: str, value: object) -> None:
    ring = Keyring({"k1": K1}, "k1")
    c = ring.sign(cmd())
    setattr(c, field, value)
    reason = ring.verify(c)
    assert reason is not None and "signature" in reason


def test_unknown_key_id_is_refused() -> None:
    c = Keyring({"k9": K1}, "k9").sign(cmd())
    reason = Keyring({"k1": K1}, "k1").verify(c)
    assert reason is not None and "k9" in reason


def test_same_id_other_key_is_refused() -> None:
    c = Keyring({"k1": K2}, "k1").sign(cmd())
    assert Keyring({"k1": K1}, "k1").verify(c) is not None


def test_unsigned_command_is_refused() -> None:
    reason = Keyring({"k1": K1}, "k1").verify(cmd())
    assert reason is not None and "unsigned" in reason


def test_rotation_old_key_still_verifies_new_key_signs() -> None:
    old = Keyring({"k1": K1}, "k1")
    signed_with_k1 = old.sign(cmd())
    rotated = Keyring({"k1": K1, "k2": K2}, "k2")
    assert rotated.verify(signed_with_k1) is None
    fresh = rotated.sign(cmd(id="c-2"))
    assert fresh.key_id == "k2"
    assert rotated.verify(fresh) is None
    # An actuator that has not been given k2 yet refuses, saying which key it lacks.
    reason = old.verify(fresh)
    assert reason is not None and "k2" in reason


def test_current_key_must_be_in_ring() -> None:
    with pytest.raises(ValueError, match="k3"):
        Keyring({"k1": K1}, "k3")


def test_load_keyring_create_makes_private_file_and_reloads_same_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "site.key"
    ring = load_keyring(path, "k1", create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_keyring(path, "k1", create=True)
    assert again.keys == ring.keys and len(ring.keys["k1"]) == 32
    assert again.verify(ring.sign(cmd())) is None


def test_missing_keyring_without_create_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="keys init"):
        load_keyring(tmp_path / "nope.key", "k1")


def test_malformed_key_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "site.key"
    path.write_text(f"# site keys\nk1 {K1.hex()}\n\nk2 not-hex\n")
    with pytest.raises(ValueError) as ei:
        load_keyring(path, "k1")
    assert f"{path}:4" in str(ei.value)


def test_key_line_without_key_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "site.key"
    path.write_text("k1\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:1")):
        load_keyring(path, "k1")
