"""Safe actuation, enforced once for every actuator.

A command is applied only if it is not a shadow controller's (pp.shadow), is signed with a key in the site
keyring, is for this site, has not expired, has not been seen before (idempotent by id), is not older than the
last command applied to the same target (ordered per target) and is within the per-target rate limit. Values are
clamped to the hardware's range. Every applied value holds a lease, one per GPU and knob (power limit,
SM clock lock, power floor): when it lapses unrenewed, the GPU reverts to its safe value (clocks: unlocked;
floor: none), so a dead controller fails safe. A power floor never exceeds the GPU's enforced power limit,
and a cap taken below a floor lowers the floor with it: the breaker policy's caps always win. Each outcome is
an Ack.

Pure logic over an Actuator: no Kafka here, so the same guard runs behind the Kafka consumer and in
the in-process engine. Given a Journal (actuators.journal), what it remembers (handled ids, each
target's order, leases) survives a restart: the Kafka shell calls `sync` before it sends a batch's acks.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from actuators.base import F64, I64, Actuator, ActuatorError
from actuators.journal import Journal
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


# Each GPU holds one lease per knob: a power limit, a clock lock and a power floor lapse apart.
KNOBS = ("power", "clock", "floor")
ACTION_KNOB = {"power_cap": "power", "sm_clock_lock": "clock", "power_floor": "floor"}
_SAFE_WHAT = {"power": "released to safe value", "clock": "clocks reset", "floor": "floor cleared"}
_REVERT_WHAT = {"power": "reverted to safe value", "clock": "clocks reset", "floor": "floor cleared"}


@dataclass
class _Target:
    last_issued_at_s: float = float("-inf")
    tokens: float = 0.0
    refilled_at_s: float = 0.0
    leases: dict[int, _Lease] = field(default_factory=dict)  # power-limit leases
    clock_leases: dict[int, _Lease] = field(default_factory=dict)
    floor_leases: dict[int, _Lease] = field(default_factory=dict)
    floor_w: dict[int, float] = field(default_factory=dict)  # the floor each floored GPU holds, W

    def leases_of(self, knob: str) -> dict[int, _Lease]:
        return {"power": self.leases, "clock": self.clock_leases}.get(knob, self.floor_leases)

    def n_leases(self) -> int:
        return len(self.leases) + len(self.clock_leases) + len(self.floor_leases)


class Guard:
    def __init__(self, actuator: Actuator, keyring: Keyring, site: str, *, rate_per_s: float = 5.0,
                 burst: int = 10, remember: int = 100_000, journal: Journal | None = None) -> None:
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
        self._revert_errors: dict[tuple[str, str, int], str] = {}  # last failure per GPU: log changes only
        self.journal = journal
        self.restored = 0  # outcomes read back from the journal at start
        if journal is not None:
            self._restore(journal)

    def _restore(self, journal: Journal) -> None:
        """Take back what a previous run remembered: handled ids (replays stay duplicates), each target's
        last applied issue time (order), and the leases still held (they lapse to safe as if never stopped)."""
        handled, order = journal.load()
        for h in handled:
            if h.status != "reverted":  # a lapsed lease, not a command
                self.seen[h.command_id] = Ack(command_id=h.command_id, site=self.site, target=h.target, status=h.status,
                                              gpus=h.gpus, applied=h.applied, reason=h.reason,
                                              actuator=self.actuator.name, ts_s=h.ts_s)
            if h.lease:
                st = self.targets.setdefault(h.target, _Target(tokens=float(self.burst)))
                leases = st.leases_of(h.knob)
                for i, g in enumerate(h.gpus.astype(np.int64).tolist()):
                    if h.lease > 0:
                        leases[g] = _Lease(h.expires_at_s, h.command_id)
                        if h.knob == "floor" and i < h.applied.size:
                            st.floor_w[g] = float(h.applied[i])
                    else:
                        leases.pop(g, None)
                        st.floor_w.pop(g, None)
        for target, issued_at_s in order.items():
            self.targets.setdefault(target, _Target(tokens=float(self.burst))).last_issued_at_s = issued_at_s
        self.restored = len(handled)
        if handled or order:
            log.info("actuator %s: restored %d handled command id(s), the order of %d target(s) and %d lease(s) "
                     "from %s", self.actuator.name, len(handled), len(order),
                     sum(t.n_leases() for t in self.targets.values()), journal.path)

    def sync(self) -> None:
        """Make every outcome so far durable (before their acks are sent)."""
        if self.journal is not None:
            self.journal.commit()

    def _note(self, status: str, reason: str) -> str:
        if self.actuator.dry_run and status in ("applied", "clamped", "reverted"):
            return f"{reason}; dry run: nothing changed" if reason else "dry run: nothing changed"
        return reason

    def _ack(self, cmd: Command, status: str, applied: np.ndarray, reason: str, now_s: float) -> Ack:
        setattr(self.stats, status, getattr(self.stats, status) + 1)
        return Ack(command_id=cmd.id, site=cmd.site, target=cmd.target, status=status,
                   gpus=cmd.gpus, applied=np.asarray(applied, dtype=np.float32), reason=self._note(status, reason),
                   actuator=self.actuator.name, ts_s=now_s)

    def _reject(self, cmd: Command, reason: str, now_s: float, *, security: bool = False) -> Ack:
        if security:
            self.stats.security += 1
            self.security_refusals.append((cmd, reason))
            del self.security_refusals[:-1000]
        log.warning("refused command %s for %s: %s", cmd.id, cmd.target, reason)
        return self._ack(cmd, "rejected", np.full(cmd.gpus.size, np.nan), reason, now_s)

    def handle(self, cmd: Command, now_s: float) -> Ack:
        if cmd.shadow:  # checked before the signature: even one signed with a key this actuator trusts
            return self._reject(cmd, f"shadow command from {cmd.issuer!r}: what a policy under evaluation would "
                                     "have done, never applied", now_s, security=True)
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
                                            now_s), cmd)
        st = self.targets.setdefault(cmd.target, _Target(tokens=float(self.burst), refilled_at_s=now_s))
        if cmd.issued_at_s < st.last_issued_at_s:
            return self._remember(self._reject(cmd, "older than the last command applied to this target", now_s),
                                  cmd)
        st.tokens = min(float(self.burst), st.tokens + (now_s - st.refilled_at_s) * self.rate_per_s)
        st.refilled_at_s = now_s
        if st.tokens < 1.0:
            return self._reject(cmd, f"rate limit: more than {self.rate_per_s:g} commands/s for {cmd.target}", now_s)
        st.tokens -= 1.0
        if cmd.action in ACTION_KNOB:
            ack = self._apply_set(cmd, st, now_s, ACTION_KNOB[cmd.action])
        elif cmd.action == "release":
            knob = cmd.params.get("knob", "power")
            if knob not in KNOBS:
                ack = self._reject(cmd, f"release: params.knob = {knob!r}, expected one of {KNOBS}", now_s)
            else:
                ack = self._apply_release(cmd, st, now_s, str(knob))
        else:
            ack = self._reject(cmd, f"action '{cmd.action}' is not supported by actuator '{self.actuator.name}'",
                               now_s)
        return self._remember(ack, cmd)

    def _remember(self, ack: Ack, cmd: Command) -> Ack:
        self.seen[ack.command_id] = ack
        if self.journal is not None:
            self.journal.record(ack, cmd)
        while len(self.seen) > self.remember:
            self.seen.popitem(last=False)
        return ack

    def _apply_set(self, cmd: Command, st: _Target, now_s: float, knob: str) -> Ack:
        """A power limit (W), a clock lock (MHz) or a power floor (W) per GPU: finite, clamped to the
        hardware's range, applied, leased per GPU and knob, acked with what the hardware took."""
        gpus = cmd.gpus.astype(np.int64)
        want = cmd.values.astype(np.float64)
        if not np.all(np.isfinite(want)):
            unit = "MHz" if knob == "clock" else "watts"
            return self._reject(cmd, f"{cmd.action} values must be finite {unit}", now_s)
        if knob == "floor" and (want < 0).any():
            return self._reject(cmd, f"power_floor values must be >= 0 W, got {float(want.min()):g}", now_s)
        try:
            applied = self._set(cmd.target, knob, gpus, want)
        except ActuatorError as e:
            return self._reject(cmd, str(e), now_s)
        st.last_issued_at_s = cmd.issued_at_s
        leases = st.leases_of(knob)
        for g, v in zip(gpus.tolist(), applied.tolist(), strict=True):
            leases[g] = _Lease(cmd.expires_at_s(), cmd.id)
            if knob == "floor":
                st.floor_w[g] = v
        if knob == "power":
            self._floors_follow(cmd.target, st, gpus, applied)
        if np.allclose(applied, want, atol=0.5):
            return self._ack(cmd, "applied", applied, "", now_s)
        n = int((np.abs(applied - want) > 0.5).sum())
        what = {"power": "clamped to the GPU's power-limit range",
                "clock": "moved to the GPU's clock range or nearest supported clock",
                "floor": "lowered to the GPU's enforced power limit (the limit always wins)"}[knob]
        return self._ack(cmd, "clamped", applied, f"{n} value(s) {what}", now_s)

    def _set(self, target: str, knob: str, gpus: I64, want: F64) -> F64:
        if knob == "power":
            lo, hi, _ = self.actuator.limits_w(target, gpus)
            # never below the GPU's minimum, never above its maximum
            return self.actuator.set_power_limit(target, gpus, np.clip(want, lo, hi))
        if knob == "clock":
            lo, hi = self.actuator.clock_range_mhz(target, gpus)
            return self.actuator.lock_clocks(target, gpus, np.clip(want, lo, hi))
        # A floor never lifts a GPU above the limit it enforces now: the breaker policy's caps are not undone.
        return self.actuator.set_power_floor(target, gpus, np.minimum(want, self.actuator.enforced_limit_w(target,
                                                                                                        gpus)))

    def _floors_follow(self, target: str, st: _Target, gpus: I64, limit_w: F64) -> None:
        """A cap taken below a GPU's floor lowers the floor to it, so the floor never fights the cap."""
        over = [(g, w) for g, w in zip(gpus.tolist(), limit_w.tolist(), strict=True)
                if g in st.floor_leases and st.floor_w.get(g, 0.0) > w + 0.5]
        if not over:
            return
        g_over = np.array([g for g, _ in over], dtype=np.int64)
        try:
            got = self.actuator.set_power_floor(target, g_over, np.array([w for _, w in over]))
        except ActuatorError as e:
            # The hardware's limit still caps the GPU's draw; the stale floor only lapses with its lease.
            log.error("lowering the power floor of %s GPU(s) %s to their new cap failed: %s", target,
                      g_over.tolist(), e)
            return
        st.floor_w.update(zip(g_over.tolist(), got.tolist(), strict=True))

    def _safe(self, target: str, knob: str, gpus: I64) -> F64:
        """Put GPUs in the knob's safe state: the safe power limit, clocks unlocked, or no floor."""
        if knob == "clock":
            return self.actuator.reset_clocks(target, gpus)
        if knob == "floor":
            return self.actuator.clear_power_floor(target, gpus)
        _, _, safe = self.actuator.limits_w(target, gpus)
        return self.actuator.set_power_limit(target, gpus, safe)

    def _apply_release(self, cmd: Command, st: _Target, now_s: float, knob: str) -> Ack:
        gpus = cmd.gpus.astype(np.int64)
        try:
            applied = self._safe(cmd.target, knob, gpus)
        except ActuatorError as e:
            return self._reject(cmd, str(e), now_s)
        st.last_issued_at_s = cmd.issued_at_s
        leases = st.leases_of(knob)
        for g in gpus.tolist():
            leases.pop(g, None)
            if knob == "floor":
                st.floor_w.pop(g, None)
        if knob == "power":
            self._floors_follow(cmd.target, st, gpus, applied)
        return self._ack(cmd, "applied", applied, _SAFE_WHAT[knob], now_s)

    def _revert(self, target: str, knob: str, gpus: I64) -> tuple[I64, F64]:
        """Revert GPUs to the safe state; if the whole set fails, GPU by GPU so one lost GPU does not keep
        the healthy ones capped. Returns the GPUs reverted and their values."""
        try:
            return gpus, self._safe(target, knob, gpus)
        except ActuatorError as e:
            if gpus.size == 1:
                self._revert_failed(target, knob, int(gpus[0]), str(e))
                return gpus[:0], np.zeros(0)
        done: list[int] = []
        vals: list[float] = []
        for g in gpus.tolist():
            try:
                vals.append(float(self._safe(target, knob, np.array([g], dtype=np.int64))[0]))
                done.append(g)
            except ActuatorError as e:
                self._revert_failed(target, knob, g, str(e))
        return np.array(done, dtype=np.int64), np.array(vals, dtype=np.float64)

    def _revert_failed(self, target: str, knob: str, gpu: int, msg: str) -> None:
        # Retried every expiry pass until it succeeds; log only when the failure changes.
        if self._revert_errors.get((target, knob, gpu)) != msg:
            self._revert_errors[(target, knob, gpu)] = msg
            log.error("reverting %s GPU %d (%s) after lease expiry failed: %s", target, gpu, knob, msg)

    def expire(self, now_s: float) -> list[Ack]:
        """Revert every GPU whose lease lapsed (power limit to its safe value, clock lock reset); one
        'reverted' ack per target and knob."""
        acks: list[Ack] = []
        for target, st in self.targets.items():
            for knob in KNOBS:
                leases = st.leases_of(knob)
                lapsed = sorted(g for g, lease in leases.items() if lease.expires_at_s < now_s)
                if not lapsed:
                    continue
                ids = sorted({leases[g].command_id for g in lapsed})
                gpus, applied = self._revert(target, knob, np.array(lapsed, dtype=np.int64))
                if not gpus.size:
                    continue
                for g in gpus.tolist():
                    del leases[g]
                    if knob == "floor":
                        st.floor_w.pop(g, None)
                    self._revert_errors.pop((target, knob, g), None)
                if knob == "power":  # a safe limit below a floor (safe_limit "min") lowers the floor too
                    self._floors_follow(target, st, gpus, applied)
                if self.journal is not None:
                    self.journal.record_revert(target, knob, gpus, now_s)
                self.stats.reverted += 1
                log.warning("%s lease lapsed on %d GPU(s) of %s; %s", knob, gpus.size, target, _REVERT_WHAT[knob])
                lease = {"power": "lease", "clock": "clock lock lease", "floor": "power floor lease"}[knob]
                acks.append(Ack(command_id=f"lease-expiry:{ids[-1]}", site=self.site, target=target,
                                status="reverted", gpus=gpus.astype(np.uint16), applied=applied.astype(np.float32),
                                reason=self._note("reverted", f"{lease} of {', '.join(ids[:3])} lapsed unrenewed"
                                                  + ("" if knob == "power" else f"; {_SAFE_WHAT[knob]}")),
                                actuator=self.actuator.name, ts_s=now_s))
        return acks
