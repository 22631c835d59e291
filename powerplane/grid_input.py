"""The live demand-response input (issue 16): what a `grid.request` on pp.grid must pass before the controller
takes it, the durable record of the requests it has answered, and the answer itself.

A request is taken only if it is signed with the grid role's key (the utility's gateway holds it: powerplane.signing),
is for this site and one of its utility feeds, asks for a reduction the caps can reach, starts no more than
`max_past_s` ago (a late delivery, or a captured request played back later, changes nothing) and no more than
`max_ahead_s` ahead (a date typed a year out is a mistake, not a plan), and its id is not already taken with other
contents. Each check that fails is one line naming the field and the bound.

Replays across restarts: the ids of answered requests live in a sqlite file in the controller's state directory
(as the actuator's journal keeps its command ids: actuators/journal.py). A record delivered again with the same id
and the same signature is the same request (a redelivery after a restart, or a replay inside the window): it is
taken once and its answer is not repeated. The same id with other contents is refused. An accepted request whose
hold has not ended is read back at start, with the load it started from, so a restarted controller keeps the budget
it was holding instead of dropping the site's reduction. The ledger serves the job-start notices too
(powerplane.job_input), each input in a file of its own.

A `grid.cancel` on the same topic calls a request off, signed with the same key: the request's row is marked
cancelled (a restart does not take it back), and the answer resolves the request's own event.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np

from powerplane.grid import MW, DemandResponse
from powerplane.schemas import Event, GridCancel, GridRequest, SchemaError
from powerplane.signing import Keyring
from powerplane.site import KIND, FloatArray, Site

MAX_PAST_S = 10.0  # a request starting longer ago is stale: a request published now arrives in well under a second
MAX_AHEAD_S = 2 * 86_400.0  # day-ahead programs announce the day before; two days leave room for a weekend's notice
MAX_TARGET_MW = 1e5  # powerplane.grid.PositiveMW


@dataclass(frozen=True)
class Bounds:
    max_past_s: float = MAX_PAST_S
    max_ahead_s: float = MAX_AHEAD_S


def floor_w(site: Site) -> FloatArray:
    """Level-indexed: the lowest load (wall W) the caps can hold each level to, every GPU at its minimum power limit
    and every server's other load at nameplate (caps do not lower it). A target below it cannot be met."""
    server = site.server_input_w(site.gpu_min_w)
    rack = np.add.reduceat(server, site.rack_server_start[:-1].astype(np.int64))
    return site.rollup_w(np.asarray(rack, dtype=np.float64))


def check_request(req: GridRequest, site: Site, floor: FloatArray, load_w: FloatArray, now_s: float,
                  bounds: Bounds = Bounds()) -> str | None:
    """None when the request may be taken, else the one line saying what is wrong (the signature is checked
    apart: `verify`). `load_w`: the levels' loads now (NaN unknown), for a reduction stated in percent."""
    where = f"grid.request {req.id}"
    if req.site != site.name:
        return f"{where}: field 'site' = {req.site!r}, but this controller runs site {site.name!r}"
    if req.feed is not None and (req.feed not in site.level_index
                                 or site.level_kind[site.level(req.feed)] != KIND["utility"]):
        feeds = ", ".join(site.level_ids[i] for i in site.levels_of_kind("utility")) or "none"
        return f"{where}: field 'feed' = {req.feed!r}: site {site.name} has no such utility feed (it has: {feeds})"
    if req.start_s < now_s - bounds.max_past_s:
        return (f"{where}: field 'start_s' is {now_s - req.start_s:.0f} s in the past (at most "
                f"{bounds.max_past_s:g} s is taken: a late or replayed request changes nothing)")
    if req.start_s > now_s + bounds.max_ahead_s:
        return (f"{where}: field 'start_s' is {req.start_s - now_s:.0f} s ahead (at most {bounds.max_ahead_s:g} s: "
                f"re-send it closer to the day)")
    level = site.level(req.feed) if req.feed is not None else int(site.levels_of_kind("site")[0])
    lowest_w = float(floor[level])
    if req.reduce_to_mw is not None:
        target_w = req.reduce_to_mw * MW
        what = f"field 'reduce_to_mw' = {req.reduce_to_mw:g}"
    else:
        assert req.reduce_by_pct is not None
        target_w = float(load_w[level]) * (1.0 - req.reduce_by_pct / 100.0)
        what = f"field 'reduce_by_pct' = {req.reduce_by_pct:g} of {float(load_w[level]) / MW:.2f} MW"
    if req.reduce_to_mw is not None and req.reduce_to_mw > MAX_TARGET_MW:
        return f"{where}: {what}: above {MAX_TARGET_MW:g} MW, no site's load"
    if math.isfinite(target_w) and target_w < lowest_w:
        return (f"{where}: {what} asks for {target_w / MW:.2f} MW, below the {lowest_w / MW:.2f} MW "
                f"{site.level_ids[level]} draws with every GPU at its minimum power limit")
    return None


