"""Safe actuation, enforced once for every actuator.

A command is applied only if it is signed with a key in the site keyring, is for this site, has
not expired, has not been seen before (idempotent by id), is not older than the last command applied
to the same target (ordered per target) and is within the per-target rate limit. Values are
clamped to the hardware's range. Every applied value holds a lease: when it lapses unrenewed, the
GPU reverts to its safe value, so a dead controller fails safe. Each outcome is an Ack.

Pure logic over an Actuator: no Kafka here, so the same guard runs behind the Kafka consumer and in
the in-process engine.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from controllers.actuators.base import Actuator, ActuatorError
from powerplane.schemas import Ack, Command
from powerplane.signing import Keyring

log = logging.getLogger(__name__)


@dataclass
class GuardStats:
    applied: int = 0
    clamped: int = 0
    duplicate: int = 0
    rejected: int = 0
    expired: int = 0
    reverted: int = 0
    security: int = 0  # refusals for signature reasons, each also a security event


@dataclass
class _Lease:
    expires_at_s: float
    command_id: str


@dataclass
class _Target:
    last_issued_at_s: float = float("-inf")
    tokens: float = 0.0
    refilled_at_s: float = 0.0
    leases: dict[int, _Lease] = field(default_factory=dict)


class Guard:
    def __init__(self, actuator: Actuator, keyring: Keyring, site: str, *, rate_per_s: float = 5.0,
                 burst: int = 10, remember: int = 100_000) -> None:
        self.actuator = actuator
        self.keyring = keyring
        self.site = site
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.remember = remember
        self.seen: OrderedDict[str, Ack] = OrderedDict()  # bounded: oldest ids are forgotten first
        self.targets: dict[str, _Target] = {}
        self.stats = GuardStats()
        self.security_refusals: list[tuple[Command, str]] = []

    def _ack(self, cmd: Command, status: str, applied: np.ndarray, reason: str, now_s: float) -> Ack:
        setattr(self.stats, status, getattr(self.stats, status) + 1)
        return Ack(command_id=cmd.id, site=cmd.site, target=cmd.target, status=status,
                   gpus=cmd.gpus, applied=np.asarray(applied, dtype=np.float32), reason=reason,
                   actuator=self.actuator.name, ts_s=now_s)

    def _reject(self, cmd: Command, reason: str, now_s: float, *, security: bool = False) -> Ack:
        if security:
            self.stats.security += 1
            self.security_refusals.append((cmd, reason))
            del self.security_refusals[:-1000]
        log.warning("refused command %s for %s: %s", cmd.id, cmd.target, reason)
        return self._ack(cmd, "rejected", np.full(cmd.gpus.size, np.nan), reason, now_s)

    def handle(self, cmd: Command, now_s: float) -> Ack:
        bad_sig = self.keyring.verify(cmd)
        if bad_sig:
            return self._reject(cmd, bad_sig, now_s, security=True)
        if cmd.site != self.site:
            return self._reject(cmd, f"command for site '{cmd.site}', this actuator serves '{self.site}'", now_s,
                                security=True)
        prior = self.seen.get(cmd.id)
        if prior is not None:
            return self._ack(cmd, "duplicate", prior.applied, f"already handled: {prior.status}", now_s)
        if now_s > cmd.expires_at_s():
            return self._remember(self._ack(cmd, "expired", np.full(cmd.gpus.size, np.nan),
                                            f"lease ended {now_s - cmd.expires_at_s():.1f} s before arrival",
                                            now_s))
        st = self.targets.setdefault(cmd.target, _Target(tokens=float(self.burst), refilled_at_s=now_s))
        if cmd.issued_at_s < st.last_issued_at_s:
            return self._remember(self._reject(cmd, "older than the last command applied to this target", now_s))
        st.tokens = min(float(self.burst), st.tokens + (now_s - st.refilled_at_s) * self.rate_per_s)
        st.refilled_at_s = now_s
        if st.tokens < 1.0:
            return self._reject(cmd, f"rate limit: more than {self.rate_per_s:g} commands/s for {cmd.target}", now_s)
        st.tokens -= 1.0
        if cmd.action == "power_cap":
            ack = self._apply_cap(cmd, st, now_s)
        elif cmd.action == "release":
            ack = self._apply_release(cmd, st, now_s)
        else:
            ack = self._reject(cmd, f"action '{cmd.action}' is not supported by actuator '{self.actuator.name}'",
                               now_s)
        return self._remember(ack)

    def _remember(self, ack: Ack) -> Ack:
        self.seen[ack.command_id] = ack
        while len(self.seen) > self.remember:
            self.seen.popitem(last=False)
        return ack

    def _apply_cap(self, cmd: Command, st: _Target, now_s: float) -> Ack:
        gpus = cmd.gpus.astype(np.int64)
        want = cmd.values.astype(np.float64)
        if not np.all(np.isfinite(want)):
            return self._reject(cmd, "power_cap values must be finite watts", now_s)
        try:
            lo, hi, _ = self.actuator.limits_w(cmd.target, gpus)
            bounded = np.clip(want, lo, hi)  # never below the GPU's minimum, never above its maximum
            applied = self.actuator.set_power_limit(cmd.target, gpus, bounded)
        except ActuatorError as e:
            return self._reject(cmd, str(e), now_s)
        st.last_issued_at_s = cmd.issued_at_s
        for g in gpus.tolist():
            st.leases[g] = _Lease(cmd.expires_at_s(), cmd.id)
        if np.allclose(applied, want, atol=0.5):
            return self._ack(cmd, "applied", applied, "", now_s)
        n = int((np.abs(applied - want) > 0.5).sum())
        return self._ack(cmd, "clamped", applied, f"{n} value(s) clamped to the GPU's power-limit range", now_s)

    def _apply_release(self, cmd: Command, st: _Target, now_s: float) -> Ack:
        gpus = cmd.gpus.astype(np.int64)
        try:
            _, _, safe = self.actuator.limits_w(cmd.target, gpus)
            applied = self.actuator.set_power_limit(cmd.target, gpus, safe)
        except ActuatorError as e:
            return self._reject(cmd, str(e), now_s)
        st.last_issued_at_s = cmd.issued_at_s
        for g in gpus.tolist():
            st.leases.pop(g, None)
        return self._ack(cmd, "applied", applied, "released to safe value", now_s)

    def expire(self, now_s: float) -> list[Ack]:
        """Revert every GPU whose lease lapsed; one 'reverted' ack per target."""
        acks: list[Ack] = []
        for target, st in self.targets.items():
            lapsed = [g for g, lease in st.leases.items() if lease.expires_at_s < now_s]
            if not lapsed:
                continue
            gpus = np.array(sorted(lapsed), dtype=np.int64)
            ids = sorted({st.leases[g].command_id for g in lapsed})
            try:
                _, _, safe = self.actuator.limits_w(target, gpus)
                applied = self.actuator.set_power_limit(target, gpus, safe)
            except ActuatorError as e:
                log.error("reverting %s after lease expiry failed: %s", target, e)
                continue
            for g in lapsed:
                del st.leases[g]
            self.stats.reverted += 1
            log.warning("lease lapsed on %d GPU(s) of %s; reverted to safe value", gpus.size, target)
            acks.append(Ack(command_id=f"lease-expiry:{ids[-1]}", site=self.site, target=target, status="reverted",
                            gpus=gpus.astype(np.uint16), applied=applied.astype(np.float32),
                            reason=f"lease of {', '.join(ids[:3])} lapsed unrenewed", actuator=self.actuator.name,
                            ts_s=now_s))
        return acks
