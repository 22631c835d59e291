"""Redfish BMCs as a telemetry source: server input power and inlet temperatures (see README.md here).

One source is one BMC. The first read discovers which chassis carry power data and which resources to
poll, by following @odata.id links from /redfish/v1; later reads GET only those resources (one to a
few requests per BMC) until one answers 404, which triggers a new discovery.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import numpy as np
from pydantic import AfterValidator, Field

from collectors.base import DeviceOptions, NonEmpty, Source, SourceError
from collectors.redfish import extract as ex
from collectors.redfish.client import ROOT, BmcClient, NotFound, acquire_session, one_line, release_session
from powerplane.schemas import TelemetryFrame
from powerplane.validation import Problems

log = logging.getLogger(__name__)
T = TypeVar("T")

POWER_SOURCES = {
    "environment": "EnvironmentMetrics.PowerWatts",
    "psu": "PowerSubsystem power supplies' InputPowerWatts (sum)",
    "power": "Power.PowerControl PowerConsumedWatts",
}
THERMAL_SOURCES = {
    "thermal_metrics": "ThermalSubsystem/ThermalMetrics",
    "sensors": "Sensors",
    "thermal": "Thermal.Temperatures",
    "none": "no inlet sensor",
}


@dataclass
class PowerPlan:
    kind: str  # a key of POWER_SOURCES
    paths: list[str]  # the resources to GET each read


@dataclass
class ThermalPlan:
    kind: str  # a key of THERMAL_SOURCES
    paths: list[str]
    count: int  # inlet sensors found at discovery: NaN this many when the resource fails


@dataclass
class ChassisPlan:
    id: str
    path: str
    doc: dict[str, Any]
    power: PowerPlan
    thermal: ThermalPlan | None = None  # None until planned (planning is retried each read until it works)


def _base_url(raw: str) -> str:
    """scheme://host[:port][/prefix], without a trailing /redfish/v1 (the client appends it)."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"must be an http:// or https:// base URL such as https://10.0.0.5, got {raw!r}")
    path = parts.path.rstrip("/")
    if path.endswith(ROOT):
        path = path[: -len(ROOT)]
    return f"{parts.scheme}://{parts.netloc}{path}"


class Options(DeviceOptions):
    """A [sources.NAME] table of kind "redfish" (README.md beside this file lists every key)."""

    url: Annotated[str, AfterValidator(_base_url)]
    username: NonEmpty | None = None
    password: NonEmpty | None = None
    auth: Literal["basic", "session"] = "basic"
    verify_tls: bool = True
    ca_file: NonEmpty | None = None
    server: int = Field(ge=0, le=65535)
    chassis: NonEmpty | None = None

    def check(self, p: Problems) -> None:
        if self.password is not None and self.username is None:
            p.add("username", "required when 'password' is set")
        if self.username is not None and self.password is None:
            p.add("password", "required when 'username' is set")
        if self.ca_file is not None and not self.verify_tls:
            p.add("ca_file", "makes no sense with verify_tls = false")


