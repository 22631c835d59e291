"""`powerplane job notice` and `powerplane job status`: a job-start notice signed with the scheduler role's key and
published to pp.jobs, as the scheduler's prolog would (issue 16; docs/grid.md, "The live job-notice input"), and
the controller's answers to the latest ones (pp.events, kind job_notice)."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ops.cli.common import UsageError, _add_output
from ops.cli.signed import answers, issuer, send_one, site_name

if TYPE_CHECKING:
    from powerplane.config import Config


def _notice(args: argparse.Namespace, cfg: Config) -> Any:
    """The signed record, checked as the controller's decoder will check it (one line naming the field); the
    names of the GPUs are checked by the controller against its site."""
    from powerplane.schemas import JobNotice, SchemaError
    from powerplane.signing import load_keyring, scheduler_key_path

    now = time.time()
    n = JobNotice(id=args.job, site=site_name(args, cfg), issuer=issuer(args), issued_at_s=now,
                  start_s=now + args.start_in_s, gpus=[g.strip() for g in args.gpus.split(",")],
                  expected_w=args.expected_w)
    try:
        JobNotice.from_wire(n.to_wire())
    except SchemaError as e:
        raise UsageError(str(e).replace("job.notice ", "notice ", 1)) from None
    keys = load_keyring(scheduler_key_path(cfg.signing_key_file, cfg.scheduler_key_file), cfg.scheduler_key_id,
                        create=True)
    return keys.sign(n)


def cmd_job_notice(args: argparse.Namespace, cfg: Config) -> int:
    from powerplane import topics

    n = _notice(args, cfg)
    send_one(cfg, topics.JOBS.name, n, f"job notice {n.id}", client="powerplane-job")
    start = datetime.fromtimestamp(n.start_s, UTC).isoformat(timespec="seconds")
    at = f"{n.expected_w:g} W" if n.expected_w is not None else "their maximum power"
    print(f"job notice {n.id}: {len(n.gpus)} server(s)/GPU(s) on {n.site} start at {start}, computing at {at}; "
          f"signed ({n.key_id}) by {n.issuer}, sent to {topics.JOBS.name} (the answer: `powerplane job status`)")
    return 0


def cmd_job_status(args: argparse.Namespace, cfg: Config) -> int:
    """The latest answer to each notice of the last --seconds, oldest first."""
    return answers(args, cfg, "job_notice", "notice_id", "job-notice")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `job notice` and `job status`."""
    j = sub.add_parser("job", help="job-start notices: announce a job's start (as the scheduler's prolog), or show "
                                   "the controller's answers")
    acts = j.add_subparsers(dest="action", required=True, metavar="ACTION")
    n = acts.add_parser("notice", help="sign a job-start notice with the scheduler key and publish it to pp.jobs")
    n.add_argument("--job", required=True, help="the notice's id: the scheduler's job id (one start, once)")
    n.add_argument("--start-in-s", type=float, required=True, metavar="S", help="the job starts this many seconds "
                   "from now (the prolog waits that long before it lets the job run)")
    n.add_argument("--gpus", required=True, metavar="NAMES", help="comma-separated servers (every GPU of each) "
                   "or <server>/gpu<N>, as the site file names them: rack-01-s06,rack-02-s06/gpu0")
    n.add_argument("--expected-w", type=float, metavar="W", help="the power each GPU will compute at (DC W; "
                   "default each GPU's maximum power limit)")
    n.add_argument("--site", help="the site's name (default: the configured site file's)")
    n.add_argument("--issuer", help="who announces it (default: user@host)")
    n.set_defaults(fn=cmd_job_notice)
    st = acts.add_parser("status", help="the controller's latest answer to each recent notice (pp.events)")
    st.add_argument("--seconds", type=float, default=3600.0, help="how far back to look (default an hour)")
    st.add_argument("--id", help="only this notice")
    _add_output(st)
    st.set_defaults(fn=cmd_job_status)
