"""The live input for job-start notices (issue 16): what a `job.notice` on pp.jobs must pass before the controller
takes it, which site GPUs it names, and its answer. The controller's side is controllers/job_inbox.py; what a
notice does there is controllers.grid_limits GridControl.on_job_notice (docs/grid.md, "A job's start, announced").

A notice is taken only if it is signed with the scheduler role's key (the scheduler's prolog holds it:
powerplane.signing), is for this site, names only servers and GPUs the site has, starts no more than `MAX_PAST_S`
ago and no more than `MAX_AHEAD_S` ahead, states an expected power within every named GPU's power limits, and its
id is not already taken with other contents. Each check that fails is one line naming the field and the bound.
Replays across restarts: the answered ids live in the same kind of sqlite ledger as demand-response requests
(powerplane.grid_input.Ledger): the same record again is answered once, the same id with other contents refused.
"""

from __future__ import annotations

import re
import secrets
import time

import numpy as np

from powerplane.grid_input import Bounds
from powerplane.schemas import Event, JobNotice
from powerplane.signing import Keyring
from powerplane.site import IntArray, Site

# A notice published at the start arrives well within a second; a few seconds allow for the scheduler host's and
# the controller's clocks. Later, the job has started: its GPUs already stepped the site, and floors raised now
# would only hold them where they are (or, were the job not to come, step the site up).
MAX_PAST_S = 5.0
# A prolog announces the job and waits out the lead before the job runs: seconds to a couple of minutes (the
# pace takes its GPUs up in about 20 s on the 100 MW site). Ten minutes is already a long idle wait for the job's
# nodes; a start further out is a mistake (a wrong clock, a time zone), and a notice takes its GPUs out of the
# floor plan from its arrival (they are being made ready), so an early one would leave them unsmoothed.
MAX_AHEAD_S = 600.0
BOUNDS = Bounds(MAX_PAST_S, MAX_AHEAD_S)
_GPU = re.compile(r"^(?P<server>.+)/gpu(?P<slot>\d+)$")


class GpuNames:
    """The site's GPUs by the names a scheduler knows: a server (host) name for every GPU of it, and
    `<server>/gpu<N>` for its GPU N (the site's own GPU names, Site.gpu_id). The site lists GPUs server by
    server, so a server's GPUs are a contiguous run from its first."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.server = {sid: i for i, sid in enumerate(site.server_ids)}
        counts = np.bincount(site.gpu_server, minlength=len(site.server_ids))
        self.count = counts.astype(np.int64)
        self.first = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)

    def resolve(self, names: list[str], where: str) -> tuple[IntArray, str | None]:
        """The site GPU indexes the names stand for (sorted, each once), or the line saying which name is wrong."""
        out: list[IntArray] = []
        for i, name in enumerate(names):
            m = _GPU.match(name)
            server = m["server"] if m else name
            s = self.server.get(server)
            if s is None:
                return np.zeros(0, np.int64), (
                    f"{where}: field 'gpus'[{i}] = {name!r}: site {self.site.name} has no server {server!r} (names "
                    f"are a server, e.g. {self.site.server_ids[0]!r}, or a server's GPU, e.g. "
                    f"{self.site.gpu_id(0)!r})")
            n = int(self.count[s])
            if m is None:
                out.append(self.first[s] + np.arange(n, dtype=np.int64))
                continue
            slot = int(m["slot"])
            if slot >= n:
                return np.zeros(0, np.int64), (f"{where}: field 'gpus'[{i}] = {name!r}: server {server} has {n} "
                                               f"GPUs (gpu0 to gpu{n - 1})")
            out.append(np.array([self.first[s] + slot], dtype=np.int64))
        return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64), None


def check_notice(n: JobNotice, names: GpuNames, now_s: float, bounds: Bounds = BOUNDS) -> tuple[IntArray, str | None]:
    """(the notice's site GPU indexes, None) when it may be taken, else (nothing, the one line saying what is
    wrong). The signature is checked apart: `verify`."""
    site = names.site
    where = f"job.notice {n.id}"
    none = np.zeros(0, np.int64)
    if n.site != site.name:
        return none, f"{where}: field 'site' = {n.site!r}, but this controller runs site {site.name!r}"
    gpus, why = names.resolve(n.gpus, where)
    if why:
        return none, why
    if n.start_s < now_s - bounds.max_past_s:
        return none, (f"{where}: field 'start_s' is {now_s - n.start_s:.0f} s in the past (at most "
                      f"{bounds.max_past_s:g} s is taken: the job has started, a notice now changes nothing)")
    if n.start_s > now_s + bounds.max_ahead_s:
        return none, (f"{where}: field 'start_s' is {n.start_s - now_s:.0f} s ahead (at most {bounds.max_ahead_s:g} "
                      f"s: announce the job from its prolog, minutes before it runs)")
    if n.expected_w is not None:
        lo, hi = site.gpu_min_w[gpus], site.gpu_max_w[gpus]
        bad = np.flatnonzero((n.expected_w < lo) | (n.expected_w > hi))
        if bad.size:
            g = int(gpus[bad[0]])
            return none, (f"{where}: field 'expected_w' = {n.expected_w:g} W is outside {site.gpu_id(g)}'s power "
                          f"limits [{site.gpu_min_w[g]:g}, {site.gpu_max_w[g]:g}] W")
    return gpus, None


def verify(n: JobNotice, keyring: Keyring) -> str | None:
    """None when signed with a key of the scheduler keyring, else why not (a forgery, or another role's key)."""
    bad = keyring.verify(n)
    return f"job.notice {n.id}: {bad} (only the scheduler role's key may announce a job)" if bad else None


def notice_event(n: JobNotice, status: str, summary: str, component: str, now_s: float | None = None) -> Event:
    """The answer on pp.events: kind `job_notice`, one per notice. Accepted: info, and resolved at once (nothing is
    left to follow: the floors are commands on pp.audit, and they end 10 s past the start). Refused: a warning (the
    job will start unannounced, one step of its whole power), open as the other security refusals are, under an
    id of its own (a forgery naming a genuine job's id must not overwrite that job's answer)."""
    refused = status == "refused"
    ev_id = f"job-refused-{n.id}-{secrets.token_hex(4)}" if refused else f"job-{n.id}"
    return Event(id=ev_id, site=n.site, kind="job_notice", severity="warning" if refused else "info",
                 state="open" if refused else "resolved", levels=[], ts_s=time.time() if now_s is None else now_s,
                 deadline_s=n.start_s, summary=f"{component}: job notice {n.id} {status}: {summary}",
                 details={"notice_id": n.id, "status": status, "issuer": n.issuer, "start_s": n.start_s,
                          "gpus": len(n.gpus), "expected_w": n.expected_w, "component": component})
