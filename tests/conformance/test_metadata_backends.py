"""Conformance suite: every behaviour of the metadata store, against both backends.

Each test gets ``store`` (and ``open_store`` for more stores on the same metadata) once for the
SQLite backend (:class:`metadata.store.MetadataStore` on a file under tmp_path) and once for the
PostgreSQL backend (:class:`metadata.postgres.PostgresMetadataStore` on a fresh database of the
session's throwaway PostgreSQL, see tests/conftest.py). What only one backend has (the SQLite
file and its locks) is tested in tests/unit/test_metadata_store.py; PostgreSQL's own (its
migrations, row locks, lost connections, many agents at once) at the end of this file.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from metadata import (
    INVALID_PRODUCER_EPOCH,
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    UNKNOWN_TOPIC_OR_PARTITION,
    AgentUnknownError,
    BatchRef,
    BatchResult,
    CommitBlock,
    DuplicateSegmentError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    MetadataError,
    MetadataStore,
    MetadataUnavailableError,
    OffsetOutOfRangeError,
    SchemaTooNewError,
    TopicExistsError,
    UnknownTopicError,
    postgres_migrations,
)
from metadata.async_store import AsyncMetadata, TopicLookup
from metadata.commit_notice import (
    COMMIT_CHANNEL,
    MAX_PAYLOAD_BYTES,
    commit_notification,
    parse_commit_notification,
)
from metadata.interface import MetadataBackend
from metadata.interface import open_store as open_metadata
from metadata.postgres import PostgresMetadataStore
from metadata.store import LoopCallError
from streamhouse.errors import ErrorCode
from streamhouse.testing import free_port
from tests.conformance.conftest import Opener, Store

INT32_MAX = 2**31 - 1


def test_both_backends_implement_the_interface(store: Store) -> None:
    """Every call of metadata.interface.MetadataBackend exists on the backend with the same
    parameters (names, kinds, defaults), and nothing public is left out of the interface."""
    assert isinstance(store, MetadataBackend)
    names = {n for n, v in vars(MetadataBackend).items() if callable(v) and not n.startswith("_")}
    for name in names:
        want = inspect.signature(getattr(MetadataBackend, name)).parameters
        got = inspect.signature(getattr(type(store), name)).parameters
        assert [(p.name, p.kind, p.default) for p in got.values()] == [
            (p.name, p.kind, p.default) for p in want.values()
        ], name
    public = {n for n in dir(type(store)) if not n.startswith("_") and callable(getattr(store, n))}
    assert public == names


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_open_store_and_async_metadata_pick_the_backend_from_the_target(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A postgresql:// URL opens the PostgreSQL backend, anything else the SQLite file; the
    processes' AsyncMetadata works the same over both, loop guard included."""
    if backend == "sqlite":
        target, kind = str(tmp_path / "meta.sqlite"), MetadataStore
    else:
        target, kind = request.getfixturevalue("postgres_dsn"), PostgresMetadataStore
    s = open_metadata(target)
    try:
        assert type(s) is kind
        t = s.create_topic("t", 2)
    finally:
        s.close()

    async def main() -> None:
        meta = await AsyncMetadata.open(target, forbid_loop_calls=True)
        try:
            assert type(meta.store) is kind
            res = await meta.commit_segment("s1", 10, [block(t.topic_id, 1, [BatchRef(3)])])
            assert res == [[BatchResult(0)]]
            [state] = await meta.topic_states([TopicLookup("t", None, [1])])
            assert state is not None and state.partitions[1].high_watermark == 3
            [plan] = await meta.read_plans([(t.topic_id, 1, 0)], 8)
            assert [b.segment_key for b in plan.blocks] == ["s1"]
            with pytest.raises(LoopCallError, match="event loop"):
                meta.store.get_topic("t")
        finally:
            await meta.close()

    asyncio.run(main())


def block(
    topic_id: int, partition: int, batches: list[BatchRef], byte_offset: int = 0, ts: int = 1000
) -> CommitBlock:
    return CommitBlock(
        topic_id=topic_id,
        partition=partition,
        byte_offset=byte_offset,
        byte_length=100 * len(batches),
        max_timestamp=ts,
        batches=batches,
    )


def idem(count: int, pid: int, epoch: int, seq: int) -> BatchRef:
    return BatchRef(record_count=count, producer_id=pid, producer_epoch=epoch, base_sequence=seq)


def offsets(results: list[BatchResult]) -> list[int]:
    return [r.base_offset for r in results]


# --------------------------------------------------------------------------- topics


def test_topic_crud(store: Store) -> None:
    t = store.create_topic("orders", 3, {"cleanup.policy": "delete"})
    assert t.name == "orders" and t.partitions == 3 and len(t.uuid) == 16
    assert t.config == {"cleanup.policy": "delete"}
    assert store.get_topic("orders") == t
    assert store.get_topic_by_id(t.topic_id) == t
    assert store.get_topic_by_uuid(t.uuid) == t
    assert store.get_topic("nope") is None
    assert [p.partition for p in store.list_partitions(t.topic_id)] == [0, 1, 2]
    assert all(
        p.log_start_offset == 0 and p.high_watermark == 0 for p in store.list_partitions(t.topic_id)
    )

    with pytest.raises(TopicExistsError):
        store.create_topic("orders", 1)

    u = store.create_topic("alpha", 1)
    assert u.topic_id != t.topic_id and u.uuid != t.uuid
    assert [x.name for x in store.list_topics()] == ["alpha", "orders"]

    t2 = store.add_partitions("orders", 5)
    assert t2.partitions == 5 and store.get_topic("orders").partitions == 5
    assert len(store.list_partitions(t.topic_id)) == 5
    with pytest.raises(InvalidTopicError):
        store.add_partitions("orders", 5)
    with pytest.raises(InvalidPartitionsError):
        store.add_partitions("orders", 2)
    with pytest.raises(UnknownTopicError):
        store.add_partitions("nope", 9)

    t3 = store.update_topic_config("orders", {"retention.ms": "5"})
    assert t3.config == {"retention.ms": "5"}
    assert store.get_topic("orders").config == {"retention.ms": "5"}
    with pytest.raises(UnknownTopicError):
        store.update_topic_config("nope", {})

    deleted = store.delete_topic("orders")
    assert deleted.topic_id == t.topic_id
    assert store.get_topic("orders") is None
    assert store.get_topic_by_id(t.topic_id) is None
    assert store.list_partitions(t.topic_id) == []
    assert [d.topic_id for d in store.list_deleted_topics()] == [t.topic_id]
    with pytest.raises(UnknownTopicError):
        store.delete_topic("orders")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        (".", '"."'),
        ("..", '".."'),
        ("a" * 250, "250 characters"),
        ("has space", "character"),
        ("slash/name", "character"),
        ("ünïcode", "character"),
        ("trailing\n", "character"),
    ],
)
def test_bad_topic_names(store: Store, name: str, why: str) -> None:
    with pytest.raises(InvalidTopicError, match=why):
        store.create_topic(name, 1)
    assert store.list_topics() == []


def test_good_topic_names(store: Store) -> None:
    for name in ["a" * 249, "a.b_c-D9", "...", "_", "-"]:
        assert store.create_topic(name, 1).name == name


@pytest.mark.parametrize("partitions", [0, -1, 10_001])
def test_bad_partition_counts(store: Store, partitions: int) -> None:
    with pytest.raises(InvalidTopicError, match="partition count"):
        store.create_topic("t", partitions)


def test_bad_config(store: Store) -> None:
    with pytest.raises(InvalidConfigError):
        store.create_topic("t", 1, {"retention.ms": 5})  # type: ignore[dict-item]
    assert store.get_topic("t") is None


