"""Versioned schema migrations for the metadata SQLite file.

The schema version lives in ``PRAGMA user_version``; version 0 is an empty file. ``MIGRATIONS``
is an ordered list of steps, step *N* taking the file from version *N-1* to *N*. Each step runs
in its own ``BEGIN IMMEDIATE`` transaction together with the ``user_version`` bump, so a crash
leaves the file at a whole version and two processes opening the same file at once apply each
step exactly once (the second re-reads the version under the write lock and skips it).

Never edit a released step: append a new one.

Schema (version 1)
==================

All tables are ``STRICT``. Times are milliseconds since the Unix epoch. Offsets are Kafka
offsets (int64); ``end_offset`` is always exclusive.

``topics`` -- one row per live topic.
    ``topic_id INTEGER PRIMARY KEY AUTOINCREMENT`` (never reused, even after a delete),
    ``name TEXT UNIQUE``, ``uuid BLOB UNIQUE`` (16 random bytes, the Kafka topic id),
    ``partitions INTEGER`` (1..10000), ``config TEXT`` (JSON object of str -> str),
    ``created_ms INTEGER``.

``partitions`` -- one row per partition of a live topic, ``PRIMARY KEY (topic_id, partition)``.
    ``log_start_offset INTEGER`` (first readable offset, moved by DeleteRecords/retention),
    ``high_watermark INTEGER`` (next offset to assign = end of the committed log).

``segments`` -- one row per committed segment object.
    ``segment_id INTEGER PRIMARY KEY AUTOINCREMENT``, ``key TEXT UNIQUE`` (object key),
    ``size INTEGER`` (bytes), ``created_ms INTEGER``.

``segment_blocks`` -- where a partition's records live; one row per (segment, partition run).
    ``PRIMARY KEY (topic_id, partition, end_offset)``, ``WITHOUT ROWID`` so the rows are
    clustered in lookup order (find the first block with ``end_offset > offset``).
    ``base_offset`` .. ``end_offset`` (exclusive) cover only the batches that got offsets;
    ``segment_id``; ``byte_offset``/``byte_length`` locate the block inside the object;
    ``record_count`` = records that got offsets (= end_offset - base_offset);
    ``max_timestamp``; ``skipped_batches TEXT`` -- NULL, or a JSON array of the ordinals
    (0-based, within the block) of batches that are physically present but got no offsets
    (duplicates, sequence or epoch errors). Index ``segment_blocks_segment`` on ``segment_id``
    lets a lifecycle job find segments that no block references any more.

``group_offsets`` -- committed consumer offsets, ``PRIMARY KEY (group_id, topic_id, partition)``.
    ``"offset" INTEGER``, ``metadata TEXT``, ``commit_ms INTEGER``. Index on ``topic_id`` makes
    deleting a topic's offsets cheap.

``producer_ids`` -- a single row (``id = 1``) holding ``next_producer_id``, the counter behind
    producer id allocation.

``producer_state`` -- idempotent-producer state, ``PRIMARY KEY (topic_id, partition,
    producer_id)``, ``WITHOUT ROWID``. ``producer_epoch INTEGER``; ``batches TEXT`` -- JSON
    array of up to 5 ``[first_sequence, last_sequence, base_offset, record_count]``, oldest
    first; ``last_update_ms INTEGER`` (for a future expiry job).

``deleted_topics`` -- bookkeeping for the lifecycle job: ``topic_id INTEGER PRIMARY KEY``,
    ``name``, ``uuid``, ``partitions``, ``deleted_ms``. The topic's blocks are gone, so the
    segments that held only its data are the ones no block references any more.

Schema (version 2)
==================

Version 1 plus two tables for a cluster of agents (the embedded single agent uses them too):

``agents`` -- the agent registry, one row per agent that ever registered and was not
    forgotten. ``agent_id TEXT PRIMARY KEY`` (stable name, default the Kafka advertised
    host:port), ``node_id INTEGER UNIQUE`` (>= 0, the Kafka broker id: the smallest one free at
    first registration, kept by the agent_id until the row is deleted), ``kafka_host TEXT``,
    ``kafka_port INTEGER``, ``grpc_address TEXT``, ``zone TEXT`` ('' = none),
    ``started_at_ms`` (this incarnation's registration), ``heartbeat_at_ms`` (last heartbeat),
    ``lease_until_ms`` (lease end; the agent is alive while it is after now; a clean stop sets
    it to now). Times by the store's clock (here the local one).

``group_states`` -- consumer-group state, one row per group, opaque to the store.
    ``group_id TEXT PRIMARY KEY``, ``generation INTEGER`` (a save with an older generation
    than the stored one is refused), ``state BLOB`` (the group coordinator's blob; its format
    belongs to ingest/kafka/groups.py), ``updated_ms INTEGER``. Independent of
    ``group_offsets``: deleting a group's offsets or a topic leaves it alone.

Schema (version 3)
==================

Version 2 plus the data lifecycle's bookkeeping:

``segments.dead_since_ms INTEGER`` (NULL while the segment is live) -- when the last block
    row referring to the segment went (retention, DeleteRecords, a deleted topic) or, for a
    segment committed with no block row at all (only duplicate batches), when a lifecycle
    pass first saw it so. From then on nobody can look the object up; the lifecycle job
    deletes the object once the grace period has passed since ``dead_since_ms`` and then
    deletes the row (``forget_segments``). Keys are never reused, so a dead segment never
    becomes live again. Rows of version 2 start live (NULL); the first lifecycle pass marks
    the unreferenced ones.

Index ``segments_dead`` on ``(dead_since_ms, segment_id) WHERE dead_since_ms IS NOT NULL``
    (partial: only dead rows are in it) lists dead segments oldest first without reading the
    live ones. The oldest blocks of a partition come from ``segment_blocks``' primary key
    (``topic_id, partition, end_offset``) and whether a segment still has block rows from
    ``segment_blocks_segment``, so retention needs no other index.

Upgrading: the step adds the column and the index in one transaction (a fast metadata-only
change in SQLite: no row is rewritten); older code cannot open the file afterwards
(:class:`~metadata.errors.SchemaTooNewError`), so upgrade every process together.

Schema (version 4)
==================

Version 3 plus the second increment of the data lifecycle and the streaming-SQL catalog:

``clean_offsets`` -- key compaction's checkpoint, one row per partition of a compacted topic
    that was ever key-compacted. ``PRIMARY KEY (topic_id, partition)``, ``WITHOUT ROWID``;
    ``clean_offset INTEGER`` (>= 0: offsets below it have been key-compacted),
    ``cleaned_ms INTEGER`` (when it was last set). Rows go with their topic
    (``delete_topic``); a checkpoint is only stored for a partition that exists.

``catalog`` -- named definitions of streaming SQL (streams, tables, views, queries), opaque
    here. ``PRIMARY KEY (kind, name)``, ``WITHOUT ROWID``; ``kind TEXT`` (e.g. 'stream',
    'table', 'view', 'query'), ``name TEXT``, ``definition BLOB`` (its format belongs to the
    SQL layer), ``created_ms``, ``updated_ms``.

Rewrites of objects (``replace_blocks``) need no new column: a rewritten block row may hold
fewer records than its span (``record_count <= end_offset - base_offset``, key compaction) and
a partition's rows may leave gaps between them (offsets whose records were all removed).
Producer-state expiry (``last_update_ms``) and offset expiry (``commit_ms``) scan their tables:
an index on those columns would be rewritten by every idempotent commit and offset commit,
which run far more often than the lifecycle pass that reads them.

Upgrading: the step only creates the two tables (quick on any size of file); older code cannot
open the file afterwards (:class:`~metadata.errors.SchemaTooNewError`), so upgrade every
process together.

Schema (version 5)
==================

Version 4 plus ``segment_blocks.raw_length INTEGER NOT NULL``: the block's raw length (the
``raw_length`` of its block header in the segment object, i.e. the bytes of its record
batches as a consumer receives them). retention.bytes counts it, as Kafka counts a log's size
in batch bytes; ``byte_length`` (the stored, maybe LZ4-compressed, block) stays what the
object store holds. The uploader fills it from the block headers of the object it commits,
``replace_blocks`` from the rewritten blocks it is given.

Upgrading: the step adds the column and fills every existing row with its ``byte_length``
(the raw length is not known without reading the objects; for incompressible data the two
differ by the 20-byte block header), so retention.bytes counts those older blocks as before.
It rewrites every ``segment_blocks`` row once, in one transaction: on a large file, expect it
to take a while and to hold the write lock meanwhile. Older code cannot open the file
afterwards (:class:`~metadata.errors.SchemaTooNewError`), so upgrade every process together.

Schema (version 6)
==================

Version 5 plus continuous queries' checkpoints and the leader epoch of committed offsets:

``query_checkpoints`` -- one row per continuous query (streaming SQL) that a runner ever
    claimed and that was not dropped. ``name TEXT PRIMARY KEY`` (the query's catalog name),
    ``generation INTEGER`` (>= 1, the fencing token: every ``claim_query`` adds 1, and a step
    commit must carry the current one), ``step INTEGER`` (>= 0, committed steps; each commit
    must be the next one), ``payload BLOB`` (opaque here: the SQL layer's checkpoint state,
    ``sql.continuous.definition.CheckpointState`` as msgpack; empty before the first commit),
    ``updated_ms INTEGER`` (the last claim, step or drop), ``dropped_ms INTEGER`` (NULL while
    the query exists; set by ``delete_query_checkpoint``, which keeps the row as a tombstone
    with step 0 and an empty payload, so that a query created again under the name is
    claimed at a newer generation than any runner of the dropped one holds). A step commit
    changes the row and commits the step's output segment (``segments``, ``segment_blocks``,
    high watermarks) in one transaction, so the log and the checkpoint never disagree. A
    rowid table (not ``WITHOUT ROWID``): payloads may be larger than a page's share.

``group_offsets.leader_epoch INTEGER NOT NULL DEFAULT -1`` -- the leader epoch a consumer
    committed with its offset (Kafka's ``committed_leader_epoch``; -1: not given).

Upgrading: the step creates one empty table and adds a column with a constant default (a
metadata-only change in SQLite: no row is rewritten; older rows read -1). Older code cannot
open the file afterwards (:class:`~metadata.errors.SchemaTooNewError`), so upgrade every
process together.

Schema (version 7)
==================

Version 6 plus the transactions of the log (``metadata.transactions`` has the rules):

``open_txns`` -- one row per producer with an open transaction on a partition.
    ``PRIMARY KEY (topic_id, partition, producer_id)``, ``first_offset INTEGER`` (the first
    offset of the transaction's first batch on the partition). Inserted by the commit of a
    transactional batch when none is open, deleted by the commit of that producer's control
    batch (COMMIT or ABORT marker). The partition's last stable offset is the smallest
    ``first_offset`` of its rows, else its high watermark.

``aborted_txns`` -- one row per aborted transaction on a partition, for read_committed
    fetches. ``PRIMARY KEY (topic_id, partition, last_offset)`` (the ABORT marker's offset,
    unique in the partition), ``producer_id INTEGER``, ``first_offset INTEGER``. Rows wholly
    below the log start offset are deleted when it moves (retention, DeleteRecords); a
    topic's rows go with it.

Upgrading: the step only creates the two empty tables (quick on any size of file). Older code
cannot open the file afterwards (:class:`~metadata.errors.SchemaTooNewError`), so upgrade
every process together.

``PRAGMA application_id`` is set to :data:`APPLICATION_ID` so that a foreign SQLite file is
refused rather than migrated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import apsw

from metadata.errors import MetadataError, SchemaTooNewError

#: ``PRAGMA application_id`` of a StreamHouse metadata file ("SHMD").
APPLICATION_ID = 0x53484D44


class Migration(NamedTuple):
    """One schema step: takes the file from ``version - 1`` to ``version``.

    ``apply`` is either an SQL script or a callable that receives the connection; it runs inside
    the step's transaction and must not commit or roll back itself.
    """

    version: int
    description: str
    apply: str | Callable[[apsw.Connection], None]


_SCHEMA_V1 = f"""
PRAGMA application_id = {APPLICATION_ID};

