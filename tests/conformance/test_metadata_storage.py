"""Conformance suite for ``storage_report`` (what the object store holds, per topic and in
total, as the metadata sees it), on both backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from metadata import (
    BatchRef,
    CommitBlock,
    MetadataStore,
    StorageReport,
    TopicStorage,
)
from metadata.async_store import AsyncMetadata
from metadata.postgres import PostgresMetadataStore

Store = MetadataStore | PostgresMetadataStore
Opener = Callable[..., Store]
HOUR_MS = 3_600_000


def _block(topic_id: int, partition: int, at: int, size: int, records: int, ts: int) -> CommitBlock:
    return CommitBlock(topic_id, partition, at, size, ts, [BatchRef(records)])


def test_storage_report_per_topic_and_in_total(store: Store) -> None:
    """Two topics sharing an object, a compacted topic with a clean offset, an empty topic,
    a live object with no block, a dead object: every figure of the report."""
    deleted = store.create_topic("deleted", 2)
    compacted = store.create_topic("compacted", 1, {"cleanup.policy": "compact,delete"})
    empty = store.create_topic("empty", 3)
    d, c = deleted.topic_id, compacted.topic_id
    # "shared": 80 bytes, 20 live for `deleted` and 60 for `compacted` -> shares 20 and 60.
    store.commit_segment(
        "segments/shared", 80, [_block(d, 0, 0, 20, 2, 500), _block(c, 0, 20, 60, 3, 900)]
    )
    store.commit_segment("segments/doomed", 7, [_block(d, 1, 0, 7, 2, 100)])
    # "mixed": 100 bytes, 40 live for `deleted` (p0, p1) and 10 for `compacted`: 80 and 20.
    store.commit_segment(
        "segments/mixed",
        100,
        [_block(d, 0, 0, 30, 4, 700), _block(d, 1, 30, 10, 1, 300), _block(c, 0, 40, 10, 5, 950)],
    )
    store.commit_segment("segments/nothing", 5, [])  # live until a pass marks it
    store.set_log_start_offset(d, 1, 2)  # `doomed` (offsets 0..1 of p1) dies
    store.set_clean_offset(c, 0, 3, 1)  # the first compacted block [0,3) is clean
    now = int(time.time() * 1000) + 1000
    report = store.storage_report(now, 50)
    assert report.topics == [
        TopicStorage(
            name="compacted",
            topic_id=c,
            partitions=1,
            objects=2,
            bytes_live=70,
            bytes_stored=80,
            records=8,
            oldest_offset=0,
            oldest_timestamp_ms=900,
            cleanup_policy="compact,delete",
            dirty_bytes=10,
            bytes_raw=70,  # no raw lengths given: the stored bytes count
        ),
        TopicStorage(
            name="deleted",
            topic_id=d,
            partitions=2,
            objects=2,
            bytes_live=60,
            bytes_stored=100,
            records=7,
            oldest_offset=0,  # p0's; p1 starts at 2
            oldest_timestamp_ms=300,
            cleanup_policy="delete",
            dirty_bytes=0,
            bytes_raw=60,
        ),
        TopicStorage(
            name="empty",
            topic_id=empty.topic_id,
            partitions=3,
            objects=0,
            bytes_live=0,
            bytes_stored=0,
            records=0,
            oldest_offset=0,
            oldest_timestamp_ms=-1,
            cleanup_policy="delete",
            dirty_bytes=0,
        ),
    ]
    assert report == StorageReport(
        topics=report.topics,
        objects=3,
        bytes_stored=185,
        bytes_live=130,
        dead_objects=1,
        dead_bytes=7,
        small_objects=1,
        small_bytes=5,
        segments_created_last_hour=4,
        bytes_created_last_hour=192,
        bytes_raw=130,
    )
    # The threshold and the hour follow the arguments.
    assert store.storage_report(now, 81).small_objects == 2
    assert store.storage_report(now, 0).small_objects == 0
    later = store.storage_report(now + 2 * HOUR_MS, 50)
    assert (later.segments_created_last_hour, later.bytes_created_last_hour) == (0, 0)
    # A compacted topic never compacted: everything is dirty.
    store.update_topic_config("deleted", {"cleanup.policy": "compact"})
    by_name = {t.name: t for t in store.storage_report(now, 50).topics}
    assert (by_name["deleted"].cleanup_policy, by_name["deleted"].dirty_bytes) == ("compact", 60)


def test_storage_report_follows_retention_rewrites_and_deletes(store: Store) -> None:
    t = store.create_topic("moving", 1, {"retention.ms": "1000"})
    for i, ts in enumerate((10, 20, 5000)):
        store.commit_segment(f"segments/m{i}", 10, [_block(t.topic_id, 0, 0, 10, 2, ts)])
    now = int(time.time() * 1000) + 1000
    assert store.storage_report(now, 0).topics[0].oldest_timestamp_ms == 10
    store.enforce_retention(3000)  # cut-off 2000: the first two go
    report = store.storage_report(now, 0)
    (topic,) = report.topics
    assert (topic.oldest_offset, topic.oldest_timestamp_ms, topic.objects) == (4, 5000, 1)
    assert (report.objects, report.dead_objects, report.dead_bytes) == (1, 2, 20)
    store.delete_topic("moving")
    report = store.storage_report(now, 0)
    assert report.topics == []
    assert (report.objects, report.bytes_live, report.dead_objects) == (0, 0, 3)
    store.forget_segments(["segments/m0", "segments/m1", "segments/m2"])
    empty = store.storage_report(now, 0)
    assert (empty.objects, empty.bytes_stored, empty.dead_objects, empty.dead_bytes) == (0, 0, 0, 0)
    assert empty.segments_created_last_hour == 0


def test_storage_report_refuses_bad_arguments(store: Store) -> None:
    with pytest.raises(ValueError, match="now_ms"):
        store.storage_report(-1, 0)
    with pytest.raises(ValueError, match="small_object_bytes"):
        store.storage_report(0, -1)


def test_async_metadata_wraps_the_storage_report(open_store: Opener) -> None:
    store = open_store(forbid_loop_calls=True)

    async def main() -> None:
        meta = AsyncMetadata(store)
        t = await meta.create_topic("async-storage", 1)
        await meta.commit_segment("segments/s", 12, [_block(t.topic_id, 0, 0, 12, 3, 0)])
        report = await meta.storage_report(int(time.time() * 1000) + 1000, 100)
        assert (report.objects, report.small_objects, report.topics[0].records) == (1, 1, 3)
        await meta.close()

    asyncio.run(main())
