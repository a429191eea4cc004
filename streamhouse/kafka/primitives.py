"""Kafka protocol primitive types: bytes in, values out (sans-I/O).

Readers take a `memoryview` of format "B" and a position and return `(value, new_position)`:
no reader object, because the generated decoders in `messages.py` keep the position in a local
variable, which is the cheapest thing Python can update. Writers either return the encoded
`bytes` of a value or, for payloads that must not be copied twice (`bytes` and `records`),
append the length prefix and the payload itself to a list of parts that is joined once.

Encodings (all fixed-width integers big-endian, two's complement):
  bool / int8 / int16 / int32 / int64   1 / 1 / 2 / 4 / 8 bytes; uint16 2, uint32 4, float64 8
  uuid              16 raw bytes
  unsigned varint   7 bits a byte, least significant group first, high bit = "more follows";
                    at most 5 bytes (32 bits), as Kafka reads them
  varint / varlong  zig-zag ((n << 1) ^ (n >> 63)) then unsigned varint (varlong: 10 bytes max)
  string            int16 length + UTF-8; nullable: length -1 is null
  compact string    unsigned varint (length + 1) + UTF-8; nullable: 0 is null
  bytes / records   int32 length + raw; nullable: -1 is null
  compact bytes     unsigned varint (length + 1) + raw; nullable: 0 is null
  array             int32 count + elements; nullable: -1 is null
  compact array     unsigned varint (count + 1) + elements; nullable: 0 is null
  tagged fields     unsigned varint count, then per field: uvarint tag, uvarint size, data

Rules kept here:
  - A length that points past the end of the buffer, a negative length other than the null
    marker, or null where the field is not nullable raises `DecodeError`; a short fixed-width
    read raises `struct.error`, a short varint `IndexError`, bad UTF-8 `UnicodeDecodeError`.
    Callers that face the network catch all of them (see `framing.DECODE_ERRORS`).
  - `records` are returned as a slice of the input memoryview (zero-copy); `bytes` fields are
    copied, since they are small and often kept (group metadata, SASL tokens).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from uuid import UUID, SafeUUID

__all__ = [
    "DecodeError",
    "EncodeError",
    "Buffer",
    "read_uvarint",
    "read_varint",
    "read_varlong",
    "read_string",
    "read_nullable_string",
    "read_compact_string",
    "read_compact_nullable_string",
    "read_bytes",
    "read_nullable_bytes",
    "read_compact_bytes",
    "read_compact_nullable_bytes",
    "read_records",
    "read_compact_records",
    "read_array_length",
    "read_compact_array_length",
    "read_tagged_field_header",
    "skip_tagged_fields",
    "uuid_from_bytes",
    "ArrayStructs",
    "uvarint",
    "varint",
    "varlong",
    "string",
    "nullable_string",
    "compact_string",
    "compact_nullable_string",
    "write_bytes",
    "write_nullable_bytes",
    "write_compact_bytes",
    "write_compact_nullable_bytes",
    "array_length",
    "compact_array_length",
    "tagged_fields",
]

Buffer = bytes | bytearray | memoryview
Write = Callable[[Buffer], object]


class DecodeError(ValueError):
    """The bytes do not form a valid value of the expected Kafka type."""


class EncodeError(ValueError):
    """A value cannot be written at the requested version (or is of the wrong type)."""


_h = struct.Struct(">h")
_i = struct.Struct(">i")
_NULL_INT16 = b"\xff\xff"
_NULL_INT32 = b"\xff\xff\xff\xff"
_SMALL_UVARINTS = [bytes([n]) for n in range(128)]


# ---------------------------------------------------------------------------------- readers


def read_uvarint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Unsigned varint of at most 5 bytes (Kafka's readUnsignedVarint)."""
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    value = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise DecodeError("unsigned varint is longer than 5 bytes")


