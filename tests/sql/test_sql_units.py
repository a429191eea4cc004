"""The pure parts of the SQL layer: block decoding to Arrow, JSON values, statements, bounds.

Blocks are built with kafka-python's batch builder (every codec) and StreamHouse's own
encoder, and decoded rows are checked against ``decode_records``, the record decoder the gRPC
reads use, so the C walk and the Python walk must agree record for record.
"""

from __future__ import annotations

import random
import struct
from collections import Counter

import pyarrow as pa
import pytest
from datafusion import SessionContext
from kafka.record.default_records import DefaultRecordBatchBuilder

from sql.decode import RAW_SCHEMA, BatchFilter, BlockDecodeError, decode_block_records
from sql.formats import decode_json
from sql.pushdown import BoundColumns, scan_bounds
from sql.scan import ScanBounds
from sql.statements import (
    CreateRelation,
    Describe,
    DropRelation,
    Query,
    ShowRelations,
    StatementError,
    parse_statement,
)
from streamhouse.recordbatch import decode_records, encode_batch, encode_block, walk_block

Rec = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]


def kafka_python_batch(records: list[Rec], codec: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i, (k, v, h, ts) in enumerate(records):
        assert builder.append(i, timestamp=ts, key=k, value=v, headers=h) is not None
    return bytes(builder.build())


def sample(rng: random.Random, n: int, base_ts: int) -> list[Rec]:
    out: list[Rec] = []
    for i in range(n):
        key = None if i % 4 == 0 else b"key-%d" % rng.randrange(100)
        value = None if i % 17 == 3 else bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        headers = [("t", b"x%d" % i), ("t", None), ("\u00e9", b"")] if i % 5 == 0 else []
        out.append((key, value, headers, base_ts + rng.randrange(-50, 50)))
    return out


def expected_rows(block: bytes, base_offset: int, partition: int) -> list[dict]:
    """Rows by the Python record decoder and walk_block, independently of sql.decode."""
    rows = []
    for stored in walk_block(block, base_offset):
        info = stored.info
        batch = block[info.position : info.position + info.length]
        for delta, ts, key, value, headers in decode_records(batch, verify_crc=True):
            rows.append(
                {
                    "partition": partition,
                    "offset": stored.first_offset + delta,
                    "timestamp": ts,
                    "key": key,
                    "value": value,
                    "headers": [{"key": k, "value": v} for k, v in headers],
                }
            )
    return rows


def as_rows(batch: pa.RecordBatch) -> list[dict]:
    plain = batch.set_column(2, "timestamp", batch.column("timestamp").cast(pa.int64()))
    return plain.to_pylist()


@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4], ids=["none", "gzip", "snappy", "lz4", "zstd"])
def test_block_decodes_to_the_raw_columns_for_every_codec(codec: int) -> None:
    rng = random.Random(codec)
    batches = [kafka_python_batch(sample(rng, n, 1_700_000_000_000), codec) for n in (1, 70, 300)]
    batches.append(encode_batch([b"k"], [b"v"], [[("a", b"b")]], [5]))  # ours, uncompressed
    block = b"".join(batches)
    batch, decoded = decode_block_records(block, 7, 1000)
    assert decoded == len(batches)
    assert batch.schema == RAW_SCHEMA
    assert as_rows(batch) == expected_rows(block, 1000, 7)
    assert batch.column("offset").to_pylist() == list(range(1000, 1000 + 1 + 70 + 300 + 1))
    batch.validate(full=True)


def test_block_with_gaps_and_compacted_batches_keeps_record_offsets() -> None:
    # a compacted batch: lastOffsetDelta 5 and two surviving records with deltas 1 and 5
    whole = encode_batch([b"a", b"b"], [b"1", b"2"], [[], []], [10, 11])
    records = whole[61:]
    # rewrite the second record's offset delta (byte 3 of each record: length, attrs, ts, od)
    first_len = records[0] // 2 + 1
    recs = bytearray(records)
    recs[3] = 1 * 2  # first record: delta 1
    recs[first_len + 3] = 5 * 2  # second: delta 5
    header = bytearray(whole[:61])
    struct.pack_into(">i", header, 23, 5)  # lastOffsetDelta 5, recordsCount stays 2
    compacted = bytes(header) + bytes(recs)
    block = encode_block([(compacted, 1000), (whole, 1020)], 990)
    batch, _ = decode_block_records(block, 0, 990)
    assert batch.column("offset").to_pylist() == [1001, 1005, 1020, 1021]
    assert batch.column("value").to_pylist() == [b"1", b"2", b"1", b"2"]


