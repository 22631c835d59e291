"""Telemetry decode benchmark: which wire encoding for TelemetryFrame.

Builds one second of telemetry from the 100 MW reference site (default 1,000 racks x 72 GPUs, one
TelemetryFrame per rack, deterministic seed) and times decoding all of it into numpy-ready form (per-GPU
arrays as numpy arrays) for several encodings, side by side and interleaved in one run:

  (a) project codec   TelemetryFrame.decode: MessagePack map, arrays as raw little-endian bytes, full
                      validation (schema/version, types, ranges, cross-field checks), dataclass built
  (b) msgpack+raw     the same bytes as (a): msgpack.unpackb + np.frombuffer, no validation
  (c) JSON lists      orjson, arrays as JSON lists, then np.asarray
  (d) msgpack lists   MessagePack, arrays as lists (floats as float64, the msgpack default), np.asarray
  (e) Arrow IPC       one self-describing Arrow IPC stream (schema + one record batch) per frame, per-GPU
                      arrays as columns, frame fields as schema metadata (only if pyarrow is installed)

The process pins itself to one CPU, warms every candidate up, then runs --repeat rounds; each round times
every candidate once, in a rotated order, so slow phases of a shared machine hit all of them. The garbage
collector is off inside timed regions (as in timeit). Reported: median and min over rounds, each
candidate's ratio to the project codec (a), encoded bytes per frame, and encode time for (a).

Target (from the issue): decode one second of reference-site telemetry (~72K GPUs) in < 100 ms on one
core. This is a benchmark, not a test: it exits 1 with a "TARGET MISSED" line if (a)'s median misses it.

    .venv/bin/python bench/bench_decode.py [--racks 1000] [--gpus 72] [--repeat 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import orjson

try:
    import pyarrow as pa
except ImportError:  # optional candidate (e)
    pa = None

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 100.0
SEED = 20261124
GPUS_PER_TRAY = 4  # GB200 NVL72-style rack: 18 compute trays x 4 GPUs

ARRAYS_F32 = ("power_w", "temp_c", "sm_clock_mhz", "limit_w", "util")
ARRAYS_U16 = ("gpu_server", "gpu_slot")
ARRAYS = ARRAYS_U16 + ARRAYS_F32
DTYPES = {**{k: np.dtype("<u2") for k in ARRAYS_U16}, **{k: np.dtype("<f4") for k in ARRAYS_F32}}


def _telemetry_frame_cls() -> Any:
    """The project's codec; the repo root goes on sys.path so the script runs without an install."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from powerplane.schemas import TelemetryFrame

    return TelemetryFrame


