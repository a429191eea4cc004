"""The metadata store on PostgreSQL, for a cluster of agents sharing one metadata service.

:class:`PostgresMetadataStore` has the public methods and semantics of
:class:`metadata.store.MetadataStore` (the SQLite backend; its docstrings are the reference)
and shares its record types, validation and offset assignment (:func:`metadata.store.
assign_offsets`). Each store holds a ``psycopg_pool.ConnectionPool``; every call is one
transaction on one pooled connection. The schema and its migrations are in
:mod:`metadata.postgres_migrations`.

Concurrency and failures (rules):

1. ``commit_segment`` assigns offsets inside its transaction: it locks the partition rows it
   advances with one ``SELECT ... ORDER BY topic_id, partition FOR UPDATE`` (PostgreSQL locks
   the rows in that order), reads their high watermarks and the producers' state under those
   locks, and writes blocks, watermarks and producer state before committing. Every
   transaction that locks several partition rows locks them in that same order, so
   concurrent commits from any number of agents serialise per partition, never deadlock and
   never assign an offset twice. A producer retrying through another agent meets the same
   producer state, so the retry is deduplicated. A commit of 1,000 partitions or more first
   locks its first row alone (same order), so the big statement starts after any commit it
   queued behind and does not re-check each row that commit changed. ``commit_segments``
   does the same for several segments at once: one lock round over all their partitions,
   then the segments' offsets assigned in list order; blocks go in with one COPY.
   Offset commits do not lock partition rows (so they never queue behind segment commits):
   they share-lock the topic row, which ``delete_topic`` locks first, then its partitions.
2. Transactions run at READ COMMITTED; reads are ``READ ONLY`` transactions.
3. Waiting is bounded by ``busy_timeout_ms`` from the start of the call: the pool wait,
   ``lock_timeout`` (set per transaction to what is left) and the retries all count. A
   serialization failure, a deadlock (should one ever happen), a lock not granted in time, a
   lost or refused connection, or no free pooled connection roll the transaction back and
   retry it with exponential backoff (1 ms doubling to 50 ms). Past the bound the call
   raises :class:`MetadataUnavailableError` with ``REQUEST_TIMED_OUT`` (retriable); a full
   disk on the server raises it with ``KAFKA_STORAGE_ERROR`` at once.
4. A write notes its transaction id (``txid_current()``). If the connection is lost while
   ``COMMIT`` is in flight, the store asks the server (``txid_status`` on another connection,
   within the busy timeout but for at least a second) whether it committed: if it did, the
   call returns its result; if not, it is retried like any lost connection. If that cannot be
   learnt in time, the call raises a plain :class:`MetadataError` saying the outcome is
   unknown -- never :class:`MetadataUnavailableError`, which promises that nothing changed
   (the uploader deletes the segment object on that promise).
5. psycopg_pool reconnects a lost connection with backoff (1 s, 2 s, 4 s, ...), so after the
   server comes back a pool can sit idle for many seconds. When a call gets no connection
   although none of this store's connections is in use, and a direct connection succeeds, the
   store swaps in a fresh pool (the old one is closed in the background); calls resume at once.
6. ``commit_segment`` sends ``pg_notify(COMMIT_CHANNEL, payload)`` as its transaction's last
   statement; PostgreSQL delivers notifications at commit, so every session listening on it
   hears of each committed segment exactly once and never of one rolled back. The payload
   format is :mod:`metadata.commit_notice`'s.
8. Data lifecycle: a transaction that marks segments dead or forgets them (retention,
   ``delete_topic``, ``set_log_start_offset``, ``mark_unreferenced_segments``,
   ``forget_segments``) locks the segment rows it may change in ``segment_id`` order
   (``SELECT ... ORDER BY segment_id FOR UPDATE``) and only after any partition rows it locks
   (rule 1 order), so these never deadlock with each other or with commits (a commit inserts
   new segment rows and locks no existing one). A segment is marked dead by a statement run
   after that lock is granted: of two transactions removing the last block rows of one
   segment from different partitions, the second to lock sees the first's removal committed,
   so the segment is always marked. Retention, marking and forgetting are idempotent, so any
   number of agents' lifecycle passes may run at once.
9. Calls block: processes make them from worker threads. With ``forbid_loop_calls``
   (``STREAMHOUSE_DEBUG_LOOP_CALLS=1``) a call on an event-loop thread raises
   :class:`metadata.store.LoopCallError`.
10. Rewrites (``replace_blocks``) lock the partition rows of the replaced blocks in rule 1's
   order before reading those rows, then mark segments as rule 8 says, so a rewrite never
   deadlocks with commits, retention, DeleteRecords, ``delete_topic`` or another rewrite, and
   whichever of them touches a partition second sees what the first did. The key-compaction
   checkpoint (``set_clean_offset``) key-share locks its partition row, which
   ``delete_topic`` locks for update before deleting the checkpoints; expiry of a group's
   offsets locks the group's offset rows (skipping, and then sparing the group, any row an
   offset commit holds) before checking their commit times.
11. ``alter_topic_config`` reads the topic row ``FOR NO KEY UPDATE`` before changing its
   config, so two alterations of one topic run one after the other (the second changes what
   the first stored: both stay). That lock does not conflict with the key-share locks of
   offset commits; ``delete_topic``'s ``FOR UPDATE`` waits for it (or goes first, and the
   alteration finds no topic).
12. ``commit_query_step`` locks its query's ``query_checkpoints`` row (``FOR UPDATE``) before
   anything else, then commits the segment under rule 1's locks and sends rule 6's notice.
   A second commit of the same query waits for the row, then (READ COMMITTED re-reads the
   locked row) sees the first one's step or a newer claim's generation and is fenced; a claim
   (one upsert of the row) and a drop wait for it likewise. Nothing locks a query row after
   partition rows, so these never deadlock with segment commits or ``delete_topic``.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

import msgspec
import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from metadata import postgres_migrations
from metadata.commit_notice import COMMIT_CHANNEL, commit_notification
from metadata.errors import (
    AgentUnknownError,
    DuplicateSegmentError,
    InvalidPartitionsError,
    MetadataError,
    MetadataUnavailableError,
    OffsetOutOfRangeError,
    TopicExistsError,
    UnknownTopicError,
)
from metadata.store import (
    _AGENT_COLUMNS,
    _CATALOG_REPLACE,
    _INT64_MAX,
    _SQL_CLAIM_QUERY,
    _SQL_DEAD_SEGMENTS,
    _SQL_DROP_BLOCKS,
    _SQL_DROP_QUERY,
    _SQL_EXPIRABLE_GROUPS,
    _SQL_GET_QUERY,
    _SQL_GROUP_STATE_SINCE,
    _SQL_KEEP_BY_TIME,
    _SQL_LIST_QUERIES,
    _SQL_LIVE_SEGMENTS,
    _SQL_NO_OPEN_TXN,
    _SQL_PARTITION_BLOCKS,
    _SQL_PUT_CATALOG,
    _SQL_QUERY_STATE,
    _SQL_SET_CLEAN_OFFSET,
    _SQL_SET_QUERY_STEP,
    _SQL_SWAP_CATALOG,
    _STORED_BLOCK_COLUMNS,
    DEBUG_LOOP_CALLS_ENV,
    MAX_ABORTED_LISTED,
    MAX_RETENTION_BATCH,
    MAX_REWRITE_ROWS,
    SQL_ABORTED_TXNS,
    SQL_DROP_ABORTED_BELOW,
    AgentInfo,
    BatchResult,
    BlockLocation,
    BlockRewrite,
    CleanState,
    CommitBlock,
    DeadSegment,
    DeletedTopic,
    GroupOffset,
    PartitionState,
    QueryCheckpoint,
    RetentionMove,
    RetentionRule,
    SegmentUsage,
    StorageReport,
    StoredBlock,
    TopicInfo,
    _batches_decoder,
    _block_location,
    _check_expected_definition,
    _check_int,
    _check_off_loop,
    _check_segment_keys,
    _encode_config,
    _json_encode,
    _new_topic_uuid,
    _now_ms,
    _Producer,
    _producer_keys,
    _sql_delete_catalog,
    _topic,
    _validate_partitions,
    agent_row,
    assign_offsets,
    catalog_exists,
    check_catalog_entry,
    check_catalog_key,
    check_clean_offset,
    check_kept_rows,
    check_lifecycle_time,
    check_query_name,
    check_query_segment,
    check_query_step,
    check_rewrite,
    check_segment_ids,
    check_segment_keys,
    merge_topic_config,
    new_block_rows,
    offset_rows,
    query_checkpoint,
    query_fenced,
    retention_candidates,
    retention_rules,
    retention_work,
    segment_usage,
    smallest_free_node_id,
    storage_report,
    stored_block,
    txn_keys,
    unchanged,
    validate_agent,
    validate_group_id,
    validate_group_state,
    validate_lease,
    validate_topic_name,
)
from metadata.transactions import AbortedTxn, TxnLog
from streamhouse.errors import ErrorCode

T = TypeVar("T")

__all__ = ["AGENTS_LOCK", "COMMIT_CHANNEL", "DEFAULT_POOL_SIZE", "PostgresMetadataStore"]

#: Connections per store by default: one per AsyncMetadata thread (1 read + 4 write + 1
#: control), so its writes wait for row locks side by side, and neither a read nor a heartbeat
#: ever waits for a connection.
DEFAULT_POOL_SIZE: Final = 6
#: Key of the transaction-level advisory lock held while a new agent picks its node id
#: ("SHAG"), so concurrent registrations never pick the same one.
AGENTS_LOCK: Final = 0x53484147

#: The store's clock: milliseconds since the epoch by the server's ``clock_timestamp()``, so
#: every agent's leases are measured on one clock whatever their own clocks say.
_SQL_NOW_MS = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
_SQL_AGENTS = f"SELECT {_AGENT_COLUMNS} FROM agents ORDER BY node_id"

_TOPIC_COLUMNS = "topic_id, name, uuid, partitions, config, created_ms"
_SQL_TOPIC_BY_NAME = f"SELECT {_TOPIC_COLUMNS} FROM topics WHERE name = %s"
_SQL_TOPIC_BY_NAME_LOCKED = _SQL_TOPIC_BY_NAME + " FOR UPDATE"
_SQL_TOPIC_FOR_CONFIG = _SQL_TOPIC_BY_NAME + " FOR NO KEY UPDATE"
_SQL_TOPIC_BY_ID = f"SELECT {_TOPIC_COLUMNS} FROM topics WHERE topic_id = %s"
_SQL_TOPIC_BY_UUID = f"SELECT {_TOPIC_COLUMNS} FROM topics WHERE uuid = %s"
_SQL_TOPICS = f'SELECT {_TOPIC_COLUMNS} FROM topics ORDER BY name COLLATE "C"'
_SQL_INSERT_PARTITIONS = (
    "INSERT INTO partitions (topic_id, partition) SELECT %s, generate_series(%s::int, %s::int)"
)
# The last stable offset comes from the statement that reads the high watermark.
_PARTITION_COLUMNS = (
    "SELECT p.topic_id, p.partition, p.log_start_offset, p.high_watermark, "
    "coalesce((SELECT min(o.first_offset) FROM open_txns AS o WHERE o.topic_id = p.topic_id "
    "AND o.partition = p.partition), p.high_watermark) FROM partitions AS p "
)
_SQL_PARTITION = _PARTITION_COLUMNS + "WHERE p.topic_id = %s AND p.partition = %s"
_SQL_PARTITIONS = _PARTITION_COLUMNS + "WHERE p.topic_id = %s ORDER BY p.partition"
_SQL_OPEN_TXNS = (
    "SELECT o.topic_id, o.partition, o.producer_id, o.first_offset FROM open_txns AS o "
    "JOIN unnest(%s::bigint[], %s::int[], %s::bigint[]) AS k (topic_id, partition, producer_id) "
    "ON o.topic_id = k.topic_id AND o.partition = k.partition AND o.producer_id = k.producer_id"
)
_SQL_CLOSE_TXNS = (
    "DELETE FROM open_txns AS o USING unnest(%s::bigint[], %s::int[], %s::bigint[]) "
    "AS k (topic_id, partition, producer_id) WHERE o.topic_id = k.topic_id "
    "AND o.partition = k.partition AND o.producer_id = k.producer_id"
)
_SQL_OPEN_TXNS_UPSERT = (
    "INSERT INTO open_txns (topic_id, partition, producer_id, first_offset) "
    "SELECT * FROM unnest(%s::bigint[], %s::int[], %s::bigint[], %s::bigint[]) "
    "ON CONFLICT (topic_id, partition, producer_id) DO UPDATE SET "
    "first_offset = excluded.first_offset"
)
_SQL_INSERT_ABORTED = (
    "INSERT INTO aborted_txns (topic_id, partition, last_offset, producer_id, first_offset) "
    "SELECT * FROM unnest(%s::bigint[], %s::int[], %s::bigint[], %s::bigint[], %s::bigint[]) "
    "ON CONFLICT DO NOTHING"
)
# Rule 1: the partition rows of a commit, locked in (topic_id, partition) order.
_SQL_LOCK_HWMS = (
    "SELECT p.topic_id, p.partition, p.high_watermark FROM partitions AS p "
    "JOIN unnest(%s::bigint[], %s::int[]) AS k (topic_id, partition) "
    "ON p.topic_id = k.topic_id AND p.partition = k.partition "
    "ORDER BY p.topic_id, p.partition FOR UPDATE OF p"
)
#: Commits of at least this many partitions take rule 1's locks in two statements.
_WIDE_COMMIT: Final = 1000
_SQL_LOCK_FIRST = "SELECT 1 FROM partitions WHERE topic_id = %s AND partition = %s FOR UPDATE"
_SQL_PRODUCER_STATES = (
    "SELECT s.topic_id, s.partition, s.producer_id, s.producer_epoch, s.batches "
    "FROM producer_state AS s "
    "JOIN unnest(%s::bigint[], %s::int[], %s::bigint[]) AS k (topic_id, partition, producer_id) "
    "ON s.topic_id = k.topic_id AND s.partition = k.partition AND s.producer_id = k.producer_id"
)
_SQL_SET_HWMS = (
    "UPDATE partitions AS p SET high_watermark = k.hwm "
    "FROM unnest(%s::bigint[], %s::int[], %s::bigint[]) AS k (topic_id, partition, hwm) "
    "WHERE p.topic_id = k.topic_id AND p.partition = k.partition"
)
_SQL_INSERT_SEGMENTS = (
    "INSERT INTO segments (key, size, created_ms) "
    "SELECT k.key, k.size, %s FROM unnest(%s::text[], %s::bigint[]) AS k (key, size) "
    "ON CONFLICT (key) DO NOTHING RETURNING segment_id, key"
)
# segment_blocks rows go in with COPY (text format; written by _copy_blocks): cheaper per row
# than an INSERT ... SELECT FROM unnest(...) for a wide commit's 10,000 blocks.
_SQL_COPY_BLOCKS = (
    "COPY segment_blocks (topic_id, partition, end_offset, base_offset, segment_id, "
    "byte_offset, byte_length, record_count, max_timestamp, skipped_batches, raw_length) "
    "FROM STDIN"
)
_SQL_UPSERT_PRODUCER_STATES = (
    "INSERT INTO producer_state (topic_id, partition, producer_id, producer_epoch, batches, "
    "last_update_ms) SELECT * FROM unnest(%s::bigint[], %s::int[], %s::bigint[], %s::int[], "
    "%s::text[], %s::bigint[]) "
    "ON CONFLICT (topic_id, partition, producer_id) DO UPDATE SET "
    "producer_epoch = excluded.producer_epoch, batches = excluded.batches, "
    "last_update_ms = excluded.last_update_ms"
)
_SQL_BLOCK_COLUMNS = (
    "SELECT s.key, b.byte_offset, b.byte_length, b.base_offset, b.end_offset, b.record_count, "
    "b.max_timestamp, b.skipped_batches "
    "FROM segment_blocks AS b JOIN segments AS s ON s.segment_id = b.segment_id "
)
_SQL_FIND_BLOCKS = (
    _SQL_BLOCK_COLUMNS + "WHERE b.topic_id = %s AND b.partition = %s AND b.end_offset > %s "
    "ORDER BY b.end_offset LIMIT %s"
)
_SQL_FIND_BLOCK_BY_TIMESTAMP = (
    _SQL_BLOCK_COLUMNS + "WHERE b.topic_id = %s AND b.partition = %s AND b.end_offset > %s "
    "AND b.max_timestamp >= %s ORDER BY b.end_offset LIMIT 1"
)
_SQL_FIND_MAX_TIMESTAMP_BLOCK = (
    _SQL_BLOCK_COLUMNS + "WHERE b.topic_id = %s AND b.partition = %s AND b.end_offset > %s "
    "ORDER BY b.max_timestamp DESC, b.end_offset LIMIT 1"
)
_SQL_UPSERT_OFFSET = (
    'INSERT INTO group_offsets (group_id, topic_id, partition, "offset", metadata, commit_ms, '
    "leader_epoch) SELECT %(g)s, %(t)s, %(p)s, %(o)s, %(m)s, %(now)s, %(e)s WHERE EXISTS "
    "(SELECT 1 FROM topics AS t JOIN partitions AS p ON p.topic_id = t.topic_id "
    "WHERE t.topic_id = %(t)s AND p.partition = %(p)s FOR KEY SHARE OF t) "
    "ON CONFLICT (group_id, topic_id, partition) DO UPDATE SET "
    '"offset" = excluded."offset", metadata = excluded.metadata, commit_ms = excluded.commit_ms, '
    "leader_epoch = excluded.leader_epoch"
)
_SQL_GET_OFFSET = (
    'SELECT "offset", metadata, leader_epoch FROM group_offsets '
    "WHERE group_id = %s AND topic_id = %s AND partition = %s"
)
_SQL_GROUP_OFFSETS = (
    'SELECT topic_id, partition, "offset", metadata, commit_ms, leader_epoch FROM group_offsets '
    "WHERE group_id = %s ORDER BY topic_id, partition"
)
_SQL_ALLOCATE_PRODUCER_ID = (
    "UPDATE producer_ids SET next_producer_id = next_producer_id + 1 WHERE id = 1 "
    "RETURNING next_producer_id - 1"
)

# Data lifecycle (rule 8). A batch of partitions in commit order, each with its oldest block.
_SQL_RETENTION_SCAN = (
    "SELECT p.topic_id, p.partition, p.log_start_offset, b.end_offset, b.max_timestamp "
    "FROM partitions AS p LEFT JOIN LATERAL (SELECT end_offset, max_timestamp "
    "FROM segment_blocks AS c WHERE c.topic_id = p.topic_id AND c.partition = p.partition "
    "ORDER BY c.end_offset LIMIT 1) AS b ON true "
    "WHERE (p.topic_id, p.partition) > (%s, %s) ORDER BY p.topic_id, p.partition LIMIT %s"
)
_SQL_LOCK_PARTITIONS = (
    "SELECT p.topic_id, p.partition, p.log_start_offset, p.high_watermark FROM partitions AS p "
    "JOIN unnest(%s::bigint[], %s::int[]) AS k (topic_id, partition) "
    "ON p.topic_id = k.topic_id AND p.partition = k.partition "
    "ORDER BY p.topic_id, p.partition FOR UPDATE OF p"
)
# Retention for many partitions at once (arrays of topic_id, partition, log start, limit):
# each partition's new log start by time (the end of the last block before the first one to
# keep) and by size (Kafka's rule, as metadata.store's _SQL_BYTES_END).
_SQL_TIME_ENDS = (
    "SELECT k.t, k.p, (SELECT max(b.end_offset) FROM segment_blocks AS b "
    "WHERE b.topic_id = k.t AND b.partition = k.p AND b.end_offset > k.lso "
    "AND b.end_offset < COALESCE((SELECT c.end_offset FROM segment_blocks AS c "
    "WHERE c.topic_id = k.t AND c.partition = k.p AND c.end_offset > k.lso AND "
    + _SQL_KEEP_BY_TIME.replace("b.", "c.").format(cutoff="k.cutoff")
    + " ORDER BY c.end_offset LIMIT 1), 9223372036854775807)) "
    "FROM unnest(%s::bigint[], %s::int[], %s::bigint[], %s::bigint[]) AS k (t, p, lso, cutoff)"
)
_SQL_BYTES_ENDS = (
    "SELECT k.t, k.p, (SELECT max(w.end_offset) FROM (SELECT end_offset, "
    "sum(raw_length) OVER (ORDER BY end_offset) AS upto, sum(raw_length) OVER () AS total "
    "FROM segment_blocks AS b WHERE b.topic_id = k.t AND b.partition = k.p "
    "AND b.end_offset > k.lso) AS w WHERE w.total - w.upto >= k.max_bytes) "
    "FROM unnest(%s::bigint[], %s::int[], %s::bigint[], %s::bigint[]) "
    "AS k (t, p, lso, max_bytes)"
)
_SQL_DROP_BLOCKS_MANY = (
    "WITH d AS (DELETE FROM segment_blocks AS b "
    "USING unnest(%s::bigint[], %s::int[], %s::bigint[]) AS k (t, p, upto) "
    "WHERE b.topic_id = k.t AND b.partition = k.p AND b.end_offset <= k.upto "
    "RETURNING b.topic_id, b.partition, b.segment_id, b.byte_length) "
    "SELECT topic_id, partition, count(*), sum(byte_length), array_agg(DISTINCT segment_id) "
    "FROM d GROUP BY topic_id, partition"
)
_SQL_MOVE_LOG_STARTS = (
    "UPDATE partitions AS p SET log_start_offset = k.lso "
    "FROM unnest(%s::bigint[], %s::int[], %s::bigint[]) AS k (t, p, lso) "
    "WHERE p.topic_id = k.t AND p.partition = k.p"
)
_SQL_DROP_ABORTED_MANY = (
    "DELETE FROM aborted_txns AS a USING unnest(%s::bigint[], %s::int[], %s::bigint[]) "
    "AS k (t, p, lso) WHERE a.topic_id = k.t AND a.partition = k.p AND a.last_offset < k.lso"
)
_SQL_NO_BLOCK = "NOT EXISTS (SELECT 1 FROM segment_blocks AS b WHERE b.segment_id = s.segment_id)"
_SQL_LOCK_SEGMENTS = (
    "SELECT segment_id FROM segments WHERE segment_id = ANY(%s::bigint[]) "
    "AND dead_since_ms IS NULL ORDER BY segment_id FOR UPDATE"
)
_SQL_MARK_DEAD = (
    "UPDATE segments AS s SET dead_since_ms = %s WHERE s.segment_id = ANY(%s::bigint[]) "
    f"AND s.dead_since_ms IS NULL AND {_SQL_NO_BLOCK}"
)
_SQL_LOCK_UNREFERENCED = (
    f"SELECT s.segment_id FROM segments AS s WHERE s.dead_since_ms IS NULL AND {_SQL_NO_BLOCK} "
    "ORDER BY s.segment_id FOR UPDATE"
)
_SQL_LOCK_DEAD_BY_KEY = (
    "SELECT segment_id FROM segments WHERE key = ANY(%s::text[]) "
    "AND dead_since_ms IS NOT NULL ORDER BY segment_id FOR UPDATE"
)
_SQL_FORGET_SEGMENTS = (
    "DELETE FROM segments AS s WHERE s.segment_id = ANY(%s::bigint[]) "
    f"AND s.dead_since_ms IS NOT NULL AND {_SQL_NO_BLOCK}"
)

_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def _write_txns(cur: Any, txns: TxnLog) -> None:
    """The open- and aborted-transaction rows a commit changed (metadata.transactions)."""
    closed = txns.closed()
    if closed:
        cur.execute(
            _SQL_CLOSE_TXNS,
            (_ints(k[0] for k in closed), _ints(k[1] for k in closed), _ints(k[2] for k in closed)),
        )
    opened = txns.opened()
    if opened:
        cur.execute(_SQL_OPEN_TXNS_UPSERT, tuple(_ints(r[i] for r in opened) for i in range(4)))
    if txns.aborted:
        rows = txns.aborted
        cur.execute(_SQL_INSERT_ABORTED, tuple(_ints(r[i] for r in rows) for i in range(5)))


def _ints(values: Iterable[int]) -> str:
    """An int array literal (``{1,2,3}``) for a ``%s::bigint[]`` parameter: building the text
    with one join is ~10x cheaper than psycopg dumping a 10,000-element list."""
    return "{" + ",".join(map(str, values)) + "}"


def _json_texts(values: Iterable[str | None]) -> str:
    """A text array literal of JSON arrays of ints (or NULL) for a ``%s::text[]``: the
    elements hold only digits, '-', ',' and brackets, so quoting them needs no escaping."""
    return "{" + ",".join("NULL" if v is None else f'"{v}"' for v in values) + "}"


def _copy_blocks(cur: Any, rows: Sequence[tuple[object, ...]]) -> None:
    """Insert ``segment_blocks`` rows (as :func:`metadata.store.assign_offsets` makes them)
    with one COPY. Text format: the values are integers and NULL or a JSON array of integers,
    which hold no tab, newline or backslash, so no escaping is needed."""
    null = "\\N"
    data = "".join(
        f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\t{r[4]}\t{r[5]}\t{r[6]}\t{r[7]}\t{r[8]}\t"
        f"{null if r[9] is None else r[9]}\t{r[10]}\n"
        for r in rows
    )
    with cur.copy(_SQL_COPY_BLOCKS) as copy:
        copy.write(data)


def _mark_dead(cur: Any, segment_ids: Iterable[int], now_ms: int) -> int:
    """Mark those of ``segment_ids`` that have no block row left dead since ``now_ms``; their
    rows are locked first in ``segment_id`` order (rule 8). Returns how many were marked."""
    ids = sorted(set(segment_ids))
    if not ids:
        return 0
    cur.execute(_SQL_LOCK_SEGMENTS, (_ints(ids),))
    locked = [r[0] for r in cur.fetchall()]
    if not locked:
        return 0
    cur.execute(_SQL_MARK_DEAD, (now_ms, _ints(locked)))
    return int(cur.rowcount)


def _retain_partitions(
    cur: Any, locked: Sequence[Sequence[Any]], rules: Mapping[int, RetentionRule]
) -> tuple[list[RetentionMove], set[int]]:
    """:func:`metadata.store.retain_partition` for many locked partitions at once
    (``(topic_id, partition, log_start_offset, high_watermark)`` rows), a few set-based
    statements instead of a few per partition. Returns the moves in (topic_id, partition)
    order and the ids of the segments that lost block rows."""
    states = {(t, p): (int(lso), int(hwm)) for t, p, lso, hwm in locked}
    new = {tp: lso for tp, (lso, _) in states.items()}
    # By time, then by size: each rule's statement gives the end of the last block it drops.
    for sql, limit_of in (
        (_SQL_TIME_ENDS, lambda rule: rule.cutoff_ms),
        (_SQL_BYTES_ENDS, lambda rule: rule.max_bytes),
    ):
        limited = [(tp, limit_of(rules[tp[0]])) for tp in states]
        limited = [(tp, limit) for tp, limit in limited if limit is not None]
        if not limited:
            continue
        cur.execute(
            sql,
            (
                _ints(tp[0] for tp, _ in limited),
                _ints(tp[1] for tp, _ in limited),
                _ints(states[tp][0] for tp, _ in limited),
                _ints(limit for _, limit in limited),
            ),
        )
        for t, p, end in cur.fetchall():
            if end is not None:
                new[(t, p)] = max(new[(t, p)], int(end))
    for tp, start in new.items():
        new[tp] = min(start, states[tp][1])  # never past the HWM
    tps = sorted(new)
    cur.execute(
        _SQL_DROP_BLOCKS_MANY,
        (_ints(t for t, _ in tps), _ints(p for _, p in tps), _ints(new[tp] for tp in tps)),
    )
    dropped = {(t, p): (int(n), int(b), ids) for t, p, n, b, ids in cur.fetchall()}
    moved = [tp for tp in tps if new[tp] > states[tp][0]]
    if moved:
        cur.execute(
            _SQL_MOVE_LOG_STARTS,
            (
                _ints(t for t, _ in moved),
                _ints(p for _, p in moved),
                _ints(new[tp] for tp in moved),
            ),
        )
        cur.execute(
            _SQL_DROP_ABORTED_MANY,
            (
                _ints(t for t, _ in moved),
                _ints(p for _, p in moved),
                _ints(new[tp] for tp in moved),
            ),
        )
    moves: list[RetentionMove] = []
    emptied: set[int] = set()
    for tp in tps:
        count, size, ids = dropped.get(tp, (0, 0, []))
        if count or new[tp] > states[tp][0]:
            moves.append(RetentionMove(tp[0], tp[1], states[tp][0], new[tp], count, size))
            emptied.update(int(i) for i in ids)
    return moves, emptied


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, for messages and logs."""
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", dsn))


