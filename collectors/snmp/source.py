"""Rack PDUs (and UPS / cooling-unit meters), UPS units, transfer switches and environment sensors over SNMP
v1/v2c/v3: kind "snmp" (see README.md beside this file). PDU models publish telemetry frames (models.py);
facility models (facility.py) publish facility readings."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import AfterValidator, Field

from collectors.base import NonEmpty, Published, Source, SourceConfigError, SourceError, SourceOptions
from collectors.snmp import facility, models
from collectors.snmp import v3 as usm
from collectors.snmp.client import CODECS, SnmpClient
from collectors.snmp.facility import FacilityPlan, FacilityValues
from collectors.snmp.models import Plan, Reading
from powerplane.schemas import FacilityReading, TelemetryFrame
from powerplane.site import FEEDS, KIND, Site
from powerplane.validation import Problems, parse_into

P = TypeVar("P", Plan, FacilityPlan)

log = logging.getLogger(__name__)

def _one_of(choices: tuple[str, ...]) -> AfterValidator:
    def check(v: str) -> str:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}, got {v!r}")
        return v
    return AfterValidator(check)


def _latin1(v: str) -> str:
    try:
        v.encode("latin-1")  # what goes on the wire (pysnmp encodes it so too)
    except UnicodeEncodeError:
        raise ValueError(f"must be Latin-1 text, got {v!r}") from None
    return v


def _points(v: list[str]) -> list[str]:
    bad = [p for p in v if p not in models.VERTIV_POINTS]
    if bad:
        raise ValueError(f"must list only {', '.join(models.VERTIV_POINTS)}, got {bad!r}")
    return v


class Options(SourceOptions):
    """A [sources.NAME] table of kind "snmp" (README.md beside this file lists every key)."""

    site: NonEmpty
    host: NonEmpty
    port: int = Field(161, ge=1, le=65535)
    community: Annotated[NonEmpty, AfterValidator(_latin1)] = "public"
    version: Literal["1", "2c", "3"] = "2c"
    # SNMPv3 (USM, authPriv): the user, protocols and where the keys are; the keys themselves never in the file.
    user: NonEmpty | None = None
    auth_protocol: Annotated[str, _one_of(tuple(usm.AUTH_PROTOCOLS))] = "SHA-256"
    priv_protocol: Annotated[str, _one_of(tuple(usm.PRIV_PROTOCOLS))] = "AES-128"
    auth_key_file: NonEmpty | None = None
    auth_key_env: NonEmpty | None = None
    priv_key_file: NonEmpty | None = None
    priv_key_env: NonEmpty | None = None
    context: str = ""  # SNMPv3 context name (snmpsim serves each recording under its own)
    rack: NonEmpty | None = None  # PDU models and transfer switches: the rack
    feed: Literal["A", "B"] | None = None  # PDU models: the feed; UPS models: checked against the lineup's
    lineup: NonEmpty | None = None  # UPS models: the UPS lineup (level id) of the site model
    probes: dict[str, NonEmpty] | None = None  # geist: probe ("internal.1", "temp.2") -> rack id
    model: Annotated[str, _one_of(("auto", *models.MODELS, *facility.FACILITY_MODELS))] = "auto"
    module: int = Field(1, ge=1, le=64)
    outlets: bool = True
    temp_points: Annotated[list[str], Field(min_length=1), AfterValidator(_points)] = Field(
        default_factory=lambda: list(models.VERTIV_DEFAULT_POINTS))
    retries: int = Field(1, ge=0, le=10)
    max_varbinds: int = Field(40, ge=1, le=1000)
    rediscover_s: float = Field(3600.0, ge=0.0)
    codec: Annotated[str, _one_of(CODECS)] | None = None  # default "fast"; SNMPv3 goes through "pysnmp"

    def check(self, p: Problems) -> None:
        if self.probes is not None and self.model not in facility.ENV_MODELS:
            p.add("probes", "only model 'geist' maps probes to racks")
        if self.probes is not None:
            for key in facility.check_probes(list(self.probes)):
                p.add(f"probes.{key}", "must name a probe as internal.<n> or temp.<n>")
        if self.version == "3":
            self._check_v3(p)
        else:
            for key in ("user", "auth_key_file", "auth_key_env", "priv_key_file", "priv_key_env"):
                if getattr(self, key) is not None:
                    p.add(key, 'only for version = "3"')

    def _check_v3(self, p: Problems) -> None:
        if self.user is None:
            p.add("user", 'missing (required for version = "3")')
        if self.codec == "fast":
            p.add("codec", "'fast' speaks SNMP v1/v2c only; SNMPv3 goes through pysnmp (leave codec out)")
        usm.check_keys(self, p)

    def credentials(self) -> usm.Credentials | None:
        if self.version != "3":
            return None
        auth, _ = usm.read_secret(self.auth_key_file, self.auth_key_env)
        priv, _ = usm.read_secret(self.priv_key_file, self.priv_key_env)
        assert self.user is not None and auth is not None and priv is not None  # check() made sure
        return usm.Credentials(self.user, self.auth_protocol, auth, self.priv_protocol, priv, self.context)


def required_keys(model: object) -> tuple[str, ...]:
    """The keys a model needs besides host (PDUs: rack and feed; a UPS its lineup; ...)."""
    if model in facility.UPS_MODELS:
        return ("lineup",)
    if model in facility.ATS_MODELS:
        return ("rack",)
    if model in facility.ENV_MODELS:
        return ("probes",)
    return ("rack", "feed")


def missing_keys(data: Mapping[str, Any], p: Problems) -> None:
    """A required key the table lacks, reported with the others pydantic finds (the model decides which)."""
    model = data.get("model", "auto")
    for key in required_keys(model):
        if data.get(key) is None:
            pdu = model not in facility.FACILITY_MODELS
            p.add(key, "missing (required)" if pdu else f"missing (required for model {model!r})")


def site_problems(opts: Options, site: Site | None, p: Problems) -> None:
    """The source's names checked against the site model, when the collector has one."""
    if site is None:
        return
    if opts.lineup is not None:
        lineups = [site.level_ids[i] for i in site.levels_of_kind("ups").tolist()]
        i = site.level_index.get(opts.lineup)
        if i is None or int(site.level_kind[i]) != KIND["ups"]:
            p.add("lineup", f"{opts.lineup!r} is not a UPS lineup of site '{site.name}' (lineups: "
                            f"{', '.join(lineups) or 'none'})")
        elif opts.feed is not None and FEEDS[int(site.level_feed[i])] != opts.feed:
            p.add("feed", f"lineup '{opts.lineup}' is on feed {FEEDS[int(site.level_feed[i])]}, not {opts.feed}")
    racks = [("rack", opts.rack)] if opts.rack is not None else []
    racks += [(f"probes.{k}", r) for k, r in (opts.probes or {}).items()]
    for key, rack in racks:
        try:
            site.rack_index(rack)
        except KeyError as e:
            p.add(key, str(e.args[0]))


