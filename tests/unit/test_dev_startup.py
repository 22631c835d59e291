"""`powerplane dev up` start-up failures are one readable line and exit 2, not a traceback (issue 12,
finding 9): Java missing while the Kafka jars are cached, and Kafka's KRaft controller port (port + 1)
taken. Neither needs Java: both are caught before it would start."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ops.cli import main


def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, port: int) -> None:
    monkeypatch.setenv("PP_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    monkeypatch.setenv("PP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PP_CACHE_DIR", str(tmp_path / "cache"))
    libs = tmp_path / "cache" / "kafka-4.1.1" / "libs"  # the jars as a previous run left them
    libs.mkdir(parents=True)
    (libs / ".complete").touch()


def _pair() -> tuple[socket.socket, int]:
    """A listening socket on some port p + 1 with p free: Kafka's controller port taken, its broker port not."""
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1] - 1
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        finally:
            probe.close()
        s.listen()
        return s, port
    raise AssertionError("no free port pair")


def test_java_missing_with_the_jars_cached_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _env(monkeypatch, tmp_path, port)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no java here
    assert main(["dev", "up", "--no-tsdb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("powerplane: error: java not found")
    assert "install Java 17 (e.g. apt-get install openjdk-17-jre-headless)" in err[0]


def test_kafka_controller_port_taken_names_the_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    taken, port = _pair()
    with taken:
        _env(monkeypatch, tmp_path, port)
        monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # checked before Java would be looked for
        assert main(["dev", "up", "--no-tsdb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"port {port + 1} on 127.0.0.1, Kafka's KRaft controller" in err[0]
    assert "PP_KAFKA_BOOTSTRAP" in err[0] and err[0].startswith("powerplane: error: ")
    assert not (tmp_path / "state" / "dev" / "kafka" / "kafka.pid").exists()  # nothing was started
