"""Single-feed guard caps: pure numpy, no I/O.

Reactive capping (controllers.capping) acts on a level's load about a second after it moves. That is soon
enough while a rack's two PDUs share its load (2N: each carries about half), but not after a feed loss on
an oversubscribed site: the surviving PDU then carries the whole rack, and a rack idling at a fifth of that
PDU's rating can reach 110 % of it within one second when its work starts (the twin's ramps, calibrated to
measured H100s: idle to peak in 0.75-1 s). The 100 MW reference site's best-effort racks did exactly that
30 s into a feed loss on a bursty trace: 19 PDUs one second over their rating, with the controller's
reactive thresholds never crossed before.

So while a rack runs on one feed, its worst case is bounded in advance: the sum of its GPUs' enforced
limits plus its servers' other load at nameplate, through the PSUs, must fit within `rating_frac` of the
surviving PDU's *rating* (not its derated limit: the guard bounds a transient, which reactive capping then
brings back under the derated thresholds). Where it does not, the rack's GPUs are capped, lowest priority
first, each in proportion to what it can still give. A rack whose two sides are alive, or whose surviving
PDU would fit its worst case, is left alone; the guard only ever lowers caps (release stays with
controllers.capping, which raises a cap only to where the guard takes it back at once: no command).

Only PDUs are guarded: one PDU feeds one or a few racks, whose work can all start at once. The levels above
carry hundreds of racks that do not all peak in the same second; they keep the reactive policy and its
11 % margin (docs/safety.md, "Single-feed guard").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controllers.capping import _take, gpu_efficiency
from powerplane.site import PRIORITIES, FloatArray, Site

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class GuardSettings:
    rating_frac: float = 0.95  # a single-fed rack's worst case stays within this share of its PDU's rating
    enabled: bool = True


def rack_worst_w(site: Site, cap_w: FloatArray) -> FloatArray:
    """Per rack, the wall power it would draw with every GPU at its enforced limit and every server's other
    load at nameplate (the most it can draw under these caps)."""
    server_w = site.server_input_w(cap_w)
    return np.asarray(np.bincount(site.server_rack, weights=server_w, minlength=site.n_racks), dtype=np.float64)


def single_feed_guard(site: Site, cap_w: FloatArray, side_dark: BoolArray,
                      s: GuardSettings | None = None) -> tuple[FloatArray, FloatArray]:
    """(new per-GPU limits, per rack the worst case / rating of its surviving PDU where the guard capped it,
    NaN elsewhere). `cap_w`: the limits decided so far (NaN: unknown, taken at the GPU's maximum).
    `side_dark`: (racks, 2), which of each rack's PDUs is dark (a lost feed, lineup, RPP or PDU above it)."""
    s = s or GuardSettings()
    out = np.full(site.n_racks, np.nan)
    single = np.asarray(side_dark.any(axis=1) & ~side_dark.all(axis=1), dtype=bool)
    if not s.enabled or not single.any():
        return cap_w, out
    lo, hi = site.gpu_min_w, site.gpu_max_w
    cap = np.clip(np.where(np.isfinite(cap_w), cap_w, hi), lo, hi)
    # Each PDU's worst case: all of a single-fed rack on its surviving PDU, half of a rack fed from both.
    share = np.where(side_dark, 0.0, np.where(single[:, None], 1.0, 0.5))
    worst = rack_worst_w(site, cap)
    n_lv = len(site.level_ids)
    pdu_worst = np.bincount(site.rack_pdu.ravel(), weights=(worst[:, None] * share).ravel(), minlength=n_lv)
    target = s.rating_frac * site.level_rated_w
    excess = np.where(site.level_rated_w > 0, np.maximum(pdu_worst - target, 0.0), 0.0)
    # Split each PDU's excess among its racks by what each can still give (wall W, as the PDU sees it).
    eff = gpu_efficiency(site)
    give = np.bincount(site.gpu_rack, weights=(cap - lo) / eff, minlength=site.n_racks)[:, None] * share
    denom = np.bincount(site.rack_pdu.ravel(), weights=give.ravel(), minlength=n_lv)
    ratio = np.divide(excess, denom, out=np.zeros(n_lv), where=denom > 0)
    need_wall = np.max(np.minimum(ratio[site.rack_pdu], 1.0) * give, axis=1)
    guarded = single & (need_wall > 0)
    if not guarded.any():
        return cap_w, out
    n_gpu = np.maximum(np.bincount(site.gpu_rack, minlength=site.n_racks), 1)
    rack_eff = np.bincount(site.gpu_rack, weights=eff, minlength=site.n_racks) / n_gpu
    new = cap.copy()
    _take(site, list(range(len(PRIORITIES))), np.where(guarded, need_wall * rack_eff, 0.0), cap.copy(),
          cap - lo, new)
    surviving = np.where(side_dark[:, 0], site.rack_pdu[:, 1], site.rack_pdu[:, 0])
    out[guarded] = (pdu_worst / np.where(site.level_rated_w > 0, site.level_rated_w, np.inf))[surviving[guarded]]
    touched = guarded[site.gpu_rack] & (new < cap)
    return np.where(touched, new, cap_w), out
