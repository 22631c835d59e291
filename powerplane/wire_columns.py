"""Decoding a batch of records field by field (column-wise) instead of record by record.

`Record.decode_many` calls `decode_many` here. The per-record path (`Record.from_wire`) checks each field of each
record through one generic function; for the streams worker's 1,024 telemetry frames a second (16 fields each)
that was ~40 % of the per-rack stage. Here each field is checked once over the whole batch with a type test per
value and, for scalars, one vectorized range test; arrays are made with one `np.frombuffer` each. A record that
fails any check here is decoded again on its own, so its error (or, if this path was stricter than needed, its
value) is exactly the one `decode()` gives; tests/unit/test_wire_columns.py holds the two equal on bad input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from typing import Any

import msgpack
import numpy as np

from powerplane.schemas import _ARRAY_DTYPES, Record, SchemaError, T, _check

_UNPACK_ERRORS = (ValueError, msgpack.UnpackException, TypeError)


def decode_many(cls: type[T], values: Sequence[bytes]) -> list[T | SchemaError]:
    """`cls.decode` of every value: each record, or the SchemaError decode() raises for it."""
    out: list[T | SchemaError | None] = [None] * len(values)
    where_ok: list[int] = []  # index into values of each map with the right schema and version
    maps: list[dict[str, Any]] = []
    for i, v in enumerate(values):
        try:
            d = msgpack.unpackb(v, raw=False)
        except _UNPACK_ERRORS:
            d = None
        if type(d) is dict and d.get("schema") == cls.SCHEMA and type(d.get("v")) is int and d["v"] == cls.VERSION:
            where_ok.append(i)
            maps.append(d)
        else:
            out[i] = cls._error(v)
    if maps:
        columns, bad = _columns(cls, maps)
        key = cls.key_field()
        # Positional construction, in field order: a dict of keywords per record cost more than the checks.
        for j, row in enumerate(zip(*columns.values(), strict=True)):
            i = where_ok[j]
            if bad[j]:
                out[i] = _exact(cls, values[i])
                continue
            rec = cls(*row)
            try:
                rec.validate(f"{cls.SCHEMA} {maps[j].get(key, '?')}")
            except SchemaError as e:
                out[i] = e
                continue
            out[i] = rec
    return [r for r in out if r is not None]


def _exact(cls: type[T], value: bytes) -> T | SchemaError:
    """The per-record path, for a record the column checks did not take."""
    try:
        return cls.decode(value)
    except SchemaError as e:
        return e


def _array_ranges(arrays: list[Any], rng: tuple[float, float]) -> None:
    """Marks _BAD, in place, each array with a value outside `rng` (NaN, a missing reading, is allowed): one
    min/max over the batch, and the exact test only when that fails."""
    idx = [j for j, a in enumerate(arrays) if a is not _BAD]
    if not idx:
        return
    flat = np.concatenate([arrays[j] for j in idx])
    lo, hi = rng
    # fmin/fmax skip NaN (a missing reading): only a batch with a value out of range takes the exact test.
    if not flat.size or (lo <= np.fmin.reduce(flat) and np.fmax.reduce(flat) <= hi):
        return
    out = ~((flat >= lo) & (flat <= hi)) & ~np.isnan(flat)
    if out.any():
        ends = np.cumsum([arrays[j].size for j in idx])
        for k in np.unique(np.searchsorted(ends, np.flatnonzero(out), side="right")).tolist():
            arrays[idx[k]] = _BAD


def _columns(cls: type[Record], maps: list[dict[str, Any]]) -> tuple[dict[str, list[Any]], list[bool]]:
    """Each field's decoded values over `maps`, and which maps fail some field's check (their values there are
    meaningless: those records take the exact path). Every check decode() makes per field is made here."""
    n = len(maps)
    bad = [False] * n
    columns: dict[str, list[Any]] = {}  # in field order: the dataclass's positional order
    full = range(n)
    for name, base, optional, rng in cls._read_plan():
        col = [d.get(name) for d in maps]
        present: Sequence[int] = full
        if None in col:  # absent: None when optional (as from_wire), else that record is bad
            present = [j for j, x in enumerate(col) if x is not None]
            if not optional:
                for j, x in enumerate(col):
                    if x is None:
                        bad[j] = True
        vals = _field(name, base, rng, col if present is full else [col[j] for j in present])
        finite = name in cls.FINITE
        if present is full and not finite and not any(v is _BAD for v in vals):
            columns[name] = vals  # the common case: every value present and taken
            continue
        for j, v in zip(present, vals, strict=True):
            if v is _BAD or (finite and not np.isfinite(v).all()):
                bad[j] = True
            else:
                col[j] = v
        columns[name] = col
    return columns, bad


_BAD: Any = object()  # a value the column check did not take


def _field(name: str, base: str, rng: tuple[float, float] | None, xs: list[Any]) -> list[Any]:
    """The decoded value of each present value of one field, or _BAD."""
    dt = _ARRAY_DTYPES.get(base)
    if dt is not None:
        size = dt.itemsize
        if all(type(x) is bytes and not len(x) % size for x in xs):
            arrays = [np.frombuffer(x, dtype=dt) for x in xs]
        else:
            arrays = [np.frombuffer(x, dtype=dt) if type(x) is bytes and not len(x) % size else _BAD for x in xs]
        if rng is not None and base in ("f32[]", "f64[]"):
            _array_ranges(arrays, rng)
        return arrays
    if base == "float":
        floats = [x if type(x) is float else _BAD for x in xs]  # an int (allowed) takes the exact path
        ok = [x for x in floats if x is not _BAD]
        if ok:
            arr = np.asarray(ok, dtype=np.float64)
            lo, hi = rng if rng is not None else (-math.inf, math.inf)
            if not (np.isfinite(arr).all() and lo <= arr.min() and arr.max() <= hi):
                return [x if x is not _BAD and math.isfinite(x) and lo <= x <= hi else _BAD for x in floats]
        return floats
    if base == "int":
        lo, hi = rng if rng is not None else (-math.inf, math.inf)
        return [x if type(x) is int and lo <= x <= hi else _BAD for x in xs]
    if base == "str":
        if all(type(x) is str for x in xs):
            return xs
        return [x if type(x) is str else _BAD for x in xs]
    if base == "f64list" and all(type(x) is list for x in xs):
        flat = list(chain.from_iterable(xs))
        if all(type(e) is float for e in flat) and not np.isinf(np.asarray(flat, dtype=np.float64)).any():
            return xs  # floats only (no None to turn into NaN) and none infinite: what _check would return
    out = []
    for x in xs:  # maps, string lists, lists with None or ints: small and rare enough for the per-record check
        try:
            out.append(_check("", name, base, x, rng))
        except SchemaError:
            out.append(_BAD)
    return out
