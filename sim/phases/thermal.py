"""Thermal phase: cooling zones' supply temperature, rack inlets, GPU temperatures and thermal shutdowns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from powerplane.site import FloatArray, Site
from sim.physics import ThermalConfig, gpu_temp_step, zone_supply_step
from sim.pools import wsum
from sim.state import Hardware, PowerTree, TwinState


@dataclass
class Cooling:
    heat_w: FloatArray  # per zone
    capacity_w: FloatArray  # available cooling capacity per zone now
    inlet_c: FloatArray  # true rack inlet


def cool(site: Site, tc: ThermalConfig, hw: Hardware, tree: PowerTree, st: TwinState, rack_w: FloatArray,
         p_true: FloatArray, dt_s: float) -> Cooling:
    """Zones warm when their heat exceeds the available capacity; inlets add recirculation by rack load;
    GPUs follow inlet + R x power (at equilibrium on the first step). GPUs at their shutdown temperature
    stop until cooled (st.avail_dirty then moves their work)."""
    s = site
    heat = wsum(tree.rack_zpos, rack_w, tree.zone_lv.size)
    cap_w = s.level_rated_w[tree.zone_lv] * st.zone_frac
    st.zone_supply = zone_supply_step(st.zone_supply, tree.zone_setpoint, heat, cap_w, tree.zone_c, dt_s)
    inlet = np.maximum(st.zone_supply[tree.rack_zpos] + tc.recirc_c_at_rated * rack_w /
                       np.maximum(tree.rack_rated, 1.0), tc.inlet_floor_c)
    if st.alpha_dt != dt_s:
        st.alpha = 1.0 - np.exp(-dt_s / hw.gpu_tau)
        st.alpha_dt = dt_s
    gpu_inlet = inlet[s.gpu_rack]
    if st.first:
        st.temp_c = gpu_inlet + hw.gpu_r * p_true
    else:
        st.temp_c = gpu_temp_step(st.temp_c, gpu_inlet, p_true, hw.gpu_r, st.alpha)
    shut_now = st.gpu_shutdown
    if st.hot or st.gpu_shutdown.any():
        new_shut = (st.temp_c >= hw.gpu_shut_c) | (
            st.gpu_shutdown & (st.temp_c >= hw.gpu_slow - tc.shutdown_recover_c))
        if (new_shut != shut_now).any():
            st.gpu_shutdown = new_shut
            st.avail_dirty = True
    return Cooling(heat_w=heat, capacity_w=cap_w, inlet_c=inlet)
