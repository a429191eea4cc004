"""Property tests of what crosses a ring and what is read back from the object store.

No stage trusts its ring, and no reader trusts an object: whatever bytes arrive,

  - every ring frame header type in ``streamhouse.frames`` (found by introspection, so new
    types and new fields are covered without touching this file) round-trips, and decoding
    random or mutated bytes raises only ``msgspec.DecodeError`` (``ValidationError`` is one);
    a header that decodes is judged by the ``check_*`` functions of ``streamhouse.frames``,
    which raise only ``FrameError``; ``salvage_ids`` never raises;
  - ``errors.from_ring`` maps any code a peer could send to an error, never raising;
  - segment objects (``streamhouse.segment``) round-trip, and parsing random, truncated or
    mutated objects raises only ``SegmentCorruptError``, also when the mutation is disguised
    by recomputing the checksums that would otherwise catch it.
"""

from __future__ import annotations

import inspect
import struct
import typing
from typing import Any

import msgspec
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamhouse import errors, frames
from streamhouse.segment import (
    BLOCK_HEADER_SIZE,
    FOOTER_SIZE,
    HEADER_SIZE,
    INDEX_ENTRY_SIZE,
    SegmentCorruptError,
    SegmentWriter,
    decode_block,
    parse_footer,
    read_index,
)


def scaled(n: int) -> int:
    """n examples under the default profile, proportionally more under `--hypothesis-profile`."""
    return max(1, n * settings.default.max_examples // 100)


def examples(n: int) -> settings:
    return settings(
        max_examples=scaled(n),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------------------ ring headers

HEADER_TYPES: list[type[msgspec.Struct]] = sorted(
    (
        obj
        for obj in [*vars(frames).values(), errors.RingError]
        if isinstance(obj, type)
        and issubclass(obj, msgspec.Struct)
        and obj.__module__ in (frames.__name__, errors.__name__)
    ),
    key=lambda cls: cls.__name__,
)
HEADER_PARAMS = [pytest.param(cls, id=cls.__name__) for cls in HEADER_TYPES]
INT64 = st.integers(-(2**63), 2**63 - 1)


def test_frame_types_found() -> None:
    names = {cls.__name__ for cls in HEADER_TYPES}
    assert {"ProduceFrame", "SealedSegment", "AckFrame", "FetchRequest", "FetchResponse"} <= names


def strategy_for(info: msgspec.inspect.Type) -> st.SearchStrategy[Any]:
    """Values of a msgspec type as `msgspec.inspect` describes it (the types frames use)."""
    t = msgspec.inspect
    if isinstance(info, t.IntType):
        return INT64
    if isinstance(info, t.StrType):
        return st.text(max_size=20)
    if isinstance(info, t.BytesType):
        return st.binary(max_size=20)
    if isinstance(info, t.BoolType):
        return st.booleans()
    if isinstance(info, t.FloatType):
        return st.floats(allow_nan=False)
    if isinstance(info, t.NoneType):
        return st.none()
    if isinstance(info, t.UnionType):
        return st.one_of(*(strategy_for(member) for member in info.types))
    if isinstance(info, t.ListType):
        return st.lists(strategy_for(info.item_type), max_size=4)
    if isinstance(info, t.VarTupleType):
        return st.lists(strategy_for(info.item_type), max_size=4).map(tuple)
    if isinstance(info, t.TupleType):
        return st.tuples(*(strategy_for(item) for item in info.item_types))
    if isinstance(info, t.StructType):
        fields = {f.name: strategy_for(f.type) for f in info.fields}
        return st.builds(info.cls, **fields)
    raise AssertionError(f"no strategy for {info!r}: extend strategy_for")


def header_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    return strategy_for(msgspec.inspect.type_info(cls))


def checks_for(cls: type) -> list[Any]:
    """The `check_*` functions of streamhouse.frames whose first parameter is a `cls`."""
    found = []
    for name, fn in vars(frames).items():
        if name.startswith("check_") and callable(fn):
            hints = typing.get_type_hints(fn)
            first = next(iter(inspect.signature(fn).parameters))
            if hints.get(first) is cls:
                found.append(fn)
    return found


def run_checks(cls: type, value: Any, data: st.DataObject) -> None:
    """Every check of `cls` on `value` with arbitrary sizes passes or raises FrameError."""
    for check in checks_for(cls):
        params = list(inspect.signature(check).parameters)[1:]
        args = [data.draw(st.integers(-1, 1 << 20), label=p) for p in params]
        try:
            check(value, *args)
        except frames.FrameError:
            pass


@pytest.mark.parametrize("cls", HEADER_PARAMS)
@examples(40)
@given(data=st.data())
def test_header_round_trip(cls: type[msgspec.Struct], data: st.DataObject) -> None:
    value = data.draw(header_strategy(cls))
    encoded = frames.header_encoder.encode(value)
    assert frames.decoder_for(cls).decode(encoded) == value
    run_checks(cls, value, data)


# msgpack length prefixes that lie: array32, map32, str32, bin32 of 2**32 - 1 and 2**31
LYING_MSGPACK = [
    b"\xdd\xff\xff\xff\xff",
    b"\xdd\x80\x00\x00\x00",
    b"\xdc\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff",
    b"\x9f",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # uint64 max: out of int64 range
]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(out)))
        kind = draw(st.sampled_from(["truncate", "flip", "lie", "splice"]))
        if kind == "truncate":
            del out[pos:]
        elif kind == "flip" and pos < len(out):
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "lie":
            out[pos : pos + draw(st.integers(0, 1))] = draw(st.sampled_from(LYING_MSGPACK))
        elif kind == "splice":
            out[pos : pos + draw(st.integers(0, 8))] = draw(st.binary(max_size=12))
    return bytes(out)


