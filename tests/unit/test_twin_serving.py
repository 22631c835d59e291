"""Digital twin serving: caps, clock locks, load, reconfiguration, routing, and the commands' clamping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from powerplane.site import Site
from powerplane.site_file import load_site
from sim import PoolSpec, Trace, Twin, WorkloadSpec, default_workload
from sim.serving import OFF, SERVING, STARTING, instance_constants
from sim.slo import isolated_ttft_s
from sim.workload import with_pool

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


@pytest.fixture(scope="module")
def lab() -> Site:
    return load_site(LAB)


def _ttfts(frames: list, pool: int) -> np.ndarray:  # type: ignore[type-arg]
    return np.concatenate([f.requests.ttft_s[f.requests.pool == pool] for f in frames])


def test_power_cap_lowers_power_and_stretches_ttft(lab: Site) -> None:
    wl = default_workload(lab)
    free, capped = Twin(lab, wl, seed=11), Twin(lab, wl, seed=11)
    gpus = capped.pool_slots("critical-1").ravel()
    # Well under what the pool draws (~460-480 W per GPU busy, as measured on real H100s: BRIEF.md).
    applied = capped.set_limit(gpus, 250.0)
    assert np.all(applied == 250.0)
    fa = free.run(60)
    fb = capped.run(60)
    pa = np.mean([f.pools.power_w[0] for f in fa[10:]])
    pb = np.mean([f.pools.power_w[0] for f in fb[10:]])
    assert pb < 0.9 * pa
    assert max(f.gpu_power_true_w[gpus].max() for f in fb) <= 250.0 + 1e-9
    ta, tb = _ttfts(fa[10:], 0), _ttfts(fb[10:], 0)
    assert np.mean(tb) > 1.2 * np.mean(ta)  # prefill is compute-bound: a lower clock stretches it
    assert np.percentile(tb, 90) > np.percentile(ta, 90)
    # The other pools do not notice.
    assert np.mean(_ttfts(fb[10:], 1)) == pytest.approx(np.mean(_ttfts(fa[10:], 1)), rel=0.02)
    # The clock the limiter picked shows while prefilling.
    clocks = np.concatenate([f.sm_clock_mhz[gpus] for f in fb[10:]])
    assert np.nanmin(clocks) < 0.8 * 1980.0


def _decode_heavy_trace() -> Trace:
    n = 3600
    return Trace(t_s=np.arange(n, dtype=np.float64), prompt=np.full(n, 64.0), output=np.full(n, 1000.0),
                 period_s=float(n), source="synthetic decode-heavy")


def test_frequency_lock_lowers_decode_energy_with_little_throughput_loss(lab: Site) -> None:
    wl = WorkloadSpec(pools=(PoolSpec(name="decode", model="llama2-70b", gpus=64, rate_scale=40.0),),
                      trace=_decode_heavy_trace())
    base, locked = Twin(lab, wl, seed=12), Twin(lab, wl, seed=12)
    gpus = locked.pool_slots("decode").ravel()
    applied = locked.lock_clocks(gpus, 1600.0)
    assert np.all(applied == 1590.0)  # rounded down to a supported clock (15 MHz steps below 1980)
    fa = base.run(90)[30:]
    fb = locked.run(90)[30:]
    tok_a = sum(f.pools.tokens[0] for f in fa)
    tok_b = sum(f.pools.tokens[0] for f in fb)
    e_a = sum(f.pools.energy_j[0] for f in fa)
    e_b = sum(f.pools.energy_j[0] for f in fb)
    assert np.mean([f.pools.running[0] for f in fa]) > 30 * 8  # a real decode batch on every instance
    assert tok_b == pytest.approx(tok_a, rel=0.02)  # memory-bound: the clock barely matters
    assert e_b / tok_b < 0.9 * e_a / tok_a  # ... but the energy does
    tbt_a = np.mean([f.pools.tbt_mean_s[0] for f in fa])
    tbt_b = np.mean([f.pools.tbt_mean_s[0] for f in fb])
    assert tbt_b < 1.05 * tbt_a


def test_ttft_grows_with_load(lab: Site) -> None:
    wl = default_workload(lab, critical_load=0.7)  # fixed loads: 0.35 and 1.4 of the sizing point
    light = Twin(lab, with_pool(wl, "critical-1", rate_scale=wl.pools[0].rate_scale * 0.5), seed=13)
    heavy = Twin(lab, with_pool(wl, "critical-1", rate_scale=wl.pools[0].rate_scale * 2.0), seed=13)
    fl, fh = light.run(60)[10:], heavy.run(60)[10:]
    # Chunked prefill puts prompts first, so TTFT grows slowly until saturation; the decode batch, the
    # time between tokens and the power grow at once.
    assert np.percentile(_ttfts(fh, 0), 90) > 1.2 * np.percentile(_ttfts(fl, 0), 90)
    assert np.mean([f.pools.running[0] for f in fh]) > 3.0 * np.mean([f.pools.running[0] for f in fl])
    assert np.mean([f.pools.tbt_mean_s[0] for f in fh]) > 1.2 * np.mean([f.pools.tbt_mean_s[0] for f in fl])
    assert np.mean([f.pools.power_w[0] for f in fh]) > np.mean([f.pools.power_w[0] for f in fl])
    served = sum(f.pools.first_tokens[0] for f in fh)
    arrived = sum(f.pools.arrivals[0] for f in fh)
    assert served == pytest.approx(arrived, rel=0.05)  # busy but not saturated


def test_tp_change_serves_nothing_during_reconfiguration(lab: Site) -> None:
    tw = Twin(lab, seed=14)
    tw.run(10)
    assert tw.allowed_tp("critical-1")[0] == 4  # 70B does not fit in 2 x 80 GB
    assert tw.set_tp("critical-1", 1) == 4  # clamped to what fits
    delay = tw.cfg.serving.reconfig_delay_s
    frames = tw.run(delay - 1)
    for f in frames:
        assert f.pools.serving[0] == 0 and f.pools.starting[0] == 32
        assert f.pools.first_tokens[0] == 0
        assert f.pools.arrivals[0] > 0  # requests keep coming and wait
    assert frames[-1].pools.waiting[0] > 100
    after = tw.run(20)
    assert after[-1].pools.serving[0] == 32
    late = np.concatenate([f.requests.ttft_s[f.requests.pool == 0] for f in after])
    assert late.max() > delay - 5  # the requests that waited out the reconfiguration
    assert tw.set_tp("critical-1", 8) == 8
    assert tw.tab.state[tw.pools[0].lo:tw.pools[0].hi].tolist() == [STARTING] * 16


def test_instance_count_and_routing_weights(lab: Site) -> None:
    tw = Twin(lab, seed=15)
    tw.run(5)
    assert tw.set_instances("critical-2", 100) == 16  # clamped to its slots
    assert tw.set_instances("critical-2", 4) == 4
    slots = tw.pool_slots("critical-2")
    fr = tw.run(5)[-1]
    assert fr.pools.serving[1] == 4 and fr.pools.off[1] == 12
    idle = slots[4:].ravel()
    np.testing.assert_allclose(fr.gpu_power_true_w[idle], 70.0 * tw.variation[idle])  # switched off: bare idle
    # Routing: nothing to instance 0 of critical-2.
    w = np.ones(16)
    w[0] = 0.0
    applied = tw.set_routing("critical-2", w)
    assert applied[0] == 0.0 and applied[4:].sum() == 0.0 and applied.sum() == pytest.approx(1.0)
    assert applied[1] == pytest.approx(1 / 3)
    frames = tw.run(20)
    inst0 = slots[0]
    assert frames[-1].gpu_power_true_w[inst0].max() < 130.0  # idle with a context
    # Scale back up: the new instances load weights first.
    assert tw.set_instances("critical-2", 16) == 16
    st = tw.tab.state[tw.pools[1].lo:tw.pools[1].hi]
    assert (st[:4] == SERVING).all() and (st[4:] == STARTING).all()
    assert tw.set_instances("critical-2", 0) == 0
    fr = tw.step(1.0)
    assert fr.pools.off[1] == 16 and (tw.tab.state[tw.pools[1].lo:tw.pools[1].hi] == OFF).all()
    assert fr.pools.dropped[1] + fr.pools.arrivals[1] > 0


def test_commands_are_clamped_to_hardware(lab: Site) -> None:
    tw = Twin(lab, seed=16)
    g = np.arange(8)
    np.testing.assert_array_equal(tw.set_limit(g, np.array([50.0, 200.0, 450.0, 700.0, 900.0, 1e9, 0.0, 300.0])),
                                  [200.0, 200.0, 450.0, 700.0, 700.0, 700.0, 200.0, 300.0])
    np.testing.assert_array_equal(tw.lock_clocks(g[:4], np.array([100.0, 1980.0, 5000.0, 1000.0])),
                                  [345.0, 1980.0, 1980.0, 990.0])
    np.testing.assert_array_equal(tw.reset_clocks(g[:4]), [1980.0] * 4)
    with pytest.raises(KeyError):
        tw.set_instances("nope", 1)
    with pytest.raises(ValueError):
        tw.set_routing("critical-1", [1.0, 2.0])


def test_requests_carry_their_ttft_and_the_slo_count(lab: Site) -> None:
    tw = Twin(lab, seed=17)
    frames = tw.run(30)
    for f in frames[5:]:
        rq = f.requests
        assert rq.ttft_s.size == f.pools.first_tokens.sum()
        assert np.all(rq.ttft_s > 0) and np.all(rq.ttft_s < 60)
        assert np.all(rq.t_arrival_s <= f.t_s)
        for p in range(len(f.pools.names)):
            # The relative default: 5 x the prompt's isolated prefill on the pool's instances, at least 0.25 s.
            pool = tw.pools[p]
            k = instance_constants(pool.model, pool.gpu, pool.tp, tw.cfg.serving)
            mine = rq.pool == p
            iso = isolated_ttft_s(rq.prompt_tokens[mine], k.c_tok_s, k.mem_w_s, k.overhead_s,
                                  float(pool.spec.chunk_tokens))
            assert f.pools.ttft_ok[p] == np.sum(rq.ttft_s[mine] <= np.maximum(0.25, 5.0 * iso))
        assert np.all(f.pools.tbt_ok_tokens <= f.pools.decode_tokens + 1e-9)
    # Work is conserved: everything that arrived was either served, is waiting, or was dropped.
    arrived = sum(f.pools.arrivals.sum() for f in frames)
    served = sum(f.pools.first_tokens.sum() for f in frames)
    waiting = frames[-1].pools.waiting.sum()
    dropped = sum(f.pools.dropped.sum() for f in frames)
    assert arrived == served + waiting + dropped
