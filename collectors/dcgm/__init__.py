"""GPU telemetry scraped from NVIDIA dcgm-exporter's Prometheus endpoint (see README.md beside this file)."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from pydantic import AfterValidator, Field

from collectors.base import DeviceOptions, Indices, Source, SourceError
from powerplane.schemas import TelemetryFrame

log = logging.getLogger("powerplane.collectors.dcgm")

MAX_PAGE_BYTES = 16 << 20


@dataclass(frozen=True)
class Metric:
    field: str  # TelemetryFrame field
    divisor: float  # to SI units (a division, so mJ -> J is exact where NVML's own conversion is)
    dcgm_type: str  # "int" or "fp64": which of DCGM's "no value" sentinels apply


# dcgm-exporter metric name (the DCGM field name) -> frame field. The two throttle-reason names are the
# same DCGM field (112), renamed "clocks event reasons" in DCGM 3.3; a counters file may list either.
METRICS: dict[str, Metric] = {
    "DCGM_FI_DEV_POWER_USAGE": Metric("power_w", 1.0, "fp64"),  # W
    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": Metric("limit_w", 1.0, "fp64"),  # W
    "DCGM_FI_DEV_GPU_TEMP": Metric("temp_c", 1.0, "int"),  # C
    "DCGM_FI_DEV_SM_CLOCK": Metric("sm_clock_mhz", 1.0, "int"),  # MHz
    "DCGM_FI_DEV_MEM_CLOCK": Metric("mem_clock_mhz", 1.0, "int"),  # MHz
    "DCGM_FI_DEV_GPU_UTIL": Metric("util", 100.0, "int"),  # % -> 0..1
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": Metric("energy_j", 1000.0, "int"),  # mJ -> J
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": Metric("throttle_reasons", 1.0, "int"),  # NVML bitmask
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": Metric("throttle_reasons", 1.0, "int"),
}
FIELDS = ("power_w", "limit_w", "temp_c", "sm_clock_mhz", "mem_clock_mhz", "util", "energy_j", "throttle_reasons")

# DCGM's "no value" sentinels (dcgm_structs.h), which older dcgm-exporter releases print as values:
# DCGM_INT32_BLANK 0x7ffffff0 and up (NOT_FOUND, NOT_SUPPORTED, NOT_PERMISSIONED follow), DCGM_INT64_BLANK
# 0x7ffffffffffffff0 and up, DCGM_FP64_BLANK 2**47 and up. Newer releases leave such samples out.
INT32_BLANK = 0x7FFF_FFF0
INT64_BLANK = 0x7FFF_FFFF_FFFF_FFF0
FP64_BLANK = 140737488355328.0

# A GPU without a throttle-reason reading gets all bits set (no GPU reports that); see the nvml source.
REASONS_MISSING = 0xFFFF_FFFF


def is_blank(value: float, dcgm_type: str) -> bool:
    if math.isnan(value):
        return True
    if dcgm_type == "fp64":
        return value >= FP64_BLANK
    return INT32_BLANK <= value <= 0x7FFF_FFFF or value >= INT64_BLANK


def parse_page(text: str) -> dict[int, dict[str, float]]:
    """A dcgm-exporter page -> {gpu index: {frame field: value in SI units}}.

    Only the metrics in METRICS are kept; a metric a GPU does not report (or reports as a DCGM blank
    sentinel) is absent from its map, and a GPU reporting none of them is absent. Where a GPU has
    several samples of one metric (MIG instances, several pods sharing it), the whole-GPU one (no
    GPU_I_ID label) wins, else the first. Raises SourceError on text that is not the Prometheus
    exposition format or a relevant sample without a numeric `gpu` label.
    """
    first = text.lstrip()[:1]
    if first and first != "#" and not (first.isalpha() or first in "_:"):
        raise SourceError(f"not a Prometheus text page: starts with {_one_line(text.lstrip(), 40)!r}")
    out: dict[int, dict[str, float]] = {}
    whole_gpu: set[tuple[int, str]] = set()
    try:
        families = list(text_string_to_metric_families(_relevant_lines(text)))
    except ValueError as e:  # the parser's only complaint, for any line it cannot read
        raise SourceError(f"not a Prometheus text page: {_one_line(str(e))}") from None
    for fam in families:
        metric = METRICS.get(fam.name)
        if metric is None:
            continue
        for s in fam.samples:
            gpu_label = s.labels.get("gpu", "")
            if not gpu_label.isdigit():
                raise SourceError(f"{fam.name} sample without a GPU index label (gpu={gpu_label!r})")
            gpu = int(gpu_label)
            values = out.setdefault(gpu, {})
            value = float(s.value)
            if is_blank(value, metric.dcgm_type):
                continue
            is_whole = not s.labels.get("GPU_I_ID")
            key = (gpu, metric.field)
            if metric.field in values and (key in whole_gpu or not is_whole):
                continue
            values[metric.field] = value / metric.divisor
            if is_whole:
                whole_gpu.add(key)
    return out


_NAME = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")


def _relevant_lines(text: str) -> str:
    """Only the samples (and HELP/TYPE lines) of the metrics in METRICS. The exporter's page is mostly
    other metrics, and prometheus_client's pure-Python parser costs ~40 us per sample line with
    dcgm-exporter's seven labels, so this cuts parsing several-fold (a full 8-GPU page: ~9 ms -> ~3 ms)."""
    keep: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[2] in METRICS:
                keep.append(line)
        else:
            m = _NAME.match(line)
            if m and m[1] in METRICS:
                keep.append(line)
    keep.append("")
    return "\n".join(keep)


