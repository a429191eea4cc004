"""The segment object: one flush of many partitions' record batches, as one immutable object.

A segment holds blocks; a block is one partition's consecutive Kafka record batches,
concatenated, LZ4-compressed (``lz4.block``, no size prefix) unless compression does not
pay, in which case the bytes are stored raw. An index at the end says where each block is,
and a fixed-size footer says where the index is, so a reader can fetch the footer, then
the index, then only the blocks it needs, with three range reads.

Every integer is little-endian and unsigned unless marked signed.

Object layout (``SEGMENT_VERSION`` 1)
-------------------------------------

=============  ==========================================================================
part           content
=============  ==========================================================================
header         8 bytes, see below
blocks         the blocks, back to back, in the order they were added
index          one 48-byte entry per block, in block order
footer         ``FOOTER_SIZE`` (28) bytes, see below; the object's last bytes
=============  ==========================================================================

Header (8 bytes)
~~~~~~~~~~~~~~~~

======  ====  ==========  ==============================================================
offset  size  field       meaning
======  ====  ==========  ==============================================================
0       4     magic       ``b"SHSG"``
4       2     version     ``SEGMENT_VERSION``; readers refuse versions they do not know
6       2     reserved    0
======  ====  ==========  ==============================================================

Block (``BLOCK_HEADER_SIZE`` = 20 bytes of header, then the stored bytes)
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~

======  ====  =============  ============================================================
offset  size  field          meaning
======  ====  =============  ============================================================
0       1     codec          0 raw (stored as is), 1 ``lz4.block`` without size prefix
1       3     reserved       0
4       4     raw_length     bytes after decompression: the concatenated batches
8       4     stored_length  bytes that follow this header
12      8     checksum       xxh3-64 of the stored bytes
20      ...   stored bytes
======  ====  =============  ============================================================

Index entry (48 bytes)
~~~~~~~~~~~~~~~~~~~~~~

======  ====  =============  ============================================================
offset  size  field          meaning
======  ====  =============  ============================================================
0       8     topic_id       u64
8       4     partition      u32
12      8     offset         first byte of the block (its header) in the object
20      4     length         block header + stored bytes
24      4     batch_count    record batches in the block
28      4     record_count   records in those batches
32      8     min_timestamp  signed, ms
40      8     max_timestamp  signed, ms
======  ====  =============  ============================================================

Footer (28 bytes)
~~~~~~~~~~~~~~~~~

======  ====  =============  ============================================================
offset  size  field          meaning
======  ====  =============  ============================================================
0       8     index_offset   first byte of the index (= end of the last block)
8       4     index_length   48 x number of blocks
12      8     index_hash     xxh3-64 of the index bytes
20      2     version        same as the header's, so range readers can check it
22      2     reserved       0
24      4     magic          ``b"SHSG"``
======  ====  =============  ============================================================

A valid object has the blocks contiguous from byte 8 to ``index_offset`` in index
order, and ``index_offset + index_length + FOOTER_SIZE`` equal to its size.

Choosing the codec of a block (writer side only; readers just read the codec byte)
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~

A block is stored LZ4-compressed only if that makes it smaller than ``compression_threshold``
(0.9) of its raw bytes. Compressing a whole block to find out costs about 1 CPU-second per GB
on values that do not compress (random bytes, already-compressed or encrypted payloads), more
than everything else the segmenter does, so a block larger than ``SAMPLE_MIN_BLOCK`` (256 KiB)
is first judged by a sample (``worth_compressing``): ``SAMPLE_CHUNKS`` (4) slices of
``SAMPLE_CHUNK`` (32 KiB) spread evenly over it (the first at its start, the last at its end)
are compressed together; if the sample does not shrink below the threshold, the block is
stored raw without compressing it. Otherwise the whole block is compressed and the threshold
applied to the real result, so a sample can only ever cost a compression, never store a
block compressed that does not pay. The sample sees redundancy within 32 KiB only: a block
whose repeats are farther apart than that (e.g. records of over 32 KiB repeating whole) may be
stored raw although it would compress. Smaller blocks are always compressed whole.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import lz4.block
import msgspec
import xxhash

__all__ = [
    "BLOCK_HEADER_SIZE",
    "FOOTER_SIZE",
    "HEADER_SIZE",
    "INDEX_ENTRY_SIZE",
    "SAMPLE_CHUNK",
    "SAMPLE_CHUNKS",
    "SAMPLE_MIN_BLOCK",
    "SEGMENT_VERSION",
    "BlockEntry",
    "SegmentCorruptError",
    "SegmentWriter",
    "decode_block",
    "parse_footer",
    "parse_index",
    "read_index",
    "worth_compressing",
]

SEGMENT_VERSION = 1
MAGIC = b"SHSG"

_HEADER = struct.Struct("<4sHH")
_BLOCK_HEADER = struct.Struct("<B3xIIQ")
_INDEX_ENTRY = struct.Struct("<QIQIIIqq")
_FOOTER = struct.Struct("<QIQHH4s")

HEADER_SIZE = _HEADER.size
BLOCK_HEADER_SIZE = _BLOCK_HEADER.size
INDEX_ENTRY_SIZE = _INDEX_ENTRY.size
FOOTER_SIZE = _FOOTER.size
assert (HEADER_SIZE, BLOCK_HEADER_SIZE, INDEX_ENTRY_SIZE, FOOTER_SIZE) == (8, 20, 48, 28)

CODEC_RAW = 0
CODEC_LZ4 = 1

_U32_MAX = 2**32 - 1
_LZ4_MAX_RATIO = 256
_U64_MAX = 2**64 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_HEADER_BYTES = _HEADER.pack(MAGIC, SEGMENT_VERSION, 0)

_hash = xxhash.xxh3_64_intdigest

#: The compression decision's sample (see "Choosing the codec of a block" above).
SAMPLE_CHUNK = 32 * 1024
SAMPLE_CHUNKS = 4
SAMPLE_MIN_BLOCK = 256 * 1024

Buffer = bytes | bytearray | memoryview


def _sample(parts: list[Buffer], total: int) -> bytes:
    """``SAMPLE_CHUNKS`` slices of ``SAMPLE_CHUNK`` bytes evenly spread over the concatenation
    of ``parts`` (``total`` bytes, at least ``SAMPLE_CHUNKS * SAMPLE_CHUNK``), joined."""
    span = total - SAMPLE_CHUNK
    starts = [i * span // (SAMPLE_CHUNKS - 1) for i in range(SAMPLE_CHUNKS)]
    wanted = [(start, start + SAMPLE_CHUNK) for start in starts]
    out: list[Buffer] = []
    base = 0
    it = iter(wanted)
    lo, hi = next(it)
    for part in parts:
        end = base + len(part)
        while lo < end:
            take_hi = min(hi, end)
            out.append(memoryview(part)[lo - base : take_hi - base])
            if take_hi < hi:
                lo = take_hi  # the slice continues in the next part
                break
            nxt = next(it, None)
            if nxt is None:
                return b"".join(out)
            lo, hi = nxt
        base = end
    return b"".join(out)


def _frozen(buffer: Buffer) -> bytes | memoryview:
    """``buffer`` itself when no one can change it (bytes, or a read-only flat byte view of
    them), else a copy."""
    if type(buffer) is bytes:
        return buffer
    if (
        type(buffer) is memoryview
        and buffer.readonly
        and isinstance(buffer.obj, bytes)
        and buffer.itemsize == 1
        and buffer.ndim == 1
        and buffer.c_contiguous
    ):
        return buffer
    return bytes(buffer)


def worth_compressing(parts: list[Buffer], total: int, threshold: float) -> bool:
    """Whether a block made of ``parts`` (``total`` bytes) should be compressed in full: True
    for a block of at most ``SAMPLE_MIN_BLOCK`` bytes, else True only if the sample of it
    compresses below ``threshold`` of its size (see the module docstring)."""
    if total <= SAMPLE_MIN_BLOCK:
        return True
    sample = _sample(parts, total)
    return len(lz4.block.compress(sample, store_size=False)) < len(sample) * threshold


class SegmentCorruptError(ValueError):
    """The object is not a valid segment; the message says what failed and where."""


class BlockEntry(msgspec.Struct, frozen=True):
    """One index entry: where a partition's block lies in the object and what it holds."""

    topic_id: int
    partition: int
    offset: int  # first byte of the block (its header) in the object
    length: int  # block header + stored bytes
    batch_count: int
    record_count: int
    min_timestamp: int
    max_timestamp: int


