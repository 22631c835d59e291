"""The streams worker's per-batch rack stage (streams/rack_stage.py) against the per-frame reference the engine
runs (decode, FrameChecker.check, streams.assembly.assembled_outputs): the same aggregates, summaries, refusals
with the same reasons, duplicates and marks, on a bad day's mix of frames and on the partial frames real
collectors publish, so replay and evaluation answer for what the Kafka path does."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from powerplane.plausibility import FrameChecker
from powerplane.schemas import LevelAggregate, RackSummaryBatch, SchemaError, TelemetryFrame
from powerplane.site_file import load_site
from sim.fleet import Fleet, rack_frames
from streams.assembly import Assembler, assembled_outputs
from streams.rack_stage import RackBatcher, rack_batch
from streams.rollup import Limits
from tests.partial_frames import bmc_frame, pdu_frames, server_frames

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "examples" / "lab.toml")
EPOCH = 1_790_000_000.0
NOW = EPOCH + 30.0


def bad_day() -> list[bytes]:
    """30 s of a lab site losing feed A, with every kind of bad frame mixed in."""
    fleet = Fleet(SITE, seed=7, epoch_s=EPOCH)
    out: list[bytes] = []
    for k in range(1, 31):
        if k == 12:
            fleet.lose_feed("A")
        frames = rack_frames(SITE, fleet.step(1.0), EPOCH + k, 1.0, k, "sim")
        f0, f1 = frames[0], frames[1]
        power = f0.power_w.copy()
        power[3] = np.nan  # a GPU with no reading: taken at its limit
        temp = f0.temp_c.copy()
        temp[:] = np.nan
        frames[0] = dataclasses.replace(f0, power_w=power, temp_c=temp,
                                        throttle_reasons=np.full(power.size, 0x40 if k % 2 else 0, dtype=np.uint32))
        frames[1] = dataclasses.replace(f1, pdu_power_w=[math.nan, f1.pdu_power_w[1]], inlet_c=[math.nan])
        out += [f.encode() for f in frames]
        if k == 5:
            out.append(frames[2].encode())  # a duplicate
        if k == 6:  # future-dated, hardware range, unknown rack, other site, schema range, not a record
            out.append(dataclasses.replace(frames[3], ts_s=NOW + 60.0, seq=10_000).encode())
            hot = frames[4].power_w.copy()
            hot[1] = 2500.0
            out.append(dataclasses.replace(frames[4], power_w=hot, seq=10_001).encode())
            out.append(dataclasses.replace(frames[5], rack="rack-nowhere").encode())
            out.append(dataclasses.replace(frames[5], site="elsewhere").encode())
            wild = frames[6].power_w.copy()
            wild[0] = 9000.0
            out.append(dataclasses.replace(frames[6], power_w=wild).encode())
            out.append(b"\x93not a frame")
        if k == 8:  # a PDU meter jump no breaker allows: marked
            out.append(dataclasses.replace(frames[7], seq=k + 100, ts_s=EPOCH + k + 0.5,
                                           pdu_power_w=[1e5, frames[7].pdu_power_w[1]]).encode())
    return out


def per_frame(values: list[bytes]) -> tuple[list[Any], list[Any], list[tuple[int, str]], FrameChecker]:
    chk, limits, asm = FrameChecker(SITE), Limits(SITE), Assembler(SITE)
    aggs: list[Any] = []
    sums: list[Any] = []
    refused: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        try:
            verdict = chk.check(TelemetryFrame.decode(v), NOW)
        except SchemaError as e:
            refused.append((i, str(e)))
            continue
        if verdict.frame is None:
            if not verdict.dropped:
                refused.append((i, verdict.reason))
            continue
        for a, s in assembled_outputs(SITE, limits, asm, verdict.frame):
            aggs += a
            sums.append(s)
    return aggs, sums, refused, chk


def assert_close(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k, x in a.items():
        if isinstance(x, float):
            assert b[k] == pytest.approx(x, rel=1e-9, nan_ok=True), k
        else:
            assert b[k] == x, k


def partial_day() -> list[bytes]:
    """12 s of a lab site whose racks report as real collectors do: rack 0 per server (NVML, jittered; server 6
    stops after 5 s) with its PDUs (SNMP, every 5 s) and a BMC (Redfish, every 3 s); rack 1 whole until 4 s,
    then per server; rack 2 its PDUs only; rack 3 per server, last server first, with a GPU not in the rack
    and a duplicate; rack 4 a whole frame in another GPU order; the others whole."""
    fleet = Fleet(SITE, seed=5, epoch_s=EPOCH)
    out: list[TelemetryFrame] = []
    for k in range(1, 13):
        frames = rack_frames(SITE, fleet.step(1.0), EPOCH + k, 1.0, k, "sim")
        r0 = [f for f in server_frames(frames[0], 0.03) if not (k > 5 and f.source == "nvml:host-6")]
        if k % 5 == 1:
            r0 = pdu_frames(frames[0]) + r0
        if k % 3 == 0:
            r0.insert(2, bmc_frame(frames[0], 1, 3000.0 + 100.0 * k))
        r1 = [frames[1]] if k <= 4 else server_frames(frames[1], 0.01)
        r2 = pdu_frames(frames[2]) if k % 5 == 1 else []
        r3 = server_frames(frames[3], 0.02)[::-1]
        if k == 4:
            r3.append(dataclasses.replace(r3[0], gpu_server=np.full(r3[0].power_w.size, 8, np.uint16), seq=99))
            r3.append(r3[1])
        if k == 3:
            order = np.arange(frames[4].power_w.size)[::-1]
            frames[4] = dataclasses.replace(frames[4], **{n: getattr(frames[4], n)[order] for n in (
                "gpu_server", "gpu_slot", "power_w", "temp_c", "sm_clock_mhz", "limit_w", "util")})
        out += r0 + r1 + r2 + r3 + frames[4:]
    return [f.encode() for f in out]


@pytest.mark.parametrize("batch_size", [1, 7, 4096])
def test_partial_frames_give_the_same_views_in_both_paths(batch_size: int) -> None:
    values = partial_day()
    ref_aggs, ref_sums, ref_refused, _ = per_frame(values)
    assert [r for _, r in ref_refused] == [
        "telemetry.frame rack-04 from 'nvml:host-7': GPU (server 8, slot 0) not in rack-04 (8 servers)"]
    racks = [s.rack for s in ref_sums]
    assert SITE.rack_ids[2] not in racks  # PDUs alone: held, not reporting
    assert racks.count(SITE.rack_ids[0]) == racks.count(SITE.rack_ids[5]) == 12  # a view per second
    rack0 = [s for s in ref_sums if s.rack == SITE.rack_ids[0]]
    assert {s.gpus_reporting for s in rack0[-3:]} == {56} and all(math.isfinite(s.pdu_power_w[0]) for s in rack0)
    compare_batches(values, batch_size, ref_aggs, ref_sums, ref_refused)


@pytest.mark.parametrize("batch_size", [1, 7, 4096])
def test_the_batch_stage_gives_what_the_per_frame_reference_gives(batch_size: int) -> None:
    values = bad_day()
    ref_aggs, ref_sums, ref_refused, ref_chk = per_frame(values)
    items, _, chk = compare_batches(values, batch_size, ref_aggs, ref_sums, ref_refused)
    assert len(ref_refused) == 6
    assert chk.counts == ref_chk.counts and chk.counts.duplicates == 1 and sum(chk.counts.marked.values()) >= 1
    # What an operator sees of the bad frames: the rack with a silent GPU counts it, the throttled one too.
    rack0 = [LevelAggregate.decode(v) for k, v, _ in items if k == SITE.rack_ids[0].encode()]
    assert {a.gpus_reporting for a in rack0} == {rack0[0].gpus_expected - 1}
    assert {a.gpus_throttled for a in rack0} == {0, rack0[0].gpus_expected}


def compare_batches(values: list[bytes], batch_size: int, ref_aggs: list[Any], ref_sums: list[Any],
                    ref_refused: list[tuple[int, str]]) -> tuple[list[tuple[bytes, bytes, float]],
                                                              list[RackSummaryBatch], FrameChecker]:
    chk, batcher = FrameChecker(SITE), RackBatcher(SITE, Limits(SITE))
    items: list[tuple[bytes, bytes, float]] = []
    sums: list[RackSummaryBatch] = []
    refused: list[tuple[int, str]] = []
    marks: list[str] = []
    for start in range(0, len(values), batch_size):
        out = rack_batch(batcher, chk, values[start:start + batch_size], NOW)
        items += out.aggregates
        refused += [(start + i, r) for i, r in out.refused]
        marks += out.marks
        if out.summaries is not None:
            sums.append(RackSummaryBatch.decode(out.summaries.encode()))
    assert refused == ref_refused
    assert len(marks) == sum(chk.counts.marked.values())
    assert len(items) == len(ref_aggs)
    for (key, value, ts_s), ref in zip(items, ref_aggs, strict=True):
        assert key == ref.key() and ts_s == ref.ts_s
        assert_close(ref.to_wire(), LevelAggregate.decode(value).to_wire())
    got = RackSummaryBatch.of(ref_sums)
    cols = {f.name: np.concatenate([getattr(s, f.name) for s in sums]) if f.name != "racks" else
            [r for s in sums for r in s.racks] for f in dataclasses.fields(RackSummaryBatch) if f.name != "site"}
    for name, col in cols.items():
        want = getattr(got, name)
        if name == "racks":
            assert col == want
        else:
            np.testing.assert_allclose(np.asarray(col, dtype=np.float64), np.asarray(want, dtype=np.float64),
                                       rtol=1e-9, equal_nan=True, err_msg=name)
    return items, sums, chk


def test_decode_many_refuses_each_bad_record_with_decodes_reason() -> None:
    good = bad_day()[:3]
    wild = TelemetryFrame.decode(good[0])
    p = wild.power_w.copy()
    p[5] = -1.0
    values = [good[0], dataclasses.replace(wild, power_w=p).encode(), msgpack.packb({"schema": "x"}), good[1]]
    out = TelemetryFrame.decode_many(values)
    assert isinstance(out[0], TelemetryFrame) and isinstance(out[3], TelemetryFrame)
    for i in (1, 2):
        with pytest.raises(SchemaError) as e:
            TelemetryFrame.decode(values[i])
        assert str(out[i]) == str(e.value)
    assert "field 'power_w'[5] = -1 out of range" in str(out[1])


def test_a_bug_on_one_frame_loses_that_frame_only() -> None:
    values = bad_day()[:2 * SITE.n_racks]
    batcher = RackBatcher(SITE, Limits(SITE))
    real = batcher.outputs
    bad_rack = SITE.rack_ids[2]

    def outputs(frames: Any) -> Any:
        if any(f.rack == bad_rack for f in frames):
            raise ZeroDivisionError("a bug")
        return real(frames)

    batcher.outputs = outputs  # type: ignore[method-assign]
    out = rack_batch(batcher, FrameChecker(SITE), values, NOW)
    assert [r for _, r in out.refused] == ["internal error: ZeroDivisionError: a bug"] * 2
    assert out.frames == len(values) - 2 and out.summaries is not None
    assert len(out.summaries.racks) == out.frames and bad_rack not in out.summaries.racks
    assert len(out.aggregates) == 3 * out.frames


def test_a_partition_ahead_in_a_backlog_waits_for_the_ones_behind() -> None:
    from streams.rack_input import ahead_of

    newest = {0: 100_000, 1: 125_000, 2: 104_000, 3: 200_000}
    assert ahead_of(newest, {0, 1, 2}, 10_000) == {1, 3}  # 3 is caught up: the caller keeps it flowing
    assert ahead_of(newest, set(), 10_000) == set()  # no backlog: nothing waits
    assert ahead_of(newest, {5}, 10_000) == set()  # a partition that gave nothing yet holds nobody
