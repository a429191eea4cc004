"""The runner with plans from SQL (``sql.continuous.plan.plan_continuous``) on a real stack:
an updating aggregate into a keyed output topic, a windowed materialized view, both across a
kill -9 and restart; and one query on PostgreSQL metadata and SeaweedFS S3.

References are computed here from the input topic as read back with confluent-kafka.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import pathlib
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Producer

from sql.continuous.definition import QueryDefinition, decode_checkpoint
from streamhouse.recordbatch import default_partition
from streamhouse.testing import Stack, read_kafka_log, wait_until

_spec = importlib.util.spec_from_file_location(
    "_runner_tests", pathlib.Path(__file__).with_name("test_runner.py")
)
assert _spec is not None and _spec.loader is not None
rt: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rt)

BASE_MS = 1_700_000_000_000
PAY_DDL = (
    "CREATE STREAM pay (item VARCHAR NOT NULL, amount BIGINT, ts TIMESTAMP, "
    "WATERMARK FOR ts AS ts - INTERVAL '1' HOUR) WITH (topic = 'pay')"
)


def pay_value(i: int) -> bytes:
    ts = datetime.fromtimestamp((BASE_MS + i * 37) / 1000, tz=UTC)
    return json.dumps(
        {"item": f"i{i % 11}", "amount": i % 50, "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]}
    ).encode()


def produce_pay(stack: Stack, ids: range, partitions: int) -> None:
    p = Producer({"bootstrap.servers": stack.kafka_address, "linger.ms": 5})
    failed: list[str] = []
    for i in ids:
        p.produce(
            "pay",
            value=pay_value(i),
            partition=i % partitions,
            on_delivery=lambda err, _m: failed.append(str(err)) if err else None,
        )
        p.poll(0)
    assert p.flush(60) == 0
    assert failed == []


def pay_rows(stack: Stack, partitions: int) -> list[dict[str, Any]]:
    log = read_kafka_log(stack.kafka_address, "pay", partitions)
    return [json.loads(v) for records in log.values() for _o, v in records]


def rows_in(stack: Stack, name: str) -> int:
    row = rt.checkpoint(stack, name)
    return 0 if row is None else decode_checkpoint(row.payload).rows_in


@pytest.fixture
def stack(tmp_path: pathlib.Path) -> Iterator[Stack]:
    with Stack(tmp_path / "data", env=rt.NO_SERVICE_RUNNERS) as running:
        yield running


def run_totals(stack: Stack, tmp_path: pathlib.Path) -> None:
    """GROUP BY item into keyed topic ``totals``, killed and restarted half-way."""
    rt.create_topic(stack, "pay", 2)
    rt.create_topic(stack, "totals", 3)
    rt.run_sql(stack, PAY_DDL)
    produce_pay(stack, range(0, 2000), 2)
    rt.define_query(
        stack,
        QueryDefinition(
            name="totals",
            kind="stream",
            sql="SELECT item, COUNT(*) AS n, SUM(amount) AS total FROM pay GROUP BY item",
            output_topic="totals",
        ),
    )
    runner = rt.RunnerProcess(stack, "totals", tmp_path / "totals.log", None)
    try:
        wait_until(lambda: rows_in(stack, "totals") == 2000, 120, "the first 2000 processed")
        runner.kill()
        produce_pay(stack, range(2000, 3000), 2)
        runner = rt.RunnerProcess(stack, "totals", tmp_path / "totals.log", None)
        wait_until(lambda: rows_in(stack, "totals") == 3000, 120, "all 3000 processed")
    finally:
        runner.kill()
    expected: dict[str, dict[str, Any]] = {}
    for row in pay_rows(stack, 2):
        got = expected.setdefault(row["item"], {"item": row["item"], "n": 0, "total": 0})
        got["n"] += 1
        got["total"] += row["amount"]
    consumer_log = _keyed_log(stack, "totals", 3)
    latest: dict[str, dict[str, Any]] = {}
    for partition, records in consumer_log.items():
        for _offset, key, value in sorted(records):
            assert json.loads(key) == {"item": json.loads(value)["item"]}
            assert default_partition(key, 3) == partition  # Kafka's partitioner
            latest[json.loads(key)["item"]] = json.loads(value)
    assert latest == expected


def _keyed_log(
    stack: Stack, topic: str, partitions: int, timestamps: bool = False
) -> dict[int, list[Any]]:
    """(offset, key, value[, timestamp]) of every record, by partition."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    total = rt.high_watermarks(stack, topic, partitions)
    consumer = Consumer(
        {"bootstrap.servers": stack.kafka_address, "group.id": "keys", "enable.auto.commit": False}
    )
    out: dict[int, list[Any]] = defaultdict(list)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        left = total
        while left > 0:
            for m in consumer.consume(num_messages=min(1000, left), timeout=5):
                assert m.error() is None, m.error()
                record = (m.offset(), m.key(), m.value())
                out[m.partition()].append(record + (m.timestamp()[1],) if timestamps else record)
                left -= 1
    finally:
        consumer.close()
    return out


