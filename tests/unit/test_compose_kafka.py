"""The compose Kafka cluster (compose/docker-compose.yml): three nodes, replicated and secured as the development
cluster is (ops/devservers.py, ops/kafka_security.py), and each powerplane service holding only its own role's
credential. There is no Docker here: these tests parse the compose file, run `powerplane security init` as the
kafka-secrets service does and run compose/kafka/start.sh against stand-ins for Kafka's two commands."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops import devservers, kafka_security
from ops.cli import build_parser, kafka_role, main
from powerplane import access, topics
from powerplane.config import Config
from powerplane.kafka import password_path
from tests.unit.test_compose import COMPOSE_DIR, COMPOSE_FILE, command_words, env_of, kafka_nodes, mounts

START_SCRIPT = COMPOSE_DIR / "kafka" / "start.sh"
# Roles a command uses besides the one the CLI gives it (ops.cli.ROLES): the fleet's twin actuator acks
# commands as the actuator (actuators/service.py).
EXTRA_ROLES = {"fleet": {"actuator"}}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    return data["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def nodes(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return kafka_nodes(services)


def kafka_props(env: dict[str, str]) -> dict[str, str]:
    """server.properties from KAFKA_* variables, named as compose/kafka/start.sh (and the apache/kafka image)
    names them; test_start_script_renders_the_compose_settings checks the script agrees."""
    out = {}
    for var, value in env.items():
        if not var.startswith("KAFKA_") or re.fullmatch(r"KAFKA_.*_OPTS|KAFKA_DEBUG", var):
            continue
        key = var[len("KAFKA_"):].replace("___", "-").replace("__", "@").replace("_", ".").replace("@", "_")
        out[key.lower()] = value
    return out


def props_lines(lines: list[str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in lines if line)


def secrets_job(services: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The one-shot service that runs `powerplane security init`."""
    (found,) = [(n, s) for n, s in services.items() if command_words(s)[:2] == ["security", "init"]]
    return found


def option(words: list[str], flag: str) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words) if w == flag]


def test_three_kafka_nodes_form_one_quorum(nodes: dict[str, dict[str, Any]]) -> None:
    assert len(nodes) == 3, f"Kafka nodes: {sorted(nodes)}"
    props = {name: kafka_props(env_of(svc)) for name, svc in nodes.items()}
    assert {p["node.id"] for p in props.values()} == {"1", "2", "3"}
    assert len({env_of(svc)["CLUSTER_ID"] for svc in nodes.values()}) == 1, "the nodes name different clusters"
    voters = {f"{p['node.id']}@{nodes[n].get('hostname', n)}:9093" for n, p in props.items()}
    for name, p in props.items():
        assert p["process.roles"] == "broker,controller"
        quorum = p["controller.quorum.voters"]
        assert set(quorum.split(",")) == voters, f"{name}: quorum {quorum}"
        assert p["advertised.listeners"] == f"CLIENT://{nodes[name].get('hostname', name)}:9092"


def test_brokers_replicate_as_the_dev_cluster_of_three(nodes: dict[str, dict[str, Any]]) -> None:
    """Three copies and two in sync for every topic, internal ones too; no unclean election; topics only from
    `topics create`; failure detection as tuned for the 10 s failover."""
    assert topics.replication(3) == (3, 2)
    for name, svc in nodes.items():
        p = kafka_props(env_of(svc))
        missing = [line for line in devservers.replication_props(3) if props_lines([line]).items() - p.items()]
        assert not missing, f"{name}: differs from the dev cluster of three in {missing}"
        assert p["default.replication.factor"] == "3" and p["min.insync.replicas"] == "2"
        assert p["unclean.leader.election.enable"] == "false"
        assert p["auto.create.topics.enable"] == "false"


