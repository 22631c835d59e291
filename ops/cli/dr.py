"""`powerplane dr request`, `dr cancel`, `dr gateway` and `dr status`: a demand-response request (or its cancel)
signed with the grid role's key and published to pp.grid by hand; the site's gateway to its utility that does the
same for each OpenADR event (collectors/openadr); and the controller's answers to the latest ones (pp.events, kind
demand_response). Issue 16; docs/grid.md."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ops.cli.common import UsageError, _add_output
from ops.cli.signed import answers, issuer, send_one, site_name

if TYPE_CHECKING:
    from powerplane.config import Config


def _start_s(args: argparse.Namespace, now_s: float) -> float:
    """--start (ISO 8601; without a zone: UTC) or --in-s seconds from now; default now."""
    if args.start is not None and args.in_s is not None:
        raise UsageError("give --start or --in-s, not both")
    if args.in_s is not None:
        return now_s + float(args.in_s)
    if args.start is None:
        return now_s
    try:
        when = datetime.fromisoformat(args.start)
    except ValueError:
        raise UsageError(f"--start {args.start!r}: expected an ISO 8601 time, e.g. 2026-07-01T17:00:00+00:00") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _request(args: argparse.Namespace, cfg: Config) -> Any:
    """The signed record, checked as the controller's decoder will check it (one line naming the field)."""
    from powerplane.schemas import GridRequest, SchemaError
    from powerplane.signing import grid_key_path, load_keyring

    site = site_name(args, cfg)
    now = time.time()
    req = GridRequest(id=args.id, site=site, issuer=issuer(args),
                      issued_at_s=now, start_s=_start_s(args, now), reduce_by_pct=args.reduce_by_pct,
                      reduce_to_mw=args.reduce_to_mw, within_s=args.within_s, hold_s=args.hold_s, feed=args.feed)
    try:
        GridRequest.from_wire(req.to_wire())
    except SchemaError as e:
        raise UsageError(str(e).replace("grid.request ", "request ", 1)) from None
    keys = load_keyring(grid_key_path(cfg.signing_key_file, cfg.grid_key_file), cfg.grid_key_id, create=True)
    return keys.sign(req)


def cmd_dr_request(args: argparse.Namespace, cfg: Config) -> int:
    from powerplane import topics

    req = _request(args, cfg)
    send_one(cfg, topics.GRID.name, req, f"demand response {req.id}")
    what = f"by {req.reduce_by_pct:g} %" if req.reduce_by_pct is not None else f"to {req.reduce_to_mw:g} MW"
    start = datetime.fromtimestamp(req.start_s, UTC).isoformat(timespec="seconds")
    print(f"demand response {req.id}: reduce {req.feed or req.site} {what} within {req.within_s:g} s from {start}, "
          f"hold {req.hold_s:g} s; signed ({req.key_id}) by {req.issuer}, sent to {topics.GRID.name} "
          f"(the answer: `powerplane dr status`)")
    return 0


def cmd_dr_status(args: argparse.Namespace, cfg: Config) -> int:
    """The latest answer to each request of the last --seconds, oldest first."""
    return answers(args, cfg, "demand_response", "request_id", "demand-response")


def cmd_dr_cancel(args: argparse.Namespace, cfg: Config) -> int:
    """Call a request off: a grid.cancel signed with the grid key on pp.grid."""
    from powerplane import topics
    from powerplane.schemas import GridCancel
    from powerplane.signing import grid_key_path, load_keyring

    keys = load_keyring(grid_key_path(cfg.signing_key_file, cfg.grid_key_file), cfg.grid_key_id, create=True)
    c = keys.sign(GridCancel.of(args.id, site_name(args, cfg), issuer(args), time.time()))
    send_one(cfg, topics.GRID.name, c, f"cancel of demand response {args.id}")
    print(f"demand response {args.id}: cancel signed ({c.key_id}) by {c.issuer}, sent to {topics.GRID.name} (the "
          f"answer: `powerplane dr status --id {args.id}`)")
    return 0


def cmd_dr_gateway(args: argparse.Namespace, cfg: Config) -> int:
    """An OpenADR 2.0b VEN in front of pp.grid (collectors/openadr/README.md)."""
    from collectors.openadr import config as oadr_config
    from collectors.openadr import gateway
    from ops.cli.common import _site_optional, _stop_on_signals
    from powerplane.kafka import DeadLetters, Producer
    from powerplane.signing import grid_key_path, load_keyring

    gw_cfg = oadr_config.load(args.config_file, _site_optional(cfg))
    keys = load_keyring(grid_key_path(cfg.signing_key_file, cfg.grid_key_file), cfg.grid_key_id, create=True)
    producer = Producer(cfg.kafka_bootstrap, "powerplane-openadr")
    gw = gateway.Gateway(gw_cfg, keys, producer, DeadLetters(producer, "openadr-gateway"))
    stats = gateway.run(gw_cfg, gw, _stop_on_signals(), duration_s=args.duration or None)
    print(f"OpenADR gateway: {stats.events} event(s), {stats.forwarded} passed on to the controller, {stats.refused} "
          f"answered optOut, {stats.not_delivered} not delivered")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `dr request`, `dr cancel`, `dr gateway` and `dr status`."""
    d = sub.add_parser("dr", help="demand response: send a signed request (as the utility's gateway), or show the "
                                  "controller's answers")
    acts = d.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = acts.add_parser("request", help="sign a demand-response request with the grid key and publish it to pp.grid")
    r.add_argument("--id", required=True, help="the request's id (the utility's event id): one request, once")
    how = r.add_mutually_exclusive_group(required=True)
    how.add_argument("--reduce-by-pct", type=float, metavar="PCT", help="shed this share of the load at the start")
    how.add_argument("--reduce-to-mw", "--target-mw", type=float, metavar="MW", help="bring the load down to this")
    r.add_argument("--within-s", type=float, required=True, help="reach the target this long after the start")
    r.add_argument("--hold-s", type=float, required=True, help="hold it this long")
    r.add_argument("--start", help="when it starts: ISO 8601 (no zone: UTC); default now")
    r.add_argument("--in-s", type=float, help="or: it starts this many seconds from now")
    r.add_argument("--feed", help="one utility feed (level id); default the whole site")
    r.add_argument("--site", help="the site's name (default: the configured site file's)")
    r.add_argument("--issuer", help="who asks (default: user@host)")
    r.set_defaults(fn=cmd_dr_request)
    cn = acts.add_parser("cancel", help="call a request off: signed with the grid key, published to pp.grid; the "
                                        "controller drops it, or restores from where it is at the ramp-up limit")
    cn.add_argument("--id", required=True, help="the request's id")
    cn.add_argument("--site", help="the site's name (default: the configured site file's)")
    cn.add_argument("--issuer", help="who calls it off (default: user@host)")
    cn.set_defaults(fn=cmd_dr_cancel)
    g = acts.add_parser("gateway", help="run an OpenADR 2.0b VEN: the utility's events become signed requests on "
                                        "pp.grid (collectors/openadr/README.md)")
    g.add_argument("config_file", metavar="CONFIG", help="the gateway's TOML file (collectors/openadr/sample.toml)")
    g.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (default: run until "
                                                               "stopped)")
    g.set_defaults(fn=cmd_dr_gateway)
    st = acts.add_parser("status", help="the controller's latest answer to each recent request (pp.events)")
    st.add_argument("--seconds", type=float, default=86_400.0, help="how far back to look (default a day)")
    st.add_argument("--id", help="only this request")
    _add_output(st)
    st.set_defaults(fn=cmd_dr_status)
