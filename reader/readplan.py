"""Read planning for cold blocks (sans-I/O): which byte range of a segment object to GET, and
how to cut the bytes that came back into verified blocks.

A segment object holds one block per partition (`streamhouse/segment.py` has the byte layout).
A catch-up read of N partitions written together needs the N blocks of every object in turn;
a range GET of each block alone costs N object-store round trips per object. So a cold block
is read with one *window* GET that covers it and its neighbours, and every block the window
holds whole is cached, so the other partitions' fetches hit.

The window rule (`window_for`), for a wanted block at ``[offset, offset + length)`` and the
setting ``window_bytes`` (``read_window_bytes``; 0 turns windows off):

- ``window_bytes`` is 0: exactly the block (one range GET of its bytes).
- the block ends within the object's first ``window_bytes``: ``[0, window_bytes)``. Segments
  the segmenter writes are at most ``max_segment_bytes`` (8 MiB by default, below the 16 MiB
  default window), so this is the whole object, index and footer included; the store returns
  fewer bytes when the object is shorter.
- otherwise (a large rewritten object): ``[offset, offset + max(length, window_bytes))``, the
  block and what follows it.

So no GET is ever larger than ``max(window_bytes, length)``, however large the object: a
huge object never becomes a huge GET for one small block.

Cutting (`split_blocks`): blocks lie back to back from byte ``HEADER_SIZE`` to the index. From
a known block boundary (``HEADER_SIZE`` for a window starting at 0, the wanted block's offset
otherwise) each 20-byte block header gives the next boundary. A block is taken only when its
header is sane (known codec, reserved bytes zero, a non-zero raw length) and whole within the
window, and its stored bytes' xxh3-64 matches the header; the walk stops at the first block
that is not (the index after the last block, the end of the window, or a corrupt block). So
nothing unverified enters the cache: a corrupt block is never cached from a window, and the
fetch that wants it reads it alone and fails with the checksum error
(`streamhouse.segment.decode_block`).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import xxhash

from reader.cache import keepable
from streamhouse.segment import BLOCK_HEADER_SIZE, HEADER_SIZE

__all__ = ["Window", "split_blocks", "window_for"]

_BLOCK_HEADER = struct.Struct("<B3xIIQ")  # codec, raw_length, stored_length, xxh3-64
_KNOWN_CODECS = (0, 1)
_MAGIC = b"SHSG"


class Window(NamedTuple):
    """One range GET: ``length`` bytes from ``start`` (fewer when the object ends first), and
    the first block boundary inside it."""

    start: int
    length: int
    first_block: int


def window_for(offset: int, length: int, window_bytes: int) -> Window:
    """The range GET that loads the block at ``[offset, offset + length)`` (module rules)."""
    if offset < 0 or length <= 0:
        raise ValueError(f"block at {offset} of {length} bytes: not a block")
    if window_bytes <= 0:
        return Window(offset, length, offset)
    if offset + length <= window_bytes:
        return Window(0, window_bytes, HEADER_SIZE)
    return Window(offset, max(length, window_bytes), offset)


def split_blocks(data: bytes | memoryview, window: Window) -> dict[int, bytes | memoryview]:
    """The verified whole blocks of ``data`` (the bytes a GET of ``window`` returned), keyed by
    their byte offset in the object; each value is the block as stored, header included."""
    view = memoryview(data)
    end = len(view)
    found: dict[int, bytes | memoryview] = {}
    pos = window.first_block - window.start
    if window.start == 0 and bytes(view[:4]) != _MAGIC:
        return found  # not a segment object: take nothing from it
    while pos >= 0 and pos + BLOCK_HEADER_SIZE <= end:
        codec, raw_length, stored_length, checksum = _BLOCK_HEADER.unpack_from(view, pos)
        stop = pos + BLOCK_HEADER_SIZE + stored_length
        if (
            codec not in _KNOWN_CODECS
            or view[pos + 1 : pos + 4] != b"\x00\x00\x00"
            or raw_length == 0
            or stop > end
            or xxhash.xxh3_64_intdigest(view[pos + BLOCK_HEADER_SIZE : stop]) != checksum
        ):
            break
        found[window.start + pos] = keepable(view[pos:stop], end)
        pos = stop
    return found