def test_name_reuse_after_delete_gets_new_id_and_no_old_data(store: Store) -> None:
    old = store.create_topic("t", 1)
    pid, epoch = store.allocate_producer_id()
    store.commit_segment("s1", 10, [block(old.topic_id, 0, [BatchRef(5), idem(1, pid, epoch, 0)])])
    store.commit_offset("g", old.topic_id, 0, 5, "")
    store.delete_topic("t")

    new = store.create_topic("t", 1)
    assert new.topic_id != old.topic_id and new.topic_id > old.topic_id
    assert new.uuid != old.uuid
    assert store.get_partition(new.topic_id, 0).high_watermark == 0
    assert store.find_blocks(new.topic_id, 0, 0) == []
    assert store.find_blocks(old.topic_id, 0, 0) == []
    assert store.get_offset("g", new.topic_id, 0) is None
    assert store.get_offset("g", old.topic_id, 0) is None
    assert store.list_group_offsets("g") == []
    # Producer state went with the old topic: the same producer starts fresh at offset 0.
    res = store.commit_segment("s2", 10, [block(new.topic_id, 0, [idem(1, pid, epoch, 1)])])
    assert res == [[BatchResult(0)]]


def test_topic_ids_never_reused_even_for_highest_id(store: Store) -> None:
    a = store.create_topic("a", 1)
    store.delete_topic("a")
    b = store.create_topic("b", 1)
    assert b.topic_id > a.topic_id


# --------------------------------------------------------------------------- commit_segment


def test_offsets_contiguous_across_blocks_and_segments(store: Store) -> None:
    t = store.create_topic("t", 2)
    tid = t.topic_id
    r1 = store.commit_segment(
        "s1",
        1000,
        [
            block(tid, 0, [BatchRef(3), BatchRef(2)]),
            block(tid, 1, [BatchRef(1)]),
            block(tid, 0, [BatchRef(4)], byte_offset=500),
        ],
    )
    assert [offsets(r) for r in r1] == [[0, 3], [0], [5]]
    r2 = store.commit_segment(
        "s2", 10, [block(tid, 1, [BatchRef(2)]), block(tid, 0, [BatchRef(1)])]
    )
    assert [offsets(r) for r in r2] == [[1], [9]]
    assert store.get_partition(tid, 0).high_watermark == 10
    assert store.get_partition(tid, 1).high_watermark == 3
    assert all(r.error is None for rs in r1 + r2 for r in rs)

    blocks = store.find_blocks(tid, 0, 0)
    assert [(b.segment_key, b.base_offset, b.end_offset, b.byte_offset) for b in blocks] == [
        ("s1", 0, 5, 0),
        ("s1", 5, 9, 500),
        ("s2", 9, 10, 0),
    ]
    assert [b.record_count for b in blocks] == [5, 4, 1]


def test_commit_segments_is_sequential_commits_in_one_transaction(store: Store) -> None:
    """Several segments at once: offsets, producer state and duplicates carry from one to the
    next as if committed one by one."""
    t = store.create_topic("t", 2)
    tid = t.topic_id
    pid, epoch = store.allocate_producer_id()
    res = store.commit_segments(
        [
            ("s1", 10, [block(tid, 0, [BatchRef(3)]), block(tid, 1, [idem(2, pid, epoch, 0)])]),
            ("s2", 10, [block(tid, 0, [BatchRef(4)]), block(tid, 1, [idem(2, pid, epoch, 0)])]),
            ("s3", 10, [block(tid, 1, [idem(1, pid, epoch, 2)]), block(tid + 9, 0, [BatchRef(1)])]),
            ("s4", 0, []),
        ]
    )
    assert res == [
        [[BatchResult(0)], [BatchResult(0)]],
        [[BatchResult(3)], [BatchResult(0, duplicate=True)]],
        [[BatchResult(2)], [BatchResult(-1, UNKNOWN_TOPIC_OR_PARTITION)]],
        [],
    ]
    assert store.get_partition(tid, 0).high_watermark == 7  # type: ignore[union-attr]
    assert store.get_partition(tid, 1).high_watermark == 3  # type: ignore[union-attr]
    assert [(b.segment_key, b.base_offset, b.end_offset) for b in store.find_blocks(tid, 0, 0)] == [
        ("s1", 0, 3),
        ("s2", 3, 7),
    ]
    assert [b.segment_key for b in store.find_blocks(tid, 1, 0)] == ["s1", "s3"]
    assert store.commit_segments([]) == []


def test_commit_segments_is_all_or_nothing(store: Store) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    store.commit_segment("old", 1, [block(tid, 0, [BatchRef(1)])])
    with pytest.raises(DuplicateSegmentError, match="'old'"):
        store.commit_segments(
            [("new", 1, [block(tid, 0, [BatchRef(5)])]), ("old", 1, [block(tid, 0, [BatchRef(1)])])]
        )
    with pytest.raises(ValueError, match="more than once"):
        store.commit_segments([("a", 1, []), ("a", 1, [])])
    with pytest.raises(ValueError, match="record_count"):
        store.commit_segments(
            [("new", 1, [block(tid, 0, [BatchRef(5)])]), ("bad", 1, [block(tid, 0, [BatchRef(0)])])]
        )
    assert store.get_partition(tid, 0).high_watermark == 1  # type: ignore[union-attr]
    assert [b.segment_key for b in store.find_blocks(tid, 0, 0)] == ["old"]
    assert store.commit_segments([("new", 1, [block(tid, 0, [BatchRef(5)])])]) == [
        [[BatchResult(1)]]
    ]


def test_commit_to_deleted_topic_is_unknown(store: Store) -> None:
    t = store.create_topic("t", 1)
    keep = store.create_topic("keep", 1)
    store.delete_topic("t")
    res = store.commit_segment(
        "s1",
        10,
        [
            block(t.topic_id, 0, [BatchRef(1), BatchRef(2)]),
            block(keep.topic_id, 0, [BatchRef(3)]),
            block(keep.topic_id, 7, [BatchRef(3)]),  # partition that never existed
        ],
    )
    assert res == [
        [BatchResult(-1, UNKNOWN_TOPIC_OR_PARTITION)] * 2,
        [BatchResult(0)],
        [BatchResult(-1, UNKNOWN_TOPIC_OR_PARTITION)],
    ]
    assert store.find_blocks(t.topic_id, 0, 0) == []
    assert store.find_blocks(keep.topic_id, 7, 0) == []
    assert len(store.find_blocks(keep.topic_id, 0, 0)) == 1


def test_duplicate_segment_key_is_rejected_without_changes(store: Store) -> None:
    t = store.create_topic("t", 1)
    store.commit_segment("s1", 10, [block(t.topic_id, 0, [BatchRef(1)])])
    with pytest.raises(DuplicateSegmentError):
        store.commit_segment("s1", 10, [block(t.topic_id, 0, [BatchRef(1)])])
    assert store.get_partition(t.topic_id, 0).high_watermark == 1


def test_invalid_batch_rolls_back_whole_commit(store: Store) -> None:
    t = store.create_topic("t", 1)
    with pytest.raises(ValueError):
        store.commit_segment(
            "s1", 10, [block(t.topic_id, 0, [BatchRef(1)]), block(t.topic_id, 0, [BatchRef(0)])]
        )
    assert store.get_partition(t.topic_id, 0).high_watermark == 0
    assert store.find_blocks(t.topic_id, 0, 0) == []
    # The key was not recorded either, so the uploader may retry it.
    assert store.commit_segment("s1", 10, [block(t.topic_id, 0, [BatchRef(1)])]) == [
        [BatchResult(0)]
    ]


def test_empty_segment_is_recorded(store: Store) -> None:
    assert store.commit_segment("empty", 0, []) == []
    with pytest.raises(DuplicateSegmentError):
        store.commit_segment("empty", 0, [])


# --------------------------------------------------------------------------- idempotence


def test_duplicate_of_committed_batch_returns_original_offset(store: Store) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    pid, epoch = store.allocate_producer_id()
    r1 = store.commit_segment(
        "s1", 10, [block(tid, 0, [BatchRef(2), idem(3, pid, epoch, 0), idem(2, pid, epoch, 3)])]
    )
    assert offsets(r1[0]) == [0, 2, 5]
    # Retry of both batches (e.g. lost ack) plus a new one.
    r2 = store.commit_segment(
        "s2",
        10,
        [block(tid, 0, [idem(3, pid, epoch, 0), idem(2, pid, epoch, 3), idem(1, pid, epoch, 5)])],
    )
    assert r2 == [[BatchResult(2, duplicate=True), BatchResult(5, duplicate=True), BatchResult(7)]]
    assert store.get_partition(tid, 0).high_watermark == 8
    b = store.find_blocks(tid, 0, 7)
    assert len(b) == 1
    assert (b[0].segment_key, b[0].base_offset, b[0].end_offset) == ("s2", 7, 8)
    assert b[0].skipped_batches == (0, 1)
    assert store.find_blocks(tid, 0, 0)[0].skipped_batches == ()


