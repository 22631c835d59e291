"""The UPS trap receiver end to end: `powerplane traps` as its own process (the `collector` role on the secured
session broker), real traps from Net-SNMP's `snmptrap` (Debian package `snmp`), records read back from
pp.facility and pp.deadletter, refusals counted on its /metrics page.

Lineup A's UPS card speaks SNMPv2c (address 127.0.0.1 + community), lineup B's SNMPv3 authPriv (engine id,
user, SHA/AES keys). A spoofed trap (wrong community, unknown address, wrong v3 key, authNoPriv) is refused:
counted, dead-lettered, and absent from pp.facility, which a genuine trap sent after it proves (the refused
one would have arrived first: same producer, same partition order per key)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ops.demo import Services
from powerplane import topics
from powerplane.config import Config
from powerplane.schemas import FacilityReading
from tests.integration.conftest import free_port
from tests.integration.helpers import end_offsets, read_messages

COMMUNITY = "trap-community-it"
ENGINE_ID = "0x80001f8880aabbccdd01020304"
AUTH, PRIV = "auth-key-for-traps", "priv-key-for-traps"
UPS_MIB = "1.3.6.1.2.1.33"
ON_BATTERY = f"{UPS_MIB}.2.1"
ALARM_REMOVED = f"{UPS_MIB}.2.4"
UPS_ALARM_DESCR_1 = f"{UPS_MIB}.1.6.2.1.2.1"
UPS_ALARM_ON_BATTERY = f"{UPS_MIB}.1.6.3.2"
XUPSTD = "1.3.6.1.4.1.534.1.11.4.1.0"
MINUTES = f"{UPS_MIB}.1.2.3.0"


@dataclass
class Receiver:
    port: int
    metrics: str
    svc: Services
    log: Path
    start: dict[str, dict[int, int]]

    def metric(self, name: str, **labels: str) -> float:
        text = urllib.request.urlopen(self.metrics, timeout=5).read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{{want}}} " if labels else f"{name} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def _snmptrap() -> str:
    path = shutil.which("snmptrap")
    assert path, "snmptrap is missing: install Debian's snmp package (scripts/ensure-debian-packages does)"
    return path


@pytest.fixture(scope="module")
def receiver(cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    _snmptrap()
    tmp = tmp_path_factory.mktemp("traps")
    for name, secret in (("community", COMMUNITY), ("auth", AUTH), ("priv", PRIV)):
        (tmp / name).write_text(secret + "\n")
    port, mport = free_port(), free_port()
    (tmp / "traps.toml").write_text(f"""
[receiver]
listen = "127.0.0.1:{port}"

[agents.it-ups-a]
lineup = "ups-a"
version = "2c"
address = "127.0.0.1"
community_file = "{tmp / 'community'}"

[agents.it-ups-b]
lineup = "ups-b"
version = "3"
engine_id = "{ENGINE_ID}"
user = "pp-traps"
auth_protocol = "SHA"
priv_protocol = "AES-128"
auth_key_file = "{tmp / 'auth'}"
priv_key_file = "{tmp / 'priv'}"
""")
    start = {t: end_offsets(cfg, t) for t in (topics.FACILITY.name, topics.DEADLETTER.name)}
    svc = Services(cfg, tmp / "logs")
    svc.start("traps", "traps", str(tmp / "traps.toml"), "--metrics-addr", f"127.0.0.1:{mport}")
    log = tmp / "logs" / "traps.log"
    deadline = time.monotonic() + 60
    while "listening for traps" not in (log.read_text() if log.exists() else ""):
        svc.check()
        assert time.monotonic() < deadline, "the receiver did not start listening within 60 s"
        time.sleep(0.2)
    try:
        yield Receiver(port, f"http://127.0.0.1:{mport}/metrics", svc, log, start)
    finally:
        svc.stop()


def send(r: Receiver, *args: str, clientaddr: str | None = None) -> None:
    extra = [f"--clientaddr={clientaddr}"] if clientaddr else []
    subprocess.run([_snmptrap(), *extra, *args[:-1], f"127.0.0.1:{r.port}", "", *args[-1].split()],
                   check=True, capture_output=True, timeout=10)


def v2c(r: Receiver, trap: str, community: str = COMMUNITY, clientaddr: str | None = None) -> None:
    send(r, "-v", "2c", "-c", community, trap, clientaddr=clientaddr)


def v3(r: Receiver, trap: str, auth: str = AUTH, priv: str = PRIV, level: str = "authPriv") -> None:
    keys = ["-a", "SHA", "-A", auth] + (["-x", "AES", "-X", priv] if level == "authPriv" else [])
    send(r, "-v", "3", "-u", "pp-traps", "-l", level, *keys, "-e", ENGINE_ID, trap)


def events(cfg: Config, r: Receiver, agent: str, until: Any, timeout_s: float = 20.0) -> list[FacilityReading]:
    """The receiver's records of one agent on pp.facility since the fixture started, read until `until` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = [FacilityReading.decode(m.value)
               for m in read_messages(cfg, topics.FACILITY.name, 5.0, start=r.start[topics.FACILITY.name])]
        mine = [g for g in got if g.source == f"trap:{agent}"]
        if until(mine) or time.monotonic() > deadline:
            return mine
        time.sleep(0.3)


