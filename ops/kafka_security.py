"""The dev broker's security, generated once into the dev state dir: a CA and a broker certificate (openssl),
a SCRAM password per user (files, mode 0600), and the broker properties that turn it all on. devservers
calls these; the topology (nodes, ports, quorum) stays there.

- Clients: one SASL_SSL listener, SCRAM-SHA-512, the broker certificate naming 127.0.0.1 and localhost.
- Controller listener: SSL with client certificates required (mTLS). KRaft cannot use SCRAM there (the
  credentials live in the metadata the controller serves), and PLAINTEXT would make its anonymous principal
  a super user that any local process could borrow to create ACLs.
- Authorizer: StandardAuthorizer, deny when no ACL matches; super users: the admin, the brokers' SCRAM user
  and the brokers' certificate. ACLs per role come from powerplane.access (powerplane.kafka.apply_acls).

`powerplane security init` (write_bundles) makes the same material for the Docker Compose cluster
(compose/docker-compose.yml): one authority directory laid out as the dev one, and from it a bundle per consumer
(the brokers; each client service with only its own roles' passwords).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping
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
        raise SecurityError("openssl not found on PATH: the broker's TLS certificates are made with it; "
                            "install it (Debian: apt-get install openssl)")
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SecurityError(f"openssl {args[0]} failed: {(res.stdout + res.stderr).strip()[-300:]}")


def _private(path: Path, text: str) -> None:
    """Write a secret readable by its owner only (created 0600, never world-readable for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def _ensure_ca(d: Path, name: str) -> bool:
    """The CA (ca.pem, ca.key), made when ca.pem is missing: EC P-256, 10 years. True: made now."""
    if (d / "ca.pem").exists():
        return False
    _openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    os.chmod(d / "ca.key", 0o600)
    return True


def ensure_certificates(d: Path, sans: Iterable[str] = BROKER_SANS, ca_name: str = "powerplane dev CA") -> None:
    """A CA (ca.pem, ca.key) and the brokers' key and certificate chain (broker.pem, a PEM keystore): EC
    P-256, the broker certificate for `sans`, signed by the CA. Deleting broker.pem alone renews the broker
    certificate under the same CA (clients need no change); a new CA gets a new broker certificate too."""
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    if not _ensure_ca(d, ca_name) and (d / "broker.pem").exists():
        return
    if not (d / "ca.key").exists():
        raise SecurityError(f"{d / 'ca.key'} is missing, so no broker certificate can be signed: delete "
                            f"{d / 'ca.pem'} too for a new CA (clients must then trust the new ca.pem)")
    (d / "broker.ext").write_text(f"subjectAltName={','.join(sans)}\n"
                                  "extendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n")
    _openssl("req", "-new", *_EC, "-keyout", "broker.key", "-out", "broker.csr", "-subj", f"/CN={BROKER_CN}",
             cwd=d)
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial",
             str(secrets.randbits(63)), "-days", "825", "-extfile", "broker.ext", "-out", "broker.crt", cwd=d)
    # Kafka's PEM keystore: the PKCS#8 private key, then the certificate chain, in one file.
    _private(d / "broker.pem", (d / "broker.key").read_text() + (d / "broker.crt").read_text()
             + (d / "ca.pem").read_text())
    for tmp in ("broker.csr", "broker.ext", "broker.key"):  # broker.crt stays: `openssl x509 -enddate`
        (d / tmp).unlink()


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


def scram_users(d: Path) -> list[str]:
    """Every SCRAM user as `kafka-storage format --add-scram` takes it (KRaft keeps them in its metadata;
    there is no ZooKeeper to add them to later)."""
    return [f"SCRAM-SHA-512=[name={access.username(role)},password={_password(d, role)}]" for role in access.USERS]


def format_args(state_dir: str) -> list[str]:
    """`kafka-storage format` options that create every SCRAM user at format time."""
    return [arg for user in scram_users(dev_security_dir(state_dir)) for arg in ("--add-scram", user)]


def listener_props(host: str, port: int, controller_port: int) -> list[str]:
    """The listener lines of one node: SASL_SSL for clients and replication, mTLS for the controller."""
    return [
        f"listeners={CLIENT_LISTENER}://{host}:{port},{CONTROLLER_LISTENER}://{host}:{controller_port}",
        f"advertised.listeners={CLIENT_LISTENER}://{host}:{port}",
        f"listener.security.protocol.map={CLIENT_LISTENER}:SASL_SSL,{CONTROLLER_LISTENER}:SSL",
        f"inter.broker.listener.name={CLIENT_LISTENER}",
    ]


def super_users() -> list[str]:
    """The principals the authorizer lets do anything: the admin, the brokers' SCRAM user, their certificate."""
    return [f"User:{access.username(access.ADMIN)}", f"User:{access.username(access.BROKER)}",
            BROKER_CERT_PRINCIPAL]


