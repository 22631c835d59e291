"""SLOs relative to each request's isolated latency (sim/slo.py), their workload-file form, and pools sized
on a high quantile of the smoothed arrival rate (sim.workload.sizing_rate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from powerplane.site_file import load_site
from powerplane.validation import ConfigError
from sim import Twin
from sim.physics import gpu_spec_for
from sim.serving import MODELS, ServingConfig, instance_constants
from sim.slo import SloSpec, isolated_ttft_s, ttft_slo_s
from sim.trace_gen import generate_bursty
from sim.workload import default_trace, default_workload, sizing_rate, workload_from_dict, workload_to_dict

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


def test_relative_ttft_slo_scales_with_the_prompt_and_keeps_its_floor() -> None:
    k = instance_constants(MODELS["llama3-70b"], gpu_spec_for("H100-SXM", 700.0), 8, ServingConfig())
    prompt = np.array([100.0, 2048.0, 8192.0])
    iso = isolated_ttft_s(prompt, k.c_tok_s, k.mem_w_s, k.overhead_s, np.full(3, 2048.0))
    assert 0.04 < iso[1] < 0.1 and iso[2] == pytest.approx(4 * iso[1])  # 4 full chunks of 2048 tokens
    slo = ttft_slo_s(SloSpec(), np.full(3, 0.4), iso)
    assert slo[0] == 0.25  # a short prompt: the floor
    assert slo[2] == pytest.approx(5 * iso[2]) and slo[2] > 1.0  # an 8K prompt is not held to 0.4 s
    assert np.all(ttft_slo_s(SloSpec(kind="absolute"), np.full(3, 0.4), iso) == 0.4)


def test_workload_file_slo_forms_and_every_mistake_at_once() -> None:
    wl = workload_from_dict({"slo": "absolute"})
    assert wl.slo.kind == "absolute"
    wl = workload_from_dict({"slo": {"ttft_k": 3, "tbt_floor_s": 0.05}})
    assert (wl.slo.kind, wl.slo.ttft_k, wl.slo.tbt_floor_s) == ("relative", 3.0, 0.05)
    assert workload_from_dict(workload_to_dict(wl)).slo == wl.slo
    with pytest.raises(ConfigError) as e:
        workload_from_dict({"slo": {"kind": "loose", "ttft_k": 0.5, "tbt_floor_s": -1}, "rate_window_s": -2})
    msg = str(e.value)
    for where in ("slo.kind", "slo.ttft_k", "slo.tbt_floor_s", "rate_window_s"):
        assert where in msg


def test_pools_are_sized_on_a_high_quantile_of_the_smoothed_rate_not_the_mean() -> None:
    lab = load_site(LAB)
    bursty = generate_bursty("mmpp", seconds=600.0, seed=1)
    assert sizing_rate(bursty) > 5 * bursty.mean_rate  # 30 s bursts far above the mean
    conv = default_trace()
    a, b = default_workload(lab, conv), default_workload(lab, bursty)
    # Same GPUs and target: the bursty trace's pools get fewer arrivals per trace arrival, in proportion to
    # the rate they are sized on: the p99 for critical pools (their bursts must fit), the p95 for batch.
    for tier, q in (("critical", 0.99), ("batch", 0.95)):
        pa, pb = (next(p for p in w.pools if p.name.startswith(tier)) for w in (a, b))
        ratio = pa.rate_scale / pb.rate_scale
        assert ratio == pytest.approx(sizing_rate(bursty, q) / sizing_rate(conv, q), rel=0.01)
    # The bursty trace's top 30 s windows are far above its p95: sizing critical pools on it would not fit them.
    assert sizing_rate(bursty, 0.99) > 1.3 * sizing_rate(bursty, 0.95)


def test_twin_counts_ttft_within_the_relative_slo() -> None:
    lab = load_site(LAB)
    wl = default_workload(lab)
    twin = Twin(lab, wl, seed=0)
    ok = first = 0.0
    for _ in range(20):
        fr = twin.step(1.0)
        ok += float(fr.pools.ttft_ok.sum())
        first += float(fr.pools.first_tokens.sum())
    assert first > 0 and ok / first > 0.9  # light load: nearly every request meets its SLO
