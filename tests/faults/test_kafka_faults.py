"""An idempotent Kafka producer (confluent-kafka, acks=all) keeps producing a numbered sequence
while the uploader is SIGKILLed twice and the segmenter once: afterwards every acknowledged
record is in the partition exactly once, in order, at the offset its acknowledgement named,
with no gap in the offsets."""

from __future__ import annotations

import pathlib
import re
import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamhouse.testing import Stack

TOPIC = "numbered"
MAX_OUTSTANDING = 5000
RATE = 5000  # records/s: enough for produces to be in flight at every kill, little to read back


class Acks:
    """Delivery reports, with a condition the test waits on (no sleeping)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.acked: dict[int, int] = {}  # sequence number -> offset
        self.failed: dict[int, str] = {}

    def on_delivery(self, err: KafkaError | None, msg: object) -> None:
        n = int(msg.value())  # type: ignore[attr-defined]
        with self.cond:
            if err is None:
                self.acked[n] = msg.offset()  # type: ignore[attr-defined]
            else:
                self.failed[n] = str(err)
            self.cond.notify_all()

    def wait_for(self, target: int, timeout: float = 90) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.acked) >= target or self.failed, timeout)
            assert ok, f"only {len(self.acked)} of {target} records acknowledged in {timeout}s"
            assert not self.failed, list(self.failed.items())[:5]


def produce_numbers(producer: Producer, stop: threading.Event, produced: list[int]) -> None:
    """Produces 0, 1, 2, … at RATE until stopped, at most MAX_OUTSTANDING unacknowledged."""
    n = 0
    started = time.monotonic()
    while not stop.is_set():
        ahead = n / RATE - (time.monotonic() - started)
        if ahead > 0:
            stop.wait(ahead)  # pacing the load, not waiting for anything
            continue
        if len(producer) >= MAX_OUTSTANDING:
            producer.poll(0.05)  # blocks on delivery reports: backpressure, not a sleep
            continue
        producer.produce(TOPIC, b"%d" % n, partition=0)
        produced.append(n)
        n += 1
        if n % 100 == 0:
            producer.poll(0)


def read_partition(bootstrap: str, end: int) -> list[tuple[int, int]]:
    """(offset, sequence number) of every record in the partition, up to offset `end`."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "faults-reader", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(TOPIC, 0, 0)])
    out: list[tuple[int, int]] = []
    try:
        while (position := out[-1][0] + 1 if out else 0) < end:
            # consume() returns when it has num_messages or at the timeout: never ask for more
            # than the partition still holds.
            messages = consumer.consume(num_messages=min(10_000, end - position), timeout=10)
            assert messages, f"no more records at offset {position}"
            for message in messages:
                assert message.error() is None, message.error()
                out.append((message.offset(), int(message.value())))
    finally:
        consumer.close()
    return out


def test_idempotent_producer_survives_pipeline_kills(tmp_path: pathlib.Path) -> None:
    with Stack(tmp_path / "data") as stack:
        bootstrap = f"127.0.0.1:{stack.kafka_port}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(TOPIC, 1, 1)])[TOPIC].result(timeout=30)
        acks = Acks()
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 300_000,
                "retries": 1_000_000,
                "retry.backoff.ms": 50,
                "on_delivery": acks.on_delivery,
            }
        )
        stop = threading.Event()
        produced: list[int] = []
        thread = threading.Thread(target=produce_numbers, args=(producer, stop, produced))
        thread.start()
        try:
            target = 3000
            acks.wait_for(target)
            for program in ("uploader", "segmenter", "uploader"):
                old = stack.kill(program)
                stack.wait_restarted(program, old)
                # Progress after the restart: acknowledgements of records produced since
                # (one partition: acknowledgements come in produce order).
                target = len(produced) + 1000
                acks.wait_for(target)
        finally:
            stop.set()
            thread.join(30)
        remaining = producer.flush(120)
        assert remaining == 0, f"{remaining} records never acknowledged"
        assert not acks.failed, list(acks.failed.items())[:5]
        assert sorted(acks.acked) == produced, "every produced record was acknowledged"

        end = max(acks.acked.values()) + 1
        log = read_partition(bootstrap, end)
    # The kills hit produces in flight (else this test would not have exercised the retries).
    ingest_log = (tmp_path / "data" / "logs" / "ingest.log").read_text()
    failed_in_flight = [int(n) for n in re.findall(r"restarted; failing (\d+) pending", ingest_log)]
    assert len(failed_in_flight) >= 3 and sum(failed_in_flight) > 0, failed_in_flight

    offsets = [offset for offset, _ in log]
    assert offsets == list(range(len(log))), "offsets have no gaps"
    numbers = [n for _, n in log]
    assert len(set(numbers)) == len(numbers), "no record twice"
    assert numbers == sorted(numbers), "records in produce order"
    assert numbers == produced, "exactly the produced sequence"
    assert {n: o for o, n in log} == acks.acked, "each record at its acknowledged offset"
