"""BlockCache: LRU by bytes, encoded blocks decoded once on first use."""

from __future__ import annotations

import pytest

from reader.cache import BlockCache
from streamhouse.recordbatch import encode_batch
from streamhouse.segment import SegmentCorruptError, SegmentWriter, read_index


def real_block(n: int = 50, compressible: bool = True) -> tuple[bytes, bytes]:
    """(encoded block as stored in a segment, its decoded batch bytes)."""
    value = b"a" * 40 if compressible else None
    batch = encode_batch(
        [b"key"] * n,
        [value if value is not None else bytes([i % 256]) * 3 for i in range(n)],
        [[] for _ in range(n)],
        list(range(n)),
    )
    w = SegmentWriter()
    w.add_block(1, 0, [batch], 1, n, 0, n - 1)
    obj, _ = w.finish()
    (entry,) = read_index(obj)
    return obj[entry.offset : entry.offset + entry.length], batch


def test_empty_cache() -> None:
    """A new cache is empty and a lookup is a miss."""
    c = BlockCache(100)
    assert len(c) == 0
    assert c.size_bytes == 0
    assert c.get(("s", 0)) is None
    assert (c.hits, c.misses) == (0, 1)
    assert ("s", 0) not in c


def test_put_decoded_then_get() -> None:
    """Decoded data comes back as is and counts as a hit."""
    c = BlockCache(100)
    c.put_decoded(("s", 8), b"hello")
    assert ("s", 8) in c
    assert c.get(("s", 8)) == b"hello"
    assert (c.hits, c.misses) == (1, 0)
    assert c.size_bytes == 5


def test_keys_distinguish_segment_and_offset() -> None:
    """(segment key, byte offset) pairs are separate entries."""
    c = BlockCache(100)
    c.put_decoded(("a", 0), b"1")
    c.put_decoded(("a", 8), b"22")
    c.put_decoded(("b", 0), b"333")
    assert [c.get(k) for k in (("a", 0), ("a", 8), ("b", 0))] == [b"1", b"22", b"333"]
    assert c.size_bytes == 6
    assert len(c) == 3


def test_encoded_block_is_decoded_and_replaced_on_get() -> None:
    """An encoded block decodes on first get; the decoded bytes replace it (size updated)."""
    block, decoded = real_block()
    assert len(block) < len(decoded)  # LZ4 paid off, so the two sizes differ
    c = BlockCache(10_000)
    c.put_encoded(("seg", 8), block)
    assert c.size_bytes == len(block)
    assert c.get(("seg", 8)) == decoded
    assert c.size_bytes == len(decoded)
    assert len(c) == 1
    # Decoded once: the entry is now stored decoded.
    assert c._entries[("seg", 8)] == (True, decoded)
    assert c.get(("seg", 8)) == decoded
    assert c.hits == 2


