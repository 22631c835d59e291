"""`powerplane dev up --brokers 3` without Java: where the three nodes listen, what each is configured with,
and the one-line refusals (a port taken, a bootstrap naming another address, a one-node state reused for
three). The cluster itself runs in tests/reliability/test_three_brokers.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ops import devservers
from ops.cli import main
from powerplane import topics
from powerplane.config import load_config


def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bootstrap: str) -> None:
    monkeypatch.setenv("PP_KAFKA_BOOTSTRAP", bootstrap)
    monkeypatch.setenv("PP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # every refusal comes before Java is looked for


def _last_port_taken(count: int) -> tuple[socket.socket, int]:
    """A listening socket on P + count - 1 with P .. P + count - 2 free."""
    for _ in range(100):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1] - (count - 1)
        free = []
        for q in range(port, port + count - 1):
            probe = socket.socket()
            try:
                probe.bind(("127.0.0.1", q))
                free.append(True)
            except OSError:
                free.append(False)
            finally:
                probe.close()
        if port > 1024 and all(free):
            s.listen()
            return s, port
        s.close()
    raise AssertionError("no free run of ports")


def test_three_nodes_listen_on_the_ports_after_the_bootstrap_port(tmp_path: Path) -> None:
    cfg = load_config(env={"PP_KAFKA_BOOTSTRAP": "127.0.0.1:29092", "PP_STATE_DIR": str(tmp_path)})
    nodes = devservers.kafka_nodes(cfg, 3)
    assert [(n.node_id, n.port, n.controller_port) for n in nodes] == [(1, 29092, 29093), (2, 29094, 29095),
                                                                       (3, 29096, 29097)]
    assert devservers.cluster_bootstrap(cfg, 3) == "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096"
    props = dict(line.split("=", 1) for line in devservers._kafka_props(nodes[1], nodes, devservers.paths(cfg))
                 .splitlines() if line)
    assert props["node.id"] == "2" and props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29094,CONTROLLER://127.0.0.1:29095"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:29093,127.0.0.1:29095,127.0.0.1:29097"
    assert props["log.dirs"] == str(tmp_path.resolve() / "dev" / "kafka-2" / "data")
    # Internal topics (group offsets, transactions) are as replicated as the product's.
    assert props["offsets.topic.replication.factor"] == "3" and props["transaction.state.log.min.isr"] == "2"
    assert props["min.insync.replicas"] == "2" and props["unclean.leader.election.enable"] == "false"
    # One node stays as it was: the single broker at the bootstrap port, its controller on the next.
    one = devservers.kafka_nodes(cfg, 1)
    assert "offsets.topic.replication.factor=1" in devservers._kafka_props(one[0], one, devservers.paths(cfg))


def test_topics_get_three_replicas_and_two_in_sync_on_three_brokers() -> None:
    assert [topics.replication(n) for n in (1, 2, 3, 5)] == [(1, 1), (2, 1), (3, 2), (3, 2)]
    assert topics.COMMANDS.configs(3)["min.insync.replicas"] == "2"
    assert topics.COMMANDS.configs(1)["min.insync.replicas"] == "1"
    assert topics.COMMANDS.configs(3)["unclean.leader.election.enable"] == "false"


def test_a_taken_port_of_node_3_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    taken, port = _last_port_taken(6)
    with taken:
        _env(monkeypatch, tmp_path, f"127.0.0.1:{port}")
        assert main(["dev", "up", "--brokers", "3", "--no-tsdb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"port {port + 5} on 127.0.0.1, Kafka node 3's KRaft controller" in err[0]
    assert "(P .. P + 5)" in err[0]
    assert not list((tmp_path / "state").rglob("kafka.pid"))  # nothing was started


def test_a_bootstrap_naming_another_address_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, tmp_path, "127.0.0.1:29092,127.0.0.1:29093")
    assert main(["dev", "up", "--brokers", "3", "--no-tsdb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lists 127.0.0.1:29093, which is not a node" in err[0], err


def test_a_one_node_state_is_not_reused_for_three(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, tmp_path, "127.0.0.1:29092")
    meta = tmp_path / "state" / "dev" / "kafka" / "data" / "meta.properties"
    meta.parent.mkdir(parents=True)
    meta.write_text("node.id=1\n")  # what `dev up` left behind on one node
    assert main(["dev", "up", "--brokers", "3", "--no-tsdb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made with 1 node(s), not 3" in err[0] and "dev down --wipe" in err[0], err
