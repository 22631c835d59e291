"""`powerplane security init`: the Kafka CA, the brokers' certificate and the SCRAM passwords of a deployment
(the compose `kafka-secrets` service runs it), and a bundle per reader holding only what that reader needs.
Real openssl, no broker."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from ops import kafka_security
from ops.cli import main
from powerplane import access
from powerplane.kafka import password_path

HOSTS = "kafka-1,kafka-2,10.0.0.3"


def _init(out: Path, *extra: str, hosts: str = HOSTS) -> int:
    return main(["security", "init", "--out", str(out), "--broker-hosts", hosts, "--client", "sink=sink",
                 "--client", "fleet=collector,actuator", *extra])


def _openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], check=True, capture_output=True, text=True).stdout


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_each_bundle_holds_only_what_its_reader_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "secrets"
    assert _init(out) == 0
    auth, broker = out / kafka_security.AUTHORITY, out / kafka_security.BROKER_BUNDLE
    assert sorted(p.name for p in (auth / "users").iterdir()) == sorted(
        f"{access.username(u)}.password" for u in access.USERS)
    assert sorted(p.name for p in (out / "sink" / "users").iterdir()) == ["pp-sink.password"]
    assert sorted(p.name for p in (out / "fleet" / "users").iterdir()) == ["pp-actuator.password",
                                                                         "pp-collector.password"]
    for user in ("pp-sink", "pp-collector"):
        bundle = "sink" if user == "pp-sink" else "fleet"
        assert password_path(out / bundle, user).read_text() == password_path(auth, user).read_text()
    assert (out / "sink" / "ca.pem").read_text() == (auth / "ca.pem").read_text()
    assert not (out / "sink" / "ca.key").exists() and not (broker / "ca.key").exists()
    for secret in [auth / "ca.key", *broker.iterdir(), *(out / "fleet" / "users").iterdir()]:
        assert _mode(secret) == 0o600, secret
    assert _mode(broker) == _mode(auth) == _mode(out / "sink") == 0o700

    # The brokers' keystore: signed by the CA, naming every host (an address as an IP entry).
    cert = _openssl("x509", "-in", str(broker / "broker.pem"))
    (tmp_path / "cert.pem").write_text(cert)
    assert "OK" in _openssl("verify", "-CAfile", str(broker / "ca.pem"), str(tmp_path / "cert.pem"))
    sans = _openssl("x509", "-in", str(tmp_path / "cert.pem"), "-noout", "-ext", "subjectAltName")
    assert all(n in sans for n in ("DNS:kafka-1", "DNS:kafka-2", "IP Address:10.0.0.3", "DNS:localhost")), sans

    # The brokers' own login, and the client settings their healthcheck uses (paths as the brokers see them).
    assert (broker / "broker.properties").read_text().strip() == kafka_security.broker_login(auth)
    client = (broker / "client.properties").read_text()
    assert 'username="pp-broker"' in client and "ssl.truststore.location=/etc/kafka/secrets/ca.pem" in client
    users = (broker / "scram-users").read_text().splitlines()
    assert users == kafka_security.scram_users(auth) and len(users) == len(access.USERS)
    assert "new passwords for pp-collector" in capsys.readouterr().out


def test_a_rerun_keeps_the_ca_and_passwords_and_renews_the_certificate_when_hosts_change(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "secrets"
    auth = out / kafka_security.AUTHORITY
    assert _init(out) == 0
    ca, password = (auth / "ca.pem").read_text(), password_path(auth, "pp-sink").read_text()
    cert = (auth / "broker.pem").read_text()
    assert _init(out) == 0
    assert "passwords kept" in capsys.readouterr().out
    assert (auth / "ca.pem").read_text() == ca and password_path(auth, "pp-sink").read_text() == password
    assert (auth / "broker.pem").read_text() == cert

    assert _init(out, hosts="kafka-1,kafka-2,kafka-3,kafka-4") == 0  # a fourth node: a new certificate
    assert (auth / "ca.pem").read_text() == ca
    sans = _openssl("x509", "-in", str(auth / "broker.crt"), "-noout", "-ext", "subjectAltName")
    assert "DNS:kafka-4" in sans
    assert "OK" in _openssl("verify", "-CAfile", str(auth / "ca.pem"), str(auth / "broker.crt"))
    assert (out / "broker" / "broker.pem").read_text() == (auth / "broker.pem").read_text()


def test_deleting_the_broker_keystore_renews_it_under_the_same_ca(tmp_path: Path) -> None:
    """What docs/runbooks.md promises for renewing the broker certificate: clients keep their ca.pem."""
    d = tmp_path / "kafka-security"
    kafka_security.ensure_certificates(d)
    ca, cert = (d / "ca.pem").read_text(), (d / "broker.crt").read_text()
    (d / "broker.pem").unlink()
    kafka_security.ensure_certificates(d)
    assert (d / "ca.pem").read_text() == ca and (d / "broker.crt").read_text() != cert
    assert "OK" in _openssl("verify", "-CAfile", str(d / "ca.pem"), str(d / "broker.crt"))


def test_a_bundle_for_an_unknown_role_or_the_brokers_is_refused(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    for spec in ("sink=root", "sink=broker", "sink", "authority=admin"):
        assert main(["security", "init", "--out", str(tmp_path), "--broker-hosts", "k1", "--client", spec]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("powerplane: error:") and len(err.splitlines()) == 1, err
    assert not (tmp_path / kafka_security.AUTHORITY).exists(), "nothing is made when a bundle is refused"


def test_bundles_are_given_to_their_readers_uid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """kafka-secrets runs as root and hands the brokers' bundle to the Kafka image's user, the clients' to
    the powerplane image's; without root that is one line, exit 1."""
    rc = _init(tmp_path, "--broker-owner", "1000:1000", "--client-owner", "10001:10001")
    if os.geteuid() != 0:
        assert rc == 1 and "needs root" in capsys.readouterr().err
        return
    assert rc == 0
    assert {(p.stat().st_uid, p.stat().st_gid) for p in [tmp_path / "broker", *(tmp_path / "broker").rglob("*")]} \
        == {(1000, 1000)}
    assert {p.stat().st_uid for p in [tmp_path / "fleet", *(tmp_path / "fleet").rglob("*")]} == {10001}
    assert (tmp_path / kafka_security.AUTHORITY).stat().st_uid == 0
