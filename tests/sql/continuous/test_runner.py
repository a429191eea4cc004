"""The continuous-query runner against a real stack: output topic, views, restarts, fencing.

Input is produced with confluent-kafka; the runner runs as the sql service runs it,
``python3 -m sql.continuous run NAME``, with a hand-written plan (``test_runner_plan.py``:
a DataFusion SELECT per batch, numbering each partition's rows in ``_seq``). The output
topic is read back with confluent-kafka and compared with a reference computed here from
the input topic as read back, so a lost, duplicated or replayed-out-of-order result fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from metadata.async_store import AsyncMetadata
from metadata.interface import open_store
from sql.continuous.checkpoint import load_view_rows
from sql.continuous.definition import QueryDefinition, decode_checkpoint, encode_definition
from streamhouse.testing import Stack, read_kafka_log, wait_until

REPO = pathlib.Path(__file__).resolve().parents[3]
PLAN = str(pathlib.Path(__file__).with_name("test_runner_plan.py")) + ":make_plan"
FILTER_SQL = (
    "SELECT id, item, price, _partition AS src_partition, _seq FROM orders WHERE price >= 50"
)
#: The stack's sql service would start runners of its own for the queries defined here.
NO_SERVICE_RUNNERS = {"STREAMHOUSE_SQL_ENABLED": "false"}
ORDERS_DDL = (
    "CREATE STREAM orders (id BIGINT NOT NULL, item VARCHAR, price DOUBLE) "
    "WITH (topic = 'orders', format = 'json')"
)


# -- helpers (the fault tests import these) ------------------------------------------------


def run_sql(stack: Stack, sql: str) -> None:
    env = dict(os.environ)
    env.update(stack.env)
    proc = subprocess.run(
        [sys.executable, "-m", "sql", "query", sql],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{sql!r} failed: {proc.stderr}"


def create_topic(stack: Stack, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_address})
    for fut in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        fut.result(timeout=30)


def define_query(stack: Stack, definition: QueryDefinition) -> None:
    store = open_store(stack.settings.metadata_target)
    try:
        store.put_catalog_entry("query", definition.name, encode_definition(definition), 0)
    finally:
        store.close()


def drop_query(stack: Stack, name: str) -> None:
    store = open_store(stack.settings.metadata_target)
    try:
        assert store.delete_catalog_entry("query", name)
    finally:
        store.close()


def checkpoint(stack: Stack, name: str) -> Any:
    store = open_store(stack.settings.metadata_target)
    try:
        return store.get_query_checkpoint(name)
    finally:
        store.close()


def order_value(i: int) -> bytes:
    return json.dumps({"id": i, "item": f"item-{i % 7}", "price": float(i % 100)}).encode()


def produce_orders(stack: Stack, ids: range, partitions: int, bad_every: int = 0) -> int:
    """Produces order ``i`` to partition ``i % partitions`` (every ``bad_every``-th value is
    not JSON); returns how many bad values were produced."""
    p = Producer({"bootstrap.servers": stack.kafka_address, "linger.ms": 5})
    failed: list[str] = []
    bad = 0
    for i in ids:
        value = order_value(i)
        if bad_every and i % bad_every == 0:
            value = b"not json " + str(i).encode()
            bad += 1
        p.produce(
            "orders",
            value=value,
            key=str(i).encode(),
            partition=i % partitions,
            on_delivery=lambda err, _msg: failed.append(str(err)) if err else None,
        )
        p.poll(0)
    assert p.flush(60) == 0
    assert failed == []
    return bad


def reference_rows(stack: Stack, partitions: int) -> Counter[str]:
    """What FILTER_SQL must output, from the input topic as read back: each partition's
    JSON values in offset order, numbered per partition (``_seq``), filtered."""
    log = read_kafka_log(stack.kafka_address, "orders", partitions)
    rows: Counter[str] = Counter()
    for partition, records in log.items():
        seq = 0
        for _offset, value in sorted(records):
            try:
                row = json.loads(value)
            except ValueError:
                continue  # does not match the declaration: never reaches the plan
            if not isinstance(row, dict) or row.get("id") is None:
                continue
            if row["price"] >= 50:
                out = {
                    "id": row["id"],
                    "item": row["item"],
                    "price": row["price"],
                    "src_partition": partition,
                    "_seq": seq,
                }
                rows[json.dumps(normal(out), sort_keys=True)] += 1
            seq += 1
    return rows


def output_rows(stack: Stack, topic: str, partitions: int) -> Counter[str]:
    log = read_kafka_log(stack.kafka_address, topic, partitions)
    return Counter(
        json.dumps(normal(json.loads(value)), sort_keys=True)
        for records in log.values()
        for _offset, value in records
    )


def normal(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has one number type: 50 and 50.0 are the same price."""
    if row.get("price") is not None:
        row["price"] = float(row["price"])
    return row


