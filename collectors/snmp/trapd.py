"""The UPS trap receiver: SNMP v1/v2c and v3 (authPriv) notifications on a UDP port -> authenticated against
the configured agents -> `FacilityReading` events (via "trap") on pp.facility, produced at once (linger 0,
acks=all, idempotent) as the `collector` role. README.md beside this file ("Trap receiver") has the config,
the traps understood and the security rules; `powerplane traps FILE` runs it.

- v1/v2c are decoded by the collector's own BER codec (ber.py) and accepted only from a configured agent's
  address with its community (compared in constant time) and its configured version.
- v3 goes through pysnmp's USM (the same code the poller's v3 uses): each v3 agent's user is registered with
  its keys localized to the agent's engine id, so a message is authenticated and decrypted by pysnmp; this
  module then demands authPriv (pysnmp, as a non-authoritative receiver, would take noAuthNoPriv and
  authNoPriv messages for a user that has keys) and the agent's address when one is configured.
- Anything refused is one log line naming the sender and the reason (at most one per sender and reason per
  10 s, the rest counted), a count per reason, and a dead letter with the datagram (rate-capped).

`TrapHandler` is the pure part (bytes in, an outcome out); `TrapService` owns the socket and Kafka.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from collectors.snmp import ber, traps
from collectors.snmp import v3 as usm
from collectors.snmp.models import OID, oid_str
from collectors.snmp.trap_config import Agent, TrapConfig
from collectors.snmp.traps import TrapEvent, Value
from powerplane.schemas import FacilityReading

log = logging.getLogger("powerplane.traps")

# pysnmp's error indications for a refused v3 message -> (reason label, what to tell the operator)
_V3_REFUSALS = {
    "UnknownSecurityName": ("unknown_user", "SNMPv3 user unknown for this engine id (wrong user, or an agent "
                                            "whose engine id is not configured)"),
    "UnknownEngineID": ("unknown_user", "SNMPv3 engine id not configured"),
    "AuthenticationFailure": ("bad_auth", "SNMPv3 authentication failed (wrong auth key or protocol)"),
    "WrongDigest": ("bad_auth", "SNMPv3 authentication failed (wrong auth key or protocol)"),
    "DecryptionError": ("bad_priv", "SNMPv3 decryption failed (wrong priv key or protocol)"),
    "NotInTimeWindow": ("time_window", "SNMPv3 message outside the time window (replayed, or the agent's "
                                       "engine boots/time went back)"),
    "UnsupportedSecurityLevel": ("security_level", "SNMPv3 security level not supported for this user"),
}


@dataclass(frozen=True)
class Refusal:
    reason: str  # a short label: the metric's `reason` and the dead letter's
    message: str  # one line, naming the sender; never a community or key


@dataclass(frozen=True)
class Ignored:
    agent: str
    what: str  # the trap, for the log


Outcome = FacilityReading | Refusal | Ignored


@dataclass
class _V3Result:
    failure: str = ""
    engine_id: bytes = b""
    user: str = ""
    level: int = 0
    confirmed: bool = False
    varbinds: list[tuple[OID, Value]] = field(default_factory=list)
    delivered: bool = False


def _pysnmp_value(v: Any) -> Value:
    from pyasn1.type import univ

    if isinstance(v, univ.ObjectIdentifier):
        return tuple(int(x) for x in v)
    if isinstance(v, univ.Integer):
        return int(v)
    if isinstance(v, univ.OctetString):
        return bytes(v)
    return None


class V3Decoder:
    """pysnmp's message processing and USM over datagrams this module receives: no pysnmp transport, no
    asyncio; `decode` hands one datagram to the engine and collects what it made of it."""

    def __init__(self, agents: Sequence[Agent]) -> None:
        from pysnmp.entity import config, engine
        from pysnmp.entity.rfc3413 import ntfrcv
        from pysnmp.proto.api import v2c

        self.engine = engine.SnmpEngine()
        for a in agents:
            c = a.credentials
            assert c is not None and a.engine_id is not None
            config.add_v3_user(self.engine, c.user, usm.AUTH_PROTOCOLS[c.auth_protocol], c.auth_key,
                               usm.PRIV_PROTOCOLS[c.priv_protocol], c.priv_key,
                               securityEngineId=v2c.OctetString(a.engine_id))
        self._r = _V3Result()
        obs = self.engine.observer
        obs.register_observer(self._failed, "rfc3412.prepareDataElements:sm-failure")
        obs.register_observer(self._accepted, "rfc3412.prepareDataElements:unconfirmed",
                              "rfc3412.prepareDataElements:confirmed")
        self._receiver = ntfrcv.NotificationReceiver(self.engine, self._notification)

    def _failed(self, _engine: Any, _point: str, variables: dict[str, Any], _ctx: Any) -> None:
        status = variables.get("statusInformation") or {}
        indication = status.get("errorIndication") if hasattr(status, "get") else None
        self._r.failure = type(indication).__name__ if indication is not None else "unknown"

    def _accepted(self, _engine: Any, point: str, variables: dict[str, Any], _ctx: Any) -> None:
        self._r.engine_id = bytes(variables.get("securityEngineId") or b"")
        self._r.user = bytes(variables.get("securityName") or b"").decode("utf-8", "replace")
        self._r.level = int(variables.get("securityLevel") or 0)
        self._r.confirmed = point.endswith(":confirmed")

    def _notification(self, _engine: Any, _state: Any, _ctx_engine: Any, _ctx_name: Any, varbinds: Any,
                      _cb: Any) -> None:
        self._r.varbinds = [(tuple(int(x) for x in name), _pysnmp_value(value)) for name, value in varbinds]
        self._r.delivered = True

    def decode(self, data: bytes, peer: tuple[str, int]) -> _V3Result:
        from pysnmp.carrier.asyncio.dgram import udp

        self._r = r = _V3Result()
        try:
            self.engine.message_dispatcher.receive_message(self.engine, udp.DOMAIN_NAME, peer, data)
        except Exception as e:  # an inform wants a response this receiver has no transport to send
            r.failure = r.failure or f"unprocessable ({type(e).__name__})"
        return r


class _Seq:
    """Per-agent sequence numbers that keep rising across restarts (they start at the time in ms), so the
    receiver's duplicate check (same unit, source and seq) never takes a new trap for an old one."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def next(self, agent: str) -> int:
        n = max(self._last.get(agent, 0) + 1, int(time.time() * 1000))
        self._last[agent] = n
        return n


