"""`powerplane dev up/down` on a fresh state directory: real Kafka 4.x in KRaft mode with the
declared topics, VictoriaMetrics answering, and nothing left running after `dev down`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError

from powerplane import topics
from powerplane.config import load_config
from powerplane.kafka import client_auth
from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def test_dev_up_creates_declared_topics_and_down_leaves_nothing(tmp_path: Path) -> None:
    kafka = f"127.0.0.1:{free_port(pair=True)}"
    env = dict(os.environ, PP_KAFKA_BOOTSTRAP=kafka, PP_INFLUX_URL=f"http://127.0.0.1:{free_port()}",
               PP_STATE_DIR=str(tmp_path / "state"))
    up = _cli(env, "dev", "up")
    try:
        assert up.returncode == 0, up.stderr
        status = _cli(env, "dev", "status").stdout
        assert "kafka" in status and "running" in status
        auth = client_auth(load_config(env=env), "admin").kafka_python()  # `dev up` made the users
        admin = KafkaAdminClient(bootstrap_servers=kafka, **auth)
        try:
            meta = {t["name"]: t for t in admin.describe_topics([t.name for t in topics.ALL])}
            for t in topics.ALL:
                assert len(meta[t.name]["partitions"]) == t.partitions, t.name
                got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t.name)])["topic"][t.name]
                for key, want in t.configs().items():
                    assert got[key]["value"] == want, f"{t.name} {key}"
        finally:
            admin.close()
        # Auto-create is off: a typo in a topic name fails instead of inventing a topic.
        p = KafkaProducer(bootstrap_servers=kafka, max_block_ms=3000, **auth)
        try:
            raised = False
            try:
                p.send("pp.telemtry-typo", b"x").get(timeout=5)
            except KafkaError:
                raised = True
            assert raised, "the broker auto-created a topic"
        finally:
            p.close(timeout=2)
    finally:
        down = _cli(env, "dev", "down")
    assert down.returncode == 0, down.stderr
    pids = [int(p.read_text()) for p in (tmp_path / "state").rglob("*.pid")]
    assert not pids, "pid files left behind"
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in out, "a server started by dev up is still running"
    assert "stopped" in _cli(env, "dev", "status").stdout
