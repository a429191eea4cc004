"""Fuzz target: what a stage reads from its rings and from the object store.

    python tests/fuzz/fuzz_frames.py -max_total_time=60

Input: one selector byte, then the bytes under test. The selector picks

  - a ring frame header type of ``streamhouse.frames`` (every msgspec Struct there, found by
    introspection): decode, then the ``check_*`` functions for that type, then re-encode;
  - ``frames.salvage_ids`` on the bytes;
  - a segment object (``streamhouse.segment``): ``read_index``, then ``decode_block`` for every
    entry; a second selector first recomputes the index hash and block checksums the damaged
    object points at, so lying lengths and codecs behind valid checksums are reached;
  - a ring's data area (``streamhouse.ring``): the bytes are written after the reader's tail
    and published, and the reader reads them.

What must hold: headers raise only ``msgspec.DecodeError`` and the checks only ``FrameError``;
a decoded header re-encodes to a header that decodes equal; segments raise only
``SegmentCorruptError``; ``salvage_ids`` never raises; the ring reader returns frames inside
what was published or raises ``RingError``, and never loops.
"""

from __future__ import annotations

import inspect
import mmap
import os
import struct
import tempfile
import typing

import harness

with harness.instrumented():
    import msgspec
    import xxhash

    from streamhouse import errors, frames
    from streamhouse.ring import RingError, RingReader, RingWriter, unlink_ring
    from streamhouse.segment import (
        BLOCK_HEADER_SIZE,
        FOOTER_SIZE,
        HEADER_SIZE,
        INDEX_ENTRY_SIZE,
        SegmentCorruptError,
        SegmentWriter,
        decode_block,
        read_index,
    )

HEADER_TYPES = sorted(
    (
        obj
        for obj in [*vars(frames).values(), errors.RingError]
        if isinstance(obj, type)
        and issubclass(obj, msgspec.Struct)
        and obj.__module__ in (frames.__name__, errors.__name__)
    ),
    key=lambda cls: cls.__name__,
)
DECODERS = [frames.decoder_for(cls) for cls in HEADER_TYPES]


def _checks(cls: type) -> list[typing.Any]:
    found = []
    for name, fn in vars(frames).items():
        if name.startswith("check_") and callable(fn):
            first = next(iter(inspect.signature(fn).parameters))
            if typing.get_type_hints(fn).get(first) is cls:
                found.append((fn, len(inspect.signature(fn).parameters) - 1))
    return found


CHECKS = [_checks(cls) for cls in HEADER_TYPES]
SALVAGE = len(HEADER_TYPES)
SEGMENT = SALVAGE + 1
SEGMENT_RESEALED = SALVAGE + 2
RING = SALVAGE + 3
TARGETS = RING + 1
FRAME_ERROR = getattr(frames, "FrameError", ValueError)


def check_header(kind: int, data: bytes) -> None:
    try:
        value = DECODERS[kind].decode(data)
    except msgspec.DecodeError:
        return
    again = frames.header_encoder.encode(value)
    assert DECODERS[kind].decode(again) == value, "a decoded header does not round-trip"
    sizes = [len(data), 1, 0, 1 << 20]
    for check, extra in CHECKS[kind]:
        try:
            check(value, *sizes[:extra])
        except FRAME_ERROR:
            pass


def reseal(obj: bytearray) -> None:
    """Recompute the index hash and block checksums that the (damaged) footer points at."""
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


def check_segment(data: bytes, resealed: bool) -> None:
    obj = bytearray(data)
    if resealed:
        reseal(obj)
    try:
        for entry in read_index(bytes(obj)):
            decode_block(bytes(obj[entry.offset : entry.offset + entry.length]), entry)
    except SegmentCorruptError:
        pass


