"""Versioned schema migrations for the PostgreSQL metadata backend.

The same logical schema as the SQLite file (:mod:`metadata.migrations`), in PostgreSQL types.
The schema version lives in the single-row table ``streamhouse_schema``; a database without it
is at version 0. ``MIGRATIONS`` is an ordered list of steps, step *N* taking the database from
version *N-1* to *N*. Each step runs in its own transaction together with the version bump,
while the opening connection holds the advisory lock :data:`MIGRATION_LOCK`, so agents
starting at once apply each step exactly once (the others wait for the lock, re-read the
version and skip it), and a failing step leaves the database at the previous version
(PostgreSQL's DDL is transactional).

Never edit a released step: append a new one.

Schema (version 1)
==================

Times are milliseconds since the Unix epoch (``BIGINT``). Offsets are Kafka offsets
(``BIGINT``); ``end_offset`` is always exclusive.

``streamhouse_schema`` -- one row (``id = 1``): ``version INTEGER``, ``application TEXT``
    (always :data:`APPLICATION`, so that a database used by something else is refused).

``topics`` -- one row per live topic. ``topic_id BIGINT GENERATED ALWAYS AS IDENTITY``
    (a sequence: never reused, even after a delete), ``name TEXT UNIQUE``, ``uuid BYTEA
    UNIQUE`` (16 random bytes, the Kafka topic id), ``partitions INTEGER`` (1..10000),
    ``config TEXT`` (JSON object of str -> str), ``created_ms BIGINT``.

``partitions`` -- ``PRIMARY KEY (topic_id, partition)``: ``log_start_offset BIGINT``,
    ``high_watermark BIGINT`` (next offset to assign). A commit locks the rows it advances
    (``SELECT ... ORDER BY topic_id, partition FOR UPDATE``), always in that order.

``segments`` -- ``segment_id BIGINT`` identity, ``key TEXT UNIQUE`` (object key), ``size``,
    ``created_ms``.

``segment_blocks`` -- ``PRIMARY KEY (topic_id, partition, end_offset)``: ``base_offset``,
    ``segment_id`` (indexed, for the lifecycle job), ``byte_offset``, ``byte_length``,
    ``record_count`` (= end_offset - base_offset), ``max_timestamp``, ``skipped_batches TEXT``
    (NULL or a JSON array of the ordinals of batches present in the bytes that got no offsets).

``group_offsets`` -- ``PRIMARY KEY (group_id, topic_id, partition)``: ``"offset" BIGINT``,
    ``metadata TEXT``, ``commit_ms BIGINT``; index on ``topic_id``.

``producer_ids`` -- one row (``id = 1``): ``next_producer_id BIGINT``.

``producer_state`` -- ``PRIMARY KEY (topic_id, partition, producer_id)``: ``producer_epoch
    INTEGER``, ``batches TEXT`` (JSON array of up to 5 ``[first_sequence, last_sequence,
    base_offset, record_count]``, oldest first), ``last_update_ms BIGINT``.

``deleted_topics`` -- ``topic_id BIGINT PRIMARY KEY``, ``name``, ``uuid``, ``partitions``,
    ``deleted_ms``: bookkeeping for the lifecycle job.

Schema (version 2)
==================

Version 1 plus the cluster's tables (the same as the SQLite file's version 2):

``agents`` -- the agent registry. ``agent_id TEXT PRIMARY KEY``, ``node_id INTEGER UNIQUE``
    (>= 0, the Kafka broker id: the smallest free one at first registration, assigned while
    holding the transaction-level advisory lock :data:`metadata.postgres.AGENTS_LOCK`, kept by
    the agent_id until the row is deleted), ``kafka_host``, ``kafka_port``, ``grpc_address``,
    ``zone`` ('' = none), ``started_at_ms``, ``heartbeat_at_ms``, ``lease_until_ms`` (BIGINT,
    by the server's ``clock_timestamp()`` so that agents with skewed clocks agree; alive while
    ``lease_until_ms`` is after now).

``group_states`` -- ``group_id TEXT PRIMARY KEY``, ``generation BIGINT`` (a save with an
    older generation than the stored one is refused), ``state BYTEA`` (opaque; the format
    belongs to ingest/kafka/groups.py), ``updated_ms BIGINT``. Independent of
    ``group_offsets``: deleting offsets or a topic leaves it alone.

Schema (version 3)
==================

No new columns: ``partitions`` and ``producer_state`` get ``fillfactor = 50``. Every segment
commit rewrites the high watermark of each partition it touches (and the state of each
idempotent producer), none of them an indexed column, so with room left on each page
PostgreSQL updates the row in place (a HOT update: no new index entry). Packed pages
(fillfactor 100) turned nearly every such update into a new heap row plus a new primary-key
entry. Pages written before the step keep their packing until the table is rewritten
(``VACUUM FULL partitions, producer_state`` in a quiet moment).

Schema (version 4)
==================

The data lifecycle's bookkeeping (as the SQLite file's version 3):

``segments.dead_since_ms BIGINT`` (NULL while the segment is live) -- when the last block row
    referring to the segment went (retention, DeleteRecords, a deleted topic) or, for a
    segment committed with no block row (only duplicate batches), when a lifecycle pass first
    saw it so. The lifecycle job deletes the object once the grace period has passed since
    then, and then the row. Keys are never reused, so a dead segment never becomes live
    again. Existing rows start live (NULL); the first lifecycle pass marks the unreferenced
    ones.

Index ``segments_dead`` on ``(dead_since_ms, segment_id) WHERE dead_since_ms IS NOT NULL``
    (partial) lists dead segments oldest first without reading live ones. Retention finds a
    partition's oldest blocks by ``segment_blocks``' primary key and whether a segment still
    has block rows by ``segment_blocks_segment``.

Upgrading: ``ADD COLUMN`` without a default only changes the catalog (no table rewrite) and
the index starts empty, so the step is quick on any size of database; it holds an ACCESS
EXCLUSIVE lock on ``segments`` for that moment (commits wait). Older code refuses the database
afterwards, so upgrade every agent together.

Schema (version 5)
==================

As the SQLite file's version 4: ``clean_offsets`` (``PRIMARY KEY (topic_id, partition)``,
``clean_offset BIGINT`` >= 0, ``cleaned_ms BIGINT``; key compaction's checkpoint: offsets
below it have been key-compacted; rows go with their topic) and ``catalog`` (``PRIMARY KEY
(kind, name)``, ``definition BYTEA`` opaque to the store, ``created_ms``, ``updated_ms``; the
streaming-SQL catalog). Rewritten block rows (``replace_blocks``) may hold fewer records
than their span (``record_count <= end_offset - base_offset``: key compaction keeps
offsets) and leave gaps between a partition's rows; no column changes for that. No index on
``producer_state.last_update_ms`` or ``group_offsets.commit_ms`` for the expiry calls:
either would turn every idempotent commit's producer-state update (a HOT update today,
version 3) or every offset commit into an index write, to speed up a scan that runs once
per lifecycle pass.

Upgrading: the step creates two empty tables; nothing else is locked. Older code refuses the
database afterwards, so upgrade every agent together.

Schema (version 6)
==================

As the SQLite file's version 5: ``segment_blocks.raw_length BIGINT NOT NULL``, the block's
raw length (its block header's ``raw_length``: the bytes of its record batches), which
retention.bytes counts as Kafka counts a log's size; ``byte_length`` stays the stored block.

Upgrading: the step adds the column (with a default: no table rewrite) and then fills every
existing row with its ``byte_length`` (the raw length is unknown without reading the
objects), one UPDATE of every ``segment_blocks`` row in one transaction: commits of those
partitions wait for it, and the table's size doubles until vacuum reclaims the old row
versions. Older code refuses the database afterwards, so upgrade every agent together.

Schema (version 7)
==================

As the SQLite file's version 6: ``query_checkpoints`` (``name TEXT PRIMARY KEY``, the
continuous query's catalog name; ``generation BIGINT`` >= 1, the fencing token every
``claim_query`` bumps and every step commit must carry; ``step BIGINT`` >= 0, committed
steps; ``payload BYTEA``, opaque: the SQL layer's checkpoint state; ``updated_ms BIGINT``;
``dropped_ms BIGINT``, NULL while the query exists, else the row is a dropped query's
tombstone that keeps its generation so that the name's generations never repeat) and
``group_offsets.leader_epoch INTEGER NOT NULL DEFAULT -1`` (the leader epoch committed with
the offset; -1: not given). A step commit locks its query's row (``SELECT ... FOR
UPDATE``) before anything else and then commits the step's output segment exactly as a
segment commit does (partition rows locked in rule 1's order of :mod:`metadata.postgres`),
so of two runners committing the same step one wins and the other is fenced, and nothing
locks a query row after partition rows (no deadlock).

Upgrading: the step creates one empty table and adds a column with a constant default (no
table rewrite since PostgreSQL 11: older rows read -1); it holds an ACCESS EXCLUSIVE lock on
``group_offsets`` for that moment (offset commits wait). Older code refuses the database
afterwards, so upgrade every agent together.

Schema (version 8)
==================

As the SQLite file's version 7 (``metadata.transactions`` has the rules): ``open_txns``
(``PRIMARY KEY (topic_id BIGINT, partition INTEGER, producer_id BIGINT)``, ``first_offset
BIGINT``: the first offset of the producer's open transaction on the partition) and
``aborted_txns`` (``PRIMARY KEY (topic_id BIGINT, partition INTEGER, last_offset BIGINT)``,
the ABORT marker's offset; ``producer_id BIGINT``, ``first_offset BIGINT``). A segment
commit reads and changes a partition's rows only while it holds the partition's row lock
(rule 1 of :mod:`metadata.postgres`), so commits of one partition see each other's
transactions in order; readers take the last stable offset in the statement that reads the
high watermark.

Upgrading: the step only creates two empty tables. Older code refuses the database
afterwards, so upgrade every agent together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

from metadata.errors import MetadataError, SchemaTooNewError

#: ``streamhouse_schema.application`` of a StreamHouse metadata database.
APPLICATION: Final = "streamhouse-metadata"
#: Key of the advisory lock migrations hold ("SHMD", as the SQLite application_id).
MIGRATION_LOCK: Final = 0x53484D44


class Migration(NamedTuple):
    """One schema step: takes the database from ``version - 1`` to ``version``.

    ``apply`` is an SQL script or a callable receiving a psycopg cursor; it runs inside the
    step's transaction and must not commit or roll back itself.
    """

    version: int
    description: str
    apply: str | Callable[[Any], None]


_SCHEMA_V1 = """
CREATE TABLE topics (
    topic_id    BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    uuid        BYTEA   NOT NULL UNIQUE CHECK (octet_length(uuid) = 16),
    partitions  INTEGER NOT NULL CHECK (partitions BETWEEN 1 AND 10000),
    config      TEXT    NOT NULL DEFAULT '{}',
    created_ms  BIGINT  NOT NULL
);

