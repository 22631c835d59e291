"""`powerplane dev up|down|status`: real servers on this machine, without Docker.

- Apache Kafka 4.x in KRaft mode (TLS, SCRAM users and ACLs on unless kafka_security_protocol is
  PLAINTEXT: ops/kafka_security.py), from Maven Central jars that Maven fetches once into ~/.cache/powerplane:
  one combined broker+controller, or (`--brokers 3`) three of them, node ids 1-3, forming a 3-voter
  controller quorum, each with its own data dir, pid file and log (ports: NODE_PORT_STEP).
- VictoriaMetrics (Debian `victoria-metrics`), which accepts InfluxDB v2 line-protocol writes.

Each server runs in its own process session with a pid file, so `dev down` stops exactly what
`dev up` started and leaves nothing behind. This module is long because it holds the whole life of both
servers (fetch, configure, format, start, wait, stop, one Kafka node at a time for the fault tests).
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
    return bool(_stop_all([(name, pidfile)], timeout_s))


def _stop_all(servers: list[tuple[str, Path]], timeout_s: float = 30.0) -> list[str]:
    """SIGTERM every server at once, then wait for all (the last Kafka node stopped alone would wait for a
    controller quorum that left before it); SIGKILL what is still up after timeout_s. Returns those stopped."""
    running = []
    for name, pidfile in servers:
        pid = _read_pid(pidfile)
        if pid is None:
            pidfile.unlink(missing_ok=True)
        else:
            running.append((name, pidfile, pid))
    for name, _, pid in running:
        say(f"stopping {name} (pid {pid})")
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid) for *_, pid in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    for name, pidfile, pid in running:
        if _alive(pid):
            say(f"{name} ignored SIGTERM for {timeout_s:.0f} s; killing it")
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pidfile.unlink(missing_ok=True)
    return [name for name, *_ in running]


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


# Node i (1, 2, 3) of the dev cluster: its broker listens on P + 2 (i - 1), where P is the port of the first
# address of `kafka_bootstrap`, and its KRaft controller on the port after. One node is today's single broker
# (P and P + 1); three take P .. P + 5.
NODE_PORT_STEP = 2
# A killed broker is fenced (its partitions get new leaders) after this long without a heartbeat; Kafka's
# 9 s default alone would eat most of the 10 s in which control must resume.
BROKER_SESSION_MS = 3000


@dataclass(frozen=True)
class KafkaNode:
    """One combined broker+controller of the dev cluster."""

    node_id: int
    host: str
    port: int  # the client (broker) listener; the controller listens on port + 1

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def name(self) -> str:
        return "kafka" if self.node_id == 1 else f"kafka-{self.node_id}"

    def dir(self, p: Paths) -> Path:
        return p.kafka_dir if self.node_id == 1 else p.state / self.name


def kafka_nodes(cfg: Config, brokers: int) -> list[KafkaNode]:
    """The nodes of a `brokers`-node dev cluster, on ports derived from kafka_bootstrap (NODE_PORT_STEP).
    Every other address the bootstrap lists must be one of them."""
    listed = [a.strip() for a in cfg.kafka_bootstrap.split(",") if a.strip()]
    host, port = _host_port(listed[0])
    nodes = [KafkaNode(i, host, port + NODE_PORT_STEP * (i - 1)) for i in range(1, brokers + 1)]
    known = {n.address for n in nodes}
    for a in listed[1:]:
        if "{}:{}".format(*_host_port(a)) not in known:
            raise DevError(f"PP_KAFKA_BOOTSTRAP lists {a}, which is not a node of the {brokers}-node dev cluster "
                           f"({', '.join(sorted(known))}): list those, or only the first")
    return nodes


def _recorded_size(p: Paths) -> int | None:
    """How many nodes the dev cluster in the state directory was formatted with (None: never formatted)."""
    try:
        return int((p.kafka_dir / "nodes").read_text().strip())
    except (OSError, ValueError):
        return 1 if (p.kafka_dir / "data" / "meta.properties").exists() else None


def cluster_size(cfg: Config, p: Paths, brokers: int | None = None) -> int:
    """Nodes of the dev cluster: as formatted on disk, else `brokers`, else as many as kafka_bootstrap lists."""
    on_disk = _recorded_size(p)
    if brokers is not None and on_disk is not None and brokers != on_disk:
        raise DevError(f"the dev Kafka in {p.state} was made with {on_disk} node(s), not {brokers}: remove it with "
                       f"`powerplane dev down --wipe` first")
    want = brokers or on_disk or len([a for a in cfg.kafka_bootstrap.split(",") if a.strip()])
    if not 1 <= want <= 9:
        raise DevError(f"--brokers {want}: the dev cluster runs 1 to 9 nodes")
    return want


def cluster_bootstrap(cfg: Config, brokers: int | None = None) -> str:
    """Every node's client address, comma-separated: what clients should be given to outlive a node."""
    p = paths(cfg)
    return ",".join(n.address for n in kafka_nodes(cfg, cluster_size(cfg, p, brokers)))


