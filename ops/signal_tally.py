"""What the UPS signal did in one `powerplane evaluate` run (ops/evaluate.py): the fusion's counts (signals
started, confirmed by the meters, refuted and rolled back), the faulty_signal events, and for each refuted
(false) signal the seconds of capping it caused: from the signal until the number of power-capped GPUs is
back to where it was just before it (the caps released).

Kept apart from ops/evaluate.py's Tally so the evaluation's own metrics do not change with the signal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ops.engine import Engine
from powerplane.site import Site


@dataclass
class SignalTally:
    site: Site
    epoch_s: float
    on: bool = True  # whether the twin's UPS signal reached the engine
    capped: list[int] = field(default_factory=list)  # power-capped GPUs at the end of each simulated second

    def add(self, fr: Any) -> None:
        self.capped.append(int(np.count_nonzero(np.asarray(fr.limit_w) < self.site.gpu_max_w - 1.0)))

    def unnecessary_s(self, signal_s: float) -> int:
        """Seconds from a false signal (event time) until the capped-GPU count is back to its level before it."""
        k0 = max(int(signal_s - self.epoch_s), 0)  # the step holding the signal: tally index k is second k+1
        if k0 >= len(self.capped):
            return 0
        before = self.capped[k0 - 1] if k0 > 0 else 0
        for k in range(k0, len(self.capped)):
            if self.capped[k] <= before:
                return k - k0
        return len(self.capped) - k0  # not released by the end of the run

    def summary(self, engine: Engine | None) -> dict[str, Any]:
        if engine is None:  # no controller (none, static): nothing read the signal
            return {}
        faulty = [e for e in engine.result.events if e.kind == "faulty_signal" and e.state == "open"]
        rolled = [{"lineup": e.levels[0], "signal_s": float((e.details or {}).get("signal_s", e.ts_s)) - self.epoch_s,
                   "rolled_back_s": e.ts_s - self.epoch_s,
                   "capped_s": self.unnecessary_s(float((e.details or {}).get("signal_s", e.ts_s)))} for e in faulty]
        counts = asdict(engine.stage.signals.counts)
        text = (f"UPS signal {'on' if self.on else 'off'}: {counts['started']} lineup signal(s), "
                f"{counts['confirmed']} confirmed by the meters, {counts['refuted']} refuted and rolled back "
                f"({len(faulty)} faulty_signal event(s)), {counts['cleared']} ended by the UPS saying off battery "
                f"({counts['unexplained']} of them never seen by the meters)")
        text += "".join(f"; {r['lineup']} false at {r['signal_s']:.1f} s, rolled back at {r['rolled_back_s']:.0f} s, "
                        f"{r['capped_s']} s of unnecessary capping" for r in rolled)
        return {"ups_signal": self.on, "counts": counts, "faulty_signal_events": len(faulty), "rolled_back": rolled,
                "text": text}
