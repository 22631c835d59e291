"""The live controller's job-notice inbox (issue 16): signed `job.notice` records from pp.jobs, checked
(powerplane.job_input) and handed at once to the ramp limiter (`CapController.on_job_notice`,
controllers.grid_limits), which raises the named GPUs' floors, paced, ahead of the start; each answered once.
No I/O: the Kafka shell (controllers.service) publishes the answers this returns.

Answers (an `Answer` each, controllers.grid_inbox; on pp.events as kind `job_notice`, copied with the notice to
pp.audit by the live controller): `accepted` on arrival, with the ramp limiter's one line (how many GPUs, when,
how far their floors go up), or `refused` with the reason. A duplicate delivery of an accepted notice is answered
once only; a refused notice changes nothing. A notice needs no later answer: its floors end by themselves 10 s
past the start (`GridControl.window_s`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from controllers.controller import CapController
from controllers.grid_inbox import Answer, screen
from powerplane.config import Config
from powerplane.grid_input import Bounds, Ledger
from powerplane.job_input import BOUNDS, GpuNames, check_notice, verify
from powerplane.schemas import JobNotice
from powerplane.signing import Keyring, load_keyring, scheduler_key_path
from powerplane.site import IntArray

log = logging.getLogger("powerplane.controller")


@dataclass
class JobInbox:
    ctl: CapController
    keyring: Keyring  # the scheduler role's keys
    ledger: Ledger[JobNotice]
    bounds: Bounds = BOUNDS
    duplicates: int = 0

    def __post_init__(self) -> None:
        self.names = GpuNames(self.ctl.site)

    def restore(self, now_s: float) -> list[str]:
        """Take back the accepted notices whose floors would still hold (a restart just before a job's start
        must not drop its floors). Returns a log line each."""
        lines = []
        for n, _ in self.ledger.active(now_s):
            gpus, why = check_notice(n, self.names, n.start_s, Bounds(0.0, 0.0))  # site and GPUs only
            if why is None:
                lines.append(f"restored: {self._hand(n, gpus)}")
        return lines

    def take(self, n: JobNotice, now_s: float) -> Answer | None:
        """One notice as it arrives; its answer (None: a duplicate of one already answered)."""
        done, ans = screen(self, n, verify(n, self.keyring), "notice", "job id")
        if done:
            return ans
        gpus, why = check_notice(n, self.names, now_s, self.bounds)
        if why:
            return Answer(n, "refused", why)
        self.ledger.accept(n, n.start_s + self.ctl.grid.window_s)
        lead_s = n.start_s - now_s
        when = f"in {lead_s:.0f} s" if lead_s >= 0.0 else f"{-lead_s:.0f} s late"
        return Answer(n, "accepted", f"from {n.issuer}, {when}: {self._hand(n, gpus)}{self._moot()}")

    def _hand(self, n: JobNotice, gpus: IntArray) -> str:
        # The live controller's time base is the wall clock: the notice's start is its start.
        return self.ctl.on_job_notice(n.id, gpus, n.start_s, n.expected_w)

    def _moot(self) -> str:
        """Why an accepted notice will move no GPU here, if it will not."""
        if "power_floor" not in self.ctl.actions:
            return ' (but this controller sends no floors: power_floors = "off")'
        lim = self.ctl.site.grid
        if lim is None or lim.ramp_up_mw_per_s is None:
            return " (but the site states no ramp-up limit: no floor is raised)"
        if not self.ctl.grid.train.size:  # GridControl.floors raises none on a site without job classes
            return " (but the site has no training or best-effort GPUs: the ramp limiter raises no floor)"
        return ""


def job_inbox(cfg: Config, ctl: CapController, state: Path) -> JobInbox:
    """The job-notice inbox of a controller whose state directory is `state` (a shadow's apart), with the notices
    accepted before a restart taken back."""
    keys = load_keyring(scheduler_key_path(cfg.signing_key_file, cfg.scheduler_key_file), cfg.scheduler_key_id,
                        create=True)
    inbox = JobInbox(ctl, keys, Ledger(state / "job-notices.sqlite", JobNotice.decode))
    for line in inbox.restore(time.time()):
        log.info("%s", line)
    return inbox
