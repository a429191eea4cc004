"""A continuous query's results -> Kafka record batches in one segment object, a batch at a time.

What a result row becomes
-------------------------
One Kafka record per row:

- value: the row as one JSON object, ``{"column": value, ...}`` in the output schema's column
  order. Integers and decimals are JSON numbers; floats too (NaN and infinities are null);
  booleans ``true``/``false``; strings JSON strings; timestamps ISO 8601 strings
  (``2023-11-14T22:13:20.123``; a column with a time zone is written in UTC, with a ``Z``;
  fractions of a second only when there are), which a declared
  stream's JSON reader parses back into a TIMESTAMP; dates ``"2023-11-14"``; null ``null``.
  Other types (lists, structs, binary) are encoded by msgspec one value at a time.
- key: null for append-only results; for upserts (``key_columns``) the JSON object of the key
  columns, so a compacted output topic keeps the latest row per key.
- a keyed result row whose ``__delete`` column (``DELETE_COLUMN``, see
  ``sql.continuous.pipeline``) is true becomes a tombstone: the key, a null value (a
  compacted topic then forgets the key). ``__delete`` itself is never written.
- timestamp: the row's ``output_time_column`` (ms) when the plan names one, else the commit
  time.

The JSON text of a whole column is made with Arrow compute (casts, ``strftime``, string
escapes, ``binary_join_element_wise``): no Python object per row.

Partitioning
------------
Keyed records go to ``murmur2(key) % partitions`` (Kafka's default partitioner, so a key's
updates stay in order on one partition), hashed for all keys at once in numpy. Unkeyed
records are spread evenly: a step's rows are cut into one contiguous slice per partition (a
step with fewer rows than partitions goes to one partition, rotating step by step).

Record batches (``encode_records``)
-----------------------------------
RecordBatch v2, uncompressed, non-idempotent (producer id -1, base offset 0, CreateTime), as
``streamhouse.recordbatch`` documents. The record framing is built for all records at once:
the varints (length, timestamp delta, offset delta, key and value lengths) are computed in
numpy and joined with keys and values by ``binary_join_element_wise``, then one CRC-32C per
batch. A batch holds at most ``BATCH_BYTES`` of records.

Segment (``build_segment``)
---------------------------
One ``streamhouse.segment`` object per checkpoint: for every (topic, partition) that got
records, one block of its batches; with the ``CommitBlock`` list ``commit_query_step`` (and
``commit_segment``) takes. Dead-lettered records (``DeadLetters``) are written to their topic
in the same object, with headers naming where they came from.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Sequence

import crc32c
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from metadata import BatchRef, CommitBlock
from sql.continuous.pipeline import DELETE_COLUMN
from streamhouse.recordbatch import encode_batch
from streamhouse.segment import SegmentWriter

__all__ = [
    "BATCH_BYTES",
    "DeadLetters",
    "dead_letter_batches",
    "new_segment_key",
    "OutputRecords",
    "SegmentOut",
    "build_segment",
    "encode_records",
    "json_values",
    "key_partitions",
    "output_records",
    "partition_records",
]

#: Record bytes per RecordBatch (readers hand batches out whole: keep them moderate).
BATCH_BYTES = 1 << 20

# RecordBatch v2 header (streamhouse.recordbatch): base_offset, batch_length, leader_epoch,
# magic, crc; then from attributes on, what the CRC covers.
_PRE_CRC = struct.Struct(">qiibI")
_CRC_HEADER = struct.Struct(">hiqqqhii")
_NULL_JSON = pa.scalar("null", pa.utf8())
_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))
_CONTROL = "[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f]"
_NEEDS_ESCAPE = '["\\\\\\x00-\\x1f]'
_json_encode = msgspec.json.Encoder().encode


# -- JSON text, a column at a time --------------------------------------------------------


def _quoted(text: pa.Array) -> pa.Array:
    """JSON strings of a utf8 array (nulls stay null)."""
    if not pc.any(pc.match_substring_regex(text, _NEEDS_ESCAPE)).as_py():
        return pc.binary_join_element_wise('"', text, '"', "")  # the usual case: as it is
    rare = pc.fill_null(pc.match_substring_regex(text, _CONTROL), False)
    escaped = text
    for old, new in _ESCAPES:
        escaped = pc.replace_substring(escaped, old, new)
    quoted = pc.binary_join_element_wise('"', escaped, '"', "")
    if pc.any(rare).as_py():  # other control characters (rare): msgspec escapes them
        fixed = pa.array(
            [None if v is None else _json_encode(v).decode() for v in text.to_pylist()],
            pa.utf8(),
        )
        quoted = pc.if_else(rare, fixed, quoted)
    return quoted


def _json_column(column: pa.Array) -> pa.Array:
    """The JSON text of every value of ``column`` (``null`` for nulls), as utf8."""
    kind = column.type
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(kind):
        return _json_column(column.dictionary_decode())
    if pa.types.is_integer(kind) or pa.types.is_decimal(kind):
        text = pc.cast(column, pa.utf8())
    elif pa.types.is_floating(kind):
        text = pc.if_else(pc.is_finite(column), pc.cast(column, pa.utf8()), None)
    elif pa.types.is_boolean(kind):
        text = pc.cast(column, pa.utf8())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = _quoted(pc.cast(column, pa.utf8()))
    elif pa.types.is_timestamp(kind):
        # a cast to text is ~20x faster than strftime; a zoned time is written in UTC
        wall = pc.cast(column, pa.timestamp(kind.unit)) if kind.tz else column
        iso = pc.replace_substring(pc.cast(wall, pa.utf8()), " ", "T", max_replacements=1)
        text = pc.binary_join_element_wise('"', iso, 'Z"' if kind.tz else '"', "")
    elif pa.types.is_date(kind):
        text = pc.binary_join_element_wise('"', pc.strftime(column, format="%Y-%m-%d"), '"', "")
    else:
        text = pa.array(
            [None if v is None else _json_encode(v).decode() for v in column.to_pylist()],
            pa.utf8(),
        )
    return pc.fill_null(text, _NULL_JSON)


def json_values(batch: pa.RecordBatch | pa.Table, columns: Sequence[str] | None = None) -> pa.Array:
    """One JSON object per row of ``batch`` (its ``columns``, default all), as utf8."""
    names = list(batch.schema.names if columns is None else columns)
    if not names:
        return pa.array(["{}"] * batch.num_rows, pa.utf8())
    pieces: list[pa.Array | str] = []
    for i, name in enumerate(names):
        pieces.append(("{" if i == 0 else ",") + _json_encode(name).decode() + ":")
        pieces.append(_json_column(batch.column(name)))
    pieces.append("}")
    joined = pc.binary_join_element_wise(*pieces, "")
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


# -- records -> RecordBatch v2 ------------------------------------------------------------


def _varints(values: np.ndarray) -> pa.Array:
    """Zigzag varints (protobuf sint64) of int64 ``values``, one binary value each."""
    v = values.astype(np.int64)
    z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    width = np.ones(len(z), dtype=np.int32)
    shifted = z >> np.uint64(7)
    while shifted.any():
        width += (shifted > 0).astype(np.int32)
        shifted >>= np.uint64(7)
    most = int(width.max()) if len(width) else 1
    mat = np.empty((len(z), most), dtype=np.uint8)
    for k in range(most):
        byte = ((z >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        mat[:, k] = byte | np.where(k < width - 1, 0x80, 0).astype(np.uint8)
    data = mat[np.arange(most)[None, :] < width[:, None]]
    offsets = np.zeros(len(z) + 1, dtype=np.int32)
    np.cumsum(width, out=offsets[1:])
    return pa.Array.from_buffers(
        pa.binary(), len(z), [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())]
    )


def _lengths(values: pa.Array) -> np.ndarray:
    """Byte lengths, -1 for nulls (Kafka's null key / value)."""
    lengths = pc.fill_null(pc.binary_length(values), -1)
    return lengths.to_numpy(zero_copy_only=False).astype(np.int64)


def _piece(values: np.ndarray) -> tuple[pa.Array | pa.Scalar, np.ndarray | int]:
    """The varints of ``values`` and their byte lengths; one scalar when all are equal (the
    usual timestamp deltas of a commit-time batch, null keys)."""
    if len(values) and (values == values[0]).all():
        one = _varints(values[:1])
        return one[0], len(one[0].as_py())
    array = _varints(values)
    return array, _lengths(array)


def _records(keys: pa.Array, values: pa.Array, timestamps: np.ndarray) -> tuple[pa.Array, int]:
    """Each record's bytes (length prefix included) for one batch; and the base timestamp."""
    n = len(values)
    base_ts = int(timestamps[0])
    key_len = _lengths(keys)
    value_len = _lengths(values)
    td, td_len = _piece(timestamps - base_ts)
    od = _varints(np.arange(n, dtype=np.int64))
    kl, kl_len = _piece(key_len)
    vl = _varints(value_len)
    empty = pa.scalar(b"", pa.binary())
    key_bytes = empty if keys.null_count == n else pc.fill_null(keys, empty)
    value_bytes = pc.fill_null(values, empty)
    body_len = (
        2  # attributes, header count (0)
        + td_len
        + _lengths(od)
        + kl_len
        + np.maximum(key_len, 0)
        + _lengths(vl)
        + np.maximum(value_len, 0)
    )
    records = pc.binary_join_element_wise(
        _varints(body_len), b"\x00", td, od, kl, key_bytes, vl, value_bytes, b"\x00", b""
    )
    return records, base_ts


def _as_binary(array: pa.Array) -> pa.Array:
    if pa.types.is_binary(array.type):
        return array
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), pa.binary())
    return array.cast(pa.binary())


