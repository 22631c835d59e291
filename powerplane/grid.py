"""The site as its utility sees it (issue 16): grid limits on a large load and the measures they are stated in.

Utilities now state limits on large loads in the time domain (a maximum ramp rate in MW/s over a stated window,
a dynamic power range: how far the load may swing within a window) and in the frequency domain (the magnitude
of load oscillation in bands around 0.1-20 Hz), because synchronous training swings a whole site between its
compute and communication phases every iteration (Microsoft, OpenAI and NVIDIA, "Power Stabilization for AI
Training Datacenters", arXiv 2508.14318, 2025). Grid operators also ask large loads to shed on request
(demand response: reduce to X MW, or by Y %, by a deadline, hold, restore no faster than the ramp limit).

This module is the shared domain of those limits: the `[grid]` tables of the site file (per site and per
utility feed; powerplane/site_file.py) and the measures every stage computes the same way, as plain functions
over numpy arrays with no I/O: the streams detect with them, the controllers' ramp limiter and demand-response
planner plan against them, and `powerplane evaluate` scores runs with them.

What a sampled series can see: a band is measurable only below the Nyquist frequency of the series, half its
sample rate. The 1 s pipeline (one frame per rack per second) sees up to 0.5 Hz; GPU telemetry at 100 ms sees
up to 5 Hz. `band_amplitude_mw` returns NaN for a band wholly above the Nyquist frequency and measures only
the part below it for a band that straddles it (`band_resolved` says which); faster oscillation must be held
down by the GPUs' own power smoothing (a power floor, ramp limits, PSU energy storage), not by this loop.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field, model_validator

from powerplane.validation import Model

FloatArray = npt.NDArray[np.float64]  # (powerplane.site's alias; site.py imports this module)
MW = 1e6

PositiveMW = Annotated[float, Field(gt=0, le=1e5)]


class _Table(Model):
    # TOML has real types: "5" where a number belongs is a mistake, not something to convert.
    model_config = ConfigDict(strict=True)


class OscillationBand(_Table):
    """One frequency band with its limit: the oscillation's amplitude (MW, peak) within [lo_hz, hi_hz)."""

    lo_hz: float = Field(gt=0, le=1000)
    hi_hz: float = Field(gt=0, le=1000)
    limit_mw: PositiveMW

    @model_validator(mode="after")
    def _ordered(self) -> OscillationBand:
        if self.hi_hz <= self.lo_hz:
            raise ValueError(f"hi_hz {self.hi_hz:g} must be above lo_hz {self.lo_hz:g}")
        return self


