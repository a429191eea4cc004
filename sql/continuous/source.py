"""Tailing one source of a continuous query: new blocks of each partition, decoded step by step.

A ``SourceTail`` follows one topic (read as a declared stream, a declared table or the raw
topic) from a position per partition: the next offset to read (``CheckpointState.positions``).

Reading a step (``read``)
-------------------------
1. one metadata call (``list_partitions``) gives every partition's log start and high
   watermark; a partition not seen before (the topic grew) starts at its log start, and a
   position below the log start (retention removed records) moves up to it;
2. per partition with something new below its last stable offset (LSO: read committed, a
   query never reads past an open transaction), ``find_blocks`` from its position gives the
   blocks, as many as fit the step's byte budget (split evenly over the partitions that have
   something; at least one block each, so a block larger than the budget is still read), and
   ``aborted_ranges`` the aborted transactions from its position to the LSO;
3. each block is one range GET of its bytes (``READ_ATTEMPTS`` tries, each bounded by the
   store timeout), ``concurrency`` at a time, checksum-verified and decoded into the raw
   columns (``sql.decode``); records below the position (the block began before it) are
   dropped, and so are the batches of aborted transactions and any at or after the LSO. The
   partition's position becomes the block's end offset, or the LSO when that is inside the
   block (the rest is read once the open transaction ends).

Decoding (``decode``, CPU only: call it off the event loop)
-----------------------------------------------------------
A raw topic's rows are delivered as they are (``sql.decode.RAW_SCHEMA``). A declared stream's
values are parsed into its declared columns (``sql.formats.decode_json``, ~4 MiB of values
per call), followed by ``_partition``, ``_offset``, ``_timestamp``: the columns
``sql.engine.relation_schema`` gives it. A declared table's rows also carry ``_key``; a
record with a null value (a tombstone: the key is deleted) is delivered with every declared
column null, so a consumer keeping the latest row per key can drop the key.

A record that does not match the declaration (not JSON, wrong types, a NOT NULL column
missing; for a table, no key) is not delivered: its raw row is returned separately (for the
dead-letter topic) and counted. Nothing a record holds stops the query.

Waiting (``wait_for_data``): when no partition has anything new (below its LSO), the states are
polled (one ``list_partitions`` per poll) with a backoff from 50 ms doubling to 500 ms.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from metadata import BlockLocation
from metadata.async_store import AsyncMetadata
from metadata.store import PartitionState, TopicInfo
from sql.continuous.pipeline import Source
from sql.decode import (
    RAW_SCHEMA,
    AbortedRanges,
    BatchFilter,
    BlockDecodeError,
    decode_block_records,
)
from sql.engine import relation_schema
from sql.formats import decode_json
from sql.scan import aborted_ranges
from streamhouse import objectstore
from streamhouse.segment import SegmentCorruptError, decode_block

__all__ = ["SourceError", "SourceRead", "SourceTail", "decode_relation"]

#: Values parsed per JSON decode call (several small blocks together).
DECODE_GROUP_BYTES = 4 << 20
#: Block rows asked of metadata per partition and call.
BLOCK_PAGE = 64
#: GETs of one block before the step fails (0.2 s, 0.4 s between them).
READ_ATTEMPTS = 3
POLL_FIRST_S = 0.05
POLL_MAX_S = 0.5


class SourceError(RuntimeError):
    """A block that cannot be read or decoded; the message names it and says what to do."""


class SourceRead(msgspec.Struct):
    """One step of a source: raw-column batches (one per block read), the positions after
    them, and the stored bytes read."""

    raw: list[pa.RecordBatch]
    positions: dict[int, int]
    bytes_read: int = 0

    @property
    def empty(self) -> bool:
        return not self.raw


class Decoded(msgspec.Struct):
    """What a step's raw rows became: batches for the plan, and the raw rows that did not
    match the declaration (one batch, or None)."""

    batches: list[pa.RecordBatch]
    rejected: pa.RecordBatch | None
    rows: int = 0
    errors: int = 0


def _groups(batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    """Consecutive batches joined into about ``DECODE_GROUP_BYTES`` of values each."""
    out: list[pa.RecordBatch] = []
    group: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        group.append(batch)
        size += batch.column("value").nbytes
        if size >= DECODE_GROUP_BYTES:
            out.append(group[0] if len(group) == 1 else pa.concat_batches(group))
            group, size = [], 0
    if group:
        out.append(group[0] if len(group) == 1 else pa.concat_batches(group))
    return out


def decode_relation(
    source: Source, schema: pa.Schema, raw: pa.RecordBatch
) -> tuple[pa.RecordBatch, pa.RecordBatch | None]:
    """One raw batch -> the source's rows (``schema``), and the raw rows that did not match
    (None: all did). See the module docstring."""
    relation = source.relation
    assert relation is not None
    declared = pa.schema(schema.field(c.name) for c in relation.columns)
    n = raw.num_rows
    good = np.zeros(n, dtype=bool)
    candidates = np.arange(n)
    tombstones = np.empty(0, dtype=np.int64)
    if source.is_table:
        has_key = pc.is_valid(raw.column("key")).to_numpy(zero_copy_only=False)
        has_value = pc.is_valid(raw.column("value")).to_numpy(zero_copy_only=False)
        tombstones = np.flatnonzero(has_key & ~has_value)
        good[tombstones] = True
        candidates = np.flatnonzero(has_key & has_value)
    values = raw.column("value")
    if len(candidates) != n:
        values = values.take(pa.array(candidates))
    decoded = decode_json(values, pa.schema(f.with_nullable(True) for f in declared))
    table = decoded.table
    rows = candidates[decoded.rows] if len(decoded.rows) else np.empty(0, dtype=np.int64)
    required = [c.name for c in relation.columns if c.not_null]
    if required and table.num_rows:
        complete = pc.is_valid(table.column(required[0]))
        for column in required[1:]:
            complete = pc.and_(complete, pc.is_valid(table.column(column)))
        table = table.filter(complete)
        rows = rows[complete.to_numpy(zero_copy_only=False)] if len(rows) else rows
    good[rows] = True
    table = table.cast(declared).combine_chunks()
    columns = [
        table.column(i).chunk(0) if table.column(i).num_chunks else pa.array([], f.type)
        for i, f in enumerate(declared)
    ]
    extra = ["key"] if source.is_table else []
    record_columns = [*extra, "partition", "offset", "timestamp"]
    take = pa.array(rows, pa.int64())
    columns += [raw.column(c).take(take) for c in record_columns]
    out = pa.RecordBatch.from_arrays(columns, schema=schema)
    if len(tombstones):
        take = pa.array(tombstones, pa.int64())
        deletes = [pa.nulls(len(tombstones), f.type) for f in declared]
        deletes += [raw.column(c).take(take) for c in record_columns]
        both = pa.Table.from_batches(
            [out, pa.RecordBatch.from_arrays(deletes, schema=schema)]
        ).sort_by([("_partition", "ascending"), ("_offset", "ascending")])
        out = both.combine_chunks().to_batches()[0] if both.num_rows else out
    rejected = None if good.all() else raw.filter(pa.array(~good))
    return out, rejected


class SourceTail:
    """Follows one source from per-partition positions (module docstring)."""

    def __init__(
        self,
        meta: AsyncMetadata,
        store: Any,
        source: Source,
        topic: TopicInfo,
        positions: dict[int, int],
        *,
        concurrency: int = 8,
        max_inflated: int = 64 << 20,
        timeout_s: float = 30.0,
    ) -> None:
        self.meta = meta
        self.store = store
        self.source = source
        self.topic = topic
        self.positions = dict(positions)
        self.concurrency = max(1, concurrency)
        self.max_inflated = max_inflated
        self.timeout_s = timeout_s
        self.schema = RAW_SCHEMA if source.relation is None else relation_schema(source.relation)
        self.states: dict[int, PartitionState] = {}

    async def refresh(self) -> dict[int, PartitionState]:
        """The partitions' states now (one metadata read); new partitions get a position."""
        self.states = {s.partition: s for s in await self.meta.list_partitions(self.topic.topic_id)}
        if not self.states:
            current = await self.meta.get_topic(self.topic.name)
            if current is None or current.topic_id != self.topic.topic_id:
                raise SourceError(
                    f"topic {self.topic.name!r} (source {self.source.name!r}) was deleted: "
                    "drop the query, or re-create the topic and the query"
                )
        for p, state in self.states.items():
            pos = self.positions.get(p)
            if pos is None or pos < state.log_start_offset:
                self.positions[p] = state.log_start_offset
        return self.states

    def lag(self) -> int:
        """Records between the positions and the high watermarks last seen."""
        return sum(
            max(0, s.high_watermark - self.positions.get(p, 0)) for p, s in self.states.items()
        )

    def has_new(self) -> bool:
        """Whether a partition has committed records past its position (below its LSO)."""
        return any(s.last_stable_offset > self.positions.get(p, 0) for p, s in self.states.items())

    async def read(self, max_bytes: int) -> SourceRead:
        """The next blocks of every partition, within ``max_bytes`` of stored bytes
        (module docstring); ``positions`` of the answer are where the next read starts (this
        tail's own positions move only with ``advance``)."""
        await self.refresh()
        stable = {p: s.last_stable_offset for p, s in self.states.items()}
        active = [p for p in sorted(stable) if stable[p] > self.positions[p]]
        if not active:
            return SourceRead([], dict(self.positions))
        budget = max(1, max_bytes // len(active))
        tid = self.topic.topic_id
        pages, aborted = await asyncio.gather(
            asyncio.gather(
                *(self.meta.find_blocks(tid, p, self.positions[p], BLOCK_PAGE) for p in active)
            ),
            asyncio.gather(
                *(aborted_ranges(self.meta, tid, p, self.positions[p], stable[p]) for p in active)
            ),
        )
        ranges = dict(zip(active, aborted, strict=True))
        plan: list[tuple[int, int, int, BlockLocation]] = []
        positions = dict(self.positions)
        for p, page in zip(active, pages, strict=True):
            used = 0
            lso = stable[p]
            for loc in page:
                if loc.base_offset >= lso or (used and used + loc.byte_length > budget):
                    break
                plan.append((p, positions[p], lso, loc))
                used += loc.byte_length
                positions[p] = min(loc.end_offset, lso)
        gate = asyncio.Semaphore(self.concurrency)
        raw = await asyncio.gather(*(self._block(gate, *item, ranges[item[0]]) for item in plan))
        return SourceRead(list(raw), positions, sum(loc.byte_length for *_x, loc in plan))

    def advance(self, positions: dict[int, int]) -> None:
        self.positions.update(positions)

    async def _block(
        self,
        gate: asyncio.Semaphore,
        partition: int,
        start: int,
        stop: int,
        loc: BlockLocation,
        aborted: AbortedRanges,
    ) -> pa.RecordBatch:
        name = self.topic.name
        async with gate:
            for attempt in range(1, READ_ATTEMPTS + 1):
                try:
                    data = await asyncio.wait_for(
                        objectstore.get_range(
                            self.store, loc.segment_key, loc.byte_offset, loc.byte_length
                        ),
                        self.timeout_s,
                    )
                    break
                except Exception as exc:  # obstore raises many kinds; all are retried alike
                    if attempt == READ_ATTEMPTS:
                        raise SourceError(
                            f"topic {name!r} partition {partition}: block {loc.segment_key}@"
                            f"{loc.byte_offset} could not be read in {READ_ATTEMPTS} attempts "
                            f"({exc}); the runner restarts from its last checkpoint"
                        ) from exc
                    await asyncio.sleep(0.1 * 2**attempt)
        try:
            batch, _decoded = decode_block_records(
                decode_block(data),
                partition,
                loc.base_offset,
                loc.skipped_batches,
                loc.end_offset,
                BatchFilter(start, stop),
                max_inflated=self.max_inflated,
                aborted=aborted,
            )
        except (SegmentCorruptError, BlockDecodeError) as exc:
            raise SourceError(
                f"topic {name!r} partition {partition}: stored block {loc.segment_key}@"
                f"{loc.byte_offset} (offsets {loc.base_offset}..{loc.end_offset - 1}) does not "
                f"decode: {exc}"
            ) from None
        if batch.num_rows and loc.base_offset < start:
            batch = batch.filter(pc.greater_equal(batch.column("offset"), start))
        return batch

    def decode(self, raw: list[pa.RecordBatch]) -> Decoded:
        """A step's raw rows -> the plan's batches and the rejected raw rows (CPU only)."""
        if self.source.relation is None:
            batches = [b for b in raw if b.num_rows]
            return Decoded(batches, None, sum(b.num_rows for b in batches))
        out: list[pa.RecordBatch] = []
        rejected: list[pa.RecordBatch] = []
        for group in _groups(raw):
            rows, bad = decode_relation(self.source, self.schema, group)
            if rows.num_rows:
                out.append(rows)
            if bad is not None:
                rejected.append(bad)
        errors = sum(b.num_rows for b in rejected)
        return Decoded(
            out,
            (rejected[0] if len(rejected) == 1 else pa.concat_batches(rejected))
            if rejected
            else None,
            sum(b.num_rows for b in out),
            errors,
        )


async def wait_for_data(
    tails: list[SourceTail], deadline: float, stop: asyncio.Event | None = None
) -> bool:
    """Polls the sources' high watermarks (50 ms doubling to 500 ms) until one has something
    new (True), or ``deadline`` (``time.monotonic()``) passes or ``stop`` is set (False)."""
    delay = POLL_FIRST_S
    while True:
        for tail in tails:
            await tail.refresh()
            if tail.has_new():
                return True
        left = deadline - time.monotonic()
        if left <= 0 or (stop is not None and stop.is_set()):
            return False
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, POLL_MAX_S)
