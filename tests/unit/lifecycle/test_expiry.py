"""lifecycle.expiry against real metadata stores (an SQLite file and a throwaway PostgreSQL):
idle producer state and the offsets of empty groups expire; nothing else does.

The stores date rows by their own clock, so the tests move the expiry's clock instead: a
clock `retention + 1 min` after the rows were written makes them idle, one a minute short of
it does not."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import msgspec
import pytest

from ingest.kafka.groups import GroupSnapshot, MemberSnapshot, encode_snapshot
from lifecycle.expiry import ExpiryReport, expire_idle_state
from metadata import BatchRef, CommitBlock
from metadata.async_store import AsyncMetadata
from streamhouse.config import Settings

T = TypeVar("T")
MINUTE_MS = 60_000
SETTINGS = Settings(producer_id_expiration_ms=3_600_000, offsets_retention_minutes=60)
PRODUCER_TTL = SETTINGS.producer_id_expiration_ms
OFFSETS_TTL = SETTINGS.offsets_retention_minutes * MINUTE_MS


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "meta.sqlite")
    else:
        yield request.getfixturevalue("postgres_dsn")


def run(target: str, test: Callable[[AsyncMetadata], Awaitable[T]]) -> T:
    async def main() -> T:
        meta = await AsyncMetadata.open(target, forbid_loop_calls=True)
        try:
            return await test(meta)
        finally:
            await meta.close()

    return asyncio.run(main())


def block(topic_id: int, partition: int, batch: BatchRef) -> CommitBlock:
    return CommitBlock(
        topic_id=topic_id,
        partition=partition,
        byte_offset=0,
        byte_length=100,
        max_timestamp=now_ms(),
        batches=[batch],
    )


def snapshot(group_id: str, members: int) -> bytes:
    return encode_snapshot(
        GroupSnapshot(
            group_id=group_id,
            state="Stable" if members else "Empty",
            generation_id=3,
            protocol_type="consumer",
            protocol_name="range" if members else None,
            leader_id="m-0" if members else None,
            members=[
                MemberSnapshot(
                    member_id=f"m-{i}",
                    group_instance_id=None,
                    client_id="c",
                    client_host="/127.0.0.1",
                    session_timeout_ms=10_000,
                    rebalance_timeout_ms=30_000,
                    protocols=[("range", b"")],
                )
                for i in range(members)
            ],
        )
    )


def as_dict(report: ExpiryReport) -> dict[str, Any]:
    return msgspec.structs.asdict(report)


def test_idle_producer_state_expires_and_is_no_longer_deduplicated(target: str) -> None:
    async def test(meta: AsyncMetadata) -> None:
        topic = await meta.create_topic("idem", 2, {})
        pid, epoch = await meta.allocate_producer_id()
        batch = BatchRef(record_count=3, producer_id=pid, producer_epoch=epoch, base_sequence=0)
        before = now_ms()
        first = await meta.commit_segment(
            "segments/1-a.seg",
            200,
            [block(topic.topic_id, 0, batch), block(topic.topic_id, 1, batch)],
        )
        after = now_ms()
        assert [r[0].base_offset for r in first] == [0, 0]

        # Not idle yet: nothing expires and a retry is still deduplicated.
        report = await expire_idle_state(meta, SETTINGS, before + PRODUCER_TTL - MINUTE_MS)
        assert report.producer_states_expired == 0
        retry = await meta.commit_segment(
            "segments/2-a.seg", 100, [block(topic.topic_id, 0, batch)]
        )
        assert (retry[0][0].base_offset, retry[0][0].error) == (0, None)
        assert (await meta.get_partition(topic.topic_id, 0)).high_watermark == 3

        # Idle longer than producer_id_expiration_ms: both partitions' states go.
        report = await expire_idle_state(meta, SETTINGS, after + PRODUCER_TTL + MINUTE_MS)
        assert report.producer_states_expired == 2
        # The same batch again is new data now (Kafka: no state, any sequence accepted).
        rewritten = now_ms()
        again = await meta.commit_segment(
            "segments/3-a.seg", 100, [block(topic.topic_id, 0, batch)]
        )
        assert (again[0][0].base_offset, again[0][0].error) == (3, None)
        assert (await meta.get_partition(topic.topic_id, 0)).high_watermark == 6
        # The new state is not idle until producer_id_expiration_ms after it was written.
        report = await expire_idle_state(meta, SETTINGS, rewritten + PRODUCER_TTL - MINUTE_MS)
        assert report.producer_states_expired == 0

    run(target, test)


def test_offsets_of_empty_groups_expire_and_others_stay(target: str) -> None:
    async def test(meta: AsyncMetadata) -> None:
        topic = await meta.create_topic("read", 2, {})
        tid = topic.topic_id
        groups = {
            "standalone": None,  # offsets only: manual assignment, no membership
            "empty": snapshot("empty", 0),
            "stable": snapshot("stable", 2),
            "unreadable": b"\x93not a snapshot",
        }
        for group_id, blob in groups.items():
            await meta.commit_offset(group_id, tid, 0, 10, "m")
            await meta.commit_offset(group_id, tid, 1, 20, "")
            if blob is not None:
                assert await meta.save_group_state(group_id, 3, blob)
        written = now_ms()

        # Within offsets.retention.minutes nothing is even a candidate.
        report = await expire_idle_state(meta, SETTINGS, written + OFFSETS_TTL - MINUTE_MS)
        assert report.groups_checked == 0 and report.group_offsets_expired == 0
        for group_id in groups:
            assert len(await meta.list_group_offsets(group_id)) == 2

        report = await expire_idle_state(meta, SETTINGS, written + OFFSETS_TTL + MINUTE_MS)
        assert as_dict(report) == {
            "producer_states_expired": 0,
            "groups_checked": 4,
            "groups_expired": 2,
            "group_offsets_expired": 4,
            "groups_kept_with_members": 1,
            "groups_kept_unreadable": 1,
            "groups_changed_meanwhile": 0,
        }
        assert await meta.list_group_offsets("standalone") == []
        assert await meta.list_group_offsets("empty") == []
        assert len(await meta.list_group_offsets("stable")) == 2
        assert len(await meta.list_group_offsets("unreadable")) == 2
        assert await meta.get_offset("stable", tid, 1) == (20, "")
        # The coordinator's stored state is its own: left in place.
        assert await meta.load_group_state("empty") is not None

    run(target, test)


def test_a_commit_after_the_cutoff_keeps_every_offset_of_the_group(target: str) -> None:
    async def test(meta: AsyncMetadata) -> None:
        topic = await meta.create_topic("busy", 2, {})
        await meta.commit_offset("g", topic.topic_id, 0, 5, "")
        first = now_ms()
        await asyncio.to_thread(wait_for_next_ms, first)
        await meta.commit_offset("g", topic.topic_id, 1, 7, "")
        # A clock at which the first commit is past retention and the second is not: the
        # group committed within offsets.retention.minutes, so it keeps both offsets.
        report = await expire_idle_state(meta, SETTINGS, first + OFFSETS_TTL)
        assert report.group_offsets_expired == 0
        assert len(await meta.list_group_offsets("g")) == 2

    run(target, test)


def wait_for_next_ms(ms: int) -> None:
    """Returns once the wall clock is past `ms` (a store dates a commit in whole ms)."""
    deadline = time.monotonic() + 5
    while now_ms() <= ms + 1:
        if time.monotonic() > deadline:
            raise AssertionError("the wall clock did not advance")
        time.sleep(0.001)  # wall-clock poll: the next millisecond, not synchronisation
