"""A stand-in for the pager and chat bridges compose/alertmanager.yml sends to (http://pager-bridge:9095/hook,
http://chat-bridge:9096/hook): it takes Alertmanager's webhook notifications and logs one line each, so a
fresh `docker compose up` delivers every notification somewhere you can read (`docker compose logs webhook`).
Replace it with your real bridges. Python's standard library only: it runs in the stock python image.

Usage: python receiver.py [NAME=PORT ...]   (default: pager=9095 chat=9096); GET /healthz answers "ok"."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY_BYTES = 8 << 20


def summary(receiver: str, doc: dict[str, Any]) -> str:
    """One log line for one notification: who it was for, firing or resolved, how many alerts, which names."""
    alerts = doc.get("alerts") or []
    names = sorted({str(a.get("labels", {}).get("alertname", "?")) for a in alerts})
    group = ",".join(f"{k}={v}" for k, v in sorted((doc.get("groupLabels") or {}).items()))
    return (f"{receiver}: {doc.get('status', '?')} {len(alerts)} alert(s) {'/'.join(names) or '-'} "
            f"group {{{group}}} from {doc.get('externalURL', '?')}")


def handler_for(receiver: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(200 if self.path == "/healthz" else 404, "ok" if self.path == "/healthz" else "not found")

        def do_POST(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            if size > MAX_BODY_BYTES:
                self._answer(413, "too large")
                return
            try:
                doc = json.loads(self.rfile.read(size) or b"null")
                if not isinstance(doc, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                print(f"{receiver}: refused a POST to {self.path}: not an Alertmanager notification ({e})",
                      flush=True)
                self._answer(400, "expected Alertmanager's webhook JSON")
                return
            print(summary(receiver, doc), flush=True)
            self._answer(200, "ok")

        def _answer(self, code: int, text: str) -> None:
            body = text.encode() + b"\n"
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per notification (above), not one per request

    return Handler


def main(argv: list[str]) -> int:
    pairs = argv or ["pager=9095", "chat=9096"]
    servers = []
    for pair in pairs:
        name, _, port = pair.partition("=")
        if not name or not port.isdigit():
            print(f"receiver: '{pair}': expected NAME=PORT, e.g. pager=9095", file=sys.stderr)
            return 2
        servers.append(ThreadingHTTPServer(("0.0.0.0", int(port)), handler_for(name)))
        print(f"{name}: listening on :{servers[-1].server_address[1]}", flush=True)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
