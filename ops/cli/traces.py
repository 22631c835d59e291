"""Request traces: `powerplane trace generate` (bursty MMPP or on-off traces) and `powerplane trace show`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ops.cli.common import _add_output, _emit_json

if TYPE_CHECKING:
    from powerplane.config import Config


def _summary(tr: object) -> dict[str, object]:
    from sim.trace import Trace

    assert isinstance(tr, Trace)
    return {"name": tr.name, "format": tr.fmt, "source": tr.source, "requests": tr.n, "period_s": tr.period_s,
            "mean_rate_per_s": tr.mean_rate, "peak_to_mean_30s": tr.burstiness(30.0),
            "longest_gap_s": tr.longest_gap_s(), "mean_prompt_tokens": float(tr.prompt.mean()),
            "mean_output_tokens": float(tr.output.mean()), "attribution": tr.attribution}


def cmd_trace(args: argparse.Namespace, cfg: Config) -> int:
    from sim.trace_files import TraceColumns, default_trace, load_trace
    from sim.trace_gen import generate_bursty, write_trace_csv

    if args.action == "generate":
        if not args.out:
            raise ValueError("trace generate: give the file to write with --out FILE")
        tokens = load_trace(args.tokens) if args.tokens else None
        tr = generate_bursty(args.kind, args.seconds, args.seed, args.mean_rate, tokens=tokens)
        path = write_trace_csv(tr, args.out)
        tr = load_trace(path)
    else:
        cols = TraceColumns.parse(args.trace_columns) if args.trace_columns else None
        tr = load_trace(args.file, cols) if args.file else default_trace()
    if args.output == "json":
        _emit_json(_summary(tr))
        return 0
    if args.action == "generate":
        print(f"wrote {args.out}")
    print(tr.describe())
    print(f"attribution: {tr.attribution}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds trace."""
    t = sub.add_parser("trace", help="request traces for the twin: generate a bursty one, or show what a file holds")
    t.add_argument("action", choices=["generate", "show"])
    t.add_argument("file", nargs="?", help="show: the trace file (default: $PP_TRACE, else the packaged Azure trace)")
    t.add_argument("--trace-columns", metavar="ARRIVAL,PROMPT,OUTPUT", help="show: a generic CSV's column names")
    t.add_argument("--kind", choices=["mmpp", "onoff"], default="mmpp",
                   help="generate: mmpp (quiet, bursts and a trickle; default) or onoff (quiet and bursts)")
    t.add_argument("--seconds", type=float, default=3600.0, help="generate: the trace's length (default 3600)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--mean-rate", type=float, metavar="REQ_PER_S",
                   help="generate: mean arrival rate (default: the token source's, 5.5/s for the Azure trace)")
    t.add_argument("--tokens", metavar="FILE", help="generate: draw token counts from this trace (default: the "
                                                    "packaged Azure conversation trace)")
    # --out as in evaluate: -o is --output (table or json) on every command.
    t.add_argument("--out", metavar="FILE", help="generate: where to write the CSV")
    _add_output(t)
    t.set_defaults(fn=cmd_trace)
