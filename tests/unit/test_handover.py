"""Handing the site stage between streams workers (streams.handover), without a broker: which worker holds the
site stage as partitions move, what a worker that gets it loads, and which records it replays or skips. The
replay itself, on the real broker: tests/reliability/test_two_workers.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from powerplane import topics
from powerplane.config import load_config
from powerplane.site_file import load_site
from streams.handover import MAX_REPLAY_RECORDS, SiteHandover, site_partition
from streams.site_stage import SiteStage
from tests.unit.test_site_stage import run_twin

ROOT = Path(__file__).resolve().parents[2]


class TP(NamedTuple):
    topic: str
    partition: int


class _Signal:
    def __init__(self) -> None:
        self.receivers: list[Any] = []

    def connect(self, fn: Any) -> None:
        self.receivers.append(fn)


class _Producer:
    def __init__(self) -> None:
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1


class _Table(dict[bytes, bytes]):
    """A faust Table's changelog write, as SiteHandover makes it outside the agent."""

    def send_changelog(self, partition: int, key: bytes, value: bytes) -> None:
        assert partition == site_partition(key.decode())
        self[key] = value


class _App:
    """What SiteHandover uses of a faust app: its rebalance and shutdown signals, its producer."""

    def __init__(self) -> None:
        self.on_partitions_assigned = _Signal()
        self.on_partitions_revoked = _Signal()
        self.on_before_shutdown = _Signal()
        self.producer = _Producer()


def _handover(table: _Table | None = None, stage: SiteStage | None = None) -> SiteHandover:
    stage = stage or SiteStage(load_site(ROOT / "examples" / "lab.toml"))
    return SiteHandover(load_config(env={}), "lab", _App(), _Table() if table is None else table, stage)


def _assign(h: SiteHandover, *racks: int) -> None:
    """A rebalance's new assignment: these pp.racks partitions, and some telemetry partitions."""
    h.on_assigned(None, {TP(topics.RACKS.name, p) for p in racks} | {TP(topics.TELEMETRY.name, 0)})


def test_the_site_stage_is_taken_over_each_time_its_partition_comes_to_a_worker() -> None:
    h = _handover()
    p = site_partition("lab")
    assert 0 <= p < topics.RACKS.partitions
    other = (p + 1) % topics.RACKS.partitions
    _assign(h, p, other)
    assert h.owned and h.fresh  # first assignment: look for a checkpoint before the first record
    h.fresh = False  # (take_over clears it)
    _assign(h, p)  # a rebalance that leaves the site here: carry on from memory
    assert h.owned and not h.fresh
    _assign(h, other)  # a worker joined and took the site stage: this one's copy goes idle
    assert not h.owned
    _assign(h, p, other)  # ... and it comes back (that worker died): its own copy is stale, load the checkpoint
    assert h.owned and h.fresh


def test_a_worker_that_gives_the_site_stage_up_gracefully_leaves_a_last_checkpoint() -> None:
    _, stage = run_twin(20)
    table = _Table()
    h = _handover(table, stage)
    asyncio.run(h.on_leaving(h.app))  # holds no partition yet: nothing of its own to hand over
    assert table == {}
    _assign(h, h.partition)
    asyncio.run(h.on_leaving(h.app))  # the in-process stage tracks no input offset: no checkpoint to resume from
    assert table == {}
    stage.input_offset = 99
    asyncio.run(h.on_leaving(h.app))  # a rebalance or a shutdown, its input drained and committed
    heir = SiteStage(stage.site)
    assert heir.load_state(table[b"lab"]) and heir.input_offset == 99 and heir.windows_closed == stage.windows_closed
    assert h.app.producer.flushes == 1  # on the broker before this worker rejoins the group or stops
    assert h.on_leaving in h.app.on_partitions_revoked.receivers and h.on_leaving in h.app.on_before_shutdown.receivers


def test_a_worker_that_takes_over_replays_what_was_taken_after_the_checkpoint_and_skips_what_it_holds() -> None:
    _, first = run_twin(30)
    first.input_offset = 41
    saved = first.state()
    site = load_site(ROOT / "examples" / "lab.toml")
    h = _handover()
    # Handed offset 42 first: nothing between the checkpoint and it; nothing to skip after it.
    heir = SiteStage(site)
    assert asyncio.run(h.take_over(saved, heir, 42)) == []
    assert heir.windows_closed == first.windows_closed and heir.input_offset == 41
    assert h.skip(41) and not h.skip(42)
    assert not heir.tree.resumed  # its input continues exactly where the checkpoint ends: no window to skip
    # Handed offset 38 first (the group's offsets were committed before the checkpoint): 38-41 are in it.
    heir = SiteStage(site)
    assert asyncio.run(h.take_over(saved, heir, 38)) == []
    assert h.skip(38) and h.skip(41) and not h.skip(42) and not heir.tree.resumed
    # No checkpoint of this site: a fresh start, nothing to replay or skip beyond it.
    assert asyncio.run(h.take_over(None, SiteStage(site), 42)) is None
    # Offsets moved far past the checkpoint on purpose (reset to the end): no replay of the whole gap; the windows
    # in between are taken as published before, not closed again with every rack stale.
    heir = SiteStage(site)
    assert asyncio.run(h.take_over(saved, heir, 42 + MAX_REPLAY_RECORDS + 1)) == []
    assert heir.tree.resumed
    assert h.takeovers == 3 and h.replayed == 0


def test_the_checkpoint_keeps_the_input_offset() -> None:
    _, first = run_twin(10)
    site = first.site
    copy = SiteStage(site)
    assert copy.load_state(first.state()) and copy.input_offset is None  # the in-process engine tracks none
    first.input_offset = 1234
    assert copy.load_state(first.state()) and copy.input_offset == 1234


@pytest.mark.parametrize("name", ["lab", "lab-two-workers", "site-7"])
def test_the_site_partition_is_the_one_its_summaries_are_sent_to(name: str) -> None:
    from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]

    from powerplane.schemas import RackSummary, RackSummaryBatch

    rb = RackSummaryBatch.of([RackSummary(site=name, rack="rack-01", ts_s=1.0, interval_s=1.0, seq=1, power_w=1.0,
                                          pdu_power_w=[0.5, 0.5], mode="normal", gpus_expected=8, gpus_reporting=8,
                                          gpus_throttled=0)])
    parts = list(range(topics.RACKS.partitions))
    assert site_partition(name) == DefaultPartitioner()(rb.key(), parts, parts)  # as the rack agent's producer
