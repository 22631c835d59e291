"""`powerplane dr gateway`: an OpenADR 2.0b VEN (openleadr's client) in front of pp.grid. The utility's VTN
delivers events; each one this gateway can read (events.py) becomes a demand-response request signed with the
grid key and published to pp.grid, and the VTN is answered optIn once Kafka has acknowledged it (acks=all).
An event it cannot read is answered optOut, with one line naming the event and why, and dead-lettered.

optIn means "delivered to the controller", not "accepted": the controller answers on pp.events
(`powerplane dr status`) and pages a refusal. A cancellation becomes a signed grid.cancel (the controller drops
the request, or restores from where it is at the ramp-up limit). A modification of an event already passed on is
answered optOut (the controller takes a request once: powerplane.grid_input); the first request stands.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from collectors.openadr.config import GatewayConfig
from collectors.openadr.events import Refused, Target, read_event, schedule
from powerplane import topics
from powerplane.kafka import DeadLetters, Producer
from powerplane.schemas import DeadLetter, GridCancel, GridRequest
from powerplane.signing import Keyring

log = logging.getLogger("powerplane.openadr")
DELIVERY_TIMEOUT_S = 15.0  # the VTN waits for an answer; a broker that has not taken the request by then: optOut
REGISTER_RETRY_S = 10.0
KEEP = 10_000  # events remembered (what was passed on, the last answers): a utility sends a few a day


@dataclass
class GatewayStats:
    events: int = 0
    forwarded: int = 0
    refused: int = 0
    redelivered: int = 0
    cancelled: int = 0
    not_delivered: int = 0
    last: dict[str, str] = field(default_factory=dict)  # event id -> optIn / optOut


class Gateway:
    """openleadr's on_event and on_update_event handlers."""

    def __init__(self, cfg: GatewayConfig, keyring: Keyring, producer: Producer, dlq: DeadLetters) -> None:
        self.cfg = cfg
        self.keyring = keyring
        self.producer = producer
        self.dlq = dlq
        self.stats = GatewayStats()
        self.sent: dict[str, Target] = {}  # event id -> what was passed on (this run)

    async def on_event(self, event: dict[str, Any]) -> str:
        self.stats.events += 1
        answer = await self._answer(event)
        self.stats.last[_event_id(event)] = answer
        for d in (self.stats.last, self.sent):  # bounded: the oldest go first
            while len(d) > KEEP:
                d.pop(next(iter(d)))
        return answer

    on_update_event = on_event  # a modification or cancellation arrives the same way; _answer tells them apart

    async def _answer(self, event: dict[str, Any]) -> str:
        desc = event.get("event_descriptor") or {}
        status = str(desc.get("event_status") or "")
        if status == "cancelled":
            return await self._cancel(_event_id(event))
        if status == "completed":  # over: nothing to shed, and nothing to refuse
            return "optIn"
        try:
            target = read_event(event, self.cfg.rules)
        except Refused as e:
            return self._refuse(event, str(e))
        if target is None:
            log.info("event %s: SIMPLE level 0 throughout (normal operation); nothing to shed", _event_id(event))
            return "optIn"
        before = self.sent.get(target.event_id)
        if before is not None:
            if _same_ask(before, target):
                self.stats.redelivered += 1
                return "optIn"
            return self._refuse(event, f"event {target.event_id}: modification {target.modification} changes what "
                                       f"was passed on ({before.summary()}); the controller takes a request once, "
                                       f"so the first stands")
        try:
            req = self._request(target, desc, time.time())
        except Refused as e:
            return self._refuse(event, str(e))
        if not await self._deliver(req):
            self.stats.not_delivered += 1
            log.error("event %s: request not delivered to %s within %g s (%s); answered optOut", target.event_id,
                      topics.GRID.name, DELIVERY_TIMEOUT_S, self.producer.last_error or "timed out")
            return "optOut"
        self.sent[target.event_id] = target
        self.stats.forwarded += 1
        log.info("event %s: %s; signed (%s) and sent to %s", target.event_id, target.summary(), req.key_id,
                 topics.GRID.name)
        return "optIn"

    async def _cancel(self, event_id: str) -> str:
        """The utility called the event off: a signed grid.cancel, whether or not this run passed the event on (a
        restarted gateway may have); the controller answers `unknown` where it holds no such request."""
        self.stats.cancelled += 1
        self.sent.pop(event_id, None)
        c: GridCancel = self.keyring.sign(GridCancel.of(event_id, self.cfg.site, self.cfg.issuer, time.time()))
        if not await self._deliver(c):
            self.stats.not_delivered += 1
            log.error("event %s cancelled by the VTN, but the cancel was not delivered to %s within %g s (%s); "
                      "answered optOut: call it off by hand (`powerplane dr cancel --id %s`)", event_id,
                      topics.GRID.name, DELIVERY_TIMEOUT_S, self.producer.last_error or "timed out", event_id)
            return "optOut"
        log.info("event %s cancelled by the VTN; cancel signed (%s) and sent to %s", event_id, c.key_id,
                 topics.GRID.name)
        return "optIn"

    def _request(self, t: Target, desc: dict[str, Any], now_s: float) -> GridRequest:
        start_s, within_s, hold_s = schedule(t, now_s, self.cfg.rules.within_s)
        created = desc.get("created_date_time")
        # The event's creation time, not now: a redelivery after a restart is then the same request.
        issued = created.timestamp() if isinstance(created, datetime) and created.tzinfo else now_s
        req = GridRequest(id=t.event_id, site=self.cfg.site, issuer=self.cfg.issuer, issued_at_s=issued,
                          start_s=start_s, reduce_by_pct=t.reduce_by_pct, reduce_to_mw=t.reduce_to_mw,
                          within_s=within_s, hold_s=hold_s, feed=t.feed)
        try:
            GridRequest.from_wire(req.to_wire())  # the controller's own checks of the fields
        except ValueError as e:
            raise Refused(f"event {t.event_id}: {e}") from None
        signed: GridRequest = self.keyring.sign(req)
        return signed

    async def _deliver(self, req: GridRequest | GridCancel) -> bool:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def settle(ok: bool) -> None:
            if not done.done():
                done.set_result(ok)

        def on_done(ok: bool) -> None:  # the producer's I/O thread
            loop.call_soon_threadsafe(settle, ok)

        if not self.producer.send(topics.GRID.name, req.encode(), key=req.key(), on_done=on_done):
            return False
        try:
            return await asyncio.wait_for(done, DELIVERY_TIMEOUT_S)
        except TimeoutError:
            return False

    def _refuse(self, event: dict[str, Any], reason: str) -> str:
        self.stats.refused += 1
        raw = json.dumps(event, default=str, sort_keys=True).encode()
        self.dlq.publish(DeadLetter("openadr", -1, -1, reason, _event_id(event).encode(), raw,
                                    {"vtn": self.cfg.vtn.url}))
        return "optOut"


