"""Kafka RecordBatch v2 (magic 2): build, walk, patch and decode.

StreamHouse stores batches exactly as a producer sent them. The ingest edge checks each one
as Kafka's LogValidator does (``validate_batches``: header, CRC, attributes, producer fields,
then every record's framing, offset deltas and timestamps walked in C by
``streamhouse/_batchcheck.c``, after a decompression with a hard bound on its output) and
never builds a Python object per record. Readers walk only the 61-byte headers
(``scan_batches``) and stamp the base offset (``patch_base_offset``). Records are decoded
only for gRPC consumers (``decode_records``, bounded decompression too) and built only for
gRPC producers (``encode_batch``). Key compaction (``lifecycle/keyplan.py``) rebuilds a batch
around fewer records (``rebuild_batch``, recompressed with its codec by ``deflate``), and
stored blocks are walked and written by the gap rule below (``walk_block``, ``encode_block``).

Batch header (all integers big-endian, 61 bytes)
------------------------------------------------

======  ====  ======================  ====================================================
offset  size  field                   meaning
======  ====  ======================  ====================================================
0       8     base_offset      int64  offset of the first record; assigned by the log
8       4     batch_length     int32  bytes that follow this field (total size - 12)
12      4     leader_epoch     int32  partition leader epoch; outside the CRC
16      1     magic            int8   format version, always 2 here
17      4     crc              uint32 CRC-32C (Castagnoli) of bytes 21 .. end of batch
21      2     attributes       int16  bits 0-2 codec (0 none, 1 gzip, 2 snappy, 3 lz4,
                                      4 zstd); bit 3 timestamp type (1 = LogAppendTime);
                                      bit 4 transactional; bit 5 control batch;
                                      bit 6 delete-horizon; the rest unused
23      4     last_offset_delta int32 offset delta of the last record (= count - 1)
27      8     base_timestamp   int64  timestamp the record deltas are relative to (ms)
35      8     max_timestamp    int64  largest record timestamp (ms)
43      8     producer_id      int64  idempotent/transactional producer, -1 if none
51      2     producer_epoch   int16  -1 if none
53      4     base_sequence    int32  sequence number of the first record, -1 if none
57      4     records_count    int32  number of records that follow
61      ...   records                 the records; with a codec, one compressed blob
======  ====  ======================  ====================================================

Record (every integer is a zigzag varint as in protobuf's sint32/sint64)
-------------------------------------------------------------------------

=================  ========  ===================================================
field              encoding  meaning
=================  ========  ===================================================
length             varint    bytes of the record after this field
attributes         int8      unused, written as 0
timestamp_delta    varlong   record timestamp - base_timestamp
offset_delta       varint    record offset - base_offset
key_length         varint    -1 for a null key
key                bytes     key_length bytes
value_length       varint    -1 for a null value
value              bytes     value_length bytes
header_count       varint    number of headers, kept in order, duplicates allowed
  header_key_len   varint    length of the UTF-8 key (never null)
  header_key       bytes     UTF-8 text
  header_val_len   varint    -1 for a null header value
  header_value     bytes
=================  ========  ===================================================

Stored blocks: the gap rule
---------------------------

A block of a segment object holds one partition's batches back to back. Their offsets are not
written into them at commit; the block's metadata row gives its ``base_offset`` and the
ordinals of duplicate batches (``skipped_batches``, which take no offsets), and the stored
``baseOffset`` field of each other batch is the *gap*: the number of offsets between the end of
the previous batch (or the row's ``base_offset``, for the first) and the batch's first offset.
A batch's offsets are ``[first, first + lastOffsetDelta]``. Produced batches have
``baseOffset`` 0 (``validate_batches`` refuses any other), so a produced block's batches take
consecutive offsets; a block rewritten by key compaction keeps each surviving batch's
``lastOffsetDelta`` and each record's ``offsetDelta``, may hold fewer records than
``lastOffsetDelta + 1`` in a batch, and leaves gaps where whole batches were removed
(``encode_block`` writes such blocks, ``walk_block`` reads every block). The reader stamps the
absolute first offset into the ``baseOffset`` of each batch it serves.

Kafka's LZ4 codec is the LZ4 *frame* format; its snappy codec is either raw snappy
(librdkafka and most non-JVM clients) or the xerial/snappy-java block framing (the Java
client); both are accepted on decode.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import crc32c
import lz4.frame
import msgspec

from streamhouse._batchcheck import check_records
from streamhouse.errors import ErrorCode, StreamHouseError

__all__ = [
    "BATCH_HEADER_SIZE",
    "BatchInfo",
    "BatchRules",
    "BlockBatch",
    "InvalidBatchError",
    "control_type",
    "decode_records",
    "deflate",
    "default_partition",
    "encode_batch",
    "encode_block",
    "encode_control_batch",
    "inflate",
    "murmur2",
    "patch_base_offset",
    "rebuild_batch",
    "scan_batches",
    "validate_batches",
    "walk_block",
]

BATCH_HEADER_SIZE = 61

# base_offset .. records_count, in order; see the table above.
_HEADER = struct.Struct(">qiibIhiqqqhii")
# The part of the header covered by the CRC (attributes .. records_count).
_CRC_HEADER = struct.Struct(">hiqqqhii")
# The part before it (base_offset .. crc).
_PRE_CRC = struct.Struct(">qiibI")
_BASE_OFFSET = struct.Struct(">q")
_LAST_OFFSET_DELTA = struct.Struct(">i")
_LAST_OFFSET_DELTA_AT = 23
assert _HEADER.size == BATCH_HEADER_SIZE
assert _PRE_CRC.size + _CRC_HEADER.size == BATCH_HEADER_SIZE

_CRC_START = 21  # first byte covered by the CRC (attributes)
_LENGTH_FIELD_END = 12  # batch_length counts the bytes after base_offset + batch_length
_MIN_BATCH_LENGTH = BATCH_HEADER_SIZE - _LENGTH_FIELD_END  # 49: a header and no records
_MIN_RECORD_SIZE = 7  # length, attributes, ts delta, offset delta, key len, value len, headers

CODEC_MASK = 0x07
CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD = 0, 1, 2, 3, 4
TIMESTAMP_TYPE_MASK = 0x08  # set: LogAppendTime
TRANSACTIONAL_MASK = 0x10
CONTROL_MASK = 0x20
DELETE_HORIZON_MASK = 0x40  # KIP-534: baseTimestamp is the batch's delete horizon

NO_PARTITION_LEADER_EPOCH = -1

_INT32_MAX = 2**31 - 1


class InvalidBatchError(StreamHouseError, ValueError):
    """A batch that must be refused; ``code`` (an ``ErrorCode``) is the Kafka error to answer.

    ``code`` is ``CORRUPT_MESSAGE`` (bytes damaged: CRC, lengths, truncation, undecompressable),
    ``INVALID_RECORD`` (well-formed bytes with inconsistent content),
    ``INVALID_TIMESTAMP``, ``MESSAGE_TOO_LARGE``, ``RECORD_LIST_TOO_LARGE`` or
    ``UNSUPPORTED_FOR_MESSAGE_FORMAT`` (not magic 2). The message says what is wrong and
    where. ``record_errors`` lists ``(record index in its batch, message)`` when one record is
    to blame (Produce v8+ ``record_errors``).
    """

    def __init__(
        self, code: ErrorCode, message: str, record_errors: tuple[tuple[int, str], ...] = ()
    ) -> None:
        super().__init__(code, message)
        self.record_errors = record_errors

    def __reduce__(  # type: ignore[override]
        self,
    ) -> tuple[type[InvalidBatchError], tuple[ErrorCode, str, tuple[tuple[int, str], ...]]]:
        # keep the code when pickled, e.g. across a process pool
        return type(self), (self.code, self.message, self.record_errors)


class BatchInfo(msgspec.Struct, frozen=True):
    """What the pipeline needs from a batch header, read without touching the records."""

    position: int  # first byte of the batch in the scanned buffer
    length: int  # whole batch, header included
    record_count: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    attributes: int


# ---------------------------------------------------------------------------------------
# varints


def _zigzag_varint(n: int) -> bytes:
    """Zigzag + LEB128 encoding of a signed 64-bit integer (protobuf sint64)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# Encodings of 0 .. 16383 (every length or delta below 16 KiB), so the hot loop of
