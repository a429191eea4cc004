"""Conformance suite for the expiry calls of the metadata store, on both backends:
``expire_producer_state``, ``expirable_offset_groups`` and ``expire_group_offsets`` (the
lifecycle's expiry of idle producer state and of long-idle groups' committed offsets).

The store stamps ``last_update_ms``, ``commit_ms`` and ``updated_ms`` with its own clock
(milliseconds since the epoch), so the tests take cut-offs between calls, waiting for the
clock to move on where two stamps must differ.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from metadata import OUT_OF_ORDER_SEQUENCE_NUMBER, BatchRef, CommitBlock, MetadataStore
from metadata.async_store import AsyncMetadata
from metadata.postgres import PostgresMetadataStore

Store = MetadataStore | PostgresMetadataStore
Opener = Callable[..., Store]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _tick() -> int:
    """The clock after it has moved past the current millisecond (a cut-off strictly after
    every stamp made so far and strictly before every stamp made from now on)."""
    start = _now_ms()
    deadline = time.monotonic() + 1
    while _now_ms() <= start:
        assert time.monotonic() < deadline, "the clock did not move in a second"
    cut = _now_ms()
    while _now_ms() <= cut:
        assert time.monotonic() < deadline, "the clock did not move in a second"
    return cut


def _produce(store: Store, key: str, topic_id: int, partition: int, pid: int, seq: int) -> str:
    """Commit one idempotent batch of 2 records; its error (None when accepted)."""
    block = CommitBlock(topic_id, partition, 0, 10, 0, [BatchRef(2, pid, 0, seq)])
    return store.commit_segment(key, 10, [block])[0][0].error  # type: ignore[return-value]


def test_idle_producer_state_expires_in_pages(store: Store) -> None:
    t = store.create_topic("producers", 3)
    for p in range(3):
        assert _produce(store, f"segments/a{p}", t.topic_id, p, 7, 0) is None
    cut = _tick()
    assert _produce(store, "segments/b", t.topic_id, 0, 8, 0) is None  # after the cut
    assert store.expire_producer_state(cut - 60_000) == 0
    assert store.expire_producer_state(cut, limit=2) == 2
    assert store.expire_producer_state(cut, limit=2) == 1
    assert store.expire_producer_state(cut) == 0
    # Producer 7 has no state left: a batch with any sequence is accepted (Kafka's rule for
    # a producer it holds no state for); producer 8 kept its state and its sequence check.
    assert _produce(store, "segments/c", t.topic_id, 0, 7, 40) is None
    assert _produce(store, "segments/d", t.topic_id, 0, 8, 40) == OUT_OF_ORDER_SEQUENCE_NUMBER
    assert store.expire_producer_state(_tick()) == 2


def test_a_retry_after_expiry_is_no_longer_deduplicated(store: Store) -> None:
    t = store.create_topic("dedup", 1)
    assert _produce(store, "segments/1", t.topic_id, 0, 3, 0) is None
    assert _produce(store, "segments/2", t.topic_id, 0, 3, 0) is None  # duplicate
    state = store.get_partition(t.topic_id, 0)
    assert state is not None and state.high_watermark == 2
    assert store.expire_producer_state(_tick()) == 1
    assert _produce(store, "segments/3", t.topic_id, 0, 3, 0) is None
    state = store.get_partition(t.topic_id, 0)
    assert state is not None and state.high_watermark == 4


def test_groups_expire_when_their_newest_commit_and_state_are_old(store: Store) -> None:
    t = store.create_topic("consumed", 2)
    store.commit_offset("old", t.topic_id, 0, 5, "")
    store.commit_offset("old", t.topic_id, 1, 6, "m")
    store.commit_offset("stale-state", t.topic_id, 0, 1, "")
    store.save_group_state("stale-state", 1, b"s")
    store.commit_offset("resaved", t.topic_id, 0, 2, "")
    store.save_group_state("members-only", 1, b"m")  # state, no offsets: never listed
    cut = _tick()
    store.save_group_state("resaved", 2, b"r")  # saved after the cut: kept
    store.commit_offset("new", t.topic_id, 1, 3, "")
    store.commit_offset("mixed", t.topic_id, 0, 3, "")  # mixed: one old commit...
    assert store.expirable_offset_groups(cut) == ["old", "stale-state"]
    assert store.expirable_offset_groups(cut - 60_000) == []
    assert store.expire_group_offsets("new", cut) == 0
    assert store.expire_group_offsets("resaved", cut) == 0
    assert store.expire_group_offsets("nobody", cut) == 0
    assert store.expire_group_offsets("old", cut) == 2
    assert store.list_group_offsets("old") == []
    assert store.expire_group_offsets("old", cut) == 0
    assert store.expire_group_offsets("stale-state", cut) == 1
    # The group state is the coordinator's: expiry leaves it.
    assert store.load_group_state("stale-state") == (1, b"s")
    assert [o.offset for o in store.list_group_offsets("new")] == [3]
    assert [o.offset for o in store.list_group_offsets("resaved")] == [2]
    assert store.expirable_offset_groups(cut) == []
    later = _tick()
    assert store.expirable_offset_groups(later) == ["mixed", "new", "resaved"]


def test_a_commit_after_the_listing_keeps_the_groups_offsets(store: Store) -> None:
    """The expiry step lists a group, then the group commits again before the delete: the
    delete checks again in its own transaction and keeps every offset."""
    t = store.create_topic("busy", 2)
    store.commit_offset("g", t.topic_id, 0, 1, "")
    store.commit_offset("g", t.topic_id, 1, 1, "")
    cut = _tick()
    assert store.expirable_offset_groups(cut) == ["g"]
    store.commit_offset("g", t.topic_id, 1, 2, "")
    assert store.expire_group_offsets("g", cut) == 0
    assert [(o.partition, o.offset) for o in store.list_group_offsets("g")] == [(0, 1), (1, 2)]
    # A state saved after the cut keeps them too.
    store.commit_offset("h", t.topic_id, 0, 1, "")
    cut = _tick()
    assert store.expirable_offset_groups(cut) == ["g", "h"]
    store.save_group_state("h", 1, b"")
    assert store.expire_group_offsets("h", cut) == 0
    assert len(store.list_group_offsets("h")) == 1


def test_group_ids_are_listed_in_code_point_order(store: Store) -> None:
    t = store.create_topic("order", 1)
    names = ["b", "B", "a-1", "a_1", "Z", "é"]
    for name in names:
        store.commit_offset(name, t.topic_id, 0, 0, "")
    assert store.expirable_offset_groups(_tick()) == sorted(names)


def test_expiry_calls_refuse_bad_arguments(store: Store) -> None:
    with pytest.raises(ValueError, match="idle_before_ms"):
        store.expire_producer_state(-1)
    for limit in (0, 100_001):
        with pytest.raises(ValueError, match="limit"):
            store.expire_producer_state(5, limit)
    with pytest.raises(ValueError, match="commit_before_ms"):
        store.expirable_offset_groups(-1)
    with pytest.raises(ValueError, match="commit_before_ms"):
        store.expire_group_offsets("g", -1)
    with pytest.raises(ValueError, match="group id"):
        store.expire_group_offsets("", 5)


def test_async_metadata_wraps_the_expiry_calls(open_store: Opener) -> None:
    store = open_store(forbid_loop_calls=True)

    async def main() -> None:
        meta = AsyncMetadata(store)
        t = await meta.create_topic("async-expiry", 1)
        block = CommitBlock(t.topic_id, 0, 0, 10, 0, [BatchRef(1, 9, 0, 0)])
        await meta.commit_segment("segments/x", 10, [block])
        await meta.commit_offset("g", t.topic_id, 0, 1, "")
        cut = await asyncio.to_thread(_tick)
        assert await meta.expire_producer_state(cut, 10) == 1
        assert await meta.expirable_offset_groups(cut) == ["g"]
        assert await meta.expire_group_offsets("g", cut) == 1
        await meta.close()

    asyncio.run(main())


def test_expiry_racing_offset_commits_never_fails_or_loses_a_later_commit(
    backend_opener: Opener,
) -> None:
    """Two threads commit a group's offsets for three partitions (in opposite orders, several
    per transaction) while a third expires the group with a cut-off in the future (so every
    commit is old to it). No call fails or deadlocks (PostgreSQL would detect it after a
    second and one call would be retried); whenever expiry
    deleted, it deleted whole commits' rows only: at the end, after the committers stop,
    every partition holds its last committed offset or nothing, and one more expiry leaves
    nothing."""
    admin = backend_opener()
    t = admin.create_topic("racing-offsets", 3)
    future = _now_ms() + 3_600_000
    errors: list[BaseException] = []
    stop = threading.Event()
    deleted: list[int] = []
    took: list[float] = []
    last: dict[int, int] = {}
    lock = threading.Lock()

    def commit(order: list[int]) -> None:
        s = backend_opener()
        try:
            for i in range(150):
                offsets = [(t.topic_id, p, i, "") for p in order]
                started = time.monotonic()
                s.commit_offsets("g", offsets)
                took.append(time.monotonic() - started)
                with lock:
                    for p in order:
                        last[p] = max(last.get(p, 0), i)
        except BaseException as exc:
            errors.append(exc)

    def expire() -> None:
        s = backend_opener()
        try:
            while not stop.is_set():
                started = time.monotonic()
                deleted.append(s.expire_group_offsets("g", future))
                took.append(time.monotonic() - started)
        except BaseException as exc:
            errors.append(exc)

    committers = [
        threading.Thread(target=commit, args=(order,)) for order in ([0, 1, 2], [2, 1, 0])
    ]
    expirer = threading.Thread(target=expire)
    for th in [*committers, expirer]:
        th.start()
    for th in committers:
        th.join(timeout=120)
    stop.set()
    expirer.join(timeout=120)
    assert not any(th.is_alive() for th in [*committers, expirer])
    assert errors == []
    if isinstance(admin, PostgresMetadataStore):
        # No call waited out PostgreSQL's deadlock detection (deadlock_timeout, 1 s) and was
        # retried: they never wait for each other in a cycle (a loaded machine may stall
        # one). SQLite's writers queue for one lock, so a long wait there is no deadlock.
        assert sum(1 for d in took if d >= 0.95) <= 1, sorted(took)[-3:]
    assert any(deleted)  # expiry got in between commits
    left = {o.partition: o.offset for o in admin.list_group_offsets("g")}
    assert all(left[p] <= last[p] for p in left)
    assert admin.expire_group_offsets("g", future) == len(left)
    assert admin.list_group_offsets("g") == []


def test_producer_expiry_racing_commits_never_fails_or_deadlocks(
    backend_opener: Opener,
) -> None:
    """Two threads commit batches of four idempotent producers over three partitions (the
    producers in opposite orders) while a third expires producer state with a cut-off in
    the future. No call fails or waits out deadlock detection; every batch gets offsets
    (with no state left a producer may start any sequence), and the high watermarks count
    every record."""
    admin = backend_opener()
    t = admin.create_topic("racing-producers", 3)
    future = _now_ms() + 3_600_000
    errors: list[BaseException] = []
    took: list[float] = []
    stop = threading.Event()
    results: list[str | None] = []

    def commit(w: int, pids: list[int]) -> None:
        s = backend_opener()
        try:
            for i in range(60):
                blocks = [
                    CommitBlock(t.topic_id, p, 0, 10, 0, [BatchRef(1, pid, 0, i)])
                    for p in range(3)
                    for pid in pids
                ]
                started = time.monotonic()
                out = s.commit_segment(f"segments/p{w}-{i:03d}", 10, blocks)
                took.append(time.monotonic() - started)
                results.extend(r[0].error for r in out)
        except BaseException as exc:
            errors.append(exc)

    def expire() -> None:
        s = backend_opener()
        try:
            while not stop.is_set():
                started = time.monotonic()
                s.expire_producer_state(future, 5)
                took.append(time.monotonic() - started)
        except BaseException as exc:
            errors.append(exc)

    committers = [
        threading.Thread(target=commit, args=(0, [1, 2, 3, 4])),
        threading.Thread(target=commit, args=(1, [14, 13, 12, 11])),
    ]
    expirer = threading.Thread(target=expire)
    for th in [*committers, expirer]:
        th.start()
    for th in committers:
        th.join(timeout=120)
    stop.set()
    expirer.join(timeout=120)
    assert not any(th.is_alive() for th in [*committers, expirer])
    assert errors == []
    if isinstance(admin, PostgresMetadataStore):
        assert sum(1 for d in took if d >= 0.95) <= 1, sorted(took)[-3:]
    assert results == [None] * (2 * 60 * 3 * 4)
    for p in range(3):
        state = admin.get_partition(t.topic_id, p)
        assert state is not None and state.high_watermark == 2 * 60 * 4
