"""SQL reads committed: records of aborted transactions never show in an ad-hoc SELECT nor in a
continuous query's output, and nothing at or after an open transaction is read until it ends.

A confluent-kafka transactional producer writes into one partition, in this order: a committed
transaction (1, 2, 3), an aborted one (100, 101, 102), a committed one (4), then a transaction
left open (200) while a plain producer writes 7 behind it. Every aborted or open record lies
before a committed one, so a reader that returns the later committed record has passed it.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamhouse.testing import Stack, wait_until

REPO = pathlib.Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"STREAMHOUSE_TRANSACTION_CHECK_INTERVAL_MS": "200"}
    with Stack(tmp_path_factory.mktemp("txn-fu-sql") / "data", env=env) as running:
        yield running


def run_sql(stack: Stack, sql: str) -> list[dict[str, Any]]:
    env = dict(os.environ)
    env.update(stack.env)
    proc = subprocess.run(
        [sys.executable, "-m", "sql", "query", sql, "--format", "jsonl"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{sql!r} failed: {proc.stderr}"
    if not sql.startswith("SELECT"):
        return []  # a statement's message, not rows
    return [json.loads(line) for line in proc.stdout.splitlines()]


def create_topic(stack: Stack, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_address})
    for future in admin.create_topics([NewTopic(name, 1, 1)]).values():
        future.result(DEADLINE_S)


def value(n: int) -> bytes:
    return json.dumps({"n": n}).encode()


def transaction(producer: Producer, topic: str, ns: list[int], commit: bool | None) -> None:
    """One transaction of ``ns``; committed, aborted, or (None) left open after its records
    are acknowledged."""
    producer.begin_transaction()
    for n in ns:
        producer.produce(topic, value=value(n), partition=0)
    assert producer.flush(DEADLINE_S) == 0
    if commit is True:
        producer.commit_transaction(DEADLINE_S)
    elif commit is False:
        producer.abort_transaction(DEADLINE_S)


def plain(stack: Stack, topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka_address})
    producer.produce(topic, value=value(n), partition=0)
    assert producer.flush(DEADLINE_S) == 0


def committed_values(stack: Stack, topic: str, until: int) -> list[int]:
    """The ``n`` of every record a read_committed consumer reads, up to the one with ``until``."""
    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_address,
            "group.id": f"check-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen: list[int] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while until not in seen:
            assert time.monotonic() < deadline, f"{until} not in {topic} yet: {seen}"
            for m in consumer.consume(num_messages=100, timeout=1):
                assert m.error() is None, m.error()
                seen.append(json.loads(m.value())["n"])
    finally:
        consumer.close()
    return seen


def test_sql_and_a_continuous_query_read_committed(stack: Stack) -> None:
    create_topic(stack, "eos_in")
    run_sql(stack, "CREATE STREAM eos_s (n BIGINT) WITH (topic = 'eos_in')")
    run_sql(
        stack,
        "CREATE STREAM eos_out WITH (topic = 'eos_out', partitions = 1) AS "
        "SELECT n, n * 10 AS m FROM eos_s",
    )
    producer = Producer(
        {"bootstrap.servers": stack.kafka_address, "transactional.id": "eos-sql-writer"}
    )
    producer.init_transactions(DEADLINE_S)
    transaction(producer, "eos_in", [1, 2, 3], commit=True)
    transaction(producer, "eos_in", [100, 101, 102], commit=False)
    transaction(producer, "eos_in", [4], commit=True)
    transaction(producer, "eos_in", [200], commit=None)  # open: holds the LSO
    plain(stack, "eos_in", 7)  # stored behind the open transaction

    # The log holds 9 records, of which SQL reads the 4 committed ones below the open
    # transaction (the raw topic and the declared stream alike) ...
    assert run_sql(stack, "SELECT count(*) AS c FROM eos_in") == [{"c": 4}]
    rows = run_sql(stack, "SELECT n FROM eos_s ORDER BY _offset")
    assert rows == [{"n": n} for n in (1, 2, 3, 4)]
    assert run_sql(stack, "SELECT count(*) AS c FROM eos_s WHERE n >= 100") == [{"c": 0}]
    # ... and a continuous query delivers the committed rows only.
    assert committed_values(stack, "eos_out", until=4) == [1, 2, 3, 4]

    producer.abort_transaction(DEADLINE_S)  # 200 aborted: the LSO moves on past 7
    transaction(producer, "eos_in", [5], commit=True)
    wait_until(
        lambda: (
            [r["n"] for r in run_sql(stack, "SELECT n FROM eos_s ORDER BY _offset")]
            == [1, 2, 3, 4, 7, 5]
        ),
        DEADLINE_S,
        "SQL to see the records after the aborted open transaction",
    )
    assert committed_values(stack, "eos_out", until=5) == [1, 2, 3, 4, 7, 5]