# encode_batch is a tuple index instead of a function call. With the two tables below,
# ~1.8 MB of small bytes objects. Zigzag of i >= 0 is 2i: 1 byte below 64, 2 below 8192.
_ZZ_LIMIT = 1 << 14
_ZZ: tuple[bytes, ...] = (
    tuple(bytes((2 * i,)) for i in range(64))
    + tuple(bytes(((2 * i) & 0x7F | 0x80, i >> 6)) for i in range(64, 8192))
    + tuple(
        bytes(((2 * i) & 0x7F | 0x80, (i >> 6) & 0x7F | 0x80, i >> 13))
        for i in range(8192, _ZZ_LIMIT)
    )
)
assert all(_ZZ[i] == _zigzag_varint(i) for i in (0, 63, 64, 8191, 8192, _ZZ_LIMIT - 1))
# attributes (0) + timestamp_delta (0) + offset_delta, the usual start of a record whose
# timestamp equals the batch's base timestamp.
_HEAD0: tuple[bytes, ...] = tuple(b"\x00\x00" + z for z in _ZZ)
# attributes (0) + timestamp_delta, for records whose timestamp differs from the base.
_ATTR_TD: tuple[bytes, ...] = tuple(b"\x00" + z for z in _ZZ)
# Header keys are a handful of distinct strings (trace ids, content types...): cache their
# length-prefixed UTF-8 form. Bounded so hostile producers cannot grow it forever.
_HKEY_CACHE: dict[str, bytes] = {}
_HKEY_CACHE_MAX = 4096


def _encode_headers(headers: list[tuple[str, bytes | None]]) -> bytes:
    """header_count followed by the headers, in the given order."""
    zz = _ZZ
    lim = _ZZ_LIMIT
    cache = _HKEY_CACHE
    hc = len(headers)
    parts = [zz[hc] if hc < lim else _zigzag_varint(hc)]
    for hkey, hval in headers:
        kb = cache.get(hkey)
        if kb is None:
            raw = hkey.encode("utf-8")
            kb = _zigzag_varint(len(raw)) + raw
            if len(cache) >= _HKEY_CACHE_MAX:
                cache.clear()
            cache[hkey] = kb
        parts.append(kb)
        if hval is None:
            parts.append(b"\x01")
        else:
            vl = len(hval)
            parts.append(zz[vl] if vl < lim else _zigzag_varint(vl))
            parts.append(hval)
    return b"".join(parts)


# ---------------------------------------------------------------------------------------
# encode


def encode_batch(
    keys: list[bytes | None],
    values: list[bytes | None],
    headers: list[list[tuple[str, bytes | None]]],
    timestamps: list[int],
    *,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    attributes: int = 0,
) -> bytes:
    """Build one uncompressed RecordBatch v2 holding the given records in order.

    Record ``i`` gets offset delta ``i``, key ``keys[i]``, value ``values[i]``, headers
    ``headers[i]`` (order and duplicates kept) and timestamp ``timestamps[i]`` (ms,
    CreateTime). The batch has base offset 0, partition leader epoch -1, ``attributes``
    (0: uncompressed CreateTime; only the transactional and control bits make sense here),
    base timestamp ``timestamps[0]``, max timestamp ``max(timestamps)`` and a valid CRC-32C.
    Raises ``ValueError`` for no records or lists of different lengths.
    """
    n = len(values)
    if n == 0:
        raise ValueError("encode_batch needs at least one record")
    if len(keys) != n or len(headers) != n or len(timestamps) != n:
        raise ValueError(
            f"encode_batch: {len(keys)} keys, {n} values, {len(headers)} header lists and "
            f"{len(timestamps)} timestamps; all must have the same length"
        )
    if n > _INT32_MAX:
        raise ValueError(f"encode_batch: {n} records do not fit a batch")
    base_ts = timestamps[0]

    # The loop below is the produce hot path: everything is inlined and bound to locals.
    zz = _ZZ
    lim = _ZZ_LIMIT
    slow = _zigzag_varint
    join = b"".join
    attr_td = _ATTR_TD
    if n <= lim:
        heads0 = _HEAD0
        odbs = zz
    else:
        heads0 = [b"\x00\x00" + slow(i) for i in range(n)]
        odbs = [slow(i) for i in range(n)]
    parts = [
        _CRC_HEADER.pack(
            attributes,
            n - 1,
            base_ts,
            max(timestamps),
            producer_id,
            producer_epoch,
            base_sequence,
            n,
        )
    ]
    for od, key, value, hdrs, ts in zip(range(n), keys, values, headers, timestamps, strict=True):
        td = ts - base_ts
        if td == 0:
            head = heads0[od]
        else:
            head = (attr_td[td] if 0 < td < lim else b"\x00" + slow(td)) + odbs[od]
        hb = _encode_headers(hdrs) if hdrs else b"\x00"
        if key is None:
            if value is None:
                body = head + b"\x01\x01" + hb
            else:
                vl = len(value)
                body = join((head, b"\x01", zz[vl] if vl < lim else slow(vl), value, hb))
        else:
            kl = len(key)
            klb = zz[kl] if kl < lim else slow(kl)
            if value is None:
                body = join((head, klb, key, b"\x01", hb))
            else:
                vl = len(value)
                body = join((head, klb, key, zz[vl] if vl < lim else slow(vl), value, hb))
        bl = len(body)
        parts += (zz[bl] if bl < lim else slow(bl), body)
    data = join(parts)
    return (
        _PRE_CRC.pack(
            0, len(data) + 9, NO_PARTITION_LEADER_EPOCH, 2, crc32c.crc32c(data)
        )  # 9 = leader epoch + magic + crc, the rest of what batch_length counts
        + data
    )