@pytest.mark.parametrize("cls", HEADER_PARAMS)
@examples(60)
@given(data=st.data())
def test_mutated_headers_raise_only_decode_errors(
    cls: type[msgspec.Struct], data: st.DataObject
) -> None:
    encoded = frames.header_encoder.encode(data.draw(header_strategy(cls)))
    raw = data.draw(mutated(encoded) | st.binary(max_size=64))
    try:
        value = frames.decoder_for(cls).decode(raw)
    except msgspec.DecodeError:
        return
    run_checks(cls, value, data)


@examples(200)
@given(raw=st.binary(max_size=64) | st.sampled_from(LYING_MSGPACK), count=st.integers(0, 4))
def test_salvage_ids_never_raises(raw: bytes, count: int) -> None:
    salvage = getattr(frames, "salvage_ids", None)
    if salvage is None:  # before the rings learned to salvage request ids
        return
    ids = salvage(raw, count)
    assert ids is None or (len(ids) == count and all(type(i) is int for i in ids))


@examples(200)
@given(code=st.integers(-(2**63), 2**63 - 1), message=st.text(max_size=40))
def test_any_ring_error_code_maps_to_an_error(code: int, message: str) -> None:
    error = errors.from_ring(errors.RingError(code, message))
    assert (error is None) == (code == 0)


# ------------------------------------------------------------------------------ segments

BLOCK = st.tuples(
    st.integers(0, 2**64 - 1),  # topic id
    st.integers(0, 2**32 - 1),  # partition
    # compressible and incompressible payloads, so both codecs appear
    st.binary(min_size=1, max_size=300) | st.binary(min_size=1, max_size=8).map(lambda b: b * 64),
)


def build_segment(blocks: list[tuple[int, int, bytes]]) -> tuple[bytes, list[Any]]:
    writer = SegmentWriter()
    for topic_id, partition, raw in blocks:
        writer.add_block(topic_id, partition, [raw], 1, 1, 0, 0)
    return writer.finish()


