"""The metadata store as the processes' event loops use it: every call runs on a worker thread.

:class:`MetadataStore` blocks (SQLite I/O, fsyncs, waiting for another writer's lock), so no
event loop may call it (DESIGN.md: "no blocking database call runs on an event loop").
:class:`AsyncMetadata` wraps one store and awaits each call on a small thread pool of its own.
It is the first step toward the narrow async metadata interface of issue 7: its methods are
what ingest, the uploader and the reader need, and the batched ones answer a whole request.

Rules:

1. Reads and writes run on separate pools, matching the store's two connections: one read
   thread (the read connection serialises anyway; in WAL mode a read never waits for a
   writer), so a read never queues behind a write stuck on another writer's lock; and
   ``write_threads`` write threads, so that many writes wait for a locked database side by
   side, each up to the store's ``busy_timeout_ms`` (more queue for a thread first).
2. A hot path pays one thread hop per request, not per partition: :meth:`topic_states`
   answers every topic and partition a produce, fetch or ListOffsets names, and
   :meth:`read_plans` gives the reader every partition's state and first blocks of a fetch.
3. Errors are the store's (:mod:`metadata.errors`), raised in the awaiting task.
4. Cancelling the awaiting task does not stop a call already running on its thread (a write
   either commits or rolls back whole; its result is dropped).
5. The store is opened and closed on a worker thread too (:meth:`open`, :meth:`close`):
   opening migrates the schema, which writes.
6. The agent registry calls (register, heartbeat, list, deregister, forget) run on one
   control thread of their own, so a heartbeat never queues behind segment commits waiting
   for row locks on the write threads (a late heartbeat would let the agent's lease lapse).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, NamedTuple, TypeVar

import msgspec

from metadata.interface import MetadataBackend, open_store
from metadata.store import (
    AgentInfo,
    BatchResult,
    BlockLocation,
    BlockRewrite,
    CleanState,
    CommitBlock,
    DeadSegment,
    GroupOffset,
    PartitionState,
    QueryCheckpoint,
    RetentionMove,
    SegmentUsage,
    StorageReport,
    StoredBlock,
    TopicInfo,
)
from metadata.transactions import AbortedTxn

T = TypeVar("T")

#: Write threads per store: writes waiting for a locked database wait side by side.
WRITE_THREADS = 4


class TopicLookup(NamedTuple):
    """A topic a request names, by name or else by its 16-byte Kafka id, and the partitions
    whose states the request needs (out-of-range ones are left out of the answer)."""

    name: str | None
    uuid: bytes | None = None
    partitions: Iterable[int] = ()


class TopicState(msgspec.Struct, frozen=True):
    """A topic found by :meth:`AsyncMetadata.topic_states` and the states of the partitions
    asked for that exist."""

    topic: TopicInfo
    partitions: dict[int, PartitionState]


class ReadPlan(msgspec.Struct, frozen=True):
    """Where a fetch of one partition starts: its state (None: no such partition) and up to
    ``limit`` blocks from the fetch offset on (see :meth:`MetadataStore.find_blocks`)."""

    state: PartitionState | None
    blocks: list[BlockLocation]


def _topic_states(
    store: MetadataBackend, lookups: Sequence[TopicLookup]
) -> list[TopicState | None]:
    out: list[TopicState | None] = []
    for lookup in lookups:
        topic = store.get_topic(lookup.name) if lookup.name else None
        if topic is None and lookup.uuid is not None and any(lookup.uuid):
            topic = store.get_topic_by_uuid(lookup.uuid)
        if topic is None:
            out.append(None)
            continue
        states: dict[int, PartitionState] = {}
        for partition in lookup.partitions:
            if 0 <= partition < topic.partitions and partition not in states:
                state = store.get_partition(topic.topic_id, partition)
                if state is not None:
                    states[partition] = state
        out.append(TopicState(topic, states))
    return out


def _read_plans(
    store: MetadataBackend, parts: Sequence[tuple[int, int, int]], limit: int
) -> list[ReadPlan]:
    plans = []
    for topic_id, partition, offset in parts:
        # The state first: blocks are committed with the high watermark, so the blocks read
        # after it cover at least everything below it.
        state = store.get_partition(topic_id, partition)
        if state is None or offset >= state.high_watermark:
            plans.append(ReadPlan(state, []))
        else:
            plans.append(ReadPlan(state, store.find_blocks(topic_id, partition, offset, limit)))
    return plans


def _topics_by_id(store: MetadataBackend, topic_ids: Iterable[int]) -> dict[int, TopicInfo]:
    out = {}
    for topic_id in dict.fromkeys(topic_ids):
        topic = store.get_topic_by_id(topic_id)
        if topic is not None:
            out[topic_id] = topic
    return out


class AsyncMetadata:
    """Awaitable calls on one :class:`MetadataStore`, run on this object's threads.

    ``store`` stays usable synchronously off the loop (tests, tools)."""

    def __init__(self, store: MetadataBackend, *, write_threads: int = WRITE_THREADS) -> None:
        self.store = store
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="metadata-read")
        self._writes = ThreadPoolExecutor(write_threads, thread_name_prefix="metadata-write")
        self._control = ThreadPoolExecutor(1, thread_name_prefix="metadata-control")

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = 10_000,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        forbid_loop_calls: bool | None = None,
    ) -> AsyncMetadata:
        """Open (creating and migrating) the store at ``path`` on a worker thread: an SQLite
        file, or a PostgreSQL database for a ``postgresql://`` URL
        (:func:`metadata.interface.open_store`); the arguments are :class:`MetadataStore`'s."""
        store = await asyncio.to_thread(
            functools.partial(
                open_store,
                path,
                busy_timeout_ms=busy_timeout_ms,
                synchronous=synchronous,
                forbid_loop_calls=forbid_loop_calls,
            )
        )
        return cls(store)

    async def close(self) -> None:
        """Wait for calls in flight, then close the store (off the loop)."""
        await asyncio.to_thread(self.close_blocking)

    def close_blocking(self) -> None:
        """:meth:`close` for a caller that is not on an event loop."""
        self._reads.shutdown(wait=True)
        self._writes.shutdown(wait=True)
        self._control.shutdown(wait=True)
        self.store.close()

    def _read(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._reads, functools.partial(fn, *args))

    def _write(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._writes, functools.partial(fn, *args))

    def _controlled(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._control, functools.partial(fn, *args))

    # -- topics --------------------------------------------------------------------------

    async def get_topic(self, name: str) -> TopicInfo | None:
        """The live topic called ``name``, or None (also for an empty name)."""
        if not name:
            return None
        return await self._read(self.store.get_topic, name)

    async def get_topic_by_uuid(self, uuid: bytes) -> TopicInfo | None:
        return await self._read(self.store.get_topic_by_uuid, uuid)

    async def topics_by_id(self, topic_ids: Iterable[int]) -> dict[int, TopicInfo]:
        """The live topics among ``topic_ids``, by id, in one call."""
        return await self._read(_topics_by_id, self.store, list(topic_ids))

    async def list_topics(self) -> list[TopicInfo]:
        return await self._read(self.store.list_topics)

    async def topic_states(self, lookups: Sequence[TopicLookup]) -> list[TopicState | None]:
        """Every topic of ``lookups`` (None where there is none) with the states of the
        partitions asked for, in one call: what a produce, fetch or offset request needs."""
        return await self._read(_topic_states, self.store, list(lookups))

    async def create_topic(
        self, name: str, partitions: int, config: dict[str, str] | None = None
    ) -> TopicInfo:
        return await self._write(self.store.create_topic, name, partitions, config)

    async def delete_topic(self, name: str) -> TopicInfo:
        return await self._write(self.store.delete_topic, name)

    async def add_partitions(self, name: str, total: int) -> TopicInfo:
        return await self._write(self.store.add_partitions, name, total)

    async def update_topic_config(self, name: str, config: dict[str, str]) -> TopicInfo:
        return await self._write(self.store.update_topic_config, name, config)

    async def alter_topic_config(
        self,
        name: str,
        set: Mapping[str, str],
        delete: Sequence[str],
        validate_only: bool = False,
        *,
        append: Mapping[str, Sequence[str]] | None = None,
        subtract: Mapping[str, Sequence[str]] | None = None,
    ) -> TopicInfo:
        """Changes some keys of the topic's config in one transaction (see
        :meth:`metadata.store.MetadataStore.alter_topic_config`)."""
        call = functools.partial(
            self.store.alter_topic_config,
            name,
            set,
            delete,
            validate_only,
            append=append,
            subtract=subtract,
        )
        if validate_only:
            return await self._read(call)
        return await self._write(call)

    # -- partitions and the log index -----------------------------------------------------

    async def get_partition(self, topic_id: int, partition: int) -> PartitionState | None:
        return await self._read(self.store.get_partition, topic_id, partition)

    async def list_partitions(self, topic_id: int) -> list[PartitionState]:
        return await self._read(self.store.list_partitions, topic_id)

    async def set_log_start_offset(
        self, topic_id: int, partition: int, offset: int
    ) -> PartitionState:
        return await self._write(self.store.set_log_start_offset, topic_id, partition, offset)

    async def read_plans(self, parts: Sequence[tuple[int, int, int]], limit: int) -> list[ReadPlan]:
        """For each ``(topic_id, partition, offset)`` of a fetch: the partition's state and,
        when ``offset`` is below its high watermark, up to ``limit`` blocks from ``offset``;
        all in one call."""
        return await self._read(_read_plans, self.store, list(parts), limit)

    async def aborted_transactions(
        self, topic_id: int, partition: int, start: int, end: int
    ) -> list[AbortedTxn]:
        return await self._read(self.store.aborted_transactions, topic_id, partition, start, end)

    async def find_blocks(
        self, topic_id: int, partition: int, offset: int, limit: int = 8
    ) -> list[BlockLocation]:
        return await self._read(self.store.find_blocks, topic_id, partition, offset, limit)

    async def find_block_by_timestamp(
        self, topic_id: int, partition: int, timestamp: int, from_offset: int
    ) -> BlockLocation | None:
        return await self._read(
            self.store.find_block_by_timestamp, topic_id, partition, timestamp, from_offset
        )

    async def find_max_timestamp_block(
        self, topic_id: int, partition: int, from_offset: int
    ) -> BlockLocation | None:
        return await self._read(
            self.store.find_max_timestamp_block, topic_id, partition, from_offset
        )

    async def commit_segment(
        self, key: str, size: int, blocks: list[CommitBlock]
    ) -> list[list[BatchResult]]:
        return await self._write(self.store.commit_segment, key, size, blocks)

    async def commit_segments(
        self, segments: Sequence[tuple[str, int, list[CommitBlock]]]
    ) -> list[list[list[BatchResult]]]:
        """Several segments in one transaction (see :meth:`MetadataStore.commit_segments`)."""
        return await self._write(self.store.commit_segments, list(segments))

    # -- data lifecycle -------------------------------------------------------------------

    async def enforce_retention(
        self, now_ms: int, max_partitions: int = 10_000
    ) -> list[RetentionMove]:
        """Time and size retention as of ``now_ms`` (see
        :meth:`MetadataStore.enforce_retention`)."""
        return await self._write(self.store.enforce_retention, now_ms, max_partitions)

    async def mark_unreferenced_segments(self, now_ms: int) -> int:
        return await self._write(self.store.mark_unreferenced_segments, now_ms)

    async def dead_segments(self, dead_before_ms: int, limit: int = 1000) -> list[DeadSegment]:
        return await self._read(self.store.dead_segments, dead_before_ms, limit)

    async def forget_segments(self, keys: Sequence[str]) -> int:
        return await self._write(self.store.forget_segments, list(keys))

    async def known_segments(self, keys: Sequence[str]) -> set[str]:
        return await self._read(self.store.known_segments, list(keys))

    async def live_segments(
        self, after_segment_id: int = 0, limit: int = 1000
    ) -> list[SegmentUsage]:
        return await self._read(self.store.live_segments, after_segment_id, limit)

    async def blocks_of_segments(self, segment_ids: Sequence[int]) -> list[StoredBlock]:
        return await self._read(self.store.blocks_of_segments, list(segment_ids))

    async def partition_blocks(
        self, topic_id: int, partition: int, from_offset: int = 0, limit: int = 1000
    ) -> list[StoredBlock]:
        return await self._read(
            self.store.partition_blocks, topic_id, partition, from_offset, limit
        )

    async def replace_blocks(self, rewrite: BlockRewrite, now_ms: int) -> bool:
        """Switch a rewrite's rows to its new object (see
        :meth:`MetadataStore.replace_blocks`)."""
        return await self._write(self.store.replace_blocks, rewrite, now_ms)

    async def get_clean_offsets(self, topic_id: int) -> dict[int, CleanState]:
        return await self._read(self.store.get_clean_offsets, topic_id)

    async def set_clean_offset(
        self, topic_id: int, partition: int, clean_offset: int, now_ms: int
    ) -> None:
        """Store a partition's key-compaction checkpoint (see
        :meth:`MetadataStore.set_clean_offset`)."""
        await self._write(self.store.set_clean_offset, topic_id, partition, clean_offset, now_ms)

    async def expire_producer_state(self, idle_before_ms: int, limit: int = 10_000) -> int:
        return await self._write(self.store.expire_producer_state, idle_before_ms, limit)

    async def expirable_offset_groups(self, commit_before_ms: int) -> list[str]:
        return await self._read(self.store.expirable_offset_groups, commit_before_ms)

    async def expire_group_offsets(self, group_id: str, commit_before_ms: int) -> int:
        return await self._write(self.store.expire_group_offsets, group_id, commit_before_ms)

    async def storage_report(self, now_ms: int, small_object_bytes: int) -> StorageReport:
        """What the object store holds, per topic and in total (see
        :meth:`MetadataStore.storage_report`)."""
        return await self._read(self.store.storage_report, now_ms, small_object_bytes)

    # -- the streaming-SQL catalog ----------------------------------------------------------

    async def put_catalog_entry(
        self, kind: str, name: str, definition: bytes, now_ms: int, *, replace: bool = False
    ) -> None:
        """Store a catalog entry (see :meth:`MetadataStore.put_catalog_entry`)."""
        await self._write(
            functools.partial(self.store.put_catalog_entry, replace=replace),
            kind,
            name,
            definition,
            now_ms,
        )

    async def swap_catalog_entry(
        self, kind: str, name: str, definition: bytes, now_ms: int, *, expect: bytes | None
    ) -> bool:
        """Compare-and-set a catalog entry (see :meth:`MetadataStore.swap_catalog_entry`)."""
        return await self._write(
            functools.partial(self.store.swap_catalog_entry, expect=expect),
            kind,
            name,
            definition,
            now_ms,
        )

    async def get_catalog_entry(self, kind: str, name: str) -> bytes | None:
        return await self._read(self.store.get_catalog_entry, kind, name)

    async def list_catalog_entries(self, kind: str) -> list[tuple[str, bytes]]:
        return await self._read(self.store.list_catalog_entries, kind)

    async def delete_catalog_entry(
        self, kind: str, name: str, *, expect: bytes | None = None
    ) -> bool:
        return await self._write(
            functools.partial(self.store.delete_catalog_entry, expect=expect), kind, name
        )

    # -- continuous queries' checkpoints ---------------------------------------------------

    async def claim_query(self, name: str, now_ms: int) -> QueryCheckpoint:
        """See :meth:`MetadataStore.claim_query`."""
        return await self._write(self.store.claim_query, name, now_ms)

    async def commit_query_step(
        self,
        name: str,
        generation: int,
        step: int,
        payload: bytes,
        segment: tuple[str, int, list[CommitBlock]] | None,
        now_ms: int,
    ) -> list[list[BatchResult]]:
        """See :meth:`MetadataStore.commit_query_step` (raises QueryFencedError when this
        runner lost the query)."""
        return await self._write(
            self.store.commit_query_step, name, generation, step, payload, segment, now_ms
        )

    async def get_query_checkpoint(self, name: str) -> QueryCheckpoint | None:
        return await self._read(self.store.get_query_checkpoint, name)

    async def list_query_checkpoints(self) -> list[QueryCheckpoint]:
        return await self._read(self.store.list_query_checkpoints)

    async def delete_query_checkpoint(self, name: str) -> bool:
        return await self._write(self.store.delete_query_checkpoint, name)

    # -- consumer groups and producers ----------------------------------------------------

    async def commit_offsets(
        self,
        group: str,
        offsets: Sequence[tuple[int, int, int, str] | tuple[int, int, int, str, int]],
    ) -> list[bool]:
        """Entries ``(topic_id, partition, offset, metadata[, leader_epoch])``; see
        :meth:`MetadataStore.commit_offsets`."""
        return await self._write(self.store.commit_offsets, group, offsets)

    async def commit_offset(
        self,
        group: str,
        topic_id: int,
        partition: int,
        offset: int,
        metadata: str,
        leader_epoch: int = -1,
    ) -> None:
        await self._write(
            self.store.commit_offset, group, topic_id, partition, offset, metadata, leader_epoch
        )

    async def get_offset(self, group: str, topic_id: int, partition: int) -> tuple[int, str] | None:
        return await self._read(self.store.get_offset, group, topic_id, partition)

    async def get_offset_epoch(
        self, group: str, topic_id: int, partition: int
    ) -> tuple[int, str, int] | None:
        """``(offset, metadata, leader_epoch)`` or None; see
        :meth:`MetadataStore.get_offset_epoch`."""
        return await self._read(self.store.get_offset_epoch, group, topic_id, partition)

    async def list_group_offsets(self, group: str) -> list[GroupOffset]:
        return await self._read(self.store.list_group_offsets, group)

    async def group_offsets(
        self, group: str, partitions: Mapping[int, Iterable[int]] | None = None
    ) -> dict[tuple[int, int], GroupOffset]:
        """``group``'s commits by ``(topic_id, partition)``: all of them, or those of the
        given partitions (topic id -> partition numbers); one call."""
        committed = await self._read(self.store.list_group_offsets, group)
        if partitions is None:
            return {(c.topic_id, c.partition): c for c in committed}
        wanted = {(t, p) for t, ps in partitions.items() for p in ps}
        return {
            (c.topic_id, c.partition): c for c in committed if (c.topic_id, c.partition) in wanted
        }

    async def delete_group_offsets(
        self, group: str, partitions: Sequence[tuple[int, int]] | None = None
    ) -> int:
        return await self._write(self.store.delete_group_offsets, group, partitions)

    async def list_offset_groups(self) -> list[str]:
        return await self._read(self.store.list_offset_groups)

    async def allocate_producer_id(self) -> tuple[int, int]:
        return await self._write(self.store.allocate_producer_id)

    # -- consumer-group state ---------------------------------------------------------------

    async def save_group_state(self, group_id: str, generation: int, state: bytes) -> bool:
        """Store the group's state blob unless a newer generation is stored (then False)."""
        return await self._write(self.store.save_group_state, group_id, generation, state)

    async def load_group_state(self, group_id: str) -> tuple[int, bytes] | None:
        return await self._read(self.store.load_group_state, group_id)

    async def delete_group_state(self, group_id: str) -> None:
        await self._write(self.store.delete_group_state, group_id)

    async def list_group_states(self) -> list[str]:
        return await self._read(self.store.list_group_states)

    # -- the agent registry (rule 6: on the control thread) ---------------------------------

    async def register_agent(
        self,
        agent_id: str,
        kafka_host: str,
        kafka_port: int,
        grpc_address: str,
        zone: str,
        lease_ms: int,
    ) -> AgentInfo:
        return await self._controlled(
            self.store.register_agent,
            agent_id,
            kafka_host,
            kafka_port,
            grpc_address,
            zone,
            lease_ms,
        )

    async def heartbeat_agent(self, agent_id: str, lease_ms: int) -> list[AgentInfo]:
        return await self._controlled(self.store.heartbeat_agent, agent_id, lease_ms)

    async def list_agents(self) -> list[AgentInfo]:
        return await self._controlled(self.store.list_agents)

    async def deregister_agent(self, agent_id: str) -> None:
        await self._controlled(self.store.deregister_agent, agent_id)

    async def forget_agent(self, agent_id: str) -> bool:
        return await self._controlled(self.store.forget_agent, agent_id)
