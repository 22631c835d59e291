"""Closed-loop evaluation: the digital twin, the streams roll-up and the controllers together, faster than
real time, once per policy; a Markdown report with plots and a JSON of metrics (written by ops/report.py).

`powerplane evaluate --site S --scenario F --policy all` runs, on the same twin (same seed, workload and
scenario), one after another:

- none: no control (the plant as provisioned);
- static: every GPU capped once, at the start, so the tree's worst case fits its derated limits;
- polca: the capping policy's thresholds only (80 % low priority, 89 % everyone, brake), no thermal policy;
- full: capping plus the thermal policy (routing, low-priority clocks, heat budgets), plus the energy-aware
  reconfiguration of inference pools where that policy is available.

Each step: twin.step(1 s) -> one telemetry frame per rack -> the in-process engine (the streams roll-up and
site stage, then the controller: the same code as the Kafka path) -> signed commands -> the safety guard
-> the twin. Metrics come from the twin's ground truth, not from the telemetry the policies saw.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actuators.base import load_actuator
from actuators.guard import Guard
from controllers.capping import BREAKER_KINDS, CapSettings
from controllers.controller import CapController
from controllers.shadow import POLICY as SHADOW_POLICY
from controllers.thermal import ThermalSettings
from ops.engine import Engine
from ops.grid_eval import dr_markers, prepare
from ops.progress import Progress
from ops.reconfigure import Reconfigurer, apply_pool_actions, deploy_for_peak
from ops.signal_tally import SignalTally
from ops.sketch import Quantiles
from powerplane.physics import THROTTLE_HW_SLOWDOWN, THROTTLE_HW_THERMAL, THROTTLE_SW_POWER_CAP, THROTTLE_SW_THERMAL
from powerplane.schemas import Command
from powerplane.signing import Keyring
from powerplane.site import KIND, PRIORITIES, FloatArray, Site
from sim import Twin
from sim.fleet import rack_frames
from sim.scenario import Scenario
from sim.workload import WorkloadSpec, default_workload

__all__ = ["DEPLOYED", "POLICIES", "Reconfigurer", "Tally", "apply_pool_actions", "oversubscription", "run_policy",
           "static_caps_w"]

POLICIES = ("none", "static", "polca", "full")
# What `powerplane controller` runs (controllers/service.py): the capping and thermal policies with power caps
# and clock locks only (no routing, floors or reconfiguration). Not among POLICIES (`evaluate --policy all`):
# `powerplane shadow estimate` runs it, live against shadow, with each one's config thresholds.
DEPLOYED = SHADOW_POLICY
# Throttled: power-capped under the GPU's maximum, or slowed by heat. A clock the reconfiguration policy
# locked on purpose (application clocks) is a chosen operating point that meets the SLO, not throttling.
THROTTLED = THROTTLE_SW_POWER_CAP | THROTTLE_HW_SLOWDOWN | THROTTLE_SW_THERMAL | THROTTLE_HW_THERMAL
EPOCH_S = 1_767_225_600.0  # 2026-01-01: event time of the twin's first second

log = logging.getLogger("powerplane.evaluate")


def static_caps_w(site: Site) -> FloatArray:
    """One cap for every GPU (as a fraction of its max) such that every breaker's worst case, every GPU at
    its cap and every server's other load at nameplate, fits its derated limit with either feed lost:
    how a 2N site is made safe without software."""
    brk = np.isin(site.level_kind, [KIND[k] for k in BREAKER_KINDS])
    frac = 0.0
    for f in np.linspace(1.0, 0.0, 201):
        gpu = site.gpu_max_w * f
        rack_w = np.asarray(np.bincount(site.server_rack, weights=site.server_input_w(gpu), minlength=site.n_racks),
                            dtype=np.float64)
        fits = True
        for mode in ("A-lost", "B-lost"):
            _, derated = site.limits_w(mode)
            loads = site.rollup_w(rack_w, mode)
            m = brk & (derated > 0)
            fits &= bool(np.all(loads[m] <= derated[m]))
        if fits:
            frac = float(f)
            break
    return np.maximum(site.gpu_max_w * frac, site.gpu_min_w)


@dataclass
class Tally:
    """Running metrics of one run, from the twin's ground truth."""

    site: Site
    n_prio: int = len(PRIORITIES)
    seconds: int = 0
    energy_j: float = 0.0
    pool_energy_j: float = 0.0  # GPU energy of the inference pools: what a token costs (DynamoLLM's measure)
    tokens: float = 0.0  # output tokens generated
    prompt_tokens: float = 0.0  # prompt tokens prefilled (of the requests that got their first token)
    completed: float = 0.0  # requests finished
    first_tokens: FloatArray = field(default_factory=lambda: np.zeros(len(PRIORITIES)))
    ttft_ok: FloatArray = field(default_factory=lambda: np.zeros(len(PRIORITIES)))
    arrivals: FloatArray = field(default_factory=lambda: np.zeros(len(PRIORITIES)))
    lost: FloatArray = field(default_factory=lambda: np.zeros(len(PRIORITIES)))  # dropped or aborted
    decode_tokens: FloatArray = field(default_factory=lambda: np.zeros(len(PRIORITIES)))
    tbt_ok: FloatArray = field(default_factory=lambda: np.zeros(len(PRIORITIES)))
    throttled_requests: FloatArray = field(default_factory=lambda: np.zeros(len(PRIORITIES)))
    ttft: list[Quantiles] = field(default_factory=lambda: [Quantiles() for _ in PRIORITIES])  # every request
    tbt: list[Quantiles] = field(default_factory=lambda: [Quantiles() for _ in PRIORITIES])  # by decode token
    peak_frac: FloatArray = field(default_factory=lambda: np.zeros(0))
    over_s: int = 0  # seconds with some breaker above its rating (not the derated limit)
    over_worst: float = 0.0  # largest load / rating seen above 1
    over_kws: float = 0.0  # kW-seconds above ratings
    trips: list[str] = field(default_factory=list)
    inlet_max_c: float = float("-inf")
    inlet_over_s: int = 0  # seconds with some rack's true inlet above the allowable limit
    inlet_limit_c: float = 32.0  # ASHRAE A1 allowable (BRIEF.md), the streams stage's default
    commands: int = 0
    by_action: dict[str, int] = field(default_factory=dict)  # commands issued (renewals aside) per action
    pool_gpus: list[np.ndarray] = field(default_factory=list)  # every GPU of each pool, in pool order
    rack_power: list[FloatArray] = field(default_factory=list)  # true rack wall power per second, for planning
    profile_note: str = ""  # which serving profile the reconfiguration decided from (full policy)
    series: dict[str, list[float]] = field(default_factory=lambda: {"t_s": [], "site_mw": [], "worst_frac": [],
                                                                   "crit_ttft_ok": [], "crit_serving": []})
    markers: list[tuple[float, str]] = field(default_factory=list)  # (t_s, what): the charts' event lines

    def add(self, fr: Any, t_s: float) -> None:
        site = self.site
        rated = site.level_rated_w
        brk = np.isin(site.level_kind, [KIND[k] for k in BREAKER_KINDS]) & (rated > 0)
        frac = np.where(brk & fr.level_alive, fr.level_power_w / np.where(rated > 0, rated, 1.0), 0.0)
        self.peak_frac = frac if self.peak_frac.size == 0 else np.maximum(self.peak_frac, frac)
        worst = float(frac.max())
        if worst > 1.0:
            self.over_s += 1
            self.over_worst = max(self.over_worst, worst)
            self.over_kws += float(np.maximum(fr.level_power_w - rated, 0.0)[brk & fr.level_alive].sum()) / 1e3
        self.trips += [e for e in fr.events if "trip" in e]
        self.markers += [(_event_t(e, t_s), e) for e in fr.events]  # scenario starts and ends, trips
        self.rack_power.append(np.asarray(fr.rack_power_w, dtype=np.float32))
        hottest = float(np.nanmax(fr.rack_inlet_true_c))
        self.inlet_max_c = max(self.inlet_max_c, hottest)
        self.inlet_over_s += int(hottest > self.inlet_limit_c)
        self.seconds += 1
        self.energy_j = float(fr.site_energy_j)
        ps = fr.pools
        self.tokens += float(ps.tokens.sum())
        self.completed += float(ps.completed.sum())
        self.pool_energy_j += float(ps.energy_j.sum())
        prio = np.asarray(ps.priority, dtype=np.int64)
        for name, arr in (("first_tokens", ps.first_tokens), ("ttft_ok", ps.ttft_ok), ("arrivals", ps.arrivals),
                          ("decode_tokens", ps.decode_tokens), ("tbt_ok", ps.tbt_ok_tokens)):
            getattr(self, name)[:] += np.bincount(prio, weights=arr, minlength=self.n_prio)
        self.lost += np.bincount(prio, weights=ps.dropped + ps.aborted, minlength=self.n_prio)
        self.add_latencies(fr.requests, prio, ps)
        # A request counts as throttled when the GPUs of its pool ran throttled that second by a power cap
        # under the GPU's maximum or by heat: the pool's throttled GPU share of its first tokens. (A GPU at
        # its default limit reporting SW power cap is running as built, not throttled.)
        reasons = np.asarray(fr.throttle_reasons)
        capped = ((reasons & THROTTLE_SW_POWER_CAP) != 0) & (fr.limit_w < site.gpu_max_w - 1.0)
        throttled_gpu = capped | ((reasons & (THROTTLED & ~THROTTLE_SW_POWER_CAP)) != 0)
        for i in range(len(ps.names)):
            gpus = self.pool_gpus[i] if i < len(self.pool_gpus) else None
            if gpus is not None and gpus.size:
                self.throttled_requests[prio[i]] += float(ps.first_tokens[i]) * float(throttled_gpu[gpus].mean())
        crit = self.first_tokens[0]
        self.series["t_s"].append(t_s)
        self.series["site_mw"].append(float(fr.site_power_w) / 1e6)
        self.series["worst_frac"].append(worst)
        self.series["crit_ttft_ok"].append(float(self.ttft_ok[0] / crit) if crit > 0 else 1.0)
        self.series["crit_serving"].append(float(np.asarray(ps.serving)[prio == 0].sum()))  # instances serving

    def add_latencies(self, req: Any, prio: Any, ps: Any) -> None:
        """Every request's TTFT, and each pool's mean TBT of the second weighted by its decode tokens, into
        the sketches of their priority classes; the prompt tokens of the requests served."""
        self.prompt_tokens += float(req.prompt_tokens.sum())
        if req.ttft_s.size:
            rp = prio[req.pool]
            for p in np.unique(rp).tolist():
                self.ttft[p].add(req.ttft_s[rp == p])
        ok = (ps.decode_tokens > 0) & np.isfinite(ps.tbt_mean_s)
        for p in np.unique(prio[ok]).tolist():
            m = ok & (prio == p)
            self.tbt[p].add(ps.tbt_mean_s[m], ps.decode_tokens[m])

    def summary(self) -> dict[str, Any]:
        slo: dict[str, Any] = {}
        for p, name in enumerate(PRIORITIES):
            if self.arrivals[p] <= 0:
                continue
            served = self.first_tokens[p]
            slo[name] = {
                "requests": float(self.arrivals[p]),
                # Within SLO: first token within the TTFT SLO; a dropped or aborted request is a miss.
                "ttft_within_slo": float(self.ttft_ok[p] / max(served + self.lost[p], 1e-9)),
                "tbt_within_slo": float(self.tbt_ok[p] / max(self.decode_tokens[p], 1e-9)),
                "ttft_p50_s": self.ttft[p].quantile(0.5), "ttft_p99_s": self.ttft[p].quantile(0.99),
                "tbt_p50_s": self.tbt[p].quantile(0.5), "tbt_p99_s": self.tbt[p].quantile(0.99),
                "throttled_fraction": float(self.throttled_requests[p] / max(served, 1e-9)),
            }
        site = self.site
        peaks: dict[str, float] = {}
        for kind in BREAKER_KINDS:
            lv = site.levels_of_kind(kind)
            if lv.size and self.peak_frac.size:
                peaks[kind] = float(self.peak_frac[lv].max())
        def per(x: float, n: float) -> float:
            return x / n if n > 0 else float("nan")

        all_tokens = self.tokens + self.prompt_tokens
        return {
            "seconds": self.seconds, "energy_kwh": self.energy_j / 3.6e6, "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens, "completed_requests": self.completed,
            "pool_energy_kwh": self.pool_energy_j / 3.6e6,
            # Per generated token (DynamoLLM's measure; kept for comparison), per token processed (prompt +
            # output: a long-prompt trace is not 10x worse for it) and per request finished.
            "energy_per_token_j": per(self.pool_energy_j, self.tokens),
            "energy_per_processed_token_j": per(self.pool_energy_j, all_tokens),
            "energy_per_request_j": per(self.pool_energy_j, self.completed),
            "site_energy_per_token_j": per(self.energy_j, self.tokens),
            "mean_site_mw": float(np.mean(self.series["site_mw"])) if self.series["site_mw"] else 0.0,
            "peak_frac_of_rating": peaks, "seconds_over_rating": self.over_s,
            "worst_over_rating": self.over_worst, "kw_s_over_rating": self.over_kws,
            "inlet_max_c": self.inlet_max_c, "seconds_inlet_over_limit": self.inlet_over_s,
            "breaker_trips": len(self.trips), "trip_events": self.trips[:20], "commands": self.commands,
            "commands_by_action": dict(self.by_action),
            "slo": slo,
        }


