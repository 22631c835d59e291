"""Shadow mode on the real broker: `powerplane controller --shadow`, as its own Kafka role, decides on live
traffic exactly as an in-process run of the same policy on the same records, publishes only to pp.shadow
(never pp.commands), and the broker refuses it anything else; `powerplane shadow compare` then finds a live
controller running the same policy on the same traffic in agreement with it, decision by decision."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from collectors.base import SourceContext
from controllers.capping import CapSettings
from controllers.controller import CapController
from ops.cli import main
from ops.demo import Services, wait_for_groups
from ops.engine import Engine
from powerplane import access, topics
from powerplane.config import Config
from powerplane.kafka import Producer, client_auth
from powerplane.schemas import Command, Headroom, LevelAggregate, SchemaError, TelemetryFrame
from powerplane.signing import Keyring
from powerplane.site import Site
from sim.fleet import Fleet
from sim.source import FleetSource
from tests.conftest import free_port
from tests.integration.helpers import end_offsets, read_messages, start_group_at_end
from tests.integration.test_dashboard_browser import _wait_http
from tests.integration.test_streams_site import site_copy

STEPS = 16
LOSE_AT = 4  # feed A is lost at this second: the single-feed guard caps, then releases and caps again
ACTIONS = frozenset(("power_cap", "sm_clock_lock"))  # what the controller service decides on
INPUTS = (topics.AGGREGATES.name, topics.TELEMETRY.name, topics.HEADROOM.name, topics.FACILITY.name)
KEYS = Keyring({"k1": b"\x05" * 32}, "k1")
Step = tuple[list[TelemetryFrame], list[Any]]  # a second's frames, and the aggregates and headroom it produced


class _Tap(CapController):
    """The engine's controller, keeping every aggregate and headroom record the roll-up hands it: the records
    the streams worker would have published for this traffic."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.taken: list[Any] = []

    def on_aggregate(self, agg: LevelAggregate, now_s: float) -> None:
        self.taken.append(agg)
        super().on_aggregate(agg, now_s)

    def on_headroom(self, h: Headroom, now_s: float) -> None:
        self.taken.append(h)
        super().on_headroom(h, now_s)


def _traffic(site: Site, epoch_s: float, steps_n: int = STEPS, lose_at: int | None = LOSE_AT) -> list[Step]:
    """The lab fleet at a third of its load, feed A lost at `lose_at` (None: never), rolled up by the in-process
    engine: each second's frames, and the aggregates and headroom the streams worker would have published."""
    tap = _Tap(site, KEYS, CapSettings(), 30.0, actions=ACTIONS)
    eng = Engine(site, KEYS, CapSettings(), 30.0, controller=tap)
    fleet = Fleet(site, seed=4, load_scale=0.3, epoch_s=epoch_s)
    src = FleetSource("sim", {"interval_s": 1.0}, SourceContext(site=site, plant=fleet))
    steps: list[Step] = []
    for i in range(steps_n):
        if i == lose_at:
            fleet.lose_feed("A")
        frames = list(src.read_batch())
        n0 = len(tap.taken)
        for f in frames:
            eng.feed_frame(f)
        steps.append((frames, tap.taken[n0:]))
    return steps


def _reference(site: Site, c: Config, steps: list[Step]) -> list[Command]:
    """The same policy in process, fed each second's records as the service takes them (aggregates and headroom,
    then frames) on arrival, and deciding once a tick, half a second after they were sent (the service's ticks
    are at half past each second: controllers.service.TICK_PHASE)."""
    ctl = CapController(site, KEYS, CapSettings(c.cap_threshold, c.uncap_threshold), c.command_lease_s,
                        actions=ACTIONS)
    out: list[Command] = []
    for frames, others in steps:
        sent = frames[0].ts_s
        for rec in others:
            if isinstance(rec, LevelAggregate):
                ctl.on_aggregate(rec, sent + 0.05)
            else:
                ctl.on_headroom(rec, sent + 0.05)
        for f in frames:
            ctl.on_frame(f, sent + 0.05)
        out += ctl.decide(sent + 0.55)
    return out


def _publish(c: Config, steps: list[Step]) -> None:
    """Each second's records at the second they are stamped with, as the collectors and the worker send them."""
    p = Producer(c.kafka_bootstrap, "test-shadow", linger_ms=200)
    try:
        for frames, others in steps:
            t = frames[0].ts_s
            time.sleep(max(0.0, t - time.time()))
            for rec in others:
                topic = topics.AGGREGATES.name if isinstance(rec, LevelAggregate) else topics.HEADROOM.name
                p.send(topic, rec.encode(), key=rec.key(), timestamp_ms=int(rec.ts_s * 1000))
            for f in frames:
                p.send(topics.TELEMETRY.name, f.encode(), key=f.key(), timestamp_ms=int(f.ts_s * 1000))
            p.flush()
            late = time.time() - t
            # The controllers decide at half past the second: records sent later than that are another test.
            assert late < 0.35, f"second {t:.0f}: its records took {late:.2f} s to send (machine overloaded)"
    finally:
        p.close()


def _commands(c: Config, topic: str, site: str, start: dict[int, int]) -> list[Command]:
    out = []
    for m in read_messages(c, topic, timeout_s=20, start=start):
        try:
            cmd = Command.decode(m.value)
        except SchemaError:
            continue
        if cmd.site == site:
            out.append(cmd)
    return out


