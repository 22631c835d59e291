"""What a UPS trap says: the notifications of RFC 1628 UPS-MIB and Eaton's XUPS-MIB that carry power state,
read into a `TrapEvent` (on battery or not, on bypass or not, the alarm kinds raised or cleared). Pure tables
and functions, unit-tested without a socket; trapd.py receives, authenticates and publishes.

Every OID here is listed in README.md beside this file ("Trap receiver"), with where it was checked. The alarm
descriptors of upsTrapAlarmEntryAdded/Removed and xupstdAlarmEntryAdded/Removed map to kinds through the
same table the poller uses for the alarm tables (`facility.ALARM_KINDS`), so a trap and a poll name an
alarm alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from collectors.snmp import ber
from collectors.snmp.facility import ALARM_KINDS
from collectors.snmp.models import OID, Junk, oid, prefix_of

# A varbind value as the receiver reads it: a number, an OID, an octet string, or None (anything else).
Value = int | OID | bytes | None

_UPS = "1.3.6.1.2.1.33"  # upsMIB
UPS_TRAPS = oid(f"{_UPS}.2")  # upsTraps
UPS_ALARM_DESCR = oid(f"{_UPS}.1.6.2.1.2")  # upsAlarmDescr (AutonomousType), in AlarmEntryAdded/Removed
UPS_MINUTES = oid(f"{_UPS}.1.2.3.0")  # upsEstimatedMinutesRemaining.0, in upsTrapOnBattery
_X = "1.3.6.1.4.1.534.1"  # xups
XUPS_ALARM_DESCR = oid(f"{_X}.7.2.1.2")  # xupsAlarmDescr (OBJECT IDENTIFIER), in every xupst* trap
XUPS_BAT_S = oid(f"{_X}.2.1.0")  # xupsBatTimeRemaining.0 (s), sent by some cards with the on-battery trap
# The three XUPS-MIB trap families share their specific-trap numbers: xupstb* under xupsTrapBasic (the v1
# TRAP-TYPEs, enterprise .0.0), xupstd* under xupsTrapDefined (.11.4.1) and xupstp* under xupsTrapPortN
# (.11.4.2, the same traps with the port's ifIndex/ifDescr).
XUPS_FAMILIES = {oid(f"{_X}.0.0.0"): "xupstb", oid(f"{_X}.11.4.1.0"): "xupstd", oid(f"{_X}.11.4.2.0"): "xupstp"}
SYS_NAME = oid("1.3.6.1.2.1.1.5.0")  # sysName.0, when an agent sends it along


@dataclass(frozen=True)
class Meaning:
    """What one notification says about the UPS: None = says nothing about that state."""

    name: str  # the MIB's name, without the family prefix for XUPS (OnBattery, ...)
    on_battery: bool | None = None
    on_bypass: bool | None = None
    raised: tuple[str, ...] = ()
    cleared: tuple[str, ...] = ()
    alarm_entry: str = ""  # "added" / "removed": the kind comes from the alarm descriptor varbind


UPS_MIB_TRAPS: dict[int, Meaning] = {  # upsTraps.N (RFC 1628 section 5, SMIv2: no .0 arc)
    1: Meaning("upsTrapOnBattery", on_battery=True, raised=("on_battery",)),
    3: Meaning("upsTrapAlarmEntryAdded", alarm_entry="added"),
    4: Meaning("upsTrapAlarmEntryRemoved", alarm_entry="removed"),
}
UPS_MIB_IGNORED = {2: "upsTrapTestCompleted"}

XUPS_TRAPS: dict[int, Meaning] = {  # specific-trap number -> meaning, every family
    3: Meaning("OnBattery", on_battery=True, raised=("on_battery",)),
    4: Meaning("LowBattery", raised=("low_battery",)),
    5: Meaning("UtilityPowerRestored", on_battery=False, cleared=("input_bad", "on_battery")),
    6: Meaning("ReturnFromLowBattery", cleared=("low_battery",)),
    7: Meaning("OutputOverload", raised=("output_overload",)),
    8: Meaning("InternalFailure", raised=("general_fault",)),
    9: Meaning("BatteryDischarged", raised=("battery_depleted",)),
    10: Meaning("InverterFailure", raised=("general_fault",)),
    11: Meaning("OnBypass", on_bypass=True, raised=("on_bypass",)),
    12: Meaning("BypassNotAvailable", raised=("bypass_bad",)),
    13: Meaning("OutputOff", raised=("output_off",)),
    14: Meaning("InputFailure", raised=("input_bad",)),
    16: Meaning("ShutdownImminent", raised=("shutdown_imminent",)),
    17: Meaning("OnInverter", on_bypass=False, cleared=("on_bypass",)),  # back from bypass to the inverter
    21: Meaning("AlarmEntryAdded", alarm_entry="added"),
    22: Meaning("AlarmEntryRemoved", alarm_entry="removed"),
    26: Meaning("CommunicationsLost", raised=("communications_lost",)),
    27: Meaning("UpsShutdownPending", raised=("shutdown_pending",)),
}


@dataclass(frozen=True)
class TrapEvent:
    """One understood trap: the state it reports and the alarm kinds it raises or clears."""

    trap: str  # e.g. "upsTrapOnBattery", "xupstdUtilityPowerRestored"
    on_battery: bool | None = None
    on_bypass: bool | None = None
    raised: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    battery_remaining_s: float | None = None
    sys_name: str | None = None


def alarm_kind(descr: OID) -> str:
    """The well-known kind of an alarm descriptor OID (upsWellKnownAlarms, xupsAlarm), else "other"."""
    return next((k for base, k in ALARM_KINDS if descr == base or prefix_of(descr, base) is not None), "other")


def lookup(trap_oid: OID) -> Meaning | str | None:
    """The meaning of a notification OID; its name (str) when it is known but says nothing about power
    state; None when it is not a UPS trap this receiver knows."""
    rest = prefix_of(trap_oid, UPS_TRAPS)
    if rest is not None and len(rest) == 2 and rest[0] == 0:
        rest = rest[1:]  # a v1 trap with enterprise upsTraps, translated by RFC 3584: upsTraps.0.N
    if rest is not None and len(rest) == 1:
        return UPS_MIB_TRAPS.get(rest[0]) or UPS_MIB_IGNORED.get(rest[0])
    for base, family in XUPS_FAMILIES.items():
        rest = prefix_of(trap_oid, base)
        if rest is not None and len(rest) == 1:
            m = XUPS_TRAPS.get(rest[0])
            if m is None:
                return f"{family} trap {rest[0]}"
            return Meaning(family + m.name, m.on_battery, m.on_bypass, m.raised, m.cleared, m.alarm_entry)
    return None


def value_of(tag: int, content: bytes) -> Value:
    """A raw varbind value (tag, content octets) as the receiver reads it."""
    if tag == ber.OCTET_STRING:
        return content
    try:
        v = ber.decode_value(tag, content)
    except ber.BerError:
        return None
    if tag == ber.TIME_TICKS and isinstance(v, Junk):
        return int.from_bytes(content, "big")
    return v if isinstance(v, int | tuple) else None


def _descr(varbinds: Sequence[tuple[OID, Value]]) -> OID | None:
    for name, value in varbinds:
        if isinstance(value, tuple) and (prefix_of(name, UPS_ALARM_DESCR) is not None
                                         or prefix_of(name, XUPS_ALARM_DESCR) is not None):
            return value
    return None


MAX_BATTERY_S = 1e9  # the record's range: a larger (or negative) run time is no reading


def _battery_s(varbinds: Sequence[tuple[OID, Value]]) -> float | None:
    for name, value in varbinds:
        if isinstance(value, int) and name in (UPS_MINUTES, XUPS_BAT_S):
            seconds = float(value * 60 if name == UPS_MINUTES else value)
            return seconds if 0.0 <= seconds <= MAX_BATTERY_S else None
    return None


def interpret(trap_oid: OID, varbinds: Sequence[tuple[OID, Value]]) -> TrapEvent | str | None:
    """A notification -> the event it reports; a str naming a known trap that carries no power state
    (upsTrapTestCompleted, ...) or why an alarm-entry trap says nothing; None for a trap of no MIB here."""
    m = lookup(trap_oid)
    if m is None or isinstance(m, str):
        return m
    sys_name = next((v.decode("utf-8", "replace") for n, v in varbinds if n == SYS_NAME and isinstance(v, bytes)),
                    None)
    on_battery, on_bypass, raised, cleared = m.on_battery, m.on_bypass, list(m.raised), list(m.cleared)
    if m.alarm_entry:
        descr = _descr(varbinds)
        if descr is None:
            return f"{m.name} without an alarm descriptor (upsAlarmDescr / xupsAlarmDescr)"
        kind = alarm_kind(descr)
        state = m.alarm_entry == "added"
        (raised if state else cleared).append(kind)
        if kind == "on_battery":
            on_battery = state
        elif kind == "on_bypass":
            on_bypass = state
    return TrapEvent(m.name, on_battery, on_bypass, raised, cleared, _battery_s(varbinds), sys_name)
