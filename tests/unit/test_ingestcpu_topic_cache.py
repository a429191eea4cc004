"""ingest/kafka/produce_topics.py: when Produce's topic states come from the cache and when
they are read again (TTL, topic writes through the process's AsyncMetadata, forget)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from ingest.kafka.produce_topics import TTL_S, ProduceTopicCache
from metadata.async_store import AsyncMetadata, TopicLookup, TopicState


class CountingMeta(AsyncMetadata):
    """A real AsyncMetadata on SQLite that counts its topic_states reads."""

    reads = 0

    async def topic_states(self, lookups: Sequence[TopicLookup]) -> list[TopicState | None]:
        self.reads += 1
        return await super().topic_states(lookups)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_with_meta(tmp_path: Path, body: object) -> None:
    async def main() -> None:
        meta = await CountingMeta.open(tmp_path / "meta.db")
        try:
            await body(meta)  # type: ignore[operator]
        finally:
            await meta.close()

    asyncio.run(main())


def test_fresh_states_are_reused_until_the_ttl(tmp_path: Path) -> None:
    async def body(meta: CountingMeta) -> None:
        await meta.create_topic("t", 2)
        clock = Clock()
        cache = ProduceTopicCache(meta, clock)
        first = await cache.topic_states([("t", [0])])
        assert first[0] is not None and first[0].topic.partitions == 2
        assert meta.reads == 1
        clock.now += TTL_S / 2
        again = await cache.topic_states([("t", [0])])
        assert again[0] is not None and again[0].topic.topic_id == first[0].topic.topic_id
        assert meta.reads == 1  # answered from the cache
        await cache.topic_states([("t", [1])])  # a partition it was not read for
        assert meta.reads == 2
        await cache.topic_states([("t", [0, 1])])  # the re-read covered both
        assert meta.reads == 2
        clock.now += TTL_S  # expired: read again
        await cache.topic_states([("t", [0])])
        assert meta.reads == 3

    run_with_meta(tmp_path, body)


def test_a_topic_write_through_the_process_is_seen_by_the_next_produce(tmp_path: Path) -> None:
    async def body(meta: CountingMeta) -> None:
        before = await meta.create_topic("t", 2)
        clock = Clock()
        cache = ProduceTopicCache(meta, clock)
        await cache.topic_states([("t", [0])])
        await meta.delete_topic("t")
        assert await cache.topic_states([("t", [0])]) == [None]  # gone at once
        assert await cache.topic_states([("t", [0])]) == [None]  # misses are not cached
        assert meta.reads == 3
        after = await meta.create_topic("t", 1)
        (state,) = await cache.topic_states([("t", [0])])
        assert state is not None and state.topic.topic_id == after.topic_id != before.topic_id
        assert state.topic.partitions == 1
        await meta.add_partitions("t", 3)
        (state,) = await cache.topic_states([("t", [0])])
        assert state is not None and state.topic.partitions == 3
        await meta.alter_topic_config("t", {"message.timestamp.type": "LogAppendTime"}, [])
        (state,) = await cache.topic_states([("t", [0])])
        assert state is not None
        assert state.topic.config.get("message.timestamp.type") == "LogAppendTime"
        await meta.set_log_start_offset(after.topic_id, 0, 0)
        reads = meta.reads
        await cache.topic_states([("t", [0])])
        assert meta.reads == reads + 1

    run_with_meta(tmp_path, body)


def test_forget_drops_one_name(tmp_path: Path) -> None:
    async def body(meta: CountingMeta) -> None:
        await meta.create_topic("a", 1)
        await meta.create_topic("b", 1)
        cache = ProduceTopicCache(meta, Clock())
        await cache.topic_states([("a", [0]), ("b", [0])])
        assert cache.cached([("a", [0]), ("b", [0])], 100.0) is not None
        cache.forget("a")
        assert cache.cached([("b", [0])], 100.0) is not None
        assert cache.cached([("a", [0])], 100.0) is None
        await cache.topic_states([("a", [0]), ("b", [0])])
        assert meta.reads == 2

    run_with_meta(tmp_path, body)