CREATE TABLE topics (
    topic_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    uuid        BLOB    NOT NULL UNIQUE CHECK (length(uuid) = 16),
    partitions  INTEGER NOT NULL CHECK (partitions BETWEEN 1 AND 10000),
    config      TEXT    NOT NULL DEFAULT '{{}}',
    created_ms  INTEGER NOT NULL
) STRICT;

CREATE TABLE partitions (
    topic_id          INTEGER NOT NULL,
    partition         INTEGER NOT NULL,
    log_start_offset  INTEGER NOT NULL DEFAULT 0,
    high_watermark    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic_id, partition)
) STRICT, WITHOUT ROWID;

CREATE TABLE segments (
    segment_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT    NOT NULL UNIQUE,
    size        INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL
) STRICT;

CREATE TABLE segment_blocks (
    topic_id         INTEGER NOT NULL,
    partition        INTEGER NOT NULL,
    end_offset       INTEGER NOT NULL,
    base_offset      INTEGER NOT NULL,
    segment_id       INTEGER NOT NULL,
    byte_offset      INTEGER NOT NULL,
    byte_length      INTEGER NOT NULL,
    record_count     INTEGER NOT NULL,
    max_timestamp    INTEGER NOT NULL,
    skipped_batches  TEXT,
    PRIMARY KEY (topic_id, partition, end_offset)
) STRICT, WITHOUT ROWID;