def encode_records(keys: pa.Array, values: pa.Array, timestamps: np.ndarray) -> list[bytes]:
    """RecordBatch v2 batches (uncompressed, non-idempotent, base offset 0) holding the
    records in order, each at most about ``BATCH_BYTES`` of records. ``keys``/``values``
    are binary or utf8 arrays (nulls: null key/value), ``timestamps`` int64 ms."""
    n = len(values)
    if n == 0:
        return []
    keys, values = _as_binary(keys), _as_binary(values)
    sizes = np.cumsum(_lengths(values).clip(0) + _lengths(keys).clip(0) + 16)
    cuts = [0]
    while cuts[-1] < n:  # a cut per BATCH_BYTES of records (few per call)
        done = int(sizes[cuts[-1] - 1]) if cuts[-1] else 0
        nxt = int(np.searchsorted(sizes, done + BATCH_BYTES, side="right"))
        cuts.append(min(n, max(nxt, cuts[-1] + 1)))
    out: list[bytes] = []
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        count = hi - lo
        ts = timestamps[lo:hi]
        records, base_ts = _records(keys.slice(lo, count), values.slice(lo, count), ts)
        buffers = records.buffers()
        offsets = np.frombuffer(buffers[1], dtype=np.int32, count=count + 1, offset=0)
        start, end = int(offsets[0 + records.offset]), int(offsets[count + records.offset])
        body = buffers[2].to_pybytes()[start:end]
        data = _CRC_HEADER.pack(0, count - 1, base_ts, int(ts.max()), -1, -1, -1, count) + body
        out.append(_PRE_CRC.pack(0, len(data) + 9, -1, 2, crc32c.crc32c(data)) + data)
    return out


