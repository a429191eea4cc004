"""Two transaction coordinators of one transactional id (for a heartbeat interval while the
set of live agents changes): every state write is a compare-and-set, so the one that read
older state loses, changes nothing and answers CONCURRENT_TRANSACTIONS (or NOT_COORDINATOR
when it no longer coordinates the id) instead of overwriting the other's state. Real SQLite
metadata; the interleaving is forced by running the other coordinator's request right after
this one's read."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ingest.kafka import txn_coordinator as tc
from ingest.kafka.txn_coordinator import TxnState
from ingest.kafka.txn_shell import NOT_COORDINATOR, TxnShell
from metadata.async_store import AsyncMetadata
from streamhouse.errors import ErrorCode


class Markers:
    def __init__(self) -> None:
        self.written: list[tuple[tuple[tuple[int, int], ...], int, int, bool]] = []

    async def __call__(
        self, partitions: Sequence[tuple[int, int]], producer_id: int, epoch: int, commit: bool
    ) -> list[ErrorCode | None]:
        self.written.append((tuple(partitions), producer_id, epoch, commit))
        return [None for _ in partitions]


class AfterRead:
    """The metadata as one coordinator sees it: once armed, its next catalog read is
    followed by ``meanwhile`` (the other coordinator's request) before it returns."""

    def __init__(self, meta: AsyncMetadata) -> None:
        self.meta = meta
        self.meanwhile: Callable[[], Awaitable[Any]] | None = None

    async def get_catalog_entry(self, kind: str, name: str) -> bytes | None:
        blob = await self.meta.get_catalog_entry(kind, name)
        if self.meanwhile is not None:
            other, self.meanwhile = self.meanwhile, None
            await other()
        return blob

    def __getattr__(self, name: str) -> Any:
        return getattr(self.meta, name)


def run(tmp_path: pathlib.Path, body: Callable[[AsyncMetadata], Awaitable[None]]) -> None:
    async def main() -> None:
        meta = await AsyncMetadata.open(tmp_path / "meta.sqlite", synchronous="NORMAL")
        try:
            await body(meta)
        finally:
            await meta.close()

    asyncio.run(main())


def test_a_stale_coordinator_cannot_undo_a_fence(tmp_path: pathlib.Path) -> None:
    async def body(meta: AsyncMetadata) -> None:
        markers = Markers()
        slow = AfterRead(meta)
        old = TxnShell(slow, markers, max_timeout_ms=60_000)  # type: ignore[arg-type]
        new = TxnShell(meta, markers, max_timeout_ms=60_000)
        _, pid, epoch = await old.init_producer_id("tx", 10_000)
        assert await old.add_partitions("tx", pid, epoch, [(1, 0)]) == tc.NONE
        fenced: list[tuple[int, int, int]] = []

        async def fence() -> None:
            fenced.append(await new.init_producer_id("tx", 10_000))

        # The old coordinator reads the Ongoing state; before it writes, the new one fences
        # the producer (aborting its transaction at a bumped epoch).
        slow.meanwhile = fence
        answer = await old.add_partitions("tx", pid, epoch, [(1, 1)])
        assert answer == tc.CONCURRENT_TRANSACTIONS
        assert fenced == [(tc.NONE, pid, epoch + 2)]
        record = await new.load("tx")
        assert record is not None
        assert (record.producer_epoch, record.state) == (epoch + 2, TxnState.EMPTY)
        assert not record.partitions  # partition (1, 1) was not added behind the fence
        assert markers.written == [(((1, 0),), pid, epoch + 1, False)]
        # The producer's retry now reads the winner's state and is fenced.
        assert await old.add_partitions("tx", pid, epoch, [(1, 1)]) == tc.PRODUCER_FENCED

    run(tmp_path, body)


def test_a_coordinator_that_lost_the_id_answers_not_coordinator(tmp_path: pathlib.Path) -> None:
    async def body(meta: AsyncMetadata) -> None:
        markers = Markers()
        slow = AfterRead(meta)
        owned = [True]
        old = TxnShell(slow, markers, max_timeout_ms=60_000, owns=lambda _t: owned[0])  # type: ignore[arg-type]
        new = TxnShell(meta, markers, max_timeout_ms=60_000)
        _, pid, epoch = await new.init_producer_id("tx", 10_000)
        assert await new.add_partitions("tx", pid, epoch, [(1, 0)]) == tc.NONE

        async def commit_elsewhere() -> None:
            owned[0] = False  # the agents' ring changed: "new" coordinates the id now
            assert await new.end_txn("tx", pid, epoch, True) == tc.NONE

        slow.meanwhile = commit_elsewhere
        assert await old.end_txn("tx", pid, epoch, False) == NOT_COORDINATOR
        record = await new.load("tx")
        assert record is not None and record.state is TxnState.COMPLETE_COMMIT
        assert markers.written == [(((1, 0),), pid, epoch, True)]  # no ABORT marker written

    run(tmp_path, body)


def test_a_new_id_created_twice_keeps_the_first(tmp_path: pathlib.Path) -> None:
    async def body(meta: AsyncMetadata) -> None:
        markers = Markers()
        slow = AfterRead(meta)
        old = TxnShell(slow, markers, max_timeout_ms=60_000)  # type: ignore[arg-type]
        new = TxnShell(meta, markers, max_timeout_ms=60_000)
        first: list[tuple[int, int, int]] = []

        async def init_elsewhere() -> None:
            first.append(await new.init_producer_id("tx", 10_000))

        slow.meanwhile = init_elsewhere
        assert (await old.init_producer_id("tx", 10_000))[0] == tc.CONCURRENT_TRANSACTIONS
        record = await new.load("tx")
        assert record is not None
        assert (tc.NONE, record.producer_id, record.producer_epoch) == first[0]

    run(tmp_path, body)


def test_the_sweeper_does_not_forget_an_id_used_meanwhile(tmp_path: pathlib.Path) -> None:
    async def body(meta: AsyncMetadata) -> None:
        markers = Markers()
        slow = AfterRead(meta)
        now = [1_000_000.0]
        old = TxnShell(
            slow,  # type: ignore[arg-type]
            markers,
            max_timeout_ms=60_000,
            expiration_ms=1_000,
            clock=lambda: now[0],
        )
        new = TxnShell(meta, markers, max_timeout_ms=60_000, clock=lambda: now[0])
        _, pid, epoch = await new.init_producer_id("tx", 10_000)
        now[0] += 10  # idle for 10 s: past the 1 s expiration
        again: list[tuple[int, int, int]] = []

        async def reuse() -> None:
            again.append(await new.init_producer_id("tx", 10_000))

        slow.meanwhile = reuse
        await old.sweep()
        assert again == [(tc.NONE, pid, epoch + 1)]
        record = await new.load("tx")
        assert record is not None and record.producer_epoch == epoch + 1  # not forgotten

    run(tmp_path, body)