def _bytes(value: object) -> bytes:
    return bytes(value)  # type: ignore[call-overload]  # BYTEA comes back as bytes already


def _topic_row(row: Sequence[object]) -> TopicInfo:
    topic_id, name, uuid, partitions, config, created_ms = row
    return _topic((topic_id, name, _bytes(uuid), partitions, config, created_ms))


class PostgresMetadataStore:
    """Metadata of one StreamHouse cluster, kept in a PostgreSQL database shared by its agents.

    Opening connects the pool and migrates the database to the latest schema
    (:mod:`metadata.postgres_migrations`); a database from newer code raises
    :class:`~metadata.errors.SchemaTooNewError`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        busy_timeout_ms: int = 10_000,
        pool_size: int = DEFAULT_POOL_SIZE,
        forbid_loop_calls: bool | None = None,
    ) -> None:
        """Connect to ``dsn`` (a libpq URL or key=value string) and migrate.

        ``busy_timeout_ms`` bounds how long a call waits for locks, connections and retries
        before it raises :class:`MetadataUnavailableError`; ``pool_size`` is the most
        connections this store opens. Opening waits for the server up to the same bound.
        """
        if forbid_loop_calls is None:
            flag = os.environ.get(DEBUG_LOOP_CALLS_ENV, "").strip().lower()
            forbid_loop_calls = flag in ("1", "true", "yes", "on")
        self._forbid_loop_calls = forbid_loop_calls
        self.path = redact_dsn(dsn)
        if forbid_loop_calls:
            _check_off_loop(self.path, "__init__")
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must not be negative, got {busy_timeout_ms}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.busy_timeout_ms = busy_timeout_ms
        self._closed = threading.Event()
        self._dsn = dsn
        self._pool_size = pool_size
        self._lock = threading.Lock()  # guards _in_use and _pool
        self._renew_lock = threading.Lock()
        self._in_use = 0  # connections of this store's pool held by calls right now
        self._pool = self._new_pool()
        try:
            self._call(self._migrate, write=True, transaction=False)
        except BaseException:
            self._pool.close()
            raise

    def _new_pool(self) -> ConnectionPool[Any]:
        pool: ConnectionPool[Any] = ConnectionPool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True},
            open=False,
            name=f"streamhouse-metadata-{id(self):x}",
        )
        pool.open(wait=False)
        return pool

    def _renew_pool(self, stuck: ConnectionPool[Any]) -> None:
        """Replace ``stuck`` if the server answers a direct connection (rule 5)."""
        with self._renew_lock:
            if self._pool is not stuck or self._closed.is_set():
                return  # another call renewed it already
            try:
                psycopg.connect(self._dsn, connect_timeout=1).close()
            except psycopg.Error:
                return  # still down: the pool's own reconnection is as good as ours
            fresh = self._new_pool()
            with self._lock:
                self._pool = fresh
        # Closing waits for the old pool's workers; not on this call's time.
        threading.Thread(target=stuck.close, name="metadata-pool-close", daemon=True).start()

    @staticmethod
    def _migrate(conn: psycopg.Connection[Any]) -> int:
        return postgres_migrations.migrate(conn)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the pool. Idempotent; any later call raises :class:`MetadataError`."""
        if self._forbid_loop_calls:
            _check_off_loop(self.path, "close")
        self._closed.set()
        with self._renew_lock:
            self._pool.close()

    def __enter__(self) -> PostgresMetadataStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _unavailable(self, exc: BaseException) -> MetadataUnavailableError:
        return MetadataUnavailableError(
            ErrorCode.REQUEST_TIMED_OUT,
            f"metadata database {self.path!r} did not take the call within "
            f"{self.busy_timeout_ms} ms (the busy timeout): {type(exc).__name__}: "
            f"{str(exc).strip() or 'no detail'}; nothing was changed; check that PostgreSQL "
            "is up and not overloaded, and retry",
        )

    def _call(
        self,
        body: Callable[[Any], T],
        *,
        write: bool,
        transaction: bool = True,
    ) -> T:
        """Run ``body`` in one transaction on a pooled connection (rule 3): ``body`` gets a
        cursor (or the connection itself when ``transaction`` is False)."""
        if self._closed.is_set():
            raise MetadataError("metadata store is closed")
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        delay = 0.001
        while True:
            remaining = deadline - time.monotonic()
            xid: int | None = None
            finished = False  # the body ran; only COMMIT was left
            result: T
            pool = self._pool
            # Wait in slices, so that a pool stuck reconnecting is noticed (rule 5): short
            # ones when it has no idle connection although none is in use.
            idle = pool.get_stats().get("pool_available", 0)
            slice_s = 1.0 if idle or self._in_use else 0.1
            try:
                with (
                    pool.connection(timeout=min(max(remaining, 0.001), slice_s)) as conn,
                    self._using(),
                ):
                    if not transaction:
                        return body(conn)
                    with conn.transaction(), conn.cursor() as cur:
                        if not write:
                            cur.execute("SET TRANSACTION READ ONLY")
                        lock_ms = max(int((deadline - time.monotonic()) * 1000), 1)
                        cur.execute(
                            "SELECT set_config('lock_timeout', %s, true), "
                            + ("txid_current()" if write else "NULL"),
                            (f"{lock_ms}ms",),
                        )
                        xid = cur.fetchone()[1]
                        result = body(cur)
                        finished = True
                    return result
            except psycopg.errors.DiskFull as exc:
                raise MetadataUnavailableError(
                    ErrorCode.KAFKA_STORAGE_ERROR,
                    f"metadata database {self.path!r}: the server's disk is full ({exc}); "
                    "nothing was written; free space on the PostgreSQL server and retry",
                ) from exc
            except (psycopg.OperationalError, PoolTimeout) as exc:
                # Serialization failure, deadlock, lock timeout, lost/refused connection, no
                # pooled connection in time: all retriable (rule 3).
                if self._closed.is_set():
                    raise MetadataError("metadata store is closed") from exc
                if isinstance(exc, PoolTimeout) and self._in_use == 0:
                    self._renew_pool(pool)  # no connection although none is in use
                if finished and xid is not None:
                    # Lost at COMMIT (rule 4): ask the server whether it committed.
                    # At least a second to ask, even when the busy timeout is nearly spent:
                    # an unknown outcome costs the caller far more than a short overrun.
                    committed = self._committed(int(xid), max(deadline, time.monotonic() + 1))
                    if committed:
                        return result
                    if committed is None:
                        raise MetadataError(
                            f"metadata database {self.path!r}: the connection was lost while "
                            f"committing and the outcome could not be learnt within "
                            f"{self.busy_timeout_ms} ms ({exc}); the call may or may not have "
                            "taken effect: do not assume either (an uploader must keep the "
                            "segment object)"
                        ) from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._unavailable(exc) from exc
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.05)
            except psycopg.Error as exc:
                if self._closed.is_set():
                    raise MetadataError("metadata store is closed") from exc
                raise MetadataError(f"metadata database {self.path!r}: {exc}") from exc

    @contextlib.contextmanager
    def _using(self) -> Iterator[None]:
        with self._lock:
            self._in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use -= 1

    def _committed(self, xid: int, deadline: float) -> bool | None:
        """Whether transaction ``xid`` committed (True) or not (False), asked on another
        connection until ``deadline``; None if that could not be learnt by then."""
        delay = 0.001
        while True:
            pool = self._pool
            try:
                with pool.connection(
                    timeout=min(max(deadline - time.monotonic(), 0.001), 0.2)
                ) as conn:
                    row = conn.execute("SELECT txid_status(%s)", (xid,)).fetchone()
                status = row[0] if row is not None else None
                if status == "committed":
                    return True
                if status == "aborted":
                    return False
                if status is None:  # too old to know (cannot happen within a call)
                    return None
                # "in progress": the old backend has not finished its COMMIT yet.
            except PoolTimeout:
                if self._in_use == 0:
                    self._renew_pool(pool)  # stuck reconnecting (rule 5)
            except psycopg.OperationalError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed.is_set():
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)

    def _read(self, body: Callable[[Any], T]) -> T:
        if self._forbid_loop_calls:
            _check_off_loop(self.path, body.__name__)
        return self._call(body, write=False)

    def _write(self, body: Callable[[Any], T]) -> T:
        if self._forbid_loop_calls:
            _check_off_loop(self.path, body.__name__)
        return self._call(body, write=True)

    # ------------------------------------------------------------------ topics

    def create_topic(
        self, name: str, partitions: int, config: dict[str, str] | None = None
    ) -> TopicInfo:
        """See :meth:`metadata.store.MetadataStore.create_topic`."""
        validate_topic_name(name)
        _validate_partitions(partitions)
        cfg, cfg_json = _encode_config(config)
        now = _now_ms()
        uuid = _new_topic_uuid()

        def create_topic(cur: Any) -> int:
            cur.execute(
                "INSERT INTO topics (name, uuid, partitions, config, created_ms) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING topic_id",
                (name, uuid, partitions, cfg_json, now),
            )
            row = cur.fetchone()
            if row is None:
                raise TopicExistsError(f"topic {name!r} already exists")
            cur.execute(_SQL_INSERT_PARTITIONS, (row[0], 0, partitions - 1))
            return int(row[0])

        topic_id = self._write(create_topic)
        return TopicInfo(topic_id, name, uuid, partitions, cfg, now)

    def get_topic(self, name: str) -> TopicInfo | None:
        """See :meth:`metadata.store.MetadataStore.get_topic`."""
        return self._one_topic(_SQL_TOPIC_BY_NAME, name)

    def get_topic_by_id(self, topic_id: int) -> TopicInfo | None:
        """See :meth:`metadata.store.MetadataStore.get_topic_by_id`."""
        return self._one_topic(_SQL_TOPIC_BY_ID, topic_id)

    def get_topic_by_uuid(self, uuid: bytes) -> TopicInfo | None:
        """See :meth:`metadata.store.MetadataStore.get_topic_by_uuid`."""
        return self._one_topic(_SQL_TOPIC_BY_UUID, bytes(uuid))

    def _one_topic(self, sql: str, key: object) -> TopicInfo | None:
        def get_topic(cur: Any) -> Any:
            cur.execute(sql, (key,))
            return cur.fetchone()

        row = self._read(get_topic)
        return _topic_row(row) if row is not None else None

    def list_topics(self) -> list[TopicInfo]:
        """See :meth:`metadata.store.MetadataStore.list_topics`."""

        def list_topics(cur: Any) -> list[Any]:
            cur.execute(_SQL_TOPICS)
            return cur.fetchall()

        return [_topic_row(r) for r in self._read(list_topics)]

    def delete_topic(self, name: str) -> TopicInfo:
        """See :meth:`metadata.store.MetadataStore.delete_topic`."""
        now = _now_ms()

        def delete_topic(cur: Any) -> TopicInfo:
            cur.execute(_SQL_TOPIC_BY_NAME_LOCKED, (name,))
            row = cur.fetchone()
            if row is None:
                raise UnknownTopicError(f"topic {name!r} does not exist")
            topic = _topic_row(row)
            tid = (topic.topic_id,)
            # Lock its partitions in the commit order (rule 1) before touching anything.
            cur.execute(
                "SELECT 1 FROM partitions WHERE topic_id = %s ORDER BY partition FOR UPDATE", tid
            )
            cur.execute(
                "WITH d AS (DELETE FROM segment_blocks WHERE topic_id = %s RETURNING segment_id) "
                "SELECT DISTINCT segment_id FROM d",
                tid,
            )
            emptied = [r[0] for r in cur.fetchall()]
            _mark_dead(cur, emptied, now)  # rule 8: after the partition rows
            cur.execute("DELETE FROM producer_state WHERE topic_id = %s", tid)
            cur.execute("DELETE FROM open_txns WHERE topic_id = %s", tid)
            cur.execute("DELETE FROM aborted_txns WHERE topic_id = %s", tid)
            cur.execute("DELETE FROM clean_offsets WHERE topic_id = %s", tid)
            cur.execute("DELETE FROM group_offsets WHERE topic_id = %s", tid)
            cur.execute("DELETE FROM partitions WHERE topic_id = %s", tid)
            cur.execute("DELETE FROM topics WHERE topic_id = %s", tid)
            cur.execute(
                "INSERT INTO deleted_topics (topic_id, name, uuid, partitions, deleted_ms) "
                "VALUES (%s, %s, %s, %s, %s)",
                (topic.topic_id, topic.name, topic.uuid, topic.partitions, now),
            )
            return topic

        return self._write(delete_topic)

    def list_deleted_topics(self) -> list[DeletedTopic]:
        """See :meth:`metadata.store.MetadataStore.list_deleted_topics`."""

        def list_deleted_topics(cur: Any) -> list[Any]:
            cur.execute(
                "SELECT topic_id, name, uuid, partitions, deleted_ms FROM deleted_topics "
                "ORDER BY topic_id"
            )
            return cur.fetchall()

        return [
            DeletedTopic(t, n, _bytes(u), p, d) for t, n, u, p, d in self._read(list_deleted_topics)
        ]

    def add_partitions(self, name: str, total: int) -> TopicInfo:
        """See :meth:`metadata.store.MetadataStore.add_partitions`."""
        _validate_partitions(total)

        def add_partitions(cur: Any) -> TopicInfo:
            cur.execute(_SQL_TOPIC_BY_NAME_LOCKED, (name,))
            row = cur.fetchone()
            if row is None:
                raise UnknownTopicError(f"topic {name!r} does not exist")
            topic = _topic_row(row)
            if total <= topic.partitions:
                raise InvalidPartitionsError(
                    f"topic {name!r} has {topic.partitions} partitions; the new count must be "
                    f"larger, got {total}"
                )
            cur.execute(
                "UPDATE topics SET partitions = %s WHERE topic_id = %s", (total, topic.topic_id)
            )
            cur.execute(_SQL_INSERT_PARTITIONS, (topic.topic_id, topic.partitions, total - 1))
            return msgspec.structs.replace(topic, partitions=total)

        return self._write(add_partitions)

    def update_topic_config(self, name: str, config: dict[str, str]) -> TopicInfo:
        """See :meth:`metadata.store.MetadataStore.update_topic_config`."""
        cfg, cfg_json = _encode_config(config)

        def update_topic_config(cur: Any) -> TopicInfo:
            cur.execute(
                f"UPDATE topics SET config = %s WHERE name = %s RETURNING {_TOPIC_COLUMNS}",
                (cfg_json, name),
            )
            row = cur.fetchone()
            if row is None:
                raise UnknownTopicError(f"topic {name!r} does not exist")
            return msgspec.structs.replace(_topic_row(row), config=cfg)

        return self._write(update_topic_config)

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
        """See :meth:`metadata.store.MetadataStore.alter_topic_config` (rule 11)."""

        def read(cur: Any) -> Any:
            cur.execute(_SQL_TOPIC_BY_NAME, (name,))
            return cur.fetchone()

        if validate_only:
            row = self._read(read)
            if row is None:
                raise UnknownTopicError(f"topic {name!r} does not exist")
            topic = _topic_row(row)
            config = merge_topic_config(topic.config, set, delete, append, subtract)
            return msgspec.structs.replace(topic, config=config)

        def alter_topic_config(cur: Any) -> TopicInfo:
            cur.execute(_SQL_TOPIC_FOR_CONFIG, (name,))
            row = cur.fetchone()
            if row is None:
                raise UnknownTopicError(f"topic {name!r} does not exist")
            topic = _topic_row(row)
            config = merge_topic_config(topic.config, set, delete, append, subtract)
            if config != topic.config:
                cur.execute(
                    "UPDATE topics SET config = %s WHERE topic_id = %s",
                    (_json_encode(config).decode(), topic.topic_id),
                )
            return msgspec.structs.replace(topic, config=config)

        return self._write(alter_topic_config)

    # ------------------------------------------------------------------ partitions

    def get_partition(self, topic_id: int, partition: int) -> PartitionState | None:
        """See :meth:`metadata.store.MetadataStore.get_partition`."""

        def get_partition(cur: Any) -> Any:
            cur.execute(_SQL_PARTITION, (topic_id, partition))
            return cur.fetchone()

        row = self._read(get_partition)
        return PartitionState(*row) if row is not None else None

    def list_partitions(self, topic_id: int) -> list[PartitionState]:
        """See :meth:`metadata.store.MetadataStore.list_partitions`."""

        def list_partitions(cur: Any) -> list[Any]:
            cur.execute(_SQL_PARTITIONS, (topic_id,))
            return cur.fetchall()

        return [PartitionState(*r) for r in self._read(list_partitions)]

    def set_log_start_offset(self, topic_id: int, partition: int, offset: int) -> PartitionState:
        """See :meth:`metadata.store.MetadataStore.set_log_start_offset`."""
        now = _now_ms()

        def set_log_start_offset(cur: Any) -> PartitionState:
            cur.execute(_SQL_PARTITION + " FOR UPDATE", (topic_id, partition))
            row = cur.fetchone()
            if row is None:
                raise UnknownTopicError(f"partition {topic_id}/{partition} does not exist")
            state = PartitionState(*row)
            if offset < 0 or offset > state.high_watermark:
                raise OffsetOutOfRangeError(
                    f"log start offset {offset} is outside 0..{state.high_watermark} "
                    f"(high watermark) of partition {topic_id}/{partition}"
                )
            if offset <= state.log_start_offset:
                return state
            cur.execute(
                "UPDATE partitions SET log_start_offset = %s WHERE topic_id = %s "
                "AND partition = %s",
                (offset, topic_id, partition),
            )
            cur.execute(_SQL_DROP_BLOCKS, (topic_id, partition, offset))
            _mark_dead(cur, [r[0] for r in cur.fetchall()], now)  # rule 8
            cur.execute(SQL_DROP_ABORTED_BELOW, (topic_id, partition, offset))
            return msgspec.structs.replace(state, log_start_offset=offset)

        return self._write(set_log_start_offset)

    # ------------------------------------------------------------------ the log index

    def commit_segment(
        self, key: str, size: int, blocks: list[CommitBlock]
    ) -> list[list[BatchResult]]:
        """See :meth:`metadata.store.MetadataStore.commit_segment`; locking is rule 1.

        Also notifies :data:`COMMIT_CHANNEL` inside the transaction (rule 6), so listeners
        hear of the segment if and only if it committed. Raises ``ValueError`` for a key too
        long to be announced (~8000 bytes)."""
        return self.commit_segments([(key, size, blocks)])[0]

    def commit_segments(
        self, segments: Sequence[tuple[str, int, list[CommitBlock]]]
    ) -> list[list[list[BatchResult]]]:
        """See :meth:`metadata.store.MetadataStore.commit_segments`: one transaction, one
        lock round over every partition of every segment (rule 1), one notification per
        segment (rule 6; ``end_offset`` is the high watermark after that segment)."""
        _check_segment_keys(segments)
        for key, _, _ in segments:
            commit_notification(key, [])  # refuses an unannounceable key before any work
        now = _now_ms()

        def commit_segments(cur: Any) -> list[list[list[BatchResult]]]:
            return self._commit_segments_in(cur, segments, now)

        return self._write(commit_segments)

    @staticmethod
    def _commit_segments_in(
        cur: Any, segments: Sequence[tuple[str, int, list[CommitBlock]]], now: int
    ) -> list[list[list[BatchResult]]]:
        """The body of :meth:`commit_segments` inside the caller's transaction (also
        :meth:`commit_query_step`'s): locks, offsets, rows and the notices."""
        tps = sorted(set((b.topic_id, b.partition) for _, _, bs in segments for b in bs))
        cur.execute(
            _SQL_INSERT_SEGMENTS,
            (now, [k for k, _, _ in segments], [z for _, z, _ in segments]),
        )
        ids = {key: int(segment_id) for segment_id, key in cur.fetchall()}
        for key, _, _ in segments:
            if key not in ids:
                raise DuplicateSegmentError(f"segment {key!r} is already committed")
        hwms: dict[tuple[int, int], int] = {}
        if len(tps) >= _WIDE_COMMIT:
            # Wait for the first row alone, then lock the rest in a new statement: its
            # snapshot sees the commit waited for, so PostgreSQL need not re-check (EPQ)
            # every row that commit updated, one by one. (Measured: 10 agents committing
            # the same 10,000 partitions ~1.6-2.8 -> 3.4-4.5 commits/s on a loaded box.)
            cur.execute(_SQL_LOCK_FIRST, tps[0])
        if tps:
            cur.execute(_SQL_LOCK_HWMS, (_ints(t for t, _ in tps), _ints(p for _, p in tps)))
            for topic_id, partition, hwm in cur.fetchall():
                hwms[(topic_id, partition)] = hwm
        start_hwms = dict(hwms)
        producers = _producer_keys(segments, hwms)
        if producers:
            keys = list(producers)
            cur.execute(
                _SQL_PRODUCER_STATES,
                (
                    _ints(k[0] for k in keys),
                    _ints(k[1] for k in keys),
                    _ints(k[2] for k in keys),
                ),
            )
            for topic_id, partition, pid, epoch, batches in cur.fetchall():
                producers[(topic_id, partition, pid)] = _Producer(
                    epoch, _batches_decoder.decode(batches)
                )
        txns: TxnLog | None = None
        keys = txn_keys(segments, hwms)
        if keys:  # read under the partition locks taken above (rule 1)
            cur.execute(
                _SQL_OPEN_TXNS,
                (
                    _ints(k[0] for k in keys),
                    _ints(k[1] for k in keys),
                    _ints(k[2] for k in keys),
                ),
            )
            txns = TxnLog({(t, p, pid): first for t, p, pid, first in cur.fetchall()})

        results = []
        all_rows: list[tuple[object, ...]] = []
        notices = []
        for key, _, blocks in segments:
            seg_results, block_rows = assign_offsets(blocks, hwms, producers, ids[key], txns)
            results.append(seg_results)
            all_rows.extend(block_rows)
            entries = [(r[0], r[1], r[5], r[6], hwms[(r[0], r[1])]) for r in block_rows]
            notices.append(commit_notification(key, entries))  # type: ignore[arg-type]

        if all_rows:
            _copy_blocks(cur, all_rows)
        changed = [(tp, hwm) for tp, hwm in hwms.items() if hwm != start_hwms[tp]]
        if changed:
            cur.execute(
                _SQL_SET_HWMS,
                (
                    _ints(tp[0] for tp, _ in changed),
                    _ints(tp[1] for tp, _ in changed),
                    _ints(hwm for _, hwm in changed),
                ),
            )
        dirty = [(pkey, st) for pkey, st in producers.items() if st is not None and st.dirty]
        if dirty:
            cur.execute(
                _SQL_UPSERT_PRODUCER_STATES,
                (
                    _ints(k[0] for k, _ in dirty),
                    _ints(k[1] for k, _ in dirty),
                    _ints(k[2] for k, _ in dirty),
                    _ints(st.epoch for _, st in dirty),
                    _json_texts(_json_encode(st.batches).decode() for _, st in dirty),
                    _ints(now for _ in dirty),
                ),
            )
        if txns is not None:
            _write_txns(cur, txns)
        # Rule 6: announced from inside the transaction, after the blocks are written.
        cur.execute(
            "SELECT pg_notify(%s, n) FROM unnest(%s::text[]) WITH ORDINALITY AS u (n, i) "
            "ORDER BY i",
            (COMMIT_CHANNEL, notices),
        )
        return results

    # ------------------------------------------------------------------ continuous queries

    def claim_query(self, name: str, now_ms: int) -> QueryCheckpoint:
        """See :meth:`metadata.store.MetadataStore.claim_query` (one upsert: concurrent
        claims each get their own generation)."""
        check_query_name(name)
        check_lifecycle_time("now_ms", now_ms)

        def claim_query(cur: Any) -> Any:
            cur.execute(_SQL_CLAIM_QUERY, (name, b"", now_ms))
            return cur.fetchone()

        return query_checkpoint(self._write(claim_query))

    def commit_query_step(
        self,
        name: str,
        generation: int,
        step: int,
        payload: bytes,
        segment: tuple[str, int, list[CommitBlock]] | None,
        now_ms: int,
    ) -> list[list[BatchResult]]:
        """See :meth:`metadata.store.MetadataStore.commit_query_step`. The query's row is
        locked first (``FOR UPDATE``: a concurrent commit of the same query waits, then reads
        the row as the first left it and is fenced), then the segment is committed as
        :meth:`commit_segment` does (rule 1's locks, rule 6's notice, sent only if the whole
        step commits)."""
        blob = check_query_step(name, generation, step, payload, segment, now_ms)
        if segment is not None:
            commit_notification(segment[0], [])  # refuses an unannounceable key first

        def commit_query_step(cur: Any) -> list[list[BatchResult]]:
            cur.execute(_SQL_QUERY_STATE + " FOR UPDATE", (name,))
            fenced = query_fenced(name, cur.fetchone(), generation, step)
            if fenced is not None:
                raise fenced
            results: list[list[BatchResult]] = []
            if segment is not None:
                results = self._commit_segments_in(cur, [segment], _now_ms())[0]
                check_query_segment(name, segment, results)
            cur.execute(_SQL_SET_QUERY_STEP, (step, blob, now_ms, name))
            return results

        return self._write(commit_query_step)

    def get_query_checkpoint(self, name: str) -> QueryCheckpoint | None:
        """See :meth:`metadata.store.MetadataStore.get_query_checkpoint`."""
        check_query_name(name)

        def get_query_checkpoint(cur: Any) -> Any:
            cur.execute(_SQL_GET_QUERY, (name,))
            return cur.fetchone()

        row = self._read(get_query_checkpoint)
        return query_checkpoint(row) if row is not None else None

    def list_query_checkpoints(self) -> list[QueryCheckpoint]:
        """See :meth:`metadata.store.MetadataStore.list_query_checkpoints`."""

        def list_query_checkpoints(cur: Any) -> list[Any]:
            cur.execute(_SQL_LIST_QUERIES + ' ORDER BY name COLLATE "C"')
            return cur.fetchall()

        return [query_checkpoint(r) for r in self._read(list_query_checkpoints)]

    def delete_query_checkpoint(self, name: str) -> bool:
        """See :meth:`metadata.store.MetadataStore.delete_query_checkpoint`."""
        check_query_name(name)
        now = _now_ms()

        def delete_query_checkpoint(cur: Any) -> bool:
            cur.execute(_SQL_DROP_QUERY, (now, b"", now, name))
            return bool(cur.rowcount)

        return self._write(delete_query_checkpoint)

    def aborted_transactions(
        self, topic_id: int, partition: int, start: int, end: int
    ) -> list[AbortedTxn]:
        """See :meth:`metadata.store.MetadataStore.aborted_transactions`."""

        def aborted_transactions(cur: Any) -> list[Any]:
            cur.execute(SQL_ABORTED_TXNS, (topic_id, partition, start, end, MAX_ABORTED_LISTED))
            return cur.fetchall()

        return [AbortedTxn(*r) for r in self._read(aborted_transactions)]

    def find_blocks(
        self, topic_id: int, partition: int, offset: int, limit: int = 8
    ) -> list[BlockLocation]:
        """See :meth:`metadata.store.MetadataStore.find_blocks`."""

        def find_blocks(cur: Any) -> list[Any]:
            cur.execute(_SQL_FIND_BLOCKS, (topic_id, partition, offset, limit))
            return cur.fetchall()

        return [_block_location(r) for r in self._read(find_blocks)]

    def find_block_by_timestamp(
        self, topic_id: int, partition: int, timestamp: int, from_offset: int
    ) -> BlockLocation | None:
        """See :meth:`metadata.store.MetadataStore.find_block_by_timestamp`."""

        def find_block_by_timestamp(cur: Any) -> Any:
            cur.execute(_SQL_FIND_BLOCK_BY_TIMESTAMP, (topic_id, partition, from_offset, timestamp))
            return cur.fetchone()

        row = self._read(find_block_by_timestamp)
        return _block_location(row) if row is not None else None

    def find_max_timestamp_block(
        self, topic_id: int, partition: int, from_offset: int
    ) -> BlockLocation | None:
        """See :meth:`metadata.store.MetadataStore.find_max_timestamp_block`."""

        def find_max_timestamp_block(cur: Any) -> Any:
            cur.execute(_SQL_FIND_MAX_TIMESTAMP_BLOCK, (topic_id, partition, from_offset))
            return cur.fetchone()

        row = self._read(find_max_timestamp_block)
        return _block_location(row) if row is not None else None

    # ------------------------------------------------------------------ data lifecycle

    def enforce_retention(self, now_ms: int, max_partitions: int = 10_000) -> list[RetentionMove]:
        """See :meth:`metadata.store.MetadataStore.enforce_retention`. Each batch's
        transaction scans its partitions without locks, then locks the rows of those that
        may have something to drop in ``(topic_id, partition)`` order (rule 1), re-reads their
        log start and high watermark under the lock, and computes and drops with fresh
        set-based statements (a handful per transaction, whatever the partition count), so a
        commit that got in first is seen and none is lost; segment rows are locked after the
        partition rows, in ``segment_id`` order (rule 8)."""
        check_lifecycle_time("now_ms", now_ms)
        _check_int("max_partitions", max_partitions, 1, MAX_RETENTION_BATCH)

        def topic_configs(cur: Any) -> list[Any]:
            cur.execute("SELECT topic_id, config FROM topics")
            return cur.fetchall()

        rules = retention_rules(self._read(topic_configs), now_ms)
        moves: list[RetentionMove] = []
        after = (-1, -1)
        while True:

            def enforce_retention(
                cur: Any, start: tuple[int, int] = after
            ) -> tuple[list[RetentionMove], bool, tuple[int, int]]:
                cur.execute(_SQL_RETENTION_SCAN, (*start, max_partitions))
                rows = cur.fetchall()
                if not rows:
                    return [], False, start
                todo, more, resume = retention_work(
                    rows, retention_candidates(rows, rules), max_partitions
                )
                if not todo:
                    return [], more, resume
                cur.execute(
                    _SQL_LOCK_PARTITIONS, (_ints(t for t, _ in todo), _ints(p for _, p in todo))
                )
                batch, emptied = _retain_partitions(cur, cur.fetchall(), rules)
                _mark_dead(cur, emptied, now_ms)
                return batch, more, resume

            batch, more, after = self._write(enforce_retention)
            moves.extend(batch)
            if not more:
                return moves

    def mark_unreferenced_segments(self, now_ms: int) -> int:
        """See :meth:`metadata.store.MetadataStore.mark_unreferenced_segments`; the rows are
        locked in ``segment_id`` order (rule 8)."""
        check_lifecycle_time("now_ms", now_ms)

        def mark_unreferenced_segments(cur: Any) -> int:
            cur.execute(_SQL_LOCK_UNREFERENCED)
            ids = [r[0] for r in cur.fetchall()]
            return _mark_dead(cur, ids, now_ms)

        return self._write(mark_unreferenced_segments)

    def dead_segments(self, dead_before_ms: int, limit: int = 1000) -> list[DeadSegment]:
        """See :meth:`metadata.store.MetadataStore.dead_segments`."""
        check_lifecycle_time("dead_before_ms", dead_before_ms)
        _check_int("limit", limit, 1, MAX_RETENTION_BATCH)

        def dead_segments(cur: Any) -> list[Any]:
            cur.execute(_SQL_DEAD_SEGMENTS, (dead_before_ms, limit))
            return cur.fetchall()

        return [DeadSegment(*r) for r in self._read(dead_segments)]

    def forget_segments(self, keys: Sequence[str]) -> int:
        """See :meth:`metadata.store.MetadataStore.forget_segments`; the rows are locked in
        ``segment_id`` order first (rule 8)."""
        names = check_segment_keys(keys)
        if not names:
            return 0

        def forget_segments(cur: Any) -> int:
            cur.execute(_SQL_LOCK_DEAD_BY_KEY, (names,))
            ids = [r[0] for r in cur.fetchall()]
            if not ids:
                return 0
            cur.execute(_SQL_FORGET_SEGMENTS, (ids,))
            return int(cur.rowcount)

        return self._write(forget_segments)

    def known_segments(self, keys: Sequence[str]) -> set[str]:
        """See :meth:`metadata.store.MetadataStore.known_segments`."""
        names = check_segment_keys(keys)
        if not names:
            return set()

        def known_segments(cur: Any) -> list[Any]:
            cur.execute("SELECT key FROM segments WHERE key = ANY(%s::text[])", (names,))
            return cur.fetchall()

        return {r[0] for r in self._read(known_segments)}

    # ------------------------------------------------------------------ rewrites

    def live_segments(self, after_segment_id: int = 0, limit: int = 1000) -> list[SegmentUsage]:
        """See :meth:`metadata.store.MetadataStore.live_segments`."""
        _check_int("after_segment_id", after_segment_id, 0, _INT64_MAX)
        _check_int("limit", limit, 1, MAX_REWRITE_ROWS)

        def live_segments(cur: Any) -> list[Any]:
            cur.execute(_SQL_LIVE_SEGMENTS, (after_segment_id, limit))
            return cur.fetchall()

        return [segment_usage(r) for r in self._read(live_segments)]

    def blocks_of_segments(self, segment_ids: Sequence[int]) -> list[StoredBlock]:
        """See :meth:`metadata.store.MetadataStore.blocks_of_segments`."""
        ids = check_segment_ids(segment_ids)
        if not ids:
            return []

        def blocks_of_segments(cur: Any) -> list[Any]:
            cur.execute(
                f"SELECT {_STORED_BLOCK_COLUMNS} FROM segment_blocks AS b "
                "JOIN segments AS s ON s.segment_id = b.segment_id "
                "WHERE b.segment_id = ANY(%s::bigint[]) "
                "ORDER BY b.topic_id, b.partition, b.base_offset",
                (_ints(ids),),
            )
            return cur.fetchall()

        return [stored_block(r) for r in self._read(blocks_of_segments)]

    def partition_blocks(
        self, topic_id: int, partition: int, from_offset: int = 0, limit: int = 1000
    ) -> list[StoredBlock]:
        """See :meth:`metadata.store.MetadataStore.partition_blocks`."""
        _check_int("from_offset", from_offset, 0, _INT64_MAX)
        _check_int("limit", limit, 1, MAX_REWRITE_ROWS)

        def partition_blocks(cur: Any) -> list[Any]:
            cur.execute(_SQL_PARTITION_BLOCKS, (topic_id, partition, from_offset, limit))
            return cur.fetchall()

        return [stored_block(r) for r in self._read(partition_blocks)]

    def replace_blocks(self, rewrite: BlockRewrite, now_ms: int) -> bool:
        """See :meth:`metadata.store.MetadataStore.replace_blocks`. Locks the partition rows of
        the replaced blocks in ``(topic_id, partition)`` order (rule 1) before reading them, so
        a commit, retention, DeleteRecords, delete_topic or another rewrite of those
        partitions is either wholly before it (and seen) or waits for it; the segment rows it
        marks dead are locked after them, in ``segment_id`` order (rule 8)."""
        spans = check_rewrite(rewrite)
        check_lifecycle_time("now_ms", now_ms)
        tps = sorted(spans)
        old = rewrite.replaced

        def replace_blocks(cur: Any) -> bool:
            cur.execute(_SQL_LOCK_PARTITIONS, (_ints(t for t, _ in tps), _ints(p for _, p in tps)))
            pk = (
                _ints(b.topic_id for b in old),
                _ints(b.partition for b in old),
                _ints(b.end_offset for b in old),
            )
            cur.execute(
                "SELECT b.topic_id, b.partition, b.end_offset, b.base_offset, b.segment_id "
                "FROM segment_blocks AS b JOIN unnest(%s::bigint[], %s::int[], %s::bigint[]) "
                "AS k (t, p, e) ON b.topic_id = k.t AND b.partition = k.p AND b.end_offset = k.e",
                pk,
            )
            current = {(r[0], r[1], r[2]): (r[3], r[4]) for r in cur.fetchall()}
            switched = unchanged(rewrite, current)
            cur.execute(
                "INSERT INTO segments (key, size, created_ms, dead_since_ms) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (key) DO NOTHING RETURNING segment_id",
                (rewrite.key, rewrite.size, rewrite.created_ms, None if switched else now_ms),
            )
            row = cur.fetchone()
            if row is None:
                raise DuplicateSegmentError(
                    f"segment {rewrite.key!r} is already committed: a rewrite must PUT a new key"
                )
            segment_id = int(row[0])
            if not switched:
                return False
            cur.execute(
                "DELETE FROM segment_blocks AS b "
                "USING unnest(%s::bigint[], %s::int[], %s::bigint[]) AS k (t, p, e) "
                "WHERE b.topic_id = k.t AND b.partition = k.p AND b.end_offset = k.e",
                pk,
            )
            cur.execute(
                "SELECT b.topic_id, b.partition, b.base_offset, b.end_offset "
                "FROM unnest(%s::bigint[], %s::int[], %s::bigint[], %s::bigint[]) "
                "AS k (t, p, lo, hi) JOIN segment_blocks AS b ON b.topic_id = k.t "
                "AND b.partition = k.p AND b.end_offset > k.lo AND b.base_offset < k.hi",
                (
                    _ints(t for t, _ in tps),
                    _ints(p for _, p in tps),
                    _ints(spans[tp][0] for tp in tps),
                    _ints(spans[tp][1] for tp in tps),
                ),
            )
            check_kept_rows(rewrite, cur.fetchall())  # a ValueError rolls everything back
            rows = new_block_rows(rewrite, segment_id)
            if rows:
                _copy_blocks(cur, rows)
            _mark_dead(cur, {b.segment_id for b in old} | {segment_id}, now_ms)  # rule 8
            return True

        return self._write(replace_blocks)

    # ------------------------------------------------------------------ key compaction

    def get_clean_offsets(self, topic_id: int) -> dict[int, CleanState]:
        """See :meth:`metadata.store.MetadataStore.get_clean_offsets`."""

        def get_clean_offsets(cur: Any) -> list[Any]:
            cur.execute(
                "SELECT partition, clean_offset, cleaned_ms FROM clean_offsets "
                "WHERE topic_id = %s ORDER BY partition",
                (topic_id,),
            )
            return cur.fetchall()

        return {int(p): CleanState(int(c), int(m)) for p, c, m in self._read(get_clean_offsets)}

    def set_clean_offset(
        self, topic_id: int, partition: int, clean_offset: int, now_ms: int
    ) -> None:
        """See :meth:`metadata.store.MetadataStore.set_clean_offset`. Key-share locks the
        partition row, so a ``delete_topic`` (which locks it for update first) either
        removed it before (nothing is stored) or removes the checkpoint after."""
        check_clean_offset(clean_offset, now_ms)

        def set_clean_offset(cur: Any) -> None:
            cur.execute(
                _SQL_SET_CLEAN_OFFSET.format(lock=" FOR KEY SHARE OF p"),
                (clean_offset, now_ms, topic_id, partition),
            )

        self._write(set_clean_offset)

    # ------------------------------------------------------------------ expiry of idle state

    def expire_producer_state(self, idle_before_ms: int, limit: int = 10_000) -> int:
        """See :meth:`metadata.store.MetadataStore.expire_producer_state`. The rows are
        locked first, skipping any a commit holds (that producer is not idle) and re-checking
        ``last_update_ms`` on a row a commit rewrote meanwhile, then only those are deleted:
        expiry never waits for a commit, so it cannot deadlock with one (commits write many
        producers' rows in one statement, in no particular order). A producer with an open
        transaction in any partition keeps its rows (a commit opening one meanwhile holds the
        row it writes there, which is skipped)."""
        check_lifecycle_time("idle_before_ms", idle_before_ms)
        _check_int("limit", limit, 1, MAX_RETENTION_BATCH)

        def expire_producer_state(cur: Any) -> int:
            cur.execute(
                "SELECT topic_id, partition, producer_id FROM producer_state AS s "
                f"WHERE last_update_ms < %s AND {_SQL_NO_OPEN_TXN} "
                "LIMIT %s FOR UPDATE SKIP LOCKED",
                (idle_before_ms, limit),
            )
            keys = cur.fetchall()
            if not keys:
                return 0
            cur.execute(
                "DELETE FROM producer_state AS s "
                "USING unnest(%s::bigint[], %s::int[], %s::bigint[]) AS k (t, p, pid) "
                "WHERE s.topic_id = k.t AND s.partition = k.p AND s.producer_id = k.pid",
                (_ints(k[0] for k in keys), _ints(k[1] for k in keys), _ints(k[2] for k in keys)),
            )
            return int(cur.rowcount)

        return self._write(expire_producer_state)

    def expirable_offset_groups(self, commit_before_ms: int) -> list[str]:
        """See :meth:`metadata.store.MetadataStore.expirable_offset_groups`."""
        check_lifecycle_time("commit_before_ms", commit_before_ms)

        def expirable_offset_groups(cur: Any) -> list[Any]:
            cur.execute(
                _SQL_EXPIRABLE_GROUPS.format(order='o.group_id COLLATE "C"'),
                (commit_before_ms, commit_before_ms),
            )
            return cur.fetchall()

        return [r[0] for r in self._read(expirable_offset_groups)]

    def expire_group_offsets(self, group_id: str, commit_before_ms: int) -> int:
        """See :meth:`metadata.store.MetadataStore.expire_group_offsets`. The group's offset
        rows are locked first, skipping any row an offset commit holds: a group with a commit
        in flight is not idle, so it keeps its offsets (and the call never waits for, or
        deadlocks with, offset commits, which lock rows in request order). A commit after the
        lock waits for it and then finds its row gone or rewrites it; an offset committed
        meanwhile to a partition the group had none for is newer than the cut-off and
        stays."""
        validate_group_id(group_id)
        check_lifecycle_time("commit_before_ms", commit_before_ms)

        def expire_group_offsets(cur: Any) -> int:
            cur.execute("SELECT count(*) FROM group_offsets WHERE group_id = %s", (group_id,))
            total = int(cur.fetchone()[0])
            cur.execute(
                "SELECT topic_id, partition, commit_ms FROM group_offsets WHERE group_id = %s "
                "ORDER BY topic_id, partition FOR UPDATE SKIP LOCKED",
                (group_id,),
            )
            locked = cur.fetchall()
            if not locked or len(locked) < total:
                return 0
            if max(int(r[2]) for r in locked) >= commit_before_ms:
                return 0
            cur.execute(_SQL_GROUP_STATE_SINCE, (group_id, commit_before_ms))
            if cur.fetchone() is not None:
                return 0
            # Only the rows locked above: a row committed since (a partition the group had
            # none for) may be held by a commit waiting for these locks; never wait for it.
            cur.execute(
                "DELETE FROM group_offsets AS o USING unnest(%s::bigint[], %s::int[]) "
                "AS k (t, p) WHERE o.group_id = %s AND o.topic_id = k.t AND o.partition = k.p",
                (_ints(r[0] for r in locked), _ints(r[1] for r in locked), group_id),
            )
            return int(cur.rowcount)

        return self._write(expire_group_offsets)

    # ------------------------------------------------------------------ storage report

    def storage_report(self, now_ms: int, small_object_bytes: int) -> StorageReport:
        """See :meth:`metadata.store.MetadataStore.storage_report` (one read-only
        transaction; each statement reads its own snapshot, at READ COMMITTED)."""
        check_lifecycle_time("now_ms", now_ms)
        _check_int("small_object_bytes", small_object_bytes, 0, _INT64_MAX)

        def storage_report_(cur: Any) -> StorageReport:
            def q(sql: str, params: Sequence[object]) -> list[Any]:
                cur.execute(sql, params)
                return cur.fetchall()

            return storage_report(q, now_ms, small_object_bytes)

        storage_report_.__name__ = "storage_report"
        return self._read(storage_report_)

    # ------------------------------------------------------------------ streaming-SQL catalog

    def put_catalog_entry(
        self, kind: str, name: str, definition: bytes, now_ms: int, *, replace: bool = False
    ) -> None:
        """See :meth:`metadata.store.MetadataStore.put_catalog_entry`."""
        blob = check_catalog_entry(kind, name, definition, now_ms)
        action = _CATALOG_REPLACE if replace else "NOTHING"

        def put_catalog_entry(cur: Any) -> None:
            cur.execute(
                _SQL_PUT_CATALOG.format(action=action) + " RETURNING 1",
                (kind, name, blob, now_ms, now_ms),
            )
            if cur.fetchone() is None:
                raise catalog_exists(kind, name)

        self._write(put_catalog_entry)

    def swap_catalog_entry(
        self, kind: str, name: str, definition: bytes, now_ms: int, *, expect: bytes | None
    ) -> bool:
        """See :meth:`metadata.store.MetadataStore.swap_catalog_entry` (the UPDATE locks the
        row, so of two concurrent swaps from one definition exactly one matches it)."""
        blob = check_catalog_entry(kind, name, definition, now_ms)
        old = _check_expected_definition(expect)

        def swap_catalog_entry(cur: Any) -> bool:
            if old is None:
                cur.execute(
                    _SQL_PUT_CATALOG.format(action="NOTHING") + " RETURNING 1",
                    (kind, name, blob, now_ms, now_ms),
                )
            else:
                cur.execute(_SQL_SWAP_CATALOG + " RETURNING 1", (blob, now_ms, kind, name, old))
            return cur.fetchone() is not None

        return bool(self._write(swap_catalog_entry))

    def get_catalog_entry(self, kind: str, name: str) -> bytes | None:
        """See :meth:`metadata.store.MetadataStore.get_catalog_entry`."""
        check_catalog_key(kind, name)

        def get_catalog_entry(cur: Any) -> Any:
            cur.execute(
                "SELECT definition FROM catalog WHERE kind = %s AND name = %s", (kind, name)
            )
            return cur.fetchone()

        row = self._read(get_catalog_entry)
        return _bytes(row[0]) if row is not None else None

    def list_catalog_entries(self, kind: str) -> list[tuple[str, bytes]]:
        """See :meth:`metadata.store.MetadataStore.list_catalog_entries`."""
        check_catalog_key(kind, "-")

        def list_catalog_entries(cur: Any) -> list[Any]:
            cur.execute(
                'SELECT name, definition FROM catalog WHERE kind = %s ORDER BY name COLLATE "C"',
                (kind,),
            )
            return cur.fetchall()

        return [(n, _bytes(d)) for n, d in self._read(list_catalog_entries)]

    def delete_catalog_entry(self, kind: str, name: str, *, expect: bytes | None = None) -> bool:
        """See :meth:`metadata.store.MetadataStore.delete_catalog_entry`."""
        check_catalog_key(kind, name)
        sql, params = _sql_delete_catalog(kind, name, _check_expected_definition(expect))

        def delete_catalog_entry(cur: Any) -> bool:
            cur.execute(sql, params)
            return bool(cur.rowcount)

        return self._write(delete_catalog_entry)

    # ------------------------------------------------------------------ consumer groups

    def commit_offsets(
        self,
        group: str,
        offsets: Sequence[tuple[int, int, int, str] | tuple[int, int, int, str, int]],
    ) -> list[bool]:
        """See :meth:`metadata.store.MetadataStore.commit_offsets`. The rows are written in
        ``(topic_id, partition)`` order (a stable sort: a partition named twice keeps its
        last value), so two commits of one group naming partitions in different orders lock
        its rows in the same order and never deadlock."""
        rows = offset_rows(offsets)
        now = _now_ms()
        order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][1]))

        def commit_offsets(cur: Any) -> list[bool]:
            stored = [False] * len(rows)
            # The topic row is share-locked (rule 1's note), so a concurrent delete_topic
            # either runs first (nothing stored) or after (it removes these rows too).
            for i in order:
                topic_id, partition, offset, metadata, epoch = rows[i]
                cur.execute(
                    _SQL_UPSERT_OFFSET,
                    {
                        "g": group,
                        "t": topic_id,
                        "p": partition,
                        "o": offset,
                        "m": metadata,
                        "now": now,
                        "e": epoch,
                    },
                )
                stored[i] = cur.rowcount > 0
            return stored

        return self._write(commit_offsets)

    def commit_offset(
        self,
        group: str,
        topic_id: int,
        partition: int,
        offset: int,
        metadata: str,
        leader_epoch: int = -1,
    ) -> None:
        """See :meth:`metadata.store.MetadataStore.commit_offset`."""
        entry = (topic_id, partition, offset, metadata, leader_epoch)
        if not self.commit_offsets(group, [entry])[0]:
            raise UnknownTopicError(f"partition {topic_id}/{partition} does not exist")

    def get_offset(self, group: str, topic_id: int, partition: int) -> tuple[int, str] | None:
        """See :meth:`metadata.store.MetadataStore.get_offset`."""
        found = self.get_offset_epoch(group, topic_id, partition)
        return (found[0], found[1]) if found is not None else None

    def get_offset_epoch(
        self, group: str, topic_id: int, partition: int
    ) -> tuple[int, str, int] | None:
        """See :meth:`metadata.store.MetadataStore.get_offset_epoch`."""

        def get_offset_epoch(cur: Any) -> Any:
            cur.execute(_SQL_GET_OFFSET, (group, topic_id, partition))
            return cur.fetchone()

        row = self._read(get_offset_epoch)
        return (row[0], row[1], row[2]) if row is not None else None

    def list_group_offsets(self, group: str) -> list[GroupOffset]:
        """See :meth:`metadata.store.MetadataStore.list_group_offsets`."""

        def list_group_offsets(cur: Any) -> list[Any]:
            cur.execute(_SQL_GROUP_OFFSETS, (group,))
            return cur.fetchall()

        return [GroupOffset(*r) for r in self._read(list_group_offsets)]

    def delete_group_offsets(
        self, group: str, partitions: Sequence[tuple[int, int]] | None = None
    ) -> int:
        """See :meth:`metadata.store.MetadataStore.delete_group_offsets`."""

        def delete_group_offsets(cur: Any) -> int:
            if partitions is None:
                cur.execute("DELETE FROM group_offsets WHERE group_id = %s", (group,))
                return int(cur.rowcount)
            removed = 0
            for topic_id, partition in partitions:
                cur.execute(
                    "DELETE FROM group_offsets WHERE group_id = %s AND topic_id = %s "
                    "AND partition = %s",
                    (group, topic_id, partition),
                )
                removed += cur.rowcount
            return removed

        return self._write(delete_group_offsets)

    def list_offset_groups(self) -> list[str]:
        """See :meth:`metadata.store.MetadataStore.list_offset_groups`."""

        def list_offset_groups(cur: Any) -> list[Any]:
            cur.execute(
                'SELECT group_id FROM group_offsets GROUP BY group_id ORDER BY group_id COLLATE "C"'
            )
            return cur.fetchall()

        return [r[0] for r in self._read(list_offset_groups)]

    # ------------------------------------------------------------------ consumer-group state

    def save_group_state(self, group_id: str, generation: int, state: bytes) -> bool:
        """See :meth:`metadata.store.MetadataStore.save_group_state`."""
        blob = validate_group_state(group_id, generation, state)
        now = _now_ms()

        def save_group_state(cur: Any) -> bool:
            # The conflicting row is locked before the WHERE is checked, so of two racing
            # saves the older generation never lands after the newer one.
            cur.execute(
                "INSERT INTO group_states (group_id, generation, state, updated_ms) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (group_id) DO UPDATE SET "
                "generation = excluded.generation, state = excluded.state, "
                "updated_ms = excluded.updated_ms "
                "WHERE group_states.generation <= excluded.generation",
                (group_id, generation, blob, now),
            )
            return bool(cur.rowcount > 0)

        return self._write(save_group_state)

    def load_group_state(self, group_id: str) -> tuple[int, bytes] | None:
        """See :meth:`metadata.store.MetadataStore.load_group_state`."""

        def load_group_state(cur: Any) -> Any:
            cur.execute(
                "SELECT generation, state FROM group_states WHERE group_id = %s", (group_id,)
            )
            return cur.fetchone()

        row = self._read(load_group_state)
        return (int(row[0]), _bytes(row[1])) if row is not None else None

    def delete_group_state(self, group_id: str) -> None:
        """See :meth:`metadata.store.MetadataStore.delete_group_state`."""

        def delete_group_state(cur: Any) -> None:
            cur.execute("DELETE FROM group_states WHERE group_id = %s", (group_id,))

        self._write(delete_group_state)

    def list_group_states(self) -> list[str]:
        """See :meth:`metadata.store.MetadataStore.list_group_states`."""

        def list_group_states(cur: Any) -> list[Any]:
            cur.execute('SELECT group_id FROM group_states ORDER BY group_id COLLATE "C"')
            return cur.fetchall()

        return [r[0] for r in self._read(list_group_states)]

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
        """See :meth:`metadata.store.MetadataStore.register_agent`; "now" is the server's
        ``clock_timestamp()``. A new agent picks its node id holding :data:`AGENTS_LOCK`."""
        validate_agent(agent_id, kafka_host, kafka_port, grpc_address, zone, lease_ms)

        def register_agent(cur: Any) -> AgentInfo:
            cur.execute(f"SELECT pg_advisory_xact_lock(%s), {_SQL_NOW_MS}", (AGENTS_LOCK,))
            now = int(cur.fetchone()[1])
            cur.execute("SELECT agent_id, node_id FROM agents")
            rows = cur.fetchall()
            mine = [n for a, n in rows if a == agent_id]
            node_id = mine[0] if mine else smallest_free_node_id([n for _, n in rows])
            cur.execute(
                f"INSERT INTO agents ({_AGENT_COLUMNS}) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s) "
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
            )
            return agent_row(cur.fetchone(), now)

        return self._write(register_agent)

    def heartbeat_agent(self, agent_id: str, lease_ms: int) -> list[AgentInfo]:
        """See :meth:`metadata.store.MetadataStore.heartbeat_agent`."""
        validate_lease(lease_ms)

        def heartbeat_agent(cur: Any) -> list[AgentInfo]:
            cur.execute(
                f"WITH n AS (SELECT {_SQL_NOW_MS} AS now) UPDATE agents "
                "SET heartbeat_at_ms = n.now, lease_until_ms = n.now + %s FROM n "
                "WHERE agent_id = %s RETURNING n.now",
                (lease_ms, agent_id),
            )
            row = cur.fetchone()
            if row is None:
                raise AgentUnknownError(
                    f"agent {agent_id!r} is not registered (it was forgotten, or never "
                    "registered): register it again"
                )
            now = int(row[0])
            cur.execute(_SQL_AGENTS)
            return [agent_row(r, now) for r in cur.fetchall()]

        return self._write(heartbeat_agent)

    def list_agents(self) -> list[AgentInfo]:
        """See :meth:`metadata.store.MetadataStore.list_agents`."""

        def list_agents(cur: Any) -> list[AgentInfo]:
            cur.execute(f"SELECT {_SQL_NOW_MS}")
            now = int(cur.fetchone()[0])
            cur.execute(_SQL_AGENTS)
            return [agent_row(r, now) for r in cur.fetchall()]

        return self._read(list_agents)

    def deregister_agent(self, agent_id: str) -> None:
        """See :meth:`metadata.store.MetadataStore.deregister_agent`."""

        def deregister_agent(cur: Any) -> None:
            cur.execute(
                f"WITH n AS (SELECT {_SQL_NOW_MS} AS now) UPDATE agents "
                "SET lease_until_ms = n.now FROM n "
                "WHERE agent_id = %s AND lease_until_ms > n.now",
                (agent_id,),
            )

        self._write(deregister_agent)

    def forget_agent(self, agent_id: str) -> bool:
        """See :meth:`metadata.store.MetadataStore.forget_agent`."""

        def forget_agent(cur: Any) -> bool:
            cur.execute("DELETE FROM agents WHERE agent_id = %s", (agent_id,))
            return bool(cur.rowcount > 0)

        return self._write(forget_agent)

    # ------------------------------------------------------------------ producers

    def allocate_producer_id(self) -> tuple[int, int]:
        """See :meth:`metadata.store.MetadataStore.allocate_producer_id`."""

        def allocate_producer_id(cur: Any) -> int:
            cur.execute(_SQL_ALLOCATE_PRODUCER_ID)
            return int(cur.fetchone()[0])

        return self._write(allocate_producer_id), 0
