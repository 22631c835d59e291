"""decode_many (column by column over a batch) must give exactly what decode() gives record by record: the same
values for every good record and the same one-line error for every bad one, whatever is wrong with it."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from powerplane.schemas import Headroom, RackSummaryBatch, Record, SchemaError, TelemetryFrame
from powerplane.site_file import load_site
from sim.fleet import Fleet, rack_frames

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "examples" / "lab.toml")

# Values that are wrong for some field kind (and right for others): every field gets each of them in turn.
WRONG: list[Any] = [None, True, 1, -1, 2**63, 2**64 - 1, 1.5, math.nan, math.inf, -1e300, "x", b"", b"\x00\x00\x80\x7f",
                    b"\x01\x02\x03", b"\x00\x00\x80\xbf" * 4, [1.0, math.inf], [1.0, None], [1, 2.0], [1.0],
                    ["a"], {}, {"a": 1}]


def frames() -> list[bytes]:
    fleet = Fleet(SITE, seed=2, epoch_s=1.7e9)
    out = []
    for k in range(1, 3):
        frames = rack_frames(SITE, fleet.step(1.0), 1.7e9 + k, 1.0, k, "sim")
        power = frames[0].power_w.copy()
        power[1] = np.nan  # a missing reading is allowed
        frames[0] = dataclasses.replace(frames[0], power_w=power, inlet_c=[math.nan],
                                        throttle_reasons=np.zeros(power.size, dtype=np.uint32))
        out += [f.encode() for f in frames]
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, SchemaError) or isinstance(b, SchemaError):
        return type(a) is type(b) and str(a) == str(b)
    return bool(msgpack.packb(a.to_wire()) == msgpack.packb(b.to_wire()))


def one_by_one(cls: type[Record], values: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        try:
            out.append(cls.decode(v))
        except SchemaError as e:
            out.append(e)
    return out


def mutants(good: list[bytes], cls: type[Record], seed: int) -> list[bytes]:
    """Each field of some record set to each wrong value, dropped, or given an extra entry; plus broken maps."""
    rng = random.Random(seed)
    out = list(good)
    for name in cls.KINDS:
        for wrong in [*WRONG, "<drop>"]:
            d = msgpack.unpackb(rng.choice(good), raw=False)
            if wrong == "<drop>":
                d.pop(name, None)
            else:
                d[name] = wrong
            out.insert(rng.randrange(len(out) + 1), msgpack.packb(d, use_bin_type=True))
    for bad in (b"\xc1", b"", msgpack.packb([1, 2]), msgpack.packb({"schema": cls.SCHEMA, "v": 2}),
                msgpack.packb({"schema": cls.SCHEMA, "v": True}), msgpack.packb({"schema": "other", "v": 1})):
        out.insert(rng.randrange(len(out) + 1), bad)
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_a_batch_of_telemetry_with_every_kind_of_bad_field_decodes_as_one_by_one(seed: int) -> None:
    good = frames()
    # A clean batch takes the fast paths (every value of a field checked at once) ...
    assert all(same(g, w) for g, w in zip(TelemetryFrame.decode_many(good), one_by_one(TelemetryFrame, good),
                                           strict=True))
    # ... and a batch with bad records the slower ones.
    values = mutants(good, TelemetryFrame, seed)
    # Out-of-range readings and wrong array lengths, which only the per-field ranges and validate() catch.
    d = msgpack.unpackb(good[0], raw=False)
    p = np.frombuffer(d["power_w"], dtype="<f4").copy()
    p[3] = 9000.0
    values.append(msgpack.packb({**d, "power_w": p.tobytes()}, use_bin_type=True))
    values.append(msgpack.packb({**d, "temp_c": d["temp_c"][:-4]}, use_bin_type=True))
    values.append(msgpack.packb({**d, "temp_c": d["temp_c"][:-4], "power_w": p.tobytes()}, use_bin_type=True))
    got, want = TelemetryFrame.decode_many(values), one_by_one(TelemetryFrame, values)
    assert len(got) == len(want) == len(values)
    mismatched = [(i, str(g), str(w)) for i, (g, w) in enumerate(zip(got, want, strict=True)) if not same(g, w)]
    assert not mismatched
    errors = [str(w) for w in want if isinstance(w, SchemaError)]
    # The batch holds many bad records, and the reasons a user reads name the field.
    assert len(errors) > 200 and "field 'power_w'[3] = 9000 out of range" in " ".join(errors)
    assert sum(isinstance(g, TelemetryFrame) for g in got) >= len(good)


def test_other_records_decode_in_batches_as_one_by_one() -> None:
    """Scalars with ranges, optional floats and float arrays that must be finite (RackSummaryBatch.FINITE)."""
    h = Headroom(site="lab", level="rack-1", kind="rack", ts_s=1.7e9, mode="normal", horizon_s=10.0, power_w=1.0,
                 limit_w=2.0, forecast_p50_w=1.0, forecast_p99_w=1.5, headroom_w=0.5, inlet_c=25.0)
    values = mutants([h.encode()] * 3, Headroom, 3)
    got, want = Headroom.decode_many(values), one_by_one(Headroom, values)
    assert all(same(g, w) for g, w in zip(got, want, strict=True))
    rb = RackSummaryBatch(site="lab", racks=["r1", "r2"], ts_s=np.array([1.7e9, 1.7e9]), power_w=np.ones(2),
                          pdu_a_w=np.ones(2), pdu_b_w=np.full(2, np.nan), gpus_expected=np.full(2, 8, np.uint32),
                          gpus_reporting=np.full(2, 8, np.uint32), gpus_throttled=np.zeros(2, np.uint32),
                          inlet_c=np.full(2, 25.0), gpu_temp_max_c=np.full(2, 60.0))
    d = msgpack.unpackb(rb.encode(), raw=False)
    nan_ts = msgpack.packb({**d, "ts_s": np.array([1.7e9, np.nan]).tobytes()}, use_bin_type=True)
    values = [*mutants([rb.encode()], RackSummaryBatch, 4), nan_ts]
    got, want = RackSummaryBatch.decode_many(values), one_by_one(RackSummaryBatch, values)
    assert all(same(g, w) for g, w in zip(got, want, strict=True))
    assert "is not a finite number" in str(got[-1])