# ---- data -----------------------------------------------------------------------------------------------
def build_frames(tf: Any, racks: int, gpus: int, seed: int = SEED) -> list[Any]:
    """One second of reference-site telemetry, quantised the way the collectors read it from NVML/DCGM:
    power in mW, temperature in whole degrees, clocks in whole MHz, utilisation in percent."""
    rng = np.random.default_rng(seed)
    ts = dt.datetime(2026, 11, 24, 12, 0, 1, tzinfo=dt.UTC).timestamp()
    idx = np.arange(gpus)
    server = (idx // GPUS_PER_TRAY).astype(np.uint16)
    slot = (idx % GPUS_PER_TRAY).astype(np.uint16)
    frames = []
    for r in range(racks):
        # Most racks train at high load; some are idle or lightly loaded; some run under a power cap.
        kind = rng.random()
        if kind < 0.08:
            util = rng.uniform(0.0, 0.05, gpus)
        elif kind < 0.2:
            util = rng.uniform(0.1, 0.6, gpus)
        else:
            util = np.clip(rng.beta(8, 1.5, gpus), 0.0, 1.0)
        util = np.round(util * 100) / 100
        cap = rng.choice([1200.0, 1200.0, 1200.0, 1200.0, 1000.0, 900.0])
        limit = np.full(gpus, cap)
        limit[rng.random(gpus) < 0.02] = 800.0  # a few GPUs individually capped
        power = 100.0 + util * (limit - 100.0) * rng.uniform(0.85, 1.02, gpus)
        power = np.round(np.clip(power, 100.0, np.minimum(limit, 1200.0)) * 1000) / 1000
        temp = np.round(np.clip(30.0 + 55.0 * (power - 100.0) / 1100.0 + rng.normal(0, 2.0, gpus), 30, 85))
        clock = np.round(np.clip(2062.0 * np.where(power >= limit - 5, limit / 1200.0, 1.0)
                                 - rng.uniform(0, 60, gpus), 345.0, 2062.0))
        rack_w = float(power.sum()) * 1.28 + 6000.0  # GPUs + CPUs, NICs, switches, fans, PSU loss
        frames.append(tf(
            site="ref-100mw", rack=f"h{r // 250 + 1}-r{(r // 25) % 10 + 1:02d}-k{r % 25 + 1:02d}",
            ts_s=ts, interval_s=1.0, seq=864_000 + r, source="collector-dcgm",
            gpu_server=server.copy(), gpu_slot=slot.copy(),
            power_w=power.astype(np.float32), temp_c=temp.astype(np.float32),
            sm_clock_mhz=clock.astype(np.float32), limit_w=limit.astype(np.float32),
            util=util.astype(np.float32),
            inlet_c=[round(float(x), 1) for x in rng.normal(24.0, 1.5, 2)],
            pdu_power_w=[round(rack_w * s, 1) for s in (0.5 + rng.normal(0, 0.01), 0.5)],
        ))
    return frames


def _scalars(f: Any) -> dict[str, Any]:
    return {"schema": f.SCHEMA, "v": f.VERSION, "site": f.site, "rack": f.rack, "ts_s": f.ts_s,
            "interval_s": f.interval_s, "seq": f.seq, "source": f.source,
            "inlet_c": list(f.inlet_c), "pdu_power_w": list(f.pdu_power_w)}


# ---- candidates -----------------------------------------------------------------------------------------
@dataclass
class Candidate:
    key: str
    name: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


def candidates(tf: Any) -> list[Candidate]:
    out = []

    # (a) the project codec, and (b) the same bytes without validation.
    def dec_raw(b: bytes) -> dict[str, Any]:
        d = msgpack.unpackb(b, raw=False)
        for k in ARRAYS:
            d[k] = np.frombuffer(d[k], dtype=DTYPES[k])
        return d

    out.append(Candidate("a", "project codec (msgpack + raw LE arrays, validated)", tf.encode, tf.decode))
    out.append(Candidate("b", "msgpack + raw LE arrays, no validation", tf.encode, dec_raw))

    # (c) JSON, arrays as lists (orjson writes float32 arrays with their shortest float32 repr).
    def enc_json(f: Any) -> bytes:
        d = _scalars(f)
        for k in ARRAYS:
            d[k] = getattr(f, k)
        return orjson.dumps(d, option=orjson.OPT_SERIALIZE_NUMPY)

    def dec_json(b: bytes) -> dict[str, Any]:
        d = orjson.loads(b)
        for k in ARRAYS:
            d[k] = np.asarray(d[k], dtype=DTYPES[k])
        return d

    out.append(Candidate("c", "JSON (orjson), arrays as lists", enc_json, dec_json))

    # (d) MessagePack, arrays as lists (floats go out as float64: single floats would also cut ts_s).
    def enc_mp_lists(f: Any) -> bytes:
        d = _scalars(f)
        for k in ARRAYS:
            d[k] = getattr(f, k).tolist()
        return bytes(msgpack.packb(d, use_bin_type=True))

    def dec_mp_lists(b: bytes) -> dict[str, Any]:
        d = msgpack.unpackb(b, raw=False)
        for k in ARRAYS:
            d[k] = np.asarray(d[k], dtype=DTYPES[k])
        return d

    out.append(Candidate("d", "msgpack, arrays as lists", enc_mp_lists, dec_mp_lists))

    # (e) Arrow IPC: one self-describing stream (schema + one record batch) per frame.
    if pa is not None:
        arrow_types = {**{k: pa.uint16() for k in ARRAYS_U16}, **{k: pa.float32() for k in ARRAYS_F32}}

        def enc_arrow(f: Any) -> bytes:
            meta = {k: json.dumps(v) for k, v in _scalars(f).items()}
            schema = pa.schema([(k, arrow_types[k]) for k in ARRAYS], metadata=meta)
            batch = pa.record_batch([pa.array(getattr(f, k), type=arrow_types[k]) for k in ARRAYS],
                                    schema=schema)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, schema) as w:
                w.write_batch(batch)
            return bytes(sink.getvalue().to_pybytes())

        def dec_arrow(b: bytes) -> dict[str, Any]:
            reader = pa.ipc.open_stream(b)
            batch = reader.read_next_batch()
            d: dict[str, Any] = {k.decode(): json.loads(v) for k, v in reader.schema.metadata.items()}
            for i, k in enumerate(ARRAYS):
                d[k] = batch.column(i).to_numpy(zero_copy_only=True)
            return d

        out.append(Candidate("e", "Arrow IPC stream per frame (pyarrow)", enc_arrow, dec_arrow))
    return out


