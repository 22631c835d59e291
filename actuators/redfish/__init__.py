"""A chassis power limit through a BMC's Redfish service (see README.md beside this file).

A Redfish limit covers the whole chassis, so per-GPU command values become one chassis limit: the sum of
the rack's GPU limits plus the chassis' non-GPU allowance. Transport is sushy's Connector (requests):
basic auth, TLS verification, timeouts, Redfish error bodies; the PowerControl PATCH is ours, with
If-Match so a limit is never written over a resource that changed since it was read.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import requests
from pydantic import AfterValidator, ConfigDict, Field, PlainValidator, ValidationInfo, field_validator
from sushy import exceptions as sx
from sushy.connector import Connector

from actuators.base import F64, I64, Actuator, ActuatorError, ActuatorOptions, NonEmpty
from powerplane.validation import Model, Problems

log = logging.getLogger("powerplane.actuators.redfish")

WATTS_MAX = 1e7  # above any chassis: a bigger number is a typo (kW for W), not a limit


def chassis_limit_w(gpu_limits_w: F64, non_gpu_w: float) -> float:
    """The chassis limit that gives each GPU its limit: their sum plus everything that is not a GPU."""
    return float(np.sum(gpu_limits_w)) + non_gpu_w


def gpu_shares_w(gpu_limits_w: F64, non_gpu_w: float, chassis_w: float) -> F64:
    """What a chassis limit means per GPU: the GPUs' part of it, split in proportion to what was asked."""
    total = float(np.sum(gpu_limits_w))
    scale = max(chassis_w - non_gpu_w, 0.0) / total if total > 0 else 0.0
    return np.asarray(gpu_limits_w, dtype=np.float64) * scale


@dataclass
class _Rack:
    url: str
    chassis: str | None
    gpus: int
    non_gpu_w: float
    conn: Connector | None = None
    power_path: str | None = None  # /redfish/v1/Chassis/<id>/Power, found on first use
    capacity_w: float | None = None  # PowerControl PowerCapacityWatts: the most the chassis can be given
    gpu_w: F64 = field(default_factory=lambda: np.zeros(0))  # per-GPU limits the chassis limit is made of
    last: requests.Response | None = None  # the last response (for Retry-After)


def _bmc_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"must be the BMC's base URL (https://host[:port]), got {url!r}")
    return url


def _chassis(v: str) -> str:
    if not v or "/" in v:
        raise ValueError(f"must be a Chassis id (as in /redfish/v1/Chassis/<id>), got {v!r}")
    return v


def _verify_tls(v: Any) -> bool | str:
    if isinstance(v, bool | str):
        return v
    raise ValueError(f"must be true, false or the path of a CA bundle, got {v!r}")


def _safe_limit(v: Any) -> str | float:
    if v in ("max", "min"):
        return str(v)
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    raise ValueError(f"must be 'max', 'min' or watts per GPU, got {v!r}")


Watts = Annotated[float, Field(ge=0.0, lt=WATTS_MAX)]


class RackOptions(Model):
    """One [actuators.NAME.racks.RACK] table: the chassis that holds the rack's GPUs."""

    model_config = ConfigDict(strict=True)

    url: Annotated[str, AfterValidator(_bmc_url)]
    chassis: Annotated[str, AfterValidator(_chassis)] | None = None  # default: the first with PowerControl
    gpus: int = Field(ge=1, le=1024)
    non_gpu_w: Watts | None = None  # default: the actuator's non_gpu_w


class Options(ActuatorOptions):
    """An [actuators.NAME] table of kind "redfish" (README.md beside this file)."""

    racks: Annotated[dict[str, RackOptions], Field(min_length=1)]
    # The BMC account comes from these environment variables; the secrets themselves never sit in a file.
    username_env: NonEmpty | None = None
    password_env: NonEmpty | None = None
    username: None = None  # only to refuse them with advice (below)
    password: None = None
    verify_tls: Annotated[bool | str, PlainValidator(_verify_tls)] = True
    timeout_s: float = Field(10.0, ge=0.1, lt=1e7)
    gpu_min_w: Watts = 200.0
    gpu_max_w: Watts = 700.0
    safe_limit: Annotated[str | float, PlainValidator(_safe_limit)] = "max"
    non_gpu_w: Watts = 0.0

    @field_validator("username", "password", mode="plain")
    @classmethod
    def _no_secrets(cls, v: Any, info: ValidationInfo) -> None:
        raise ValueError(f"must not be in the config: put it in an environment variable and name that variable "
                         f"in '{info.field_name}_env'")

    def check(self, p: Problems) -> None:
        if self.gpu_max_w < self.gpu_min_w:
            p.add("gpu_max_w", f"must be at least gpu_min_w ({self.gpu_min_w:g}), got {self.gpu_max_w:g}")
        if (self.username_env is None) != (self.password_env is None):
            p.add("username_env" if self.username_env is None else "password_env",
                  "required with the other one (both name environment variables)")
        for key, var in (("username_env", self.username_env), ("password_env", self.password_env)):
            if var is not None and var not in os.environ:
                p.add(key, f"names environment variable {var}, which is not set")


