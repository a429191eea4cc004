"""Transactions in the log, unit by unit: control batches (build and parse), produce validation
of transactional and control batches, the segmenter's check that a frame's attributes match
its batches, the open-transaction bookkeeping of a commit, and read_committed reads of the
read engine (over a real SQLite metadata store and an in-memory object store), and key
compaction around transactions."""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ingest.txn_markers import marker_slot
from lifecycle.keyplan import (
    BlockRow,
    CompactionConfig,
    FilterStats,
    OffsetMap,
    filter_block,
    plan_partition,
    put_block,
)
from metadata import BatchRef, CommitBlock, MetadataStore
from metadata.transactions import AbortedTxn, TxnLog
from reader.cache import BlockCache
from reader.engine import ReadEngine
from segmenter.builder import SegmentBuilder, check_frame
from streamhouse import objectstore
from streamhouse.errors import ErrorCode
from streamhouse.frames import (
    FORMAT_KAFKA,
    FORMAT_RECORDS,
    BatchMeta,
    FetchPart,
    FetchRequest,
    FrameError,
    ProduceFrame,
)
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.recordbatch import (
    CONTROL_ABORT,
    CONTROL_COMMIT,
    CONTROL_MASK,
    TRANSACTIONAL_MASK,
    BatchRules,
    InvalidBatchError,
    control_type,
    decode_records,
    encode_batch,
    encode_control_batch,
    scan_batches,
    validate_batches,
)
from streamhouse.segment import SegmentWriter

NOW = 1_700_000_000_000
DAY = 86_400_000
RULES = BatchRules(1 << 20, 1 << 22, 1 << 22)
_keys = itertools.count()


def batch(values: list[bytes], pid: int = -1, epoch: int = -1, seq: int = -1, txn: bool = False):
    n = len(values)
    return encode_batch(
        [None] * n,
        values,
        [[] for _ in values],
        [NOW] * n,
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
        attributes=TRANSACTIONAL_MASK if txn else 0,
    )


# -- control batches -------------------------------------------------------------------------


@pytest.mark.parametrize("commit", [True, False])
def test_a_control_batch_is_one_marker_record_of_the_transaction(commit: bool) -> None:
    raw = encode_control_batch(commit, 77, 3, 9, NOW)
    (info,) = scan_batches(raw)  # the CRC is right
    assert info.attributes == TRANSACTIONAL_MASK | CONTROL_MASK
    assert (info.producer_id, info.producer_epoch, info.base_sequence) == (77, 3, -1)
    assert info.record_count == 1
    ((_, ts, key, value, headers),) = decode_records(raw)
    assert struct.unpack(">hh", key) == (0, CONTROL_COMMIT if commit else CONTROL_ABORT)
    assert struct.unpack(">hi", value) == (0, 9)
    assert (ts, headers) == (NOW, [])
    assert control_type(raw) == (CONTROL_COMMIT if commit else CONTROL_ABORT)


def test_control_type_refuses_what_is_not_a_marker() -> None:
    with pytest.raises(InvalidBatchError, match="4-byte key"):
        control_type(batch([b"a", b"b"]))
    odd = encode_batch([struct.pack(">hh", 1, 0)], [b""], [[]], [NOW], attributes=0x30)
    with pytest.raises(InvalidBatchError, match="version 1"):
        control_type(odd)


@pytest.mark.parametrize(("pid", "epoch"), [(-1, 0), (5, -1), (5, 40_000)])
def test_a_marker_needs_a_real_producer(pid: int, epoch: int) -> None:
    with pytest.raises(ValueError, match="producer id"):
        encode_control_batch(True, pid, epoch, 0, NOW)


# -- produce validation ----------------------------------------------------------------------


def test_transactional_batches_of_a_producer_are_accepted() -> None:
    (info,) = validate_batches(batch([b"v"], 7, 0, 0, txn=True), RULES, NOW)
    assert info.attributes & TRANSACTIONAL_MASK


def test_a_transactional_batch_without_a_producer_is_refused() -> None:
    with pytest.raises(InvalidBatchError, match="needs a producer id") as caught:
        validate_batches(batch([b"v"], txn=True), RULES, NOW)
    assert caught.value.code is ErrorCode.INVALID_RECORD


