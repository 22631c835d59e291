"""Digital twin workload: the Azure trace, pool replay (shift, rate scale, modes), placement, training jobs."""

from __future__ import annotations

import gzip
import hashlib
import tomllib
from pathlib import Path

import numpy as np
import pytest

from powerplane.refsite import to_toml
from powerplane.site import PRIORITIES, Site
from powerplane.site_file import load_site
from powerplane.validation import ConfigError
from sim import (
    TRACE_ATTRIBUTION,
    JobSpec,
    PoolSpec,
    Twin,
    WorkloadSpec,
    default_workload,
    load_azure_conv,
    load_workload,
    workload_from_dict,
)
from sim.engine import JOB_CKPT, JOB_COMM, JOB_COMPUTE, JOB_OFF
from sim.workload import PACKAGED_TRACE, generate_arrivals, place, rate_table, workload_to_dict

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "examples" / "lab.toml"


@pytest.fixture(scope="module")
def lab() -> Site:
    return load_site(LAB)


def test_packaged_trace_is_the_azure_trace_with_its_attribution() -> None:
    raw = gzip.decompress(PACKAGED_TRACE.read_bytes())
    readme = (PACKAGED_TRACE.parent / "azure_llm_conv_2023.README.md").read_text()
    assert hashlib.sha256(raw).hexdigest() in readme
    assert "CC-BY 4.0" in readme and "Splitwise" in readme and "Patel et al." in readme
    tr = load_azure_conv()
    assert tr.n == 19366
    assert tr.prompt.mean() == pytest.approx(1155, abs=1) and np.median(tr.prompt) == 1020
    assert tr.output.mean() == pytest.approx(211, abs=1) and np.median(tr.output) == 129
    assert 3500 < tr.period_s < 3600 and np.all(np.diff(tr.t_s) >= 0)
    assert "Splitwise" in tr.attribution == TRACE_ATTRIBUTION
    assert load_azure_conv() is tr  # parsed once per process


