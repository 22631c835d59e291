"""Power floors from the live controller (`power_floors = "on"`, docs/grid.md): on H100s, whose actuators
reject every power_floor for want of a power-smoothing floor, the controller asks each GPU once, counts the
refusal, logs one line, and leaves those GPUs alone for an hour instead of asking again every few seconds."""

from __future__ import annotations

import itertools
import logging
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import pytest

from actuators.base import load_actuator
from actuators.guard import Guard
from controllers.capping import CapSettings, gpu_efficiency
from controllers.controller import CapController
from controllers.grid_limits import JOB_CLASSES
from controllers.service import live_actions, take_ack
from ops.engine import Engine
from ops.grid_eval import prepare
from powerplane.config import Config
from powerplane.schemas import Command
from powerplane.signing import Keyring
from powerplane.site_file import load_site
from sim import Twin
from sim.fleet import Fleet, rack_frames
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
KEYS = Keyring({"k1": b"k" * 32}, "k1")
ACK_KEYS = Keyring({"a1": b"a" * 32}, "a1")
EPOCH_S = 1_790_000_000.0


def test_floors_the_hardware_refuses_are_asked_once_per_gpu_counted_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    site = load_site(ROOT / "examples" / "lab.toml")
    sc = load_scenario(ROOT / "examples" / "scenarios" / "lab-grid-ramp.toml", site=site)
    site, workload, _ = prepare(site, None, sc)
    twin = Twin(site, workload, sc, seed=0, epoch_s=EPOCH_S)
    ctl = CapController(site, KEYS, CapSettings(), 30.0, actions=live_actions(Config(power_floors="on")))
    engine = Engine(site, KEYS, CapSettings(), 30.0, controller=ctl)
    # An actuator over GPUs without power smoothing (the simple Fleet: as NVML on an H100, every floor rejected).
    guard = Guard(load_actuator("twin", {"kind": "twin"}, context=Fleet(site)), KEYS, site.name, rate_per_s=100.0,
                  burst=100)
    issued: OrderedDict[str, None] = OrderedDict()
    sent: list[Command] = []
    caplog.set_level(logging.INFO, logger="powerplane.controller")
    for k in range(60):
        ts = EPOCH_S + k + 1.0
        cmds = [c for f in rack_frames(site, twin.step(1.0), ts, 1.0, k, "twin") for c in engine.feed_frame(f)]
        for c in cmds + engine.decide_now(ts + 0.5):
            issued[c.id] = None
            ack = ACK_KEYS.sign(guard.handle(c, ts + 0.5))
            assert take_ack(ctl.stats, ACK_KEYS, issued, {}, ack, ts + 0.6, ctl) is None
            sent.append(c)
    floors = [c for c in sent if c.action == "power_floor"]
    train = np.flatnonzero(site.gpu_priority == 2)
    racks = {site.rack_ids[r] for r in np.unique(site.gpu_rack[train])}
    # One floor command per rack with training GPUs, refused, and never again within the hour: before, each rack
    # got its floor again at every change and renewal (6-7 times each in 60 s), and a warning per rejected ack.
    assert Counter(c.target for c in floors) == {r: 1 for r in racks}
    assert ctl.stats.floors_refused == len(racks) == ctl.stats.acks["rejected"]
    assert not [c for c in sent if c.action == "release" and c.params.get("knob") == "floor"]  # nothing held
    warnings = [r.getMessage() for r in caplog.records  # the controller's (the guard logs its own refusals)
                if r.name == "powerplane.controller" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "power_floor refused" in warnings[0] and "not supported" in warnings[0], warnings
    asked = np.concatenate([int(site.rack_gpu_start[site.rack_index(c.target)]) + c.gpus for c in floors])
    assert ctl.floor_refusals.refused(EPOCH_S + 61.0)[asked].all()
    assert not ctl.floor_refusals.refused(EPOCH_S + 3700.0).any()  # asked again after an hour (a new server?)


PEAK = "ramp limit: compute peak of a job on GPUs without a power floor"


def test_on_gpus_without_a_floor_the_controller_caps_the_jobs_compute_peak_and_releases_it_paced() -> None:
    """The lab's job on H100s (lab-grid-ramp-h100.toml: the twin's actuator rejects every power_floor): once the
    floors are refused, the controller caps the job GPUs' compute peak through ordinary power_cap commands with
    the ramp limiter's reason, never above the caps it decides otherwise nor below a GPU's minimum. When the
    refusals expire and the GPUs hold floors (a server replaced by one with power smoothing), the caps come back
    within the paced share of the ramp-up allowance a decision."""
    site = load_site(ROOT / "examples" / "lab.toml")
    sc = load_scenario(ROOT / "examples" / "scenarios" / "lab-grid-ramp-h100.toml", site=site)
    assert sc.gpu_power_floor is False
    site, workload, _ = prepare(site, None, sc)
    twin = Twin(site, workload, sc, seed=0, epoch_s=EPOCH_S)
    ctl = CapController(site, KEYS, CapSettings(), 30.0, actions=live_actions(Config(power_floors="on")))
    ctl.floor_refusals.retry_s = 40.0
    engine = Engine(site, KEYS, CapSettings(), 30.0, controller=ctl)
    guard = Guard(load_actuator("twin", {"kind": "twin", "power_floor": False}, context=twin), KEYS, site.name,
                  rate_per_s=100.0, burst=100)
    jobs = np.isin(site.gpu_priority, JOB_CLASSES)
    sent: list[tuple[int, Command, str]] = []
    caps, peaks = [], []
    for k in range(90):
        if k == 30:
            guard.actuator.power_floor = True  # its servers now hold floors (replaced by ones with power smoothing)
        ts = EPOCH_S + k + 1.0
        cmds = [c for f in rack_frames(site, twin.step(1.0), ts, 1.0, k, "twin") for c in engine.feed_frame(f)]
        for c in cmds + engine.decide_now(ts + 0.5):
            ack = guard.handle(c, ts + 0.5)
            sent.append((k, c, ack.status))
            ctl.on_ack(ack, ts + 0.5)
        caps.append(ctl.cap_w.copy())
        peaks.append(ctl.grid.peak_w.copy())
    refused = [(k, c) for k, c, st in sent if c.action == "power_floor" and st == "rejected"]
    assert refused and max(k for k, _ in refused) < 30  # every rack's floor refused once, before the swap
    ramp = [(k, c) for k, c, _ in sent if c.action == "power_cap" and c.reason == PEAK]
    assert ramp and all(st == "applied" for _, c, st in sent if c.action == "power_cap")
    for _, c in ramp:  # on job GPUs only, within each GPU's limits
        g = int(site.rack_gpu_start[site.rack_index(c.target)]) + c.gpus.astype(np.int64)
        assert jobs[g].any() and (c.values >= site.gpu_min_w[g]).all() and (c.values <= site.gpu_max_w[g]).all()
    for cap, peak in zip(caps[5:40], peaks[5:40], strict=True):
        held = np.isfinite(peak)
        assert not held[~jobs].any() and (cap[held] <= peak[held]).all() and (cap >= site.gpu_min_w).all()
    assert np.isfinite(peaks[25][jobs]).sum() > 0.5 * jobs.sum()  # the job's swinging GPUs, capped
    # After the refusals expire (~42 s): floors held, the peak caps gone, the caps back, paced.
    assert [c for k, c, st in sent if k > 45 and c.action == "power_floor" and st == "applied"]
    assert not np.isfinite(peaks[-1]).any() and (caps[-1][jobs] == site.gpu_max_w[jobs]).all()
    eff = gpu_efficiency(site)
    rises = [float(np.sum(np.maximum(b - a, 0.0)[jobs] / eff[jobs])) for a, b in itertools.pairwise(caps[40:])]
    up = (sc.grid.ramp_up_mw_per_s or 0.0) * 1e6
    assert sum(r > 0 for r in rises) >= 2 and max(rises) <= 0.5 * up + 1.0
