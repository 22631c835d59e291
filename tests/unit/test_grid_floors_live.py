"""Power floors from the live controller (`power_floors = "on"`, docs/grid.md): on H100s, whose actuators
reject every power_floor for want of a power-smoothing floor, the controller asks each GPU once, counts the
refusal, logs one line, and leaves those GPUs alone for an hour instead of asking again every few seconds."""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import pytest

from actuators.base import load_actuator
from actuators.guard import Guard
from controllers.capping import CapSettings
from controllers.controller import CapController
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
