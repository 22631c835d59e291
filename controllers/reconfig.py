"""Energy-aware reconfiguration of inference pools (after DynamoLLM, HPCA'25): instance count, tensor
parallelism (TP) and SM clock per pool, chosen from a measured profile.

Per pool, every candidate (TP degree, clock, instance count) that fits the pool's GPUs is scored at the
forecast load (requests/s, e.g. the p99 of a few-minute-ahead forecast) with the profile: capacity = n x
the rate one instance sustains within the pool's TTFT and TBT SLOs at that TP and clock; power = n x the
instance's power at its load fraction + the GPUs left over, switched off, at bare power. The plan keeps
capacity >= forecast x (1 + margin) and minimises the energy over the decision period, reconfiguration
included:

- a TP change (re-sharding) takes ``reshard_down_frac`` of the pool's instances down for ``reshard_s``: it
  costs their idle power meanwhile (plus ``reshard_energy_j_per_gpu``), and it is never chosen when the
  instances left serving during the switch could not carry forecast x (1 + margin). The twin re-shards a
  whole pool at once (``reshard_down_frac = 1``), so there a TP change happens only at zero load;
- a new instance loads weights for ``start_s``, drawing idle power without serving;
- a clock change (lock clocks) costs nothing.

Hysteresis: a pool whose current configuration still carries forecast x (1 + margin) changes only
voluntarily, and then only to a configuration with ``hysteresis`` more headroom, no sooner than
``min_dwell_s`` after its last change, and only if the saving over the period, after the reconfiguration
energy, exceeds ``min_saving_frac`` of the period's energy. A pool that no longer carries its forecast
changes at once (to the cheapest configuration with the extra headroom if any, else with the margin, else
to the most capacity it can have). Load oscillating within the hysteresis band therefore does not flap.

The plan becomes data (``plan_actions``): (pool, knob, value) tuples in the twin's command vocabulary
(``set_tp``, ``set_instances``, ``lock_clocks`` on the pool's GPUs) that the caller applies. Pure numpy;
the profile comes in as data (``powerplane.serving_profile``), nothing here imports the twin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from powerplane.serving_profile import ServingProfile
from powerplane.site import FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ReconfigSettings:
    margin: float = 0.15  # capacity >= forecast x (1 + margin) (assumption: Poisson noise within a minute)
    hysteresis: float = 0.15  # extra headroom a voluntary change must leave (assumption)
    period_s: float = 300.0  # savings are counted over this long: the decision period (DynamoLLM: minutes)
    reshard_s: float = 30.0  # a TP change serves nothing this long (the twin's reconfig_delay_s)
    reshard_down_frac: float = 1.0  # share of a pool's instances down at once while re-sharding (twin: all)
    reshard_energy_j_per_gpu: float = 0.0  # energy per GPU re-sharded beyond its idle power meanwhile
    start_s: float = 30.0  # a new instance loads weights this long (the twin's start_delay_s)
    min_saving_frac: float = 0.03  # a voluntary change saves at least this share of the period's energy
    min_dwell_s: float = 120.0  # no voluntary change sooner than this after the last one
    min_instances: int = 1  # a pool never goes below this many instances

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, int | float) and np.isfinite(v) and v >= 0):
                raise ValueError(f"ReconfigSettings.{f.name}: must be a finite number >= 0, got {v!r}")
        if self.reshard_down_frac > 1.0:
            raise ValueError(f"ReconfigSettings.reshard_down_frac: must be in [0, 1], got {self.reshard_down_frac}")
        if self.period_s <= 0:
            raise ValueError("ReconfigSettings.period_s: must be > 0")


@dataclass(frozen=True)
class PoolConfigs:
    """One configuration per pool (arrays in pool order)."""

    instances: IntArray
    tp: IntArray
    freq_mhz: FloatArray

    @staticmethod
    def of(instances: Sequence[int], tp: Sequence[int], freq_mhz: Sequence[float]) -> PoolConfigs:
        return PoolConfigs(np.asarray(instances, dtype=np.int64), np.asarray(tp, dtype=np.int64),
                           np.asarray(freq_mhz, dtype=np.float64))


@dataclass(frozen=True)
class Plan:
    config: PoolConfigs  # what each pool should run
    changed: BoolArray  # differs from the current configuration
    forced: BoolArray  # the current configuration could not carry forecast x (1 + margin)
    meets_margin: BoolArray  # the planned capacity carries forecast x (1 + margin); False: best effort
    capacity_rps: FloatArray  # planned capacity within the SLOs
    power_w: FloatArray  # predicted pool power at the forecast, planned configuration
    current_power_w: FloatArray  # ... current configuration (NaN where the profile does not cover it)
    cost_j: FloatArray  # predicted reconfiguration energy


class Action(NamedTuple):
    pool: str
    knob: str  # "set_tp", "set_instances" or "lock_clocks" (on every GPU of the pool)
    value: float


def _check(name: str, x: npt.NDArray[np.generic], n: int) -> None:
    if x.shape != (n,):
        raise ValueError(f"plan_pools: {name} has shape {x.shape}, expected ({n},) (one per pool)")


def _inputs(profile: ServingProfile, pool_class: IntArray, forecast_rps: FloatArray, current: PoolConfigs,
            gpus_available: IntArray, held_s: FloatArray | None
            ) -> tuple[IntArray, FloatArray, IntArray, FloatArray]:
    """plan_pools' inputs as arrays of one entry per pool, checked; a forecast of NaN or < 0 counts as 0."""
    k = np.asarray(pool_class, dtype=np.int64)
    n_p = k.size
    fc = np.maximum(np.nan_to_num(np.asarray(forecast_rps, dtype=np.float64), nan=0.0), 0.0)
    g_av = np.asarray(gpus_available, dtype=np.int64)
    for name, arr in (("forecast_rps", fc), ("gpus_available", g_av), ("current.instances", current.instances),
                      ("current.tp", current.tp), ("current.freq_mhz", current.freq_mhz)):
        _check(name, arr, n_p)
    if n_p and (k.min() < 0 or k.max() >= len(profile.classes)):
        raise ValueError(f"plan_pools: pool_class out of range 0..{len(profile.classes) - 1}")
    held = np.full(n_p, np.inf) if held_s is None else np.asarray(held_s, dtype=np.float64)
    _check("held_s", held, n_p)
    return k, fc, g_av, held


