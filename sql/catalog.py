"""The SQL catalog: declared streams and tables, kept in metadata.

An entry is ``(kind, name) -> definition bytes``; ``kind`` is ``'stream'`` or ``'table'``
(later ``'view'``, ``'query'``). The definition is a ``Relation`` encoded as msgspec JSON:

=========  ==============================================================================
field      meaning
=========  ==============================================================================
kind       ``"stream"`` (every record is a row) or ``"table"`` (latest value per key)
name       the SQL name (lower case unless it was quoted)
topic      the topic the records are read from
format     ``"json"``
columns    ``[{"name": ..., "type": ...}]``: declared columns in order; ``type`` is the
           SQL type as written, normalised (``BIGINT``, ``VARCHAR``, ``TIMESTAMP``, ...)
watermark  ``{"column": ..., "delay_ms": ...}`` or null: ``WATERMARK FOR c AS c - INTERVAL``
sql        the statement that declared it, as written
created_ms wall-clock ms of the declaration
=========  ==============================================================================

Storage: the metadata store's generic catalog calls (``put_catalog_entry`` and friends, part
of the metadata interface). Until a store has them, the entries live in one JSON file
``<data dir>/sql/catalog.json`` (written to a temporary file and renamed, under a lock file),
which serves one agent only; the class below is the one place that knows.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from metadata.errors import MetadataError

__all__ = ["Catalog", "CatalogError", "Column", "Relation", "Watermark"]

KINDS = ("stream", "table")


class CatalogError(Exception):
    """A catalog change that cannot be made (the message says why and what to do)."""


class Column(msgspec.Struct, frozen=True):
    name: str
    type: str


class Watermark(msgspec.Struct, frozen=True):
    column: str
    delay_ms: int


class Relation(msgspec.Struct, frozen=True):
    kind: str
    name: str
    topic: str
    format: str
    columns: list[Column]
    watermark: Watermark | None = None
    sql: str = ""
    created_ms: int = 0


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Relation).decode
_decode_file = msgspec.json.Decoder(dict[str, dict[str, str]]).decode


class Catalog:
    """Declared relations by kind and name, over a metadata store (``AsyncMetadata``)."""

    def __init__(self, meta: Any, data_dir: pathlib.Path) -> None:
        self.meta = meta
        self.path = data_dir / "sql" / "catalog.json"
        self._in_metadata = hasattr(meta, "put_catalog_entry")

    async def put(self, relation: Relation, *, replace: bool = False) -> None:
        """Stores ``relation``; CatalogError if a relation of that name exists and not
        ``replace``."""
        if await self.find(relation.name) is not None and not replace:
            raise CatalogError(
                f"{relation.name!r} is already declared: DROP it first, or pick another name"
            )
        data = _encode(relation)
        if self._in_metadata:
            try:
                await self.meta.put_catalog_entry(
                    relation.kind, relation.name, data, relation.created_ms, replace=replace
                )
            except MetadataError as exc:  # declared meanwhile, by another session
                raise CatalogError(f"{relation.name!r} cannot be declared: {exc}") from None
            except ValueError as exc:  # a name or definition over the store's limits
                raise CatalogError(f"{relation.name!r} cannot be declared: {exc}") from None
            return
        with self._locked() as entries:
            entries.setdefault(relation.kind, {})[relation.name] = data.decode()
            self._save(entries)

    async def get(self, kind: str, name: str) -> Relation | None:
        if self._in_metadata:
            data = await self.meta.get_catalog_entry(kind, name)
            return None if data is None else _decode(data)
        text = self._load().get(kind, {}).get(name)
        return None if text is None else _decode(text.encode())

    async def find(self, name: str) -> Relation | None:
        """The stream or table called ``name``, if any."""
        for kind in KINDS:
            found = await self.get(kind, name)
            if found is not None:
                return found
        return None

    async def list(self, kind: str) -> list[Relation]:
        if self._in_metadata:
            rows = await self.meta.list_catalog_entries(kind)
            return [_decode(data) for _name, data in rows]
        return [_decode(t.encode()) for _n, t in sorted(self._load().get(kind, {}).items())]

    async def delete(self, kind: str, name: str) -> bool:
        if self._in_metadata:
            return bool(await self.meta.delete_catalog_entry(kind, name))
        with self._locked() as entries:
            gone = entries.get(kind, {}).pop(name, None) is not None
            if gone:
                self._save(entries)
            return gone

    # -- the interim file ----------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            return _decode_file(self.path.read_bytes())
        except FileNotFoundError:
            return {}

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, str]]]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self._load()

    def _save(self, entries: dict[str, dict[str, str]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode(entries))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
