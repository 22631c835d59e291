"""What the commands that send one signed record share (`dr request`, `job notice`) and the commands that read
the controller's answers to them (`dr status`, `job status`): the site's name, the issuer, sending the record and
reading its answers on pp.events."""

from __future__ import annotations

import argparse
import getpass
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ops.cli.common import Failure, UsageError, _emit_json, _site_optional

if TYPE_CHECKING:
    from powerplane.config import Config


def site_name(args: argparse.Namespace, cfg: Config) -> str:
    """--site, or the configured site file's name."""
    if args.site is not None:
        return str(args.site)
    s = _site_optional(cfg)
    if s is None:
        raise UsageError("--site: name the site (no site file to take it from)")
    return str(s.name)


def issuer(args: argparse.Namespace) -> str:
    """--issuer, or user@host."""
    return str(args.issuer or f"{getpass.getuser()}@{socket.gethostname()}")


def send_one(cfg: Config, topic: str, rec: Any, what: str, client: str = "powerplane-dr") -> None:
    """Publish one signed record (acks=all, idempotent, flushed); a Failure when the broker did not take it."""
    from powerplane.kafka import Producer

    p = Producer(cfg.kafka_bootstrap, client)
    try:
        p.send(topic, rec.encode(), key=rec.key())
        p.flush(30)
    finally:
        p.close(5)
    if p.delivered != 1:
        raise Failure(f"{what} not delivered to {topic}: {p.last_error or 'timed out'}")


def answers(args: argparse.Namespace, cfg: Config, kind: str, id_key: str, what: str) -> int:
    """The controller's latest answer (pp.events, `kind`) to each record of the last --seconds, oldest first;
    `id_key`: the detail naming the record."""
    from powerplane import topics
    from powerplane.kafka import read_window
    from powerplane.schemas import Event, SchemaError

    now = time.time()
    latest: dict[str, Event] = {}
    for value in read_window(cfg.kafka_bootstrap, topics.EVENTS.name, now - args.seconds, now + 1.0):
        try:
            ev = Event.decode(value)
        except SchemaError:
            continue
        if ev.kind == kind and (args.id is None or (ev.details or {}).get(id_key) == args.id):
            latest[str((ev.details or {}).get(id_key, ev.id))] = ev
    rows = sorted(latest.values(), key=lambda e: e.ts_s)
    if args.output == "json":
        _emit_json([{id_key: (e.details or {}).get(id_key), "status": (e.details or {}).get("status"),
                     "ts_s": e.ts_s, "summary": e.summary} for e in rows])
        return 0
    if not rows:
        print(f"no {what} answers on {topics.EVENTS.name} in the last {args.seconds:g} s")
    for e in rows:
        print(f"{datetime.fromtimestamp(e.ts_s, UTC).isoformat(timespec='seconds')}  {e.summary}")
    return 0
