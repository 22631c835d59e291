"""Seeded fuzz of the telemetry intake (no hypothesis: a numpy generator, so a failure replays exactly):
10,000+ malformed and schema-valid-but-implausible records interleaved with a fleet's valid frames through the
in-process engine (decode, plausibility, roll-up, site stage, controller: the code the Kafka path runs).
0 crashes; every bad record refused, dropped or marked with its reason; every valid frame rolled up; and the
controller decides exactly what it decides without the bad records (0 commands caused by one)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from controllers.capping import CapSettings
from ops.engine import Engine
from powerplane import topics
from powerplane.schemas import Command, TelemetryFrame
from powerplane.signing import Keyring
from powerplane.site_file import load_site
from sim.fleet import Fleet, rack_frames

ROOT = Path(__file__).resolve().parents[2]
SITE = load_site(ROOT / "examples" / "lab.toml")
KEYS = Keyring({"k1": b"f" * 32}, "k1")
EPOCH = 1_790_000_000.0
SECONDS = 260
BAD_PER_SECOND = 40  # 10,400 bad records


def _pack(d: Any) -> bytes:
    return bytes(msgpack.packb(d, use_bin_type=True))


def _wire(f: TelemetryFrame, **change: Any) -> bytes:
    return _pack({**f.to_wire(), **change})


def _malformed(rng: np.random.Generator, f: TelemetryFrame) -> list[Callable[[], bytes]]:
    """Records that must not decode (the schema refuses them)."""
    w = f.to_wire()
    drop = ["rack", "ts_s", "power_w", "seq"][int(rng.integers(4))]
    return [
        lambda: rng.bytes(int(rng.integers(0, 300))),
        lambda: f.encode()[: int(rng.integers(0, len(f.encode())))],
        lambda: _pack([1, 2, 3]) if rng.random() < 0.5 else _pack("telemetry"),
        lambda: _wire(f, schema="ack"),
        lambda: _pack({k: v for k, v in w.items() if k != drop}),
        lambda: _wire(f, ts_s="now") if rng.random() < 0.5 else _wire(f, seq=1.5),
        lambda: _wire(f, v=bool(rng.random() < 0.9)) if rng.random() < 0.5 else _wire(f, v=2),
        lambda: _wire(f, ts_s=float(rng.choice([math.nan, math.inf, -math.inf, -1.0, 1e12]))),
        lambda: _wire(f, pdu_power_w=[float(rng.choice([math.inf, -math.inf])), 1000.0]),
        lambda: _wire(f, power_w=w["power_w"][:-4]) if rng.random() < 0.5 else _wire(f, temp_c=w["temp_c"][:-1]),
        lambda: _wire(f, seq=-int(rng.integers(1, 1 << 40))),
        lambda: _wire(f, power_w=np.full(f.power_w.size, 1e6, np.float32).tobytes()),
    ]


def _implausible(rng: np.random.Generator, f: TelemetryFrame,
                 old: TelemetryFrame) -> list[tuple[str, Callable[[], bytes]]]:
    """Schema-valid records the plausibility check refuses ("dead") or drops as duplicates ("dup")."""
    r = SITE.rack_index(f.rack)
    rated = float(SITE.limits_w("normal")[0][SITE.rack_pdu[r, 0]])
    return [
        ("dead", lambda: _wire(f, ts_s=f.ts_s + float(rng.uniform(6.0, 1e6)))),  # future-dated
        ("dead", lambda: _wire(f, ts_s=float(rng.choice([0.0, 3600.0, f.ts_s - 30 * 86400.0])))),  # 1970, a month
        ("dead", lambda: _wire(f, pdu_power_w=[float(rng.choice([-1e9, 1e300, -5.0, 3.5 * rated])), 1000.0])),
        ("dead", lambda: _wire(f, inlet_c=[float(rng.choice([1e6, -1e6, 95.0, -40.0])), 22.0])),
        ("dead", lambda: _wire(f, power_w=np.full(f.power_w.size, 1100.0, np.float32).tobytes())),
        ("dead", lambda: _wire(f, site="another-site") if rng.random() < 0.5 else _wire(f, rack="rack-99")),
        ("dup", lambda: old.encode()),  # a replayed frame
        ("dup", lambda: _wire(old, pdu_power_w=[2.9 * rated, 2.9 * rated])),  # replayed seq, forged readings
    ]


def _run(frames: list[list[TelemetryFrame]], bad: bool, seed: int) -> tuple[Engine, list[Command], dict[str, int]]:
    rng = np.random.default_rng(seed)
    now = {"s": EPOCH}
    eng = Engine(SITE, KEYS, CapSettings(), 30.0, clock=lambda: now["s"])
    cmds: list[Command] = []
    seen = {"dead": 0, "dup": 0}
    for k, sec in enumerate(frames):
        now["s"] = sec[0].ts_s + 0.2  # the receiver's clock: just after the frames of this second
        items: list[tuple[str, bytes]] = [("valid", f.encode()) for f in sec]
        if bad:
            for _ in range(BAD_PER_SECOND):
                f = sec[int(rng.integers(len(sec)))]
                prev = frames[int(rng.integers(max(k, 1)))]  # an earlier second's frame, already taken
                old = prev[int(rng.integers(len(prev)))]
                mal, imp = _malformed(rng, f), _implausible(rng, f, old)
                if k == 0 or rng.random() < 0.5:
                    items.append(("dead", mal[int(rng.integers(len(mal)))]()))
                else:
                    kind, make = imp[int(rng.integers(len(imp)))]
                    items.append((kind, make()))
            order = rng.permutation(len(items))
            # Valid frames keep their order among themselves (a source's frames arrive in order).
            valid_pos = sorted(int(i) for i, (kind, _) in zip(order, items, strict=True) if kind == "valid")
            placed: list[tuple[str, bytes] | None] = [None] * len(items)
            vi = iter(it for it in items if it[0] == "valid")
            for pos in valid_pos:
                placed[pos] = next(vi)
            rest = iter(it for it in items if it[0] != "valid")
            items = [p if p is not None else next(rest) for p in placed]
        for kind, value in items:
            r = eng.result
            before = (sum(r.dead_letters.values()), r.duplicates, r.frames)
            cmds += eng.feed(topics.TELEMETRY.name, value)
            after = (sum(r.dead_letters.values()), r.duplicates, r.frames)
            delta = tuple(a - b for a, b in zip(after, before, strict=True))
            expect = {"dead": (1, 0, 0), "dup": (0, 1, 0), "valid": (0, 0, 1)}[kind]
            assert delta == expect, (kind, delta, r.dead_letters.most_common(2))
            if kind != "valid":
                seen[kind] += 1
        cmds += eng.decide_now(now["s"])
    eng.finish()
    return eng, cmds, seen


def _key(c: Command) -> tuple[float, str, str, tuple[int, ...], tuple[float, ...], str]:
    return (c.issued_at_s, c.target, c.action, tuple(c.gpus.tolist()), tuple(np.round(c.values, 3).tolist()), c.reason)


def test_ten_thousand_bad_records_are_refused_and_change_no_command() -> None:
    t0 = time.monotonic()
    fleet = Fleet(SITE, seed=11, epoch_s=EPOCH)
    rng = np.random.default_rng(7)
    clean: list[list[TelemetryFrame]] = []  # what the "without" run sees: a marked reading simply missing
    dirty: list[list[TelemetryFrame]] = []  # the same, with the marked reading's implausible value in place
    marked_at: dict[str, int] = {}
    n_marked = 0
    for k in range(1, SECONDS + 1):
        if k == 90:
            fleet.lose_feed("A")  # so the controller has something to decide
        sec = rack_frames(SITE, fleet.step(1.0), EPOCH + k, 1.0, k, "sim")
        c_sec, d_sec = [], []
        for f in sec:
            r = SITE.rack_index(f.rack)
            rated = float(SITE.limits_w("normal")[0][SITE.rack_pdu[r, 1]])
            # An implausible-but-possible reading now and then (never three in a row: that is a real new level).
            if k > 3 and k - marked_at.get(f.rack, -10) > 4 and rng.random() < 0.05:
                marked_at[f.rack] = k
                n_marked += 1
                if rng.random() < 0.5:
                    d_sec.append(dataclasses.replace(f, pdu_power_w=[f.pdu_power_w[0], 2.8 * rated]))
                    c_sec.append(dataclasses.replace(f, pdu_power_w=[f.pdu_power_w[0], math.nan]))
                else:
                    d_sec.append(dataclasses.replace(f, inlet_c=[f.inlet_c[0] + 45.0, f.inlet_c[1]]))
                    c_sec.append(dataclasses.replace(f, inlet_c=[math.nan, f.inlet_c[1]]))
                continue
            c_sec.append(f)
            d_sec.append(f)
        clean.append(c_sec)
        dirty.append(d_sec)

    base, base_cmds, _ = _run(clean, bad=False, seed=1)
    eng, cmds, seen = _run(dirty, bad=True, seed=1)
    r = eng.result
    n_valid = sum(len(s) for s in clean)
    assert seen["dead"] + seen["dup"] >= 10_000 and seen["dup"] > 500
    assert r.frames == base.result.frames == n_valid  # every valid frame rolled up, in both runs
    assert sum(r.dead_letters.values()) == seen["dead"] and r.duplicates == seen["dup"]
    assert all(reason.startswith("telemetry.frame") and "\n" not in reason for reason in r.dead_letters)
    assert n_marked > 60 and sum(r.marked.values()) >= n_marked  # every implausible reading marked, with a reason
    assert all("marked invalid" in m for m in r.marked)
    # No aggregate nonsense reached the controller and the bad records caused no command.
    caps = [c for c in base_cmds if c.action == "power_cap"]
    assert caps, "the feed loss made the controller act"
    assert [_key(c) for c in cmds] == [_key(c) for c in base_cmds]
    assert not base.result.dead_letters and not base.result.duplicates
    assert time.monotonic() - t0 < 60
