"""Small-object compaction and partly-live rewrites in a lifecycle pass, against real metadata
stores (SQLite, and PostgreSQL from the `postgres_dsn` fixture) and a real local-folder object
store holding real segment objects: fewer objects, the same batches at the same offsets, old
objects dead and deleted after the grace period, a refused switch, the one rewriter of a
cluster, the byte budget."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from collections.abc import Iterator

import pytest
from test_lifecycle_runner import open_refusing_store

from lifecycle.compaction import compact_objects
from lifecycle.rewrite import BlockData, RewriteContext, coalesce
from lifecycle.runner import LifecyclePass, ObjectStoreFailure, PassReport
from metadata import BatchRef, CommitBlock
from metadata.async_store import AsyncMetadata
from metadata.interface import MetadataBackend, open_store
from metadata.store import BlockRewrite, StoredBlock
from streamhouse import objectstore
from streamhouse.config import Settings, load_settings
from streamhouse.recordbatch import encode_batch, walk_block
from streamhouse.segment import SegmentWriter, decode_block

GRACE = 600_000
MIN_AGE = 60_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def old_enough() -> int:
    """A pass clock at which everything committed so far is old enough to merge, but nothing
    dead is past its grace period."""
    return now_ms() + MIN_AGE + 1


def later() -> int:
    return now_ms() + GRACE + 60_000


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "metadata.sqlite")
    else:
        yield request.getfixturevalue("postgres_dsn")


def settings_for(tmp_path: pathlib.Path, target: str, **extra: str) -> Settings:
    env = {"STREAMHOUSE_DATA_DIR": str(tmp_path / "data")}
    if target.startswith("postgres"):
        env["STREAMHOUSE_METADATA"] = target
    env.update({f"STREAMHOUSE_{k.upper()}": v for k, v in extra.items()})
    return load_settings(env)


#: Records are timestamped from here (recent: retention keeps them).
T0 = time.time_ns() // 1_000_000 - 3_600_000


def batch(ts: int, records: int = 4, pid: int = -1, seq: int = -1, noise: int = 0) -> bytes:
    ts += T0
    return encode_batch(
        [f"key-{ts}-{i}".encode() for i in range(records)],
        [f"value-{ts}-{i}".encode() * 8 + os.urandom(noise) for i in range(records)],
        [[] for _ in range(records)],
        [ts + i for i in range(records)],
        producer_id=pid,
        producer_epoch=0 if pid >= 0 else -1,
        base_sequence=seq,
    )


class World:
    """A metadata store and an object store holding real segment objects."""

    def __init__(self, tmp_path: pathlib.Path, target: str, **extra: str) -> None:
        self.settings = settings_for(tmp_path, target, **extra)
        self.store = objectstore.open_object_store(self.settings.object_store_url)
        self.meta: MetadataBackend = open_store(target)
        self.target = target
        self.serial = 0

    def commit(self, parts: dict[tuple[str, int], list[tuple[bytes, BatchRef]]]) -> str:
        """PUTs and commits one segment holding a block per (topic, partition) of `parts`."""
        writer = SegmentWriter()
        blocks = []
        for (topic, partition), batches in sorted(parts.items()):
            info = self.meta.get_topic(topic)
            assert info is not None
            writer.add_block(
                info.topic_id, partition, [b for b, _ in batches], len(batches), 1, 0, 2**40
            )
            blocks.append((info.topic_id, partition, [r for _, r in batches], batches))
        obj, entries = writer.finish()
        self.serial += 1
        key = f"segments/{self.serial:020d}-test.seg"
        asyncio.run(objectstore.put(self.store, key, obj))
        commit = []
        for (topic_id, partition, refs, batches), e in zip(blocks, entries, strict=True):
            newest = max(walk_block(b"".join(b for b, _ in batches), 0)[-1].info.max_timestamp, 0)
            commit.append(CommitBlock(topic_id, partition, e.offset, e.length, newest, refs))
        self.meta.commit_segment(key, len(obj), commit)
        return key

    def log(self, topic: str, partition: int) -> list[tuple[int, int, bytes]]:
        """Every batch a reader finds from offset 0: (first, last offset, bytes after the
        baseOffset field)."""
        info = self.meta.get_topic(topic)
        assert info is not None
        out: list[tuple[int, int, bytes]] = []
        offset = 0
        while True:
            found = self.meta.find_blocks(info.topic_id, partition, offset, 100)
            if not found:
                return out
            for loc in found:
                raw = asyncio.run(
                    objectstore.get_range(
                        self.store, loc.segment_key, loc.byte_offset, loc.byte_length
                    )
                )
                data = decode_block(raw)
                for b in walk_block(data, loc.base_offset, loc.skipped_batches):
                    at = b.info.position
                    out.append((b.first_offset, b.last_offset, data[at + 8 : at + b.info.length]))
                offset = loc.end_offset

    def keys(self) -> set[str]:
        async def listing() -> set[str]:
            return {
                i.key async for p in objectstore.list_objects(self.store, "segments/") for i in p
            }

        return asyncio.run(listing())

    def live(self) -> list[str]:
        return [s.key for s in self.meta.live_segments(0, 10_000)]

    def run(self, clock: int) -> PassReport:
        async def scenario() -> PassReport:
            meta = await AsyncMetadata.open(self.target, forbid_loop_calls=True)
            try:
                return await LifecyclePass(self.settings, meta, self.store).run(clock)
            finally:
                await meta.close()

        return asyncio.run(scenario())

    def close(self) -> None:
        self.meta.close()


@pytest.fixture
def world(tmp_path: pathlib.Path, target: str) -> Iterator[World]:
    w = World(tmp_path, target)
    try:
        yield w
    finally:
        w.close()


def fill(world: World, segments: int = 12) -> dict[tuple[str, int], list[tuple[int, int, bytes]]]:
    """Commits `segments` small objects over two topics and five partitions, some with an
    idempotent producer's duplicate batch (skipped); returns every partition's log."""
    world.meta.create_topic("alpha", 3)
    world.meta.create_topic("beta", 2)
    seq = 0
    for i in range(segments):
        parts: dict[tuple[str, int], list[tuple[bytes, BatchRef]]] = {}
        for p in range(3):
            if (i + p) % 4 != 3:  # not every partition in every object
                parts[("alpha", p)] = [(batch(1000 * i + p), BatchRef(4))]
        first = batch(1000 * i + 7, pid=42, seq=seq)
        parts[("beta", i % 2)] = [(first, BatchRef(4, 42, 0, seq))]
        if i % 3 == 0:  # the same batch again: a duplicate, skipped by the commit
            parts[("beta", i % 2)].append((first, BatchRef(4, 42, 0, seq)))
        seq += 4 if i % 2 == 1 else 0
        world.commit(parts)
    return {(t, p): world.log(t, p) for t, n in (("alpha", 3), ("beta", 2)) for p in range(n)}


def test_small_objects_merge_into_one_with_every_batch_at_its_offset(world: World) -> None:
    before = fill(world)
    keys = set(world.live())
    assert len(keys) == 12
    assert sum(len(v) for v in before.values()) > 30

    # At the real clock nothing is old enough.
    report = world.run(now_ms())
    assert report.rewriter and report.compaction is not None
    assert report.compaction.small_objects == 0 and report.compaction.groups_rewritten == 0

    report = world.run(old_enough())
    c = report.compaction
    assert c is not None
    assert (c.small_objects, c.groups_rewritten, c.objects_replaced) == (12, 1, 12)
    assert c.duplicate_batches_dropped == 4
    assert c.bytes_after < c.bytes_before
    live = world.live()
    assert len(live) == 1 and live[0] not in keys
    after = {k: world.log(*k) for k in before}
    assert after == before
    # One block per partition: the cold read of a partition's history is one GET.
    rows = world.meta.blocks_of_segments([s.segment_id for s in world.meta.live_segments()])
    assert len(rows) == 5
    # The merged rows keep their batch bytes as raw length (what retention.bytes counts).
    raw = world.meta.storage_report(now_ms(), 0).bytes_raw
    assert raw == sum(8 + len(b) for log in after.values() for _, _, b in log)  # + baseOffset
    # The old objects are dead: kept through the grace period, then deleted.
    assert world.keys() == keys | set(live)
    report = world.run(later())
    assert report.dead_objects_deleted == 12
    assert world.keys() == set(live)
    assert {k: world.log(*k) for k in before} == before
    # A lone merged object is not rewritten again.
    report = world.run(later())
    assert report.compaction is not None and report.compaction.groups_rewritten == 0


def test_merged_blocks_keep_to_the_topics_segment_ms_and_segment_bytes(world: World) -> None:
    # "timed": one object every 4 s of record time, segment.ms 10 s: blocks of 3 objects.
    # "sized": segment.bytes of two batches: blocks of 2. "plain": the defaults, one block.
    world.meta.create_topic("timed", 1, {"segment.ms": "10000"})
    sample = len(batch(0))
    world.meta.create_topic("sized", 1, {"segment.bytes": str(2 * sample + 10)})
    world.meta.create_topic("plain", 1)
    for i in range(9):
        world.commit(
            {
                (topic, 0): [(batch(10_000 + 4_000 * i), BatchRef(4))]
                for topic in ("timed", "sized", "plain")
            }
        )
    before = {t: world.log(t, 0) for t in ("timed", "sized", "plain")}
    report = world.run(old_enough())
    assert report.compaction is not None and report.compaction.objects_replaced == 9
    rows = world.meta.blocks_of_segments([s.segment_id for s in world.meta.live_segments()])
    ids = {t: world.meta.get_topic(t).topic_id for t in before}  # type: ignore[union-attr]
    spans = {
        t: [(r.end_offset - r.base_offset) // 4 for r in rows if r.topic_id == i]
        for t, i in ids.items()
    }
    assert spans == {"timed": [3, 3, 3], "sized": [2, 2, 2, 2, 1], "plain": [9]}
    assert {t: world.log(t, 0) for t in before} == before


def test_a_partly_live_object_is_rewritten_with_its_live_blocks(
    tmp_path: pathlib.Path, target: str
) -> None:
    # Small objects: under 100 bytes here, so only the partly-live rule applies.
    world = World(tmp_path, target, lifecycle_small_object_bytes="100")
    try:
        partly_live(world)
    finally:
        world.close()


def partly_live(world: World) -> None:
    world.meta.create_topic("keep", 1)
    world.meta.create_topic("drop", 1)
    big = [(batch(i * 10, records=30), BatchRef(30)) for i in range(20)]
    key = world.commit({("keep", 0): [(batch(5), BatchRef(4))], ("drop", 0): big})
    keep_before = world.log("keep", 0)
    world.meta.delete_topic("drop")  # most of the object is dead now
    report = world.run(now_ms())
    c = report.compaction
    assert c is not None
    assert (c.partly_live_objects, c.groups_rewritten, c.objects_replaced) == (1, 1, 1)
    live = world.live()
    assert len(live) == 1 and live[0] != key
    assert c.bytes_after < c.bytes_before / 5
    assert world.log("keep", 0) == keep_before
    report = world.run(later())
    assert report.dead_objects_deleted == 1
    assert key not in world.keys()
    assert world.log("keep", 0) == keep_before


class RacingContext(RewriteContext):
    """A rewrite context during whose rewrite DeleteRecords moves a partition's log start
    (what another agent's Kafka client may do at any time)."""

    def __init__(self, world: World, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.world = world

    async def switch(self, rewrite: BlockRewrite, now_ms: int | None = None) -> bool:
        info = self.world.meta.get_topic("alpha")
        assert info is not None
        first = self.world.meta.find_blocks(info.topic_id, 0, 0, 1)[0]
        await asyncio.to_thread(
            self.world.meta.set_log_start_offset, info.topic_id, 0, first.end_offset
        )
        return await super().switch(rewrite, now_ms)


def test_a_rewrite_whose_rows_changed_meanwhile_is_refused_and_its_object_dies(
    world: World,
) -> None:
    before = fill(world, segments=6)
    keys = set(world.live())

    async def scenario() -> None:
        meta = await AsyncMetadata.open(world.target, forbid_loop_calls=True)
        try:
            ctx = RacingContext(world, world.settings, meta, world.store)
            report = await compact_objects(ctx, old_enough())
            assert report.switches_refused == 1 and report.groups_rewritten == 0
        finally:
            await meta.close()

    asyncio.run(scenario())
    # Nothing switched: the same objects serve the same batches (less the deleted records).
    assert set(world.live()) <= keys
    assert world.log("alpha", 1) == before[("alpha", 1)]
    # The new object was recorded dead, and goes after the grace period; that pass merges
    # what is left.
    extra = world.keys() - keys
    assert len(extra) == 1
    report = world.run(later())
    assert not (world.keys() & extra)
    assert report.compaction is not None and report.compaction.groups_rewritten == 1
    assert len(world.live()) == 1
    assert world.log("alpha", 1) == before[("alpha", 1)]
    assert world.log("beta", 0) == before[("beta", 0)]


def test_compaction_can_be_turned_off(tmp_path: pathlib.Path, target: str) -> None:
    w = World(tmp_path, target, lifecycle_compaction_enabled="false")
    try:
        fill(w, segments=4)
        report = w.run(old_enough())
        assert not report.rewriter and report.compaction is None
        assert "COMPACTION_ENABLED=false" in report.rewriter_reason
        assert len(w.live()) == 4
    finally:
        w.close()


def test_only_the_live_agent_with_the_smallest_node_id_rewrites(
    tmp_path: pathlib.Path, postgres_dsn: str
) -> None:
    w = World(tmp_path, postgres_dsn, agent_id="agent-b")
    try:
        fill(w, segments=4)
        w.meta.register_agent("agent-a", "127.0.0.1", 9092, "127.0.0.1:1", "", 60_000)
        w.meta.register_agent("agent-b", "127.0.0.1", 9093, "127.0.0.1:2", "", 60_000)
        report = w.run(old_enough())
        assert not report.rewriter and "agent-a" in report.rewriter_reason
        assert len(w.live()) == 4
        w.meta.deregister_agent("agent-a")  # it left: agent-b is the smallest live one
        report = w.run(old_enough())
        assert report.rewriter and report.compaction is not None
        assert len(w.live()) == 1
    finally:
        w.close()


def test_reads_and_writes_are_paced_to_the_byte_budget(tmp_path: pathlib.Path) -> None:
    target = str(tmp_path / "metadata.sqlite")
    rate = 50_000
    w = World(tmp_path, target, lifecycle_rewrite_bytes_per_second=str(rate))
    try:
        w.meta.create_topic("t", 1)
        for i in range(6):
            w.commit({("t", 0): [(batch(i, records=40, noise=200), BatchRef(40))]})
        sizes = sum(s.size for s in w.meta.live_segments())
        assert sizes > 40_000
        started = time.monotonic()
        report = w.run(old_enough())
        took = time.monotonic() - started
        c = report.compaction
        assert c is not None and c.groups_rewritten == 1
        assert c.bytes_read >= sizes - 6 * 100 and c.bytes_written == c.bytes_after
        # The PUT, the last request, waits until every byte read before it is paid for.
        assert took >= c.bytes_read / rate
    finally:
        w.close()


def test_coalesced_reads_group_adjacent_blocks_of_one_object() -> None:
    def row(key: str, at: int, length: int) -> StoredBlock:
        return StoredBlock(1, 0, 0, 1, 1, key, at, length, 1, 0, ())

    blocks = [row("b", 8, 100), row("a", 500, 10), row("a", 8, 100), row("a", 108, 50)]
    got = coalesce(blocks, gap=400, limit=1000)
    assert got == [("a", 8, 502, [2, 3, 1]), ("b", 8, 100, [0])]
    assert coalesce(blocks, gap=0, limit=1000)[:2] == [("a", 8, 150, [2, 3]), ("a", 500, 10, [1])]
    assert coalesce(blocks, gap=400, limit=200)[0] == ("a", 8, 150, [2, 3])


def test_put_object_writes_a_readable_segment(tmp_path: pathlib.Path) -> None:
    target = str(tmp_path / "metadata.sqlite")
    w = World(tmp_path, target)
    try:
        data = batch(77)

        async def scenario() -> None:
            meta = await AsyncMetadata.open(target, forbid_loop_calls=True)
            try:
                ctx = RewriteContext(w.settings, meta, w.store)
                new = await ctx.put_object([BlockData(3, 1, 10, 14, data, 1, 4, 77, 80)])
                (row,) = new.blocks
                assert (row.topic_id, row.partition, row.base_offset, row.end_offset) == (
                    3,
                    1,
                    10,
                    14,
                )
                stored = StoredBlock(
                    3, 1, 10, 14, 0, new.key, row.byte_offset, row.byte_length, 4, 80, ()
                )
                assert await ctx.get_block(stored) == data
                assert ctx.bytes_written == new.size and ctx.bytes_read == row.byte_length
                with pytest.raises(ValueError, match="at least one block"):
                    await ctx.put_object([])
            finally:
                await meta.close()

        asyncio.run(scenario())
    finally:
        w.close()


def test_a_failing_object_store_stops_the_pass_and_switches_nothing(world: World) -> None:
    before = fill(world, segments=5)
    keys = set(world.live())
    # A real S3 client pointed at a port nobody listens on: every request is refused.
    refused = open_refusing_store()

    async def scenario() -> None:
        meta = await AsyncMetadata.open(world.target, forbid_loop_calls=True)
        try:
            with pytest.raises(ObjectStoreFailure, match="reading bytes .* failed"):
                await LifecyclePass(world.settings, meta, refused).run(old_enough())
        finally:
            await meta.close()

    asyncio.run(scenario())
    assert set(world.live()) == keys
    assert {k: world.log(*k) for k in before} == before
    report = world.run(old_enough())
    assert report.compaction is not None and report.compaction.objects_replaced == 5
    assert {k: world.log(*k) for k in before} == before


def test_two_rewriters_at_once_switch_once(world: World) -> None:
    before = fill(world, segments=8)
    keys = set(world.live())

    async def scenario() -> list[object]:
        metas = [await AsyncMetadata.open(world.target, forbid_loop_calls=True) for _ in "ab"]
        try:
            clock = old_enough()
            contexts = [RewriteContext(world.settings, m, world.store) for m in metas]
            return list(await asyncio.gather(*(compact_objects(c, clock) for c in contexts)))
        finally:
            for m in metas:
                await m.close()

    reports = asyncio.run(scenario())
    assert sum(r.groups_rewritten for r in reports) == 1  # type: ignore[attr-defined]
    # Both read the rows before either switched (almost always): the second is refused.
    assert sum(r.switches_refused for r in reports) <= 1  # type: ignore[attr-defined]
    live = world.live()
    assert len(live) == 1 and live[0] not in keys
    assert {k: world.log(*k) for k in before} == before
    # Whatever the loser wrote is dead (or it wrote nothing): after the grace, only the
    # winner's object is left.
    world.run(later())
    assert world.keys() == set(live)
    assert {k: world.log(*k) for k in before} == before


def test_a_switch_too_long_after_its_put_is_not_attempted(tmp_path: pathlib.Path) -> None:
    """A rewritten object unknown to metadata for most of the grace period may be deleted by
    an orphan scan: its switch is not attempted, the rows stay as they were and the object is
    left to the orphan scan."""
    target = str(tmp_path / "metadata.sqlite")
    w = World(tmp_path, target)
    try:
        w.meta.create_topic("t", 1)
        w.commit({("t", 0): [(batch(5), BatchRef(4))]})
        (old,) = w.meta.blocks_of_segments([s.segment_id for s in w.meta.live_segments()])
        log_before = w.log("t", 0)
        now = [1000.0]

        async def scenario() -> bool:
            meta = await AsyncMetadata.open(target, forbid_loop_calls=True)
            try:
                ctx = RewriteContext(w.settings, meta, w.store, monotonic=lambda: now[0])
                data = (await ctx.get_blocks([old]))[0]
                new = await ctx.put_object(
                    [BlockData(old.topic_id, 0, 0, old.end_offset, data, 1, 4, 5, 8)]
                )
                now[0] += (ctx.switch_deadline_ms + 1) / 1000
                rewrite = BlockRewrite(new.key, new.size, 0, (old,), new.blocks)
                return await ctx.switch(rewrite)
            finally:
                await meta.close()

        assert asyncio.run(scenario()) is False
        assert [s.key for s in w.meta.live_segments()] == [old.segment_key]
        assert w.meta.known_segments(list(w.keys())) == {old.segment_key}  # the new is an orphan
        assert w.log("t", 0) == log_before
    finally:
        w.close()
