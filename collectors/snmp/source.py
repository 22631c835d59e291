"""Rack PDUs (and UPS / cooling-unit meters) over SNMP v1/v2c: kind "snmp" (see README.md beside this file)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from collectors.base import Source, SourceError
from collectors.snmp import models
from collectors.snmp.client import CODECS, SnmpClient
from collectors.snmp.models import Plan, Reading
from powerplane.schemas import TelemetryFrame

log = logging.getLogger(__name__)

VERSIONS = ("1", "2c")


class SnmpSource(Source):
    """One SNMP agent = one PDU (one feed of one rack). Discovers its tables once, then one GET per poll."""

    kind = "snmp"

    default_interval_s = 10.0

    def configure(self, options: Mapping[str, Any]) -> None:
        self.host = self.opt_str("host")
        self.port = self.opt_int("port", 161, lo=1, hi=65535)
        self.community = self.opt_str("community", "public")
        try:
            self.community.encode("latin-1")  # what goes on the wire (pysnmp encodes it so too)
        except UnicodeEncodeError:
            raise self._bad("community", f"must be Latin-1 text, got {self.community!r}") from None
        version = options.get("version", "2c")
        if version not in VERSIONS:
            raise self._bad("version", f"must be one of {', '.join(repr(v) for v in VERSIONS)}, got {version!r}")
        self.version = str(version)
        self.site = self.site_name()
        self.rack = self.opt_str("rack")
        feed = self.opt_str("feed")
        if feed not in ("A", "B"):
            raise self._bad("feed", f"must be 'A' or 'B', got {feed!r}")
        self.feed = feed
        model = self.opt_str("model", "auto")
        if model != "auto" and model not in models.MODELS:
            raise self._bad("model", f"must be 'auto' or one of {', '.join(models.MODELS)}, got {model!r}")
        self.model = model
        self.module = self.opt_int("module", 1, lo=1, hi=64)
        outlets = options.get("outlets", True)
        if not isinstance(outlets, bool):
            raise self._bad("outlets", f"must be true or false, got {outlets!r}")
        self.outlets = outlets
        points = options.get("temp_points", list(models.VERTIV_DEFAULT_POINTS))
        if (not isinstance(points, list | tuple) or not points
                or not all(isinstance(p, str) and p in models.VERTIV_POINTS for p in points)):
            raise self._bad("temp_points", f"must be a non-empty list of {', '.join(models.VERTIV_POINTS)}, "
                                           f"got {points!r}")
        self.temp_points: tuple[str, ...] = tuple(points)
        self.retries = self.opt_int("retries", 1, lo=0, hi=10)
        self.max_varbinds = self.opt_int("max_varbinds", 40, lo=1, hi=1000)
        self.rediscover_s = self.opt_float("rediscover_s", 3600.0, lo=0.0)
        codec = options.get("codec", "fast")
        if codec not in CODECS:
            raise self._bad("codec", f"must be one of {', '.join(repr(c) for c in CODECS)}, got {codec!r}")
        self.codec = str(codec)
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
