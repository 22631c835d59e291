"""The faust-streaming worker: telemetry frames in, level aggregates out.

The agent is a thin shell: decode (bad records go to the dead-letter topic with the reason),
call streams.rollup, send. An exception that escapes a faust agent silently stops it, so every
record is processed inside a guard that dead-letters what fails and keeps consuming.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from powerplane import topics
from powerplane.config import Config
from powerplane.schemas import DeadLetter, SchemaError, TelemetryFrame
from powerplane.site import Site
from streams.rollup import Limits, UnknownRack, frame_aggregates

log = logging.getLogger("powerplane.streams")


# faust only turns on producer idempotence inside transactions; we want it on every send
# (acks=all alone can still duplicate on retry).
def _idempotent_settings(self: Any) -> dict[str, Any]:
    return {"acks": "all", "enable_idempotence": True}


faust_aiokafka.Producer._settings_extra = _idempotent_settings  # type: ignore[method-assign]


class Counters:
    def __init__(self) -> None:
        self.frames = 0
        self.aggregates = 0
        self.dead_letters = 0


def create_app(cfg: Config, site: Site, app_id: str = "powerplane-streams") -> tuple[faust.App, Counters]:
    app = faust.App(
        app_id,
        broker=f"kafka://{cfg.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        producer_acks=-1,
        web_enabled=False,
        topic_allow_declare=False,  # our topics come from `powerplane topics create`, with their configs
        consumer_auto_offset_reset="latest",
        store="memory://",
    )
    counters = Counters()
    limits = Limits(site)
    telemetry = app.topic(topics.TELEMETRY.name, key_type=bytes, value_type=bytes, internal=False)
    aggregates = app.topic(topics.AGGREGATES.name, key_type=bytes, value_type=bytes, internal=False)
    deadletter = app.topic(topics.DEADLETTER.name, key_type=bytes, value_type=bytes, internal=False)

    async def dead_letter(event: Any, reason: str) -> None:
        msg = event.message
        dl = DeadLetter(msg.topic, msg.partition, msg.offset, reason, msg.key, msg.value or b"",
                        {"component": app_id})
        counters.dead_letters += 1
        key = msg.key.decode(errors="replace") if msg.key else "-"
        log.warning("bad record %s[%d]@%d key=%s: %s -> %s", msg.topic, msg.partition, msg.offset, key, reason,
                    topics.DEADLETTER.name)
        await deadletter.send(key=msg.topic.encode(), value=dl.value, headers=dl.headers())

    @app.agent(telemetry)
    async def rollup(stream: Any) -> None:
        async for event in stream.events():
            try:
                frame = TelemetryFrame.decode(event.value)
                aggs = frame_aggregates(site, limits, frame)
            except (SchemaError, UnknownRack) as e:
                await dead_letter(event, str(e))
                continue
            except Exception as e:  # never let one record stop the agent
                log.exception("roll-up failed on %s", event.message.key)
                await dead_letter(event, f"internal error: {type(e).__name__}: {e}")
                continue
            counters.frames += 1
            for a in aggs:
                await aggregates.send(key=a.key(), value=a.encode(), timestamp=a.ts_s)
                counters.aggregates += 1

    @app.timer(interval=30.0)  # type: ignore[untyped-decorator]
    async def report() -> None:
        log.info("frames=%d aggregates=%d dead_letters=%d", counters.frames, counters.aggregates,
                 counters.dead_letters)

    return app, counters


def run_worker(cfg: Config, site: Site, loglevel: str = "info") -> None:
    from faust.worker import Worker

    app, _ = create_app(cfg, site)
    worker = Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
