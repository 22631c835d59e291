"""The dev broker's security, generated once into the dev state dir: a CA and a broker certificate (openssl),
a SCRAM password per user (files, mode 0600), and the broker properties that turn it all on. devservers
calls these; the topology (nodes, ports, quorum) stays there.

- Clients: one SASL_SSL listener, SCRAM-SHA-512, the broker certificate naming 127.0.0.1 and localhost.
- Controller listener: SSL with client certificates required (mTLS). KRaft cannot use SCRAM there (the
  credentials live in the metadata the controller serves), and PLAINTEXT would make its anonymous principal
  a super user that any local process could borrow to create ACLs.
- Authorizer: StandardAuthorizer, deny when no ACL matches; super users: the admin, the brokers' SCRAM user
  and the brokers' certificate. ACLs per role come from powerplane.access (powerplane.kafka.apply_acls).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from powerplane import access
from powerplane.kafka import dev_security_dir, password_path

BROKER_CN = "powerplane-broker"
BROKER_CERT_PRINCIPAL = f"User:CN={BROKER_CN}"
CLIENT_LISTENER = "CLIENT"
CONTROLLER_LISTENER = "CONTROLLER"
# The names every dev broker's certificate carries; a client dialling any other name is refused.
BROKER_SANS = ("IP:127.0.0.1", "DNS:localhost")


class SecurityError(RuntimeError):
    """The security material cannot be made or is inconsistent; the message says what to do."""


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise SecurityError("openssl not found on PATH: `dev up` makes the broker's TLS certificates with it; "
                            "install it (Debian: apt-get install openssl)")
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SecurityError(f"openssl {args[0]} failed: {(res.stdout + res.stderr).strip()[-300:]}")


def _private(path: Path, text: str) -> None:
    """Write a secret readable by its owner only (created 0600, never world-readable for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def ensure_certificates(d: Path) -> None:
    """A CA (ca.pem, ca.key) and the broker's key and certificate chain (broker.pem, a PEM keystore), made
    once: EC P-256, the broker certificate for BROKER_SANS, signed by the CA."""
    if (d / "broker.pem").exists() and (d / "ca.pem").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650",
             "-subj", "/CN=powerplane dev CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    (d / "broker.ext").write_text(f"subjectAltName={','.join(BROKER_SANS)}\n"
                                  "extendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n")
    _openssl("req", "-new", *ec, "-keyout", "broker.key", "-out", "broker.csr", "-subj", f"/CN={BROKER_CN}",
             cwd=d)
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial",
             str(secrets.randbits(63)), "-days", "825", "-extfile", "broker.ext", "-out", "broker.crt", cwd=d)
    # Kafka's PEM keystore: the PKCS#8 private key, then the certificate chain, in one file.
    _private(d / "broker.pem", (d / "broker.key").read_text() + (d / "broker.crt").read_text()
             + (d / "ca.pem").read_text())
    for tmp in ("broker.csr", "broker.ext", "broker.key"):
        (d / tmp).unlink()
    os.chmod(d / "ca.key", 0o600)


def ensure_passwords(d: Path) -> list[str]:
    """A random password file per SCRAM user (powerplane.access.USERS), kept if present; returns the users
    whose file was made now."""
    made = []
    for role in access.USERS:
        path = password_path(d, access.username(role))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path.parent, 0o700)
            _private(path, secrets.token_urlsafe(24) + "\n")
            made.append(access.username(role))
    return made


def _password(d: Path, role: str) -> str:
    return password_path(d, access.username(role)).read_text().strip()


def prepare(state_dir: str, formatted: bool) -> Path:
    """Certificates and passwords in place before the broker is formatted or started. A broker formatted
    without these credentials (data from before security was on, or a deleted password file) cannot know
    them: that is one line saying how to start afresh."""
    d = dev_security_dir(state_dir)
    ensure_certificates(d)
    made = ensure_passwords(d)
    if made and formatted:
        raise SecurityError(f"the dev Kafka data was formatted without the SCRAM user(s) {', '.join(made)} "
                            f"(made now in {d}): run `powerplane dev down --wipe`, then `powerplane dev up`")
    return d


def format_args(state_dir: str) -> list[str]:
    """`kafka-storage format` options that create every SCRAM user at format time (KRaft keeps them in its
    metadata; there is no ZooKeeper to add them to later)."""
    d = dev_security_dir(state_dir)
    out: list[str] = []
    for role in access.USERS:
        out += ["--add-scram", f"SCRAM-SHA-512=[name={access.username(role)},password={_password(d, role)}]"]
    return out


def listener_props(host: str, port: int, controller_port: int) -> list[str]:
    """The listener lines of one node: SASL_SSL for clients and replication, mTLS for the controller."""
    return [
        f"listeners={CLIENT_LISTENER}://{host}:{port},{CONTROLLER_LISTENER}://{host}:{controller_port}",
        f"advertised.listeners={CLIENT_LISTENER}://{host}:{port}",
        f"listener.security.protocol.map={CLIENT_LISTENER}:SASL_SSL,{CONTROLLER_LISTENER}:SSL",
        f"inter.broker.listener.name={CLIENT_LISTENER}",
    ]


def broker_props(state_dir: str) -> list[str]:
    """TLS, SCRAM and authorizer settings shared by every node. They hold the brokers' own password:
    devservers keeps server.properties at mode 0600."""
    d = dev_security_dir(state_dir)
    client = CLIENT_LISTENER.lower()
    supers = [f"User:{access.username(access.ADMIN)}", f"User:{access.username(access.BROKER)}",
              BROKER_CERT_PRINCIPAL]
    return [
        "ssl.keystore.type=PEM", f"ssl.keystore.location={d / 'broker.pem'}",
        "ssl.truststore.type=PEM", f"ssl.truststore.location={d / 'ca.pem'}",
        f"listener.name.{CONTROLLER_LISTENER.lower()}.ssl.client.auth=required",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        f"listener.name.{client}.scram-sha-512.sasl.jaas.config="
        f"org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{access.username(access.BROKER)}" password="{_password(d, access.BROKER)}";',
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users={';'.join(supers)}",
    ]
