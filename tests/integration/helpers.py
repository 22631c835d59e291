from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition

from powerplane import topics
from powerplane.config import Config
from powerplane.kafka import process_auth


def read_topic(cfg: Config, topic: str, timeout_s: float = 10.0) -> list[bytes]:
    """Every record currently in a topic, from the beginning (no consumer group)."""
    return [m.value for m in read_messages(cfg, topic, timeout_s)]


def end_offsets(cfg: Config, topic: str) -> dict[int, int]:
    """Where each partition of a topic ends now: read_messages(start=...) then reads only what came after."""
    c = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python(),
                      group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or []]
        return {tp.partition: off for tp, off in c.end_offsets(parts).items()}
    finally:
        c.close()


def read_messages(cfg: Config, topic: str, timeout_s: float = 10.0,
                  start: dict[int, int] | None = None) -> list:  # type: ignore[type-arg]
    """Records of a topic from the beginning, or from `start` (partition -> offset, see end_offsets): on
    the broker the whole session shares, earlier tests leave hundreds of thousands of records behind."""
    c = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python(),
                      group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or []]
        c.assign(parts)
        c.seek_to_beginning(*parts)
        for tp in parts:
            if start and tp.partition in start:
                c.seek(tp, start[tp.partition])
        end = c.end_offsets(parts)
        out = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(c.position(tp) < end[tp] for tp in parts):
            for msgs in c.poll(timeout_ms=200).values():
                out.extend(msgs)
        return out
    finally:
        c.close()


def start_group_at_end(cfg: Config, group: str, topic_names: tuple[str, ...]) -> None:
    """Commit a consumer group at the current end of its topics, as a sink already deployed would stand,
    so a test's sink does not first work through what the earlier tests left on the shared broker."""
    from kafka import OffsetAndMetadata

    c = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, **process_auth().kafka_python(),
                      group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(t, p) for t in topic_names for p in c.partitions_for_topic(t) or []]
        c.assign(parts)
        end = c.end_offsets(parts)
        c.commit({tp: OffsetAndMetadata(end[tp], "", -1) for tp in parts})
    finally:
        c.close()


def start_streams_at_end(cfg: Config) -> None:
    """start_group_at_end for the streams worker: its site stage's faust group on pp.racks and its rack
    stage's group on pp.telemetry."""
    start_group_at_end(cfg, topics.STREAMS_APP_ID, (topics.RACKS.name,))
    start_group_at_end(cfg, topics.STREAMS_RACKS_GROUP, (topics.TELEMETRY.name,))
