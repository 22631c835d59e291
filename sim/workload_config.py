"""What a workload is (``PoolSpec``, ``JobSpec``, ``WorkloadSpec``, the dataclasses the twin runs) and
the workload file that describes one (``PoolConfig``, ``JobConfig``, ``WorkloadConfig``: pydantic
models whose defaults are the dataclasses' own).

A workload file::

    rate_window_s = 30
    trace = "traces/bursty.csv"  # optional, relative to this file (default: $PP_TRACE, else the Azure trace)
    slo = {kind = "relative", ttft_k = 5, ttft_floor_s = 0.25, tbt_k = 5, tbt_floor_s = 0.1}  # or "absolute"

    [[pools]]
    name = "critical-1"
    priority = "inference-critical"
    model = "llama3-70b"
    share = 0.5
    rate_scale = 2.0

    [[jobs]]
    name = "train-1"
    racks = ["rack-07", "rack-08"]

``trace`` may also be a table naming a generic CSV's columns: ``trace = {path = "t.csv", arrival = "t",
prompt = "in", output = "out"}`` (``sim.trace_files``). Loading reports every mistake at once as
``path: message`` (one ``ConfigError``): wrong values, a name used twice, a trace file that is missing or
not a trace and, given a site, racks it lacks. Specs built in code go through the same checks
(``validate_workload``), so a file and a script cannot disagree on what is valid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from powerplane.config import TomlFileError, read_toml
from powerplane.site import PRIORITIES, Site
from powerplane.validation import ConfigError, Model, Problems, parse_into
from sim.serving import MODELS
from sim.slo import SloSpec
from sim.trace import PACKAGED_TRACE, Trace
from sim.trace_files import TraceColumns, default_trace, load_trace


@dataclass(frozen=True)
class PoolSpec:
    """An inference pool: instances of one model serving one priority class from a shifted, scaled trace."""

    name: str
    priority: str = "inference-critical"
    model: str = "llama3-70b"
    tp: int = 8  # GPUs per instance (tensor parallelism)
    gpus: int | None = None  # GPUs taken from its priority class, in site order
    share: float | None = None  # or this fraction of its class's GPUs (None, None: an equal split)
    racks: tuple[str, ...] = ()  # or exactly these racks
    instances: int | None = None  # instances active at start (None: all that fit)
    shift_s: float = 0.0  # replay starts this far into the trace
    rate_scale: float = 1.0  # arrivals per trace arrival
    mode: str = "rate"  # "rate" (smoothed-rate Poisson) or "exact" (the trace's own arrivals)
    copy_spread_s: float = 1.0  # exact mode: copies of one trace request spread over this long
    max_batch: int = 256  # running sequences per instance (vLLM's max_num_seqs default)
    chunk_tokens: int = 2048  # prompt tokens per iteration (chunked prefill budget; assumption)
    ttft_slo_s: float = 0.4  # DynamoLLM's TTFT SLO (BRIEF.md, unconfirmed)
    tbt_slo_s: float = 0.1  # DynamoLLM's TBT SLO (BRIEF.md, unconfirmed)


@dataclass(frozen=True)
class JobSpec:
    """A synchronous training job."""

    name: str
    priority: str = "training"
    gpus: int | None = None
    share: float | None = None
    racks: tuple[str, ...] = ()
    start_s: float = 0.0
    stop_s: float = math.inf
    iter_s: float = 5.0  # one step at max clock (assumption: large-model steps take seconds)
    compute_frac: float = 0.8  # share of a step in the compute phase at max clock (assumption)
    phase_s: float = 0.0  # offset into the first step
    ckpt_every_s: float = 1800.0  # checkpoint period (assumption)
    ckpt_s: float = 60.0  # checkpoint pause (assumption)
    ckpt_offset_s: float = 0.0  # first checkpoint this long after the start (0: one period)
    # Utilizations of the communication phase (compute, memory); None: the twin's PowerConfig.train_comm_*
    # (calibrated on POLCA's 37.5 % rack swing). Near 0: all-reduce waits on the network with the GPUs near
    # idle, the full compute-to-idle swing of arXiv 2508.14318.
    comm_uc: float | None = None
    comm_um: float | None = None


@dataclass(frozen=True, eq=False)
class WorkloadSpec:
    pools: tuple[PoolSpec, ...] = ()
    jobs: tuple[JobSpec, ...] = ()
    rate_window_s: float = 30.0  # smoothing window of the trace's rate in "rate" mode (assumption)
    trace: Trace | None = None  # None: default_trace() ($PP_TRACE, else the packaged Azure trace)
    slo: SloSpec = field(default_factory=SloSpec)  # how TTFT and TBT SLOs are defined (sim.slo): relative by default

    def resolved_trace(self) -> Trace:
        return self.trace if self.trace is not None else default_trace()


_POOL_FIELDS = {f.name for f in fields(PoolSpec)}


# ======================================================================================
# The file's schema
# ======================================================================================


def _priority(v: str) -> str:
    if v not in PRIORITIES:
        raise ValueError(f"unknown priority class '{v}' (known: {', '.join(PRIORITIES)})")
    return v


def _model(v: str) -> str:
    if v not in MODELS:
        raise ValueError(f"unknown model '{v}' (known: {', '.join(MODELS)})")
    return v


def _power_of_two(v: int) -> int:
    if v < 1 or v & (v - 1):
        raise ValueError(f"must be a power of two >= 1, got {v}")
    return v


# strict: a bool or a string is not a number (an int is a float).
Num = Annotated[float, Field(strict=True)]
Pos = Annotated[float, Field(strict=True, gt=0)]
PosInt = Annotated[int, Field(strict=True, ge=1)]
Share = Annotated[float, Field(strict=True, gt=0, le=1)]
Priority = Annotated[str, AfterValidator(_priority)]


class PoolConfig(Model):
    name: str
    priority: Priority = PoolSpec.priority
    model: Annotated[str, AfterValidator(_model)] = PoolSpec.model
    tp: Annotated[int, Field(strict=True), AfterValidator(_power_of_two)] = PoolSpec.tp
    gpus: PosInt | None = None
    share: Share | None = None
    racks: tuple[str, ...] = ()
    instances: Annotated[int, Field(strict=True)] | None = None
    shift_s: Num = PoolSpec.shift_s
    rate_scale: Annotated[float, Field(strict=True, ge=0)] = PoolSpec.rate_scale
    mode: Literal["rate", "exact"] = "rate"
    copy_spread_s: Num = PoolSpec.copy_spread_s
    max_batch: PosInt = PoolSpec.max_batch
    chunk_tokens: PosInt = PoolSpec.chunk_tokens
    ttft_slo_s: Pos = PoolSpec.ttft_slo_s
    tbt_slo_s: Pos = PoolSpec.tbt_slo_s


class JobConfig(Model):
    name: str
    priority: Priority = JobSpec.priority
    gpus: PosInt | None = None
    share: Share | None = None
    racks: tuple[str, ...] = ()
    start_s: Num = JobSpec.start_s
    stop_s: Num = JobSpec.stop_s
    iter_s: Pos = JobSpec.iter_s
    compute_frac: Share = JobSpec.compute_frac
    phase_s: Num = JobSpec.phase_s
    ckpt_every_s: Num = JobSpec.ckpt_every_s
    ckpt_s: Annotated[float, Field(strict=True, ge=0)] = JobSpec.ckpt_s
    ckpt_offset_s: Num = JobSpec.ckpt_offset_s
    comm_uc: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    comm_um: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None

    @field_validator("stop_s")
    @classmethod
    def _after_start(cls, v: float, info: ValidationInfo) -> float:
        if "start_s" in info.data and not v > info.data["start_s"]:
            raise ValueError("must be after start_s")
        return v

    @model_validator(mode="after")
    def _ckpt_fits(self) -> JobConfig:
        if not self.ckpt_every_s > self.ckpt_s:
            raise ValueError("need ckpt_s < ckpt_every_s")
        return self


def _trace_path(v: Any) -> Any:
    """``trace = "file.csv"`` is ``trace = {path = "file.csv"}``; anything else is the table's to check."""
    if isinstance(v, str):
        return {"path": v}
    if v is not None and not isinstance(v, Mapping | TraceConfig):
        raise ValueError(f"expected a file name or a table with path (and column names), got {v!r}")
    return v