CREATE TABLE partitions (
    topic_id          BIGINT  NOT NULL,
    partition         INTEGER NOT NULL,
    log_start_offset  BIGINT  NOT NULL DEFAULT 0,
    high_watermark    BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (topic_id, partition)
);

CREATE TABLE segments (
    segment_id  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         TEXT   NOT NULL UNIQUE,
    size        BIGINT NOT NULL,
    created_ms  BIGINT NOT NULL
);

CREATE TABLE segment_blocks (
    topic_id         BIGINT  NOT NULL,
    partition        INTEGER NOT NULL,
    end_offset       BIGINT  NOT NULL,
    base_offset      BIGINT  NOT NULL,
    segment_id       BIGINT  NOT NULL,
    byte_offset      BIGINT  NOT NULL,
    byte_length      BIGINT  NOT NULL,
    record_count     BIGINT  NOT NULL,
    max_timestamp    BIGINT  NOT NULL,
    skipped_batches  TEXT,
    PRIMARY KEY (topic_id, partition, end_offset)
);

CREATE INDEX segment_blocks_segment ON segment_blocks (segment_id);

CREATE TABLE group_offsets (
    group_id   TEXT    NOT NULL,
    topic_id   BIGINT  NOT NULL,
    partition  INTEGER NOT NULL,
    "offset"   BIGINT  NOT NULL,
    metadata   TEXT    NOT NULL DEFAULT '',
    commit_ms  BIGINT  NOT NULL,
    PRIMARY KEY (group_id, topic_id, partition)
);