def _key(cmd: Command) -> tuple[int, str, str, tuple[int, ...], tuple[float, ...], str]:
    return (int(cmd.issued_at_s), cmd.target, cmd.action, tuple(cmd.gpus.tolist()),
            tuple(np.round(cmd.values, 3).tolist()), cmd.reason)


def _changes(cmds: list[Command], end_s: float) -> list[tuple[Any, ...]]:
    return sorted(_key(x) for x in cmds if x.reason != "lease renewal" and x.issued_at_s < end_s)


def test_shadow_decides_as_the_engine_writes_only_pp_shadow_and_agrees_with_a_live_twin(
        cfg: Config, tmp_path: Path, capsys: Any) -> None:
    path, site = site_copy(tmp_path, f"lab-shadow-{int(time.time())}")
    c = cfg.model_copy(update={"site_file": str(path)})
    for group in (access.SHADOW_GROUP, "powerplane-controller"):
        start_group_at_end(c, group, INPUTS)
    start_group_at_end(c, "powerplane-controller", (topics.ACKS.name,))
    since = {t: end_offsets(c, t) for t in (topics.COMMANDS.name, topics.SHADOW.name, topics.AUDIT.name,
                                              topics.EVENTS.name)}
    svc = Services(c, tmp_path / "logs")
    try:
        svc.start("shadow", "controller", "--shadow")
        svc.start("live", "controller")  # the same policy in charge, for `shadow compare`
        wait_for_groups(c, (access.SHADOW_GROUP, "powerplane-controller"), check=svc.check)
        epoch = float(int(time.time()) + 2)
        steps = _traffic(site, epoch)
        _publish(c, steps)
        time.sleep(1.5)  # the tick that takes the last second
        svc.check()
    finally:
        svc.stop()
    end_s = steps[-1][0][0].ts_s + 1.0
    shadow = _commands(c, topics.SHADOW.name, site.name, since[topics.SHADOW.name])
    live = _commands(c, topics.COMMANDS.name, site.name, since[topics.COMMANDS.name])
    want = _changes(_reference(site, c, steps), end_s)
    # The scenario exercised the policy: the single-feed guard capped every rack (and released, and capped again).
    assert len({k[1] for k in want}) == site.n_racks and any("single-feed guard" in k[5] for k in want), want
    # (a) pp.shadow holds what the in-process run of the same policy on the same records decided: same second,
    # rack, action, GPUs, values and reason; every one marked and signed with the shadow key.
    assert _changes(shadow, end_s) == want
    assert all(x.shadow is True and x.key_id == "shadow" and x.issuer == "shadow-controller" for x in shadow)
    # (b) Nothing of the shadow's on pp.commands, pp.audit or pp.events: the live controller's commands only.
    assert live and not [x for x in live if x.shadow or x.issuer == "shadow-controller"]
    assert not [x for x in _commands(c, topics.AUDIT.name, site.name, since[topics.AUDIT.name]) if x.shadow]
    assert not [m for m in read_messages(c, topics.EVENTS.name, timeout_s=20, start=since[topics.EVENTS.name])
                if site.name.encode() in (m.value or b"")]
    # The two controllers, in their own groups, both read every input: the live one decided the same.
    assert _changes(live, end_s) == want
    assert main(["shadow", "compare", "--since", f"{epoch - 1:.0f}", "--seconds", f"{STEPS + 3}",
                 "--site", site.name, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["actions"]
    n = len([x for x in shadow if x.reason != "lease renewal"])
    assert (row["action"], row["agree"], row["differ"], row["shadow-only"], row["live-only"]) == \
        ("power_cap", n, 0, 0, 0), doc
    assert doc["held_capped_w"]["live"] == pytest.approx(doc["held_capped_w"]["shadow"]) and \
        doc["held_capped_w"]["live"] > 0
    # The live dashboard shows the same comparison (its site's decisions over the last minutes).
    page = _dashboard_shadow(c, tmp_path)
    assert (page["live_decisions"], page["shadow_decisions"]) == (n, n) and page["actions"] == doc["actions"]


def _dashboard_shadow(c: Config, tmp_path: Path) -> dict[str, Any]:
    port = free_port()
    svc = Services(c, tmp_path / "dash-logs")
    try:
        svc.start("dashboard", "dashboard", "--port", str(port), "--backfill", "0")
        _wait_http(f"http://127.0.0.1:{port}/api/snapshot", svc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/shadow?seconds=120", timeout=60) as r:
            doc: dict[str, Any] = json.loads(r.read())
        return doc
    finally:
        svc.stop()


def test_the_broker_refuses_the_shadow_role_every_topic_an_actuator_or_operator_acts_on(cfg: Config) -> None:
    """With the shadow's credentials a produce to pp.commands is refused by the broker (TopicAuthorizationFailed),
    as are pp.audit and pp.events; pp.shadow is accepted."""
    before = {t: end_offsets(cfg, t) for t in (topics.COMMANDS.name, topics.AUDIT.name, topics.EVENTS.name)}
    for topic in before:
        p = Producer(cfg.kafka_bootstrap, "test-shadow-acl", auth=client_auth(cfg, "shadow"))
        try:
            assert p.send(topics.SHADOW.name, b"not a record", b"test")
            p.flush(15)
            assert p.delivered == 1 and p.failed == 0, p.last_error
            p.send(topic, b"not a record", b"test")
            p.flush(15)
        finally:
            p.close(5)
        assert p.failed == 1
        assert p.last_error.startswith(f"User:pp-shadow (role shadow) may not write topic {topic}: the broker's "
                                       "ACLs refuse"), p.last_error
    assert {t: end_offsets(cfg, t) for t in before} == before