class SegmentWriter:
    """Builds one segment object in memory, block by block.

    Blocks are compressed as they are added, so ``size`` tracks the final object size and
    the caller can flush once it passes its target. A raw block is kept as the caller's
    buffers (bytes, or read-only views of bytes; anything else is copied when added) until
    ``finish`` joins the object: one copy of the data in all.
    """

    def __init__(self, compression_threshold: float = 0.9) -> None:
        """``compression_threshold``: a block is stored LZ4-compressed only if the
        compressed form is smaller than this fraction of the raw bytes; otherwise raw
        (decoding raw bytes is free, so a small gain is not worth the CPU). Large blocks are
        judged by a sample first (module docstring, "Choosing the codec of a block").
        """
        if not 0.0 <= compression_threshold <= 1.0:
            raise ValueError(
                f"compression_threshold must be within [0, 1], got {compression_threshold}"
            )
        self._threshold = compression_threshold
        self._parts: list[Buffer] = [_HEADER_BYTES]
        self._entries: list[BlockEntry] = []
        self._offset = HEADER_SIZE
        self._finished = False

    @property
    def size(self) -> int:
        """Bytes the object would have if finished now (header, blocks, index, footer)."""
        return self._offset + len(self._entries) * INDEX_ENTRY_SIZE + FOOTER_SIZE

    @property
    def block_count(self) -> int:
        """Blocks added so far."""
        return len(self._entries)

    def add_block(
        self,
        topic_id: int,
        partition: int,
        batches: Sequence[Buffer],
        batch_count: int,
        record_count: int,
        min_timestamp: int,
        max_timestamp: int,
    ) -> None:
        """Append one block made of ``batches`` concatenated in order.

        The counts and timestamps are stored in the index as given (the caller read them
        from the batch headers). Raises ``ValueError`` for an empty block, out-of-range
        fields or a block over 4 GiB, and ``RuntimeError`` after ``finish``.
        """
        if self._finished:
            raise RuntimeError("SegmentWriter.add_block after finish")
        if not 0 <= topic_id <= _U64_MAX:
            raise ValueError(f"topic_id {topic_id} is not a u64")
        if not 0 <= partition <= _U32_MAX:
            raise ValueError(f"partition {partition} is not a u32")
        if not 0 <= batch_count <= _U32_MAX or not 0 <= record_count <= _U32_MAX:
            raise ValueError(f"batch_count {batch_count} / record_count {record_count} not u32")
        if not _I64_MIN <= min_timestamp <= max_timestamp <= _I64_MAX:
            raise ValueError(
                f"timestamps [{min_timestamp}, {max_timestamp}] are not an int64 range"
            )
        # The stored parts are kept by reference until finish joins the object once (one
        # copy of the data in all). Only immutable buffers are kept as they are; anything a
        # caller could still change (a bytearray, a writable view) is copied now.
        parts = [_frozen(b) for b in batches]
        raw_len = sum(len(b) for b in parts)
        if raw_len == 0:
            raise ValueError("a block needs at least one byte of record batches")
        if raw_len + BLOCK_HEADER_SIZE > _U32_MAX:
            raise ValueError(f"block of {raw_len} bytes does not fit a u32 length")
        codec = CODEC_RAW
        if worth_compressing(parts, raw_len, self._threshold):
            raw = parts[0] if len(parts) == 1 else b"".join(parts)
            compressed = lz4.block.compress(raw, store_size=False)
            if len(compressed) < raw_len * self._threshold:
                codec, parts = CODEC_LZ4, [compressed]
        if len(parts) == 1:
            checksum = _hash(parts[0])
        else:
            hasher = xxhash.xxh3_64()
            for part in parts:
                hasher.update(part)
            checksum = hasher.intdigest()
        stored_len = raw_len if codec == CODEC_RAW else len(parts[0])
        self._parts.append(_BLOCK_HEADER.pack(codec, raw_len, stored_len, checksum))
        self._parts.extend(parts)
        length = BLOCK_HEADER_SIZE + stored_len
        self._entries.append(
            BlockEntry(
                topic_id=topic_id,
                partition=partition,
                offset=self._offset,
                length=length,
                batch_count=batch_count,
                record_count=record_count,
                min_timestamp=min_timestamp,
                max_timestamp=max_timestamp,
            )
        )
        self._offset += length

    def finish(self) -> tuple[bytes, list[BlockEntry]]:
        """The whole object and its index entries (in block order). Call once."""
        parts, entries = self.finish_parts()
        return b"".join(parts), entries

    def finish_parts(self) -> tuple[list[Buffer], list[BlockEntry]]:
        """Like `finish`, but the object as the buffers that make it when concatenated in
        order (header, block headers and stored bytes, index, footer): for a writer that
        copies them where they go (a ring frame) without joining them first. Call once
        (either this or `finish`)."""
        if self._finished:
            raise RuntimeError("SegmentWriter.finish called twice")
        self._finished = True
        pack = _INDEX_ENTRY.pack
        index = b"".join(
            [
                pack(
                    e.topic_id,
                    e.partition,
                    e.offset,
                    e.length,
                    e.batch_count,
                    e.record_count,
                    e.min_timestamp,
                    e.max_timestamp,
                )
                for e in self._entries
            ]
        )
        footer = _FOOTER.pack(self._offset, len(index), _hash(index), SEGMENT_VERSION, 0, MAGIC)
        parts = self._parts
        parts.append(index)
        parts.append(footer)
        self._parts = []
        return parts, self._entries


