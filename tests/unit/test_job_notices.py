"""The live job-notice input (powerplane/job_input.py, controllers/job_inbox.py): a job.notice is taken only when
signed with the scheduler key, for this site, naming servers and GPUs it has, within the time and power bounds;
the ramp limiter then floors exactly the named GPUs up before the start; a replay is answered once, also after a
restart; a forgery or a reused id is refused and changes nothing."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from controllers.capping import CapSettings
from controllers.controller import CapController
from controllers.job_inbox import JobInbox
from controllers.service import live_actions
from powerplane.config import Config
from powerplane.grid_input import Ledger
from powerplane.job_input import MAX_AHEAD_S, MAX_PAST_S, GpuNames, notice_event
from powerplane.schemas import JobNotice, SchemaError
from powerplane.signing import Keyring
from powerplane.site_file import load_site

ROOT = Path(__file__).resolve().parents[2]
SCHEDULER = Keyring({"s1": b"\x0b" * 32}, "s1")
GRID = Keyring({"g1": b"\x07" * 32}, "g1")
COMMAND = Keyring({"k1": b"\x05" * 32}, "k1")
RAMP = "\n[grid]\nramp_up_mw_per_s = 0.015\nramp_down_mw_per_s = 0.015\n"  # as lab-grid-ramp.toml


def _notice(now: float, keys: Keyring = SCHEDULER, **kw: object) -> JobNotice:
    fields: dict[str, object] = dict(id="4711.0", site="lab", issuer="slurm prolog on head-1", issued_at_s=now,
                                     start_s=now + 30.0, gpus=["rack-02-s06", "rack-03-s07/gpu2"], expected_w=500.0)
    fields.update(kw)
    return keys.sign(JobNotice(**fields))  # type: ignore[arg-type]


def _inbox(tmp_path: Path, floors: bool = True, ramp: str = RAMP) -> JobInbox:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "lab.toml"
    path.write_text((ROOT / "examples" / "lab.toml").read_text() + ramp)
    ctl = CapController(load_site(path), COMMAND, CapSettings(), 30.0,
                        actions=live_actions(Config(power_floors="on" if floors else "off")))
    return JobInbox(ctl, SCHEDULER, Ledger(tmp_path / "jobs.sqlite", JobNotice.decode))


def test_a_signed_notice_round_trips_and_a_wrong_field_is_one_line() -> None:
    n = _notice(1_800_000_000.0)
    assert JobNotice.decode(n.encode()) == n and SCHEDULER.verify(n) is None
    gpus = "field 'gpus' must name at least one server or GPU, and no empty name"
    for bad, msg in (({"gpus": []}, gpus), ({"gpus": ["rack-01-s00", ""]}, gpus),
                     ({"issuer": ""}, "fields 'id', 'site' and 'issuer' must not be empty"),
                     ({"expected_w": -5.0}, "field 'expected_w' = -5 out of range")):
        with pytest.raises(SchemaError) as e:
            JobNotice.from_wire(n.to_wire() | bad)
        assert str(e.value).startswith(f"job.notice 4711.0: {msg}"), str(e.value)


def test_gpu_names_are_servers_or_a_servers_gpu_as_the_site_names_them(tmp_path: Path) -> None:
    site = _inbox(tmp_path).ctl.site
    names = GpuNames(site)
    gpus, why = names.resolve(["rack-02-s06", "rack-03-s07/gpu2", "rack-02-s06/gpu0"], "here")
    assert why is None
    assert [site.gpu_id(int(g)) for g in gpus] == [f"rack-02-s06/gpu{i}" for i in range(8)] + ["rack-03-s07/gpu2"]
    assert (site.gpu_server[gpus[:8]] == site.server_ids.index("rack-02-s06")).all()


def test_an_accepted_notice_floors_exactly_its_gpus_up_before_the_start(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    ctl, site = inbox.ctl, inbox.ctl.site
    now = 1_800_000_000.0
    ans = inbox.take(_notice(now), now)
    assert ans is not None and ans.status == "accepted" and not ans.security
    assert ans.summary.startswith("from slurm prolog on head-1, in 30 s: job 4711.0: 9 GPUs start at 2027-01-15 ")
    (held,) = ctl.grid.notices
    want = [site.gpu_id(g) for g in range(site.n_gpus)
            if site.gpu_id(g).startswith("rack-02-s06/") or site.gpu_id(g) == "rack-03-s07/gpu2"]
    assert [site.gpu_id(int(g)) for g in held.gpus] == want and held.start_s == now + 30.0
    assert (held.to_w == 500.0).all()
    # What the floors do with it: nothing well before the start; at the start every named GPU at the power it
    # will compute at, and no other GPU floored (the lab's readings are not in: no plan floors of its own).
    none = np.full(site.n_gpus, np.nan)
    assert np.isnan(ctl.grid.floors(none, none, None, now + 1.0)).all()
    at_start = ctl.grid.floors(none, none, None, now + 29.9)
    assert (at_start[held.gpus] == 500.0).all() and np.isnan(np.delete(at_start, held.gpus)).all()


def test_a_notice_is_answered_once_also_after_a_restart_and_a_reused_id_is_refused(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    now = time.time()
    n = _notice(now)
    first = inbox.take(n, now)
    assert first is not None and first.status == "accepted"
    assert inbox.take(n, now + 1.0) is None and inbox.duplicates == 1  # a redelivery: no second answer
    # A restart before the start: the same ledger, a fresh controller; the notice is taken back (its floors are
    # still to come), and its replay is still answered once only.
    again = _inbox(tmp_path)
    (line,) = again.restore(now + 5.0)
    assert line.startswith("restored: job 4711.0: 9 GPUs start at ") and len(again.ctl.grid.notices) == 1
    assert again.take(n, now + 6.0) is None
    altered = _notice(now, gpus=["rack-01-s06"])
    ans = again.take(altered, now + 7.0)
    assert ans is not None and ans.status == "refused" and ans.security
    assert ans.summary == ("job.notice 4711.0: id already taken by another notice (a reused job id or an altered "
                           "replay): send a new id")
    assert [len(x.gpus) for x in again.ctl.grid.notices] == [9]  # the altered one changed nothing
    assert _inbox(tmp_path).restore(now + 41.0) == []  # its floors are over 10 s past the start: nothing to restore


@pytest.mark.parametrize(("kw", "reason"), [
    ({"site": "other"}, "field 'site' = 'other', but this controller runs site 'lab'"),
    ({"gpus": ["rack-01-s00", "rack-09-s00"]}, "field 'gpus'[1] = 'rack-09-s00': site lab has no server "
                                               "'rack-09-s00' (names are a server, e.g. 'rack-01-s00', or a "
                                               "server's GPU, e.g. 'rack-01-s00/gpu0')"),
    ({"gpus": ["rack-01-s00/gpu8"]}, "field 'gpus'[0] = 'rack-01-s00/gpu8': server rack-01-s00 has 8 GPUs (gpu0 "
                                     "to gpu7)"),
    ({"gpus": ["rack-01-s00:3"]}, "field 'gpus'[0] = 'rack-01-s00:3': site lab has no server 'rack-01-s00:3'"),
    ({"start_s": -(MAX_PAST_S + 10.0)}, "field 'start_s' is 15 s in the past (at most 5 s is taken: the job has "
                                        "started"),
    ({"start_s": MAX_AHEAD_S + 60.0}, "field 'start_s' is 660 s ahead (at most 600 s"),
    ({"expected_w": 800.0}, "field 'expected_w' = 800 W is outside rack-02-s06/gpu0's power limits [200, 700] W"),
    ({"expected_w": 150.0}, "field 'expected_w' = 150 W is outside"),
])
def test_refusals_name_what_is_wrong_and_change_nothing(tmp_path: Path, kw: dict[str, object], reason: str) -> None:
    inbox = _inbox(tmp_path)
    now = 1_800_000_000.0
    if "start_s" in kw:
        kw = kw | {"start_s": now + float(kw["start_s"])}  # type: ignore[arg-type]
    ans = inbox.take(_notice(now, **kw), now)
    assert ans is not None and ans.status == "refused" and not ans.security
    assert ans.summary.startswith(f"job.notice 4711.0: {reason}"), ans.summary
    assert not inbox.ctl.grid.notices and inbox.ledger.seen(_notice(now)) is None


def test_a_notice_not_signed_with_the_scheduler_key_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    now = time.time()
    forged = _notice(now, keys=Keyring({"s1": b"\x0c" * 32}, "s1"))  # the right key id, another key
    unsigned = JobNotice.decode(_notice(now).encode())
    unsigned.sig = ""
    reasons = []
    for n in (forged, _notice(now, keys=GRID), _notice(now, keys=COMMAND), unsigned):
        ans = inbox.take(n, now)
        assert ans is not None and ans.status == "refused" and ans.security
        reasons.append(ans.summary.removeprefix("job.notice 4711.0: "))
    why = " (only the scheduler role's key may announce a job)"
    assert reasons == [f"bad signature (tampered, or signed with another key){why}",
                       f"unknown signing key id 'g1'{why}", f"unknown signing key id 'k1'{why}",
                       f"unsigned job.notice{why}"]
    # Nothing reached the ramp limiter, and a forgery takes no id: the genuine notice is still accepted.
    assert not inbox.ctl.grid.notices
    ans = inbox.take(_notice(now), now)
    assert ans is not None and ans.status == "accepted"


def test_an_accepted_notice_says_when_it_will_move_nothing(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    off = _inbox(tmp_path / "off", floors=False).take(_notice(now), now)
    assert off is not None and off.summary.endswith('(but this controller sends no floors: power_floors = "off")')
    flat = _inbox(tmp_path / "flat", ramp="").take(_notice(now), now)
    assert flat is not None and flat.summary.endswith("(but the site states no ramp-up limit: no floor is raised)")
    late = _inbox(tmp_path / "late").take(_notice(now, start_s=now - 3.0), now)  # within the 5 s: clocks differ
    assert late is not None and late.status == "accepted" and late.summary.startswith("from slurm prolog on "
                                                                                     "head-1, 3 s late: job 4711.0")


def test_answers_are_events_a_refusal_an_alert_of_its_own() -> None:
    n = _notice(1_800_000_000.0)
    ok = notice_event(n, "accepted", "job 4711.0: 9 GPUs start at ...", "controller", 1_800_000_001.0)
    refused = notice_event(n, "refused", "bad signature", "controller", 1_800_000_001.0)
    assert (ok.id, ok.kind, ok.severity, ok.state) == ("job-4711.0", "job_notice", "info", "resolved")
    assert ok.summary == "controller: job notice 4711.0 accepted: job 4711.0: 9 GPUs start at ..."
    assert ok.details is not None and ok.details["notice_id"] == "4711.0" and ok.details["status"] == "accepted"
    assert (refused.severity, refused.state) == ("warning", "open") and refused.id.startswith("job-refused-4711.0-")
    assert math.isclose(refused.deadline_s or 0.0, n.start_s)


def test_the_cli_signs_as_the_scheduler_role_and_a_wrong_option_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from ops.cli import build_parser, kafka_role, main

    args = ["job", "notice", "--job", "4711.0", "--start-in-s", "30", "--gpus", "rack-01-s06", "--site", "lab"]
    assert kafka_role(build_parser().parse_args(args)) == "scheduler"  # may write pp.jobs only
    assert kafka_role(build_parser().parse_args(["job", "status"])) == "ops"
    monkeypatch.setenv("PP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PP_SIGNING_KEY_FILE", str(tmp_path / "keys" / "site.key"))
    assert main([*args[:-4], "--gpus", "rack-01-s06,,rack-01-s07", "--site", "lab"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("powerplane: error: notice 4711.0: field 'gpus' must name at least one server or GPU, and no "
                   "empty name")
    assert not (tmp_path / "keys" / "scheduler.key").exists()  # refused before signing: no key made, nothing sent