def test_clients_may_not_write_control_batches() -> None:
    with pytest.raises(InvalidBatchError, match="control batches") as caught:
        validate_batches(encode_control_batch(True, 7, 0, 0, NOW), RULES, NOW)
    assert caught.value.code is ErrorCode.INVALID_RECORD


# -- segmenter ---------------------------------------------------------------------------------


def frame_of(slot_batches: list[BatchMeta], payload: bytes) -> ProduceFrame:
    return ProduceFrame(1, 0, 1, 0, slot_batches, [len(payload)])


def test_a_marker_slot_passes_the_segmenters_checks_and_keeps_its_type() -> None:
    slot = marker_slot(1, 0, 77, 3, False, 0, NOW)
    payload = bytes(slot.payload)
    frame = frame_of(slot.batches, payload)
    check_frame(frame, payload)
    builder = SegmentBuilder(1, 1 << 20)
    builder.add(frame, payload, 0)
    sealed, _ = builder.seal()
    (ref,) = sealed.batches
    assert (ref.producer_id, ref.producer_epoch, ref.base_sequence) == (77, 3, -1)
    assert (ref.attributes, ref.control_type) == (0x30, CONTROL_ABORT)


@pytest.mark.parametrize(
    ("attributes", "control"),
    [(0, -1), (TRANSACTIONAL_MASK, -1), (0x30, -1), (TRANSACTIONAL_MASK, CONTROL_COMMIT)],
)
def test_the_segmenter_refuses_a_frame_whose_attributes_lie(attributes: int, control: int) -> None:
    marker = encode_control_batch(True, 7, 0, 0, NOW)
    data = batch([b"v"], 7, 0, 0, txn=True)
    for payload, truth in ((marker, (0x30, CONTROL_COMMIT)), (data, (TRANSACTIONAL_MASK, -1))):
        meta = BatchMeta(1, 7, 0, -1, NOW, NOW, attributes, control)
        if (attributes, control) == truth:
            check_frame(frame_of([meta], payload), payload)
        else:
            with pytest.raises(FrameError, match="attributes"):
                check_frame(frame_of([meta], payload), payload)


# -- commit bookkeeping (sans-I/O) ---------------------------------------------------------------


def test_txn_log_opens_once_closes_on_a_marker_and_records_aborts() -> None:
    log = TxnLog({(1, 0, 5): 10, (1, 0, 6): 12})
    log.data((1, 0, 5), 20)  # already open at 10
    log.data((1, 0, 7), 21)  # opens
    log.marker((1, 0, 5), 22, commit=False)
    log.marker((1, 0, 6), 23, commit=True)
    log.marker((1, 0, 8), 24, commit=False)  # nothing open: nothing happens
    log.data((1, 0, 5), 25)  # a new transaction of producer 5
    assert log.aborted == [(1, 0, 22, 5, 10)]
    assert log.closed() == [(1, 0, 6)]
    assert sorted(log.opened()) == [(1, 0, 5, 25), (1, 0, 7, 21)]


# -- read engine -------------------------------------------------------------------------------


@dataclass
class Harness:
    meta: MetadataStore
    store: Any
    engine: ReadEngine
    topic_id: int

    def commit(self, *batches: tuple[bytes, BatchRef]) -> None:
        """One segment of one block of partition 0 holding ``batches``, PUT and committed."""
        writer = SegmentWriter()
        raws = [raw for raw, _ in batches]
        infos = [scan_batches(raw)[0] for raw in raws]
        writer.add_block(
            self.topic_id, 0, raws, len(raws), sum(i.record_count for i in infos), NOW, NOW
        )
        obj, (entry,) = writer.finish()
        key = f"segments/{next(_keys):020d}.seg"
        asyncio.run(objectstore.put(self.store, key, obj))
        block = CommitBlock(
            self.topic_id, 0, entry.offset, entry.length, NOW, [ref for _, ref in batches]
        )
        results = self.meta.commit_segment(key, len(obj), [block])
        assert all(r.error is None for r in results[0]), results

    def fetch(self, offset: int, isolation: int, fmt: int = FORMAT_KAFKA) -> Any:
        part = FetchPart(self.topic_id, 0, offset, 1 << 20)
        request = FetchRequest(1, 0, 0, 1 << 20, fmt, [part], 0, isolation)
        response, payload = asyncio.run(self.engine.fetch(request))
        return response.parts[0], payload


