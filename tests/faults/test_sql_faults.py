"""kill -9 continuous-query runners (and the stack's ingest and uploader) while input is being
produced: the output topics end up holding every expected result exactly once.

On SQLite metadata and a local folder store, and on PostgreSQL metadata and SeaweedFS S3.
Two queries run over the same input, each in its own runner process killed again and again
at random points (before its claim, between checkpoints, right after one):

- ``seq``: the hand-written plan of ``tests/sql/continuous/test_runner_plan.py`` numbers
  each partition's rows (``_seq``, the plan's checkpointed state), so output rows say which
  input row they came from and where: a replay, a lost step or a stale restored state shows;
- ``sql``: the same filter planned from SQL by ``sql.continuous.plan.plan_continuous``.

References are computed here from the input topic as read back with confluent-kafka.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import random
import threading
import uuid
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import Producer

from sql.continuous.definition import QueryDefinition, decode_checkpoint
from streamhouse.testing import Stack, read_kafka_log, wait_until

_spec = importlib.util.spec_from_file_location(
    "_runner_tests",
    pathlib.Path(__file__).resolve().parents[1] / "sql" / "continuous" / "test_runner.py",
)
assert _spec is not None and _spec.loader is not None
rt: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rt)

PARTITIONS = 3
RECORDS = 20_000
BAD_EVERY = 101


def producing(stack: Stack, done: threading.Event, errors: list[str]) -> None:
    """Orders 0 .. RECORDS-1 (idempotent producer, so a killed ingest duplicates nothing)."""
    p = Producer(
        {"bootstrap.servers": stack.kafka_address, "linger.ms": 20, "enable.idempotence": True}
    )
    pace = threading.Event()  # never set: a pause between bursts of records
    try:
        for i in range(RECORDS):
            value = rt.order_value(i) if i % BAD_EVERY else b"not json " + str(i).encode()
            while True:
                try:
                    p.produce(
                        "orders",
                        value=value,
                        key=str(i).encode(),
                        partition=i % PARTITIONS,
                        on_delivery=lambda err, _m: errors.append(str(err)) if err else None,
                    )
                    break
                except BufferError:
                    p.poll(0.1)
            if i % 200 == 0:
                p.poll(0)
                pace.wait(0.2)  # spreads the input over ~20 s of kills (workload, not a sync)
        if p.flush(120) != 0:
            errors.append("records left unsent after 120 s")
    finally:
        done.set()


def sql_reference(stack: Stack) -> Counter[str]:
    log = read_kafka_log(stack.kafka_address, "orders", PARTITIONS)
    rows: Counter[str] = Counter()
    for records in log.values():
        for _offset, value in records:
            try:
                row = json.loads(value)
            except ValueError:
                continue
            if row["price"] >= 50:
                out = {"id": row["id"], "item": row["item"], "price": row["price"]}
                rows[json.dumps(rt.normal(out), sort_keys=True)] += 1
    return rows


def step_of(stack: Stack, name: str) -> int:
    row = rt.checkpoint(stack, name)
    return 0 if row is None else row.step


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_runners_killed_repeatedly_output_every_result_exactly_once(
    tmp_path: pathlib.Path, backend: str, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(9)
    env = dict(rt.NO_SERVICE_RUNNERS)
    if backend == "postgresql":  # PostgreSQL metadata, SeaweedFS S3 objects
        seaweed = request.getfixturevalue("seaweed")
        env.update(seaweed.env())
        env["STREAMHOUSE_OBJECT_STORE"] = f"s3://{seaweed.bucket}/sqlf-{uuid.uuid4().hex[:12]}"
        env["STREAMHOUSE_METADATA"] = request.getfixturevalue("postgres_dsn")
    with Stack(tmp_path / "data", env=env) as stack:
        rt.create_topic(stack, "orders", PARTITIONS)
        rt.create_topic(stack, "out_seq", 2)
        rt.create_topic(stack, "out_sql", 2)
        rt.run_sql(stack, rt.ORDERS_DDL)
        rt.define_query(
            stack,
            QueryDefinition(
                name="seq",
                kind="stream",
                sql=rt.FILTER_SQL,
                output_topic="out_seq",
                options={"source": "orders"},
            ),
        )
        rt.define_query(
            stack,
            QueryDefinition(
                name="sql",
                kind="stream",
                sql="SELECT id, item, price FROM orders WHERE price >= 50",
                output_topic="out_sql",
            ),
        )
        done = threading.Event()
        errors: list[str] = []
        producer = threading.Thread(target=producing, args=(stack, done, errors), daemon=True)
        producer.start()
        logs = {name: tmp_path / f"{name}.log" for name in ("seq", "sql")}

        def start(name: str) -> Any:
            return rt.RunnerProcess(stack, name, logs[name], rt.PLAN if name == "seq" else None)

        kills = 0
        round_ = 0
        while not done.is_set() or round_ < 8:
            round_ += 1
            name = ("seq", "sql")[round_ % 2]
            before = step_of(stack, name)
            runner = start(name)
            if rng.random() < 0.2:
                runner.kill()  # at once: before or during its claim
            else:
                target = before + rng.randint(1, 4)
                wait_until(
                    lambda name=name, target=target, runner=runner: (
                        step_of(stack, name) >= target
                        or runner.proc.poll() is not None
                        or done.is_set()
                    ),
                    120,
                    f"{name} reaching step {target}",
                )
                assert runner.proc.poll() is None, runner.log()
                runner.kill()
            kills += 1
            if round_ % 4 == 0:
                victim = ("uploader", "ingest")[(round_ // 4) % 2]
                old = stack.kill(victim)
                stack.wait_restarted(victim, old)
        producer.join(180)
        assert errors == []
        # the last runners finish the input
        expected_seq = rt.reference_rows(stack, PARTITIONS)
        expected_sql = sql_reference(stack)
        finals = {"seq": start("seq"), "sql": start("sql")}
        try:
            rt.wait_output(stack, "out_seq", 2, sum(expected_seq.values()), finals["seq"])
            rt.wait_output(stack, "out_sql", 2, sum(expected_sql.values()), finals["sql"])
            assert rt.output_rows(stack, "out_seq", 2) == expected_seq
            assert rt.output_rows(stack, "out_sql", 2) == expected_sql
            bad = len(range(0, RECORDS, BAD_EVERY))
            for name in ("seq", "sql"):
                wait_until(
                    lambda name=name: (
                        decode_checkpoint(rt.checkpoint(stack, name).payload).rows_in
                        == RECORDS - bad
                    ),
                    60,
                    f"{name}'s checkpoint covering the whole input",
                )
                state = decode_checkpoint(rt.checkpoint(stack, name).payload)
                assert state.decode_errors == bad
            # objects of uncommitted checkpoints were swept: only the live ones (and those of
            # a checkpoint in flight) remain
            for name in ("seq", "sql"):
                objects = rt.state_objects(stack, name)
                assert len(objects) <= 2, objects
        finally:
            for r in finals.values():
                r.kill()
        assert kills >= 8
        claims = sum(path.read_text().count("claimed (generation") for path in logs.values())
        assert claims >= 8, claims  # most kills hit a runner that had claimed and was running