# ---------------------------------------------------------------------------------------
# control batches (transaction markers)
#
# A control batch has attributes bit 5 (control) and bit 4 (transactional) set, the
# transaction's producer id and epoch, base sequence -1 and exactly one uncompressed record:
#
#   key    int16 version (0), int16 type (0 ABORT, 1 COMMIT)
#   value  int16 version (0), int32 coordinator epoch
#
# (Kafka's EndTransactionMarker). Only the log writes them (ingest/txn_markers.py); produce
# refuses them from clients. Consumers skip them; read_committed consumers use them to end
# the aborted transactions listed in a Fetch response.

CONTROL_ABORT, CONTROL_COMMIT = 0, 1
_CONTROL_KEY = struct.Struct(">hh")
_CONTROL_VALUE = struct.Struct(">hi")


def encode_control_batch(
    commit: bool, producer_id: int, producer_epoch: int, coordinator_epoch: int, timestamp_ms: int
) -> bytes:
    """One control batch ending a transaction with a COMMIT or ABORT marker (layout above).

    Raises ``ValueError`` for a producer id or epoch a transaction cannot have."""
    if producer_id < 0 or not 0 <= producer_epoch <= 0x7FFF:
        raise ValueError(
            f"a transaction marker needs a producer id >= 0 and an epoch 0..32767, not "
            f"{producer_id}/{producer_epoch}"
        )
    marker = CONTROL_COMMIT if commit else CONTROL_ABORT
    return encode_batch(
        [_CONTROL_KEY.pack(0, marker)],
        [_CONTROL_VALUE.pack(0, coordinator_epoch)],
        [[]],
        [timestamp_ms],
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=-1,
        attributes=TRANSACTIONAL_MASK | CONTROL_MASK,
    )


def control_type(batch: bytes | bytearray | memoryview) -> int:
    """The marker type (CONTROL_ABORT or CONTROL_COMMIT) of one whole control batch.

    Raises ``InvalidBatchError`` unless it is a control batch of one record whose key is a
    version 0 marker of a known type."""
    records = decode_records(batch)
    if len(records) != 1 or records[0][2] is None or len(records[0][2]) != _CONTROL_KEY.size:
        raise InvalidBatchError(
            ErrorCode.CORRUPT_MESSAGE, "a control batch must hold one record with a 4-byte key"
        )
    version, kind = _CONTROL_KEY.unpack(records[0][2])
    if version != 0 or kind not in (CONTROL_ABORT, CONTROL_COMMIT):
        raise InvalidBatchError(
            ErrorCode.CORRUPT_MESSAGE,
            f"control record key version {version} type {kind}: only version 0 ABORT (0) or "
            "COMMIT (1) markers are known",
        )
    return kind


# ---------------------------------------------------------------------------------------
# scan / patch


def scan_batches(
    buf: bytes | bytearray | memoryview, *, verify_crc: bool = True, compacted: bool = False
) -> list[BatchInfo]:
    """Walk concatenated batches, reading only their 61-byte headers.

    Returns one ``BatchInfo`` per batch, in order, covering ``buf`` exactly. Raises
    ``InvalidBatchError`` on: an empty buffer; a trailing partial header or batch; a
    ``batch_length`` below the header size; magic other than 2 (``UNSUPPORTED_FOR_MESSAGE_FORMAT``);
    a CRC-32C mismatch when ``verify_crc``; ``records_count`` < 1, not equal to
    ``last_offset_delta + 1`` (with ``compacted``: above it, since key compaction removes
    records but keeps ``lastOffsetDelta``) or too large for the uncompressed record bytes; an
    unknown compression codec. Records are never decoded or decompressed.
    """
    mv = memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    end_of_buf = len(mv)
    if end_of_buf == 0:
        raise InvalidBatchError(ErrorCode.CORRUPT_MESSAGE, "no record batch: the buffer is empty")
    unpack = _HEADER.unpack_from
    crc_of = crc32c.crc32c
    out: list[BatchInfo] = []
    pos = 0
    index = 0
    while pos < end_of_buf:
        left = end_of_buf - pos
        if left < BATCH_HEADER_SIZE:
            raise InvalidBatchError(
                ErrorCode.CORRUPT_MESSAGE,
                f"batch {index} at byte {pos}: truncated header, {left} bytes left "
                f"of the {BATCH_HEADER_SIZE} a header needs",
            )
        (
            _base_offset,
            batch_length,
            _epoch,
            magic,
            crc,
            attributes,
            last_offset_delta,
            base_ts,
            max_ts,
            producer_id,
            producer_epoch,
            base_sequence,
            count,
        ) = unpack(mv, pos)
        if magic != 2:
            raise InvalidBatchError(
                ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT,
                f"batch {index} at byte {pos}: magic {magic}, only record batch v2 "
                "(magic 2) is supported",
            )
        if batch_length < _MIN_BATCH_LENGTH:
            raise InvalidBatchError(
                ErrorCode.CORRUPT_MESSAGE,
                f"batch {index} at byte {pos}: batchLength {batch_length} is below the "
                f"minimum {_MIN_BATCH_LENGTH}",
            )
        end = pos + _LENGTH_FIELD_END + batch_length
        if end > end_of_buf:
            raise InvalidBatchError(
                ErrorCode.CORRUPT_MESSAGE,
                f"batch {index} at byte {pos}: truncated, batchLength {batch_length} "
                f"needs {end - pos} bytes but only {left} remain",
            )
        if verify_crc:
            actual = crc_of(mv[pos + _CRC_START : end])
            if actual != crc:
                raise InvalidBatchError(
                    ErrorCode.CORRUPT_MESSAGE,
                    f"batch {index} at byte {pos}: CRC-32C mismatch, header says "
                    f"{crc:#010x}, bytes give {actual:#010x}",
                )
        if count < 1:
            raise InvalidBatchError(
                ErrorCode.INVALID_RECORD,
                f"batch {index} at byte {pos}: recordsCount {count}, a batch needs at "
                "least one record",
            )
        if count != last_offset_delta + 1 and not (compacted and count <= last_offset_delta):
            raise InvalidBatchError(
                ErrorCode.INVALID_RECORD,
                f"batch {index} at byte {pos}: recordsCount {count} does not match "
                f"lastOffsetDelta {last_offset_delta} (expected count = lastOffsetDelta + 1"
                + (", or fewer in a compacted block)" if compacted else ")"),
            )
        codec = attributes & CODEC_MASK
        if codec > CODEC_ZSTD:
            raise InvalidBatchError(
                ErrorCode.INVALID_RECORD,
                f"batch {index} at byte {pos}: unknown compression codec {codec}",
            )
        if codec == CODEC_NONE and count * _MIN_RECORD_SIZE > end - pos - BATCH_HEADER_SIZE:
            raise InvalidBatchError(
                ErrorCode.INVALID_RECORD,
                f"batch {index} at byte {pos}: recordsCount {count} cannot fit in "
                f"{end - pos - BATCH_HEADER_SIZE} bytes of uncompressed records",
            )
        out.append(
            BatchInfo(
                position=pos,
                length=end - pos,
                record_count=count,
                last_offset_delta=last_offset_delta,
                base_timestamp=base_ts,
                max_timestamp=max_ts,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
                base_sequence=base_sequence,
                attributes=attributes,
            )
        )
        pos = end
        index += 1
    return out


