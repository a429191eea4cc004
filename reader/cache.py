"""Memory LRU cache of segment blocks, bounded in bytes.

Entries are keyed by (segment key, byte offset of the block). A block arrives either encoded
(straight from the uploader's committed segment: decoded on first use) or decoded (after a
range GET). Decoded bytes replace the encoded entry, so each block is decoded at most once
while it stays cached.

Metrics (per block, never per record): `streamhouse_reader_cache_hits_total`,
`streamhouse_reader_cache_misses_total` and the `streamhouse_reader_cache_bytes` gauge, all
labelled cache="blocks".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from streamhouse import metrics
from streamhouse.segment import decode_block

BlockKey = tuple[str, int]


def keepable(block: memoryview, container_bytes: int) -> bytes | memoryview:
    """`block`, a view of a larger buffer of `container_bytes`, as the cache should keep it:
    the view itself when it is at least half of that buffer (no copy; the cache then holds
    at most twice the bytes it counts), else a copy that does not keep the buffer alive."""
    return block if 2 * len(block) >= container_bytes else bytes(block)


class BlockCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[BlockKey, tuple[bool, bytes | memoryview]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._hit_counter = metrics.child(metrics.CACHE_HITS, "blocks")
        self._miss_counter = metrics.child(metrics.CACHE_MISSES, "blocks")
        self._bytes_gauge = metrics.child(metrics.CACHE_BYTES, "blocks")
        #: Called with the key of each entry evicted to make room (not on replacement).
        self.on_evict: Callable[[BlockKey], None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: BlockKey) -> bool:
        return key in self._entries

    def put_encoded(self, key: BlockKey, block: bytes | memoryview) -> None:
        self._put(key, False, block)

    def put_decoded(self, key: BlockKey, data: bytes) -> None:
        self._put(key, True, data)

    def get(self, key: BlockKey) -> bytes | None:
        """The decoded block, or None when it is not cached (raises SegmentCorruptError)."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            self._miss_counter.inc()
            return None
        self.hits += 1
        self._hit_counter.inc()
        self._entries.move_to_end(key)
        decoded, data = entry
        if not decoded:
            data = decode_block(data, view=True)
            self._put(key, True, data)
        return data

    def _put(self, key: BlockKey, decoded: bool, data: bytes | memoryview) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.size_bytes -= len(old[1])
        if len(data) > self.capacity_bytes:
            return
        self._entries[key] = (decoded, data)
        self.size_bytes += len(data)
        while self.size_bytes > self.capacity_bytes:
            gone, (_, evicted) = self._entries.popitem(last=False)
            self.size_bytes -= len(evicted)
            if self.on_evict is not None:
                self.on_evict(gone)
        self._bytes_gauge.set(self.size_bytes)