CREATE INDEX segment_blocks_segment ON segment_blocks (segment_id);

CREATE TABLE group_offsets (
    group_id   TEXT    NOT NULL,
    topic_id   INTEGER NOT NULL,
    partition  INTEGER NOT NULL,
    "offset"   INTEGER NOT NULL,
    metadata   TEXT    NOT NULL DEFAULT '',
    commit_ms  INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic_id, partition)
) STRICT, WITHOUT ROWID;

CREATE INDEX group_offsets_topic ON group_offsets (topic_id);

CREATE TABLE producer_ids (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    next_producer_id  INTEGER NOT NULL
) STRICT;

INSERT INTO producer_ids (id, next_producer_id) VALUES (1, 0);

CREATE TABLE producer_state (
    topic_id        INTEGER NOT NULL,
    partition       INTEGER NOT NULL,
    producer_id     INTEGER NOT NULL,
    producer_epoch  INTEGER NOT NULL,
    batches         TEXT    NOT NULL,
    last_update_ms  INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition, producer_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE deleted_topics (
    topic_id    INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    uuid        BLOB    NOT NULL,
    partitions  INTEGER NOT NULL,
    deleted_ms  INTEGER NOT NULL
) STRICT;
"""

_SCHEMA_V2 = """
CREATE TABLE agents (
    agent_id         TEXT    PRIMARY KEY,
    node_id          INTEGER NOT NULL UNIQUE CHECK (node_id >= 0),
    kafka_host       TEXT    NOT NULL,
    kafka_port       INTEGER NOT NULL,
    grpc_address     TEXT    NOT NULL,
    zone             TEXT    NOT NULL DEFAULT '',
    started_at_ms    INTEGER NOT NULL,
    heartbeat_at_ms  INTEGER NOT NULL,
    lease_until_ms   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE group_states (
    group_id    TEXT    PRIMARY KEY,
    generation  INTEGER NOT NULL,
    state       BLOB    NOT NULL,
    updated_ms  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
"""

_SCHEMA_V3 = """
ALTER TABLE segments ADD COLUMN dead_since_ms INTEGER;

CREATE INDEX segments_dead ON segments (dead_since_ms, segment_id)
    WHERE dead_since_ms IS NOT NULL;
"""

_SCHEMA_V4 = """
CREATE TABLE clean_offsets (
    topic_id      INTEGER NOT NULL,
    partition     INTEGER NOT NULL,
    clean_offset  INTEGER NOT NULL CHECK (clean_offset >= 0),
    cleaned_ms    INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition)
) STRICT, WITHOUT ROWID;

CREATE TABLE catalog (
    kind        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    definition  BLOB    NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) STRICT, WITHOUT ROWID;
"""

_SCHEMA_V5 = """
ALTER TABLE segment_blocks ADD COLUMN raw_length INTEGER NOT NULL DEFAULT 0;

UPDATE segment_blocks SET raw_length = byte_length;
"""

_SCHEMA_V6 = """
CREATE TABLE query_checkpoints (
    name        TEXT    PRIMARY KEY,
    generation  INTEGER NOT NULL CHECK (generation >= 1),
    step        INTEGER NOT NULL CHECK (step >= 0),
    payload     BLOB    NOT NULL,
    updated_ms  INTEGER NOT NULL,
    dropped_ms  INTEGER
) STRICT;

ALTER TABLE group_offsets ADD COLUMN leader_epoch INTEGER NOT NULL DEFAULT -1;
"""

_SCHEMA_V7 = """
CREATE TABLE open_txns (
    topic_id      INTEGER NOT NULL,
    partition     INTEGER NOT NULL,
    producer_id   INTEGER NOT NULL,
    first_offset  INTEGER NOT NULL CHECK (first_offset >= 0),
    PRIMARY KEY (topic_id, partition, producer_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE aborted_txns (
    topic_id      INTEGER NOT NULL,
    partition     INTEGER NOT NULL,
    last_offset   INTEGER NOT NULL,
    producer_id   INTEGER NOT NULL,
    first_offset  INTEGER NOT NULL CHECK (first_offset >= 0),
    PRIMARY KEY (topic_id, partition, last_offset)
) STRICT, WITHOUT ROWID;
"""

#: The ordered migration steps; ``MIGRATIONS[i].version == i + 1``.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _SCHEMA_V1),
    Migration(2, "agents registry and consumer-group state", _SCHEMA_V2),
    Migration(3, "dead segments for the data lifecycle", _SCHEMA_V3),
    Migration(4, "key-compaction checkpoints and the streaming-SQL catalog", _SCHEMA_V4),
    Migration(5, "raw (batch) length of each block, for retention.bytes", _SCHEMA_V5),
    Migration(6, "continuous queries' checkpoints and offsets' leader epochs", _SCHEMA_V6),
    Migration(7, "open and aborted transactions of the log", _SCHEMA_V7),
)


def latest_version(steps: Sequence[Migration] | None = None) -> int:
    """Return the schema version the given steps (default :data:`MIGRATIONS`) produce."""
    steps = MIGRATIONS if steps is None else steps
    return steps[-1].version if steps else 0


def schema_version(db: apsw.Connection) -> int:
    """Return the file's current schema version (``PRAGMA user_version``)."""
    return int(db.execute("PRAGMA user_version").fetchall()[0][0])


def _check_file(db: apsw.Connection, current: int, latest: int) -> None:
    app_id = int(db.execute("PRAGMA application_id").fetchall()[0][0])
    if app_id not in (0, APPLICATION_ID):
        raise MetadataError(
            f"not a StreamHouse metadata file (application_id {app_id:#x}, "
            f"expected {APPLICATION_ID:#x})"
        )
    if current > latest:
        raise SchemaTooNewError(
            f"metadata file has schema version {current}, but this code only knows versions "
            f"up to {latest}; upgrade StreamHouse before opening it"
        )


def migrate(db: apsw.Connection, steps: Sequence[Migration] | None = None) -> int:
    """Bring the open database up to the latest schema version and return that version.

    Applies every step newer than the file's ``user_version``, each in one ``BEGIN IMMEDIATE``
    transaction that also bumps ``user_version``; a failing step rolls back and its exception
    propagates, leaving the file at the previous version. Raises :class:`SchemaTooNewError` if
    the file is newer than the code and :class:`MetadataError` if it is not a StreamHouse file.
    Safe to run concurrently from several processes on the same file. ``steps`` defaults to
    :data:`MIGRATIONS` (looked up at call time).
    """
    steps = MIGRATIONS if steps is None else steps
    for i, step in enumerate(steps):
        if step.version != i + 1:
            raise MetadataError(f"migration list is broken: step {i} has version {step.version}")
    latest = latest_version(steps)
    current = schema_version(db)
    _check_file(db, current, latest)
    for step in steps[current:]:
        db.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = schema_version(db)
            _check_file(db, current, latest)
            if current < step.version:
                if isinstance(step.apply, str):
                    db.execute(step.apply)
                else:
                    step.apply(db)
                db.execute(f"PRAGMA user_version = {int(step.version)}")
            db.execute("COMMIT")
        except BaseException:
            if not db.getautocommit():
                db.execute("ROLLBACK")
            raise
    return schema_version(db)