CREATE INDEX group_offsets_topic ON group_offsets (topic_id);

CREATE TABLE producer_ids (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    next_producer_id  BIGINT  NOT NULL
);

INSERT INTO producer_ids (id, next_producer_id) VALUES (1, 0);

CREATE TABLE producer_state (
    topic_id        BIGINT  NOT NULL,
    partition       INTEGER NOT NULL,
    producer_id     BIGINT  NOT NULL,
    producer_epoch  INTEGER NOT NULL,
    batches         TEXT    NOT NULL,
    last_update_ms  BIGINT  NOT NULL,
    PRIMARY KEY (topic_id, partition, producer_id)
);

CREATE TABLE deleted_topics (
    topic_id    BIGINT  PRIMARY KEY,
    name        TEXT    NOT NULL,
    uuid        BYTEA   NOT NULL,
    partitions  INTEGER NOT NULL,
    deleted_ms  BIGINT  NOT NULL
);
"""

_SCHEMA_V2 = """
CREATE TABLE agents (
    agent_id         TEXT    PRIMARY KEY,
    node_id          INTEGER NOT NULL UNIQUE CHECK (node_id >= 0),
    kafka_host       TEXT    NOT NULL,
    kafka_port       INTEGER NOT NULL,
    grpc_address     TEXT    NOT NULL,
    zone             TEXT    NOT NULL DEFAULT '',
    started_at_ms    BIGINT  NOT NULL,
    heartbeat_at_ms  BIGINT  NOT NULL,
    lease_until_ms   BIGINT  NOT NULL
);

