"""The role -> ACL table (powerplane/access.py) and the client credentials, without a broker: what a role may
write, how the table becomes ACLs, and the one-line errors when a credential is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.admin import ACLOperation, ACLResourcePatternType, ResourceType

from powerplane import access, topics
from powerplane.config import Config
from powerplane.kafka import ClientAuth, KafkaAccessError, client_auth, role_acls

ROOT = Path(__file__).resolve().parents[2]
DECLARED = {t.name for t in topics.ALL}


def test_only_the_controller_writes_commands_and_only_actuators_write_acks() -> None:
    writers = {name: {r for r, g in access.ROLES.items() if name in g.write} for name in DECLARED}
    assert writers[topics.COMMANDS.name] == {"controller"}
    assert writers[topics.ACKS.name] == {"actuator"}
    assert writers[topics.TELEMETRY.name] == {"collector"}
    assert writers[topics.AGGREGATES.name] == writers[topics.HEADROOM.name] == {"streams"}
    assert not access.ROLES["ops"].write


def test_only_the_scheduler_writes_job_notices_and_it_writes_nothing_else() -> None:
    assert {r for r, g in access.ROLES.items() if topics.JOBS.name in g.write} == {"scheduler"}
    assert access.ROLES["scheduler"].write == (topics.JOBS.name,) and not access.ROLES["scheduler"].read
    assert {r for r, g in access.ROLES.items() if topics.JOBS.name in g.read} == {"controller", "shadow"}


def test_every_grant_names_a_declared_topic_or_a_prefix_of_one() -> None:
    for role, g in access.ROLES.items():
        for name in (*g.read, *g.write):
            ok = name in DECLARED or (name.endswith("*") and any(t.startswith(name[:-1]) for t in DECLARED))
            assert ok, f"{role}: {name} is no declared topic"
    assert all(any(t in g.write for g in access.ROLES.values()) or t.startswith(topics.STREAMS_APP_ID)
               for t in DECLARED), "a declared topic nobody may write"


def test_a_trailing_star_is_a_prefix_and_groups_are_read_or_described() -> None:
    acls = role_acls("streams", access.ROLES["streams"])
    internal = [a for a in acls if a.resource_pattern.resource_name == topics.STREAMS_APP_ID]
    assert {a.resource_pattern.pattern_type for a in internal} == {ACLResourcePatternType.PREFIXED}
    assert {a.principal for a in acls} == {"User:pp-streams"}
    ops = role_acls("ops", access.ROLES["ops"])
    groups = [a for a in ops if a.resource_pattern.resource_type == ResourceType.GROUP]
    assert [(a.operation, a.resource_pattern.resource_name) for a in groups] == [(ACLOperation.DESCRIBE, "*")]


def test_the_safety_doc_lists_every_role_user() -> None:
    text = (ROOT / "docs" / "safety.md").read_text()
    for role in (*access.ROLE_NAMES, access.ADMIN):
        assert f"`{access.username(role)}`" in text, role


def test_security_is_on_by_default_and_plaintext_sends_no_credentials() -> None:
    cfg = Config()
    assert cfg.kafka_security_protocol == "SASL_SSL" and cfg.kafka_check_hostname
    assert ClientAuth().kafka_python() == {"security_protocol": "PLAINTEXT"}
    auth = ClientAuth("SASL_SSL", "streams", "pp-streams", "pw", ca_file="/ca.pem")
    assert "pw" not in repr(auth)
    assert auth.kafka_python()["ssl_check_hostname"] is True


def test_a_missing_credential_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(KafkaAccessError, match=r"CA file .* not found \(kafka_ca_file, PP_KAFKA_CA_FILE\)"):
        client_auth(Config(state_dir=str(tmp_path)), "ops").kafka_python()
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(KafkaAccessError, match=r"password file .*pp-sink.password of pp-sink \(role sink\)"):
        client_auth(Config(state_dir=str(tmp_path), kafka_ca_file=str(ca)), "sink").kafka_python()
    auth = client_auth(Config(state_dir=str(tmp_path), kafka_ca_file=str(ca), kafka_password="s3"), "sink")
    assert (auth.username, auth.password) == ("pp-sink", "s3")
