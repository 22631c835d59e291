"""A whole-rack frame cut into the parts real collectors publish (collectors/README.md): one frame per server's
GPUs (NVML, DCGM), one per PDU with no GPU (SNMP: its meter on its own feed, the inlets), one per BMC (Redfish:
its server's input power). Shared by the unit and integration tests of the per-rack assembly."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from powerplane.schemas import TelemetryFrame

F32, U16 = np.float32, np.uint16
GPU_FIELDS = ("gpu_server", "gpu_slot", "power_w", "temp_c", "sm_clock_mhz", "limit_w", "util", "throttle_reasons")


def server_frames(whole: TelemetryFrame, jitter_s: float = 0.0, seq: int | None = None) -> list[TelemetryFrame]:
    """One NVML-shaped frame per server of the rack (source `nvml:host-<server>`), server k `k * jitter_s` earlier
    than the whole frame; no meter, no inlet."""
    out = []
    for k, s in enumerate(np.unique(whole.gpu_server).tolist()):
        m = whole.gpu_server == s
        gpu = {name: getattr(whole, name)[m] for name in GPU_FIELDS if getattr(whole, name) is not None}
        out.append(replace(whole, **gpu, source=f"nvml:host-{s}", ts_s=whole.ts_s - k * jitter_s,
                           seq=whole.seq if seq is None else seq, inlet_c=[], pdu_power_w=[math.nan, math.nan],
                           mem_clock_mhz=None, energy_j=None, servers=None, server_power_w=None))
    return out


def empty_gpus(f: TelemetryFrame) -> TelemetryFrame:
    e, eu = np.zeros(0, F32), np.zeros(0, U16)
    return replace(f, gpu_server=eu, gpu_slot=eu, power_w=e, temp_c=e, sm_clock_mhz=e, limit_w=e, util=e,
                   throttle_reasons=None, mem_clock_mhz=None, energy_j=None)


def pdu_frames(whole: TelemetryFrame, interval_s: float = 10.0) -> list[TelemetryFrame]:
    """One SNMP-shaped frame per PDU (source `pdu-a`, `pdu-b`): its meter on its own feed, the other NaN; the
    rack's inlet probes on the first."""
    a, b = whole.pdu_power_w
    base = empty_gpus(whole)
    return [replace(base, source="pdu-a", interval_s=interval_s, pdu_power_w=[a, math.nan],
                    inlet_c=list(whole.inlet_c), pdu_phase_current_a=np.array([a / 230.0], F32)),
            replace(base, source="pdu-b", interval_s=interval_s, pdu_power_w=[math.nan, b], inlet_c=[])]


def bmc_frame(whole: TelemetryFrame, server: int, power_w: float, interval_s: float = 10.0) -> TelemetryFrame:
    """A Redfish-shaped frame: one server's input power from its BMC."""
    return replace(empty_gpus(whole), source=f"redfish:bmc-{server}", interval_s=interval_s, inlet_c=[],
                   pdu_power_w=[math.nan, math.nan], servers=np.array([server], U16),
                   server_power_w=np.array([power_w], F32))
