"""The controller's state and decisions, `CapController`, with no I/O: it takes aggregates (the load and
limit of every level), headroom (each zone's thermal headroom) and telemetry frames (per-GPU power and
enforced limits); `decide` runs the hierarchical capping policy (controllers.capping) and the thermal policy
(controllers.thermal) under the degraded-mode rules (controllers.degraded, docs/safety.md) and returns
signed, leased commands, one per rack and knob that changes; what it holds is renewed before its lease runs
out. The Kafka shell is controllers/service.py; the in-process engine (ops/engine.py) drives the same
class. Just over 500 lines long because the decision is one state machine over one set of arrays (the policies
themselves live in capping, thermal, guard, degraded and grid_limits).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controllers.capping import (
    CapSettings,
    brake_levels,
    decide_caps,
    feed_share,
    gpu_efficiency,
    power_levels,
    tree_of,
    worst_level,
)
from controllers.degraded import (
    Freshness,
    behind,
    bounded_estimate_w,
    evidence_w,
    fresh,
    racks_under,
    stale_inputs,
    unsure_racks,
)
from controllers.facility import ControllerSignals
from controllers.grid_limits import FloorRefusals, GridControl
from controllers.guard import GuardSettings, single_feed_guard
from controllers.thermal import STAGES, ThermalSettings, decide_thermal, sustained_climb
from powerplane.grid import DemandResponse
from powerplane.rack_layout import RackLayout
from powerplane.schemas import Ack, Command, FacilityReading, Headroom, LevelAggregate, SchemaError, TelemetryFrame
from powerplane.signing import Keyring
from powerplane.site import KIND, Site

log = logging.getLogger("powerplane.controller")


@dataclass
class ControllerStats:
    commands: int = 0
    renewals: int = 0
    held_decisions: int = 0  # decisions that held every cap because the inputs were stale (fail-static)
    brakes_unconfirmed: int = 0  # decisions where one source alone put a level over the brake threshold
    acks: dict[str, int] = field(default_factory=dict)
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    acks_refused: int = 0  # unsigned, tampered or unknown-key acks: dead-lettered, never believed
    acks_unknown: int = 0  # validly signed acks for a command this controller did not issue: logged, not counted
    floors_refused: int = 0  # power_floor commands rejected for want of the knob (H100s): those GPUs left alone


DEFAULT_THERMAL = ThermalSettings()


class CapController:
    """State and decisions; no I/O (the run loop below, and the in-process engine, feed it).

    It keeps the latest load and limit of every level (from aggregates: racks and PDUs per frame, the
    levels above per window), each zone's thermal headroom (from headroom records), and each GPU's
    power and enforced limit (from telemetry), and once a tick runs the capping and thermal policies
    over them. Commands go out per rack: power caps, SM clock locks, routing weights, each leased and
    renewed while it holds."""

    def __init__(self, site: Site, keyring: Keyring, settings: CapSettings, lease_s: float,
                 issuer: str = "capping-controller", thermal: ThermalSettings | None = DEFAULT_THERMAL,
                 actions: frozenset[str] = frozenset(("power_cap", "sm_clock_lock", "routing_weight"))) -> None:
        self.site = site
        self.keyring = keyring
        self.settings = settings
        self.thermal = thermal  # None: thresholds-only capping (no routing, clocks or heat budgets)
        self.lease_s = lease_s
        self.issuer = issuer
        self.actions = actions  # which knobs this deployment has actuators for
        self.guard = GuardSettings()
        self.guarded = np.full(site.n_racks, np.nan)  # per rack: worst case / surviving PDU's rating, if guarded
        self.side_dark = np.zeros((site.n_racks, 2), dtype=bool)  # which PDU of each rack was dark, last decision
        n_levels = len(site.level_ids)
        self.level_power_w = np.full(n_levels, np.nan)
        self.level_seen_s = np.full(n_levels, -np.inf)  # arrival time (our clock)
        self.level_ts_s = np.full(n_levels, -np.inf)  # event time of the reading (the meter's clock)
        _, self.limit_w = site.limits_w("normal")  # replaced by each aggregate's limit in its feed state
        self.limit_w = self.limit_w.copy()
        self.settle_s = 0.5  # a cap needs this long to show in a reading (NVML applies in < 100 ms)
        self.zones = site.levels_of_kind("zone")
        self.zone_headroom_c = np.full(self.zones.size, np.nan)
        self.zone_ttl_s = np.full(self.zones.size, np.nan)
        self.zone_seen_s, self.zone_ts_s = np.full((2, self.zones.size), -np.inf)  # arrival, event time
        self.zone_stage = np.zeros(self.zones.size, dtype=np.int64)
        self.zone_climb_since_s = np.full(self.zones.size, np.inf)  # since when the inlet has been climbing
        self.zone_climb_from_w = np.full(self.zones.size, np.nan)  # the zone's load then
        self._zone_pos = {int(z): i for i, z in enumerate(self.zones)}
        self.over_since_s = np.full(n_levels, np.inf)
        self.rack_complete = np.zeros(site.n_racks, dtype=bool)
        self.estimate_margin = 0.15  # GPU-based rack power reads up to ~15 % high (PSU and non-GPU model)
        self.gpu_power_w = np.full(site.n_gpus, np.nan)
        self.gpu_frame_ts_s = np.full(site.n_gpus, -np.inf)  # event time of each GPU's newest reading
        self.layout = RackLayout(site)  # a frame's (server, slot) pairs -> GPUs (frames may be partial)
        self.cap_w = np.full(site.n_gpus, np.nan)  # NaN until the enforced limit has been seen
        self.clock_mhz = np.full(site.n_gpus, np.nan)  # clock locks this controller holds (NaN: none)
        self.route_w = np.ones(site.n_gpus)  # routing weights this controller holds
        self.rack_sent_s = np.full(site.n_racks, -np.inf)
        # The wall power a rack's cap changes should move (negative: shed) and when they were made, until
        # readings show them.
        self.rack_pending_w = np.zeros(site.n_racks)
        self.rack_pending_s = np.full(site.n_racks, -np.inf)
        self.rack_knob_sent_s = np.full((3, site.n_racks), -np.inf)  # clocks, routing, floors: last sent
        self.grid_floor_w = np.full(site.n_gpus, np.nan)  # power floors this controller holds (NaN: none)
        self.stats = ControllerStats()
        self.freshness = Freshness()
        self.level_meter_w = np.full(n_levels, np.nan)  # a PDU's own meter (NaN: none in its last reading)
        # When each PDU meter's value last changed: a PDU refreshes its meter every ~10 s (SNMP) and a frame
        # between refreshes repeats the held value under a newer timestamp; that value was measured no later
        # than when it first appeared, so it cannot show a cap change made since (issue 14).
        self.pdu_meter_ts_s = np.full(n_levels, -np.inf)
        self.level_estimated = np.zeros(n_levels, dtype=bool)  # window counting too many racks as stale
        self.level_behind = np.zeros(n_levels, dtype=bool)  # the streams stage said it is behind
        # The last load of each level taken as evidence, and the streams' forecast for it (pp.headroom): what a
        # level that falls silent is estimated from (controllers.degraded.bounded_estimate_w).
        self.level_last_w = np.full(n_levels, np.nan)
        self.level_last_ts_s = np.full(n_levels, -np.inf)
        self.level_p50_w, self.level_p99_w = np.full((2, n_levels), np.nan)
        self.level_forecast_ts_s = np.full(n_levels, -np.inf)
        # Per-GPU telemetry per rack, and the newest per-frame aggregate (rack or PDU): arrival, event time.
        self.rack_frame_seen_s, self.rack_frame_ts_s = np.full((2, site.n_racks), -np.inf)
        self.inputs_seen_s = self.inputs_ts_s = -np.inf
        self.holding: str | None = None  # why the last decision held every cap (None: it decided)
        self.tree = tree_of(site)
        self.rack_ids = site.rack_ids  # commands name racks: built once, not per command
        self.pdus = site.levels_of_kind("pdu")
        self.feed_levels = np.isin(site.level_kind, [KIND[k] for k in ("utility", "ups", "rpp")])
        has_kids = np.zeros(n_levels, dtype=bool)
        has_kids[site.level_parent[site.level_parent >= 0]] = True
        self.summed_levels = self.feed_levels & has_kids  # what _feed_estimates may sum from the PDUs
        self.racks_under = racks_under(self.tree)
        self.signals = ControllerSignals(site)  # UPS lineups on battery (pp.facility): feed-lost limits at once
        self.grid = GridControl(site, settings, send_floors="power_floor" in actions)  # the utility's limits
        self.floor_refusals = FloorRefusals(site)  # GPUs whose actuator has no floor: not asked for a while

    # ---- inputs ------------------------------------------------------------------------------------
    def on_aggregate(self, agg: LevelAggregate, now_s: float) -> None:
        if agg.site != self.site.name:
            return
        i = self.site.level_index.get(agg.level)
        if i is None or agg.ts_s < self.level_ts_s[i]:
            return  # a late window must not overwrite a newer reading
        self.level_power_w[i] = agg.power_w
        self.level_seen_s[i] = now_s
        self.level_ts_s[i] = agg.ts_s
        self.level_behind[i] = behind(agg, self.freshness.max_event_age_s)
        if agg.kind in ("rack", "pdu"):  # per frame: what says whether the pipeline keeps up
            self.inputs_seen_s = max(self.inputs_seen_s, now_s)
            self.inputs_ts_s = max(self.inputs_ts_s, agg.ts_s)
        else:  # a window that counts many racks from old readings or at rated power is an estimate
            stale = agg.racks_stale or 0
            self.level_estimated[i] = stale > self.freshness.max_estimated_share * max(int(self.racks_under[i]), 1)
        if agg.kind == "pdu":
            metered = agg.metered_w if agg.metered_w is not None else np.nan
            if metered != self.level_meter_w[i]:  # a new measurement (NaN never equals: counts as new)
                self.pdu_meter_ts_s[i] = agg.ts_s
            self.level_meter_w[i] = metered
        if agg.kind == "rack":  # a rack's GPU-based power is only a fair PDU estimate when every GPU reported
            self.rack_complete[self.site.rack_index(agg.level)] = agg.gpus_reporting >= agg.gpus_expected
        if math.isfinite(agg.limit_w) and agg.kind not in ("pdu", "rack", "zone"):
            # Upper levels carry the limit of the current feed state (0 when dark); a PDU keeps its own.
            self.limit_w[i] = agg.limit_w

    def on_facility(self, r: FacilityReading, now_s: float) -> tuple[bool, str]:
        """A facility reading (pp.facility): (a lineup newly on battery: decide now, why it is refused or "")."""
        return self.signals.take(r, now_s)

    def on_demand_response(self, ev: DemandResponse, load0_w: float | None = None) -> str:
        """A demand-response request (controllers.grid_limits): held from its start time; a one-line summary."""
        return self.grid.on_demand_response(ev, self.level_power_w, load0_w)

    def on_job_notice(self, name: str, gpus: np.ndarray, start_s: float, expected_w: float | None = None) -> str:
        """A scheduler's notice of a job's start (controllers.grid_limits): floors ramp its GPUs up before it."""
        return self.grid.on_job_notice(name, gpus, start_s, expected_w)

    def on_ack(self, ack: Ack, now_s: float) -> bool:
        """An actuator's signed ack of a command issued here: True where it refuses a power floor for want of
        the knob (controllers.grid_limits.FloorRefusals), counted and logged there; those GPUs hold no floor."""
        gpus = self.floor_refusals.take(ack, now_s)
        if gpus is None:
            return False
        self.grid_floor_w[gpus] = np.nan  # nothing held: no release to send for it
        self.stats.floors_refused += 1
        return True

    def on_headroom(self, h: Headroom, now_s: float) -> None:
        if h.site != self.site.name:
            return
        if h.kind != "zone":  # a power level's forecast: the bound on its load should it fall silent
            i = self.site.level_index.get(h.level)
            if i is not None and h.ts_s >= self.level_forecast_ts_s[i]:
                self.level_p50_w[i], self.level_p99_w[i] = h.forecast_p50_w, h.forecast_p99_w
                self.level_forecast_ts_s[i] = h.ts_s
            return
        z = self._zone_pos.get(self.site.level_index.get(h.level, -1))
        if z is None or h.ts_s < self.zone_ts_s[z]:  # an older window (one published again at a handover) is stale
            return
        self.zone_headroom_c[z] = h.thermal_headroom_c if h.thermal_headroom_c is not None else np.nan
        self.zone_ttl_s[z] = h.time_to_limit_s if h.time_to_limit_s is not None else np.nan
        self.zone_seen_s[z] = now_s
        self.zone_ts_s[z] = h.ts_s

    def crosses_cap(self, agg: LevelAggregate) -> bool:
        """Whether this breaker's load (a PDU per frame; an RPP, UPS lineup or feed per window) is over the
        cap threshold of its limit and the last reading was not (or there was none): decide now."""
        i = self.site.level_index.get(agg.level)
        if agg.kind not in ("pdu", "rpp", "ups", "utility") or agg.site != self.site.name or i is None:
            return False
        # Above the PDU the window carries the limit of the current feed state: a loss halves it at once.
        limit = agg.limit_w if agg.kind != "pdu" and math.isfinite(agg.limit_w) else self.limit_w[i]
        over = self.settings.cap_threshold * limit
        return bool(agg.power_w > over and not self.level_power_w[i] > self.settings.cap_threshold * self.limit_w[i])

    def on_frame(self, fr: TelemetryFrame, now_s: float | None = None) -> None:
        """now_s: when it arrived (our clock); None takes its event time (the in-process engine)."""
        if fr.site != self.site.name:
            raise SchemaError(f"telemetry.frame {fr.rack}: site '{fr.site}', this controller serves '{self.site.name}'")
        r = self.site.rack_index(fr.rack)
        if not fr.power_w.size:
            return  # a PDU's or a BMC's frame: no GPU to cap, and a rack reports by its GPUs
        a = int(self.site.rack_gpu_start[r])
        if self.layout.canonical(r, fr.gpu_server, fr.gpu_slot):
            g = np.arange(a, a + fr.power_w.size)
        else:  # a part of the rack (one server's GPUs, from NVML or DCGM)
            pos, why = self.layout.locate(r, fr.gpu_server, fr.gpu_slot)
            if why:
                raise SchemaError(f"telemetry.frame {fr.rack} from '{fr.source}': {why}")
            g = a + pos
        newer = fr.ts_s >= self.gpu_frame_ts_s[g]  # an older frame must not overwrite a newer reading
        if not newer.any():
            return
        g = g[newer]
        self.gpu_power_w[g] = fr.power_w[newer]
        self.gpu_frame_ts_s[g] = fr.ts_s
        if fr.ts_s >= self.rack_frame_ts_s[r]:
            self.rack_frame_seen_s[r] = fr.ts_s if now_s is None else now_s
            self.rack_frame_ts_s[r] = fr.ts_s
        seen = self.cap_w[g]
        # Adopt the enforced limit the first time a GPU is seen (e.g. after a controller restart).
        self.cap_w[g] = np.where(np.isnan(seen), fr.limit_w[newer], seen)

    # ---- decisions -----------------------------------------------------------------------------------
    def decide(self, now_s: float) -> list[Command]:
        """Commands for now. While a UPS says a lineup is on battery (within the signal's bound) the levels under
        it are taken at the feed-lost limits for this decision (controllers.facility)."""
        base = self.limit_w
        self.limit_w = self.signals.limits(base, now_s)
        try:
            return self._decide(now_s)
        finally:
            self.limit_w = base

    def _decide(self, now_s: float) -> list[Command]:
        s, tree, f = self.settings, self.tree, self.freshness
        stage_behind = bool(self.level_behind[self.level_seen_s >= now_s - f.max_arrival_age_s].any())
        why = stale_inputs(now_s, self.inputs_seen_s, self.inputs_ts_s, stage_behind, f)
        if why is not None:  # fail-static: hold every cap and renew its lease; never escalate on stale data
            if self.holding is None:
                log.warning("inputs stale (%s): holding every cap, renewing leases", why)
            self.holding = why
            self.stats.held_decisions += 1
            return self._hold(now_s)
        if self.holding is not None:
            log.info("inputs fresh again: deciding (held while %s)", self.holding)
            self.holding = None
        ok = fresh(now_s, self.level_seen_s, self.level_ts_s, f) & ~self.level_behind
        use = ok & ~self.level_estimated
        took = use & np.isfinite(self.level_power_w)
        self.level_last_w = np.where(took, self.level_power_w, self.level_last_w)
        self.level_last_ts_s = np.where(took, self.level_ts_s, self.level_last_ts_s)
        # PDU meters measured before our last change to their rack (a held SNMP value) cannot show it; where the
        # rack's GPU frames already do, those stand for the meter (_pdu_loads).
        changed_s = self.rack_pending_s + self.settle_s
        meter_old = (changed_s[:, None] > self.pdu_meter_ts_s[self.site.rack_pdu]) & \
            (changed_s <= self.rack_frame_ts_s)[:, None]
        # Which PDU of each rack is below a dark feed level (a zero limit from the stage): once per decision.
        self.side_dark = self.site.dark_below(self.feed_levels & (self.limit_w <= 0))[self.site.rack_pdu]
        load = self._pdu_loads(np.where(use, self.level_power_w, np.nan), self.side_dark, meter_old)
        # A load measured before our last change to a rack under it cannot show that change yet; acting on it
        # as it is would shed (or release) the same watts twice. Each such level is taken at its reading plus
        # the change still to show (a shed is negative), so a level goes on being acted on for racks whose
        # changes are visible while others are in flight. A change shows in readings measured `settle_s`
        # after it. (Assumes NTP-synchronised clocks; skew only delays when a change counts as visible.)
        share = feed_share(self.site, load)
        coef = tree.coef(share)
        unseen = self.rack_pending_s[tree.rack] + self.settle_s > self.level_ts_s[tree.level]
        pending = np.bincount(tree.level, weights=np.where(unseen, coef * self.rack_pending_w[tree.rack], 0.0),
                              minlength=len(self.site.level_ids))
        load = self._feed_estimates(load + pending, meter_old)
        # A level with nothing fresh: a bounded estimate from its last fresh load (sheds by the thresholds,
        # never brakes: the brake takes its own evidence below; never releases: `hold` below).
        silent_level = power_levels(self.site) & ~np.isfinite(load)
        load = np.where(silent_level, bounded_estimate_w(now_s, self.level_last_w, self.level_last_ts_s,
                                                         self.level_p50_w, self.level_p99_w,
                                                         self.level_forecast_ts_s, f), load)
        # The brake: the PDU meters and the racks' GPU-based power beneath a level, both fresh, both over.
        rack_silent = ~fresh(now_s, self.rack_frame_seen_s, self.rack_frame_ts_s, f)
        rl = self.site.rack_level
        rack_gpu = np.where(ok[rl] & self.rack_complete & ~rack_silent, self.level_power_w[rl], np.nan)
        meter_w, gpu_w = evidence_w(self.site, tree, np.where(ok, self.level_meter_w, np.nan), rack_gpu, share)
        brake, self.over_since_s = brake_levels(meter_w + pending, self.limit_w, self.over_since_s, now_s, s,
                                                confirm_w=gpu_w + pending)
        self.stats.brakes_unconfirmed += int((power_levels(self.site) & ~brake & (self.limit_w > 0) &
                                              (load > s.brake_threshold * self.limit_w)).any())
        heat, th = self._thermal(now_s, load)
        dr = self.grid.budget_w(now_s, load)  # demand response (controllers.grid_limits)
        budget = np.fmin(heat, dr)
        # Only the levels decide_caps brakes (breakers, and a zone under a heat budget): a rack, row or the site
        # over its nameplate is no breaker, and a brake read there labelled its racks' releases "power brake".
        brake = brake & (power_levels(self.site) | np.isfinite(budget))
        known = ~np.isnan(self.cap_w)
        # A GPU of a silent rack counts as drawing its cap (decide_caps), never as its last reading.
        # So does a GPU whose own source stopped while the rest of its rack reports (partial frames: one server's).
        gpu_silent = rack_silent[self.site.gpu_rack] | (now_s - self.gpu_frame_ts_s > f.max_event_age_s)
        gpu_w_now = np.where(gpu_silent, np.nan, self.gpu_power_w)
        new = decide_caps(self.site, gpu_w_now, self.cap_w, load, self.limit_w, s,
                          brake=brake, heat_budget_w=budget)
        if np.isfinite(dr).any():  # what only the request cuts goes at the ramp-down pace; a breaker's cut never
            base = decide_caps(self.site, gpu_w_now, self.cap_w, load, self.limit_w, s, brake=brake, heat_budget_w=heat)
            new = self.grid.limit_shed(self.cap_w, base, new, gpu_w_now)
        # A rack on one feed: its worst case must fit its surviving PDU before its work starts (controllers.guard).
        new, self.guarded = single_feed_guard(self.site, new, self.side_dark, self.guard)
        # Release only where every input above the rack is fresh: a silent rack or a level that has gone
        # stale keeps its caps (it may still be shed on fresh evidence from a level above it).
        had = np.isfinite(self.level_seen_s) & power_levels(self.site)
        hold = unsure_racks(tree, coef, had & ~use & (silent_level | ~np.isfinite(load)), rack_silent)
        new = np.where(known, np.where(hold[self.site.gpu_rack], np.fmin(new, self.cap_w), new), self.cap_w)
        new, floor = self.grid.ramp_limit(self.cap_w, new, gpu_w_now, self.floor_refusals.refused(now_s), now_s)
        return self._cap_commands(new, known, load, brake, now_s) + self._knobs(floor, th, now_s)

    def _knobs(self, floor: np.ndarray | None, th: Any, now_s: float) -> list[Command]:
        """Floors for the ramp limit (None: none sent here), the thermal policy's clock locks and routing weights."""
        cmds: list[Command] = []
        if floor is not None:
            cmds += self._knob_commands(2, "power_floor", self.grid_floor_w, floor, now_s)
            self.grid_floor_w = floor
        if th is None:
            return cmds
        if "sm_clock_lock" in self.actions:
            cmds += self._knob_commands(0, "sm_clock_lock", self.clock_mhz, th.clock_mhz, now_s)
            self.clock_mhz = th.clock_mhz
        if "routing_weight" in self.actions:
            cmds += self._knob_commands(1, "routing_weight", self.route_w, th.route_weight, now_s)
            self.route_w = th.route_weight
        return cmds

    def _thermal(self, now_s: float, load: np.ndarray) -> tuple[np.ndarray, Any]:
        """(per level heat budget, NaN where none; the thermal decision or None): zones with a fresh headroom
        reading; a silent zone keeps its stage."""
        zfresh = fresh(now_s, self.zone_seen_s, self.zone_ts_s, self.freshness)
        budget = np.full(len(self.site.level_ids), np.nan)
        if self.thermal is None:
            return budget, None
        climbing = zfresh & np.isfinite(self.zone_ttl_s)
        self.zone_climb_since_s, self.zone_climb_from_w, sustained = sustained_climb(
            now_s, climbing, load[self.zones], self.zone_climb_since_s, self.zone_climb_from_w, self.thermal)
        th = decide_thermal(self.site, np.where(zfresh, self.zone_headroom_c, np.nan),
                            np.where(sustained, self.zone_ttl_s, np.nan), load[self.zones], self.zone_stage,
                            self.thermal)
        self.zone_stage = np.where(zfresh, th.stage, self.zone_stage)
        budget[self.zones] = th.zone_budget_w
        return budget, th

    def _hold(self, now_s: float) -> list[Command]:
        """Every cap, clock lock and routing weight as it is: only renewals of what is held."""
        n = len(self.site.level_ids)
        cmds = self._cap_commands(self.cap_w.copy(), ~np.isnan(self.cap_w), np.full(n, np.nan),
                                  np.zeros(n, dtype=bool), now_s)
        for k, action, held in ((0, "sm_clock_lock", self.clock_mhz), (1, "routing_weight", self.route_w)):
            if self.thermal is not None and action in self.actions:
                cmds += self._knob_commands(k, action, held, held, now_s)
        return cmds

    def _pdu_loads(self, load: np.ndarray, side_dark: np.ndarray, meter_old: np.ndarray | None = None) -> np.ndarray:
        """PDU loads that do not wait for the PDU meter: a PDU meter refreshes every few seconds (SNMP), the
        GPUs every second. Each live PDU is taken at the larger of its meter and its rack's GPU-based power
        (when every GPU reported, less its error margin) times the rack's share on that feed: a surge or a
        transfer from a lost feed shows within a second. A PDU below a dark level (a lost feed or lineup, as
        the streams stage reports with a zero limit) carries nothing; its rack's other side carries all.
        A meter that predates our last change to its rack (`meter_old`, per rack and feed) is not compared: the
        rack's GPU-based power, at its upper bound (no margin taken off), stands for it until it refreshes."""
        site = self.site
        share = feed_share(site, load)
        share = np.where(side_dark[:, :1] & ~side_dark[:, 1:], [0.0, 1.0],
                         np.where(side_dark[:, 1:] & ~side_dark[:, :1], [1.0, 0.0], share))
        rack_w = np.where(self.rack_complete, load[site.rack_level] / (1.0 + self.estimate_margin), np.nan)
        est = np.zeros(len(site.level_ids))
        np.add.at(est, site.rack_pdu.ravel(), (rack_w[:, None] * share).ravel())
        pdus = site.rack_pdu.ravel()
        out = load.copy()
        known = np.isfinite(est[pdus])
        meter = load[pdus]
        if meter_old is not None:
            old = meter_old.ravel() & known
            meter = np.where(old, est[pdus] * (1.0 + self.estimate_margin), meter)
        out[pdus] = np.where(side_dark.ravel(), 0.0, np.where(known, np.fmax(meter, est[pdus]), meter))
        return out

    def _feed_estimates(self, load: np.ndarray, meter_old: np.ndarray | None = None) -> np.ndarray:
        """RPPs, UPS lineups and feeds that do not wait for the streams stage's window: each is also summed
        from the PDU loads beneath it (which follow every frame), and taken at that sum where it is clearly
        above the window's value (`estimate_margin`): a transfer from a lost feed reaches them in the same
        decision as the PDUs. Summed only where every PDU beneath has a load. A level with a PDU beneath whose
        meter predates our last change to its rack (`meter_old`) is taken at the sum as well: the stage's window
        adds up the held meter values and would show neither that change nor its own staleness."""
        pdus = self.pdus
        est = np.zeros(len(load))
        unknown = np.zeros(len(load))
        est[pdus] = np.nan_to_num(load[pdus])
        unknown[pdus] = ~np.isfinite(load[pdus])
        stale = np.zeros(len(load))
        if meter_old is not None:
            np.add.at(stale, self.site.rack_pdu.ravel(), meter_old.ravel().astype(np.float64))
        est, unknown, stale = self.site.feed_up(est), self.site.feed_up(unknown), self.site.feed_up(stale)
        use = self.summed_levels & (unknown == 0) & (~np.isfinite(load) | (stale > 0) |
                                                     (est > (1.0 + self.estimate_margin) * np.nan_to_num(load)))
        return np.where(use, est, load)

    def _cap_commands(self, new: np.ndarray, known: np.ndarray, load: np.ndarray, brake: np.ndarray,
                      now_s: float) -> list[Command]:
        site = self.site
        changed = known & (new != self.cap_w)
        capped = known & (new < site.gpu_max_w)
        if changed.any():
            # Expected draw before and after: a shed takes a GPU down to its new cap; a release is assumed
            # to be used in full (conservative: it shows as load until readings say otherwise).
            old = np.where(known, self.cap_w, site.gpu_max_w)
            draw = np.minimum(np.where(np.isfinite(self.gpu_power_w), self.gpu_power_w, old), old)
            after = np.where(new < old, np.minimum(draw, new), np.maximum(draw, new))
            delta = np.bincount(site.gpu_rack, weights=np.where(changed, after - draw, 0.0) / gpu_efficiency(site),
                                minlength=site.n_racks)
            rc = np.bincount(site.gpu_rack[changed], minlength=site.n_racks) > 0
            shown = self.rack_pending_s + self.settle_s <= self.level_ts_s[site.rack_pdu].max(axis=1)
            self.rack_pending_w = np.where(rc, np.where(shown, 0.0, self.rack_pending_w) + delta, self.rack_pending_w)
            self.rack_pending_s = np.where(rc, now_s, self.rack_pending_s)
        cmds: list[Command] = []
        rack_capped = np.bincount(site.gpu_rack[capped], minlength=site.n_racks) > 0
        renew = rack_capped & (now_s - self.rack_sent_s > self.lease_s / 3)
        worst, ratio = worst_level(site, load, self.limit_w)
        braked = self.tree.racks_under(brake, self.tree.coef(feed_share(site, load))) if brake.any() else None
        # A GPU taken back to its maximum is no longer capped: it gets a `release` (the guard drops its lease),
        # not a power_cap at the maximum, whose lease nothing renews (only caps are renewed) and which would
        # lapse 30 s later as if this controller had died (the 24 h day's lapse warnings, docs/performance.md).
        freed = changed & ~capped
        rack_freed = np.bincount(site.gpu_rack[freed], minlength=site.n_racks) > 0
        rack_recapped = np.bincount(site.gpu_rack[changed & capped], minlength=site.n_racks) > 0
        for r in np.flatnonzero(rack_recapped | rack_freed | renew):
            a, b = int(site.rack_gpu_start[r]), int(site.rack_gpu_start[r + 1])
            where = f"{site.level_ids[worst[r]]} at {100 * ratio[r]:.0f}% of its limit" if worst[r] >= 0 else ""
            rel = np.flatnonzero(freed[a:b])
            if rel.size:
                cmds.append(self.command(int(r), rel, site.gpu_max_w[a:b][rel],
                                         f"releasing caps: {where}" if where else "releasing caps", now_s,
                                         action="release", params={"knob": "power"}))
                self.stats.commands += 1
            idx = np.flatnonzero(capped[a:b])
            if not idx.size or not (rack_recapped[r] or renew[r] or rel.size):
                continue  # nothing capped left, or its caps unchanged and their lease not yet due
            # A rack's caps go out again with any change to it (a release too), as one rack's state.
            why = self._cap_reason(int(r), idx, new, where, braked) if rack_recapped[r] else "lease renewal"
            cmds.append(self.command(int(r), idx, new[a:b][idx], why, now_s))
            self.rack_sent_s[r] = now_s
            if rack_recapped[r]:
                self.stats.commands += 1
            else:
                self.stats.renewals += 1
        self.cap_w = new
        return cmds

    def _cap_reason(self, r: int, idx: np.ndarray, new: np.ndarray, where: str, braked: np.ndarray | None) -> str:
        """Why rack r's caps change (idx: its capped GPUs, rack-relative)."""
        site = self.site
        a, b = int(site.rack_gpu_start[r]), int(site.rack_gpu_start[r + 1])
        # A brake cuts: a rack under a braked level whose caps only rise is being released, not braked.
        if braked is not None and braked[r] and (new[a:b][idx] < self.cap_w[a:b][idx]).any():
            return f"power brake: {where or 'a level'} over {100 * self.settings.brake_threshold:.0f}% " \
                   f"for {self.settings.brake_after_s:g} s"
        if np.isfinite(self.guarded[r]) and (new[a:b][idx] <= self.cap_w[a:b][idx]).all():
            pdu = site.level_ids[int(site.rack_pdu[r, 1 if self.side_dark[r, 0] else 0])]
            return f"single-feed guard: {pdu} could reach {100 * self.guarded[r]:.0f}% of its rating"
        if self.grid.at_peak(a + idx, self.cap_w[a:b][idx], new[a:b][idx]):
            return "ramp limit: compute peak of a job on GPUs without a power floor"
        if (new[a:b][idx] >= self.cap_w[a:b][idx]).all():
            return f"releasing caps: {where}" if where else "releasing caps"
        return f"shedding: {where}" if where else "shedding"

    def _knob_commands(self, k: int, action: str, old: np.ndarray, new: np.ndarray, now_s: float) -> list[Command]:
        """Clock locks (k 0, NaN = unlocked), routing weights (k 1, 1 = full share) or power floors (k 2, NaN =
        none), per rack: what changed, plus a renewal of what is held before its lease ends. Unlocking a clock
        or clearing a floor is a release command."""
        site = self.site
        neutral = new >= 1.0 if k == 1 else np.isnan(new)
        same = (np.isnan(old) & np.isnan(new)) | (old == new)
        changed = ~same
        held = ~neutral
        rack_changed = np.bincount(site.gpu_rack[changed], minlength=site.n_racks) > 0
        rack_held = np.bincount(site.gpu_rack[held], minlength=site.n_racks) > 0
        renew = rack_held & (now_s - self.rack_knob_sent_s[k] > self.lease_s / 3)
        cmds: list[Command] = []
        knob = ("clock", "routing", "floor")[k]
        for r in np.flatnonzero(rack_changed | renew):
            a, b = int(site.rack_gpu_start[r]), int(site.rack_gpu_start[r + 1])
            zone = site.level_ids[site.rack_zone[r]] if site.rack_zone[r] >= 0 else "its zone"
            z = self._zone_pos.get(int(site.rack_zone[r]))
            stage = STAGES[int(self.zone_stage[z])] if z is not None else "normal"
            why = "lease renewal" if not rack_changed[r] else f"thermal: {zone} in stage '{stage}'" if k < 2 \
                else "ramp limit: a floor through training's low phases"
            rel = changed[a:b] & neutral[a:b]
            hold = (changed[a:b] | held[a:b]) & ~neutral[a:b]
            if hold.any():
                idx = np.flatnonzero(hold)
                cmds.append(self.command(int(r), idx, new[a:b][idx], why, now_s, action=action))
                if k == 2:
                    self.floor_refusals.note(cmds[-1])
            if rel.any():
                idx = np.flatnonzero(rel)
                vals = np.ones(idx.size) if k == 1 else np.zeros(idx.size)
                act = action if k == 1 else "release"
                done = f"thermal: {zone} recovered" if k < 2 else "ramp limit: floor no longer needed"
                cmds.append(self.command(int(r), idx, vals, done, now_s, action=act, params={"knob": knob}))
            self.rack_knob_sent_s[k, r] = now_s
            self.stats.commands += int(rack_changed[r])
            self.stats.renewals += int(not rack_changed[r])
        return cmds

    def command(self, rack: int, gpus: np.ndarray, values: np.ndarray, reason: str, now_s: float,
                action: str = "power_cap", params: dict[str, Any] | None = None) -> Command:
        cmd = Command(id=str(uuid.uuid4()), site=self.site.name, target=self.rack_ids[rack], action=action,
                      gpus=gpus.astype(np.uint16), values=values.astype(np.float32), params=params or {},
                      reason=reason, issuer=self.issuer, issued_at_s=now_s, lease_s=self.lease_s)
        return self.keyring.sign(cmd)