@examples(100)
@given(blocks=st.lists(BLOCK, min_size=1, max_size=4))
def test_segment_round_trip(blocks: list[tuple[int, int, bytes]]) -> None:
    obj, entries = build_segment(blocks)
    assert read_index(obj) == entries
    for entry, (_, _, raw) in zip(entries, blocks, strict=True):
        assert decode_block(obj[entry.offset : entry.offset + entry.length], entry) == raw


def parse_everything(obj: bytes) -> None:
    """Everything a reader does with an object: index, then every block it names."""
    parse_footer(obj[-FOOTER_SIZE:], object_size=len(obj))
    for entry in read_index(obj):
        decode_block(obj[entry.offset : entry.offset + entry.length], entry)


@examples(300)
@given(data=st.data(), blocks=st.lists(BLOCK, min_size=1, max_size=3))
def test_mutated_segments_raise_only_corrupt_errors(
    data: st.DataObject, blocks: list[tuple[int, int, bytes]]
) -> None:
    obj, _ = build_segment(blocks)
    damaged = data.draw(mutated(obj) | st.binary(max_size=200))
    try:
        parse_everything(damaged)
    except SegmentCorruptError:
        pass


def reseal(obj: bytearray) -> None:
    """Recompute every checksum an object's (possibly damaged) footer and blocks point at, so
    that damage reaches the checks behind the checksums."""
    if len(obj) < HEADER_SIZE + FOOTER_SIZE:
        return
    footer = len(obj) - FOOTER_SIZE
    index_offset, index_length = struct.unpack_from("<QI", obj, footer)
    if index_offset + index_length > footer:
        return
    index = bytes(obj[index_offset : index_offset + index_length])
    struct.pack_into("<Q", obj, footer + 12, xxhash.xxh3_64_intdigest(index))
    for i in range(0, len(index) - INDEX_ENTRY_SIZE + 1, INDEX_ENTRY_SIZE):
        offset, length = struct.unpack_from("<QI", index, i + 12)
        if offset + BLOCK_HEADER_SIZE <= offset + length <= index_offset:
            stored = bytes(obj[offset + BLOCK_HEADER_SIZE : offset + length])
            struct.pack_into("<Q", obj, offset + 12, xxhash.xxh3_64_intdigest(stored))


# Fields of a block header and an index entry, as (offset in the region, struct format).
BLOCK_FIELDS = [(0, "<B"), (4, "<I"), (8, "<I")]  # codec, raw_length, stored_length
ENTRY_FIELDS = [(0, "<Q"), (8, "<I"), (12, "<Q"), (20, "<I"), (24, "<I"), (28, "<I")]


@examples(300)
@given(data=st.data(), blocks=st.lists(BLOCK, min_size=1, max_size=3))
def test_lying_fields_behind_valid_checksums_are_refused(
    data: st.DataObject, blocks: list[tuple[int, int, bytes]]
) -> None:
    """A header field set to an extreme value (e.g. an LZ4 raw_length of 4 GiB) with every
    checksum recomputed: refused with SegmentCorruptError, never a MemoryError or a crash."""
    obj, entries = build_segment(blocks)
    damaged = bytearray(obj)
    entry = data.draw(st.sampled_from(entries))
    if data.draw(st.booleans()):
        offset, fmt = data.draw(st.sampled_from(BLOCK_FIELDS))
        where = entry.offset + offset
    else:
        offset, fmt = data.draw(st.sampled_from(ENTRY_FIELDS))
        index_offset = parse_footer(obj)[0]
        where = index_offset + entries.index(entry) * INDEX_ENTRY_SIZE + offset
    limit = 2 ** (8 * struct.calcsize(fmt)) - 1
    value = data.draw(st.sampled_from([0, 1, limit, limit // 2, 255]) | st.integers(0, limit))
    struct.pack_into(fmt, damaged, where, value)
    reseal(damaged)
    try:
        parse_everything(bytes(damaged))
    except SegmentCorruptError:
        pass
