"""sql.continuous.sink: result rows -> JSON values, Kafka record batches, one segment (pure code).

Batches are checked with the ingest edge's own validator (``validate_batches``, as Kafka's
broker checks a produce) and read back with the SQL decoder and ``decode_records``; JSON
values against ``json.loads`` of what Python makes of the same rows.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import random

import numpy as np
import pyarrow as pa
import pytest

from sql.continuous.sink import (
    BATCH_BYTES,
    build_segment,
    encode_records,
    json_values,
    key_partitions,
    output_records,
    partition_records,
)
from sql.decode import decode_block_records
from streamhouse.recordbatch import BatchRules, default_partition, validate_batches
from streamhouse.segment import decode_block, read_index

RULES = BatchRules(1 << 30, 1 << 30, 1 << 30)


def _python_json(value: object) -> object:
    """What the JSON of one value must parse back to."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime.datetime):
        text = value.replace(tzinfo=None).isoformat(timespec="milliseconds")
        return text + ("Z" if value.tzinfo is not None else "")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def test_json_values_match_python_for_every_type() -> None:
    table = pa.table(
        {
            "i": pa.array([1, None, -(2**62), 0], pa.int64()),
            "u": pa.array([0, 255, None, 7], pa.uint8()),
            "f": pa.array([1.5, float("nan"), float("inf"), None], pa.float64()),
            "b": pa.array([True, False, None, True]),
            "s": pa.array(["plain", 'q"uote\\back\nline\ttab', "ctl\x01\x1f", None]),
            "e": pa.array(["é ü 漢字 😀", "", None, "x"]),
            "ts": pa.array([1_700_000_000_123, 0, None, -1000], pa.timestamp("ms")),
            "tz": pa.array([1_700_000_000_123, 5, None, 0], pa.timestamp("ms", tz="UTC")),
            "d": pa.array([19_000, None, 0, 1], pa.date32()),
            "dec": pa.array([decimal.Decimal("12.50"), None, decimal.Decimal("-1"), None]),
            "l": pa.array([[1, 2], None, [], [3]]),
        }
    )
    values = json_values(table)
    assert values.type == pa.utf8()
    for text, row in zip(values.to_pylist(), table.to_pylist(), strict=True):
        parsed = json.loads(text)
        assert list(parsed) == table.column_names  # column order kept
        for name, value in row.items():
            assert parsed[name] == _python_json(value), (name, value, text)


def test_json_values_of_chosen_columns_and_empty_tables() -> None:
    table = pa.table({"a": [1, 2], "b": ["x", "y"]})
    assert json_values(table, ["b"]).to_pylist() == ['{"b":"x"}', '{"b":"y"}']
    assert len(json_values(table.slice(0, 0))) == 0


@pytest.mark.parametrize("rows", [1, 3, 5000])
def test_encoded_batches_are_valid_kafka_and_decode_back(rows: int) -> None:
    rng = np.random.default_rng(rows)
    keys = pa.array([None if i % 3 == 0 else f"k{i}".encode() for i in range(rows)])
    values = pa.array(
        [None if i % 7 == 6 else b"v" * int(rng.integers(0, 300)) for i in range(rows)]
    )
    times = 1_700_000_000_000 + rng.integers(-(10**6), 10**6, rows)  # out of order, negative deltas
    batches = encode_records(keys, values, times)
    assert len(batches) == 1
    validate_batches(batches[0], RULES, 1_700_000_000_000)
    decoded, count = decode_block_records(b"".join(batches), 4, 100)
    assert count == 1
    assert decoded.column("key").to_pylist() == keys.to_pylist()
    assert decoded.column("value").to_pylist() == values.to_pylist()
    assert decoded.column("offset").to_pylist() == list(range(100, 100 + rows))
    assert decoded.column("timestamp").cast(pa.int64()).to_pylist() == times.tolist()


def test_large_inputs_are_cut_into_batches_of_about_batch_bytes() -> None:
    rows = 3 * BATCH_BYTES // 1000
    values = pa.array([b"x" * 1000] * rows)
    batches = encode_records(pa.nulls(rows, pa.binary()), values, np.zeros(rows, np.int64))
    assert len(batches) >= 3
    assert all(len(b) <= BATCH_BYTES + 4096 for b in batches)
    for b in batches:
        validate_batches(b, RULES, 0)
    decoded, count = decode_block_records(b"".join(batches), 0, 0)
    assert count == len(batches)
    assert decoded.num_rows == rows
    assert decoded.column("offset").to_pylist() == list(range(rows))


