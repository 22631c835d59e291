"""HTTP for Redfish sources: one shared aiohttp ClientSession per event loop, one BmcClient per BMC.

Thousands of sources share one session (one bounded connection pool with keep-alive), so polling
2,000 BMCs every 10 s costs a few hundred requests per second on one event loop. Cookies are not
kept (DummyCookieJar): BMCs must not see each other's cookies. Each GET is bounded by the source's
timeout and by MAX_BODY_BYTES.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from collectors.base import SourceError
from collectors.redfish.extract import normalize_path

# The shared pool: at most CONNECTIONS requests in flight across all BMCs, at most PER_BMC per BMC
# (BMC web servers are small), idle connections kept KEEPALIVE_S (longer than the 10 s poll interval).
CONNECTIONS = 1000
PER_BMC = 4
KEEPALIVE_S = 30.0
MAX_BODY_BYTES = 8 * 1024 * 1024
ROOT = "/redfish/v1"


class NotFound(SourceError):
    """HTTP 404 on a resource path: cached links are stale, rediscover."""


@dataclass
class _Shared:
    session: aiohttp.ClientSession
    users: int = 0


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shared] = weakref.WeakKeyDictionary()


async def acquire_session() -> aiohttp.ClientSession:
    """The session shared by every Redfish source on the running loop (created on first use)."""
    loop = asyncio.get_running_loop()
    sh = _SHARED.get(loop)
    if sh is None or sh.session.closed:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS, limit_per_host=PER_BMC, keepalive_timeout=KEEPALIVE_S,
                                         ttl_dns_cache=300)
        sh = _Shared(aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                           headers={"Accept": "application/json", "OData-Version": "4.0"}))
        _SHARED[loop] = sh
    sh.users += 1
    return sh.session


async def release_session() -> None:
    """Drop one user of the shared session; the last one closes it."""
    loop = asyncio.get_running_loop()
    sh = _SHARED.get(loop)
    if sh is None:
        return
    sh.users -= 1
    if sh.users <= 0:
        del _SHARED[loop]
        await sh.session.close()


def shared_session_users() -> int:
    """How many sources hold the running loop's shared session (0 when there is none); for tests."""
    sh = _SHARED.get(asyncio.get_running_loop())
    return 0 if sh is None or sh.session.closed else sh.users


def one_line(s: str, n: int = 300) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