def patch_base_offset(buf: bytearray | memoryview, position: int, base_offset: int) -> None:
    """Write ``base_offset`` into the batch starting at ``position`` of a writable buffer.

    The base offset is outside the CRC, so the batch stays valid without recomputing it.
    """
    _BASE_OFFSET.pack_into(buf, position, base_offset)


# ---------------------------------------------------------------------------------------
# blocks: offsets of the batches stored in one block (the gap rule)


class BlockBatch(msgspec.Struct, frozen=True):
    """A batch of a stored block that carries offsets, with its absolute first offset."""

    info: BatchInfo  # position/length within the block bytes, counts, timestamps...
    first_offset: int  # absolute offset of the batch's first offset

    @property
    def last_offset(self) -> int:
        return self.first_offset + self.info.last_offset_delta


def walk_block(
    block: bytes | bytearray | memoryview,
    base_offset: int,
    skipped: tuple[int, ...] = (),
    *,
    verify_crc: bool = False,
    end_offset: int | None = None,
) -> list[BlockBatch]:
    """The batches of a block that carry offsets, with absolute offsets, by the gap rule.

    ``base_offset`` is the block row's; ``skipped`` the ordinals of its duplicate batches
    (left out, they take no offsets). A batch's stored ``baseOffset`` field is the gap between
    the running position (the block's ``base_offset``, then the end of the previous batch) and
    its first offset; its offsets are ``[first, first + lastOffsetDelta]``. Batches may hold
    fewer records than ``lastOffsetDelta + 1`` (compacted). With ``end_offset`` (the row's),
    a batch reaching it or past it is refused. Raises ``InvalidBatchError`` for bad headers
    (``scan_batches``), a negative gap or offsets past ``end_offset``.
    """
    mv = memoryview(block)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    unpack = _BASE_OFFSET.unpack_from
    out: list[BlockBatch] = []
    running = base_offset
    for ordinal, info in enumerate(scan_batches(mv, verify_crc=verify_crc, compacted=True)):
        if skipped and ordinal in skipped:
            continue
        (gap,) = unpack(mv, info.position)
        if gap < 0:
            raise InvalidBatchError(
                ErrorCode.CORRUPT_MESSAGE,
                f"batch {ordinal} at byte {info.position} of a stored block: stored baseOffset "
                f"{gap} is negative, it must be the gap to the previous batch",
            )
        first = running + gap
        running = first + info.last_offset_delta + 1
        if end_offset is not None and running > end_offset:
            raise InvalidBatchError(
                ErrorCode.CORRUPT_MESSAGE,
                f"batch {ordinal} at byte {info.position} of a stored block ends at offset "
                f"{running - 1}, past the block's end offset {end_offset}",
            )
        out.append(BlockBatch(info, first))
    return out


def encode_block(
    batches: Sequence[tuple[bytes | bytearray | memoryview, int]], base_offset: int
) -> bytes:
    """Block bytes holding ``(batch bytes, absolute first offset)`` pairs in offset order.

    Each batch is copied with its stored ``baseOffset`` set to the gap rule's value (its
    first offset minus the end of the previous batch, or minus ``base_offset`` for the first);
    ``baseOffset`` is outside the CRC, so nothing else changes. ``walk_block(result,
    base_offset)`` gives the offsets back. Raises ``ValueError`` for no batches, or for a
    batch starting before the previous one ends (or before ``base_offset``).
    """
    if not batches:
        raise ValueError("encode_block needs at least one batch (empty blocks are dropped)")
    out = bytearray()
    running = base_offset
    for index, (batch, first) in enumerate(batches):
        gap = first - running
        if gap < 0:
            raise ValueError(
                f"encode_block: batch {index} starts at offset {first}, before offset {running} "
                "where the previous batch (or the block) ends; give batches in offset order"
            )
        at = len(out)
        out += batch
        if len(out) - at < BATCH_HEADER_SIZE:
            raise ValueError(f"encode_block: batch {index} is shorter than a batch header")
        _BASE_OFFSET.pack_into(out, at, gap)
        (last_offset_delta,) = _LAST_OFFSET_DELTA.unpack_from(out, at + _LAST_OFFSET_DELTA_AT)
        running = first + last_offset_delta + 1
    return bytes(out)