class RedfishSource(Source):
    """One BMC: the chassis input power of one server and its inlet temperatures."""

    kind = "redfish"
    options_model = Options

    default_interval_s = 10.0

    def configure(self, opts: Options) -> None:
        self.url, self.username, self.password, self.auth = opts.url, opts.username, opts.password, opts.auth
        self.verify_tls, self.ca_file = opts.verify_tls, opts.ca_file
        self.site, self.rack, self.server, self.chassis_id = opts.site, opts.rack, opts.server, opts.chassis
        # A read gives up a little before timeout_s, so that its error (naming the resource that did not
        # answer) reaches the scheduler before the scheduler's own timeout abandons the read anonymously.
        self.budget_s = 0.95 * self.timeout_s
        self._client: BmcClient | None = None
        self._plans: list[ChassisPlan] | None = None
        self._memo: dict[str, dict[str, Any]] = {}  # documents fetched during discovery (kept across timeouts)
        self._stale = False
        self._thermal_note: str | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._client is not None:
            return
        tls: bool | ssl.SSLContext = self.verify_tls
        if self.ca_file is not None:
            try:
                tls = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as e:
                raise self.config_error("ca_file", f"cannot be loaded: {e}") from None
        session = await acquire_session()
        self._client = BmcClient(session, self.url, timeout_s=self.budget_s, tls=tls, username=self.username,
                                 password=self.password, auth=self.auth)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await client.logout()
        finally:
            await release_session()

    async def read(self) -> list[TelemetryFrame]:
        if self._client is None:
            await self.start()
        client = self._client
        assert client is not None
        try:
            async with asyncio.timeout(self.budget_s):
                return [await self._read_once(client)]
        except TimeoutError:
            if not client.inflight:  # time spent waiting for the event loop, not for the BMC
                raise SourceError(f"redfish {self.url}: no complete answer within {self.budget_s:.3g} s (no request "
                                  "in flight: the collector's event loop is overloaded)") from None
            waiting = ", ".join(sorted(client.inflight))
            raise SourceError(f"redfish {self.url}: GET {one_line(waiting, 200)}: no complete answer within "
                              f"{self.budget_s:.3g} s") from None

    # ---- one read ------------------------------------------------------------------------------
    async def _read_once(self, client: BmcClient) -> TelemetryFrame:
        if self._plans is None or self._stale:
            self._plans = await self._discover(client)
        try:
            power, inlets, notes = await self._sample(client, self._plans)
        except NotFound as e:
            log.info("%s; rediscovering", e)
            self._plans = None
            self._memo.clear()
            self._plans = await self._discover(client)
            power, inlets, notes = await self._sample(client, self._plans)
        if all(p.thermal is not None for p in self._plans):
            self._memo.clear()  # discovery complete: from now on every GET is fresh
        self._report_thermal(notes)
        return self.frame(self.site, self.rack, servers=np.array([self.server], np.uint16),
                          server_power_w=np.array([power], np.float32), inlet_c=inlets)

    def _report_thermal(self, notes: list[str]) -> None:
        """Partial thermal data: warn once per change of what is wrong, and once when it is fixed."""
        note = "; ".join(notes) if notes else None
        if note != self._thermal_note:
            if note is not None:
                log.warning("source %s: inlet temperatures incomplete (missing ones are NaN): %s", self.name, note)
            else:
                log.info("source %s: inlet temperatures complete again", self.name)
        self._thermal_note = note

    async def _sample(self, client: BmcClient, plans: list[ChassisPlan]) -> tuple[float, list[float], list[str]]:
        results = await asyncio.gather(*(self._read_power(client, p) for p in plans),
                                       *(self._read_thermal(client, p) for p in plans), return_exceptions=True)
        power_results, thermal_results = results[: len(plans)], results[len(plans):]
        for r in results:  # programming errors are not device errors: let them through as they are
            if isinstance(r, BaseException) and not isinstance(r, SourceError):
                raise r
        errors = [r for r in power_results if isinstance(r, SourceError)]
        if errors:
            raise next((e for e in errors if isinstance(e, NotFound)), errors[0])
        total = 0.0
        for r in power_results:
            assert isinstance(r, float)
            total += r
        inlets: list[float] = []
        notes: list[str] = []
        for t in thermal_results:
            assert isinstance(t, tuple)
            inlets.extend(t[0])
            notes.extend(t[1])
        return total, inlets, notes

    async def _read_power(self, client: BmcClient, ch: ChassisPlan) -> float:
        pp = ch.power
        if pp.kind == "psu":
            docs = await asyncio.gather(*(client.get(p) for p in pp.paths))
            return sum(self._ex(client, p, ex.psu_input_watts, d) for p, d in zip(pp.paths, docs, strict=True))
        path = pp.paths[0]
        doc = await client.get(path)
        fn = ex.environment_power_watts if pp.kind == "environment" else ex.power_control_watts
        return self._ex(client, path, fn, doc)

    async def _read_thermal(self, client: BmcClient, ch: ChassisPlan) -> tuple[list[float], list[str]]:
        """Inlet readings of one chassis; never raises a SourceError (thermal data is optional)."""
        try:
            if ch.thermal is None:
                ch.thermal = await self._plan_thermal(client, ch)
            tp = ch.thermal
            if tp.kind == "none":
                return [], []
            if tp.kind == "sensors":
                values, notes = await self._read_sensors(client, tp.paths)
            else:
                path = tp.paths[0]
                doc = await client.get(path)
                fn = ex.thermal_metrics_inlets if tp.kind == "thermal_metrics" else ex.thermal_inlets
                values, raw = self._ex(client, path, fn, doc)
                notes = [f"redfish {client.url}: GET {path}: {n}" for n in raw]
                if not values:
                    self._stale = True
                    raise client.fail(path, "no inlet sensor any more")
            return values, notes
        except SourceError as e:
            if isinstance(e, NotFound) and ch.thermal is not None:
                self._stale = True  # a planned resource is gone: rediscover on the next read
            # (a chassis whose thermal planning failed keeps ch.thermal None: planning is retried next read)
            n = ch.thermal.count if ch.thermal is not None else 1
            return [math.nan] * max(n, 1), [str(e)]

    async def _read_sensors(self, client: BmcClient, paths: list[str]) -> tuple[list[float], list[str]]:
        results = await asyncio.gather(*(client.get(p) for p in paths), return_exceptions=True)
        values: list[float] = []
        notes: list[str] = []
        for path, r in zip(paths, results, strict=True):
            if isinstance(r, NotFound):
                self._stale = True
            if isinstance(r, SourceError):
                values.append(math.nan)
                notes.append(str(r))
                continue
            if isinstance(r, BaseException):
                raise r
            v, raw = self._ex(client, path, ex.sensor_temperature, r)
            values.append(v)
            notes.extend(f"redfish {client.url}: GET {path}: {n}" for n in raw)
        return values, notes

    # ---- discovery -----------------------------------------------------------------------------
    async def _discover(self, client: BmcClient) -> list[ChassisPlan]:
        self._stale = False
        try:
            return await self._discover_chassis(client)
        except NotFound:
            self._memo.clear()  # a link we followed is gone: start from the root next time
            raise

    async def _get(self, client: BmcClient, path: str) -> dict[str, Any]:
        return await client.get(path, self._memo)

    async def _get_all(self, client: BmcClient, paths: list[str]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._get(client, p) for p in paths)))

    def _ex(self, client: BmcClient, path: str, fn: Callable[..., T], *args: Any) -> T:
        """Run an extractor; its ExtractError becomes a SourceError naming the BMC and the path."""
        try:
            return fn(*args)
        except ex.ExtractError as e:
            raise client.fail(path, str(e)) from None

    def _link(self, client: BmcClient, path: str, doc: dict[str, Any], key: str) -> str | None:
        ref = self._ex(client, path, ex.link, doc, key)
        return None if ref is None else client.path_of(ref)

    async def _discover_chassis(self, client: BmcClient) -> list[ChassisPlan]:
        root = await self._get(client, ROOT)
        coll_path = self._link(client, ROOT, root, "Chassis")
        if coll_path is None:
            raise client.fail(ROOT, "service root has no 'Chassis' link")
        coll = await self._get(client, coll_path)
        paths = [client.path_of(p) for p in self._ex(client, coll_path, ex.members, coll)]
        if not paths:
            raise client.fail(coll_path, "Chassis collection has no members")
        names = ", ".join(ex.last_segment(p) for p in paths)
        if self.chassis_id is not None:
            chosen = [p for p in paths if ex.last_segment(p) == self.chassis_id]
            if not chosen:  # the option may name the chassis by its Id rather than its path segment
                docs = await self._get_all(client, paths)
                chosen = [p for p, d in zip(paths, docs, strict=True) if d.get("Id") == self.chassis_id]
            if not chosen:
                raise client.fail(coll_path, f"no chassis {self.chassis_id!r} among the members ({names})")
            doc = await self._get(client, chosen[0])
            plan = await self._plan_power(client, chosen[0], doc)
            if plan is None:
                raise client.fail(chosen[0], "no power data (EnvironmentMetrics.PowerWatts, PowerSubsystem power "
                                             "supply metrics or Power.PowerControl)")
            plans = [ChassisPlan(ex.last_segment(chosen[0]), chosen[0], doc, plan)]
        else:
            plans = await self._discover_default(client, paths)
            if not plans:
                raise client.fail(coll_path, f"no chassis with power data among the members ({names})")
        for p in plans:
            log.info("redfish %s: chassis %s: power from %s (%s)", self.url, p.id, POWER_SOURCES[p.power.kind],
                     ", ".join(p.power.paths))
        return plans

    async def _discover_default(self, client: BmcClient, paths: list[str]) -> list[ChassisPlan]:
        """Every member with power data, except those contained (Links.ContainedBy, at any depth) in another
        member with power data: a GPU or board chassis inside a server would otherwise be counted twice."""
        docs = dict(zip(paths, await self._get_all(client, paths), strict=True))
        parent: dict[str, str] = {}
        for p, d in docs.items():
            up = self._ex(client, p, ex.links_link, d, "ContainedBy")
            if up is not None and client.path_of(up) in docs and client.path_of(up) != p:
                parent[p] = client.path_of(up)

        def ancestors(p: str) -> list[str]:
            out: list[str] = []
            while p in parent and parent[p] not in out and parent[p] != p:
                p = parent[p]
                out.append(p)
            return out

        chosen: list[ChassisPlan] = []
        by_depth: dict[int, list[str]] = {}
        for p in paths:
            by_depth.setdefault(len(ancestors(p)), []).append(p)
        for depth in sorted(by_depth):
            taken = {c.path for c in chosen}
            level = [p for p in by_depth[depth] if not taken.intersection(ancestors(p))]
            found = await asyncio.gather(*(self._plan_power(client, p, docs[p]) for p in level))
            chosen.extend(ChassisPlan(ex.last_segment(p), p, docs[p], plan)
                          for p, plan in zip(level, found, strict=True) if plan is not None)
        return chosen

    async def _plan_power(self, client: BmcClient, path: str, doc: dict[str, Any]) -> PowerPlan | None:
        """Newest schema first: EnvironmentMetrics.PowerWatts, then PowerSubsystem PSU metrics, then Power."""
        env = self._link(client, path, doc, "EnvironmentMetrics")
        if env is not None:
            em = await self._get(client, env)
            if ex.has_excerpt(em, "PowerWatts"):
                return PowerPlan("environment", [env])
        sub = self._link(client, path, doc, "PowerSubsystem")
        if sub is not None:
            metrics = await self._plan_psus(client, sub)
            if metrics:
                return PowerPlan("psu", metrics)
        pw = self._link(client, path, doc, "Power")
        if pw is not None:
            pd = await self._get(client, pw)
            if "PowerControl" in pd:
                return PowerPlan("power", [pw])
        return None

    async def _plan_psus(self, client: BmcClient, sub: str) -> list[str]:
        """The Metrics resources of every present power supply, if all of them report InputPowerWatts."""
        sd = await self._get(client, sub)
        coll = self._link(client, sub, sd, "PowerSupplies")
        if coll is None:
            return []
        psu_paths = [client.path_of(p) for p in self._ex(client, coll, ex.members, await self._get(client, coll))]
        metrics: list[str] = []
        for p, d in zip(psu_paths, await self._get_all(client, psu_paths), strict=True):
            if ex.state(d) in ex.ABSENT_STATES:
                continue
            m = self._link(client, p, d, "Metrics")
            if m is None:
                return []  # a present supply we cannot read: the sum would be short
            metrics.append(m)
        mdocs = await self._get_all(client, metrics)
        return metrics if all(ex.has_excerpt(md, "InputPowerWatts") for md in mdocs) else []

    async def _plan_thermal(self, client: BmcClient, ch: ChassisPlan) -> ThermalPlan:
        """Newest schema first: ThermalMetrics, then the Sensors collection, then Thermal."""
        plan = await self._find_thermal(client, ch.path, ch.doc)
        if plan.kind == "none":
            log.warning("redfish %s: chassis %s: no inlet temperature sensor (ThermalMetrics, Sensors, Thermal); "
                        "its frames carry no inlet_c", self.url, ch.id)
        else:
            log.info("redfish %s: chassis %s: %d inlet sensor(s) from %s", self.url, ch.id, plan.count,
                     THERMAL_SOURCES[plan.kind])
        return plan

    async def _find_thermal(self, client: BmcClient, path: str, doc: dict[str, Any]) -> ThermalPlan:
        """The first of ThermalMetrics, Sensors, Thermal that has inlet sensors. One that fails (HTTP error,
        garbage) is skipped; if none has inlet sensors and one failed, that failure is raised (the read
        reports NaN and planning is tried again next read)."""
        first_error: SourceError | None = None
        for finder in (self._find_thermal_metrics, self._find_sensors, self._find_thermal_resource):
            try:
                plan = await finder(client, path, doc)
            except SourceError as e:
                first_error = first_error or e
                continue
            if plan is not None:
                return plan
        if first_error is not None:
            raise first_error
        return ThermalPlan("none", [], 0)

    async def _find_thermal_metrics(self, client: BmcClient, path: str, doc: dict[str, Any]) -> ThermalPlan | None:
        ts = self._link(client, path, doc, "ThermalSubsystem")
        if ts is None:
            return None
        tm = self._link(client, ts, await self._get(client, ts), "ThermalMetrics")
        if tm is None:
            return None
        values, _ = self._ex(client, tm, ex.thermal_metrics_inlets, await self._get(client, tm))
        return ThermalPlan("thermal_metrics", [tm], len(values)) if values else None

    async def _find_sensors(self, client: BmcClient, path: str, doc: dict[str, Any]) -> ThermalPlan | None:
        sn = self._link(client, path, doc, "Sensors")
        if sn is None:
            return None
        paths = [client.path_of(p) for p in self._ex(client, sn, ex.members, await self._get(client, sn))]
        got = await asyncio.gather(*(self._get(client, p) for p in paths), return_exceptions=True)
        for r in got:
            if isinstance(r, BaseException) and not isinstance(r, SourceError):
                raise r
        if paths and all(isinstance(r, SourceError) for r in got):
            err = got[0]
            assert isinstance(err, SourceError)
            raise err
        # One unreadable sensor among many does not hide the inlet sensors that answered.
        intake = [p for p, r in zip(paths, got, strict=True)
                  if isinstance(r, dict) and ex.is_intake_temperature_sensor(r)]
        return ThermalPlan("sensors", intake, len(intake)) if intake else None

    async def _find_thermal_resource(self, client: BmcClient, path: str, doc: dict[str, Any]) -> ThermalPlan | None:
        th = self._link(client, path, doc, "Thermal")
        if th is None:
            return None
        values, _ = self._ex(client, th, ex.thermal_inlets, await self._get(client, th))
        return ThermalPlan("thermal", [th], len(values)) if values else None
