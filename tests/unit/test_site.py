"""Site model: loading, validation, limits, roll-up, and the generated 100 MW reference site."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from powerplane.refsite import RefSiteParams, reference_site, reference_site_dict, to_toml
from powerplane.site import FEEDS, KIND, PRIORITIES, FloatArray, IntArray, Site
from powerplane.site_file import load_site, site_from_dict
from powerplane.validation import ConfigError

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


@pytest.fixture(scope="module")
def lab() -> Site:
    return load_site(LAB)


@pytest.fixture(scope="module")
def ref() -> Site:
    return reference_site()


def rack_wall_w(site: Site, gpu_w: FloatArray) -> FloatArray:
    """Wall power of every rack with the given per-GPU power."""
    wall = np.bincount(site.server_rack, weights=site.server_input_w(gpu_w), minlength=site.n_racks)
    return np.asarray(wall, dtype=np.float64)


def feed_levels(site: Site, kind: str, feed: str) -> IntArray:
    lv = site.levels_of_kind(kind)
    return np.asarray(lv[site.level_feed[lv] == FEEDS.index(feed)], dtype=np.int64)


# ---- the lab site -------------------------------------------------------------------------------


def test_lab_loads(lab: Site) -> None:
    assert lab.name == "lab"
    assert lab.n_gpus == 512
    assert lab.n_racks == 8
    assert lab.rack_ids == [f"rack-{i:02d}" for i in range(1, 9)]


def test_lab_gpu_paths_end_at_each_utility_feed(lab: Site) -> None:
    for gpu in (0, 511):
        path_a = lab.path_to_root(gpu, "A")
        path_b = lab.path_to_root(gpu, "B")
        assert path_a[-1] == "util-a"
        assert path_b[-1] == "util-b"
        # GPU -> server -> rack -> PDU -> RPP -> UPS -> utility, sharing the rack
        assert len(path_a) == len(path_b) == 7
        assert path_a[:3] == path_b[:3]
    assert lab.path_to_root(0, "A") == ["rack-01-s00/gpu0", "rack-01-s00", "rack-01", "pdu-a01", "rpp-a1",
                                        "ups-a", "util-a"]
    assert lab.path_to_root(511, "B")[2:] == ["rack-08", "pdu-b08", "rpp-b1", "ups-b", "util-b"]


def test_lab_children(lab: Site) -> None:
    assert lab.children("rpp-a1") == [f"pdu-a{i:02d}" for i in range(1, 9)]
    assert lab.children("pdu-b03") == ["rack-03"]
    assert lab.children("row-1") == [f"rack-{i:02d}" for i in range(1, 9)]


# ---- validation -----------------------------------------------------------------------------------

BROKEN = """
name = "broken"

[server_types.hgx]
gpus = 8
gpu_max_w = 700.0
gpu_min_w = 200.0
gpu_idle_w = 70.0
other_w = 2000.0
psu_efficiency = 0.94
rating_kw = 10.2

[[feeds]]
id = "util-a"
feed = "A"
rating_kw = 600.0

[[feeds]]
id = "util-b"
feed = "B"
rating_kw = "600"           # mistake: a string (its id still counts: ups-b below is fine)

[[ups]]
id = "ups-a"
parent = "util-a"
rating_kw = 500.0

[[ups]]
id = "ups-b"
parent = "util-b"
rating_kw = 500.0

[[rpps]]
id = "rpp-a"
parent = "ups-a"
rating_kw = -5.0            # mistake: negative rating

[[rpps]]
id = "rpp-b"
parent = "ups-b"
rating_kw = 400.0

[[pdus]]
id = "pdu-a1"
parent = "rpp-a"
rating_kw = 57.5

[[pdus]]
id = "pdu-b1"
parent = "rpp-b"
rating_kw = 57.5

[[pdus]]
id = "pdu-a1"               # mistake: duplicate id
parent = "rpp-a"
rating_kw = 57.5

[[pdus]]
id = "pdu-a9"
parent = "rpp-nowhere"      # mistake: unknown parent (its feed is then unknown: no second error)
rating_kw = 57.5

[[halls]]
id = "hall-1"

[[halls.zones]]
id = "zone-1"
capacity_kw = 480.0

[[halls.rows]]
id = "row-1"
zone = "zone-1"