class GridLimits(_Table):
    """[grid] of a site, or of one utility feed: what the utility allows of this load. Every limit is
    optional; an absent one is not checked."""

    ramp_up_mw_per_s: PositiveMW | None = None
    ramp_down_mw_per_s: PositiveMW | None = None
    # The change is measured over this window: (P(t) - P(t - window)) / window. Utilities state a window
    # (per second, per minute); a shorter window sees steeper ramps.
    ramp_window_s: float = Field(1.0, gt=0, le=3600)
    range_mw: PositiveMW | None = None  # dynamic power range: max - min within range_window_s
    range_window_s: float = Field(60.0, gt=0, le=86_400)
    bands: list[OscillationBand] = Field(default_factory=list)
    # The spectrum is taken over this many seconds of the series (longer resolves lower frequencies:
    # the lowest it sees is about 2 / window).
    band_window_s: float = Field(60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _bands_resolvable(self) -> GridLimits:
        lowest = min((b.lo_hz for b in self.bands), default=math.inf)
        if lowest < 2.0 / self.band_window_s:
            raise ValueError(f"band_window_s {self.band_window_s:g} s cannot resolve a band from {lowest:g} Hz "
                             f"(needs at least {2.0 / lowest:g} s)")
        return self


# ---- measures ------------------------------------------------------------------------------------


def window_samples(window_s: float, dt_s: float) -> int:
    """Samples of dt_s a window of window_s spans (at least one): the step the measures below difference over.
    A streaming caller sizes its buffer with it (streams/grid_watch.py)."""
    return max(1, round(window_s / dt_s))



def ramp_mw_per_s(power_w: FloatArray, dt_s: float, window_s: float) -> FloatArray:
    """Ramp rate at each sample: (P(t) - P(t - window)) / window, in MW/s; NaN until a window has passed.
    Positive up, negative down."""
    p = np.asarray(power_w, dtype=np.float64)
    k = window_samples(window_s, dt_s)
    out = np.full(p.shape, np.nan)
    if p.size > k:
        out[k:] = (p[k:] - p[:-k]) / (k * dt_s) / MW
    return out


def dynamic_range_mw(power_w: FloatArray, dt_s: float, window_s: float) -> FloatArray:
    """max - min of the load over the window ending at each sample (MW); NaN until a window has passed."""
    p = np.asarray(power_w, dtype=np.float64)
    k = window_samples(window_s, dt_s) + 1  # samples spanning the window, both ends included
    out = np.full(p.shape, np.nan)
    if p.size >= k:
        view = np.lib.stride_tricks.sliding_window_view(p, k)
        out[k - 1:] = (view.max(axis=1) - view.min(axis=1)) / MW
    return out


def band_resolved(lo_hz: float, hi_hz: float, dt_s: float) -> str:
    """'full', 'partial' (the band straddles the series' Nyquist frequency) or 'none'."""
    nyquist = 0.5 / dt_s
    return "full" if hi_hz <= nyquist else ("partial" if lo_hz < nyquist else "none")


def band_amplitude_mw(power_w: FloatArray, dt_s: float, bands: list[tuple[float, float]]) -> FloatArray:
    """Oscillation amplitude (MW, peak) of the series in each band [lo, hi): a sine of amplitude A MW inside a
    band reads A there. The series is detrended (a straight line removed, so a steady ramp is not read as
    oscillation) and Hann-windowed; the band's mean square is summed from the one-sided power spectrum
    (Parseval, corrected for the window) and reported as the amplitude sqrt(2 x mean square) of the sine
    that carries it. NaN for a band wholly above the Nyquist frequency."""
    x = np.asarray(power_w, dtype=np.float64) / MW
    n = x.size
    out = np.full(len(bands), np.nan)
    if n < 4:
        return out
    t = np.arange(n)
    x = x - np.polyval(np.polyfit(t, x, 1), t)
    w = np.hanning(n)
    spec = np.abs(np.fft.rfft(x * w)) ** 2
    freq = np.fft.rfftfreq(n, dt_s)
    one_sided = np.full(freq.size, 2.0)
    one_sided[0] = 1.0
    if n % 2 == 0:
        one_sided[-1] = 1.0  # the Nyquist bin has no mirror
    ms_bins = one_sided * spec / (n * float(np.sum(w * w)))
    for i, (lo, hi) in enumerate(bands):
        if band_resolved(lo, hi, dt_s) == "none":
            continue
        sel = (freq >= lo) & (freq < hi)
        out[i] = math.sqrt(2.0 * float(ms_bins[sel].sum()))
    return out


def ramp_violations(power_w: FloatArray, dt_s: float, limits: GridLimits) -> tuple[FloatArray, FloatArray]:
    """Per sample, how far the ramp exceeds its limit (MW/s, 0 where within it or unchecked), up and down."""
    r = ramp_mw_per_s(power_w, dt_s, limits.ramp_window_s)
    r = np.nan_to_num(r)
    up = np.maximum(r - limits.ramp_up_mw_per_s, 0.0) if limits.ramp_up_mw_per_s is not None else np.zeros_like(r)
    down = np.maximum(-r - limits.ramp_down_mw_per_s, 0.0) if limits.ramp_down_mw_per_s is not None \
        else np.zeros_like(r)
    return up, down


def ramp_allowance_w(prev_w: float, dt_s: float, limits: GridLimits) -> tuple[float, float]:
    """The lowest and highest load (W) the ramp limit allows one step of dt_s after a load of prev_w (a
    per-step bound; the window's own bound is the same rate over the window)."""
    up = limits.ramp_up_mw_per_s * MW * dt_s if limits.ramp_up_mw_per_s is not None else math.inf
    down = limits.ramp_down_mw_per_s * MW * dt_s if limits.ramp_down_mw_per_s is not None else math.inf
    return prev_w - down, prev_w + up


def ramp_step_w(limits: GridLimits, step_s: float = math.inf) -> tuple[float, float]:
    """The largest instant change (W) down and up that keeps every window within the ramp limit when such
    changes come at most one per step_s: rate x min(window, step_s). A step shorter than the window shares
    the window with others (k steps in it must sum to rate x window); one longer than the window is seen
    alone in it, as an instant jump (a training job's compute<->communication transition is one: step_s
    inf). inf where the direction has no limit."""
    span = min(limits.ramp_window_s, step_s)
    down = limits.ramp_down_mw_per_s * MW * span if limits.ramp_down_mw_per_s is not None else math.inf
    up = limits.ramp_up_mw_per_s * MW * span if limits.ramp_up_mw_per_s is not None else math.inf
    return down, up


# ---- demand response ------------------------------------------------------------------------------


class DemandResponse(_Table):
    """A demand-response request: reduce to `reduce_to_mw`, or by `reduce_by_pct` of the load when it
    arrives, within `within_s` of `start_s`, hold it for `hold_s`, then restore no faster than the ramp limit."""

    id: Annotated[str, Field(min_length=1)]
    start_s: float = Field(ge=0)
    reduce_to_mw: PositiveMW | None = None
    reduce_by_pct: float | None = Field(None, gt=0, lt=100)
    within_s: float = Field(gt=0, le=86_400)
    hold_s: float = Field(gt=0, le=7 * 86_400)
    feed: Annotated[str, Field(min_length=1)] | None = None  # the utility feed it applies to; None: the site

    @model_validator(mode="after")
    def _one_target(self) -> DemandResponse:
        if (self.reduce_to_mw is None) == (self.reduce_by_pct is None):
            raise ValueError("give exactly one of reduce_to_mw and reduce_by_pct")
        return self

    def target_w(self, load_at_start_w: float) -> float:
        """The load (W) the event asks for, given the load when it arrived."""
        if self.reduce_to_mw is not None:
            return self.reduce_to_mw * MW
        assert self.reduce_by_pct is not None
        return load_at_start_w * (1.0 - self.reduce_by_pct / 100.0)


def dr_outcome(power_w: FloatArray, dt_s: float, t0_s: float, ev: DemandResponse,
               tolerance: float = 0.0) -> dict[str, float]:
    """How a series (samples at t0_s + k dt_s) met a demand-response event: the load it started from (mean of
    the 60 s before start), the target, the seconds from start until the load first reached the target
    (NaN: never), the share of the hold window (deadline to deadline + hold) at or under the target
    (x (1 + tolerance)), and whether it was reached by the deadline and held throughout."""
    p = np.asarray(power_w, dtype=np.float64)
    t = t0_s + np.arange(p.size) * dt_s
    before = p[(t >= ev.start_s - 60.0) & (t < ev.start_s)]
    load0 = float(before.mean()) if before.size else float(p[np.searchsorted(t, ev.start_s)])
    target = ev.target_w(load0)
    ok = p <= target * (1.0 + tolerance)
    after = (t >= ev.start_s) & ok
    reach_s = float(t[np.argmax(after)] - ev.start_s) if after.any() else math.nan
    deadline = ev.start_s + ev.within_s
    hold = (t >= deadline) & (t < deadline + ev.hold_s)
    share = float(ok[hold].mean()) if hold.any() else math.nan
    return {"load_at_start_w": load0, "target_w": target, "time_to_target_s": reach_s,
            "hold_share": share, "met": float(reach_s <= ev.within_s and share >= 1.0)}
