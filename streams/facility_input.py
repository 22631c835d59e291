"""pp.facility for the streams worker's site stage: a plain aiokafka consumer with no consumer group, assigned
every partition and starting at the end.

Why no group: the site stage lives in whichever worker owns the site's pp.racks partition (streams.handover);
a group would hand each worker only some UPS units' partitions, and the owner would miss the others. The
topic is small (a few UPS lineups and sensors, a reading every few seconds, a trap now and then), so every
worker reading all of it is cheap. Why from the end: a signal older than its bound is not acted on anyway
(streams.feed_signals), and a restarted worker must not replay an hour of old traps into dead letters.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

from powerplane import topics
from powerplane.kafka import ClientAuth


class FacilityInput:
    def __init__(self, bootstrap: str, auth: ClientAuth) -> None:
        self.settings: dict[str, Any] = dict(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                             auto_offset_reset="latest", client_id="powerplane-streams-facility",
                                             **auth.aiokafka())
        self.consumer: Any = None  # made in start(): aiokafka binds it to the running event loop
        self.records = 0

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(topics.FACILITY.name, **self.settings)
        await self.consumer.start()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def take(self, timeout_s: float = 0.2) -> list[Any]:
        got = await self.consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=1000)
        out = [r for recs in got.values() for r in recs]
        self.records += len(out)
        return out