def test_every_listener_is_tls_and_clients_must_authenticate(nodes: dict[str, dict[str, Any]]) -> None:
    """Same listeners, TLS, SCRAM and authorizer settings as the secured dev cluster; clients and replication
    on SASL_SSL, the controller on mutual TLS, nothing allowed without an ACL."""
    for name, svc in nodes.items():
        p = kafka_props(env_of(svc))
        host = svc.get("hostname", name)
        dev = props_lines(devservers.listener_props(devservers.KafkaNode(int(p["node.id"]), host, 9092), True))
        protocols = dict(x.split(":") for x in p["listener.security.protocol.map"].split(","))
        for listener in p["listeners"].split(","):
            assert protocols[listener.split("://")[0]] in ("SASL_SSL", "SSL"), f"{name}: {listener} is not TLS"
        for listener in p["advertised.listeners"].split(","):
            assert protocols[listener.split("://")[0]] == "SASL_SSL", f"{name}: clients reach {listener}"
        assert protocols[p["inter.broker.listener.name"]] == "SASL_SSL"
        assert p["listeners"] == dev["listeners"].replace(f"//{host}:", "//:"), f"{name}: {p['listeners']}"
        for key in ("advertised.listeners", "listener.security.protocol.map", "inter.broker.listener.name",
                    "controller.listener.names"):
            assert p[key] == dev[key], f"{name}: {key}={p[key]}, the dev cluster's is {dev[key]}"
        secrets_dir = os.path.dirname(p["ssl.keystore.location"])
        want = props_lines(kafka_security.security_props(p["ssl.keystore.location"], f"{secrets_dir}/ca.pem"))
        assert want.items() <= p.items(), f"{name}: unlike the dev cluster's: {want.items() - p.items()}"
        assert p["sasl.enabled.mechanisms"] == Config().kafka_sasl_mechanism


def test_each_node_keeps_its_log_in_its_own_volume_and_checks_its_health_authenticated(
        services: dict[str, dict[str, Any]], nodes: dict[str, dict[str, Any]]) -> None:
    data = []
    for name, svc in nodes.items():
        p = kafka_props(env_of(svc))
        (volume,) = [s for s, t, ro in mounts(svc) if t == p["log.dirs"] and not ro]
        data.append(volume)
        test = [str(w) for w in svc["healthcheck"]["test"]]
        (config,) = option(test, "--command-config")
        assert os.path.dirname(config) == os.path.dirname(p["ssl.keystore.location"]), \
            f"{name}: the healthcheck's client settings are not in the brokers' secrets"
        assert "bootstrap-server" in " ".join(test)
    assert len(set(data)) == 3, f"the nodes share a data volume: {data}"
    assert all(sum(v == s for svc in services.values() for s, _, _ in mounts(svc)) == 1 for v in data)


def test_brokers_get_the_bundle_kafka_secrets_makes_for_them(services: dict[str, dict[str, Any]],
                                                             nodes: dict[str, dict[str, Any]]) -> None:
    job_name, job = secrets_job(services)
    words = command_words(job)
    (out,) = option(words, "--out")
    written = {t: s for s, t, ro in mounts(job) if not ro}
    broker_volume = written[f"{out}/{kafka_security.BROKER_BUNDLE}"]
    (hosts,) = option(words, "--broker-hosts")
    assert sorted(hosts.split(",")) == sorted(svc.get("hostname", n) for n, svc in nodes.items()), \
        "the brokers' certificate would not name every node"
    (mount,) = option(words, "--broker-mount") or ["/etc/kafka/secrets"]
    for name, svc in nodes.items():
        assert (broker_volume, mount, True) in mounts(svc), f"{name}: the brokers' bundle is not at {mount} (ro)"
        assert svc["depends_on"][job_name]["condition"] == "service_completed_successfully"
        assert svc.get("user") == option(words, "--broker-owner")[0], f"{name} runs as another uid than owns its keys"
    assert written[f"{out}/{kafka_security.AUTHORITY}"] not in {s for n, svc in services.items() if n != job_name
                                                               for s, _, _ in mounts(svc)}, "the CA key leaks"


