"""Conformance suite for the streaming-SQL catalog of the metadata store (``put_catalog_entry``,
``get_catalog_entry``, ``list_catalog_entries``, ``delete_catalog_entry``), on both backends."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from metadata import CatalogEntryExistsError, MetadataError, MetadataStore
from metadata.async_store import AsyncMetadata
from metadata.postgres import PostgresMetadataStore

Store = MetadataStore | PostgresMetadataStore
Opener = Callable[..., Store]


def test_entries_are_kept_by_kind_and_name(store: Store) -> None:
    assert store.get_catalog_entry("stream", "clicks") is None
    assert store.list_catalog_entries("stream") == []
    store.put_catalog_entry("stream", "clicks", b'{"v": 1}', 100)
    store.put_catalog_entry("table", "clicks", b"\x00\xff binary", 101)  # another kind
    store.put_catalog_entry("stream", "Views", b"", 102)
    store.put_catalog_entry("stream", "alerts", bytearray(b"a"), 103)
    assert store.get_catalog_entry("stream", "clicks") == b'{"v": 1}'
    assert store.get_catalog_entry("table", "clicks") == b"\x00\xff binary"
    assert store.get_catalog_entry("stream", "Views") == b""
    # Sorted by code point: upper case first.
    assert store.list_catalog_entries("stream") == [
        ("Views", b""),
        ("alerts", b"a"),
        ("clicks", b'{"v": 1}'),
    ]
    assert store.list_catalog_entries("table") == [("clicks", b"\x00\xff binary")]
    assert store.list_catalog_entries("query") == []


def test_an_existing_entry_is_kept_unless_replaced(store: Store) -> None:
    store.put_catalog_entry("view", "v", b"one", 1)
    with pytest.raises(CatalogEntryExistsError, match="view 'v' is already in the catalog"):
        store.put_catalog_entry("view", "v", b"two", 2)
    assert isinstance(CatalogEntryExistsError("x"), MetadataError)
    assert store.get_catalog_entry("view", "v") == b"one"
    store.put_catalog_entry("view", "v", b"two", 3, replace=True)
    assert store.get_catalog_entry("view", "v") == b"two"
    store.put_catalog_entry("view", "w", b"new", 4, replace=True)  # replace creates too
    assert store.list_catalog_entries("view") == [("v", b"two"), ("w", b"new")]


def test_delete_removes_one_entry(store: Store) -> None:
    store.put_catalog_entry("query", "q1", b"1", 1)
    store.put_catalog_entry("query", "q2", b"2", 1)
    assert store.delete_catalog_entry("query", "q1") is True
    assert store.delete_catalog_entry("query", "q1") is False
    assert store.delete_catalog_entry("stream", "q2") is False
    assert store.list_catalog_entries("query") == [("q2", b"2")]
    store.put_catalog_entry("query", "q1", b"again", 2)  # the name is free again
    assert store.get_catalog_entry("query", "q1") == b"again"


def test_catalog_calls_refuse_bad_arguments(store: Store) -> None:
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: store.put_catalog_entry("", "n", b"", 1), "catalog kind"),
        (lambda: store.put_catalog_entry("k" * 65, "n", b"", 1), "catalog kind"),
        (lambda: store.put_catalog_entry("k", "", b"", 1), "catalog name"),
        (lambda: store.put_catalog_entry("k", "n" * 256, b"", 1), "catalog name"),
        (lambda: store.put_catalog_entry("k", 5, b"", 1), "catalog name"),  # type: ignore[arg-type]
        (lambda: store.put_catalog_entry("k", "n", "text", 1), "bytes"),  # type: ignore[arg-type]
        (lambda: store.put_catalog_entry("k", "n", b"x" * (1024 * 1024 + 1), 1), "limit"),
        (lambda: store.put_catalog_entry("k", "n", b"", -1), "now_ms"),
        (lambda: store.get_catalog_entry("", "n"), "catalog kind"),
        (lambda: store.list_catalog_entries(""), "catalog kind"),
        (lambda: store.delete_catalog_entry("k", ""), "catalog name"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert store.list_catalog_entries("k") == []


def test_concurrent_creates_of_one_name_store_exactly_one(open_store: Opener) -> None:
    """Four stores create the same entry at once: one succeeds, three are told it exists."""
    stores = [open_store() for _ in range(4)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(stores))

    def create(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            stores[i].put_catalog_entry("table", "t", f"{i}".encode(), i)
            outcomes.append("stored")
        except CatalogEntryExistsError:
            outcomes.append("exists")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(stores))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert sorted(outcomes) == ["exists", "exists", "exists", "stored"]
    (entry,) = stores[0].list_catalog_entries("table")
    assert entry[0] == "t" and entry[1] in {b"0", b"1", b"2", b"3"}


def test_async_metadata_wraps_the_catalog(open_store: Opener) -> None:
    store = open_store(forbid_loop_calls=True)

    async def main() -> None:
        meta = AsyncMetadata(store)
        await meta.put_catalog_entry("stream", "s", b"def", 5)
        with pytest.raises(CatalogEntryExistsError):
            await meta.put_catalog_entry("stream", "s", b"other", 6)
        await meta.put_catalog_entry("stream", "s", b"new", 7, replace=True)
        assert await meta.get_catalog_entry("stream", "s") == b"new"
        assert await meta.list_catalog_entries("stream") == [("s", b"new")]
        assert await meta.delete_catalog_entry("stream", "s") is True
        assert await meta.get_catalog_entry("stream", "s") is None
        await meta.close()

    asyncio.run(main())