class BmcClient:
    """GETs JSON resources from one BMC; every failure is a one-line SourceError naming url and path."""

    def __init__(self, session: aiohttp.ClientSession, url: str, *, timeout_s: float,
                 tls: bool | ssl.SSLContext, username: str | None, password: str | None, auth: str) -> None:
        self.session = session
        self.url = url  # base, no trailing slash, e.g. https://bmc
        self.netloc = urlsplit(url).netloc
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.timeout_s = timeout_s
        self.tls = tls
        self.auth = auth
        self.basic: str | None = None  # the Authorization header value for basic auth
        if username and auth == "basic":
            self.basic = "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
        self.username = username
        self.password = password or ""
        self.token: str | None = None
        self._login_lock = asyncio.Lock()
        self.session_path: str | None = None  # our Redfish session resource, deleted on close
        self.inflight: dict[str, int] = {}  # paths being fetched, for the timeout message

    def fail(self, path: str, what: str, method: str = "GET") -> SourceError:
        return SourceError(f"redfish {self.url}: {method} {path}: {one_line(what)}")

    def path_of(self, ref: str) -> str:
        """A link target as a path on this BMC; links to other hosts are refused."""
        if "://" in ref and urlsplit(ref).netloc != self.netloc:
            raise SourceError(f"redfish {self.url}: link {one_line(ref, 120)} points at another host")
        return normalize_path(ref)

    async def get(self, path: str, memo: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """One resource as a JSON object. memo: documents already fetched (discovery), by path."""
        if memo is not None and path in memo:
            return memo[path]
        if self.auth == "session" and self.username and self.token is None:
            await self.relogin(None)
        doc = await self._get(path, retry_login=self.auth == "session" and bool(self.username))
        if memo is not None:
            memo[path] = doc
        return doc

    async def _get(self, path: str, *, retry_login: bool, with_auth: bool = True) -> dict[str, Any]:
        sent_token = self.token if with_auth else None
        headers: dict[str, str] = {}
        if sent_token:
            headers["X-Auth-Token"] = sent_token
        if with_auth and self.basic:
            headers["Authorization"] = self.basic
        self.inflight[path] = self.inflight.get(path, 0) + 1
        try:
            async with self.session.get(self.url + path, headers=headers, ssl=self.tls,
                                        timeout=self.timeout) as resp:
                if resp.status == 401 and retry_login:
                    await self.relogin(sent_token)
                    return await self._get(path, retry_login=False)
                if resp.status == 404:
                    raise NotFound(f"redfish {self.url}: GET {path}: HTTP 404 Not Found")
                if resp.status >= 400:
                    hint = " (check username/password)" if resp.status in (401, 403) else ""
                    raise self.fail(path, f"HTTP {resp.status} {resp.reason or ''}{hint}".strip())
                body = await self._body(resp, path)
                ctype = resp.headers.get("Content-Type", "")
        except SourceError:
            raise
        except aiohttp.ClientConnectorCertificateError as e:
            raise self.fail(path, f"TLS certificate not trusted ({e.certificate_error}); set ca_file, or "
                                  "verify_tls = false") from None
        except aiohttp.ClientConnectorError as e:
            raise self.fail(path, f"cannot connect: {e.os_error.strerror or e.os_error}") from None
        except TimeoutError:
            raise self.fail(path, f"no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as e:
            raise self.fail(path, f"{type(e).__name__}: {e}") from None
        finally:
            n = self.inflight.get(path, 1) - 1
            if n:
                self.inflight[path] = n
            else:
                self.inflight.pop(path, None)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            start = body[:40].decode("utf-8", "replace")
            raise self.fail(path, f"not JSON (Content-Type {ctype or 'none'!r}, body starts {start!r})") from None
        if not isinstance(doc, dict):
            raise self.fail(path, f"JSON {type(doc).__name__}, expected an object")
        return doc

    async def _body(self, resp: aiohttp.ClientResponse, path: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise self.fail(path, f"body larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # ---- Redfish session authentication -------------------------------------------------------
    async def relogin(self, stale: str | None) -> None:
        """Log in unless another request already replaced the token `stale` (concurrent GETs that all got
        401 for an expired session log in once)."""
        async with self._login_lock:
            if self.token is None or self.token == stale:
                self.token = None
                await self.login()

    async def login(self) -> None:
        """POST credentials to the SessionService's Sessions collection (from the service root's
        Links.Sessions); keep the X-Auth-Token."""
        root = await self._get(ROOT, retry_login=False, with_auth=False)
        links = root.get("Links")
        ref = links.get("Sessions") if isinstance(links, dict) else None
        if not isinstance(ref, dict) or not isinstance(ref.get("@odata.id"), str):
            raise self.fail(ROOT, "no Links.Sessions for session login; use auth = \"basic\"")
        sessions = self.path_of(ref["@odata.id"])
        try:
            async with self.session.post(self.url + sessions, json={"UserName": self.username,
                                                                   "Password": self.password},
                                         ssl=self.tls, timeout=self.timeout) as resp:
                await resp.read()
                if resp.status not in (200, 201):
                    hint = " (check username/password)" if resp.status in (400, 401, 403) else ""
                    raise self.fail(sessions, f"session login: HTTP {resp.status} {resp.reason or ''}{hint}",
                                    "POST")
                token = resp.headers.get("X-Auth-Token")
                if not token:
                    raise self.fail(sessions, "session login answered without an X-Auth-Token header", "POST")
                loc = resp.headers.get("Location")
        except SourceError:
            raise
        except TimeoutError:
            raise self.fail(sessions, f"session login: no answer within {self.timeout_s:g} s", "POST") from None
        except aiohttp.ClientError as e:
            raise self.fail(sessions, f"session login: {type(e).__name__}: {e}", "POST") from None
        self.token = token
        self.session_path = urlsplit(urljoin(self.url + sessions, loc)).path if loc else None

    async def logout(self) -> None:
        """Best effort: DELETE our session so the BMC's session table does not fill up."""
        if self.token is None:
            return
        token, self.token = self.token, None
        if self.session_path is None:
            return
        try:
            async with self.session.delete(self.url + self.session_path, headers={"X-Auth-Token": token},
                                           ssl=self.tls, timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            pass