def _check_version(version: int, where: str) -> None:
    if version != SEGMENT_VERSION:
        raise SegmentCorruptError(
            f"segment {where} has version {version}; this reader knows only version "
            f"{SEGMENT_VERSION}"
        )


def parse_footer(tail: bytes | memoryview, *, object_size: int | None = None) -> tuple[int, int]:
    """``(index_offset, index_length)`` from the object's last ``FOOTER_SIZE`` bytes.

    ``tail`` may be longer; only its last ``FOOTER_SIZE`` bytes are read. Checks magic,
    version, reserved bits and plausible ranges (within ``object_size`` when given, the
    index ending right before the footer). Does not check the index hash: ``parse_index``
    does, given the index bytes and the same tail.
    """
    if len(tail) < FOOTER_SIZE:
        raise SegmentCorruptError(
            f"segment truncated: {len(tail)} bytes, a footer needs {FOOTER_SIZE}"
        )
    index_offset, index_length, _index_hash, version, reserved, magic = _FOOTER.unpack_from(
        tail, len(tail) - FOOTER_SIZE
    )
    if magic != MAGIC:
        raise SegmentCorruptError(
            f"bad footer magic {bytes(magic)!r}, expected {MAGIC!r} (not a segment, or truncated)"
        )
    _check_version(version, "footer")
    if reserved != 0:
        raise SegmentCorruptError(f"footer reserved field is {reserved:#06x}, expected 0")
    if index_length % INDEX_ENTRY_SIZE:
        raise SegmentCorruptError(
            f"footer index_length {index_length} is not a multiple of {INDEX_ENTRY_SIZE}"
        )
    if index_offset < HEADER_SIZE:
        raise SegmentCorruptError(f"footer index_offset {index_offset} lies inside the header")
    if object_size is not None and index_offset + index_length + FOOTER_SIZE != object_size:
        raise SegmentCorruptError(
            f"footer places the index at [{index_offset}, {index_offset + index_length}) "
            f"but the object has {object_size} bytes (expected the index to end "
            f"{FOOTER_SIZE} bytes before the end): truncated or corrupt"
        )
    return index_offset, index_length