def test_skipped_batches_and_batch_filter_leave_out_whole_batches() -> None:
    a = encode_batch([None] * 3, [b"a0", b"a1", b"a2"], [[], [], []], [100, 101, 102])
    b = encode_batch([None] * 2, [b"b0", b"b1"], [[], []], [200, 201])
    c = encode_batch([None] * 2, [b"c0", b"c1"], [[], []], [50, 300])
    block = a + b + c
    batch, n = decode_block_records(block, 0, 10, skipped=(1,))
    assert (n, batch.column("offset").to_pylist()) == (2, [10, 11, 12, 13, 14])
    assert batch.column("value").to_pylist() == [b"a0", b"a1", b"a2", b"c0", b"c1"]
    # time: a batch whose max timestamp is below the bound is not decoded
    batch, n = decode_block_records(block, 0, 10, wanted=BatchFilter(min_timestamp=250))
    assert (n, batch.column("value").to_pylist()) == (1, [b"c0", b"c1"])
    # offsets: only batches holding an offset in [13, 15)
    batch, n = decode_block_records(block, 0, 10, wanted=BatchFilter(13, 15))
    assert (n, batch.column("offset").to_pylist()) == (1, [13, 14])
    batch, n = decode_block_records(block, 0, 10, wanted=BatchFilter(0, 10))
    assert (n, batch.num_rows) == (0, 0)


def test_damaged_records_raise_a_block_decode_error() -> None:
    good = encode_batch([b"k"], [b"value"], [[]], [1])
    truncated = bytearray(good)
    truncated[61] = 40  # record length 20 > what is left
    with pytest.raises(BlockDecodeError, match="record 0: length 20 is invalid"):
        decode_block_records(bytes(truncated), 0, 0)
    with pytest.raises(BlockDecodeError, match="batch headers do not parse"):
        decode_block_records(good[:40], 0, 0)
    bad_key = encode_batch([None], [b"v"], [[("ab", b"x")]], [1]).replace(b"ab", b"\xff\xfe")
    with pytest.raises(BlockDecodeError, match="header key is not valid UTF-8"):
        decode_block_records(bad_key, 0, 0)


# --------------------------------------------------------------------------- JSON


SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.utf8()), ("at", pa.timestamp("ms"))])


def test_json_values_decode_and_bad_records_are_counted_not_fatal() -> None:
    values = [
        b'{"id": 1, "name": "a", "at": "2024-01-01 00:00:01"}',
        b"not json",
        None,
        b'{"id": "two"}',
        b'{"id": 3, "extra": {"deep": [1]}}',
        b"",
        b'{"id": 4}\n{"id": 5}',  # two objects in one record
        b"[1, 2]",
        b'{\n  "id": 6,\n  "name": "pretty"\n}',
        b"   ",
    ]
    decoded = decode_json(pa.array(values, pa.binary()), SCHEMA)
    assert decoded.rows.tolist() == [0, 4, 8]
    assert decoded.errors == 7
    assert decoded.table.column("id").to_pylist() == [1, 3, 6]
    assert decoded.table.column("name").to_pylist() == ["a", None, "pretty"]
    assert decoded.table.column("at")[0].value == 1_704_067_201_000


def test_json_bisection_finds_every_bad_record_in_a_large_batch() -> None:
    values = [b'{"id": %d, "name": "n%d"}' % (i, i) for i in range(10_000)]
    bad = {17, 4242, 4243, 9999}
    for i in bad:
        values[i] = b'{"id": %d' % i  # truncated
    decoded = decode_json(pa.array(values, pa.binary()), SCHEMA)
    assert decoded.errors == len(bad)
    assert decoded.table.column("id").to_pylist() == [i for i in range(10_000) if i not in bad]
    assert decoded.rows.tolist() == [i for i in range(10_000) if i not in bad]


# --------------------------------------------------------------------------- statements