def test_each_powerplane_service_holds_only_its_roles_credentials(services: dict[str, dict[str, Any]]) -> None:
    """A compromised sink cannot write commands: its container has the sink's password and no other."""
    job_name, job = secrets_job(services)
    words = command_words(job)
    (out,) = option(words, "--out")
    bundles = {name: set(roles.split(",")) for name, _, roles in (c.partition("=") for c in option(words, "--client"))}
    volume_of = {s: t.removeprefix(f"{out}/") for s, t, ro in mounts(job) if not ro}
    parser = build_parser()
    for name, svc in services.items():
        if name == job_name or "PP_KAFKA_CREDENTIALS_DIR" not in env_of(svc):
            continue
        creds = env_of(svc)["PP_KAFKA_CREDENTIALS_DIR"]
        (volume,) = [(s, ro) for s, t, ro in mounts(svc) if t == creds]
        assert volume[1], f"{name}: its credentials are mounted writable"
        bundle = volume_of[volume[0]]
        role = kafka_role(parser.parse_args(command_words(svc)))
        assert bundles[bundle] == {role} | EXTRA_ROLES.get(name, set()), \
            f"{name} runs as {role} but is given the credentials of {sorted(bundles[bundle])}"
        assert env_of(svc)["PP_KAFKA_CA_FILE"] == f"{creds}/ca.pem"
        assert env_of(svc)["PP_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert [b for b, roles in bundles.items() if access.ADMIN in roles] == ["topics"]


def test_kafka_credentials_are_never_in_the_compose_file(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE_FILE.read_text()
    for needle in ("password=", "ScramLoginModule", "--add-scram", "BEGIN "):
        assert needle not in text, f"docker-compose.yml holds a credential ({needle!r})"
    for name, svc in services.items():
        inline = [k for k in env_of(svc) if re.search(r"KAFKA.*(PASSWORD|JAAS)", k)]
        assert not inline, f"{name}: Kafka credentials in the environment: {inline}"


def test_services_that_use_kafka_wait_for_all_three_brokers(services: dict[str, dict[str, Any]],
                                                           nodes: dict[str, dict[str, Any]]) -> None:
    job_name, _ = secrets_job(services)
    for name, svc in services.items():
        if name == job_name or "PP_KAFKA_BOOTSTRAP" not in env_of(svc):
            continue
        deps = svc.get("depends_on") or {}
        for node in nodes:
            assert (deps.get(node) or {}).get("condition") == "service_healthy", f"{name} does not wait for {node}"


def _stand_in(path: Path, record: Path) -> None:
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    path.chmod(0o755)


def test_start_script_renders_the_compose_settings(services: dict[str, dict[str, Any]],
                                                   nodes: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """Run kafka-secrets' command into a folder, then compose/kafka/start.sh for kafka-2 against stand-ins for
    kafka-storage.sh and kafka-server-start.sh: the properties Kafka would read, the users it would format
    with, and that it would start on them."""
    _, job = secrets_job(services)
    words = command_words(job)
    words = [w for i, w in enumerate(words) if not (w.endswith("-owner") or words[i - 1].endswith("-owner"))]
    words[words.index("--out") + 1] = str(tmp_path / "secrets")
    assert main(words) == 0
    bundle = tmp_path / "secrets" / kafka_security.BROKER_BUNDLE
    dist = tmp_path / "dist"
    (dist / "bin").mkdir(parents=True)
    _stand_in(dist / "bin" / "kafka-storage.sh", tmp_path / "format.args")
    _stand_in(dist / "bin" / "kafka-server-start.sh", tmp_path / "start.args")
    env = {**env_of(nodes["kafka-2"]), "PATH": os.environ["PATH"], "DIST": str(dist),
           "SECRETS_DIR": str(bundle), "PROPS": str(tmp_path / "server.properties")}
    res = subprocess.run(["bash", str(START_SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    rendered = props_lines((tmp_path / "server.properties").read_text().splitlines())
    login = props_lines([kafka_security.broker_login(tmp_path / "secrets" / kafka_security.AUTHORITY)])
    assert rendered == kafka_props(env_of(nodes["kafka-2"])) | login
    assert stat.S_IMODE((tmp_path / "server.properties").stat().st_mode) == 0o600
    fmt = (tmp_path / "format.args").read_text().splitlines()
    assert fmt[:6] == ["format", "--ignore-formatted", "--cluster-id", env["CLUSTER_ID"], "--config", env["PROPS"]]
    scram = [fmt[i + 1] for i, w in enumerate(fmt) if w == "--add-scram"]
    assert scram == kafka_security.scram_users(tmp_path / "secrets" / kafka_security.AUTHORITY)
    assert [s.split("name=")[1].split(",")[0] for s in scram] == [access.username(u) for u in access.USERS]
    assert (tmp_path / "start.args").read_text().splitlines() == [env["PROPS"]]
    assert password_path(tmp_path / "secrets" / "fleet", "pp-actuator").is_file()
