"""Counting what a Produce request names before it is decoded, sans-I/O.

Decoding builds one object per topic and per partition: a Produce frame packed with empty
partitions (eight bytes each) decodes to about eleven times its size and blocks the event
loop for a quarter of a second per MiB, so a 100 MiB frame would cost a GiB and half a
minute. The connection therefore walks the frame's counts and lengths first, creating
nothing, and stops as soon as the count passes its limit.

Layout walked (Kafka's ProduceRequest schema; big-endian):

    request header v1   api_key:int16 api_version:int16 correlation_id:int32
                        client_id:int16 length + bytes (-1: null)
    request header v2   v1 + tagged fields                       (Produce v9+)
    body                transactional_id:nullable string (v3+) acks:int16 timeout_ms:int32
                        topic_data:[ name:string
                                     partition_data:[ index:int32 records:nullable bytes
                                                      (tagged fields) ]
                                     (tagged fields) ]
                        (tagged fields)

In flexible versions (v9+) strings, bytes and arrays carry a compact length (uvarint N + 1,
0 for null) and every struct ends with tagged fields (uvarint count, then per field a
uvarint tag, a uvarint size and that many bytes); otherwise lengths are int16 (strings) or
int32 (bytes, arrays) with -1 for null.

Rules: the walk never allocates per element and never reads past the frame; a frame it
cannot walk (truncated, negative lengths) is left to the decoder, which refuses it with
CorruptRequest and a precise message.
"""

from __future__ import annotations

import struct

from streamhouse.kafka.primitives import Buffer

PRODUCE = 0
_FLEXIBLE_FROM = 9
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")


class _Unwalkable(Exception):
    """The frame does not hold what its lengths say; the decoder will explain."""


class _Walker:
    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        self.flexible = False

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise _Unwalkable
        self.pos += n

    def int16(self) -> int:
        if self.pos + 2 > len(self.buf):
            raise _Unwalkable
        (value,) = _INT16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return value

    def int32(self) -> int:
        if self.pos + 4 > len(self.buf):
            raise _Unwalkable
        (value,) = _INT32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return value

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            if self.pos >= len(self.buf) or shift > 28:
                raise _Unwalkable
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def length(self, classic: int) -> int:
        """A string's, bytes' or array's length; 0 for null."""
        n = self.uvarint() - 1 if self.flexible else classic
        return max(n, 0) if n >= -1 else self._bad()

    def skip_string(self) -> None:
        self.skip(self.length(self.int16() if not self.flexible else 0))

    def skip_bytes(self) -> None:
        self.skip(self.length(self.int32() if not self.flexible else 0))

    def array(self) -> int:
        return self.length(self.int32() if not self.flexible else 0)

    def skip_tags(self) -> None:
        if self.flexible:
            for _ in range(self.uvarint()):
                self.uvarint()
                self.skip(self.uvarint())

    def _bad(self) -> int:
        raise _Unwalkable


def produce_entries(frame: Buffer, stop_after: int) -> int | None:
    """Topics plus partitions a Produce request frame (payload, size prefix removed) names,
    counted up to `stop_after + 1`; None for another API or a frame that cannot be walked."""
    buf = memoryview(frame)
    if buf.ndim != 1 or buf.itemsize != 1:
        buf = buf.cast("B")
    if len(buf) < 8:
        return None
    api_key, version = struct.unpack_from(">hh", buf, 0)
    if api_key != PRODUCE:
        return None
    walker = _Walker(buf, 8)
    try:
        walker.skip(max(walker.int16(), 0))  # client_id: int16 length in every header
        flexible = version >= _FLEXIBLE_FROM
        if flexible:
            walker.flexible = True
            walker.skip_tags()  # header v2
        if version >= 3:
            walker.skip_string()  # transactional_id
        walker.skip(6)  # acks, timeout_ms
        count = 0
        for _ in range(walker.array()):
            count += 1
            if count > stop_after:
                return count
            walker.skip_string()
            for _ in range(walker.array()):
                count += 1
                if count > stop_after:
                    return count
                walker.skip(4)
                walker.skip_bytes()
                walker.skip_tags()
            walker.skip_tags()
        return count
    except _Unwalkable:
        return None
