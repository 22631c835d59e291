"""Kafka client security: who a client is (its role's SCRAM user) and how it checks the broker (TLS against
the project's CA, hostname checked). Every kafka-python client and the faust app take their settings from
`ClientAuth`; failures become one line naming the principal (`explain`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kafka import errors as kerr

from powerplane import access

if TYPE_CHECKING:
    from powerplane.config import Config


class BrokerUnavailable(RuntimeError):
    pass


class KafkaAccessError(BrokerUnavailable):
    """The broker answered but refused: bad credentials, an untrusted or misnamed certificate, an ACL."""


def dev_security_dir(state_dir: str) -> Path:
    """Where `dev up` keeps the CA, the broker's keystore and the password files (docs/runbooks.md)."""
    return Path(state_dir).resolve() / "dev" / "kafka-security"


def password_path(security_dir: Path, user: str) -> Path:
    return security_dir / "users" / f"{user}.password"


@dataclass(frozen=True)
class ClientAuth:
    """The security settings of one client: protocol, CA, hostname check, SASL user and password."""

    protocol: str = "PLAINTEXT"  # SASL_SSL, SSL (TLS only) or PLAINTEXT
    role: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    mechanism: str = "SCRAM-SHA-512"
    ca_file: str = ""
    check_hostname: bool = True
    problem: str = ""  # a credential missing: raised when a client is made (after "is a broker there at all?")

    @property
    def principal(self) -> str:
        return f"User:{self.username}" if self.protocol.startswith("SASL") else "User:ANONYMOUS"

    def kafka_python(self) -> dict[str, Any]:
        """kafka-python's settings (KafkaProducer, KafkaConsumer, KafkaAdminClient)."""
        if self.problem:
            raise KafkaAccessError(self.problem)
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol in ("SSL", "SASL_SSL"):
            out.update(ssl_cafile=self.ca_file, ssl_check_hostname=self.check_hostname)
        if self.protocol.startswith("SASL"):
            out.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                       sasl_plain_password=self.password)
        return out

    def aiokafka(self) -> dict[str, Any]:
        """aiokafka's settings (AIOKafkaConsumer, AIOKafkaProducer)."""
        if self.problem:
            raise KafkaAccessError(self.problem)
        out: dict[str, Any] = {"security_protocol": self.protocol, "ssl_context": self.ssl_context()}
        if self.protocol.startswith("SASL"):
            out.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                       sasl_plain_password=self.password)
        return out

    def ssl_context(self) -> ssl.SSLContext | None:
        """For aiokafka (faust): the CA, TLS 1.2 or later, the hostname checked unless turned off."""
        if self.protocol not in ("SSL", "SASL_SSL"):
            return None
        if self.problem:
            raise KafkaAccessError(self.problem)
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.check_hostname = self.check_hostname
        return ctx


def client_auth(cfg: Config, role: str) -> ClientAuth:
    """The credentials of `role` (powerplane.access.ROLES, or the admin) under this config. Missing files
    are one line saying which setting names them and how to make them."""
    if cfg.kafka_security_protocol == "PLAINTEXT":
        return ClientAuth(role=role)
    d = Path(cfg.kafka_credentials_dir) if cfg.kafka_credentials_dir else dev_security_dir(cfg.state_dir)
    ca = Path(cfg.kafka_ca_file) if cfg.kafka_ca_file else d / "ca.pem"
    if not ca.is_file():
        return ClientAuth(cfg.kafka_security_protocol, role, problem=(
            f"no CA to check the Kafka broker at {cfg.kafka_bootstrap} with: CA file {ca} not found (kafka_ca_file, "
            f"PP_KAFKA_CA_FILE); start the dev broker with `powerplane dev up` (it makes one), or name your site's CA"))
    user = cfg.kafka_username or access.username(role)
    password = cfg.kafka_password.get_secret_value()
    if cfg.kafka_security_protocol == "SASL_SSL" and not password:
        pw_file = Path(cfg.kafka_password_file) if cfg.kafka_password_file else password_path(d, user)
        try:
            password = pw_file.read_text().strip()
        except OSError as e:
            return ClientAuth(cfg.kafka_security_protocol, role, user, problem=(
                f"Kafka password file {pw_file} of {user} (role {role}) unreadable: {e.strerror}; run `powerplane "
                f"dev up`, or set PP_KAFKA_PASSWORD_FILE or PP_KAFKA_PASSWORD"))
    return ClientAuth(cfg.kafka_security_protocol, role, user, password, cfg.kafka_sasl_mechanism, str(ca),
                      cfg.kafka_check_hostname)


_process: dict[str, Any] = {}


def set_process_auth(auth: ClientAuth | Callable[[], ClientAuth]) -> None:
    """The credentials clients use when their caller names none (the CLI sets its command's role, as a
    function so that commands without Kafka need no credentials; the tests the admin). Stages that know
    their role pass it explicitly."""
    _process.clear()
    _process["auth" if isinstance(auth, ClientAuth) else "factory"] = auth


