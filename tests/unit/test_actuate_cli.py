"""`powerplane actuate`: one actuator of a config file, refused with one line when the config is wrong;
its /metrics collector reports the guard's outcomes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from actuators.base import load_actuator
from actuators.guard import Guard
from actuators.service import ActuatorMetrics
from ops.cli import main
from powerplane.kafka import DeadLetters
from powerplane.schemas import Command
from powerplane.signing import Keyring
from powerplane.site_file import load_site
from sim.fleet import Fleet

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


@pytest.mark.parametrize(("text", "says"), [
    ('[actuators.gpus]\nkind = "nvml"\ndry_run = true\n', "actuators.gpus.racks: missing (required)"),
    ('[actuators.a]\nkind = "nvml"\n[actuators.b]\nkind = "redfish"\n', "choose an actuator with --name (a, b)"),
    ("[collectors]\n", "no [actuators.<name>] table"),
    ("[actuators\n", "not valid TOML"),
])
def test_a_wrong_actuator_config_is_one_line_saying_what_is_wrong(tmp_path: Path, text: str, says: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "act.toml"
    f.write_text(text)
    assert main(["actuate", "--actuators", str(f)]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


class _NoProducer:
    dropped = failed = 0


def test_actuator_metrics_count_outcomes_and_leases() -> None:
    site = load_site(LAB)
    ring = Keyring({"k1": b"\x03" * 32}, "k1")
    guard = Guard(load_actuator("twin", {"kind": "twin"}, context=Fleet(site, seed=1)), ring, "lab")
    cmd = ring.sign(Command(id="c1", site="lab", target="rack-01", action="power_cap",
                            gpus=np.arange(4, dtype=np.uint16), values=np.full(4, 500.0, np.float32), params={},
                            reason="test", issuer="t", issued_at_s=100.0, lease_s=30.0))
    assert guard.handle(cmd, 100.1).status == "applied"
    forged = Command.decode(cmd.encode())
    forged.id, forged.values = "c2", np.full(4, 100.0, np.float32)
    assert guard.handle(forged, 100.2).status == "rejected"
    reg = CollectorRegistry()
    reg.register(ActuatorMetrics(guard, _NoProducer(), DeadLetters(_NoProducer(), "t")))  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    assert 'powerplane_actuator_acks_total{actuator="twin",status="applied"} 1.0' in text
    assert 'powerplane_actuator_acks_total{actuator="twin",status="rejected"} 1.0' in text
    assert "powerplane_actuator_security_refusals_total 1.0" in text
    assert "powerplane_actuator_leases 4.0" in text
