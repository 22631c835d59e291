"""The controller's event-driven trigger (`powerplane controller --decide-on-crossing`): which PDU loads
make it decide at once instead of at the next tick."""

from __future__ import annotations

from pathlib import Path

from collectors.base import SourceContext, load_source
from controllers.capping import CapSettings
from controllers.service import CapController
from powerplane.fleet import Fleet
from powerplane.signing import Keyring
from powerplane.site import load_site
from streams.rollup import Limits, frame_aggregates

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


def test_a_lost_feed_triggers_once_per_pdu_that_goes_over() -> None:
    site = load_site(LAB)
    fleet = Fleet(site, seed=3, epoch_s=1_000.0)
    source = load_source("sim", {"kind": "sim", "interval_s": 1.0}, SourceContext(site=site, plant=fleet))
    ctl = CapController(site, Keyring({"k1": b"\x05" * 32}, "k1"), CapSettings(), lease_s=30.0)
    limits = Limits(site)

    def step() -> tuple[set[str], set[str]]:
        """One interval: the PDUs whose load crossed the threshold, and those over it."""
        crossed, over = set(), set()
        for fr in source.read_batch():
            ctl.on_frame(fr)
            for agg in frame_aggregates(site, limits, fr):
                if ctl.crosses_cap(agg):
                    crossed.add(agg.level)
                ctl.on_aggregate(agg, fr.ts_s)
                i = site.level_index[agg.level]
                if agg.kind == "pdu" and agg.power_w > CapSettings().cap_threshold * ctl.limit_w[i]:
                    over.add(agg.level)
        return crossed, over

    for _ in range(3):
        assert step() == (set(), set())  # normal operation: no PDU near its limit, no early decision
    fleet.lose_feed("A")
    crossed, over = step()
    assert over and crossed == over  # every PDU that went over asks for a decision now
    assert {site.level_index[lvl] for lvl in over} <= set(site.rack_pdu[:, 1].tolist())  # all on feed B
    crossed, over = step()
    assert over and crossed == set()  # still over, not capped yet: the regular tick handles it, no storm
