"""Run code that uses pynvml against the fake NVML library, in a child process.

pynvml loads "libnvidia-ml.so.1" by bare name, and the dynamic loader reads LD_LIBRARY_PATH only at
process start, so the code under test runs in a child started with LD_LIBRARY_PATH naming the fake
library and FAKE_NVML_STATE naming the state file. `FakeNvmlHost` is the parent's end: it writes the
state file and sends one JSON request per line; the child (`python -m tests.fakes.nvml.harness`) answers
one JSON line each. Ops:

  {"op": "new", "options": {...}, "name": "gpus"}  build an nvml source from its options
  {"op": "start"} / {"op": "read"} / {"op": "close"}  the Source interface (read: frames as plain dicts,
                                                      after a round trip through the wire encoding);
                                                      start and read take an optional "timeout" (s), as
                                                      the scheduler's asyncio.wait_for
  {"op": "pynvml", "fn": "nvmlDeviceGetPowerUsage", "gpu": 0, "args": []}
                                                      call pynvml directly (gpu: pass that GPU's handle)
  {"op": "actuator", "options": {...}, "name": "gpus"}  build an nvml actuator and a Guard over it (site
                                                      "lab", keyring KEYRING); the actuator is not started
  {"op": "actuator_start"} / {"op": "actuator_close"}  the Actuator lifecycle
  {"op": "command", "target": "r01", "action": "power_cap", "gpus": [0], "values": [300.0],
   "params": {}, "issued_at_s": T, "lease_s": 30, "now_s": T}  sign a command, Guard.handle it: the ack
  {"op": "expire", "now_s": T}                        Guard.expire: the reverted acks

Each answer is {"ok": true, "result": ..., "logs": [...]} or {"ok": false, "type": "SourceError",
"error": "...", "logs": [...]}, where logs are the log lines emitted while serving the request; both
carry "elapsed_s".
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


KEYRING_KEY = b"\x07" * 32  # the signing key of the child's Guard


def fake_env(lib_dir: Path, state_path: Path, log_path: Path | None = None) -> dict[str, str]:
    """The environment for a child process that loads the fake library (and this repository's code)."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)
    env["FAKE_NVML_STATE"] = str(state_path)
    if log_path is not None:
        env["FAKE_NVML_LOG"] = str(log_path)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class FakeNvmlHost:
    """A child process with the fake NVML library loaded; `state` writes its state file."""

    def __init__(self, lib_dir: Path, work_dir: Path, state: str = "") -> None:
        self.state_path = work_dir / "nvml-state.txt"
        self.log_path = work_dir / "nvml-calls.log"
        self._n = 0
        self.state(state)
        env = fake_env(lib_dir, self.state_path, self.log_path)
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.nvml.harness"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self._stderr: list[str] = []
        self._err_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._err_thread.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def state(self, text: str) -> None:
        """Replace the state file atomically (a new inode: the fake notices on its next call)."""
        self._n += 1
        tmp = self.state_path.with_name(f".{self.state_path.name}.{self._n}")
        tmp.write_text(text)
        os.replace(tmp, self.state_path)

    def request(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"harness exited ({self.proc.returncode}):\n{''.join(self._stderr)}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ok(self, op: str, **kw: Any) -> Any:
        a = self.request(op, **kw)
        if not a["ok"]:
            raise AssertionError(f"{op} failed: {a['type']}: {a['error']}")
        return a["result"]

    def calls(self) -> list[str]:
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err_thread.join(5)


# ---- the child ----------------------------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def _serve() -> None:
    import pynvml

    import actuators.nvml  # noqa: F401 - registers the kind
    from actuators.base import REGISTRY as ACTUATORS
    from actuators.guard import Guard
    from collectors.base import REGISTRY
    from powerplane.schemas import Command, TelemetryFrame, as_plain
    from powerplane.signing import Keyring

    ring = Keyring({"k1": KEYRING_KEY}, "k1")
    guard: Any = None
    n_cmds = 0

    cap = _Capture()
    logging.getLogger().addHandler(cap)
    logging.getLogger().setLevel(logging.INFO)
    loop = asyncio.new_event_loop()
    source: Any = None
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        cap.lines.clear()
        t0 = time.monotonic()
        try:
            result: Any = None
            if op == "new":
                source = REGISTRY.get("nvml")(req.get("name", "gpus"),
                                                                   {"kind": "nvml", **req["options"]})
            elif op == "start":
                loop.run_until_complete(asyncio.wait_for(source.start(), req.get("timeout")))
            elif op == "read":
                frames = loop.run_until_complete(asyncio.wait_for(source.read(), req.get("timeout")))
                result = [as_plain(TelemetryFrame.decode(f.encode())) for f in frames]
            elif op == "close":
                loop.run_until_complete(source.close())
            elif op == "actuator":
                guard = Guard(ACTUATORS.get("nvml")(req.get("name", "gpus"), {"kind": "nvml", **req["options"]}),
                              ring, "lab")
            elif op == "actuator_start":
                guard.actuator.start()
            elif op == "actuator_close":
                guard.actuator.close()
            elif op == "command":
                import numpy as np

                n_cmds += 1
                cmd = ring.sign(Command(
                    id=req.get("id", f"cmd-{n_cmds}"), site="lab", target=req["target"], action=req["action"],
                    gpus=np.array(req["gpus"], np.uint16), values=np.array(req["values"], np.float32),
                    params=req.get("params", {}), reason="test", issuer="pytest", issued_at_s=req["issued_at_s"],
                    lease_s=req.get("lease_s", 30.0)))
                result = as_plain(guard.handle(cmd, req["now_s"]))
            elif op == "expire":
                result = [as_plain(a) for a in guard.expire(req["now_s"])]
            elif op == "pynvml":
                args = list(req.get("args", []))
                if "gpu" in req:
                    args.insert(0, pynvml.nvmlDeviceGetHandleByIndex(req["gpu"]))
                result = getattr(pynvml, req["fn"])(*args)
                if not isinstance(result, int | float | str | list | type(None)):
                    result = {k: getattr(result, k) for k, *_ in getattr(result, "_fields_", [])} or repr(result)
            else:
                raise ValueError(f"unknown op {op!r}")
            answer = {"ok": True, "result": result}
        except Exception as e:
            answer = {"ok": False, "type": type(e).__name__, "error": str(e)}
        answer["logs"] = list(cap.lines)
        answer["elapsed_s"] = time.monotonic() - t0
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve()
