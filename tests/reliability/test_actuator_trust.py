"""Issue 12, findings 4-6, on the real broker: acks are believed only when an actuator signed them; the
actuator's replay window survives a kill -9; commands sent while it is down are all answered once it is
back; the fleet publishes telemetry while its actuator cannot join its group."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer

from controllers import service as controller_service
from ops.demo import Services, wait_for_groups
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import Producer, process_auth
from powerplane.schemas import Ack, Command, Event, Record, SchemaError, TelemetryFrame
from powerplane.signing import Keyring, ack_key_path, load_keyring
from powerplane.site_file import load_site
from streams.sinks.base import Sink
from streams.sinks.runner import SinkStats
from streams.sinks.runner import run as run_sink
from tests.integration.helpers import end_offsets, read_messages, start_group_at_end

RACK = "rack-03"


class CaptureSink(Sink):
    """A sink that keeps what it is given: what the runner would have stored."""

    kind = "capture"
    topics = (topics.ACKS.name,)

    def configure(self, opts: Any) -> None:
        self.written: list[Record] = []

    def write(self, records: Sequence[Record]) -> int:
        self.written.extend(records)
        return len(records)


@pytest.fixture
def rings(cfg: Config) -> tuple[Keyring, Keyring]:
    """(command keyring, ack keyring) of the session."""
    return (load_keyring(cfg.signing_key_file, cfg.signing_key_id, create=True),
            load_keyring(ack_key_path(cfg.signing_key_file, cfg.ack_key_file), cfg.ack_key_id, create=True))


@pytest.fixture
def producer(cfg: Config) -> Iterator[Producer]:
    p = Producer(cfg.kafka_bootstrap, "reliability-actuator-trust")
    yield p
    p.close()


def cap(ring: Keyring, watts: float, lease_s: float = 120.0) -> Command:
    return ring.sign(Command(id=str(uuid.uuid4()), site="lab", target=RACK, action="power_cap",
                             gpus=np.array([0, 1], np.uint16), values=np.array([watts, watts], np.float32),
                             params={}, reason="reliability test", issuer="pytest", issued_at_s=time.time(),
                             lease_s=lease_s))


def send(p: Producer, *cmds: Command) -> None:
    for c in cmds:
        p.send(topics.COMMANDS.name, c.encode(), key=c.key())
    p.flush()


def acks_for(cfg: Config, start: dict[int, int], ids: set[str], want: int, timeout_s: float,
             check: Any = None) -> list[Ack]:
    """Acks for `ids` published since `start`, once at least `want` of them are there (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        acks = [a for a in map(lambda m: Ack.decode(m.value), read_messages(cfg, topics.ACKS.name, 5.0, start))
                if a.command_id in ids]
        if len(acks) >= want or time.monotonic() > deadline:
            return acks
        if check is not None:
            check()
        time.sleep(0.5)


def kill(services: Services, name: str) -> None:
    p = services.procs.pop(name)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _ack_dead_letters(cfg: Config, since: Any, ids: set[str]) -> list[Any]:
    """Dead letters of this test's acks only: other tests of the session share the broker and leave their
    own on pp.acks (garbage, and unsigned synthetic acks), which a controller group that starts behind them
    dead-letters too."""
    out = []
    for m in read_messages(cfg, topics.DEADLETTER.name, 5, since):
        if dict(m.headers).get("pp.source_topic") != topics.ACKS.name.encode():
            continue
        try:
            if Ack.decode(m.value).command_id in ids:
                out.append(m)
        except SchemaError:
            continue
    return out


def test_forged_unsigned_and_tampered_acks_are_dead_lettered_and_raise_security_events(
        cfg: Config, rings: tuple[Keyring, Keyring], producer: Producer) -> None:
    cmd_ring, ack_ring = rings
    site = load_site(cfg.site_file)
    sink_group = f"reliability-acks-{uuid.uuid4().hex[:6]}"
    start_group_at_end(cfg, sink_group, (topics.ACKS.name,))
    # The controller's group too: earlier tests leave acks of their own on pp.acks (unsigned synthetic ones
    # included), which a controller resuming from an old offset would refuse and count with these.
    start_group_at_end(cfg, "powerplane-controller", (topics.AGGREGATES.name, topics.TELEMETRY.name,
                                                      topics.HEADROOM.name, topics.ACKS.name))
    dl_start, ev_start = end_offsets(cfg, topics.DEADLETTER.name), end_offsets(cfg, topics.EVENTS.name)
    stop = threading.Event()
    out: dict[str, Any] = {}
    sink = CaptureSink("capture", {"kind": "capture"})
    auth = process_auth()  # the sink in its own group: the admin, not the sink role
    threads = [threading.Thread(target=lambda: out.setdefault("ctl", controller_service.run(cfg, site, cmd_ring,
                                                                                             stop))),
               threading.Thread(target=lambda: out.setdefault("sink", run_sink(cfg, sink, stop, group=sink_group,
                                                                                  auth=auth, stats=SinkStats())))]
    for t in threads:
        t.start()
    try:
        wait_for_groups(cfg, ("powerplane-controller", sink_group), timeout_s=40)

        def ack(cid: str, status: str = "applied") -> Ack:
            return Ack(command_id=cid, site="lab", target=RACK, status=status, gpus=np.array([0], np.uint16),
                       applied=np.array([300.0], np.float32), reason="", actuator="twin", ts_s=time.time())

        unsigned = ack(f"never-issued-{uuid.uuid4()}")  # finding 4: an 'applied' for a command that never was
        tampered = ack_ring.sign(ack(f"tampered-{uuid.uuid4()}", "rejected"))
        tampered.status = "applied"
        other_key = cmd_ring.sign(ack(f"command-key-{uuid.uuid4()}"))  # signed, but not with an actuator key
        genuine = ack_ring.sign(ack(f"genuine-{uuid.uuid4()}"))  # an actuator's word, for a command not issued here
        for a in (unsigned, tampered, other_key, genuine):
            producer.send(topics.ACKS.name, a.encode(), key=a.key())
        producer.flush()
        forged = {unsigned.command_id, tampered.command_id, other_key.command_id}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_ack_dead_letters(cfg, dl_start, forged)) < 6:
            time.sleep(0.5)
        time.sleep(1.0)  # the genuine ack was sent last: give both readers time to take it
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    dead = _ack_dead_letters(cfg, dl_start, forged | {genuine.command_id})
    by_component: dict[str, set[str]] = {}
    for m in dead:
        h = {k: v.decode() for k, v in m.headers}
        by_component.setdefault(h["pp.component"], set()).add(Ack.decode(m.value).command_id)
        assert h["pp.reason"], h
    assert by_component == {"controller": forged, "sink-capture": forged}, by_component
    reasons = {dict(m.headers)["pp.reason"].decode() for m in dead}
    assert {"unsigned ack", "bad signature (tampered, or signed with another key)",
            f"unknown signing key id '{cfg.signing_key_id}'"} == reasons
    events = [Event.decode(m.value) for m in read_messages(cfg, topics.EVENTS.name, 5, ev_start)]
    refused = [e for e in events if e.kind == "ack_refused"]
    assert len(refused) == 6 and all(e.levels == [RACK] for e in refused)
    assert {e.details["command_id"] for e in refused if e.details} == forged
    # Nothing forged was taken as truth: the controller counted no outcome, the sink stored only the real ack.
    ctl = out["ctl"]
    # (Other tests' actuators share the broker: their lease-expiry acks may be counted as `reverted`, and
    # their acks for commands not issued here as unknown; nothing of theirs can be an outcome of this test.)
    assert "applied" not in ctl.stats.acks and set(ctl.stats.acks) <= {"reverted"}, ctl.stats.acks
    assert ctl.stats.acks_refused == 3 and ctl.stats.acks_unknown >= 1
    assert [r.command_id for r in sink.written if isinstance(r, Ack)] == [genuine.command_id]


