"""`powerplane dev up|down|status`: real servers on this machine, without Docker.

- Apache Kafka 4.x in KRaft mode (one combined broker+controller), from Maven Central jars that
  Maven fetches once into ~/.cache/powerplane; TLS, SCRAM users and ACLs on (ops/kafka_security.py)
  unless kafka_security_protocol is PLAINTEXT.
- VictoriaMetrics (Debian `victoria-metrics`), which accepts InfluxDB v2 line-protocol writes.

Each server runs in its own process session with a pid file, so `dev down` stops exactly what
`dev up` started and leaves nothing behind.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from ops import kafka_security
from powerplane import access
from powerplane.config import Config

KAFKA_VERSION = "4.1.1"
# Kafka's POMs leave the SLF4J binding out; this one matches the slf4j-api 1.7 and log4j 2.24
# that kafka_2.13 4.1.1 pulls in, so the broker's own log is not silently discarded.
LOG_BINDING = ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.24.3")

POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>powerplane</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>{LOG_BINDING[0]}</groupId><artifactId>{LOG_BINDING[1]}</artifactId>
      <version>{LOG_BINDING[2]}</version></dependency>
  </dependencies>
</project>
"""

LOG4J2 = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        Pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
"""


class DevError(RuntimeError):
    """A problem the user can fix; the message says how."""


def say(msg: str) -> None:
    print(f"[dev] {msg}", file=sys.stderr, flush=True)


@dataclass
class Paths:
    state: Path
    cache: Path

    @property
    def kafka_libs(self) -> Path:
        return self.cache / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def kafka_dir(self) -> Path:
        return self.state / "kafka"

    @property
    def vm_dir(self) -> Path:
        return self.state / "victoria-metrics"


def paths(cfg: Config) -> Paths:
    cache = Path(os.environ.get("PP_CACHE_DIR", Path.home() / ".cache" / "powerplane"))
    return Paths(state=Path(cfg.state_dir).resolve() / "dev", cache=cache)


def _host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now: one bound without listening counts as taken too."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free for Kafka too
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


JAVA_MISSING = ("java not found on PATH: Kafka needs it; install Java 17 "
                "(e.g. apt-get install openjdk-17-jre-headless)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is not alive.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def _read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _spawn(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it for its lifetime
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=workdir, start_new_session=True, env=env)
    (workdir / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _stop(name: str, pidfile: Path, timeout_s: float = 30.0) -> bool:
    pid = _read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    say(f"stopping {name} (pid {pid})")
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        say(f"{name} ignored SIGTERM for {timeout_s:.0f} s; killing it")
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pidfile.unlink(missing_ok=True)
    return True


# ---- Kafka -----------------------------------------------------------------------------------


def ensure_kafka_jars(p: Paths) -> Path:
    libs = p.kafka_libs
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise DevError("Kafka needs Java 17 and Maven: install them "
                       "(Debian: apt-get install openjdk-17-jre-headless maven)")
    say(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {libs} (once)")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(POM)
    tmp = work / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    res = subprocess.run(["mvn", "-B", "-q", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
                          f"-DoutputDirectory={tmp}"], capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stdout + res.stderr).strip().splitlines()[-5:]
        raise DevError("Maven could not fetch the Kafka jars (is Maven Central reachable?):\n  " + "\n  ".join(tail))
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.touch()
    return libs


def _secure(cfg: Config) -> bool:
    return cfg.kafka_security_protocol != "PLAINTEXT"


def _kafka_props(cfg: Config, p: Paths) -> str:
    host, port = _host_port(cfg.kafka_bootstrap)
    ctl = port + 1
    listeners = kafka_security.listener_props(host, port, ctl) if _secure(cfg) else [
        f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctl}",
        f"advertised.listeners=PLAINTEXT://{host}:{port}",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"]
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers={host}:{ctl}",
        *listeners,
        "controller.listener.names=CONTROLLER",
        *(kafka_security.broker_props(cfg.state_dir) if _secure(cfg) else []),
        f"log.dirs={p.kafka_dir / 'data'}",
        "auto.create.topics.enable=false",  # topics come from `powerplane topics create` only
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "group.initial.rebalance.delay.ms=0",
        "num.partitions=1",
        "",
    ])


def start_kafka(cfg: Config, p: Paths, timeout_s: float = 90.0) -> None:
    host, port = _host_port(cfg.kafka_bootstrap)
    pidfile = p.kafka_dir / "kafka.pid"
    if _read_pid(pidfile) is not None:
        say(f"Kafka already running at {cfg.kafka_bootstrap}")
        return
    # Kafka listens on the broker port and on port + 1 for its KRaft controller: both must be free before Java
    # starts, or it dies with a stack trace that never names the port.
    for what, at in (("broker", port), ("KRaft controller (the broker port + 1)", port + 1)):
        if _port_open(host, at) or not _port_free(host, at):
            raise DevError(f"port {at} on {host}, Kafka's {what} port, is taken by a process `dev up` did not "
                           f"start: stop it, or set PP_KAFKA_BOOTSTRAP to an address whose port and port + 1 "
                           f"are free")
    libs = ensure_kafka_jars(p)
    java = shutil.which("java")
    if java is None:  # the jars are cached but Java went away (or was never on this PATH)
        raise DevError(JAVA_MISSING)
    p.kafka_dir.mkdir(parents=True, exist_ok=True)
    formatted = (p.kafka_dir / "data" / "meta.properties").exists()
    if _secure(cfg):
        try:
            kafka_security.prepare(cfg.state_dir, formatted)
        except kafka_security.SecurityError as e:
            raise DevError(str(e)) from None
    props = p.kafka_dir / "server.properties"
    props.touch(mode=0o600)  # it holds the brokers' SCRAM password
    props.write_text(_kafka_props(cfg, p))
    (p.kafka_dir / "log4j2.yaml").write_text(LOG4J2)
    cp = f"{libs}/*"
    if not formatted:
        cluster = "-"
        while cluster.startswith("-"):  # an id starting with '-' reads as an option (1 in 64); Kafka redraws too
            cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        say("formatting KRaft storage")
        res = subprocess.run([java, "-cp", cp, "kafka.tools.StorageTool", "format", "-t", cluster, "-c",
                              str(props), "--standalone",
                              *(kafka_security.format_args(cfg.state_dir) if _secure(cfg) else [])],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise DevError(f"formatting Kafka storage failed: {(res.stdout + res.stderr).strip()[-400:]}")
    heap = os.environ.get("PP_KAFKA_HEAP", "-Xms256m -Xmx1g")
    argv = [java, *heap.split(), "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={p.kafka_dir / 'log4j2.yaml'}",
            "-cp", cp, "kafka.Kafka", str(props)]
    pid = _spawn("kafka", argv, p.kafka_dir)
    say(f"starting Kafka {KAFKA_VERSION} (pid {pid}) at {cfg.kafka_bootstrap}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            tail = (p.kafka_dir / "kafka.log").read_text(errors="replace").strip().splitlines()[-10:]
            raise DevError("Kafka exited during start-up; last log lines:\n  " + "\n  ".join(tail))
        if _port_open(host, port) and _broker_ready(cfg):
            say(f"Kafka is up after {timeout_s - (deadline - time.monotonic()):.1f} s")
            return
        time.sleep(0.5)
    raise DevError(f"Kafka did not answer within {timeout_s:.0f} s; see {p.kafka_dir / 'kafka.log'}")


def _broker_ready(cfg: Config) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from powerplane.kafka import client_auth

    try:
        admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, request_timeout_ms=3000,
                                 **client_auth(cfg, access.ADMIN).kafka_python())
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


# ---- VictoriaMetrics --------------------------------------------------------------------------


def _vm_binary() -> str:
    for cand in ("victoria-metrics", "victoria-metrics-prod", "/usr/bin/victoria-metrics"):
        path = shutil.which(cand)
        if path:
            return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing Debian's victoria-metrics (the InfluxDB-v2-write-compatible store used in dev)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        res = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "victoria-metrics"],
                             capture_output=True, text=True, env=env)
        if res.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
            res = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                                  "victoria-metrics"], capture_output=True, text=True, env=env)
        path = shutil.which("victoria-metrics")
        if path:
            return path
        raise DevError(f"apt-get could not install victoria-metrics: {res.stderr.strip()[-300:]}")
    raise DevError("victoria-metrics is not installed: run `sudo apt-get install victoria-metrics`")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def start_vm(cfg: Config, p: Paths, timeout_s: float = 30.0) -> None:
    host, port = _host_port(cfg.influx_url.split("//", 1)[-1].rstrip("/"))
    pidfile = p.vm_dir / "victoria-metrics.pid"
    if _read_pid(pidfile) is not None:
        say(f"VictoriaMetrics already running at {cfg.influx_url}")
        return
    if _port_open(host, port):
        raise DevError(f"port {port} is taken by a process `dev up` did not start: stop it, or set PP_INFLUX_URL")
    binary = _vm_binary()
    argv = [binary, f"-httpListenAddr={host}:{port}", f"-storageDataPath={p.vm_dir / 'data'}",
            "-search.latencyOffset=0s", "-retentionPeriod=30d", "-loggerLevel=WARN"]
    pid = _spawn("victoria-metrics", argv, p.vm_dir)
    say(f"starting VictoriaMetrics (pid {pid}) at {cfg.influx_url}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            tail = (p.vm_dir / "victoria-metrics.log").read_text(errors="replace").strip().splitlines()[-10:]
            raise DevError("VictoriaMetrics exited during start-up:\n  " + "\n  ".join(tail))
        if _http_ok(f"http://{host}:{port}/health"):
            say("VictoriaMetrics is up")
            return
        time.sleep(0.3)
    raise DevError(f"VictoriaMetrics did not answer within {timeout_s:.0f} s")


# ---- entry points -------------------------------------------------------------------------------


def up(cfg: Config, *, kafka: bool = True, vm: bool = True) -> None:
    from powerplane.kafka import client_auth, create_topics

    p = paths(cfg)
    try:
        if kafka:
            start_kafka(cfg, p)
            created = create_topics(cfg.kafka_bootstrap, auth=client_auth(cfg, access.ADMIN))
            say(f"topics: created {', '.join(created)}" if created else "topics: all present")
        if vm:
            start_vm(cfg, p)
    except BaseException:
        if any(status(cfg).values()):  # nothing started (a check failed first): the error is the one line
            say("start-up failed; stopping what was started")
            down(cfg)
        raise


def down(cfg: Config, *, wipe: bool = False) -> None:
    p = paths(cfg)
    stopped = [name for name, pf in (("victoria-metrics", p.vm_dir / "victoria-metrics.pid"),
                                     ("kafka", p.kafka_dir / "kafka.pid")) if _stop(name, pf)]
    say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    if wipe:
        shutil.rmtree(p.state, ignore_errors=True)
        say(f"removed {p.state}")


def stop_kafka(cfg: Config) -> None:
    """Stop only the broker, keeping its data (tests use it to simulate a broker outage)."""
    p = paths(cfg)
    _stop("kafka", p.kafka_dir / "kafka.pid")


def stop_vm(cfg: Config) -> None:
    """Stop only the time-series server (tests use it to simulate a store outage)."""
    p = paths(cfg)
    _stop("victoria-metrics", p.vm_dir / "victoria-metrics.pid")


def status(cfg: Config) -> dict[str, int | None]:
    p = paths(cfg)
    return {"kafka": _read_pid(p.kafka_dir / "kafka.pid"),
            "victoria-metrics": _read_pid(p.vm_dir / "victoria-metrics.pid")}