def _read_ulong(buf: memoryview, pos: int, max_shift: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > max_shift:
            raise DecodeError("varint is too long")


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Zig-zag signed varint (int32 range, at most 5 bytes)."""
    raw, pos = _read_ulong(buf, pos, 28)
    return (raw >> 1) ^ -(raw & 1), pos


def read_varlong(buf: memoryview, pos: int) -> tuple[int, int]:
    """Zig-zag signed varlong (int64 range, at most 10 bytes)."""
    raw, pos = _read_ulong(buf, pos, 63)
    return (raw >> 1) ^ -(raw & 1), pos


def _bounded(buf: memoryview, pos: int, n: int, what: str) -> int:
    end = pos + n
    if end > len(buf):
        raise DecodeError(f"{what} of {n} bytes at offset {pos} runs past the end ({len(buf)})")
    return end


def read_string(buf: memoryview, pos: int) -> tuple[str, int]:
    """int16-length UTF-8 string that must not be null."""
    (n,) = _h.unpack_from(buf, pos)
    pos += 2
    if n < 0:
        raise DecodeError(f"non-nullable string has length {n}")
    end = _bounded(buf, pos, n, "string")
    return str(buf[pos:end], "utf-8"), end


def read_nullable_string(buf: memoryview, pos: int) -> tuple[str | None, int]:
    """int16-length UTF-8 string; length -1 is null."""
    (n,) = _h.unpack_from(buf, pos)
    pos += 2
    if n < 0:
        if n == -1:
            return None, pos
        raise DecodeError(f"string has length {n}")
    end = _bounded(buf, pos, n, "string")
    return str(buf[pos:end], "utf-8"), end


def read_compact_string(buf: memoryview, pos: int) -> tuple[str, int]:
    """uvarint(length + 1) UTF-8 string that must not be null."""
    n = buf[pos]
    if n < 0x80:
        pos += 1
    else:
        n, pos = read_uvarint(buf, pos)
    if n == 0:
        raise DecodeError("non-nullable compact string is null")
    end = _bounded(buf, pos, n - 1, "compact string")
    return str(buf[pos:end], "utf-8"), end


def read_compact_nullable_string(buf: memoryview, pos: int) -> tuple[str | None, int]:
    """uvarint(length + 1) UTF-8 string; 0 is null."""
    n = buf[pos]
    if n < 0x80:
        pos += 1
    else:
        n, pos = read_uvarint(buf, pos)
    if n == 0:
        return None, pos
    end = _bounded(buf, pos, n - 1, "compact string")
    return str(buf[pos:end], "utf-8"), end


def read_bytes(buf: memoryview, pos: int) -> tuple[bytes, int]:
    """int32-length bytes that must not be null (copied)."""
    (n,) = _i.unpack_from(buf, pos)
    pos += 4
    if n < 0:
        raise DecodeError(f"non-nullable bytes have length {n}")
    end = _bounded(buf, pos, n, "bytes")
    return bytes(buf[pos:end]), end


def read_nullable_bytes(buf: memoryview, pos: int) -> tuple[bytes | None, int]:
    """int32-length bytes; -1 is null (copied)."""
    (n,) = _i.unpack_from(buf, pos)
    pos += 4
    if n < 0:
        if n == -1:
            return None, pos
        raise DecodeError(f"bytes have length {n}")
    end = _bounded(buf, pos, n, "bytes")
    return bytes(buf[pos:end]), end


def read_compact_bytes(buf: memoryview, pos: int) -> tuple[bytes, int]:
    """uvarint(length + 1) bytes that must not be null (copied)."""
    n, pos = read_uvarint(buf, pos)
    if n == 0:
        raise DecodeError("non-nullable compact bytes are null")
    end = _bounded(buf, pos, n - 1, "compact bytes")
    return bytes(buf[pos:end]), end


def read_compact_nullable_bytes(buf: memoryview, pos: int) -> tuple[bytes | None, int]:
    """uvarint(length + 1) bytes; 0 is null (copied)."""
    n, pos = read_uvarint(buf, pos)
    if n == 0:
        return None, pos
    end = _bounded(buf, pos, n - 1, "compact bytes")
    return bytes(buf[pos:end]), end


def read_records(buf: memoryview, pos: int) -> tuple[memoryview | None, int]:
    """int32-length record data; -1 is null. Zero-copy: a slice of `buf`."""
    (n,) = _i.unpack_from(buf, pos)
    pos += 4
    if n < 0:
        if n == -1:
            return None, pos
        raise DecodeError(f"records have length {n}")
    end = _bounded(buf, pos, n, "records")
    return buf[pos:end], end


def read_compact_records(buf: memoryview, pos: int) -> tuple[memoryview | None, int]:
    """uvarint(length + 1) record data; 0 is null. Zero-copy: a slice of `buf`."""
    n, pos = read_uvarint(buf, pos)
    if n == 0:
        return None, pos
    end = _bounded(buf, pos, n - 1, "compact records")
    return buf[pos:end], end


def read_array_length(buf: memoryview, pos: int) -> tuple[int, int]:
    """int32 element count; -1 means null (returned as -1, other negatives raise)."""
    (n,) = _i.unpack_from(buf, pos)
    if n < -1:
        raise DecodeError(f"array has length {n}")
    return n, pos + 4


def read_compact_array_length(buf: memoryview, pos: int) -> tuple[int, int]:
    """uvarint(count + 1) element count; null is returned as -1."""
    n = buf[pos]
    if n < 0x80:
        return n - 1, pos + 1
    n, pos = read_uvarint(buf, pos)
    return n - 1, pos


def read_tagged_field_header(buf: memoryview, pos: int) -> tuple[int, int, int]:
    """(tag, end of the field's data, position of its data) of one tagged field."""
    tag, pos = read_uvarint(buf, pos)
    size, pos = read_uvarint(buf, pos)
    return tag, _bounded(buf, pos, size, f"tagged field {tag}"), pos


def skip_tagged_fields(buf: memoryview, pos: int) -> int:
    """Skip a whole tagged-field section (all tags unknown to the reader)."""
    count, pos = read_uvarint(buf, pos)
    for _ in range(count):
        _, pos, _ = read_tagged_field_header(buf, pos)
    return pos


def uuid_from_bytes(
    raw: bytes,
    _new: Callable[[type[UUID]], UUID] = object.__new__,
    _set: Callable[[object, str, object], None] = object.__setattr__,
    _unknown: SafeUUID = SafeUUID.unknown,
) -> UUID:
    """UUID of 16 big-endian bytes; about twice as fast as UUID(bytes=raw)."""
    value = _new(UUID)
    _set(value, "int", int.from_bytes(raw, "big"))
    _set(value, "is_safe", _unknown)
    return value


class ArrayStructs(dict[int, struct.Struct]):
    """`structs[n]` packs or unpacks n big-endian values of one format character ("i", "q").

    Built on first use and kept for n <= 1024, so arrays of fixed-width values cost one dict
    lookup and one C call rather than a format string parse.
    """

    def __init__(self, code: str) -> None:
        super().__init__()
        self.code = code

    def __missing__(self, n: int) -> struct.Struct:
        packer = struct.Struct(f">{n}{self.code}")
        if n <= 1024:
            self[n] = packer
        return packer


# ---------------------------------------------------------------------------------- writers


def uvarint(value: int) -> bytes:
    """Unsigned varint encoding of 0 <= value < 2**32."""
    if 0 <= value < 0x80:
        return _SMALL_UVARINTS[value]
    if value < 0 or value >= 1 << 32:
        raise EncodeError(f"unsigned varint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _ulong(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint(value: int) -> bytes:
    """Zig-zag varint of an int32."""
    if not -(1 << 31) <= value < 1 << 31:
        raise EncodeError(f"varint out of int32 range: {value}")
    return _ulong(((value << 1) ^ (value >> 31)) & 0xFFFFFFFF)


def varlong(value: int) -> bytes:
    """Zig-zag varlong of an int64."""
    if not -(1 << 63) <= value < 1 << 63:
        raise EncodeError(f"varlong out of int64 range: {value}")
    return _ulong(((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF)


def string(value: str) -> bytes:
    """int16-length UTF-8 string."""
    raw = value.encode()
    return _h.pack(len(raw)) + raw


def nullable_string(value: str | None) -> bytes:
    """int16-length UTF-8 string, -1 for None."""
    if value is None:
        return _NULL_INT16
    raw = value.encode()
    return _h.pack(len(raw)) + raw


def compact_string(value: str) -> bytes:
    """uvarint(length + 1) UTF-8 string."""
    raw = value.encode()
    return uvarint(len(raw) + 1) + raw


def compact_nullable_string(value: str | None) -> bytes:
    """uvarint(length + 1) UTF-8 string, 0 for None."""
    if value is None:
        return b"\x00"
    raw = value.encode()
    return uvarint(len(raw) + 1) + raw


def _flat(value: Buffer) -> Buffer:
    # A memoryview of another item size would be joined as raw bytes but counted in items.
    if type(value) is memoryview and value.itemsize != 1:
        return value.cast("B")
    return value


def write_bytes(write: Write, value: Buffer) -> None:
    """int32-length bytes, payload appended as is (no copy here)."""
    value = _flat(value)
    write(_i.pack(len(value)))
    write(value)


def write_nullable_bytes(write: Write, value: Buffer | None) -> None:
    """int32-length bytes, -1 for None, payload appended as is."""
    if value is None:
        write(_NULL_INT32)
        return
    value = _flat(value)
    write(_i.pack(len(value)))
    write(value)


def write_compact_bytes(write: Write, value: Buffer) -> None:
    """uvarint(length + 1) bytes, payload appended as is."""
    value = _flat(value)
    write(uvarint(len(value) + 1))
    write(value)


def write_compact_nullable_bytes(write: Write, value: Buffer | None) -> None:
    """uvarint(length + 1) bytes, 0 for None, payload appended as is."""
    if value is None:
        write(b"\x00")
        return
    value = _flat(value)
    write(uvarint(len(value) + 1))
    write(value)


def array_length(value: list[object] | None) -> bytes:
    """int32 element count, -1 for None."""
    if value is None:
        return _NULL_INT32
    return _i.pack(len(value))


def compact_array_length(value: list[object] | None) -> bytes:
    """uvarint(count + 1), 0 for None."""
    if value is None:
        return b"\x00"
    return uvarint(len(value) + 1)


def tagged_fields(fields: list[tuple[int, list[Buffer]]]) -> bytes:
    """A tagged-field section of (tag, encoded parts) pairs, given in ascending tag order."""
    out = [uvarint(len(fields))]
    for tag, parts in fields:
        data = b"".join(parts)
        out.append(uvarint(tag))
        out.append(uvarint(len(data)))
        out.append(data)
    return b"".join(out)
