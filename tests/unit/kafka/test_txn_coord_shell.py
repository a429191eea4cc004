"""The transaction coordinator's I/O shell (ingest/kafka/txn_shell.py) over a real SQLite
metadata store and a recording marker writer: state survives a new shell (a restart), markers
and offsets are written on completion, failures leave the decision for the sweeper, timeouts
abort and fence."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable, Callable, Sequence

import pytest

from ingest.kafka import txn_coordinator as tc
from ingest.kafka.txn_coordinator import PendingOffset, TxnState
from ingest.kafka.txn_shell import CATALOG_KIND, TxnShell, catalog_name, decode
from metadata.async_store import AsyncMetadata
from streamhouse.errors import ErrorCode


class Markers:
    """Records marker writes; fails them while ``failing`` is set."""

    def __init__(self) -> None:
        self.written: list[tuple[tuple[tuple[int, int], ...], int, int, bool]] = []
        self.failing: ErrorCode | None = None

    async def __call__(
        self, partitions: Sequence[tuple[int, int]], producer_id: int, epoch: int, commit: bool
    ) -> list[ErrorCode | None]:
        if self.failing is not None:
            return [self.failing for _ in partitions]
        self.written.append((tuple(partitions), producer_id, epoch, commit))
        return [None for _ in partitions]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


Body = Callable[[AsyncMetadata], Awaitable[None]]


@pytest.fixture
def on_meta(tmp_path: pathlib.Path) -> Callable[[Body], None]:
    """Runs a test body on a fresh SQLite metadata store, on its own event loop."""

    def run(body: Body) -> None:
        async def main() -> None:
            meta = await AsyncMetadata.open(tmp_path / "meta.sqlite", synchronous="NORMAL")
            try:
                await body(meta)
            finally:
                await meta.close()

        asyncio.run(main())

    return run


def make_shell(meta: AsyncMetadata, markers: Markers, clock: Clock) -> TxnShell:
    return TxnShell(meta, markers, max_timeout_ms=60_000, clock=clock)


def test_commit_writes_markers_then_applies_offsets(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_commit_writes_markers_then_applies_offsets)


async def _test_commit_writes_markers_then_applies_offsets(meta: AsyncMetadata) -> None:
    topic = await meta.create_topic("t", 2)
    markers, clock = Markers(), Clock()
    shell = make_shell(meta, markers, clock)
    error, pid, epoch = await shell.init_producer_id("tx", 10_000)
    assert (error, epoch) == (tc.NONE, 0) and pid >= 0
    parts = [(topic.topic_id, 0), (topic.topic_id, 1)]
    assert await shell.add_partitions("tx", pid, epoch, parts) == tc.NONE
    assert await shell.add_offsets("tx", pid, epoch, "g") == tc.NONE
    offset = PendingOffset(group="g", topic_id=topic.topic_id, partition=0, offset=42)
    assert await shell.txn_offset_commit("tx", pid, epoch, "g", [offset]) == tc.NONE
    assert await meta.get_offset("g", topic.topic_id, 0) is None  # pending, not visible
    assert await shell.pending_offsets("g") == {(topic.topic_id, 0)}
    assert await shell.pending_offsets("other") == set()
    assert await shell.end_txn("tx", pid, epoch, True) == tc.NONE
    assert markers.written == [(tuple(parts), pid, epoch, True)]
    assert await meta.get_offset("g", topic.topic_id, 0) == (42, "")
    record = await shell.load("tx")
    assert record is not None and record.state is TxnState.COMPLETE_COMMIT
    assert await shell.pending_offsets("g") == set()


def test_abort_drops_offsets(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_abort_drops_offsets)


async def _test_abort_drops_offsets(meta: AsyncMetadata) -> None:
    topic = await meta.create_topic("t", 1)
    markers, clock = Markers(), Clock()
    shell = make_shell(meta, markers, clock)
    _, pid, epoch = await shell.init_producer_id("tx", 10_000)
    await shell.add_partitions("tx", pid, epoch, [(topic.topic_id, 0)])
    await shell.add_offsets("tx", pid, epoch, "g")
    offset = PendingOffset(group="g", topic_id=topic.topic_id, partition=0, offset=7)
    await shell.txn_offset_commit("tx", pid, epoch, "g", [offset])
    assert await shell.end_txn("tx", pid, epoch, False) == tc.NONE
    assert markers.written == [(((topic.topic_id, 0),), pid, epoch, False)]
    assert await meta.get_offset("g", topic.topic_id, 0) is None


def test_failed_markers_leave_the_decision_for_the_sweeper(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_failed_markers_leave_the_decision_for_the_sweeper)


async def _test_failed_markers_leave_the_decision_for_the_sweeper(meta: AsyncMetadata) -> None:
    markers, clock = Markers(), Clock()
    shell = make_shell(meta, markers, clock)
    _, pid, epoch = await shell.init_producer_id("tx", 10_000)
    await shell.add_partitions("tx", pid, epoch, [(1, 0)])
    markers.failing = ErrorCode.REQUEST_TIMED_OUT
    assert await shell.end_txn("tx", pid, epoch, True) == tc.NONE  # decided: durable
    record = await shell.load("tx")
    assert record is not None and record.state is TxnState.PREPARE_COMMIT
    # Until it completes: a retried EndTxn or the next transaction must wait.
    assert await shell.end_txn("tx", pid, epoch, True) == tc.CONCURRENT_TRANSACTIONS
    assert await shell.add_partitions("tx", pid, epoch, [(1, 0)]) == tc.CONCURRENT_TRANSACTIONS
    assert await shell.sweep() == 0
    # A new shell on the same metadata (ingest restarted) finishes it once markers work.
    markers.failing = None
    restarted = make_shell(meta, markers, clock)
    assert await restarted.sweep() == 1
    assert markers.written == [(((1, 0),), pid, epoch, True)]
    record = await restarted.load("tx")
    assert record is not None and record.state is TxnState.COMPLETE_COMMIT
    assert await restarted.end_txn("tx", pid, epoch, True) == tc.NONE  # a late retry


def test_deleted_partitions_do_not_block_completion(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_deleted_partitions_do_not_block_completion)


async def _test_deleted_partitions_do_not_block_completion(meta: AsyncMetadata) -> None:
    markers, clock = Markers(), Clock()
    shell = make_shell(meta, markers, clock)
    _, pid, epoch = await shell.init_producer_id("tx", 10_000)
    await shell.add_partitions("tx", pid, epoch, [(99, 0)])
    markers.failing = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert await shell.end_txn("tx", pid, epoch, False) == tc.NONE
    record = await shell.load("tx")
    assert record is not None and record.state is TxnState.COMPLETE_ABORT


def test_marker_writer_raising_keeps_the_decision(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_marker_writer_raising_keeps_the_decision)


async def _test_marker_writer_raising_keeps_the_decision(meta: AsyncMetadata) -> None:
    clock = Clock()

    async def broken(*_args: object) -> list[ErrorCode | None]:
        raise RuntimeError("pipeline closed")

    shell = TxnShell(meta, broken, max_timeout_ms=60_000, clock=clock)
    _, pid, epoch = await shell.init_producer_id("tx", 10_000)
    await shell.add_partitions("tx", pid, epoch, [(1, 0)])
    assert await shell.end_txn("tx", pid, epoch, False) == tc.NONE
    record = await shell.load("tx")
    assert record is not None and record.state is TxnState.PREPARE_ABORT


def test_new_producer_aborts_and_fences_the_old_one(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_new_producer_aborts_and_fences_the_old_one)


async def _test_new_producer_aborts_and_fences_the_old_one(meta: AsyncMetadata) -> None:
    markers, clock = Markers(), Clock()
    shell = make_shell(meta, markers, clock)
    _, pid, epoch = await shell.init_producer_id("tx", 10_000)
    await shell.add_partitions("tx", pid, epoch, [(1, 0)])
    error, pid2, epoch2 = await shell.init_producer_id("tx", 10_000)
    assert (error, pid2, epoch2) == (tc.NONE, pid, epoch + 2)
    # The open transaction was aborted at the fencing epoch.
    assert markers.written == [(((1, 0),), pid, epoch + 1, False)]
    assert await shell.end_txn("tx", pid, epoch, True) == tc.PRODUCER_FENCED
    assert await shell.add_partitions("tx", pid, epoch, [(1, 0)]) == tc.PRODUCER_FENCED


def test_fencing_abort_that_cannot_complete_is_concurrent(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_fencing_abort_that_cannot_complete_is_concurrent)


async def _test_fencing_abort_that_cannot_complete_is_concurrent(meta: AsyncMetadata) -> None:
    markers, clock = Markers(), Clock()
    shell = make_shell(meta, markers, clock)
    _, pid, epoch = await shell.init_producer_id("tx", 10_000)
    await shell.add_partitions("tx", pid, epoch, [(1, 0)])
    markers.failing = ErrorCode.KAFKA_STORAGE_ERROR
    assert (await shell.init_producer_id("tx", 10_000))[0] == tc.CONCURRENT_TRANSACTIONS
    markers.failing = None
    error, _, epoch2 = await shell.init_producer_id("tx", 10_000)
    assert (error, epoch2) == (tc.NONE, epoch + 2)


def test_timeout_aborts_on_sweep_and_fences(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_timeout_aborts_on_sweep_and_fences)


async def _test_timeout_aborts_on_sweep_and_fences(meta: AsyncMetadata) -> None:
    markers, clock = Markers(), Clock()
    shell = make_shell(meta, markers, clock)
    _, pid, epoch = await shell.init_producer_id("tx", 5_000)
    await shell.add_partitions("tx", pid, epoch, [(1, 0)])
    clock.now += 4.0
    assert await shell.sweep() == 0 and markers.written == []
    clock.now += 2.0
    assert await shell.sweep() == 1
    assert markers.written == [(((1, 0),), pid, epoch + 1, False)]
    assert await shell.end_txn("tx", pid, epoch, True) == tc.PRODUCER_FENCED


def test_sweep_leaves_ids_another_agent_coordinates(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_sweep_leaves_ids_another_agent_coordinates)


async def _test_sweep_leaves_ids_another_agent_coordinates(meta: AsyncMetadata) -> None:
    markers, clock = Markers(), Clock()
    shell = make_shell(meta, markers, clock)
    _, pid, epoch = await shell.init_producer_id("tx", 5_000)
    await shell.add_partitions("tx", pid, epoch, [(1, 0)])
    clock.now += 10.0
    other = TxnShell(meta, markers, max_timeout_ms=60_000, owns=lambda _t: False, clock=clock)
    assert await other.sweep() == 0 and markers.written == []


def test_timeout_above_the_maximum_is_refused(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_timeout_above_the_maximum_is_refused)


async def _test_timeout_above_the_maximum_is_refused(meta: AsyncMetadata) -> None:
    shell = make_shell(meta, Markers(), Clock())
    assert (await shell.init_producer_id("tx", 60_001))[0] == tc.INVALID_TRANSACTION_TIMEOUT
    assert await shell.load("tx") is None


def test_concurrent_requests_of_one_id_are_serialised(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_concurrent_requests_of_one_id_are_serialised)


async def _test_concurrent_requests_of_one_id_are_serialised(meta: AsyncMetadata) -> None:
    shell = make_shell(meta, Markers(), Clock())
    _, pid, epoch = await shell.init_producer_id("tx", 10_000)
    results = await asyncio.gather(
        *(shell.add_partitions("tx", pid, epoch, [(1, p)]) for p in range(20))
    )
    assert set(results) == {tc.NONE}
    record = await shell.load("tx")
    assert record is not None and record.partitions == tuple((1, p) for p in range(20))


def test_long_and_hash_like_ids_are_stored_under_a_digest(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_long_and_hash_like_ids_are_stored_under_a_digest)


async def _test_long_and_hash_like_ids_are_stored_under_a_digest(meta: AsyncMetadata) -> None:
    shell = make_shell(meta, Markers(), Clock())
    for tid in ("x" * 1000, "#sha256:abc", "é" * 300, "nul\x00inside", "tab\there"):
        name = catalog_name(tid)
        assert name.startswith("#sha256:") and len(name) == 8 + 64
        error, pid, _ = await shell.init_producer_id(tid, 10_000)
        assert error == tc.NONE
        blob = await meta.get_catalog_entry(CATALOG_KIND, name)
        assert blob is not None and decode(blob).transactional_id == tid
        record = await shell.load(tid)
        assert record is not None and record.producer_id == pid
    assert catalog_name("plain-id") == "plain-id"


def test_unreadable_state_starts_afresh(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_unreadable_state_starts_afresh)


async def _test_unreadable_state_starts_afresh(meta: AsyncMetadata) -> None:
    await meta.put_catalog_entry(CATALOG_KIND, "tx", b"\xc1garbage", 1, replace=True)
    shell = make_shell(meta, Markers(), Clock())
    assert await shell.load("tx") is None
    assert (await shell.init_producer_id("tx", 10_000))[0] == tc.NONE


def test_idle_ids_are_forgotten_after_the_expiration(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_idle_ids_are_forgotten_after_the_expiration)


async def _test_idle_ids_are_forgotten_after_the_expiration(meta: AsyncMetadata) -> None:
    markers, clock = Markers(), Clock()
    shell = TxnShell(meta, markers, max_timeout_ms=600_000, expiration_ms=60_000, clock=clock)
    _, idle_pid, _ = await shell.init_producer_id("idle", 10_000)
    _, pid, epoch = await shell.init_producer_id("open", 500_000)
    await shell.add_partitions("open", pid, epoch, [(1, 0)])
    clock.now += 59.0
    await shell.sweep()
    assert await shell.load("idle") is not None
    clock.now += 2.0
    await shell.sweep()
    assert await shell.load("idle") is None  # forgotten
    assert await shell.load("open") is not None  # an open transaction never is
    error, new_pid, epoch = await shell.init_producer_id("idle", 10_000)
    assert error == tc.NONE and new_pid != idle_pid and epoch == 0


def test_a_transaction_too_large_to_store_is_refused(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_a_transaction_too_large_to_store_is_refused)


async def _test_a_transaction_too_large_to_store_is_refused(meta: AsyncMetadata) -> None:
    shell = make_shell(meta, Markers(), Clock())
    _, pid, epoch = await shell.init_producer_id("tx", 10_000)
    assert await shell.add_partitions("tx", pid, epoch, [(1, 0)]) == tc.NONE
    huge = [(2**40 + t, 2**30) for t in range(200_000)]  # over the catalog's 1 MiB
    assert (
        await shell.add_partitions("tx", pid, epoch, huge) == ErrorCode.INVALID_REQUEST.kafka_code
    )
    record = await shell.load("tx")
    assert record is not None and record.partitions == ((1, 0),)  # unchanged
    assert await shell.end_txn("tx", pid, epoch, False) == tc.NONE


def test_an_exhausted_epoch_moves_to_a_new_producer_id(on_meta: Callable[[Body], None]) -> None:
    on_meta(_test_an_exhausted_epoch_moves_to_a_new_producer_id)


async def _test_an_exhausted_epoch_moves_to_a_new_producer_id(meta: AsyncMetadata) -> None:
    shell = make_shell(meta, Markers(), Clock())
    _, pid, _ = await shell.init_producer_id("tx", 10_000)
    record = await shell.load("tx")
    assert record is not None
    await shell.store(tc._replace(record, producer_epoch=tc.MAX_EPOCH - 1))
    error, new_pid, epoch = await shell.init_producer_id("tx", 10_000)
    assert error == tc.NONE and new_pid != pid and epoch == 0
    # The old producer id is fenced: its requests name an unknown mapping.
    assert await shell.end_txn("tx", pid, tc.MAX_EPOCH - 1, True) == tc.INVALID_PRODUCER_ID_MAPPING