class DamagedRing:
    """One ring in a private temp dir; each input is written after the tail and published."""

    CAPACITY = 1024

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fuzz-ring-")
        os.chmod(self.dir, 0o700)
        self.writer = RingWriter("fuzz", self.dir, self.CAPACITY)
        self.reader = RingReader("fuzz", self.dir, self.CAPACITY)
        real = os.path.realpath(self.dir)
        path = "/dev/shm/sh" + xxhash.xxh64(f"{real}\0fuzz".encode()).hexdigest()
        with open(path, "r+b") as f:
            self.mm = mmap.mmap(f.fileno(), 0)
        (self.data_at,) = struct.unpack_from("<I", self.mm, 12)

    def check(self, data: bytes) -> None:
        if not data:
            return
        published = data[0] * 4 + (len(data) & 3)  # up to the whole ring, aligned or not
        data = data[1 : 1 + self.CAPACITY]
        (tail,) = struct.unpack_from("<Q", self.mm, 256)
        pos = tail % self.CAPACITY
        first = data[: self.CAPACITY - pos]
        self.mm[self.data_at + pos : self.data_at + pos + len(first)] = first
        rest = data[len(first) :]
        self.mm[self.data_at : self.data_at + len(rest)] = rest
        struct.pack_into("<Q", self.mm, 128, tail + min(published, self.CAPACITY))
        try:
            for _ in range(self.CAPACITY):
                got = self.reader.read_frames()
                if not got:
                    break
            else:
                raise AssertionError("the ring reader kept returning frames")
        except RingError:
            # A corrupt ring stays corrupt for this reader; start the next input afresh.
            self.close()
            self.__init__()  # type: ignore[misc]
            return
        (new_tail,) = struct.unpack_from("<Q", self.mm, 256)
        assert tail <= new_tail <= tail + min(published, self.CAPACITY), (tail, new_tail)

    def close(self) -> None:
        self.mm.close()
        self.reader.close()
        self.writer.close()
        unlink_ring("fuzz", self.dir)
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


_ring: DamagedRing | None = None


def check(data: bytes) -> None:
    global _ring
    if not data:
        return
    kind, rest = data[0] % TARGETS, data[1:]
    if kind < SALVAGE:
        check_header(kind, rest)
        if HEADER_TYPES[kind] is errors.RingError:
            try:
                error = errors.RingError(*msgspec.msgpack.decode(rest, type=tuple[int, str]))
            except (msgspec.DecodeError, TypeError):
                return
            assert (errors.from_ring(error) is None) == (error.code == 0)
    elif kind == SALVAGE:
        ids = frames.salvage_ids(rest, 3) if hasattr(frames, "salvage_ids") else None
        assert ids is None or len(ids) == 3
    elif kind in (SEGMENT, SEGMENT_RESEALED):
        check_segment(rest, kind == SEGMENT_RESEALED)
    else:
        if _ring is None:
            _ring = DamagedRing()
        _ring.check(rest)


def seeds() -> list[bytes]:
    import random

    rng = random.Random(1)
    out = []
    for kind, cls in enumerate(HEADER_TYPES):
        for _ in range(3):
            value = _example(cls, rng)
            if value is not None:
                out.append(bytes([kind]) + frames.header_encoder.encode(value))
    writer = SegmentWriter()
    writer.add_block(1, 0, [b"a" * 200], 1, 1, 0, 5)
    writer.add_block(2, 3, [rng.randbytes(100)], 2, 4, -5, 9)
    obj, _ = writer.finish()
    out += [bytes([SEGMENT]) + obj, bytes([SEGMENT_RESEALED]) + obj]
    frame = struct.pack("<II", 12, 4) + b"hdr!" + b"payload!"
    out.append(bytes([RING, 6]) + frame + bytes([0xFF] * 4 + [0] * 4))
    out.append(bytes([SALVAGE]) + msgspec.msgpack.encode([1, 2, 3, "x"]))
    return out


def _example(cls: type, rng: typing.Any) -> typing.Any:
    """A valid instance of a header type, from msgspec's view of its fields."""
    info = msgspec.inspect.type_info(cls)
    return _value(info, rng)


def _value(info: typing.Any, rng: typing.Any) -> typing.Any:
    t = msgspec.inspect
    if isinstance(info, t.IntType):
        return rng.choice([0, 1, -1, 7, 1 << 40])
    if isinstance(info, t.StrType):
        return rng.choice(["", "CORRUPT_MESSAGE", "segments/1-a.seg"])
    if isinstance(info, t.BytesType):
        return b"xy"
    if isinstance(info, t.BoolType):
        return True
    if isinstance(info, t.ListType | t.VarTupleType):
        items = [_value(info.item_type, rng) for _ in range(rng.randint(0, 2))]
        return items if isinstance(info, t.ListType) else tuple(items)
    if isinstance(info, t.TupleType):
        return tuple(_value(item, rng) for item in info.item_types)
    if isinstance(info, t.StructType):
        return info.cls(**{f.name: _value(f.type, rng) for f in info.fields})
    return None


if __name__ == "__main__":
    harness.main(check, seeds())