# -- results -> output records ------------------------------------------------------------


class OutputRecords(msgspec.Struct):
    """Records for one topic: keys (binary/utf8, or None: all null), values, timestamps (ms)."""

    keys: pa.Array | None
    values: pa.Array
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


def output_records(
    batches: Sequence[pa.RecordBatch],
    key_columns: Sequence[str],
    time_column: str | None,
    now_ms: int,
) -> OutputRecords | None:
    """The records result ``batches`` become (module docstring); None when there are none."""
    batches = [b for b in batches if b.num_rows]
    if not batches:
        return None
    table = pa.concat_tables(
        [pa.Table.from_batches([b]) for b in batches], promote_options="permissive"
    ).combine_chunks()
    deletes = None
    if DELETE_COLUMN in table.column_names:
        if not key_columns:
            raise ValueError(
                f"a result with {DELETE_COLUMN} must have key columns (an append-only result "
                "cannot delete): the plan is wrong"
            )
        deletes = pc.fill_null(table.column(DELETE_COLUMN).combine_chunks(), False)
        table = table.drop_columns([DELETE_COLUMN])
    values = json_values(table)
    if deletes is not None and pc.any(deletes).as_py():
        values = pc.if_else(deletes, pa.scalar(None, values.type), values)
    keys = json_values(table, key_columns) if key_columns else None
    if time_column is not None:
        ts = pc.fill_null(
            table.column(time_column).cast(pa.timestamp("ms")).cast(pa.int64()), now_ms
        )
        timestamps = ts.to_numpy().astype(np.int64)
    else:
        timestamps = np.full(table.num_rows, now_ms, dtype=np.int64)
    return OutputRecords(keys, values, timestamps)


