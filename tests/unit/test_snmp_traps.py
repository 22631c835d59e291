"""The UPS trap receiver without a socket or a broker: what each UPS-MIB and XUPS-MIB trap means, the v1/v2c
notification decoder, the v1/v2c authentication rules of the handler (address, community, version, sysName),
the config file's errors (all at once, secrets never echoed), and the FacilityReading fields traps add.
SNMPv3 needs Net-SNMP's snmptrap to make real messages: tests/integration/test_snmp_traps.py."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from collectors.snmp import ber, trap_config, traps
from collectors.snmp.models import OID, oid
from collectors.snmp.trapd import Ignored, Refusal, TrapHandler
from powerplane.facility_checks import FacilityChecker
from powerplane.schemas import FacilityReading, SchemaError
from powerplane.site_file import load_site
from powerplane.validation import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "examples" / "lab.toml")
NOW = 1_790_000_000.0
UPS_ON_BATTERY = oid("1.3.6.1.2.1.33.2.1")
ALARM_ADDED, ALARM_REMOVED = oid("1.3.6.1.2.1.33.2.3"), oid("1.3.6.1.2.1.33.2.4")
UPS_ALARM_DESCR_1 = oid("1.3.6.1.2.1.33.1.6.2.1.2.1")
WELL_KNOWN = "1.3.6.1.2.1.33.1.6.3"


def v2c_trap(trap_oid: OID, *varbinds: tuple[OID, bytes], community: bytes = b"sekrit",
             tag: int = ber.TRAP_V2) -> bytes:
    """A v2c trap as an agent sends it: sysUpTime.0, snmpTrapOID.0, then the trap's objects."""
    vbs = [(oid("1.3.6.1.2.1.1.3.0"), ber.encode_integer(1234, ber.TIME_TICKS)),
           (ber.SNMP_TRAP_OID, ber.encode_oid(trap_oid)), *varbinds]
    return ber.encode_message(ber.VERSION_2C, community, tag, 77, 0, 0, vbs)


def v1_trap(enterprise: OID, specific: int, community: bytes = b"sekrit") -> bytes:
    pdu = (ber.encode_oid(enterprise) + ber.encode_tlv(ber.IP_ADDRESS, bytes([127, 0, 0, 1]))
           + ber.encode_integer(6) + ber.encode_integer(specific) + ber.encode_integer(99, ber.TIME_TICKS)
           + ber.encode_tlv(ber.SEQUENCE, b""))
    return ber.encode_tlv(ber.SEQUENCE, ber.encode_integer(ber.VERSION_1) + ber.encode_tlv(ber.OCTET_STRING, community)
                          + ber.encode_tlv(ber.TRAP_V1, pdu))


# ---- what each trap means ----------------------------------------------------------------------------------
def test_ups_mib_on_battery_trap_says_on_battery_with_the_minutes_left_as_seconds() -> None:
    ev = traps.interpret(UPS_ON_BATTERY, [(oid("1.3.6.1.2.1.33.1.2.3.0"), 7)])
    assert isinstance(ev, traps.TrapEvent)
    assert (ev.trap, ev.on_battery, ev.on_bypass, ev.raised, ev.battery_remaining_s) == (
        "upsTrapOnBattery", True, None, ["on_battery"], 420.0)


@pytest.mark.parametrize(("alarm", "kind", "state"), [
    ("2", "on_battery", "on_battery"), ("6", "input_bad", None), ("9", "on_bypass", "on_bypass"),
    ("3", "low_battery", None), ("99", "other", None)])