class TraceConfig(Model):
    """A trace file and, for a generic CSV, its column names (Azure files are recognised by their header)."""

    path: Annotated[str, Field(min_length=1)]
    arrival: Annotated[str, Field(min_length=1)] = TraceColumns.arrival
    prompt: Annotated[str, Field(min_length=1)] = TraceColumns.prompt
    output: Annotated[str, Field(min_length=1)] = TraceColumns.output

    def columns(self) -> TraceColumns:
        return TraceColumns(self.arrival, self.prompt, self.output)


def _slo_kind(v: Any) -> Any:
    """``slo = "absolute"`` is ``slo = {kind = "absolute"}``."""
    return {"kind": v} if isinstance(v, str) else v


class SloConfig(Model):
    """``slo = "relative"`` or ``"absolute"``, or a table with the scale k and floor of each (sim.slo)."""

    kind: Literal["relative", "absolute"] = "relative"
    ttft_k: Annotated[float, Field(strict=True, ge=1)] = SloSpec.ttft_k
    ttft_floor_s: Annotated[float, Field(strict=True, ge=0)] = SloSpec.ttft_floor_s
    tbt_k: Annotated[float, Field(strict=True, ge=1)] = SloSpec.tbt_k
    tbt_floor_s: Annotated[float, Field(strict=True, ge=0)] = SloSpec.tbt_floor_s

    def spec(self) -> SloSpec:
        return SloSpec(**self.model_dump())