def _current(profile: ServingProfile, k: IntArray, fc: FloatArray, current: PoolConfigs, g_av: IntArray,
             bare: FloatArray) -> tuple[IntArray, BoolArray, FloatArray, FloatArray]:
    """The current configuration in the profile's grid (clock: the nearest profiled one): its TP index (-1:
    not profiled), whether it is known and fits, its capacity (requests/s) and power (W; NaN if unknown)."""
    tps = profile.tp
    t_cur = np.array([int(np.flatnonzero(tps == x)[0]) if np.any(tps == x) else -1 for x in current.tp],
                     dtype=np.int64)
    f_cur = np.argmin(np.abs(profile.freq_mhz[k] - current.freq_mhz[:, None]), axis=1)
    known = (t_cur >= 0) & (current.instances * current.tp <= g_av)
    tc = np.maximum(t_cur, 0)
    cur_cap1 = np.where(known & profile.valid[k, tc], profile.cap_rps[k, tc, f_cur], 0.0)
    cur_cap = np.asarray(current.instances * cur_cap1, dtype=np.float64)
    cur_frac = np.where(cur_cap > 0, fc / np.maximum(cur_cap, 1e-12), 0.0)
    cur_power = np.where(known, current.instances * profile.power_at(k, tc, f_cur, np.minimum(cur_frac, 1.0)) +
                         (g_av - current.instances * current.tp) * bare, np.nan)
    return t_cur, known, cur_cap, cur_power