def dead_letters(cfg: Config, r: Receiver) -> list[dict[str, str]]:
    msgs = read_messages(cfg, topics.DEADLETTER.name, 5.0, start=r.start[topics.DEADLETTER.name])
    heads = [{k: v.decode(errors="replace") for k, v in m.headers} for m in msgs]
    return [h for h in heads if h.get("pp.component") == "traps"]


def test_v2c_on_battery_trap_for_lineup_a_is_a_facility_event_then_return_from_battery(cfg: Config,
                                                                                       receiver: Receiver) -> None:
    v2c(receiver, f"{ON_BATTERY} {MINUTES} i 9")
    got = events(cfg, receiver, "it-ups-a", lambda m: any(e.on_battery for e in m))
    ev = next(e for e in got if e.on_battery)
    assert (ev.unit, ev.lineup, ev.feed, ev.via, ev.trap, ev.battery_remaining_s) == (
        "ups-a", "ups-a", "A", "trap", "upsTrapOnBattery", 540.0)
    assert abs(ev.ts_s - time.time()) < 30.0
    # the alarm table's on-battery entry removed: back on the utility
    v2c(receiver, f"{ALARM_REMOVED} {UPS_ALARM_DESCR_1} o {UPS_ALARM_ON_BATTERY}")
    got = events(cfg, receiver, "it-ups-a", lambda m: any(e.on_battery is False for e in m))
    back = next(e for e in got if e.on_battery is False)
    assert (back.trap, back.cleared_kinds, back.seq > ev.seq) == ("upsTrapAlarmEntryRemoved", ["on_battery"], True)


def test_v3_authpriv_xups_traps_for_lineup_b_on_battery_and_utility_restored(cfg: Config,
                                                                             receiver: Receiver) -> None:
    v3(receiver, f"{XUPSTD}.3")
    v3(receiver, f"{XUPSTD}.5")
    got = events(cfg, receiver, "it-ups-b", lambda m: len(m) >= 2)
    assert [(e.unit, e.feed, e.trap, e.on_battery) for e in got] == [
        ("ups-b", "B", "xupstdOnBattery", True), ("ups-b", "B", "xupstdUtilityPowerRestored", False)]


@pytest.mark.parametrize(("spoof", "reason"), [
    (lambda r: v2c(r, ON_BATTERY, community="public"), "bad_community"),
    (lambda r: v2c(r, ON_BATTERY, clientaddr="127.0.0.2"), "unknown_agent"),
    (lambda r: v3(r, f"{XUPSTD}.3", auth="not-the-auth-key"), "bad_auth"),
    (lambda r: v3(r, f"{XUPSTD}.3", priv="not-the-priv-key"), "bad_priv"),
    (lambda r: v3(r, f"{XUPSTD}.3", level="authNoPriv"), "security_level"),
], ids=["wrong-community", "unknown-agent", "wrong-v3-auth-key", "wrong-v3-priv-key", "v3-authNoPriv"])
def test_a_spoofed_trap_is_refused_counted_dead_lettered_and_never_on_pp_facility(
        cfg: Config, receiver: Receiver, spoof: Any, reason: str) -> None:
    agent, marker = ("it-ups-a", lambda: v2c(receiver, f"{UPS_MIB}.2.3 {UPS_ALARM_DESCR_1} o {UPS_MIB}.1.6.3.3")) \
        if reason in ("bad_community", "unknown_agent") else ("it-ups-b", lambda: v3(receiver, f"{XUPSTD}.4"))
    before_n = len(events(cfg, receiver, agent, lambda m: True, timeout_s=0))
    refused = receiver.metric("powerplane_traps_refused_total", reason=reason)
    spoof(receiver)
    marker()  # a genuine low-battery trap after the spoofed one: once it is there, the spoofed one would be too
    got = events(cfg, receiver, agent, lambda m: len(m) > before_n)
    new = got[before_n:]
    assert [e.alarm_kinds for e in new] == [["low_battery"]], new
    assert all(e.on_battery is None for e in new)
    assert receiver.metric("powerplane_traps_refused_total", reason=reason) == refused + 1
    deadline = time.monotonic() + 10
    while not any(h.get("pp.reason_code") == reason for h in dead_letters(cfg, receiver)):
        assert time.monotonic() < deadline, f"no dead letter with reason {reason}"
        time.sleep(0.3)
    line = next(ln for ln in receiver.log.read_text().splitlines() if LOG_TEXT[reason] in ln)
    assert "snmp-trap" in line and "127.0.0." in line and COMMUNITY not in line and AUTH not in line


LOG_TEXT = {"bad_community": "wrong community", "unknown_agent": "no agent is configured at",
            "bad_auth": "authentication failed", "bad_priv": "decryption failed", "security_level": "only authPriv"}
