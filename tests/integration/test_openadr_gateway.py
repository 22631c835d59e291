"""The OpenADR gateway end to end (issue 16): openleadr's VTN, over TLS with client certificates and signed
messages, delivers three events to `powerplane dr gateway`; the two it can read reach a running `powerplane
controller` on the real broker as requests signed with the grid key, and are accepted; the price event is
answered optOut and dead-lettered with its reason. The VTN sees optIn / optIn / optOut; the utility then calls
one off, and the controller drops it on the gateway's signed cancel."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ops.demo import Services, wait_for_groups
from powerplane import topics
from powerplane.config import Config
from powerplane.schemas import GridCancel, GridRequest, decode_any
from powerplane.signing import grid_key_path, load_keyring
from tests.integration.helpers import end_offsets, read_messages, start_group_at_end
from tests.integration.redfish_server import free_port
from tests.integration.test_grid_input import _answers
from tests.integration.test_shadow import INPUTS
from tests.integration.test_streams_site import site_copy

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
AHEAD_S = 600.0  # the events' active periods start this far ahead: accepted on arrival, nothing shed in the test


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(name: str, key: rsa.RSAPrivateKey, issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None, ca: bool) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer[0] if issuer else subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer[1] if issuer else key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _pki(d: Path) -> dict[str, Path]:
    """A utility CA, the VTN's certificate (127.0.0.1) and the VEN's, as PEM files."""
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test utility CA")])
    out = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(_cert("test utility CA", ca_key, None, ca=True))
    for who in ("vtn", "ven"):
        key = _key()
        out[f"{who}_cert"], out[f"{who}_key"] = d / f"{who}.pem", d / f"{who}.key"
        out[f"{who}_cert"].write_bytes(_cert(f"test {who}", key, (ca_name, ca_key), ca=False))
        out[f"{who}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return out


def _events(stamp: int, dtstart_s: float) -> list[dict[str, Any]]:
    return [
        {"event_id": f"oadr-simple-{stamp}", "signal_name": "SIMPLE", "signal_type": "level", "payloads": [1, 2],
         "interval_s": 300, "dtstart_s": dtstart_s, "ramp_up_s": 60},
        {"event_id": f"oadr-feed-{stamp}", "signal_name": "LOAD_CONTROL", "signal_type": "x-loadControlPercentOffset",
         "payloads": [-20.0], "interval_s": 600, "dtstart_s": dtstart_s, "resource_id": "lab-feed-a",
         "cancel_after_answer": True},
        {"event_id": f"oadr-price-{stamp}", "signal_name": "ELECTRICITY_PRICE", "signal_type": "price",
         "payloads": [0.42], "interval_s": 600, "dtstart_s": dtstart_s},
    ]


def _start_vtn(tmp: Path, pki: dict[str, Path], port: int, events: list[dict[str, Any]]) -> subprocess.Popen[bytes]:
    from openleadr.utils import certificate_fingerprint

    (tmp / "events.json").write_text(json.dumps(events))
    args = [sys.executable, str(ROOT / "tests" / "integration" / "openadr_vtn.py"), "--port", str(port),
            "--cert", str(pki["vtn_cert"]), "--key", str(pki["vtn_key"]), "--ca", str(pki["ca"]),
            "--ven-fingerprint", certificate_fingerprint(pki["ven_cert"].read_bytes()), "--ven-id", "ven-pp",
            "--ven-name", "powerplane-site", "--events", str(tmp / "events.json"),
            "--answers", str(tmp / "answers.json")]
    proc = subprocess.Popen(args, stdout=(tmp / "vtn.log").open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 30.0
    while proc.poll() is None and time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"openleadr's VTN did not listen on {port}:\n" + (tmp / "vtn.log").read_text()[-2000:])


def _gateway_config(tmp: Path, pki: dict[str, Path], port: int, site: str) -> Path:
    from openleadr.utils import certificate_fingerprint

    path = tmp / "gateway.toml"
    path.write_text(f'''site = "{site}"
[vtn]
url = "https://127.0.0.1:{port}/OpenADR2/Simple/2.0b"
ven_name = "powerplane-site"
cert_file = "{pki["ven_cert"]}"
key_file = "{pki["ven_key"]}"
ca_file = "{pki["ca"]}"
vtn_fingerprint = "{certificate_fingerprint(pki["vtn_cert"].read_bytes())}"
[reading]
feeds = {{ "lab-feed-a" = "util-a" }}
''')
    return path


def _wait_answers(path: Path, events: list[str], log: Path, line: str, svc: Services,
                  timeout_s: float = 90.0) -> dict[str, list[str]]:
    """The VTN's answers once each event has one and the gateway's log has `line` (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    got: dict[str, list[str]] = {}
    while time.monotonic() < deadline and (any(e not in got for e in events) or
                                           line not in (log.read_text(errors="replace") if log.exists() else "")):
        svc.check()
        if path.exists():
            got = json.loads(path.read_text() or "{}")
        time.sleep(0.5)
    return got


def test_a_utilitys_openadr_events_reach_the_controller_signed_and_an_unreadable_one_is_opted_out(
        cfg: Config, tmp_path: Path) -> None:
    stamp = int(time.time())
    path, site = site_copy(tmp_path, f"lab-oadr-{stamp}")
    c = cfg.model_copy(update={"site_file": str(path)})
    start_group_at_end(c, "powerplane-controller", (*INPUTS, topics.ACKS.name, topics.GRID.name))
    since = {t: end_offsets(c, t) for t in (topics.GRID.name, topics.EVENTS.name, topics.DEADLETTER.name)}
    pki, port = _pki(tmp_path), free_port()
    dtstart_s = float(int(time.time() + AHEAD_S))
    events = _events(stamp, dtstart_s)
    vtn = _start_vtn(tmp_path, pki, port, events)
    svc = Services(c, tmp_path / "logs")
    try:
        svc.start("controller", "controller")
        wait_for_groups(c, ("powerplane-controller",), check=svc.check)
        svc.start("gateway", "dr", "gateway", str(_gateway_config(tmp_path, pki, port, site.name)))
        cancelled = f"event {events[1]['event_id']} cancelled by the VTN; cancel signed"
        answers = _wait_answers(tmp_path / "answers.json", [e["event_id"] for e in events],
                                tmp_path / "logs" / "gateway.log", cancelled, svc)
        time.sleep(2.0)  # the controller's answers to the last request
        svc.check()
    finally:
        svc.stop()
        vtn.send_signal(signal.SIGTERM)
        vtn.wait(20)
    simple, feed, price = (e["event_id"] for e in events)
    logs = (tmp_path / "logs" / "gateway.log").read_text(errors="replace")
    assert answers == {simple: ["optIn"], feed: ["optIn"], price: ["optOut"]}, (
        answers, logs[-3000:], (tmp_path / "vtn.log").read_text()[-2000:])
    # The utility called the feed's event off: a signed cancel, which the controller took.
    assert f"event {feed} cancelled by the VTN; cancel signed (g1) and sent to pp.grid" in logs
    # On pp.grid: the two it read, signed with the site's grid key, asking what the VTN asked.
    keys = load_keyring(grid_key_path(c.signing_key_file, c.grid_key_file), c.grid_key_id)
    on_grid = [decode_any(m.value) for m in read_messages(c, topics.GRID.name, timeout_s=20,
                                                           start=since[topics.GRID.name])]
    reqs = {r.id: r for r in on_grid if isinstance(r, GridRequest) and r.id in (simple, feed, price)}
    assert set(reqs) == {simple, feed}
    (cancel,) = [r for r in on_grid if isinstance(r, GridCancel) and r.request_id in (simple, feed, price)]
    assert cancel.request_id == feed and keys.verify(cancel) is None
    for r in reqs.values():
        assert keys.verify(r) is None and r.issuer == "openadr:powerplane-site" and r.site == site.name
    s, f = reqs[simple], reqs[feed]
    assert (s.reduce_by_pct, s.reduce_to_mw, s.feed) == (25.0, None, None)  # level 2, the strictest interval
    assert (s.start_s, s.within_s, s.hold_s) == (dtstart_s - 60.0, 60.0, 600.0)  # the ramp-up period leads
    assert (f.reduce_by_pct, f.feed, f.start_s, f.within_s) == (20.0, "util-a", dtstart_s - 30.0, 30.0)
    # The controller accepted both (signature, site, feed, clock checked), to start when asked; the feed's was then
    # called off before its start, and its event resolved.
    ans = _answers(c, since[topics.EVENTS.name], (simple, feed))
    assert [(e.details or {}).get("status") for e in ans[simple]] == ["accepted"], [e.summary for e in ans[simple]]
    assert [(e.details or {}).get("status") for e in ans[feed]] == ["accepted", "cancelled"], \
        [e.summary for e in ans[feed]]
    assert ans[feed][1].state == "resolved" and "dropped before its start" in ans[feed][1].summary
    # The price event: one line naming it and why, and on pp.deadletter with that reason.
    assert f"bad record openadr[-1]@-1 key={price}" in logs and "ELECTRICITY_PRICE / price is not a load" in logs
    dead = [m for m in read_messages(c, topics.DEADLETTER.name, timeout_s=20, start=since[topics.DEADLETTER.name])
            if m.key == b"openadr" and price.encode() in (m.value or b"")]
    assert len(dead) == 1 and b"is not a load reduction" in dict(dead[0].headers)["pp.reason"]
