"""sql.continuous.source's decoding (pure code): raw rows -> a declared stream's or table's rows,
and exactly the records that do not match, returned raw for the dead-letter topic."""

from __future__ import annotations

import json

import pyarrow as pa

from sql.catalog import Column, Relation
from sql.continuous.pipeline import Source
from sql.continuous.source import decode_relation
from sql.decode import RAW_SCHEMA
from sql.engine import relation_schema

COLUMNS = [Column("id", "BIGINT", not_null=True), Column("name", "VARCHAR")]


def raw(values: list[bytes | None], keys: list[bytes | None] | None = None) -> pa.RecordBatch:
    n = len(values)
    return pa.RecordBatch.from_pydict(
        {
            "partition": [2] * n,
            "offset": list(range(10, 10 + n)),
            "timestamp": [1000 + i for i in range(n)],
            "key": keys or [None] * n,
            "value": values,
            "headers": [[] for _ in range(n)],
        },
        schema=RAW_SCHEMA,
    )


def test_a_stream_keeps_matching_records_and_returns_the_others_raw() -> None:
    relation = Relation("stream", "s", "t", "json", COLUMNS)
    values = [
        b'{"id": 1, "name": "a"}',
        b"not json",
        b'{"name": "no id"}',  # NOT NULL column missing
        None,
        b'{"id": "x"}',  # wrong type
        b'{"id": 5, "other": true}',
    ]
    rows, rejected = decode_relation(
        Source("s", "t", relation), relation_schema(relation), raw(values)
    )
    assert rows.schema == relation_schema(relation)
    assert rows.column("id").to_pylist() == [1, 5]
    assert rows.column("name").to_pylist() == ["a", None]
    assert rows.column("_offset").to_pylist() == [10, 15]
    assert rows.column("_partition").to_pylist() == [2, 2]
    assert rows.column("_timestamp").cast(pa.int64()).to_pylist() == [1000, 1005]
    assert rejected is not None
    assert rejected.schema == RAW_SCHEMA
    assert rejected.column("offset").to_pylist() == [11, 12, 13, 14]
    assert rejected.column("value").to_pylist() == values[1:5]


def test_all_matching_returns_no_rejects() -> None:
    relation = Relation("stream", "s", "t", "json", COLUMNS)
    values = [json.dumps({"id": i}).encode() for i in range(100)]
    rows, rejected = decode_relation(
        Source("s", "t", relation), relation_schema(relation), raw(values)
    )
    assert rows.num_rows == 100 and rejected is None


def test_a_table_delivers_tombstones_as_null_rows_and_rejects_keyless_records() -> None:
    relation = Relation("table", "tb", "t", "json", COLUMNS)
    values = [b'{"id": 1, "name": "a"}', None, b'{"id": 3}', b'{"id": 4}', b"bad"]
    keys = [b"k1", b"k1", None, b"k4", b"k5"]
    rows, rejected = decode_relation(
        Source("tb", "t", relation, is_table=True), relation_schema(relation), raw(values, keys)
    )
    assert rows.column("_key").to_pylist() == [b"k1", b"k1", b"k4"]
    assert rows.column("_offset").to_pylist() == [10, 11, 13]  # offset order kept
    assert rows.column("id").to_pylist() == [1, None, 4]  # the tombstone: every column null
    assert rejected is not None
    assert rejected.column("offset").to_pylist() == [12, 14]  # no key; not JSON