def test_duplicate_within_same_segment(store: Store) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    res = store.commit_segment(
        "s1",
        10,
        [
            block(tid, 0, [idem(2, 9, 0, 0), idem(2, 9, 0, 0)]),
            block(tid, 0, [idem(2, 9, 0, 2), idem(2, 9, 0, 0)]),
        ],
    )
    assert res == [
        [BatchResult(0), BatchResult(0, duplicate=True)],
        [BatchResult(2), BatchResult(0, duplicate=True)],
    ]
    blocks = store.find_blocks(tid, 0, 0)
    assert [(b.base_offset, b.end_offset, b.skipped_batches) for b in blocks] == [
        (0, 2, (1,)),
        (2, 4, (1,)),
    ]


def test_block_with_only_duplicates_is_not_indexed(store: Store) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    store.commit_segment("s1", 10, [block(tid, 0, [idem(2, 9, 0, 0)])])
    res = store.commit_segment("s2", 10, [block(tid, 0, [idem(2, 9, 0, 0)])])
    assert res == [[BatchResult(0, duplicate=True)]]
    assert [b.segment_key for b in store.find_blocks(tid, 0, 0)] == ["s1"]
    assert store.get_partition(tid, 0).high_watermark == 2


def test_only_last_five_batches_are_remembered(store: Store) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    batches = [idem(1, 4, 0, seq) for seq in range(6)]
    store.commit_segment("s1", 10, [block(tid, 0, batches)])
    # seq 1..5 are within the window -> duplicates; seq 0 fell out -> out of order.
    res = store.commit_segment("s2", 10, [block(tid, 0, [idem(1, 4, 0, 5), idem(1, 4, 0, 1)])])
    assert res == [[BatchResult(5, duplicate=True), BatchResult(1, duplicate=True)]]
    res = store.commit_segment("s3", 10, [block(tid, 0, [idem(1, 4, 0, 0)])])
    assert res == [[BatchResult(-1, OUT_OF_ORDER_SEQUENCE_NUMBER)]]


def test_sequence_gap_is_out_of_order(store: Store) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    store.commit_segment("s1", 10, [block(tid, 0, [idem(2, 1, 0, 0)])])
    res = store.commit_segment(
        "s2", 10, [block(tid, 0, [idem(1, 1, 0, 5), BatchRef(1), idem(1, 1, 0, 2)])]
    )
    assert res == [[BatchResult(-1, OUT_OF_ORDER_SEQUENCE_NUMBER), BatchResult(2), BatchResult(3)]]
    [b] = store.find_blocks(tid, 0, 2)
    assert (b.base_offset, b.end_offset, b.skipped_batches) == (2, 4, (0,))


def test_old_epoch_is_fenced_and_new_epoch_must_start_at_zero(store: Store) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    store.commit_segment("s1", 10, [block(tid, 0, [idem(1, 3, 1, 0), idem(1, 3, 1, 1)])])
    res = store.commit_segment("s2", 10, [block(tid, 0, [idem(1, 3, 0, 2)])])
    assert res == [[BatchResult(-1, INVALID_PRODUCER_EPOCH)]]
    res = store.commit_segment("s3", 10, [block(tid, 0, [idem(1, 3, 2, 2)])])
    assert res == [[BatchResult(-1, OUT_OF_ORDER_SEQUENCE_NUMBER)]]
    res = store.commit_segment(
        "s4", 10, [block(tid, 0, [idem(1, 3, 2, 0), idem(1, 3, 1, 2), idem(1, 3, 2, 1)])]
    )
    assert res == [[BatchResult(2), BatchResult(-1, INVALID_PRODUCER_EPOCH), BatchResult(3)]]
    # The epoch bump forgot the old epoch's batches: a retry of an epoch-1 batch is fenced.
    res = store.commit_segment("s5", 10, [block(tid, 0, [idem(1, 3, 1, 0)])])
    assert res == [[BatchResult(-1, INVALID_PRODUCER_EPOCH)]]
    assert store.get_partition(tid, 0).high_watermark == 4


def test_unknown_producer_accepts_any_sequence(store: Store) -> None:
    # Kafka accepts any sequence from a producer without state (e.g. after state expiry).
    t = store.create_topic("t", 1)
    res = store.commit_segment("s1", 10, [block(t.topic_id, 0, [idem(1, 8, 0, 41)])])
    assert res == [[BatchResult(0)]]
    res = store.commit_segment("s2", 10, [block(t.topic_id, 0, [idem(1, 8, 0, 43)])])
    assert res == [[BatchResult(-1, OUT_OF_ORDER_SEQUENCE_NUMBER)]]


def test_negative_epoch_or_sequence_with_producer_id_is_rejected(store: Store) -> None:
    t = store.create_topic("t", 1)
    res = store.commit_segment(
        "s1", 10, [block(t.topic_id, 0, [idem(1, 8, -1, 0), idem(1, 8, 0, -1)])]
    )
    assert res == [
        [BatchResult(-1, INVALID_PRODUCER_EPOCH), BatchResult(-1, OUT_OF_ORDER_SEQUENCE_NUMBER)]
    ]
    assert store.get_partition(t.topic_id, 0).high_watermark == 0


def test_int32_sequence_wraps_to_zero(store: Store) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    res = store.commit_segment(
        "s1",
        10,
        [
            block(
                tid,
                0,
                [
                    idem(1, 2, 0, 0),  # establishes state at epoch 0
                    idem(INT32_MAX - 3, 2, 0, 1),  # last seq = INT32_MAX - 3
                    idem(5, 2, 0, INT32_MAX - 2),  # MAX-2, MAX-1, MAX, 0, 1: last seq = 1
                    idem(1, 2, 0, 2),
                ],
            )
        ],
    )
    base_wrap = 1 + INT32_MAX - 3
    assert offsets(res[0]) == [0, 1, base_wrap, base_wrap + 5]
    # The wrapping batch is recognised as a duplicate by (first, last) = (MAX-2, 1).
    res = store.commit_segment("s2", 10, [block(tid, 0, [idem(5, 2, 0, INT32_MAX - 2)])])
    assert res == [[BatchResult(base_wrap, duplicate=True)]]
    res = store.commit_segment("s3", 10, [block(tid, 0, [idem(1, 2, 0, 3)])])
    assert res == [[BatchResult(base_wrap + 6)]]


def test_int32_successor_of_max_is_zero(store: Store) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    store.commit_segment("s1", 10, [block(tid, 0, [idem(1, 2, 0, INT32_MAX)])])
    res = store.commit_segment("s2", 10, [block(tid, 0, [idem(1, 2, 0, 0)])])
    assert res == [[BatchResult(1)]]


def test_producer_state_is_per_partition(store: Store) -> None:
    t = store.create_topic("t", 2)
    tid = t.topic_id
    res = store.commit_segment(
        "s1", 10, [block(tid, 0, [idem(1, 5, 0, 0)]), block(tid, 1, [idem(1, 5, 0, 0)])]
    )
    assert res == [[BatchResult(0)], [BatchResult(0)]]


# --------------------------------------------------------------------------- find_blocks