def verify(req: GridRequest | GridCancel, keyring: Keyring) -> str | None:
    """None when signed with a key of the grid keyring, else why not (a forgery, or another role's key)."""
    bad = keyring.verify(req)
    return f"{req.SCHEMA} {req.id}: {bad} (only the grid role's key may ask for demand response)" if bad else None


def as_demand_response(req: GridRequest, wall_now_s: float, ctl_now_s: float) -> DemandResponse:
    """The controller's form of the request, its start moved from the wall clock to the controller's time base:
    the live controller decides on the wall clock (the two are the same), an evaluation on its twin's clock."""
    return DemandResponse(id=req.id, start_s=max(0.0, ctl_now_s + (req.start_s - wall_now_s)),
                          reduce_to_mw=req.reduce_to_mw, reduce_by_pct=req.reduce_by_pct, within_s=req.within_s,
                          hold_s=req.hold_s, feed=req.feed)


class Answered(Protocol):
    """What the ledger keeps of a record: its id and its bytes (a grid request, a job notice)."""

    id: str

    def encode(self) -> bytes: ...


R = TypeVar("R", bound=Answered)


def digest(rec: Answered) -> str:
    return hashlib.sha256(rec.encode()).hexdigest()


class Ledger(Generic[R]):
    """The answered records of one signed input (demand-response requests; job notices: powerplane.job_input),
    durable (sqlite, committed per answer: a few a day, or one per job start). `decode` reads a kept record back."""

    def __init__(self, path: str | Path, decode: Callable[[bytes], R]) -> None:
        self.path = Path(path)
        self.decode = decode
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, digest TEXT NOT NULL, "
                         "status TEXT NOT NULL, end_s REAL, record BLOB, load0_w REAL)")
        self._db.commit()

    def seen(self, rec: R) -> str | None:
        """None: a new id; 'same': this very record again; 'other': the id with other contents."""
        row = self._db.execute("SELECT digest FROM requests WHERE id = ?", (rec.id,)).fetchone()
        return None if row is None else ("same" if row[0] == digest(rec) else "other")

    def accept(self, rec: R, end_s: float) -> None:
        """Remember an accepted record, in force until end_s (refused ones are not kept: a forger must not be able
        to take an id)."""
        self._db.execute("INSERT OR IGNORE INTO requests (id, digest, status, end_s, record) VALUES (?, ?, ?, ?, ?)",
                         (rec.id, digest(rec), "accepted", end_s, rec.encode()))
        self._db.commit()

    def started(self, req_id: str, load0_w: float) -> None:
        """The load a request started from: a restart takes the budget up again from there, not from the reduced
        load."""
        self._db.execute("UPDATE requests SET load0_w = ? WHERE id = ?",
                         (load0_w if math.isfinite(load0_w) else None, req_id))
        self._db.commit()

    def status(self, rec_id: str) -> str | None:
        """'accepted' or 'cancelled' (None: never accepted)."""
        row = self._db.execute("SELECT status FROM requests WHERE id = ?", (rec_id,)).fetchone()
        return None if row is None else str(row[0])

    def cancel(self, rec_id: str) -> None:
        """No longer in force: a restart does not take it back (active())."""
        self._db.execute("UPDATE requests SET status = 'cancelled' WHERE id = ?", (rec_id,))
        self._db.commit()

    def active(self, now_s: float) -> list[tuple[R, float]]:
        """Accepted records still in force at now_s, with the load each started from (NaN: not yet, or none)."""
        rows = self._db.execute("SELECT record, load0_w FROM requests WHERE status = 'accepted' AND end_s > ? "
                                "ORDER BY end_s", (now_s,)).fetchall()
        return [(self.decode(rec), math.nan if load0 is None else float(load0)) for rec, load0 in rows]

    def close(self) -> None:
        self._db.close()


