"""Runtime configuration and the `powerplane` CLI as a user meets them: output, exit codes, errors."""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path

import pytest

from ops.cli import main
from powerplane import kafka, topics
from powerplane.config import Config, ConfigError, load_config
from powerplane.site_file import load_site
from powerplane.validation import ConfigError as FileConfigError

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "examples" / "lab.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own PP_* settings must not leak into these tests."""
    import os

    for k in list(os.environ):
        if k.startswith("PP_"):
            monkeypatch.delenv(k)


# ---- configuration ---------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = load_config(env={})
    assert cfg == Config()
    assert cfg.cap_threshold == 0.80 and cfg.uncap_threshold == 0.75
    assert cfg.command_lease_s == 30.0
    assert cfg.kafka_bootstrap == "127.0.0.1:19092"


def test_env_overrides_default_and_file(tmp_path: Path) -> None:
    assert load_config(env={"PP_CAP_THRESHOLD": "0.85"}).cap_threshold == 0.85
    f = tmp_path / "pp.toml"
    f.write_text('cap_threshold = 0.9\nkafka_bootstrap = "10.0.0.1:9092"\n')
    cfg = load_config(f, env={})
    assert cfg.cap_threshold == 0.9 and cfg.kafka_bootstrap == "10.0.0.1:9092"
    assert load_config(f, env={"PP_CAP_THRESHOLD": "0.82"}).cap_threshold == 0.82
    # PP_CONFIG names the file when none is given.
    assert load_config(env={"PP_CONFIG": str(f)}).cap_threshold == 0.9


def test_bad_number_names_key_and_env_var() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(env={"PP_CAP_THRESHOLD": "eighty percent"})
    msg = str(ei.value)
    assert "cap_threshold" in msg and "PP_CAP_THRESHOLD" in msg and "eighty percent" in msg


@pytest.mark.parametrize("env", [
    {"PP_UNCAP_THRESHOLD": "0.80"},
    {"PP_UNCAP_THRESHOLD": "0.9"},
    {"PP_CAP_THRESHOLD": "0.7"},
    {"PP_UNCAP_THRESHOLD": "0"},
])
def test_uncap_must_be_below_cap(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="uncap_threshold"):
        load_config(env=env)


def test_non_positive_lease_rejected() -> None:
    with pytest.raises(ConfigError, match="command_lease_s"):
        load_config(env={"PP_COMMAND_LEASE_S": "0"})