class WorkloadConfig(Model):
    pools: tuple[PoolConfig, ...] = ()
    jobs: tuple[JobConfig, ...] = ()
    rate_window_s: Pos = WorkloadSpec.rate_window_s
    trace: Annotated[TraceConfig | None, BeforeValidator(_trace_path)] = None
    slo: Annotated[SloConfig, BeforeValidator(_slo_kind)] = SloConfig()


# ======================================================================================
# Loading and checking
# ======================================================================================


def _check_names(problems: Problems, d: Mapping[str, Any], site: Site | None) -> None:
    """Names used twice, and racks the site lacks; on plain tables, so it runs beside the schema's checks."""
    seen: set[str] = set()
    racks = set(site.rack_ids) if site is not None else None
    for kind in ("pools", "jobs"):
        items = d.get(kind)
        for i, item in enumerate(items if isinstance(items, list | tuple) else []):
            if not isinstance(item, Mapping):
                continue
            name = item.get("name")
            if isinstance(name, str):
                if name in seen:
                    problems.add(f"{kind}[{i}].name", f"'{name}' is used twice")
                seen.add(name)
            rs = item.get("racks")
            if racks is None or not isinstance(rs, list | tuple):
                continue
            for j, r in enumerate(rs):
                if isinstance(r, str) and r not in racks:
                    problems.add(f"{kind}[{i}].racks[{j}]", f"unknown rack '{r}'")


def _file_trace(raw: Any, base_dir: Path, problems: Problems) -> Trace | None:
    """The trace the file names (a path relative to the file's directory), or its one-line problem. From
    the raw value, so that a missing trace file is reported beside mistakes elsewhere in the file; a
    malformed value is left to the schema's message."""
    try:
        tc = TraceConfig.model_validate(_trace_path(raw))
    except (ValidationError, ValueError):
        return None
    path = Path(tc.path).expanduser()
    try:
        return load_trace(path if path.is_absolute() else base_dir / path, tc.columns())
    except (FileNotFoundError, ValueError) as e:
        problems.add("trace", str(e))
        return None