def test_updating_aggregate_into_a_keyed_topic_survives_a_restart(
    stack: Stack, tmp_path: pathlib.Path
) -> None:
    run_totals(stack, tmp_path)


WINDOW_SQL = (
    "SELECT item, TUMBLE_START(ts, INTERVAL '10' SECOND) AS ws, COUNT(*) AS n, "
    "SUM(amount) AS total FROM pay GROUP BY item, TUMBLE(ts, INTERVAL '10' SECOND)"
)


def window_reference(stack: Stack) -> dict[tuple[str, int], tuple[int, int]]:
    """(item, window start ms) -> (count, sum) of every window that ended by the latest time."""
    expected: dict[tuple[str, int], tuple[int, int]] = {}
    rows = pay_rows(stack, 1)
    times = [
        int(
            datetime.strptime(r["ts"], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
            * 1000
        )
        for r in rows
    ]
    for row, ms in zip(rows, times, strict=True):
        start = ms - ms % 10_000
        if start + 10_000 > max(times):
            continue  # still open
        n, total = expected.get((row["item"], start), (0, 0))
        expected[(row["item"], start)] = (n + 1, total + row["amount"])
    return expected


def test_windows_as_a_view_and_as_a_stream_equal_the_reference(
    stack: Stack, tmp_path: pathlib.Path
) -> None:
    # one partition, in time order, watermark = the latest time: no row is late, and the
    # windows that end by the latest time are the results
    rt.create_topic(stack, "pay", 1)
    rt.create_topic(stack, "wout", 2)
    rt.run_sql(stack, PAY_DDL.replace(" - INTERVAL '1' HOUR", ""))
    produce_pay(stack, range(0, 3000), 1)
    rt.define_query(stack, QueryDefinition(name="per_window", kind="view", sql=WINDOW_SQL))
    rt.define_query(
        stack,
        QueryDefinition(name="windows", kind="stream", sql=WINDOW_SQL, output_topic="wout"),
    )
    runners = [
        rt.RunnerProcess(stack, name, tmp_path / f"{name}.log", None)
        for name in ("per_window", "windows")
    ]
    try:
        for name in ("per_window", "windows"):
            wait_until(lambda name=name: rows_in(stack, name) == 3000, 120, f"{name} done")
    finally:
        for r in runners:
            r.kill()
    expected = window_reference(stack)
    table = asyncio.run(rt._view(stack, "per_window"))
    assert table is not None
    got = {
        (r["item"], int(r["ws"].replace(tzinfo=UTC).timestamp() * 1000)): (r["n"], r["total"])
        for r in table.to_pylist()
    }
    assert table.num_rows == len(got)  # one row per key
    assert got == expected
    assert decode_checkpoint(rt.checkpoint(stack, "per_window").payload).late_rows_dropped == 0
    # the stream: each window once (final), timestamped with its start, no key
    records = [r for rs in _keyed_log(stack, "wout", 2, timestamps=True).values() for r in rs]
    streamed: dict[tuple[str, int], tuple[int, int]] = {}
    for _offset, key, value, timestamp in records:
        row = json.loads(value)
        ws = int(
            datetime.strptime(row["ws"], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
            * 1000
        )
        assert key is None
        assert timestamp == ws
        assert (row["item"], ws) not in streamed
        streamed[(row["item"], ws)] = (row["n"], row["total"])
    assert streamed == expected


def test_on_postgresql_and_seaweedfs(
    tmp_path: pathlib.Path, postgres_dsn: str, seaweed: Any
) -> None:
    env = seaweed.env()
    env["STREAMHOUSE_OBJECT_STORE"] = f"s3://{seaweed.bucket}/sqlq-{uuid.uuid4().hex[:12]}"
    env["STREAMHOUSE_METADATA"] = postgres_dsn
    env.update(rt.NO_SERVICE_RUNNERS)
    with Stack(tmp_path / "data", env=env) as stack:
        run_totals(stack, tmp_path)


PADDED_DDL = (
    "CREATE STREAM pay (item VARCHAR NOT NULL, amount BIGINT, ts TIMESTAMP, pad VARCHAR, "
    "WATERMARK FOR ts AS ts) WITH (topic = 'pay')"
)


def test_partitions_read_at_different_paces_lose_no_rows(tmp_path: pathlib.Path) -> None:
    """4 partitions, records spread by key; the keys of partition 0 carry 2 KB of padding,
    so a step's byte budget covers far less event time of partition 0 than of the others
    (the runner reads the others ahead). With a watermark of the largest time over all
    partitions, partition 0's later rows would be late; per partition, none is, and the
    view equals the reference over every record."""
    env = dict(rt.NO_SERVICE_RUNNERS)
    env["STREAMHOUSE_SQL_MAX_STEP_BYTES"] = str(80 * 1024)
    with Stack(tmp_path / "data", env=env) as stack:
        rt.create_topic(stack, "pay", 4)
        rt.run_sql(stack, PADDED_DDL)
        items = [f"i{k}" for k in range(11)]
        heavy = {it for it in items if default_partition(json.dumps(it).encode(), 4) == 0}
        assert heavy and len(heavy) < len(items)
        p = Producer({"bootstrap.servers": stack.kafka_address, "linger.ms": 5})
        failed: list[str] = []
        sent: list[dict[str, Any]] = []
        for rnd in range(30):  # one flush per round: a block per partition per round
            for i in range(rnd * 100, rnd * 100 + 100):
                row = json.loads(pay_value(i))
                row["pad"] = uuid.uuid4().hex * (64 if row["item"] in heavy else 1)
                p.produce(
                    "pay",
                    key=json.dumps(row["item"]).encode(),
                    value=json.dumps(row).encode(),
                    on_delivery=lambda err, _m: failed.append(str(err)) if err else None,
                )
                sent.append(row)
            assert p.flush(60) == 0
        assert failed == []
        times = {
            i: int(
                datetime.strptime(r["ts"], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
                * 1000
            )
            for i, r in enumerate(sent)
        }
        top = max(times.values())
        expected: dict[tuple[str, int], tuple[int, int]] = {}
        for i, row in enumerate(sent):
            start = times[i] - times[i] % 10_000
            if start + 10_000 <= top:  # all partitions idle at the end: watermark = top
                n, total = expected.get((row["item"], start), (0, 0))
                expected[(row["item"], start)] = (n + 1, total + row["amount"])
        rt.define_query(stack, QueryDefinition(name="paced", kind="view", sql=WINDOW_SQL))
        runner = rt.RunnerProcess(stack, "paced", tmp_path / "paced.log", None)

        def done() -> bool:
            row = rt.checkpoint(stack, "paced")
            return row is not None and decode_checkpoint(row.payload).watermark_ms == top

        try:
            wait_until(done, 120, "every partition read and idle (watermark at the last time)")
        finally:
            runner.kill()
        state = decode_checkpoint(rt.checkpoint(stack, "paced").payload)
        assert state.rows_in == 3000
        assert state.late_rows_dropped == 0
        table = asyncio.run(rt._view(stack, "paced"))
        assert table is not None
        got = {
            (r["item"], int(r["ws"].replace(tzinfo=UTC).timestamp() * 1000)): (r["n"], r["total"])
            for r in table.to_pylist()
        }
        assert got == expected