@contextmanager
def process_auth_as(auth: ClientAuth) -> Iterator[ClientAuth]:
    """The process's credentials are `auth` inside the block, and what they were afterwards (a test talking to
    a second cluster with its own users)."""
    saved = dict(_process)
    set_process_auth(auth)
    try:
        yield auth
    finally:
        _process.clear()
        _process.update(saved)


def process_auth() -> ClientAuth:
    """The process's credentials; unset, the read-only `ops` role under the environment's config."""
    if "auth" not in _process:
        if "factory" in _process:
            _process["auth"] = _process["factory"]()
        else:
            from powerplane.config import load_config

            _process["auth"] = client_auth(load_config(), "ops")
    auth: ClientAuth = _process["auth"]
    return auth


def refused(e: BaseException) -> bool:
    """An ACL refusal (kafka-python wraps some in a plain KafkaError)."""
    return isinstance(e, kerr.AuthorizationError) or "AuthorizationFailed" in str(e)


def explain(e: BaseException, auth: ClientAuth, what: str = "", topic: str = "", op: str = "use") -> str:
    """One readable line for a refusal: who was refused, what, and what to do."""
    where = f"{what}: " if what else ""
    on = f"topic {topic}" if topic else "a topic it asked for"
    if isinstance(e, kerr.TopicAuthorizationFailedError):
        return (f"{where}{auth.principal} (role {auth.role or '?'}) may not {op} {on}: the broker's ACLs refuse "
                f"it (powerplane/access.py lists what each role may do)")
    if "ClusterAuthorizationFailed" in str(e):  # kafka-python wraps it: an idempotent producer of a reader
        return (f"{where}{auth.principal} (role {auth.role or '?'}) may not {op} {on}: the broker's ACLs refuse "
                f"it (the role writes no topic at all, so it may not even open a producer)")
    if isinstance(e, kerr.GroupAuthorizationFailedError):
        return f"{where}{auth.principal} (role {auth.role or '?'}) may not use its consumer group (broker ACLs)"
    if isinstance(e, kerr.AuthorizationError):
        return f"{where}{auth.principal} (role {auth.role or '?'}) not authorized: {type(e).__name__}"
    if isinstance(e, kerr.SaslAuthenticationFailedError):
        return (f"{where}the broker refused the credentials of {auth.principal} ({auth.mechanism}): check "
                f"kafka_username and the password (PP_KAFKA_PASSWORD_FILE or PP_KAFKA_PASSWORD)")
    return f"{where}{type(e).__name__}: {e}".splitlines()[0]


def listening(bootstrap: str) -> bool:
    """Whether anything accepts a TCP connection at the first bootstrap address."""
    import socket

    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=2.0).close()
    except (OSError, ValueError):
        return False
    return True


def diagnose(bootstrap: str, auth: ClientAuth) -> tuple[str, bool] | None:
    """Why a client that cannot bootstrap is refused, from one TCP and TLS handshake of our own (kafka-python
    reports only 'Unable to bootstrap'): (one line, certain). None: nothing answers, or nothing found.
    TLS failures are certain; a connection closed after TLS is, most likely, refused credentials."""
    import socket

    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    host = host or "127.0.0.1"
    try:
        sock = socket.create_connection((host, int(port)), timeout=2.0)
    except (OSError, ValueError):
        return None
    with sock:
        ctx = auth.ssl_context()
        if ctx is None:  # a PLAINTEXT client: does the broker want TLS?
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            try:
                ctx.wrap_socket(sock, server_hostname=host).close()
            except (OSError, ssl.SSLError):
                return None
            return (f"the broker at {bootstrap} requires TLS and this client speaks PLAINTEXT: set "
                    f"kafka_security_protocol (PP_KAFKA_SECURITY_PROTOCOL) to SASL_SSL", True)
        try:
            ctx.wrap_socket(sock, server_hostname=host).close()
        except ssl.SSLCertVerificationError as e:
            return (f"TLS: the certificate of the broker at {bootstrap} was refused: {e.verify_message} "
                    f"(CA {auth.ca_file}, hostname check {'on' if auth.check_hostname else 'off'})", True)
        except (OSError, ssl.SSLError) as e:
            return f"TLS handshake with the broker at {bootstrap} failed: {e}".splitlines()[0], True
    if auth.protocol == "SSL":
        return (f"the broker at {bootstrap} closed the connection after TLS: it wants SASL authentication; set "
                f"kafka_security_protocol (PP_KAFKA_SECURITY_PROTOCOL) to SASL_SSL", False)
    return (f"the broker at {bootstrap} refused to authenticate {auth.principal} ({auth.mechanism}): wrong "
            f"password or unknown user; check kafka_username and the password (PP_KAFKA_PASSWORD_FILE or "
            f"PP_KAFKA_PASSWORD)", False)
