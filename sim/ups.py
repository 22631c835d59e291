"""UPS units of the twin and their SNMP signal: polled readings and traps, as `pp.facility` records.

One UPS per UPS lineup of the site model (levels of kind "ups"). Each is online (its utility feed is up),
on battery (its feed is lost), or off (the lineup itself is lost or tripped, or its battery ran out). The
battery holds `runtime_at_rated_s` at the lineup's rating (energy = rating x runtime); on battery it
discharges with the load the lineup carried when its input failed (the twin moves a lost feed's racks to
the other feed at once, a real UPS keeps its output bus up for the ride-through: the battery follows the
UPS, not the twin's transfer); online it recharges linearly over `recharge_s`. Time remaining = energy
left / load (linear: no Peukert effect; an assumption, see docs/twin.md).

The signal, as a UPS network card and the collectors would deliver it (the field meanings of
`FacilityReading`, `collectors/snmp/README.md`):

- polls every `poll_interval_s` per UPS (its own phase), `via="poll"`: input voltage and frequency per phase
  (nominal with a little noise, 0 on a dead input), output power and load per phase, output source,
  battery charge and time remaining, alarms;
- traps on state changes, `via="trap"`, named as Eaton's XUPS-MIB xupsTrapDefined family names them
  (xupstdOnBattery, xupstdUtilityPowerRestored, ...) and carrying what `collectors/snmp/traps.py` makes of
  them; each arrives after a latency drawn uniformly from `trap_latency_ms` and is lost with probability
  `trap_loss`; the on-battery trap is resent every `trap_repeat_s` while on battery (RFC 1628);
- `false_trap`: an on-battery trap for a lineup whose feed is fine, at a scenario time.

The plant calls `sync` when the feeds may have changed (with the time of the change) and `advance` at the
end of each step (with the lineups' load); `due(now_s)` hands out every record delivered by `now_s`, in
delivery order. Deterministic for a seed; draws from its own generator, so the plant's frames do not change.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from powerplane.schemas import FacilityReading
from powerplane.site import FEEDS, FloatArray, Site
from sim.scenario_config import UpsConfig

BoolArray = npt.NDArray[np.bool_]

# What the trap receiver writes as a trap's interval_s (collectors/snmp/trap_config.py): how long its event
# stands without another one, the period at which RFC 1628 repeats upsTrapOnBattery.
TRAP_INTERVAL_S = 60.0
TRAP_FAMILY = "xupstd"
VOLTAGE_NOISE = 0.002  # relative, per poll and phase (assumption: a steady utility feed)
FREQUENCY_NOISE_HZ = 0.01
MIN_LOAD_FRAC = 0.01  # time remaining is computed at no less than 1 % of the rating (no division by ~0)


@dataclass(frozen=True)
class Trap:
    """A notification and what the receiver makes of it (collectors/snmp/traps.py, XUPS_TRAPS)."""

    name: str
    on_battery: bool | None = None
    raised: tuple[str, ...] = ()
    cleared: tuple[str, ...] = ()


ON_BATTERY = Trap("OnBattery", on_battery=True, raised=("on_battery",))
POWER_RESTORED = Trap("UtilityPowerRestored", on_battery=False, cleared=("input_bad", "on_battery"))
LOW_BATTERY = Trap("LowBattery", raised=("low_battery",))
RETURN_FROM_LOW = Trap("ReturnFromLowBattery", cleared=("low_battery",))
DISCHARGED = Trap("BatteryDischarged", raised=("battery_depleted",))
OUTPUT_OFF = Trap("OutputOff", raised=("output_off",))
OUTPUT_BACK = Trap("AlarmEntryRemoved", cleared=("output_off",))  # the output-off alarm leaves the table


class UpsBank:
    """Every UPS of a site, its battery and its signal. See the module docstring."""

    def __init__(self, site: Site, cfg: UpsConfig | None = None, seed: int = 0, epoch_s: float = 0.0,
                 source: str = "twin-ups") -> None:
        self.site, self.cfg, self.epoch_s, self.source = site, cfg or UpsConfig(), epoch_s, source
        self.level = site.levels_of_kind("ups")
        self.lineups = [site.level_ids[i] for i in self.level]
        self.feeds = [FEEDS[int(site.level_feed[i])] for i in self.level]
        self.parent = site.level_parent[self.level]  # the utility feed level above each lineup (-1: none)
        self.rated_w = np.maximum(site.level_rated_w[self.level].astype(np.float64), 1.0)
        n = len(self.lineups)
        self.capacity_j = self.rated_w * self.cfg.runtime_at_rated_s
        self.energy_j = self.capacity_j.copy()
        self.input_ok: BoolArray = np.ones(n, dtype=bool)
        self.unit_ok: BoolArray = np.ones(n, dtype=bool)
        self.low: BoolArray = np.zeros(n, dtype=bool)
        self.depleted: BoolArray = np.zeros(n, dtype=bool)
        self.load_w: FloatArray = np.zeros(n)  # what each lineup carried at the last step while fed
        self.held_w: FloatArray = np.zeros(n)  # the load its battery carries (the load when the input failed)
        self.t_s = 0.0  # the battery's clock: simulated seconds
        self.rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5550,)))
        self.next_poll_s = self.rng.uniform(0.0, self.cfg.poll_interval_s, n)  # each card at its own phase
        self.next_repeat_s = np.full(n, math.inf)
        self._queue: list[tuple[float, int, dict[str, Any]]] = []  # (delivery time, order, record fields)
        self._order = 0
        self._seq: dict[str, int] = {}
        self.traps_sent = 0
        self.traps_lost = 0

    # ---- what the plant tells it ------------------------------------------------------------------
    @property
    def on_battery(self) -> BoolArray:
        return ~self.input_ok & self.unit_ok & ~self.depleted

    def index(self, lineup: str) -> int:
        try:
            return self.lineups.index(lineup)
        except ValueError:
            raise KeyError(f"'{lineup}' is not a UPS lineup of site '{self.site.name}'") from None

    def inputs_from_levels(self, level_alive: BoolArray) -> tuple[BoolArray, BoolArray]:
        """(input up, unit up) per UPS from the twin's live levels: the input is the utility level above."""
        parent_ok = np.where(self.parent >= 0, level_alive[np.maximum(self.parent, 0)], True)
        return parent_ok.astype(bool), level_alive[self.level].astype(bool)

    def inputs_from_feed(self, lost_feed: int | None) -> tuple[BoolArray, BoolArray]:
        """(input up, unit up) per UPS when a whole feed (index into FEEDS) is lost: the simple fleet."""
        up = np.array([lost_feed is None or FEEDS.index(f) != lost_feed for f in self.feeds], dtype=bool)
        return up, np.ones(len(self.lineups), dtype=bool)

    def sync(self, t_s: float, input_ok: BoolArray, unit_ok: BoolArray) -> None:
        """The feeds as they are from `t_s` on: a change of a UPS's input or output sends its trap."""
        self._run_battery(t_s)
        t = max(t_s, self.t_s)
        for i in np.flatnonzero(unit_ok != self.unit_ok).tolist():
            self.unit_ok[i] = bool(unit_ok[i])
            self._trap(i, t, OUTPUT_BACK if self.unit_ok[i] else OUTPUT_OFF)
        for i in np.flatnonzero(input_ok != self.input_ok).tolist():
            self.input_ok[i] = bool(input_ok[i])
            if not self.input_ok[i]:
                self.held_w[i] = self.load_w[i]
                self._trap(i, t, ON_BATTERY, battery_remaining_s=self.remaining_s(i))
                self.next_repeat_s[i] = t + self.cfg.trap_repeat_s if self.cfg.trap_repeat_s > 0 else math.inf
            else:
                self.next_repeat_s[i] = math.inf
                self._trap(i, t, POWER_RESTORED)
                if self.low[i] or self.depleted[i]:  # simplification: the battery counts as OK once fed
                    self._trap(i, t, RETURN_FROM_LOW)
                self.low[i] = self.depleted[i] = False

    def advance(self, t_s: float, lineup_load_w: FloatArray) -> None:
        """The end of a plant step at `t_s`: the battery up to then, the lineups' load, the polls due."""
        self._run_battery(t_s)
        fed = self.input_ok & self.unit_ok
        self.load_w = np.where(fed, np.asarray(lineup_load_w, dtype=np.float64), self.load_w)
        for i in range(len(self.lineups)):
            while self.next_poll_s[i] <= t_s + 1e-9:
                self._push(float(self.next_poll_s[i]), self._poll(i))
                self.next_poll_s[i] += self.cfg.poll_interval_s

    def false_trap(self, lineup: str, t_s: float) -> None:
        """An on-battery trap from a UPS whose feed is fine (scenario `false_trap`)."""
        i = self.index(lineup)
        self._trap(i, t_s, ON_BATTERY, battery_remaining_s=self.remaining_s(i))

    def due(self, now_s: float) -> list[FacilityReading]:
        """Every record delivered by simulated time `now_s`, in delivery order (each handed out once)."""
        out: list[FacilityReading] = []
        while self._queue and self._queue[0][0] <= now_s + 1e-9:
            t, _, fields = heapq.heappop(self._queue)
            src = str(fields["source"])
            self._seq[src] = seq = self._seq.get(src, 0) + 1
            out.append(FacilityReading(site=self.site.name, kind="ups", ts_s=self.epoch_s + t, seq=seq, **fields))
        return out

    # ---- the model --------------------------------------------------------------------------------
    def remaining_s(self, i: int) -> float:
        """Battery time at the present load (the held load on battery), as the card estimates it."""
        load = self.held_w[i] if not self.input_ok[i] else self.load_w[i]
        return float(self.energy_j[i] / max(load, MIN_LOAD_FRAC * self.rated_w[i]))

    def _run_battery(self, t_s: float) -> None:
        """Discharge (on battery) or recharge (online) up to `t_s`; low-battery, depletion and repeated
        on-battery traps at the times they fall within the interval."""
        t0 = self.t_s
        dt = t_s - t0
        if dt <= 0:
            return
        cfg = self.cfg
        for i in np.flatnonzero(self.on_battery).tolist():
            e0, p = float(self.energy_j[i]), float(self.held_w[i])
            while self.next_repeat_s[i] <= t_s:
                self._trap(i, float(self.next_repeat_s[i]), ON_BATTERY,
                           battery_remaining_s=max(0.0, e0 - p * (self.next_repeat_s[i] - t0)) / max(p, 1.0))
                self.next_repeat_s[i] += cfg.trap_repeat_s
            if p <= 0:
                continue
            t_low = t0 + (e0 - p * cfg.low_battery_s) / p
            if not self.low[i] and t_low <= t_s:
                self.low[i] = True
                self._trap(i, max(t_low, t0), LOW_BATTERY)
            t_empty = t0 + e0 / p
            self.energy_j[i] = max(0.0, e0 - p * dt)
            if t_empty <= t_s:
                self.depleted[i] = True
                self.next_repeat_s[i] = math.inf
                self._trap(i, t_empty, DISCHARGED)
                self._trap(i, t_empty, OUTPUT_OFF)
        online = self.input_ok & self.unit_ok
        self.energy_j = np.where(online, np.minimum(self.capacity_j, self.energy_j + self.capacity_j / cfg.recharge_s
                                                    * dt), self.energy_j)
        self.t_s = t_s

    def _trap(self, i: int, t_event_s: float, trap: Trap, battery_remaining_s: float | None = None) -> None:
        """A trap sent at `t_event_s`: queued for its arrival after the latency, unless lost on the way."""
        lo, hi = self.cfg.trap_latency_ms
        latency_s = float(self.rng.uniform(lo, hi)) / 1e3
        if float(self.rng.random()) < self.cfg.trap_loss:  # both drawn always: the stream does not depend on it
            self.traps_lost += 1
            return
        self.traps_sent += 1
        self._push(t_event_s + latency_s, dict(
            unit=self.lineups[i], interval_s=TRAP_INTERVAL_S, source=f"trap:{self.lineups[i]}",
            lineup=self.lineups[i], feed=self.feeds[i], via="trap", trap=f"{TRAP_FAMILY}{trap.name}",
            on_battery=trap.on_battery, alarm_kinds=list(trap.raised) or None,
            cleared_kinds=list(trap.cleared) or None,
            battery_remaining_s=None if battery_remaining_s is None else max(0.0, battery_remaining_s)))

    def _poll(self, i: int) -> dict[str, Any]:
        """What an SNMP poll of UPS i reads now (fields of a FacilityReading)."""
        cfg, n = self.cfg, self.cfg.phases
        fed, on_bat = bool(self.input_ok[i]), bool(self.on_battery[i])
        volts = cfg.voltage_v * (1.0 + self.rng.normal(0.0, VOLTAGE_NOISE, n)) if fed else np.zeros(n)
        hz = cfg.frequency_hz + self.rng.normal(0.0, FREQUENCY_NOISE_HZ, n) if fed else np.zeros(n)
        out_w = float(self.load_w[i]) if fed and self.unit_ok[i] else float(self.held_w[i]) if on_bat else 0.0
        source = "normal" if fed and self.unit_ok[i] else "battery" if on_bat else "none"
        kinds = set()
        if not fed:
            kinds |= {"input_bad", "on_battery"} if on_bat else {"input_bad"}
        if self.low[i]:
            kinds.add("low_battery")
        if self.depleted[i]:
            kinds.add("battery_depleted")
        if source == "none":
            kinds.add("output_off")
        return dict(
            unit=self.lineups[i], interval_s=cfg.poll_interval_s, source=self.source, lineup=self.lineups[i],
            feed=self.feeds[i], via="poll", input_voltage_v=[float(v) for v in volts],
            input_frequency_hz=[float(f) for f in hz], output_power_w=[out_w / n] * n,
            output_load_pct=[100.0 * out_w / float(self.rated_w[i])] * n, output_source=source,
            on_battery=on_bat, on_bypass=False, battery_remaining_s=self.remaining_s(i),
            battery_charge_pct=float(100.0 * self.energy_j[i] / self.capacity_j[i]), alarms=len(kinds),
            alarm_kinds=sorted(kinds))

    def _push(self, t_s: float, fields: dict[str, Any]) -> None:
        self._order += 1
        heapq.heappush(self._queue, (t_s, self._order, fields))
