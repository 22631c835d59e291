"""The twin as the grid sees it (issue 16): one synchronous training job swings the lab site at its iteration's
period and amplitude, and the 1 s series shows it; scenario files carry the utility's limits, demand-response
requests and the job, and report every mistake at once."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from powerplane.grid import band_amplitude_mw
from powerplane.site import Site
from powerplane.site_file import load_site
from powerplane.validation import ConfigError
from sim import Twin
from sim.scenario import load_scenario, scenario_from_dict
from sim.trace_files import load_azure_conv
from sim.workload import JobSpec, WorkloadSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab() -> Site:
    return load_site(ROOT / "examples" / "lab.toml")


def _site_series(lab: Site, dt_s: float, seconds: float) -> tuple[np.ndarray, float]:
    """The site's true power every dt_s with only the synchronous job running, and its iterations done."""
    job = JobSpec(name="sync", gpus=64, iter_s=3.0, compute_frac=0.7, comm_uc=0.05, comm_um=0.05)
    tw = Twin(lab, WorkloadSpec(jobs=(job,), trace=load_azure_conv()), seed=5)
    frames = tw.run(seconds, dt_s)
    return np.array([f.site_power_w for f in frames]), float(frames[-1].jobs.iterations[0])


def test_a_synchronous_job_swings_the_site_at_its_period_and_the_1s_series_shows_it(lab: Site) -> None:
    seconds = 120.0
    fine, iters = _site_series(lab, 0.1, seconds)
    coarse, _ = _site_series(lab, 1.0, seconds)
    period_s = seconds / iters
    assert 3.0 <= period_s < 4.0  # 3 s at max clock; compute at the power limit runs a little slower
    # Compute near the GPU limit, communication near idle: the 64 GPUs' swing at the wall is most of their
    # full power (64 x 700 W / 0.94), not the ~35 % of the twin's default (POLCA-calibrated) communication.
    swing_w = np.percentile(fine[50:], 99) - np.percentile(fine[50:], 1)
    assert 0.7 * 64 * 700 / 0.94 < swing_w < 64 * 700 / 0.94
    # The 1 s series (each sample the mean over its second) shows the swing at its fundamental, attenuated
    # by the second's averaging, sinc(f x 1 s); a narrow band keeps out the aliased second harmonic.
    f0 = 1.0 / period_s
    band = [(f0 - 0.04, f0 + 0.04)]
    a_fine = band_amplitude_mw(fine, 0.1, band)[0]
    a_coarse = band_amplitude_mw(coarse, 1.0, band)[0]
    assert a_fine * 1e6 > 0.3 * swing_w  # the fundamental of a 70 % duty square wave: 0.51 of its swing
    assert a_coarse == pytest.approx(a_fine * math.sin(math.pi * f0) / (math.pi * f0), rel=0.1)
    spec = np.abs(np.fft.rfft(coarse - coarse.mean()))
    peak_hz = np.fft.rfftfreq(coarse.size, 1.0)[int(np.argmax(spec[1:])) + 1]
    assert peak_hz == pytest.approx(f0, abs=1.5 / seconds)


def test_a_grid_scenario_file_loads_its_job_limits_and_demand_response(lab: Site) -> None:
    sc = load_scenario(ROOT / "examples" / "scenarios" / "lab-grid-training.toml", site=lab)
    assert sc.training_job is not None and sc.training_job.gpus == 64 and sc.training_job.iter_s == 3.0
    assert sc.grid is not None and sc.grid.ramp_up_mw_per_s == 0.015
    assert [(b.lo_hz, b.hi_hz) for b in sc.grid.bands] == [(0.1, 0.5), (0.5, 5.0)]
    (dr,) = sc.demand_response
    assert (dr.id, dr.start_s, dr.reduce_by_pct, dr.within_s, dr.hold_s) == ("dr-lab", 30.0, 10.0, 10.0, 20.0)
    site = sc.site_for(lab)
    assert site.grid is sc.grid and lab.grid is None  # the run's copy, not the site itself
    from sim.workload import default_workload

    wl = sc.workload_for(site, default_workload(site))
    assert wl.jobs[0].name == "sync-train" and wl.jobs[0].gpus == 64
    assert "train-1" not in [j.name for j in wl.jobs]  # the class's only rack went to the big job