[[halls.rows.racks]]
id = "rack-1"
pdu_a = "pdu-a1"
pdu_b = "pdu-b1"
server_type = "hgx"
servers = 2
priority = "urgent"         # mistake: unknown priority class
rating_kw = 66.0
inlet_sensor = 2            # mistake: unknown key (inlet_sensors)

[[halls.rows.racks]]
id = "rack-2"
pdu_a = "pdu-x"             # mistake: unknown PDU
pdu_b = "pdu-a1"            # mistake: an A-side PDU as pdu_b
server_type = "hgx"
servers = 2
rating_kw = 66.0

[[halls.rows.racks]]
id = "rack-3"               # mistake: no server_type
pdu_a = "pdu-a9"
pdu_b = "pdu-b1"
servers = 2
rating_kw = 66.0
"""

BROKEN_ERRORS = {
    "feeds[1].rating_kw: input should be a valid number, got '600'",
    "rpps[0].rating_kw: input should be greater than 0, got -5.0",
    "pdus[2].id: duplicate id 'pdu-a1' (first used at pdus[0])",
    "pdus[3].parent: unknown rpp 'rpp-nowhere'",
    "halls[0].rows[0].racks[0].priority: input should be "
    + ", ".join(f"'{p}'" for p in PRIORITIES[:-1]) + f" or '{PRIORITIES[-1]}', got 'urgent'",
    "halls[0].rows[0].racks[0].inlet_sensor: unknown key",
    "halls[0].rows[0].racks[1].pdu_a: unknown PDU 'pdu-x'",
    "halls[0].rows[0].racks[1].pdu_b: PDU 'pdu-a1' is on feed A, expected feed B",
    "halls[0].rows[0].racks[2].server_type: missing (required)",
}


def test_broken_site_lists_every_mistake_at_once_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    err = exc.value
    assert set(err.errors) == BROKEN_ERRORS  # all of them, and nothing spurious
    assert len(err.errors) == len(BROKEN_ERRORS)
    assert err.source == str(path)
    text = str(err)
    assert text.startswith(f"{path}: 9 error(s)\n")
    assert "halls[0].rows[0].racks[1].pdu_a: unknown PDU 'pdu-x'" in text.splitlines()


def test_broken_site_from_dict_reports_the_same(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        site_from_dict(tomllib.loads(BROKEN), source="inline")
    assert set(exc.value.errors) == BROKEN_ERRORS


def test_checks_within_and_between_tables_name_the_field_at_fault() -> None:
    data = tomllib.loads(LAB.read_text())
    data["server_types"]["hgx-h100"]["gpu_min_w"] = 800.0
    data["ups"][0]["feed"] = "A"
    data["pdus"][1]["parent"] = "ups-b"
    rows = data["halls"][0]["rows"]
    rows[0]["racks"][0]["priorities"] = ["training"] * 3
    rows[0]["racks"][1]["zone"] = "zone-9"
    rows[0]["racks"][2]["server_type"] = "hgx-b300"
    with pytest.raises(ConfigError) as exc:
        site_from_dict(data, source="lab-edited")
    assert exc.value.errors == [
        "server_types.hgx-h100.gpu_min_w: 800 W is above gpu_max_w 700 W",
        "ups[0].feed: set on the utility feed only; it is inherited from the parent",
        "halls[0].rows[0].racks[0].priorities: expected 8 priority classes (one per server), got 3",
        "pdus[1].parent: 'ups-b' is a ups, expected a rpp",
        "halls[0].rows[0].racks[1].zone: unknown cooling zone 'zone-9' in this hall (known: zone-1)",
        "halls[0].rows[0].racks[2].server_type: unknown server type 'hgx-b300' (known: hgx-h100)",
    ]
    assert str(exc.value).startswith("lab-edited: 6 error(s)\n")


def test_a_site_needs_server_types_and_racks() -> None:
    with pytest.raises(ConfigError) as exc:
        site_from_dict({"name": "empty"})
    assert exc.value.errors == ["server_types: at least one server type is required"]
    data = tomllib.loads(LAB.read_text())
    del data["halls"]
    with pytest.raises(ConfigError) as exc:
        site_from_dict(data)
    assert exc.value.errors == ["halls: the site has no racks"]


def test_invalid_toml_is_one_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('name = "lab"\n[[halls]\nid = \n')
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    assert len(exc.value.errors) == 1
    assert exc.value.errors[0].startswith("not valid TOML: ")
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_missing_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_site(tmp_path / "nope.toml")
    assert len(exc.value.errors) == 1
    assert exc.value.errors[0].startswith("cannot read: ")


# ---- limits and roll-up ---------------------------------------------------------------------------


def test_derated_is_80_percent_of_rated_by_default(lab: Site) -> None:
    rated, derated = lab.limits_w()
    zones = lab.levels_of_kind("zone")
    breakers = np.setdiff1d(np.arange(len(lab.level_ids)), zones)
    assert lab.derating == 0.8
    np.testing.assert_allclose(derated[breakers], 0.8 * rated[breakers])
    np.testing.assert_allclose(derated[zones], rated[zones])  # cooling capacity is not derated
    assert rated[lab.level("pdu-a01")] == 57_500.0
    assert derated[lab.level("pdu-a01")] == 46_000.0
    assert rated[lab.level("util-b")] == 600_000.0
    # Both feeds up: a rack gets its own nameplate (66 kW), less than its two PDUs (115 kW).
    assert rated[lab.level("rack-01")] == 66_000.0


def test_derating_comes_from_the_file() -> None:
    data = tomllib.loads(LAB.read_text())
    data["derating"] = 0.9
    rated, derated = site_from_dict(data).limits_w()
    np.testing.assert_allclose(derated[rated > 0][:5], 0.9 * rated[rated > 0][:5])


def test_a_lost_zeroes_feed_a_and_racks_fall_to_their_b_pdu(lab: Site) -> None:
    rated, derated = lab.limits_w("A-lost")
    for kind in ("utility", "ups", "rpp", "pdu"):
        assert (rated[feed_levels(lab, kind, "A")] == 0).all(), kind
        assert (derated[feed_levels(lab, kind, "A")] == 0).all(), kind
        assert (rated[feed_levels(lab, kind, "B")] > 0).all(), kind
    for r in range(lab.n_racks):
        b_pdu = lab.rack_pdu[r, 1]
        assert rated[lab.rack_level[r]] == lab.level_rated_w[b_pdu] == 57_500.0
        assert derated[lab.rack_level[r]] == pytest.approx(46_000.0)
    # Rows and the site are bounded by what their racks can now draw.
    assert rated[lab.level("row-1")] == pytest.approx(8 * 57_500.0)
    assert rated[lab.level("lab")] == pytest.approx(8 * 57_500.0)
    # B-lost mirrors it.
    rated_b, _ = lab.limits_w("B-lost")
    assert (rated_b[feed_levels(lab, "pdu", "B")] == 0).all()
    assert rated_b[lab.level("rack-05")] == 57_500.0


def test_rollup(lab: Site) -> None:
    rack_w = np.linspace(30_000.0, 44_000.0, lab.n_racks)
    total = rack_w.sum()
    for mode in ("normal", "A-lost", "B-lost"):
        load = lab.rollup_w(rack_w, mode)
        assert load[lab.level("lab")] == pytest.approx(total), mode
        assert load[lab.level("row-1")] == pytest.approx(total), mode
        assert load[lab.level("hall-1")] == pytest.approx(total), mode
        assert load[lab.level("zone-1")] == pytest.approx(total), mode
        np.testing.assert_allclose(load[lab.rack_level], rack_w)
        # Utility feeds together carry exactly the racks' load, whatever the mode.
        assert load[lab.level("util-a")] + load[lab.level("util-b")] == pytest.approx(total), mode

    normal = lab.rollup_w(rack_w, "normal")
    pdus_a, pdus_b = feed_levels(lab, "pdu", "A"), feed_levels(lab, "pdu", "B")
    assert normal[pdus_a].sum() + normal[pdus_b].sum() == pytest.approx(total)
    assert normal[lab.level("pdu-a03")] == pytest.approx(rack_w[2] / 2)
    assert normal[lab.level("ups-a")] == pytest.approx(total / 2)

    a_lost = lab.rollup_w(rack_w, "A-lost")
    for kind in ("utility", "ups", "rpp", "pdu"):
        assert (a_lost[feed_levels(lab, kind, "A")] == 0).all(), kind
    assert a_lost[pdus_b].sum() == pytest.approx(total)
    assert a_lost[lab.level("pdu-b03")] == pytest.approx(rack_w[2])
    assert a_lost[lab.level("rpp-b1")] == pytest.approx(total)
    assert a_lost[lab.level("util-b")] == pytest.approx(total)


def test_server_input_w(lab: Site) -> None:
    gpu_w = np.full(lab.n_gpus, 500.0)
    gpu_w[:8] = 700.0  # server 0 at full power
    wall = lab.server_input_w(gpu_w)
    assert wall.shape == (64,)
    # (GPU sum + other load) / PSU efficiency: other_w is DC load behind the same PSUs.
    assert wall[0] == pytest.approx((8 * 700.0 + 2000.0) / 0.94)
    assert wall[1] == pytest.approx((8 * 500.0 + 2000.0) / 0.94)
    # A full lab rack at max power (8 x 8.09 kW = 64.7 kW) stays under its 66 kW nameplate.
    full = rack_wall_w(lab, lab.gpu_max_w)
    assert full == pytest.approx(np.full(8, 8 * (8 * 700.0 + 2000.0) / 0.94))
    assert (full < 66_000.0).all()


# ---- the 100 MW reference site --------------------------------------------------------------------


def test_reference_site_loads_fast() -> None:
    t0 = time.perf_counter()
    reference_site()
    assert time.perf_counter() - t0 < 2.0


def test_reference_site_size(ref: Site) -> None:
    # 4 halls x 16 rows x 16 racks of NVL72: 1,024 racks, 73,728 GPUs.
    assert 950 <= ref.n_racks <= 1100
    assert ref.n_racks == 1024
    assert 70_000 <= ref.n_gpus <= 75_000
    assert ref.n_gpus == 73_728
    per_rack = np.diff(ref.rack_gpu_start)
    assert (per_rack == 72).all()
    assert (np.diff(ref.rack_server_start) == 18).all()
    assert len(ref.levels_of_kind("hall")) == 4
    assert len(ref.levels_of_kind("row")) == 64
    assert (ref.gpu_max_w == 1200.0).all()


def test_reference_rack_draws_nvl72_power_at_the_wall(ref: Site) -> None:
    full = rack_wall_w(ref, ref.gpu_max_w)
    assert (full >= 120_000.0).all() and (full <= 132_000.0).all()
    assert full[0] == pytest.approx(125_052.6, abs=0.1)  # 18 x (4 x 1200 + 1800) / 0.95
    assert full[0] == pytest.approx(RefSiteParams().rack_peak_w)
    rated, _ = ref.limits_w()
    assert (full <= rated[ref.rack_level]).all()  # under the 132 kW rack nameplate


def test_reference_site_is_100mw_class_and_each_feed_is_oversubscribed(ref: Site) -> None:
    peak = rack_wall_w(ref, ref.gpu_max_w).sum()
    floor = rack_wall_w(ref, ref.gpu_min_w).sum()
    assert peak == pytest.approx(128.05e6, rel=1e-3)  # IT load with every GPU at 1200 W
    rated, derated = ref.limits_w()
    # Nameplate per feed, level by level: 100 MW utility, 32 x 3.04 MW UPS lineups,
    # 64 x 1.6 MW busways, 1,024 x 115 kW rack PDUs.
    expect_mw = {"utility": (1, 100.0), "ups": (32, 97.28), "rpp": (64, 102.4), "pdu": (1024, 117.76)}
    single_feed = np.inf
    for kind, (count, mw) in expect_mw.items():
        for feed in FEEDS:
            lv = feed_levels(ref, kind, feed)
            assert lv.size == count, (kind, feed)
            assert rated[lv].sum() == pytest.approx(mw * 1e6), (kind, feed)
        single_feed = min(single_feed, rated[feed_levels(ref, kind, "A")].sum())
    assert 90e6 <= single_feed <= 110e6  # 100 MW class: 97.28 MW, the UPS lineups bind

    # Oversubscribed: one feed alone cannot carry the site at full load, even at nameplate ...
    assert single_feed < peak
    assert 0.8 * single_feed < 0.65 * peak  # derated: 77.8 MW of 128 MW
    # ... but both feeds together can, and the power brake (all GPUs at min) fits on one feed.
    assert 2 * 0.8 * single_feed > peak
    assert floor < 0.8 * single_feed

    # The same seen through the model: at full load with A lost, feed-B levels run over their limit.
    rack_peak = rack_wall_w(ref, ref.gpu_max_w)
    _, derated_a_lost = ref.limits_w("A-lost")
    load = ref.rollup_w(rack_peak, "A-lost")
    util_b = ref.level("util-b")
    assert load[util_b] == pytest.approx(peak)
    assert load[util_b] > rated[util_b]
    for kind in ("ups", "rpp", "pdu"):
        lv = feed_levels(ref, kind, "B")
        assert (load[lv] > derated_a_lost[lv]).all(), kind
    # With both feeds up every breaker level stays within its derated limit.
    load_n = ref.rollup_w(rack_peak, "normal")
    breakers = np.flatnonzero(np.isin(ref.level_kind, [KIND[k] for k in ("utility", "ups", "rpp", "pdu")]))
    assert (load_n[breakers] <= derated[breakers]).all()


def test_reference_site_feeds_and_cooling(ref: Site) -> None:
    gpu = ref.n_gpus - 1
    assert ref.path_to_root(gpu, "A")[-1] == "util-a"
    assert ref.path_to_root(gpu, "B")[-1] == "util-b"
    assert len(ref.path_to_root(gpu, "B")) == 7
    # One busway per row per feed, one PDU per rack per feed.
    rpp = ref.path_to_root(0, "A")[4]
    assert len(ref.children(rpp)) == 16
    assert (ref.rack_pdu[:, 0] != ref.rack_pdu[:, 1]).all()
    assert np.unique(ref.rack_pdu).size == 2 * ref.n_racks
    # One cooling zone per row pair, each serving 32 racks with 3.52 MW.
    zones = ref.levels_of_kind("zone")
    assert zones.size == 32
    assert (np.bincount(ref.rack_zone)[zones] == 32).all()
    rated, _ = ref.limits_w()
    assert (rated[zones] == 3.52e6).all()


def test_reference_priority_mix_is_deterministic_and_configurable(ref: Site) -> None:
    counts = np.bincount(ref.server_priority[ref.rack_server_start[:-1]], minlength=len(PRIORITIES))
    assert counts.tolist() == [205, 205, 512, 102]  # 20/20/50/10 % of 1,024 racks
    # Whole racks share a class by default, and every row gets a mix.
    per_rack = ref.server_priority.reshape(ref.n_racks, 18)
    assert (per_rack == per_rack[:, :1]).all()
    assert np.unique(per_rack[:16, 0]).size == 4
    assert reference_site_dict() == reference_site_dict()

    params = RefSiteParams(halls=1, rows_per_hall=2, racks_per_row=4, priority_granularity="server",
                           priority_mix=(("inference-critical", 0.5), ("best-effort", 0.5)))
    small = reference_site(params)
    assert small.n_racks == 8 and small.n_gpus == 8 * 72
    assert np.bincount(small.server_priority, minlength=4).tolist() == [72, 0, 0, 72]
    assert np.unique(small.server_priority[:18]).size == 2  # classes mixed within a rack


def test_bad_params_are_rejected() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        RefSiteParams(priority_mix=(("training", 0.6),))
    with pytest.raises(ValueError, match="unknown class 'urgent'"):
        RefSiteParams(priority_mix=(("urgent", 1.0),))
    with pytest.raises(ValueError, match="halls"):
        RefSiteParams(halls=0)


def test_reference_toml_round_trips_and_loads(tmp_path: Path) -> None:
    d = reference_site_dict()
    text = to_toml(d)
    assert "[[halls.rows.racks]]" in text
    assert tomllib.loads(text) == d
    path = tmp_path / "ref.toml"
    path.write_text(text)
    site = load_site(path)
    assert site.n_gpus == 73_728
    assert site.level_ids == reference_site().level_ids


def test_to_toml_round_trips_awkward_values() -> None:
    d = {
        "plain": "quote \" backslash \\ tab \t newline \n bell \x07 unicode é",
        "odd key.with dots": 1,
        "big": 1e300,
        "small": 5e-324,
        "neg": -0.5,
        "whole_float": 3.0,
        "flag": False,
        "inf": float("inf"),
        "ints": [1, 2, 3],
        "empty": [],
        "nested": [[1, 2], ["a"]],
        "inline": [{"a": 1}, 2],
        "table": {"x": 1, "deeper": {"y": [{"z": 1}, {"z": 2, "w": {"v": "u"}}]}},
        "only_tables": {"a": {"b": 1}},
        "empty_table": {},
        "aot": [{"id": "one", "kids": [{"k": 1}]}, {"id": "two", "sub": {"s": 1}, "kids": [{}]}],
    }
    assert tomllib.loads(to_toml(d)) == d
    with pytest.raises(TypeError):
        to_toml({"when": object()})