def test_unknown_key_in_file_rejected(tmp_path: Path) -> None:
    f = tmp_path / "pp.toml"
    f.write_text("cap_treshold = 0.85\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f, env={})
    assert "cap_treshold" in str(ei.value) and str(f) in str(ei.value)


def test_every_mistake_of_file_and_environment_reported_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "pp.toml"
    f.write_text('cap_treshold = 0.85\nsample_interval_s = "fast"\ncap_threshold = 0.7\nuncap_threshold = 0.75\n'
                 "command_lease_s = true\n")
    env = {"PP_INFLUX_URL": "http://tsdb:8086", "PP_SIGNING_KEY_FILE": "k", "PP_STATE_DIR": "s",
           "PP_SAMPLE_INTERVAL_S": "often"}
    with pytest.raises(ConfigError) as ei:
        load_config(f, env=env)
    where = sorted(line.split(": ", 1)[0] for line in ei.value.errors)
    assert where == ["cap_treshold", "command_lease_s", "sample_interval_s (env PP_SAMPLE_INTERVAL_S)",
                     "uncap_threshold"], ei.value.errors
    msg = str(ei.value)
    assert msg.startswith(f"{f}: 4 error(s)\n")
    assert "'often'" in msg and "below cap_threshold" in msg
    assert "known: ack_key_file, ack_key_id, alertmanager_url" in msg
    # The CLI prints them all and exits 2 before doing anything.
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["--config", str(f), "topics", "list"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "Traceback" not in cap.err
    for line in ei.value.errors:
        assert line in cap.err


def test_explicit_env_mapping_ignores_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_CAP_THRESHOLD", "eighty percent")
    assert load_config(env={}).cap_threshold == 0.80
    assert load_config(env={"PP_CAP_THRESHOLD": "0.9"}).cap_threshold == 0.9
    with pytest.raises(ConfigError, match="PP_CAP_THRESHOLD"):
        load_config()


def test_unreadable_and_invalid_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})
    f = tmp_path / "bad.toml"
    f.write_text("cap_threshold = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f, env={})


# ---- CLI -----------------------------------------------------------------------------------------------


def test_site_validate_prints_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "validate", str(LAB)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out
    assert "8 racks" in out and "64 servers" in out and "512 GPUs" in out


def broken_site(tmp_path: Path) -> Path:
    text = LAB.read_text()
    text = text.replace("derating = 0.8", "derating = 1.5", 1)
    text = text.replace('pdu_a = "pdu-a03"', 'pdu_a = "pdu-zz"', 1)
    text = text.replace('id = "rack-04"\npdu_a = "pdu-a04"\npdu_b = "pdu-b04"\nserver_type = "hgx-h100"',
                        'id = "rack-04"\npdu_a = "pdu-a04"\npdu_b = "pdu-b04"\nserver_type = "hgx-b300"', 1)
    p = tmp_path / "broken.toml"
    p.write_text(text)
    return p


def test_site_validate_broken_file_lists_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = broken_site(tmp_path)
    with pytest.raises(FileConfigError) as ei:
        load_site(path)
    errors = ei.value.errors
    assert len(errors) == 3
    assert main(["site", "validate", str(path)]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "Traceback" not in cap.err
    assert str(path) in cap.err
    for e in errors:
        assert e in cap.err
    for where in ("derating", "halls[0].rows[0].racks[2].pdu_a", "halls[0].rows[0].racks[3].server_type"):
        assert re.search(rf"^\s+{re.escape(where)}: ", cap.err, re.M), where
    assert "pdu-zz" in cap.err and "hgx-b300" in cap.err


def test_missing_site_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "validate", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "nope.toml" in err and "cannot read" in err


def test_topics_list_declared_shows_every_topic_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "list", "--declared"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(topics.ALL)
    for t in topics.ALL:
        row = next(ln for ln in lines if ln.split()[0] == t.name)
        assert str(t.partitions) in row.split()
        assert t.configs()["cleanup.policy"] in row


def test_site_show_prints_limits_per_feed_state(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "show", str(LAB)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for col in ("rated", "derated", "A lost", "B lost"):
        assert col in lines[0]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    # kW: rated, derated, derated with feed A lost, derated with feed B lost.
    assert rows["ups-a"][1:] == ["ups", "500.0", "400.0", "0.0", "400.0"]
    assert rows["ups-b"][1:] == ["ups", "500.0", "400.0", "400.0", "0.0"]
    # With one feed lost each rack is limited by its one live PDU: 8 x 57.5 kW x 0.8.
    assert rows["row-1"][1:] == ["row", "528.0", "422.4", "368.0", "368.0"]
    assert "rack-01" not in rows  # racks only with --kinds


def test_site_show_kinds_filter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "show", str(LAB), "--kinds", "pdu"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 16 and all(r.split()[1] == "pdu" for r in rows)


def test_create_topics_honours_its_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(kafka.BrokerUnavailable, match="powerplane dev up"):
        kafka.create_topics("127.0.0.1:1", timeout_s=1.0)
    assert time.monotonic() - t0 < 10.0


def test_topics_create_without_broker_says_run_dev_up(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PP_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # a closed loopback port
    # The CLI looks create_topics up at call time; give it a short wait instead of the default 30 s.
    monkeypatch.setattr(kafka, "create_topics", functools.partial(kafka.create_topics, timeout_s=1.0))
    t0 = time.monotonic()
    assert main(["topics", "create"]) == 1  # a server unreachable: a failure, not a usage error
    assert time.monotonic() - t0 < 10.0
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("powerplane: error:")
    assert "127.0.0.1:1" in lines[0] and "powerplane dev up" in lines[0]
    assert "Traceback" not in cap.err
