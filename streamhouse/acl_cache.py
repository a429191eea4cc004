"""A process's ACLs: the catalog's bindings (kind ``acl``) as an Authorizer snapshot.

Used by ingest (its Kafka and gRPC listeners) and by the sql service (its gRPC listener).
Every process reads the whole kind and keeps it for at most ``REFRESH_S`` seconds, so an ACL
created or deleted through any agent, `streamctl acl` or the metadata store directly applies
everywhere within that time (plus one metadata read); the process that changed them applies
the change at once. One cache per metadata connection serves all of a process's front doors.
A refresh that fails keeps the last snapshot (logged); with none yet, the request fails.

Which operation each request needs is the front doors' business: ingest/kafka/authorize.py,
ingest/grpc_acl.py and sql/acl.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable

from metadata.async_store import AsyncMetadata
from streamhouse.acl import (
    CATALOG_KIND,
    AclBinding,
    AclFilter,
    Authorizer,
    decode_binding,
    encode_binding,
    parse_super_users,
)
from streamhouse.config import Settings

log = logging.getLogger("streamhouse.acl")

#: Longest time an agent decides on ACLs older than the catalog's (README "Security").
REFRESH_S = 1.0


class AclCache:
    """The current :class:`Authorizer` of an agent, reloaded from the catalog when older than
    ``refresh_s``; ACL changes go through it so this agent sees them at once."""

    def __init__(
        self,
        settings: Settings,
        meta: AsyncMetadata,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = settings.authorizer == "acl"
        self._meta = meta
        self._super_users = parse_super_users(settings.super_users)
        self._allow_if_none = settings.allow_everyone_if_no_acl_found
        self._refresh_s = refresh_s
        self._clock = clock
        self._snapshot: Authorizer | None = None
        self._loaded_at = float("-inf")
        # Bumped by every local change: a reload that began before it may not count as fresh.
        self._generation = 0
        self._loading: asyncio.Future[Authorizer] | None = None
        self._loading_generation = -1

    async def snapshot(self) -> Authorizer:
        """The ACLs as of at most ``refresh_s`` ago, and as of after every local change."""
        current = self._snapshot
        if current is not None and self._clock() - self._loaded_at < self._refresh_s:
            return current
        # One reload at a time, shared by concurrent callers; not one begun before a change.
        if self._loading is None or self._loading_generation != self._generation:
            self._loading_generation = self._generation
            self._loading = loading = asyncio.ensure_future(self._reload(self._generation))
            loading.add_done_callback(self._loaded)
        return await asyncio.shield(self._loading)

    def _loaded(self, future: asyncio.Future[Authorizer]) -> None:
        if self._loading is future:
            self._loading = None
        if not future.cancelled():
            future.exception()  # retrieved here; the awaiting callers see it too

    async def _reload(self, generation: int) -> Authorizer:
        started = self._clock()
        try:
            bindings = await self.list_bindings()
        except Exception as exc:
            if self._snapshot is None:
                raise
            log.warning("cannot refresh the ACLs from metadata (keeping the last ones): %s", exc)
            if generation == self._generation:
                self._loaded_at = started  # tried again after refresh_s, not on every request
            return self._snapshot
        snapshot = Authorizer(bindings, self._super_users, self._allow_if_none)
        if generation == self._generation:
            self._snapshot, self._loaded_at = snapshot, started
        elif self._snapshot is None:
            self._snapshot = snapshot  # stale already: the next call reloads
        return snapshot

    def invalidate(self) -> None:
        """The next decision reloads the ACLs (from a read that begins after this call)."""
        self._generation += 1
        self._loaded_at = float("-inf")

    async def list_bindings(self, selection: AclFilter | None = None) -> list[AclBinding]:
        """The stored bindings (those ``selection`` matches), read from metadata now."""
        bindings = []
        for name, definition in await self._meta.list_catalog_entries(CATALOG_KIND):
            try:
                binding = decode_binding(definition)
            except ValueError as exc:
                log.warning("ignoring catalog entry acl/%s: %s", name, exc)
                continue
            if selection is None or selection.matches(binding):
                bindings.append(binding)
        return bindings

    async def add(self, binding: AclBinding) -> None:
        """Stores a (valid) binding; storing one that exists changes nothing."""
        name, definition = encode_binding(binding)
        await self._meta.put_catalog_entry(
            CATALOG_KIND, name, definition, int(time.time() * 1000), replace=True
        )
        self.invalidate()

    async def remove(self, selection: AclFilter) -> list[AclBinding]:
        """Deletes the bindings ``selection`` matches; returns those deleted."""
        removed = []
        for binding in await self.list_bindings(selection):
            if await self._meta.delete_catalog_entry(CATALOG_KIND, encode_binding(binding)[0]):
                removed.append(binding)
        self.invalidate()
        return removed


_CACHES: weakref.WeakKeyDictionary[AsyncMetadata, AclCache] = weakref.WeakKeyDictionary()


def acl_cache(settings: Settings, meta: AsyncMetadata) -> AclCache:
    """The one ACL cache of this metadata connection (shared by the servers of a process)."""
    cache = _CACHES.get(meta)
    if cache is None:
        cache = _CACHES[meta] = AclCache(settings, meta)
    return cache