def _event_t(event: str, t_s: float) -> float:
    """When a twin event happened: its own 't=20.0s ...' stamp (the step's start), else the step's end."""
    head = event.split(" ", 1)[0]
    try:
        return float(head[2:-1]) if head.startswith("t=") and head.endswith("s") else t_s
    except ValueError:
        return t_s


def _control_second(site: Site, twin: Twin, fr: Any, k: int, engine: Engine, guard: Guard, tally: Tally,
                    route_w: FloatArray, ups_signal: bool) -> None:
    """One second of the closed loop: the twin's frames and UPS readings into the engine, its commands through
    the guarded actuator (routing weights to the twin's router)."""
    ts = EPOCH_S + twin.t_s
    cmds: list[Command] = []
    for f in rack_frames(site, fr, ts, 1.0, k, "twin"):
        cmds += engine.feed_frame(f, received_s=ts + 0.2)  # the twin's clock is the receiver's
    now = ts + 0.5  # the controller's tick lands within the second; the actuator acts at once
    # Each reading at its arrival (a trap 50-300 ms after the event), before the tick it precedes, but
    # never before this second's frames: the twin applies a command from its next step on, so a decision
    # stamped at the trap's own time would claim that the frames just read (measured after it) show its
    # caps, and the controller would shed the same watts again (issue 14: critical GPUs at their floor).
    if ups_signal:
        for r in twin.facility_readings(twin.t_s + 0.5):
            cmds += engine.feed_facility(r, received_s=max(r.ts_s, ts + 0.2))
    cmds += engine.decide_now(now)
    routing = [c for c in cmds if c.action == "routing_weight"]
    for c in cmds:
        if c.reason != "lease renewal":
            tally.commands += 1
            tally.by_action[c.action] = tally.by_action.get(c.action, 0) + 1
        if c.action != "routing_weight":  # each outcome back to the controller, as the Kafka path's acks
            engine.controller.on_ack(guard.handle(c, now), now)
    if routing:
        apply_routing(twin, routing, route_w)
    guard.expire(now)


