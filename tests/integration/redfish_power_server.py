"""A small loopback Redfish service that takes power limits: a mockup tree plus PATCH of PowerControl.

`sushy-static` (the collector tests' server) answers every PATCH 204 and changes nothing, and
`sushy-emulator` has no chassis power limit, so the actuator tests use this instead. It serves a real
mockup (tests/data/redfish/legacy) from memory and implements, as a BMC does:

- GET of any resource, with an ETag that changes whenever the resource does;
- PATCH of a Power resource's `PowerControl[0].PowerLimit.LimitInWatts`: `If-Match` checked (412 with a
  Redfish error body when stale), the value checked against [min_limit_w, PowerCapacityWatts] (400
  `PropertyValueOutOfRange`), wrong type 400 `PropertyValueTypeError`;
- HTTP basic auth when `auth` is set (401 with a Redfish error body and WWW-Authenticate);
- faults: `fail_next(503, retry_after_s=7)` answers the next request(s) with that status, `delay_s`
  holds every answer (a hung BMC), `races = n` makes the next n PATCHes find their resource changed
  since the client read it (a concurrent writer), so a correct If-Match gets 412.

    with PowerRedfishServer(Path("tests/data/redfish/legacy")) as srv:
        srv.url            # http://127.0.0.1:<port>
        srv.limit_w("/redfish/v1/Chassis/1U/Power")
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

PREFIX = "/redfish/v1"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": f"Base.1.8.{code}", "message": message,
                      "@Message.ExtendedInfo": [{"MessageId": f"Base.1.8.{code}", "Message": message,
                                                 "Severity": "Warning"}]}}


class PowerRedfishServer:
    def __init__(self, mockup_dir: Path, *, auth: tuple[str, str] | None = None, min_limit_w: float = 500.0) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        for f in mockup_dir.rglob("index.json"):
            rel = f.parent.relative_to(mockup_dir).as_posix()
            self.docs[PREFIX if rel == "." else f"{PREFIX}/{rel}"] = json.loads(f.read_text())
        self.versions: dict[str, int] = dict.fromkeys(self.docs, 1)
        self.auth = auth
        self.min_limit_w = min_limit_w
        self.delay_s = 0.0
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, If-Match)
        self._faults: list[tuple[int, float | None]] = []
        self.races = 0  # this many PATCHes find the resource changed since the client read it
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def etag(self, path: str) -> str:
        digest = hashlib.sha1(json.dumps(self.docs[path], sort_keys=True).encode()).hexdigest()[:12]
        return f'"{self.versions[path]}-{digest}"'

    def limit_w(self, path: str) -> Any:
        with self.lock:
            return self.docs[path]["PowerControl"][0]["PowerLimit"]["LimitInWatts"]

    def patches(self) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "PATCH"]

    def fail_next(self, status: int, retry_after_s: float | None = None, count: int = 1) -> None:
        with self.lock:
            self._faults.extend([(status, retry_after_s)] * count)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                if self.close_connection:  # say so, or the client reuses a socket this server is closing
                    self.send_header("Connection", "close")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _common(self) -> str | None:
                """Delay, record, auth and injected faults; the path if the request goes on."""
                path = self.path.split("?")[0].rstrip("/") or "/"
                with srv.lock:
                    srv.requests.append((self.command, path, self.headers.get("If-Match")))
                    fault = srv._faults.pop(0) if srv._faults else None
                if srv.delay_s:
                    time.sleep(srv.delay_s)
                if srv.auth is not None:
                    want = "Basic " + base64.b64encode(f"{srv.auth[0]}:{srv.auth[1]}".encode()).decode()
                    if self.headers.get("Authorization") != want:
                        self._send(401, error_body("InsufficientPrivilege", "Authentication required."),
                                   {"WWW-Authenticate": 'Basic realm="Redfish"'})
                        return None
                if fault is not None:
                    status, after = fault
                    self._send(status, error_body("ServiceTemporarilyUnavailable" if status == 503 else "InternalError",
                                                  "The service is temporarily unavailable."),
                               {"Retry-After": f"{after:g}"} if after is not None else None)
                    return None
                if path not in srv.docs:
                    self._send(404, error_body("ResourceMissingAtURI", f"The resource at {path} was not found."))
                    return None
                return path

            def do_GET(self) -> None:
                path = self._common()
                if path is None:
                    return
                with srv.lock:
                    doc, etag = json.loads(json.dumps(srv.docs[path])), srv.etag(path)
                self._send(200, doc, {"ETag": etag})

            def do_PATCH(self) -> None:
                body_len = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(body_len)
                path = self._common()
                if path is None:
                    return
                try:
                    body = json.loads(raw)
                    limit = body["PowerControl"][0]["PowerLimit"]["LimitInWatts"]
                except (ValueError, KeyError, IndexError, TypeError):
                    self._send(400, error_body("MalformedJSON", "Expected PowerControl[0].PowerLimit.LimitInWatts."))
                    return
                with srv.lock:
                    doc = srv.docs[path]
                    if "PowerControl" not in doc:
                        self._send(405, error_body("ActionNotSupported", f"{path} has no PowerControl."))
                        return
                    if srv.races > 0:  # another client wrote it between this client's GET and PATCH
                        srv.races -= 1
                        srv.versions[path] += 1
                    match = self.headers.get("If-Match")
                    if match is not None and match != srv.etag(path):
                        self._send(412, error_body("PreconditionFailed",
                                                   "The ETag supplied did not match the ETag of the resource."))
                        return
                    pc = doc["PowerControl"][0]
                    cap = pc.get("PowerCapacityWatts")
                    if not isinstance(limit, int | float) or isinstance(limit, bool):
                        self._send(400, error_body("PropertyValueTypeError",
                                                   f"The value {limit!r} for LimitInWatts is of a different type."))
                        return
                    if limit < srv.min_limit_w or (cap is not None and limit > cap):
                        self._send(400, error_body("PropertyValueOutOfRange",
                                                   f"The value {limit} for the property LimitInWatts is not in the "
                                                   f"supported range of {srv.min_limit_w:g} to {cap}."))
                        return
                    pc.setdefault("PowerLimit", {})["LimitInWatts"] = limit
                    srv.versions[path] += 1
                    out, etag = json.loads(json.dumps(doc)), srv.etag(path)
                self._send(200, out, {"ETag": etag})

        return Handler

    def __enter__(self) -> PowerRedfishServer:
        self.thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
