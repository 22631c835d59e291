"""The Docker Compose deployment in compose/, checked by parsing it: there is no Docker on the
development machines, so these tests look for the mistakes a user would hit on `docker compose up`."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from powerplane.config import Config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ALERTMANAGER_FILE = COMPOSE_DIR / "alertmanager.yml"
PROVISIONING = ROOT / "dashboards" / "provisioning"

PLACEHOLDER = re.compile(r"changeme|\bTO[D]O\b|FIXME|xxx|<[^<>\n]+>", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> str:
    """Compose-style ${VAR:-default} with an empty environment, as on a fresh checkout."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): interpolate(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> list[str]:
    deps = service.get("depends_on") or []
    return list(deps)  # a list of names, or a mapping whose keys are the names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def pp_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services running the powerplane image (built from compose/Dockerfile)."""
    out = {n: s for n, s in services.items()
           if "build" in s or str(s.get("image", "")).startswith("powerplane:")}
    assert out, "no powerplane services found"
    return out


def image_tag(ref: str) -> str | None:
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def test_image_tag_parser() -> None:
    assert image_tag("localhost:5000/kafka") is None
    assert image_tag("grafana/grafana") is None
    assert image_tag("grafana/grafana:11.3.0") == "11.3.0"


def assert_pinned(ref: str, where: str) -> None:
    tag = image_tag(ref)
    assert tag, f"{where}: image '{ref}' has no tag"
    assert tag != "latest" and re.search(r"\d", tag), f"{where}: image '{ref}' is not pinned to a version"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"service '{name}' has neither image nor build"
        if "image" in svc:
            assert_pinned(interpolate(svc["image"]), f"service '{name}'")
    froms = re.findall(r"^FROM\s+(\S+)", (COMPOSE_DIR / "Dockerfile").read_text(), re.MULTILINE)
    assert froms, "compose/Dockerfile has no FROM"
    for ref in froms:
        assert_pinned(ref, "compose/Dockerfile")


def test_pp_env_vars_are_config_fields(services: dict[str, dict[str, Any]]) -> None:
    known = {Config.env_name(name) for name in Config.model_fields}
    used = {k for svc in services.values() for k in env_of(svc) if k.startswith("PP_")}
    referenced = {m.group(1) for m in INTERPOLATION.finditer(COMPOSE_FILE.read_text())}
    used |= {v for v in referenced if v.startswith("PP_")}
    assert used, "no PP_* variables at all"
    assert used <= known, f"not fields of powerplane.config.Config: {sorted(used - known)}"


def test_powerplane_services_share_one_environment(pp_services: dict[str, dict[str, Any]]) -> None:
    envs = {name: env_of(s) for name, s in pp_services.items()}
    first = next(iter(envs.values()))
    for name, env in envs.items():
        assert env == first, f"service '{name}' has another environment than the other powerplane services"
    for key in ("PP_KAFKA_BOOTSTRAP", "PP_INFLUX_URL", "PP_INFLUX_TOKEN", "PP_SIGNING_KEY_FILE"):
        assert first.get(key), f"powerplane services do not set {key}"