def run_policy(site: Site, policy: str, duration_s: int, *, workload: WorkloadSpec | None = None,
               scenario: Scenario | None = None, seed: int = 0,
               progress: Progress | None = None, reconfigure: bool = True,
               coordinate: bool = True, ups_signal: bool = True,
               reconfig_options: dict[str, Any] | None = None, deploy_tp: bool = True,
               cap: CapSettings | None = None) -> dict[str, Any]:
    """One closed-loop run; returns its metrics and per-second series. `ups_signal`: the twin's UPS polls and
    traps (pp.facility) reach the engine, as the streams worker and controller receive them.
    `reconfig_options`: keyword arguments of the full policy's Reconfigurer (the day run's forecast).
    `deploy_tp`: the full policy deploys its pools at the TP its planner picks for the trace's peak
    (ops.reconfigure.deploy_for_peak); False: as the workload says (a caller that deployed them already).
    `cap`: the capping thresholds of polca, full and controller (default CapSettings(), the config's defaults)."""
    if policy not in (*POLICIES, DEPLOYED):
        raise ValueError(f"unknown policy '{policy}' (known: {', '.join((*POLICIES, DEPLOYED))})")
    deployed: dict[str, int] = {}
    site, workload, grid = prepare(site, workload, scenario)  # the scenario's grid limits and training job
    if policy == "full" and reconfigure and deploy_tp:
        workload, deployed = deploy_for_peak(site, workload or default_workload(site), seed)
    twin = Twin(site, workload, scenario, seed=seed, epoch_s=EPOCH_S)
    keyring = Keyring({"eval": os.urandom(32)}, "eval")
    tally = Tally(site)
    signal = SignalTally(site, EPOCH_S, on=ups_signal)
    tally.pool_gpus = [np.asarray(twin.pool_gpus(n)) for n in twin.pool_names()]
    floors = scenario is None or scenario.gpu_power_floor  # False: GPUs without power smoothing (H100s)
    ctl, engine, guard = _controls(site, twin, policy, keyring, cap or CapSettings(), floors)
    reconfig: Reconfigurer | None = None
    if policy == "full" and reconfigure:
        from sim.profiling import profile_for

        profile, tally.profile_note = profile_for(twin)  # for the token mix of the trace the twin replays
        reconfig = Reconfigurer(twin, profile=profile, controller=ctl, coordinate=coordinate,
                                **(reconfig_options or {}))
    route_w = np.ones(site.n_gpus)
    # The full policy is told of each demand-response request when it comes (on the controller's clock).
    dr_left = [ev.model_copy(update={"start_s": EPOCH_S + ev.start_s}) for ev in grid.demand_response] \
        if policy == "full" and ctl is not None else []
    notices = _job_notices(scenario, twin) if policy == "full" and ctl is not None else []
    for k in range(duration_s):
        fr = twin.step(1.0)
        _deliver_requests(dr_left, twin.t_s, ctl)
        while notices and ctl is not None and twin.t_s >= notices[0][0]:
            log.info("%s", ctl.on_job_notice(*notices.pop(0)[1:]))
        if engine is not None and guard is not None:
            _control_second(site, twin, fr, k, engine, guard, tally, route_w, ups_signal)
        if reconfig is not None:
            n = reconfig(twin, fr)
            tally.commands += n
            tally.by_action["reconfigure"] = tally.by_action.get("reconfigure", 0) + n
            if n:
                tally.markers.append((twin.t_s, f"reconfiguration ({n} action(s))"))
        tally.add(fr, twin.t_s)
        grid.add(fr, twin.t_s)
        signal.add(fr)
        if progress is not None:
            progress.show(k + 1)
    out = tally.summary()
    out["deployed_tp"] = deployed
    if tally.profile_note:
        out["serving_profile"] = tally.profile_note
    if reconfig is not None:
        out["reconfig_deferred"] = dict(reconfig.deferred)  # changes refused by the coordination, by reason
    out["facility_signal"] = signal.summary(engine)
    out["grid"] = grid.summary()
    tally.markers += dr_markers(grid)
    if engine is not None:
        tally.markers += [(e.ts_s - EPOCH_S, f"emergency {e.kind} ({e.severity})") for e in engine.result.events
                          if e.state == "open"]
    out["events"] = [{"t_s": t, "what": w} for t, w in sorted(tally.markers, key=lambda m: m[0])]
    out["limits"] = chart_limits(site, tally.peak_frac)
    out["series"] = tally.series
    out["rack_power_w"] = np.asarray(tally.rack_power, dtype=np.float64)
    return out