def parse_index(index: bytes | memoryview, tail: bytes | memoryview) -> list[BlockEntry]:
    """Decode the index bytes fetched at the range ``parse_footer(tail)`` gave.

    Verifies the index's xxh3-64 against the footer and that the blocks are contiguous
    from the end of the header to ``index_offset``, in index order, each at least a block
    header long. Raises ``SegmentCorruptError`` otherwise.
    """
    index_offset, index_length = parse_footer(tail)
    expected = _FOOTER.unpack_from(tail, len(tail) - FOOTER_SIZE)[2]
    if len(index) != index_length:
        raise SegmentCorruptError(
            f"index is {len(index)} bytes, footer says {index_length}: truncated read"
        )
    actual = _hash(index)
    if actual != expected:
        raise SegmentCorruptError(
            f"index checksum mismatch: footer says xxh3 {expected:#018x}, index bytes give "
            f"{actual:#018x}"
        )
    entries = [BlockEntry(*fields) for fields in _INDEX_ENTRY.iter_unpack(index)]
    pos = HEADER_SIZE
    for i, e in enumerate(entries):
        if e.offset != pos:
            raise SegmentCorruptError(
                f"index entry {i} (topic {e.topic_id} partition {e.partition}) starts at "
                f"byte {e.offset}, expected {pos} (blocks are contiguous)"
            )
        if e.length < BLOCK_HEADER_SIZE:
            raise SegmentCorruptError(
                f"index entry {i} (topic {e.topic_id} partition {e.partition}) has length "
                f"{e.length}, shorter than a block header"
            )
        pos += e.length
    if pos != index_offset:
        raise SegmentCorruptError(
            f"blocks end at byte {pos} but the index starts at {index_offset}"
        )
    return entries