def test_create_stream_with_watermark_parses() -> None:
    stmt = parse_statement(
        "create stream Bids (auction BIGINT, price DECIMAL(10, 2), date_time TIMESTAMP, "
        '"Mixed" DOUBLE PRECISION NOT NULL, WATERMARK FOR date_time AS date_time - '
        "INTERVAL '4' SECOND) WITH (topic = 'bids', format = 'JSON');"
    )
    assert isinstance(stmt, CreateRelation)
    assert (stmt.kind, stmt.name) == ("stream", "bids")
    assert [(c.name, c.type) for c in stmt.columns] == [
        ("auction", "BIGINT"),
        ("price", "DECIMAL(10,2)"),
        ("date_time", "TIMESTAMP"),
        ("Mixed", "DOUBLE"),
    ]
    assert stmt.watermark is not None and stmt.watermark.delay_ms == 4000
    assert stmt.options == {"topic": "bids", "format": "json"}
    assert parse_statement("DROP TABLE IF EXISTS t") == DropRelation("table", "t", True)
    assert parse_statement("show streams") == ShowRelations("stream")
    assert parse_statement('DESCRIBE "My-Topic"') == Describe("My-Topic")
    assert parse_statement("  SELECT 1") == Query("  SELECT 1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("CREATE STREAM s (a BIGINT)", "expected WITH"),
        ("CREATE STREAM s (a BIGINT) WITH (format = 'json')", "topic = '...') is required"),
        ("CREATE STREAM s (a BIGINT, a INT) WITH (topic = 't')", "declared twice"),
        ("CREATE STREAM s (_offset BIGINT) WITH (topic = 't')", "reserved"),
        ("CREATE STREAM s (a BIGINT, WATERMARK FOR b AS b) WITH (topic = 't')", "no such column"),
        (
            "CREATE STREAM s (a TIMESTAMP, WATERMARK FOR a AS a - INTERVAL '4' WEEK) "
            "WITH (topic = 't')",
            "interval unit",
        ),
        ("CREATE STREAM s (a TIMESTAMP, WATERMARK FOR a AS b) WITH (topic = 't')", "must be a"),
        ("CREATE TABLE t (a TIMESTAMP, WATERMARK FOR a AS a) WITH (topic = 't')", "STREAM"),
        ("CREATE STREAM s (a DECIMAL(50, 2)) WITH (topic = 't')", "precision must be 1..38"),
        ("CREATE STREAM s () WITH (topic = 't')", "expected a column name"),
        ("CREATE STREAM s (a BIGINT) WITH (topic = 't') extra", "unexpected 'extra'"),
        ("DROP STREAM", "expected the stream's name"),
        ("", "empty statement"),
    ],
)
def test_bad_statements_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(StatementError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_statement(text)


# --------------------------------------------------------------------------- pushdown


def bounds(sql: str) -> dict[str, ScanBounds]:
    ctx = SessionContext()
    ctx.register_record_batches("t", [[pa.RecordBatch.from_pylist([], schema=RAW_SCHEMA)]])
    plan = ctx.sql(sql).optimized_logical_plan()
    return scan_bounds(plan, {"t": BoundColumns("partition", "offset", "timestamp")})


def test_bounds_from_partition_offset_and_time_predicates() -> None:
    assert bounds(
        "SELECT * FROM t WHERE partition IN (1, 3) AND offset BETWEEN 10 AND 19 AND "
        "timestamp >= TIMESTAMP '2024-01-01 00:00:00+00:00'"
    ) == {"t": ScanBounds(frozenset({1, 3}), 10, 20, 1_704_067_200_000)}
    assert bounds("SELECT * FROM t WHERE 5 < offset AND offset < 9 AND partition = 2") == {
        "t": ScanBounds(frozenset({2}), 6, 9, None)
    }
    # an OR across columns, or a function of a column, bounds nothing
    assert bounds("SELECT * FROM t WHERE partition = 1 OR offset > 3") == {"t": ScanBounds()}
    assert bounds("SELECT * FROM t WHERE offset + 1 > 3") == {"t": ScanBounds()}
    # a self-join reads the union of both sides' bounds
    assert bounds(
        "SELECT * FROM t a JOIN t b ON a.key = b.key WHERE a.partition = 0 AND b.partition = 1 "
        "AND a.offset >= 5 AND b.offset >= 7"
    ) == {"t": ScanBounds(frozenset({0, 1}), 5, None, None)}
    # a scan inside a scalar subquery is read whole, never left out
    assert bounds("SELECT (SELECT max(offset) FROM t) AS m") == {"t": ScanBounds()}


def test_json_values_of_every_declared_type() -> None:
    schema = pa.schema(
        [
            ("d", pa.decimal128(10, 2)),
            ("day", pa.date32()),
            ("ok", pa.bool_()),
            ("f", pa.float32()),
            ("at", pa.timestamp("ms", tz="UTC")),
            ("small", pa.int8()),
        ]
    )
    values = [
        b'{"d": 12.34, "day": "2024-01-02", "ok": true, "f": 1.5, '
        b'"at": "2024-01-01T00:00:00+02:00", "small": 5}',
        b'{"day": "not a date"}',
        b'{"small": 300}',  # out of range for TINYINT
    ]
    decoded = decode_json(pa.array(values, pa.binary()), schema)
    assert decoded.errors == 2
    assert decoded.table.schema == schema
    (row,) = decoded.table.to_pylist()
    assert str(row["d"]) == "12.34"
    assert row["day"].isoformat() == "2024-01-02"
    assert (row["ok"], row["f"], row["small"]) == (True, 1.5, 5)
    assert row["at"].isoformat() == "2023-12-31T22:00:00+00:00"


def test_damaged_blocks_never_crash_the_c_walk() -> None:
    """Random byte flips, truncations and extensions of valid blocks: every outcome is rows
    or BlockDecodeError, and rows that come back are valid Arrow (bounds were kept)."""
    rng = random.Random(9)
    batches = [kafka_python_batch(sample(rng, n, 1_000), 0) for n in (3, 20)]
    block = b"".join(batches)
    outcomes = Counter()
    for _ in range(3000):
        data = bytearray(block)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(61, len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        elif rng.random() < 0.1:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
        try:
            batch, _n = decode_block_records(bytes(data), 0, 0)
        except BlockDecodeError:
            outcomes["refused"] += 1
            continue
        batch.validate(full=True)
        outcomes["decoded"] += 1
    assert outcomes["refused"] > 1000 and outcomes["decoded"] > 0