class TrapHandler:
    """One datagram -> a facility event, a refusal or an ignored trap. No I/O."""

    def __init__(self, cfg: TrapConfig) -> None:
        self.cfg = cfg
        self.by_address = {a.address: a for a in cfg.agents if a.version != "3" and a.address}
        self.by_user = {(a.engine_id, a.credentials.user): a for a in cfg.agents
                        if a.version == "3" and a.credentials is not None and a.engine_id is not None}
        self.v3 = V3Decoder([a for a in cfg.agents if a.version == "3"]) if self.by_user else None
        self.seq = _Seq()

    def handle(self, data: bytes, peer: tuple[str, int], ts_s: float) -> Outcome:
        where = f"trap from {peer[0]}:{peer[1]}"
        try:
            version = ber.message_version(data)
        except ber.BerError as e:
            return Refusal("malformed", f"{where}: not an SNMP message ({e})")
        if version == 3:
            return self._v3(data, peer, ts_s, where)
        if version not in (ber.VERSION_1, ber.VERSION_2C):
            return Refusal("malformed", f"{where}: SNMP version field {version} is not v1, v2c or v3")
        return self._v1v2c(data, peer, ts_s, where, "SNMPv1" if version == ber.VERSION_1 else "SNMPv2c")

    def _v1v2c(self, data: bytes, peer: tuple[str, int], ts_s: float, where: str, label: str) -> Outcome:
        agent = self.by_address.get(peer[0])
        if agent is None:
            known = " (that address has a v3 agent: v1/v2c is refused from it)" if any(
                a.address == peer[0] for a in self.cfg.agents) else ""
            return Refusal("unknown_agent", f"{where}: {label} trap from an address no agent is configured "
                                            f"at{known}")
        try:
            n = ber.decode_notification(data)
        except ber.BerError as e:
            return Refusal("malformed", f"{where} (agent {agent.name}): malformed {label} trap ({e})")
        if f"{'1' if n.version == ber.VERSION_1 else '2c'}" != agent.version:
            return Refusal("wrong_version", f"{where} (agent {agent.name}): {label} trap, the agent is configured "
                                            f"for SNMP version {agent.version}")
        if agent.community is None or not hmac.compare_digest(n.community, agent.community):
            return Refusal("bad_community", f"{where} (agent {agent.name}): wrong community")
        if n.pdu_tag == ber.INFORM_REQUEST:
            return Refusal("unsupported_pdu", f"{where} (agent {agent.name}): an InformRequest; this receiver "
                                              f"takes traps only (configure the agent to send traps)")
        if n.trap_oid is None:
            return Refusal("malformed", f"{where} (agent {agent.name}): no snmpTrapOID.0 in the trap")
        varbinds = [(o, traps.value_of(t, c)) for o, t, c in n.varbinds]
        return self._event(agent, n.trap_oid, varbinds, ts_s, where)

    def _v3(self, data: bytes, peer: tuple[str, int], ts_s: float, where: str) -> Outcome:
        if self.v3 is None:
            return Refusal("unknown_agent", f"{where}: SNMPv3 trap, and no v3 agent is configured")
        r = self.v3.decode(data, peer)
        if r.failure:
            reason, text = _V3_REFUSALS.get(r.failure, ("bad_v3", f"SNMPv3 message refused ({r.failure})"))
            return Refusal(reason, f"{where}: {text}")
        if not r.delivered:
            return Refusal("malformed", f"{where}: SNMPv3 message with no notification in it")
        agent = self.by_user.get((r.engine_id, r.user))
        if agent is None:
            return Refusal("unknown_agent", f"{where}: SNMPv3 engine id {r.engine_id.hex()} user {r.user!r} is no "
                                            f"configured agent")
        if r.level != 3:
            levels = {1: "noAuthNoPriv", 2: "authNoPriv"}
            return Refusal("security_level", f"{where} (agent {agent.name}): SNMPv3 {levels.get(r.level, '?')}; "
                                              f"only authPriv is accepted")
        if agent.address is not None and peer[0] != agent.address:
            return Refusal("address", f"{where} (agent {agent.name}): the agent is configured at {agent.address}")
        if r.confirmed:
            return Refusal("unsupported_pdu", f"{where} (agent {agent.name}): an InformRequest; this receiver "
                                              f"takes traps only")
        trap_oid = next((v for o, v in r.varbinds if o == ber.SNMP_TRAP_OID and isinstance(v, tuple)), None)
        if trap_oid is None:
            return Refusal("malformed", f"{where} (agent {agent.name}): no snmpTrapOID.0 in the trap")
        return self._event(agent, trap_oid, r.varbinds, ts_s, where)

    def _event(self, agent: Agent, trap_oid: OID, varbinds: Sequence[tuple[OID, Value]], ts_s: float,
               where: str) -> Outcome:
        ev = traps.interpret(trap_oid, varbinds)
        if ev is None:
            return Ignored(agent.name, f"trap {oid_str(trap_oid)} (not a UPS trap of UPS-MIB or XUPS-MIB)")
        if isinstance(ev, str):
            return Ignored(agent.name, ev)
        if agent.sys_name is not None and ev.sys_name is not None and ev.sys_name != agent.sys_name:
            return Refusal("sys_name", f"{where} (agent {agent.name}): sysName {ev.sys_name!r} in the trap, the "
                                       f"agent is configured as {agent.sys_name!r}")
        return self.reading(agent, ev, ts_s)

    def reading(self, agent: Agent, ev: TrapEvent, ts_s: float) -> FacilityReading:
        return FacilityReading(
            site=self.cfg.site, unit=agent.lineup, kind="ups", ts_s=ts_s, interval_s=self.cfg.interval_s,
            seq=self.seq.next(agent.name), source=f"trap:{agent.name}", lineup=agent.lineup, feed=agent.feed,
            on_battery=ev.on_battery, on_bypass=ev.on_bypass, battery_remaining_s=ev.battery_remaining_s,
            alarm_kinds=ev.raised, cleared_kinds=ev.cleared, via="trap", trap=ev.trap)
