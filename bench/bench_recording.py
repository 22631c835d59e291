"""Recording throughput: write N records to Parquet with RecordingWriter, then read them back in
timestamp order through iter_records (what `powerplane replay` and the in-process engine consume).

    .venv/bin/python bench/bench_recording.py [--records 200000] [--value-bytes 1024] [--topics 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from powerplane.recording import Recorded, RecordingWriter, iter_records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--value-bytes", type=int, default=1024)
    ap.add_argument("--topics", type=int, default=2)
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    value = os.urandom(args.value_bytes)
    names = [f"t{i}" for i in range(args.topics)]
    out = Path(tempfile.mkdtemp(prefix="bench-rec-")) / "rec"
    t0 = time.perf_counter()
    w = RecordingWriter(out, names)
    for i in range(args.records):
        w.add(Recorded(names[i % args.topics], i % 6, i, 1_790_000_000_000 + i, b"rack-%d" % (i % 1000), value, []))
    w.close()
    write_s = time.perf_counter() - t0
    tracemalloc.start()
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_records(out))
    read_s = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == args.records
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{args.records:,} records of {args.value_bytes} B over {args.topics} topics, one pinned core")
    print(f"write: {write_s:.2f} s = {args.records / write_s:,.0f} records/s; files {size / 1e6:.1f} MB")
    print(f"read (timestamp merge): {read_s:.2f} s = {n / read_s:,.0f} records/s; "
          f"peak Python memory {peak / 1e6:.1f} MB (tracemalloc)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