CREATE TABLE group_states (
    group_id    TEXT    PRIMARY KEY,
    generation  BIGINT  NOT NULL,
    state       BYTEA   NOT NULL,
    updated_ms  BIGINT  NOT NULL
);
"""

_SCHEMA_V5 = """
CREATE TABLE clean_offsets (
    topic_id      BIGINT  NOT NULL,
    partition     INTEGER NOT NULL,
    clean_offset  BIGINT  NOT NULL CHECK (clean_offset >= 0),
    cleaned_ms    BIGINT  NOT NULL,
    PRIMARY KEY (topic_id, partition)
);

CREATE TABLE catalog (
    kind        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    definition  BYTEA   NOT NULL,
    created_ms  BIGINT  NOT NULL,
    updated_ms  BIGINT  NOT NULL,
    PRIMARY KEY (kind, name)
);
"""

_SCHEMA_V7 = """
CREATE TABLE query_checkpoints (
    name        TEXT    PRIMARY KEY,
    generation  BIGINT  NOT NULL CHECK (generation >= 1),
    step        BIGINT  NOT NULL CHECK (step >= 0),
    payload     BYTEA   NOT NULL,
    updated_ms  BIGINT  NOT NULL,
    dropped_ms  BIGINT
);

ALTER TABLE group_offsets ADD COLUMN leader_epoch INTEGER NOT NULL DEFAULT -1;
"""

_SCHEMA_V8 = """
CREATE TABLE open_txns (
    topic_id      BIGINT  NOT NULL,
    partition     INTEGER NOT NULL,
    producer_id   BIGINT  NOT NULL,
    first_offset  BIGINT  NOT NULL CHECK (first_offset >= 0),
    PRIMARY KEY (topic_id, partition, producer_id)
);