def test_find_blocks(store: Store) -> None:
    t = store.create_topic("t", 2)
    tid = t.topic_id
    for i in range(10):
        store.commit_segment(
            f"s{i}",
            1000,
            [
                block(tid, 0, [BatchRef(5), BatchRef(5)], byte_offset=0, ts=100 + i),
                block(tid, 1, [BatchRef(1)], byte_offset=700),
            ],
        )
    found = store.find_blocks(tid, 0, 0)
    assert len(found) == 8  # default limit
    assert [b.base_offset for b in found] == list(range(0, 80, 10))
    assert found[0].segment_key == "s0" and found[0].max_timestamp == 100
    assert found[0].byte_length == 200

    # An offset inside a block returns that block first; its end is exclusive.
    assert [b.segment_key for b in store.find_blocks(tid, 0, 37, limit=2)] == ["s3", "s4"]
    assert store.find_blocks(tid, 0, 39, limit=1)[0].segment_key == "s3"
    assert store.find_blocks(tid, 0, 40, limit=1)[0].segment_key == "s4"
    assert store.find_blocks(tid, 0, 99, limit=5)[0].segment_key == "s9"
    assert store.find_blocks(tid, 0, 100) == []
    assert [b.byte_offset for b in store.find_blocks(tid, 1, 3, limit=3)] == [700] * 3
    assert store.find_blocks(tid, 5, 0) == []
    assert store.find_blocks(999, 0, 0) == []


def test_set_log_start_offset(store: Store) -> None:
    t = store.create_topic("t", 1)
    tid = t.topic_id
    store.commit_segment("s1", 10, [block(tid, 0, [BatchRef(10)])])
    assert store.set_log_start_offset(tid, 0, 4).log_start_offset == 4
    assert store.set_log_start_offset(tid, 0, 2).log_start_offset == 4  # never backwards
    assert store.set_log_start_offset(tid, 0, 10).log_start_offset == 10
    assert store.get_partition(tid, 0).log_start_offset == 10
    with pytest.raises(OffsetOutOfRangeError):
        store.set_log_start_offset(tid, 0, 11)
    with pytest.raises(UnknownTopicError):
        store.set_log_start_offset(tid, 3, 0)


# --------------------------------------------------------------------------- group offsets


def test_group_offsets(store: Store) -> None:
    t = store.create_topic("t", 3)
    tid = t.topic_id
    assert store.get_offset("g1", tid, 0) is None
    store.commit_offset("g1", tid, 0, 10, "first")
    store.commit_offset("g1", tid, 2, 7, "")
    store.commit_offset("g2", tid, 0, 99, "other group")
    store.commit_offset("g1", tid, 0, 12, "second")
    assert store.get_offset("g1", tid, 0) == (12, "second")
    assert store.get_offset("g1", tid, 2) == (7, "")
    assert store.get_offset("g1", tid, 1) is None
    assert store.get_offset("g3", tid, 0) is None
    listed = store.list_group_offsets("g1")
    assert [(o.topic_id, o.partition, o.offset, o.metadata) for o in listed] == [
        (tid, 0, 12, "second"),
        (tid, 2, 7, ""),
    ]
    assert store.list_group_offsets("nobody") == []
    with pytest.raises(UnknownTopicError):
        store.commit_offset("g1", tid, 3, 1, "")
    assert store.commit_offsets("g1", [(tid, 1, 5, "m"), (tid + 100, 0, 1, "")]) == [True, False]
    assert store.get_offset("g1", tid, 1) == (5, "m")
    # Every group with a committed offset, once each, in byte order (ListGroups relies on it).
    assert store.list_offset_groups() == ["g1", "g2"]


# --------------------------------------------------------------------------- consumer-group state


def test_group_state_generation_guard(store: Store) -> None:
    """A save with an older generation than the stored one is refused (nothing changes); an
    equal or newer one replaces it."""
    assert store.load_group_state("g") is None
    assert store.list_group_states() == []
    assert store.save_group_state("g", 3, b"three") is True
    assert store.load_group_state("g") == (3, b"three")
    assert store.save_group_state("g", 2, b"stale") is False
    assert store.load_group_state("g") == (3, b"three")
    assert store.save_group_state("g", 3, b"three again") is True
    assert store.load_group_state("g") == (3, b"three again")
    assert store.save_group_state("g", 4, bytearray(b"\x00four\xff")) is True
    assert store.load_group_state("g") == (4, b"\x00four\xff")
    assert store.save_group_state("other", 0, b"") is True
    assert store.load_group_state("other") == (0, b"")
    assert store.list_group_states() == ["g", "other"]


def test_group_state_delete_and_relation_to_offsets_and_topics(store: Store) -> None:
    """Group state is its own concern: deleting offsets or a topic leaves it; deleting it
    leaves the offsets; after a delete any generation may be saved again."""
    t = store.create_topic("t", 1)
    store.commit_offset("g", t.topic_id, 0, 5, "")
    store.save_group_state("g", 7, b"members")
    assert store.delete_group_offsets("g") == 1
    assert store.load_group_state("g") == (7, b"members")
    store.commit_offset("g", t.topic_id, 0, 6, "")
    store.delete_topic("t")
    assert store.load_group_state("g") == (7, b"members")
    store.create_topic("u", 1)
    u = store.get_topic("u")
    assert u is not None
    store.commit_offset("g", u.topic_id, 0, 9, "")
    store.delete_group_state("g")
    assert store.load_group_state("g") is None
    assert store.list_group_states() == []
    assert store.get_offset("g", u.topic_id, 0) == (9, "")
    store.delete_group_state("g")  # deleting what is not there is a no-op
    assert store.save_group_state("g", 1, b"new life") is True
    assert store.load_group_state("g") == (1, b"new life")


