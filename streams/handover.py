"""Handing a site's stage from one streams worker to another (issue 13: two or more workers in one group).

The site stage runs in the worker that holds the site's pp.racks partition. When that partition moves (a worker
joins or leaves the group, or one dies and its session times out), the worker that gets it:

1. loads the checkpoint that faust rebuilt from the changelog (`tree-state`), once per assignment of the
   partition: a worker that held it, lost it and got it back must not carry on from its own stale state;
2. replays the records between the checkpoint's input offset and the first record it is handed, read straight
   from the partition: the predecessor took them (and committed their offsets) after its last checkpoint, so
   without them the windows they closed would be lost or closed again from part of their input. Every window
   after the checkpoint is closed again from the same input instead: none is lost, and those published before
   the handover are published again with the same values (at least once; docs/decisions.md, "Two or more
   streams workers", says why the consumers take them as repeats);
3. skips records it is handed that the checkpoint already holds (offsets committed before the checkpoint).

A worker that gives the partition up gracefully (a rebalance, a shutdown) writes a last checkpoint once its
inputs are drained and committed: its successor resumes exactly, with nothing to replay or publish twice.

A worker that does not hold the site's partition closes no window by the clock: its stage is idle, not the site
silent (it would page every rack as lost).

How long a takeover after a crash takes: the session timeout (streams.app), the survivor's next heartbeat, faust's
recovery of the table, the replay. docs/reliability.md, "Two streams workers", has the figures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import client_auth, key_partition
from streams.site_stage import SiteStage

log = logging.getLogger("powerplane.streams")
# A takeover after a crash replays one checkpoint interval and one offset-commit interval of input: a few seconds
# of records. A larger gap means the group's offsets were moved on purpose (reset to the end): nothing to replay.
MAX_REPLAY_RECORDS = 20_000
REPLAY_TIMEOUT_S = 10.0
FETCH_MAX_WAIT_MS = 200


def shorten_fetch_wait() -> None:
    """faust's worker consumer long-polls the broker for up to 1.5 s (fetch_max_wait_ms=1500, hard-coded). A partition
    resumed after a rebalance (the table's changelog, then the inputs) waits for the poll in flight: the table's
    recovery took 0.4-2.4 s of a takeover, 0.35 s with 200 ms. An idle consumer then asks five times a second; a
    busy one is answered as soon as a record arrives either way. Patched where faust creates the client, as the
    producer's settings are (streams.app)."""
    cls = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(cls, "_pp_fetch_wait", False):
        return
    create = cls._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        return consumer

    cls._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]
    cls._pp_fetch_wait = True  # type: ignore[attr-defined]


def site_partition(site_name: str) -> int:
    """The site's pp.racks partition: records are keyed by site (the Java client's murmur2 hash, as every
    producer here uses) over the partitions the topic is declared with."""
    return key_partition(site_name.encode(), range(topics.RACKS.partitions))