def _event_id(event: dict[str, Any]) -> str:
    return str((event.get("event_descriptor") or {}).get("event_id") or "?")


def _same_ask(a: Target, b: Target) -> bool:
    return (a.reduce_by_pct, a.reduce_to_mw, a.feed, a.start_s, a.within_s, a.hold_s) == \
        (b.reduce_by_pct, b.reduce_to_mw, b.feed, b.start_s, b.within_s, b.hold_s)


def client(cfg: GatewayConfig, gateway: Gateway) -> Any:
    """openleadr's VEN, with the gateway's handlers."""
    with warnings.catch_warnings():  # signxml's import warns that DSA is deprecated; OpenADR 2.0b signs with RSA/ECDSA
        warnings.filterwarnings("ignore", message="DSA is deprecated")
        from openleadr import OpenADRClient

    v = cfg.vtn
    ven = OpenADRClient(ven_name=v.ven_name, vtn_url=v.url, ven_id=v.ven_id, cert=v.cert_file, key=v.key_file,
                        ca_file=v.ca_file, vtn_fingerprint=v.vtn_fingerprint, show_fingerprint=False,
                        allow_jitter=False)
    ven.add_handler("on_event", gateway.on_event)
    ven.add_handler("on_update_event", gateway.on_update_event)
    return ven


async def _register(cfg: GatewayConfig, gateway: Gateway, stop: threading.Event) -> Any:
    """A registered VEN, retrying every REGISTER_RETRY_S while the VTN does not answer (a line a minute at most);
    None once `stop` is set."""
    last_line = -math.inf
    quiet = logging.getLogger("openleadr")
    level = quiet.level
    while not stop.is_set():
        ven = client(cfg, gateway)
        await ven.run()
        # openleadr says why in three lines each try: the first try's, then the minute's line below only.
        quiet.setLevel(logging.CRITICAL)
        if ven.registration_id:
            quiet.setLevel(level)
            log.info("OpenADR gateway: registered at %s as %s (VEN id %s), polling every %s", cfg.vtn.url,
                     cfg.vtn.ven_name, ven.ven_id, ven.poll_frequency)
            return ven
        if ven.client_session is not None and not ven.client_session.closed:
            await ven.client_session.close()
        if time.monotonic() - last_line >= 60.0:
            last_line = time.monotonic()
            log.warning("OpenADR gateway: the VTN at %s did not register VEN %r (openleadr's lines at the first "
                        "try say why); retrying every %g s", cfg.vtn.url, cfg.vtn.ven_name, REGISTER_RETRY_S)
        for _ in range(int(REGISTER_RETRY_S / 0.2)):
            if stop.is_set():
                break
            await asyncio.sleep(0.2)
    quiet.setLevel(level)
    return None


def run(cfg: GatewayConfig, gateway: Gateway, stop: threading.Event, duration_s: float | None = None) -> GatewayStats:
    """Register, then poll the VTN until `stop` (or duration_s), answering its events; flushes the producer on the
    way out."""
    t0 = time.monotonic()
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # openleadr's poll job: two lines a second at INFO
    timer = threading.Timer(duration_s, stop.set) if duration_s is not None else None
    if timer is not None:
        timer.daemon = True  # a gateway stopped sooner (a signal) does not wait for it
        timer.start()

    async def main() -> None:
        ven = await _register(cfg, gateway, stop)
        if ven is None:
            return
        try:
            while not stop.is_set():
                await asyncio.sleep(0.2)
        finally:
            await ven.stop()

    try:
        asyncio.run(main())
    finally:
        gateway.producer.close()
        log.info("OpenADR gateway: stopped after %.0f s", time.monotonic() - t0)
    return gateway.stats
