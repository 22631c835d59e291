"""Two revisions side by side: the decode, twin and streams benchmarks run alternately on an older commit
and on this working tree, in one run, so a shared machine's slow phases hit both (issue 11: a refactor
must leave the figures within noise).

The older commit is checked out into a temporary git worktree and run with its own tree first on
PYTHONPATH (this checkout's virtualenv supplies the third-party packages to both). Each round runs every
chosen benchmark once per revision, the order of the two revisions swapped every round. Printed: per
benchmark and revision the median over rounds of each run's headline figure, and the ratio new / old.

    .venv/bin/python bench/bench_revisions.py OLD_COMMIT [--rounds 3] [--benches decode,twin,streams]
        [--streams-seconds 40]

Headline figures: decode, the project codec's median ms to decode one second of reference-site telemetry
(bench_decode.py); twin, median ms per simulated second of the reference site (bench_twin.py, step1);
streams, the worker's CPU seconds per site-second while catching up, its catch-up rate in GPU samples/s
and that rate's ratio to a raw consume in the same run (bench_streams.py --catch-up; the rate moves in
steps of faust's 2.8 s commit interval, the CPU figure does not).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _run(tree: Path, args: list[str], timeout_s: float) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    if done.returncode != 0 and not (done.returncode == 1 and "TARGET MISSED" in done.stdout):  # still a figure
        raise RuntimeError(f"{' '.join(args)} in {tree} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def decode(tree: Path, tmp: Path, _: argparse.Namespace) -> dict[str, float]:
    out = tmp / "decode.json"
    _run(tree, ["bench/bench_decode.py", "--repeat", "7", "--json", str(out)], 600)
    rows = json.loads(out.read_text())
    rows = rows["candidates"]
    a = next(r for r in rows if r["key"] == "a")
    return {"decode ms (median)": a["decode_median_ms"]}


def twin(tree: Path, tmp: Path, _: argparse.Namespace) -> dict[str, float]:
    out = tmp / "twin.json"
    _run(tree, ["bench/bench_twin.py", "--repeat", "5", "--json", str(out)], 900)
    c = json.loads(out.read_text())["candidates"]
    return {"twin ms per simulated s (median)": c["step1"]["median_ms"],
            "twin 100 ms steps, ms per simulated s": c["step100ms"]["median_ms"]}


def streams(tree: Path, _tmp: Path, a: argparse.Namespace) -> dict[str, float]:
    text = _run(tree, ["bench/bench_streams.py", "--catch-up", "--seconds", str(a.streams_seconds)], 1200)
    rate = re.search(r"worker, catching up: .*?, ([\d.]+) s CPU for .*?= ([\d,]+) GPU samples/s", text)
    ratio = re.search(r"ratio worker / raw consume \(GPU samples/s\): ([\d.]+)", text)
    if not rate or not ratio:
        raise RuntimeError(f"bench_streams.py printed no catch-up figures in {_tmp}:\n{text[-2000:]}")
    # The rate's wall time ends at the worker's offset commits (faust: every 2.8 s), so it moves in steps;
    # the worker's CPU seconds per site-second do not.
    return {"streams catch-up, worker CPU s per site-second": float(rate.group(1)) / a.streams_seconds,
            "streams catch-up, GPU samples/s": float(rate.group(2).replace(",", "")),
            "streams worker / raw consume": float(ratio.group(1))}


BENCHES = {"decode": decode, "twin": twin, "streams": streams}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", help="the older commit (e.g. the last commit before a refactor)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--benches", default="decode,twin,streams")
    ap.add_argument("--streams-seconds", type=int, default=40, help="site-seconds of telemetry per streams run")
    a = ap.parse_args()
    names = [b for b in a.benches.split(",") if b]
    unknown = set(names) - set(BENCHES)
    if unknown:
        ap.error(f"unknown bench(es): {', '.join(sorted(unknown))} (known: {', '.join(BENCHES)})")
    old_sha = subprocess.run(["git", "rev-parse", "--short", a.old], cwd=HERE, capture_output=True, text=True,
                             check=True).stdout.strip()
    new_sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE, capture_output=True,
                           text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="pp-rev-") as td:
        old_tree = Path(td) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old_tree), a.old], cwd=HERE, check=True)
        try:
            trees = {f"old {old_sha}": old_tree, f"new {new_sha}{'+dirty' if dirty else ''}": HERE}
            figures: dict[str, dict[str, list[float]]] = {rev: {} for rev in trees}
            t0 = time.monotonic()
            for r in range(a.rounds):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for b in names:
                    for rev in order:
                        tmp = Path(td) / f"{rev.split()[0]}-{b}-{r}"
                        tmp.mkdir()
                        for k, v in BENCHES[b](trees[rev], tmp, a).items():
                            figures[rev].setdefault(k, []).append(v)
                        print(f"  round {r + 1}/{a.rounds} {b:8s} {rev}: done at {time.monotonic() - t0:.0f} s",
                              flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=HERE, check=False)
    old_rev, new_rev = list(trees)
    print(f"\n{a.rounds} rounds, revisions alternated; median over rounds (all runs in brackets)\n")
    print(f"| figure | {old_rev} | {new_rev} | new / old |")
    print("|---|---:|---:|---:|")
    for k in figures[old_rev]:
        o, n = figures[old_rev][k], figures[new_rev][k]
        digits = 0 if max(o) > 1000 else 3 if max(o) < 1 else 2

        def fmt(x: float, digits: int = digits) -> str:
            return f"{x:,.{digits}f}"

        print(f"| {k} | {fmt(statistics.median(o))} [{', '.join(map(fmt, o))}] | "
              f"{fmt(statistics.median(n))} [{', '.join(map(fmt, n))}] | "
              f"{statistics.median(n) / statistics.median(o):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
