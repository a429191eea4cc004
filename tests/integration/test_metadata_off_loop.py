"""The test stacks run every stage with the metadata loop-call guard on
(``STREAMHOUSE_DEBUG_LOOP_CALLS=1``, metadata/store.py rule 6). Every request below reads or
writes metadata: each one answering, and no LoopCallError in any log, shows those calls ran
off the event loops. Errors the processes swallow would otherwise go unseen."""

from __future__ import annotations

import pathlib
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamhouse.client import EARLIEST, Client
from streamhouse.testing import Stack

DEADLINE_S = 30
PROGRAMS_WITH_METADATA = ("ingest", "uploader", "reader", "lifecycle")


def _environment(pid: int) -> dict[str, str]:
    raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_every_metadata_path_runs_with_the_guard_and_never_trips_it(stack: Stack) -> None:
    assert stack.settings.debug_loop_calls
    for program in PROGRAMS_WITH_METADATA:
        env = _environment(stack.pid(program))
        assert env.get("STREAMHOUSE_DEBUG_LOOP_CALLS") == "1", program

    bootstrap = f"127.0.0.1:{stack.kafka_port}"
    # gRPC: topic admin, produce (commit in the uploader), consume (reader), offsets, producers.
    with Client(stack.grpc_address) as client:
        client.create_topic("grpc-events", 2)
        partition, offset = client.produce("grpc-events", b"v0", partition=1)
        assert (partition, offset) == (1, 0)
        records, next_offset, hwm, lso = client.consume("grpc-events", 1, EARLIEST)
        assert [r.value for r in records] == [b"v0"] and (next_offset, hwm, lso) == (1, 1, 0)
        client.commit_offset("g", "grpc-events", 1, 1, "m")
        assert client.get_offset("g", "grpc-events", 1) == (1, "m")
        assert client.init_producer()[0] >= 0
        assert [t.name for t in client.list_topics()] == ["grpc-events"]
        assert client.get_topic("grpc-events").partition_info[1].high_watermark == 1

    # Kafka: auto-create on produce, Metadata, Fetch, ListOffsets by time, group offsets, admin.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    try:
        for i in range(5):
            producer.produce("kafka-events", value=f"k{i}".encode(), timestamp=1_000 * (i + 1))
        assert producer.flush(DEADLINE_S) == 0
    finally:
        producer.close()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "off-loop",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.assign([TopicPartition("kafka-events", 0, 0)])
        values: list[bytes] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(values) < 5 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                values.append(message.value())
        assert values == [f"k{i}".encode() for i in range(5)]
        (found,) = consumer.offsets_for_times(
            [TopicPartition("kafka-events", 0, 3_000)], timeout=DEADLINE_S
        )
        assert found.offset == 2
        low, high = consumer.get_watermark_offsets(
            TopicPartition("kafka-events", 0), timeout=DEADLINE_S
        )
        assert (low, high) == (0, 5)
        consumer.commit(offsets=[TopicPartition("kafka-events", 0, 4)], asynchronous=False)
        (committed,) = consumer.committed([TopicPartition("kafka-events", 0)], timeout=DEADLINE_S)
        assert committed.offset == 4
    finally:
        consumer.close()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (created,) = admin.create_topics([NewTopic("kafka-admin", 1)]).values()
    created.result(DEADLINE_S)
    assert set(admin.list_topics(timeout=DEADLINE_S).topics) >= {
        "grpc-events",
        "kafka-events",
        "kafka-admin",
    }
    (deleted,) = admin.delete_topics(["kafka-admin"]).values()
    deleted.result(DEADLINE_S)

    logs = sorted((stack.data_dir / "logs").glob("*"))
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        assert "LoopCallError" not in text, f"{log.name} logged a metadata call on a loop"