def test_alarm_entry_traps_raise_and_clear_the_kind_of_their_descriptor(alarm: str, kind: str,
                                                                        state: str | None) -> None:
    descr = [(UPS_ALARM_DESCR_1, oid(f"{WELL_KNOWN}.{alarm}"))]
    added, removed = traps.interpret(ALARM_ADDED, descr), traps.interpret(ALARM_REMOVED, descr)
    assert isinstance(added, traps.TrapEvent) and isinstance(removed, traps.TrapEvent)
    assert (added.raised, added.cleared, removed.raised, removed.cleared) == ([kind], [], [], [kind])
    if state is not None:  # the alarms that are a power state set it: on when added, off when removed
        assert (getattr(added, state), getattr(removed, state)) == (True, False)
    assert {added.on_battery, added.on_bypass} <= {None, True}


def test_alarm_entry_trap_without_its_descriptor_says_nothing() -> None:
    assert isinstance(traps.interpret(ALARM_ADDED, []), str)


@pytest.mark.parametrize("family", ["1.3.6.1.4.1.534.1.0.0.0", "1.3.6.1.4.1.534.1.11.4.1.0",
                                    "1.3.6.1.4.1.534.1.11.4.2.0"])
def test_xups_traps_of_every_family_read_alike(family: str) -> None:
    on, restored = traps.interpret(oid(f"{family}.3"), []), traps.interpret(oid(f"{family}.5"), [])
    bypass, inverter = traps.interpret(oid(f"{family}.11"), []), traps.interpret(oid(f"{family}.17"), [])
    assert isinstance(on, traps.TrapEvent) and isinstance(restored, traps.TrapEvent)
    assert isinstance(bypass, traps.TrapEvent) and isinstance(inverter, traps.TrapEvent)
    assert on.trap.endswith("OnBattery") and on.on_battery is True
    assert restored.trap.endswith("UtilityPowerRestored") and restored.on_battery is False
    assert "on_battery" in restored.cleared
    assert (bypass.on_bypass, inverter.on_bypass) == (True, False)
    added = traps.interpret(oid(f"{family}.21"), [(oid("1.3.6.1.4.1.534.1.7.2.1.2.4"), oid("1.3.6.1.4.1.534.1.7.14"))])
    assert isinstance(added, traps.TrapEvent) and added.raised == ["input_bad"]


def test_traps_that_carry_no_power_state_are_named_and_others_are_unknown() -> None:
    assert traps.interpret(oid("1.3.6.1.2.1.33.2.2"), []) == "upsTrapTestCompleted"
    assert traps.interpret(oid("1.3.6.1.4.1.534.1.11.4.1.0.1"), []) == "xupstd trap 1"
    assert traps.interpret(oid("1.3.6.1.4.1.318.0.5"), []) is None  # APC: not a MIB of this receiver
    # a v1 trap with enterprise upsTraps arrives as upsTraps.0.N (RFC 3584)
    ev = traps.interpret(oid("1.3.6.1.2.1.33.2.0.1"), [])
    assert isinstance(ev, traps.TrapEvent) and ev.on_battery is True


# ---- decoding ----------------------------------------------------------------------------------------------
def test_v2c_and_v1_traps_decode_to_the_same_trap_oid() -> None:
    n2 = ber.decode_notification(v2c_trap(oid("1.3.6.1.4.1.534.1.11.4.1.0.3")))
    n1 = ber.decode_notification(v1_trap(oid("1.3.6.1.4.1.534.1.11.4.1"), 3))
    assert n2.trap_oid == n1.trap_oid == oid("1.3.6.1.4.1.534.1.11.4.1.0.3")
    assert (n2.version, n2.community, n1.version) == (ber.VERSION_2C, b"sekrit", ber.VERSION_1)


def test_a_response_or_garbage_is_a_one_line_error_never_a_crash() -> None:
    with pytest.raises(ber.BerError, match="not a notification"):
        ber.decode_notification(ber.encode_message(1, b"c", ber.RESPONSE, 1, 0, 0, []))
    good = v2c_trap(UPS_ON_BATTERY)
    rng = random.Random(5)
    for _ in range(2000):
        bad = bytearray(good[:rng.randrange(len(good))] if rng.random() < 0.5 else good)
        if bad:
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        try:
            ber.decode_notification(bytes(bad))
        except ber.BerError as e:
            assert "\n" not in str(e)


