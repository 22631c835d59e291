"""Drive Debian's headless `chromium` over the Chrome DevTools Protocol with aiohttp's websocket client
(no extra dependency; see docs/decisions.md). Collects console errors, uncaught exceptions and log
errors from the moment the page target is attached."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-extensions", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
         "--mute-audio"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """One headless browser process with one page; an async context manager."""

    def __init__(self, port: int, width: int = 1600, height: int = 1000) -> None:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium not found: apt-get install chromium "
                               "(`make test` does: scripts/ensure-debian-packages)")
        self.port = port
        self.profile = tempfile.mkdtemp(prefix="pp-chromium-")
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.errors: list[str] = []
        self._ids = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Chromium:
        self._session = aiohttp.ClientSession()
        deadline = time.monotonic() + 30
        ws_url = None
        while ws_url is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            try:
                async with self._session.get(f"http://127.0.0.1:{self.port}/json/list") as r:
                    pages = [t for t in await r.json() if t.get("type") == "page"]
                    ws_url = pages[0]["webSocketDebuggerUrl"] if pages else None
            except (aiohttp.ClientError, ValueError):
                pass
            if ws_url is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("chromium's DevTools endpoint did not come up in 30 s")
                await asyncio.sleep(0.2)
        self._ws = await self._session.ws_connect(ws_url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Runtime", "Log", "Page"):
            await self.send(f"{domain}.enable")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            d = json.loads(msg.data)
            if "id" in d:
                fut = self._waiting.pop(d["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(d)
                continue
            method, p = d.get("method"), d.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                self.errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                          for a in p.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                det = p.get("exceptionDetails", {})
                self.errors.append("exception: " + str(det.get("exception", {}).get("description") or det.get("text")))
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                self.errors.append(f"log: {e.get('text')} {e.get('url', '')}")

    async def send(self, method: str, params: dict[str, Any] | None = None, timeout_s: float = 30.0) -> Any:
        assert self._ws is not None
        self._ids += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._ids] = fut
        await self._ws.send_str(json.dumps({"id": self._ids, "method": method, "params": params or {}}))
        d = await asyncio.wait_for(fut, timeout_s)
        if "error" in d:
            raise RuntimeError(f"{method}: {d['error']}")
        return d.get("result", {})

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})

    async def eval(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluating {expression!r}: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout_s: float, poll_s: float = 0.1) -> Any:
        """Poll a JS expression until it is truthy; returns its value, or raises with the last one."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = await self.eval(expression)
            except RuntimeError as e:  # the page (and its globals) may not be loaded yet
                last = str(e)
                await asyncio.sleep(poll_s)
                continue
            if last:
                return last
            await asyncio.sleep(poll_s)
        raise AssertionError(f"{expression!r} still {last!r} after {timeout_s} s")

    async def screenshot(self, path: Path) -> Path:
        r = await self.send("Page.captureScreenshot", {"format": "png"})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(r["data"]))
        return path