def _controls(site: Site, twin: Twin, policy: str, keyring: Keyring, cap: CapSettings,
              power_floor: bool = True) -> tuple[CapController | None, Engine | None, Guard | None]:
    """The policy's controller, in-process engine and guarded twin actuator (None where it has none); the
    static policy's caps set on the twin once. power_floor False: the actuator rejects every power_floor, as
    an H100's does (the controller sees the same rejected acks as live)."""
    if policy == "static":
        twin.set_limit(np.arange(site.n_gpus), static_caps_w(site))
    if policy not in ("polca", "full", DEPLOYED):
        return None, None, None
    thermal = ThermalSettings() if policy in ("full", DEPLOYED) else None
    actions = {"full": frozenset(("power_cap", "sm_clock_lock", "routing_weight", "power_floor")),
               DEPLOYED: frozenset(("power_cap", "sm_clock_lock"))}.get(policy, frozenset(("power_cap",)))
    ctl = CapController(site, keyring, cap, lease_s=30.0, issuer=f"evaluate-{policy}", thermal=thermal,
                        actions=actions)
    engine = Engine(site, keyring, cap, 30.0, controller=ctl)
    # The fleet's own twin actuator (it locks clocks where the plant is the twin), behind the same guard.
    actuator = load_actuator("twin", {"kind": "twin", "safe_limit": "max", "power_floor": power_floor}, context=twin)
    return ctl, engine, Guard(actuator, keyring, site.name, rate_per_s=100.0, burst=100)