def state_objects(stack: Stack, name: str) -> list[str]:
    """Keys of the query's state and view objects in the stack's object store."""
    from streamhouse import objectstore

    async def listing() -> list[str]:
        with pytest.MonkeyPatch.context() as patch:  # the stack's S3 endpoint and keys
            for key, value in stack.env.items():
                if key.startswith("AWS_"):
                    patch.setenv(key, value)
            store = objectstore.open_object_store(stack.settings.object_store_url)
        keys: list[str] = []
        for prefix in (f"sql/state/{name}/", f"sql/views/{name}/"):
            async for page in objectstore.list_objects(store, prefix):
                keys += [o.key for o in page]
        return keys

    return asyncio.run(listing())


def high_watermarks(stack: Stack, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": stack.kafka_address, "group.id": "hw"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
            for p in range(partitions)
        )
    finally:
        consumer.close()


class RunnerProcess:
    """``python3 -m sql.continuous run NAME`` with the stack's environment."""

    def __init__(
        self, stack: Stack, name: str, log_path: pathlib.Path, plan: str | None = PLAN
    ) -> None:
        env = dict(os.environ)
        env.update(stack.env)
        env.update({"STREAMHOUSE_SQL_CHECKPOINT_INTERVAL_MS": "200"})
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sql.continuous", "run", name]
                + (["--plan", plan] if plan else []),
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_output(stack: Stack, topic: str, partitions: int, count: int, runner: RunnerProcess):
    def done() -> bool:
        assert runner.proc.poll() is None, f"runner exited: {runner.log()}"
        return high_watermarks(stack, topic, partitions) >= count

    wait_until(done, 120, f"{count} records in {topic}")


# -- tests ----------------------------------------------------------------------------------


@pytest.fixture
def stack(tmp_path: pathlib.Path) -> Iterator[Stack]:
    with Stack(tmp_path / "data", env=NO_SERVICE_RUNNERS) as running:
        yield running


def test_filter_query_output_is_exactly_the_reference_across_restarts(
    stack: Stack, tmp_path: pathlib.Path
) -> None:
    create_topic(stack, "orders", 3)
    create_topic(stack, "out", 2)
    create_topic(stack, "dead", 1)
    run_sql(stack, ORDERS_DDL)
    bad = produce_orders(stack, range(0, 3000), 3, bad_every=97)
    define_query(
        stack,
        QueryDefinition(
            name="big_orders",
            kind="stream",
            sql=FILTER_SQL,
            output_topic="out",
            options={"source": "orders", "dead_letter_topic": "dead"},
        ),
    )
    runner = RunnerProcess(stack, "big_orders", tmp_path / "runner.log")
    try:
        expected = reference_rows(stack, 3)
        wait_output(stack, "out", 2, sum(expected.values()), runner)
        # more input while it runs
        bad += produce_orders(stack, range(3000, 5000), 3, bad_every=97)
        expected = reference_rows(stack, 3)
        wait_output(stack, "out", 2, sum(expected.values()), runner)
        runner.kill()
        # a restarted runner resumes from its checkpoint: nothing twice, nothing lost
        bad += produce_orders(stack, range(5000, 6000), 3, bad_every=97)
        runner = RunnerProcess(stack, "big_orders", tmp_path / "runner.log")
        expected = reference_rows(stack, 3)
        wait_output(stack, "out", 2, sum(expected.values()), runner)
        wait_until(
            lambda: decode_checkpoint(checkpoint(stack, "big_orders").payload).dead_lettered == bad,
            60,
            "every bad record dead-lettered",
        )
        assert output_rows(stack, "out", 2) == expected
        state = decode_checkpoint(checkpoint(stack, "big_orders").payload)
        assert state.decode_errors == bad
        assert state.rows_out == sum(expected.values())
        assert state.last_error is not None and "did not match" in state.last_error
        dead = read_kafka_log(stack.kafka_address, "dead", 1)[0]
        assert sorted(v for _o, v in dead) == sorted(
            b"not json " + str(i).encode() for i in range(0, 6000, 97)
        )
        # the query is dropped: the runner exits 0
        drop_query(stack, "big_orders")
        assert runner.wait(30) == 0, runner.log()
    finally:
        runner.kill()