def test_a_training_job_sized_in_mw_takes_that_much_of_the_reference_site() -> None:
    from powerplane.refsite import reference_site
    from sim.grid_scenario import job_gpus_for_power

    site = reference_site()
    gpus = job_gpus_for_power(site, "training", 20.0)
    # A GB200 tray: 4 x 1200 W + 1800 W at 95 %: 1,737 W per GPU at the wall.
    assert gpus == pytest.approx(20e6 / ((1200 + 1800 / 4) / 0.95), abs=1)


def test_a_bad_grid_scenario_reports_every_mistake_with_its_path(lab: Site) -> None:
    bad = {
        "training_job": {"iter_s": "3", "comm_uc": 1.5},
        "grid": {"ramp_up_mw_per_s": -1.0, "bands": [{"lo_hz": 1.0, "hi_hz": 0.5, "limit_mw": 1.0}]},
        "feed_grid": {"util-x": {"ramp_up_mw_per_s": 1.0}, "util-a": {"range_mw": 0}},
        "demand_response": [{"id": "d", "start_s": 10, "within_s": 30, "hold_s": 60},
                            {"id": "e", "start_s": 10, "reduce_by_pct": 25, "within_s": 30, "hold_s": 60,
                             "feed": "util-z"}],
    }
    with pytest.raises(ConfigError) as e:
        scenario_from_dict(bad, "bad.toml", site=lab)
    errors = e.value.errors
    expected = ["training_job.iter_s: input should be a valid number",
                "training_job.comm_uc: input should be less than or equal to 1",
                "grid.ramp_up_mw_per_s: input should be greater than 0",
                "grid.bands[0]: hi_hz 0.5 must be above lo_hz 1",
                "feed_grid.util-a.range_mw: input should be greater than 0",
                "demand_response[0]: give exactly one of reduce_to_mw and reduce_by_pct",
                "feed_grid.util-x: unknown utility feed 'util-x' (feeds: util-a, util-b)",
                "demand_response[1].feed: unknown utility feed 'util-z' (feeds: util-a, util-b)"]
    for line in expected:
        assert any(err.startswith(line) for err in errors), (line, errors)
    assert len(errors) == len(expected)


def test_a_job_stopping_takes_its_servers_non_gpu_load_down_over_seconds_not_within_one(lab: Site) -> None:
    """The servers' CPUs, NICs and fans do not follow a GPU's phase within a second (powerplane.physics
    ElectricalConfig.other_tau_s): when the 64-GPU job stops, its servers' non-GPU load falls by about a tenth of
    its eventual drop in the first second and most of it within half a minute."""
    job = JobSpec(name="sync", gpus=64, iter_s=3.0, compute_frac=0.7, stop_s=30.0)
    tw = Twin(lab, WorkloadSpec(jobs=(job,), trace=load_azure_conv()), seed=5)
    srv = np.unique(lab.gpu_server[tw.job_gpus[0]])
    frames = tw.run(80.0, 1.0)
    non_gpu = np.array([f.server_dc_w[srv].sum() - f.gpu_power_true_w[tw.job_gpus[0]].sum() for f in frames])
    before, after = non_gpu[25:29].mean(), non_gpu[-1]
    drop = before - after
    assert drop > 0.2 * lab.server_other_w[srv].sum() * 0.5  # the active half of their non-GPU nameplate, mostly
    first = before - non_gpu[30]  # the second the job stopped in (t 30-31)
    assert 0.0 < first < 0.2 * drop
    assert before - non_gpu[60] > 0.9 * drop
