"""Two actuators with disjoint groups of racks on the real broker: every command is answered once, by the
actuator serving its rack, and each actuator reads (and commits) only the pp.commands partitions its racks
hash to."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
from kafka import TopicPartition
from prometheus_client import CollectorRegistry, generate_latest

from actuators import service as actuator_service
from actuators.base import load_actuator
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import Producer, admin_client, process_auth
from powerplane.schemas import Ack, Command
from powerplane.signing import load_keyring
from powerplane.site_file import load_site
from sim.fleet import Fleet
from tests.integration.helpers import end_offsets, read_messages


def test_two_actuators_each_answer_their_racks_from_their_partitions(cfg: Config) -> None:
    site = load_site(cfg.site_file)
    fleet = Fleet(site, seed=1)
    keyring = load_keyring(cfg.signing_key_file, cfg.signing_key_id, create=True)
    all_parts = list(range(topics.COMMANDS.partitions))
    groups = actuator_service.rack_groups(site.rack_ids, 2, len(all_parts))
    run = uuid.uuid4().hex[:8]  # new groups: each starts where a new actuator starts, and commits only its own
    names = [f"grp-{run}-a", f"grp-{run}-b"]
    expected = {n: actuator_service.rack_partitions(g, all_parts) for n, g in zip(names, groups, strict=True)}
    assert not set(expected[names[0]]) & set(expected[names[1]])  # the lab site's racks allow disjoint groups
    serving = {r: n for n, g in zip(names, groups, strict=True) for r in g}
    registry = CollectorRegistry()  # both in one registry, as the fleet's actuators are
    stop = threading.Event()
    ready = [threading.Event() for _ in names]
    threads = [threading.Thread(target=actuator_service.run, args=(cfg, site.name, load_actuator(
        n, {"kind": "twin", "racks": g}, context=fleet), keyring, stop, r, registry))
        for n, g, r in zip(names, groups, ready, strict=True)]
    cmd_start, ack_start = end_offsets(cfg, topics.COMMANDS.name), end_offsets(cfg, topics.ACKS.name)
    for th in threads:
        th.start()
    p = Producer(cfg.kafka_bootstrap, "actuator-groups-test")
    sent: dict[str, str] = {}  # command id -> rack
    try:
        assert all(r.wait(30) for r in ready), "an actuator did not get its partitions"
        now = time.time()
        for rack in site.rack_ids:  # one command per rack of the site, two for the first
            for _ in range(2 if rack == site.rack_ids[0] else 1):
                c = keyring.sign(Command(id=str(uuid.uuid4()), site=site.name, target=rack, action="power_cap",
                                         gpus=np.array([0], dtype=np.uint16), values=np.array([420.0], np.float32),
                                         params={}, reason="test", issuer="test", issued_at_s=now, lease_s=60.0))
                p.send(topics.COMMANDS.name, c.encode(), key=c.key())
                sent[c.id] = rack
        p.flush()
        deadline = time.monotonic() + 30
        answered: set[str] = set()
        while time.monotonic() < deadline and answered != set(sent):
            answered = {Ack.decode(m.value).command_id for m in read_messages(cfg, topics.ACKS.name, 5, ack_start)}
            time.sleep(0.3)
        lag_page = generate_latest(registry).decode()
    finally:
        stop.set()
        for th in threads:
            th.join(15)
        p.close()
    # Everything the actuators sent is on the broker now (they flush on the way out): each command of ours
    # answered once, by the actuator of its rack.
    acks = [Ack.decode(m.value) for m in read_messages(cfg, topics.ACKS.name, 10, ack_start)]
    ours = [(a.command_id, a.actuator, a.status) for a in acks if a.command_id in sent]
    assert sorted(c for c, _, _ in ours) == sorted(sent), ours
    assert all(actuator == serving[sent[c]] and status == "applied" for c, actuator, status in ours), ours
    # Where the producer put each command, each actuator reads: the records' partitions are its partitions.
    landed = {Command.decode(m.value).id: m.partition for m in read_messages(cfg, topics.COMMANDS.name, 10, cmd_start)}
    assert all(landed[c] in expected[serving[rack]] for c, rack in sent.items())
    for name in names:
        group = f"powerplane-actuator-{name}"
        # Only its partitions on its /metrics (lag by partition) and in its group's committed offsets.
        lagged = {int(line.split('partition="')[1].split('"')[0]) for line in lag_page.splitlines()
                  if line.startswith(f'powerplane_consumer_lag_records{{group="{group}"')}
        assert sorted(lagged) == expected[name], (name, lag_page)
        admin = admin_client(cfg.kafka_bootstrap, process_auth())
        try:
            committed = admin.list_group_offsets({group: None})[group]
        finally:
            admin.close()
        assert sorted(tp.partition for tp in committed) == expected[name], committed
        assert all(isinstance(tp, TopicPartition) and tp.topic == topics.COMMANDS.name for tp in committed)