def test_a_second_runner_fences_the_first(stack: Stack, tmp_path: pathlib.Path) -> None:
    create_topic(stack, "orders", 2)
    create_topic(stack, "out", 1)
    run_sql(stack, ORDERS_DDL)
    produce_orders(stack, range(0, 1000), 2)
    define_query(
        stack,
        QueryDefinition(
            name="q",
            kind="stream",
            sql=FILTER_SQL,
            output_topic="out",
            options={"source": "orders"},
        ),
    )
    first = RunnerProcess(stack, "q", tmp_path / "first.log")
    second: RunnerProcess | None = None
    try:
        wait_until(lambda: (checkpoint(stack, "q") or _no_row()).step > 0, 60, "a first checkpoint")
        second = RunnerProcess(stack, "q", tmp_path / "second.log")
        wait_until(lambda: "(generation 2)" in second.log(), 60, "the second runner's claim")
        produce_orders(stack, range(1000, 2000), 2)
        assert first.wait(60) == 3, first.log()
        assert "claimed by a newer runner" in first.log()
        expected = reference_rows(stack, 2)
        wait_output(stack, "out", 1, sum(expected.values()), second)
        assert output_rows(stack, "out", 1) == expected
        # SIGTERM (the sql service stopping it): out between steps, status 0
        second.proc.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0, second.log()
        assert "stopped by signal" in second.log()
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_partitions_added_to_the_source_are_read(stack: Stack, tmp_path: pathlib.Path) -> None:
    from confluent_kafka.admin import NewPartitions

    create_topic(stack, "orders", 2)
    create_topic(stack, "out", 1)
    run_sql(stack, ORDERS_DDL)
    produce_orders(stack, range(0, 600), 2)
    define_query(
        stack,
        QueryDefinition(
            name="q",
            kind="stream",
            sql=FILTER_SQL,
            output_topic="out",
            options={"source": "orders"},
        ),
    )
    runner = RunnerProcess(stack, "q", tmp_path / "runner.log")
    try:
        expected = reference_rows(stack, 2)
        wait_output(stack, "out", 1, sum(expected.values()), runner)
        admin = AdminClient({"bootstrap.servers": stack.kafka_address})
        for fut in admin.create_partitions([NewPartitions("orders", 3)]).values():
            fut.result(timeout=30)
        produce_orders(stack, range(600, 1500), 3)  # a third of them to the new partition
        expected = reference_rows(stack, 3)
        assert any(json.loads(row)["src_partition"] == 2 for row in expected)
        wait_output(stack, "out", 1, sum(expected.values()), runner)
        assert output_rows(stack, "out", 1) == expected
    finally:
        runner.kill()


class _NoRow:
    step = 0


def _no_row() -> _NoRow:
    return _NoRow()


def test_view_rows_are_the_latest_row_per_key(stack: Stack, tmp_path: pathlib.Path) -> None:
    create_topic(stack, "orders", 3)
    run_sql(stack, ORDERS_DDL)
    produce_orders(stack, range(0, 2000), 3)
    define_query(
        stack,
        QueryDefinition(
            name="latest",
            kind="view",
            sql="SELECT item, id, price FROM orders",
            options={"source": "orders", "key_columns": "item"},
        ),
    )
    runner = RunnerProcess(stack, "latest", tmp_path / "runner.log")
    try:
        wait_until(
            lambda: (
                decode_checkpoint((checkpoint(stack, "latest") or _payload()).payload).rows_in
                == 2000
            ),
            120,
            "all 2000 orders processed",
        )
        rows = asyncio.run(_view(stack, "latest"))
        assert rows is not None
        got = {r["item"]: r for r in rows.to_pylist()}
        log = read_kafka_log(stack.kafka_address, "orders", 3)
        latest: dict[str, list[dict[str, Any]]] = {}
        for _p, records in log.items():
            for _offset, value in sorted(records):
                row = json.loads(value)
                latest.setdefault(row["item"], []).append(row)
        # an item's rows come from several partitions, processed in any interleaving: the
        # view's row for it is the last of one of its partitions
        assert set(got) == set(latest)
        for item, row in got.items():
            last_per_partition = {
                max((r["id"] for r in latest[item] if r["id"] % 3 == p), default=-1)
                for p in range(3)
            }
            assert row["id"] in last_per_partition, (item, row)
            assert row["price"] == float(row["id"] % 100)
        runner.kill()
        # restarted: the view is restored from its checkpoint and keeps up
        produce_orders(stack, range(2000, 2100), 3)
        runner = RunnerProcess(stack, "latest", tmp_path / "runner.log")
        wait_until(
            lambda: decode_checkpoint(checkpoint(stack, "latest").payload).rows_in == 2100,
            120,
            "the 100 new orders processed",
        )
        rows = asyncio.run(_view(stack, "latest"))
        assert rows is not None
        assert rows.num_rows == 7
        ids = set(rows.column("id").to_pylist())
        # the newest order of each item per partition is among 2093..2099
        assert max(ids) == 2099 and all(i >= 2079 for i in ids)
    finally:
        runner.kill()


class _Payload:
    payload = b""


def _payload() -> _Payload:
    return _Payload()


async def _view(stack: Stack, name: str) -> Any:
    from streamhouse import objectstore

    meta = await AsyncMetadata.open(stack.settings.metadata_target)
    try:
        store = objectstore.open_object_store(stack.settings.object_store_url)
        return await load_view_rows(meta, store, name)
    finally:
        await meta.close()
