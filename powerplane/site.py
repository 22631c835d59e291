"""Site model: the power tree, the cooling tree and every GPU, loaded from one TOML file (its tables and
checks: powerplane/site_file.py).

The model is flattened into numpy index arrays so that roll-ups and policies over tens of
thousands of GPUs are a handful of vectorized operations (np.bincount over parent indices),
not Python loops over objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from powerplane.grid import GridLimits

PRIORITIES: tuple[str, ...] = ("inference-critical", "inference-batch", "training", "best-effort")
"""Workload priority classes, most important first; a server's class is its index here."""

FEEDS: tuple[str, ...] = ("A", "B")

# Share of a server's non-GPU nameplate (CPUs, NICs, fans) drawn while its GPUs idle (assumption, the same
# figure the digital twin uses); it rises linearly to all of it with GPU utilization.
OTHER_IDLE_FRAC = 0.5

# Level kinds. Feed-specific kinds carry one side of a 2N pair; the others see the whole load.
KIND_NAMES: tuple[str, ...] = ("site", "utility", "ups", "rpp", "pdu", "hall", "row", "rack", "zone")
KIND = {name: i for i, name in enumerate(KIND_NAMES)}
FEED_KINDS = frozenset({"utility", "ups", "rpp", "pdu"})

Mode = Literal["normal", "A-lost", "B-lost"]
MODES: tuple[Mode, ...] = ("normal", "A-lost", "B-lost")

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ServerType:
    id: str
    gpus: int
    gpu_model: str
    gpu_max_w: float
    gpu_min_w: float
    gpu_idle_w: float
    gpu_max_sm_mhz: float
    gpu_min_sm_mhz: float
    gpu_slowdown_c: float
    gpu_shutdown_c: float
    other_w: float  # CPUs, NICs, fans, switches attributed to the server, at load
    psu_efficiency: float
    rating_w: float  # PSU nameplate of the server


