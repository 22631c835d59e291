"""Security on the real dev broker (`dev up`: TLS, SCRAM-SHA-512 per role, ACLs from powerplane.access): who is
refused, and that the refusal is one readable line naming the principal, the topic or the certificate."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

from powerplane import access, topics
from powerplane.config import Config
from powerplane.kafka import ClientAuth, KafkaAccessError, Producer, client_auth, consumer
from tests.conftest import ROOT, TEST_ENV
from tests.integration.helpers import end_offsets


def _refusal(cfg: Config, auth: ClientAuth, bootstrap: str = "") -> str:
    with pytest.raises(KafkaAccessError) as e:
        consumer(bootstrap or cfg.kafka_bootstrap, None, topics.TELEMETRY.name, auth=auth).close()
    return str(e.value)


def test_unauthenticated_clients_are_refused(cfg: Config) -> None:
    plaintext = _refusal(cfg, ClientAuth(protocol="PLAINTEXT"))
    assert "requires TLS" in plaintext and "PP_KAFKA_SECURITY_PROTOCOL" in plaintext
    tls_only = _refusal(cfg, replace(client_auth(cfg, "ops"), protocol="SSL"))
    assert "wants SASL" in tls_only
    wrong = _refusal(cfg, replace(client_auth(cfg, "collector"), password="not-the-password"))
    assert "refused to authenticate User:pp-collector" in wrong


def test_wrong_password_is_one_line_from_the_cli(cfg: Config) -> None:
    env = dict(os.environ, **TEST_ENV, PP_KAFKA_PASSWORD="not-the-password")
    res = subprocess.run([sys.executable, "-m", "ops", "status", "--timeout", "20"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=90)
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "refused to authenticate User:pp-ops" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


# (role, a topic it writes, a topic it may not write)
WRITES = [("collector", topics.TELEMETRY.name, topics.COMMANDS.name),
          ("collector", topics.DEADLETTER.name, topics.ACKS.name),
          ("streams", topics.AGGREGATES.name, topics.COMMANDS.name),
          ("controller", topics.COMMANDS.name, topics.TELEMETRY.name),
          ("shadow", topics.SHADOW.name, topics.COMMANDS.name),
          ("actuator", topics.ACKS.name, topics.COMMANDS.name),
          ("sink", topics.EVENTS.name, topics.AGGREGATES.name),
          ("grid", topics.GRID.name, topics.COMMANDS.name),  # the utility's gateway: requests only
          ("grid", topics.GRID.name, topics.EVENTS.name),
          ("scheduler", topics.JOBS.name, topics.GRID.name),  # the scheduler's prolog: notices only
          ("grid", topics.GRID.name, topics.JOBS.name),
          ("ops", None, topics.TELEMETRY.name)]


@pytest.mark.parametrize(("role", "allowed", "denied"), WRITES)
def test_each_role_writes_only_its_topics(cfg: Config, role: str, allowed: str | None, denied: str,
                                          caplog: Any) -> None:
    before = end_offsets(cfg, denied)
    p = Producer(cfg.kafka_bootstrap, f"test-{role}", auth=client_auth(cfg, role))
    try:
        if allowed:
            assert p.send(allowed, b"not a record", b"test")
            p.flush(15)
            assert p.delivered == 1 and p.failed == 0, p.last_error
        p.send(denied, b"not a record", b"test")
        p.flush(15)
    finally:
        p.close(5)
    assert p.failed == 1
    # One line naming the principal and the topic; logged as it is, never a stack trace.
    assert p.last_error.startswith(f"User:{access.username(role)} (role {role}) may not write topic {denied}:")
    assert "\n" not in p.last_error
    assert any(p.last_error in r.getMessage() for r in caplog.records)
    assert end_offsets(cfg, denied) == before, f"{role} wrote {denied}"


def test_a_role_cannot_read_what_it_does_not_need(cfg: Config) -> None:
    with pytest.raises(KafkaAccessError, match=r"User:pp-collector \(role collector\) may not read topic pp.commands"):
        consumer(cfg.kafka_bootstrap, None, topics.COMMANDS.name, auth=client_auth(cfg, "collector"))


def test_tls_hostname_is_checked(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name the broker's certificate does not list, mapped to the same loopback broker (the machine has no
    DNS), is refused; the same client with the check off gets in, so the name alone made the difference."""
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kw: Any) -> Any:
        return real("127.0.0.1" if host == "broker.pp.invalid" else host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    port = cfg.kafka_bootstrap.rpartition(":")[2]
    auth = client_auth(cfg, "ops")
    line = _refusal(cfg, auth, f"broker.pp.invalid:{port}")
    assert "Hostname mismatch" in line and "broker.pp.invalid" in line, line
    consumer(f"broker.pp.invalid:{port}", None, topics.TELEMETRY.name,
             auth=replace(auth, check_hostname=False)).close()
    consumer(f"localhost:{port}", None, topics.TELEMETRY.name, auth=auth).close()  # a name it lists