def answer_event(req: GridRequest, status: str, summary: str, component: str, now_s: float | None = None) -> Event:
    """The answer on pp.events: kind `demand_response`, one event id per request; info and open while it is taken
    (accepted, started), resolved when its hold has ended; a refusal is a warning (an alert: the utility asked and
    the site will not comply), open as the other security refusals are (ack_refused). The one-line summary says
    what the controller will do or why it will not."""
    refused = status == "refused"
    over = status in ("ended", "cancelled")
    # A refusal's own id: a forgery naming a genuine request's id must not overwrite that request's answers.
    ev_id = f"dr-refused-{req.id}-{secrets.token_hex(4)}" if refused else f"dr-{req.id}"
    return Event(id=ev_id, site=req.site, kind="demand_response", severity="warning" if refused else "info",
                 state="resolved" if over else "open", levels=[req.feed] if req.feed else [],
                 ts_s=time.time() if now_s is None else now_s, deadline_s=req.start_s + req.within_s,
                 summary=f"{component}: demand response {req.id} {status}: {summary}",
                 details={"request_id": req.id, "status": status, "issuer": req.issuer, "start_s": req.start_s,
                          "reduce_by_pct": req.reduce_by_pct, "reduce_to_mw": req.reduce_to_mw,
                          "within_s": req.within_s, "hold_s": req.hold_s, "feed": req.feed, "component": component})


def cancel_event(c: GridCancel, status: str, summary: str, component: str, now_s: float | None = None) -> Event:
    """The answer to a cancel that names no request this controller holds (`unknown`: already over, or never
    taken), or that is refused (a warning, as a refused request is). A cancel that takes is answered on the
    request's own event instead (answer_event, status `cancelled`)."""
    refused = status == "refused"
    return Event(id=f"dr-cancel-{c.id}-{secrets.token_hex(4)}", site=c.site, kind="demand_response",
                 severity="warning" if refused else "info", state="open" if refused else "resolved", levels=[],
                 ts_s=time.time() if now_s is None else now_s, deadline_s=None,
                 summary=f"{component}: demand response {c.request_id} cancel {status}: {summary}",
                 details={"request_id": c.request_id, "cancel_id": c.id, "status": f"cancel {status}",
                          "issuer": c.issuer, "component": component})


class GridRecords:
    """What pp.grid carries: requests and cancels, each decoded by its own schema (the controller's topic table
    names one decoder per topic). Anything else reads as a request, and fails as one."""

    @staticmethod
    def decode_many(values: Sequence[bytes]) -> list[GridRequest | GridCancel | SchemaError]:
        out: list[GridRequest | GridCancel | SchemaError] = []
        for v in values:
            try:
                d = GridRequest._unpack(v)
                kind = GridCancel if isinstance(d, dict) and d.get("schema") == GridCancel.SCHEMA else GridRequest
                out.append(kind.from_wire(d))
            except SchemaError as e:
                out.append(e)
        return out