# ---- the handler: who may send what -------------------------------------------------------------------------
def config(**agent: object) -> trap_config.TrapConfig:
    table = {"lineup": "ups-a", "version": "2c", "address": "127.0.0.1", "community": "sekrit", **agent}
    return trap_config.parse({"receiver": {"listen": "127.0.0.1:0"}, "agents": {"ups-a": table}}, SITE)


PEER = ("127.0.0.1", 40000)


def test_a_v2c_on_battery_trap_from_the_agent_becomes_a_facility_event_of_its_lineup() -> None:
    out = TrapHandler(config()).handle(v2c_trap(UPS_ON_BATTERY), PEER, NOW)
    assert isinstance(out, FacilityReading)
    assert (out.unit, out.lineup, out.feed, out.kind, out.via, out.trap, out.on_battery, out.source) == (
        "ups-a", "ups-a", "A", "ups", "trap", "upsTrapOnBattery", True, "trap:ups-a")
    assert FacilityChecker(SITE).check(FacilityReading.decode(out.encode()), NOW).reading is not None


@pytest.mark.parametrize(("data", "peer", "reason"), [
    (v2c_trap(UPS_ON_BATTERY, community=b"public"), PEER, "bad_community"),
    (v2c_trap(UPS_ON_BATTERY), ("10.9.9.9", 162), "unknown_agent"),
    (v1_trap(oid("1.3.6.1.4.1.534.1.11.4.1"), 3), PEER, "wrong_version"),
    (v2c_trap(UPS_ON_BATTERY, tag=ber.INFORM_REQUEST), PEER, "unsupported_pdu"),
    (b"\x30\x03\x02\x01\x01", PEER, "malformed"),
    (b"hello", PEER, "malformed"),
])
def test_spoofed_or_broken_datagrams_are_refused_with_one_line(data: bytes, peer: tuple[str, int],
                                                               reason: str) -> None:
    out = TrapHandler(config()).handle(data, peer, NOW)
    assert isinstance(out, Refusal) and out.reason == reason
    assert "\n" not in out.message and peer[0] in out.message and "sekrit" not in out.message


def test_a_trap_naming_another_sysname_is_refused_and_an_unknown_trap_ignored() -> None:
    h = TrapHandler(config(sys_name="ups-a.lab"))
    other = v2c_trap(UPS_ON_BATTERY, (traps.SYS_NAME, ber.encode_tlv(ber.OCTET_STRING, b"ups-z.lab")))
    same = v2c_trap(UPS_ON_BATTERY, (traps.SYS_NAME, ber.encode_tlv(ber.OCTET_STRING, b"ups-a.lab")))
    refused = h.handle(other, PEER, NOW)
    assert isinstance(refused, Refusal) and refused.reason == "sys_name"
    assert isinstance(h.handle(same, PEER, NOW), FacilityReading)
    assert isinstance(h.handle(v2c_trap(oid("1.3.6.1.2.1.33.2.2")), PEER, NOW), Ignored)


def test_sequence_numbers_rise_across_traps_and_restarts() -> None:
    a = TrapHandler(config()).handle(v2c_trap(UPS_ON_BATTERY), PEER, NOW)
    b = TrapHandler(config()).handle(v2c_trap(UPS_ON_BATTERY), PEER, NOW)
    assert isinstance(a, FacilityReading) and isinstance(b, FacilityReading) and b.seq >= a.seq