def test_replay_after_kill_is_refused_and_commands_sent_while_down_are_all_answered(
        cfg: Config, rings: tuple[Keyring, Keyring], producer: Producer, tmp_path: Path) -> None:
    cmd_ring, ack_ring = rings
    services = Services(cfg, tmp_path)
    start = end_offsets(cfg, topics.ACKS.name)
    try:
        services.start("fleet", "fleet")
        captured = cap(cmd_ring, 450.0)
        send(producer, captured)
        first = acks_for(cfg, start, {captured.id}, 1, 45, services.check)
        assert [a.status for a in first] == ["applied"], "the fleet's actuator never applied the first command"
        kill(services, "fleet")  # finding 5: kill -9, nothing flushed or closed
        renewal = cap(cmd_ring, 430.0)  # still within its lease when the actuator is back
        short = cap(cmd_ring, 420.0, lease_s=1.0)  # its lease ends while the actuator is down
        send(producer, captured, renewal, short)  # the captured command replayed, byte for byte
        time.sleep(2.0)
        services.start("fleet", "fleet")
        ids = {captured.id, renewal.id, short.id}
        deadline = time.monotonic() + 45
        while True:  # every command answered after the restart, the replayed one at least once more
            acks = acks_for(cfg, start, ids, 4, 5, services.check)
            by_id: dict[str, list[str]] = {}
            for a in acks:
                by_id.setdefault(a.command_id, []).append(a.status)
            if (len(by_id) == 3 and len(by_id[captured.id]) >= 2) or time.monotonic() > deadline:
                break
    finally:
        services.stop()
    # Delivery is at least once: a command read again after the kill is answered again, as a duplicate.
    # What must hold: the captured command was applied once and every copy after is refused as a duplicate;
    # the renewal sent while the actuator was down is applied; the short lease that ended meanwhile expires.
    assert by_id.get(captured.id, [None])[0] == "applied" and by_id[captured.id].count("applied") == 1, by_id
    assert set(by_id[captured.id][1:]) == {"duplicate"}, by_id
    assert by_id.get(renewal.id, [None])[0] == "applied" and set(by_id[renewal.id][1:]) <= {"duplicate"}, by_id
    assert by_id.get(short.id, [None])[0] == "expired" and set(by_id[short.id][1:]) <= {"expired", "duplicate"}, by_id
    assert all(ack_ring.verify(a) is None for a in acks)  # and every one of them signed by the actuator