def _secure(cfg: Config) -> bool:
    return cfg.kafka_security_protocol != "PLAINTEXT"


def listener_props(node: KafkaNode, secure: bool = False) -> list[str]:
    """The listeners of one node and their security protocols: SASL_SSL for clients and replication and mTLS
    for the controller when `secure` (ops/kafka_security.py), else plaintext."""
    if secure:
        return [*kafka_security.listener_props(node.host, node.port, node.controller_port),
                "controller.listener.names=CONTROLLER"]
    return [
        f"listeners=PLAINTEXT://{node.host}:{node.port},CONTROLLER://{node.host}:{node.controller_port}",
        f"advertised.listeners=PLAINTEXT://{node.host}:{node.port}",
        "inter.broker.listener.name=PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    ]


def replication_props(brokers: int) -> list[str]:
    """The broker's defaults and internal topics (offsets, transactions), replicated as topics.replication
    says: 3 copies and 2 in sync on three nodes, 1 and 1 on one."""
    from powerplane.topics import replication

    rf, isr = replication(brokers)
    props = [f"offsets.topic.replication.factor={rf}", f"transaction.state.log.replication.factor={rf}",
             f"transaction.state.log.min.isr={isr}", f"share.coordinator.state.topic.replication.factor={rf}",
             f"share.coordinator.state.topic.min.isr={isr}", f"default.replication.factor={rf}",
             f"min.insync.replicas={isr}", "unclean.leader.election.enable=false"]
    if brokers > 1:
        props += ["broker.heartbeat.interval.ms=750", f"broker.session.timeout.ms={BROKER_SESSION_MS}",
                  # a dead quorum leader is noticed after 1.5 s instead of 2 s
                  "controller.quorum.fetch.timeout.ms=1500", "controller.quorum.election.timeout.ms=750"]
    return props


def _kafka_props(node: KafkaNode, nodes: list[KafkaNode], p: Paths, cfg: Config | None = None) -> str:
    """One node's server.properties; with a `cfg` whose security is on, TLS, SCRAM and ACLs too."""
    secure = cfg is not None and _secure(cfg)
    voters = ",".join(f"{n.host}:{n.controller_port}" for n in nodes)
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node.node_id}",
        f"controller.quorum.bootstrap.servers={voters}",
        *listener_props(node, secure),
        *(kafka_security.broker_props(cfg.state_dir) if cfg is not None and secure else []),
        f"log.dirs={node.dir(p) / 'data'}",
        "auto.create.topics.enable=false",  # topics come from `powerplane topics create` only
        *replication_props(len(nodes)),
        "group.initial.rebalance.delay.ms=0",
        "num.partitions=1",
        "",
    ])


def _kafka_id() -> str:
    """A Kafka Uuid (cluster or directory id) in its base64 form."""
    out = "-"
    while out.startswith("-"):  # an id starting with '-' reads as an option (1 in 64); Kafka redraws too
        out = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return out


