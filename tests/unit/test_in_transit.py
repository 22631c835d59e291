"""The rack stage's summaries on their way to the site stage count as the worker's backlog (streams.kafka_io.
InTransit): after a restart the site stage took its first catch-up batch as "caught up" while the next one,
a third of the partitions, was taken off pp.telemetry and not yet on pp.racks as far as it knew."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.structs import RecordMetadata, TopicPartition  # type: ignore[import-untyped]

from streams.kafka_io import InTransit

RACKS = ("pp.racks", 2)


def _meta(offset: int) -> RecordMetadata:
    return RecordMetadata(RACKS[0], RACKS[1], TopicPartition(*RACKS), offset, -1, 0, 0)


def test_a_summary_is_pending_from_its_take_until_the_site_stage_has_taken_its_offset() -> None:
    async def run() -> list[bool]:
        t = InTransit()
        read_to = {RACKS: 38}  # the site stage has taken the first catch-up batch, the last it has heard of
        seen = [t.pending(read_to)]
        t.taking = True  # the rack stage took the next batch off pp.telemetry: its fetch state says "taken"
        seen.append(t.pending(read_to))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        t.sent([fut])
        t.taking = False
        seen.append(t.pending(read_to))  # sent, not acknowledged
        fut.set_result(_meta(39))
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
        seen.append(t.pending(read_to))  # on pp.racks at 39: the site stage has taken 38
        read_to[RACKS] = 39
        seen.append(t.pending(read_to))
        failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        t.sent([failed])
        failed.set_exception(RuntimeError("refused"))
        await asyncio.sleep(0)
        seen.append(t.pending(read_to))  # refused by the broker: nothing will arrive, nothing to wait for
        return seen

    assert asyncio.run(run()) == [False, True, True, True, False, False]