@pytest.mark.parametrize(
    "args, match",
    [
        (("", 1, b""), "group id"),
        ((7, 1, b""), "group id must be a string"),
        (("g" * 256, 1, b""), "group id must be 1..255 characters long, got 256"),
        (("g", -2, b""), "generation"),
        (("g", True, b""), "generation must be an integer"),
        (("g", 1, "text"), "must be bytes"),
    ],
)
def test_group_state_bad_arguments_are_refused(
    store: Store, args: tuple[object, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        store.save_group_state(*args)  # type: ignore[arg-type]
    assert store.list_group_states() == []


# --------------------------------------------------------------------------- agents


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what} after {timeout} s"
        time.sleep(0.01)  # polling interval, not synchronisation


def register(store: Store, agent_id: str, lease_ms: int = 60_000, zone: str = "") -> Any:
    return store.register_agent(
        agent_id, f"host-{agent_id}", 9092, f"{agent_id}:50051", zone, lease_ms
    )


def test_register_agent_assigns_smallest_free_node_ids_kept_by_agent_id(store: Store) -> None:
    before = int(time.time() * 1000)
    a = register(store, "a", zone="z1")
    assert a.node_id == 0 and a.alive
    assert (a.agent_id, a.kafka_host, a.kafka_port, a.grpc_address, a.zone) == (
        "a",
        "host-a",
        9092,
        "a:50051",
        "z1",
    )
    assert a.started_at_ms == a.heartbeat_at_ms and a.lease_until_ms == a.started_at_ms + 60_000
    assert abs(a.started_at_ms - before) < 60_000  # the store's clock, near this one
    assert [register(store, x).node_id for x in ("b", "c", "d")] == [1, 2, 3]
    # Re-registering keeps the node id and takes the new addresses and zone.
    again = store.register_agent("b", "new-host", 19092, "new:1", "z2", 1000)
    assert (again.node_id, again.kafka_host, again.kafka_port, again.zone) == (
        1,
        "new-host",
        19092,
        "z2",
    )
    assert again.started_at_ms >= a.started_at_ms
    # Forgetting frees a node id; the next new agent gets the smallest free one.
    assert store.forget_agent("b") is True
    assert store.forget_agent("b") is False
    assert store.forget_agent("never") is False
    assert store.forget_agent("a") is True
    assert register(store, "e").node_id == 0
    assert register(store, "f").node_id == 1
    assert register(store, "g").node_id == 4
    assert register(store, "c").node_id == 2  # still its own
    assert [(x.node_id, x.agent_id) for x in store.list_agents()] == [
        (0, "e"),
        (1, "f"),
        (2, "c"),
        (3, "d"),
        (4, "g"),
    ]


def test_heartbeat_renews_the_lease_and_returns_every_agent(store: Store) -> None:
    a = register(store, "a", lease_ms=60_000)
    register(store, "b", lease_ms=60_000)
    register(store, "c", lease_ms=1)
    wait_until(lambda: not store.list_agents()[2].alive, "a 1 ms lease to lapse")
    store.deregister_agent("b")
    agents = store.heartbeat_agent("a", 120_000)
    assert [(x.agent_id, x.node_id, x.alive) for x in agents] == [
        ("a", 0, True),
        ("b", 1, False),
        ("c", 2, False),
    ]
    me = agents[0]
    assert me.heartbeat_at_ms >= a.heartbeat_at_ms
    assert me.lease_until_ms == me.heartbeat_at_ms + 120_000
    assert me.started_at_ms == a.started_at_ms  # a heartbeat is not a restart
    # A deregistered (stopped) agent that heartbeats again is alive again.
    assert [x.alive for x in store.heartbeat_agent("b", 60_000)] == [True, True, False]
    assert [(x.agent_id, x.alive) for x in store.list_agents()] == [
        ("a", True),
        ("b", True),
        ("c", False),
    ]


def test_lease_expiry_makes_an_agent_not_alive(store: Store) -> None:
    register(store, "a", lease_ms=60_000)
    short = register(store, "b", lease_ms=200)
    assert short.alive
    wait_until(lambda: not store.list_agents()[1].alive, "a 200 ms lease to lapse")
    assert {x.agent_id: x.alive for x in store.list_agents()} == {"a": True, "b": False}
    # Seen from a heartbeat too, and renewing brings it back.
    assert [x.alive for x in store.heartbeat_agent("a", 60_000)] == [True, False]
    assert [x.alive for x in store.heartbeat_agent("b", 60_000)] == [True, True]


def test_deregister_and_forget(store: Store) -> None:
    register(store, "a")
    register(store, "b")
    store.deregister_agent("a")
    listed = store.list_agents()
    assert [(x.agent_id, x.alive) for x in listed] == [("a", False), ("b", True)]
    assert listed[0].lease_until_ms >= listed[0].heartbeat_at_ms
    store.deregister_agent("a")  # again: still stopped, nothing else changes
    store.deregister_agent("nobody")  # unknown: a no-op
    assert store.list_agents()[0] == listed[0]
    assert store.forget_agent("a") is True
    assert [x.agent_id for x in store.list_agents()] == ["b"]
    with pytest.raises(AgentUnknownError, match="register it again"):
        store.heartbeat_agent("a", 1000)
    with pytest.raises(AgentUnknownError, match="'nobody' is not registered"):
        store.heartbeat_agent("nobody", 1000)
    assert register(store, "a").node_id == 0


@pytest.mark.parametrize(
    "args, match",
    [
        (("", "h", 9092, "g:1", "", 1000), "agent_id must not be empty"),
        ((None, "h", 9092, "g:1", "", 1000), "agent_id must be a string"),
        (("a" * 256, "h", 9092, "g:1", "", 1000), "agent_id is 256 characters"),
        (("a", "", 9092, "g:1", "", 1000), "kafka_host"),
        (("a", "h", 0, "g:1", "", 1000), "kafka_port must be between 1 and 65535"),
        (("a", "h", 70000, "g:1", "", 1000), "kafka_port"),
        (("a", "h", "9092", "g:1", "", 1000), "kafka_port must be an integer"),
        (("a", "h", 9092, "", "", 1000), "grpc_address"),
        (("a", "h", 9092, "g:1", None, 1000), "zone must be a string"),
        (("a", "h", 9092, "g:1", "", 0), "lease_ms must be between"),
        (("a", "h", 9092, "g:1", "", 10**12), "lease_ms"),
    ],
)
def test_bad_agent_arguments_are_refused(
    store: Store, args: tuple[object, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        store.register_agent(*args)  # type: ignore[arg-type]
    assert store.list_agents() == []
    register(store, "a")
    with pytest.raises(ValueError, match="lease_ms"):
        store.heartbeat_agent("a", -5)


def test_async_metadata_agents_and_group_state(open_store: Opener) -> None:
    """The awaited wrappers reach the same calls, loop guard on."""
    s = open_store(forbid_loop_calls=True)

    async def main() -> None:
        meta = AsyncMetadata(s)
        try:
            me = await meta.register_agent("a", "h", 9092, "h:1", "z", 60_000)
            assert me.node_id == 0
            assert [x.agent_id for x in await meta.heartbeat_agent("a", 60_000)] == ["a"]
            assert [x.alive for x in await meta.list_agents()] == [True]
            await meta.deregister_agent("a")
            assert [x.alive for x in await meta.list_agents()] == [False]
            assert await meta.forget_agent("a") is True
            with pytest.raises(AgentUnknownError):
                await meta.heartbeat_agent("a", 1000)
            assert await meta.save_group_state("g", 2, b"x") is True
            assert await meta.save_group_state("g", 1, b"y") is False
            assert await meta.load_group_state("g") == (2, b"x")
            assert await meta.list_group_states() == ["g"]
            await meta.delete_group_state("g")
            assert await meta.load_group_state("g") is None
        finally:
            await meta.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- stores sharing one


def test_reopen_keeps_data(open_store: Opener) -> None:
    with open_store() as s:
        t = s.create_topic("orders", 2, {"retention.ms": "1000"})
        s.commit_segment("seg-1", 10, [block(t.topic_id, 1, [BatchRef(4)])])
        s.commit_offset("g", t.topic_id, 1, 3, "meta")
    with open_store() as s:
        assert s.get_topic("orders") == t
        assert s.get_partition(t.topic_id, 1).high_watermark == 4
        assert s.get_offset("g", t.topic_id, 1) == (3, "meta")
        assert [b.segment_key for b in s.find_blocks(t.topic_id, 1, 0)] == ["seg-1"]


def test_concurrent_first_open_migrates_once(open_store: Opener) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def opener() -> None:
        try:
            barrier.wait()
            with open_store() as s:
                s.allocate_producer_id()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    with open_store() as s:
        assert s.allocate_producer_id() == (4, 0)


def test_two_stores_see_each_others_commits(open_store: Opener) -> None:
    with open_store() as a, open_store() as b:
        t = a.create_topic("t", 1)
        assert b.get_topic("t") == t
        b.commit_segment("s1", 10, [block(t.topic_id, 0, [BatchRef(3)])])
        assert a.get_partition(t.topic_id, 0).high_watermark == 3
        res = a.commit_segment("s2", 10, [block(t.topic_id, 0, [BatchRef(2)])])
        assert res == [[BatchResult(3)]]
        assert [x.segment_key for x in b.find_blocks(t.topic_id, 0, 0)] == ["s1", "s2"]
        a.commit_offset("g", t.topic_id, 0, 4, "x")
        assert b.get_offset("g", t.topic_id, 0) == (4, "x")
        b.delete_topic("t")
        assert a.get_topic("t") is None
        assert a.commit_segment("s3", 1, [block(t.topic_id, 0, [BatchRef(1)])]) == [
            [BatchResult(-1, UNKNOWN_TOPIC_OR_PARTITION)]
        ]


def test_concurrent_writers_wait_and_stay_consistent(open_store: Opener) -> None:
    with open_store() as s:
        t = s.create_topic("t", 1)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with open_store() as s:
                for i in range(30):
                    s.commit_segment(f"{name}-{i}", 10, [block(t.topic_id, 0, [BatchRef(2)])])
                    s.allocate_producer_id()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    with open_store() as s:
        assert s.get_partition(t.topic_id, 0).high_watermark == 180
        blocks = s.find_blocks(t.topic_id, 0, 0, limit=1000)
        assert [(b.base_offset, b.end_offset) for b in blocks] == [
            (i, i + 2) for i in range(0, 180, 2)
        ]
        assert s.allocate_producer_id() == (90, 0)


def test_allocate_producer_id_unique(open_store: Opener) -> None:
    with open_store() as a, open_store() as b:
        ids = [s.allocate_producer_id() for _ in range(50) for s in (a, b)]
    assert len({pid for pid, _ in ids}) == 100
    assert all(epoch == 0 for _, epoch in ids)
    with open_store() as c:
        assert c.allocate_producer_id()[0] == 100


def test_closed_store_raises(open_store: Opener) -> None:
    s = open_store()
    s.close()
    s.close()
    with pytest.raises(MetadataError, match="closed"):
        s.get_topic("t")


# --------------------------------------------------------------------------- PostgreSQL's own


def _pg_schema_version(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        return postgres_migrations.schema_version(cur)


def test_postgres_migrates_empty_database_to_latest(postgres_dsn: str) -> None:
    PostgresMetadataStore(postgres_dsn).close()
    assert _pg_schema_version(postgres_dsn) == postgres_migrations.latest_version()
    with psycopg.connect(postgres_dsn) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
    assert {
        "streamhouse_schema",
        "topics",
        "partitions",
        "segments",
        "segment_blocks",
        "group_offsets",
        "producer_ids",
        "producer_state",
        "deleted_topics",
        "agents",
        "group_states",
    } <= tables
    with psycopg.connect(postgres_dsn) as conn:
        options = dict(
            conn.execute(
                "SELECT relname, reloptions FROM pg_class "
                "WHERE relname IN ('partitions', 'producer_state')"
            ).fetchall()
        )
    assert options == {"partitions": ["fillfactor=50"], "producer_state": ["fillfactor=50"]}


def test_postgres_migration_versions_are_consecutive() -> None:
    assert [m.version for m in postgres_migrations.MIGRATIONS] == list(
        range(1, len(postgres_migrations.MIGRATIONS) + 1)
    )


def test_postgres_newer_schema_is_refused(postgres_dsn: str) -> None:
    PostgresMetadataStore(postgres_dsn).close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("UPDATE streamhouse_schema SET version = version + 1")
    with pytest.raises(SchemaTooNewError, match="schema version"):
        PostgresMetadataStore(postgres_dsn)


def test_postgres_foreign_database_is_refused(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE streamhouse_schema (id INTEGER PRIMARY KEY, version INTEGER NOT NULL, "
            "application TEXT NOT NULL)"
        )
        conn.execute("INSERT INTO streamhouse_schema VALUES (1, 1, 'something-else')")
    with pytest.raises(MetadataError, match="not a StreamHouse"):
        PostgresMetadataStore(postgres_dsn)


def test_postgres_old_database_is_upgraded(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PostgresMetadataStore(postgres_dsn) as s:
        s.create_topic("t", 1)
    step = postgres_migrations.Migration(
        len(postgres_migrations.MIGRATIONS) + 1,
        "test step",
        "CREATE TABLE extra (x INTEGER); INSERT INTO extra VALUES (42);",
    )
    monkeypatch.setattr(postgres_migrations, "MIGRATIONS", (*postgres_migrations.MIGRATIONS, step))
    with PostgresMetadataStore(postgres_dsn) as s:
        assert s.get_topic("t") is not None
    assert _pg_schema_version(postgres_dsn) == step.version
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT x FROM extra").fetchall() == [(42,)]


def test_postgres_failed_migration_rolls_back(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    PostgresMetadataStore(postgres_dsn).close()
    before = postgres_migrations.latest_version()

    def broken(cur: psycopg.Cursor) -> None:  # type: ignore[type-arg]
        cur.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    step = postgres_migrations.Migration(before + 1, "broken", broken)
    monkeypatch.setattr(postgres_migrations, "MIGRATIONS", (*postgres_migrations.MIGRATIONS, step))
    with pytest.raises(RuntimeError, match="boom"):
        PostgresMetadataStore(postgres_dsn)
    assert _pg_schema_version(postgres_dsn) == before
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)


def test_postgres_row_lock_is_waited_for_then_a_retriable_timeout(postgres_dsn: str) -> None:
    """A commit meeting another transaction's lock on its partition row waits for it; held
    past the busy timeout, the call fails with REQUEST_TIMED_OUT (retriable), having changed
    nothing, and the same call succeeds once the lock is gone."""
    with PostgresMetadataStore(postgres_dsn, busy_timeout_ms=400) as s:
        t = s.create_topic("t", 1)
        blocker = psycopg.connect(postgres_dsn)
        try:
            blocker.execute(
                "SELECT 1 FROM partitions WHERE topic_id = %s FOR UPDATE", (t.topic_id,)
            )
            started = time.monotonic()
            with pytest.raises(MetadataUnavailableError, match="busy timeout") as err:
                s.commit_segment("s1", 1, [block(t.topic_id, 0, [BatchRef(1)])])
            waited = time.monotonic() - started
            assert err.value.code is ErrorCode.REQUEST_TIMED_OUT and err.value.retriable
            assert 0.35 <= waited < 5, waited
            # Reads do not wait for row locks.
            assert s.get_partition(t.topic_id, 0).high_watermark == 0
        finally:
            blocker.rollback()
            blocker.close()
        assert s.commit_segment("s1", 1, [block(t.topic_id, 0, [BatchRef(1)])]) == [
            [BatchResult(0)]
        ]


def test_postgres_lost_connections_are_retried(postgres_dsn: str) -> None:
    """Every pooled connection killed by the server (as on a failover or restart): the next
    calls reconnect and succeed."""
    with PostgresMetadataStore(postgres_dsn, pool_size=2) as s:
        t = s.create_topic("t", 1)
        for round_ in range(3):
            with psycopg.connect(postgres_dsn, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                ).fetchone()
            assert killed is not None and killed[0] >= 1
            res = s.commit_segment(f"s{round_}", 1, [block(t.topic_id, 0, [BatchRef(2)])])
            assert res == [[BatchResult(2 * round_)]]
        assert s.get_partition(t.topic_id, 0).high_watermark == 6


def test_postgres_unreachable_server_is_a_retriable_error() -> None:
    dsn = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing?connect_timeout=1"
    started = time.monotonic()
    with pytest.raises(MetadataUnavailableError, match="busy timeout") as err:
        PostgresMetadataStore(dsn, busy_timeout_ms=300)
    assert err.value.code is ErrorCode.REQUEST_TIMED_OUT and err.value.retriable
    assert time.monotonic() - started < 10


def test_postgres_many_agents_commit_concurrently(postgres_dsn: str) -> None:
    """8 agents (each its own store and pool) commit segments to overlapping partitions, in
    different orders, at once: no errors (no deadlock), and every partition's offsets are
    contiguous with no offset assigned twice."""
    agents = 8
    segments_per_agent = 25
    with PostgresMetadataStore(postgres_dsn) as setup:
        topics = [setup.create_topic(f"t{i}", 4) for i in range(2)]
    parts = [(t.topic_id, p) for t in topics for p in range(4)]
    errors: list[BaseException] = []
    assigned: dict[tuple[int, int], list[tuple[int, int]]] = {tp: [] for tp in parts}
    lock = threading.Lock()
    barrier = threading.Barrier(agents)

    def agent(n: int) -> None:
        try:
            with PostgresMetadataStore(postgres_dsn, pool_size=1, busy_timeout_ms=60_000) as s:
                barrier.wait()
                for i in range(segments_per_agent):
                    # Each segment touches 5 of the 8 partitions, listed in an agent-specific
                    # order (reversed for odd agents), so lock orders would cross without rule 1.
                    chosen = [parts[(n + i + k) % len(parts)] for k in range(5)]
                    if n % 2:
                        chosen.reverse()
                    blocks = [block(tid, p, [BatchRef(1 + n), BatchRef(2)]) for tid, p in chosen]
                    res = s.commit_segment(f"a{n}-{i}", 100, blocks)
                    with lock:
                        for (tid, p), rs in zip(chosen, res, strict=True):
                            assert all(r.error is None for r in rs)
                            assigned[(tid, p)].append((rs[0].base_offset, 1 + n + 2))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(agents)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    with psycopg.connect(postgres_dsn) as conn:
        deadlocks = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert deadlocks == (0,)  # none detected (and then hidden by the retry)
    with PostgresMetadataStore(postgres_dsn) as s:
        for tp in parts:
            ranges = sorted(assigned[tp])
            expected = 0
            for base, count in ranges:
                assert base == expected, (tp, ranges)
                expected += count
            assert s.get_partition(*tp).high_watermark == expected
            found = s.find_blocks(*tp, 0, limit=10_000)
            assert [(b.base_offset, b.end_offset - b.base_offset) for b in found] == ranges
    assert sum(len(r) for r in assigned.values()) == agents * segments_per_agent * 5


def test_postgres_concurrent_registrations_get_unique_node_ids(postgres_dsn: str) -> None:
    """24 agents (each its own store) register at once, twice each (a restart): node ids are
    0..23, each held by exactly one agent, and a re-registration keeps its id."""
    agents = 24
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(agents)

    def agent(n: int) -> None:
        try:
            with PostgresMetadataStore(postgres_dsn, pool_size=1) as s:
                barrier.wait()
                ids = [
                    s.register_agent(f"agent-{n}", f"h{n}", 9092, f"h{n}:1", "", 60_000).node_id
                    for _ in range(2)
                ]
                with lock:
                    got[f"agent-{n}"] = ids
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(agents)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert all(a == b for a, b in got.values()), got
    assert sorted(ids[0] for ids in got.values()) == list(range(agents))
    with PostgresMetadataStore(postgres_dsn) as s:
        listed = s.list_agents()
    assert [x.node_id for x in listed] == list(range(agents))
    assert {x.agent_id: x.node_id for x in listed} == {a: ids[0] for a, ids in got.items()}


def test_postgres_heartbeat_does_not_queue_behind_blocked_commits(postgres_dsn: str) -> None:
    """AsyncMetadata runs agent calls on their own thread (and the store has a connection for
    it): with every write thread stuck on a row lock, a heartbeat still answers at once."""
    store = PostgresMetadataStore(postgres_dsn, busy_timeout_ms=60_000)
    t = store.create_topic("t", 1)
    store.register_agent("a", "h", 9092, "h:1", "", 60_000)
    blocker = psycopg.connect(postgres_dsn)
    admin = psycopg.connect(postgres_dsn, autocommit=True)
    blocker.execute("SELECT 1 FROM partitions WHERE topic_id = %s FOR UPDATE", (t.topic_id,))

    def waiting_on_locks() -> int:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
        return int(row[0]) if row else 0

    async def main() -> None:
        meta = AsyncMetadata(store)
        try:
            commits = [
                asyncio.ensure_future(
                    meta.commit_segment(f"s{i}", 1, [block(t.topic_id, 0, [BatchRef(1)])])
                )
                for i in range(6)
            ]
            deadline = time.monotonic() + 20
            while await asyncio.to_thread(waiting_on_locks) < 4:  # every write thread stuck
                assert time.monotonic() < deadline, "the commits never waited on the lock"
                await asyncio.sleep(0.01)
            agents = await asyncio.wait_for(meta.heartbeat_agent("a", 60_000), 5)
            assert [x.alive for x in agents] == [True]
            assert [x.agent_id for x in await asyncio.wait_for(meta.list_agents(), 5)] == ["a"]
            assert not any(c.done() for c in commits)
            await asyncio.to_thread(blocker.rollback)
            results = await asyncio.gather(*commits)
            assert sorted(r[0][0].base_offset for r in results) == list(range(6))
        finally:
            await asyncio.to_thread(blocker.rollback)  # on failure too: lets the commits end
            await meta.close()

    try:
        asyncio.run(main())
    finally:
        blocker.close()
        admin.close()


def test_postgres_agent_times_are_the_servers_clock(postgres_dsn: str) -> None:
    """Leases are measured on PostgreSQL's clock, not the caller's."""
    with PostgresMetadataStore(postgres_dsn) as s, psycopg.connect(postgres_dsn) as conn:
        before = conn.execute(
            "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
        ).fetchone()
        a = s.register_agent("a", "h", 9092, "h:1", "", 5000)
        after = conn.execute(
            "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
        ).fetchone()
    assert before is not None and after is not None
    assert before[0] <= a.started_at_ms <= after[0]
    assert a.lease_until_ms == a.started_at_ms + 5000


# --------------------------------------------------------------------------- commit notifications


def test_commit_notification_format_round_trips() -> None:
    entries = [(1, 0, 0, 100, 10), (1, 7, 100, 50, 3), (12, 9999, 150, 1, 2**40)]
    payload = commit_notification("segs/a|b.seg", entries)
    assert payload == "1|segs/a|b.seg|1:0:0:100:10;1:7:100:50:3;12:9999:150:1:1099511627776"
    assert parse_commit_notification(payload) == ("segs/a|b.seg", entries)
    assert commit_notification("k", []) == "1|k|"
    assert parse_commit_notification("1|k|") == ("k", [])
    many = [(1, p, p * 1000, 1000, 10) for p in range(1000)]
    assert commit_notification("k", many) == "1|k|*"
    assert parse_commit_notification("1|k|*") == ("k", None)
    # Just under and at the limit (bytes, with a multi-byte key).
    key = "é" * 10
    head = len(f"1|{key}|".encode())
    entry = (1, 1, 1, 1, 1)  # "1:1:1:1:1" is 9 bytes, 10 with its ";"
    n = (MAX_PAYLOAD_BYTES - 1 - head + 1) // 10
    fits = commit_notification(key, [entry] * n)
    assert len(fits.encode()) < MAX_PAYLOAD_BYTES and not fits.endswith("*")
    assert commit_notification(key, [entry] * (n + 1)).endswith("|*")
    with pytest.raises(ValueError, match="too long"):
        commit_notification("k" * 8000, [])


@pytest.mark.parametrize(
    "payload, match",
    [
        ("nothing", "no '|'"),
        ("2|k|1:0:0:1:1", "version '2' is unknown"),
        ("1|k", "no entry list"),
        ("1|k|1:0:0:1", "5 fields"),
        ("1|k|1:0:x:1:1", "not an integer"),
    ],
)
def test_commit_notification_parser_refuses_bad_payloads(payload: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_commit_notification(payload)


def _listen(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(f"LISTEN {COMMIT_CHANNEL}")
    return conn


def _drain(conn: psycopg.Connection[Any], quiet_s: float = 0.3) -> list[str]:
    """Every notification delivered until none arrived for ``quiet_s`` (PostgreSQL delivers
    them at commit, before the committing call returns, so this bounds the wait for none)."""
    got: list[str] = []
    while True:
        batch = [n.payload for n in conn.notifies(timeout=quiet_s, stop_after=1)]
        if not batch:
            return got
        got.extend(batch)


def test_postgres_commit_notifies_once_per_committed_segment(postgres_dsn: str) -> None:
    """A listener hears exactly one notification per committed segment, listing its indexed
    blocks with the high watermark after the commit; nothing for a commit that fails
    (duplicate key, a bad batch) or rolls back; the '*' form for a segment of many blocks."""
    with PostgresMetadataStore(postgres_dsn) as s:
        t = s.create_topic("t", 3)
        wide = s.create_topic("wide", 2000)
        tid = t.topic_id
        listener = _listen(postgres_dsn)
        try:
            pid, epoch = s.allocate_producer_id()
            s.commit_segment(
                "seg-1",
                500,
                [
                    block(tid, 0, [BatchRef(3), BatchRef(2)], byte_offset=0),
                    block(tid, 2, [idem(4, pid, epoch, 0)], byte_offset=200),
                    block(tid + 1000, 0, [BatchRef(1)], byte_offset=300),  # unknown: left out
                ],
            )
            s.commit_segment(
                "seg-2",
                300,
                [
                    block(tid, 2, [idem(4, pid, epoch, 0)], byte_offset=0),  # duplicate only
                    block(tid, 0, [BatchRef(1)], byte_offset=100),
                    block(tid, 0, [BatchRef(2)], byte_offset=200),  # same partition again
                ],
            )
            s.commit_segment("seg-empty", 0, [])
            with pytest.raises(DuplicateSegmentError):
                s.commit_segment("seg-1", 1, [block(tid, 1, [BatchRef(1)])])
            with pytest.raises(ValueError):
                s.commit_segment("seg-bad", 1, [block(tid, 1, [BatchRef(1), BatchRef(0)])])
            got = _drain(listener)
            assert [parse_commit_notification(p) for p in got] == [
                ("seg-1", [(tid, 0, 0, 200, 5), (tid, 2, 200, 100, 4)]),
                ("seg-2", [(tid, 0, 100, 100, 8), (tid, 0, 200, 100, 8)]),
                ("seg-empty", []),
            ]
            s.commit_segment(
                "seg-wide", 1, [block(wide.topic_id, p, [BatchRef(1)]) for p in range(2000)]
            )
            assert _drain(listener) == ["1|seg-wide|*"]
        finally:
            listener.close()


def test_postgres_commit_segments_notifies_once_per_segment(postgres_dsn: str) -> None:
    """A batch of segments in one transaction: one notification per segment, in order, each
    with the high watermark after that segment; none when the batch fails."""
    with PostgresMetadataStore(postgres_dsn) as s:
        t = s.create_topic("t", 2)
        tid = t.topic_id
        listener = _listen(postgres_dsn)
        try:
            s.commit_segments(
                [
                    ("a", 1, [block(tid, 0, [BatchRef(2)]), block(tid, 1, [BatchRef(1)])]),
                    ("b", 1, [block(tid, 0, [BatchRef(3)], byte_offset=50)]),
                ]
            )
            with pytest.raises(DuplicateSegmentError):
                s.commit_segments([("c", 1, []), ("a", 1, [])])
            assert [parse_commit_notification(p) for p in _drain(listener)] == [
                ("a", [(tid, 0, 0, 100, 2), (tid, 1, 0, 100, 1)]),
                ("b", [(tid, 0, 50, 100, 5)]),
            ]
        finally:
            listener.close()


def test_postgres_commit_notification_only_when_the_transaction_commits(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two attempts killed right before COMMIT (their pg_notify had run) and a third that
    commits: the listener hears exactly one notification."""
    with PostgresMetadataStore(postgres_dsn) as s:
        t = s.create_topic("t", 1)
        listener = _listen(postgres_dsn)
        try:
            hits = _fail_commits(monkeypatch, 2, committed=False)
            s.commit_segment("s1", 10, [block(t.topic_id, 0, [BatchRef(3)])])
            assert hits == [1, 1]
            monkeypatch.undo()
            assert _drain(listener) == [f"1|s1|{t.topic_id}:0:0:100:3"]
        finally:
            listener.close()


def test_postgres_retry_through_another_agent_is_deduplicated(postgres_dsn: str) -> None:
    """An idempotent producer's batches committed by agent A, then retried through agent B
    (say A died before acking): B returns the original offsets and assigns none."""
    with PostgresMetadataStore(postgres_dsn) as a, PostgresMetadataStore(postgres_dsn) as b:
        t = a.create_topic("t", 2)
        pid, epoch = b.allocate_producer_id()
        first = a.commit_segment(
            "a-1",
            10,
            [
                block(t.topic_id, 0, [idem(3, pid, epoch, 0), idem(2, pid, epoch, 3)]),
                block(t.topic_id, 1, [idem(4, pid, epoch, 0)]),
            ],
        )
        assert first == [[BatchResult(0), BatchResult(3)], [BatchResult(0)]]
        retry = b.commit_segment(
            "b-1",
            10,
            [
                block(t.topic_id, 1, [idem(4, pid, epoch, 0), idem(1, pid, epoch, 4)]),
                block(t.topic_id, 0, [idem(2, pid, epoch, 3)]),
            ],
        )
        assert retry == [
            [BatchResult(0, duplicate=True), BatchResult(4)],
            [BatchResult(3, duplicate=True)],
        ]
        assert a.get_partition(t.topic_id, 0).high_watermark == 5
        assert a.get_partition(t.topic_id, 1).high_watermark == 5
        # A stale epoch retried through the other agent is fenced there too.
        assert b.commit_segment("b-2", 1, [block(t.topic_id, 0, [idem(1, pid, epoch + 1, 0)])])
        fenced = a.commit_segment("a-2", 1, [block(t.topic_id, 0, [idem(1, pid, epoch, 5)])])
        assert fenced == [[BatchResult(-1, INVALID_PRODUCER_EPOCH)]]


def _fail_commits(monkeypatch: pytest.MonkeyPatch, times: int, *, committed: bool) -> list[int]:
    """Make the next ``times`` transaction commits look lost to the client: with ``committed``
    the COMMIT reaches the server and then the client sees the connection drop (the ack is
    lost); without, the server kills the backend just before COMMIT (the transaction aborts)."""
    original = psycopg.Transaction.__exit__
    hits: list[int] = []

    def exit_(self: psycopg.Transaction, exc_type: object, exc: object, tb: object) -> object:
        if exc_type is not None or len(hits) >= times:
            return original(self, exc_type, exc, tb)  # type: ignore[arg-type]
        hits.append(1)
        if committed:
            original(self, None, None, None)
            raise psycopg.OperationalError("server closed the connection unexpectedly (test)")
        pid = self.connection.info.backend_pid
        with psycopg.connect(self.connection.info.dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))  # waits for it
        return original(self, None, None, None)

    monkeypatch.setattr(psycopg.Transaction, "__exit__", exit_)
    return hits


def test_postgres_commit_whose_ack_was_lost_returns_its_result(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT went through but the connection dropped before the client heard: the store
    learns from the server that it committed and returns the results, instead of retrying
    into DuplicateSegmentError or claiming (retriably) that nothing happened."""
    with PostgresMetadataStore(postgres_dsn) as s:
        t = s.create_topic("t", 1)
        hits = _fail_commits(monkeypatch, 1, committed=True)
        res = s.commit_segment("s1", 10, [block(t.topic_id, 0, [BatchRef(3)])])
        assert hits == [1]
        assert res == [[BatchResult(0)]]
        assert s.get_partition(t.topic_id, 0).high_watermark == 3
        assert [b.segment_key for b in s.find_blocks(t.topic_id, 0, 0)] == ["s1"]


def test_postgres_commit_lost_before_it_reached_the_server_is_retried(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PostgresMetadataStore(postgres_dsn) as s:
        t = s.create_topic("t", 1)
        hits = _fail_commits(monkeypatch, 2, committed=False)
        res = s.commit_segment("s1", 10, [block(t.topic_id, 0, [BatchRef(3)])])
        assert hits == [1, 1]  # two attempts aborted, the third committed
        assert res == [[BatchResult(0)]]
        assert s.get_partition(t.topic_id, 0).high_watermark == 3
        assert len(s.find_blocks(t.topic_id, 0, 0)) == 1


def test_postgres_reads_cannot_write(postgres_dsn: str) -> None:
    with PostgresMetadataStore(postgres_dsn) as s:
        s.create_topic("t", 1)
        with pytest.raises(MetadataError, match="read-only"):
            s._read(lambda cur: cur.execute("DELETE FROM topics"))
        assert s.get_topic("t") is not None


def test_postgres_server_restart_fails_writes_retriably_then_they_resume(
    postgres: Any, postgres_dsn: str
) -> None:
    """The metadata service restarted: calls made while it is down fail with the retriable
    REQUEST_TIMED_OUT (nothing changed), and the same calls succeed once it is back."""
    with PostgresMetadataStore(postgres_dsn, busy_timeout_ms=500) as s:
        t = s.create_topic("t", 1)
        s.commit_segment("s0", 1, [block(t.topic_id, 0, [BatchRef(1)])])
        postgres.stop_server()
        try:
            with pytest.raises(MetadataUnavailableError) as err:
                s.commit_segment("s1", 1, [block(t.topic_id, 0, [BatchRef(2)])])
            assert err.value.code is ErrorCode.REQUEST_TIMED_OUT and err.value.retriable
            with pytest.raises(MetadataUnavailableError):
                s.get_partition(t.topic_id, 0)
        finally:
            postgres.start_server()
        assert s.commit_segment("s1", 1, [block(t.topic_id, 0, [BatchRef(2)])]) == [
            [BatchResult(1)]
        ]
        assert s.get_partition(t.topic_id, 0).high_watermark == 3
