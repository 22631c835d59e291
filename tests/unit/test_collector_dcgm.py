"""The `dcgm` source's page parsing and frame building, on dcgm-exporter pages (tests/data/dcgm/)."""

from __future__ import annotations

import logging
import math
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from collectors.base import SourceConfigError, SourceError, load_source
from collectors.dcgm import METRICS, DcgmSource, parse_page
from powerplane.schemas import TelemetryFrame

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "dcgm"
OPTS = {"kind": "dcgm", "url": "http://192.0.2.17:9400/metrics", "site": "lab", "rack": "r02", "server": 5}

LINE = re.compile(r'^(DCGM_FI_DEV_\w+)\{gpu="(\d+)".*\} (\S+)$')


def page_values(text: str) -> dict[int, dict[str, float]]:
    """An independent reading of a page (one regex per line), in the frame's fields and SI units."""
    out: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m and m[1] in METRICS:
            metric = METRICS[m[1]]
            out.setdefault(int(m[2]), {})[metric.field] = float(m[3]) / metric.divisor
    return out


def source(**options: object) -> DcgmSource:
    src = load_source("node17-dcgm", {**OPTS, **options})
    assert isinstance(src, DcgmSource)
    return src


def test_parse_a_full_h100_page() -> None:
    text = (DATA / "h100x8.txt").read_text()
    page = parse_page(text)
    assert sorted(page) == list(range(8))
    expected = page_values(text)
    assert page == expected
    assert len(page[0]) == 8  # every field this source reads, all exported here
    assert page[0] == {"power_w": 312.456, "limit_w": 700.0, "temp_c": 61.0, "sm_clock_mhz": 1980.0,
                       "mem_clock_mhz": 2619.0, "util": 0.87, "energy_j": 1234567890.123, "throttle_reasons": 0.0}
    assert page[7]["limit_w"] == 350.0 and page[5]["throttle_reasons"] == 0x84


def test_frame_from_a_full_page_in_si_units() -> None:
    text = (DATA / "h100x8.txt").read_text()
    f = source().to_frame(parse_page(text), ts_s=1.7e9)
    f = TelemetryFrame.decode(f.encode())  # survives the wire schema
    exp = page_values(text)
    col = {k: [exp[g][k] for g in range(8)] for k in exp[0]}
    assert (f.site, f.rack, f.source, f.ts_s, f.interval_s) == ("lab", "r02", "node17-dcgm", 1.7e9, 10.0)
    assert f.gpu_server.tolist() == [5] * 8 and f.gpu_slot.tolist() == list(range(8))
    for name in ("power_w", "limit_w", "temp_c", "sm_clock_mhz", "util"):
        np.testing.assert_allclose(getattr(f, name), col[name], rtol=1e-6, err_msg=name)  # f32 on the wire
    assert f.mem_clock_mhz is not None and f.mem_clock_mhz.tolist() == col["mem_clock_mhz"]
    assert f.energy_j is not None and f.energy_j.tolist() == col["energy_j"]  # f64: exact to the mJ
    assert f.throttle_reasons is not None and f.throttle_reasons.tolist() == [0, 4, 0, 1, 4, 0x84, 1, 4]
    assert f.limit_w.tolist() == [700, 700, 700, 700, 500, 700, 700, 350]


def test_dcgm_blank_sentinels_and_unexported_metrics_are_nan(caplog: pytest.LogCaptureFixture) -> None:
    # An older exporter with the default counters: no enforced limit, no throttle reasons, and GPU 1's
    # SM clock, power and energy as DCGM "not supported" sentinels.
    page = parse_page((DATA / "older_exporter_blanks.txt").read_text())
    assert page[1] == {"mem_clock_mhz": 1593.0, "temp_c": 47.0, "util": 0.12}
    with caplog.at_level(logging.WARNING, "powerplane.collectors.dcgm"):
        f = source().to_frame(page)
    assert f.power_w[0] == pytest.approx(287.312) and math.isnan(f.power_w[1])
    assert f.sm_clock_mhz[0] == 1755 and math.isnan(f.sm_clock_mhz[1])
    assert f.energy_j is not None and f.energy_j[0] == 86400123.456 and math.isnan(f.energy_j[1])
    assert np.isnan(f.limit_w).all()  # never 0 for missing
    assert f.throttle_reasons is None
    assert [r.getMessage() for r in caplog.records if "DCGM_FI_DEV_ENFORCED_POWER_LIMIT" in r.getMessage()]


def test_warnings_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    src = source(gpus=[0, 1, 9])
    page = parse_page((DATA / "older_exporter_blanks.txt").read_text())
    with caplog.at_level(logging.WARNING, "powerplane.collectors.dcgm"):
        f = src.to_frame(page)
        n = len(caplog.records)
        src.to_frame(page)
    assert n == 2 and len(caplog.records) == 2  # GPU 9 absent; no enforced limit exported
    assert f.gpu_slot.tolist() == [0, 1, 9] and math.isnan(f.power_w[2]) and math.isnan(f.temp_c[2])


