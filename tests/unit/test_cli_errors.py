"""Every CLI mistake a user met in issue 15: one line on stderr, nothing on stdout, the documented exit code
(2: a wrong option, setting or file; 1: the command could not work, e.g. no broker)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.cli import build_parser, main
from powerplane import topics
from powerplane.config import ConfigError, ignored_env, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("PP_"):
            monkeypatch.delenv(k)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, not listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    cap = capsys.readouterr()
    err = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert cap.out == "", cap.out
    assert len(err) == 1, cap.err
    assert "Traceback" not in cap.err
    return err[0]


def test_version_comes_from_the_installed_package(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0
    assert capsys.readouterr().out.strip() == f"powerplane {version('powerplane')}"


def test_help_documents_the_exit_codes() -> None:
    text = build_parser().format_help()
    assert "exit codes:" in text
    for code in ("0  ok", "1  failure", "2  usage or configuration error"):
        assert code in text


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["status", "--output", "yaml"])
    assert ei.value.code == 2
    assert "invalid choice: 'yaml'" in capsys.readouterr().err


def test_wrong_site_file_setting_names_the_variable_and_path(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PP_SITE_FILE", "/nope/site.toml")
    assert main(["status"]) == 2  # before any broker is asked
    line = one_line(capsys)
    assert line.startswith("powerplane: error: PP_SITE_FILE=/nope/site.toml: no such site file")
    assert main(["dashboard", "--port", "0"]) == 2
    assert "PP_SITE_FILE=/nope/site.toml" in one_line(capsys)


def test_streams_worker_without_a_broker_is_one_line_saying_how_to_start_one(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], closed_port: int) -> None:
    monkeypatch.setenv("PP_KAFKA_BOOTSTRAP", f"127.0.0.1:{closed_port}")
    t0 = time.monotonic()
    assert main(["streams", "worker", "--connect-timeout", "1"]) == 1
    assert time.monotonic() - t0 < 15
    line = one_line(capsys)
    assert f"no Kafka broker answers at 127.0.0.1:{closed_port} (streams worker)" in line
    assert "powerplane dev up" in line


@pytest.mark.parametrize("argv", [["streams", "worker"], ["controller"], ["sink"]])
def test_busy_metrics_port_names_the_port(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main([*argv, "--metrics-port", str(port)]) == 2
    line = one_line(capsys)
    assert line.startswith(f"powerplane: error: --metrics-port {port}: cannot listen on 127.0.0.1:{port}")
    assert "in use" in line


def test_dashboard_replay_of_a_missing_recording(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["dashboard", "--replay", str(tmp_path / "nope")]) == 2
    line = one_line(capsys)
    assert f"--replay {tmp_path / 'nope'}: no such recording" in line
    assert "port" not in line


def test_topics_list_asks_the_broker_and_fails_without_one(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], closed_port: int) -> None:
    monkeypatch.setenv("PP_KAFKA_BOOTSTRAP", f"127.0.0.1:{closed_port}")
    assert main(["topics", "list", "--timeout", "1"]) == 1
    assert f"no Kafka broker answers at 127.0.0.1:{closed_port}" in one_line(capsys)
    # Offline, the declared topics, as JSON for scripts.
    assert main(["topics", "list", "--declared", "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["topic"] for r in rows] == [t.name for t in topics.ALL]
    assert rows[0]["retention_ms"] == topics.TELEMETRY.retention_ms


def test_status_without_a_broker_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         closed_port: int) -> None:
    monkeypatch.setenv("PP_KAFKA_BOOTSTRAP", f"127.0.0.1:{closed_port}")
    assert main(["status", "-o", "json"]) == 1
    assert "no Kafka broker answers" in one_line(capsys)


def test_status_level_not_in_the_site_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--level", "pdu-zz"]) == 2
    assert "--level pdu-zz: no such level in site" in one_line(capsys)


def test_misspelt_setting_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="PP_SITE_FIEL"):
        load_config(env={"PP_SITE_FIEL": "refsite.toml"})
    monkeypatch.setenv("PP_SITE_FIEL", "refsite.toml")
    assert main(["site", "validate"]) == 2
    line = one_line(capsys)
    assert "PP_SITE_FIEL (env): not a setting; did you mean PP_SITE_FILE?" in line


def test_invalid_setting_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PP_COMMAND_LEASE_S", "-3")
    assert main(["site", "validate"]) == 2
    line = one_line(capsys)
    assert "command_lease_s (env PP_COMMAND_LEASE_S)" in line


def test_other_unknown_variables_are_named_not_ignored(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # A credential named by an actuators file is not a setting, but it is said so, once, on stderr.
    assert ignored_env({"PP_CONFIG": "x", "PP_TRACE": "t"}) == []
    monkeypatch.setenv("PP_REDFISH_PASSWORD", "secret")
    assert main(["site", "validate", str(ROOT / "examples" / "lab.toml")]) == 0
    cap = capsys.readouterr()
    assert "ok" in cap.out
    assert "PP_REDFISH_PASSWORD is not a powerplane setting" in cap.err and "secret" not in cap.err
