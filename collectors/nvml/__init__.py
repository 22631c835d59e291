"""In-band GPU telemetry through NVML for the GPUs of one server (see README.md beside this file)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pynvml
from pydantic import Field

from collectors.base import DeviceOptions, Indices, Source, SourceError
from powerplane.schemas import TelemetryFrame

log = logging.getLogger("powerplane.collectors.nvml")

T = TypeVar("T")

# NVML answers meaning "this GPU (driver, permissions) cannot give this field": the field is NaN for that
# GPU and the rest of the sample stands. Any other error (GPU lost, reset required, driver not loaded,
# timeout, unknown, ...) fails the whole read with a SourceError naming the GPU.
FIELD_ERRORS = frozenset({
    pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_NO_PERMISSION, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
    pynvml.NVML_ERROR_NO_DATA, pynvml.NVML_ERROR_NOT_READY, pynvml.NVML_ERROR_INVALID_ARGUMENT,
    pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH, pynvml.NVML_ERROR_DEPRECATED,
})
ERROR_NAMES = {v: k for k, v in vars(pynvml).items() if k.startswith("NVML_ERROR_") and isinstance(v, int)}

# Throttle reasons are a bitmask (u32 on the wire): a GPU that cannot report them gets all bits set, which
# no GPU reports (NVML defines bits up to 0x400); a frame where no GPU reports them leaves the field out.
REASONS_MISSING = 0xFFFF_FFFF

# Plausible ranges (the wire schema's); a reading outside is a sensor or driver glitch and becomes NaN.
RANGES = TelemetryFrame.RANGES


def describe(e: pynvml.NVMLError) -> str:
    return f"{e} [{ERROR_NAMES.get(e.value, e.value)}]"


@dataclass
class Sample:
    ts_s: float
    power_w: list[float]
    limit_w: list[float]
    temp_c: list[float]
    sm_clock_mhz: list[float]
    mem_clock_mhz: list[float]
    util: list[float]
    reasons: list[int | None]
    energy_j: list[float]


class _Fatal(Exception):
    pass


class Options(DeviceOptions):
    """A [sources.NAME] table of kind "nvml" (README.md beside this file lists every key)."""

    server: int = Field(ge=0, le=65535)
    gpus: Indices | None = None  # NVML indices to read; default: every GPU NVML sees


class NvmlSource(Source):
    """Reads power, enforced limit, temperature, clocks, utilisation, throttle reasons and energy of the
    local GPUs through NVML (nvidia-ml-py); one frame per read for this server's rack."""

    kind = "nvml"
    options_model = Options

    default_interval_s = 1.0

    def configure(self, opts: Options) -> None:
        self.site, self.rack, self.server = opts.site, opts.rack, opts.server
        self.want: list[int] | None = opts.gpus
        self.indices: list[int] = []
        self.uuids: list[str] = []
        self.handles: list[Any] = []
        self._inited = False  # this source holds one nvmlInit reference
        self._stale = False  # a fatal error happened: re-open before the next read
        self._logged: set[tuple[int, str, int]] = set()
        self._reasons_fn: Callable[[Any], int] | None = None
        self._start_fut: asyncio.Future[None] | None = None
        self._read_fut: asyncio.Future[Sample] | None = None

    # ---- lifecycle ------------------------------------------------------------------------------
    # NVML calls block, so they run in a worker thread. A call abandoned by the scheduler's timeout keeps
    # running there; the next start/read waits for that one instead of piling up threads on a slow or
    # hung driver.
    async def start(self) -> None:
        if self._inited and not self._stale:
            return
        if self._start_fut is None:
            self._start_fut = _spawn(self._open)
        fut = self._start_fut
        try:
            await asyncio.shield(fut)
        finally:
            if fut.done():
                self._start_fut = None

    async def read(self) -> list[TelemetryFrame]:
        if not self._inited or self._stale:
            await self.start()
        if self._read_fut is None:
            self._read_fut = _spawn(self._sample)
        fut = self._read_fut
        try:
            s = await asyncio.shield(fut)
        finally:
            if fut.done():
                self._read_fut = None
        f32 = np.float32
        reasons = None
        if any(r is not None for r in s.reasons):
            reasons = np.array([REASONS_MISSING if r is None else r & 0xFFFF_FFFF for r in s.reasons], np.uint32)
        n = len(self.indices)
        mem = np.array(s.mem_clock_mhz, f32)
        energy = np.array(s.energy_j, np.float64)
        frame = self.frame(
            self.site, self.rack, ts_s=s.ts_s,
            gpu_server=np.full(n, self.server, np.uint16), gpu_slot=np.array(self.indices, np.uint16),
            power_w=np.array(s.power_w, f32), temp_c=np.array(s.temp_c, f32),
            sm_clock_mhz=np.array(s.sm_clock_mhz, f32), limit_w=np.array(s.limit_w, f32),
            util=np.array(s.util, f32), throttle_reasons=reasons,
            # Optional fields: left out when no GPU gives them, NaN for the GPUs that do not.
            mem_clock_mhz=None if np.isnan(mem).all() else mem,
            energy_j=None if np.isnan(energy).all() else energy)
        return [frame]

    async def close(self) -> None:
        if self._start_fut is not None:  # an open still running would otherwise take a reference after this
            with contextlib.suppress(Exception):
                await asyncio.shield(self._start_fut)
        if self._inited:
            self._inited = False
            await asyncio.to_thread(_shutdown)

    # ---- blocking parts (run in a worker thread) ---------------------------------------------------
    def _open(self) -> None:
        """nvmlInit and the handles; after a fatal error, the same GPUs again by UUID."""
        if self._inited:  # re-open after a fatal error: drop our reference first
            self._inited = False
            _shutdown()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            raise SourceError("NVML library libnvidia-ml.so.1 not found (no NVIDIA driver on this host?)") from None
        except pynvml.NVMLError as e:
            raise SourceError(f"nvmlInit: {describe(e)}") from None
        try:
            if self.uuids:
                handles = [self._call(i, "nvmlDeviceGetHandleByUUID", pynvml.nvmlDeviceGetHandleByUUID, u)
                           for i, u in zip(self.indices, self.uuids, strict=True)]
            else:
                try:
                    count = int(pynvml.nvmlDeviceGetCount())
                except pynvml.NVMLError as e:
                    raise SourceError(f"nvmlDeviceGetCount: {describe(e)}") from None
                indices = self.want if self.want is not None else list(range(count))
                absent = [i for i in indices if i >= count]
                if absent:
                    raise SourceError(f"GPU(s) {absent} not present: NVML sees {count} GPU(s)")
                if not indices:
                    raise SourceError("NVML sees no GPUs")
                handles = [self._call(i, "nvmlDeviceGetHandleByIndex", pynvml.nvmlDeviceGetHandleByIndex, i)
                           for i in indices]
                uuids = [str(self._call(i, "nvmlDeviceGetUUID", pynvml.nvmlDeviceGetUUID, h))
                         for i, h in zip(indices, handles, strict=True)]
                self.indices, self.uuids = indices, uuids
                log.info("nvml source %s: %d GPU(s) %s, driver %s", self.name, len(indices), indices,
                         _driver_version())
        except BaseException as e:
            _shutdown()
            if isinstance(e, _Fatal):
                raise SourceError(str(e)) from None
            raise
        self.handles = handles
        self._inited, self._stale = True, False

    def _sample(self) -> Sample:
        n = len(self.handles)
        nan = math.nan
        s = Sample(0.0, [nan] * n, [nan] * n, [nan] * n, [nan] * n, [nan] * n, [nan] * n, [None] * n, [nan] * n)
        try:
            get = self._get
            for k, (i, h) in enumerate(zip(self.indices, self.handles, strict=True)):
                p = get(i, "nvmlDeviceGetPowerUsage", pynvml.nvmlDeviceGetPowerUsage, h)
                s.power_w[k] = self._check(i, "power_w", p / 1000.0 if p is not None else nan)
                lim = get(i, "nvmlDeviceGetEnforcedPowerLimit", pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
                s.limit_w[k] = self._check(i, "limit_w", lim / 1000.0 if lim is not None else nan)
                t = get(i, "nvmlDeviceGetTemperature", pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)
                s.temp_c[k] = self._check(i, "temp_c", float(t) if t is not None else nan)
                sm = get(i, "nvmlDeviceGetClockInfo(SM)", pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)
                s.sm_clock_mhz[k] = self._check(i, "sm_clock_mhz", float(sm) if sm is not None else nan)
                mem = get(i, "nvmlDeviceGetClockInfo(MEM)", pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM)
                s.mem_clock_mhz[k] = self._check(i, "mem_clock_mhz", float(mem) if mem is not None else nan)
                u = get(i, "nvmlDeviceGetUtilizationRates", pynvml.nvmlDeviceGetUtilizationRates, h)
                s.util[k] = self._check(i, "util", u.gpu / 100.0 if u is not None else nan)
                s.reasons[k] = self._reasons(i, h)
                e = get(i, "nvmlDeviceGetTotalEnergyConsumption", pynvml.nvmlDeviceGetTotalEnergyConsumption, h)
                s.energy_j[k] = self._check(i, "energy_j", e / 1000.0 if e is not None else nan)
        except _Fatal as e:
            self._stale = True
            raise SourceError(str(e)) from None
        s.ts_s = time.time()
        return s

    def _reasons(self, i: int, h: Any) -> int | None:
        if self._reasons_fn is None:
            # R535+ drivers renamed "throttle" to "clocks event" reasons; older ones only have the former.
            self._reasons_fn = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
                pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        try:
            return int(self._reasons_fn(h))
        except pynvml.NVMLError as e:
            old = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
            if e.value == pynvml.NVML_ERROR_FUNCTION_NOT_FOUND and self._reasons_fn is not old:
                log.info("nvml source %s: driver has no nvmlDeviceGetCurrentClocksEventReasons; using "
                         "nvmlDeviceGetCurrentClocksThrottleReasons", self.name)
                self._reasons_fn = old
                return self._reasons(i, h)
            self._field_error(i, "nvmlDeviceGetCurrentClocksEventReasons", e)
            return None

    def _get(self, i: int, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        """One NVML call for GPU i: None where the GPU cannot give the field; _Fatal on anything worse."""
        try:
            return fn(*args)
        except pynvml.NVMLError as e:
            self._field_error(i, what, e)
            return None

    def _call(self, i: int, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except pynvml.NVMLError as e:
            raise _Fatal(self._where(i, what, e)) from None

    def _field_error(self, i: int, what: str, e: pynvml.NVMLError) -> None:
        if e.value not in FIELD_ERRORS:
            raise _Fatal(self._where(i, what, e))
        key = (i, what, int(e.value))
        if key not in self._logged:  # once per GPU, call and error, not once per read
            self._logged.add(key)
            log.warning("nvml source %s: %s: field reported as missing (NaN)", self.name, self._where(i, what, e))

    def _where(self, i: int, what: str, e: pynvml.NVMLError) -> str:
        uuid = self.uuids[self.indices.index(i)] if i in self.indices and len(self.uuids) == len(self.indices) \
            else ""
        return f"GPU {i}{f' ({uuid})' if uuid else ''}: {what}: {describe(e)}"

    def _check(self, i: int, field: str, v: float) -> float:
        lo, hi = RANGES[field]
        if math.isnan(v) or lo <= v <= hi:
            return v
        key = (i, field, -1)
        if key not in self._logged:
            self._logged.add(key)
            log.warning("nvml source %s: GPU %d: %s = %g outside [%g, %g]; reported as missing (NaN)", self.name,
                        i, field, v, lo, hi)
        return math.nan


def _spawn(fn: Callable[[], T]) -> asyncio.Future[T]:
    fut = asyncio.ensure_future(asyncio.to_thread(fn))
    fut.add_done_callback(_retrieve)
    return fut


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # marks the exception retrieved: it is re-raised to whoever awaits the future


def _shutdown() -> None:
    try:
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as e:
        log.debug("nvmlShutdown: %s", describe(e))


def _driver_version() -> str:
    try:
        return str(pynvml.nvmlSystemGetDriverVersion())
    except pynvml.NVMLError as e:
        return f"unknown ({describe(e)})"
