"""The reader's fetch bounds on a real (empty) metadata store: a fetch never long-polls
past the reader's cap, and long polls over the waiting limit are parked, not answered early."""

from __future__ import annotations

import asyncio
import pathlib

from metadata import MetadataStore
from reader.cache import BlockCache
from reader.engine import ReadEngine
from streamhouse import objectstore
from streamhouse.frames import FORMAT_KAFKA, FetchPart, FetchRequest


def _engine(tmp_path: pathlib.Path) -> tuple[ReadEngine, int, MetadataStore]:
    meta = MetadataStore(tmp_path / "meta.sqlite", synchronous="NORMAL")
    topic = meta.create_topic("idle", 2)
    store = objectstore.open_object_store("memory://")
    return ReadEngine(meta, store, BlockCache(1 << 20), 0), topic.topic_id, meta


def _poll(topic_id: int, partition: int, max_wait_ms: int) -> FetchRequest:
    return FetchRequest(
        1, max_wait_ms, 1, 1 << 20, FORMAT_KAFKA, [FetchPart(topic_id, partition, 0, 1 << 20)]
    )


def test_a_fetch_never_waits_past_the_readers_cap(tmp_path: pathlib.Path) -> None:
    engine, topic_id, meta = _engine(tmp_path)
    engine.max_wait_ms = 100

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        # An hour asked for; the cap answers it (empty) after 100 ms.
        response, payload = await asyncio.wait_for(engine.fetch(_poll(topic_id, 0, 3_600_000)), 10)
        assert payload == b"" and response.parts[0].length == 0
        assert 0.09 <= loop.time() - start < 5

    try:
        asyncio.run(scenario())
    finally:
        meta.close()


def test_polls_over_the_waiting_limit_are_parked_not_answered_early(
    tmp_path: pathlib.Path,
) -> None:
    engine, topic_id, meta = _engine(tmp_path)
    engine.max_waiting = 1

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(engine.fetch(_poll(topic_id, 0, 60_000)))
        # The engine reads metadata on a worker thread first: poll (bounded) until it waits.
        deadline = loop.time() + 10
        while engine.waiting != 1 and loop.time() < deadline:
            await asyncio.sleep(0.001)
        assert engine.waiting == 1
        start = loop.time()
        parked = await asyncio.wait_for(engine.fetch(_poll(topic_id, 1, 300)), 10)
        assert parked[0].parts[0].length == 0
        assert loop.time() - start >= 0.29, "answered before its max_wait: a client would spin"
        assert engine.waiting == 1 and not first.done()
        first.cancel()

    try:
        asyncio.run(scenario())
    finally:
        meta.close()