class RedfishActuator(Actuator):
    kind = "redfish"
    options_model = Options

    def configure(self, opts: Options) -> None:
        self.timeout_s, self.verify, self.safe = opts.timeout_s, opts.verify_tls, opts.safe_limit
        self.gpu_min_w, self.gpu_max_w = opts.gpu_min_w, opts.gpu_max_w
        self.creds: tuple[str, str] | None = None
        if opts.username_env is not None and opts.password_env is not None:  # both or neither (Options.check)
            self.creds = (os.environ[opts.username_env], os.environ[opts.password_env])
        self.racks: dict[str, _Rack] = {
            rid: _Rack(r.url.rstrip("/"), r.chassis, r.gpus, opts.non_gpu_w if r.non_gpu_w is None else r.non_gpu_w)
            for rid, r in opts.racks.items()}

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        for rid, r in self.racks.items():
            if r.conn is None:
                r.conn = Connector(r.url, verify=self.verify, default_request_timeout=self.timeout_s,
                                   connect_timeout=self.timeout_s, server_side_retries=1,
                                   server_side_retries_delay=0, response_callback=self._remember(r))
                if self.creds:
                    r.conn.set_http_basic_auth(*self.creds)
            try:
                self._discover(rid, r)
            except ActuatorError as e:  # a BMC down now may be back by the first command: found again then
                log.warning("actuator '%s': %s", self.name, e)

    @staticmethod
    def _remember(r: _Rack) -> Any:
        def cb(resp: requests.Response) -> None:
            r.last = resp
        return cb

    def close(self) -> None:
        for r in self.racks.values():
            if r.conn is not None:
                r.conn.close()
                r.conn = None

    def targets(self) -> list[str]:
        return list(self.racks)

    # ---- Redfish ----------------------------------------------------------------------------------
    def _http(self, rid: str, r: _Rack, method: str, path: str, data: Any = None,
              headers: dict[str, str] | None = None) -> requests.Response:
        if r.conn is None:
            raise ActuatorError(f"actuator '{self.name}' is not started")
        where = f"rack '{rid}': BMC {r.url}"
        try:
            resp: requests.Response = (r.conn.get(path) if method == "GET"
                                       else r.conn.patch(path, data=data, headers=headers))
            return resp
        except sx.ConnectionError as e:
            if "timed out" in str(e).lower():
                raise ActuatorError(f"{where} did not answer {method} {path} within timeout_s = {self.timeout_s:g} s: "
                                    f"the BMC is overloaded or hung; check it, or raise timeout_s") from None
            raise ActuatorError(f"{where} is unreachable ({method} {path}): {_cause(e)}; check the address, the "
                                f"network and that the BMC is up") from None
        except sx.AccessError as e:
            raise ActuatorError(f"{where} refused the credentials (HTTP {e.status_code}) for {method} {path}: "
                                f"check the account named by username_env/password_env and that its role may "
                                f"change power limits (ConfigureComponents)") from None
        except sx.ResourceNotFoundError:
            raise ActuatorError(f"{where} has no {path} (HTTP 404): check the rack's 'chassis'") from None
        except sx.HTTPError as e:
            detail = f"HTTP {e.status_code}: {e.code}: {e.detail or 'no detail'}"
            if e.status_code == 503:
                after = r.last.headers.get("Retry-After") if r.last is not None else None
                raise ActuatorError(f"{where} is busy ({detail})" + (f"; it asks to retry after {after} s"
                                                                     if after else "")) from None
            raise ActuatorError(f"{where} refused {method} {path} ({detail})") from None

    def _json(self, rid: str, r: _Rack, path: str) -> tuple[dict[str, Any], str | None]:
        resp = self._http(rid, r, "GET", path)
        try:
            doc = resp.json()
        except ValueError:
            raise ActuatorError(f"rack '{rid}': BMC {r.url}: {path} is not JSON") from None
        if not isinstance(doc, dict):
            raise ActuatorError(f"rack '{rid}': BMC {r.url}: {path} is not a Redfish resource")
        return doc, resp.headers.get("ETag")

    def _discover(self, rid: str, r: _Rack) -> str:
        """The chassis' Power resource, its capacity, and the per-GPU split of the limit now in force."""
        if r.power_path is not None:
            return r.power_path
        ids = [r.chassis] if r.chassis else []
        if not ids:
            coll, _ = self._json(rid, r, "/redfish/v1/Chassis")
            ids = [str(m.get("@odata.id", "")).rstrip("/").rsplit("/", 1)[-1] for m in coll.get("Members", [])]
        for cid in ids:
            doc, _ = self._json(rid, r, f"/redfish/v1/Chassis/{cid}")
            link = doc.get("Power", {}).get("@odata.id") if isinstance(doc.get("Power"), dict) else None
            if link:
                power, _ = self._json(rid, r, link)
                pc = _power_control(power)
                if pc is None:
                    continue
                cap = pc.get("PowerCapacityWatts")
                r.capacity_w = float(cap) if isinstance(cap, int | float) and cap > 0 else None
                now = (pc.get("PowerLimit") or {}).get("LimitInWatts")
                per = self.gpu_max_w if not isinstance(now, int | float) else (now - r.non_gpu_w) / r.gpus
                r.gpu_w = np.full(r.gpus, float(np.clip(per, self.gpu_min_w, self.gpu_max_w)))
                r.power_path = str(link)
                log.info("actuator '%s': rack %s -> %s%s (limit now %s W, capacity %s W)", self.name, rid, r.url,
                         link, now, cap)
                return r.power_path
        raise ActuatorError(f"rack '{rid}': BMC {r.url} has no chassis with a Power resource holding PowerControl "
                            f"(looked at {', '.join(ids) or 'no chassis'}): set the rack's 'chassis'")

    def _rack(self, target: str, gpus: I64) -> _Rack:
        r = self.racks.get(target)
        if r is None:
            raise ActuatorError(f"rack '{target}' is not served by actuator '{self.name}'")
        if gpus.size and (gpus.min() < 0 or gpus.max() >= r.gpus):
            raise ActuatorError(f"GPU index out of range for rack '{target}' ({r.gpus} GPUs)")
        return r

    # ---- the Actuator interface -------------------------------------------------------------------
    def limits_w(self, target: str, gpus: I64) -> tuple[F64, F64, F64]:
        self._rack(target, gpus)
        n = gpus.size
        safe = {"max": self.gpu_max_w, "min": self.gpu_min_w}.get(str(self.safe), self.safe)
        return (np.full(n, self.gpu_min_w), np.full(n, self.gpu_max_w),
                np.full(n, float(np.clip(float(safe), self.gpu_min_w, self.gpu_max_w))))

    def set_power_limit(self, target: str, gpus: I64, limit_w: F64) -> F64:
        r = self._rack(target, gpus)
        path = self._discover(target, r)
        want = r.gpu_w.copy()
        want[gpus] = limit_w
        chassis_w = chassis_limit_w(want, r.non_gpu_w)
        if r.capacity_w is not None:
            chassis_w = min(chassis_w, r.capacity_w)  # the BMC refuses more than the chassis can draw
        body = {"PowerControl": [{"PowerLimit": {"LimitInWatts": round(chassis_w)}}]}
        for attempt in (1, 2):
            _, etag = self._json(target, r, path)
            try:
                self._http(target, r, "PATCH", path, body, {"If-Match": etag} if etag else None)
                break
            except ActuatorError:
                # 412: the resource changed between our read and write: read it again, once.
                if attempt == 2 or r.last is None or r.last.status_code != 412:
                    raise
        doc, _ = self._json(target, r, path)
        pc = _power_control(doc) or {}
        got = (pc.get("PowerLimit") or {}).get("LimitInWatts")
        if not isinstance(got, int | float):
            raise ActuatorError(f"rack '{target}': BMC {r.url} accepted the limit but {path} reads back no "
                                f"PowerControl LimitInWatts")
        r.gpu_w = want
        log.info("rack %s: chassis limit %g W (GPUs %g W + non-GPU %g W)", target, got, want.sum(), r.non_gpu_w)
        return gpu_shares_w(want, r.non_gpu_w, float(got))[gpus]


def _power_control(doc: dict[str, Any]) -> dict[str, Any] | None:
    pcs = doc.get("PowerControl")
    return pcs[0] if isinstance(pcs, list) and pcs and isinstance(pcs[0], dict) else None


def _cause(e: Exception) -> str:
    """The innermost reason of a connection error ("Connection refused"), not urllib3's long repr."""
    text = str(e)
    for key in ("Connection refused", "Name or service not known", "No route to host", "certificate verify failed",
                "Network is unreachable"):
        if key in text:
            return key
    return text[-200:]
