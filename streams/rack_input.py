"""pp.telemetry for the streams worker's per-rack stage: a plain aiokafka consumer in its own consumer group
(topics.STREAMS_RACKS_GROUP), taken in batches (`getmany`) instead of through faust's per-record stream.

Why not a faust agent: faust makes a message, an event and an acknowledgement per record and passes each
through its conductor and a queue; at the 100 MW site's 1,024 frames a second that cost more CPU than the
batched stage itself (docs/performance.md, "Catch-up"). The group is still Kafka's: two or more workers
share the telemetry partitions and a dead one's move to the others when its session times out.

At least once: offsets are committed only after everything the records produced is acknowledged by the
broker (`commit` is given the produce futures; it waits for them in the background, one commit at a time), so
a worker killed mid-batch leaves those records to the next owner; its repeats are what the site stage already
counts as repeated frames.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.structs import OffsetAndMetadata, TopicPartition  # type: ignore[import-untyped]

from powerplane import topics
from powerplane.kafka import ClientAuth

log = logging.getLogger("powerplane.streams")
# As the faust group's (streams.app): a dead worker's partitions move after at most this, plus a heartbeat
# (docs/decisions.md, "Two or more streams workers").
SESSION_TIMEOUT_S = 6.0
HEARTBEAT_S = 1.0
# Per partition per fetch: ~450 frames of 72 GPUs, ~5 s of a partition's racks at the 100 MW site. Larger
# fetches let one partition's backlog run far ahead of the others in a catch-up (8 MB: ~40 s a fetch, and the
# skew passed the tree's 60 s backlog lateness: 113,400 late frames and 945 false telemetry_loss in a 180 s run).
PARTITION_FETCH_BYTES = 1 << 20
COMMIT_EVERY_S = 1.0  # a commit is a round trip to the group coordinator: once a second, not per batch
# In a backlog, a partition whose newest frame is this far past the oldest newest frame of the partitions still
# behind is paused until they catch up: the site stage rolls up by event time, and frames of lagging
# partitions must reach their windows within the tree's backlog lateness (60 s).
ALIGN_AHEAD_S = 10.0


# At most this many frames a batch: the batch's RackSummaryBatch (~85 bytes a rack) stays well under the
# brokers' 1 MB record limit (16,384 made a 1.4 MB record the broker refused, and the site stage starved).
MAX_RECORDS = 4096


class RackInput:
    """The consumer, the offsets taken and not committed yet, and the produce futures they wait for."""

    def __init__(self, bootstrap: str, auth: ClientAuth, from_beginning: bool,
                 group: str = topics.STREAMS_RACKS_GROUP, max_records: int = MAX_RECORDS) -> None:
        self.group = group
        self.max_records = max_records
        self.settings: dict[str, Any] = dict(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            session_timeout_ms=int(SESSION_TIMEOUT_S * 1000), heartbeat_interval_ms=int(HEARTBEAT_S * 1000),
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES, fetch_max_bytes=64 << 20, client_id=f"{group}-consumer",
            **auth.aiokafka())
        self.consumer: Any = None  # made in start(): aiokafka binds it to the running event loop
        self.pending: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self.next_offset: dict[TopicPartition, int] = {}  # next offset to take, per partition
        self.newest_ms: dict[TopicPartition, int] = {}  # timestamp of the newest record taken, per partition
        self.futures: list[asyncio.Future[Any]] = []  # produce acks the pending offsets wait for
        self.last_commit_mono = time.monotonic()
        self.committing: asyncio.Future[None] | None = None  # the commit in the background, if one runs
        self.commits = 0
        self.commit_failures = 0
        self.started = False

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(topics.TELEMETRY.name, **self.settings)
        await self.consumer.start()
        self.started = True

    async def stop(self) -> None:
        if self.started:
            try:
                await self.commit(force=True)
            finally:
                await self.consumer.stop()

    async def take(self, timeout_s: float = 0.05) -> list[Any]:
        """The next batch: records of every assigned partition, each partition's in offset order."""
        got = await self.consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=self.max_records)
        records = [r for recs in got.values() for r in recs]
        for tp, recs in got.items():
            self.pending[tp] = self.next_offset[tp] = recs[-1].offset + 1
            self.newest_ms[tp] = recs[-1].timestamp
        self._align()
        return records

    def _align(self) -> None:
        """Pause the partitions that ran ahead in event time (record timestamps: the frames' event times), resume
        the others (see ALIGN_AHEAD_S)."""
        states = dict(self.states())
        behind = {tp for tp, st in states.items()
                  if st.highwater is not None and st.highwater > self.next_offset.get(tp, st.position or 0)}
        # Only partitions with a backlog of their own: one that is caught up keeps flowing live.
        pause = ahead_of(self.newest_ms, behind, int(ALIGN_AHEAD_S * 1000)) & behind
        paused = self.consumer.paused()
        if pause - paused:
            self.consumer.pause(*(pause - paused))
        if (paused - pause) & states.keys():
            self.consumer.resume(*((paused - pause) & states.keys()))

    def produced(self, futures: Iterable[asyncio.Future[Any]]) -> None:
        """Produce acks the taken records' outputs wait for: the offsets are committed after them."""
        self.futures += futures

    async def commit(self, force: bool = False) -> None:
        """Commit the offsets taken so far once their outputs are acknowledged, at most once a second. In the
        background: the batch loop does not wait for the acks and the coordinator's round trip (that wait was
        ~15 % of a catch-up's wall time). `force` (stopping): wait for it, and for one still running."""
        running = self.committing
        if running is not None and not running.done():
            if not force:
                return  # one commit at a time, in order: these offsets go with the next
            await running
        if not self.pending or (not force and time.monotonic() - self.last_commit_mono < COMMIT_EVERY_S):
            return
        futures, self.futures = self.futures, []
        pending, self.pending = self.pending, {}
        self.last_commit_mono = time.monotonic()
        self.committing = asyncio.ensure_future(self._commit(futures, pending))
        if force:
            await self.committing

    async def _commit(self, futures: list[asyncio.Future[Any]], pending: dict[TopicPartition, int]) -> None:
        try:
            if futures:
                # Raises if the broker refused an output (after the producer's retries): this commit is not
                # made; a later commit passes those records (their outputs are lost, and said so).
                await asyncio.gather(*futures)
        except Exception:
            self.commit_failures += 1
            log.exception("pp.telemetry offsets not committed: the broker refused outputs of the records "
                          "taken in the last second (their aggregates and summaries are lost)")
            return
        owned = self.consumer.assignment()
        offsets = {tp: OffsetAndMetadata(off, "") for tp, off in pending.items() if tp in owned}
        try:
            if offsets:
                await self.consumer.commit(offsets)
            self.commits += 1
        except Exception as e:  # e.g. a rebalance under way: the next owner re-reads them (at least once)
            self.commit_failures += 1
            log.warning("pp.telemetry offsets of %d partition(s) not committed (%s: %s); their records may be "
                        "read again", len(offsets), type(e).__name__, e)

    def states(self) -> Iterator[tuple[Any, Any]]:
        """(partition, aiokafka's fetch state) of every assigned partition, no request: for the worker's
        backlog and lag figures."""
        if not self.started:
            return
        sub = self.consumer._subscription.subscription
        a = sub.assignment if sub is not None else None
        if a is None:
            return
        for tp in list(a.tps):
            yield tp, a.state_value(tp)


def ahead_of(newest_ms: dict[Any, int], behind: set[Any], ahead_ms: int) -> set[Any]:
    """The partitions whose newest record is more than `ahead_ms` past the oldest newest record of the
    partitions that are `behind` (records on the broker not taken yet). Nothing when none is behind; a behind
    partition that has given nothing yet does not hold the others (its time is not known)."""
    known = [newest_ms[tp] for tp in behind if tp in newest_ms]
    if not known:
        return set()
    floor = min(known)
    return {tp for tp, ms in newest_ms.items() if ms > floor + ahead_ms}