def check_roundtrip(c: Candidate, frames: list[Any], blobs: list[bytes]) -> None:
    """Every candidate must give back exactly what went in, with the right dtypes (checked untimed)."""
    for f, b in zip(frames, blobs, strict=True):
        d = c.decode(b)
        get = (lambda k, d=d: getattr(d, k)) if not isinstance(d, dict) else (lambda k, d=d: d[k])
        for k in ARRAYS:
            a = get(k)
            if not isinstance(a, np.ndarray) or a.dtype != DTYPES[k] or not np.array_equal(a, getattr(f, k)):
                raise SystemExit(f"({c.key}) {c.name}: field {k} of rack {f.rack} does not round-trip")
        for k in ("rack", "ts_s", "seq", "inlet_c", "pdu_power_w"):
            if get(k) != getattr(f, k):
                raise SystemExit(f"({c.key}) {c.name}: field {k} of rack {f.rack} does not round-trip")


# ---- timing ---------------------------------------------------------------------------------------------
def time_pass(fn: Callable[[Any], Any], items: list[Any]) -> float:
    """Seconds to apply fn to every item, keeping the results alive (a consumer holds a second of frames)."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        res = [fn(x) for x in items]
        t1 = time.perf_counter()
    finally:
        if gc_was:
            gc.enable()
    del res
    return t1 - t0


def pin_one_cpu() -> tuple[int, list[int]]:
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[0]
    os.sched_setaffinity(0, {cpu})
    return cpu, allowed


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vers = {"python": platform.python_version(), "numpy": np.__version__, "msgpack": msgpack.version,
            "orjson": orjson.__version__}
    if pa is not None:
        vers["pyarrow"] = pa.__version__
    return {"nproc": os.cpu_count(), "cpu_model": model, "platform": platform.platform(), "versions": vers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--racks", type=int, default=1000, help="frames per second of telemetry (default 1000)")
    ap.add_argument("--gpus", type=int, default=72, help="GPUs per rack (default 72)")
    ap.add_argument("--repeat", type=int, default=7, help="timed rounds per candidate (default 7)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.racks < 1 or args.gpus < 1 or args.repeat < 1:
        ap.error("--racks, --gpus and --repeat must be >= 1")

    cpu, allowed = pin_one_cpu()
    mach = machine()
    print(f"Pinned to CPU {cpu} (sched_setaffinity; allowed were {allowed}); nproc={mach['nproc']}; "
          f"CPU: {mach['cpu_model']}")
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()))

    tf = _telemetry_frame_cls()
    frames = build_frames(tf, args.racks, args.gpus)
    n_gpus = args.racks * args.gpus
    cands = candidates(tf)
    blobs = {c.key: [c.encode(f) for f in frames] for c in cands}
    for c in cands:
        check_roundtrip(c, frames, blobs[c.key])
    print(f"Data: {args.racks} TelemetryFrames x {args.gpus} GPUs = {n_gpus:,} GPUs (one second), "
          f"seed {SEED}; all candidates round-trip exactly")

    # Warm-up: one untimed pass of everything.
    time_pass(tf.encode, frames)
    for c in cands:
        time_pass(c.decode, blobs[c.key])

    dec: dict[str, list[float]] = {c.key: [] for c in cands}
    enc_a: list[float] = []
    for r in range(args.repeat):
        k = r % len(cands)
        for c in cands[k:] + cands[:k]:
            dec[c.key].append(time_pass(c.decode, blobs[c.key]))
        enc_a.append(time_pass(tf.encode, frames))

    a_med = statistics.median(dec["a"])
    a_min = min(dec["a"])
    a_bytes = sum(map(len, blobs["a"])) / args.racks
    rows = []
    for c in cands:
        ts = dec[c.key]
        nbytes = sum(map(len, blobs[c.key])) / args.racks
        rows.append({
            "key": c.key, "name": c.name, "bytes_per_frame": nbytes, "bytes_vs_a": nbytes / a_bytes,
            "decode_median_ms": statistics.median(ts) * 1e3, "decode_min_ms": min(ts) * 1e3,
            "decode_max_ms": max(ts) * 1e3, "median_vs_a": statistics.median(ts) / a_med,
            "min_vs_a": min(ts) / a_min, "decode_all_ms": [t * 1e3 for t in ts],
        })

    print()
    print(f"Decode one second of telemetry ({args.racks} frames, {n_gpus:,} GPUs), one core, "
          f"{args.repeat} interleaved rounds; ratios are to (a), the project codec")
    print()
    print("| Encoding | bytes/frame | size vs (a) | decode median (ms) | decode min (ms) "
          "| median vs (a) | min vs (a) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| ({row['key']}) {row['name']} | {row['bytes_per_frame']:,.0f} | {row['bytes_vs_a']:.2f}x "
              f"| {row['decode_median_ms']:.1f} | {row['decode_min_ms']:.1f} | {row['median_vs_a']:.2f}x "
              f"| {row['min_vs_a']:.2f}x |")
    enc_med, enc_min = statistics.median(enc_a) * 1e3, min(enc_a) * 1e3
    print()
    print(f"Encode (a), {args.racks} frames: median {enc_med:.1f} ms, min {enc_min:.1f} ms "
          f"({enc_med * 1e3 / args.racks:.1f} us/frame)")
    b_med = next(r["decode_median_ms"] for r in rows if r["key"] == "b")
    print(f"Validation cost: (a) - (b) = {a_med * 1e3 - b_med:.1f} ms per second of telemetry "
          f"(median), (a) is {a_med * 1e3 / b_med:.2f}x (b)")

    ok = a_med * 1e3 < TARGET_MS
    verdict = (f"TARGET {'MET' if ok else 'MISSED'}: the project codec decodes {n_gpus:,} GPUs "
               f"({args.racks} frames) in {a_med * 1e3:.1f} ms median (min {a_min * 1e3:.1f} ms) on one "
               f"core; target < {TARGET_MS:.0f} ms")
    print(verdict)

    if args.json:
        result = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": dt.date.today().isoformat(), "machine": mach, "pinned_cpu": cpu, "allowed_cpus": allowed,
            "racks": args.racks, "gpus_per_rack": args.gpus, "gpus": n_gpus, "repeat": args.repeat,
            "seed": SEED, "target_ms": TARGET_MS, "target_met": ok,
            "encode_a_median_ms": enc_med, "encode_a_min_ms": enc_min,
            "encode_a_all_ms": [t * 1e3 for t in enc_a], "candidates": rows,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"Wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
