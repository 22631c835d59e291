"""Command signatures: HMAC-SHA256 with a per-site key, named by key id so keys can be rotated
(actuators accept every key in their keyring; controllers sign with the newest)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from powerplane.schemas import Command


class Keyring:
    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError(f"signing key id '{current}' is not in the keyring ({', '.join(keys) or 'empty'})")
        self.keys = dict(keys)
        self.current = current

    def sign(self, cmd: Command) -> Command:
        cmd.key_id = self.current
        cmd.sig = hmac.new(self.keys[self.current], cmd.signing_bytes(), hashlib.sha256).hexdigest()
        return cmd

    def verify(self, cmd: Command) -> str | None:
        """None when the signature is good, else the reason it is refused."""
        if not cmd.sig:
            return "unsigned command"
        key = self.keys.get(cmd.key_id)
        if key is None:
            return f"unknown signing key id '{cmd.key_id}'"
        want = hmac.new(key, cmd.signing_bytes(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, cmd.sig):
            return "bad signature (tampered, or signed with another key)"
        return None


def load_keyring(path: str | Path, current: str, *, create: bool = False) -> Keyring:
    """Read `<key id> <hex key>` lines. With create=True a missing file gets a fresh random key
    (development only: production keys come from the site's secret store)."""
    p = Path(path)
    if not p.exists():
        if not create:
            raise FileNotFoundError(
                f"signing keyring {p} not found: run `powerplane keys init` or set PP_SIGNING_KEY_FILE")
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{current} {secrets.token_hex(32)}\n")
    keys: dict[str, bytes] = {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            keys[parts[0]] = bytes.fromhex(parts[1])
        except (IndexError, ValueError):
            raise ValueError(f"{p}:{n}: expected '<key id> <hex key>'") from None
    return Keyring(keys, current)
