"""The live demand-response input on the real broker (issue 16): `powerplane dr request` signs a request with the
grid key and publishes it to pp.grid as the grid role; a running `powerplane controller` accepts it, answers on
pp.events, starts it at its start time, and its pp.commands then cap the site down. A request signed with another
key, published by the same role, is refused with its reason (pp.events and pp.deadletter) and changes nothing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ops.cli import main
from ops.demo import Services, wait_for_groups
from powerplane import access, topics
from powerplane.config import Config
from powerplane.kafka import Producer, client_auth, set_process_auth
from powerplane.schemas import Command, Event, GridRequest, SchemaError
from powerplane.signing import Keyring
from powerplane.site import Site
from tests.integration.helpers import end_offsets, read_messages, start_group_at_end
from tests.integration.test_shadow import INPUTS
from tests.integration.test_shadow import _traffic as shadow_traffic
from tests.integration.test_streams_site import site_copy

pytestmark = pytest.mark.integration
START_IN_S = 6.0  # the request starts this long after it is sent: the controller has the site's load by then


def _traffic(site: Site, epoch_s: float, seconds: int = 16) -> list[Any]:
    """The lab fleet at a third of its load (no cap needed, no feed lost), rolled up by the in-process engine."""
    return shadow_traffic(site, epoch_s, seconds, lose_at=None)


def _publish(c: Config, steps: list[Any]) -> None:
    """Each second's aggregates, headroom and frames at the second they are stamped with."""
    p = Producer(c.kafka_bootstrap, "test-grid-input", linger_ms=100)
    try:
        for frames, others in steps:
            time.sleep(max(0.0, frames[0].ts_s - time.time()))
            for rec in others:
                topic = topics.HEADROOM.name if rec.SCHEMA == "level.headroom" else topics.AGGREGATES.name
                p.send(topic, rec.encode(), key=rec.key(), timestamp_ms=int(rec.ts_s * 1000))
            for f in frames:
                p.send(topics.TELEMETRY.name, f.encode(), key=f.key(), timestamp_ms=int(f.ts_s * 1000))
            p.flush()
    finally:
        p.close()


def _forge(c: Config, site: Site, rid: str) -> None:
    """A well-formed request sent with the grid role's credentials but signed with a key that is not the grid key."""
    now = time.time()
    req = Keyring({"g1": b"\x09" * 32}, "g1").sign(GridRequest(
        id=rid, site=site.name, issuer="someone", issued_at_s=now, start_s=now, reduce_by_pct=90.0, reduce_to_mw=None,
        within_s=5.0, hold_s=600.0))
    send_as(c, "grid", topics.GRID.name, req)


def send_as(c: Config, role: str, topic: str, rec: Any) -> None:
    """One record sent with `role`'s credentials (a forgery: the broker lets the role write, the signature is what
    refuses it)."""
    p = Producer(c.kafka_bootstrap, f"test-{role}-forger", auth=client_auth(c, role))
    try:
        p.send(topic, rec.encode(), key=rec.key())
        p.flush(15)
    finally:
        p.close(5)
    assert p.delivered == 1, p.last_error


def _answers(c: Config, since: dict[int, int], ids: tuple[str, ...], kind: str = "demand_response",
             id_key: str = "request_id") -> dict[str, list[Event]]:
    """The controller's answers (pp.events, `kind`) to the records `ids`, named by details[id_key]."""
    out: dict[str, list[Event]] = {i: [] for i in ids}
    for m in read_messages(c, topics.EVENTS.name, timeout_s=20, start=since):
        try:
            ev = Event.decode(m.value)
        except SchemaError:
            continue
        rid = (ev.details or {}).get(id_key)
        if ev.kind == kind and rid in out:
            out[rid].append(ev)
    return out


def _caps(c: Config, site: str, since: dict[int, int], topic: str = topics.COMMANDS.name,
          action: str = "power_cap") -> list[Command]:
    """The site's `action` commands (renewals left out) on `topic` since `since`."""
    out = []
    for m in read_messages(c, topic, timeout_s=20, start=since):
        try:
            cmd = Command.decode(m.value)
        except SchemaError:
            continue
        if cmd.site == site and cmd.action == action and cmd.reason != "lease renewal":
            out.append(cmd)
    return out


