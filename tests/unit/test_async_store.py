"""AsyncMetadata (metadata calls off the event loop) and the store's event-loop guard."""

from __future__ import annotations

import asyncio
import pathlib
import threading

import apsw
import pytest

from metadata import MetadataStore, UnknownTopicError
from metadata.async_store import AsyncMetadata, ReadPlan, TopicLookup
from metadata.store import DEBUG_LOOP_CALLS_ENV, BatchRef, CommitBlock, LoopCallError


@pytest.fixture
def store(tmp_path: pathlib.Path) -> MetadataStore:
    return MetadataStore(tmp_path / "meta.sqlite", synchronous="NORMAL", forbid_loop_calls=True)


# --------------------------------------------------------------------------- the guard


def test_guard_refuses_reads_and_writes_on_a_running_loop(store: MetadataStore) -> None:
    store.create_topic("events", 2)  # no loop on this thread: allowed

    async def on_loop() -> None:
        with pytest.raises(LoopCallError, match=r"MetadataStore\.get_topic .*event loop"):
            store.get_topic("events")
        with pytest.raises(LoopCallError, match=r"MetadataStore\.create_topic"):
            store.create_topic("other", 1)
        with pytest.raises(LoopCallError, match=r"MetadataStore\.close"):
            store.close()
        # A worker thread of the same loop may call it.
        topic = await asyncio.to_thread(store.get_topic, "events")
        assert topic is not None and topic.partitions == 2

    asyncio.run(on_loop())
    assert store.get_topic("other") is None  # the refused write changed nothing
    store.close()


