"""One asyncio UDP endpoint per event loop for the fast SNMP path (client.py), shared by every source.

Each request gets a request-id unique among the requests in flight on the endpoint; a reply is matched by
its request-id and must come from the address the request went to, with the request's version and
community, else it is ignored (counted in `ignored`). The prebuilt request is resent unchanged (same
request-id, so a late answer to an earlier try still counts) after each try timeout, `1 + retries` tries
in all. The map of requests in flight is bounded (`MAX_PENDING`): past it a request fails at once
instead of growing memory without limit.

A reply that matches a request but does not decode (ber.BerError) fails that request with the decoder's
reason. A datagram too broken to tell which request it answers is ignored, but remembered per source
address: a request to that address that then times out reports "malformed response" with the reason,
not "no response".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from typing import Any, ClassVar, cast

from collectors.snmp import ber

log = logging.getLogger(__name__)

Addr = tuple[str, int]

MAX_PENDING = 16384  # requests in flight per event loop (2,000 PDUs need a few hundred at most)
_MAX_GARBAGE_ADDRS = 1024
_RCVBUF = 4 << 20  # bytes asked for the socket's receive buffer (the kernel may cap it)


class NoResponse(Exception):
    """Every try timed out."""


class Malformed(Exception):
    """The answer (or an unattributable datagram from the agent's address) did not decode."""


class Busy(Exception):
    """MAX_PENDING requests are already in flight."""


class _Pending:
    __slots__ = ("addr", "community", "future", "packet", "sent_at", "timeout_s", "timer", "tries_left", "version")

    def __init__(self, future: asyncio.Future[ber.Response], addr: Addr, version: int, community: bytes,
                 packet: bytes, tries_left: int, timeout_s: float) -> None:
        self.future, self.addr, self.version, self.community = future, addr, version, community
        self.packet, self.tries_left, self.timeout_s = packet, tries_left, timeout_s
        self.timer: asyncio.TimerHandle | None = None
        self.sent_at = time.monotonic()


class Endpoint(asyncio.DatagramProtocol):
    """The UDP socket and the requests in flight on it; made by `Shared.acquire()`, used through `request()`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, _Pending] = {}
        self.next_id = random.randint(ber.REQUEST_ID_MIN, ber.REQUEST_ID_MAX)
        self.garbage: dict[Addr, tuple[float, str]] = {}  # source address -> (when, why) of an unmatched bad datagram
        self.ignored = 0  # datagrams that answered no request in flight (wrong address, id, community...)
        self.malformed = 0  # datagrams that did not decode
        self.closed = False
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.setblocking(False)
            sock.bind(("0.0.0.0", 0))  # the agents are anywhere
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._opening: asyncio.Task[Any] | None = loop.create_task(
            loop.create_datagram_endpoint(lambda: self, sock=sock))

    # ---- asyncio protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        try:
            head = ber.decode_header(data)
        except ber.BerError as e:
            self._bad(addr, str(e))
            return
        p = self.pending.get(head.request_id)
        if p is None or p.addr != addr or p.version != head.version or p.community != head.community:
            self.ignored += 1
            return
        del self.pending[head.request_id]
        if p.timer is not None:
            p.timer.cancel()
        if p.future.done():  # the caller gave up (cancelled)
            return
        try:
            p.future.set_result(ber.decode_response(data))
        except ber.BerError as e:
            self.malformed += 1
            p.future.set_exception(Malformed(str(e)))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) cannot be told apart per request on one shared socket; the
        # request times out as it does with pysnmp.
        log.debug("snmp fast endpoint: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(NoResponse(f"socket closed ({exc})" if exc else "socket closed"))

    # ---- requests ----------------------------------------------------------------------------------
    async def request(self, addr: Addr, template: ber.RequestTemplate, timeout_s: float, retries: int
                      ) -> ber.Response:
        """Send the template's request to `addr`, wait for its answer; NoResponse / Malformed / Busy."""
        if self.transport is None:
            if self._opening is None:
                raise NoResponse("socket closed")
            try:
                await self._opening
            except OSError:
                self.close()  # the next request gets a new endpoint (client.py asks for one when closed)
                raise
            if self.transport is None:
                raise NoResponse("socket closed")
        if self.closed:
            raise NoResponse("socket closed")
        if len(self.pending) >= MAX_PENDING:
            raise Busy(f"{MAX_PENDING} requests already in flight")
        rid = self._new_id()
        p = _Pending(self.loop.create_future(), addr, template.version, template.community, template.packet(rid),
                     retries, timeout_s)
        self.pending[rid] = p
        try:
            self.transport.sendto(p.packet, addr)
            p.timer = self.loop.call_later(timeout_s, self._expire, rid, p)
            return await p.future
        finally:
            if self.pending.get(rid) is p:  # cancelled, or failed before an answer
                del self.pending[rid]
            if p.timer is not None:
                p.timer.cancel()

    def _new_id(self) -> int:
        rid = self.next_id
        while rid in self.pending:
            rid = rid + 1 if rid < ber.REQUEST_ID_MAX else ber.REQUEST_ID_MIN
        self.next_id = rid + 1 if rid < ber.REQUEST_ID_MAX else ber.REQUEST_ID_MIN
        return rid

    def _expire(self, rid: int, p: _Pending) -> None:
        if self.pending.get(rid) is not p or p.future.done():
            return
        if p.tries_left > 0 and self.transport is not None and not self.closed:
            p.tries_left -= 1
            self.transport.sendto(p.packet, p.addr)
            p.timer = self.loop.call_later(p.timeout_s, self._expire, rid, p)
            return
        del self.pending[rid]
        bad = self.garbage.get(p.addr)
        if bad is not None and bad[0] >= p.sent_at:
            p.future.set_exception(Malformed(bad[1]))
        else:
            p.future.set_exception(NoResponse())

    def _bad(self, addr: Addr, why: str) -> None:
        self.malformed += 1
        if addr not in self.garbage and len(self.garbage) >= _MAX_GARBAGE_ADDRS:
            del self.garbage[next(iter(self.garbage))]
        self.garbage[addr] = (time.monotonic(), why)

    def _fail_all(self, exc: Exception) -> None:
        pending, self.pending = self.pending, {}
        for p in pending.values():
            if p.timer is not None:
                p.timer.cancel()
            if not p.future.done():
                p.future.set_exception(exc)

    def close(self) -> None:
        """Close the socket; requests in flight fail with NoResponse."""
        if self.closed:
            return
        self.closed = True
        self._fail_all(NoResponse("socket closed"))
        if self.loop.is_closed():  # nothing can run in a closed loop: just release the socket
            self._sock.close()
            return
        if self.transport is not None:
            self.transport.close()
        else:
            if self._opening is not None:
                self._opening.cancel()
            self._sock.close()
        self._opening = None


class Shared:
    """The endpoint of the running event loop, counted by its users; the last one out closes it."""

    endpoint: ClassVar[Endpoint | None] = None
    users: ClassVar[int] = 0

    @classmethod
    def acquire(cls) -> Endpoint:
        loop = asyncio.get_running_loop()
        ep = cls.endpoint
        if ep is None or ep.loop is not loop or ep.closed:
            if ep is not None:
                ep.close()  # a finished loop's endpoint: its users can only be clients that never closed
            cls.endpoint, cls.users = Endpoint(loop), 0
        cls.users += 1
        assert cls.endpoint is not None
        return cls.endpoint

    @classmethod
    def release(cls, ep: Endpoint) -> None:
        if ep is not cls.endpoint:
            ep.close()  # replaced (stale or failed) since this user joined it: closed already, or now
            return
        cls.users -= 1
        if cls.users <= 0:
            cls.endpoint, cls.users = None, 0
            ep.close()