def test_a_signed_request_from_the_cli_caps_the_site_and_a_forged_one_is_refused(
        cfg: Config, tmp_path: Path, capsys: Any) -> None:
    stamp = int(time.time())
    path, site = site_copy(tmp_path, f"lab-dr-{stamp}")
    c = cfg.model_copy(update={"site_file": str(path)})
    start_group_at_end(c, "powerplane-controller", (*INPUTS, topics.ACKS.name, topics.GRID.name))
    start_group_at_end(c, access.SHADOW_GROUP, (*INPUTS, topics.GRID.name))
    since = {t: end_offsets(c, t) for t in (topics.COMMANDS.name, topics.EVENTS.name, topics.DEADLETTER.name,
                                              topics.SHADOW.name)}
    good, forged = f"dr-{stamp}", f"dr-forged-{stamp}"
    svc = Services(c, tmp_path / "logs")
    try:
        svc.start("live", "controller")
        svc.start("shadow", "controller", "--shadow")  # takes the requests too, and publishes nothing live
        wait_for_groups(c, ("powerplane-controller", access.SHADOW_GROUP), check=svc.check)
        _forge(c, site, forged)
        assert main(["dr", "request", "--id", good, "--reduce-by-pct", "25", "--within-s", "4", "--hold-s", "600",
                     "--in-s", f"{START_IN_S:g}", "--site", site.name, "--issuer", "test-ven"]) == 0
        sent_s = time.time()
        set_process_auth(client_auth(c, "admin"))  # main() took the grid role for the process
        line = capsys.readouterr().out
        assert line.startswith(f"demand response {good}: reduce {site.name} by 25 % within 4 s from ") and \
            "signed (g1) by test-ven, sent to pp.grid" in line, line
        _publish(c, _traffic(site, float(int(time.time()) + 1)))
        time.sleep(1.5)  # the tick that takes the last second
        svc.check()
    finally:
        svc.stop()
    answers = _answers(c, since[topics.EVENTS.name], (good, forged))
    # The forged request: refused, naming the signature, and on pp.deadletter with that reason.
    (refused,) = answers[forged]
    assert refused.details is not None and refused.details["status"] == "refused" and refused.severity == "warning"
    assert "bad signature" in refused.summary and "only the grid role's key may ask" in refused.summary
    dead = [m for m in read_messages(c, topics.DEADLETTER.name, timeout_s=20, start=since[topics.DEADLETTER.name])
            if m.value and forged.encode() in m.value]
    assert len(dead) == 1 and b"bad signature" in dict(dead[0].headers)["pp.reason"]
    # The signed one: accepted on arrival, started at its start with the load it starts from and its target.
    statuses = [(e.details or {}).get("status") for e in answers[good]]
    assert statuses == ["accepted", "started"], [e.summary for e in answers[good]]
    assert "from test-ven, starting" in answers[good][0].summary
    assert " MW to " in answers[good][1].summary and "within 4 s, held 600 s" in answers[good][1].summary
    # What a user notices: caps shedding the site, none before the request started (a third of the load needs none).
    caps = _caps(c, site.name, since[topics.COMMANDS.name])
    start_s = sent_s + START_IN_S
    assert caps and all(x.issued_at_s >= start_s - 1.0 for x in caps), [(x.issued_at_s, x.reason) for x in caps]
    assert all(x.reason.startswith("shedding") for x in caps)
    # The shadow took the same request into its own budget (its would-be caps on pp.shadow), refused the forgery,
    # and answered neither on pp.events (the one answer per status above is the live controller's).
    shadow_log = (tmp_path / "logs" / "shadow.log").read_text()
    assert f"shadow controller: demand response {good} started" in shadow_log
    assert f"shadow controller: demand response {forged} refused" in shadow_log
    shadow_caps = _caps(c, site.name, since[topics.SHADOW.name], topics.SHADOW.name)
    assert shadow_caps and all(x.shadow and x.issued_at_s >= start_s - 1.0 for x in shadow_caps)
    assert main(["dr", "status", "--id", good, "--seconds", "300"]) == 0
    assert f"demand response {good} started:" in capsys.readouterr().out


def _forget_offsets(c: Config, group: str, topic: str) -> None:
    """The group as one that has never read `topic` (its other offsets kept): a controller's first start."""
    from kafka import TopicPartition

    from powerplane.kafka import admin_client

    admin = admin_client(c.kafka_bootstrap, client_auth(c, "admin"))
    try:
        parts = [TopicPartition(topic, p) for p in range(topics.GRID.partitions)]
        failed = {tp: err for tp, err in admin.delete_group_offsets(group, parts).items()
                  if err is not None and err.__name__ != "NoError"}
        assert not failed, failed
    finally:
        admin.close()


def test_a_request_sent_before_the_controllers_first_start_is_taken(cfg: Config, tmp_path: Path, capsys: Any) -> None:
    """The utility announces a day ahead; the site's controller group has never read pp.grid (a new deployment).
    The request is accepted when the controller first starts, not skipped as records before a group's first
    start are (kafka's `latest` reset)."""
    stamp = int(time.time())
    path, site = site_copy(tmp_path, f"lab-dr-first-{stamp}")
    c = cfg.model_copy(update={"site_file": str(path)})
    start_group_at_end(c, "powerplane-controller", (*INPUTS, topics.ACKS.name, topics.GRID.name))
    _forget_offsets(c, "powerplane-controller", topics.GRID.name)
    since = end_offsets(c, topics.EVENTS.name)
    rid = f"dr-ahead-{stamp}"
    assert main(["dr", "request", "--id", rid, "--reduce-by-pct", "25", "--within-s", "30", "--hold-s", "600",
                 "--in-s", "3600", "--site", site.name, "--issuer", "test-ven"]) == 0
    set_process_auth(client_auth(c, "admin"))
    capsys.readouterr()
    time.sleep(1.0)  # sent a moment before the controller's first start
    svc = Services(c, tmp_path / "logs")
    try:
        svc.start("live", "controller")
        wait_for_groups(c, ("powerplane-controller",), check=svc.check)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and not _answers(c, since, (rid,))[rid]:
            time.sleep(1.0)
        svc.check()
    finally:
        svc.stop()
    statuses = [(e.details or {}).get("status") for e in _answers(c, since, (rid,))[rid]]
    assert statuses == ["accepted"]
    log = (tmp_path / "logs" / "live.log").read_text()
    assert f"first start of group powerplane-controller on {topics.GRID.name}" in log
