"""SNMPv3 (USM) for the SNMP collector: protocol names, keys read from a file or an environment variable
(never written in the config), and one readable line for each way a v3 exchange fails.

The messages go through pysnmp (client.py, `codec = "pysnmp"`): USM authentication, key localization and
AES/DES encryption are pysnmp's (with the `cryptography` package for the ciphers); the collector's own BER
codec stays v1/v2c (README.md beside this file, "SNMPv3").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pysnmp.entity import config as pysnmp_config
from pysnmp.proto import errind

AUTH_PROTOCOLS: dict[str, Any] = {
    "MD5": pysnmp_config.USM_AUTH_HMAC96_MD5,
    "SHA": pysnmp_config.USM_AUTH_HMAC96_SHA,
    "SHA-224": pysnmp_config.USM_AUTH_HMAC128_SHA224,
    "SHA-256": pysnmp_config.USM_AUTH_HMAC192_SHA256,
    "SHA-384": pysnmp_config.USM_AUTH_HMAC256_SHA384,
    "SHA-512": pysnmp_config.USM_AUTH_HMAC384_SHA512,
}
PRIV_PROTOCOLS: dict[str, Any] = {
    "AES-128": pysnmp_config.USM_PRIV_CFB128_AES,
    "AES-192": pysnmp_config.USM_PRIV_CFB192_AES,
    "AES-256": pysnmp_config.USM_PRIV_CFB256_AES,
    "AES-192-BLUMENTHAL": pysnmp_config.USM_PRIV_CFB192_AES_BLUMENTHAL,
    "AES-256-BLUMENTHAL": pysnmp_config.USM_PRIV_CFB256_AES_BLUMENTHAL,
    "DES": pysnmp_config.USM_PRIV_CBC56_DES,
    "3DES": pysnmp_config.USM_PRIV_CBC168_3DES,
}
MIN_KEY_CHARS = 8  # RFC 3414 (section 11.2): a passphrase of fewer than 8 octets is refused


@dataclass(frozen=True)
class Credentials:
    """One USM user with its keys. Never logged: repr shows the user and protocols only."""

    user: str
    auth_protocol: str
    auth_key: str
    priv_protocol: str
    priv_key: str
    context: str = ""

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, auth={self.auth_protocol}, priv={self.priv_protocol})"

    def pysnmp_user(self) -> Any:
        from pysnmp.hlapi.v3arch.asyncio.auth import UsmUserData

        return UsmUserData(self.user, authKey=self.auth_key, privKey=self.priv_key,
                           authProtocol=AUTH_PROTOCOLS[self.auth_protocol],
                           privProtocol=PRIV_PROTOCOLS[self.priv_protocol])


def read_secret(file: str | None, env: str | None) -> tuple[str | None, str]:
    """(the key, "") or (None, why it cannot be had) from a file (trailing newline stripped) or a variable."""
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            return None, f"cannot be read ({type(e).__name__}: {e.strerror if isinstance(e, OSError) else e})"
        value, where = text.rstrip("\r\n"), f"file {file}"
    elif env is not None:
        if env not in os.environ:
            return None, f"environment variable {env} is not set"
        value, where = os.environ[env], f"environment variable {env}"
    else:
        return None, "missing (required)"
    if len(value.encode("utf-8")) < MIN_KEY_CHARS:
        return None, f"the key in {where} is shorter than {MIN_KEY_CHARS} characters (RFC 3414)"
    return value, ""


def check_keys(opts: Any, p: Any) -> None:
    """The auth and priv keys of a v3 options table (`auth_key_file`/`auth_key_env`, `priv_...`): exactly one
    source each, and readable; each mistake added to `p` (powerplane.validation.Problems) under its key."""
    for what in ("auth", "priv"):
        file, env = getattr(opts, f"{what}_key_file"), getattr(opts, f"{what}_key_env")
        if file is not None and env is not None:
            p.add(f"{what}_key_file", f"give {what}_key_file or {what}_key_env, not both")
            continue
        _key, why = read_secret(file, env)
        if why:
            p.add(f"{what}_key_file" if env is None else f"{what}_key_env",
                  why if file is not None or env is not None else
                  f"missing: give {what}_key_file or {what}_key_env (keys are never written in the config)")


def describe_failure(error: Any, user: str) -> str | None:
    """One line for a failed v3 exchange (pysnmp's error indication), or None when it is not a v3 matter."""
    if isinstance(error, errind.UnknownUserName):
        return f"SNMPv3 user '{user}' is unknown to the agent (wrong user name?)"
    if isinstance(error, errind.WrongDigest):
        return f"SNMPv3 authentication failed for user '{user}' (wrong auth key or auth protocol?)"
    if isinstance(error, errind.DecryptionError):
        return f"SNMPv3 decryption failed for user '{user}' (wrong priv key or priv protocol?)"
    if isinstance(error, errind.UnsupportedSecurityLevel):
        return f"SNMPv3 user '{user}': the agent does not accept authPriv for this user"
    if isinstance(error, errind.UnknownEngineID):
        return f"SNMPv3 engine discovery failed for user '{user}' (the agent refused it)"
    if isinstance(error, errind.NotInTimeWindow):
        return f"SNMPv3 user '{user}': message outside the agent's time window (agent clock or engine boots?)"
    return None