def _checked(d: Mapping[str, Any], site: Site | None, source: str,
             base_dir: Path | None) -> tuple[WorkloadConfig, Trace | None]:
    problems = Problems()
    cfg = parse_into(WorkloadConfig, d, problems)
    if isinstance(d, Mapping):
        _check_names(problems, d, site)
    raw = d.get("trace") if isinstance(d, Mapping) else None
    trace = _file_trace(raw, base_dir, problems) if raw is not None and base_dir is not None else None
    problems.raise_if_any(source)
    assert cfg is not None
    return cfg, trace


def check_workload(d: Mapping[str, Any], site: Site | None = None, source: str = "<workload>") -> WorkloadConfig:
    """The validated file, or one ConfigError with every mistake (racks resolved only given a site)."""
    return _checked(d, site, source, None)[0]


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v  # a numpy scalar from a script is a number too


def validate_workload(spec: WorkloadSpec, site: Site | None = None, source: str = "<workload>") -> None:
    """The same checks as a file gets, on a spec built in code."""
    def table(s: PoolSpec | JobSpec) -> dict[str, Any]:
        return {f.name: _plain(getattr(s, f.name)) for f in fields(s)}

    check_workload({"pools": [table(p) for p in spec.pools], "jobs": [table(j) for j in spec.jobs],
                    "rate_window_s": _plain(spec.rate_window_s),
                    "slo": {f.name: _plain(getattr(spec.slo, f.name)) for f in fields(spec.slo)}}, site, source)


def workload_from_dict(d: Mapping[str, Any], source: str = "<workload>", trace: Trace | None = None, *,
                       site: Site | None = None, base_dir: str | Path = ".") -> WorkloadSpec:
    """Build a workload from the dict a workload TOML file loads to; every error is reported at once.
    `trace`, when given, replaces the one the file names (the CLI's --trace); a relative ``trace`` path in
    the file is taken from `base_dir` (the file's directory)."""
    cfg, file_trace = _checked(d, site, source, None if trace is not None else Path(base_dir))
    return WorkloadSpec(tuple(PoolSpec(**p.model_dump()) for p in cfg.pools),
                        tuple(JobSpec(**j.model_dump()) for j in cfg.jobs), cfg.rate_window_s,
                        trace if trace is not None else file_trace, cfg.slo.spec())


def load_workload(path: str | Path, trace: Trace | None = None, *, site: Site | None = None) -> WorkloadSpec:
    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise ConfigError([str(e)], str(path)) from None
    return workload_from_dict(data, str(path), trace, site=site, base_dir=Path(path).parent)


def workload_to_dict(spec: WorkloadSpec) -> dict[str, Any]:
    """The TOML-ready dict of a workload (fields at their defaults are left out)."""
    def one(s: PoolSpec | JobSpec) -> dict[str, Any]:
        default = type(s)(name=s.name)
        out: dict[str, Any] = {}
        for f in fields(s):
            v = getattr(s, f.name)
            if f.name == "name" or v != getattr(default, f.name):
                if isinstance(v, float) and math.isinf(v):
                    continue
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    out: dict[str, Any] = {"rate_window_s": spec.rate_window_s}
    tr = spec.trace
    if tr is not None and tr.fmt != "generated" and Path(tr.source).resolve() != PACKAGED_TRACE.resolve():
        out["trace"] = tr.source  # the packaged trace is the default: a path into the install is noise
    if spec.slo != SloSpec():
        out["slo"] = {f.name: getattr(spec.slo, f.name) for f in fields(spec.slo)}
    return {**out, "pools": [one(p) for p in spec.pools], "jobs": [one(j) for j in spec.jobs]}


def with_pool(spec: WorkloadSpec, name: str, **changes: Any) -> WorkloadSpec:
    """A copy of the workload with one pool's fields changed (tests, what-ifs)."""
    pools = tuple(replace(p, **changes) if p.name == name else p for p in spec.pools)
    return replace(spec, pools=pools)