CREATE TABLE aborted_txns (
    topic_id      BIGINT  NOT NULL,
    partition     INTEGER NOT NULL,
    last_offset   BIGINT  NOT NULL,
    producer_id   BIGINT  NOT NULL,
    first_offset  BIGINT  NOT NULL CHECK (first_offset >= 0),
    PRIMARY KEY (topic_id, partition, last_offset)
);
"""

#: The ordered migration steps; ``MIGRATIONS[i].version == i + 1``.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _SCHEMA_V1),
    Migration(2, "agents registry and consumer-group state", _SCHEMA_V2),
    Migration(
        3,
        "room for in-place (HOT) updates of high watermarks and producer state",
        "ALTER TABLE partitions SET (fillfactor = 50); "
        "ALTER TABLE producer_state SET (fillfactor = 50);",
    ),
    Migration(
        4,
        "dead segments for the data lifecycle",
        "ALTER TABLE segments ADD COLUMN dead_since_ms BIGINT; "
        "CREATE INDEX segments_dead ON segments (dead_since_ms, segment_id) "
        "WHERE dead_since_ms IS NOT NULL;",
    ),
    Migration(5, "key-compaction checkpoints and the streaming-SQL catalog", _SCHEMA_V5),
    Migration(
        6,
        "raw (batch) length of each block, for retention.bytes",
        "ALTER TABLE segment_blocks ADD COLUMN raw_length BIGINT NOT NULL DEFAULT 0; "
        "UPDATE segment_blocks SET raw_length = byte_length;",
    ),
    Migration(7, "continuous queries' checkpoints and offsets' leader epochs", _SCHEMA_V7),
    Migration(8, "open and aborted transactions of the log", _SCHEMA_V8),
)

_SQL_CREATE_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS streamhouse_schema (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "version INTEGER NOT NULL, application TEXT NOT NULL)"
)


def latest_version(steps: Sequence[Migration] | None = None) -> int:
    """Return the schema version the given steps (default :data:`MIGRATIONS`) produce."""
    steps = MIGRATIONS if steps is None else steps
    return steps[-1].version if steps else 0


def schema_version(cur: Any) -> int:
    """Return the database's schema version (0 without the ``streamhouse_schema`` table)."""
    cur.execute("SELECT to_regclass('streamhouse_schema') IS NOT NULL")
    if not cur.fetchone()[0]:
        return 0
    cur.execute("SELECT version, application FROM streamhouse_schema WHERE id = 1")
    row = cur.fetchone()
    if row is None:
        return 0
    if row[1] != APPLICATION:
        raise MetadataError(
            f"not a StreamHouse metadata database (streamhouse_schema.application is "
            f"{row[1]!r}, expected {APPLICATION!r}); point STREAMHOUSE_METADATA at another one"
        )
    return int(row[0])


def _locked_version(cur: Any, latest: int) -> int:
    current = schema_version(cur)
    if current > latest:
        raise SchemaTooNewError(
            f"metadata database has schema version {current}, but this code only knows "
            f"versions up to {latest}; upgrade StreamHouse before opening it"
        )
    return current


def migrate(conn: Any, steps: Sequence[Migration] | None = None) -> int:
    """Bring the database behind the psycopg connection ``conn`` (autocommit) up to the
    latest schema version and return that version.

    Pending steps run while ``conn`` holds :data:`MIGRATION_LOCK`; each, in one transaction,
    re-reads the version, applies the step and bumps the version. A failing step rolls back and
    its exception propagates. Raises :class:`SchemaTooNewError` if the database is newer than
    the code and :class:`MetadataError` if it belongs to something else. ``steps`` defaults to
    :data:`MIGRATIONS` (looked up at call time).
    """
    steps = MIGRATIONS if steps is None else steps
    for i, step in enumerate(steps):
        if step.version != i + 1:
            raise MetadataError(f"migration list is broken: step {i} has version {step.version}")
    latest = latest_version(steps)
    with conn.cursor() as cur:
        if _locked_version(cur, latest) == latest:
            return latest
        # A session-level lock taken outside any transaction: each step's transaction then
        # starts after the lock is held, so it sees every step another agent committed.
        cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            for step in steps:
                with conn.transaction():
                    if _locked_version(cur, latest) >= step.version:
                        continue  # applied before, or by another agent meanwhile
                    cur.execute(_SQL_CREATE_VERSION_TABLE)
                    if isinstance(step.apply, str):
                        cur.execute(step.apply)
                    else:
                        step.apply(cur)
                    cur.execute(
                        "INSERT INTO streamhouse_schema (id, version, application) "
                        "VALUES (1, %s, %s) ON CONFLICT (id) DO UPDATE SET version = "
                        "excluded.version",
                        (step.version, APPLICATION),
                    )
        finally:
            if not conn.closed:
                cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        return schema_version(cur)
