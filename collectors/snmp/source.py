"""Rack PDUs (and UPS / cooling-unit meters) over SNMP v1/v2c: kind "snmp" (see README.md beside this file)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Field

from collectors.base import DeviceOptions, NonEmpty, Source, SourceError
from collectors.snmp import models
from collectors.snmp.client import CODECS, SnmpClient
from collectors.snmp.models import Plan, Reading
from powerplane.schemas import TelemetryFrame

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


class Options(DeviceOptions):
    """A [sources.NAME] table of kind "snmp" (README.md beside this file lists every key)."""

    host: NonEmpty
    port: int = Field(161, ge=1, le=65535)
    community: Annotated[NonEmpty, AfterValidator(_latin1)] = "public"
    version: Literal["1", "2c"] = "2c"
    feed: Literal["A", "B"]
    model: Annotated[str, _one_of(("auto", *models.MODELS))] = "auto"
    module: int = Field(1, ge=1, le=64)
    outlets: bool = True
    temp_points: Annotated[list[str], Field(min_length=1), AfterValidator(_points)] = Field(
        default_factory=lambda: list(models.VERTIV_DEFAULT_POINTS))
    retries: int = Field(1, ge=0, le=10)
    max_varbinds: int = Field(40, ge=1, le=1000)
    rediscover_s: float = Field(3600.0, ge=0.0)
    codec: Annotated[str, _one_of(CODECS)] = "fast"


class SnmpSource(Source):
    """One SNMP agent = one PDU (one feed of one rack). Discovers its tables once, then one GET per poll."""

    kind = "snmp"
    options_model = Options

    default_interval_s = 10.0

    def configure(self, opts: Options) -> None:
        self.host, self.port, self.community, self.version = opts.host, opts.port, opts.community, opts.version
        self.site, self.rack, self.feed, self.model = opts.site, opts.rack, opts.feed, opts.model
        self.module, self.outlets = opts.module, opts.outlets
        self.temp_points: tuple[str, ...] = tuple(opts.temp_points)
        self.retries, self.max_varbinds, self.rediscover_s = opts.retries, opts.max_varbinds, opts.rediscover_s
        self.codec = opts.codec
        # timeout_s (base class) bounds a whole read (the scheduler abandons it then). The 1 + retries tries
        # of a request share 80% of it, so that a dead device ends in this source's own "no response"
        # error, which says more than the scheduler's timeout.
        self.try_timeout_s = max(0.05, 0.8 * self.timeout_s / (self.retries + 1))
        self.client = SnmpClient(self.host, self.port, self.community, self.version, self.try_timeout_s,
                                 self.retries, self.max_varbinds, codec=self.codec)
        self.where = f"snmp {self.host}:{self.port}"
        self.plan: Plan | None = None
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
        if not plan.points:
            answered = [c.name for c in cols if walked.get(c.oid)]
            raise SourceError(f"{self.where}: model {model}: nothing to poll "
                              f"({'; '.join(plan.notes) or 'no rows'}; tables answering: "
                              f"{', '.join(answered) or 'none'})")
        log.info("source '%s' (%s): %s", self.name, self.where, plan.describe())
        for note in plan.notes:
            log.warning("source '%s' (%s): partial walk: %s", self.name, self.where, note)
        return plan

    # ---- one sample ---------------------------------------------------------------------------------
    async def read(self) -> list[TelemetryFrame]:
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

    def _report(self, reading: Reading) -> None:
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
        keys = {p.key for p in reading.problems}
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
