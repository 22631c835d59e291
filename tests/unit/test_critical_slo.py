"""Critical requests through a feed or UPS lineup loss (issue 14): the full policy keeps >= 99% of critical
requests within their TTFT SLO on the lab site and stays within every rating after the transfer second;
over a level's high threshold, batch work under it is shed before any critical GPU (controllers/capping.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controllers.capping import CapSettings, decide_caps
from ops.evaluate import run_policy
from powerplane.site import PRIORITIES, Site
from powerplane.site_file import load_site
from sim.scenario import scenario_from_dict

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"
LOST_AT_S = 10


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(LAB)


@pytest.mark.parametrize("event", [
    {"kind": "lose_feed", "feed": "A"},
    {"kind": "lose_level", "level": "ups-a"},
], ids=["feed", "ups-lineup"])
def test_full_policy_keeps_critical_within_slo_through_a_loss(site: Site, event: dict[str, Any]) -> None:
    # 60 s, the conversation trace, one side lost from 10 s for 30 s: before issue 14's fixes 97.6% (critical
    # GPUs shed twice on one reading, then held at their floor while the PDU meters still showed the transfer).
    sc = scenario_from_dict({"name": "loss", "site": "lab", "duration_s": 60,
                             "events": [{"at_s": LOST_AT_S, "duration_s": 30, **event}]})
    r = run_policy(site, "full", 60, scenario=sc)
    assert r["slo"]["inference-critical"]["ttft_within_slo"] >= 0.99
    # Nothing over a rating after the transfer second (series index k is the second ending at k + 1 s).
    assert max(r["series"]["worst_frac"][LOST_AT_S + 1:]) <= 1.0
    assert r["breaker_trips"] == 0


def test_over_the_high_threshold_batch_racks_are_shed_before_critical_racks(tmp_path: Path) -> None:
    # Racks 1-4 run only critical inference, racks 5-8 only batch, training and best-effort: feed A lost, every
    # B PDU under its own 80 %, but rpp-b1 (which carries all eight) over 89 % of its limit.
    text = LAB.read_text()
    mixed = '["inference-critical", "inference-critical", "inference-critical", "inference-critical", ' \
            '"inference-batch", "inference-batch", "training", "best-effort"]'
    assert text.count(mixed) == 8
    crit = "[" + ", ".join(['"inference-critical"'] * 8) + "]"
    low = '["inference-batch", "inference-batch", "inference-batch", "inference-batch", "training", ' \
          '"training", "best-effort", "best-effort"]'
    for i in range(8):
        text = text.replace(mixed, crit if i < 4 else low, 1)
    (tmp_path / "split.toml").write_text(text)
    site = load_site(tmp_path / "split.toml")
    s = CapSettings()
    limit = site.limits_w("A-lost")[1]
    rpp = site.level_index["rpp-b1"]
    loads = np.full(len(site.level_ids), np.nan)
    loads[site.rack_pdu[:, 0]] = 0.0
    loads[site.rack_pdu[:, 1]] = 36_000.0  # 78% of a B PDU's 46 kW limit
    loads[rpp] = 8 * 36_000.0  # 90% of rpp-b1's 320 kW
    assert loads[rpp] > s.high_threshold * limit[rpp]
    power, cap = site.gpu_max_w.copy(), site.gpu_max_w.copy()
    new = decide_caps(site, power, cap, loads, limit, s)
    is_crit = site.gpu_priority == PRIORITIES.index("inference-critical")
    assert np.all(new[is_crit] == cap[is_crit])  # the batch racks have more than the excess to give
    shed_w = float((cap - new)[~is_crit].sum())
    assert shed_w >= (loads[rpp] - (s.cap_threshold - s.target_margin) * limit[rpp]) * 0.94 * 0.99