# ---------------------------------------------------------------------------------------
# validate: the ingest edge, as Kafka's LogValidator

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CHECK_ERRORS = (ErrorCode.NONE, ErrorCode.INVALID_RECORD, ErrorCode.INVALID_TIMESTAMP)


class BatchRules(msgspec.Struct, frozen=True):
    """What a partition's produced batches must keep (a topic's configs and the settings)."""

    max_message_bytes: int  # one batch, compressed size (max.message.bytes)
    max_records_bytes: int  # all batches of one partition in one request
    max_inflated_bytes: int  # one batch's records after decompression
    log_append_time: bool = False  # message.timestamp.type=LogAppendTime: no timestamp checks
    timestamp_before_ms: int = _INT64_MAX  # how far a record's timestamp may lag the broker
    timestamp_after_ms: int = _INT64_MAX  # how far ahead of the broker's clock it may be
    key_required: bool = False  # compacted topic


def validate_batches(
    buf: bytes | bytearray | memoryview, rules: BatchRules, now_ms: int
) -> list[BatchInfo]:
    """Check one partition's produced batches as Kafka's broker does; ``scan_batches``' infos.

    In order: the whole set against ``max_records_bytes`` (``RECORD_LIST_TOO_LARGE``); each
    batch's header, length and CRC (``scan_batches``); its size against ``max_message_bytes``
    (``MESSAGE_TOO_LARGE``); its attributes (no control batches, no transactional batch
    without a producer id, no LogAppendTime set by a client: ``INVALID_RECORD`` /
    ``INVALID_TIMESTAMP``) and producer fields (no producer id is -1; a producer id needs a
    non-negative epoch and sequence); then every record, in C (``streamhouse/_batchcheck.c``),
    after decompressing to at most ``max_inflated_bytes``: framing, lengths, offset deltas
    0..n-1, the record count, and for CreateTime topics each timestamp within
    [now - before, now + after] (``INVALID_TIMESTAMP``) and the header's maxTimestamp equal
    to the largest one. Raises ``InvalidBatchError`` for the first failure; a record-level
    one carries
    ``record_errors``.
    """
    size = len(buf)
    if size > rules.max_records_bytes:
        raise InvalidBatchError(
            ErrorCode.RECORD_LIST_TOO_LARGE,
            f"the partition's batches take {size} bytes, over the {rules.max_records_bytes}-"
            "byte limit for one partition in one request: send fewer batches per request",
        )
    infos = scan_batches(buf)
    mv = memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    for index, info in enumerate(infos):
        (stored_base,) = _BASE_OFFSET.unpack_from(mv, info.position)
        if stored_base != 0:
            # stored blocks use the field for the gap rule (module docstring)
            raise InvalidBatchError(
                ErrorCode.INVALID_RECORD,
                f"batch {index} at byte {info.position}: baseOffset {stored_base}, a produced "
                "batch must have baseOffset 0 (the log assigns offsets)",
            )
    if rules.log_append_time:
        ts_low, ts_high = _INT64_MIN, _INT64_MAX
    else:
        ts_low = max(_INT64_MIN, now_ms - rules.timestamp_before_ms)
        ts_high = min(_INT64_MAX, now_ms + rules.timestamp_after_ms)
    for index, info in enumerate(infos):
        where = f"batch {index} at byte {info.position}"
        if info.length > rules.max_message_bytes:
            raise InvalidBatchError(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"{where}: {info.length} bytes exceed max.message.bytes "
                f"{rules.max_message_bytes}: send smaller batches or raise the topic's limit",
            )
        attributes = info.attributes
        if attributes & CONTROL_MASK:
            raise InvalidBatchError(
                ErrorCode.INVALID_RECORD,
                f"{where}: clients are not allowed to write control batches",
            )
        if attributes & TRANSACTIONAL_MASK and info.producer_id < 0:
            raise InvalidBatchError(
                ErrorCode.INVALID_RECORD,
                f"{where}: a transactional batch needs a producer id (InitProducerId with "
                "the transactional.id first)",
            )
        if attributes & TIMESTAMP_TYPE_MASK:
            raise InvalidBatchError(
                ErrorCode.INVALID_TIMESTAMP,
                f"{where}: the producer set timestamp type LogAppendTime; only the broker "
                "may set it",
                ((0, "producer should not set timestamp type to LogAppendTime"),),
            )
        pid, epoch, seq = info.producer_id, info.producer_epoch, info.base_sequence
        # Kafka checks only a batch with a producer id; without one (-1) the epoch and
        # sequence are ignored (aiokafka writes baseSequence 0 there).
        if pid < -1 or (pid >= 0 and (epoch < 0 or seq < 0)):
            raise InvalidBatchError(
                ErrorCode.INVALID_RECORD,
                f"{where}: inconsistent producer fields (producerId {pid}, producerEpoch "
                f"{epoch}, baseSequence {seq}): a producer id needs a non-negative epoch and "
                "sequence, and no producer id is -1",
            )
        start = info.position + BATCH_HEADER_SIZE
        end = info.position + info.length
        codec = attributes & CODEC_MASK
        if codec == CODEC_NONE:
            records: bytes | memoryview = mv[start:end]
        else:
            try:
                records = inflate(codec, mv[start:end].tobytes(), rules.max_inflated_bytes)
            except InvalidBatchError as exc:
                raise InvalidBatchError(exc.code, f"{where}: {exc.message}") from None
        bad, error, message, max_ts, bad_timestamps = check_records(
            records,
            info.record_count,
            info.base_timestamp,
            ts_low,
            ts_high,
            rules.key_required,
        )
        if bad >= 0:
            if bad_timestamps:  # Kafka lists every record with a bad timestamp
                record_errors = tuple(
                    (i, f"record {i}: timestamp {ts} is out of range [{ts_low}, {ts_high}]")
                    if ts is not None
                    else (i, f"record {i}: timestamp overflows")
                    for i, ts in bad_timestamps
                )
            else:
                record_errors = ((bad, message),)
            raise InvalidBatchError(_CHECK_ERRORS[error], f"{where}: {message}", record_errors)
        if not rules.log_append_time and max_ts != info.max_timestamp:
            raise InvalidBatchError(
                ErrorCode.INVALID_RECORD,
                f"{where}: maxTimestamp {info.max_timestamp} in the header, but the largest "
                f"record timestamp is {max_ts}; the producer must write the real maximum",
            )
    return infos


