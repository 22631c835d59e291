"""A real Redfish service for tests: `sushy-static` (PyPI sushy-tools) serving a mockup tree.

The tree's directory is /redfish/v1: <dir>/index.json is the service root and <dir>/Chassis/1U/Power/
index.json answers GET /redfish/v1/Chassis/1U/Power. The server runs in its own process session on
127.0.0.1 and a free port; `stop` ends that session and waits for it, so no process is left behind.

    with RedfishServer(Path("tests/data/redfish/legacy")) as srv:
        srv.url    # http://127.0.0.1:<port>
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sushy_static_cmd() -> list[str]:
    """The sushy-static console script next to this interpreter, else `python -m` its module."""
    exe = Path(sys.executable).with_name("sushy-static")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("sushy-static")
    return [found] if found else [sys.executable, "-m", "sushy_tools.static.main"]


class RedfishServer:
    def __init__(self, mockup_dir: Path, *, cert: Path | None = None, key: Path | None = None,
                 start_timeout_s: float = 15.0) -> None:
        if not (mockup_dir / "index.json").is_file():
            raise FileNotFoundError(f"{mockup_dir} has no index.json (the /redfish/v1 service root)")
        self.mockup_dir = mockup_dir
        self.cert, self.key = cert, key
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="sushy-static-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def scheme(self) -> str:
        return "https" if self.cert else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def command(self, port: int) -> list[str]:
        cmd = [*sushy_static_cmd(), "--interface", "127.0.0.1", "--port", str(port),
               "--mockup-files", str(self.mockup_dir)]
        if self.cert and self.key:
            cmd += ["--ssl-certificate", str(self.cert), "--ssl-key", str(self.key)]
        return cmd

    def start(self) -> RedfishServer:
        last = ""
        for _ in range(3):  # the free port can be taken between probing and binding: try another
            self.port = free_port()
            self.proc = subprocess.Popen(self.command(self.port), stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            if self._wait_ready():
                return self
            last = self.log_tail()
            self.stop()
        raise RuntimeError(f"sushy-static did not answer GET /redfish/v1: {last}")

    def _wait_ready(self) -> bool:
        import ssl

        ctx = ssl._create_unverified_context() if self.cert else None  # readiness only, not a client under test
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/redfish/v1", timeout=1.0, context=ctx) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        return False

    def log_tail(self, n: int = 2000) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            if proc is not None:
                proc.wait()
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the group is the server and nothing else
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> RedfishServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