def _format(java: str, cp: str, nodes: list[KafkaNode], p: Paths, extra: list[str] | None = None) -> None:
    """Format every node's storage for one cluster: one node is a standalone quorum; several a dynamic
    quorum (KIP-853) whose voters are every node, named by --initial-controllers."""
    formatted = [n for n in nodes if (n.dir(p) / "data" / "meta.properties").exists()]
    if len(formatted) == len(nodes):
        return
    if formatted:
        raise DevError(f"the dev Kafka in {p.state} is half formatted ({len(formatted)} of {len(nodes)} nodes): "
                       f"remove it with `powerplane dev down --wipe`")
    cluster = _kafka_id()
    voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}:{_kafka_id()}" for n in nodes)
    quorum = ["--standalone"] if len(nodes) == 1 else ["--initial-controllers", voters]
    say(f"formatting KRaft storage ({len(nodes)} node{'s' if len(nodes) > 1 else ''})")
    procs = [subprocess.Popen([java, "-cp", cp, "kafka.tools.StorageTool", "format", "-t", cluster, "-c",
                               str(n.dir(p) / "server.properties"), *quorum, *(extra or [])], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for n in nodes]
    for n, proc in zip(nodes, procs, strict=True):
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise DevError(f"formatting Kafka storage of node {n.node_id} failed: {out.strip()[-400:]}")
    (p.kafka_dir / "nodes").write_text(f"{len(nodes)}\n")


def start_kafka(cfg: Config, p: Paths, timeout_s: float = 90.0, brokers: int | None = None) -> None:
    """Start every node of the dev cluster that is not running (one node unless `brokers` or the state on
    disk says more), formatting storage the first time; return once every broker serves."""
    nodes = kafka_nodes(cfg, cluster_size(cfg, p, brokers))
    down = [n for n in nodes if _read_pid(n.dir(p) / "kafka.pid") is None]
    if not down:
        say(f"Kafka already running at {','.join(n.address for n in nodes)}")
        return
    _launch(cfg, p, down, nodes, timeout_s)


def start_node(cfg: Config, node_id: int, timeout_s: float = 60.0) -> None:
    """Start one stopped (or killed) node of the dev cluster again and wait until it serves."""
    p = paths(cfg)
    nodes = kafka_nodes(cfg, cluster_size(cfg, p))
    _launch(cfg, p, [nodes[node_id - 1]], nodes, timeout_s)


def _check_ports(start: list[KafkaNode], size: int) -> None:
    """Every port a node listens on must be free before Java starts, or it dies with a stack trace that
    never names the port."""
    for n in start:
        whose = "Kafka's" if size == 1 else f"Kafka node {n.node_id}'s"
        for what, at in (("broker", n.port), ("KRaft controller (the broker port + 1)", n.controller_port)):
            if _port_open(n.host, at) or not _port_free(n.host, at):
                raise DevError(f"port {at} on {n.host}, {whose} {what} port, is taken by a process `dev up` did not "
                               f"start: stop it, or set PP_KAFKA_BOOTSTRAP to an address whose port P and the ports "
                               f"after it (P .. P + {NODE_PORT_STEP * size - 1}) are free")


def _launch(cfg: Config, p: Paths, start: list[KafkaNode], nodes: list[KafkaNode], timeout_s: float) -> None:
    _check_ports(start, len(nodes))
    libs = ensure_kafka_jars(p)
    java = shutil.which("java")
    if java is None:  # the jars are cached but Java went away (or was never on this PATH)
        raise DevError(JAVA_MISSING)
    cp = f"{libs}/*"
    if _secure(cfg):  # certificates and passwords before the nodes are formatted or started
        formatted = any((n.dir(p) / "data" / "meta.properties").exists() for n in nodes)
        try:
            kafka_security.prepare(cfg.state_dir, formatted)
        except kafka_security.SecurityError as e:
            raise DevError(str(e)) from None
    for n in nodes:
        n.dir(p).mkdir(parents=True, exist_ok=True)
        props = n.dir(p) / "server.properties"
        props.touch(mode=0o600)  # it holds the brokers' SCRAM password
        props.write_text(_kafka_props(n, nodes, p, cfg))
        (n.dir(p) / "log4j2.yaml").write_text(LOG4J2)
    _format(java, cp, nodes, p, kafka_security.format_args(cfg.state_dir) if _secure(cfg) else None)
    heap = os.environ.get("PP_KAFKA_HEAP", "-Xms256m -Xmx1g" if len(nodes) == 1 else "-Xms128m -Xmx512m")
    pids = {}
    for n in start:
        argv = [java, *heap.split(), "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={n.dir(p) / 'log4j2.yaml'}",
                "-cp", cp, "kafka.Kafka", str(n.dir(p) / "server.properties")]
        pids[n] = _spawn("kafka", argv, n.dir(p))
        say(f"starting Kafka {KAFKA_VERSION} node {n.node_id} (pid {pids[n]}) at {n.address}")
    bootstrap = ",".join(n.address for n in nodes)
    t0 = time.monotonic()
    while time.monotonic() < t0 + timeout_s:
        for n, pid in pids.items():
            if not _alive(pid):
                tail = (n.dir(p) / "kafka.log").read_text(errors="replace").strip().splitlines()[-10:]
                raise DevError(f"Kafka node {n.node_id} exited during start-up; last log lines:\n  "
                               + "\n  ".join(tail))
        if all(_port_open(n.host, n.port) for n in start) and _brokers_serving(cfg, bootstrap,
                                                                               {n.node_id for n in start}):
            say(f"Kafka is up after {time.monotonic() - t0:.1f} s")
            return
        time.sleep(0.5)
    logs = ", ".join(str(n.dir(p) / "kafka.log") for n in start)
    raise DevError(f"Kafka did not answer within {timeout_s:.0f} s; see {logs}")


def _brokers_serving(cfg: Config, bootstrap: str, node_ids: set[int]) -> bool:
    """Whether the cluster lists every one of node_ids as a registered broker, not fenced (asked as the
    admin role: the brokers refuse anonymous clients when security is on)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from powerplane.kafka import client_auth

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                                 **client_auth(cfg, access.ADMIN).kafka_python())
    except (KafkaError, OSError, ValueError):
        return False
    try:
        brokers = admin.describe_cluster()["brokers"]
        serving = {b["broker_id"] for b in brokers if not b.get("is_fenced")}
        return node_ids <= serving
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


def up(cfg: Config, *, kafka: bool = True, vm: bool = True, brokers: int | None = None) -> None:
    """Start the dev servers: Kafka (one node, or `brokers` nodes) with the declared topics, and the store."""
    from powerplane.kafka import client_auth, create_topics

    p = paths(cfg)
    try:
        if kafka:
            start_kafka(cfg, p, brokers=brokers)
            created = create_topics(cluster_bootstrap(cfg), auth=client_auth(cfg, access.ADMIN))
            say(f"topics: created {', '.join(created)}" if created else "topics: all present")
        if vm:
            start_vm(cfg, p)
    except BaseException:
        if any(status(cfg).values()):  # nothing started (a check failed first): the error is the one line
            say("start-up failed; stopping what was started")
            down(cfg)
        raise


def _node_pidfiles(p: Paths) -> list[tuple[str, Path]]:
    """(name, pid file) of every Kafka node the state directory holds, from the size it was formatted with."""
    n = _recorded_size(p) or 1
    return [("kafka" if i == 1 else f"kafka-{i}", (p.kafka_dir if i == 1 else p.state / f"kafka-{i}") / "kafka.pid")
            for i in range(1, n + 1)]


def down(cfg: Config, *, wipe: bool = False) -> None:
    p = paths(cfg)
    stopped = _stop_all([("victoria-metrics", p.vm_dir / "victoria-metrics.pid"), *_node_pidfiles(p)])
    say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    if wipe:
        shutil.rmtree(p.state, ignore_errors=True)
        say(f"removed {p.state}")


def stop_kafka(cfg: Config) -> None:
    """Stop only Kafka (every node), keeping its data (tests use it to simulate a broker outage)."""
    _stop_all(_node_pidfiles(paths(cfg)))


def stop_node(cfg: Config, node_id: int) -> None:
    """Stop one node of the dev cluster cleanly (SIGTERM), keeping its data."""
    name, pf = _node_pidfiles(paths(cfg))[node_id - 1]
    _stop(name, pf)


def kill_node(cfg: Config, node_id: int) -> int:
    """kill -9 one node of the dev cluster (a crash: no controlled shutdown); return the pid killed."""
    name, pf = _node_pidfiles(paths(cfg))[node_id - 1]
    pid = _read_pid(pf)
    if pid is None:
        raise DevError(f"Kafka node {node_id} ({name}) is not running")
    say(f"killing {name} (pid {pid}) with SIGKILL")
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while _alive(pid):
        time.sleep(0.05)
    pf.unlink(missing_ok=True)
    return pid


def stop_vm(cfg: Config) -> None:
    """Stop only the time-series server (tests use it to simulate a store outage)."""
    p = paths(cfg)
    _stop("victoria-metrics", p.vm_dir / "victoria-metrics.pid")


def status(cfg: Config) -> dict[str, int | None]:
    """Pid of every dev server (None: stopped): kafka (node 1), kafka-2, kafka-3 on a cluster, victoria-metrics."""
    p = paths(cfg)
    return {**{name: _read_pid(pf) for name, pf in _node_pidfiles(p)},
            "victoria-metrics": _read_pid(p.vm_dir / "victoria-metrics.pid")}
