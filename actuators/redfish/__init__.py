"""A chassis power limit through a BMC's Redfish service (see README.md beside this file).

A Redfish limit covers the whole chassis, so per-GPU command values become one chassis limit: the sum of
the rack's GPU limits plus the chassis' non-GPU allowance. Transport is sushy's Connector (requests):
basic auth, TLS verification, timeouts, Redfish error bodies; the PowerControl PATCH is ours, with
If-Match so a limit is never written over a resource that changed since it was read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests
from sushy import exceptions as sx
from sushy.connector import Connector

from actuators.base import F64, I64, Actuator, ActuatorConfigError, ActuatorError

log = logging.getLogger("powerplane.actuators.redfish")

OPTIONS = frozenset({"kind", "racks", "username_env", "password_env", "verify_tls", "timeout_s", "gpu_min_w",
                     "gpu_max_w", "safe_limit", "non_gpu_w"})
RACK_OPTIONS = frozenset({"url", "chassis", "gpus", "non_gpu_w"})


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


class RedfishActuator(Actuator):
    kind = "redfish"

    def configure(self, options: Mapping[str, Any]) -> None:
        def bad(key: str, msg: str) -> ActuatorConfigError:
            return ActuatorConfigError(f"actuator '{self.name}': '{key}' {msg}")

        def num(opts: Mapping[str, Any], key: str, default: float | None, lo: float, where: str = "") -> float:
            v = opts.get(key, default)
            if not isinstance(v, int | float) or isinstance(v, bool) or not lo <= v < 1e7:
                raise bad(where + key, f"must be a number >= {lo:g}, got {v!r}")
            return float(v)

        if "password" in options or "username" in options:
            raise bad("password" if "password" in options else "username",
                      "must not be in the config: put it in an environment variable and name that variable in "
                      "'password_env' / 'username_env'")
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise bad(unknown[0], f"is not an option of kind redfish (options: {', '.join(sorted(OPTIONS))})")
        self.timeout_s = num(options, "timeout_s", 10.0, 0.1)
        verify = options.get("verify_tls", True)
        if not isinstance(verify, bool | str):
            raise bad("verify_tls", f"must be true, false or the path of a CA bundle, got {verify!r}")
        self.verify: bool | str = verify
        self.gpu_min_w = num(options, "gpu_min_w", 200.0, 0.0)
        self.gpu_max_w = num(options, "gpu_max_w", 700.0, self.gpu_min_w)
        safe = options.get("safe_limit", "max")
        if safe not in ("max", "min") and not (isinstance(safe, int | float) and not isinstance(safe, bool)):
            raise bad("safe_limit", f"must be 'max', 'min' or watts per GPU, got {safe!r}")
        self.safe: str | float = safe if isinstance(safe, str) else float(safe)
        non_gpu_w = num(options, "non_gpu_w", 0.0, 0.0)
        self.creds: tuple[str, str] | None = None
        user_env, pass_env = options.get("username_env"), options.get("password_env")
        if (user_env is None) != (pass_env is None):
            raise bad("username_env" if user_env is None else "password_env",
                      "is required with the other one (both name environment variables)")
        if user_env is not None:
            vals = []
            for key, var in (("username_env", user_env), ("password_env", pass_env)):
                if not isinstance(var, str) or not var:
                    raise bad(key, f"must name an environment variable, got {var!r}")
                if var not in os.environ:
                    raise bad(key, f"names environment variable {var}, which is not set")
                vals.append(os.environ[var])
            self.creds = (vals[0], vals[1])
        racks = options.get("racks")
        if not isinstance(racks, Mapping) or not racks:
            raise bad("racks", "must be a table of rack id -> {url, gpus, chassis, non_gpu_w}")
        self.racks: dict[str, _Rack] = {}
        for rid, r in racks.items():
            where = f"racks.{rid}."
            if not isinstance(r, Mapping):
                raise bad(f"racks.{rid}", "must be a table with 'url' and 'gpus'")
            extra = sorted(set(r) - RACK_OPTIONS)
            if extra:
                raise bad(where + extra[0], f"is not a rack option (options: {', '.join(sorted(RACK_OPTIONS))})")
            url = r.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise bad(where + "url", f"must be the BMC's base URL (https://host[:port]), got {url!r}")
            gpus = r.get("gpus")
            if not isinstance(gpus, int) or isinstance(gpus, bool) or not 1 <= gpus <= 1024:
                raise bad(where + "gpus", f"must be the number of GPUs in the chassis (1..1024), got {gpus!r}")
            chassis = r.get("chassis")
            if chassis is not None and (not isinstance(chassis, str) or not chassis or "/" in chassis):
                raise bad(where + "chassis", f"must be a Chassis id (as in /redfish/v1/Chassis/<id>), got {chassis!r}")
            self.racks[str(rid)] = _Rack(url.rstrip("/"), chassis, gpus, num(r, "non_gpu_w", non_gpu_w, 0.0, where))

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
