"""Runtime configuration: one TOML file, every key overridable by an environment variable.

Validation happens here, once, when a process starts; connections are made later, in start(). Every
mistake of the file and the environment is reported at once, one `path: message` line each, the path
naming the environment variable when the value came from one.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from powerplane.validation import ConfigError, error_lines

__all__ = ["RUNBOOK_BASE_URL", "Config", "ConfigError", "TomlFileError", "ignored_env", "load_config", "read_toml"]

# Where alerts link their runbook (docs/runbooks.md, one section per alert name): the repository's copy.
RUNBOOK_BASE_URL = "https://github.com/powerplane/powerplane/blob/main/docs/runbooks.md"


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


def absolute_url(v: str) -> str:
    """An absolute http(s) URL without a fragment (a pager opens it from anywhere; '#...' is appended)."""
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment or v.endswith("#"):
        raise ValueError(f"must be an absolute http:// or https:// URL without a '#' fragment, got {v!r}")
    return v


def _not_bool(v: Any) -> Any:
    # pydantic would read `true` as 1.0; in a threshold or an interval that is a mistake, not a number.
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {v!r}")
    return v


Number = Annotated[float, BeforeValidator(_not_bool)]


class Config(BaseSettings):
    """The runtime settings. `Config(**values)` is those values over the defaults and nothing else (no
    hidden read of the environment); `load_config` layers the file and the `PP_<FIELD>` variables."""

    model_config = SettingsConfigDict(env_prefix="PP_", extra="forbid", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:19092"
    # Kafka client security (powerplane.kafka.client_auth). Each process takes the role of its stage
    # (collector, streams, controller, actuator, sink, ops); "" below means that role's dev credential,
    # which `powerplane dev up` generates under <state_dir>/dev/kafka-security (docs/runbooks.md).
    # PLAINTEXT turns security off: `dev up` then starts a broker without TLS, SASL or ACLs.
    kafka_security_protocol: Literal["SASL_SSL", "SSL", "PLAINTEXT"] = "SASL_SSL"
    kafka_ca_file: str = ""  # PEM CA that signed the brokers' certificates ("" = the dev CA)
    # Where the CA and each user's password file (users/<user>.password) live when not named one by one
    # ("" = <state_dir>/dev/kafka-security, which `dev up` makes; a deployment mounts its own).
    kafka_credentials_dir: str = ""
    kafka_check_hostname: bool = True  # the broker's certificate must name the host the client dialled
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_username: str = ""  # "" = pp-<role>; set, every client of the process uses it
    kafka_password_file: str = ""  # "" = the dev password file of the user
    kafka_password: SecretStr = SecretStr("")  # PP_KAFKA_PASSWORD; wins over the file
    site_file: str = "examples/lab.toml"
    influx_url: str = "http://127.0.0.1:18428"
    influx_org: str = "powerplane"
    influx_bucket: str = "powerplane"
    influx_token: str = "dev-token"
    signing_key_file: str = ".powerplane/keys/site.key"
    signing_key_id: str = "k1"
    # Actuators sign acks with their own keyring ("" = acks.key beside signing_key_file): powerplane.signing.
    ack_key_file: str = ""
    ack_key_id: str = "a1"
    # Demand-response requests (pp.grid) are signed with the grid role's keyring ("" = grid.key beside
    # signing_key_file): the utility's gateway holds it, the controller verifies with it (powerplane.grid_input).
    grid_key_file: str = ""
    grid_key_id: str = "g1"
    # Job-start notices (pp.jobs) are signed with the scheduler role's keyring ("" = scheduler.key beside
    # signing_key_file): the scheduler's prolog holds it, the controller verifies with it (powerplane.job_input).
    scheduler_key_file: str = ""
    scheduler_key_id: str = "s1"
    sample_interval_s: Number = Field(1.0, gt=0)
    command_lease_s: Number = Field(30.0, gt=0)
    # Telemetry event time against the receiver's clock: a frame further ahead is refused (one future-dated
    # frame must not move event time), one older than the age bound is a replay or a broken clock.
    telemetry_max_ahead_s: Number = Field(5.0, gt=0)
    telemetry_max_age_s: Number = Field(86_400.0, gt=0)
    # Capping thresholds as fractions of a level's derated limit (POLCA-style defaults).
    cap_threshold: Number = Field(0.80, gt=0, le=1.5)
    uncap_threshold: Number = Field(0.75, gt=0)
    # "on": the controller also sends power_floor commands through running training jobs' low phases when the
    # site has a utility ramp limit (docs/grid.md). Off by default: H100s have no power-smoothing floor and
    # their actuators reject every one (the controller then stops asking those GPUs for an hour).
    power_floors: Literal["off", "on"] = "off"
    state_dir: str = ".powerplane"
    alertmanager_url: str = "http://127.0.0.1:9093"  # the alertmanager sink posts pp.events here
    runbook_base_url: str = RUNBOOK_BASE_URL  # alerts' runbook_url = this + "#" + alert name, lowercased

    @field_validator("runbook_base_url")
    @classmethod
    def _absolute_url(cls, v: str) -> str:
        return absolute_url(v)

    @field_validator("uncap_threshold")
    @classmethod
    def _below_cap(cls, v: float, info: ValidationInfo) -> float:
        cap = info.data.get("cap_threshold")  # absent when cap_threshold itself is wrong (reported there)
        if cap is not None and v >= cap:
            raise ValueError(f"must be below cap_threshold ({cap:g}): capping stops only under it (hysteresis)")
        return v

    @staticmethod
    def env_name(key: str) -> str:
        return "PP_" + key.upper()

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # pydantic runs __init__ (and so these sources) from model_validate too: load_config passes the
        # environment it was given through _EnvSource, never os.environ behind its back.
        return (init_settings,)


class _EnvSource(EnvSettingsSource):
    """PP_* variables of a given mapping instead of os.environ (tests, and `load_config(env=...)`)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._env.items()}  # names match case-insensitively, as pydantic's


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults <- file (if given or $PP_CONFIG) <- PP_* environment variables (`env`, else os.environ).
    ConfigError lists every mistake of both at once."""
    env = os.environ if env is None else env
    path = path or env.get("PP_CONFIG")
    values: dict[str, Any] = {}
    if path:
        try:
            values = read_toml(path)
        except TomlFileError as e:
            raise ConfigError(f"{path}: config {e}") from None
    from_env = _EnvSource(Config, env)()
    # BaseSettings.__init__ takes `_env_file=`, `_cli_parse_args=`, ... as its own options: not from a file.
    hidden = [k for k in values if k.startswith("_")]
    lines = [f"{k}: unknown key{_KNOWN}" for k in hidden] + _misspelt_env(env)
    try:
        cfg = Config(**{k: v for k, v in {**values, **from_env}.items() if k not in hidden})
    except ValidationError as e:
        lines = _lines(e, set(from_env)) + lines
    if lines:
        raise ConfigError(lines, str(path or ""))
    return cfg


_KNOWN = f" (known: {', '.join(sorted(Config.model_fields))})"


def _lines(e: ValidationError, from_env: set[str]) -> list[str]:
    """error_lines, the path naming the variable for values from the environment; unknown keys list the known."""
    out = []
    for err, line in zip(e.errors(include_url=False), error_lines(e), strict=True):
        key = str(err["loc"][0]) if err["loc"] else ""
        if key in from_env:
            line = f"{key} (env {Config.env_name(key)})" + line.removeprefix(key)
        out.append(line + _KNOWN if err["type"] == "extra_forbidden" else line)
    return out


# PP_* variables read by name where they are used: not settings, not mistakes either.
OTHER_ENV = frozenset({"PP_CONFIG", "PP_TRACE", "PP_CACHE_DIR", "PP_KAFKA_HEAP", "PP_ARTIFACTS"})


def _unknown_env(env: Mapping[str, str]) -> list[str]:
    known = {Config.env_name(k) for k in Config.model_fields} | OTHER_ENV
    return sorted(k for k in env if k.upper().startswith("PP_") and k.upper() not in known)


def _misspelt_env(env: Mapping[str, str]) -> list[str]:
    """A PP_* variable one typo away from a setting is a mistake: the setting it meant is not applied."""
    import difflib

    names = [Config.env_name(k) for k in Config.model_fields]
    out = []
    for k in _unknown_env(env):
        close = difflib.get_close_matches(k.upper(), names, n=1, cutoff=0.85)
        if close:
            out.append(f"{k} (env): not a setting; did you mean {close[0]}?")
    return out


def ignored_env(env: Mapping[str, str] | None = None) -> list[str]:
    """The other unknown PP_* variables: not applied to the configuration (credentials named by a file
    are read where they are named). One line each for the CLI to print, so none is ignored silently."""
    env = os.environ if env is None else env
    misspelt = {line.split(" ", 1)[0] for line in _misspelt_env(env)}
    return [f"{k} is not a powerplane setting: not applied (fine if a sources or actuators file names it)"
            for k in _unknown_env(env) if k not in misspelt]
