"""GPU power limits, SM clock locks and power floors (power smoothing) through NVML, in band (see README.md
beside this file)."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import numpy as np
import pynvml
from pydantic import Field, PlainValidator

from actuators.base import F64, I64, Actuator, ActuatorError, ActuatorOptions
from powerplane.validation import Problems

log = logging.getLogger("powerplane.actuators.nvml")

T = TypeVar("T")

ERROR_NAMES = {v: k for k, v in vars(pynvml).items() if k.startswith("NVML_ERROR_") and isinstance(v, int)}

# What an operator should do about each refusal; the text goes into the rejected ack.
ADVICE = {
    pynvml.NVML_ERROR_NO_PERMISSION: "run the actuator as root or grant it CAP_SYS_ADMIN",
    pynvml.NVML_ERROR_NOT_SUPPORTED: "this GPU or driver cannot do this (consumer boards, some VMs and MIG "
                                     "setups): leave the GPU out of 'racks' or set dry_run = true",
    pynvml.NVML_ERROR_INVALID_ARGUMENT: "the driver refused the value: check the GPU's range with "
                                        "`nvidia-smi -q -d POWER,SUPPORTED_CLOCKS`",
    pynvml.NVML_ERROR_GPU_IS_LOST: "the GPU has fallen off the bus: drain the node, check dmesg for Xid "
                                   "errors, then reset the GPU (nvidia-smi -r) or reboot",
    pynvml.NVML_ERROR_UNINITIALIZED: "NVML is not initialised (the actuator was not started or was closed): "
                                     "restart the actuator",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "load the NVIDIA driver (check `nvidia-smi`)",
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "install the NVIDIA driver's libnvidia-ml.so.1",
}


def nvml_error(e: pynvml.NVMLError, what: str) -> ActuatorError:
    name = ERROR_NAMES.get(e.value, str(e.value)).removeprefix("NVML_ERROR_")
    advice = ADVICE.get(e.value, "see the driver log (dmesg) and `nvidia-smi`")
    return ActuatorError(f"{what}: {e} [{name}]: {advice}")


def _devices(v: Any) -> list[int] | str:
    if v == "all" or (isinstance(v, list) and v and len(set(v)) == len(v) and all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 64 for d in v)):
        return v if isinstance(v, str) else list(v)
    raise ValueError(f"must be a list of distinct NVML device indexes 0..63 (or \"all\" when it is the only rack), "
                     f"got {v!r}")


def _safe_limit(v: Any) -> str | float:
    if v in ("default", "max"):
        return str(v)
    if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
        return float(v)
    raise ValueError(f"must be 'default', 'max' or watts > 0, got {v!r}")


class Options(ActuatorOptions):
    """An [actuators.NAME] table of kind "nvml" (README.md beside this file)."""

    # rack id -> NVML device indexes in the site model's GPU order, or "all" (only rack: every GPU NVML sees)
    racks: Annotated[dict[str, Annotated[list[int] | str, PlainValidator(_devices)]], Field(min_length=1)]
    dry_run: bool = True
    safe_limit: Annotated[str | float, PlainValidator(_safe_limit)] = "default"
    min_clock_mhz: float = Field(0.0, ge=0.0, lt=10_000.0)
    # The power smoothing preset profile a power_floor writes its floor into and activates (0..4).
    smoothing_profile: int = Field(0, ge=0, lt=pynvml.NVML_POWER_SMOOTHING_MAX_NUM_PROFILES)

    def check(self, p: Problems) -> None:
        if len(self.racks) > 1:
            for rack, devs in self.racks.items():
                if devs == "all":
                    p.add(f"racks.{rack}", "\"all\" is only for a single rack: list the NVML device indexes")


class NvmlActuator(Actuator):
    """Power limits (nvmlDeviceSetPowerManagementLimit) and SM clock locks (nvmlDeviceSetGpuLockedClocks)
    of the local GPUs, by rack. In dry-run mode it reads the real constraints and changes nothing."""

    kind = "nvml"
    options_model = Options

    def configure(self, opts: Options) -> None:
        # None: every GPU NVML sees
        self.racks: dict[str, list[int] | None] = {r: d if isinstance(d, list) else None for r, d in opts.racks.items()}
        self.dry_run = opts.dry_run
        self.safe: str | float = opts.safe_limit
        self.min_clock_mhz = opts.min_clock_mhz
        self.handles: dict[str, list[Any]] = {}
        self._clocks: dict[tuple[str, int], tuple[float, float, list[float]]] = {}  # see _clock_info
        self._locked: dict[tuple[str, int], float] = {}  # clock ceilings this actuator set
        self.smoothing_profile = opts.smoothing_profile
        self._floored: set[tuple[str, int]] = set()  # GPUs whose power smoothing this actuator turned on
        self._inited = False

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._inited:
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise nvml_error(e, f"actuator '{self.name}': nvmlInit") from None
        self._inited = True
        try:
            count = pynvml.nvmlDeviceGetCount()
            for rack, devs in self.racks.items():
                idx = list(range(count)) if devs is None else devs
                missing = [d for d in idx if d >= count]
                if missing:
                    raise ActuatorError(f"actuator '{self.name}': rack '{rack}' names NVML device(s) {missing}, "
                                        f"but this host has {count} GPU(s) (nvidia-smi -L)")
                self.handles[rack] = [self._nvml(pynvml.nvmlDeviceGetHandleByIndex, f"NVML device {d}", d)
                                      for d in idx]
        except BaseException:
            self.close()
            raise
        log.info("actuator '%s': %s on %s", self.name, "dry run" if self.dry_run else "live",
                 ", ".join(f"{r} ({len(h)} GPUs)" for r, h in self.handles.items()))

    def close(self) -> None:
        if self._inited:
            self._inited = False
            self.handles.clear()
            self._clocks.clear()
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as e:
                log.warning("nvmlShutdown: %s", e)

    def targets(self) -> list[str]:
        return list(self.racks)

    # ---- helpers ----------------------------------------------------------------------------------
    def _nvml(self, fn: Callable[..., T], what: str, *args: Any) -> T:
        try:
            return fn(*args)
        except pynvml.NVMLError as e:
            raise nvml_error(e, what) from None

    def _devices(self, target: str, gpus: I64) -> list[tuple[int, Any, str]]:
        """(gpu, handle, description for messages) for each GPU index within the rack."""
        if target not in self.racks:
            raise ActuatorError(f"rack '{target}' is not served by actuator '{self.name}'")
        hs = self.handles.get(target)
        if hs is None:
            raise ActuatorError(f"actuator '{self.name}' is not started: NVML is not initialised; restart it")
        if gpus.size and (gpus.min() < 0 or gpus.max() >= len(hs)):
            raise ActuatorError(f"GPU index out of range for rack '{target}' ({len(hs)} GPUs)")
        devs = self.racks[target]
        return [(g, hs[g], f"{target} GPU {g} (NVML device {g if devs is None else devs[g]})") for g in gpus.tolist()]

    # ---- power ------------------------------------------------------------------------------------
    def limits_w(self, target: str, gpus: I64) -> tuple[F64, F64, F64]:
        lo, hi, safe = [], [], []
        for _, h, desc in self._devices(target, gpus):
            mn, mx = self._nvml(pynvml.nvmlDeviceGetPowerManagementLimitConstraints, f"{desc}: power limit range", h)
            lo.append(mn / 1000.0)
            hi.append(mx / 1000.0)
            if self.safe == "default":
                safe.append(self._nvml(pynvml.nvmlDeviceGetPowerManagementDefaultLimit,
                                       f"{desc}: default power limit", h) / 1000.0)
            elif self.safe == "max":
                safe.append(hi[-1])
            else:
                safe.append(min(max(float(self.safe), lo[-1]), hi[-1]))
        return np.array(lo), np.array(hi), np.array(safe)

    def set_power_limit(self, target: str, gpus: I64, limit_w: F64) -> F64:
        devs = self._devices(target, gpus)
        mw = [round(float(w) * 1000.0) for w in limit_w]
        if self.dry_run:
            for (_, _, desc), m in zip(devs, mw, strict=True):
                log.info("dry run: %s: would set power limit %.3f W", desc, m / 1000.0)
            return np.array(mw, dtype=np.float64) / 1000.0
        done: list[tuple[Any, int, str]] = []  # (handle, previous limit mW, desc) to restore on failure
        out: list[float] = []
        try:
            for (_, h, desc), m in zip(devs, mw, strict=True):
                prev = self._nvml(pynvml.nvmlDeviceGetPowerManagementLimit, f"{desc}: read power limit", h)
                self._nvml(pynvml.nvmlDeviceSetPowerManagementLimit, f"{desc}: set power limit {m / 1000:g} W", h, m)
                done.append((h, prev, desc))
                # What the GPU enforces can be lower than what we asked (another limit in force).
                out.append(self._nvml(pynvml.nvmlDeviceGetEnforcedPowerLimit, f"{desc}: read enforced limit", h)
                           / 1000.0)
        except ActuatorError as e:
            self._restore_limits(done)
            raise ActuatorError(f"{e} (the command's other GPUs were left as they were)") from None
        return np.array(out)

    def _restore_limits(self, done: list[tuple[Any, int, str]]) -> None:
        # All or nothing: a refused command must not leave some GPUs changed without a lease.
        for h, prev, desc in done:
            try:
                pynvml.nvmlDeviceSetPowerManagementLimit(h, prev)
            except pynvml.NVMLError as e:
                log.error("%s: restoring power limit %g W failed: %s", desc, prev / 1000, e)

    # ---- clocks -----------------------------------------------------------------------------------
    def _clock_info(self, target: str, g: int, h: Any, desc: str) -> tuple[float, float, list[float]]:
        """(min, max, supported SM clocks highest first) in MHz; the list is empty where the driver gives none."""
        key = (target, g)
        if key not in self._clocks:
            try:
                mem = max(pynvml.nvmlDeviceGetSupportedMemoryClocks(h))
                steps = sorted((float(c) for c in pynvml.nvmlDeviceGetSupportedGraphicsClocks(h, mem)), reverse=True)
            except pynvml.NVMLError as e:
                if e.value in (pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_UNINITIALIZED):
                    raise nvml_error(e, f"{desc}: supported clocks") from None
                steps = []  # not listed (some boards, VMs): any MHz in [min_clock_mhz, max SM clock]
            if steps:
                self._clocks[key] = (max(steps[-1], self.min_clock_mhz), steps[0], steps)
            else:
                fmax = float(self._nvml(pynvml.nvmlDeviceGetMaxClockInfo, f"{desc}: max SM clock", h,
                                        pynvml.NVML_CLOCK_SM))
                self._clocks[key] = (min(self.min_clock_mhz, fmax), fmax, [])
        return self._clocks[key]

    def clock_range_mhz(self, target: str, gpus: I64) -> tuple[F64, F64]:
        info = [self._clock_info(target, g, h, desc) for g, h, desc in self._devices(target, gpus)]
        return np.array([i[0] for i in info]), np.array([i[1] for i in info])

    def _snap(self, target: str, g: int, mhz: float) -> float:
        """The highest supported clock at or below mhz (the driver rounds the same way)."""
        lo, _, steps = self._clocks[(target, g)]
        below = [c for c in steps if lo <= c <= mhz + 1e-6]
        return below[0] if below else float(round(mhz))

    def lock_clocks(self, target: str, gpus: I64, mhz: F64) -> F64:
        devs = self._devices(target, gpus)
        lo, _ = self.clock_range_mhz(target, gpus)
        want = [self._snap(target, g, float(f)) for (g, _, _), f in zip(devs, mhz, strict=True)]
        if self.dry_run:
            for (_, _, desc), f in zip(devs, want, strict=True):
                log.info("dry run: %s: would lock SM clock to <= %g MHz", desc, f)
            return np.array(want)
        done: list[tuple[int, Any, str, float]] = []
        try:
            for (g, h, desc), fmin, f in zip(devs, lo, want, strict=True):
                # A ceiling, not a pin: [lowest, f] lets an idle GPU still clock down.
                self._nvml(pynvml.nvmlDeviceSetGpuLockedClocks, f"{desc}: lock SM clock to {f:g} MHz", h,
                           round(min(fmin, f)), round(f))
                done.append((g, h, desc, float(fmin)))
        except ActuatorError as e:
            for g, h, desc, fmin in done:  # back to what this actuator had set before (or unlocked)
                prev = self._locked.get((target, g))
                try:
                    if prev is None:
                        pynvml.nvmlDeviceResetGpuLockedClocks(h)
                    else:
                        pynvml.nvmlDeviceSetGpuLockedClocks(h, round(min(fmin, prev)), round(prev))
                except pynvml.NVMLError as e2:
                    log.error("%s: restoring clocks failed: %s", desc, e2)
            raise ActuatorError(f"{e} (the command's other GPUs were left as they were)") from None
        for (g, _, _), f in zip(devs, want, strict=True):
            self._locked[(target, g)] = f
        return np.array(want)

    def reset_clocks(self, target: str, gpus: I64) -> F64:
        devs = self._devices(target, gpus)
        _, hi = self.clock_range_mhz(target, gpus)
        for g, h, desc in devs:
            if self.dry_run:
                log.info("dry run: %s: would reset locked clocks", desc)
                continue
            self._nvml(pynvml.nvmlDeviceResetGpuLockedClocks, f"{desc}: reset locked clocks", h)
            self._locked.pop((target, g), None)
        return hi

    # ---- power floor (power smoothing) --------------------------------------------------------------
    # NVML's power smoothing (Blackwell and newer, e.g. GB300): a preset profile's floor is a percentage of the
    # GPU's total module power (PERCENT_TMP_FLOOR, 0.00-100.00 %); here the TMP is the power limit the GPU
    # enforces now, so floor_w maps to 100 x floor_w / enforced limit. NOT_SUPPORTED (H100, H200, ...) or a
    # driver without the calls: "not supported", which the Guard acks as rejected (the controller then locks
    # clocks instead).
    def enforced_limit_w(self, target: str, gpus: I64) -> F64:
        return np.array([self._nvml(pynvml.nvmlDeviceGetEnforcedPowerLimit, f"{desc}: read enforced limit", h)
                         / 1000.0 for _, h, desc in self._devices(target, gpus)])

    def _smoothing(self, fn: Callable[..., Any], desc: str, what: str, h: Any, arg: Any) -> None:
        try:
            fn(h, ctypes.byref(arg))
        except pynvml.NVMLError as e:
            if e.value in (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND):
                raise ActuatorError(f"power smoothing floor not supported on {desc}: use a clock lock") from None
            raise nvml_error(e, f"{desc}: {what}") from None

    def _set_floor_pct(self, h: Any, desc: str, pct: float) -> None:
        prof = pynvml.c_nvmlPowerSmoothingProfile_v1_t()
        prof.profileId = self.smoothing_profile
        prof.paramId = pynvml.NVML_POWER_SMOOTHING_PROFILE_PARAM_PERCENT_TMP_FLOOR
        prof.value = pct
        self._smoothing(pynvml.nvmlDevicePowerSmoothingUpdatePresetProfileParam, desc,
                        f"set power smoothing floor {pct:.2f} % of TMP", h, prof)
        self._smoothing(pynvml.nvmlDevicePowerSmoothingActivatePresetProfile, desc,
                        f"activate power smoothing profile {self.smoothing_profile}", h, prof)
        self._set_smoothing_state(h, desc, pynvml.NVML_FEATURE_ENABLED)

    def _set_smoothing_state(self, h: Any, desc: str, state: int) -> None:
        st = pynvml.c_nvmlPowerSmoothingState_v1_t()
        st.state = state
        self._smoothing(pynvml.nvmlDevicePowerSmoothingSetState, desc,
                        "enable power smoothing" if state else "disable power smoothing", h, st)

    def set_power_floor(self, target: str, gpus: I64, floor_w: F64) -> F64:
        devs = self._devices(target, gpus)
        limit = self.enforced_limit_w(target, gpus)
        pct = [round(min(max(100.0 * float(f) / lim, 0.0), 100.0), 2) if lim > 0 else 0.0
               for f, lim in zip(floor_w, limit, strict=True)]
        out = np.array(pct) * limit / 100.0
        if self.dry_run:
            for (_, _, desc), p, w in zip(devs, pct, out, strict=True):
                log.info("dry run: %s: would hold a power floor of %.2f %% of TMP (%.1f W)", desc, p, w)
            return out
        done: list[tuple[int, Any, str]] = []
        try:
            for (g, h, desc), p in zip(devs, pct, strict=True):
                self._set_floor_pct(h, desc, p)
                done.append((g, h, desc))
        except ActuatorError as e:
            # All or nothing: the GPUs floored by this call alone go back to no floor.
            for g, h, desc in done:
                if (target, g) not in self._floored:
                    try:
                        self._set_smoothing_state(h, desc, pynvml.NVML_FEATURE_DISABLED)
                    except ActuatorError as e2:
                        log.error("%s: undoing the power floor failed: %s", desc, e2)
            raise ActuatorError(f"{e} (the command's other GPUs were left as they were)") from None
        self._floored.update((target, g) for g, _, _ in done)
        return out

    def clear_power_floor(self, target: str, gpus: I64) -> F64:
        for g, h, desc in self._devices(target, gpus):
            if self.dry_run:
                log.info("dry run: %s: would disable power smoothing", desc)
                continue
            self._set_smoothing_state(h, desc, pynvml.NVML_FEATURE_DISABLED)
            self._floored.discard((target, g))
        return np.zeros(gpus.size)
