"""The topic and partition states Kafka Produce needs, kept for a bounded time.

A Produce needs its topics (id, partition count, config) and the log start offset of each
partition it writes (the response's ``log_start_offset``). Reading them costs one metadata
thread hop per request (``AsyncMetadata.topic_states``); at 100-byte records that hop was
about a third of ingest's CPU per GB produced. This cache answers a request from states
read earlier when every topic it names is fresh, else it reads all of them in one hop as
before.

Staleness is bounded and invalidated as follows (an entry is the ``TopicState`` of one
topic name and the set of partitions it was read for):

- An entry is used for at most ``TTL_S`` (1 s) after the read that filled it *started*
  (monotonic clock), so a change made elsewhere (another agent, ``streamctl``, the lifecycle
  process moving a log start offset) is seen by a Produce at most 1 s plus one metadata read
  later, the same bound as the ACL cache (streamhouse/acl_cache.py).
- Every topic write through this process's ``AsyncMetadata`` (create, delete, add
  partitions, config changes, log start offset) bumps ``AsyncMetadata.topics_changed`` when
  it finishes; an entry read before the bump is not used. A topic deleted, recreated,
  repartitioned or reconfigured through this agent's Kafka or gRPC admin APIs (or
  auto-created) is therefore seen by the very next Produce, exactly as without a cache.
- A Produce whose pipeline outcome is UNKNOWN_TOPIC_OR_PARTITION (the commit found the
  topic id gone: deleted through another agent) drops the entry of that topic name, so the
  client's retry reads the topic again.
- A topic that is not found is not cached (the next Produce reads again, and may
  auto-create it).

Nothing acknowledged depends on the cache: a Produce routed with a stale topic id is
refused at commit (``UNKNOWN_TOPIC_OR_PARTITION``, the topic id no longer exists), and a
stale partition count only refuses partitions the client may retry. Validation, ACL checks
and the acknowledgement contract are unchanged.

Memory: at most ``MAX_ENTRIES`` names; past that, expired entries are dropped, and if all
are fresh the whole cache is cleared (it only saves reads).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from typing import NamedTuple

from metadata.async_store import AsyncMetadata, TopicLookup, TopicState

#: Longest time a Produce uses topic states read earlier (see the module docstring).
TTL_S = 1.0
#: Names kept at most (see the module docstring).
MAX_ENTRIES = 4096


class _Entry(NamedTuple):
    state: TopicState
    partitions: frozenset[int]  # the partitions it was read for
    read_at: float  # clock() when the read started
    generation: int  # AsyncMetadata.topics_changed when the read started


class ProduceTopicCache:
    """Topic states for Produce requests of one ``AsyncMetadata`` (see the module rules)."""

    def __init__(self, meta: AsyncMetadata, clock: Callable[[], float] = time.monotonic) -> None:
        self._meta = meta
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def cached(
        self, wanted: Sequence[tuple[str, Sequence[int]]], now: float
    ) -> list[TopicState] | None:
        """The states of every (topic name, partitions) in ``wanted`` if all are fresh, else
        None (sans-I/O: ``now`` is the clock's time)."""
        generation = self._meta.topics_changed
        out = []
        entries = self._entries
        for name, partitions in wanted:
            entry = entries.get(name)
            if (
                entry is None
                or entry.generation != generation
                or now - entry.read_at >= TTL_S
                or not entry.partitions.issuperset(partitions)
            ):
                return None
            out.append(entry.state)
        return out

    async def topic_states(
        self, wanted: Sequence[tuple[str, Sequence[int]]]
    ) -> list[TopicState | None]:
        """Per (topic name, partitions): its state (None when the topic does not exist), from
        the cache when every name is fresh, else read in one metadata call and kept."""
        now = self._clock()
        hit = self.cached(wanted, now)
        if hit is not None:
            return list(hit)
        generation = self._meta.topics_changed
        lookups = []
        for name, partitions in wanted:
            entry = self._entries.get(name)
            asked = set(partitions)
            if entry is not None and entry.generation == generation:
                asked |= entry.partitions  # keep what the entry covered
            lookups.append(TopicLookup(name, None, sorted(asked)))
        found = await self._meta.topic_states(lookups)
        if len(self._entries) >= MAX_ENTRIES:
            self._prune(now)
        for lookup, state in zip(lookups, found, strict=True):
            if state is None:
                self._entries.pop(lookup.name, None)
            else:
                # Only partitions that exist are remembered: a client naming ever new bad
                # partitions must not grow the entry (and every later lookup) without bound.
                known = frozenset(p for p in lookup.partitions if p in state.partitions)
                self._entries[lookup.name] = _Entry(state, known, now, generation)
        return found

    def forget(self, name: str) -> None:
        """Drops ``name``'s entry (its topic id was found gone)."""
        self._entries.pop(name, None)

    def _prune(self, now: float) -> None:
        self._entries = {
            name: entry for name, entry in self._entries.items() if now - entry.read_at < TTL_S
        }
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()


_caches: weakref.WeakKeyDictionary[AsyncMetadata, ProduceTopicCache] = weakref.WeakKeyDictionary()


def cache_for(meta: AsyncMetadata) -> ProduceTopicCache:
    """The process's cache for ``meta`` (one per metadata connection)."""
    cache = _caches.get(meta)
    if cache is None:
        cache = _caches[meta] = ProduceTopicCache(meta)
    return cache