def partition_records(
    records: OutputRecords, partitions: int, rotation: int
) -> list[tuple[int, pa.Array, pa.Array, np.ndarray]]:
    """(partition, keys, values, timestamps) per partition that gets records (docstring)."""
    n = len(records)
    if records.keys is not None:
        targets = key_partitions(records.keys, partitions)
        out = []
        for p in np.unique(targets):
            take = pa.array(np.flatnonzero(targets == p))
            out.append(
                (
                    int(p),
                    records.keys.take(take),
                    records.values.take(take),
                    records.timestamps[take.to_numpy()],
                )
            )
        return out
    nulls = pa.nulls(n, pa.binary())
    if n < partitions:
        return [(rotation % partitions, nulls, records.values, records.timestamps)]
    bounds = [n * i // partitions for i in range(partitions + 1)]
    return [
        (
            p,
            nulls.slice(lo, hi - lo),
            records.values.slice(lo, hi - lo),
            records.timestamps[lo:hi],
        )
        for p, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False))
        if hi > lo
    ]


_M = np.uint32(0x5BD1E995)


def key_partitions(keys: pa.Array, partitions: int) -> np.ndarray:
    """Kafka's default partitioner (``murmur2(key) & 0x7fffffff) % partitions``, as
    ``streamhouse.recordbatch.default_partition``) for every non-null key at once: keys of
    one length are hashed together as the rows of a byte matrix (uint32 arithmetic wraps
    like Java's int)."""
    keys = _as_binary(keys)
    n = len(keys)
    lengths = _lengths(keys).clip(0)
    offsets = np.frombuffer(keys.buffers()[1], np.int32, n + 1, keys.offset * 4).astype(np.int64)
    data_buffer = keys.buffers()[2]
    data = (
        np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    )
    out = np.empty(n, dtype=np.int32)
    with np.errstate(over="ignore"):
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            size = int(length)
            matrix = data[offsets[rows][:, None] + np.arange(size)[None, :]]
            h = np.full(len(rows), (0x9747B28C ^ size) & 0xFFFFFFFF, dtype=np.uint32)
            words = size // 4
            if words:
                blocks = np.ascontiguousarray(matrix[:, : words * 4]).view("<u4")
                for j in range(words):
                    k = blocks[:, j] * _M
                    k ^= k >> np.uint32(24)
                    k *= _M
                    h *= _M
                    h ^= k
            tail = words * 4
            rest = size & 3
            if rest:
                if rest == 3:
                    h ^= matrix[:, tail + 2].astype(np.uint32) << np.uint32(16)
                if rest >= 2:
                    h ^= matrix[:, tail + 1].astype(np.uint32) << np.uint32(8)
                h ^= matrix[:, tail].astype(np.uint32)
                h *= _M
            h ^= h >> np.uint32(13)
            h *= _M
            h ^= h >> np.uint32(15)
            out[rows] = (h & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)
    return out


