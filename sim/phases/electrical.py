"""Electrical phase: servers' PSUs on the A/B feeds, the roll-up of power through the tree, and breakers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from powerplane.physics import ElectricalConfig, breaker_heat_step, psu_efficiency
from powerplane.site import FloatArray, Site
from sim.frames import BoolArray
from sim.pools import wsum
from sim.state import PowerTree, TwinState


def update_feeds(st: TwinState, tree: PowerTree) -> None:
    """Which levels carry power, and so which racks have which feeds; dark racks need their work moved."""
    st.level_alive = ~(st.level_lost | st.level_tripped)
    alive: BoolArray = np.all(st.level_alive[tree.chain], axis=2)  # (n_racks, 2)
    dark: BoolArray = ~np.any(alive, axis=1)
    st.rack_feed_alive = alive
    if (dark != st.rack_dark).any():
        st.rack_dark = dark
        st.avail_dirty = True


@dataclass
class Supply:
    """Wall power this step: per server, per rack and feed, and at every level."""

    srv_in: FloatArray  # wall input per server
    dc: FloatArray  # what each server's PSUs deliver
    rack_a: FloatArray
    rack_b: FloatArray
    rack_w: FloatArray
    levels: FloatArray  # Site.level_ids order


def supply(site: Site, ec: ElectricalConfig, tree: PowerTree, st: TwinState, p_true: FloatArray,
           util_gpu: FloatArray, dt_s: float) -> Supply:
    """Server DC load (GPUs + CPUs, NICs, fans by utilisation) split over its live feeds, through PSUs whose
    efficiency depends on their load; rolled up the tree; then breakers heat (and may trip)."""
    s = site
    n_srv = len(s.server_ids)
    gsum = wsum(s.gpu_server, p_true, n_srv)
    srv_util = wsum(s.gpu_server, util_gpu, n_srv) / np.maximum(tree.srv_gpus, 1.0)
    # The non-GPU load's active part trails the GPUs' activity (ElectricalConfig.other_tau_s); it starts settled.
    lag = 1.0 - math.exp(-dt_s / ec.other_tau_s) if ec.other_tau_s > 0 else 1.0
    st.srv_act = np.where(np.isnan(st.srv_act), srv_util, st.srv_act + lag * (srv_util - st.srv_act))
    other = s.server_other_w * (ec.other_idle_frac + (1.0 - ec.other_idle_frac) * st.srv_act)
    alive = st.rack_feed_alive[s.server_rack]
    both = alive[:, 0] & alive[:, 1]
    share_a = np.where(both, tree.srv_split_a, alive[:, 0].astype(np.float64))
    share_b = np.where(both, 1.0 - tree.srv_split_a, alive[:, 1].astype(np.float64))
    powered = alive[:, 0] | alive[:, 1]
    dc = np.where(powered, gsum + other, 0.0)
    side_a = dc * share_a
    side_b = dc * share_b
    in_a = side_a / psu_efficiency(side_a / tree.srv_rating, s.server_psu_eff, ec)
    in_b = side_b / psu_efficiency(side_b / tree.srv_rating, s.server_psu_eff, ec)
    srv_in = in_a + in_b
    rack_a = wsum(s.server_rack, in_a, s.n_racks)
    rack_b = wsum(s.server_rack, in_b, s.n_racks)
    rack_w = rack_a + rack_b
    levels = rollup(site, tree, rack_a, rack_b, rack_w)
    breakers(site, ec, tree, st, levels, dt_s)
    return Supply(srv_in=srv_in, dc=dc, rack_a=rack_a, rack_b=rack_b, rack_w=rack_w, levels=levels)


def rollup(site: Site, tree: PowerTree, rack_a: FloatArray, rack_b: FloatArray, rack_w: FloatArray) -> FloatArray:
    """Power at every level: racks, their PDUs per feed, then up the feed chain; rows, halls, zones, site."""
    s = site
    n = len(s.level_ids)
    out = np.zeros(n)
    out[s.rack_level] = rack_w
    out += wsum(s.rack_pdu[:, 0], rack_a, n)
    out += wsum(s.rack_pdu[:, 1], rack_b, n)
    for lv, parents in tree.chain_kinds:
        ok = parents >= 0
        out += wsum(parents[ok], out[lv][ok], n)
    out += wsum(s.rack_row, rack_w, n)
    out += wsum(s.rack_hall, rack_w, n)
    out += wsum(s.rack_zone, rack_w, n)
    out[s.levels_of_kind("site")] = rack_w.sum()
    return out


def breakers(site: Site, ec: ElectricalConfig, tree: PowerTree, st: TwinState, levels: FloatArray, dt_s: float
             ) -> None:
    """Heat every breaker by its load on the trip curve; a breaker at 1.0 trips and its feed goes dark."""
    if not ec.breakers or tree.brk.size == 0:
        return
    b = tree.brk
    frac = levels[b] / site.level_rated_w[b]
    heat = breaker_heat_step(st.breaker_heat[b], frac, dt_s, ec)
    st.breaker_heat[b] = heat
    trip = (heat >= 1.0) & st.level_alive[b]
    if trip.any():
        for i in b[trip]:
            st.events.append(f"t={st.t_s:.1f}s breaker tripped: {site.level_ids[i]} at "
                             f"{levels[i] / site.level_rated_w[i]:.2f}x rating")
        st.level_tripped[b[trip]] = True
        update_feeds(st, tree)