@pytest.fixture
def h(tmp_path: pathlib.Path) -> Iterator[Harness]:
    meta = MetadataStore(tmp_path / "meta.sqlite", synchronous="NORMAL")
    topic = meta.create_topic("events", 1)
    store = objectstore.open_object_store("memory://")
    cache = BlockCache(16 << 20)
    yield Harness(meta, store, ReadEngine(meta, store, cache, 0), topic.topic_id)
    meta.close()


def data(values: list[bytes], pid: int = -1, seq: int = -1) -> tuple[bytes, BatchRef]:
    txn = pid >= 0
    raw = batch(values, pid, 0 if txn else -1, seq, txn=txn)
    return raw, BatchRef(len(values), pid, 0 if txn else -1, seq, TRANSACTIONAL_MASK if txn else 0)


def marker(pid: int, commit: bool) -> tuple[bytes, BatchRef]:
    kind = CONTROL_COMMIT if commit else CONTROL_ABORT
    return encode_control_batch(commit, pid, 0, 0, NOW), BatchRef(1, pid, 0, -1, 0x30, kind)


def offsets_and_values(payload: bytes) -> list[tuple[int, int, list[bytes | None]]]:
    out = []
    for info in scan_batches(payload):
        (base,) = struct.unpack_from(">q", payload, info.position)
        records = decode_records(payload[info.position : info.position + info.length])
        out.append((base, info.attributes & 0x30, [r[3] for r in records]))
    return out


def test_read_committed_stops_at_the_last_stable_offset_and_lists_aborts(h: Harness) -> None:
    h.commit(data([b"p0"]), data([b"a0", b"a1"], pid=5, seq=0))  # 0, 1..2
    h.commit(data([b"p1"]), data([b"c0"], pid=6, seq=0))  # 3, 4
    part, payload = h.fetch(0, 1)
    assert (part.high_watermark, part.last_stable_offset, part.next_offset) == (5, 1, 1)
    assert offsets_and_values(payload) == [(0, 0, [b"p0"])]
    assert part.aborted == []
    part, payload = h.fetch(0, 0)  # read_uncommitted: everything, and the LSO
    assert (part.last_stable_offset, part.next_offset, part.aborted) == (1, 5, [])
    h.commit(marker(5, commit=False))  # 5
    part, payload = h.fetch(0, 1)
    assert (part.last_stable_offset, part.next_offset) == (4, 4)
    assert part.aborted == [(5, 1)]
    assert [b for b, *_ in offsets_and_values(payload)] == [0, 1, 3]
    h.commit(marker(6, commit=True), data([b"p2"]))  # 6, 7
    part, payload = h.fetch(2, 1)
    assert (part.last_stable_offset, part.next_offset) == (8, 8)
    assert part.aborted == [(5, 1)]  # overlaps the returned range (from offset 1..5)
    assert offsets_and_values(payload) == [
        (1, TRANSACTIONAL_MASK, [b"a0", b"a1"]),
        (3, 0, [b"p1"]),
        (4, TRANSACTIONAL_MASK, [b"c0"]),
        (5, 0x30, [struct.pack(">hi", 0, 0)]),
        (6, 0x30, [struct.pack(">hi", 0, 0)]),
        (7, 0, [b"p2"]),
    ]
    part, _ = h.fetch(6, 1)
    assert part.aborted == []  # the abort ended before offset 6


def test_a_read_committed_fetch_between_the_lso_and_the_hwm_is_empty_not_an_error(
    h: Harness,
) -> None:
    h.commit(data([b"a0"], pid=5, seq=0), data([b"p0"]))
    part, payload = h.fetch(1, 1)
    assert part.error.code == 0
    assert (part.length, part.next_offset, part.last_stable_offset) == (0, 1, 0)
    assert payload == b""