def _scram_login(user: str, password: str) -> str:
    return (f"org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{user}" password="{password}";')


def broker_login(d: Path) -> str:
    """The brokers' own SCRAM login on the client listener (replication runs there): holds a password."""
    return (f"listener.name.{CLIENT_LISTENER.lower()}.scram-sha-512.sasl.jaas.config="
            + _scram_login(access.username(access.BROKER), _password(d, access.BROKER)))


def security_props(keystore: str, truststore: str) -> list[str]:
    """TLS, SCRAM and authorizer settings shared by every node, dev or compose; no secret in them."""
    return [
        "ssl.keystore.type=PEM", f"ssl.keystore.location={keystore}",
        "ssl.truststore.type=PEM", f"ssl.truststore.location={truststore}",
        f"listener.name.{CONTROLLER_LISTENER.lower()}.ssl.client.auth=required",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users={';'.join(super_users())}",
    ]


def broker_props(state_dir: str) -> list[str]:
    """The dev nodes' security settings and the brokers' own login. They hold the brokers' password:
    devservers keeps server.properties at mode 0600."""
    d = dev_security_dir(state_dir)
    return [*security_props(str(d / "broker.pem"), str(d / "ca.pem")), broker_login(d)]


# ---- bundles for a deployment (compose/docker-compose.yml) ---------------------------------------------------

AUTHORITY = "authority"  # the CA key and every password: only `security init` mounts it
BROKER_BUNDLE = "broker"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _copy_private(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(dst.parent, 0o700)
    _private(dst, src.read_text())


def _chown_tree(root: Path, owner: tuple[int, int] | None) -> None:
    if owner is None:
        return
    for path in [root, *root.rglob("*")]:
        os.chown(path, *owner)


def _san(host: str) -> str:
    """A subjectAltName entry: IP for an address (clients check it as one), DNS for a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"DNS:{host}"
    return f"IP:{host}"


def _check_clients(clients: Mapping[str, Iterable[str]]) -> None:
    allowed = (*access.ROLE_NAMES, access.ADMIN)  # never the brokers' own user
    for name, given in clients.items():
        roles = list(given)
        if (not roles or any(r not in allowed for r in roles) or name in (AUTHORITY, BROKER_BUNDLE)
                or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name)):
            raise ValueError(f"client bundle {name!r} with roles {', '.join(roles) or 'none'}: the roles must be "
                             f"among {', '.join(allowed)}; the name letters, digits, '-' and '_', not "
                             f"{AUTHORITY} or {BROKER_BUNDLE}")


def write_bundles(out: Path, broker_hosts: Iterable[str], clients: Mapping[str, Iterable[str]],
                  broker_mount: str, broker_owner: tuple[int, int] | None = None,
                  client_owner: tuple[int, int] | None = None) -> list[str]:
    """Make (once) the CA, the brokers' certificate for `broker_hosts` (and localhost; made again, by the same
    CA, when the hosts change) and a password per user in
    out/authority, then (each time, so a rotated password reaches its bundle) write:

    - out/broker: broker.pem, ca.pem, broker.properties (the brokers' SCRAM login), scram-users (one
      `--add-scram` value a line, for the first format) and client.properties (the brokers' own user, for
      the healthcheck and kafka-configs; paths as seen under `broker_mount`);
    - out/NAME for each client: ca.pem and users/pp-ROLE.password for its roles only, the layout that
      kafka_credentials_dir names.

    Returns the users whose password was made now."""
    _check_clients(clients)
    auth = out / AUTHORITY
    sans = ",".join([*(_san(h) for h in broker_hosts), "DNS:localhost"])
    if (auth / "broker.pem").exists() and _read(auth / "broker.sans") != sans:
        (auth / "broker.pem").unlink()  # the brokers moved: a new certificate naming them, same CA
    ensure_certificates(auth, sans.split(","), "powerplane CA")
    (auth / "broker.sans").write_text(sans + "\n")
    made = ensure_passwords(auth)
    broker = out / BROKER_BUNDLE
    _copy_private(auth / "broker.pem", broker / "broker.pem")
    _copy_private(auth / "ca.pem", broker / "ca.pem")
    _private(broker / "broker.properties", broker_login(auth) + "\n")
    _private(broker / "scram-users", "".join(u + "\n" for u in scram_users(auth)))
    _private(broker / "client.properties", "\n".join([
        "security.protocol=SASL_SSL", "sasl.mechanism=SCRAM-SHA-512",
        "sasl.jaas.config=" + _scram_login(access.username(access.BROKER), _password(auth, access.BROKER)),
        "ssl.truststore.type=PEM", f"ssl.truststore.location={broker_mount}/ca.pem", ""]))
    _chown_tree(broker, broker_owner)
    for name, roles in clients.items():
        bundle = out / name
        _copy_private(auth / "ca.pem", bundle / "ca.pem")
        users = bundle / "users"
        if users.exists():  # a role taken from this client since the last run loses its password here
            for old in users.glob("*.password"):
                old.unlink()
        for role in roles:
            user = access.username(role)
            _copy_private(password_path(auth, user), password_path(bundle, user))
        _chown_tree(bundle, client_owner)
    return made
