"""The metadata interface both backends implement, named once.

:class:`MetadataBackend` lists the calls the processes make on a metadata store: the SQLite
backend (:class:`metadata.store.MetadataStore`, the embedded default) and the PostgreSQL
backend (:class:`metadata.postgres.PostgresMetadataStore`, for a cluster) both satisfy it, with
the same semantics (the SQLite store's docstrings are the reference; the conformance suite
tests/conformance/test_metadata_backends.py runs every behaviour against both). Nothing
SQL-shaped crosses it: arguments and results are the record types of :mod:`metadata.store`.
Calls block; event loops reach them through :class:`metadata.async_store.AsyncMetadata`.
:func:`open_store` picks the backend from what it is given: a ``postgresql://`` URL or a path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Final, Literal, Protocol, runtime_checkable

from metadata.store import (
    AgentInfo,
    BatchResult,
    BlockLocation,
    BlockRewrite,
    CleanState,
    CommitBlock,
    DeadSegment,
    DeletedTopic,
    GroupOffset,
    MetadataStore,
    PartitionState,
    QueryCheckpoint,
    RetentionMove,
    SegmentUsage,
    StorageReport,
    StoredBlock,
    TopicInfo,
)
from metadata.transactions import AbortedTxn


@runtime_checkable
class MetadataBackend(Protocol):
    """A metadata store: topics, partitions, the segment index, group offsets, producers,
    consumer-group state and the agent registry."""

    #: Where the metadata lives (a file path, or a URL without its password), for messages.
    path: str
    #: How long a call waits for locks and connections before a retriable error.
    busy_timeout_ms: int

    def close(self) -> None: ...

    def create_topic(
        self, name: str, partitions: int, config: dict[str, str] | None = None
    ) -> TopicInfo: ...

    def get_topic(self, name: str) -> TopicInfo | None: ...

    def get_topic_by_id(self, topic_id: int) -> TopicInfo | None: ...

    def get_topic_by_uuid(self, uuid: bytes) -> TopicInfo | None: ...

    def list_topics(self) -> list[TopicInfo]: ...

    def delete_topic(self, name: str) -> TopicInfo: ...

    def list_deleted_topics(self) -> list[DeletedTopic]: ...

    def add_partitions(self, name: str, total: int) -> TopicInfo: ...

    def update_topic_config(self, name: str, config: dict[str, str]) -> TopicInfo: ...

    def alter_topic_config(
        self,
        name: str,
        set: Mapping[str, str],
        delete: Sequence[str],
        validate_only: bool = False,
        *,
        append: Mapping[str, Sequence[str]] | None = None,
        subtract: Mapping[str, Sequence[str]] | None = None,
    ) -> TopicInfo: ...

    def get_partition(self, topic_id: int, partition: int) -> PartitionState | None: ...

    def list_partitions(self, topic_id: int) -> list[PartitionState]: ...

    def set_log_start_offset(
        self, topic_id: int, partition: int, offset: int
    ) -> PartitionState: ...

    def commit_segment(
        self, key: str, size: int, blocks: list[CommitBlock]
    ) -> list[list[BatchResult]]: ...

    def commit_segments(
        self, segments: Sequence[tuple[str, int, list[CommitBlock]]]
    ) -> list[list[list[BatchResult]]]: ...

    def aborted_transactions(
        self, topic_id: int, partition: int, start: int, end: int
    ) -> list[AbortedTxn]: ...

    def find_blocks(
        self, topic_id: int, partition: int, offset: int, limit: int = 8
    ) -> list[BlockLocation]: ...

    def find_block_by_timestamp(
        self, topic_id: int, partition: int, timestamp: int, from_offset: int
    ) -> BlockLocation | None: ...

    def find_max_timestamp_block(
        self, topic_id: int, partition: int, from_offset: int
    ) -> BlockLocation | None: ...

    def enforce_retention(
        self, now_ms: int, max_partitions: int = 10_000
    ) -> list[RetentionMove]: ...

    def mark_unreferenced_segments(self, now_ms: int) -> int: ...

    def dead_segments(self, dead_before_ms: int, limit: int = 1000) -> list[DeadSegment]: ...

    def forget_segments(self, keys: Sequence[str]) -> int: ...

    def known_segments(self, keys: Sequence[str]) -> set[str]: ...

    def live_segments(self, after_segment_id: int = 0, limit: int = 1000) -> list[SegmentUsage]: ...

    def blocks_of_segments(self, segment_ids: Sequence[int]) -> list[StoredBlock]: ...

    def partition_blocks(
        self, topic_id: int, partition: int, from_offset: int = 0, limit: int = 1000
    ) -> list[StoredBlock]: ...

    def replace_blocks(self, rewrite: BlockRewrite, now_ms: int) -> bool: ...

    def get_clean_offsets(self, topic_id: int) -> dict[int, CleanState]: ...

    def set_clean_offset(
        self, topic_id: int, partition: int, clean_offset: int, now_ms: int
    ) -> None: ...

    def expire_producer_state(self, idle_before_ms: int, limit: int = 10_000) -> int: ...

    def expirable_offset_groups(self, commit_before_ms: int) -> list[str]: ...

    def expire_group_offsets(self, group_id: str, commit_before_ms: int) -> int: ...

    def storage_report(self, now_ms: int, small_object_bytes: int) -> StorageReport: ...

    def put_catalog_entry(
        self, kind: str, name: str, definition: bytes, now_ms: int, *, replace: bool = False
    ) -> None: ...

    def swap_catalog_entry(
        self, kind: str, name: str, definition: bytes, now_ms: int, *, expect: bytes | None
    ) -> bool: ...

    def get_catalog_entry(self, kind: str, name: str) -> bytes | None: ...

    def list_catalog_entries(self, kind: str) -> list[tuple[str, bytes]]: ...

    def delete_catalog_entry(
        self, kind: str, name: str, *, expect: bytes | None = None
    ) -> bool: ...

    def claim_query(self, name: str, now_ms: int) -> QueryCheckpoint: ...

    def commit_query_step(
        self,
        name: str,
        generation: int,
        step: int,
        payload: bytes,
        segment: tuple[str, int, list[CommitBlock]] | None,
        now_ms: int,
    ) -> list[list[BatchResult]]: ...

    def get_query_checkpoint(self, name: str) -> QueryCheckpoint | None: ...

    def list_query_checkpoints(self) -> list[QueryCheckpoint]: ...

    def delete_query_checkpoint(self, name: str) -> bool: ...

    def commit_offsets(
        self,
        group: str,
        offsets: Sequence[tuple[int, int, int, str] | tuple[int, int, int, str, int]],
    ) -> list[bool]: ...

    def commit_offset(
        self,
        group: str,
        topic_id: int,
        partition: int,
        offset: int,
        metadata: str,
        leader_epoch: int = -1,
    ) -> None: ...

    def get_offset(self, group: str, topic_id: int, partition: int) -> tuple[int, str] | None: ...

    def get_offset_epoch(
        self, group: str, topic_id: int, partition: int
    ) -> tuple[int, str, int] | None: ...

    def list_group_offsets(self, group: str) -> list[GroupOffset]: ...

    def delete_group_offsets(
        self, group: str, partitions: Sequence[tuple[int, int]] | None = None
    ) -> int: ...

    def list_offset_groups(self) -> list[str]: ...

    def allocate_producer_id(self) -> tuple[int, int]: ...

    def save_group_state(self, group_id: str, generation: int, state: bytes) -> bool: ...

    def load_group_state(self, group_id: str) -> tuple[int, bytes] | None: ...

    def delete_group_state(self, group_id: str) -> None: ...

    def list_group_states(self) -> list[str]: ...

    def register_agent(
        self,
        agent_id: str,
        kafka_host: str,
        kafka_port: int,
        grpc_address: str,
        zone: str,
        lease_ms: int,
    ) -> AgentInfo: ...

    def heartbeat_agent(self, agent_id: str, lease_ms: int) -> list[AgentInfo]: ...

    def list_agents(self) -> list[AgentInfo]: ...

    def deregister_agent(self, agent_id: str) -> None: ...

    def forget_agent(self, agent_id: str) -> bool: ...


#: URL schemes that select the PostgreSQL backend.
POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


def is_postgres_target(target: str | os.PathLike[str]) -> bool:
    """True if ``target`` names a PostgreSQL database (a ``postgresql://`` URL)."""
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def open_store(
    target: str | os.PathLike[str],
    *,
    busy_timeout_ms: int = 10_000,
    synchronous: Literal["FULL", "NORMAL"] = "FULL",
    forbid_loop_calls: bool | None = None,
) -> MetadataBackend:
    """Open the metadata store ``target`` names: a ``postgresql://`` URL opens
    :class:`~metadata.postgres.PostgresMetadataStore` (``synchronous`` does not apply: the
    server's settings decide), anything else is the path of the SQLite file
    (:class:`~metadata.store.MetadataStore`)."""
    if is_postgres_target(target):
        from metadata.postgres import PostgresMetadataStore  # psycopg only when asked for

        return PostgresMetadataStore(
            os.fspath(target), busy_timeout_ms=busy_timeout_ms, forbid_loop_calls=forbid_loop_calls
        )
    return MetadataStore(
        target,
        busy_timeout_ms=busy_timeout_ms,
        synchronous=synchronous,
        forbid_loop_calls=forbid_loop_calls,
    )