def test_the_records_format_never_renders_a_marker(h: Harness) -> None:
    h.commit(data([b"t0"], pid=5, seq=0), marker(5, commit=True), data([b"p0"]))
    part, payload = h.fetch(0, 0, FORMAT_RECORDS)
    records = pb.ConsumeResponse.FromString(payload).records
    assert [(r.offset, r.value) for r in records] == [(0, b"t0"), (2, b"p0")]
    assert part.next_offset == 3


# -- key compaction (lifecycle/keyplan.py) -----------------------------------------------------


def keyed(key: bytes, value: bytes, pid: int = -1, seq: int = -1) -> bytes:
    txn = pid >= 0
    return encode_batch(
        [key],
        [value],
        [[]],
        [NOW],
        producer_id=pid,
        producer_epoch=0 if txn else -1,
        base_sequence=seq,
        attributes=TRANSACTIONAL_MASK if txn else 0,
    )


def test_key_compaction_keeps_markers_and_drops_aborted_records() -> None:
    # offsets: 0 k=v1, 1 k=aborted (producer 5), 2 ABORT marker, 3 COMMIT marker of 6
    # (no open txn), 4 j=x; a marker's key must never supersede a record's
    marker_key = struct.pack(">hh", 0, CONTROL_ABORT)
    block = b"".join(
        [
            keyed(b"k", b"v1"),
            keyed(b"k", b"aborted", pid=5, seq=0),
            encode_control_batch(False, 5, 0, 0, NOW),
            encode_control_batch(True, 6, 0, 0, NOW),
            keyed(marker_key, b"user record with a marker-like key"),
        ]
    )
    aborted = [AbortedTxn(5, 1, 2)]
    omap = OffsetMap(1 << 16)
    assert put_block(omap, block, 0, (), 0, 5, aborted)
    stats = FilterStats()
    result = filter_block(omap, block, 0, (), NOW, 0, stats, aborted)
    assert result is not None
    data, walked = result
    kept = [(b.first_offset, b.info.attributes & 0x30) for b in walked]
    assert kept == [(0, 0), (2, 0x30), (3, 0x30), (4, 0)]
    assert (stats.records_removed, stats.batches_removed) == (1, 1)
    values = [
        decode_records(data[b.info.position : b.info.position + b.info.length]) for b in walked
    ]
    assert values[0][0][3] == b"v1"  # the committed record survives the aborted one


def test_key_compaction_never_cleans_past_the_last_stable_offset() -> None:
    rows = [BlockRow(0, 10, 100, NOW - DAY), BlockRow(10, 20, 100, NOW - DAY)]
    config = CompactionConfig(DAY, 0, 7 * DAY, 0.5)
    assert plan_partition(rows, 0, NOW, config).cleanable_end == 19
    assert plan_partition(rows, 0, NOW, config, stable_end=7).cleanable_end == 7


def test_sql_never_decodes_a_marker_as_a_record() -> None:
    from sql.decode import decode_block_records

    block = b"".join([keyed(b"k", b"v", pid=5, seq=0), encode_control_batch(True, 5, 0, 0, NOW)])
    rows, decoded = decode_block_records(block, 0, 10)
    assert decoded == 1
    assert rows.column("offset").to_pylist() == [10]
    assert rows.column("value").to_pylist() == [b"v"]


def test_a_cut_short_aborted_list_cuts_the_data_it_cannot_cover(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h.commit(data([b"a0"], pid=5, seq=0), data([b"a1"], pid=5, seq=1), marker(5, commit=False))
    h.commit(data([b"b0"], pid=6, seq=0), marker(6, commit=False), data([b"p0"]))
    part, _ = h.fetch(0, 1)
    assert (part.next_offset, part.aborted) == (6, [(5, 0), (6, 3)])
    from metadata import store as store_module
    from reader import engine as engine_module

    monkeypatch.setattr(store_module, "MAX_ABORTED_LISTED", 1)
    monkeypatch.setattr(engine_module, "MAX_ABORTED_LISTED", 1)
    part, payload = h.fetch(0, 1)
    assert (part.next_offset, part.aborted, part.record_count) == (1, [(5, 0)], 1)
    assert [b for b, *_ in offsets_and_values(payload)] == [0]
    part, payload = h.fetch(3, 1)  # a full list may be cut short: one batch at a time
    assert (part.next_offset, part.aborted) == (4, [(6, 3)])