@dataclass
class Site:
    """A loaded, validated site. Index arrays are aligned with the id lists."""

    name: str
    derating: float
    server_types: dict[str, ServerType]
    # Levels (power tree above the rack, the rack itself, rows, halls, zones, the site).
    level_ids: list[str]
    level_kind: IntArray
    level_parent: IntArray  # power-tree parent for feed kinds, row for racks, hall for rows; -1 at top
    level_feed: IntArray  # 0 = A, 1 = B, -1 = carries both feeds
    level_rated_w: FloatArray  # nameplate; cooling capacity for zones
    # Racks.
    rack_level: IntArray  # rack -> its level index
    rack_pdu: IntArray  # (n_racks, 2): level index of the rack PDU on feed A and on feed B
    rack_row: IntArray  # level index
    rack_hall: IntArray  # level index
    rack_zone: IntArray  # level index
    rack_inlet_sensors: IntArray
    # Servers.
    server_ids: list[str]
    server_rack: IntArray  # rack index (not level index)
    server_type: list[str]
    server_priority: IntArray  # index into PRIORITIES
    # GPUs, ordered by rack then server, so a rack's GPUs are a contiguous slice.
    gpu_server: IntArray
    gpu_rack: IntArray
    gpu_slot: IntArray  # index of the GPU within its server
    gpu_priority: IntArray
    gpu_max_w: FloatArray
    gpu_min_w: FloatArray
    gpu_idle_w: FloatArray
    rack_gpu_start: IntArray  # CSR offsets: rack r owns gpus [start[r], start[r+1])
    rack_server_start: IntArray
    zone_supply_c: dict[str, float]  # cooling supply air temperature per zone
    level_index: dict[str, int] = field(default_factory=dict)
    server_other_w: FloatArray = field(default_factory=lambda: np.zeros(0))
    server_psu_eff: FloatArray = field(default_factory=lambda: np.zeros(0))
    # What the utility allows of the load (powerplane/grid.py): the whole site's, and per utility feed id.
    grid: GridLimits | None = None
    feed_grid: dict[str, GridLimits] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.level_index = {lid: i for i, lid in enumerate(self.level_ids)}
        self._rack_of = {self.level_ids[lvl]: r for r, lvl in enumerate(self.rack_level.tolist())}
        # Per-server constants used on every roll-up, computed once.
        self.server_other_w = np.array([self.server_types[t].other_w for t in self.server_type], dtype=np.float64)
        self.server_psu_eff = np.array([self.server_types[t].psu_efficiency for t in self.server_type],
                                       dtype=np.float64)

    # ---- sizes and lookups -------------------------------------------------------------
    @property
    def n_gpus(self) -> int:
        return int(self.gpu_server.size)

    @property
    def n_racks(self) -> int:
        return int(self.rack_level.size)

    @property
    def rack_ids(self) -> list[str]:
        return [self.level_ids[i] for i in self.rack_level]

    def level(self, level_id: str) -> int:
        try:
            return self.level_index[level_id]
        except KeyError:
            raise KeyError(f"unknown level '{level_id}' in site '{self.name}'") from None

    def levels_of_kind(self, kind: str) -> IntArray:
        return np.flatnonzero(self.level_kind == KIND[kind])

    def rack_index(self, rack_id: str) -> int:
        try:
            return self._rack_of[rack_id]  # on every telemetry frame: a dict lookup, not a scan
        except KeyError:
            raise KeyError(f"'{rack_id}' is not a rack of site '{self.name}'") from None

    def gpu_id(self, gpu: int) -> str:
        return f"{self.server_ids[int(self.gpu_server[gpu])]}/gpu{int(self.gpu_slot[gpu])}"

    # ---- tree queries --------------------------------------------------------------------
    def children(self, level_id: str) -> list[str]:
        """Direct children of a level: racks of a PDU or row, PDUs of an RPP, and so on."""
        i = self.level(level_id)
        kids = np.flatnonzero(self.level_parent == i).tolist()
        if self.level_kind[i] == KIND["pdu"]:
            kids = [int(self.rack_level[r]) for r in np.flatnonzero((self.rack_pdu == i).any(axis=1))]
        if self.level_kind[i] == KIND["zone"]:
            kids = [int(self.rack_level[r]) for r in np.flatnonzero(self.rack_zone == i)]
        if self.level_kind[i] == KIND["site"]:
            kids = np.flatnonzero(
                (self.level_parent == -1) & np.isin(self.level_kind, [KIND["utility"], KIND["hall"]])
            ).tolist()
        return [self.level_ids[k] for k in kids]

    def path_to_root(self, gpu: int, feed: str = "A") -> list[str]:
        """GPU -> server -> rack -> PDU -> RPP -> UPS -> utility on one feed."""
        f = FEEDS.index(feed)
        rack = int(self.gpu_rack[gpu])
        out = [self.gpu_id(gpu), self.server_ids[int(self.gpu_server[gpu])], self.level_ids[self.rack_level[rack]]]
        node = int(self.rack_pdu[rack, f])
        while node >= 0:
            out.append(self.level_ids[node])
            node = int(self.level_parent[node])
        return out

    # ---- limits ---------------------------------------------------------------------------
    def feed_share(self, mode: Mode) -> FloatArray:
        """Fraction of every rack's load drawn on feed A and on feed B."""
        return {
            "normal": np.array([0.5, 0.5]),
            "A-lost": np.array([0.0, 1.0]),
            "B-lost": np.array([1.0, 0.0]),
        }[mode]

    def limits_w(self, mode: Mode = "normal") -> tuple[FloatArray, FloatArray]:
        """(rated, derated) limit of every level in a feed state.

        Feed-specific levels keep their own rating; a lost feed's levels get 0 (they carry nothing).
        A rack can draw at most what its live PDUs can deliver, capped by its own nameplate. Rows,
        halls and the site are bounded by the sum of their racks. Zones are cooling capacity, not
        derated: it is a heat-removal figure, not a breaker.
        """
        dark = np.zeros(len(self.level_ids), dtype=bool)
        if mode != "normal":
            dark = self.level_feed == FEEDS.index(mode[0])
        return self.limits_dark_w(dark)

    def dark_below(self, dark: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """Feed levels that carry nothing because they or a level above them on their feed are dark."""
        out = dark.copy()
        for kind in ("ups", "rpp", "pdu"):  # top-down, so darkness flows from a utility to its PDUs
            lv = self.levels_of_kind(kind)
            parents = self.level_parent[lv]
            ok = parents >= 0
            out[lv[ok]] |= out[parents[ok]]
        return out

    def limits_dark_w(self, dark: npt.NDArray[np.bool_]) -> tuple[FloatArray, FloatArray]:
        """(rated, derated) limits when the given feed levels (and everything below them) are dark:
        a whole feed, one UPS lineup, one RPP or one PDU lost."""
        rated = self.level_rated_w.copy()
        rated[self.dark_below(dark)] = 0.0
        rack_lvls = self.rack_level
        pdu_cap = rated[self.rack_pdu]  # (n_racks, 2)
        rack_rated = np.minimum(self.level_rated_w[rack_lvls], pdu_cap.sum(axis=1))
        rated[rack_lvls] = rack_rated
        for kind in ("row", "hall"):
            lv = self.levels_of_kind(kind)
            member = self.rack_row if kind == "row" else self.rack_hall
            sums = np.bincount(member, weights=rack_rated, minlength=len(self.level_ids))
            rated[lv] = np.minimum(np.where(self.level_rated_w[lv] > 0, self.level_rated_w[lv], np.inf), sums[lv])
        site_lv = self.levels_of_kind("site")
        utils = self.levels_of_kind("utility")
        # The site can draw no more than its racks can take nor than its live utility feeds deliver.
        rated[site_lv] = min(rack_rated.sum(), rated[utils].sum()) if utils.size else rack_rated.sum()
        derated = rated * self.derating
        zones = self.levels_of_kind("zone")
        derated[zones] = rated[zones]
        return rated, derated

    # ---- roll-up --------------------------------------------------------------------------
    def rollup_w(self, rack_power_w: FloatArray, mode: Mode = "normal") -> FloatArray:
        """Load of every level from the input power of every rack (NaN racks count as unknown)."""
        n = len(self.level_ids)
        out = np.zeros(n)
        share = self.feed_share(mode)
        out[self.rack_level] = rack_power_w
        for f in (0, 1):
            out += np.bincount(self.rack_pdu[:, f], weights=rack_power_w * share[f], minlength=n)
        out = self.feed_up(out)
        out += np.bincount(self.rack_row, weights=rack_power_w, minlength=n)
        out += np.bincount(self.rack_hall, weights=rack_power_w, minlength=n)
        out += np.bincount(self.rack_zone, weights=rack_power_w, minlength=n)
        out[self.levels_of_kind("site")] = rack_power_w.sum()
        return out

    def feed_up(self, values: FloatArray) -> FloatArray:
        """Add every PDU's, RPP's and UPS lineup's value into its parent on the feed chain, deepest kinds
        first, so each RPP, lineup and utility ends up with its own value plus everything beneath it."""
        out = np.array(values, dtype=np.float64)
        n = len(self.level_ids)
        for kind in ("pdu", "rpp", "ups"):
            lv = self.levels_of_kind(kind)
            parents = self.level_parent[lv]
            ok = parents >= 0
            out += np.bincount(parents[ok], weights=out[lv][ok], minlength=n)
        return out

    def server_input_w(self, gpu_power_w: FloatArray) -> FloatArray:
        """Wall power of every server: (GPUs + other load) / PSU efficiency."""
        gsum = np.bincount(self.gpu_server, weights=gpu_power_w, minlength=len(self.server_ids))
        return np.asarray((gsum + self.server_other_w) / self.server_psu_eff, dtype=np.float64)

    def rack_input_w(self, rack: int, gpu_power_w: FloatArray, gpu_util: FloatArray | None = None) -> float:
        """Wall power of one rack from its own GPUs' readings (the slice a telemetry frame carries)."""
        return float(self.rack_server_input_w(rack, gpu_power_w, gpu_util).sum())

    def rack_server_input_w(self, rack: int, gpu_power_w: FloatArray, gpu_util: FloatArray | None = None) -> FloatArray:
        """Wall power of each server of one rack from the rack's GPUs' readings.

        With utilization, a server's other load (CPUs, NICs, fans) follows its GPUs' activity between
        OTHER_IDLE_FRAC of its nameplate and all of it; without, it is taken at nameplate (conservative)."""
        s0, s1 = int(self.rack_server_start[rack]), int(self.rack_server_start[rack + 1])
        g0 = int(self.rack_gpu_start[rack])
        local = self.gpu_server[g0:g0 + gpu_power_w.size] - s0
        gsum = np.bincount(local, weights=gpu_power_w, minlength=s1 - s0)
        other = self.server_other_w[s0:s1]
        if gpu_util is not None:
            u = np.where(np.isfinite(gpu_util), gpu_util, 1.0)  # unknown activity: nameplate, conservative
            n = np.bincount(local, minlength=s1 - s0)
            busy = np.bincount(local, weights=u, minlength=s1 - s0) / np.maximum(n, 1)
            other = other * (OTHER_IDLE_FRAC + (1.0 - OTHER_IDLE_FRAC) * busy)
        return np.asarray((gsum + other) / self.server_psu_eff[s0:s1], dtype=np.float64)