# ---- the config file ----------------------------------------------------------------------------------------
def test_every_mistake_of_the_file_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PP_NO_SUCH", raising=False)
    data = {"receiver": {"listen": "nowhere"}, "extra": {}, "agents": {
        "a": {"lineup": "ups-z", "community": "x"},  # no address, no such lineup
        "b": {"lineup": "ups-a", "version": "3", "user": "pp", "auth_key_env": "PP_NO_SUCH"},  # no engine id...
        "c": {"lineup": "ups-b", "address": "127.0.0.1", "community_env": "PP_NO_SUCH", "colour": "red"}}}
    with pytest.raises(ConfigError) as e:
        trap_config.parse(data, SITE, source="traps.toml")
    text = "\n".join(e.value.errors)
    for line in ("receiver.listen: must be HOST:PORT", "extra: unknown table", "agents.a.address: missing",
                 "agents.a.lineup: 'ups-z' is not a UPS lineup of site 'lab'", "agents.b.engine_id: missing",
                 "agents.b.auth_key_env: environment variable PP_NO_SUCH is not set",
                 "agents.b.priv_key_file: missing: give priv_key_file or priv_key_env", "agents.c.colour: unknown key"):
        assert line in text, text


def test_two_agents_at_one_address_and_a_feed_against_the_site_model_are_refused() -> None:
    data = {"agents": {"a": {"lineup": "ups-a", "address": "10.0.0.1", "community": "x", "feed": "B"},
                       "b": {"lineup": "ups-b", "address": "10.0.0.1", "community": "y"}}}
    with pytest.raises(ConfigError) as e:
        trap_config.parse(data, SITE)
    assert any("agents.b.address: the same address as agents.a" in line for line in e.value.errors)
    assert any("agents.a.feed: lineup 'ups-a' is on feed A, not B" in line for line in e.value.errors)


def test_secrets_are_read_from_the_environment_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_T_COMM", "community-from-env")
    cfg = trap_config.parse({"agents": {"a": {"lineup": "ups-a", "address": "10.0.0.1", "community_env": "PP_T_COMM"}}},
                            SITE)
    assert cfg.agents[0].community == b"community-from-env" and "community-from-env" not in repr(cfg)
    assert cfg.site == "lab" and (cfg.host, cfg.port) == ("0.0.0.0", 162)


# ---- the record --------------------------------------------------------------------------------------------
def test_trap_fields_round_trip_and_via_is_checked() -> None:
    r = FacilityReading(site="lab", unit="ups-a", kind="ups", ts_s=NOW, interval_s=60.0, seq=1, source="trap:ups-a",
                        lineup="ups-a", feed="A", on_battery=False, alarm_kinds=[], cleared_kinds=["on_battery"],
                        via="trap", trap="upsTrapAlarmEntryRemoved")
    assert FacilityReading.decode(r.encode()) == r
    with pytest.raises(SchemaError, match="field 'via'"):
        FacilityReading.from_wire({**r.to_wire(), "via": "carrier-pigeon"})


def test_a_run_time_no_record_could_carry_is_left_out() -> None:
    huge = traps.interpret(UPS_ON_BATTERY, [(oid("1.3.6.1.2.1.33.1.2.3.0"), 2**31 - 1)])
    assert isinstance(huge, traps.TrapEvent) and huge.battery_remaining_s is None and huge.on_battery is True


def test_a_v1_agent_takes_v1_traps_read_as_their_v2_form() -> None:
    out = TrapHandler(config(version="1")).handle(v1_trap(oid("1.3.6.1.4.1.534.1.11.4.1"), 3), PEER, NOW)
    assert isinstance(out, FacilityReading) and (out.trap, out.on_battery) == ("xupstdOnBattery", True)


def test_refusal_lines_are_throttled_per_sender_and_reason_and_the_held_ones_counted() -> None:
    from collectors.snmp.trap_service import _Throttle

    t = _Throttle(10.0)
    key = ("10.0.0.9", "bad_community")
    assert t.allow(key, 0.0) == (True, 0)
    assert [t.allow(key, s)[0] for s in (1.0, 2.0, 3.0)] == [False, False, False]
    assert t.allow(("10.0.0.9", "unknown_agent"), 3.0) == (True, 0)  # another reason: its own line
    assert t.allow(key, 10.5) == (True, 3)  # the next line says how many were held back
