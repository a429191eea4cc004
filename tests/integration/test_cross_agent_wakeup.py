"""Two agents on one PostgreSQL and one object store: a record produced on agent A wakes a
long-poll waiting on agent B through the commit feed, long before B's max wait runs out."""

from __future__ import annotations

import concurrent.futures
import pathlib
import time

from streamhouse.client import Client, Record
from streamhouse.testing import Stack, wait_until

#: The consumer's max wait: without the commit feed B would answer only after this.
MAX_WAIT_MS = 20_000
#: Functional bound (not a benchmark): the record must reach B's consumer within this.
BOUND_S = 5.0
ROUNDS = 5


def test_produce_on_a_wakes_a_long_poll_on_b(tmp_path: pathlib.Path, postgres_dsn: str) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    env = {
        "STREAMHOUSE_METADATA": postgres_dsn,
        "STREAMHOUSE_OBJECT_STORE": objects.as_uri(),
    }
    with (
        Stack(tmp_path / "a", env) as a,
        Stack(tmp_path / "b", env) as b,
        Client(a.grpc_address) as producer,
        Client(b.grpc_address) as consumer,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        producer.create_topic("wake", 2)
        wait_until(
            lambda: any(t.name == "wake" for t in consumer.list_topics()), 30, "B sees the topic"
        )
        offset = 0
        for i in range(ROUNDS):
            started = time.monotonic()
            poll = pool.submit(consumer.consume, "wake", 1, offset, 0, 0, MAX_WAIT_MS)
            value = f"round-{i}".encode()
            response = producer.produce_batch("wake", [Record(value=value)], partition=1)
            assert response.partition == 1
            records, next_offset, hwm, _lso = poll.result(timeout=MAX_WAIT_MS / 1000 + 30)
            elapsed = time.monotonic() - started
            assert [r.value for r in records] == [value]
            assert [r.offset for r in records] == [offset] and next_offset == hwm == offset + 1
            assert elapsed < BOUND_S, (
                f"round {i}: B's long-poll answered after {elapsed:.1f} s; the commit feed "
                f"should have woken it (max wait {MAX_WAIT_MS} ms)"
            )
            offset = next_offset
