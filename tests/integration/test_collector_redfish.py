"""The redfish collector against real HTTP servers: sushy-static serving the mockup trees under
tests/data/redfish/ (legacy Power/Thermal, newer PowerSubsystem/ThermalSubsystem, broken), plus a small
in-process aiohttp service for authentication, a TLS server, a closed port and a silent socket."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from collectors.base import SourceError, load_source
from collectors.redfish import RedfishSource
from collectors.redfish.client import shared_session_users
from powerplane.schemas import TelemetryFrame
from tests.integration.redfish_server import RedfishServer, free_port

DATA = Path(__file__).resolve().parents[1] / "data" / "redfish"


# ---- helpers -------------------------------------------------------------------------------------
def load(tree: str, rel: str) -> Any:
    return json.loads((DATA / tree / rel / "index.json").read_text())


def opts(url: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "redfish", "url": url, "site": "lab", "rack": "r07", "server": 3, **kw}


def source(url: str, **kw: Any) -> RedfishSource:
    src = load_source("bmc-r07-s3", opts(url, **kw))
    assert isinstance(src, RedfishSource)
    return src


async def read_n(src: RedfishSource, n: int = 1) -> list[TelemetryFrame]:
    await src.start()
    try:
        out: list[TelemetryFrame] = []
        for _ in range(n):
            out.extend(await src.read())
        return out
    finally:
        await src.close()


def read_one(url: str, **kw: Any) -> TelemetryFrame:
    frames = asyncio.run(read_n(source(url, **kw)))
    assert len(frames) == 1
    return frames[0]


def read_error(url: str, **kw: Any) -> str:
    with pytest.raises(SourceError) as ei:
        read_one(url, **kw)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"redfish {url}"), msg
    return msg


def gets(srv: RedfishServer) -> list[str]:
    """The paths the server answered, in order (from sushy-static's request log)."""
    out = []
    for line in srv.log_tail(10**7).splitlines():
        if '"GET ' in line:
            out.append(line.split('"GET ', 1)[1].split(" ", 1)[0])
    return out


def copy_tree(tmp_path: Path, tree: str) -> Path:
    dst = tmp_path / tree
    shutil.copytree(DATA / tree, dst)
    return dst


def edit(root: Path, rel: str, fn: Any) -> None:
    p = root / rel / "index.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc, indent=4))


def assert_frame(fr: TelemetryFrame, power_w: float, inlets: list[float]) -> None:
    assert (fr.site, fr.rack, fr.source) == ("lab", "r07", "bmc-r07-s3")
    assert fr.servers is not None and fr.server_power_w is not None
    assert fr.servers.tolist() == [3]
    assert fr.server_power_w.dtype == np.float32
    assert fr.server_power_w.tolist() == [np.float32(power_w)]
    assert len(fr.inlet_c) == len(inlets)
    for got, want in zip(fr.inlet_c, inlets, strict=True):
        assert (math.isnan(got) and math.isnan(want)) or got == want, (fr.inlet_c, inlets)
    assert fr.power_w.size == 0 and all(math.isnan(x) for x in fr.pdu_power_w)
    back = TelemetryFrame.decode(fr.encode())  # what a consumer sees passes the schema's checks
    assert back.server_power_w is not None and back.server_power_w.tolist() == fr.server_power_w.tolist()


@pytest.fixture(scope="module")
def legacy() -> Iterator[RedfishServer]:
    with RedfishServer(DATA / "legacy") as srv:
        yield srv


@pytest.fixture(scope="module")
def subsystems() -> Iterator[RedfishServer]:
    with RedfishServer(DATA / "subsystems") as srv:
        yield srv


@pytest.fixture(scope="module")
def broken() -> Iterator[RedfishServer]:
    with RedfishServer(DATA / "broken") as srv:
        yield srv


# ---- values equal the mockup JSON ------------------------------------------------------------------
def test_legacy_power_and_thermal(legacy: RedfishServer) -> None:
    power = load("legacy", "Chassis/1U/Power")["PowerControl"][0]["PowerConsumedWatts"]
    temps = load("legacy", "Chassis/1U/Thermal")["Temperatures"]
    inlets = [t["ReadingCelsius"] for t in temps if t["PhysicalContext"] == "Intake" or "Inlet" in t["Name"]]
    assert (power, inlets) == (412, [23.5, 24])  # the mockup is what we think it is
    assert_frame(read_one(legacy.url), power, inlets)


def test_newer_schema_power_and_thermal(subsystems: RedfishServer) -> None:
    power = load("subsystems", "Chassis/Chassis_0/EnvironmentMetrics")["PowerWatts"]["Reading"]
    tm = load("subsystems", "Chassis/Chassis_0/ThermalSubsystem/ThermalMetrics")["TemperatureReadingsCelsius"]
    inlets = [t["Reading"] for t in tm if t["PhysicalContext"] == "Intake"]
    gpu = load("subsystems", "Chassis/GPU_SXM_1/EnvironmentMetrics")["PowerWatts"]["Reading"]
    assert (power, inlets, gpu) == (1834.5, [22.25, 22.75], 612.5)
    # GPU_SXM_1 has power data too but is contained in Chassis_0: counted once, through Chassis_0.
    assert_frame(read_one(subsystems.url), power, inlets)


def test_newer_schema_psu_sum_and_sensors(tmp_path: Path) -> None:
    """Without EnvironmentMetrics, power is the sum of the present PSUs' InputPowerWatts; without
    ThermalSubsystem, inlets come from the Sensors collection."""
    root = copy_tree(tmp_path, "subsystems")

    def drop(doc: dict[str, Any]) -> None:
        del doc["EnvironmentMetrics"], doc["ThermalSubsystem"]

    edit(root, "Chassis/Chassis_0", drop)
    psus = "Chassis/Chassis_0/PowerSubsystem/PowerSupplies"
    power = sum(load("subsystems", f"{psus}/PSU{i}/Metrics")["InputPowerWatts"]["Reading"] for i in (0, 1))
    sensors = [load("subsystems", f"Chassis/Chassis_0/Sensors/InletTemp{i}")["Reading"] for i in (0, 1)]
    assert load("subsystems", f"{psus}/PSU2")["Status"]["State"] == "Absent"
    with RedfishServer(root) as srv:
        assert_frame(read_one(srv.url), power, sensors)


def test_thermal_metrics_failing_falls_back_to_sensors(tmp_path: Path) -> None:
    """ThermalMetrics is linked but answers 404: the inlet sensors are found in the Sensors collection,
    and later reads GET only EnvironmentMetrics and the two inlet Sensors."""
    root = copy_tree(tmp_path, "subsystems")
    shutil.rmtree(root / "Chassis/Chassis_0/ThermalSubsystem/ThermalMetrics")
    sensors = [load("subsystems", f"Chassis/Chassis_0/Sensors/InletTemp{i}")["Reading"] for i in (0, 1)]
    with RedfishServer(root) as srv:
        src = source(srv.url)

        async def go() -> tuple[list[TelemetryFrame], list[str]]:
            await src.start()
            try:
                first = await src.read()
                mid = len(gets(srv))
                return first + await src.read(), gets(srv)[mid:]
            finally:
                await src.close()

        frames, later = asyncio.run(go())
        assert "/redfish/v1/Chassis/Chassis_0/ThermalSubsystem/ThermalMetrics" in gets(srv)
    for f in frames:
        assert_frame(f, 1834.5, sensors)
    assert sorted(later) == ["/redfish/v1/Chassis/Chassis_0/EnvironmentMetrics",
                             "/redfish/v1/Chassis/Chassis_0/Sensors/InletTemp0",
                             "/redfish/v1/Chassis/Chassis_0/Sensors/InletTemp1"]


def test_chassis_option_and_cached_urls(legacy: RedfishServer) -> None:
    """An explicit chassis; after discovery each read GETs only the cached Power and Thermal URLs."""
    src = source(legacy.url, chassis="1U")
    before = len(gets(legacy))

    async def go() -> tuple[list[TelemetryFrame], list[str]]:
        await src.start()
        try:
            first = await src.read()
            mid = len(gets(legacy))
            second = await src.read()
            return first + second, gets(legacy)[mid:]
        finally:
            await src.close()

    frames, later = asyncio.run(go())
    assert len(gets(legacy)) > before
    assert sorted(later) == ["/redfish/v1/Chassis/1U/Power", "/redfish/v1/Chassis/1U/Thermal"]
    assert [f.seq for f in frames] == [1, 2]
    for f in frames:
        assert_frame(f, 412, [23.5, 24])


def test_rediscovers_on_404(tmp_path: Path) -> None:
    """The BMC renames its chassis between reads: the cached Power URL answers 404, the source
    rediscovers from /redfish/v1 within the same read and reports the new chassis' values."""
    root = copy_tree(tmp_path, "legacy")
    with RedfishServer(root) as srv:
        src = source(srv.url)

        async def go() -> list[TelemetryFrame]:
            await src.start()
            try:
                first = await src.read()
                shutil.move(root / "Chassis" / "1U", root / "Chassis" / "2U")
                for p in root.rglob("index.json"):
                    p.write_text(p.read_text().replace("/Chassis/1U", "/Chassis/2U").replace('"1U"', '"2U"'))
                edit(root, "Chassis/2U/Power", lambda d: d["PowerControl"][0].update(PowerConsumedWatts=455))
                return first + await src.read()
            finally:
                await src.close()

        first, second = asyncio.run(go())
        assert_frame(first, 412, [23.5, 24])
        assert_frame(second, 455, [23.5, 24])
        assert "/redfish/v1/Chassis/1U/Power" in gets(srv)  # the 404 that triggered rediscovery


# ---- broken BMCs -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("chassis", "path", "what"), [
    ("NA", "/redfish/v1/Chassis/NA/Power", "PowerControl[0].PowerConsumedWatts is 'n/a' (str), expected a number"),
    ("NoJSON", "/redfish/v1/Chassis/NoJSON/Power", "not JSON"),
    ("Missing", "/redfish/v1/Chassis/Missing/Power", "PowerControl[0].PowerConsumedWatts missing"),
    ("Null", "/redfish/v1/Chassis/Null/EnvironmentMetrics", "PowerWatts.Reading is null"),
    ("Dangling", "/redfish/v1/Chassis/Dangling/Power", "HTTP 404"),
])
def test_broken_power_is_a_source_error(broken: RedfishServer, chassis: str, path: str, what: str) -> None:
    msg = read_error(broken.url, chassis=chassis)
    assert f"GET {path}: " in msg and what in msg, msg


