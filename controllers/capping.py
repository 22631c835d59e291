"""Priority-aware power capping at the rack PDU: pure numpy, no I/O.

Each rack PDU is held under `cap_threshold` x its derated limit. When it is over, the excess is
shed from the GPUs behind it, lowest priority class first, each class only as far as its GPUs'
minimum power limits allow before the next class is touched (POLCA/Dynamo-style priority groups).
Caps are released, highest priority first, only once every PDU of the rack is below
`uncap_threshold`: the gap between the two thresholds is the hysteresis that stops flapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from powerplane.site import PRIORITIES, FloatArray, Site


@dataclass(frozen=True)
class CapSettings:
    cap_threshold: float = 0.80
    uncap_threshold: float = 0.75
    # Shed a little below the threshold so noise does not bring the PDU straight back over it.
    target_margin: float = 0.03
    min_change_w: float = 5.0  # smaller changes are not worth a command


def gpu_efficiency(site: Site) -> FloatArray:
    return np.asarray(site.server_psu_eff[site.gpu_server], dtype=np.float64)


def rack_pdu_need_w(site: Site, pdu_power_w: FloatArray, derated_w: FloatArray,
                    s: CapSettings) -> tuple[FloatArray, FloatArray]:
    """Per rack: wall power to shed (>0) and wall power that may be released (>=0).

    pdu_power_w and derated_w are indexed by level. A rack draws on two PDUs; its current share
    on each comes from the meters, so a lost feed (share 0 on one side) is handled with no mode flag.
    A PDU feeding several racks asks each for its part in proportion to that rack's draw on it.
    """
    n_levels = len(site.level_ids)
    pw = pdu_power_w[site.rack_pdu]  # (racks, 2)
    known = np.isfinite(pw)
    pw0 = np.where(known, pw, 0.0)
    rack_w = pw0.sum(axis=1)
    share = np.divide(pw0, rack_w[:, None], out=np.zeros_like(pw0), where=rack_w[:, None] > 0)
    pdu_total = np.bincount(site.rack_pdu.ravel(), weights=pw0.ravel(), minlength=n_levels)
    lim = derated_w[site.rack_pdu]
    tot = pdu_total[site.rack_pdu]
    frac_of_pdu = np.divide(pw0, tot, out=np.zeros_like(pw0), where=tot > 0)
    target = (s.cap_threshold - s.target_margin) * lim
    over = tot > s.cap_threshold * lim
    excess_pdu = np.where(over, tot - target, 0.0) * frac_of_pdu  # this rack's part of the excess
    # Converting PDU watts to rack watts divides by the rack's share on that PDU.
    excess_rack = np.divide(excess_pdu, share, out=np.zeros_like(pw0), where=share > 1e-3)
    need = np.where(known.any(axis=1), excess_rack.max(axis=1), 0.0)
    room_pdu = np.maximum(s.uncap_threshold * lim - tot, 0.0) * frac_of_pdu
    room_rack = np.divide(room_pdu, share, out=np.full_like(pw0, np.inf), where=share > 1e-3)
    all_under = np.all(~known | (tot < s.uncap_threshold * lim) | (share <= 1e-3), axis=1)
    room = np.where(all_under & known.any(axis=1), np.min(room_rack, axis=1), 0.0)
    return need, np.where(np.isfinite(room), room, 0.0)


def decide_caps(site: Site, gpu_power_w: FloatArray, cap_w: FloatArray, pdu_power_w: FloatArray,
                derated_w: FloatArray, s: CapSettings) -> FloatArray:
    """New per-GPU power limits (W). Uncapped GPUs hold gpu_max_w. NaN GPU power (no reading)
    counts as drawing its current cap: the conservative guess, never zero."""
    need, room = rack_pdu_need_w(site, pdu_power_w, derated_w, s)
    eff = gpu_efficiency(site)
    lo, hi = site.gpu_min_w, site.gpu_max_w
    cap = np.clip(np.where(np.isfinite(cap_w), cap_w, hi), lo, hi)
    draw = np.minimum(np.where(np.isfinite(gpu_power_w), gpu_power_w, cap), cap)
    new = cap.copy()
    n_r = site.n_racks
    rack = site.gpu_rack
    # Shed: DC watts needed = wall watts x efficiency.
    need_dc = need * np.bincount(rack, weights=eff, minlength=n_r) / np.maximum(np.bincount(rack, minlength=n_r), 1)
    avail = np.maximum(draw - lo, 0.0)
    for prio in range(len(PRIORITIES) - 1, -1, -1):
        m = (site.gpu_priority == prio) & (need_dc[rack] > 0)
        if not m.any():
            continue
        a = np.bincount(rack[m], weights=avail[m], minlength=n_r)
        take = np.minimum(need_dc, a)
        frac = np.divide(take, a, out=np.zeros(n_r), where=a > 0)
        new[m] = draw[m] - frac[rack[m]] * avail[m]
        need_dc = need_dc - take
    # Release: only racks with room and no need; highest priority first.
    room_dc = np.where(need > 0, 0.0, room) * 0.9  # give back slowly: 90% of the room per step
    for prio in range(len(PRIORITIES)):
        m = (site.gpu_priority == prio) & (room_dc[rack] > 0) & (cap < hi)
        if not m.any():
            continue
        gap = hi[m] - cap[m]
        g = np.bincount(rack[m], weights=gap, minlength=n_r)
        give = np.minimum(room_dc, g)
        frac = np.divide(give, g, out=np.zeros(n_r), where=g > 0)
        new[m] = cap[m] + frac[rack[m]] * gap
        room_dc = room_dc - give
    new = np.clip(new, lo, hi)
    # Ignore dithering: keep the old cap where the change is too small to matter.
    small = np.abs(new - cap) < s.min_change_w
    near_max = new > hi - s.min_change_w
    return np.where(small & ~near_max, cap, np.where(near_max, hi, new))