def _pool_arrivals(pool: PoolSpec, t_end: float, dt: float = 10.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    tr = load_azure_conv()
    table = rate_table(tr, 30.0)
    rng = np.random.default_rng(seed)
    inst_pool = np.zeros(4, dtype=np.int64)
    prob = np.full(4, 0.25)
    counts, prompts = [], []
    t = 0.0
    while t < t_end - 1e-9:
        a = generate_arrivals(table, [pool], np.ones(1), inst_pool, prob, t, dt, rng)
        assert np.all(np.diff(a.inst) >= 0)  # grouped by instance ...
        for i in range(4):
            assert np.all(np.diff(a.offset_s[a.inst == i]) >= 0)  # ... in time order
        assert np.all((a.offset_s >= 0) & (a.offset_s < dt))
        counts.append(a.inst.size)
        prompts.append(a.prompt.sum())
        t += dt
    return np.array(counts), np.array(prompts)


def test_rate_mode_scales_the_trace_rate_and_follows_its_shape() -> None:
    tr = load_azure_conv()
    k = 20.0
    counts, prompts = _pool_arrivals(PoolSpec(name="p", rate_scale=k), tr.period_s, dt=tr.period_s / 350)
    assert counts.sum() == pytest.approx(k * tr.n, rel=0.01)  # the hour's total, scaled
    assert prompts.sum() / counts.sum() == pytest.approx(tr.prompt.mean(), rel=0.02)
    # The shape over the hour follows the trace's own (smoothed) rate.
    edges = np.linspace(0, tr.period_s, 351)
    trace_counts = np.histogram(tr.t_s, edges)[0]
    smooth = np.convolve(trace_counts, np.ones(3) / 3, mode="same")
    assert np.corrcoef(counts, smooth)[0, 1] > 0.6


def test_shift_moves_the_replay_through_the_hour() -> None:
    tr = load_azure_conv()
    a, _ = _pool_arrivals(PoolSpec(name="p", rate_scale=50.0, shift_s=0.0), 600, dt=60, seed=1)
    b, _ = _pool_arrivals(PoolSpec(name="p", rate_scale=50.0, shift_s=1800.0), 600, dt=60, seed=1)
    ta = np.histogram(tr.t_s, np.arange(0, 601, 60))[0]
    tb = np.histogram(tr.t_s, np.arange(1800, 2401, 60))[0]
    np.testing.assert_allclose(a, 50 * ta, rtol=0.25)
    np.testing.assert_allclose(b, 50 * tb, rtol=0.25)


def test_exact_mode_replays_the_trace_itself() -> None:
    tr = load_azure_conv()
    counts, prompts = _pool_arrivals(PoolSpec(name="p", mode="exact", rate_scale=1.0), tr.period_s,
                                     dt=tr.period_s / 700)
    assert counts.sum() == tr.n
    assert prompts.sum() == tr.prompt.sum()
    counts3, _ = _pool_arrivals(PoolSpec(name="p", mode="exact", rate_scale=3.0), 600, dt=5.0)
    assert counts3.sum() == 3 * np.sum(tr.t_s < 600)


def test_default_workload_fills_every_class_with_explicit_figures(lab: Site) -> None:
    wl = default_workload(lab)
    assert {p.priority for p in wl.pools} == {"inference-critical", "inference-batch"}
    assert {j.priority for j in wl.jobs} == {"training", "best-effort"}
    assert len({p.shift_s for p in wl.pools}) == len(wl.pools)  # pools peak at different times
    pl = place(lab, wl)
    for spec, g in zip([*wl.pools, *wl.jobs], [*pl.pool_gpus, *pl.job_gpus], strict=True):
        assert g.size > 0
        assert np.all(lab.gpu_priority[g] == PRIORITIES.index(spec.priority))
    allg = np.concatenate([*pl.pool_gpus, *pl.job_gpus])
    assert np.unique(allg).size == allg.size == lab.n_gpus
    # The spec round-trips through TOML, every figure explicit.
    text = to_toml(workload_to_dict(wl))
    back = workload_from_dict(tomllib.loads(text))
    assert back.pools == wl.pools and back.jobs == wl.jobs
    assert "rate_scale" in text and "shift_s" in text


def test_workload_errors_are_listed_with_paths() -> None:
    with pytest.raises(ConfigError) as e:
        workload_from_dict({"pools": [{"name": "a", "model": "gpt-9", "priority": "vip", "tp": 3},
                                      {"name": "a", "mode": "loop"}],
                            "jobs": [{"name": "j", "iter_s": 0, "colour": "red"}], "extra": 1})
    msg = str(e.value)
    # The values, the unknown keys and the name used twice: all in one report.
    for frag in ("extra: unknown key", "jobs[0].colour: unknown key", "pools[0].model: unknown model 'gpt-9'",
                 "pools[0].priority: unknown priority class 'vip'", "pools[0].tp: must be a power of two",
                 "pools[1].name: 'a' is used twice", "pools[1].mode", "jobs[0].iter_s"):
        assert frag in msg, frag


def test_a_workload_file_with_several_mistakes_reports_them_all_at_once(lab: Site, tmp_path: Path) -> None:
    f = tmp_path / "wl.toml"
    f.write_text("""rate_window_s = 30
colour = "red"

[[pools]]
name = "chat"
model = "gpt-9"
racks = ["rack-01", "rack-99"]

[[jobs]]
name = "train"
start_s = 100
stop_s = 50
""")
    with pytest.raises(ConfigError) as e:
        load_workload(f, site=lab)
    assert e.value.source == str(f)
    assert sorted(e.value.errors) == sorted([
        "colour: unknown key",
        "pools[0].model: unknown model 'gpt-9' (known: llama3-8b, llama2-70b, llama3-70b, llama3-405b)",
        "pools[0].racks[1]: unknown rack 'rack-99'",
        "jobs[0].stop_s: must be after start_s",
    ])


def test_a_workload_built_in_code_gets_the_same_checks(lab: Site) -> None:
    wl = WorkloadSpec(pools=(PoolSpec(name="p", tp=6, racks=("rack-42",)),), jobs=(JobSpec(name="p", share=2.0),),
                      trace=load_azure_conv())
    with pytest.raises(ConfigError) as e:
        Twin(lab, wl)
    assert sorted(e.value.errors) == ["jobs[0].name: 'p' is used twice",
                                      "jobs[0].share: input should be less than or equal to 1, got 2.0",
                                      "pools[0].racks[0]: unknown rack 'rack-42'",
                                      "pools[0].tp: must be a power of two >= 1, got 6"]


def test_placement_reports_what_does_not_fit(lab: Site) -> None:
    wl = workload_from_dict({"jobs": [{"name": "big", "gpus": 100000},
                                      {"name": "x", "racks": ["rack-01"]}, {"name": "y", "racks": ["rack-01"]}]})
    with pytest.raises(ConfigError) as e:
        place(lab, wl)
    assert e.value.errors[0] == "jobs[2].racks: 'y' overlaps another pool or job"
    assert e.value.errors[1].startswith("jobs[0]: 'big' wants 100000 GPUs of class 'training', only ")


def test_training_swings_hard_within_two_seconds(lab: Site) -> None:
    wl = WorkloadSpec(jobs=(JobSpec(name="t", gpus=64, iter_s=6.0, compute_frac=0.7),), trace=load_azure_conv())
    tw = Twin(lab, wl, seed=21)
    frames = tw.run(60, dt_s=0.5)
    srv = np.unique(lab.gpu_server[tw.job_gpus[0]])
    power = np.array([f.server_power_w[srv].sum() for f in frames[4:]])
    swing = 1.0 - power.min() / power.max()
    assert 0.30 < swing < 0.45  # POLCA: training swings 37.5% within 2 s
    drops = 1.0 - power[4:] / power[:-4]  # over 2 s (four half-second steps)
    assert drops.max() > 0.3
    phases = {int(f.jobs.phase[0]) for f in frames}
    assert phases == {JOB_COMPUTE, JOB_COMM}
    # Progress: one step per ~6 s at full clock.
    assert frames[-1].jobs.iterations[0] == pytest.approx(60 / 6.0, rel=0.1)


def test_training_cap_slows_the_whole_job(lab: Site) -> None:
    wl = WorkloadSpec(jobs=(JobSpec(name="t", gpus=64, iter_s=4.0),), trace=load_azure_conv())
    free, capped = Twin(lab, wl, seed=22), Twin(lab, wl, seed=22)
    g = capped.job_gpus[0]
    capped.set_limit(g[:8], 400.0)  # one server of the job capped: every GPU waits for it
    a, b = free.run(40)[-1], capped.run(40)[-1]
    assert b.jobs.iterations[0] < 0.9 * a.jobs.iterations[0]
    assert b.gpu_power_true_w[g[8:]].mean() < a.gpu_power_true_w[g[8:]].mean()


def test_checkpoints_and_start_stop(lab: Site) -> None:
    wl = WorkloadSpec(jobs=(JobSpec(name="t", gpus=64, start_s=5.0, stop_s=40.0, ckpt_every_s=15.0, ckpt_s=5.0),),
                      trace=load_azure_conv())
    tw = Twin(lab, wl, seed=23)
    frames = tw.run(50)
    phase = np.array([int(f.jobs.phase[0]) for f in frames])
    assert np.all(phase[:4] == JOB_OFF) and np.all(phase[42:] == JOB_OFF)
    assert np.all(phase[20:25] == JOB_CKPT)  # first checkpoint 15 s after the start, for 5 s
    g = tw.job_gpus[0]
    off_w = frames[2].gpu_power_true_w[g].mean()
    ckpt_w = frames[22].gpu_power_true_w[g].mean()
    run_w = max(f.gpu_power_true_w[g].mean() for f in frames[5:19])
    assert off_w == pytest.approx(70.0, rel=0.05)
    assert off_w < ckpt_w < 0.5 * run_w
    assert int(frames[10].jobs.phase[0]) in (JOB_COMPUTE, JOB_COMM)
