"""Stored blocks -> Arrow record batches of a topic's raw columns, a block at a time.

Raw columns of every topic (``RAW_SCHEMA``):

=========  ==================================  =============================================
column     Arrow type                          from
=========  ==================================  =============================================
partition  int32, not null                     the block row's partition
offset     int64, not null                     the gap rule (``walk_block``) + offset delta
timestamp  timestamp[ms, UTC], not null        base timestamp + delta (CreateTime), or the
                                               batch's max timestamp (LogAppendTime)
key        binary                              null for a null key
value      binary                              null for a null value (a tombstone)
headers    list<struct<key: utf8 not null,     in record order, duplicates kept
           value: binary>> not null
=========  ==================================  =============================================

Python walks only the batch headers of a block (``walk_block``: the gap rule, skipped
duplicate batches) and inflates compressed batches (bounded, as the reader does); the records
of all the block's batches are walked in C (``sql/_arrowdecode.c``) straight into Arrow
buffers, which become arrays with ``pyarrow.Array.from_buffers`` without a copy. No Python
object is made per record.

Batches wholly outside the wanted offsets, or whose max timestamp is below the wanted time,
are not decoded at all (``BatchFilter``); rows are not filtered here (the SQL engine applies
the predicates again, so a batch straddling a bound is simply decoded whole). Control
batches (transaction markers, ``streamhouse/recordbatch.py``) are not records: never decoded.

Read committed: SQL never shows records of aborted transactions. The caller reads no further
than the partition's last stable offset and passes its aborted transactions
(``AbortedRanges``, from metadata ``aborted_transactions``); a transactional batch (attributes
bit 4) whose producer had a transaction aborted over the batch's first offset is not decoded
(a transaction's batches are whole: none straddles its ABORT marker).
"""

from __future__ import annotations

import msgspec
import numpy as np
import pyarrow as pa

from metadata.transactions import AbortedRanges
from sql._arrowdecode import decode_batches
from streamhouse.recordbatch import (
    BATCH_HEADER_SIZE,
    CODEC_MASK,
    CODEC_NONE,
    CONTROL_MASK,
    MAX_INFLATED_BYTES,
    TIMESTAMP_TYPE_MASK,
    TRANSACTIONAL_MASK,
    InvalidBatchError,
    inflate,
    walk_block,
)

__all__ = [
    "RAW_SCHEMA",
    "AbortedRanges",
    "BatchFilter",
    "BlockDecodeError",
    "decode_block_records",
    "empty_raw",
]

HEADER_TYPE = pa.list_(
    pa.struct([pa.field("key", pa.utf8(), nullable=False), pa.field("value", pa.binary())])
)
RAW_SCHEMA = pa.schema(
    [
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("key", pa.binary()),
        pa.field("value", pa.binary()),
        pa.field("headers", HEADER_TYPE, nullable=False),
    ]
)


class BlockDecodeError(ValueError):
    """A stored block whose batches or records do not parse; the message says which."""


class BatchFilter(msgspec.Struct, frozen=True):
    """Which batches of a block are worth decoding: those holding an offset in
    ``[from_offset, to_offset)`` (``to_offset`` None: no end) and, with ``min_timestamp``,
    whose max timestamp reaches it."""

    from_offset: int = 0
    to_offset: int | None = None
    min_timestamp: int | None = None


def empty_raw() -> pa.RecordBatch:
    """A RecordBatch of ``RAW_SCHEMA`` with no rows."""
    return pa.RecordBatch.from_pylist([], schema=RAW_SCHEMA)