def _one_line(s: str, n: int = 120) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _http_url(url: str) -> str:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"must be an http(s) URL such as http://192.0.2.10:9400/metrics, got {url!r}")
    return url


class Options(DeviceOptions):
    """A [sources.NAME] table of kind "dcgm" (README.md beside this file lists every key)."""

    url: Annotated[str, AfterValidator(_http_url)]
    server: int = Field(ge=0, le=65535)
    gpus: Indices | None = None  # the `gpu` label values to report; default: every GPU on the page


class DcgmSource(Source):
    """One dcgm-exporter (one GPU server): scrapes its /metrics page into one frame for the server's rack."""

    kind = "dcgm"
    options_model = Options

    default_interval_s = 10.0

    def configure(self, opts: Options) -> None:
        self.url, self.site, self.rack, self.server = opts.url, opts.site, opts.rack, opts.server
        self.want: list[int] | None = opts.gpus
        self._session: aiohttp.ClientSession | None = None
        self._warned: set[tuple[int, str]] = set()

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"Accept": "text/plain;version=0.0.4;q=1.0, */*;q=0.1"})

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def fetch(self) -> str:
        """The page's text; SourceError on an HTTP error, a connection failure or a page that is not text.
        A timeout is left to raise TimeoutError (the scheduler counts timeouts apart from errors)."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        try:
            async with self._session.get(self.url) as resp:
                if resp.status != 200:
                    raise SourceError(f"HTTP {resp.status} {resp.reason or ''} from {self.url}".replace("  ", " "))
                body = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > MAX_PAGE_BYTES:
                        raise SourceError(f"page from {self.url} larger than {MAX_PAGE_BYTES >> 20} MiB")
        except TimeoutError:
            raise
        except aiohttp.ClientError as e:
            raise SourceError(f"cannot scrape {self.url}: {_one_line(f'{type(e).__name__}: {e}')}") from None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise SourceError(f"page from {self.url} is not UTF-8 text") from None

    async def read(self) -> list[TelemetryFrame]:
        text = await self.fetch()
        ts_s = time.time()
        page = parse_page(text)
        return [self.to_frame(page, ts_s)]

    def to_frame(self, page: Mapping[int, Mapping[str, float]], ts_s: float | None = None) -> TelemetryFrame:
        gpus = self.want if self.want is not None else sorted(page)
        if not gpus:
            raise SourceError(f"no GPU metrics (DCGM_FI_DEV_*) on the page from {self.url}")
        for g in gpus:
            if g not in page:
                self._warn_once(g, "absent", f"GPU {g} is not on the page from {self.url}: all its fields NaN")
        cols: dict[str, list[float]] = {f: [] for f in FIELDS}
        for g in gpus:
            values = page.get(g, {})
            for f in FIELDS:
                v = values.get(f, math.nan)
                if f != "throttle_reasons" and not math.isnan(v):
                    lo, hi = TelemetryFrame.RANGES[f]
                    if not lo <= v <= hi:
                        self._warn_once(g, f, f"GPU {g}: {f} = {v:g} outside [{lo:g}, {hi:g}]: reported as NaN")
                        v = math.nan
                cols[f].append(v)
        if all(math.isnan(v) for v in cols["limit_w"]):
            self._warn_once(-1, "limit_w", f"{self.url} exports no DCGM_FI_DEV_ENFORCED_POWER_LIMIT: limit_w is "
                            "NaN (add it to dcgm-exporter's counters file; see collectors/dcgm/README.md)")
        reasons = None
        if any(not math.isnan(r) for r in cols["throttle_reasons"]):
            reasons = np.array([REASONS_MISSING if math.isnan(r) else int(r) & 0xFFFF_FFFF
                                for r in cols["throttle_reasons"]], np.uint32)
        f32 = np.float32
        energy = np.array(cols["energy_j"], np.float64)
        mem = np.array(cols["mem_clock_mhz"], f32)
        return self.frame(
            self.site, self.rack, ts_s=ts_s,
            gpu_server=np.full(len(gpus), self.server, np.uint16), gpu_slot=np.array(gpus, np.uint16),
            power_w=np.array(cols["power_w"], f32), temp_c=np.array(cols["temp_c"], f32),
            sm_clock_mhz=np.array(cols["sm_clock_mhz"], f32), limit_w=np.array(cols["limit_w"], f32),
            util=np.array(cols["util"], f32),
            mem_clock_mhz=None if np.isnan(mem).all() else mem, throttle_reasons=reasons,
            energy_j=None if np.isnan(energy).all() else energy)

    def _warn_once(self, gpu: int, what: str, msg: str) -> None:
        if (gpu, what) not in self._warned:
            self._warned.add((gpu, what))
            log.warning("dcgm source %s: %s", self.name, msg)