def read_records(cfg: Config, partition: int, start: int, end: int,
                 timeout_s: float = REPLAY_TIMEOUT_S) -> list[tuple[int, bytes]]:
    """(offset, value) of the records [start, end) of pp.racks[partition], oldest first, read with the streams
    role's credentials and no consumer group (the group's offsets are not touched)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                      client_id="powerplane-streams-handover", **client_auth(cfg, "streams").kafka_python())
    tp = TopicPartition(topics.RACKS.name, partition)
    try:
        c.assign([tp])
        c.seek(tp, start)
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while c.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tp.topic}[{partition}] offsets {start}-{end - 1}: not read in {timeout_s:.0f} s")
            out += [(m.offset, m.value) for m in c.poll(timeout_ms=200).get(tp, []) if m.offset < end]
        return out
    finally:
        c.close()


class SiteHandover:
    """Whether this worker holds the site's pp.racks partition, and what to do when it gets it or gives it up.
    `table[key]` is the site's checkpoint (a faust Table whose changelog is partitioned like pp.racks)."""

    def __init__(self, cfg: Config, site_name: str, app: Any, table: Any, stage: SiteStage) -> None:
        self.cfg, self.app, self.table, self.stage = cfg, app, table, stage
        self.key = site_name.encode()
        app.on_partitions_assigned.connect(self.on_assigned)
        app.on_partitions_revoked.connect(self.on_leaving)
        app.on_before_shutdown.connect(self.on_leaving)
        self.partition = site_partition(site_name)
        self.owned = False  # this worker holds the site's partition now
        self.fresh = True  # assigned since the checkpoint was last looked for: look before the next record
        self.skip_through = -1  # records up to this offset are in the checkpoint loaded
        self.takeovers = 0  # checkpoints loaded
        self.replayed = 0  # records replayed after them

    def on_assigned(self, _sender: Any, /, *args: Any, signal: Any = None, **_kwargs: Any) -> None:
        """faust's `on_partitions_assigned` signal (every rebalance, with the whole new assignment)."""
        assigned: Iterable[Any] = args[0] if args else ()
        has = any(tp.topic == topics.RACKS.name and tp.partition == self.partition for tp in assigned)
        if has and not self.owned:
            self.fresh = True
            log.info("site stage: pp.racks[%d] assigned to this worker", self.partition)
        elif self.owned and not has:
            log.info("site stage: pp.racks[%d] moved to another worker", self.partition)
        self.owned = has

    async def on_leaving(self, _sender: Any, /, *args: Any, signal: Any = None, **_kwargs: Any) -> None:
        """faust's `on_partitions_revoked` (a rebalance: every partition is revoked, the agents are drained and
        their offsets committed) and `on_before_shutdown` (the same, at a stop): the last checkpoint."""
        if self.owned and self.stage.input_offset is not None:
            # Straight to the changelog partition: outside the agent, faust cannot tell it from the current record.
            self.table.send_changelog(self.partition, self.key, self.stage.state())
            await self.app.producer.flush()  # before this worker rejoins the group, or stops

    def skip(self, offset: int) -> bool:
        """The record at `offset` is already in the checkpoint this worker resumed from."""
        return offset <= self.skip_through

    async def take_over(self, checkpoint: bytes | None, stage: SiteStage,
                        offset: int) -> list[tuple[int, bytes]] | None:
        """Load `checkpoint` into `stage` before the record at `offset`; the records to replay first (offset,
        value), or None when there is no checkpoint of this site to resume from."""
        self.fresh = False
        if not checkpoint or not stage.load_state(checkpoint):
            return None
        self.takeovers += 1
        since = stage.input_offset
        n = 0 if since is None else offset - since - 1
        log.info("site stage resumed from its checkpoint: %d windows closed before; %d record(s) of pp.racks[%d] "
                 "taken after it to replay", stage.windows_closed, max(n, 0), self.partition)
        self.skip_through = since if since is not None else -1
        if since is None or n > MAX_REPLAY_RECORDS:
            # The windows between the checkpoint and the first record are then taken as published by the worker
            # before (TreeWindows._skip_published): a checkpoint without its offset, or offsets moved on purpose.
            if since is not None:
                log.warning("site stage: %d records since the checkpoint (more than %d): the group's offsets were "
                            "moved, not replaying", n, MAX_REPLAY_RECORDS)
            return []
        records: list[tuple[int, bytes]] = []
        if n > 0:
            try:
                records = await asyncio.to_thread(read_records, self.cfg, self.partition, since + 1, offset)
            except Exception:  # the windows are then closed from what is left, as before replays existed
                log.exception("site stage: replaying pp.racks[%d] offsets %d-%d failed", self.partition, since + 1,
                              offset - 1)
                return []
        # Every record after the checkpoint is taken, none twice: the state is exact, no window is to be skipped.
        stage.tree.resumed = False
        self.replayed += len(records)
        return records
