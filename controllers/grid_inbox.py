"""The live controller's demand-response inbox (issue 16): signed `grid.request` records from pp.grid, checked
(powerplane.grid_input), held until their start and then handed to the capping policy's budget
(`CapController.on_demand_response`, controllers.grid_limits), each answered once. No I/O: the Kafka shell
(controllers.service) publishes the answers this returns.

Answers (an `Answer` each; the shell puts them on pp.events as kind `demand_response`, and the live controller
copies them to pp.audit): `accepted` on arrival (with the budget's one-line summary when the request starts at once,
else when it will start), `started` when a scheduled one starts, `ended` when its hold is over (the budget then
rises at the ramp-up limit), `refused` with the reason. A duplicate delivery of an accepted request is answered
once only; a refused request changes nothing.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controllers.controller import CapController
from powerplane.grid_input import (
    Bounds,
    Ledger,
    answer_event,
    as_demand_response,
    cancel_event,
    check_request,
    floor_w,
    verify,
)
from powerplane.job_input import notice_event
from powerplane.schemas import Event, GridCancel, GridRequest, JobNotice
from powerplane.signing import Keyring

log = logging.getLogger("powerplane.controller")


@dataclass
class Answer:
    """The answer to one signed record from the grid's side: a demand-response request here, a job notice in
    controllers.job_inbox. The Kafka shell publishes `event()` (controllers.service ControllerLoop.answer)."""

    req: GridRequest | JobNotice | GridCancel
    status: str  # accepted | started | ended | cancelled | refused; a cancel's own: refused | unknown
    summary: str
    security: bool = False  # refused for its signature or a reused id: also a dead letter

    @property
    def what(self) -> str:
        return _what(self.req)

    def event(self, component: str, now_s: float) -> Event:
        if isinstance(self.req, JobNotice):
            return notice_event(self.req, self.status, self.summary, component, now_s)
        if isinstance(self.req, GridCancel):
            return cancel_event(self.req, self.status, self.summary, component, now_s)
        return answer_event(self.req, self.status, self.summary, component, now_s)


def _what(rec: GridRequest | JobNotice | GridCancel) -> str:
    return ("job notice" if isinstance(rec, JobNotice) else "demand-response cancel" if isinstance(rec, GridCancel)
            else "demand response")


def _iso(ts_s: float) -> str:
    return datetime.fromtimestamp(ts_s, UTC).isoformat(timespec="seconds")


@dataclass
class GridInbox:
    ctl: CapController
    keyring: Keyring  # the grid role's keys
    ledger: Ledger[GridRequest]
    bounds: Bounds = field(default_factory=Bounds)
    pending: list[GridRequest] = field(default_factory=list)  # accepted, not started
    held: list[GridRequest] = field(default_factory=list)  # started, hold not over
    duplicates: int = 0
    # When this inbox began: a request sent before it whose hold was already over when read (the catch-up of a
    # first start, or one sent during an outage) is history, logged and counted, not answered as a refusal.
    started_s: float = field(default_factory=time.time)
    over_before_start: int = 0

    def __post_init__(self) -> None:
        self.floor_w = floor_w(self.ctl.site)

    def restore(self, now_s: float) -> list[str]:
        """Take back the accepted requests whose hold is not over (a restart): started ones from the load they
        started from, the rest to wait for their start. Returns a log line each."""
        lines = []
        for req, load0 in self.ledger.active(now_s):
            if req.site != self.ctl.site.name:
                continue
            if req.start_s <= now_s and math.isfinite(load0):
                ev = as_demand_response(req, now_s, now_s)
                lines.append(f"restored: {self.ctl.on_demand_response(ev, load0)}")
                self.held.append(req)
            else:
                self.pending.append(req)
                lines.append(f"restored: demand response {req.id} starting {_iso(req.start_s)}")
        return lines

    def take(self, req: GridRequest, now_s: float) -> Answer | None:
        """One request as it arrives; its answer (None: a duplicate of one already answered, or one over before
        this inbox began)."""
        done, ans = screen(self, req, verify(req, self.keyring), "request", "id")
        if done:
            return ans
        if req.end_s() <= now_s and req.issued_at_s < self.started_s:
            self.over_before_start += 1
            log.info("demand response %s (sent %s by %s): its hold ended %s, before this controller read it: not "
                     "taken", req.id, _iso(req.issued_at_s), req.issuer, _iso(req.end_s()))
            return None
        why = check_request(req, self.ctl.site, self.floor_w, self.ctl.level_power_w, now_s, self.bounds)
        if why:
            return Answer(req, "refused", why)
        self.ledger.accept(req, req.end_s())
        if req.start_s <= now_s:
            return Answer(req, "accepted", self._start(req, now_s))
        self.pending.append(req)
        return Answer(req, "accepted", f"from {req.issuer}, starting {_iso(req.start_s)} (in "
                                       f"{req.start_s - now_s:.0f} s), {_ask(req)}")

    def due(self, now_s: float) -> list[Answer]:
        """Start the pending requests whose start has come, and close the held ones whose hold is over."""
        out = []
        for req in [r for r in self.pending if r.start_s <= now_s]:
            self.pending.remove(req)
            out.append(Answer(req, "started", self._start(req, now_s)))
        for req in [r for r in self.held if r.end_s() <= now_s]:
            self.held.remove(req)
            out.append(Answer(req, "ended", f"hold over at {_iso(req.end_s())}: the budget rises at the ramp-up "
                                            "limit and the caps come back as it no longer binds"))
        return out

    def cancel(self, c: GridCancel, now_s: float) -> Answer | None:
        """The utility calls request `c.request_id` off: dropped if it has not started, else restored from where
        its budget is at the ramp-up limit (controllers.grid_limits); answered on the request's own event. A cancel
        of a request not in force here is answered `unknown`; one not signed with the grid key is refused. None: a
        cancel delivered again."""
        bad = verify(c, self.keyring)
        if bad or c.site != self.ctl.site.name:
            why = bad or f"grid.cancel {c.id}: site {c.site!r} is not this controller's ({self.ctl.site.name})"
            return Answer(c, "refused", why, security=bool(bad))
        req = next((r for r in [*self.pending, *self.held] if r.id == c.request_id), None)
        if req is None:
            if self.ledger.status(c.request_id) == "cancelled":
                self.duplicates += 1
                return None
            return Answer(c, "unknown", f"no request {c.request_id} in force here (over, refused, or never "
                                        "received): nothing to call off")
        self.pending = [r for r in self.pending if r is not req]
        self.held = [r for r in self.held if r is not req]
        self.ledger.cancel(req.id)
        return Answer(req, "cancelled", f"by {c.issuer}: {self.ctl.grid.cancel(req.id, now_s)}")

    def _start(self, req: GridRequest, now_s: float) -> str:
        summary = self.ctl.on_demand_response(as_demand_response(req, now_s, now_s))
        self.ledger.started(req.id, self.ctl.grid.load0_of(req.id))
        self.held.append(req)
        return summary


def screen(inbox: Any, rec: GridRequest | JobNotice, bad: str | None, noun: str,
           id_word: str) -> tuple[bool, Answer | None]:
    """The first look every signed input takes (this inbox and controllers.job_inbox): `bad`, the signature's
    verdict, refuses it; an id the ledger holds is a redelivery (answered once: counted in `inbox.duplicates`)
    or, with other contents, refused. (True, the answer or None) when that settles the record."""
    if bad:
        return True, Answer(rec, "refused", bad, security=True)
    seen = inbox.ledger.seen(rec)
    if seen == "same":
        inbox.duplicates += 1
        log.info("%s %s delivered again: already answered", _what(rec), rec.id)
        return True, None
    if seen == "other":
        return True, Answer(rec, "refused", f"{rec.SCHEMA} {rec.id}: id already taken by another {noun} (a reused "
                                            f"{id_word} or an altered replay): send a new id", security=True)
    return False, None


def _ask(req: GridRequest) -> str:
    what = f"by {req.reduce_by_pct:g} %" if req.reduce_by_pct is not None else f"to {req.reduce_to_mw:g} MW"
    return f"reduce {req.feed or 'the site'} {what} within {req.within_s:g} s, hold {req.hold_s:g} s"
