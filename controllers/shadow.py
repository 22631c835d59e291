"""Shadow mode (`powerplane controller --shadow`): the same controller on the live inputs, its decisions
published to pp.shadow and never applied (docs/operations.md, "Shadow mode"; docs/decisions.md).

What makes a shadow record inert, three times over: each command is marked `shadow` (actuators.guard refuses
it before anything else), it is signed with the shadow key no actuator holds (powerplane.signing), and the
shadow's Kafka role may write pp.shadow and pp.deadletter only (powerplane.access: the broker refuses the rest).

Open loop: nothing applies a shadow's commands, so no ack of its own ever comes back and the GPUs keep the
live controller's limits. The controller takes each of its commands as applied when it decides (as the
in-process engine does): the shadow's stream is what this policy would have commanded had it been in charge
of the state it believes it made, on the loads the live policy produced.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from controllers.controller import CapController
from powerplane.schemas import Command

SHADOW_ISSUER = "shadow-controller"
# The name `powerplane evaluate`'s twin knows this controller's policy by (ops.evaluate.DEPLOYED). Each shadow
# command carries it with its thresholds in params (POLICY_KEYS), so `powerplane shadow estimate` can run the
# very policy the shadow runs on the twin without being told; actuators read only params["knob"].
POLICY = "controller"
POLICY_KEYS = ("policy", "cap_threshold", "uncap_threshold")


class ShadowController(CapController):
    """A CapController whose every command carries the shadow mark, signed with the keyring it was given
    (the shadow key: the mark is part of what is signed)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("issuer", SHADOW_ISSUER)
        super().__init__(*args, **kw)

    def command(self, rack: int, gpus: np.ndarray, values: np.ndarray, reason: str, now_s: float,
                action: str = "power_cap", params: dict[str, Any] | None = None) -> Command:
        s = self.settings
        stamp = {"policy": POLICY, "cap_threshold": float(s.cap_threshold), "uncap_threshold": float(s.uncap_threshold)}
        cmd = super().command(rack, gpus, values, reason, now_s, action=action, params={**(params or {}), **stamp})
        cmd.shadow = True
        return self.keyring.sign(cmd)  # again: the mark is part of the signed bytes