def plan_pools(profile: ServingProfile, pool_class: IntArray, forecast_rps: FloatArray, current: PoolConfigs,
               gpus_available: IntArray, settings: ReconfigSettings | None = None,
               held_s: FloatArray | None = None, min_gpus: IntArray | None = None) -> Plan:
    """The configuration of every pool for the next period; see the module docstring.

    pool_class: each pool's class index in the profile (``profile.class_index(class_key(...))``).
    held_s: seconds since each pool's last change (None: long enough for any change).
    min_gpus: GPUs each pool keeps serving at least (instances x TP; None: no floor): a slow scale-down
    (controllers.burst) keeps a critical pool's warm instances for the next burst.
    """
    s = settings or ReconfigSettings()
    k, fc, g_av, held = _inputs(profile, pool_class, forecast_rps, current, gpus_available, held_s)
    n_p = k.size

    tps = profile.tp
    n_t, n_f = tps.size, profile.freq_mhz.shape[1]
    n_max = g_av[:, None] // tps[None, :]  # (P, T)
    n_grid = np.arange(int(n_max.max()) + 1 if n_p else 1)  # candidate instance counts
    P, T, F, N = (slice(None), None, None, None), (None, slice(None), None, None), \
        (None, None, slice(None), None), (None, None, None, slice(None))
    kk, tt, ff, nn = k[P], np.arange(n_t)[T], np.arange(n_f)[F], n_grid[N]
    cap1 = profile.cap_rps[k][:, :, :, None]  # (P, T, F, 1)
    bare = profile.bare_w[k]
    ok = profile.valid[k][:, :, None, None] & (cap1 > 0) & (nn <= n_max[:, :, None, None]) & (nn >= s.min_instances)
    if min_gpus is not None:
        floor = np.asarray(min_gpus, dtype=np.int64)
        _check("min_gpus", floor, n_p)
        ok &= nn * tps[T] >= floor[P]
    cap = nn * cap1
    frac = np.where(cap > 0, fc[P] / np.maximum(cap, 1e-12), 0.0)
    p_inst = profile.power_at(kk, tt, ff, np.minimum(frac, 1.0))
    power = nn * p_inst + (g_av[P] - nn * tps[T]) * bare[P]
    idle_inst = profile.power_w[k][:, :, :, :1]  # (P, T, F, 1): instance power at zero load

    t_cur, known, cur_cap, cur_power = _current(profile, k, fc, current, g_av, bare)
    rows = np.arange(n_p)
    need = fc * (1.0 + s.margin)
    cur_ok = known & (current.instances >= s.min_instances) & ((cur_cap >= need) & (cur_cap > 0) | (fc <= 0))

    # Reconfiguration energy and the re-sharding guard.
    same_tp = tt == t_cur[P]
    start_j = np.maximum(nn - current.instances[P], 0) * idle_inst * s.start_s
    reshard_j = nn * (idle_inst * s.reshard_s + tps[T] * s.reshard_energy_j_per_gpu)
    cost = np.where(same_tp, start_j, reshard_j)
    guard = same_tp | ((1.0 - s.reshard_down_frac) * cur_cap >= need)[P]
    allowed = ok & guard
    energy = power * s.period_s + cost
    e_stay = cur_power * s.period_s

    def best(mask: BoolArray) -> tuple[IntArray, BoolArray]:
        flat = np.where(mask, energy, np.inf).reshape(n_p, -1)
        return np.argmin(flat, axis=1), np.isfinite(flat.min(axis=1)) if n_p else np.zeros(0, dtype=bool)

    strict, any_strict = best(allowed & (cap >= (fc * (1.0 + s.margin + s.hysteresis))[P]))
    loose, any_loose = best(allowed & (cap >= need[P]))
    # Best effort: the most capacity the pool can have now.
    flat_cap = np.where(allowed, cap, -1.0).reshape(n_p, -1)
    most = np.argmax(flat_cap, axis=1) if n_p else np.zeros(0, dtype=np.int64)
    any_most = flat_cap.max(axis=1) >= 0 if n_p else np.zeros(0, dtype=bool)
    choice = np.where(any_strict, strict, np.where(any_loose, loose, most))
    e_choice = energy.reshape(n_p, -1)[rows, choice]
    voluntary = cur_ok & (held >= s.min_dwell_s) & any_strict & \
        (e_stay - e_choice >= s.min_saving_frac * np.nan_to_num(e_stay, nan=0.0))
    move = (~cur_ok & (any_strict | any_loose | any_most)) | voluntary
    ti, fi, ni = np.unravel_index(choice, (n_t, n_f, n_grid.size))
    # Where nothing in the profile fits (and the current configuration is not covered), run every slot at
    # the class's top clock: the most the pool can do without a re-shard the profile cannot justify.
    stuck = ~cur_ok & ~move
    cur_tp = np.maximum(current.tp, 1)
    new_tp = np.where(move, tps[ti], current.tp)
    new_n = np.where(move, n_grid[ni], np.where(stuck, g_av // cur_tp, current.instances))
    new_f = np.where(move, profile.freq_mhz[k, fi], np.where(stuck, profile.freq_mhz[k, 0], current.freq_mhz))
    cfg = PoolConfigs(new_n.astype(np.int64), new_tp.astype(np.int64), new_f.astype(np.float64))
    changed = (cfg.instances != current.instances) | (cfg.tp != current.tp) | (cfg.freq_mhz != current.freq_mhz)
    flat_power = power.reshape(n_p, -1)[rows, choice]
    flat_capv = cap.reshape(n_p, -1)[rows, choice]
    return Plan(
        config=cfg, changed=changed, forced=~cur_ok, meets_margin=np.where(move, flat_capv >= need, cur_ok),
        capacity_rps=np.where(move, flat_capv, cur_cap), power_w=np.where(move, flat_power, cur_power),
        current_power_w=cur_power, cost_j=np.where(move, cost.reshape(n_p, -1)[rows, choice], 0.0),
    )


def plan_actions(pool_names: Sequence[str], current: PoolConfigs, new: PoolConfigs) -> list[Action]:
    """The commands that take every pool from `current` to `new`, in the order to apply them: a TP change
    first (it re-carves the pool's slots), then the instance count, then the clock lock on the pool's GPUs."""
    out: list[Action] = []
    for i, name in enumerate(pool_names):
        tp_change = int(new.tp[i]) != int(current.tp[i])
        if tp_change:
            out.append(Action(name, "set_tp", float(new.tp[i])))
        if tp_change or int(new.instances[i]) != int(current.instances[i]):
            out.append(Action(name, "set_instances", float(new.instances[i])))
        if float(new.freq_mhz[i]) != float(current.freq_mhz[i]):
            out.append(Action(name, "lock_clocks", float(new.freq_mhz[i])))
    return out


class ReconfigPolicy:
    """plan_pools with the per-pool time since the last change kept between decisions."""

    def __init__(self, profile: ServingProfile, pool_names: Sequence[str], pool_class: Sequence[int],
                 settings: ReconfigSettings | None = None) -> None:
        if len(pool_names) != len(pool_class):
            raise ValueError(f"ReconfigPolicy: {len(pool_names)} pool names but {len(pool_class)} classes")
        self.profile = profile
        self.names = list(pool_names)
        self.pool_class = np.asarray(pool_class, dtype=np.int64)
        self.settings = settings or ReconfigSettings()
        self.last_change_s = np.full(len(self.names), -np.inf)
        self._before = self.last_change_s.copy()

    def decide(self, t_s: float, forecast_rps: FloatArray, current: PoolConfigs,
               gpus_available: IntArray, min_gpus: IntArray | None = None) -> tuple[Plan, list[Action]]:
        plan = plan_pools(self.profile, self.pool_class, forecast_rps, current, gpus_available, self.settings,
                          held_s=t_s - self.last_change_s, min_gpus=min_gpus)
        self._before = self.last_change_s.copy()
        self.last_change_s = np.where(plan.changed, t_s, self.last_change_s)
        return plan, plan_actions(self.names, current, plan.config)

    def defer(self, pools: BoolArray) -> None:
        """The last decision's changes to these pools were not applied (controllers.coordination refused
        them): their time since the last change is what it was, so the next decision plans them afresh."""
        self.last_change_s = np.where(pools, self._before, self.last_change_s)
