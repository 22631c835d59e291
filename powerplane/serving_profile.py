"""Measured energy/latency profiles of inference instances: the data a reconfiguration policy decides from.

A *class* is one (model, GPU type, SLOs, batch and chunk settings) combination: pools that share them share
a profile. For every class, tensor-parallel degree and SM clock the profile holds the highest request rate
one instance sustains within the pool's TTFT and TBT SLOs (``cap_rps``), and the instance's power (all its
GPUs) at a grid of load fractions of that rate. DynamoLLM builds such profiles by measurement; ours are
measured on the twin's serving model (``sim.profiling``) and shipped as JSON, so the policy
(``controllers/reconfig.py``) needs only this module and numpy. No I/O except ``save``/``load``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from powerplane.site import FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]
PACKAGED_PROFILE = Path(__file__).resolve().parent / "resources" / "serving_profile_default.json"
FORMAT = "powerplane.serving_profile/1"


def class_key(model: str, gpu_model: str, ttft_slo_s: float, tbt_slo_s: float, max_batch: int,
              chunk_tokens: int) -> str:
    """The profile class of a pool: pools with equal keys behave alike."""
    return f"{model}/{gpu_model}/ttft{ttft_slo_s:g}/tbt{tbt_slo_s:g}/b{max_batch}/c{chunk_tokens}"


class ProfileError(ValueError):
    """A profile whose fields are missing or inconsistent; the message names the field."""


@dataclass(frozen=True, eq=False)
class ServingProfile:
    """Arrays over classes K, TP degrees T, clocks F and load fractions L."""

    classes: tuple[str, ...]  # (K,) class keys (see class_key)
    tp: IntArray  # (T,) tensor-parallel degrees of the grid
    freq_mhz: FloatArray  # (K, F) SM clocks as applied (supported clocks), highest first
    load_frac: FloatArray  # (L,) from 0 to 1, increasing
    valid: BoolArray  # (K, T): the model fits and the class's pools allow this degree
    cap_rps: FloatArray  # (K, T, F) requests/s per instance within both SLOs (0: never within them)
    power_w: FloatArray  # (K, T, F, L) instance power (all its GPUs) at load_frac x cap_rps
    tokens_per_req: FloatArray  # (K,) output tokens per request in the measured mix
    bare_w: FloatArray  # (K,) one GPU switched off (no context, lowest clock)
    meta: dict[str, Any] = field(default_factory=dict)  # how it was measured

    def __post_init__(self) -> None:
        k, t = len(self.classes), self.tp.size
        f = self.freq_mhz.shape[1] if self.freq_mhz.ndim == 2 else -1
        n_l = self.load_frac.size
        want = {"freq_mhz": (k, f), "valid": (k, t), "cap_rps": (k, t, f), "power_w": (k, t, f, n_l),
                "tokens_per_req": (k,), "bare_w": (k,)}
        for name, shape in want.items():
            got = getattr(self, name).shape
            if got != shape:
                raise ProfileError(f"profile.{name}: shape {got}, expected {shape} (K={k} classes, T={t} tp, "
                                   f"F={f} clocks, L={n_l} loads)")
        if n_l < 2 or self.load_frac[0] != 0.0 or self.load_frac[-1] != 1.0 or np.any(np.diff(self.load_frac) <= 0):
            raise ProfileError("profile.load_frac: must increase from 0.0 to 1.0 with at least 2 points")
        if len(set(self.classes)) != k:
            raise ProfileError("profile.classes: a class key appears twice")

    def class_index(self, key: str) -> int:
        try:
            return self.classes.index(key)
        except ValueError:
            raise KeyError(f"profile has no class '{key}' (known: {', '.join(self.classes)})") from None

    def power_at(self, k: IntArray, t: IntArray, f: IntArray, frac: FloatArray) -> FloatArray:
        """Instance power at load fraction frac (clipped to [0, 1]), linear between grid points; vectorized."""
        x = np.clip(frac, 0.0, 1.0)
        j = np.clip(np.searchsorted(self.load_frac, x, side="right") - 1, 0, self.load_frac.size - 2)
        x0, x1 = self.load_frac[j], self.load_frac[j + 1]
        p0, p1 = self.power_w[k, t, f, j], self.power_w[k, t, f, j + 1]
        return np.asarray(p0 + (p1 - p0) * (x - x0) / (x1 - x0), dtype=np.float64)

    def energy_per_token_j(self, k: IntArray, t: IntArray, f: IntArray, frac: FloatArray) -> FloatArray:
        rps = np.clip(frac, 0.0, 1.0) * self.cap_rps[k, t, f]
        tok = rps * self.tokens_per_req[k]
        return np.asarray(np.where(tok > 0, self.power_at(k, t, f, frac) / np.maximum(tok, 1e-12), np.inf),
                          dtype=np.float64)

    # ---- JSON ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "classes": list(self.classes), "tp": self.tp.tolist(),
                "freq_mhz": self.freq_mhz.tolist(), "load_frac": self.load_frac.tolist(),
                "valid": self.valid.tolist(), "cap_rps": self.cap_rps.tolist(), "power_w": self.power_w.tolist(),
                "tokens_per_req": self.tokens_per_req.tolist(), "bare_w": self.bare_w.tolist(),
                "meta": dict(self.meta)}

    @staticmethod
    def from_dict(d: dict[str, Any], source: str = "<profile>") -> ServingProfile:
        if d.get("format") != FORMAT:
            raise ProfileError(f"{source}: format: expected '{FORMAT}', got {d.get('format')!r}")
        missing = [n for n in ("classes", "tp", "freq_mhz", "load_frac", "valid", "cap_rps", "power_w",
                               "tokens_per_req", "bare_w") if n not in d]
        if missing:
            raise ProfileError(f"{source}: missing field(s) {', '.join(missing)}")

        def arr(name: str, dtype: type) -> Any:
            try:
                return np.asarray(d[name], dtype=dtype)
            except (TypeError, ValueError) as e:
                raise ProfileError(f"{source}: {name}: not a numeric array ({e})") from None

        try:
            return ServingProfile(
                classes=tuple(str(c) for c in d["classes"]), tp=arr("tp", np.int64), freq_mhz=arr("freq_mhz", float),
                load_frac=arr("load_frac", float), valid=arr("valid", bool), cap_rps=arr("cap_rps", float),
                power_w=arr("power_w", float), tokens_per_req=arr("tokens_per_req", float),
                bare_w=arr("bare_w", float), meta=dict(d.get("meta", {})))
        except ProfileError as e:
            raise ProfileError(f"{source}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=None, separators=(",", ":")) + "\n")

    @staticmethod
    def load(path: str | Path | None = None) -> ServingProfile:
        """Read a profile; None reads the packaged one (the default workloads' classes)."""
        p = Path(path) if path is not None else PACKAGED_PROFILE
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ProfileError(f"{p}: cannot read profile ({e})") from None
        return ServingProfile.from_dict(d, source=str(p))