def test_broken_default_discovery_and_unknown_chassis(broken: RedfishServer) -> None:
    msg = read_error(broken.url)
    assert "/redfish/v1/Chassis/" in msg, msg
    msg = read_error(broken.url, chassis="Nope")
    assert "GET /redfish/v1/Chassis: no chassis 'Nope' among the members (NA, NoJSON," in msg, msg


def test_missing_chassis_members(tmp_path: Path) -> None:
    root = copy_tree(tmp_path, "legacy")
    edit(root, "Chassis", lambda d: d.pop("Members"))
    with RedfishServer(root) as srv:
        msg = read_error(srv.url)
    assert msg == f"redfish {srv.url}: GET /redfish/v1/Chassis: 'Members' missing (not a Redfish collection)"


def test_partial_thermal_is_nan_and_warned_once(broken: RedfishServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="collectors.redfish")
    frames = asyncio.run(read_n(source(broken.url, chassis="ThermalBad"), 3))
    for f in frames:
        assert_frame(f, 300, [math.nan, 26.0])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "/redfish/v1/Chassis/ThermalBad/Thermal: Temperatures[0].ReadingCelsius is null" in warnings[0]

    caplog.clear()
    n0 = len(gets(broken))
    frames = asyncio.run(read_n(source(broken.url, chassis="ThermalGone"), 3))
    for f in frames:
        assert_frame(f, 280, [math.nan])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "GET /redfish/v1/Chassis/ThermalGone/ThermalSubsystem: HTTP 404" in warnings[0], warnings
    # A dangling thermal link does not make every read rediscover from the root: only the thermal
    # planning is retried (one GET per read) next to the power reading.
    later = gets(broken)[n0:]
    assert later.count("/redfish/v1") == 1, later
    assert later.count("/redfish/v1/Chassis/ThermalGone/ThermalSubsystem") == 3, later


