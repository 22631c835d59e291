"""The actuator on the real broker: a signed command is applied and acknowledged once; a replay of
the same id is not applied again; a tampered command is refused and raises a security event."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np

from actuators import service as actuator_service
from actuators.base import load_actuator
from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import Producer
from powerplane.schemas import Ack, Command, Event
from powerplane.signing import load_keyring
from powerplane.site_file import load_site
from sim.fleet import Fleet
from tests.integration.helpers import read_topic


def test_signed_applied_once_tampered_refused(cfg: Config) -> None:
    site = load_site(cfg.site_file)
    fleet = Fleet(site, seed=1)
    keyring = load_keyring(cfg.signing_key_file, cfg.signing_key_id, create=True)
    actuator = load_actuator("twin", {"kind": "twin"}, context=fleet)
    stop = threading.Event()
    ready = threading.Event()
    th = threading.Thread(target=actuator_service.run, args=(cfg, site.name, actuator, keyring, stop, ready))
    th.start()
    p = Producer(cfg.kafka_bootstrap, "actuator-test")
    try:
        assert ready.wait(30), "actuator did not join its consumer group"
        now = time.time()

        def cmd(value: float) -> Command:
            return Command(id=str(uuid.uuid4()), site=site.name, target="rack-03", action="power_cap",
                           gpus=np.array([0, 1], dtype=np.uint16), values=np.array([value, value], dtype=np.float32),
                           params={}, reason="test", issuer="test", issued_at_s=now, lease_s=60.0)

        good = keyring.sign(cmd(450.0))
        tampered = keyring.sign(cmd(500.0))
        tampered.values = np.array([250.0, 250.0], dtype=np.float32)  # changed after signing
        for c in (good, good, tampered):
            p.send(topics.COMMANDS.name, c.encode(), key=c.key())
        p.flush()
        deadline = time.time() + 20
        acks: list[Ack] = []
        while time.time() < deadline and len(acks) < 3:
            acks = [a for a in map(Ack.decode, read_topic(cfg, topics.ACKS.name, 3))
                    if a.command_id in (good.id, tampered.id)]
            time.sleep(0.3)
    finally:
        stop.set()
        th.join(15)
        p.close()
    by = [(a.command_id, a.status) for a in acks]
    assert by.count((good.id, "applied")) == 1, by
    assert by.count((good.id, "duplicate")) == 1, by
    assert (tampered.id, "rejected") in by
    g0 = int(site.rack_gpu_start[site.rack_index("rack-03")])
    assert fleet.limit_w[g0] == 450.0 and fleet.limit_w[g0 + 1] == 450.0  # tampered 250 W never applied
    events = [Event.decode(raw) for raw in read_topic(cfg, topics.EVENTS.name, 3)]
    refused = [e for e in events if e.kind == "command_refused" and tampered.id in e.summary]
    assert refused and "bad signature" in refused[0].summary
