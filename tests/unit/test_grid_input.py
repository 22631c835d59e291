"""The live demand-response input (powerplane/grid_input.py, controllers/grid_inbox.py): a grid.request is taken
only when signed with the grid key, for this site and one of its feeds, within what the caps can reach and within
the time bounds; a replay is answered once, also after a restart; the start is moved to the controller's clock."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from controllers.capping import CapSettings
from controllers.controller import CapController
from controllers.grid_inbox import GridInbox
from powerplane.grid_input import MAX_AHEAD_S, MAX_PAST_S, GridRecords, Ledger, as_demand_response
from powerplane.schemas import GridCancel, GridRequest, SchemaError
from powerplane.signing import Keyring
from powerplane.site_file import load_site

ROOT = Path(__file__).resolve().parents[2]
GRID = Keyring({"g1": b"\x07" * 32}, "g1")
COMMAND = Keyring({"k1": b"\x05" * 32}, "k1")
MW = 1e6


def _req(now: float, keys: Keyring = GRID, **kw: object) -> GridRequest:
    fields: dict[str, object] = dict(id="evt-1", site="lab", issuer="utility-ven", issued_at_s=now, start_s=now,
                                     reduce_by_pct=25.0, reduce_to_mw=None, within_s=30.0, hold_s=600.0)
    fields.update(kw)
    return keys.sign(GridRequest(**fields))  # type: ignore[arg-type]


def _inbox(tmp_path: Path, load_mw: float = 0.4) -> GridInbox:
    site = load_site(ROOT / "examples" / "lab.toml")
    ctl = CapController(site, COMMAND, CapSettings(), 30.0)
    ctl.level_power_w[ctl.grid.site_level] = load_mw * MW
    for lv in site.levels_of_kind("utility"):
        ctl.level_power_w[lv] = load_mw * MW / 2
    return GridInbox(ctl, GRID, Ledger(tmp_path / "grid.sqlite", GridRequest.decode))


def test_a_signed_request_round_trips_and_a_wrong_field_is_one_line() -> None:
    now = time.time()
    r = _req(now)
    assert GridRequest.decode(r.encode()) == r and GRID.verify(r) is None
    for bad, msg in (({"reduce_by_pct": 100.0}, "field 'reduce_by_pct' = 100: a site can shed more than 0 % and "
                                                "less than 100 %"),
                     ({"reduce_by_pct": None, "reduce_to_mw": -1.0}, "field 'reduce_to_mw' = -1: a target must "
                                                                     "be above 0 MW"),
                     ({"reduce_to_mw": 0.3}, "give exactly one of 'reduce_by_pct' and 'reduce_to_mw'")):
        d = r.to_wire() | bad
        with pytest.raises(SchemaError) as e:
            GridRequest.from_wire({k: v for k, v in d.items() if v is not None})
        assert str(e.value).startswith(f"grid.request evt-1: {msg}")


def test_accepted_now_starts_the_budget_and_is_answered_once_also_after_a_restart(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    now = time.time()
    r = _req(now)
    ans = inbox.take(r, now)
    assert ans is not None and ans.status == "accepted"
    assert ans.summary == "demand response evt-1: lab from 0.40 MW to 0.30 MW within 30 s, held 600 s"
    budget = inbox.ctl.grid.budget_w(now + 40.0, inbox.ctl.level_power_w)[inbox.ctl.grid.site_level]
    assert budget < 0.3 * MW  # the target, scaled so decide_caps holds the load under it
    assert inbox.take(r, now + 1.0) is None and inbox.duplicates == 1  # a redelivery: no second answer
    # A restart: the same ledger, a fresh controller whose loads are already down. The request is taken back from
    # the load it started from (0.4 MW), not the reduced one, and a replay of it is still answered once only.
    again = _inbox(tmp_path, load_mw=0.3)
    assert again.restore(now + 50.0) == [
        "restored: demand response evt-1: lab from 0.40 MW to 0.30 MW within 30 s, held 600 s"]
    assert again.take(r, now + 51.0) is None
    altered = _req(now, reduce_by_pct=50.0)
    ans = again.take(altered, now + 52.0)
    assert ans is not None and ans.status == "refused" and ans.security
    assert "id already taken by another request" in ans.summary


def test_a_scheduled_request_waits_for_its_start_then_ends(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    now = time.time()
    ans = inbox.take(_req(now, start_s=now + 120.0, within_s=10.0, hold_s=60.0), now)
    assert ans is not None and ans.status == "accepted" and "(in 120 s)" in ans.summary
    assert not inbox.ctl.grid.requests and inbox.due(now + 119.0) == []
    (started,) = inbox.due(now + 120.5)
    assert started.status == "started" and "from 0.40 MW to 0.30 MW" in started.summary
    (ended,) = inbox.due(now + 191.0)
    assert ended.status == "ended"


def test_a_first_start_takes_a_request_sent_before_it_and_passes_over_one_already_over(tmp_path: Path) -> None:
    """A controller's first read of pp.grid goes back two days (controllers.service): a request sent a day
    ahead, before the controller first ran, is accepted; one whose hold was over before it ran is history,
    logged and counted, neither refused with an alert nor recorded; one sent before it, started long ago and
    still held, is refused as late (the site did not shed on time: the operator is told)."""
    inbox = _inbox(tmp_path)
    now = inbox.started_s + 5.0
    ahead = _req(now - 3600.0, id="evt-ahead", start_s=now + 7200.0)
    over = _req(now - 86_400.0, id="evt-over", start_s=now - 80_000.0, hold_s=3600.0)
    late = _req(now - 7200.0, id="evt-late", start_s=now - 3600.0, hold_s=7200.0)
    ans = inbox.take(ahead, now)
    assert ans is not None and ans.status == "accepted" and "(in 7200 s)" in ans.summary
    assert inbox.take(over, now) is None and inbox.over_before_start == 1 and inbox.ledger.seen(over) is None
    ans = inbox.take(late, now)
    assert ans is not None and ans.status == "refused" and "field 'start_s' is 3600 s in the past" in ans.summary
    # After the start, a request over when it comes is refused as any late one is.
    sent_after = _req(now + 10.0, id="evt-after", start_s=now - 7200.0, hold_s=60.0)
    ans = inbox.take(sent_after, now + 20.0)
    assert ans is not None and ans.status == "refused"


@pytest.mark.parametrize(("kw", "reason"), [
    ({"site": "other"}, "field 'site' = 'other', but this controller runs site 'lab'"),
    ({"feed": "util-c"}, "field 'feed' = 'util-c': site lab has no such utility feed (it has: util-a, util-b)"),
    ({"feed": "site"}, "no such utility feed"),
    ({"start_s": -(MAX_PAST_S + 20.0)}, "field 'start_s' is 30 s in the past (at most 10 s is taken"),
    ({"start_s": MAX_AHEAD_S + 100.0}, "field 'start_s' is 172900 s ahead (at most 172800 s"),
    ({"reduce_by_pct": 60.0}, "field 'reduce_by_pct' = 60 of 0.40 MW asks for 0.16 MW, below the 0.25 MW lab draws "
                              "with every GPU at its minimum power limit"),
    ({"reduce_by_pct": None, "reduce_to_mw": 0.1, "feed": "util-a"}, "below the 0.12 MW util-a draws"),
])
def test_refusals_name_what_is_wrong_and_change_nothing(tmp_path: Path, kw: dict[str, object], reason: str) -> None:
    inbox = _inbox(tmp_path)
    now = 1_800_000_000.0
    if "start_s" in kw:
        kw = kw | {"start_s": now + float(kw["start_s"])}  # type: ignore[arg-type]
    ans = inbox.take(_req(now, **kw), now)
    assert ans is not None and ans.status == "refused" and not ans.security
    assert reason in ans.summary and ans.summary.startswith("grid.request evt-1: ")
    assert not inbox.ctl.grid.requests and not inbox.pending and inbox.ledger.seen(_req(now)) is None


def test_a_request_not_signed_with_the_grid_key_is_refused(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    now = time.time()
    forged = _req(now, keys=Keyring({"g1": b"\x08" * 32}, "g1"))  # the right key id, another key
    command_signed = _req(now, keys=COMMAND)  # the controller's own key is not the grid's
    unsigned = GridRequest.decode(_req(now).encode())
    unsigned.sig = ""
    reasons = []
    for r in (forged, command_signed, unsigned):
        ans = inbox.take(r, now)
        assert ans is not None and ans.status == "refused" and ans.security
        reasons.append(ans.summary)
    assert reasons == [
        "grid.request evt-1: bad signature (tampered, or signed with another key) (only the grid role's key may ask "
        "for demand response)",
        "grid.request evt-1: unknown signing key id 'k1' (only the grid role's key may ask for demand response)",
        "grid.request evt-1: unsigned grid.request (only the grid role's key may ask for demand response)"]
    # A forgery takes no id: the real request with that id is still accepted.
    assert not inbox.ctl.grid.requests
    ans = inbox.take(_req(now), now)
    assert ans is not None and ans.status == "accepted"


def test_the_start_moves_from_the_wall_clock_to_the_controllers_time_base() -> None:
    r = _req(1_800_000_000.0, start_s=1_800_000_060.0)
    # An evaluation's controller at t = 500 s when the wall clock reads 1_800_000_000: the start is 60 s later.
    assert as_demand_response(r, 1_800_000_000.0, 500.0).start_s == pytest.approx(560.0)
    ev = as_demand_response(r, 1_800_000_000.0, 1_800_000_000.0)  # the live controller decides on the wall clock
    assert (ev.start_s, ev.reduce_by_pct, ev.within_s, ev.hold_s, ev.feed) == (1_800_000_060.0, 25.0, 30.0, 600.0,
                                                                               None)
    assert np.isclose(ev.target_w(0.4 * MW), 0.3 * MW)


def test_answers_are_events_a_refusal_an_alert_of_its_own() -> None:
    from powerplane.grid_input import answer_event

    r = _req(1_800_000_000.0, feed="util-a")
    refused = answer_event(r, "refused", "bad signature", "controller", 1_800_000_001.0)
    started = answer_event(r, "started", "lab from 0.40 MW to 0.30 MW", "controller", 1_800_000_001.0)
    ended = answer_event(r, "ended", "hold over", "controller", 1_800_000_700.0)
    assert (refused.severity, refused.state, refused.kind) == ("warning", "open", "demand_response")
    assert refused.id.startswith("dr-refused-evt-1-")  # a forgery cannot overwrite the genuine request's answers
    assert (started.id, started.severity, started.state, started.levels) == ("dr-evt-1", "info", "open", ["util-a"])
    assert (ended.id, ended.state) == ("dr-evt-1", "resolved")
    assert started.summary == "controller: demand response evt-1 started: lab from 0.40 MW to 0.30 MW"
    assert started.details is not None and started.details["status"] == "started"


def _cancel(now: float, keys: Keyring = GRID, request_id: str = "evt-1") -> GridCancel:
    return keys.sign(GridCancel(id=f"{request_id}#cancel", site="lab", issuer="utility-ven", issued_at_s=now,
                                request_id=request_id))


def _limited_inbox(tmp_path: Path) -> GridInbox:
    """The lab site with ramp limits of 10 kW/s each way: a shed and its restore take seconds to watch."""
    text = (ROOT / "examples" / "lab.toml").read_text() + \
        "\n[grid]\nramp_up_mw_per_s = 0.01\nramp_down_mw_per_s = 0.01\n"
    (tmp_path / "lab.toml").write_text(text)
    site = load_site(tmp_path / "lab.toml")
    ctl = CapController(site, COMMAND, CapSettings(), 30.0)
    ctl.level_power_w[ctl.grid.site_level] = 0.4 * MW
    return GridInbox(ctl, GRID, Ledger(tmp_path / "grid.sqlite", GridRequest.decode))


def test_a_cancel_before_the_start_drops_the_request_and_a_restart_does_not_take_it_back(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    now = time.time()
    assert inbox.take(_req(now, start_s=now + 120.0), now) is not None
    c = _cancel(now + 10.0)
    ans = inbox.cancel(c, now + 10.0)
    assert ans is not None and ans.status == "cancelled" and ans.req.id == "evt-1"
    assert ans.summary == "by utility-ven: demand response evt-1: dropped before its start"
    assert inbox.due(now + 121.0) == [] and not inbox.ctl.grid.requests  # never starts
    ev = ans.event("controller", now + 10.0)
    assert ev.id == "dr-evt-1" and ev.state == "resolved" and ev.severity == "info"  # the request's event closes
    assert inbox.cancel(c, now + 11.0) is None and inbox.duplicates == 1  # delivered again: answered once
    again = _inbox(tmp_path)
    assert again.restore(now + 20.0) == [] and again.cancel(c, now + 21.0) is None


def test_a_cancel_during_the_shed_restores_from_the_budget_then_at_the_ramp_up_limit(tmp_path: Path) -> None:
    inbox = _limited_inbox(tmp_path)
    grid, lvl = inbox.ctl.grid, inbox.ctl.grid.site_level
    now = time.time()
    assert inbox.take(_req(now, within_s=30.0, hold_s=600.0), now) is not None
    assert grid.budget_w(now + 5.0, inbox.ctl.level_power_w)[lvl] == pytest.approx(0.35 * MW)  # 10 kW/s down
    ans = inbox.cancel(_cancel(now + 5.0), now + 5.0)
    assert ans is not None and ans.status == "cancelled"
    assert "called off; lab restores from 0.35 MW at the ramp-up limit" in ans.summary
    # Up from there at 10 kW/s: no step back to the load it started from, and no further shed.
    assert grid.budget_w(now + 8.0, inbox.ctl.level_power_w)[lvl] == pytest.approx(0.38 * MW)
    grid.budget_w(now + 90.0, inbox.ctl.level_power_w)
    assert not grid.requests  # far past the load it started from: the budget no longer binds and is gone
    assert inbox.due(now + 700.0) == []  # no `ended` for a request called off


def test_a_cancel_that_is_forged_or_names_nothing_in_force_changes_nothing(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    now = time.time()
    assert inbox.take(_req(now), now) is not None
    forged = inbox.cancel(_cancel(now + 1.0, keys=COMMAND), now + 1.0)
    assert forged is not None and forged.status == "refused" and forged.security
    assert "grid.cancel evt-1#cancel: unknown signing key id 'k1'" in forged.summary
    ev = forged.event("controller", now + 1.0)
    assert ev.severity == "warning" and ev.details is not None and ev.details["status"] == "cancel refused"
    unknown = inbox.cancel(_cancel(now + 2.0, request_id="evt-9"), now + 2.0)
    assert unknown is not None and unknown.status == "unknown" and "no request evt-9 in force here" in unknown.summary
    assert unknown.event("controller", now + 2.0).severity == "info"
    assert len(inbox.held) == 1 and len(inbox.ctl.grid.requests) == 1  # the request still holds


def test_pp_grid_carries_requests_and_cancels_each_decoded_by_its_schema() -> None:
    now = time.time()
    r, c = _req(now), _cancel(now)
    out = GridRecords.decode_many([r.encode(), c.encode(), b"\x01junk"])
    assert out[0] == r and out[1] == c and isinstance(out[2], SchemaError)