def decode_block_records(
    block: bytes | memoryview,
    partition: int,
    base_offset: int,
    skipped: tuple[int, ...] = (),
    end_offset: int | None = None,
    wanted: BatchFilter | None = None,
    *,
    max_inflated: int = MAX_INFLATED_BYTES,
    aborted: AbortedRanges | None = None,
) -> tuple[pa.RecordBatch, int]:
    """The records of one decoded block (``streamhouse.segment.decode_block`` output) as a
    RecordBatch of ``RAW_SCHEMA``, and how many batches were decoded. ``base_offset``,
    ``skipped`` and ``end_offset`` are the block row's; transactional batches ``aborted``
    covers are left out (module docstring). Raises ``BlockDecodeError``."""
    view = memoryview(block)
    try:
        batches = walk_block(view, base_offset, skipped, end_offset=end_offset)
    except InvalidBatchError as exc:
        raise BlockDecodeError(f"batch headers do not parse: {exc.message}") from None
    parts: list[tuple[object, int, int, int, int, int, bool, int]] = []
    for stored in batches:
        info = stored.info
        if info.attributes & CONTROL_MASK:
            continue  # a transaction marker
        if (
            aborted
            and info.attributes & TRANSACTIONAL_MASK
            and aborted.covers(info.producer_id, stored.first_offset)
        ):
            continue  # a record of an aborted transaction
        if wanted is not None:
            last = stored.first_offset + info.last_offset_delta
            if last < wanted.from_offset:
                continue
            if wanted.to_offset is not None and stored.first_offset >= wanted.to_offset:
                continue
            if wanted.min_timestamp is not None and info.max_timestamp < wanted.min_timestamp:
                continue
        start = info.position + BATCH_HEADER_SIZE
        end = info.position + info.length
        codec = info.attributes & CODEC_MASK
        log_append = bool(info.attributes & TIMESTAMP_TYPE_MASK)
        if codec == CODEC_NONE:
            source: object = view
        else:
            try:
                source = inflate(codec, bytes(view[start:end]), max_inflated)
            except InvalidBatchError as exc:
                raise BlockDecodeError(f"batch at byte {info.position}: {exc.message}") from None
            start, end = 0, len(source)  # type: ignore[arg-type]
        parts.append(
            (
                source,
                start,
                end,
                info.record_count,
                stored.first_offset,
                info.base_timestamp,
                log_append,
                info.max_timestamp,
            )
        )
    if not parts:
        return empty_raw(), 0
    try:
        out = decode_batches(parts)
    except ValueError as exc:
        raise BlockDecodeError(f"records do not parse: {exc}") from None
    return _to_record_batch(partition, out), len(parts)


def _buf(data: bytes | None) -> pa.Buffer | None:
    return None if data is None else pa.py_buffer(data)


def _to_record_batch(partition: int, out: tuple) -> pa.RecordBatch:  # type: ignore[type-arg]
    (
        rows,
        offset,
        timestamp,
        key_valid,
        key_off,
        key_data,
        key_nulls,
        value_valid,
        value_off,
        value_data,
        value_nulls,
        header_off,
        hkey_off,
        hkey_data,
        hvalue_valid,
        hvalue_off,
        hvalue_data,
        hvalue_nulls,
        headers,
    ) = out
    hkeys = pa.Array.from_buffers(pa.utf8(), headers, [None, _buf(hkey_off), _buf(hkey_data)])
    if headers:
        try:  # the produce edge checks header keys; stored bytes are not trusted blindly
            hkeys.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise BlockDecodeError(f"a header key is not valid UTF-8: {exc}") from None
    hvalues = pa.Array.from_buffers(
        pa.binary(),
        headers,
        [_buf(hvalue_valid), _buf(hvalue_off), _buf(hvalue_data)],
        null_count=hvalue_nulls,
    )
    entries = pa.StructArray.from_arrays([hkeys, hvalues], fields=list(HEADER_TYPE.value_type))
    columns = [
        pa.array(np.full(rows, partition, dtype=np.int32)),
        pa.Array.from_buffers(pa.int64(), rows, [None, _buf(offset)]),
        pa.Array.from_buffers(RAW_SCHEMA.field("timestamp").type, rows, [None, _buf(timestamp)]),
        pa.Array.from_buffers(
            pa.binary(),
            rows,
            [_buf(key_valid), _buf(key_off), _buf(key_data)],
            null_count=key_nulls,
        ),
        pa.Array.from_buffers(
            pa.binary(),
            rows,
            [_buf(value_valid), _buf(value_off), _buf(value_data)],
            null_count=value_nulls,
        ),
        pa.Array.from_buffers(HEADER_TYPE, rows, [None, _buf(header_off)], children=[entries]),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=RAW_SCHEMA)
