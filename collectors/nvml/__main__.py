"""Read this host's GPUs through the `nvml` source and print the frames, one JSON line each (no Kafka).

    python -m collectors.nvml [--rack R] [--server N] [--gpus 0,1] [--count N] [--interval S]
                              [--compare-nvidia-smi]

--compare-nvidia-smi also asks nvidia-smi for the same readings, prints both side by side and exits 1
when the enforced power limit differs or the temperature differs by more than 2 C (power, clocks and
utilisation move between the two reads, so they are shown, not checked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import subprocess
import sys
from typing import Any

from collectors.base import SourceError
from collectors.nvml import NvmlSource
from powerplane.schemas import TelemetryFrame, as_plain

SMI_FIELDS = ["index", "power.draw", "enforced.power.limit", "power.limit", "temperature.gpu", "clocks.sm",
              "clocks.mem", "utilization.gpu", "clocks_event_reasons.active"]


async def collect(src: NvmlSource, count: int, interval_s: float) -> list[TelemetryFrame]:
    await src.start()
    frames: list[TelemetryFrame] = []
    try:
        for i in range(count):
            if i:
                await asyncio.sleep(interval_s)
            frames.extend(await src.read())
            print(json.dumps(as_plain(frames[-1])), flush=True)
    finally:
        await src.close()
    return frames


def nvidia_smi() -> dict[int, dict[str, str]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise SystemExit("nvidia-smi not found")
    fields = list(SMI_FIELDS)
    proc = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 and "clocks_event_reasons" in proc.stderr + proc.stdout:
        fields[-1] = "clocks_throttle_reasons.active"  # drivers before R535
        proc = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"nvidia-smi failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    out: dict[int, dict[str, str]] = {}
    for line in proc.stdout.strip().splitlines():
        vals = [v.strip() for v in line.split(",")]
        out[int(vals[0])] = dict(zip(SMI_FIELDS, vals, strict=True))
    return out


def _num(s: str) -> float:
    try:
        return float(int(s, 16)) if s.lower().startswith("0x") else float(s)
    except ValueError:
        return math.nan  # "[N/A]", "[Not Supported]"


def compare(frame: TelemetryFrame, smi: dict[int, dict[str, str]]) -> int:
    rows: list[tuple[str, str, str, str]] = []
    bad = 0
    for k, gpu in enumerate(frame.gpu_slot.tolist()):
        s = smi.get(gpu)
        if s is None:
            print(f"GPU {gpu}: not in nvidia-smi's output")
            bad += 1
            continue
        ours: dict[str, Any] = {
            "power.draw": frame.power_w[k], "enforced.power.limit": frame.limit_w[k], "power.limit": None,
            "temperature.gpu": frame.temp_c[k], "clocks.sm": frame.sm_clock_mhz[k],
            "clocks.mem": None if frame.mem_clock_mhz is None else frame.mem_clock_mhz[k],
            "utilization.gpu": frame.util[k] * 100,
            "clocks_event_reasons.active": None if frame.throttle_reasons is None else
            f"0x{int(frame.throttle_reasons[k]):016x}"}
        for field, v in ours.items():
            theirs = s.get(field, "")
            verdict = ""
            if field == "enforced.power.limit" and not abs(float(v) - _num(theirs)) <= 0.01:
                verdict, bad = "MISMATCH", bad + 1
            if field == "temperature.gpu" and not abs(float(v) - _num(theirs)) <= 2:
                verdict, bad = "MISMATCH", bad + 1
            shown = "-" if v is None else v if isinstance(v, str) else f"{float(v):.2f}"
            rows.append((f"GPU {gpu}", field, f"{shown} / {theirs}", verdict))
    for r in rows:
        print(f"{r[0]:7s} {r[1]:28s} {r[2]:40s} {r[3]}")
    print("nvml source / nvidia-smi: " + ("agree" if not bad else f"{bad} mismatch(es)"))
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m collectors.nvml",
                                description="Read this host's GPUs through the nvml source; print the frames.")
    p.add_argument("--site", default="local")
    p.add_argument("--rack", default="local")
    p.add_argument("--server", type=int, default=0)
    p.add_argument("--gpus", help="comma-separated NVML indices (default: all)")
    p.add_argument("--count", type=int, default=1, help="frames to read")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between reads")
    p.add_argument("--compare-nvidia-smi", action="store_true")
    args = p.parse_args(argv)
    options: dict[str, Any] = {"kind": "nvml", "site": args.site, "rack": args.rack, "server": args.server,
                               "interval_s": args.interval, "timeout_s": 30.0}
    if args.gpus:
        options["gpus"] = [int(g) for g in args.gpus.split(",")]
    src = NvmlSource("nvml-cli", options)
    try:
        frames = asyncio.run(collect(src, args.count, args.interval))
    except SourceError as e:
        print(f"nvml: {e}", file=sys.stderr)
        return 2
    if args.compare_nvidia_smi:
        return compare(frames[-1], nvidia_smi())
    return 0


if __name__ == "__main__":
    sys.exit(main())