def test_guard_refuses_opening_on_a_loop_and_follows_the_environment(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "meta.sqlite"
    monkeypatch.setenv(DEBUG_LOOP_CALLS_ENV, "1")

    async def open_on_loop() -> None:
        with pytest.raises(LoopCallError, match=r"MetadataStore\.__init__"):
            MetadataStore(path)

    asyncio.run(open_on_loop())
    guarded = MetadataStore(path)

    async def read_on_loop() -> None:
        with pytest.raises(LoopCallError):
            guarded.list_topics()

    asyncio.run(read_on_loop())
    guarded.close()

    monkeypatch.delenv(DEBUG_LOOP_CALLS_ENV)
    unguarded = MetadataStore(path)

    async def allowed() -> None:
        assert unguarded.list_topics() == []

    asyncio.run(allowed())
    unguarded.close()


# --------------------------------------------------------------------------- AsyncMetadata


def test_calls_run_off_the_loop(store: MetadataStore) -> None:
    """With the guard on, every AsyncMetadata call works: none ran on the loop's thread."""

    async def go() -> None:
        meta = AsyncMetadata(store)
        topic = await meta.create_topic("events", 3, {"retention.ms": "1000"})
        assert await meta.get_topic("events") == topic
        assert await meta.get_topic("") is None
        assert await meta.get_topic_by_uuid(topic.uuid) == topic
        assert [t.name for t in await meta.list_topics()] == ["events"]
        assert await meta.topics_by_id([topic.topic_id, topic.topic_id, 999]) == {
            topic.topic_id: topic
        }
        await meta.add_partitions("events", 4)
        await meta.update_topic_config("events", {})
        assert len(await meta.list_partitions(topic.topic_id)) == 4
        assert await meta.commit_offsets("g", [(topic.topic_id, 1, 7, "m")]) == [True]
        assert await meta.get_offset("g", topic.topic_id, 1) == (7, "m")
        assert list(await meta.group_offsets("g", {topic.topic_id: [0, 1]})) == [
            (topic.topic_id, 1)
        ]
        assert await meta.group_offsets("g", {topic.topic_id: [0]}) == {}
        assert await meta.list_offset_groups() == ["g"]
        assert await meta.delete_group_offsets("g") == 1
        pid, epoch = await meta.allocate_producer_id()
        assert pid >= 0 and epoch == 0
        block = CommitBlock(topic.topic_id, 0, 0, 10, 5, [BatchRef(2)])
        await meta.commit_segment("segments/old", 10, [block])
        moves = await meta.enforce_retention(2000)  # retention.ms was reset: 7 days
        assert moves == []
        await meta.delete_topic("events")  # marks segments/old dead
        assert await meta.mark_unreferenced_segments(3000) == 0
        assert [d.key for d in await meta.dead_segments(2**62)] == ["segments/old"]
        assert await meta.known_segments(["segments/old", "segments/x"]) == {"segments/old"}
        assert await meta.forget_segments(["segments/old"]) == 1
        with pytest.raises(UnknownTopicError):  # the store's errors, in the awaiting task
            await meta.delete_topic("events")
        await meta.close()

    asyncio.run(go())


def test_topic_states_answers_a_whole_request_in_one_call(store: MetadataStore) -> None:
    a = store.create_topic("a", 3)
    b = store.create_topic("b", 1)
    block = CommitBlock(a.topic_id, 1, 0, 10, 0, [BatchRef(5)])
    store.commit_segment("seg-1", 10, [block])
    store.set_log_start_offset(a.topic_id, 1, 2)

    async def go() -> None:
        meta = AsyncMetadata(store)
        got = await meta.topic_states(
            [
                TopicLookup("a", None, [1, 0, 1, 7, -1]),  # duplicates and out of range
                TopicLookup("missing"),
                TopicLookup(None, b.uuid, [0]),  # by Kafka topic id
                TopicLookup("missing", a.uuid),  # the name wins; then the id
                TopicLookup(None, bytes(16), [0]),  # the null id names nothing
            ]
        )
        first, missing, by_uuid, fallback, null = got
        assert first is not None and first.topic == a
        assert sorted(first.partitions) == [0, 1]
        assert first.partitions[1].high_watermark == 5
        assert first.partitions[1].log_start_offset == 2
        assert missing is None and null is None
        assert by_uuid is not None and by_uuid.topic == b and list(by_uuid.partitions) == [0]
        assert fallback is not None and fallback.topic == a and fallback.partitions == {}
        await meta.close()

    asyncio.run(go())


def test_read_plans_give_states_and_first_blocks(store: MetadataStore) -> None:
    topic = store.create_topic("events", 2)
    for i in range(3):
        block = CommitBlock(topic.topic_id, 0, 0, 10, 0, [BatchRef(2)])
        store.commit_segment(f"seg-{i}", 10, [block])

    async def go() -> None:
        meta = AsyncMetadata(store)
        at_start, from_three, at_end, empty, unknown = await meta.read_plans(
            [
                (topic.topic_id, 0, 0),
                (topic.topic_id, 0, 3),
                (topic.topic_id, 0, 6),
                (topic.topic_id, 1, 0),
                (topic.topic_id + 1, 0, 0),
            ],
            limit=2,
        )
        assert [b.base_offset for b in at_start.blocks] == [0, 2]
        assert [b.base_offset for b in from_three.blocks] == [2, 4]
        assert at_start.state is not None and at_start.state.high_watermark == 6
        assert at_end.blocks == [] and at_end.state is not None
        assert empty.blocks == [] and empty.state is not None
        assert unknown == ReadPlan(None, [])
        assert (await meta.find_blocks(topic.topic_id, 0, 5))[0].base_offset == 4
        await meta.close()

    asyncio.run(go())


def test_a_read_never_waits_behind_a_write_waiting_for_the_lock(tmp_path: pathlib.Path) -> None:
    """A write stuck on another writer's lock holds its thread; reads still answer at once."""
    path = tmp_path / "meta.sqlite"
    store = MetadataStore(path, busy_timeout_ms=30_000, forbid_loop_calls=True)
    store.create_topic("events", 1)
    other = apsw.Connection(str(path))
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    released = threading.Event()

    async def go() -> None:
        meta = AsyncMetadata(store)
        write = asyncio.ensure_future(meta.create_topic("new", 1))
        # Bounded poll until the write holds the store's write side, waiting for the lock.
        for _ in range(1000):
            if store._lock.locked():
                break
            await asyncio.sleep(0.005)
        assert store._lock.locked()
        for _ in range(20):
            topic = await asyncio.wait_for(meta.get_topic("events"), timeout=5)
            assert topic is not None
        assert await asyncio.wait_for(meta.get_topic("new"), timeout=5) is None
        assert not write.done()
        other.execute("ROLLBACK")
        released.set()
        created = await asyncio.wait_for(write, timeout=10)
        assert created.name == "new"
        await meta.close()

    try:
        asyncio.run(go())
    finally:
        if not released.is_set():
            other.execute("ROLLBACK")
        other.close()


def test_open_and_close_run_off_the_loop(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DEBUG_LOOP_CALLS_ENV, "1")

    async def go() -> None:
        meta = await AsyncMetadata.open(tmp_path / "meta.sqlite", synchronous="NORMAL")
        await meta.create_topic("events", 1)
        await meta.close()
        with pytest.raises(RuntimeError):  # the pools are shut down
            await meta.get_topic("events")

    asyncio.run(go())


def test_the_setting_turns_the_guard_on(tmp_path: pathlib.Path) -> None:
    """Processes pass settings.debug_loop_calls (STREAMHOUSE_DEBUG_LOOP_CALLS, any boolean
    spelling) when they open the store."""
    from streamhouse.config import load_settings

    settings = load_settings({DEBUG_LOOP_CALLS_ENV: "true"})
    assert settings.debug_loop_calls is True
    assert load_settings({}).debug_loop_calls is False

    async def go() -> None:
        meta = await AsyncMetadata.open(
            tmp_path / "meta.sqlite", forbid_loop_calls=settings.debug_loop_calls
        )
        with pytest.raises(LoopCallError, match=r"MetadataStore\.list_topics"):
            meta.store.list_topics()
        assert await meta.list_topics() == []
        await meta.close()

    asyncio.run(go())
