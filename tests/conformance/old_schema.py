"""Helpers of the conformance tests that open a database at an older schema version."""

from __future__ import annotations

from pathlib import Path

import apsw
import psycopg


def old_schema_sql(target: Path | str, sql: str) -> None:
    """Runs ``sql`` on the database of a test of an older schema: an SQLite file (a Path) or
    a PostgreSQL DSN. Such tests write their data with today's code, which also fills
    ``segment_blocks.raw_length`` (SQLite schema 5, PostgreSQL 6): they add that column to the
    old database to write, and drop it again before the upgrade (:data:`ADD_RAW_LENGTH`,
    :data:`DROP_RAW_LENGTH`)."""
    if isinstance(target, Path):
        db = apsw.Connection(str(target))
        db.execute(sql)
        db.close()
    else:
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


ADD_RAW_LENGTH = "ALTER TABLE segment_blocks ADD COLUMN raw_length INTEGER NOT NULL DEFAULT 0"
DROP_RAW_LENGTH = "ALTER TABLE segment_blocks DROP COLUMN raw_length"


# Today's partition reads take the last stable offset from ``open_txns`` (SQLite schema 7,
# PostgreSQL 8): tests of older schemas add the table to read, and drop it before the upgrade.
ADD_OPEN_TXNS = (
    "CREATE TABLE open_txns (topic_id BIGINT NOT NULL, partition INTEGER NOT NULL, "
    "producer_id BIGINT NOT NULL, first_offset BIGINT NOT NULL, "
    "PRIMARY KEY (topic_id, partition, producer_id))"
)
DROP_OPEN_TXNS = "DROP TABLE open_txns"
