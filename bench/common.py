"""Helpers the benchmarks that start their own servers share."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A free loopback port whose successor is free too (the broker's controller listener takes port + 1)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def ref_site_run(halls: int, prefix: str) -> tuple[Path, Any, Any]:
    """(a fresh temp dir, the reference site of `halls` halls written there, the config of a private broker
    for it on a free port): security on as in production; this process's own clients are the admin, and
    the signing key exists before the stages race to make it."""
    import tempfile

    from powerplane.config import load_config
    from powerplane.kafka import client_auth, set_process_auth
    from powerplane.refsite import RefSiteParams, reference_site_dict, to_toml
    from powerplane.signing import load_keyring
    from powerplane.site_file import load_site

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    site_file = tmp / "refsite.toml"
    site_file.write_text(to_toml(reference_site_dict(RefSiteParams(halls=halls))))
    cfg = load_config(env={"PP_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "PP_STATE_DIR": str(tmp / "state"),
                           "PP_SITE_FILE": str(site_file), "PP_INFLUX_URL": "http://127.0.0.1:9",
                           "PP_SIGNING_KEY_FILE": str(tmp / "site.key")})
    set_process_auth(lambda: client_auth(cfg, "admin"))  # the bench writes and watches every topic
    load_keyring(cfg.signing_key_file, cfg.signing_key_id, create=True)
    return tmp, load_site(site_file), cfg