def test_fleet_publishes_telemetry_while_its_actuator_cannot_join(cfg: Config, rings: tuple[Keyring, Keyring],
                                                                  producer: Producer, tmp_path: Path) -> None:
    """A member that stopped polling holds the actuator's group (a subscribing consumer of that name, as the
    fleet's actuator was before it assigned its partitions, killed and not yet timed out): the fleet's
    telemetry must flow, and its actuator, which takes its partitions without joining, answers anyway (the
    broker refuses its offset commits until the member is gone; a refused commit means reading again)."""
    cmd_ring, _ = rings
    group = "powerplane-actuator-twin"  # the fleet's actuator (load_actuator("twin", ...))
    stuck = KafkaConsumer(topics.COMMANDS.name, bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python(),
                          group_id=group,
                          enable_auto_commit=False, max_poll_interval_ms=40_000, session_timeout_ms=10_000)
    services = Services(cfg, tmp_path)
    tel_start, ack_start = end_offsets(cfg, topics.TELEMETRY.name), end_offsets(cfg, topics.ACKS.name)
    try:
        deadline = time.monotonic() + 20
        while not stuck.assignment() and time.monotonic() < deadline:
            stuck.poll(timeout_ms=200)
        assert stuck.assignment(), "the blocking member did not join"
        t0 = time.monotonic()
        services.start("fleet", "fleet")
        frames: list[TelemetryFrame] = []
        while not frames and time.monotonic() - t0 < 20:
            services.check()
            frames = [TelemetryFrame.decode(m.value) for m in read_messages(cfg, topics.TELEMETRY.name, 3, tel_start)]
            time.sleep(0.5)
        waited_s = time.monotonic() - t0
        pending = cap(cmd_ring, 440.0)
        send(producer, pending)  # sent while the stray member holds the group
        stuck.close()
        acks = acks_for(cfg, ack_start, {pending.id}, 1, 40, services.check)
    finally:
        services.stop()
        stuck.close()
    assert frames and waited_s < 20, f"the fleet published no telemetry for {waited_s:.0f} s"
    assert [a.status for a in acks] == ["applied"], acks