# ---------------------------------------------------------------------------------------
# bounded decompression
#
# A compressed batch is inflated with a hard bound on the output, so a small batch that
# inflates to gigabytes (a "bomb") is refused having cost at most ``limit`` bytes of memory
# (plus one codec block). Each codec streams, or states its size before any work is done:
#   gzip    zlib with ``max_length``; concatenated members are followed, all within the bound
#   snappy  raw: the preamble varint (uncompressed length) is read and checked first;
#           xerial (snappy-java): ``\x82SNAPPY\x00``, two int32 versions, then
#           (int32 length, raw snappy block)*, each block's preamble checked against what is
#           left of the bound
#   lz4     frame format, decompressed with ``max_length``
#   zstd    the frame's content size (when stated) is checked, then the data is fed in small
#           slices (an RLE block is 4 bytes for at most 128 KiB out), window capped at
#           max(8 MiB, limit) and 128 MiB

MAX_INFLATED_BYTES = 64 * 1024 * 1024
"""Default bound on one batch's decompressed records (``decode_records``)."""

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER_SIZE = 16  # magic (8) + version int32 + compatible version int32
_ZSTD_MAX_BLOCK_RATIO = 32 * 1024  # output bytes per input byte an RLE block can give


class _Inflated(Exception):
    """Raised inside the codecs when the output passes the bound."""


class _Truncated(Exception):
    """Raised inside the codecs when the compressed data ends early."""


def _snappy_preamble(data: bytes | memoryview, pos: int, end: int) -> int:
    """The uncompressed length a raw snappy block states (unsigned LEB128, <= 32 bits)."""
    value = 0
    for i in range(5):
        if pos + i >= end:
            raise _Truncated("snappy length preamble runs past the data")
        b = data[pos + i]
        value |= (b & 0x7F) << (7 * i)
        if b < 0x80:
            return value
    raise ValueError("snappy length preamble is longer than 5 bytes")


def _inflate_snappy(data: bytes, limit: int) -> bytes:
    import cramjam  # only needed for snappy/zstd batches, which are rare on our produce path

    if data[:8] != _XERIAL_MAGIC:
        if _snappy_preamble(data, 0, len(data)) > limit:
            raise _Inflated()
        return bytes(cramjam.snappy.decompress_raw(data))
    out = []
    total = 0
    pos = _XERIAL_HEADER_SIZE
    end = len(data)
    if end < pos:
        raise _Truncated("xerial header is cut short")
    while pos < end:
        if pos + 4 > end:
            raise _Truncated(f"truncated xerial block length at byte {pos}")
        (size,) = struct.unpack_from(">i", data, pos)
        pos += 4
        if size < 0 or pos + size > end:
            raise _Truncated(f"xerial block of {size} bytes at byte {pos} overruns the data")
        total += _snappy_preamble(data, pos, pos + size)
        if total > limit:
            raise _Inflated()
        out.append(bytes(cramjam.snappy.decompress_raw(data[pos : pos + size])))
        pos += size
    return b"".join(out)


def _inflate_gzip(data: bytes, limit: int) -> bytes:
    out = []
    total = 0
    rest = data
    while True:
        d = zlib.decompressobj(wbits=31)  # gzip container only
        chunk = d.decompress(rest, limit + 1 - total)
        total += len(chunk)
        out.append(chunk)
        if total > limit:
            raise _Inflated()
        if not d.eof:
            # the output stopped below the bound, so the input ran out
            raise _Truncated("gzip data ends before its end of stream")
        rest = d.unused_data
        if not rest:
            return b"".join(out)


def _inflate_lz4(data: bytes, limit: int) -> bytes:
    d = lz4.frame.LZ4FrameDecompressor()
    out = d.decompress(data, max_length=limit + 1)
    if len(out) > limit:
        raise _Inflated()
    if not d.eof:
        raise _Truncated("LZ4 frame ends before its end mark")
    if d.unused_data:
        raise ValueError(f"{len(d.unused_data)} bytes follow the LZ4 frame")
    return out