def read_index(obj: bytes | memoryview) -> list[BlockEntry]:
    """The index of a whole segment object, after checking header, footer, index hash and
    that the blocks exactly fill the space between header and index.

    Does not verify block checksums (``decode_block`` does, per block read). Raises
    ``SegmentCorruptError`` with what failed.
    """
    size = len(obj)
    if size < HEADER_SIZE + FOOTER_SIZE:
        raise SegmentCorruptError(
            f"segment truncated: {size} bytes, the smallest segment has {HEADER_SIZE + FOOTER_SIZE}"
        )
    magic, version, reserved = _HEADER.unpack_from(obj, 0)
    if magic != MAGIC:
        raise SegmentCorruptError(f"bad header magic {bytes(magic)!r}, expected {MAGIC!r}")
    _check_version(version, "header")
    if reserved != 0:
        raise SegmentCorruptError(f"header reserved field is {reserved:#06x}, expected 0")
    mv = memoryview(obj)
    tail = mv[size - FOOTER_SIZE :]
    index_offset, index_length = parse_footer(tail, object_size=size)
    return parse_index(mv[index_offset : index_offset + index_length], tail)


def decode_block(
    block: bytes | memoryview,
    entry: BlockEntry | None = None,
    *,
    verified: bool = False,
    view: bool = False,
) -> bytes:
    """The concatenated record batches of one block.

    ``block`` is the block exactly as stored (``entry.length`` bytes from ``entry.offset``).
    Verifies the stored bytes' xxh3-64 (unless ``verified``: the caller checked these very
    bytes against it already) and the lengths, then decompresses. ``entry``, when given, is
    used to check the length and to name the block in error messages. With ``view`` a raw
    block comes back as a memoryview of ``block`` (no copy; it keeps ``block`` alive).
    Raises ``SegmentCorruptError``.
    """
    where = (
        "block"
        if entry is None
        else f"block of topic {entry.topic_id} partition {entry.partition} at byte {entry.offset}"
    )
    size = len(block)
    if entry is not None and size != entry.length:
        raise SegmentCorruptError(f"{where}: got {size} bytes, index says {entry.length}")
    if size < BLOCK_HEADER_SIZE:
        raise SegmentCorruptError(
            f"{where}: truncated, {size} bytes is less than the {BLOCK_HEADER_SIZE}-byte header"
        )
    codec, raw_len, stored_len, checksum = _BLOCK_HEADER.unpack_from(block, 0)
    if stored_len != size - BLOCK_HEADER_SIZE:
        raise SegmentCorruptError(
            f"{where}: header says {stored_len} stored bytes, the block has "
            f"{size - BLOCK_HEADER_SIZE} (truncated or corrupt)"
        )
    if block[1:4] != b"\x00\x00\x00":
        raise SegmentCorruptError(f"{where}: reserved header bytes are not zero")
    stored = memoryview(block)[BLOCK_HEADER_SIZE:]
    actual = checksum if verified else _hash(stored)
    if actual != checksum:
        raise SegmentCorruptError(
            f"{where}: checksum mismatch, header says xxh3 {checksum:#018x}, stored bytes "
            f"give {actual:#018x}"
        )
    if codec == CODEC_RAW:
        if raw_len != stored_len:
            raise SegmentCorruptError(
                f"{where}: raw block with raw_length {raw_len} != stored_length {stored_len}"
            )
        return stored if view else bytes(stored)  # type: ignore[return-value]
    if codec == CODEC_LZ4:
        # LZ4 expands at most ~255x; a larger raw_length is a corrupt header, and trusting
        # it would make lz4 allocate up to 4 GiB.
        if raw_len > stored_len * _LZ4_MAX_RATIO:
            raise SegmentCorruptError(
                f"{where}: raw_length {raw_len} is impossible for {stored_len} LZ4 bytes"
            )
        try:
            raw = lz4.block.decompress(stored, uncompressed_size=raw_len)
        except lz4.block.LZ4BlockError as exc:
            raise SegmentCorruptError(f"{where}: LZ4 decompression failed: {exc}") from exc
        if len(raw) != raw_len:
            raise SegmentCorruptError(
                f"{where}: decompressed to {len(raw)} bytes, header says {raw_len}"
            )
        return raw
    raise SegmentCorruptError(f"{where}: unknown codec {codec}")