class DeadLetters(msgspec.Struct):
    """Records of a source that did not match its declared schema (raw columns), to be
    written to the dead-letter topic with headers ``source.topic``, ``source.partition``,
    ``source.offset`` and ``error``."""

    topic: str
    raw: pa.RecordBatch


def dead_letter_batches(letters: Sequence[DeadLetters], error: str) -> list[bytes]:
    """The dead letters as record batches (few: built record by record)."""
    out: list[bytes] = []
    for letter in letters:
        rows = letter.raw.to_pydict()
        n = letter.raw.num_rows
        for lo in range(0, n, 1000):
            hi = min(n, lo + 1000)
            headers = [
                [
                    ("source.topic", letter.topic.encode()),
                    ("source.partition", str(rows["partition"][i]).encode()),
                    ("source.offset", str(rows["offset"][i]).encode()),
                    ("error", error.encode()),
                ]
                for i in range(lo, hi)
            ]
            out.append(
                encode_batch(
                    rows["key"][lo:hi],
                    rows["value"][lo:hi],
                    headers,
                    [int(t.timestamp() * 1000) for t in rows["timestamp"][lo:hi]],
                )
            )
    return out


# -- one segment per checkpoint -----------------------------------------------------------


class SegmentOut(msgspec.Struct):
    """A built segment object, its CommitBlocks, and the records it holds per topic id."""

    data: bytes
    blocks: list[CommitBlock]
    records: dict[int, int]


def _batch_stats(batch: bytes) -> tuple[int, int, int]:
    """(record count, first timestamp, max timestamp) read from a batch header."""
    _attrs, _lod, base_ts, max_ts, _pid, _pe, _bs, count = _CRC_HEADER.unpack_from(batch, 21)
    return count, base_ts, max_ts


def build_segment(parts: Sequence[tuple[int, int, list[bytes]]]) -> SegmentOut | None:
    """One segment object from ``(topic_id, partition, batches)`` parts (one block each,
    parts of the same topic and partition merged in order); None when there are none."""
    merged: dict[tuple[int, int], list[bytes]] = {}
    for topic_id, partition, batches in parts:
        if batches:
            merged.setdefault((topic_id, partition), []).extend(batches)
    if not merged:
        return None
    writer = SegmentWriter()
    refs: list[tuple[int, int, list[BatchRef], int, int]] = []
    counts: dict[int, int] = {}
    for (topic_id, partition), batches in sorted(merged.items()):
        stats = [_batch_stats(b) for b in batches]
        records = sum(s[0] for s in stats)
        lo = min(min(s[1], s[2]) for s in stats)
        hi = max(s[2] for s in stats)
        writer.add_block(topic_id, partition, batches, len(batches), records, lo, hi)
        refs.append(
            (topic_id, partition, [BatchRef(s[0]) for s in stats], hi, sum(map(len, batches)))
        )
        counts[topic_id] = counts.get(topic_id, 0) + records
    data, entries = writer.finish()
    blocks = [
        CommitBlock(topic_id, partition, e.offset, e.length, hi, batch_refs, raw)
        for (topic_id, partition, batch_refs, hi, raw), e in zip(refs, entries, strict=True)
    ]
    return SegmentOut(data, blocks, counts)


def new_segment_key() -> str:
    """Object key of an output segment (as the uploader names segments)."""
    return f"segments/{time.time_ns():020d}-{secrets.token_hex(8)}.seg"