# ---- transport failures: clear and bounded by timeout_s -------------------------------------------------
def test_http_404_base_path(legacy: RedfishServer) -> None:
    msg = read_error(f"{legacy.url}/nope", timeout_s=2.0)
    assert msg == f"redfish {legacy.url}/nope: GET /redfish/v1: HTTP 404 Not Found"


def test_closed_port_fails_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    msg = read_error(url, timeout_s=2.0)
    assert time.monotonic() - t0 < 5.0  # refused at once, not hanging until some long default
    assert msg.startswith(f"redfish {url}: GET /redfish/v1: cannot connect"), msg


def test_silent_server_times_out_within_timeout_s() -> None:
    """A socket that accepts connections but never answers (a hung BMC web server)."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        url = f"http://127.0.0.1:{lsock.getsockname()[1]}"
        t0 = time.monotonic()
        msg = read_error(url, timeout_s=1.0)
        elapsed = time.monotonic() - t0
    assert elapsed < 5.0, elapsed  # it gives up on its own (the message says at 0.95 s), never hangs
    assert msg.startswith(f"redfish {url}: GET /redfish/v1: no ") and "within 0.95 s" in msg, msg


def test_tls_verification(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl CLI not installed: apt-get install openssl "
                    "(`make test` does: scripts/ensure-debian-packages)")
    cert, key = tmp_path / "bmc.crt", tmp_path / "bmc.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bmc",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with RedfishServer(DATA / "legacy", cert=cert, key=key) as srv:
        assert srv.url.startswith("https://")
        msg = read_error(srv.url, timeout_s=3.0)
        assert "TLS certificate not trusted" in msg and "verify_tls = false" in msg, msg
        assert_frame(read_one(srv.url, verify_tls=False), 412, [23.5, 24])
        assert_frame(read_one(srv.url, ca_file=str(cert)), 412, [23.5, 24])


# ---- authentication and the shared session (an in-process aiohttp Redfish service) ----------------------
class AuthService:
    """Serves a mockup tree; everything but the service root needs basic auth or a session token."""

    def __init__(self, tree: Path, user: str, password: str) -> None:
        self.tree, self.user, self.password = tree, user, password
        self.tokens: dict[str, str] = {}  # token -> session path
        self.logins = 0
        self.deleted: list[str] = []
        self.app = web.Application()
        self.app.router.add_post("/redfish/v1/SessionService/Sessions", self.login)
        self.app.router.add_delete("/redfish/v1/SessionService/Sessions/{id}", self.logout)
        self.app.router.add_get("/{tail:.*}", self.get)

    async def login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"UserName": self.user, "Password": self.password}:
            return web.json_response({"error": "bad credentials"}, status=401)
        self.logins += 1
        token = secrets.token_hex(8)
        path = f"/redfish/v1/SessionService/Sessions/{self.logins}"
        self.tokens[token] = path
        return web.json_response({"@odata.id": path, "UserName": self.user}, status=201,
                                 headers={"X-Auth-Token": token, "Location": path})

    async def logout(self, request: web.Request) -> web.Response:
        token = request.headers.get("X-Auth-Token", "")
        if self.tokens.get(token) != request.path:
            return web.json_response({}, status=401)
        del self.tokens[token]
        self.deleted.append(request.path)
        return web.Response(status=204)

    async def get(self, request: web.Request) -> web.Response:
        path = request.path.rstrip("/")
        if path != "/redfish/v1":
            auth = request.headers.get("Authorization", "")
            import base64

            basic_ok = auth == "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if not basic_ok and request.headers.get("X-Auth-Token") not in self.tokens:
                return web.json_response({"error": "unauthorized"}, status=401)
        f = self.tree / path.removeprefix("/redfish/v1").lstrip("/") / "index.json"
        if not path.startswith("/redfish/v1") or not f.is_file():
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(body=f.read_bytes(), content_type="application/json")

    async def __aenter__(self) -> str:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def test_session_auth_relogin_and_logout() -> None:
    svc = AuthService(DATA / "legacy", "ops", "s3cret")

    async def go() -> None:
        async with svc as url:
            src = source(url, username="ops", password="s3cret", auth="session")
            await src.start()
            assert_frame((await src.read())[0], 412, [23.5, 24])
            assert svc.logins == 1
            svc.tokens.clear()  # the BMC expired our session: 401, log in again, same read succeeds
            assert_frame((await src.read())[0], 412, [23.5, 24])
            assert svc.logins == 2
            await src.close()
            assert svc.deleted == ["/redfish/v1/SessionService/Sessions/2"] and not svc.tokens

            bad = source(url, username="ops", password="wrong", auth="session")
            with pytest.raises(SourceError, match=r"POST /redfish/v1/SessionService/Sessions: session login: "
                                                  r"HTTP 401 Unauthorized \(check username/password\)"):
                await read_n(bad)

    asyncio.run(go())


def test_basic_auth_and_shared_session() -> None:
    svc = AuthService(DATA / "legacy", "ops", "s3cret")

    async def go() -> None:
        async with svc as url:
            a = source(url, username="ops", password="s3cret")
            b = source(url, username="ops", password="s3cret", server=4)
            await a.start()
            await b.start()
            assert shared_session_users() == 2
            assert a._client is not None and b._client is not None and a._client.session is b._client.session
            fa, fb = await asyncio.gather(a.read(), b.read())
            assert_frame(fa[0], 412, [23.5, 24])
            assert fb[0].servers is not None and fb[0].servers.tolist() == [4]
            session = a._client.session
            await a.close()
            await b.close()
            assert shared_session_users() == 0 and session.closed
            assert svc.logins == 0

            msg = ""
            try:
                await read_n(source(url, username="ops", password="nope"))
            except SourceError as e:
                msg = str(e)
            assert msg == f"redfish {url}: GET /redfish/v1/Chassis: HTTP 401 Unauthorized (check username/password)"

    asyncio.run(go())
