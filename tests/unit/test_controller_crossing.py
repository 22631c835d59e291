"""The controller's event-driven trigger (`powerplane controller --decide-on-crossing`): which PDU loads
make it decide at once instead of at the next tick."""

from __future__ import annotations

from pathlib import Path

from collectors.base import SourceContext, load_source
from controllers.capping import CapSettings
from controllers.controller import CapController
from powerplane.signing import Keyring
from powerplane.site_file import load_site
from sim.fleet import Fleet
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


def test_an_upper_level_crossing_its_threshold_triggers_too() -> None:
    from powerplane.schemas import LevelAggregate

    site = load_site(LAB)
    ctl = CapController(site, Keyring({"k1": b"\x05" * 32}, "k1"), CapSettings(), lease_s=30.0)
    _, normal = site.limits_w("normal")
    _, lost = site.limits_w("A-lost")
    ups = site.level("ups-b")

    def agg(power_w: float, limit_w: float, ts: float) -> LevelAggregate:
        return LevelAggregate(site="lab", level="ups-b", kind="ups", ts_s=ts, window_s=1.0, power_w=power_w,
                              limit_w=limit_w, rated_w=limit_w / 0.8, mode="normal", gpus_expected=512,
                              gpus_reporting=512)

    steady = 0.5 * normal[ups]
    assert not ctl.crosses_cap(agg(steady, normal[ups], 1.0))
    ctl.on_aggregate(agg(steady, normal[ups], 1.0), 1.0)
    # Feed A lost: the B lineup now carries the whole site (its own limit is unchanged, A's went to 0).
    assert lost[ups] == normal[ups] and 2 * steady > 0.8 * lost[ups]
    assert ctl.crosses_cap(agg(2 * steady, lost[ups], 2.0))
    ctl.on_aggregate(agg(2 * steady, lost[ups], 2.0), 2.0)
    assert not ctl.crosses_cap(agg(2 * steady, lost[ups], 3.0))  # still over: the tick handles it