def test_keyed_results_go_where_kafka_puts_their_key_and_unkeyed_spread_evenly() -> None:
    results = pa.table({"item": [f"i{i % 13}" for i in range(200)], "n": list(range(200))})
    records = output_records(results.to_batches(), ["item"], None, 42)
    assert records is not None
    parts = partition_records(records, 5, 0)
    seen = 0
    for partition, keys, values, timestamps in parts:
        for key, value in zip(keys.to_pylist(), values.to_pylist(), strict=True):
            assert default_partition(key.encode(), 5) == partition
            assert json.loads(key) == {"item": json.loads(value)["item"]}
        assert timestamps.tolist() == [42] * len(values)
        seen += len(values)
    assert seen == 200
    unkeyed = output_records(results.to_batches(), [], None, 42)
    assert unkeyed is not None and unkeyed.keys is None
    spread = partition_records(unkeyed, 4, 0)
    assert [len(v) for _p, _k, v, _t in spread] == [50, 50, 50, 50]
    few = partition_records(output_records(results.slice(0, 2).to_batches(), [], None, 1), 4, 6)
    assert [p for p, *_rest in few] == [2]  # fewer rows than partitions: one, rotating


def test_key_partitions_equal_kafkas_default_partitioner() -> None:
    rng = random.Random(1)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))) for _ in range(3000)]
    array = pa.array(keys, pa.binary())
    for partitions in (1, 3, 7, 1000):
        assert key_partitions(array, partitions).tolist() == [
            default_partition(k, partitions) for k in keys
        ]
    window = array.slice(100, 50)  # an array that starts inside its buffers
    assert key_partitions(window, 5).tolist() == [default_partition(k, 5) for k in keys[100:150]]
    text = pa.array(["é", "ab", "abcd"])  # utf8 keys hash as their bytes
    assert key_partitions(text, 9).tolist() == [
        default_partition(k.encode(), 9) for k in ["é", "ab", "abcd"]
    ]


def test_record_timestamps_come_from_the_output_time_column() -> None:
    results = pa.table({"ws": pa.array([1000, None, 3000], pa.timestamp("ms")), "n": [1, 2, 3]})
    records = output_records(results.to_batches(), [], "ws", 77)
    assert records is not None
    assert records.timestamps.tolist() == [1000, 77, 3000]


def test_one_segment_holds_a_block_per_topic_partition_with_its_commit_blocks() -> None:
    a = encode_records(pa.nulls(3, pa.binary()), pa.array([b"a", b"b", b"c"]), np.array([5, 6, 7]))
    b = encode_records(pa.array([b"k"]), pa.array([b"d"]), np.array([9]))
    more = encode_records(pa.nulls(1, pa.binary()), pa.array([b"e"]), np.array([8]))
    segment = build_segment([(7, 1, a), (9, 0, b), (7, 1, more), (7, 2, [])])
    assert segment is not None
    assert segment.records == {7: 4, 9: 1}
    entries = read_index(segment.data)
    assert [(e.topic_id, e.partition) for e in entries] == [(7, 1), (9, 0)]
    for entry, block in zip(entries, segment.blocks, strict=True):
        assert (block.byte_offset, block.byte_length) == (entry.offset, entry.length)
        raw = decode_block(segment.data[entry.offset : entry.offset + entry.length], entry)
        assert block.raw_length == len(raw)
        assert [r.producer_id for r in block.batches] == [-1] * len(block.batches)
    first = segment.blocks[0]
    assert [r.record_count for r in first.batches] == [3, 1]
    assert first.max_timestamp == 8
    assert build_segment([(1, 0, [])]) is None


def test_a_delete_row_becomes_a_tombstone_and_the_flag_is_not_written() -> None:
    plain = pa.RecordBatch.from_pydict({"k": ["a", "b"], "n": pa.array([1, 2], pa.int64())})
    flagged = pa.RecordBatch.from_pydict(
        {
            "k": ["a", "c", "b"],
            "n": pa.array([None, 5, None], pa.int64()),
            "__delete": pa.array([True, False, None], pa.bool_()),
        }
    )
    records = output_records([plain, flagged], ["k"], None, 1_000)
    assert records is not None
    assert records.keys is not None
    keys = [json.loads(k) for k in records.keys.to_pylist()]
    assert keys == [{"k": "a"}, {"k": "b"}, {"k": "a"}, {"k": "c"}, {"k": "b"}]
    values = [None if v is None else json.loads(v) for v in records.values.to_pylist()]
    assert values == [
        {"k": "a", "n": 1},
        {"k": "b", "n": 2},
        None,  # the tombstone of a
        {"k": "c", "n": 5},
        {"k": "b", "n": None},  # a null flag is not a delete
    ]
    # the tombstone reaches Kafka's record format as a null value under its key
    for _p, ks, vs, ts in partition_records(records, 3, 0):
        decoded, _n = decode_block_records(b"".join(encode_records(ks, vs, ts)), 0, 0)
        assert decoded.column("value").to_pylist() == [
            None if v is None else v.encode() for v in vs.to_pylist()
        ]
        assert decoded.column("key").to_pylist() == [k.encode() for k in ks.to_pylist()]


def test_an_append_only_result_with_deletes_is_refused() -> None:
    flagged = pa.RecordBatch.from_pydict({"k": ["a"], "__delete": pa.array([True])})
    with pytest.raises(ValueError, match="must have key columns"):
        output_records([flagged], [], None, 0)
