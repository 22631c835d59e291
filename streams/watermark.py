"""The site stage's completeness watermark: how far event time is complete, such that no single source can move it.

Pure numpy, no I/O (streams.tree calls it on every batch).

Inputs: each rack's newest frame time, the source each rack's frames travel through (its pp.telemetry
partition: one partition delivers its racks in order, different partitions do not keep pace with each other),
and whether the worker has a backlog (records not yet read, or a broker it cannot reach: it cannot tell).

- head: the event time most racks have reached, the k-th newest rack time (k = 2, or 1 + 10 % of the racks
  seen), so one future-dated frame, or a few, moves nothing.
- a rack is silent when its own source has moved on without it (its neighbours in the same partition are
  newer by more than `stale_after_s`); a source is silent when the head has moved on without it, unless the
  worker has a backlog: then the source is presumed still in the backlog, not silent ("the worker is behind").
- complete: the oldest newest-frame time over the racks that are neither silent nor in a silent source;
  every one of them has sent everything up to it. During a backlog a source none of whose racks has been
  read yet holds it too (its partition has not been reached).
- the watermark is `complete`, but never more than the lateness bound behind the head (the backlog bound,
  longer, while there is a backlog), so a source that really is gone delays windows, never stops them.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from powerplane.site import FloatArray, IntArray


class TreeSettingsLike(Protocol):
    """The bounds telemetry_stopped reads (streams.tree.TreeSettings has them)."""

    @property
    def window_s(self) -> float: ...
    @property
    def lateness_s(self) -> float: ...
    @property
    def backlog_grace_s(self) -> float: ...


HEAD_IGNORE_FRACTION = 0.1  # the newest tenth of the racks (at least one) does not set the head


def head_s(newest_s: FloatArray) -> float:
    """The k-th newest per-rack time (k = 1 + max(1, 10 % of the racks seen)); -inf when none is seen."""
    seen = newest_s[np.isfinite(newest_s)]
    if seen.size == 0:
        return -math.inf
    k = min(seen.size, 1 + max(1, int(HEAD_IGNORE_FRACTION * seen.size)))
    return float(np.partition(seen, seen.size - k)[seen.size - k])


def completeness_s(newest_s: FloatArray, source: IntArray, n_sources: int, head: float, stale_after_s: float,
                   backlog: bool, starting: bool) -> float:
    """Event time up to which every rack that is reporting has sent its frames (see the module docstring)."""
    seen = np.isfinite(newest_s)
    if not seen.any() or not math.isfinite(head):
        return -math.inf
    if starting and not seen.all():
        return -math.inf  # racks not heard from yet may still be on their way
    clipped = np.where(seen, np.minimum(newest_s, head), -np.inf)  # a future frame cannot make its neighbours silent
    src_head = np.full(n_sources, -np.inf)
    np.maximum.at(src_head, source, clipped)
    src_live = src_head >= head - stale_after_s
    if backlog:
        if (~np.isfinite(src_head[np.unique(source)])).any():
            return -math.inf  # a partition not read yet: its racks are still to come
        src_live[:] = True
    live = seen & (newest_s >= src_head[source] - stale_after_s) & src_live[source]
    return float(newest_s[live].min()) if live.any() else -math.inf


def telemetry_stopped(idle_s: float, since_backlog_s: float, backlog: bool, s: TreeSettingsLike) -> bool:
    """Whether the worker may close windows by the clock because telemetry has stopped altogether: nothing
    read for longer than a window and its lateness, no backlog now (records not read, or a broker out of
    reach: the frames are then late in wall time only), and none for `backlog_grace_s` (after a backlog or an
    outage the producers are still reconnecting and draining their spools: an empty input then is not
    telemetry stopping; seen: every rack paged silent once the broker was back, before the fleet resent)."""
    return (not backlog and since_backlog_s >= s.backlog_grace_s and idle_s > s.window_s + s.lateness_s)
