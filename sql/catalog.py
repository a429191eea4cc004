"""The SQL catalog: declared streams and tables, kept in the metadata store.

An entry is ``(kind, name) -> definition bytes`` in the metadata store's generic catalog
(``put/get/list/delete_catalog_entry``, both backends), so every machine pointed at the same
metadata sees the same declarations. ``kind`` is ``'stream'`` or ``'table'`` for a
declared relation, ``'query'`` for a continuous query (``sql.continuous.definition``:
``QueryDefinition`` as msgspec JSON; a materialized view is a query of kind ``view``). A
relation's definition is a ``Relation`` encoded as msgspec JSON:

=========  ==============================================================================
field      meaning
=========  ==============================================================================
kind       ``"stream"`` (every record is a row) or ``"table"`` (latest value per key)
name       the SQL name (lower case unless it was quoted)
topic      the topic the records are read from
format     ``"json"``
columns    ``[{"name": ..., "type": ..., "not_null": true?}]``: declared columns in order;
           ``type`` is the SQL type as written, normalised (``BIGINT``, ``VARCHAR``,
           ``TIMESTAMP``, ...); ``not_null`` only when declared ``NOT NULL``
watermark  ``{"column": ..., "delay_ms": ...}`` or null: ``WATERMARK FOR c AS c - INTERVAL``
sql        the statement that declared it, as written
created_ms wall-clock ms of the declaration
=========  ==============================================================================

Streams, tables and materialized views share one namespace: a name is declared at most once
over them (``CREATE STREAM out AS SELECT`` is a query named ``out`` plus the stream ``out``
it declares over its output topic).
"""

from __future__ import annotations

import msgspec

from metadata.async_store import AsyncMetadata
from metadata.errors import MetadataError
from sql.continuous.definition import (
    QUERY_CATALOG_KIND,
    QueryDefinition,
    decode_definition,
    encode_definition,
)

__all__ = ["KINDS", "Catalog", "CatalogError", "Column", "Relation", "Watermark"]

KINDS = ("stream", "table")


class CatalogError(Exception):
    """A catalog change that cannot be made (the message says why and what to do)."""


class Column(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    type: str
    not_null: bool = False  # a record whose value lacks it (or has null) does not match


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


class Catalog:
    """Declared relations by kind and name, over a metadata store."""

    def __init__(self, meta: AsyncMetadata) -> None:
        self.meta = meta

    async def put(self, relation: Relation) -> None:
        """Declares ``relation``; CatalogError if a relation of that name exists (of either
        kind) or the store refuses it."""
        existing = await self.find(relation.name)
        if existing is not None:
            raise CatalogError(
                f"{existing.kind} {relation.name!r} already exists (over topic "
                f"{existing.topic!r}): DROP {existing.kind.upper()} {relation.name} first, or "
                "pick another name"
            )
        try:
            await self.meta.put_catalog_entry(
                relation.kind, relation.name, _encode(relation), relation.created_ms
            )
        except MetadataError as exc:  # declared meanwhile by another session, or unavailable
            raise CatalogError(f"{relation.kind} {relation.name!r} not declared: {exc}") from None
        except ValueError as exc:  # a name or definition over the store's limits
            raise CatalogError(f"{relation.kind} {relation.name!r} not declared: {exc}") from None

    async def get(self, kind: str, name: str) -> Relation | None:
        try:
            data = await self.meta.get_catalog_entry(kind, name)
        except ValueError:  # a name no entry can have (too long): not declared
            return None
        return None if data is None else _decode(data)

    async def find(self, name: str) -> Relation | None:
        """The stream or table called ``name``, if any."""
        for kind in KINDS:
            found = await self.get(kind, name)
            if found is not None:
                return found
        return None

    async def list(self, kind: str) -> list[Relation]:
        """The relations of ``kind``, by name."""
        return sorted(
            (_decode(data) for _name, data in await self.meta.list_catalog_entries(kind)),
            key=lambda r: r.name,
        )

    async def delete(self, kind: str, name: str) -> bool:
        try:
            return await self.meta.delete_catalog_entry(kind, name)
        except ValueError:
            return False

    # -- continuous queries (kind "query") ------------------------------------------------

    async def put_query(self, definition: QueryDefinition) -> None:
        """Stores a query's definition; CatalogError if one of that name exists."""
        if await self.get_query(definition.name) is not None:
            raise CatalogError(
                f"query {definition.name!r} already exists: DROP QUERY {definition.name} "
                "first, or pick another name"
            )
        try:
            await self.meta.put_catalog_entry(
                QUERY_CATALOG_KIND,
                definition.name,
                encode_definition(definition),
                definition.created_ms,
            )
        except (MetadataError, ValueError) as exc:
            raise CatalogError(f"query {definition.name!r} not stored: {exc}") from None

    async def get_query(self, name: str) -> QueryDefinition | None:
        try:
            data = await self.meta.get_catalog_entry(QUERY_CATALOG_KIND, name)
        except ValueError:
            return None
        return None if data is None else decode_definition(data)

    async def list_queries(self) -> list[QueryDefinition]:
        """Every continuous query, by name."""
        entries = await self.meta.list_catalog_entries(QUERY_CATALOG_KIND)
        return sorted((decode_definition(data) for _n, data in entries), key=lambda d: d.name)

    async def delete_query(self, name: str) -> bool:
        try:
            return await self.meta.delete_catalog_entry(QUERY_CATALOG_KIND, name)
        except ValueError:
            return False
