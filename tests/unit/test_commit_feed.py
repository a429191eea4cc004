"""CommitFeed: PostgreSQL commit notifications wake a ReadEngine's long-polls across stores.

Two PostgresMetadataStore instances on one fresh database play two agents: "A" commits
segments (PUT into a shared file:// object store), "B" runs a ReadEngine whose long-polls must
be woken by A's commits through a CommitFeed. Waits are bounded polls of a condition (and
generous deadlines on results), never timed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pathlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from metadata import BatchRef, CommitBlock, MetadataUnavailableError
from metadata.async_store import AsyncMetadata
from metadata.commit_feed import (
    CommitFeed,
    CommitNotice,
    NoticeBlock,
    NoticeFormatError,
    parse_commit_notification,
)
from metadata.commit_notice import COMMIT_CHANNEL, commit_notification
from metadata.postgres import PostgresMetadataStore
from reader import engine as engine_module
from reader.cache import BlockCache
from reader.engine import ReadEngine
from streamhouse import objectstore
from streamhouse.frames import FORMAT_RECORDS, FetchPart, FetchRequest
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.recordbatch import encode_batch, scan_batches
from streamhouse.segment import SegmentWriter

_keys = itertools.count()

# ----------------------------------------------------------------------------- payload format


def test_parse_block_list() -> None:
    notice = parse_commit_notification("1|segments/0001-ab.seg|3:0:0:120:10;3:2:120:64:7")
    assert notice == CommitNotice(
        "segments/0001-ab.seg", (NoticeBlock(3, 0, 0, 120, 10), NoticeBlock(3, 2, 120, 64, 7))
    )


def test_parse_star_means_anything_changed() -> None:
    assert parse_commit_notification("1|segments/k.seg|*") == CommitNotice("segments/k.seg", None)


def test_parse_agrees_with_the_writer() -> None:
    """What metadata.commit_notice writes (the store's payloads) parses back."""
    entries = [(7, p, p * 100, 100, p + 3) for p in range(40)]
    assert parse_commit_notification(commit_notification("segments/a|b.seg", entries)) == (
        CommitNotice("segments/a|b.seg", tuple(NoticeBlock(*e) for e in entries))
    )
    many = [(7, p, p * 100, 100, p + 3) for p in range(2000)]
    assert parse_commit_notification(commit_notification("k", many)) == CommitNotice("k", None)
    assert parse_commit_notification(commit_notification("k", [])) == CommitNotice("k", ())


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "2|segments/k.seg|*",
        "1|*",
        "1||*",
        "1|k|1:2:3:4",
        "1|k|1:2:3:4:5:6",
        "1|k|1:2:x:4:5",
        "1|k|1:2:3:4:5;",
        "1|k|1:-2:3:4:5",
    ],
)
def test_parse_refuses_malformed_payloads(payload: str) -> None:
    with pytest.raises(NoticeFormatError, match="commit notification"):
        parse_commit_notification(payload)


def test_feed_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        CommitFeed("postgresql://x", lambda n: None, lambda: None, max_backoff_s=0)


# ----------------------------------------------------------------------------- two agents


@dataclass
class Agents:
    """Agent A's store (commits), agent B's engine (long-polls) fed by B's CommitFeed."""

    dsn: str
    a: PostgresMetadataStore
    b: PostgresMetadataStore
    store: Any
    engine: ReadEngine
    topic_id: int
    range_gets: list[tuple[str, int, int]] = field(default_factory=list)
    gaps: int = 0

    def on_gap(self) -> None:
        self.gaps += 1
        self.engine.wake_all()

    async def commit(self, partition: int, values: list[bytes]) -> str:
        """Agent A: one segment with one batch of `values` on `partition`, PUT then committed
        (the store notifies the commit)."""
        n = len(values)
        batch = encode_batch([None] * n, values, [[] for _ in range(n)], [1_000] * n)
        info = scan_batches(batch)[0]
        writer = SegmentWriter()
        writer.add_block(self.topic_id, partition, [batch], 1, n, 1_000, 1_000)
        obj, entries = writer.finish()
        key = f"segments/{next(_keys):020d}-a.seg"
        await objectstore.put(self.store, key, obj)
        blocks = [
            CommitBlock(
                e.topic_id,
                e.partition,
                e.offset,
                e.length,
                e.max_timestamp,
                [BatchRef(info.record_count, -1, -1, -1)],
            )
            for e in entries
        ]
        await asyncio.to_thread(self.a.commit_segment, key, len(obj), blocks)
        return key


