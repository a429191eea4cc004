"""gRPC consumers choose an isolation level: read_uncommitted (the default, as Kafka) reads
everything up to the high watermark; read_committed stops at the last stable offset and skips
aborted transactions' records, through Consume, Subscribe and ``streamctl consume``.

A confluent-kafka transactional producer writes into one partition, in this order (offsets):
1, 2, 3 committed (0-2, marker 3); 100, 101, 102 aborted (4-6, marker 7); 4 committed (8,
marker 9); 200 left open (10); then a plain producer writes 7 (11) behind it.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamhouse.client import EARLIEST, LATEST, READ_COMMITTED, Client, Record
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.proto import streamhouse_pb2_grpc as pb_grpc
from streamhouse.testing import Stack

REPO = pathlib.Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0
OPEN_TXN_OFFSET = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"STREAMHOUSE_SQL_ENABLED": "false"}
    with Stack(tmp_path_factory.mktemp("txn-fu-grpc") / "data", env=env) as running:
        yield running


def transaction(producer: Producer, topic: str, values: list[int], commit: bool | None) -> None:
    producer.begin_transaction()
    for v in values:
        producer.produce(topic, value=str(v).encode(), partition=0)
    assert producer.flush(DEADLINE_S) == 0
    if commit is True:
        producer.commit_transaction(DEADLINE_S)
    elif commit is False:
        producer.abort_transaction(DEADLINE_S)


def values(records: list[Record]) -> list[int]:
    return [int(r.value or b"") for r in records]


def consume_all(client: Client, topic: str, isolation: str) -> tuple[list[Record], int]:
    """Consume from the earliest offset until a call makes no progress; the records and the
    offset it stopped at."""
    offset, got = EARLIEST, []
    while True:
        records, next_offset, _hwm, _lso = client.consume(topic, 0, offset, isolation=isolation)
        got.extend(records)
        if next_offset == offset:
            return got, offset
        offset = next_offset


def streamctl_consume(stack: Stack, topic: str, *args: str) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k != "STREAMHOUSE_ADDR"}
    done = subprocess.run(
        [sys.executable, "-m", "streamhouse.streamctl", "--server", stack.grpc_address]
        + ["consume", topic, "--partition", "0", "--offset", "earliest", "--output", "json"]
        + list(args),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [int(json.loads(line)["value"]) for line in done.stdout.splitlines()]


def test_grpc_consumers_read_committed_or_uncommitted(stack: Stack) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_address})
    for future in admin.create_topics([NewTopic("eos_grpc", 1, 1)]).values():
        future.result(DEADLINE_S)
    producer = Producer(
        {"bootstrap.servers": stack.kafka_address, "transactional.id": "eos-grpc-writer"}
    )
    producer.init_transactions(DEADLINE_S)
    transaction(producer, "eos_grpc", [1, 2, 3], commit=True)
    transaction(producer, "eos_grpc", [100, 101, 102], commit=False)
    transaction(producer, "eos_grpc", [4], commit=True)
    transaction(producer, "eos_grpc", [200], commit=None)
    plain = Producer({"bootstrap.servers": stack.kafka_address})
    plain.produce("eos_grpc", value=b"7", partition=0)
    assert plain.flush(DEADLINE_S) == 0

    client = Client(stack.grpc_address)
    try:
        everything, _ = consume_all(client, "eos_grpc", "read_uncommitted")
        assert values(everything) == [1, 2, 3, 100, 101, 102, 4, 200, 7]
        committed, stopped = consume_all(client, "eos_grpc", READ_COMMITTED)
        assert values(committed) == [1, 2, 3, 4]
        assert [r.offset for r in committed] == [0, 1, 2, 8]
        assert stopped == OPEN_TXN_OFFSET  # the last stable offset
        # LATEST read committed is the last stable offset, not the high watermark.
        _, latest, hwm, _ = client.consume("eos_grpc", 0, LATEST, isolation=READ_COMMITTED)
        assert (latest, hwm) == (OPEN_TXN_OFFSET, 12)
        assert streamctl_consume(stack, "eos_grpc", "--isolation", "read_committed") == [
            1,
            2,
            3,
            4,
        ]
        assert streamctl_consume(stack, "eos_grpc") == [1, 2, 3, 100, 101, 102, 4, 200, 7]
        with pytest.raises(ValueError, match="isolation level 'snapshot' is invalid"):
            client.consume("eos_grpc", 0, EARLIEST, isolation="snapshot")

        # Subscribe read committed: waits at the open transaction, then skips it once aborted.
        stream = client.subscribe("eos_grpc", 0, EARLIEST, isolation=READ_COMMITTED)
        try:
            seen = [int(next(stream).value or b"") for _ in range(4)]
            assert seen == [1, 2, 3, 4]
            producer.abort_transaction(DEADLINE_S)  # 200 aborted
            transaction(producer, "eos_grpc", [5], commit=True)
            assert [int(next(stream).value or b"") for _ in range(2)] == [7, 5]
        finally:
            stream.close()
    finally:
        client.close()

    # A raw request with an isolation level the enum does not define is refused clearly.
    with grpc.insecure_channel(stack.grpc_address) as channel:
        stub = pb_grpc.StreamHouseStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Consume(
                pb.ConsumeRequest(topic="eos_grpc", partition=0, offset=0, isolation_level=5),
                timeout=30,
            )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "isolation_level 5 is invalid" in (refused.value.details() or "")
