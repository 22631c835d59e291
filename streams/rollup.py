"""Roll-up math for one telemetry frame: pure functions, no I/O, shared by the faust agents and
the in-process engine."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from powerplane.schemas import LevelAggregate, RackSummary, TelemetryFrame
from powerplane.site import FEEDS, MODES, FloatArray, Mode, Site

# A feed whose PDU meter reads below this fraction of the rack's metered total is taken as lost.
LOST_FEED_FRACTION = 0.05
MIN_METERED_W = 500.0  # below this the rack is idle and a lost feed cannot be told from a quiet one
# NVML clocks-event reasons that mean thermal slowdown (SW thermal, HW thermal, HW slowdown); 0xFFFFFFFF = no reading.
THERMAL_REASONS = 0x20 | 0x40 | 0x08
NO_READING = 0xFFFFFFFF


class UnknownRack(ValueError):
    pass


@dataclass
class RackState:
    """What one frame says about its rack."""

    rack: int
    power_w: float
    gpus_expected: int
    gpus_reporting: int
    mode: Mode
    inlet_c: float | None
    gpu_temp_max_c: float | None = None
    gpus_throttled: int = 0


def feed_mode(pdu_power_w: list[float]) -> Mode:
    """Feed state of a rack from its two PDU meters; 'normal' when it cannot be told."""
    a, b = pdu_power_w
    if not (math.isfinite(a) and math.isfinite(b)) or a + b < MIN_METERED_W:
        return "normal"
    if a < LOST_FEED_FRACTION * (a + b):
        return "A-lost"
    if b < LOST_FEED_FRACTION * (a + b):
        return "B-lost"
    return "normal"


def rack_state(site: Site, frame: TelemetryFrame) -> RackState:
    if frame.site != site.name:
        # A worker rolls up one site; another site's rack-07 is not ours (and would corrupt our rack-07).
        raise UnknownRack(f"telemetry.frame {frame.rack}: site '{frame.site}', this worker rolls up '{site.name}'")
    try:
        r = site.rack_index(frame.rack)
    except KeyError:
        raise UnknownRack(f"telemetry.frame {frame.rack}: rack not in site '{site.name}'") from None
    expected = int(site.rack_gpu_start[r + 1] - site.rack_gpu_start[r])
    if frame.power_w.size != expected:
        raise UnknownRack(f"telemetry.frame {frame.rack}: {frame.power_w.size} GPUs, the site model has {expected}")
    p = frame.power_w.astype(np.float64)
    missing = ~np.isfinite(p)
    # A GPU with no reading is assumed at its enforced limit (or its max): conservative, never 0.
    g0 = int(site.rack_gpu_start[r])
    fallback = np.where(np.isfinite(frame.limit_w), frame.limit_w, site.gpu_max_w[g0:g0 + expected])
    p = np.where(missing, fallback, p)
    inlets = [x for x in frame.inlet_c if math.isfinite(x)]
    temps = frame.temp_c[np.isfinite(frame.temp_c)]
    throttled = 0
    if frame.throttle_reasons is not None:
        tr = frame.throttle_reasons
        throttled = int(((tr & THERMAL_REASONS) != 0)[tr != NO_READING].sum())
    server_w = site.rack_server_input_w(r, p, frame.util.astype(np.float64))
    if frame.servers is not None and frame.server_power_w is not None:
        # A BMC's measured input power is a floor on its server's computed one: the model (GPUs plus a share
        # of the nameplate of the rest) can miss load the BMC sees; taking the larger stays conservative.
        bmc = np.full(server_w.size, np.nan)
        bmc[frame.servers.astype(np.int64)] = frame.server_power_w
        server_w = np.fmax(server_w, bmc)
    return RackState(rack=r, power_w=float(server_w.sum()), gpus_expected=expected,
                     gpus_reporting=int(expected - missing.sum()), mode=feed_mode(frame.pdu_power_w),
                     inlet_c=max(inlets) if inlets else None,
                     gpu_temp_max_c=float(temps.max()) if temps.size else None, gpus_throttled=throttled)


class Limits:
    """Derated limits per feed mode, computed once per site."""

    def __init__(self, site: Site) -> None:
        self.rated: dict[Mode, FloatArray] = {}
        self.derated: dict[Mode, FloatArray] = {}
        for m in MODES:
            self.rated[m], self.derated[m] = site.limits_w(m)


def frame_aggregates(site: Site, limits: Limits, frame: TelemetryFrame) -> list[LevelAggregate]:
    """The rack and its two PDUs, from one frame. A PDU's load is its meter when it has one,
    else the rack's computed share of it in the detected feed state."""
    return frame_outputs(site, limits, frame)[0]


def frame_outputs(site: Site, limits: Limits, frame: TelemetryFrame) -> tuple[list[LevelAggregate], RackSummary]:
    """Per-rack stage: the rack's and its PDUs' aggregates now, and the summary the site stage rolls up."""
    st = rack_state(site, frame)
    summary = RackSummary(
        site=site.name, rack=frame.rack, ts_s=frame.ts_s, interval_s=frame.interval_s, seq=frame.seq,
        power_w=st.power_w, pdu_power_w=list(frame.pdu_power_w), mode=st.mode, gpus_expected=st.gpus_expected,
        gpus_reporting=st.gpus_reporting, gpus_throttled=st.gpus_throttled, inlet_c=st.inlet_c,
        gpu_temp_max_c=st.gpu_temp_max_c)
    lvl = int(site.rack_level[st.rack])
    share = site.feed_share(st.mode)
    out = [LevelAggregate(
        site=site.name, level=frame.rack, kind="rack", ts_s=frame.ts_s, window_s=frame.interval_s,
        power_w=st.power_w, limit_w=float(limits.derated[st.mode][lvl]), rated_w=float(limits.rated[st.mode][lvl]),
        mode=st.mode, gpus_expected=st.gpus_expected, gpus_reporting=st.gpus_reporting, inlet_c=st.inlet_c,
        gpu_temp_max_c=st.gpu_temp_max_c, gpus_throttled=st.gpus_throttled)]
    for f in range(len(FEEDS)):
        pdu = int(site.rack_pdu[st.rack, f])
        metered = frame.pdu_power_w[f]
        est = st.power_w * float(share[f])
        out.append(LevelAggregate(
            site=site.name, level=site.level_ids[pdu], kind="pdu", ts_s=frame.ts_s, window_s=frame.interval_s,
            power_w=float(metered) if math.isfinite(metered) else est,
            # A PDU keeps its own breaker rating whatever the feed state; only its load changes.
            limit_w=float(limits.derated["normal"][pdu]),
            rated_w=float(limits.rated["normal"][pdu]), mode=st.mode, gpus_expected=st.gpus_expected,
            gpus_reporting=st.gpus_reporting, metered_w=float(metered) if math.isfinite(metered) else None,
            # Meter minus what the rack's servers draw on this feed: a bad meter or unmonitored load.
            gap_w=float(metered) - est if math.isfinite(metered) else None))
    return out, summary