class SnmpSource(Source):
    """One SNMP agent = one PDU (one feed of one rack), one UPS of a lineup, one rack transfer switch or one
    environment monitor. Discovers its tables once, then one GET per poll."""

    kind = "snmp"
    options_model = Options

    default_interval_s = 10.0

    def _validate(self, options: Mapping[str, Any]) -> SourceOptions:
        """The base class's validation, plus the keys the model needs and the names checked against the site
        model, every mistake at once."""
        data = dict(options)
        if "site" not in data and self.ctx.site is not None:
            data["site"] = self.ctx.site.name
        p = Problems(self.path)
        missing_keys(data, p)
        opts = parse_into(Options, data, p)
        if opts is not None:
            opts.check(p)
            site_problems(opts, self.ctx.site, p)
        p.raise_if_any(error=SourceConfigError)
        assert opts is not None
        return opts

    def configure(self, opts: Options) -> None:
        self.host, self.port, self.community, self.version = opts.host, opts.port, opts.community, opts.version
        self.site, self.model = opts.site, opts.model
        self.rack, self.lineup = opts.rack or "", opts.lineup
        self.feed: str = opts.feed or "A"
        self.probes: dict[str, str] = dict(opts.probes or {})
        site = self.ctx.site
        if opts.lineup is not None and site is not None and opts.lineup in site.level_index:
            self.feed = FEEDS[int(site.level_feed[site.level_index[opts.lineup]])]  # the site model says
        self.facility_feed = self.feed if (opts.feed is not None or site is not None) else None
        self.module, self.outlets = opts.module, opts.outlets
        self.temp_points: tuple[str, ...] = tuple(opts.temp_points)
        self.retries, self.max_varbinds, self.rediscover_s = opts.retries, opts.max_varbinds, opts.rediscover_s
        self.codec = opts.codec or ("pysnmp" if opts.version == "3" else "fast")
        # timeout_s (base class) bounds a whole read (the scheduler abandons it then). The 1 + retries tries
        # of a request share 80% of it, so that a dead device ends in this source's own "no response"
        # error, which says more than the scheduler's timeout.
        self.try_timeout_s = max(0.05, 0.8 * self.timeout_s / (self.retries + 1))
        self.client = SnmpClient(self.host, self.port, self.community, self.version, self.try_timeout_s,
                                 self.retries, self.max_varbinds, codec=self.codec, v3=opts.credentials())
        self.where = f"snmp {self.host}:{self.port}"
        self.plan: Plan | None = None
        self.facility_plan: FacilityPlan | None = None
        self.plan_at = 0.0
        self.sys_object_id: models.OID | None = None
        self.problems: list[str] = []  # the last read's partial-data problems (empty when all was fine)
        self.partial_reads = 0  # reads published with at least one problem
        self._warned: set[str] = set()

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        self.client.close()

    # ---- discovery ---------------------------------------------------------------------------------
    async def detect(self) -> str:
        """Which MIB family the agent speaks (model = "auto"): one GETNEXT into each family's subtree."""
        bases = [models.SYS_OBJECT_ID, *(c.oid for c in models.PROBES.values())]
        answers = await self.client.next_(bases)
        sysoid = answers[0][1]
        self.sys_object_id = sysoid if isinstance(sysoid, tuple) else None
        hits = {model: models.prefix_of(o, probe.oid) is not None
                for (model, probe), (o, _raw) in zip(models.PROBES.items(), answers[1:], strict=True)}
        found = models.detect_model(hits)
        if found is None:
            sysoid_text = models.oid_str(self.sys_object_id) if self.sys_object_id else "?"
            raise SourceError(f"{self.where}: no supported PDU table answers (sysObjectID {sysoid_text}; tried "
                              f"{', '.join(p.name for p in models.PROBES.values())})")
        return found

    async def discover(self) -> Plan:
        model = self.model if self.model != "auto" else await self.detect()
        cols = models.walk_columns(model, outlets=self.outlets)
        walked = await self.client.walk([c.oid for c in cols])
        plan = models.make_plan(model, walked, module=self.module, temp_points=self.temp_points,
                                outlets=self.outlets)
        return self._announced(model, cols, walked, plan)

    # ---- one sample ---------------------------------------------------------------------------------
    async def read(self) -> list[Published]:
        if self.model in facility.FACILITY_MODELS:
            return [await self.read_facility()]
        return list(await self.read_pdu())

    async def read_pdu(self) -> list[TelemetryFrame]:
        now = time.monotonic()
        if self.plan is None or (self.rediscover_s > 0 and now - self.plan_at >= self.rediscover_s):
            self.plan, self.plan_at = await self.discover(), now
        plan = self.plan
        answers = await self.client.get([p.oid for p in plan.points])
        reading = models.convert(plan, answers)
        if reading.gone:
            self.plan = None  # the device's tables changed under us: walk again next time
        self._report(reading)
        return [self.to_frame(reading)]

    # ---- facility devices -----------------------------------------------------------------------------
    async def discover_facility(self) -> FacilityPlan:
        cols = facility.walk_columns(self.model)
        walked = await self.client.walk([c.oid for c in cols])
        return self._announced(self.model, cols, walked, facility.make_plan(self.model, walked, probes=self.probes))

    def _announced(self, model: str, cols: Sequence[Any], walked: Mapping[Any, Any], plan: P) -> P:
        """A discovered plan, logged; none at all is this source's error naming the tables that answered."""
        if not plan.points:
            answered = [c.name for c in cols if walked.get(c.oid)]
            raise SourceError(f"{self.where}: model {model}: nothing to poll "
                              f"({'; '.join(plan.notes) or 'no rows'}; tables answering: "
                              f"{', '.join(answered) or 'none'})")
        log.info("source '%s' (%s): %s", self.name, self.where, plan.describe())
        for note in plan.notes:
            log.warning("source '%s' (%s): partial walk: %s", self.name, self.where, note)
        return plan

    async def read_facility(self) -> FacilityReading:
        now = time.monotonic()
        if self.facility_plan is None or (self.rediscover_s > 0 and now - self.plan_at >= self.rediscover_s):
            self.facility_plan, self.plan_at = await self.discover_facility(), now
        plan = self.facility_plan
        values = facility.convert(plan, await self.client.get([p.oid for p in plan.points]))
        if values.gone:
            self.facility_plan = None
        self._report(values)
        kinds: list[str] | None = None
        descr_col = plan.alarm_col
        if descr_col is not None and values.alarms != 0:  # an alarm table to read (or a count it lacks)
            rows = (await self.client.walk([descr_col.oid]))[descr_col.oid]
            kinds = facility.alarm_kinds(rows)
        elif values.alarms == 0:
            kinds = []
        return self.to_facility(plan, values, kinds)

    def to_facility(self, plan: FacilityPlan, v: FacilityValues, kinds: list[str] | None) -> FacilityReading:
        self.seq += 1
        kind = plan.kind
        unit = self.lineup if kind == "ups" else self.rack if kind == "ats" else self.name
        assert unit is not None
        src = v.output_source
        return FacilityReading(
            site=self.site, unit=unit, kind=kind, ts_s=time.time(), interval_s=self.interval_s, seq=self.seq,
            source=self.name, lineup=self.lineup if kind == "ups" else None,
            feed=self.facility_feed if kind == "ups" else None, rack=self.rack if kind == "ats" else None,
            input_voltage_v=v.input_voltage_v if kind != "env" else None,
            input_frequency_hz=v.input_frequency_hz if kind != "env" else None,
            output_load_pct=v.output_load_pct if kind == "ups" else None,
            output_power_w=v.output_power_w if kind != "env" else None, output_source=src,
            on_battery=None if src is None else src == "battery", on_bypass=None if src is None else src == "bypass",
            battery_remaining_s=v.battery_remaining_s, battery_charge_pct=v.battery_charge_pct, alarms=v.alarms,
            alarm_kinds=kinds, racks=list(plan.racks) if kind == "env" else None,
            inlet_c=v.inlet_c if kind == "env" else None, via="poll")

    def _report(self, reading: Reading | FacilityValues) -> None:
        """Raise when nothing usable came back; otherwise log each new problem once and publish."""
        self.problems = [p.message for p in reading.problems]
        if not reading.usable():
            detail = "; ".join(self.problems[:3]) or "every reading is reported as unavailable"
            more = f" (+{len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
            raise SourceError(f"{self.where}: no usable reading: {detail}{more}")
        if not reading.problems:
            if self._warned:
                log.info("source '%s' (%s): all readings valid again", self.name, self.where)
                self._warned.clear()
            return
        self.partial_reads += 1
        keys: set[str] = {p.key for p in reading.problems}
        for p in reading.problems:
            if p.key not in self._warned:
                log.warning("source '%s' (%s): partial read, reported as NaN: %s", self.name, self.where, p.message)
        self._warned = keys  # a problem that clears and comes back is logged again

    def to_frame(self, reading: Reading) -> TelemetryFrame:
        nan = math.nan
        power = [reading.power_w, nan] if self.feed == "A" else [nan, reading.power_w]
        return self.frame(
            self.site, self.rack, pdu_power_w=power, inlet_c=list(reading.inlet_c),
            pdu_phase_current_a=_f32(reading.phase_a), pdu_bank_current_a=_f32(reading.bank_a),
            pdu_outlet_power_w=_f32(reading.outlet_w))


def _f32(values: Sequence[float]) -> np.ndarray[Any, np.dtype[np.float32]] | None:
    """None when the device has no such readings at all (the field is then absent from the frame)."""
    return np.asarray(values, dtype=np.float32) if values else None