def test_each_block_is_decoded_at_most_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated gets of an encoded block call decode_block only the first time."""
    import reader.cache

    calls: list[int] = []
    real = reader.cache.decode_block

    def counting(block: bytes, **options: bool) -> bytes:
        calls.append(len(block))
        return real(block, **options)

    monkeypatch.setattr(reader.cache, "decode_block", counting)
    block, decoded = real_block()
    c = BlockCache(10_000)
    c.put_encoded(("seg", 8), block)
    assert [c.get(("seg", 8)) for _ in range(3)] == [decoded] * 3
    assert calls == [len(block)]


def test_raw_stored_block_decodes_too() -> None:
    """A block stored without compression (codec raw) also decodes to its batches."""
    block, decoded = real_block(n=3, compressible=False)
    c = BlockCache(10_000)
    c.put_encoded(("seg", 8), block)
    assert c.get(("seg", 8)) == decoded


def test_corrupt_encoded_block_raises() -> None:
    """A damaged encoded block raises SegmentCorruptError on get."""
    block, _decoded = real_block()
    damaged = bytearray(block)
    damaged[-1] ^= 0xFF
    c = BlockCache(10_000)
    c.put_encoded(("seg", 8), bytes(damaged))
    with pytest.raises(SegmentCorruptError):
        c.get(("seg", 8))


def test_decoded_block_larger_than_capacity_is_returned_but_not_kept() -> None:
    """If the decoded bytes do not fit, get still returns them and the entry goes away."""
    block, decoded = real_block()
    c = BlockCache(len(block) + 10)
    assert len(decoded) > c.capacity_bytes
    c.put_encoded(("seg", 8), block)
    assert c.get(("seg", 8)) == decoded
    assert ("seg", 8) not in c
    assert c.size_bytes == 0


def test_lru_evicts_least_recently_used_first() -> None:
    """Over capacity, the least recently used entries go first; get refreshes recency."""
    c = BlockCache(30)
    c.put_decoded(("a", 0), b"a" * 10)
    c.put_decoded(("b", 0), b"b" * 10)
    c.put_decoded(("c", 0), b"c" * 10)
    assert c.size_bytes == 30
    assert c.get(("a", 0)) == b"a" * 10  # a is now most recent; b is the oldest
    c.put_decoded(("d", 0), b"d" * 10)
    assert ("b", 0) not in c
    assert [k for k in (("a", 0), ("c", 0), ("d", 0)) if k in c] == [("a", 0), ("c", 0), ("d", 0)]
    assert c.size_bytes == 30
    # A 15-byte entry pushes out the two oldest (c then a) but keeps d.
    c.put_decoded(("e", 0), b"e" * 15)
    assert ("c", 0) not in c
    assert ("a", 0) not in c
    assert ("d", 0) in c and ("e", 0) in c
    assert c.size_bytes == 25


def test_eviction_order_follows_insertion_without_gets() -> None:
    """Without gets, entries leave in insertion order."""
    c = BlockCache(4)
    for name in "abcdef":
        c.put_decoded((name, 0), b"x")
    assert [name for name in "abcdef" if (name, 0) in c] == ["c", "d", "e", "f"]
    assert c.size_bytes == 4


def test_put_refreshes_recency_and_replaces_size() -> None:
    """Putting an existing key replaces its bytes, fixes the size and makes it most recent."""
    c = BlockCache(20)
    c.put_decoded(("a", 0), b"a" * 5)
    c.put_decoded(("b", 0), b"b" * 5)
    c.put_decoded(("a", 0), b"A" * 8)
    assert c.size_bytes == 13
    assert len(c) == 2
    c.put_decoded(("c", 0), b"c" * 10)  # 23 > 20: evicts b (older than the re-put a)
    assert ("b", 0) not in c
    assert c.get(("a", 0)) == b"A" * 8
    assert c.size_bytes == 18


def test_oversize_entry_is_ignored() -> None:
    """An entry larger than the whole cache is not stored and evicts nothing."""
    c = BlockCache(10)
    c.put_decoded(("a", 0), b"a" * 6)
    c.put_decoded(("big", 0), b"x" * 11)
    assert ("big", 0) not in c
    assert ("a", 0) in c
    assert c.size_bytes == 6


def test_oversize_put_drops_the_old_value_of_that_key() -> None:
    """Replacing a key with an oversize value removes the key (never serves stale bytes)."""
    c = BlockCache(10)
    c.put_decoded(("a", 0), b"old")
    c.put_decoded(("a", 0), b"n" * 11)
    assert ("a", 0) not in c
    assert c.size_bytes == 0


def test_entry_exactly_capacity_fits() -> None:
    """An entry of exactly capacity bytes is kept (and evicts everything else)."""
    c = BlockCache(10)
    c.put_decoded(("a", 0), b"a")
    c.put_decoded(("full", 0), b"f" * 10)
    assert ("full", 0) in c
    assert ("a", 0) not in c
    assert c.size_bytes == 10


def test_decoding_on_get_can_evict_others() -> None:
    """When the decoded block is bigger than the encoded one, older entries make room."""
    block, decoded = real_block()
    c = BlockCache(len(decoded) + 5)
    c.put_decoded(("old", 0), b"o" * 10)
    c.put_encoded(("seg", 8), block)
    assert ("old", 0) in c
    assert c.get(("seg", 8)) == decoded
    assert ("old", 0) not in c
    assert ("seg", 8) in c
    assert c.size_bytes == len(decoded)


def test_size_accounting_stays_exact() -> None:
    """size_bytes always equals the sum of the cached entries' lengths."""
    c = BlockCache(100)
    for i in range(200):
        c.put_decoded((str(i % 13), i % 3), bytes(i % 37))
        if i % 5 == 0:
            c.get((str(i % 7), i % 3))
        assert c.size_bytes == sum(len(v[1]) for v in c._entries.values())
        assert c.size_bytes <= c.capacity_bytes
