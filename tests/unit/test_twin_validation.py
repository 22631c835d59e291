"""The twin against measured H100 power under vLLM serving (BRIEF.md, "Real GPU power under LLM serving"): the
two real cases rebuilt in the twin read like the real logs, within the bands of docs/twin-validation.md."""

from __future__ import annotations

import numpy as np
import pytest

from sim.validation import CASES, REAL, check, figures, run_case


@pytest.fixture(scope="module")
def figs() -> dict[str, dict[str, float]]:
    out = {}
    for case in CASES:
        reads, active = run_case(case, seconds=600.0)  # the real runs were about 10 minutes
        out[case.name] = figures(reads, active)
    return out


def test_busy_70b_tp4_reads_like_the_real_gpus(figs: dict[str, dict[str, float]]) -> None:
    """Llama-3 70B at TP4, 2 req/s: ~462 W, far under the 700 W limit, smooth, the group moving as one."""
    f = figs["busy-70b"]
    assert check("busy-70b", f) == []
    assert f["max_w"] < 0.75 * 700.0  # serving never reaches the limit
    assert f["tp_corr_min"] > 0.9 and f["tp_spread"] < 0.04  # real: 0.94-0.98, within 2.4-2.8%
    assert f["unused_w"] == pytest.approx(REAL["busy-70b"]["unused_w"][0], rel=0.05)  # the node's unused GPUs


def test_bursty_8b_idles_between_bursts_and_ramps_in_a_second(figs: dict[str, dict[str, float]]) -> None:
    """Llama-3 8B on one GPU at a low rate: idle at ~120 W most seconds, bursts to ~440 W ramping over
    0.75-1 s, and the rare glitch readings near 70 W and 95 W of real logs."""
    f = figs["bursty-8b"]
    assert check("bursty-8b", f) == []
    assert 0.006 < f["glitch_70_share"] < 0.018 and 0.002 < f["glitch_95_share"] < 0.006  # real: 1.2%, 0.4%
    assert 118.0 * 0.95 < f["idle_w"] < 123.0 * 1.05


def test_bands_catch_a_twin_that_is_off() -> None:
    """The check fails a twin reading like the uncalibrated one did (prefill at the limit, phase flips)."""
    rng = np.random.default_rng(0)
    reads = np.where(rng.random((2400, 8)) < 0.5, 190.0, 720.0)
    f = figures(reads, np.arange(4))
    assert any("p50_w" in line for line in check("busy-70b", f))
    assert any("change_1s_p99_w" in line for line in check("busy-70b", f))