def test_a_metric_missing_for_one_gpu_is_nan_not_zero() -> None:
    text = (DATA / "h100x8.txt").read_text()
    text = "\n".join(ln for ln in text.splitlines()
                     if not (ln.startswith("DCGM_FI_DEV_GPU_UTIL{") and 'gpu="3"' in ln))
    f = source().to_frame(parse_page(text))
    assert math.isnan(f.util[3]) and f.util[2] == pytest.approx(0.42)


def test_whole_gpu_sample_wins_over_mig_instances_and_pods() -> None:
    labels = 'UUID="GPU-5f0c1b7e-3c41-2d8a-9e7b-0a6d1c2e4f01",device="nvidia0",modelName="NVIDIA H100 80GB HBM3"'
    text = f"""# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).
# TYPE DCGM_FI_DEV_POWER_USAGE gauge
DCGM_FI_DEV_POWER_USAGE{{gpu="0",{labels},GPU_I_PROFILE="3g.40gb",GPU_I_ID="1"}} 111.000000
DCGM_FI_DEV_POWER_USAGE{{gpu="0",{labels},container="a",namespace="ns",pod="p1"}} 222.000000
DCGM_FI_DEV_POWER_USAGE{{gpu="0",{labels},container="b",namespace="ns",pod="p2"}} 333.000000
# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).
# TYPE DCGM_FI_DEV_GPU_TEMP gauge
DCGM_FI_DEV_GPU_TEMP{{gpu="0",{labels},GPU_I_PROFILE="3g.40gb",GPU_I_ID="1"}} 44
DCGM_FI_DEV_GPU_TEMP{{gpu="0",{labels},GPU_I_PROFILE="3g.40gb",GPU_I_ID="2"}} 45
"""
    assert parse_page(text) == {0: {"power_w": 222.0, "temp_c": 44.0}}


def test_old_throttle_reason_name_is_read() -> None:
    text = ('# TYPE DCGM_FI_DEV_CLOCK_THROTTLE_REASONS gauge\n'
            'DCGM_FI_DEV_CLOCK_THROTTLE_REASONS{gpu="2",UUID="GPU-x"} 32\n')
    assert parse_page(text) == {2: {"throttle_reasons": 32.0}}


@pytest.mark.parametrize(("text", "msg"), [
    ((DATA / "garbage.html").read_text(), "not a Prometheus text page"),
    ("DCGM_FI_DEV_POWER_USAGE{gpu=\"0\"} three hundred\n", "not a Prometheus text page"),
    ("DCGM_FI_DEV_POWER_USAGE{gpu=\"0\" 300\n", "not a Prometheus text page"),
    ("DCGM_FI_DEV_POWER_USAGE{UUID=\"GPU-x\"} 300\n", "DCGM_FI_DEV_POWER_USAGE sample without a GPU index label"),
])
def test_garbage_is_a_source_error(text: str, msg: str) -> None:
    with pytest.raises(SourceError, match=msg):
        parse_page(text)


def test_a_page_without_gpus_is_a_source_error() -> None:
    text = "# TYPE node_load1 gauge\nnode_load1 0.5\n"  # e.g. the URL of a node exporter
    assert parse_page(text) == {}
    with pytest.raises(SourceError, match="no GPU metrics"):
        source().to_frame(parse_page(text))


def test_out_of_range_reading_is_nan(caplog: pytest.LogCaptureFixture) -> None:
    text = '# TYPE DCGM_FI_DEV_GPU_TEMP gauge\nDCGM_FI_DEV_GPU_TEMP{gpu="0"} 511\nDCGM_FI_DEV_GPU_TEMP{gpu="1"} 50\n'
    with caplog.at_level(logging.WARNING, "powerplane.collectors.dcgm"):
        f = source().to_frame(parse_page(text))
    assert math.isnan(f.temp_c[0]) and f.temp_c[1] == 50
    assert any("temp_c = 511" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("options", "key"), [
    ({"url": None}, "url"),
    ({"url": "192.0.2.17:9400/metrics"}, "url"),
    ({"url": "ftp://192.0.2.17/metrics"}, "url"),
    ({"rack": None}, "rack"),
    ({"server": "5"}, "server"),
    ({"gpus": [1, 1]}, "gpus"),
    ({"interval_s": -1}, "interval_s"),
    ({"timeout": 2}, "timeout"),
])
def test_bad_options_name_the_key(options: dict[str, object], key: str) -> None:
    opts = {k: v for k, v in {**OPTS, **options}.items() if v is not None}
    with pytest.raises(SourceConfigError) as e:
        load_source("node17-dcgm", opts)
    [line] = e.value.errors
    assert line.startswith(f"sources.node17-dcgm.{key}: ")


def test_defaults_and_sample_config() -> None:
    src = source()
    assert src.interval_s == 10.0 and src.timeout_s == 5.0
    data = tomllib.loads((ROOT / "collectors" / "dcgm" / "sample.toml").read_text())
    for name, opts in data["sources"].items():
        assert load_source(name, opts).kind == "dcgm"
