"""Key compaction step (compact_keys) against real metadata stores (SQLite, and PostgreSQL from
the `postgres_dsn` fixture) and a real local-folder object store holding real segment objects:
the latest record per key survives at its offset, tombstones go after delete.retention.ms,
nothing younger than min.compaction.lag.ms is touched, a full key map continues next pass."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import pytest

from lifecycle.keycompact import KeyCompactionReport, compact_keys
from lifecycle.rewrite import RewriteContext
from metadata import BatchRef, CommitBlock
from metadata.async_store import AsyncMetadata
from metadata.interface import MetadataBackend, open_store
from streamhouse import objectstore
from streamhouse.config import Settings, load_settings
from streamhouse.recordbatch import decode_records, encode_batch, walk_block
from streamhouse.segment import SegmentWriter, decode_block

DAY = 86_400_000
Record = tuple[int, int, bytes | None, bytes | None]  # offset, timestamp, key, value


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "metadata.sqlite")
    else:
        yield request.getfixturevalue("postgres_dsn")


class World:
    """A metadata store and an object store holding real segment objects."""

    def __init__(self, tmp_path: pathlib.Path, target: str, **extra: str) -> None:
        env = {"STREAMHOUSE_DATA_DIR": str(tmp_path / "data")}
        if target.startswith("postgres"):
            env["STREAMHOUSE_METADATA"] = target
        env.update({f"STREAMHOUSE_{k.upper()}": v for k, v in extra.items()})
        self.settings: Settings = load_settings(env)
        self.store = objectstore.open_object_store(self.settings.object_store_url)
        self.meta: MetadataBackend = open_store(target)
        self.serial = 0
        self.produced: dict[str, list[Record]] = {}

    def produce(self, topic: str, batches: list[list[tuple[bytes | None, bytes | None]]], ts: int):
        """Commits one segment holding one block of `batches` (records at timestamp ts, ts+1...)."""
        info = self.meta.get_topic(topic)
        assert info is not None
        raw = []
        refs = []
        t = ts
        for records in batches:
            n = len(records)
            raw.append(
                encode_batch(
                    [k for k, _ in records],
                    [v for _, v in records],
                    [[("n", b"%d" % i)] for i in range(n)],
                    [t + i for i in range(n)],
                )
            )
            refs.append(BatchRef(n, -1, -1, -1))
            t += n
        writer = SegmentWriter()
        writer.add_block(info.topic_id, 0, raw, len(raw), sum(r.record_count for r in refs), ts, t)
        obj, entries = writer.finish()
        self.serial += 1
        key = f"segments/{self.serial:020d}-test.seg"
        asyncio.run(objectstore.put(self.store, key, obj))
        (e,) = entries
        (result,) = self.meta.commit_segment(
            key, len(obj), [CommitBlock(info.topic_id, 0, e.offset, e.length, t - 1, refs)]
        )
        base = result[0].base_offset
        for records in batches:
            for k, v in records:
                self.produced.setdefault(topic, []).append((base, ts, k, v))
                base += 1
                ts += 1

    def log(self, topic: str) -> list[Record]:
        info = self.meta.get_topic(topic)
        assert info is not None
        out: list[Record] = []
        offset = 0
        while True:
            found = self.meta.find_blocks(info.topic_id, 0, offset, 100)
            if not found:
                return out
            for loc in found:
                raw = asyncio.run(
                    objectstore.get_range(
                        self.store, loc.segment_key, loc.byte_offset, loc.byte_length
                    )
                )
                data = decode_block(raw)
                for b in walk_block(
                    data,
                    loc.base_offset,
                    loc.skipped_batches,
                    end_offset=loc.end_offset,
                    verify_crc=True,
                ):
                    batch = data[b.info.position : b.info.position + b.info.length]
                    for delta, ts, key, value, _h in decode_records(batch):
                        out.append((b.first_offset + delta, ts, key, value))
                offset = loc.end_offset

    def compact(self, now_ms: int) -> KeyCompactionReport:
        async def run() -> KeyCompactionReport:
            meta = AsyncMetadata(self.meta)
            ctx = RewriteContext(self.settings, meta, self.store)
            return await compact_keys(ctx, now_ms)

        return asyncio.run(run())


def latest_per_key(records: list[Record]) -> list[Record]:
    last: dict[bytes | None, Record] = {}
    for r in records:
        last[r[2]] = r
    return sorted(last.values())


def updates(round_: int, keys: int = 20) -> list[list[tuple[bytes, bytes]]]:
    return [[(b"key-%d" % k, b"v%d-%d" % (round_, k)) for k in range(j, keys, 4)] for j in range(4)]


def test_latest_record_per_key_survives_at_its_offset(tmp_path: pathlib.Path, target: str):
    w = World(tmp_path, target)
    w.meta.create_topic("c", 1, {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"})
    w.meta.create_topic("d", 1, {})
    ts = 1_700_000_000_000
    for r in range(6):
        w.produce("c", updates(r), ts + r * 1000)
        w.produce("d", updates(r), ts + r * 1000)
    w.produce("c", [[(b"marker", b"m")]], ts + 10_000)  # the newest block: never cleaned
    produced_d = w.log("d")
    assert w.log("c") == w.produced["c"]
    cleanable, marker = w.produced["c"][:-1], w.produced["c"][-1:]
    assert len(cleanable) == 120

    report = w.compact(ts + 20_000)
    assert report.partitions_compacted == 1 and report.records_removed == 100
    assert report.objects_written >= 1 and report.switches_refused == 0
    got = w.log("c")
    assert got == latest_per_key(cleanable) + marker
    assert [r[0] for r in got[:20]] == list(range(100, 120))
    assert w.log("d") == produced_d  # a delete-policy topic is never key-compacted
    info = w.meta.get_topic("c")
    assert w.meta.get_clean_offsets(info.topic_id)[0].clean_offset == 120
    # nothing dirty: not due, nothing written
    again = w.compact(ts + 30_000)
    assert again.objects_written == 0 and again.partitions_compacted == 0
    # new updates of a few keys: only their older records go
    w.produce("c", [[(b"key-1", b"new"), (b"key-2", b"new")]], ts + 40_000)
    w.produce("c", [[(b"marker2", b"m")]], ts + 50_000)
    report = w.compact(ts + 60_000)
    assert report.records_removed == 2  # the older key-1 and key-2
    got = w.log("c")
    assert got == latest_per_key(w.produced["c"][:-1]) + w.produced["c"][-1:]


def test_tombstones_go_only_after_delete_retention(tmp_path: pathlib.Path, target: str):
    w = World(tmp_path, target)
    w.meta.create_topic(
        "c",
        1,
        {
            "cleanup.policy": "compact",
            "delete.retention.ms": "5000",
            "min.cleanable.dirty.ratio": "0.01",
        },
    )
    ts = 1_700_000_000_000
    w.produce("c", [[(b"a", b"1"), (b"b", b"1")]], ts)
    w.produce("c", [[(b"a", None)]], ts + 100)
    w.produce("c", [[(b"z", b"tail")]], ts + 200)
    first = w.compact(ts + 1000)
    assert first.tombstones_removed == 0
    got = w.log("c")
    assert [(r[0], r[2], r[3]) for r in got] == [
        (1, b"b", b"1"),
        (2, b"a", None),
        (3, b"z", b"tail"),
    ]
    assert got[1][1] == ts + 100  # the tombstone keeps its timestamp under its horizon
    # before the horizon (first clean + 5000): the tombstone stays
    w.produce("c", [[(b"b", b"2")]], ts + 300)
    w.produce("c", [[(b"y", b"tail")]], ts + 400)
    w.compact(ts + 5999)
    assert (2, b"a", None) in [(r[0], r[2], r[3]) for r in w.log("c")]
    # past it: gone (and b's old value went with the previous pass)
    w.produce("c", [[(b"b", b"3")]], ts + 500)
    w.produce("c", [[(b"x", b"tail")]], ts + 600)
    report = w.compact(ts + 6000)
    assert report.tombstones_removed == 1
    got = [(r[0], r[2], r[3]) for r in w.log("c")]
    assert b"a" not in [k for _, k, _ in got]
    assert got == [(3, b"z", b"tail"), (5, b"y", b"tail"), (6, b"b", b"3"), (7, b"x", b"tail")]


def test_min_compaction_lag_protects_young_blocks(tmp_path: pathlib.Path, target: str):
    w = World(tmp_path, target)
    w.meta.create_topic("c", 1, {"cleanup.policy": "compact", "min.compaction.lag.ms": "10000"})
    ts = 1_700_000_000_000
    w.produce("c", [[(b"a", b"1")]], ts)
    w.produce("c", [[(b"a", b"2")]], ts + 5000)
    w.produce("c", [[(b"a", b"3")]], ts + 9000)
    w.produce("c", [[(b"z", b"tail")]], ts + 9500)
    before = w.log("c")
    # at ts + 14000 only the first block is 10 s old: the map holds a@0, nothing to remove
    report = w.compact(ts + 14_000)
    assert report.records_removed == 0 and w.log("c") == before
    # at ts + 19000 the blocks up to a@2 are old enough: a@0 and a@1 go, a@2 stays
    report = w.compact(ts + 19_000)
    assert report.records_removed == 2
    assert [(r[0], r[3]) for r in w.log("c")] == [(2, b"3"), (3, b"tail")]


def test_a_small_key_map_cleans_over_several_passes(tmp_path: pathlib.Path, target: str):
    w = World(tmp_path, target, lifecycle_key_map_bytes="384")  # 12 keys
    w.meta.create_topic("c", 1, {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"})
    ts = 1_700_000_000_000
    for r in range(3):
        w.produce("c", [[(b"k%02d" % k, b"%d" % r) for k in range(30)]], ts + r * 100)
    w.produce("c", [[(b"zz", b"tail")]], ts + 1000)
    reference = latest_per_key(w.produced["c"][:-1])
    passes = 0
    while True:
        report = w.compact(ts + 10_000 + passes)
        passes += 1
        if report.partitions_map_full == 0:
            break
        assert passes < 20
    assert passes >= 3
    assert w.log("c")[:-1] == reference


def test_a_partition_merged_into_one_block_keeps_only_its_last_record_uncleaned(
    tmp_path: pathlib.Path, target: str
):
    # small-object compaction may merge a whole partition into one block
    w = World(tmp_path, target)
    w.meta.create_topic("c", 1, {"cleanup.policy": "compact"})
    ts = 1_700_000_000_000
    w.produce("c", updates(0) + updates(1), ts)
    produced = w.produced["c"]
    report = w.compact(ts + 1000)
    assert report.partitions_compacted == 1
    # the newest offset is never cleaned: its key's older record survives this pass
    assert w.log("c") == latest_per_key(produced[:-1]) + produced[-1:]
    assert report.records_removed == 19


def test_a_refused_switch_leaves_the_partition_for_the_next_pass(
    tmp_path: pathlib.Path, target: str
):
    w = World(tmp_path, target)
    info = w.meta.create_topic("c", 1, {"cleanup.policy": "compact"})
    ts = 1_700_000_000_000
    for r in range(3):
        w.produce("c", updates(r), ts + r * 100)
    w.produce("c", [[(b"zz", b"tail")]], ts + 1000)
    produced = w.produced["c"]

    class DeleteRecordsMeanwhile(RewriteContext):
        """DeleteRecords lands between the PUT of the new object and the switch."""

        async def put_object(self, blocks):  # type: ignore[no-untyped-def]
            written = await super().put_object(blocks)
            await self.meta.set_log_start_offset(info.topic_id, 0, 20)
            return written

    async def racing() -> KeyCompactionReport:
        ctx = DeleteRecordsMeanwhile(w.settings, AsyncMetadata(w.meta), w.store)
        return await compact_keys(ctx, ts + 10_000)

    report = asyncio.run(racing())
    assert report.switches_refused == 1 and report.partitions_compacted == 0
    assert w.meta.get_clean_offsets(info.topic_id) == {}
    assert w.log("c") == produced[20:]  # nothing compacted, DeleteRecords kept
    report = w.compact(ts + 20_000)
    assert report.partitions_compacted == 1 and report.switches_refused == 0
    assert w.log("c") == latest_per_key(produced[20:-1]) + produced[-1:]
