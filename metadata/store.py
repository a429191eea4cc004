"""The metadata store: topics, partitions, the segment index, group offsets, producer state.

Each process (ingest, uploader, reader) opens its own :class:`MetadataStore` on the same SQLite
file. The file is in WAL mode, so readers never block the writer and see the last committed
state; writers serialise on SQLite's write lock and wait for it up to the busy timeout instead of
failing. Every write runs in one ``BEGIN IMMEDIATE`` transaction, so it either happens entirely
or not at all, and is durable once the call returns (``synchronous=FULL`` by default).

Busy, locked and full databases (rules):

1. A write takes SQLite's write lock at ``BEGIN IMMEDIATE``, before it reads or changes
   anything; in WAL mode nothing later in the transaction waits for another connection. So
   a busy or locked database is met only there, and retrying means retrying that statement.
2. It is retried until ``busy_timeout_ms`` after the call started: SQLite's busy handler waits
   with its own backoff, and the cases where SQLite refuses to wait (``SQLITE_BUSY`` with no
   handler call, ``SQLITE_BUSY_RECOVERY``, ``SQLITE_LOCKED``) are retried here with
   exponential backoff (1 ms doubling to 50 ms). Waiting for this object's own thread lock
   counts against the same bound.
3. Past the bound the call raises :class:`MetadataUnavailableError` with ``REQUEST_TIMED_OUT``
   (retriable); a full disk (``SQLITE_FULL``) or an I/O error raises it with
   ``KAFKA_STORAGE_ERROR`` (retriable) at once. Either way the transaction is rolled back, so
   nothing changed and the caller may retry the whole call. The process stays up.
4. The calls block (apsw releases the GIL while SQLite works): processes call writes from a
   worker thread, never on an event loop, since they can wait on a lock.
5. Reads use a second connection of their own, so a read never queues behind a write of
   the same store that waits for the lock: in WAL mode a read does not wait for writers.
   Reads still do disk I/O, so processes make them off the loop too
   (:class:`metadata.async_store.AsyncMetadata` runs every call on worker threads).
6. With the ``debug_loop_calls`` setting (``STREAMHOUSE_DEBUG_LOOP_CALLS=1``; the test
   stacks set it), every call made on a thread that is running an asyncio event loop,
   opening and closing included, raises :class:`LoopCallError` instead of blocking it.

A store object may be shared by threads (reads are serialised by one lock, writes by
another), but the usual pattern is one store per process.

Data lifecycle (the lifecycle process's calls; schema in :mod:`metadata.migrations`,
version 3): a segment is LIVE while a ``segment_blocks`` row refers to it and DEAD from the
moment the last one goes (``segments.dead_since_ms``). Rows go by retention
(:meth:`MetadataStore.enforce_retention`, which marks with the ``now_ms`` it is given),
DeleteRecords (:meth:`MetadataStore.set_log_start_offset`) and
:meth:`MetadataStore.delete_topic` (both mark in the same transaction, with the wall clock):
the segments they empty are marked eagerly. A segment committed with only duplicate batches
never had a row; :meth:`MetadataStore.mark_unreferenced_segments` marks it (and anything
any other path left unmarked), so it is the safety net each lifecycle pass runs. A dead
segment is listed by :meth:`MetadataStore.dead_segments`; after the grace period the job
deletes its object and then the row (:meth:`MetadataStore.forget_segments`, which never
forgets a live one). :meth:`MetadataStore.known_segments` tells the orphan scan which object
keys have a row. Every one of these calls is idempotent.

Rewrites (schema version 4): the lifecycle's compaction steps copy the live blocks of
objects into new ones and switch the index with :meth:`MetadataStore.replace_blocks`, one
transaction that either swaps every replaced row for the new object's rows or, when any of
them changed meanwhile (retention, DeleteRecords, delete_topic, another rewrite), changes
nothing but recording the new object already dead, so no offset is ever lost or indexed
twice. Rows may then hold fewer records than their span (key compaction keeps offsets) and a
partition's rows may leave gaps; readers find the first row ending after an offset, so a
fetch from a removed offset starts at the next record kept. :meth:`MetadataStore.live_segments`,
:meth:`MetadataStore.blocks_of_segments` and :meth:`MetadataStore.partition_blocks` say what
to rewrite; ``clean_offsets`` holds key compaction's checkpoint per partition;
:meth:`MetadataStore.storage_report` sums up the object store; the expiry calls drop idle
producer state and long-idle groups' offsets; the ``catalog`` table keeps streaming SQL's
named definitions.

Sizes (schema version 5): a block row keeps ``byte_length`` (the stored block in its object,
maybe LZ4-compressed: what the object store holds and rewrites copy) and ``raw_length`` (its
record batches' bytes, as a consumer receives them: what retention.bytes counts, as Kafka
counts a log's size). Commits take it from the block headers (``CommitBlock.raw_length``),
rewrites from the blocks they build (``NewBlock.raw_length``); 0 (not known) stores
``byte_length`` in its place, as the upgrade does for older rows.

Continuous queries (schema version 6): a runner of streaming SQL query ``name`` first claims
it (:meth:`MetadataStore.claim_query`, which bumps the row's ``generation``), then commits each
step with :meth:`MetadataStore.commit_query_step`: ONE transaction that checks the row is still
at its generation and at the previous step (else :class:`QueryFencedError`, nothing changed),
commits the step's output segment exactly as :meth:`MetadataStore.commit_segment` does (its
internals, shared), refuses the whole step if a block's partition does not exist, and stores
the new step and payload (the SQL layer's checkpoint, opaque here). So the output log and the
checkpoint that says how far the inputs were read never disagree, and of two runners of one
query only the newest can commit. A dropped query's row stays as a tombstone of its
generation (:meth:`MetadataStore.delete_query_checkpoint`). Group offsets keep the committed
leader epoch (``GroupOffset.leader_epoch``, :meth:`MetadataStore.get_offset_epoch`; -1 when
not given), a column added in the same version.

Transactions (schema version 7; rules in :mod:`metadata.transactions`): the segment commit
also applies transactional batches (open the producer's transaction on the partition at their
first offset: ``open_txns``) and control batches (end it; an ABORT adds an ``aborted_txns``
row), in its one transaction. :attr:`PartitionState.last_stable_offset` is read with the high
watermark; :meth:`MetadataStore.aborted_transactions` lists what a read_committed fetch
needs. Retention, DeleteRecords and topic deletion drop the rows they make useless.

Topic configs: :meth:`MetadataStore.alter_topic_config` changes some keys in one transaction
(IncrementalAlterConfigs, ``streamctl topic alter-config``), so two alterations of different
keys at the same moment both stay; :meth:`MetadataStore.update_topic_config` replaces the
whole config (AlterConfigs).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, NamedTuple

import apsw
import msgspec

from metadata import migrations
from metadata.errors import (
    AgentUnknownError,
    CatalogEntryExistsError,
    DuplicateSegmentError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    MetadataError,
    MetadataUnavailableError,
    OffsetOutOfRangeError,
    QueryFencedError,
    TopicExistsError,
    UnknownTopicError,
)
from metadata.transactions import AbortedTxn, TxnLog
from streamhouse.errors import ErrorCode
from streamhouse.topic_config import TOPIC_CONFIGS, TopicConfigError, validate_topic_config

MAX_TOPIC_NAME_LENGTH: Final = 249
MAX_PARTITIONS: Final = 10_000
#: How many recent batches per producer and partition are kept for duplicate detection (Kafka).
PRODUCER_BATCH_WINDOW: Final = 5
#: BatchRef.attributes bit of a transactional batch; BatchRef.control_type of a COMMIT marker
#: (streamhouse.recordbatch's TRANSACTIONAL_MASK and CONTROL_COMMIT).
TRANSACTIONAL_BIT: Final = 0x10
CONTROL_COMMIT: Final = 1
#: Most aborted transactions one read_committed fetch of a partition lists.
MAX_ABORTED_LISTED: Final = 10_000

UNKNOWN_TOPIC_OR_PARTITION: Final = "UNKNOWN_TOPIC_OR_PARTITION"
OUT_OF_ORDER_SEQUENCE_NUMBER: Final = "OUT_OF_ORDER_SEQUENCE_NUMBER"
INVALID_PRODUCER_EPOCH: Final = "INVALID_PRODUCER_EPOCH"

#: Environment variable: "1" makes a store refuse calls made on an event loop (rule 6).
DEBUG_LOOP_CALLS_ENV: Final = "STREAMHOUSE_DEBUG_LOOP_CALLS"

_LEGAL_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")
_SEQ_MASK = 0x7FFFFFFF  # Kafka sequences are non-negative int32 that wrap to 0


# --------------------------------------------------------------------------- records


class TopicInfo(msgspec.Struct, frozen=True):
    """A live topic. ``uuid`` is the 16-byte Kafka topic id."""

    topic_id: int
    name: str
    uuid: bytes
    partitions: int
    config: dict[str, str]
    created_ms: int


class PartitionState(msgspec.Struct, frozen=True):
    """A partition's readable range: offsets ``log_start_offset`` .. ``high_watermark - 1``.

    ``last_stable_offset`` is the first offset of its oldest open transaction, or the high
    watermark when none is open (read_committed consumers read below it)."""

    topic_id: int
    partition: int
    log_start_offset: int
    high_watermark: int
    last_stable_offset: int


class BatchRef(msgspec.Struct, frozen=True):
    """What :meth:`MetadataStore.commit_segment` needs to know about one RecordBatch.

    ``producer_id < 0`` means a non-idempotent batch (no sequence checks). A transactional
    batch (``attributes & 0x10``) opens its producer's transaction on the partition if none
    is open; a control batch (``control_type >= 0``, base sequence -1, no sequence checks)
    ends it (see "Transactions" in the module docstring).
    """

    record_count: int
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1
    #: the batch header's transactional (0x10) and control (0x20) bits
    attributes: int = 0
    #: a control batch's marker: 0 ABORT, 1 COMMIT (-1: a data batch)
    control_type: int = -1


class CommitBlock(msgspec.Struct, frozen=True):
    """One partition's consecutive batches inside a segment object, in log order.

    ``byte_offset``/``byte_length`` locate the stored block (its header included) in the
    object; ``raw_length`` is the block's raw length (its header's ``raw_length``: the bytes
    of its record batches, what retention.bytes counts, as Kafka counts a log's size); 0 when
    the caller does not know it, which stores ``byte_length`` in its place.
    """

    topic_id: int
    partition: int
    byte_offset: int
    byte_length: int
    max_timestamp: int
    batches: list[BatchRef]
    raw_length: int = 0


class BatchResult(msgspec.Struct, frozen=True):
    """Outcome of one batch: its base offset (``-1`` on error) and a Kafka error name or None.

    A deduplicated batch has ``error=None``, ``duplicate=True`` and the base offset it got when
    first committed; it takes no new offsets.
    """

    base_offset: int
    error: str | None = None
    duplicate: bool = False


class BlockLocation(msgspec.Struct, frozen=True):
    """Where offsets ``base_offset`` .. ``end_offset - 1`` of a partition are stored.

    ``skipped_batches`` are ordinals of batches inside the block bytes that got no offsets and
    must be skipped by readers; the remaining batches take consecutive offsets from
    ``base_offset``.
    """

    segment_key: str
    byte_offset: int
    byte_length: int
    base_offset: int
    end_offset: int
    record_count: int
    max_timestamp: int
    skipped_batches: tuple[int, ...]


class GroupOffset(msgspec.Struct, frozen=True):
    """A committed consumer-group offset. ``leader_epoch`` is the leader epoch the consumer
    committed with it (Kafka's OffsetCommit ``committed_leader_epoch``), -1 when unknown."""

    topic_id: int
    partition: int
    offset: int
    metadata: str
    commit_ms: int
    leader_epoch: int = -1


class QueryCheckpoint(msgspec.Struct, frozen=True):
    """A continuous query's checkpoint row (:meth:`MetadataStore.claim_query`,
    :meth:`MetadataStore.commit_query_step`).

    ``generation`` is the fencing token: every claim bumps it, and a step commit must carry
    the current one. ``step`` counts the committed steps (0 before the first commit);
    ``payload`` is opaque here (the SQL layer's ``CheckpointState`` msgpack; ``b""`` before
    the first commit); ``updated_ms`` is when the row last changed (a claim or a step).
    """

    name: str
    generation: int
    step: int
    payload: bytes
    updated_ms: int


class DeletedTopic(msgspec.Struct, frozen=True):
    """Bookkeeping left behind by :meth:`MetadataStore.delete_topic` for the lifecycle job."""

    topic_id: int
    name: str
    uuid: bytes
    partitions: int
    deleted_ms: int


class AgentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One agent of the registry (see :meth:`MetadataStore.register_agent`). Times are
    milliseconds since the epoch by the store's clock; ``alive`` is ``lease_until_ms > now``
    at the instant the row was read."""

    agent_id: str
    node_id: int
    kafka_host: str
    kafka_port: int
    grpc_address: str
    zone: str
    started_at_ms: int
    heartbeat_at_ms: int
    lease_until_ms: int
    alive: bool


class RetentionMove(msgspec.Struct, frozen=True):
    """What :meth:`MetadataStore.enforce_retention` did to one partition: its log start
    moved from ``old_log_start`` to ``new_log_start`` (equal when only block rows left below
    an earlier DeleteRecords were removed) and ``blocks_removed`` block rows holding
    ``bytes_removed`` bytes (the sum of their ``byte_length``) were deleted."""

    topic_id: int
    partition: int
    old_log_start: int
    new_log_start: int
    blocks_removed: int
    bytes_removed: int


class DeadSegment(msgspec.Struct, frozen=True):
    """A committed segment object no block row refers to any more, dead since
    ``dead_since_ms``: nobody can look it up again, so once the grace period has passed since
    then (longer than any read in flight), its object may be deleted and its row forgotten."""

    key: str
    size: int
    dead_since_ms: int


class StoredBlock(msgspec.Struct, frozen=True):
    """A ``segment_blocks`` row as the rewriting steps of the lifecycle see it: offsets
    ``base_offset`` .. ``end_offset - 1`` of a partition, stored at ``byte_offset`` (for
    ``byte_length`` bytes) in segment ``segment_id`` (object ``segment_key``). It holds
    ``record_count`` records (fewer than its span after key compaction) and skips the
    batches whose ordinals are in ``skipped_batches``."""

    topic_id: int
    partition: int
    base_offset: int
    end_offset: int
    segment_id: int
    segment_key: str
    byte_offset: int
    byte_length: int
    record_count: int
    max_timestamp: int
    skipped_batches: tuple[int, ...]


class SegmentUsage(msgspec.Struct, frozen=True):
    """A live segment and how much of it is still referenced: ``live_bytes`` is the sum of
    the ``byte_length`` of its ``block_count`` block rows (``size`` is the object's)."""

    segment_id: int
    key: str
    size: int
    created_ms: int
    live_bytes: int
    block_count: int


class NewBlock(msgspec.Struct, frozen=True):
    """A block row of a rewritten object (its batches follow the gap rule of
    :mod:`streamhouse.recordbatch`; no skipped batches). ``raw_length`` is the block's
    decoded length (its batches' bytes, what retention.bytes counts); 0 stores
    ``byte_length`` in its place."""

    topic_id: int
    partition: int
    base_offset: int
    end_offset: int
    byte_offset: int
    byte_length: int
    record_count: int
    max_timestamp: int
    raw_length: int = 0


class BlockRewrite(msgspec.Struct, frozen=True):
    """What :meth:`MetadataStore.replace_blocks` switches: the new object ``key`` (already
    PUT, ``size`` bytes, written at ``created_ms``), the rows it replaces as they were read
    before the rewrite, and its own rows."""

    key: str
    size: int
    created_ms: int
    replaced: tuple[StoredBlock, ...]
    blocks: tuple[NewBlock, ...]


class CleanState(msgspec.Struct, frozen=True):
    """A partition's key-compaction checkpoint: offsets below ``clean_offset`` have been
    key-compacted, last at ``cleaned_ms``."""

    clean_offset: int
    cleaned_ms: int


class TopicStorage(msgspec.Struct, frozen=True, kw_only=True):
    """One topic's share of the object store (see :meth:`MetadataStore.storage_report`)."""

    name: str
    topic_id: int
    partitions: int
    #: live segments holding at least one of its blocks
    objects: int
    #: sum of its blocks' byte_length
    bytes_live: int
    #: each of those objects' size shared out in proportion to each topic's live bytes in it
    bytes_stored: int
    records: int
    #: the smallest log start offset of its partitions
    oldest_offset: int
    #: the smallest max timestamp of its partitions' first blocks; -1 when it has no block
    oldest_timestamp_ms: int
    cleanup_policy: str
    #: compacted topics: bytes of the blocks at or after the clean offset; 0 otherwise
    dirty_bytes: int
    #: sum of its blocks' raw_length: its record batches' bytes (what retention.bytes counts)
    bytes_raw: int = 0


class StorageReport(msgspec.Struct, frozen=True, kw_only=True):
    """What the object store holds, as the metadata sees it (live segments: those with
    ``dead_since_ms`` NULL; ``small_*``: live segments below the threshold asked for;
    ``*_last_hour``: segment rows, live or dead, created in the hour up to ``now_ms``)."""

    topics: list[TopicStorage]
    objects: int
    bytes_stored: int
    bytes_live: int
    dead_objects: int
    dead_bytes: int
    small_objects: int
    small_bytes: int
    segments_created_last_hour: int
    bytes_created_last_hour: int
    #: sum of every block's raw_length (the record batches' bytes, uncompressed)
    bytes_raw: int = 0


_RESULT_UNKNOWN: Final = BatchResult(-1, UNKNOWN_TOPIC_OR_PARTITION)
_RESULT_OUT_OF_ORDER: Final = BatchResult(-1, OUT_OF_ORDER_SEQUENCE_NUMBER)
_RESULT_BAD_EPOCH: Final = BatchResult(-1, INVALID_PRODUCER_EPOCH)

_config_decoder = msgspec.json.Decoder(dict[str, str])
_skipped_decoder = msgspec.json.Decoder(tuple[int, ...])
_batches_decoder = msgspec.json.Decoder(list[tuple[int, int, int, int]])
_json_encode = msgspec.json.encode


# --------------------------------------------------------------------------- SQL

_TOPIC_COLUMNS = "topic_id, name, uuid, partitions, config, created_ms"
_SQL_TOPIC_BY_NAME = f"SELECT {_TOPIC_COLUMNS} FROM topics WHERE name = ?"
_SQL_TOPIC_BY_ID = f"SELECT {_TOPIC_COLUMNS} FROM topics WHERE topic_id = ?"
_SQL_TOPIC_BY_UUID = f"SELECT {_TOPIC_COLUMNS} FROM topics WHERE uuid = ?"
_SQL_TOPICS = f"SELECT {_TOPIC_COLUMNS} FROM topics ORDER BY name"
_SQL_INSERT_TOPIC = (
    "INSERT INTO topics (name, uuid, partitions, config, created_ms) VALUES (?, ?, ?, ?, ?)"
)
_SQL_INSERT_PARTITION = (
    "INSERT INTO partitions (topic_id, partition, log_start_offset, high_watermark) "
    "VALUES (?, ?, 0, 0)"
)
# The last stable offset is read in the same statement as the high watermark (one snapshot).
_PARTITION_COLUMNS = (
    "SELECT p.topic_id, p.partition, p.log_start_offset, p.high_watermark, "
    "coalesce((SELECT min(o.first_offset) FROM open_txns AS o WHERE o.topic_id = p.topic_id "
    "AND o.partition = p.partition), p.high_watermark) FROM partitions AS p "
)
_SQL_PARTITION = _PARTITION_COLUMNS + "WHERE p.topic_id = ? AND p.partition = ?"
_SQL_PARTITIONS = _PARTITION_COLUMNS + "WHERE p.topic_id = ? ORDER BY p.partition"
_SQL_OPEN_TXNS = (
    "SELECT o.topic_id, o.partition, o.producer_id, o.first_offset "
    "FROM json_each(?) AS j JOIN open_txns AS o ON o.topic_id = j.value ->> 0 "
    "AND o.partition = j.value ->> 1 AND o.producer_id = j.value ->> 2"
)
_SQL_CLOSE_TXN = "DELETE FROM open_txns WHERE topic_id = ? AND partition = ? AND producer_id = ?"
_SQL_OPEN_TXN = (
    "INSERT INTO open_txns (topic_id, partition, producer_id, first_offset) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (topic_id, partition, producer_id) DO UPDATE SET "
    "first_offset = excluded.first_offset"
)
_SQL_INSERT_ABORTED = (
    "INSERT INTO aborted_txns (topic_id, partition, last_offset, producer_id, first_offset) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
# Aborted transactions overlapping offsets [%s, %s) (both backends; %s placeholders).
SQL_ABORTED_TXNS = (
    "SELECT producer_id, first_offset, last_offset FROM aborted_txns "
    "WHERE topic_id = %s AND partition = %s AND last_offset >= %s AND first_offset < %s "
    "ORDER BY first_offset, producer_id LIMIT %s"
)
# Aborted transactions wholly below a partition's log start are never listed again.
SQL_DROP_ABORTED_BELOW = (
    "DELETE FROM aborted_txns WHERE topic_id = %s AND partition = %s AND last_offset < %s"
)
# Set-based lookups for commit_segment: one statement (cached) for all keys, passed as a JSON
# array of [topic_id, partition(, producer_id)] and joined against the primary key.
_SQL_HWMS = (
    "SELECT p.topic_id, p.partition, p.high_watermark FROM json_each(?) AS j "
    "JOIN partitions AS p ON p.topic_id = j.value ->> 0 AND p.partition = j.value ->> 1"
)
_SQL_SET_HWM = "UPDATE partitions SET high_watermark = ? WHERE topic_id = ? AND partition = ?"
_SQL_SET_LSO = "UPDATE partitions SET log_start_offset = ? WHERE topic_id = ? AND partition = ?"
_SQL_INSERT_SEGMENT = "INSERT INTO segments (key, size, created_ms) VALUES (?, ?, ?)"
_SQL_INSERT_BLOCK = (
    "INSERT INTO segment_blocks (topic_id, partition, end_offset, base_offset, segment_id, "
    "byte_offset, byte_length, record_count, max_timestamp, skipped_batches, raw_length) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQL_FIND_BLOCKS = (
    "SELECT s.key, b.byte_offset, b.byte_length, b.base_offset, b.end_offset, b.record_count, "
    "b.max_timestamp, b.skipped_batches "
    "FROM segment_blocks AS b JOIN segments AS s ON s.segment_id = b.segment_id "
    "WHERE b.topic_id = ? AND b.partition = ? AND b.end_offset > ? "
    "ORDER BY b.end_offset LIMIT ?"
)
_SQL_BLOCK_COLUMNS = (
    "SELECT s.key, b.byte_offset, b.byte_length, b.base_offset, b.end_offset, b.record_count, "
    "b.max_timestamp, b.skipped_batches "
    "FROM segment_blocks AS b JOIN segments AS s ON s.segment_id = b.segment_id "
)
_SQL_FIND_BLOCK_BY_TIMESTAMP = (
    _SQL_BLOCK_COLUMNS + "WHERE b.topic_id = ? AND b.partition = ? AND b.end_offset > ? "
    "AND b.max_timestamp >= ? ORDER BY b.end_offset LIMIT 1"
)
_SQL_FIND_MAX_TIMESTAMP_BLOCK = (
    _SQL_BLOCK_COLUMNS + "WHERE b.topic_id = ? AND b.partition = ? AND b.end_offset > ? "
    "ORDER BY b.max_timestamp DESC, b.end_offset LIMIT 1"
)
_SQL_PRODUCER_STATES = (
    "SELECT s.topic_id, s.partition, s.producer_id, s.producer_epoch, s.batches "
    "FROM json_each(?) AS j JOIN producer_state AS s ON s.topic_id = j.value ->> 0 "
    "AND s.partition = j.value ->> 1 AND s.producer_id = j.value ->> 2"
)
_SQL_UPSERT_PRODUCER_STATE = (
    "INSERT INTO producer_state (topic_id, partition, producer_id, producer_epoch, batches, "
    "last_update_ms) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (topic_id, partition, producer_id) DO UPDATE SET "
    "producer_epoch = excluded.producer_epoch, batches = excluded.batches, "
    "last_update_ms = excluded.last_update_ms"
)
_SQL_UPSERT_OFFSET = (
    'INSERT INTO group_offsets (group_id, topic_id, partition, "offset", metadata, commit_ms, '
    "leader_epoch) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS "
    "(SELECT 1 FROM partitions WHERE topic_id = ?2 AND partition = ?3) "
    "ON CONFLICT (group_id, topic_id, partition) DO UPDATE SET "
    '"offset" = excluded."offset", metadata = excluded.metadata, commit_ms = excluded.commit_ms, '
    "leader_epoch = excluded.leader_epoch"
)
_SQL_GET_OFFSET = (
    'SELECT "offset", metadata, leader_epoch FROM group_offsets '
    "WHERE group_id = ? AND topic_id = ? AND partition = ?"
)
_SQL_GROUP_OFFSETS = (
    'SELECT topic_id, partition, "offset", metadata, commit_ms, leader_epoch FROM group_offsets '
    "WHERE group_id = ? ORDER BY topic_id, partition"
)
_SQL_ALLOCATE_PRODUCER_ID = (
    "UPDATE producer_ids SET next_producer_id = next_producer_id + 1 WHERE id = 1 "
    "RETURNING next_producer_id - 1"
)


_AGENT_COLUMNS = (
    "agent_id, node_id, kafka_host, kafka_port, grpc_address, zone, started_at_ms, "
    "heartbeat_at_ms, lease_until_ms"
)
_SQL_AGENTS = f"SELECT {_AGENT_COLUMNS} FROM agents ORDER BY node_id"
_SQL_AGENT_NODE_IDS = "SELECT agent_id, node_id FROM agents ORDER BY node_id"
_SQL_GROUP_STATE = "SELECT generation, state FROM group_states WHERE group_id = ?"


# --------------------------------------------------------------------------- helpers


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def validate_topic_name(name: object) -> str:
    """Return ``name`` if it is a legal Kafka topic name, else raise :class:`InvalidTopicError`.

    Legal: 1..249 characters of ASCII letters, digits, ``.``, ``_`` and ``-``; not ``.`` or ``..``.
    """
    if not isinstance(name, str):
        raise InvalidTopicError(f"topic name must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidTopicError("topic name is illegal: it can't be empty")
    if name in (".", ".."):
        raise InvalidTopicError(f'topic name is illegal: it can\'t be "{name}"')
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        raise InvalidTopicError(
            f"topic name is illegal: it is {len(name)} characters long, "
            f"the limit is {MAX_TOPIC_NAME_LENGTH}"
        )
    if _LEGAL_TOPIC_NAME.fullmatch(name) is None:
        raise InvalidTopicError(
            f"topic name {name!r} is illegal: it contains a character other than ASCII "
            "alphanumerics, '.', '_' and '-'"
        )
    return name


#: Longest agent id, host, gRPC address or zone accepted (characters).
MAX_AGENT_FIELD_LENGTH: Final = 255
#: Longest lease accepted: a day (a lease is normally a few heartbeats long).
MAX_LEASE_MS: Final = 86_400_000
#: Longest consumer group id whose state is accepted (characters; the group coordinator
#: answers INVALID_GROUP_ID above it), and the largest group state blob (bytes).
MAX_GROUP_ID_LENGTH: Final = 255
MAX_GROUP_STATE_BYTES: Final = 16 * 1024 * 1024
_INT64_MAX: Final = 2**63 - 1


def _check_text(what: str, value: object, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value and not empty_ok:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_AGENT_FIELD_LENGTH:
        raise ValueError(
            f"{what} is {len(value)} characters long; the limit is {MAX_AGENT_FIELD_LENGTH}"
        )
    return value


def _check_int(what: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value}")
    return value


def validate_agent(
    agent_id: object,
    kafka_host: object,
    kafka_port: object,
    grpc_address: object,
    zone: object,
    lease_ms: object,
) -> None:
    """Refuse a bad registration with ``ValueError`` saying which argument is wrong:
    ``agent_id``, ``kafka_host`` and ``grpc_address`` non-empty strings, ``zone`` a string
    ('' = none), each at most :data:`MAX_AGENT_FIELD_LENGTH` characters; ``kafka_port``
    1..65535; ``lease_ms`` 1..:data:`MAX_LEASE_MS`."""
    _check_text("agent_id", agent_id)
    _check_text("kafka_host", kafka_host)
    _check_int("kafka_port", kafka_port, 1, 65535)
    _check_text("grpc_address", grpc_address)
    _check_text("zone", zone, empty_ok=True)
    validate_lease(lease_ms)


def validate_lease(lease_ms: object) -> int:
    """``lease_ms`` if it is 1..:data:`MAX_LEASE_MS`, else ``ValueError``."""
    return _check_int("lease_ms", lease_ms, 1, MAX_LEASE_MS)


def validate_group_state(group_id: object, generation: object, state: object) -> bytes:
    """Refuse a bad group-state save with ``ValueError``; return ``state`` as bytes.
    ``group_id``: a non-empty string of at most :data:`MAX_GROUP_ID_LENGTH` characters;
    ``generation``: -1..2**63-1; ``state``: bytes-like, at most :data:`MAX_GROUP_STATE_BYTES`."""
    validate_group_id(group_id)
    _check_int("generation", generation, -1, _INT64_MAX)
    if not isinstance(state, (bytes, bytearray, memoryview)):
        raise ValueError(f"group state must be bytes, got {type(state).__name__}")
    blob = bytes(state)
    if len(blob) > MAX_GROUP_STATE_BYTES:
        raise ValueError(
            f"group state of {group_id!r} is {len(blob)} bytes; the limit is "
            f"{MAX_GROUP_STATE_BYTES}: the coordinator must keep less per group"
        )
    return blob


def validate_group_id(group_id: object) -> str:
    """``group_id`` if it is a non-empty string of at most :data:`MAX_GROUP_ID_LENGTH`
    characters, else ``ValueError``."""
    if not isinstance(group_id, str):
        raise ValueError(f"group id must be a string, got {type(group_id).__name__}")
    if not group_id or len(group_id) > MAX_GROUP_ID_LENGTH:
        raise ValueError(
            f"group id must be 1..{MAX_GROUP_ID_LENGTH} characters long, got {len(group_id)}"
        )
    return group_id


def smallest_free_node_id(taken: Sequence[int]) -> int:
    """The smallest node id >= 0 not in ``taken``."""
    used = set(taken)
    node_id = 0
    while node_id in used:
        node_id += 1
    return node_id


def agent_row(row: Sequence[Any], now_ms: int) -> AgentInfo:
    """An :class:`AgentInfo` from an ``agents`` row (columns as ``_AGENT_COLUMNS``)."""
    return AgentInfo(
        agent_id=row[0],
        node_id=row[1],
        kafka_host=row[2],
        kafka_port=row[3],
        grpc_address=row[4],
        zone=row[5],
        started_at_ms=row[6],
        heartbeat_at_ms=row[7],
        lease_until_ms=row[8],
        alive=row[8] > now_ms,
    )


def _validate_partitions(partitions: object) -> int:
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        raise InvalidPartitionsError(
            f"partition count must be an integer, got {type(partitions).__name__}"
        )
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise InvalidPartitionsError(
            f"partition count must be between 1 and {MAX_PARTITIONS}, got {partitions}"
        )
    return partitions


def _encode_config(config: Mapping[str, str] | None) -> tuple[dict[str, str], str]:
    if config is None:
        return {}, "{}"
    if not isinstance(config, Mapping):
        raise InvalidConfigError(f"topic config must be a mapping, got {type(config).__name__}")
    out: dict[str, str] = {}
    for k, v in config.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidConfigError(
                f"topic config must map str to str, got {k!r}: {type(v).__name__}"
            )
        out[k] = v
    return out, _json_encode(out).decode()


def merge_topic_config(
    current: Mapping[str, str],
    set: Mapping[str, str],
    delete: Sequence[str],
    append: Mapping[str, Sequence[str]] | None = None,
    subtract: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """The topic config :meth:`MetadataStore.alter_topic_config` stores: ``current`` with the
    keys of ``set`` set, those of ``delete`` removed (back to their defaults), the items of
    ``append`` added to list configs (once each, after the current value or the default) and
    those of ``subtract`` removed from them; every key of the result known and valid
    (:func:`streamhouse.topic_config.validate_topic_config`).

    Raises :class:`InvalidConfigError` when a key is given in more than one of the four, a
    value is not a string, or the result is not a valid config.
    """
    edits: list[str] = [*set, *delete, *(append or {}), *(subtract or {})]
    seen: dict[str, None] = {}
    for key in edits:
        if not isinstance(key, str):
            raise InvalidConfigError(f"topic config keys must be strings, got {key!r}")
        if key in seen:
            raise InvalidConfigError(
                f"topic config {key} is changed more than once in one alteration: give each "
                "key once"
            )
        seen[key] = None
    config = dict(current)
    for key in delete:
        config.pop(key, None)
    for key, value in set.items():
        if not isinstance(value, str):
            raise InvalidConfigError(
                f"topic config {key} must be given a string, got {type(value).__name__}"
            )
        config[key] = value
    for edits_of, adding in ((append or {}, True), (subtract or {}, False)):
        for key, items in edits_of.items():
            default = TOPIC_CONFIGS[key][0] if key in TOPIC_CONFIGS else ""
            values = [v for v in config.get(key, default).split(",") if v]
            for item in items:
                if not isinstance(item, str):
                    raise InvalidConfigError(
                        f"items of topic config {key} must be strings, got {item!r}"
                    )
            wanted = [v for v in items if v]
            if adding:
                values += [v for v in dict.fromkeys(wanted) if v not in values]
            else:
                values = [v for v in values if v not in wanted]
            config[key] = ",".join(values)
    try:
        return validate_topic_config(config)
    except TopicConfigError as exc:
        raise InvalidConfigError(str(exc)) from None


def _new_topic_uuid() -> bytes:
    """A random topic id, avoiding Kafka's reserved ids (zero, one) and ids whose base64 form
    starts with '-' (Kafka's ``Uuid.randomUuid`` rule, so ids never look like CLI flags)."""
    while True:
        raw = uuidlib.uuid4().bytes
        value = int.from_bytes(raw, "big")
        if value > 1 and raw[0] >> 2 != 62:  # url-safe base64 digit 62 is '-'
            return raw


def _topic(row: Sequence[object]) -> TopicInfo:
    topic_id, name, uuid, partitions, config, created_ms = row
    return TopicInfo(
        topic_id=topic_id,  # type: ignore[arg-type]
        name=name,  # type: ignore[arg-type]
        uuid=uuid,  # type: ignore[arg-type]
        partitions=partitions,  # type: ignore[arg-type]
        config=_config_decoder.decode(config),  # type: ignore[arg-type]
        created_ms=created_ms,  # type: ignore[arg-type]
    )


def _check_segment_keys(segments: Sequence[tuple[str, int, list[CommitBlock]]]) -> None:
    """Refuse (``ValueError``) a batch of segments naming one key twice."""
    keys = [key for key, _, _ in segments]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"segment keys {twice!r} appear more than once in one commit")


def _producer_keys(
    segments: Sequence[tuple[str, int, list[CommitBlock]]], hwms: Mapping[tuple[int, int], int]
) -> dict[tuple[int, int, int], _Producer | None]:
    """Every (topic_id, partition, producer_id) of an idempotent batch on an existing
    partition of ``segments``, mapped to None (state not read yet)."""
    producers: dict[tuple[int, int, int], _Producer | None] = {}
    for _, _, blocks in segments:
        for block in blocks:
            tp = (block.topic_id, block.partition)
            if tp in hwms:
                for pid in {b.producer_id for b in block.batches}:
                    if pid >= 0:
                        producers[(*tp, pid)] = None
    return producers


def txn_keys(
    segments: Sequence[tuple[str, int, list[CommitBlock]]], hwms: Mapping[tuple[int, int], int]
) -> list[tuple[int, int, int]]:
    """Every (topic_id, partition, producer_id) of a transactional or control batch on an
    existing partition of ``segments``: the open transactions a commit must read."""
    keys: dict[tuple[int, int, int], None] = {}
    for _, _, blocks in segments:
        for block in blocks:
            tp = (block.topic_id, block.partition)
            if tp in hwms:
                for b in block.batches:
                    if b.producer_id >= 0 and (b.attributes or b.control_type >= 0):
                        keys[(*tp, b.producer_id)] = None
    return list(keys)


class _Producer:
    """In-memory producer state for one (topic, partition, producer id) during a commit."""

    __slots__ = ("epoch", "batches", "dirty")

    def __init__(self, epoch: int, batches: list[tuple[int, int, int, int]]) -> None:
        self.epoch = epoch
        #: up to 5 (first_sequence, last_sequence, base_offset, record_count), oldest first
        self.batches = batches
        self.dirty = False


def assign_offsets(
    blocks: Sequence[CommitBlock],
    hwms: dict[tuple[int, int], int],
    producers: dict[tuple[int, int, int], _Producer | None],
    segment_id: int,
    txns: TxnLog | None = None,
) -> tuple[list[list[BatchResult]], list[tuple[object, ...]]]:
    """The offset assignment of :meth:`MetadataStore.commit_segment`, shared by both backends.

    ``hwms`` maps each existing (topic_id, partition) of ``blocks`` to its high watermark and is
    advanced in place; ``producers`` maps each (topic_id, partition, producer_id) met to its
    state (None: no state yet) and is updated in place (changed entries get ``dirty``);
    ``txns`` holds the open transactions of the keys :func:`txn_keys` names and is updated in
    place (``metadata.transactions``; None when no batch is transactional or control).
    Returns the per-batch results shaped like ``blocks`` and the ``segment_blocks`` rows to
    insert: (topic_id, partition, end_offset, base_offset, segment_id, byte_offset,
    byte_length, record_count, max_timestamp, skipped_batches JSON or None, raw_length).
    """
    results: list[list[BatchResult]] = []
    block_rows: list[tuple[object, ...]] = []
    for block in blocks:
        topic_id = block.topic_id
        partition = block.partition
        tp = (topic_id, partition)
        hwm = hwms.get(tp, -1)
        if hwm < 0:
            results.append([_RESULT_UNKNOWN] * len(block.batches))
            continue

        base = hwm
        block_results: list[BatchResult] = []
        skipped: list[int] = []
        for ordinal, batch in enumerate(block.batches):
            count = batch.record_count
            if count < 1:
                raise ValueError(
                    f"batch {ordinal} of block {topic_id}/{partition} has record_count {count}"
                )
            pid = batch.producer_id
            if pid < 0:
                block_results.append(BatchResult(hwm))
                hwm += count
                continue

            epoch = batch.producer_epoch
            if batch.control_type >= 0:
                # A transaction marker: no sequence; fenced only by an older epoch; a newer
                # epoch (the coordinator bumped it) resets the producer's sequence window.
                pkey = (topic_id, partition, pid)
                state = producers[pkey]
                if epoch < 0 or (state is not None and epoch < state.epoch):
                    block_results.append(_RESULT_BAD_EPOCH)
                    skipped.append(ordinal)
                    continue
                if state is not None and epoch > state.epoch:
                    state.epoch = epoch
                    state.batches = []
                    state.dirty = True
                if txns is not None:
                    txns.marker(pkey, hwm, batch.control_type == CONTROL_COMMIT)
                block_results.append(BatchResult(hwm))
                hwm += count
                continue
            first = batch.base_sequence
            if epoch < 0:
                block_results.append(_RESULT_BAD_EPOCH)
                skipped.append(ordinal)
                continue
            if first < 0:
                block_results.append(_RESULT_OUT_OF_ORDER)
                skipped.append(ordinal)
                continue
            last = (first + count - 1) & _SEQ_MASK

            pkey = (topic_id, partition, pid)
            state = producers[pkey]
            if state is None:
                state = _Producer(epoch, [])
                producers[pkey] = state
            elif epoch < state.epoch:
                block_results.append(_RESULT_BAD_EPOCH)
                skipped.append(ordinal)
                continue
            elif epoch > state.epoch:
                if first != 0:
                    block_results.append(_RESULT_OUT_OF_ORDER)
                    skipped.append(ordinal)
                    continue
                state.epoch = epoch
                state.batches = []
            else:
                prev_last = state.batches[-1][1] if state.batches else -1
                if first != (prev_last + 1) & _SEQ_MASK:
                    # Not the next batch (checked first: the common case). Kafka looks
                    # for a duplicate before the sequence check; a batch continuing the
                    # sequence cannot match a recent one, so the order is equivalent.
                    duplicate_of = -1
                    for b_first, b_last, b_base, _ in state.batches:
                        if b_first == first and b_last == last:
                            duplicate_of = b_base
                            break
                    skipped.append(ordinal)
                    if duplicate_of >= 0:
                        block_results.append(BatchResult(duplicate_of, duplicate=True))
                    else:
                        block_results.append(_RESULT_OUT_OF_ORDER)
                    continue

            state.batches.append((first, last, hwm, count))
            if len(state.batches) > PRODUCER_BATCH_WINDOW:
                del state.batches[0]
            state.dirty = True
            if txns is not None and batch.attributes & TRANSACTIONAL_BIT:
                txns.data(pkey, hwm)
            block_results.append(BatchResult(hwm))
            hwm += count

        hwms[tp] = hwm
        results.append(block_results)
        if hwm > base:
            block_rows.append(
                (
                    topic_id,
                    partition,
                    hwm,
                    base,
                    segment_id,
                    block.byte_offset,
                    block.byte_length,
                    hwm - base,
                    block.max_timestamp,
                    _json_encode(skipped).decode() if skipped else None,
                    block.raw_length if block.raw_length > 0 else block.byte_length,
                )
            )
    return results, block_rows


# --------------------------------------------------------------------------- lifecycle helpers
#
# Shared by both backends. SQL here is written with ``%s`` placeholders (PostgreSQL's); the
# SQLite store runs it through :func:`_qmarks`.

#: Topic config defaults the retention rules fall back to (streamhouse.topic_config's).
_DEFAULT_RETENTION_MS: Final = int(TOPIC_CONFIGS["retention.ms"][0])
_DEFAULT_RETENTION_BYTES: Final = int(TOPIC_CONFIGS["retention.bytes"][0])
_DEFAULT_CLEANUP_POLICY: Final = TOPIC_CONFIGS["cleanup.policy"][0]
#: Largest batch of partitions one retention transaction may scan.
MAX_RETENTION_BATCH: Final = 100_000
#: Most partitions one retention transaction drops blocks from (and so locks, on PostgreSQL).
RETENTION_WORK_BATCH: Final = 1000

# The oldest block still kept by the time rule: the first (in offset order) above the log
# start whose max timestamp is not older than the cut-off.
# A block without timestamps (max_timestamp < 0) is as old as its segment's commit (Kafka
# falls back to the segment file's modification time the same way).
_SQL_KEEP_BY_TIME = (
    "(b.max_timestamp >= {cutoff} OR (b.max_timestamp < 0 AND (SELECT s.created_ms "
    "FROM segments AS s WHERE s.segment_id = b.segment_id) >= {cutoff}))"
)
_SQL_FIRST_KEPT = (
    "SELECT b.end_offset FROM segment_blocks AS b WHERE b.topic_id = %s AND b.partition = %s "
    "AND b.end_offset > %s AND " + _SQL_KEEP_BY_TIME.format(cutoff="%s") + " "
    "ORDER BY b.end_offset LIMIT 1"
)
# The end of the last block before it (the new log start by time).
_SQL_LAST_END_BEFORE = (
    "SELECT max(end_offset) FROM segment_blocks WHERE topic_id = %s AND partition = %s "
    "AND end_offset > %s AND end_offset < %s"
)
# Kafka's size rule over the blocks above the log start: the oldest block goes while the
# partition's bytes minus its size stay >= retention.bytes. Block k (oldest first) goes iff
# total - (bytes of blocks 1..k) >= retention.bytes; the new log start is the end of the
# last such block. A block's bytes are its raw_length (its record batches' bytes, as Kafka
# counts a log segment's size), not its stored (maybe compressed) byte_length.
_SQL_BYTES_END = (
    "SELECT max(end_offset) FROM (SELECT end_offset, "
    "sum(raw_length) OVER (ORDER BY end_offset) AS upto, sum(raw_length) OVER () AS total "
    "FROM segment_blocks WHERE topic_id = %s AND partition = %s AND end_offset > %s) AS w "
    "WHERE total - upto >= %s"
)
_SQL_DROP_BLOCKS = (
    "DELETE FROM segment_blocks WHERE topic_id = %s AND partition = %s AND end_offset <= %s "
    "RETURNING segment_id, byte_length"
)
_SQL_MOVE_LOG_START = (
    "UPDATE partitions SET log_start_offset = %s WHERE topic_id = %s AND partition = %s"
)
_SQL_DEAD_SEGMENTS = (
    "SELECT key, size, dead_since_ms FROM segments WHERE dead_since_ms IS NOT NULL "
    "AND dead_since_ms <= %s ORDER BY dead_since_ms, segment_id LIMIT %s"
)


class RetentionRule(NamedTuple):
    """One topic's retention at a given now: blocks whose max timestamp is below
    ``cutoff_ms`` go (None: no time limit), and Kafka's size rule with ``max_bytes`` (None: no
    size limit). A topic without the ``delete`` cleanup policy has neither."""

    cutoff_ms: int | None
    max_bytes: int | None


def retention_rules(topics: Iterable[tuple[int, str]], now_ms: int) -> dict[int, RetentionRule]:
    """The rule of each ``(topic_id, config JSON)`` at ``now_ms``. A value that does not parse
    (configs are validated where they come in, so only a hand-edited database has one) means
    no limit: data is never dropped on a guess."""
    rules: dict[int, RetentionRule] = {}
    for topic_id, config_json in topics:
        config = _config_decoder.decode(config_json)
        policy = config.get("cleanup.policy", _DEFAULT_CLEANUP_POLICY)
        if "delete" not in policy.split(","):
            rules[topic_id] = RetentionRule(None, None)
            continue
        retention_ms = _config_int(config, "retention.ms", _DEFAULT_RETENTION_MS)
        retention_bytes = _config_int(config, "retention.bytes", _DEFAULT_RETENTION_BYTES)
        rules[topic_id] = RetentionRule(
            now_ms - retention_ms if retention_ms >= 0 else None,
            retention_bytes if retention_bytes >= 0 else None,
        )
    return rules


def _config_int(config: Mapping[str, str], key: str, default: int) -> int:
    try:
        return int(config.get(key, default))
    except ValueError:
        return -1


def retention_candidates(
    rows: Iterable[Sequence[Any]], rules: Mapping[int, RetentionRule]
) -> list[tuple[int, int]]:
    """Which partitions of a scanned batch may have something to drop. ``rows`` are
    ``(topic_id, partition, log_start_offset, first block's end_offset or None, its
    max_timestamp)``: a partition qualifies when its oldest block ends at or below the log
    start (left by DeleteRecords), is older than the time cut-off, or its topic has a size
    limit. Topics not in ``rules`` (created after the rules were read) are skipped."""
    out: list[tuple[int, int]] = []
    for topic_id, partition, log_start, first_end, first_ts in rows:
        rule = rules.get(topic_id)
        if rule is None or first_end is None:
            continue
        if (
            first_end <= log_start
            or (rule.cutoff_ms is not None and first_ts < rule.cutoff_ms)
            or rule.max_bytes is not None
        ):
            out.append((topic_id, partition))
    return out


def retention_work(
    rows: Sequence[Sequence[Any]], todo: list[tuple[int, int]], limit: int
) -> tuple[list[tuple[int, int]], bool, tuple[int, int]]:
    """Bound one retention transaction: of a scanned batch ``rows`` (in (topic_id,
    partition) order, at most ``limit``) and its candidates ``todo``, the candidates to do now
    (at most :data:`RETENTION_WORK_BATCH`, so commits never wait long for the partition
    locks), whether another transaction must follow, and the (topic_id, partition) it
    resumes after."""
    if len(todo) > RETENTION_WORK_BATCH:
        todo = todo[:RETENTION_WORK_BATCH]
        return todo, True, todo[-1]
    return todo, len(rows) >= limit, (rows[-1][0], rows[-1][1])


def retain_partition(
    q: Callable[[str, Sequence[object]], list[Any]],
    topic_id: int,
    partition: int,
    log_start: int,
    hwm: int,
    rule: RetentionRule,
) -> tuple[RetentionMove | None, set[int]]:
    """Apply ``rule`` to one partition whose row is locked (``log_start`` and ``hwm`` read
    under that lock), running statements with ``q(sql, params) -> rows``. Returns the move
    (None when nothing changed) and the ids of the segments that lost block rows."""
    new_start = log_start
    if rule.cutoff_ms is not None:
        cutoff = rule.cutoff_ms
        kept = q(_SQL_FIRST_KEPT, (topic_id, partition, log_start, cutoff, cutoff))
        bound = kept[0][0] if kept else _INT64_MAX
        last = q(_SQL_LAST_END_BEFORE, (topic_id, partition, log_start, bound))
        if last and last[0][0] is not None:
            new_start = max(new_start, int(last[0][0]))
    if rule.max_bytes is not None:
        last = q(_SQL_BYTES_END, (topic_id, partition, log_start, rule.max_bytes))
        if last and last[0][0] is not None:
            new_start = max(new_start, int(last[0][0]))
    new_start = min(new_start, hwm)  # blocks never end past the HWM; belt and braces
    dropped = q(_SQL_DROP_BLOCKS, (topic_id, partition, max(new_start, log_start)))
    if new_start > log_start:
        q(_SQL_MOVE_LOG_START, (new_start, topic_id, partition))
        q(SQL_DROP_ABORTED_BELOW, (topic_id, partition, new_start))
    if not dropped and new_start <= log_start:
        return None, set()
    move = RetentionMove(
        topic_id,
        partition,
        log_start,
        max(new_start, log_start),
        len(dropped),
        sum(int(length) for _, length in dropped),
    )
    return move, {int(segment_id) for segment_id, _ in dropped}


def check_segment_keys(keys: object) -> list[str]:
    """``keys`` as a list if it is a sequence of non-empty strings, else ``ValueError``."""
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
        raise ValueError(f"segment keys must be a sequence of strings, got {type(keys).__name__}")
    out = list(keys)
    for key in out:
        if not isinstance(key, str) or not key:
            raise ValueError(f"segment keys must be non-empty strings, got {key!r}")
    return out


def check_lifecycle_time(what: str, value: object) -> int:
    """``value`` if it is a millisecond time in 0..2**63-1, else ``ValueError``."""
    return _check_int(what, value, 0, _INT64_MAX)


#: Most rows one rewrite may replace or write, and most segment ids one lookup may name.
MAX_REWRITE_ROWS: Final = 100_000
#: The columns of a :class:`StoredBlock` (``b`` = segment_blocks, ``s`` = segments).
_STORED_BLOCK_COLUMNS: Final = (
    "b.topic_id, b.partition, b.base_offset, b.end_offset, b.segment_id, s.key, "
    "b.byte_offset, b.byte_length, b.record_count, b.max_timestamp, b.skipped_batches"
)
_SQL_PARTITION_BLOCKS: Final = (
    f"SELECT {_STORED_BLOCK_COLUMNS} FROM segment_blocks AS b "
    "JOIN segments AS s ON s.segment_id = b.segment_id "
    "WHERE b.topic_id = %s AND b.partition = %s AND b.end_offset > %s "
    "ORDER BY b.end_offset LIMIT %s"
)
# A page of live segments' usage: one statement; the page is picked first (by the primary
# key), then only its block rows are read (by segment_blocks_segment).
_SQL_LIVE_SEGMENTS: Final = (
    "SELECT s.segment_id, s.key, s.size, s.created_ms, COALESCE(sum(b.byte_length), 0), "
    "count(b.segment_id) FROM (SELECT segment_id, key, size, created_ms FROM segments "
    "WHERE dead_since_ms IS NULL AND segment_id > %s ORDER BY segment_id LIMIT %s) AS s "
    "LEFT JOIN segment_blocks AS b ON b.segment_id = s.segment_id "
    "GROUP BY s.segment_id, s.key, s.size, s.created_ms ORDER BY s.segment_id"
)


def stored_block(r: Sequence[Any]) -> StoredBlock:
    """A :class:`StoredBlock` from a row of ``_STORED_BLOCK_COLUMNS``."""
    return StoredBlock(
        topic_id=int(r[0]),
        partition=int(r[1]),
        base_offset=int(r[2]),
        end_offset=int(r[3]),
        segment_id=int(r[4]),
        segment_key=r[5],
        byte_offset=int(r[6]),
        byte_length=int(r[7]),
        record_count=int(r[8]),
        max_timestamp=int(r[9]),
        skipped_batches=_skipped_decoder.decode(r[10]) if r[10] is not None else (),
    )


def segment_usage(r: Sequence[Any]) -> SegmentUsage:
    """A :class:`SegmentUsage` from a row of ``_SQL_LIVE_SEGMENTS`` (PostgreSQL sums come
    back as Decimal)."""
    return SegmentUsage(int(r[0]), r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]))


def check_segment_ids(segment_ids: object) -> list[int]:
    """``segment_ids`` as a sorted list without repeats, if it is a sequence of at most
    :data:`MAX_REWRITE_ROWS` integers >= 1, else ``ValueError``."""
    if isinstance(segment_ids, (str, bytes)) or not isinstance(segment_ids, Sequence):
        raise ValueError(
            f"segment ids must be a sequence of integers, got {type(segment_ids).__name__}"
        )
    if len(segment_ids) > MAX_REWRITE_ROWS:
        raise ValueError(
            f"{len(segment_ids)} segment ids asked for at once; the limit is {MAX_REWRITE_ROWS}"
        )
    return sorted({_check_int("segment id", i, 1, _INT64_MAX) for i in segment_ids})


def check_rewrite(rewrite: object) -> dict[tuple[int, int], tuple[int, int]]:
    """Refuse a malformed :class:`BlockRewrite` with ``ValueError`` (a bug in the rewriting
    step, never a race); return the offset span ``[min base, max end)`` of the replaced rows
    of each ``(topic_id, partition)``.

    Refused: no replaced row; a replaced row named twice; a new row with a bad field
    (``base_offset < end_offset``, ``1 <= record_count <= end_offset - base_offset``, its bytes
    inside the object's ``size``); a new row of a partition with no replaced row, outside
    the span of that partition's replaced rows, or overlapping another new row (which also
    refuses colliding ``end_offset`` values)."""
    if not isinstance(rewrite, BlockRewrite):
        raise ValueError(f"a rewrite must be a BlockRewrite, got {type(rewrite).__name__}")
    check_segment_keys([rewrite.key])
    _check_int("rewrite size", rewrite.size, 0, _INT64_MAX)
    check_lifecycle_time("rewrite created_ms", rewrite.created_ms)
    if not rewrite.replaced:
        raise ValueError(f"rewrite {rewrite.key!r} replaces no block row")
    if len(rewrite.replaced) > MAX_REWRITE_ROWS or len(rewrite.blocks) > MAX_REWRITE_ROWS:
        raise ValueError(
            f"rewrite {rewrite.key!r} names {len(rewrite.replaced)} replaced and "
            f"{len(rewrite.blocks)} new rows; the limit is {MAX_REWRITE_ROWS} each"
        )
    spans: dict[tuple[int, int], tuple[int, int]] = {}
    seen: set[tuple[int, int, int]] = set()
    for old in rewrite.replaced:
        if not isinstance(old, StoredBlock):
            raise ValueError(f"replaced rows must be StoredBlock, got {type(old).__name__}")
        tp = (old.topic_id, old.partition)
        if (*tp, old.end_offset) in seen:
            raise ValueError(
                f"rewrite {rewrite.key!r} replaces block {tp[0]}/{tp[1]} ending at "
                f"{old.end_offset} twice"
            )
        seen.add((*tp, old.end_offset))
        lo, hi = spans.get(tp, (old.base_offset, old.end_offset))
        spans[tp] = (min(lo, old.base_offset), max(hi, old.end_offset))
    by_tp: dict[tuple[int, int], list[NewBlock]] = {}
    for new in rewrite.blocks:
        if not isinstance(new, NewBlock):
            raise ValueError(f"new rows must be NewBlock, got {type(new).__name__}")
        where = f"new block {new.topic_id}/{new.partition} [{new.base_offset}, {new.end_offset})"
        if new.base_offset < 0 or new.end_offset <= new.base_offset:
            raise ValueError(f"{where} of rewrite {rewrite.key!r} has an empty or negative span")
        if not 1 <= new.record_count <= new.end_offset - new.base_offset:
            raise ValueError(
                f"{where} of rewrite {rewrite.key!r} holds {new.record_count} records; it "
                "must hold 1 .. end_offset - base_offset"
            )
        if new.byte_offset < 0 or new.byte_length < 1:
            raise ValueError(f"{where} of rewrite {rewrite.key!r} has no bytes")
        if new.raw_length < 0:
            raise ValueError(
                f"{where} of rewrite {rewrite.key!r} has raw_length {new.raw_length}; give its "
                "decoded length (or 0 to count its stored bytes)"
            )
        if new.byte_offset + new.byte_length > rewrite.size:
            raise ValueError(
                f"{where} of rewrite {rewrite.key!r} ends at byte "
                f"{new.byte_offset + new.byte_length}, past the object's {rewrite.size} bytes"
            )
        tp = (new.topic_id, new.partition)
        if tp not in spans:
            raise ValueError(
                f"{where} of rewrite {rewrite.key!r} is in a partition none of whose rows "
                "it replaces"
            )
        lo, hi = spans[tp]
        if new.base_offset < lo or new.end_offset > hi:
            raise ValueError(
                f"{where} of rewrite {rewrite.key!r} leaves [{lo}, {hi}), the span of the "
                "rows it replaces"
            )
        by_tp.setdefault(tp, []).append(new)
    for tp, news in by_tp.items():
        news.sort(key=lambda n: (n.base_offset, n.end_offset))
        for a, b in itertools.pairwise(news):
            if b.base_offset < a.end_offset:
                raise ValueError(
                    f"new blocks [{a.base_offset}, {a.end_offset}) and [{b.base_offset}, "
                    f"{b.end_offset}) of partition {tp[0]}/{tp[1]} in rewrite "
                    f"{rewrite.key!r} overlap"
                )
    return spans


def check_kept_rows(rewrite: BlockRewrite, kept: Iterable[tuple[int, int, int, int]]) -> None:
    """Refuse (``ValueError``) new rows of ``rewrite`` that overlap a row it does not replace:
    ``kept`` are ``(topic_id, partition, base_offset, end_offset)`` of the rows left inside the
    spans of the replaced ones once those are gone."""
    by_tp: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for t, p, base, end in kept:
        by_tp.setdefault((int(t), int(p)), []).append((int(base), int(end)))
    for new in rewrite.blocks:
        for base, end in by_tp.get((new.topic_id, new.partition), ()):
            if base < new.end_offset and new.base_offset < end:
                raise ValueError(
                    f"new block {new.topic_id}/{new.partition} [{new.base_offset}, "
                    f"{new.end_offset}) of rewrite {rewrite.key!r} overlaps the block "
                    f"[{base}, {end}), which it does not replace"
                )


def new_block_rows(rewrite: BlockRewrite, segment_id: int) -> list[tuple[object, ...]]:
    """The ``segment_blocks`` rows of ``rewrite``'s new blocks, shaped like
    :func:`assign_offsets`' (no skipped batches)."""
    return [
        (
            b.topic_id,
            b.partition,
            b.end_offset,
            b.base_offset,
            segment_id,
            b.byte_offset,
            b.byte_length,
            b.record_count,
            b.max_timestamp,
            None,
            b.raw_length if b.raw_length > 0 else b.byte_length,
        )
        for b in rewrite.blocks
    ]


def unchanged(
    rewrite: BlockRewrite, current: Mapping[tuple[int, int, int], tuple[int, int]]
) -> bool:
    """Whether every replaced row of ``rewrite`` still exists as read: ``current`` maps
    ``(topic_id, partition, end_offset)`` of the rows found to ``(base_offset, segment_id)``."""
    return all(
        current.get((b.topic_id, b.partition, b.end_offset)) == (b.base_offset, b.segment_id)
        for b in rewrite.replaced
    )


# The checkpoint of a partition that exists (PostgreSQL: key-share locks its row, so a
# delete_topic holding it waits, or went first and this inserts nothing).
_SQL_SET_CLEAN_OFFSET: Final = (
    "INSERT INTO clean_offsets (topic_id, partition, clean_offset, cleaned_ms) "
    "SELECT p.topic_id, p.partition, %s, %s FROM partitions AS p "
    "WHERE p.topic_id = %s AND p.partition = %s{lock} "
    "ON CONFLICT (topic_id, partition) DO UPDATE SET clean_offset = excluded.clean_offset, "
    "cleaned_ms = excluded.cleaned_ms"
)


# Groups whose offsets may expire: newest commit before the cut-off, no state saved since.
_SQL_EXPIRABLE_GROUPS: Final = (
    "SELECT o.group_id FROM group_offsets AS o GROUP BY o.group_id "
    "HAVING max(o.commit_ms) < %s AND NOT EXISTS (SELECT 1 FROM group_states AS s "
    "WHERE s.group_id = o.group_id AND s.updated_ms >= %s) ORDER BY {order}"
)
_SQL_GROUP_STATE_SINCE: Final = (
    "SELECT 1 FROM group_states WHERE group_id = %s AND updated_ms >= %s"
)


#: The window of ``StorageReport.segments_created_last_hour``.
_HOUR_MS: Final = 3_600_000
# Storage report (statements shared by both backends; %s placeholders). Every one is a
# single aggregate: nothing is looped over per row in Python.
_SQL_SEGMENT_TOTALS: Final = (
    "SELECT count(*), "
    "sum(CASE WHEN dead_since_ms IS NULL THEN 1 ELSE 0 END), "
    "sum(CASE WHEN dead_since_ms IS NULL THEN size ELSE 0 END), "
    "sum(CASE WHEN dead_since_ms IS NOT NULL THEN size ELSE 0 END), "
    "sum(CASE WHEN dead_since_ms IS NULL AND size < %s THEN 1 ELSE 0 END), "
    "sum(CASE WHEN dead_since_ms IS NULL AND size < %s THEN size ELSE 0 END), "
    "sum(CASE WHEN created_ms > %s AND created_ms <= %s THEN 1 ELSE 0 END), "
    "sum(CASE WHEN created_ms > %s AND created_ms <= %s THEN size ELSE 0 END) "
    "FROM segments"
)
# Per topic: its share of each object it has blocks in (by (topic, segment) first, then by
# topic), its live bytes, records and the bytes at or after its partitions' clean offsets.
_SQL_TOPIC_USAGE: Final = (
    "WITH ts AS (SELECT b.topic_id, b.segment_id, sum(b.byte_length) AS live, "
    "sum(b.raw_length) AS raw, "
    "sum(b.record_count) AS recs, sum(CASE WHEN b.end_offset > COALESCE(c.clean_offset, 0) "
    "THEN b.byte_length ELSE 0 END) AS dirty FROM segment_blocks AS b "
    "LEFT JOIN clean_offsets AS c ON c.topic_id = b.topic_id AND c.partition = b.partition "
    "GROUP BY b.topic_id, b.segment_id), "
    "seg AS (SELECT segment_id, sum(live) AS seg_live FROM ts GROUP BY segment_id) "
    "SELECT ts.topic_id, count(*), sum(ts.live), sum(ts.recs), sum(ts.dirty), "
    "sum(CAST(s.size AS DOUBLE PRECISION) * ts.live / NULLIF(seg.seg_live, 0)), sum(ts.raw) "
    "FROM ts JOIN seg ON seg.segment_id = ts.segment_id "
    "JOIN segments AS s ON s.segment_id = ts.segment_id GROUP BY ts.topic_id"
)
_SQL_TOPIC_STARTS: Final = (
    "SELECT t.topic_id, t.name, t.partitions, t.config, min(p.log_start_offset) "
    "FROM topics AS t LEFT JOIN partitions AS p ON p.topic_id = t.topic_id "
    "GROUP BY t.topic_id, t.name, t.partitions, t.config"
)
_SQL_FIRST_BLOCK_TIMES: Final = (
    "SELECT b.topic_id, min(b.max_timestamp) FROM segment_blocks AS b "
    "JOIN (SELECT topic_id, partition, min(end_offset) AS e FROM segment_blocks "
    "GROUP BY topic_id, partition) AS f ON b.topic_id = f.topic_id "
    "AND b.partition = f.partition AND b.end_offset = f.e GROUP BY b.topic_id"
)


def storage_report(
    q: Callable[[str, Sequence[object]], list[Any]], now_ms: int, small_object_bytes: int
) -> StorageReport:
    """:meth:`MetadataStore.storage_report` from four aggregate statements run with
    ``q(sql, params) -> rows`` (``%s`` placeholders)."""
    hour = now_ms - _HOUR_MS
    totals = q(
        _SQL_SEGMENT_TOTALS,
        (small_object_bytes, small_object_bytes, hour, now_ms, hour, now_ms),
    )[0]
    _, live_objects, stored, dead_bytes, small, small_bytes, recent, recent_bytes = (
        int(v or 0) for v in totals
    )
    usage = {int(r[0]): r[1:] for r in q(_SQL_TOPIC_USAGE, ())}
    first_times = {int(t): int(ts) for t, ts in q(_SQL_FIRST_BLOCK_TIMES, ())}
    topics = []
    for topic_id, name, partitions, config_json, oldest in q(_SQL_TOPIC_STARTS, ()):
        config = _config_decoder.decode(config_json)
        policy = config.get("cleanup.policy", _DEFAULT_CLEANUP_POLICY)
        objects, live, records, dirty, share, raw = usage.get(int(topic_id), (0, 0, 0, 0, 0.0, 0))
        topics.append(
            TopicStorage(
                name=name,
                topic_id=int(topic_id),
                partitions=int(partitions),
                objects=int(objects),
                bytes_live=int(live or 0),
                bytes_stored=int(float(share or 0.0) + 0.5),
                records=int(records or 0),
                oldest_offset=int(oldest or 0),
                oldest_timestamp_ms=first_times.get(int(topic_id), -1),
                cleanup_policy=policy,
                dirty_bytes=int(dirty or 0) if "compact" in policy.split(",") else 0,
                bytes_raw=int(raw or 0),
            )
        )
    topics.sort(key=lambda t: t.name)
    return StorageReport(
        topics=topics,
        objects=live_objects,
        bytes_stored=stored,
        bytes_live=sum(int(u[1] or 0) for u in usage.values()),
        dead_objects=int(totals[0] or 0) - live_objects,
        dead_bytes=dead_bytes,
        small_objects=small,
        small_bytes=small_bytes,
        segments_created_last_hour=recent,
        bytes_created_last_hour=recent_bytes,
        bytes_raw=sum(int(u[5] or 0) for u in usage.values()),
    )


#: The condition of ``expire_producer_state``: the producer of ``producer_state AS s`` has no
#: open transaction in any partition.
_SQL_NO_OPEN_TXN: Final = (
    "NOT EXISTS (SELECT 1 FROM open_txns AS o WHERE o.producer_id = s.producer_id)"
)


#: Longest catalog kind and name accepted (characters), and the largest definition (bytes).
MAX_CATALOG_KIND_LENGTH: Final = 64
MAX_CATALOG_NAME_LENGTH: Final = 255
MAX_CATALOG_DEFINITION_BYTES: Final = 1024 * 1024
_SQL_PUT_CATALOG: Final = (
    "INSERT INTO catalog (kind, name, definition, created_ms, updated_ms) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (kind, name) DO {action}"
)
_CATALOG_REPLACE: Final = (
    "UPDATE SET definition = excluded.definition, updated_ms = excluded.updated_ms"
)


_SQL_SWAP_CATALOG: Final = (
    "UPDATE catalog SET definition = %s, updated_ms = %s "
    "WHERE kind = %s AND name = %s AND definition = %s"
)


def _sql_delete_catalog(
    kind: str, name: str, expect: bytes | None
) -> tuple[str, tuple[object, ...]]:
    """The DELETE of :meth:`MetadataStore.delete_catalog_entry` and its parameters."""
    sql = "DELETE FROM catalog WHERE kind = %s AND name = %s"
    if expect is None:
        return sql, (kind, name)
    return sql + " AND definition = %s", (kind, name, expect)


def _check_expected_definition(expect: object) -> bytes | None:
    """``expect`` of a compare-and-set as bytes (None stays None), else ``ValueError``."""
    if expect is None:
        return None
    if not isinstance(expect, (bytes, bytearray, memoryview)):
        raise ValueError(
            f"the expected catalog definition must be bytes or None, got {type(expect).__name__}"
        )
    return bytes(expect)


def check_catalog_key(kind: object, name: object) -> None:
    """Refuse (``ValueError``) a catalog ``kind`` that is not a non-empty string of at most
    :data:`MAX_CATALOG_KIND_LENGTH` characters, or such a ``name`` of at most
    :data:`MAX_CATALOG_NAME_LENGTH`."""
    for what, value, limit in (
        ("catalog kind", kind, MAX_CATALOG_KIND_LENGTH),
        ("catalog name", name, MAX_CATALOG_NAME_LENGTH),
    ):
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a string, got {type(value).__name__}")
        if not 1 <= len(value) <= limit:
            raise ValueError(f"{what} must be 1..{limit} characters long, got {len(value)}")


def check_catalog_entry(kind: object, name: object, definition: object, now_ms: object) -> bytes:
    """Refuse a bad catalog entry with ``ValueError`` (:func:`check_catalog_key`;
    ``definition`` bytes-like of at most :data:`MAX_CATALOG_DEFINITION_BYTES`; ``now_ms`` a
    millisecond time); return ``definition`` as bytes."""
    check_catalog_key(kind, name)
    if not isinstance(definition, (bytes, bytearray, memoryview)):
        raise ValueError(f"catalog definition must be bytes, got {type(definition).__name__}")
    blob = bytes(definition)
    if len(blob) > MAX_CATALOG_DEFINITION_BYTES:
        raise ValueError(
            f"catalog definition of {kind}/{name} is {len(blob)} bytes; the limit is "
            f"{MAX_CATALOG_DEFINITION_BYTES}"
        )
    check_lifecycle_time("now_ms", now_ms)
    return blob


def catalog_exists(kind: str, name: str) -> CatalogEntryExistsError:
    return CatalogEntryExistsError(
        f"{kind} {name!r} is already in the catalog: drop it first, or replace it"
    )


#: Largest checkpoint payload of a continuous query (bytes): positions and counters; the
#: operators' state lives in the object store, not here.
MAX_QUERY_PAYLOAD_BYTES: Final = 16 * 1024 * 1024
_QUERY_COLUMNS: Final = "name, generation, step, payload, updated_ms"
# A claim: create the row at generation 1, or bump the generation keeping step and payload;
# a dropped query's row (dropped_ms set) starts over at step 0 with an empty payload, but its
# generation still grows, so a runner of the dropped query stays fenced.
_SQL_CLAIM_QUERY: Final = (
    "INSERT INTO query_checkpoints (name, generation, step, payload, updated_ms) "
    "VALUES (%s, 1, 0, %s, %s) ON CONFLICT (name) DO UPDATE SET "
    "generation = query_checkpoints.generation + 1, updated_ms = excluded.updated_ms, "
    "step = CASE WHEN query_checkpoints.dropped_ms IS NULL THEN query_checkpoints.step "
    "ELSE 0 END, "
    "payload = CASE WHEN query_checkpoints.dropped_ms IS NULL THEN query_checkpoints.payload "
    "ELSE excluded.payload END, "
    "dropped_ms = NULL "
    f"RETURNING {_QUERY_COLUMNS}"
)
_SQL_QUERY_STATE: Final = (
    "SELECT generation, step, dropped_ms FROM query_checkpoints WHERE name = %s"
)
_SQL_SET_QUERY_STEP: Final = (
    "UPDATE query_checkpoints SET step = %s, payload = %s, updated_ms = %s WHERE name = %s"
)
_SQL_GET_QUERY: Final = (
    f"SELECT {_QUERY_COLUMNS} FROM query_checkpoints WHERE name = %s AND dropped_ms IS NULL"
)
_SQL_LIST_QUERIES: Final = (
    f"SELECT {_QUERY_COLUMNS} FROM query_checkpoints WHERE dropped_ms IS NULL"
)
# A drop keeps the row (its generation) as a tombstone, without the payload.
_SQL_DROP_QUERY: Final = (
    "UPDATE query_checkpoints SET dropped_ms = %s, step = 0, payload = %s, updated_ms = %s "
    "WHERE name = %s AND dropped_ms IS NULL"
)


def check_query_name(name: object) -> str:
    """``name`` if it is a query name (1..:data:`MAX_CATALOG_NAME_LENGTH` characters, as the
    catalog's), else ``ValueError``."""
    if not isinstance(name, str):
        raise ValueError(f"query name must be a string, got {type(name).__name__}")
    if not 1 <= len(name) <= MAX_CATALOG_NAME_LENGTH:
        raise ValueError(
            f"query name must be 1..{MAX_CATALOG_NAME_LENGTH} characters long, got {len(name)}"
        )
    return name


def check_query_step(
    name: object,
    generation: object,
    step: object,
    payload: object,
    segment: object,
    now_ms: object,
) -> bytes:
    """Refuse a bad :meth:`MetadataStore.commit_query_step` call with ``ValueError`` before
    any work: the name, ``generation >= 1``, ``step >= 1``, ``payload`` bytes-like of at most
    :data:`MAX_QUERY_PAYLOAD_BYTES`, ``segment`` None or ``(key, size, [CommitBlock])`` whose
    batches are all non-idempotent (``producer_id < 0``: a query's output carries no
    producer state), ``now_ms`` a millisecond time. Returns ``payload`` as bytes."""
    check_query_name(name)
    _check_int("generation", generation, 1, _INT64_MAX)
    _check_int("step", step, 1, _INT64_MAX)
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ValueError(f"query checkpoint payload must be bytes, got {type(payload).__name__}")
    blob = bytes(payload)
    if len(blob) > MAX_QUERY_PAYLOAD_BYTES:
        raise ValueError(
            f"checkpoint payload of query {name} is {len(blob)} bytes; the limit is "
            f"{MAX_QUERY_PAYLOAD_BYTES}: keep operator state in the object store"
        )
    check_lifecycle_time("now_ms", now_ms)
    if segment is None:
        return blob
    if not isinstance(segment, tuple) or len(segment) != 3:
        raise ValueError("a query step's segment must be None or a (key, size, blocks) tuple")
    key, size, blocks = segment
    if not isinstance(key, str) or not key:
        raise ValueError(f"segment key must be a non-empty string, got {key!r}")
    _check_int("segment size", size, 0, _INT64_MAX)
    if not isinstance(blocks, list) or not all(isinstance(b, CommitBlock) for b in blocks):
        raise ValueError("a query step's segment blocks must be a list of CommitBlock")
    for block in blocks:
        for batch in block.batches:
            if batch.producer_id >= 0:
                raise ValueError(
                    f"batch of producer {batch.producer_id} in the output of query {name} "
                    f"(segment {key!r}, partition {block.topic_id}/{block.partition}): a "
                    "query's output batches are non-idempotent, write them with producer_id -1"
                )
    return blob


def query_fenced(
    name: str, row: Sequence[Any] | None, generation: int, step: int
) -> QueryFencedError | None:
    """The refusal of a step commit given the query's stored ``(generation, step,
    dropped_ms)`` row (None: no row), or None when the commit may go ahead."""
    if row is None or row[2] is not None:
        return QueryFencedError(
            f"query {name} has no checkpoint (it was dropped or never claimed); this runner "
            "must stop"
        )
    stored_generation, stored_step = int(row[0]), int(row[1])
    if stored_generation != generation:
        return QueryFencedError(
            f"query {name} was claimed by a newer runner (generation {stored_generation}); "
            "this runner must stop"
        )
    if stored_step != step - 1:
        return QueryFencedError(
            f"query {name} is at step {stored_step}, so step {step} cannot follow it "
            f"(generation {generation}); another commit of this generation went first: this "
            "runner must stop"
        )
    return None


def check_query_segment(
    name: str, segment: tuple[str, int, list[CommitBlock]], results: list[list[BatchResult]]
) -> None:
    """Raise :class:`UnknownTopicError` (rolling the step back) if any batch of a query
    step's segment got no offsets: its partition does not exist."""
    key, _, blocks = segment
    missing = sorted(
        {
            (block.topic_id, block.partition)
            for block, block_results in zip(blocks, results, strict=True)
            if any(r.error is not None for r in block_results)
        }
    )
    if missing:
        named = ", ".join(f"{t}/{p}" for t, p in missing)
        raise UnknownTopicError(
            f"query {name}: output partition(s) {named} of segment {key!r} do not "
            "exist (topic deleted, or fewer partitions); nothing was committed: recreate the "
            "output topic or drop the query"
        )


def query_checkpoint(row: Sequence[Any]) -> QueryCheckpoint:
    """A :class:`QueryCheckpoint` from a row of ``_QUERY_COLUMNS``."""
    return QueryCheckpoint(
        name=str(row[0]),
        generation=int(row[1]),
        step=int(row[2]),
        payload=bytes(row[3]),
        updated_ms=int(row[4]),
    )


#: Kafka's leader epochs are int32; -1 means none was given.
_MAX_LEADER_EPOCH: Final = 2**31 - 1


def offset_rows(
    offsets: Sequence[tuple[int, int, int, str] | tuple[int, int, int, str, int]],
) -> list[tuple[int, int, int, str, int]]:
    """``offsets`` as ``(topic_id, partition, offset, metadata, leader_epoch)``: an entry of
    four fields gets leader epoch -1. ``ValueError`` for an entry of another length or a
    leader epoch outside -1..2**31-1."""
    rows: list[tuple[int, int, int, str, int]] = []
    for item in offsets:
        if len(item) == 4:
            rows.append((*item, -1))
        elif len(item) == 5:
            _check_int("leader_epoch", item[4], -1, _MAX_LEADER_EPOCH)
            rows.append((item[0], item[1], item[2], item[3], item[4]))
        else:
            raise ValueError(
                "an offset commit is (topic_id, partition, offset, metadata[, leader_epoch]), "
                f"got {len(item)} fields"
            )
    return rows


def check_clean_offset(clean_offset: object, now_ms: object) -> None:
    """Refuse (``ValueError``) a negative or non-integer ``clean_offset`` or a bad
    ``now_ms``."""
    _check_int("clean_offset", clean_offset, 0, _INT64_MAX)
    check_lifecycle_time("now_ms", now_ms)


def _qmarks(sql: str) -> str:
    """``sql`` written with ``%s`` placeholders, for SQLite."""
    return sql.replace("%s", "?")


# Each partition of a batch, with its oldest block (if any): what retention_candidates needs.
_SQL_RETENTION_SCAN = (
    "SELECT p.topic_id, p.partition, p.log_start_offset, p.high_watermark, b.end_offset, "
    "b.max_timestamp FROM partitions AS p LEFT JOIN segment_blocks AS b "
    "ON b.topic_id = p.topic_id AND b.partition = p.partition AND b.end_offset = "
    "(SELECT min(c.end_offset) FROM segment_blocks AS c WHERE c.topic_id = p.topic_id "
    "AND c.partition = p.partition) "
    "WHERE (p.topic_id, p.partition) > (?, ?) ORDER BY p.topic_id, p.partition LIMIT ?"
)
_SQL_NO_BLOCK = (
    "NOT EXISTS (SELECT 1 FROM segment_blocks AS b WHERE b.segment_id = segments.segment_id)"
)
_SQL_MARK_DEAD = (
    "UPDATE segments SET dead_since_ms = ? WHERE segment_id IN (SELECT value FROM json_each(?)) "
    f"AND dead_since_ms IS NULL AND {_SQL_NO_BLOCK}"
)
_SQL_MARK_UNREFERENCED = (
    f"UPDATE segments SET dead_since_ms = ? WHERE dead_since_ms IS NULL AND {_SQL_NO_BLOCK}"
)
_SQL_FORGET_SEGMENTS = (
    "DELETE FROM segments WHERE key IN (SELECT value FROM json_each(?)) "
    f"AND dead_since_ms IS NOT NULL AND {_SQL_NO_BLOCK}"
)
_SQL_TOPIC_SEGMENTS = (
    "SELECT DISTINCT segment_id FROM segment_blocks WHERE topic_id = ? ORDER BY segment_id"
)
_SQL_KNOWN_SEGMENTS = "SELECT key FROM segments WHERE key IN (SELECT value FROM json_each(?))"


# --------------------------------------------------------------------------- the store


class LoopCallError(RuntimeError):
    """A store was called on a thread running an asyncio event loop while
    ``STREAMHOUSE_DEBUG_LOOP_CALLS=1`` (rule 6): a bug in the caller, never retriable."""


def _public_caller() -> str:
    """The name of the store method that entered ``_read``/``_write`` (frames: this function,
    the context manager's generator, ``contextlib``'s ``__enter__``, the method)."""
    return sys._getframe(3).f_code.co_name


def _check_off_loop(path: str, call: str) -> None:
    """Raise :class:`LoopCallError` if this thread is running an asyncio event loop."""
    if asyncio._get_running_loop() is not None:
        raise LoopCallError(
            f"MetadataStore.{call} on {path!r} was called on a thread running an asyncio "
            f"event loop, where it would block every other task ({DEBUG_LOOP_CALLS_ENV}=1): "
            "await it through metadata.async_store.AsyncMetadata instead"
        )


class MetadataStore:
    """Metadata of one StreamHouse cluster, kept in an SQLite file shared by its processes.

    Opening creates the file if needed, switches it to WAL mode and migrates it to the latest
    schema (:mod:`metadata.migrations`); a file from newer code raises
    :class:`~metadata.errors.SchemaTooNewError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = 10_000,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        forbid_loop_calls: bool | None = None,
    ) -> None:
        """Open (creating if needed) and migrate the store at ``path``.

        ``busy_timeout_ms`` bounds how long a call waits for another writer's lock before it
        raises :class:`MetadataUnavailableError` (the uploader passes the produce timeout);
        ``synchronous`` is SQLite's durability level (FULL: a returned commit survives power
        loss; NORMAL: it survives a process crash only). ``forbid_loop_calls`` turns on the
        event-loop guard (rule 6); None reads ``STREAMHOUSE_DEBUG_LOOP_CALLS``.
        """
        if forbid_loop_calls is None:
            flag = os.environ.get(DEBUG_LOOP_CALLS_ENV, "").strip().lower()
            forbid_loop_calls = flag in ("1", "true", "yes", "on")
        self._forbid_loop_calls = forbid_loop_calls
        if forbid_loop_calls:
            _check_off_loop(os.fspath(path), "__init__")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must not be negative, got {busy_timeout_ms}")
        self.path = os.fspath(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()  # the write connection's
        self._read_lock = threading.Lock()
        self._db: apsw.Connection | None = None
        self._reads: apsw.Connection | None = None
        opened: list[apsw.Connection] = []
        try:
            db = apsw.Connection(
                self.path, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
            )
            opened.append(db)
            db.setbusytimeout(busy_timeout_ms)
            self._prepare(db, synchronous, time.monotonic() + busy_timeout_ms / 1000)
            reads = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READWRITE)
            opened.append(reads)
            reads.setbusytimeout(busy_timeout_ms)
            reads.execute("PRAGMA query_only = 1")
        except MetadataError:
            for conn in opened:
                conn.close()
            raise
        except apsw.Error as exc:
            for conn in opened:
                conn.close()
            raise MetadataError(f"cannot open metadata store {self.path!r}: {exc}") from exc
        except BaseException:
            for conn in opened:
                conn.close()
            raise
        self._db = db
        self._reads = reads

    def _prepare(self, db: apsw.Connection, synchronous: str, deadline: float) -> None:
        """Switch to WAL, set durability and migrate, retrying lock conflicts until
        ``deadline``.

        Needed because SQLite does not run the busy handler where waiting could deadlock: two
        connections switching a fresh file to WAL at once (both hold SHARED and want
        EXCLUSIVE) get SQLITE_BUSY immediately. Every step is idempotent, so retrying is safe.
        """
        delay = 0.001
        while True:
            try:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
                if str(mode).lower() != "wal":
                    raise MetadataError(f"cannot switch {self.path!r} to WAL mode (got {mode!r})")
                db.execute(f"PRAGMA synchronous = {synchronous}")
                migrations.migrate(db)
                return
            except apsw.BusyError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the connections. Idempotent; any later call raises :class:`MetadataError`."""
        if self._forbid_loop_calls:
            _check_off_loop(self.path, "close")
        with self._lock, self._read_lock:
            for conn in (self._db, self._reads):
                if conn is not None:
                    conn.close()
            self._db = self._reads = None

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _conn(self) -> apsw.Connection:
        db = self._db
        if db is None:
            raise MetadataError("metadata store is closed")
        return db

    def _acquire(self, lock: threading.Lock, deadline: float) -> None:
        """Take one of this object's thread locks, waiting no later than ``deadline``."""
        if not lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise MetadataUnavailableError(
                ErrorCode.REQUEST_TIMED_OUT,
                f"metadata store {self.path!r}: another call of this process held it for "
                f"{self.busy_timeout_ms} ms (the busy timeout), waiting for a database locked "
                "by another writer or a slow disk; retry",
            )

    def _unavailable(self, exc: apsw.Error) -> MetadataError:
        """The error a failed SQLite call becomes (rule 3)."""
        if isinstance(exc, (apsw.BusyError, apsw.LockedError)):
            return MetadataUnavailableError(
                ErrorCode.REQUEST_TIMED_OUT,
                f"metadata store {self.path!r} is locked by another writer and stayed locked "
                f"for {self.busy_timeout_ms} ms (the busy timeout): {exc}; retry",
            )
        if isinstance(exc, apsw.FullError):
            return MetadataUnavailableError(
                ErrorCode.KAFKA_STORAGE_ERROR,
                f"metadata store {self.path!r}: the disk is full ({exc}); nothing was "
                "written; free space on that filesystem and retry",
            )
        if isinstance(exc, apsw.IOError):
            return MetadataUnavailableError(
                ErrorCode.KAFKA_STORAGE_ERROR,
                f"metadata store {self.path!r}: disk I/O error ({exc}); nothing was written; "
                "check the filesystem and retry",
            )
        return MetadataError(f"metadata store {self.path!r}: {exc}")

    @contextlib.contextmanager
    def _read(self) -> Iterator[apsw.Connection]:
        """Give the body the read connection under its lock; SQLite errors become
        MetadataError (MetadataUnavailableError when retrying can help)."""
        if self._forbid_loop_calls:
            _check_off_loop(self.path, _public_caller())
        self._acquire(self._read_lock, time.monotonic() + self.busy_timeout_ms / 1000)
        try:
            reads = self._reads
            if reads is None:
                raise MetadataError("metadata store is closed")
            yield reads
        except apsw.Error as exc:
            raise self._unavailable(exc) from exc
        finally:
            self._read_lock.release()

    def _begin(self, db: apsw.Connection, deadline: float) -> None:
        """``BEGIN IMMEDIATE``, retried on busy/locked until ``deadline`` (rules 1 and 2)."""
        delay = 0.001
        while True:
            # SQLite's busy handler waits (with its own backoff) no longer than what is left.
            db.setbusytimeout(max(int((deadline - time.monotonic()) * 1000), 0))
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except (apsw.BusyError, apsw.LockedError):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                # SQLite gave up without waiting out the handler: back off and retry.
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.05)

    @contextlib.contextmanager
    def _write(self) -> Iterator[apsw.Connection]:
        """Run the body in one ``BEGIN IMMEDIATE`` transaction: commit on success, else roll
        back and re-raise. SQLite errors become :class:`MetadataError`; a lock held past the
        busy timeout, a full disk or an I/O error become :class:`MetadataUnavailableError`."""
        if self._forbid_loop_calls:
            _check_off_loop(self.path, _public_caller())
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        self._acquire(self._lock, deadline)
        try:
            db = self._conn()
            try:
                self._begin(db, deadline)
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if not db.getautocommit():
                        with contextlib.suppress(apsw.Error):  # keep the first error
                            db.execute("ROLLBACK")
                    raise
            except apsw.Error as exc:
                raise self._unavailable(exc) from exc
            finally:
                db.setbusytimeout(self.busy_timeout_ms)
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ topics

    def create_topic(
        self, name: str, partitions: int, config: dict[str, str] | None = None
    ) -> TopicInfo:
        """Create a topic with ``partitions`` empty partitions and a fresh id and uuid.

        Raises :class:`InvalidTopicError` (or its subclasses :class:`InvalidPartitionsError`,
        :class:`InvalidConfigError`) for a bad name, count or config, and
        :class:`TopicExistsError` if the name is taken.
        """
        validate_topic_name(name)
        _validate_partitions(partitions)
        cfg, cfg_json = _encode_config(config)
        now = _now_ms()
        uuid = _new_topic_uuid()
        with self._write() as db:
            if db.execute(_SQL_TOPIC_BY_NAME, (name,)).fetchall():
                raise TopicExistsError(f"topic {name!r} already exists")
            db.execute(_SQL_INSERT_TOPIC, (name, uuid, partitions, cfg_json, now))
            topic_id = db.last_insert_rowid()
            db.executemany(_SQL_INSERT_PARTITION, ((topic_id, p) for p in range(partitions)))
        return TopicInfo(topic_id, name, uuid, partitions, cfg, now)

    def get_topic(self, name: str) -> TopicInfo | None:
        """Return the live topic called ``name``, or None."""
        with self._read() as db:
            rows = db.execute(_SQL_TOPIC_BY_NAME, (name,)).fetchall()
        return _topic(rows[0]) if rows else None

    def get_topic_by_id(self, topic_id: int) -> TopicInfo | None:
        """Return the live topic with this ``topic_id``, or None (also for deleted topics)."""
        with self._read() as db:
            rows = db.execute(_SQL_TOPIC_BY_ID, (topic_id,)).fetchall()
        return _topic(rows[0]) if rows else None

    def get_topic_by_uuid(self, uuid: bytes) -> TopicInfo | None:
        """Return the live topic with this 16-byte Kafka topic id, or None."""
        with self._read() as db:
            rows = db.execute(_SQL_TOPIC_BY_UUID, (bytes(uuid),)).fetchall()
        return _topic(rows[0]) if rows else None

    def list_topics(self) -> list[TopicInfo]:
        """Return all live topics, ordered by name."""
        with self._read() as db:
            rows = db.execute(_SQL_TOPICS).fetchall()
        return [_topic(r) for r in rows]

    def delete_topic(self, name: str) -> TopicInfo:
        """Delete a topic at once and return what it was.

        In one transaction: its topic, partition, block, group-offset and producer-state rows go,
        and its id is recorded in ``deleted_topics`` for the lifecycle job. Segment rows stay (a
        segment may hold other topics' data); those left with no block row are marked dead
        (``dead_since_ms`` = now) in the same transaction, for the lifecycle job to reclaim.
        The name can be reused immediately; the new topic gets a new id and sees no old data.
        Consumer-group state (:meth:`save_group_state`) is not touched: a group's membership
        outlives the topics it consumes (its coordinator drops what no longer exists).
        Raises :class:`UnknownTopicError` if there is no such topic.
        """
        now = _now_ms()
        with self._write() as db:
            rows = db.execute(_SQL_TOPIC_BY_NAME, (name,)).fetchall()
            if not rows:
                raise UnknownTopicError(f"topic {name!r} does not exist")
            topic = _topic(rows[0])
            tid = (topic.topic_id,)
            emptied = [r[0] for r in db.execute(_SQL_TOPIC_SEGMENTS, tid)]
            db.execute("DELETE FROM segment_blocks WHERE topic_id = ?", tid)
            if emptied:
                db.execute(_SQL_MARK_DEAD, (now, _json_encode(emptied).decode()))
            db.execute("DELETE FROM producer_state WHERE topic_id = ?", tid)
            db.execute("DELETE FROM open_txns WHERE topic_id = ?", tid)
            db.execute("DELETE FROM aborted_txns WHERE topic_id = ?", tid)
            db.execute("DELETE FROM clean_offsets WHERE topic_id = ?", tid)
            db.execute("DELETE FROM group_offsets WHERE topic_id = ?", tid)
            db.execute("DELETE FROM partitions WHERE topic_id = ?", tid)
            db.execute("DELETE FROM topics WHERE topic_id = ?", tid)
            db.execute(
                "INSERT INTO deleted_topics (topic_id, name, uuid, partitions, deleted_ms) "
                "VALUES (?, ?, ?, ?, ?)",
                (topic.topic_id, topic.name, topic.uuid, topic.partitions, now),
            )
        return topic

    def list_deleted_topics(self) -> list[DeletedTopic]:
        """Return the deleted-topic bookkeeping rows, oldest id first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT topic_id, name, uuid, partitions, deleted_ms FROM deleted_topics "
                "ORDER BY topic_id"
            ).fetchall()
        return [DeletedTopic(*r) for r in rows]

    def add_partitions(self, name: str, total: int) -> TopicInfo:
        """Grow the topic to ``total`` partitions (new ones start empty) and return it.

        Raises :class:`UnknownTopicError`, or :class:`InvalidPartitionsError` (an
        :class:`InvalidTopicError`) if ``total`` does not exceed the current count or is above
        the limit.
        """
        _validate_partitions(total)
        with self._write() as db:
            rows = db.execute(_SQL_TOPIC_BY_NAME, (name,)).fetchall()
            if not rows:
                raise UnknownTopicError(f"topic {name!r} does not exist")
            topic = _topic(rows[0])
            if total <= topic.partitions:
                raise InvalidPartitionsError(
                    f"topic {name!r} has {topic.partitions} partitions; the new count must be "
                    f"larger, got {total}"
                )
            db.execute(
                "UPDATE topics SET partitions = ? WHERE topic_id = ?", (total, topic.topic_id)
            )
            db.executemany(
                _SQL_INSERT_PARTITION,
                ((topic.topic_id, p) for p in range(topic.partitions, total)),
            )
        return msgspec.structs.replace(topic, partitions=total)

    def update_topic_config(self, name: str, config: dict[str, str]) -> TopicInfo:
        """Replace the topic's whole config with ``config`` and return the updated topic.

        Raises :class:`UnknownTopicError` or :class:`InvalidConfigError`.
        """
        cfg, cfg_json = _encode_config(config)
        with self._write() as db:
            rows = db.execute(_SQL_TOPIC_BY_NAME, (name,)).fetchall()
            if not rows:
                raise UnknownTopicError(f"topic {name!r} does not exist")
            topic = _topic(rows[0])
            db.execute(
                "UPDATE topics SET config = ? WHERE topic_id = ?", (cfg_json, topic.topic_id)
            )
        return msgspec.structs.replace(topic, config=cfg)

    def alter_topic_config(
        self,
        name: str,
        set: Mapping[str, str],
        delete: Sequence[str],
        validate_only: bool = False,
        *,
        append: Mapping[str, Sequence[str]] | None = None,
        subtract: Mapping[str, Sequence[str]] | None = None,
    ) -> TopicInfo:
        """Change some keys of the topic's config in one transaction (read, change, write:
        two alterations at once of different keys both stay) and return the topic with its
        new config, as :func:`merge_topic_config` makes it from the stored one. With
        ``validate_only`` nothing is stored; the topic returned shows the config it would
        have.

        Raises :class:`UnknownTopicError` or :class:`InvalidConfigError` (nothing stored).
        """
        if validate_only:
            with self._read() as db:
                rows = db.execute(_SQL_TOPIC_BY_NAME, (name,)).fetchall()
                if not rows:
                    raise UnknownTopicError(f"topic {name!r} does not exist")
                topic = _topic(rows[0])
            config = merge_topic_config(topic.config, set, delete, append, subtract)
            return msgspec.structs.replace(topic, config=config)
        with self._write() as db:
            rows = db.execute(_SQL_TOPIC_BY_NAME, (name,)).fetchall()
            if not rows:
                raise UnknownTopicError(f"topic {name!r} does not exist")
            topic = _topic(rows[0])
            config = merge_topic_config(topic.config, set, delete, append, subtract)
            if config != topic.config:
                db.execute(
                    "UPDATE topics SET config = ? WHERE topic_id = ?",
                    (_json_encode(config).decode(), topic.topic_id),
                )
        return msgspec.structs.replace(topic, config=config)

    # ------------------------------------------------------------------ partitions

    def get_partition(self, topic_id: int, partition: int) -> PartitionState | None:
        """Return the partition's committed state, or None if it does not exist."""
        with self._read() as db:
            rows = db.execute(_SQL_PARTITION, (topic_id, partition)).fetchall()
        return PartitionState(*rows[0]) if rows else None

    def list_partitions(self, topic_id: int) -> list[PartitionState]:
        """Return the states of all partitions of the topic, by partition number (empty list
        for an unknown topic)."""
        with self._read() as db:
            rows = db.execute(_SQL_PARTITIONS, (topic_id,)).fetchall()
        return [PartitionState(*r) for r in rows]

    def set_log_start_offset(self, topic_id: int, partition: int, offset: int) -> PartitionState:
        """Move the partition's log start offset forward to ``offset`` and return the new state.

        An ``offset`` at or below the current log start is a no-op. Raises
        :class:`OffsetOutOfRangeError` if ``offset`` is negative or beyond the high watermark and
        :class:`UnknownTopicError` if the partition does not exist. In the same transaction
        the block rows entirely below the new start (``end_offset <= offset``) are deleted and
        the segments left with no block row are marked dead (``dead_since_ms`` = now).
        """
        now = _now_ms()
        with self._write() as db:
            rows = db.execute(_SQL_PARTITION, (topic_id, partition)).fetchall()
            if not rows:
                raise UnknownTopicError(f"partition {topic_id}/{partition} does not exist")
            state = PartitionState(*rows[0])
            if offset < 0 or offset > state.high_watermark:
                raise OffsetOutOfRangeError(
                    f"log start offset {offset} is outside 0..{state.high_watermark} "
                    f"(high watermark) of partition {topic_id}/{partition}"
                )
            if offset <= state.log_start_offset:
                return state
            db.execute(_SQL_SET_LSO, (offset, topic_id, partition))
            db.execute(_qmarks(SQL_DROP_ABORTED_BELOW), (topic_id, partition, offset))
            dropped = db.execute(
                _qmarks(_SQL_DROP_BLOCKS), (topic_id, partition, offset)
            ).fetchall()
            if dropped:
                emptied = sorted({r[0] for r in dropped})
                db.execute(_SQL_MARK_DEAD, (now, _json_encode(emptied).decode()))
        return msgspec.structs.replace(state, log_start_offset=offset)

    # ------------------------------------------------------------------ the log index

    def commit_segment(
        self, key: str, size: int, blocks: list[CommitBlock]
    ) -> list[list[BatchResult]]:
        """Record an uploaded segment object and assign offsets to its batches, atomically.

        In one transaction: inserts the segment row; walks ``blocks`` and their batches in
        order; gives each accepted batch consecutive offsets from its partition's high
        watermark; indexes each block that has an accepted batch (its range covers only the
        accepted batches, the others are listed in ``skipped_batches``); advances high
        watermarks; saves producer state. Returns one :class:`BatchResult` per batch, shaped
        like ``blocks``.

        Per batch:

        * block's topic/partition does not exist -> every batch of the block gets
          ``UNKNOWN_TOPIC_OR_PARTITION`` and the block is not indexed;
        * ``producer_id < 0`` -> accepted, no sequence checks;
        * otherwise, against the producer's state on that partition (Kafka semantics):
          no state yet -> accepted with any sequence; older epoch -> ``INVALID_PRODUCER_EPOCH``;
          newer epoch -> accepted (state reset) only if ``base_sequence == 0``, else
          ``OUT_OF_ORDER_SEQUENCE_NUMBER``; same epoch -> a batch with the same first and last
          sequence as one of the last 5 is a duplicate (``error=None``, its original base
          offset, no new offsets), one continuing the sequence (``last + 1``, wrapping from
          2**31-1 to 0) is accepted, anything else is ``OUT_OF_ORDER_SEQUENCE_NUMBER``. A
          negative epoch or sequence with a producer id is rejected the same way.

        Raises :class:`DuplicateSegmentError` if ``key`` was committed before (nothing changes)
        and ``ValueError`` for a batch with ``record_count < 1``.
        """
        return self.commit_segments([(key, size, blocks)])[0]

    def commit_segments(
        self, segments: Sequence[tuple[str, int, list[CommitBlock]]]
    ) -> list[list[list[BatchResult]]]:
        """Commit several segments ``(key, size, blocks)`` in one transaction: exactly as if
        :meth:`commit_segment` had been called for each in list order (offsets, producer
        state and duplicates carry from one to the next), but all or nothing, with one lock
        round and one durable commit for all of them. Returns each segment's results.

        Raises :class:`DuplicateSegmentError` if any key was committed before (nothing is
        committed then) and ``ValueError`` if a key repeats within ``segments`` or a batch has
        ``record_count < 1``.
        """
        _check_segment_keys(segments)
        with self._write() as db:
            return self._commit_segments_in(db, segments, _now_ms())

    @staticmethod
    def _commit_segments_in(
        db: apsw.Connection, segments: Sequence[tuple[str, int, list[CommitBlock]]], now: int
    ) -> list[list[list[BatchResult]]]:
        """The body of :meth:`commit_segments`, inside the caller's write transaction (also
        :meth:`commit_query_step`'s)."""
        segment_ids = []
        for key, size, _ in segments:
            try:
                db.execute(_SQL_INSERT_SEGMENT, (key, size, now))
            except apsw.ConstraintError as exc:
                raise DuplicateSegmentError(f"segment {key!r} is already committed") from exc
            segment_ids.append(db.last_insert_rowid())

        # Fetch every partition's HWM and every producer's state in one query each.
        hwms: dict[tuple[int, int], int] = {}
        tps = list(dict.fromkeys((b.topic_id, b.partition) for _, _, bs in segments for b in bs))
        if tps:
            for topic_id, partition, hwm in db.execute(_SQL_HWMS, (_json_encode(tps).decode(),)):
                hwms[(topic_id, partition)] = hwm
        start_hwms = dict(hwms)
        producers = _producer_keys(segments, hwms)
        if producers:
            for topic_id, partition, pid, epoch, batches in db.execute(
                _SQL_PRODUCER_STATES, (_json_encode(list(producers)).decode(),)
            ):
                producers[(topic_id, partition, pid)] = _Producer(
                    epoch, _batches_decoder.decode(batches)
                )
        txns: TxnLog | None = None
        keys = txn_keys(segments, hwms)
        if keys:
            rows = db.execute(_SQL_OPEN_TXNS, (_json_encode(keys).decode(),))
            txns = TxnLog({(t, p, pid): first for t, p, pid, first in rows})

        results = []
        for (_, _, blocks), segment_id in zip(segments, segment_ids, strict=True):
            seg_results, block_rows = assign_offsets(blocks, hwms, producers, segment_id, txns)
            results.append(seg_results)
            if block_rows:
                db.executemany(_SQL_INSERT_BLOCK, block_rows)
        if txns is not None:
            closed = txns.closed()
            if closed:
                db.executemany(_SQL_CLOSE_TXN, closed)
            opened = txns.opened()
            if opened:
                db.executemany(_SQL_OPEN_TXN, opened)
            if txns.aborted:
                db.executemany(_SQL_INSERT_ABORTED, txns.aborted)
        hwm_rows = [(hwm, tp[0], tp[1]) for tp, hwm in hwms.items() if hwm != start_hwms[tp]]
        if hwm_rows:
            db.executemany(_SQL_SET_HWM, hwm_rows)
        producer_rows = [
            (*pkey, st.epoch, _json_encode(st.batches).decode(), now)
            for pkey, st in producers.items()
            if st is not None and st.dirty
        ]
        if producer_rows:
            db.executemany(_SQL_UPSERT_PRODUCER_STATE, producer_rows)
        return results

    # ------------------------------------------------------------------ continuous queries

    def claim_query(self, name: str, now_ms: int) -> QueryCheckpoint:
        """Claim continuous query ``name`` for a new runner: create its checkpoint row
        (generation 1, step 0, payload ``b""``) if there is none, else bump its generation
        (step and payload stay), at ``now_ms``. Returns the row. From then on a step commit
        of any older generation raises :class:`QueryFencedError`. A name whose query was
        dropped (:meth:`delete_query_checkpoint`) starts again at step 0 with an empty
        payload but at the generation after the dropped one's: generations of a name never
        repeat. Raises ``ValueError`` for a bad name or time."""
        check_query_name(name)
        check_lifecycle_time("now_ms", now_ms)
        with self._write() as db:
            row = db.execute(_qmarks(_SQL_CLAIM_QUERY), (name, b"", now_ms)).fetchall()[0]
        return query_checkpoint(row)

    def commit_query_step(
        self,
        name: str,
        generation: int,
        step: int,
        payload: bytes,
        segment: tuple[str, int, list[CommitBlock]] | None,
        now_ms: int,
    ) -> list[list[BatchResult]]:
        """Commit step ``step`` of continuous query ``name``: its output ``segment`` (or
        None) and its checkpoint ``payload``, in ONE transaction.

        The stored row must be at ``generation`` and at step ``step - 1``; otherwise (a newer
        claim, a step committed twice or skipped, no row: the query was dropped) the call
        raises :class:`QueryFencedError` and changes nothing. Then ``segment`` ``(key, size,
        blocks)`` is committed exactly as :meth:`commit_segment` commits it (offsets from the
        high watermarks, segment and block rows; on PostgreSQL the same commit notice), and
        the row takes ``step``, ``payload`` and ``updated_ms = now_ms``. If any of its blocks
        names a partition that does not exist, :class:`UnknownTopicError` is raised and
        nothing changes (neither the log nor the checkpoint); a key committed before raises
        :class:`DuplicateSegmentError`, likewise. Returns :meth:`commit_segment`'s results
        (``[]`` without a segment). Raises ``ValueError`` for bad arguments
        (:func:`check_query_step`; output batches must have ``producer_id -1``).
        """
        blob = check_query_step(name, generation, step, payload, segment, now_ms)
        with self._write() as db:
            rows = db.execute(_qmarks(_SQL_QUERY_STATE), (name,)).fetchall()
            fenced = query_fenced(name, rows[0] if rows else None, generation, step)
            if fenced is not None:
                raise fenced
            results: list[list[BatchResult]] = []
            if segment is not None:
                results = self._commit_segments_in(db, [segment], _now_ms())[0]
                check_query_segment(name, segment, results)
            db.execute(_qmarks(_SQL_SET_QUERY_STEP), (step, blob, now_ms, name))
        return results

    def get_query_checkpoint(self, name: str) -> QueryCheckpoint | None:
        """Continuous query ``name``'s checkpoint row, or None. ``ValueError`` for a bad
        name."""
        check_query_name(name)
        with self._read() as db:
            rows = db.execute(_qmarks(_SQL_GET_QUERY), (name,)).fetchall()
        return query_checkpoint(rows[0]) if rows else None

    def list_query_checkpoints(self) -> list[QueryCheckpoint]:
        """Every continuous query's checkpoint row, sorted by name (code points)."""
        with self._read() as db:
            rows = db.execute(_SQL_LIST_QUERIES + " ORDER BY name").fetchall()
        return [query_checkpoint(r) for r in rows]

    def delete_query_checkpoint(self, name: str) -> bool:
        """Delete continuous query ``name``'s checkpoint (its runner's next step commit then
        raises :class:`QueryFencedError`); False if there was none. ``ValueError`` for a bad
        name.

        The row stays behind as a tombstone holding only the generation (not listed, not
        returned, payload emptied): a query created again under the name is claimed at the
        next generation, so a runner of the dropped query that is still alive can never
        commit into the new one's checkpoint."""
        check_query_name(name)
        now = _now_ms()
        with self._write() as db:
            db.execute(_qmarks(_SQL_DROP_QUERY), (now, b"", now, name))
            return db.changes() > 0

    def aborted_transactions(
        self, topic_id: int, partition: int, start: int, end: int
    ) -> list[AbortedTxn]:
        """The aborted transactions of the partition that overlap offsets ``start`` ..
        ``end - 1`` (last offset >= start, first offset < end), by first offset: what a
        read_committed Fetch lists for data returned from that range (at most
        MAX_ABORTED_LISTED)."""
        with self._read() as db:
            rows = db.execute(
                _qmarks(SQL_ABORTED_TXNS), (topic_id, partition, start, end, MAX_ABORTED_LISTED)
            ).fetchall()
        return [AbortedTxn(*r) for r in rows]

    def find_blocks(
        self, topic_id: int, partition: int, offset: int, limit: int = 8
    ) -> list[BlockLocation]:
        """Return up to ``limit`` blocks of the partition with ``end_offset > offset``, in offset
        order: the first one contains ``offset`` (or starts after it if it was never assigned),
        so a reader fetches from there. Empty if nothing is at or beyond ``offset``, or the
        partition does not exist. Does not check ``log_start_offset``.
        """
        with self._read() as db:
            rows = db.execute(_SQL_FIND_BLOCKS, (topic_id, partition, offset, limit)).fetchall()
        return [_block_location(r) for r in rows]

    def find_block_by_timestamp(
        self, topic_id: int, partition: int, timestamp: int, from_offset: int
    ) -> BlockLocation | None:
        """The first block (in offset order) ending after ``from_offset`` that holds a record
        with a timestamp of at least ``timestamp``; None when there is none."""
        with self._read() as db:
            rows = db.execute(
                _SQL_FIND_BLOCK_BY_TIMESTAMP, (topic_id, partition, from_offset, timestamp)
            ).fetchall()
        return _block_location(rows[0]) if rows else None

    def find_max_timestamp_block(
        self, topic_id: int, partition: int, from_offset: int
    ) -> BlockLocation | None:
        """The block ending after ``from_offset`` with the largest max timestamp (the earliest
        such block on ties); None for an empty partition."""
        with self._read() as db:
            rows = db.execute(
                _SQL_FIND_MAX_TIMESTAMP_BLOCK, (topic_id, partition, from_offset)
            ).fetchall()
        return _block_location(rows[0]) if rows else None

    # ------------------------------------------------------------------ data lifecycle

    def enforce_retention(self, now_ms: int, max_partitions: int = 10_000) -> list[RetentionMove]:
        """Apply time and size retention to every partition as of ``now_ms`` and return what
        moved.

        For each partition of a topic whose ``cleanup.policy`` contains ``delete`` (the
        default): with ``retention.ms >= 0``, the oldest blocks whose max timestamp is below
        ``now_ms - retention.ms`` go, whole blocks, oldest first, stopping at the first block
        that must stay (a block without timestamps, ``max_timestamp < 0``, counts as old as
        its segment's commit, as Kafka uses the segment file's time); with
        ``retention.bytes >= 0``, Kafka's rule: the oldest block goes
        while the bytes of the partition's blocks (their ``raw_length``, the bytes of their record
        batches as Kafka counts a log's size) minus its size stay
        at least ``retention.bytes``. The log start offset moves to the end of the last block
        dropped (never backwards, never past the high watermark). On every topic, block rows
        entirely below the log start (an earlier DeleteRecords, or rows from before this
        schema) are deleted. Segments left with no block row get ``dead_since_ms = now_ms``.

        Partitions are taken in ``(topic_id, partition)`` order, at most ``max_partitions``
        scanned and :data:`RETENTION_WORK_BATCH` changed per transaction (the commit's lock
        order, so on PostgreSQL it never deadlocks with commits, and a commit never waits
        long; a failure leaves the transactions before it applied). Only partitions whose
        oldest block can go are touched. Raises ``ValueError`` for a bad ``now_ms`` or
        ``max_partitions``.
        """
        check_lifecycle_time("now_ms", now_ms)
        _check_int("max_partitions", max_partitions, 1, MAX_RETENTION_BATCH)
        with self._read() as db:
            rules = retention_rules(db.execute("SELECT topic_id, config FROM topics"), now_ms)
        moves: list[RetentionMove] = []
        after = (-1, -1)
        while True:
            with self._write() as db:

                def q(sql: str, params: Sequence[object]) -> list[Any]:
                    return db.execute(_qmarks(sql), params).fetchall()

                rows = db.execute(_SQL_RETENTION_SCAN, (*after, max_partitions)).fetchall()
                if not rows:
                    return moves
                states = {(r[0], r[1]): (r[2], r[3]) for r in rows}
                candidates = retention_candidates((r[:3] + r[4:] for r in rows), rules)
                todo, more, after = retention_work(rows, candidates, max_partitions)
                emptied: set[int] = set()
                for tp in todo:
                    log_start, hwm = states[tp]
                    move, segment_ids = retain_partition(q, *tp, log_start, hwm, rules[tp[0]])
                    if move is not None:
                        moves.append(move)
                        emptied |= segment_ids
                if emptied:
                    db.execute(_SQL_MARK_DEAD, (now_ms, _json_encode(sorted(emptied)).decode()))
            if not more:
                return moves

    def mark_unreferenced_segments(self, now_ms: int) -> int:
        """Give every segment with no block row and no ``dead_since_ms`` yet
        ``dead_since_ms = now_ms``; return how many. Retention, :meth:`delete_topic` and
        :meth:`set_log_start_offset` mark the segments they empty themselves; this catches the
        rest: a segment committed with only duplicate batches (no block row from the start)
        and rows removed by any other path. Raises ``ValueError`` for a bad ``now_ms``."""
        check_lifecycle_time("now_ms", now_ms)
        with self._write() as db:
            db.execute(_SQL_MARK_UNREFERENCED, (now_ms,))
            return db.changes()

    def dead_segments(self, dead_before_ms: int, limit: int = 1000) -> list[DeadSegment]:
        """Up to ``limit`` dead segments with ``dead_since_ms <= dead_before_ms``, the
        longest dead first (then in commit order). Raises ``ValueError`` for a bad argument."""
        check_lifecycle_time("dead_before_ms", dead_before_ms)
        _check_int("limit", limit, 1, MAX_RETENTION_BATCH)
        with self._read() as db:
            rows = db.execute(_qmarks(_SQL_DEAD_SEGMENTS), (dead_before_ms, limit)).fetchall()
        return [DeadSegment(*r) for r in rows]

    def forget_segments(self, keys: Sequence[str]) -> int:
        """Delete the rows of the segments named by ``keys`` that are dead (a segment with a
        block row, or not dead, is never forgotten; unknown keys are ignored). Returns how
        many rows went. Call it only after the objects are deleted: a forgotten segment's
        object that still exists is an orphan to the lifecycle job. Raises ``ValueError``
        unless ``keys`` is a sequence of non-empty strings."""
        names = check_segment_keys(keys)
        if not names:
            return 0
        with self._write() as db:
            db.execute(_SQL_FORGET_SEGMENTS, (_json_encode(names).decode(),))
            return db.changes()

    def known_segments(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` have a segment row (live or dead). Raises ``ValueError`` unless
        ``keys`` is a sequence of non-empty strings."""
        names = check_segment_keys(keys)
        if not names:
            return set()
        with self._read() as db:
            rows = db.execute(_SQL_KNOWN_SEGMENTS, (_json_encode(names).decode(),)).fetchall()
        return {r[0] for r in rows}

    # ------------------------------------------------------------------ rewrites

    def live_segments(self, after_segment_id: int = 0, limit: int = 1000) -> list[SegmentUsage]:
        """Up to ``limit`` live segments (``dead_since_ms`` NULL) with ``segment_id >
        after_segment_id``, by segment id, each with the bytes and count of its block rows
        (one aggregate statement; page on with the last id returned). Raises ``ValueError``
        for a bad argument."""
        _check_int("after_segment_id", after_segment_id, 0, _INT64_MAX)
        _check_int("limit", limit, 1, MAX_REWRITE_ROWS)
        with self._read() as db:
            rows = db.execute(_qmarks(_SQL_LIVE_SEGMENTS), (after_segment_id, limit)).fetchall()
        return [segment_usage(r) for r in rows]

    def blocks_of_segments(self, segment_ids: Sequence[int]) -> list[StoredBlock]:
        """The block rows held by the segments ``segment_ids`` (unknown or dead ones have
        none), ordered by ``(topic_id, partition, base_offset)``. Raises ``ValueError`` unless
        ``segment_ids`` is a sequence of at most :data:`MAX_REWRITE_ROWS` ids."""
        ids = check_segment_ids(segment_ids)
        if not ids:
            return []
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_STORED_BLOCK_COLUMNS} FROM segment_blocks AS b "
                "JOIN segments AS s ON s.segment_id = b.segment_id "
                "WHERE b.segment_id IN (SELECT value FROM json_each(?)) "
                "ORDER BY b.topic_id, b.partition, b.base_offset",
                (_json_encode(ids).decode(),),
            ).fetchall()
        return [stored_block(r) for r in rows]

    def partition_blocks(
        self, topic_id: int, partition: int, from_offset: int = 0, limit: int = 1000
    ) -> list[StoredBlock]:
        """Up to ``limit`` block rows of the partition with ``end_offset > from_offset``, by
        base offset (empty for an unknown partition). Raises ``ValueError`` for a bad
        ``from_offset`` or ``limit``."""
        _check_int("from_offset", from_offset, 0, _INT64_MAX)
        _check_int("limit", limit, 1, MAX_REWRITE_ROWS)
        with self._read() as db:
            rows = db.execute(
                _qmarks(_SQL_PARTITION_BLOCKS), (topic_id, partition, from_offset, limit)
            ).fetchall()
        return [stored_block(r) for r in rows]

    def replace_blocks(self, rewrite: BlockRewrite, now_ms: int) -> bool:
        """Switch the block rows ``rewrite.replaced`` to the new object ``rewrite.key`` (already
        PUT), in one transaction; True if it switched.

        If every replaced row still exists unchanged (same topic, partition, base and end
        offset, segment id): they are deleted, the segment row of ``rewrite.key`` is inserted
        live (``created_ms`` and ``size`` from ``rewrite``) with the rows ``rewrite.blocks``,
        and each old segment left with no block row (and the new one, if it got none) gets
        ``dead_since_ms = now_ms``. Readers then find the new rows; a read that already
        looked up an old row finishes within the grace period, before the old object goes.

        Otherwise (retention, DeleteRecords, DeleteTopics or another rewrite changed one of
        them first) nothing changes but the insertion of the new object's segment row,
        already dead since ``now_ms``, so the dead-segment path deletes the object after the
        grace period; returns False.

        Raises ``ValueError`` for a malformed rewrite (:func:`check_rewrite`), also when a new
        row would overlap a row of the partition it does not replace (nothing changes), and
        :class:`DuplicateSegmentError` if ``rewrite.key`` has a segment row already."""
        spans = check_rewrite(rewrite)
        check_lifecycle_time("now_ms", now_ms)
        pk_json = _json_encode(
            [[b.topic_id, b.partition, b.end_offset] for b in rewrite.replaced]
        ).decode()
        with self._write() as db:
            current = {
                (r[0], r[1], r[2]): (r[3], r[4])
                for r in db.execute(
                    "SELECT b.topic_id, b.partition, b.end_offset, b.base_offset, b.segment_id "
                    "FROM json_each(?) AS j JOIN segment_blocks AS b ON b.topic_id = "
                    "j.value ->> 0 AND b.partition = j.value ->> 1 AND b.end_offset = "
                    "j.value ->> 2",
                    (pk_json,),
                )
            }
            try:
                db.execute(_SQL_INSERT_SEGMENT, (rewrite.key, rewrite.size, rewrite.created_ms))
            except apsw.ConstraintError as exc:
                raise DuplicateSegmentError(
                    f"segment {rewrite.key!r} is already committed: a rewrite must PUT a new key"
                ) from exc
            segment_id = db.last_insert_rowid()
            if not unchanged(rewrite, current):
                db.execute(
                    "UPDATE segments SET dead_since_ms = ? WHERE segment_id = ?",
                    (now_ms, segment_id),
                )
                return False
            db.execute(
                "DELETE FROM segment_blocks WHERE (topic_id, partition, end_offset) IN "
                "(SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2 FROM json_each(?) AS j)",
                (pk_json,),
            )
            spans_json = _json_encode([[*tp, lo, hi] for tp, (lo, hi) in spans.items()]).decode()
            kept = db.execute(
                "SELECT b.topic_id, b.partition, b.base_offset, b.end_offset "
                "FROM json_each(?) AS j JOIN segment_blocks AS b ON b.topic_id = j.value ->> 0 "
                "AND b.partition = j.value ->> 1 AND b.end_offset > j.value ->> 2 "
                "AND b.base_offset < j.value ->> 3",
                (spans_json,),
            ).fetchall()
            check_kept_rows(rewrite, kept)  # a ValueError rolls everything back
            db.executemany(_SQL_INSERT_BLOCK, new_block_rows(rewrite, segment_id))
            old = {b.segment_id for b in rewrite.replaced} | {segment_id}
            db.execute(_SQL_MARK_DEAD, (now_ms, _json_encode(sorted(old)).decode()))
            return True

    # ------------------------------------------------------------------ key compaction

    def get_clean_offsets(self, topic_id: int) -> dict[int, CleanState]:
        """The key-compaction checkpoint of each partition of the topic that has one (offsets
        below ``clean_offset`` have been key-compacted), by partition; empty for a topic never
        compacted or unknown."""
        with self._read() as db:
            rows = db.execute(
                "SELECT partition, clean_offset, cleaned_ms FROM clean_offsets "
                "WHERE topic_id = ? ORDER BY partition",
                (topic_id,),
            ).fetchall()
        return {int(p): CleanState(int(c), int(m)) for p, c, m in rows}

    def set_clean_offset(
        self, topic_id: int, partition: int, clean_offset: int, now_ms: int
    ) -> None:
        """Store the partition's key-compaction checkpoint: offsets below ``clean_offset`` have
        been key-compacted, as of ``now_ms`` (replacing the previous checkpoint). A partition
        that no longer exists (its topic was deleted meanwhile) gets none: nothing is stored.
        The checkpoint goes with the topic (:meth:`delete_topic`). Raises ``ValueError`` for a
        negative ``clean_offset`` or a bad ``now_ms``."""
        check_clean_offset(clean_offset, now_ms)
        with self._write() as db:
            db.execute(
                _qmarks(_SQL_SET_CLEAN_OFFSET.format(lock="")),
                (clean_offset, now_ms, topic_id, partition),
            )

    # ------------------------------------------------------------------ expiry of idle state

    def expire_producer_state(self, idle_before_ms: int, limit: int = 10_000) -> int:
        """Delete up to ``limit`` idempotent-producer state rows (one per producer and
        partition) last written before ``idle_before_ms`` (``last_update_ms``, the store's
        clock at the producer's last commit); return how many went. A producer whose state
        went is no longer deduplicated on a retry of an old batch and may start any sequence
        (as Kafka treats a producer it holds no state for). Call again while it returns
        ``limit``. A producer with an open transaction in any partition (``open_txns``) keeps
        all its rows, however long idle: its epoch fences zombies and its markers are still to
        come (its coordinator aborts it on timeout, and only then may it expire). Raises
        ``ValueError`` for a bad argument."""
        check_lifecycle_time("idle_before_ms", idle_before_ms)
        _check_int("limit", limit, 1, MAX_RETENTION_BATCH)
        with self._write() as db:
            db.execute(
                "DELETE FROM producer_state WHERE (topic_id, partition, producer_id) IN "
                "(SELECT topic_id, partition, producer_id FROM producer_state AS s "
                f"WHERE last_update_ms < ? AND {_SQL_NO_OPEN_TXN} LIMIT ?)",
                (idle_before_ms, limit),
            )
            return db.changes()

    def expirable_offset_groups(self, commit_before_ms: int) -> list[str]:
        """The groups whose committed offsets may expire at ``commit_before_ms``: the newest
        commit of each is older (``commit_ms < commit_before_ms``) and it has no stored state
        (:meth:`save_group_state`) saved since then (none at all, or ``updated_ms <
        commit_before_ms``). Sorted by group id (code points). Whether the group is empty is
        the caller's to judge from its state; :meth:`expire_group_offsets` checks these
        conditions again. Raises ``ValueError`` for a bad ``commit_before_ms``."""
        check_lifecycle_time("commit_before_ms", commit_before_ms)
        with self._read() as db:
            rows = db.execute(
                _qmarks(_SQL_EXPIRABLE_GROUPS.format(order="o.group_id")),
                (commit_before_ms, commit_before_ms),
            ).fetchall()
        return [r[0] for r in rows]

    def expire_group_offsets(self, group_id: str, commit_before_ms: int) -> int:
        """Delete all of ``group_id``'s committed offsets, in one transaction, if it still
        qualifies as :meth:`expirable_offset_groups` says (no offset committed at or after
        ``commit_before_ms``, no state saved then or later); return how many went (0 when it
        no longer qualifies). Raises ``ValueError`` for a bad argument."""
        validate_group_id(group_id)
        check_lifecycle_time("commit_before_ms", commit_before_ms)
        with self._write() as db:
            newest = db.execute(
                "SELECT max(commit_ms) FROM group_offsets WHERE group_id = ?", (group_id,)
            ).fetchall()[0][0]
            if newest is None or newest >= commit_before_ms:
                return 0
            if db.execute(_qmarks(_SQL_GROUP_STATE_SINCE), (group_id, commit_before_ms)).fetchall():
                return 0
            db.execute(
                "DELETE FROM group_offsets WHERE group_id = ? AND commit_ms < ?",
                (group_id, commit_before_ms),
            )
            return db.changes()

    # ------------------------------------------------------------------ storage report

    def storage_report(self, now_ms: int, small_object_bytes: int) -> StorageReport:
        """What the object store holds, per topic and in total, as of ``now_ms``.

        Totals: live segments (``objects``, their ``bytes_stored``), the ``bytes_live`` of
        every block row, dead segments not yet forgotten, live segments smaller than
        ``small_object_bytes`` (``small_*``) and segment rows created in the hour up to
        ``now_ms``. Per topic (sorted by name), a :class:`TopicStorage`: the live objects
        holding its blocks, their bytes, its share of those objects (each object's size
        split in proportion to each topic's live bytes in it), records, the smallest log
        start, the smallest max timestamp of its partitions' first blocks (-1 without
        blocks), its ``cleanup.policy`` and, for a compacted topic, the bytes of its blocks
        at or after each partition's clean offset (a partition never compacted counts all).
        A handful of aggregate statements whatever the row count (each reads its own
        moment, so figures may differ by a commit in flight). Raises ``ValueError`` for a bad
        argument."""
        check_lifecycle_time("now_ms", now_ms)
        _check_int("small_object_bytes", small_object_bytes, 0, _INT64_MAX)
        with self._read() as db:

            def q(sql: str, params: Sequence[object]) -> list[Any]:
                return db.execute(_qmarks(sql), params).fetchall()

            return storage_report(q, now_ms, small_object_bytes)

    # ------------------------------------------------------------------ streaming-SQL catalog

    def put_catalog_entry(
        self, kind: str, name: str, definition: bytes, now_ms: int, *, replace: bool = False
    ) -> None:
        """Store the catalog entry ``kind``/``name`` (``definition`` is opaque here; its format
        belongs to the SQL layer), created or updated at ``now_ms``. An existing entry raises
        :class:`CatalogEntryExistsError` unless ``replace`` (then its definition and
        ``updated_ms`` change, ``created_ms`` stays). Raises ``ValueError`` for a bad argument
        (:func:`check_catalog_entry`)."""
        blob = check_catalog_entry(kind, name, definition, now_ms)
        action = _CATALOG_REPLACE if replace else "NOTHING"
        with self._write() as db:
            db.execute(
                _qmarks(_SQL_PUT_CATALOG.format(action=action)),
                (kind, name, blob, now_ms, now_ms),
            )
            if db.changes() == 0:
                raise catalog_exists(kind, name)

    def swap_catalog_entry(
        self, kind: str, name: str, definition: bytes, now_ms: int, *, expect: bytes | None
    ) -> bool:
        """Compare-and-set of catalog entry ``kind``/``name``: store ``definition`` (updated at
        ``now_ms``) only if the entry's current definition is byte for byte ``expect`` (None:
        only if there is no entry, which creates it); True if it was stored, False (nothing
        changed) if another writer changed or created the entry since ``expect`` was read.
        The definition itself is the version compared, so no column is needed; writers whose
        definitions carry their own update time (``kafka-txn`` does) never see an old
        definition come back. Raises ``ValueError`` for a bad argument."""
        blob = check_catalog_entry(kind, name, definition, now_ms)
        old = _check_expected_definition(expect)
        with self._write() as db:
            if old is None:
                db.execute(
                    _qmarks(_SQL_PUT_CATALOG.format(action="NOTHING")),
                    (kind, name, blob, now_ms, now_ms),
                )
            else:
                db.execute(_qmarks(_SQL_SWAP_CATALOG), (blob, now_ms, kind, name, old))
            return db.changes() > 0

    def get_catalog_entry(self, kind: str, name: str) -> bytes | None:
        """The definition of catalog entry ``kind``/``name``, or None. Raises ``ValueError``
        for a bad kind or name."""
        check_catalog_key(kind, name)
        with self._read() as db:
            rows = db.execute(
                "SELECT definition FROM catalog WHERE kind = ? AND name = ?", (kind, name)
            ).fetchall()
        return bytes(rows[0][0]) if rows else None

    def list_catalog_entries(self, kind: str) -> list[tuple[str, bytes]]:
        """Every ``(name, definition)`` of the catalog's ``kind``, sorted by name (code
        points). Raises ``ValueError`` for a bad kind."""
        check_catalog_key(kind, "-")
        with self._read() as db:
            rows = db.execute(
                "SELECT name, definition FROM catalog WHERE kind = ? ORDER BY name", (kind,)
            ).fetchall()
        return [(r[0], bytes(r[1])) for r in rows]

    def delete_catalog_entry(self, kind: str, name: str, *, expect: bytes | None = None) -> bool:
        """Delete catalog entry ``kind``/``name``; False if there was none, or, with
        ``expect``, if its definition is not byte for byte ``expect`` (a compare-and-delete,
        as :meth:`swap_catalog_entry`). Raises ``ValueError`` for a bad argument."""
        check_catalog_key(kind, name)
        old = _check_expected_definition(expect)
        sql, params = _sql_delete_catalog(kind, name, old)
        with self._write() as db:
            db.execute(_qmarks(sql), params)
            return db.changes() > 0

    # ------------------------------------------------------------------ consumer groups

    def commit_offsets(
        self,
        group: str,
        offsets: Sequence[tuple[int, int, int, str] | tuple[int, int, int, str, int]],
    ) -> list[bool]:
        """Store ``(topic_id, partition, offset, metadata[, leader_epoch])`` commits for
        ``group`` in one transaction, replacing earlier ones (a missing leader epoch stores
        -1: unknown). Returns, per entry, False if the partition does not exist (nothing
        stored for it) and True otherwise. ``ValueError`` for a malformed entry
        (:func:`offset_rows`).
        """
        rows = offset_rows(offsets)
        now = _now_ms()
        stored: list[bool] = []
        with self._write() as db:
            for topic_id, partition, offset, metadata, epoch in rows:
                db.execute(
                    _SQL_UPSERT_OFFSET, (group, topic_id, partition, offset, metadata, now, epoch)
                )
                stored.append(db.changes() > 0)
        return stored

    def commit_offset(
        self,
        group: str,
        topic_id: int,
        partition: int,
        offset: int,
        metadata: str,
        leader_epoch: int = -1,
    ) -> None:
        """Store ``group``'s committed ``offset``, ``metadata`` and ``leader_epoch`` (-1:
        unknown) for the partition, replacing any earlier commit. Raises
        :class:`UnknownTopicError` if the partition does not exist.
        """
        entry = (topic_id, partition, offset, metadata, leader_epoch)
        if not self.commit_offsets(group, [entry])[0]:
            raise UnknownTopicError(f"partition {topic_id}/{partition} does not exist")

    def get_offset(self, group: str, topic_id: int, partition: int) -> tuple[int, str] | None:
        """Return ``(offset, metadata)`` last committed by ``group`` for the partition, or None."""
        found = self.get_offset_epoch(group, topic_id, partition)
        return (found[0], found[1]) if found is not None else None

    def get_offset_epoch(
        self, group: str, topic_id: int, partition: int
    ) -> tuple[int, str, int] | None:
        """Return ``(offset, metadata, leader_epoch)`` last committed by ``group`` for the
        partition (leader epoch -1 when the commit gave none), or None."""
        with self._read() as db:
            rows = db.execute(_SQL_GET_OFFSET, (group, topic_id, partition)).fetchall()
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def list_group_offsets(self, group: str) -> list[GroupOffset]:
        """Return all of ``group``'s committed offsets, ordered by (topic_id, partition)."""
        with self._read() as db:
            rows = db.execute(_SQL_GROUP_OFFSETS, (group,)).fetchall()
        return [GroupOffset(*r) for r in rows]

    def delete_group_offsets(
        self, group: str, partitions: Sequence[tuple[int, int]] | None = None
    ) -> int:
        """Remove ``group``'s commits for the given ``(topic_id, partition)`` pairs, or all of
        them when ``partitions`` is None; returns how many were removed. The group's state
        (:meth:`save_group_state`) is a separate concern and stays: delete it with
        :meth:`delete_group_state`."""
        removed = 0
        with self._write() as db:
            if partitions is None:
                db.execute("DELETE FROM group_offsets WHERE group_id = ?", (group,))
                removed = db.changes()
            else:
                for topic_id, partition in partitions:
                    db.execute(
                        "DELETE FROM group_offsets WHERE group_id = ? AND topic_id = ? "
                        "AND partition = ?",
                        (group, topic_id, partition),
                    )
                    removed += db.changes()
        return removed

    def list_offset_groups(self) -> list[str]:
        """Every group that has at least one committed offset, sorted."""
        with self._read() as db:
            rows = db.execute(
                "SELECT DISTINCT group_id FROM group_offsets ORDER BY group_id"
            ).fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ consumer-group state

    def save_group_state(self, group_id: str, generation: int, state: bytes) -> bool:
        """Store ``group_id``'s state blob (opaque here; its format belongs to
        ingest/kafka/groups.py) at ``generation``, replacing the stored one, unless a newer
        generation is stored: then nothing changes and the call returns False (a stale
        coordinator must not overwrite its successor's state). Equal generations overwrite.
        Group state is separate from committed offsets: :meth:`delete_group_offsets` and
        :meth:`delete_topic` leave it alone. Raises ``ValueError`` for bad arguments
        (:func:`validate_group_state`)."""
        blob = validate_group_state(group_id, generation, state)
        now = _now_ms()
        with self._write() as db:
            db.execute(
                "INSERT INTO group_states (group_id, generation, state, updated_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (group_id) DO UPDATE SET "
                "generation = excluded.generation, state = excluded.state, "
                "updated_ms = excluded.updated_ms "
                "WHERE group_states.generation <= excluded.generation",
                (group_id, generation, blob, now),
            )
            return db.changes() > 0

    def load_group_state(self, group_id: str) -> tuple[int, bytes] | None:
        """``(generation, state)`` stored for ``group_id``, or None."""
        with self._read() as db:
            rows = db.execute(_SQL_GROUP_STATE, (group_id,)).fetchall()
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def delete_group_state(self, group_id: str) -> None:
        """Forget ``group_id``'s state (no-op if there is none); its offsets stay."""
        with self._write() as db:
            db.execute("DELETE FROM group_states WHERE group_id = ?", (group_id,))

    def list_group_states(self) -> list[str]:
        """Every group id with stored state, sorted (by code point)."""
        with self._read() as db:
            rows = db.execute("SELECT group_id FROM group_states ORDER BY group_id").fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ agents

    def register_agent(
        self,
        agent_id: str,
        kafka_host: str,
        kafka_port: int,
        grpc_address: str,
        zone: str,
        lease_ms: int,
    ) -> AgentInfo:
        """Register (or re-register, after a restart) the agent ``agent_id`` and return its row.

        A new ``agent_id`` gets the smallest node id >= 0 that no other agent row holds (node
        ids of forgotten agents are reused); an existing one keeps its node id and gets the new
        addresses and zone. Either way ``started_at_ms = heartbeat_at_ms = now`` and
        ``lease_until_ms = now + lease_ms``, now by the store's clock (for SQLite, this
        machine's). Raises ``ValueError`` for bad arguments (:func:`validate_agent`).
        """
        validate_agent(agent_id, kafka_host, kafka_port, grpc_address, zone, lease_ms)
        with self._write() as db:
            now = _now_ms()
            rows = db.execute(_SQL_AGENT_NODE_IDS).fetchall()
            mine = [n for a, n in rows if a == agent_id]
            node_id = mine[0] if mine else smallest_free_node_id([n for _, n in rows])
            row = db.execute(
                f"INSERT INTO agents ({_AGENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (agent_id) DO UPDATE SET kafka_host = excluded.kafka_host, "
                "kafka_port = excluded.kafka_port, grpc_address = excluded.grpc_address, "
                "zone = excluded.zone, started_at_ms = excluded.started_at_ms, "
                "heartbeat_at_ms = excluded.heartbeat_at_ms, "
                f"lease_until_ms = excluded.lease_until_ms RETURNING {_AGENT_COLUMNS}",
                (
                    agent_id,
                    node_id,
                    kafka_host,
                    kafka_port,
                    grpc_address,
                    zone,
                    now,
                    now,
                    now + lease_ms,
                ),
            ).fetchall()[0]
        return agent_row(row, now)

    def heartbeat_agent(self, agent_id: str, lease_ms: int) -> list[AgentInfo]:
        """Renew ``agent_id``'s lease (``heartbeat_at_ms = now``, ``lease_until_ms = now +
        lease_ms``) and return every registered agent ordered by node id, ``alive`` computed at
        that same instant. Raises :class:`AgentUnknownError` if the agent's row is gone (the
        caller registers again) and ``ValueError`` for a bad ``lease_ms``."""
        validate_lease(lease_ms)
        with self._write() as db:
            now = _now_ms()
            db.execute(
                "UPDATE agents SET heartbeat_at_ms = ?, lease_until_ms = ? WHERE agent_id = ?",
                (now, now + lease_ms, agent_id),
            )
            if db.changes() == 0:
                raise AgentUnknownError(
                    f"agent {agent_id!r} is not registered (it was forgotten, or never "
                    "registered): register it again"
                )
            rows = db.execute(_SQL_AGENTS).fetchall()
        return [agent_row(r, now) for r in rows]

    def list_agents(self) -> list[AgentInfo]:
        """Every registered agent (alive or not) ordered by node id; ``alive`` as of now."""
        with self._read() as db:
            now = _now_ms()
            rows = db.execute(_SQL_AGENTS).fetchall()
        return [agent_row(r, now) for r in rows]

    def deregister_agent(self, agent_id: str) -> None:
        """A clean stop: end ``agent_id``'s lease now (``lease_until_ms = now``), so it shows as
        not alive at once. The row and its node id stay. No-op for an unknown agent."""
        with self._write() as db:
            now = _now_ms()
            db.execute(
                "UPDATE agents SET lease_until_ms = ? WHERE agent_id = ? AND lease_until_ms > ?",
                (now, agent_id, now),
            )

    def forget_agent(self, agent_id: str) -> bool:
        """Delete ``agent_id``'s row, freeing its node id for the next new agent; False if it
        was not registered. A live agent forgotten gets :class:`AgentUnknownError` at its next
        heartbeat and registers again."""
        with self._write() as db:
            db.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,))
            return db.changes() > 0

    # ------------------------------------------------------------------ producers

    def allocate_producer_id(self) -> tuple[int, int]:
        """Return ``(producer_id, 0)`` with a producer id never returned before by any store on
        this file."""
        with self._write() as db:
            producer_id = db.execute(_SQL_ALLOCATE_PRODUCER_ID).fetchall()[0][0]
        return int(producer_id), 0


def _block_location(r: Any) -> BlockLocation:
    return BlockLocation(
        segment_key=r[0],
        byte_offset=r[1],
        byte_length=r[2],
        base_offset=r[3],
        end_offset=r[4],
        record_count=r[5],
        max_timestamp=r[6],
        skipped_batches=_skipped_decoder.decode(r[7]) if r[7] is not None else (),
    )
