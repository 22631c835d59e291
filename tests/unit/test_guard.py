"""Single-feed guard caps (controllers.guard): a rack on one feed is capped before its work starts, so that
everything it could draw fits its surviving PDU; with both feeds up nothing changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from collectors.base import SourceContext
from controllers.capping import CapSettings
from controllers.guard import GuardSettings, rack_worst_w, single_feed_guard
from ops.engine import Engine
from powerplane.signing import Keyring
from powerplane.site import Site
from powerplane.site_file import load_site
from sim.fleet import Fleet
from sim.source import FleetSource

ROOT = Path(__file__).resolve().parents[2]


def _lab() -> Site:
    return load_site(ROOT / "examples" / "lab.toml")


def _a_dark(site: Site) -> np.ndarray:
    return np.tile([True, False], (site.n_racks, 1))


def test_every_rack_on_one_feed_fits_its_surviving_pdu_at_its_worst_and_low_priority_gives_first() -> None:
    site = _lab()
    rating = site.level_rated_w[site.rack_pdu[:, 1]]
    assert (rack_worst_w(site, site.gpu_max_w) > rating).all()  # the lab is oversubscribed per feed, like ref
    caps, ratio = single_feed_guard(site, np.full(site.n_gpus, np.nan), _a_dark(site))
    caps = np.where(np.isfinite(caps), caps, site.gpu_max_w)  # unknown and not cut: at its maximum
    assert (rack_worst_w(site, caps) <= 0.95 * rating + 1.0).all()
    assert np.allclose(ratio, rack_worst_w(site, site.gpu_max_w) / rating)
    assert (caps >= site.gpu_min_w).all() and (caps < site.gpu_max_w).any()
    for r in range(site.n_racks):  # within a rack, a higher-priority GPU is never cut while a lower one can give
        g = site.gpu_rack == r
        for hi_p in np.unique(site.gpu_priority[g]):
            lower = g & (site.gpu_priority > hi_p)
            if (g & (site.gpu_priority == hi_p) & (caps < site.gpu_max_w)).any() and lower.any():
                assert np.allclose(caps[lower], site.gpu_min_w[lower])


def test_both_feeds_up_or_caps_already_low_enough_change_nothing() -> None:
    site = _lab()
    unknown = np.full(site.n_gpus, np.nan)
    caps, ratio = single_feed_guard(site, unknown, np.zeros((site.n_racks, 2), dtype=bool))
    assert np.isnan(caps).all() and np.isnan(ratio).all()
    low = site.gpu_min_w.copy()
    caps, ratio = single_feed_guard(site, low, _a_dark(site))
    assert np.array_equal(caps, low) and np.isnan(ratio).all()
    caps, _ = single_feed_guard(site, unknown, _a_dark(site), GuardSettings(enabled=False))
    assert np.isnan(caps).all()


def _light_frames(site: Site, n: int, lose_at: int) -> list[list[object]]:
    """The lab fleet at a third of its load (racks far under their PDUs), feed A lost at `lose_at`."""
    fleet = Fleet(site, seed=4, load_scale=0.3, epoch_s=1_790_000_000.0)
    src = FleetSource("sim", {"interval_s": 1.0}, SourceContext(site=site, plant=fleet))
    out: list[list[object]] = []
    for i in range(n):
        if i == lose_at:
            fleet.lose_feed("A")
        out.append(list(src.read_batch()))
    return out


def test_the_controller_guards_light_racks_as_soon_as_a_feed_is_lost_and_says_why() -> None:
    # Lightly loaded racks: no PDU crosses a threshold when the feed goes, so reactive capping does nothing; a
    # rack's work starting would take its surviving PDU over its rating within a second. The guard caps first.
    site = _lab()
    eng = Engine(site, Keyring({"k1": b"k" * 32}, "k1"), CapSettings(), 30.0)
    lose_at = 8
    for i, second in enumerate(_light_frames(site, lose_at + 20, lose_at)):
        for f in second:
            eng.feed_frame(f)  # type: ignore[arg-type]
        if i == lose_at - 1:
            assert not [c for c in eng.result.commands if c.action == "power_cap"]  # 2N: nothing to guard
    eng.finish()
    ctl = eng.controller
    caps = np.where(np.isfinite(ctl.cap_w), ctl.cap_w, site.gpu_max_w)
    rating = site.level_rated_w[site.rack_pdu[:, 1]]
    assert (rack_worst_w(site, caps) <= 0.95 * rating + 1.0).all()  # however hard their work starts now
    assert any(c.reason.startswith("single-feed guard: pdu-b") for c in eng.result.commands)