def _job_notices(scenario: Scenario | None, twin: Twin) -> list[tuple[float, str, Any, float]]:
    """(when, job, its GPUs, its start on the controller's clock) of each job start the scheduler announces:
    every job of the workload that starts after the run does, `job_notice_s` ahead (sim.scenario.Scenario);
    none where the scenario gives no notice. In the order they come."""
    lead = scenario.job_notice_s if scenario is not None else None
    if lead is None:
        return []
    out = [(max(j.start_s - lead, 0.0), j.name, gpus, EPOCH_S + j.start_s)
           for j, gpus in zip(twin.workload.jobs, twin.job_gpus, strict=True) if j.start_s > 0 and gpus.size]
    return sorted(out, key=lambda n: n[0])


def _deliver_requests(left: list[Any], t_s: float, ctl: CapController | None) -> None:
    """Hand the controller each demand-response request whose start has come (removed from `left`)."""
    for ev in [e for e in left if EPOCH_S + t_s >= e.start_s]:
        left.remove(ev)
        if ctl is not None:
            log.info("%s", ctl.on_demand_response(ev))


def chart_limits(site: Site, peak_frac: FloatArray) -> dict[str, Any]:
    """The limit lines of the report's charts: the site's rating and derated limit (normal feeds), one
    utility feed's rating (what a 2N site must fit with a feed lost), and the most loaded breaker's name."""
    rated, derated = site.limits_w("normal")
    lv = site.levels_of_kind("site")
    feeds = site.levels_of_kind("utility")
    worst = site.level_ids[int(np.argmax(peak_frac))] if peak_frac.size and peak_frac.max() > 0 else ""
    return {"site_rated_mw": float(rated[lv].sum()) / 1e6 if lv.size else None,
            "site_derated_mw": float(derated[lv].sum()) / 1e6 if lv.size else None,
            "feed_rated_mw": float(site.level_rated_w[feeds].min()) / 1e6 if feeds.size else None,
            "derating": float(site.derating), "worst_level": worst}


