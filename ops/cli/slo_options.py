"""evaluate's options for the SLO definition (sim.slo) and the default workload's pool sizing
(sim.workload.default_workload): parsed into a workload, one line naming any bad value."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from ops.cli.common import UsageError


def add_slo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slo", choices=("relative", "absolute"),
                   help="SLO definition: relative (k x each request's isolated latency, with a floor; the default) "
                        "or absolute (each pool's fixed ttft_slo_s / tbt_slo_s); overrides the workload file's slo")
    p.add_argument("--slo-ttft-k", type=float, metavar="K", help="relative SLO: TTFT <= K x isolated TTFT (default 5)")
    p.add_argument("--slo-ttft-floor", type=float, metavar="S", help="relative SLO: TTFT floor in s (default 0.25)")
    p.add_argument("--slo-tbt-k", type=float, metavar="K", help="relative SLO: TBT <= K x isolated TBT (default 5)")
    p.add_argument("--slo-tbt-floor", type=float, metavar="S", help="relative SLO: TBT floor in s (default 0.1)")
    p.add_argument("--sizing-quantile", type=float, default=0.95, metavar="Q",
                   help="default workload: size pools on this quantile of the trace's 30 s-smoothed rate (0.95)")
    p.add_argument("--critical-quantile", type=float, default=0.99, metavar="Q",
                   help="default workload: critical pools are sized on the higher of this quantile and "
                        "--sizing-quantile (0.99: their bursts must fit; batch is what is shed)")
    p.add_argument("--critical-load", type=float, default=0.6, metavar="U",
                   help="default workload: critical pools' target utilization at that rate (0.6)")
    p.add_argument("--batch-load", type=float, default=0.85, metavar="U",
                   help="default workload: batch pools' target utilization at that rate (0.85)")


def _check(args: argparse.Namespace) -> None:
    bad = []
    for name in ("slo_ttft_k", "slo_tbt_k"):
        v = getattr(args, name)
        if v is not None and not v >= 1.0:
            bad.append(f"--{name.replace('_', '-')}: must be >= 1, got {v:g}")
    for name in ("slo_ttft_floor", "slo_tbt_floor"):
        v = getattr(args, name)
        if v is not None and not v >= 0.0:
            bad.append(f"--{name.replace('_', '-')}: must be >= 0, got {v:g}")
    for name in ("sizing_quantile", "critical_quantile"):
        v = getattr(args, name)
        if not 0.0 < v <= 1.0:
            bad.append(f"--{name.replace('_', '-')}: must be in (0, 1], got {v:g}")
    for name in ("critical_load", "batch_load"):
        v = getattr(args, name)
        if not 0.0 < v <= 2.0:
            bad.append(f"--{name.replace('_', '-')}: must be in (0, 2], got {v:g}")
    if bad:
        raise UsageError("; ".join(bad))


def workload_for(args: argparse.Namespace, site: Any, trace: Any, load_workload: Any, default_workload: Any) -> Any:
    """The workload evaluate runs: the file's (with --trace), else the site's default sized on the trace's
    quantile rate; then the SLO options over it."""
    _check(args)
    if args.workload:
        wl = load_workload(args.workload, trace)
    else:
        wl = default_workload(site, trace, critical_load=args.critical_load, batch_load=args.batch_load,
                              rate_quantile=args.sizing_quantile, critical_quantile=args.critical_quantile)
    changes = {k: v for k, v in (("kind", args.slo), ("ttft_k", args.slo_ttft_k),
                                 ("ttft_floor_s", args.slo_ttft_floor), ("tbt_k", args.slo_tbt_k),
                                 ("tbt_floor_s", args.slo_tbt_floor)) if v is not None}
    return replace(wl, slo=replace(wl.slo, **changes)) if changes else wl