def _inflate_zstd(data: bytes, limit: int) -> bytes:
    import zstandard

    size = zstandard.frame_content_size(data)
    if size > limit:  # -1: not stated (the Java client streams)
        raise _Inflated()
    # zstd's own cap is 128 MiB; streamed frames (no content size) of producers at usual
    # levels declare 2-8 MiB windows, so that much is always allowed
    window = 1 << max(23, min(27, (limit - 1).bit_length()))
    d = zstandard.ZstdDecompressor(max_window_size=window).decompressobj()
    out = []
    total = 0
    pos = 0
    end = len(data)
    mv = memoryview(data)
    while pos < end and not d.eof:
        step = max(256, (limit - total) // _ZSTD_MAX_BLOCK_RATIO)
        chunk = d.decompress(mv[pos : pos + step])
        pos += step
        total += len(chunk)
        if total > limit:
            raise _Inflated()
        out.append(chunk)
    if not d.eof:
        raise _Truncated("zstd frame ends before its last block")
    if pos < end or d.unused_data:
        raise ValueError("bytes follow the zstd frame")
    return b"".join(out)


_INFLATERS = {
    CODEC_GZIP: _inflate_gzip,
    CODEC_SNAPPY: _inflate_snappy,
    CODEC_LZ4: _inflate_lz4,
    CODEC_ZSTD: _inflate_zstd,
}
_CODEC_NAMES = {CODEC_GZIP: "gzip", CODEC_SNAPPY: "snappy", CODEC_LZ4: "lz4", CODEC_ZSTD: "zstd"}


def inflate(codec: int, data: bytes, limit: int) -> bytes:
    """The records of a compressed batch, at most ``limit`` bytes of them.

    Raises ``InvalidBatchError``: ``MESSAGE_TOO_LARGE`` when the records inflate past
    ``limit`` (decompression stops there), ``CORRUPT_MESSAGE`` when the data is truncated or
    not valid for its codec, ``INVALID_RECORD`` for an unknown codec.
    """
    inflater = _INFLATERS.get(codec)
    if inflater is None:
        raise InvalidBatchError(ErrorCode.INVALID_RECORD, f"unknown compression codec {codec}")
    name = _CODEC_NAMES[codec]
    try:
        return inflater(data, limit)
    except _Inflated:
        raise InvalidBatchError(
            ErrorCode.MESSAGE_TOO_LARGE,
            f"the {name} records inflate past {limit} bytes, the limit for one batch's "
            "uncompressed records: send smaller batches",
        ) from None
    except _Truncated as exc:
        raise InvalidBatchError(
            ErrorCode.CORRUPT_MESSAGE, f"{name} records are truncated: {exc}"
        ) from None
    except Exception as exc:  # every codec library has its own error types
        raise InvalidBatchError(
            ErrorCode.CORRUPT_MESSAGE, f"cannot decompress the {name} records: {exc}"
        ) from None


def deflate(codec: int, data: bytes, *, like: bytes | memoryview = b"") -> bytes:
    """``data`` compressed with ``codec`` (the inverse of ``inflate``), for batches rebuilt by
    key compaction with their original codec. For snappy, ``like`` (the original compressed
    records) picks the framing: xerial (the Java client's) when it has it, raw otherwise."""
    if codec == CODEC_GZIP:
        c = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip container
        return c.compress(data) + c.flush()
    if codec == CODEC_LZ4:
        return lz4.frame.compress(data)
    if codec == CODEC_ZSTD:
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    if codec == CODEC_SNAPPY:
        import cramjam

        if bytes(like[:8]) != _XERIAL_MAGIC:
            return bytes(cramjam.snappy.compress_raw(data))
        out = [bytes(like[:_XERIAL_HEADER_SIZE])]
        for at in range(0, len(data), 32 * 1024):
            block = bytes(cramjam.snappy.compress_raw(data[at : at + 32 * 1024]))
            out.append(struct.pack(">i", len(block)) + block)
        return b"".join(out)
    raise ValueError(f"deflate: unknown compression codec {codec}")


def rebuild_batch(
    batch: bytes | memoryview,
    records: bytes,
    record_count: int,
    *,
    max_timestamp: int,
    base_timestamp: int,
    attributes: int,
) -> bytes:
    """``batch`` with other (uncompressed) ``records``: same baseOffset, leader epoch,
    lastOffsetDelta, producer id/epoch and base sequence; the given count, timestamps and
    attributes; the records compressed with the attributes' codec; the CRC recomputed."""
    (base, _len, epoch, _magic, _crc, _attr, lod, _bts, _mts, pid, pepoch, bseq, _count) = (
        _HEADER.unpack_from(batch, 0)
    )
    codec = attributes & CODEC_MASK
    if codec != CODEC_NONE:
        records = deflate(
            codec, records, like=batch[BATCH_HEADER_SIZE : BATCH_HEADER_SIZE + _XERIAL_HEADER_SIZE]
        )
    body = (
        _CRC_HEADER.pack(
            attributes, lod, base_timestamp, max_timestamp, pid, pepoch, bseq, record_count
        )
        + records
    )
    return _PRE_CRC.pack(base, len(body) + 9, epoch, 2, crc32c.crc32c(body)) + body


# ---------------------------------------------------------------------------------------
# decode


def _read_varint_slow(data: bytes, pos: int, max_bytes: int) -> tuple[int, int]:
    """Zigzag LEB128 starting at ``pos``: (value, position after it)."""
    result = 0
    shift = 0
    for i in range(max_bytes):
        b = data[pos + i]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos + i + 1
        shift += 7
    raise ValueError(f"varint at byte {pos} is longer than {max_bytes} bytes")


def decode_records(
    batch: bytes | bytearray | memoryview,
    *,
    verify_crc: bool = True,
    max_inflated: int = MAX_INFLATED_BYTES,
) -> list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]]:
    """Decode every record of exactly one batch (``batch`` is the whole batch, no more).

    Returns ``(offset_delta, timestamp_ms, key, value, headers)`` per record in order;
    ``timestamp_ms`` is ``base_timestamp + timestamp_delta``, or ``max_timestamp`` for a
    LogAppendTime batch. Null keys, values and header values are ``None``; empty ones are
    ``b""``. Compressed batches (gzip, snappy, lz4, zstd) are decompressed, to at most
    ``max_inflated`` bytes (``MESSAGE_TOO_LARGE`` beyond: a stored bomb costs no more). The CRC is
    checked unless ``verify_crc`` is false. Raises ``InvalidBatchError`` for a bad header,
    a CRC mismatch, undecompressable data or malformed records (a record overrunning its
    length or the batch, bad lengths, record count mismatch, non-UTF-8 header key).
    """
    mv = memoryview(batch)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    if len(mv) < BATCH_HEADER_SIZE:
        raise InvalidBatchError(
            ErrorCode.CORRUPT_MESSAGE,
            f"batch of {len(mv)} bytes is shorter than the {BATCH_HEADER_SIZE}-byte header",
        )
    (
        _base_offset,
        batch_length,
        _epoch,
        magic,
        crc,
        attributes,
        _last_offset_delta,
        base_ts,
        max_ts,
        _pid,
        _pepoch,
        _bseq,
        count,
    ) = _HEADER.unpack_from(mv, 0)
    if magic != 2:
        raise InvalidBatchError(
            ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT,
            f"magic {magic}, only record batch v2 (magic 2) is supported",
        )
    if batch_length + _LENGTH_FIELD_END != len(mv):
        raise InvalidBatchError(
            ErrorCode.CORRUPT_MESSAGE,
            f"batchLength {batch_length} says {batch_length + _LENGTH_FIELD_END} bytes, "
            f"got {len(mv)}",
        )
    if verify_crc:
        actual = crc32c.crc32c(mv[_CRC_START:])
        if actual != crc:
            raise InvalidBatchError(
                ErrorCode.CORRUPT_MESSAGE,
                f"CRC-32C mismatch, header says {crc:#010x}, bytes give {actual:#010x}",
            )
    if count < 0:
        raise InvalidBatchError(ErrorCode.INVALID_RECORD, f"negative recordsCount {count}")
    codec = attributes & CODEC_MASK
    if codec == CODEC_NONE:
        data = bytes(mv[BATCH_HEADER_SIZE:])
    else:
        data = inflate(codec, bytes(mv[BATCH_HEADER_SIZE:]), max_inflated)
    log_append = bool(attributes & TIMESTAMP_TYPE_MASK)
    out: list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = []
    try:
        _decode_record_data(data, count, base_ts, max_ts if log_append else None, out)
    except InvalidBatchError:
        raise
    except IndexError as exc:  # a varint read ran off the end of the data
        raise InvalidBatchError(
            ErrorCode.INVALID_RECORD,
            f"record {len(out)}: truncated, a field runs past the batch's end",
        ) from exc
    except ValueError as exc:  # an overlong varint
        raise InvalidBatchError(ErrorCode.INVALID_RECORD, f"record {len(out)}: {exc}") from exc
    return out