async def notify(dsn: str, payload: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_notify(%s, %s)", (COMMIT_CHANNEL, payload))


def long_poll(a: Agents, partition: int, offset: int) -> FetchRequest:
    part = FetchPart(a.topic_id, partition, offset, 1 << 20)
    return FetchRequest(1, 120_000, 1, 1 << 20, FORMAT_RECORDS, [part], 0)


def values_of(payload: bytes) -> list[bytes]:
    return [r.value for r in pb.ConsumeResponse.FromString(payload).records]


async def eventually(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        await asyncio.sleep(0.002)


@pytest.fixture
def stores(postgres_dsn: str) -> Iterator[tuple[PostgresMetadataStore, PostgresMetadataStore]]:
    a = PostgresMetadataStore(postgres_dsn)
    b = PostgresMetadataStore(postgres_dsn)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def agents_factory(
    postgres_dsn: str,
    stores: tuple[PostgresMetadataStore, PostgresMetadataStore],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Any]:
    a, b = stores
    topic = a.create_topic("events", 2)
    store = objectstore.open_object_store((tmp_path / "objects").as_uri())

    def make(feed_dsn: str | None = None) -> Any:
        engine = ReadEngine(AsyncMetadata(b), store, BlockCache(64 << 20), 0)
        agents = Agents(postgres_dsn, a, b, store, engine, topic.topic_id)
        real_get_range = objectstore.get_range

        async def recording_get_range(s: Any, key: str, start: int, length: int) -> bytes:
            agents.range_gets.append((key, start, length))
            return await real_get_range(s, key, start, length)

        monkeypatch.setattr(engine_module.objectstore, "get_range", recording_get_range)

        @contextlib.asynccontextmanager
        async def running() -> AsyncIterator[tuple[Agents, CommitFeed]]:
            feed = CommitFeed(
                feed_dsn or postgres_dsn, engine.on_notice, agents.on_gap, max_backoff_s=0.2
            )
            task = asyncio.ensure_future(feed.run())
            try:
                await asyncio.wait_for(feed.listening.wait(), timeout=30)
                yield agents, feed
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        return running()

    return make


def test_a_commit_on_another_store_wakes_the_long_poll(agents_factory: Callable[..., Any]) -> None:
    """B's long-poll (max wait 120 s) returns A's records, loaded by one range GET however
    many fetches wait; the feed keeps listening for the next commit."""

    async def go() -> None:
        async with agents_factory() as (agents, feed):
            engine = agents.engine
            polls = [asyncio.ensure_future(engine.fetch(long_poll(agents, 0, 0))) for _ in range(4)]
            await eventually(lambda: engine.waiting == 4, "4 fetches waiting")
            key = await agents.commit(0, [b"v0", b"v1"])
            results = await asyncio.wait_for(asyncio.gather(*polls), timeout=30)
            assert [values_of(p) for _r, p in results] == [[b"v0", b"v1"]] * 4
            assert [g[0] for g in agents.range_gets] == [key]
            assert feed.notices >= 1
            # The notice named the committing backend (A's connection, not B's feed's).
            assert engine._notice_pids[key] not in (0, feed.backend_pid)

            poll = asyncio.ensure_future(engine.fetch(long_poll(agents, 0, 2)))
            await eventually(lambda: engine.waiting == 1, "next fetch waiting")
            await agents.commit(1, [b"other"])  # another partition: not woken for it
            await agents.commit(0, [b"v2"])
            (_resp, payload) = await asyncio.wait_for(poll, timeout=30)
            assert values_of(payload) == [b"v2"]
            assert feed.bad_payloads == 0

    asyncio.run(go())


def test_a_bad_payload_wakes_every_waiter_and_the_feed_goes_on(
    agents_factory: Callable[..., Any],
) -> None:
    async def go() -> None:
        async with agents_factory() as (agents, feed):
            gaps = agents.gaps
            await notify(agents.dsn, "not a commit notice")
            await eventually(lambda: feed.bad_payloads == 1, "bad payload counted")
            assert agents.gaps == gaps + 1
            poll = asyncio.ensure_future(agents.engine.fetch(long_poll(agents, 1, 0)))
            await eventually(lambda: agents.engine.waiting == 1, "fetch waiting")
            await agents.commit(1, [b"after"])
            (_resp, payload) = await asyncio.wait_for(poll, timeout=30)
            assert values_of(payload) == [b"after"]

    asyncio.run(go())


def test_reconnect_after_the_connection_is_killed_wakes_waiters(
    postgres_dsn: str, agents_factory: Callable[..., Any]
) -> None:
    """The feed's backend is terminated and cannot log in again while A commits (that
    notification is lost); once it can, the feed reconnects, calls on_gap, the waiting fetch
    re-reads the metadata and returns A's records; later commits wake fetches again."""
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("CREATE ROLE feeder LOGIN")
    feed_dsn = re.sub(r"://[^@/]*@", "://feeder@", postgres_dsn, count=1)
    assert feed_dsn != postgres_dsn

    async def go() -> None:
        async with agents_factory(feed_dsn) as (agents, feed):
            engine = agents.engine
            assert feed.connections == 1
            poll = asyncio.ensure_future(engine.fetch(long_poll(agents, 0, 0)))
            await eventually(lambda: engine.waiting == 1, "fetch waiting")
            gaps = agents.gaps
            async with await psycopg.AsyncConnection.connect(
                postgres_dsn, autocommit=True
            ) as admin:
                await admin.execute("ALTER ROLE feeder NOLOGIN")
                await admin.execute("SELECT pg_terminate_backend(%s)", (feed.backend_pid,))
                await eventually(lambda: feed.failed_connects >= 1, "a refused reconnect")
                await agents.commit(0, [b"lost"])  # nobody listens: its notice is lost
                assert not poll.done()
                await admin.execute("ALTER ROLE feeder LOGIN")
            (_resp, payload) = await asyncio.wait_for(poll, timeout=30)
            assert values_of(payload) == [b"lost"]
            assert feed.connections == 2 and agents.gaps == gaps + 1

            poll = asyncio.ensure_future(engine.fetch(long_poll(agents, 0, 1)))
            await eventually(lambda: engine.waiting == 1, "next fetch waiting")
            await agents.commit(0, [b"heard"])
            (_resp, payload) = await asyncio.wait_for(poll, timeout=30)
            assert values_of(payload) == [b"heard"]

    asyncio.run(go())


def test_feed_survives_a_postgresql_restart(
    postgres: Any, agents_factory: Callable[..., Any]
) -> None:
    """PostgreSQL restarts under a listening feed: it reconnects by itself, calls on_gap
    (which wakes waiters), and a commit made afterwards wakes a long-poll again."""

    async def go() -> None:
        async with agents_factory() as (agents, feed):
            gaps = agents.gaps
            await asyncio.to_thread(postgres.restart_server)
            await eventually(lambda: feed.connections == 2, "feed listening again", timeout=60)
            assert agents.gaps == gaps + 1
            poll = asyncio.ensure_future(agents.engine.fetch(long_poll(agents, 0, 0)))
            await eventually(lambda: agents.engine.waiting == 1, "fetch waiting")
            deadline = asyncio.get_running_loop().time() + 60
            while True:  # A's pool may still be reconnecting: a commit then fails retriably
                try:
                    await agents.commit(0, [b"after restart"])
                    break
                except MetadataUnavailableError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            (_resp, payload) = await asyncio.wait_for(poll, timeout=30)
            assert values_of(payload) == [b"after restart"]

    asyncio.run(go())
