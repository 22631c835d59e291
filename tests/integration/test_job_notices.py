"""The live job-notice input on the real broker (issue 16): `powerplane job notice` signs a notice with the scheduler
key and publishes it to pp.jobs as the scheduler role; a running `powerplane controller` (`power_floors = "on"`, a
site with a ramp limit) accepts it, answers on pp.events, and sends power_floor commands that take exactly the
named GPUs up to the announced power before the start. A notice signed with another key, published by the same
role, is refused with its reason (pp.events and pp.deadletter) and floors nothing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ops.cli import main
from ops.demo import Services, wait_for_groups
from powerplane import access, topics
from powerplane.config import Config
from powerplane.kafka import client_auth, set_process_auth
from powerplane.schemas import Command, JobNotice
from powerplane.signing import Keyring
from powerplane.site import Site
from tests.integration.helpers import end_offsets, read_messages, start_group_at_end
from tests.integration.test_grid_input import _answers, _caps, _publish, _traffic, send_as
from tests.integration.test_shadow import INPUTS
from tests.integration.test_streams_site import site_copy

pytestmark = pytest.mark.integration
START_IN_S = 8.0  # the job starts this long after the notice: the controller decides on fresh inputs by then
RAMP = "\n[grid]\nramp_up_mw_per_s = 0.015\nramp_down_mw_per_s = 0.015\n"  # as lab-grid-ramp.toml
# Inference servers: the ramp limiter's own plan floors only job classes, so a floor on these is the notice's.
GOOD = ("rack-01-s04", "rack-01-s05", "rack-02-s04/gpu3")  # 17 GPUs: more than the pace takes up in one step
FORGED = ("rack-03-s00",)


def _gpus(site: Site, names: tuple[str, ...]) -> set[tuple[str, int]]:
    """(rack, GPU index within the rack) of each named GPU: how commands address them."""
    out = set()
    for g in range(site.n_gpus):
        gid = site.gpu_id(g)
        if any(gid == n or gid.startswith(f"{n}/") for n in names):
            r = int(site.gpu_rack[g])
            out.add((site.rack_ids[r], g - int(site.rack_gpu_start[r])))
    return out


def _floors_on(cmds: list[Command], gpus: set[tuple[str, int]]) -> list[tuple[float, str, int, float]]:
    """(issued at, rack, GPU, floor W) of every floor the commands set on `gpus`."""
    return sorted((c.issued_at_s, c.target, int(g), float(v)) for c in cmds for g, v in zip(c.gpus, c.values,
                                                                                            strict=True)
                  if (c.target, int(g)) in gpus)


def test_a_signed_notice_floors_its_gpus_before_the_start_and_a_forged_one_is_refused(
        cfg: Config, tmp_path: Path, capsys: Any) -> None:
    stamp = int(time.time())
    path, site = site_copy(tmp_path, f"lab-jobs-{stamp}", RAMP)
    c = cfg.model_copy(update={"site_file": str(path), "power_floors": "on"})
    start_group_at_end(c, "powerplane-controller", (*INPUTS, topics.ACKS.name, topics.GRID.name, topics.JOBS.name))
    start_group_at_end(c, access.SHADOW_GROUP, (*INPUTS, topics.GRID.name, topics.JOBS.name))
    since = {t: end_offsets(c, t) for t in (topics.COMMANDS.name, topics.EVENTS.name, topics.DEADLETTER.name,
                                              topics.SHADOW.name)}
    good, forged = f"job-{stamp}.0", f"job-forged-{stamp}.0"
    svc = Services(c, tmp_path / "logs")
    try:
        svc.start("live", "controller")
        svc.start("shadow", "controller", "--shadow")  # takes the notices too, and publishes nothing live
        wait_for_groups(c, ("powerplane-controller", access.SHADOW_GROUP), check=svc.check)
        now = time.time()
        send_as(c, "scheduler", topics.JOBS.name, Keyring({"s1": b"\x09" * 32}, "s1").sign(JobNotice(
            id=forged, site=site.name, issuer="someone", issued_at_s=now, start_s=now + START_IN_S,
            gpus=list(FORGED))))
        assert main(["job", "notice", "--job", good, "--start-in-s", f"{START_IN_S:g}", "--gpus", ",".join(GOOD),
                     "--expected-w", "500", "--site", site.name, "--issuer", "test-prolog"]) == 0
        set_process_auth(client_auth(c, "admin"))  # main() took the scheduler role for the process
        line = capsys.readouterr().out
        assert line.startswith(f"job notice {good}: 3 server(s)/GPU(s) on {site.name} start at ") and \
            "computing at 500 W; signed (s1) by test-prolog, sent to pp.jobs" in line, line
        _publish(c, _traffic(site, float(int(time.time()) + 1), seconds=14))
        time.sleep(1.5)  # the tick that takes the last second
        svc.check()
    finally:
        svc.stop()
    answers = _answers(c, since[topics.EVENTS.name], (good, forged), kind="job_notice", id_key="notice_id")
    # The forged notice: refused, naming the signature, on pp.deadletter with that reason, and no floor anywhere
    # near its GPUs.
    (refused,) = answers[forged]
    assert refused.details is not None and refused.details["status"] == "refused" and refused.severity == "warning"
    assert "bad signature" in refused.summary and "only the scheduler role's key may announce a job" in refused.summary
    dead = [m for m in read_messages(c, topics.DEADLETTER.name, timeout_s=20, start=since[topics.DEADLETTER.name])
            if m.value and forged.encode() in m.value]
    assert len(dead) == 1 and b"bad signature" in dict(dead[0].headers)["pp.reason"]
    floors = _caps(c, site.name, since[topics.COMMANDS.name], action="power_floor")
    assert not _floors_on(floors, _gpus(site, FORGED))
    # The signed one: accepted once, and what a user notices: floors on exactly its 17 GPUs, rising from idle to
    # the announced 500 W within the seconds before the start (paced: the first step is not the whole way).
    (accepted,) = answers[good]
    assert accepted.details is not None and accepted.details["status"] == "accepted"
    assert f"from test-prolog, in 8 s: job {good}: 17 GPUs start at " in accepted.summary, accepted.summary
    start_s = float(accepted.details["start_s"])
    mine = _gpus(site, GOOD)
    got = _floors_on(floors, mine)
    assert {(r, g) for _, r, g, _ in got} == mine, got
    before = [x for x in got if x[0] < start_s]
    assert {(r, g) for _, r, g, w in before if w == 500.0} == mine, got  # all at 500 W before the start
    first = min(t for t, *_ in got)
    assert start_s - 6.0 < first < start_s and all(70.0 < w < 500.0 for t, _, _, w in got if t == first), got
    assert np.isclose(max(w for *_, w in got), 500.0)
    # The shadow took the same notice into its own limiter (its would-be floors on pp.shadow), refused the forgery,
    # and answered neither on pp.events (the one answer each above is the live controller's).
    shadow_log = (tmp_path / "logs" / "shadow.log").read_text()
    assert f"shadow controller: job notice {good} accepted" in shadow_log
    assert f"shadow controller: job notice {forged} refused" in shadow_log
    shadow = _floors_on(_caps(c, site.name, since[topics.SHADOW.name], topics.SHADOW.name, "power_floor"), mine)
    assert {(r, g) for _, r, g, _ in shadow} == mine
    assert main(["job", "status", "--id", good, "--seconds", "300"]) == 0
    assert f"job notice {good} accepted:" in capsys.readouterr().out