def _decode_record_data(
    data: bytes,
    count: int,
    base_ts: int,
    fixed_ts: int | None,
    out: list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
) -> None:
    """Append to ``out`` the ``count`` records that fill ``data`` exactly; see decode_records.

    Appending to the caller's list lets it name the failing record on an IndexError.
    """
    append = out.append
    slow = _read_varint_slow
    pos = 0
    end = len(data)
    for i in range(count):
        if pos >= end:
            raise InvalidBatchError(
                ErrorCode.INVALID_RECORD, f"record {i}: batch ends after {i} of {count} records"
            )
        # Varints: one- and two-byte forms inline (function calls dominate otherwise),
        # zigzag decoded with (v >> 1) ^ -(v & 1).
        b = data[pos]
        if b < 0x80:
            length = (b >> 1) ^ -(b & 1)
            pos += 1
        elif data[pos + 1] < 0x80:
            b = (b & 0x7F) | (data[pos + 1] << 7)
            length = (b >> 1) ^ -(b & 1)
            pos += 2
        else:
            length, pos = slow(data, pos, 5)
        rec_end = pos + length
        if length < _MIN_RECORD_SIZE - 1 or rec_end > end:
            raise InvalidBatchError(
                ErrorCode.INVALID_RECORD,
                f"record {i}: length {length} at byte {pos} is invalid for "
                f"{end - pos} remaining bytes",
            )
        pos += 1  # record attributes, unused
        b = data[pos]
        if b < 0x80:
            td = (b >> 1) ^ -(b & 1)
            pos += 1
        elif data[pos + 1] < 0x80:
            b = (b & 0x7F) | (data[pos + 1] << 7)
            td = (b >> 1) ^ -(b & 1)
            pos += 2
        else:
            td, pos = slow(data, pos, 10)
        b = data[pos]
        if b < 0x80:
            od = (b >> 1) ^ -(b & 1)
            pos += 1
        elif data[pos + 1] < 0x80:
            b = (b & 0x7F) | (data[pos + 1] << 7)
            od = (b >> 1) ^ -(b & 1)
            pos += 2
        else:
            od, pos = slow(data, pos, 5)
        b = data[pos]
        if b < 0x80:
            kl = (b >> 1) ^ -(b & 1)
            pos += 1
        elif data[pos + 1] < 0x80:
            b = (b & 0x7F) | (data[pos + 1] << 7)
            kl = (b >> 1) ^ -(b & 1)
            pos += 2
        else:
            kl, pos = slow(data, pos, 5)
        if kl < 0:
            if kl != -1:
                raise InvalidBatchError(ErrorCode.INVALID_RECORD, f"record {i}: key length {kl}")
            key = None
        else:
            key = data[pos : pos + kl]
            pos += kl
            if pos > rec_end:
                raise InvalidBatchError(
                    ErrorCode.INVALID_RECORD, f"record {i}: key of {kl} bytes runs past the record"
                )
        b = data[pos]
        if b < 0x80:
            vl = (b >> 1) ^ -(b & 1)
            pos += 1
        elif data[pos + 1] < 0x80:
            b = (b & 0x7F) | (data[pos + 1] << 7)
            vl = (b >> 1) ^ -(b & 1)
            pos += 2
        else:
            vl, pos = slow(data, pos, 5)
        if vl < 0:
            if vl != -1:
                raise InvalidBatchError(ErrorCode.INVALID_RECORD, f"record {i}: value length {vl}")
            value = None
        else:
            value = data[pos : pos + vl]
            pos += vl
            if pos > rec_end:
                raise InvalidBatchError(
                    ErrorCode.INVALID_RECORD,
                    f"record {i}: value of {vl} bytes runs past the record",
                )
        b = data[pos]
        if b < 0x80:
            hc = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            hc, pos = slow(data, pos, 5)
        headers: list[tuple[str, bytes | None]] = []
        if hc:
            if hc < 0 or hc > rec_end - pos:
                raise InvalidBatchError(ErrorCode.INVALID_RECORD, f"record {i}: header count {hc}")
            for _ in range(hc):
                hkl, pos = slow(data, pos, 5)
                if hkl < 0 or pos + hkl > rec_end:
                    raise InvalidBatchError(
                        ErrorCode.INVALID_RECORD, f"record {i}: header key length {hkl}"
                    )
                try:
                    hkey = data[pos : pos + hkl].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InvalidBatchError(
                        ErrorCode.INVALID_RECORD, f"record {i}: header key is not UTF-8"
                    ) from exc
                pos += hkl
                hvl, pos = slow(data, pos, 5)
                if hvl < 0:
                    if hvl != -1:
                        raise InvalidBatchError(
                            ErrorCode.INVALID_RECORD, f"record {i}: header value length {hvl}"
                        )
                    headers.append((hkey, None))
                else:
                    headers.append((hkey, data[pos : pos + hvl]))
                    pos += hvl
        if pos != rec_end:
            raise InvalidBatchError(
                ErrorCode.INVALID_RECORD,
                f"record {i}: fields take {pos - rec_end + length} bytes but its length "
                f"says {length}",
            )
        append((od, base_ts + td if fixed_ts is None else fixed_ts, key, value, headers))
    if pos != end:
        raise InvalidBatchError(
            ErrorCode.INVALID_RECORD,
            f"{end - pos} bytes left after the {count} records of the batch",
        )


# ---------------------------------------------------------------------------------------
# partitioning


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), seed 0x9747b28c.

    Returns the same signed 32-bit value as the Java client.
    """
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    n4 = length >> 2
    if n4:
        for k in struct.unpack_from(f"<{n4}I", data):
            k = (k * m) & 0xFFFFFFFF
            k ^= k >> 24
            k = (k * m) & 0xFFFFFFFF
            h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length & 3
    if rest:
        tail = length & ~3
        if rest == 3:
            h ^= data[tail + 2] << 16
        if rest >= 2:
            h ^= data[tail + 1] << 8
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - 0x100000000 if h & 0x80000000 else h


def default_partition(key: bytes, partition_count: int) -> int:
    """The partition Kafka's default partitioner picks for a non-null key."""
    if partition_count <= 0:
        raise ValueError(f"partition_count must be positive, got {partition_count}")
    return (murmur2(key) & 0x7FFFFFFF) % partition_count
