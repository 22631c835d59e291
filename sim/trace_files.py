"""Request traces from CSV files: arrival time, prompt tokens and output tokens per request.

Three formats, told apart by the header (the first line that is not a ``#`` comment):

- ``azure-2023``: the Azure LLM inference trace 2023 (Splitwise), ``TIMESTAMP,ContextTokens,GeneratedTokens``
  with naive UTC timestamps such as ``2023-11-16 18:15:46.6805900``;
- ``azure-2024``: the Azure LLM inference trace 2024 (DynamoLLM), the same columns with a zone offset,
  ``2024-05-12 00:00:00.001163+00:00`` (the seconds' fraction is left out when it is zero);
- ``generic``: any CSV with an arrival column (seconds, or timestamps) and two token columns, named by
  ``TraceColumns`` (default ``arrival_s,prompt_tokens,output_tokens``).

Leading ``#`` lines describe the file: ``# name: ...`` and ``# attribution: ...`` are shown in reports, and
``# period_s: N`` keeps the arrival times as written over a period of N s (the traces ``sim.trace_gen``
writes carry all three). pyarrow (already a dependency, for recordings) parses the
rows: typed columns, timestamps with or without a zone offset, gzip by the file's suffix, millions of rows
in seconds. A file that is not a trace is one line naming the file and what is missing.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from powerplane.site import FloatArray
from sim.trace import PACKAGED_TRACE, SHARED_TRACE, Trace

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
# The papers the Azure Public Dataset asks users to cite (its AzureLLMInferenceDataset2023/2024.md).
CITATIONS = {
    "azure-2023": "Patel et al., \"Splitwise: Efficient generative LLM inference using phase splitting\", ISCA 2024.",
    "azure-2024": ("Stojkovic et al., \"DynamoLLM: Designing LLM Inference Clusters for Performance and Energy "
                   "Efficiency\", arXiv:2408.00741, 2024."),
}
_ZONE = re.compile(r"(Z|[+-]\d\d:?\d\d)$")


@dataclass(frozen=True)
class TraceColumns:
    """Column names of a generic trace CSV."""

    arrival: str = "arrival_s"  # seconds (any origin), or timestamps
    prompt: str = "prompt_tokens"
    output: str = "output_tokens"

    @staticmethod
    def parse(text: str) -> TraceColumns:
        """``ARRIVAL,PROMPT,OUTPUT`` (the CLI's --trace-columns)."""
        names = [s.strip() for s in text.split(",")]
        if len(names) != 3 or not all(names):
            raise ValueError(f"--trace-columns {text!r}: expected three column names, ARRIVAL,PROMPT,OUTPUT")
        return TraceColumns(*names)

    def names(self) -> tuple[str, str, str]:
        return self.arrival, self.prompt, self.output


def _open_text(path: Path) -> list[str]:
    """The leading comment lines, the header and the first data row (gzip by the suffix)."""
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[str] = []
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            out.append(line.rstrip("\r\n"))
            if not line.startswith("#") and len(out) - _n_comments(out) >= 2:
                break
    return out


def _n_comments(lines: list[str]) -> int:
    n = 0
    for line in lines:
        if not line.startswith("#"):
            break
        n += 1
    return n


def _meta(comments: list[str]) -> dict[str, str]:
    """``# key: value`` lines of a file's preamble."""
    out: dict[str, str] = {}
    for line in comments:
        key, sep, value = line.lstrip("#").partition(":")
        if sep and key.strip():
            out[key.strip().lower()] = value.strip()
    return out


def detect_format(header: list[str], first_row: str, columns: TraceColumns) -> str:
    """``azure-2023``, ``azure-2024`` or ``generic`` from the header (and the first timestamp)."""
    if all(c in header for c in AZURE_COLUMNS) and not all(c in header for c in columns.names()):
        stamp = first_row.split(",")[header.index("TIMESTAMP")].strip() if first_row else ""
        return "azure-2024" if _ZONE.search(stamp) else "azure-2023"
    return "generic"


def _azure_name(path: Path, fmt: str) -> str:
    service = "conversation" if "conv" in path.name.lower() else "coding" if "code" in path.name.lower() else ""
    year = fmt.rsplit("-", 1)[1]
    return f"Azure LLM inference trace {year}" + (f" ({service} service)" if service else "")


def _missing_column(path: Path, header: list[str], columns: TraceColumns) -> str:
    wanted = columns.names()
    missing = [c for c in wanted if c not in header]
    return (f"{path}: not a request trace: no column {', '.join(repr(c) for c in missing)} in the header "
            f"({','.join(header)[:120]}); expected {','.join(AZURE_COLUMNS)} (Azure LLM trace) or "
            f"{','.join(wanted)} (other names with --trace-columns, or the workload file's trace table)")


def _seconds(col: object, path: Path, name: str) -> FloatArray:
    import pyarrow as pa

    assert isinstance(col, pa.ChunkedArray)
    if pa.types.is_timestamp(col.type):
        ns = np.asarray(col.cast(pa.timestamp("ns", tz=col.type.tz)).cast(pa.int64()), dtype=np.int64)
        # From the first arrival in whole nanoseconds: no rounding of epoch seconds in a float.
        return np.asarray((ns - ns.min()) / 1e9, dtype=np.float64)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return np.asarray(col.cast(pa.float64()), dtype=np.float64)
    raise ValueError(f"{path}: column '{name}' holds {col.type}, not seconds or timestamps")


def read_trace(path: str | Path, columns: TraceColumns | None = None) -> Trace:
    """Parse a trace file (see the module docstring); every request sorted by arrival, times from 0."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    p = Path(path)
    cols = columns or TraceColumns()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such trace file")
    lines = _open_text(p)
    n_comm = _n_comments(lines)
    rest = lines[n_comm:]
    header = [h.strip() for h in rest[0].split(",")] if rest else []
    fmt = detect_format(header, rest[1] if len(rest) > 1 else "", cols)
    names = AZURE_COLUMNS if fmt != "generic" else cols.names()
    if not all(c in header for c in names):
        raise ValueError(_missing_column(p, header, cols))
    types: dict[str, pa.DataType] = {names[1]: pa.float64(), names[2]: pa.float64()}
    if fmt != "generic":
        types[names[0]] = pa.timestamp("ns", tz="UTC") if fmt == "azure-2024" else pa.timestamp("ns")
    try:
        table = pcsv.read_csv(p, read_options=pcsv.ReadOptions(skip_rows=n_comm),
                              convert_options=pcsv.ConvertOptions(include_columns=list(names), column_types=types))
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{p}: cannot read as a {fmt} trace: {str(e).splitlines()[0]}") from None
    if table.num_rows == 0:
        raise ValueError(f"{p}: a request trace with no requests")
    if any(table.column(c).null_count for c in names):
        raise ValueError(f"{p}: empty cells in {', '.join(c for c in names if table.column(c).null_count)}")
    t = _seconds(table.column(names[0]), p, names[0])
    prompt = np.asarray(table.column(names[1]), dtype=np.float64)
    output = np.asarray(table.column(names[2]), dtype=np.float64)
    if (prompt < 0).any() or (output < 0).any() or not np.isfinite(t).all():
        raise ValueError(f"{p}: negative token counts or non-finite arrival times")
    meta = _meta(lines[:n_comm])
    name = meta.get("name") or (_azure_name(p, fmt) if fmt != "generic" else p.name)
    attribution = meta.get("attribution") or (f"{name}, CC-BY 4.0. {CITATIONS[fmt]}" if fmt in CITATIONS
                                               else "none given (no '# attribution:' line in the file)")
    return Trace.of(t, prompt, output, source=str(p), name=name, fmt=fmt, attribution=attribution,
                    period_s=_period(meta, p))


def _period(meta: dict[str, str], path: Path) -> float | None:
    """``# period_s: N``: the trace's own length (a generated trace's quiet start and end belong to it)."""
    if "period_s" not in meta:
        return None
    try:
        period = float(meta["period_s"])
    except ValueError:
        period = -1.0
    if not period > 0:
        raise ValueError(f"{path}: '# period_s: {meta['period_s']}' is not a positive number of seconds")
    return period


@functools.lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int, columns: TraceColumns) -> Trace:
    return read_trace(path, columns)


def load_trace(path: str | Path, columns: TraceColumns | None = None) -> Trace:
    """``read_trace``, parsed once per process per file version (the twin, the profile and the report all
    ask for the same trace)."""
    p = Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such trace file")
    return _cached(str(p), p.stat().st_mtime_ns, columns or TraceColumns())


def default_trace(path: str | Path | None = None) -> Trace:
    """The trace a run uses when none is chosen, parsed once per process. Looked up in this order: ``path``,
    ``$PP_TRACE`` (any format above), the packaged Azure conversation trace, the shared data directory."""
    for cand in (path, os.environ.get("PP_TRACE"), PACKAGED_TRACE, SHARED_TRACE):
        if cand and Path(cand).is_file():
            return load_trace(cand)
    where = path or os.environ.get("PP_TRACE")
    raise FileNotFoundError(f"{where}: no such trace file" if where else
                            "no request trace: the packaged one is missing; pass --trace FILE or set PP_TRACE")


load_azure_conv = default_trace  # the name the twin's callers used when the Azure trace was the only one
