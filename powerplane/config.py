"""Runtime configuration: one TOML file, every key overridable by an environment variable.

Validation happens here, once, when a process starts; connections are made later, in start().
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    pass


class TomlFileError(ValueError):
    """A TOML file that cannot be read or parsed; the message is one line without the path."""


def read_toml(path: str | Path) -> dict[str, Any]:
    """Every TOML file the product reads (config, site, sources, scenario, workload) goes through here,
    so they all fail the same way: TomlFileError 'cannot read: ...' or 'not valid TOML: ...'."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise TomlFileError(f"cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise TomlFileError(f"not valid TOML: {e}") from None


@dataclass(frozen=True)
class Config:
    kafka_bootstrap: str = "127.0.0.1:19092"
    site_file: str = "examples/lab.toml"
    influx_url: str = "http://127.0.0.1:18428"
    influx_org: str = "powerplane"
    influx_bucket: str = "powerplane"
    influx_token: str = "dev-token"
    signing_key_file: str = ".powerplane/keys/site.key"
    signing_key_id: str = "k1"
    sample_interval_s: float = 1.0
    command_lease_s: float = 30.0
    # Capping thresholds as fractions of a level's derated limit (POLCA-style defaults).
    cap_threshold: float = 0.80
    uncap_threshold: float = 0.75
    state_dir: str = ".powerplane"
    alertmanager_url: str = "http://127.0.0.1:9093"  # the alertmanager sink posts pp.events here

    @staticmethod
    def env_name(key: str) -> str:
        return "PP_" + key.upper()


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults <- file (if given or $PP_CONFIG) <- PP_* environment variables."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = path or env.get("PP_CONFIG")
    known = {f.name: f for f in fields(Config)}
    if path:
        try:
            data = read_toml(path)
        except TomlFileError as e:
            raise ConfigError(f"{path}: config {e}") from None
        for k, v in data.items():
            if k not in known:
                raise ConfigError(f"{path}: unknown key '{k}' (known: {', '.join(sorted(known))})")
            values[k] = v
    for name in known:
        ev = env.get(Config.env_name(name))
        if ev is not None:
            values[name] = ev
    out: dict[str, Any] = {}
    for k, v in values.items():
        typ = known[k].type
        if isinstance(v, bool) or (typ in ("float", float) and not isinstance(v, int | float | str)) or (
                typ in ("str", str) and not isinstance(v, str)):
            raise ConfigError(f"config key '{k}': expected a {'number' if typ in ('float', float) else 'string'}, "
                              f"got {v!r}")
        try:
            out[k] = float(v) if typ in ("float", float) else str(v)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{k}' (env {Config.env_name(k)}): expected a number, got {v!r}") from None
    cfg = Config(**out)
    if not 0 < cfg.uncap_threshold < cfg.cap_threshold <= 1.5:
        raise ConfigError("uncap_threshold must be below cap_threshold (hysteresis), both positive")
    if cfg.sample_interval_s <= 0 or cfg.command_lease_s <= 0:
        raise ConfigError("sample_interval_s and command_lease_s must be positive")
    return cfg