def oversubscription(site: Site, rack_power_w: FloatArray, risk: float = 1e-4,
                     max_throttle: float = 0.05) -> dict[str, Any]:
    """How many more racks the site could host with capping than without, at the same risk, from the racks'
    true power in an uncontrolled run (controllers.planning, as `powerplane plan` does). Capping may shed at
    most `max_throttle` of low-priority energy: hosting racks by throttling them heavily is not a gain."""
    from controllers.planning import levels_to_plan, plan, plan_inputs

    inp = plan_inputs(site, rack_power_w)
    (lp,) = plan(inp, levels_to_plan(inp, ["site"]), risk, max_throttle=max_throttle)
    n = site.n_racks
    none_k, cap_k = lp.extra_none, lp.extra_capped
    pct = None
    if none_k is not None and cap_k is not None:
        pct = 100.0 * ((n + cap_k) / (n + none_k) - 1.0)
    return {"racks": n, "extra_racks_no_control": none_k, "extra_racks_capped": cap_k,
            "more_racks_pct": pct, "risk": risk, "max_throttle": max_throttle,
            "throttled_low_priority": lp.throttled_low_frac, "binding_no_control": lp.binding_none,
            "binding_capped": lp.binding_capped, "value_usd": lp.value}


def apply_routing(twin: Twin, cmds: list[Command], weights: FloatArray) -> None:
    """Racks' per-GPU routing weights -> each pool instance's weight (the mean over its GPUs), once per step
    for all the step's routing commands: what a request router fed from pp.commands would do."""
    site = twin.site
    for cmd in cmds:
        r = site.rack_index(cmd.target)
        weights[cmd.gpus.astype(np.int64) + int(site.rack_gpu_start[r])] = cmd.values
    for name in twin.pool_names():
        twin.set_routing(name, weights[twin.pool_slots(name)].mean(axis=1))
