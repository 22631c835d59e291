from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition

from powerplane.config import Config


def read_topic(cfg: Config, topic: str, timeout_s: float = 10.0) -> list[bytes]:
    """Every record currently in a topic, from the beginning (no consumer group)."""
    return [m.value for m in read_messages(cfg, topic, timeout_s)]


def read_messages(cfg: Config, topic: str, timeout_s: float = 10.0) -> list:  # type: ignore[type-arg]
    c = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or []]
        c.assign(parts)
        c.seek_to_beginning(*parts)
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

    c = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(t, p) for t in topic_names for p in c.partitions_for_topic(t) or []]
        c.assign(parts)
        end = c.end_offsets(parts)
        c.commit({tp: OffsetAndMetadata(end[tp], "", -1) for tp in parts})
    finally:
        c.close()
