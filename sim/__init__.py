"""Digital twin of a GPU site driven by real LLM request traces (see docs/twin.md).

``Twin(site, workload, scenario, config, seed).step(dt_s)`` returns a ``TwinFrame``: the telemetry real
collectors would read (a superset of ``sim.fleet.FleetFrame``) and the ground truth.
"""

from sim.engine import JobStats, PoolStats, Twin, TwinConfig, TwinFrame
from sim.scenario import Event, Scenario, load_scenario, scenario_from_dict
from sim.workload import (
    TRACE_ATTRIBUTION,
    JobSpec,
    PoolSpec,
    Trace,
    WorkloadSpec,
    default_trace,
    default_workload,
    load_azure_conv,
    load_trace,
    load_workload,
    workload_from_dict,
)

__all__ = [
    "TRACE_ATTRIBUTION",
    "Event",
    "JobSpec",
    "JobStats",
    "PoolSpec",
    "PoolStats",
    "Scenario",
    "Trace",
    "Twin",
    "TwinConfig",
    "TwinFrame",
    "WorkloadSpec",
    "default_trace",
    "default_workload",
    "load_azure_conv",
    "load_scenario",
    "load_trace",
    "load_workload",
    "scenario_from_dict",
    "workload_from_dict",
]
