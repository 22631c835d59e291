"""A real OpenADR 2.0b VTN for tests: openleadr's server (the project the gateway's VEN side comes from), in its own
process on 127.0.0.1. It registers one VEN, signs what it sends with its certificate and checks the VEN's
signatures against the fingerprint it is given, queues the events of a JSON file for that VEN (cancelling one once
answered where its spec says `cancel_after_answer`), and writes the answers (optIn / optOut, per event in order) to
a JSON file as they arrive.

    python tests/integration/openadr_vtn.py --port P --cert vtn.pem --key vtn.key --ca ca.pem --ven-fingerprint FP \\
        --ven-id ven-pp --events events.json --answers answers.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from openleadr import OpenADRServer, objects

VTN_ID = "TEST_UTILITY_VTN"


def _event(spec: dict[str, Any], server: OpenADRServer, ven_id: str, answers: Path, got: dict[str, list[str]]) -> None:
    start = datetime.fromtimestamp(spec["dtstart_s"], UTC)
    intervals = [objects.Interval(dtstart=start + timedelta(seconds=i * spec["interval_s"]),
                                  duration=timedelta(seconds=spec["interval_s"]), signal_payload=p)
                 for i, p in enumerate(spec["payloads"])]

    def on_answer(ven_id: str, event_id: str, opt_type: str) -> None:  # openleadr calls it by these names
        got.setdefault(event_id, []).append(opt_type)
        answers.write_text(json.dumps(got))
        if spec.get("cancel_after_answer") and len(got[event_id]) == 1:  # the utility calls it off
            server.cancel_event(ven_id, event_id)

    targets = [{"resource_id": spec["resource_id"]}] if spec.get("resource_id") else [{"ven_id": ven_id}]
    # openleadr 0.5.36 drops an event's ramp-up period (x-eiRampUp) when it queues one: add_raw_event looks for the
    # active period under the descriptor, never finds it, and rebuilds it from the intervals. It is put back below.
    ramp = timedelta(seconds=spec["ramp_up_s"]) if spec.get("ramp_up_s") else None
    period = objects.ActivePeriod(dtstart=start, duration=sum((i.duration for i in intervals), timedelta()),
                                  ramp_up_period=ramp)
    signal = objects.EventSignal(intervals=intervals, signal_name=spec["signal_name"], signal_type=spec["signal_type"],
                                 signal_id=f"{spec['event_id']}-s1")
    event = objects.Event(event_descriptor=objects.EventDescriptor(
        event_id=spec["event_id"], modification_number=0, market_context="oadr://test.utility/dr", event_status="far",
        created_date_time=datetime.now(UTC)), active_period=period, event_signals=[signal], targets=targets)
    server.add_raw_event(ven_id=ven_id, event=event, callback=on_answer)
    event.active_period = period  # the queued object itself: what the VEN is sent


async def main(args: argparse.Namespace) -> None:
    ven_fp = args.ven_fingerprint

    def ven_lookup(ven_id: str) -> dict[str, str]:
        return {"ven_id": args.ven_id, "ven_name": args.ven_name, "fingerprint": ven_fp,
                "registration_id": "reg-1"} if ven_id == args.ven_id else {}

    # TLS with client certificates (the VEN's must chain to --ca), and every message signed with --cert.
    server = OpenADRServer(vtn_id=VTN_ID, cert=args.cert, key=args.key, http_host="127.0.0.1", http_port=args.port,
                           http_cert=args.cert, http_key=args.key, http_ca_file=args.ca,
                           requested_poll_freq=timedelta(seconds=1), ven_lookup=ven_lookup, show_fingerprint=False)
    server.add_handler("on_create_party_registration",
                       lambda payload: (args.ven_id, "reg-1") if payload.get("ven_name") == args.ven_name else False)
    got: dict[str, list[str]] = {}
    for spec in json.loads(Path(args.events).read_text()):
        _event(spec, server, args.ven_id, Path(args.answers), got)
    await server.run()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    for a in ("--port", "--cert", "--key", "--ca", "--ven-fingerprint", "--ven-id", "--events", "--answers"):
        ap.add_argument(a, required=True)
    ap.add_argument("--ven-name", default="powerplane-site")
    ns = ap.parse_args()
    ns.port = int(ns.port)
    asyncio.run(main(ns))
