"""Signatures: HMAC-SHA256 with a per-site key, named by key id so keys can be rotated (verifiers accept
every key in their keyring; signers sign with the current one).

Two keyrings, one per direction: controllers sign commands with the command keyring (`signing_key_file`),
actuators sign acknowledgements with the ack keyring (`ack_key_file`). With HMAC whoever verifies can also
sign, so the split is what limits a leak: the sink, which verifies acks and talks to an outside store,
holds only the ack key and so cannot forge a command; a leaked ack key can fake an actuator's word, never
move a GPU."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

from powerplane.schemas import Ack, Event


class Signable(Protocol):
    SCHEMA: ClassVar[str]
    key_id: str
    sig: str

    def signing_bytes(self) -> bytes: ...


S = TypeVar("S", bound=Signable)


class Keyring:
    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError(f"signing key id '{current}' is not in the keyring ({', '.join(keys) or 'empty'})")
        self.keys = dict(keys)
        self.current = current

    def sign(self, rec: S) -> S:
        rec.key_id = self.current
        rec.sig = hmac.new(self.keys[self.current], rec.signing_bytes(), hashlib.sha256).hexdigest()
        return rec

    def verify(self, rec: Signable) -> str | None:
        """None when the signature is good, else the reason it is refused."""
        if not rec.sig:
            return f"unsigned {rec.SCHEMA}"
        key = self.keys.get(rec.key_id)
        if key is None:
            return f"unknown signing key id '{rec.key_id}'"
        want = hmac.new(key, rec.signing_bytes(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, rec.sig):
            return "bad signature (tampered, or signed with another key)"
        return None


def ack_key_path(signing_key_file: str | Path, ack_key_file: str = "") -> Path:
    """The ack keyring's file: `ack_key_file`, or by default `acks.key` beside the command keyring (so a
    development setup, and each test session's state directory, gets both without configuring anything)."""
    return Path(ack_key_file) if ack_key_file else Path(signing_key_file).with_name("acks.key")


def grid_key_path(signing_key_file: str | Path, grid_key_file: str = "") -> Path:
    """The grid keyring's file (demand-response requests, pp.grid): `grid_key_file`, or `grid.key` beside the
    command keyring. A third key: the utility's gateway holds it and neither command nor ack key, so a leaked
    gateway can ask for a reduction (which the controller checks, paces and answers) but never move a GPU."""
    return Path(grid_key_file) if grid_key_file else Path(signing_key_file).with_name("grid.key")


def scheduler_key_path(signing_key_file: str | Path, scheduler_key_file: str = "") -> Path:
    """The scheduler keyring's file (job-start notices, pp.jobs): `scheduler_key_file`, or `scheduler.key` beside
    the command keyring. A fourth key: the scheduler's prolog holds it and no other, so a leaked prolog host can
    announce a job (its floors stay under the caps and end 10 s past the start) but never move a cap."""
    return Path(scheduler_key_file) if scheduler_key_file else Path(signing_key_file).with_name("scheduler.key")


# A controller in shadow mode signs with a key of its own (`shadow.key` beside the command keyring, key id
# "shadow"), never with the command key: no actuator holds it, so a shadow record copied onto pp.commands fails
# the signature check as well as the shadow mark (actuators.guard). It proves only which shadow wrote a record.
SHADOW_KEY_ID = "shadow"


def shadow_key_path(signing_key_file: str | Path) -> Path:
    return Path(signing_key_file).with_name("shadow.key")


def load_keyring(path: str | Path, current: str, *, create: bool = False) -> Keyring:
    """Read `<key id> <hex key>` lines. With create=True a missing file gets a fresh random key
    (development only: production keys come from the site's secret store)."""
    p = Path(path)
    if not p.exists():
        if not create:
            raise FileNotFoundError(
                f"signing keyring {p} not found: run `powerplane keys init` or set PP_SIGNING_KEY_FILE")
        _create(p, current)
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


def _create(p: Path, current: str) -> None:
    """Write a fresh key to a temporary file and link it into place: processes starting together (fleet,
    controller, sink) all end up with the one key, and none reads a half-written file."""
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{current} {secrets.token_hex(32)}\n")
        try:
            os.link(tmp, p)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)


def ack_refused_event(ack: Ack, reason: str, component: str, now_s: float | None = None) -> Event:
    """The security event for an acknowledgement that is not believed (unsigned, tampered, unknown key):
    someone other than an actuator may be writing to pp.acks."""
    return Event(id=f"security-ack-{secrets.token_hex(8)}", site=ack.site, kind="ack_refused", severity="warning",
                 state="open", levels=[ack.target] if ack.target else [], ts_s=time.time() if now_s is None else now_s,
                 deadline_s=None, summary=f"{component} refused ack '{ack.status}' for command {ack.command_id} "
                                         f"claiming actuator '{ack.actuator}': {reason}",
                 details={"command_id": ack.command_id, "reason": reason, "component": component})