def kafka_nodes(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services running a Kafka node (the apache/kafka image)."""
    return {n: s for n, s in services.items() if str(s.get("image", "")).startswith("apache/kafka:")}


def test_kafka_bootstrap_lists_every_broker(
    services: dict[str, dict[str, Any]], pp_services: dict[str, dict[str, Any]]
) -> None:
    """Clients given every node's advertised address find the cluster with any one node down."""
    advertised = {urlsplit(x.strip()).netloc for svc in kafka_nodes(services).values()
                  for x in env_of(svc)["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert len(advertised) == 3, advertised
    for name, svc in pp_services.items():
        listed = [s.strip() for s in env_of(svc)["PP_KAFKA_BOOTSTRAP"].split(",")]
        assert set(listed) == advertised, f"{name}: PP_KAFKA_BOOTSTRAP {listed} is not every broker {advertised}"


def test_influx_url_points_at_influxdb(
    services: dict[str, dict[str, Any]], pp_services: dict[str, dict[str, Any]]
) -> None:
    assert "influxdb" in services
    for name, svc in pp_services.items():
        url = urlsplit(env_of(svc)["PP_INFLUX_URL"])
        assert (url.hostname, url.port) == ("influxdb", 8086), f"{name}: PP_INFLUX_URL is {url.geturl()}"


def test_influx_token_org_bucket_agree(
    services: dict[str, dict[str, Any]], pp_services: dict[str, dict[str, Any]]
) -> None:
    influx = env_of(services["influxdb"])
    assert influx["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    want = {
        "PP_INFLUX_TOKEN": influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"],
        "PP_INFLUX_ORG": influx["DOCKER_INFLUXDB_INIT_ORG"],
        "PP_INFLUX_BUCKET": influx["DOCKER_INFLUXDB_INIT_BUCKET"],
    }
    assert all(want.values()), f"influxdb setup values missing or empty: {want}"
    for name, svc in pp_services.items():
        env = env_of(svc)
        got = {k: env.get(k) for k in want}
        assert got == want, f"{name}: {got} != influxdb's {want}"
    assert env_of(services["grafana"]).get("PP_INFLUX_TOKEN") == want["PP_INFLUX_TOKEN"]


def test_grafana_datasource_matches_influxdb(services: dict[str, dict[str, Any]]) -> None:
    data = yaml.safe_load((PROVISIONING / "datasources" / "influxdb.yaml").read_text())
    (ds,) = [d for d in data["datasources"] if d["type"] == "influxdb"]
    url = urlsplit(ds["url"])
    assert (url.hostname, url.port) == ("influxdb", 8086)
    assert ds["jsonData"]["dbName"] == env_of(services["influxdb"])["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${PP_INFLUX_TOKEN}"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "powerplane.yaml").read_text())["providers"]
    mounted = [v.split(":")[1] for v in services["grafana"]["volumes"] if isinstance(v, str)]
    for p in providers:
        assert p["options"]["path"] in mounted, f"dashboard path {p['options']['path']} is not mounted"


def test_depends_on_targets_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for dep in depends_on(svc):
            assert dep in services, f"service '{name}' depends on unknown service '{dep}'"


def test_mounted_files_exist(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    named = set(compose.get("volumes") or {})
    for name, svc in services.items():
        build = svc.get("build")
        if build is not None:
            ctx = COMPOSE_DIR / (build if isinstance(build, str) else build.get("context", "."))
            assert ctx.is_dir(), f"{name}: build context {ctx} missing"
            if isinstance(build, dict) and "dockerfile" in build:
                assert (ctx / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
        for vol in svc.get("volumes") or []:
            source = vol.get("source", "") if isinstance(vol, dict) else vol.split(":", 1)[0]
            if source.startswith((".", "/", "~")):
                if source.startswith("."):
                    assert (COMPOSE_DIR / source).exists(), f"{name}: mounted path {source} does not exist"
            else:
                assert source in named, f"{name}: volume '{source}' is not declared under top-level volumes"
    for secret in (compose.get("secrets") or {}).values():
        assert secret.get("file"), "secrets must come from files"  # created by the user, not in git
    for name, svc in services.items():
        for s in svc.get("secrets") or []:
            assert (s if isinstance(s, str) else s["source"]) in (compose.get("secrets") or {}), name


def test_no_placeholders() -> None:
    files = [COMPOSE_FILE, ALERTMANAGER_FILE, COMPOSE_DIR / "Dockerfile", COMPOSE_DIR / "README.md"]
    files += sorted((COMPOSE_DIR / "prometheus").rglob("*.yml"))
    files += sorted(PROVISIONING.rglob("*.yaml"))
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = PLACEHOLDER.search(line)
            assert m is None, f"{path.relative_to(ROOT)}:{n}: placeholder '{m.group(0)}'"


def matchers_of(route: dict[str, Any]) -> dict[str, str]:
    out = {str(k): str(v) for k, v in (route.get("match") or {}).items()}
    for m in route.get("matchers") or []:
        k, v = re.fullmatch(r'\s*(\w+)\s*=\s*"?([^"]*)"?\s*', m).groups()  # type: ignore[union-attr]
        out[k] = v
    return out


def receiver_for(route: dict[str, Any], labels: dict[str, str], inherited: str | None = None) -> str | None:
    """The receiver Alertmanager picks: first matching child (continue: false), else this route's."""
    receiver = route.get("receiver", inherited)
    for child in route.get("routes") or []:
        if all(labels.get(k) == v for k, v in matchers_of(child).items()):
            return receiver_for(child, labels, receiver)
    return receiver


def test_alertmanager_routes_critical_apart_from_warnings(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load(ALERTMANAGER_FILE.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    critical = receiver_for(config["route"], {"severity": "critical"})
    warning = receiver_for(config["route"], {"severity": "warning"})
    assert critical in receivers and warning in receivers
    assert critical != warning, "critical and warning alerts go to the same receiver"
    assert receivers[critical].get("webhook_configs"), "critical receiver has no webhook"
    mounts = [v for v in services["alertmanager"]["volumes"] if isinstance(v, str)]
    assert any(v.split(":")[0] == "./alertmanager.yml" for v in mounts), "alertmanager.yml is not mounted"


def one_shot(svc: dict[str, Any]) -> bool:
    """A job that runs to completion (topics create): it has an exit code, not a health."""
    return str(svc.get("restart", "")) == "no"


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if one_shot(svc):
            continue
        check = svc.get("healthcheck") or {}
        assert not check.get("disable") and check.get("test"), f"service '{name}' has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test {check['test']!r}"


def test_every_dependency_waits_for_health(services: dict[str, dict[str, Any]]) -> None:
    """`service_started` lets a service talk to a server that is not up yet; a one-shot job is waited for
    until it exits 0 (it has no health)."""
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must say the condition of each dependency"
        for dep, how in deps.items():
            want = "service_completed_successfully" if one_shot(services[dep]) else "service_healthy"
            assert (how or {}).get("condition") == want, f"{name} -> {dep}: condition must be {want}"


def mounts(svc: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each mount of a service."""
    out = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            out.append((str(vol.get("source", "")), str(vol["target"]), bool(vol.get("read_only"))))
        else:
            source, target, *mode = vol.split(":")
            out.append((source, target, "ro" in mode))
    return out


def test_no_two_services_share_a_volume(services: dict[str, dict[str, Any]]) -> None:
    """State is never shared. A volume may reach several services only as credentials: written by one one-shot
    job (kafka-secrets) and mounted read-only by every other service."""
    users: dict[str, list[tuple[str, bool]]] = {}
    for name, svc in services.items():
        for source, _, ro in mounts(svc):
            if not source.startswith((".", "/", "~")):  # not a file or folder of the checkout
                users.setdefault(source, []).append((name, ro))
    for source, who in users.items():
        if len(who) == 1:
            continue
        writers = [name for name, ro in who if not ro]
        assert len(writers) == 1 and one_shot(services[writers[0]]), \
            f"volume '{source}' is shared by {[n for n, _ in who]}: only a one-shot job may write a shared volume"
    for name, svc in services.items():
        if "build" in svc and not one_shot(svc):
            state = [s for s, t, ro in mounts(svc) if t == "/var/lib/powerplane" and not ro]
            assert state and len(users[state[0]]) == 1, f"{name}: no state volume of its own at PP_STATE_DIR"


def exposed_ports(svc: dict[str, Any]) -> set[int]:
    ports = {int(str(p).split("/")[0]) for p in svc.get("expose") or []}
    return ports | {int(str(p).split(":")[-1].split("/")[0]) for p in svc.get("ports") or []}


def test_every_scrape_target_is_a_service_with_a_metrics_port(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    scraped: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in services, f"job {job['job_name']}: target {target} is not a compose service"
                assert int(port) in exposed_ports(services[host]), f"{target}: {host} does not expose {port}"
                scraped.add(host)
    for name, svc in services.items():
        if "build" in svc and not one_shot(svc):
            words = [str(w) for w in svc["command"]]
            assert "--metrics-addr" in words, f"{name} serves no metrics"
            host, port = words[words.index("--metrics-addr") + 1].rsplit(":", 1)
            assert host == "0.0.0.0", f"{name}: metrics on {host} cannot be scraped from the compose network"
            assert int(port) in exposed_ports(svc) and name in scraped, f"{name}: metrics not scraped"
    targets = [t for am in config["alerting"]["alertmanagers"] for s in am["static_configs"] for t in s["targets"]]
    assert targets == ["alertmanager:9093"]
    mounts = [v.split(":")[:2] for v in services["prometheus"]["volumes"] if isinstance(v, str)]
    assert ["./prometheus", "/etc/prometheus"] in mounts, "prometheus/ is not mounted at /etc/prometheus"


def test_alertmanager_webhooks_reach_the_receiver_service(services: dict[str, dict[str, Any]]) -> None:
    """The example routes deliver somewhere on a fresh `docker compose up`: each webhook host is a network
    alias of a service listening on that port."""
    config = yaml.safe_load(ALERTMANAGER_FILE.read_text())
    urls = [w["url"] for r in config["receivers"] for w in r.get("webhook_configs") or []]
    assert urls
    for url in urls:
        u = urlsplit(url)
        hosts = {n: s for n, s in services.items()
                 if u.hostname in (n, *((s.get("networks") or {}).get("default") or {}).get("aliases", []))}
        assert hosts, f"webhook {url}: no service answers to {u.hostname}"
        (name, svc), = hosts.items()
        assert u.port in exposed_ports(svc), f"webhook {url}: {name} does not listen on {u.port}"
        assert str(u.port) in " ".join(str(w) for w in svc["command"]), f"{name} does not serve port {u.port}"


def test_the_alerts_sink_gets_the_site_file_and_runbook_base(services: dict[str, dict[str, Any]]) -> None:
    env = env_of(services["alerts"])
    assert urlsplit(env["PP_RUNBOOK_BASE_URL"]).scheme == "https", env.get("PP_RUNBOOK_BASE_URL")
    mounted = {v.split(":")[1] for v in services["alerts"]["volumes"] if isinstance(v, str)}
    assert env["PP_SITE_FILE"] in mounted, "the alerts sink's site file (feed and lineup labels) is not mounted"
    assert services["alerts"]["command"][:2] == ["sink", "alertmanager"]


def command_words(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(w) for w in cmd]


def test_powerplane_commands_are_cli_subcommands(pp_services: dict[str, dict[str, Any]]) -> None:
    """Each service's command is one the powerplane CLI accepts, options and all (argparse exits 2 on any
    other)."""
    from ops.cli import build_parser

    parser = build_parser()
    for name, svc in pp_services.items():
        words = command_words(svc)
        assert words, f"service '{name}' has no command"
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"service '{name}': `powerplane {' '.join(words)}` is not a valid command")
