"""A real SNMP agent for tests: `snmpsim-command-responder` (PyPI snmpsim 1.2) serving .snmprec recordings.

    with SnmpSim({"apc-8641": snmpsim_data("UPS/apc-8641.snmprec")}, tmp_path) as sim:
        ... sim.host, sim.port; community "apc-8641" answers from that recording ...

Each recording is copied (bz2 ones decompressed) into a private data directory as `<community>.snmprec`:
snmpsim names a community after the file's path relative to the data directory, and it resolves
symlinks first, so a symlink into site-packages would get a long community name. The responder binds
127.0.0.1 on a free UDP port, keeps its index cache in a private writable directory, runs in its own
process session (so it and anything it spawns are stopped together), and is stopped with SIGTERM, then
SIGKILL; `stop()` returns only when no process of that session is left. Run as root, snmpsim insists
on dropping privileges unless SNMPSIM_ALLOW_ROOT=true, which is set here (the data and cache
directories are the test's own, so nothing needs another user's access).
"""

from __future__ import annotations

import bz2
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

RESPONDER = "snmpsim-command-responder"


def snmpsim_data(relative: str) -> Path:
    """A recording shipped in the snmpsim-data package, e.g. 'UPS/apc-8641.snmprec' (.bz2 is tried too)."""
    spec = importlib.util.find_spec("snmpsim_data")  # the package ships the recordings under data/
    if spec is None or spec.origin is None:
        raise FileNotFoundError("snmpsim-data is not installed (pip install snmpsim-data)")
    base = Path(spec.origin).resolve().parent / "data"
    for cand in (base / relative, base / f"{relative}.bz2"):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"snmpsim-data has no recording {relative!r} under {base}")


def read_recording(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".bz2":
        data = bz2.decompress(data)
    return data.decode("ascii", errors="replace")


def parse_snmprec(text: str) -> dict[str, tuple[str, str]]:
    """`OID|type|value` lines -> {oid: (type, value)}; comments and blank lines skipped."""
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, typ, value = line.split("|", 2)
        out[name.strip()] = (typ.strip(), value.rstrip("\r\n"))
    return out


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ber_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _ber_len(len(body)) + body


def probe_packet(community: str, request_id: int = 1) -> bytes:
    """An SNMPv2c GET of sysObjectID.0, BER-encoded by hand (no SNMP library needed to see it answer)."""
    oid_body = bytes([0x2B, 6, 1, 2, 1, 1, 2, 0])  # 1.3.6.1.2.1.1.2.0
    varbind = _tlv(0x30, _tlv(0x06, oid_body) + _tlv(0x05, b""))
    pdu = _tlv(0xA0, _tlv(0x02, request_id.to_bytes(2, "big")) + _tlv(0x02, b"\x00") + _tlv(0x02, b"\x00")
               + _tlv(0x30, varbind))
    return _tlv(0x30, _tlv(0x02, b"\x01") + _tlv(0x04, community.encode()) + pdu)


@dataclass(frozen=True)
class V3User:
    """An SNMPv3 USM user the responder accepts (authPriv). Protocol names as snmpsim spells them."""

    user: str
    auth_key: str
    priv_key: str
    auth_proto: str = "SHA256"
    priv_proto: str = "AES"

    def args(self) -> list[str]:
        return [f"--v3-user={self.user}", f"--v3-auth-key={self.auth_key}", f"--v3-auth-proto={self.auth_proto}",
                f"--v3-priv-key={self.priv_key}", f"--v3-priv-proto={self.priv_proto}"]


class SnmpSim:
    """snmpsim-command-responder on 127.0.0.1:<free port>, one community per recording."""

    host = "127.0.0.1"

    def __init__(self, recordings: Mapping[str, Path | str], workdir: Path, *, start_timeout_s: float = 60.0,
                 v3_user: V3User | None = None):
        """recordings: community -> a recording file (.snmprec or .snmprec.bz2) or its text. With `v3_user` the
        responder also serves SNMPv3 for that USM user, each recording under the context of its community
        name (v1/v2c stay on)."""
        if not recordings:
            raise ValueError("at least one recording is needed")
        self.recordings = dict(recordings)
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.cache_dir = workdir / "cache"
        self.log_path = workdir / "snmpsim.log"
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.v3_user = v3_user

    @property
    def communities(self) -> list[str]:
        return list(self.recordings)

    def _responder(self) -> str:
        exe = Path(sys.executable).parent / RESPONDER
        found = str(exe) if exe.exists() else shutil.which(RESPONDER)
        if found is None:
            raise RuntimeError(f"{RESPONDER} not found (pip install snmpsim)")
        return found

    def _write_data(self) -> None:
        for d in (self.data_dir, self.cache_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        for community, rec in self.recordings.items():
            if "/" in community or community.startswith("."):
                raise ValueError(f"bad community name {community!r}")
            text = read_recording(rec) if isinstance(rec, Path) else rec
            (self.data_dir / f"{community}.snmprec").write_text(text, encoding="ascii")

    def start(self) -> SnmpSim:
        self._write_data()
        last = ""
        for _attempt in range(3):  # the free port can be taken between probing and binding: try another
            self.port = free_udp_port()
            cmd = [self._responder(), f"--data-dir={self.data_dir}", f"--cache-dir={self.cache_dir}",
                   *(self.v3_user.args() if self.v3_user is not None else []),
                   f"--agent-udpv4-endpoint={self.host}:{self.port}", "--logging-method=stderr",
                   "--log-level=info"]
            env = {**os.environ, "SNMPSIM_ALLOW_ROOT": "true"}
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=env, start_new_session=True)
            if self._wait_ready():
                return self
            last = self.log_tail()
            self.stop()
        raise RuntimeError(f"snmpsim did not answer on {self.host}:{self.port}; log tail:\n{last}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        packet = probe_packet(self.communities[0])
        deadline = time.monotonic() + self.start_timeout_s
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                with contextlib.suppress(OSError):  # refused (not bound yet) or timed out: ask again
                    s.sendto(packet, (self.host, self.port))
                    data, _ = s.recvfrom(65535)
                    if data[:1] == b"\x30":
                        return True
                time.sleep(0.05)
        return False

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the responder's session, SIGKILL after 5 s; return when no process of it is left."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the responder leads its own process group
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait_s)
            if proc.poll() is not None and not _group_alive(pgid):
                return
        raise RuntimeError(f"snmpsim process group {pgid} survived SIGKILL")

    def __enter__(self) -> SnmpSim:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
