"""The stack's one Prometheus scrape address, checked against a real stack: records produced
and consumed with confluent-kafka move the counters by exactly that many records; histograms
have counts; the uploader's PUTs are counted; after the uploader is killed and restarted its
counters keep their totals and go on counting.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streamhouse import metrics
from streamhouse.testing import Stack

DEADLINE_S = 30.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("metrics") / "data") as running:
        yield running


def scrape(stack: Stack) -> Samples:
    url = f"http://{stack.metrics_address}/metrics"
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a sample over every label set that has `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def produce(stack: Stack, topic: str, count: int) -> int:
    """Produces `count` records; returns their value bytes."""
    producer = Producer({"bootstrap.servers": stack.kafka_address, "linger.ms": 5})
    errors: list[str] = []

    def report(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    size = 0
    for i in range(count):
        value = f"record-{i}".encode()
        size += len(value)
        producer.produce(topic, value=value, partition=0, on_delivery=report)
    assert producer.flush(DEADLINE_S) == 0
    assert not errors, errors
    return size


def consume(stack: Stack, topic: str, count: int) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_address,
            "group.id": f"metrics-{topic}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = 0
    deadline = time.monotonic() + DEADLINE_S
    try:
        while got < count:
            assert time.monotonic() < deadline, f"consumed {got} of {count}"
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                got += 1
    finally:
        consumer.close()
    return got


def test_counters_move_by_the_records_produced_and_consumed(stack: Stack) -> None:
    before = scrape(stack)
    count = 500
    produce(stack, "metrics-a", count)
    assert consume(stack, "metrics-a", count) == count
    # Ingest names a new topic's series off its loop: poll until the topic's label appears.
    deadline = time.monotonic() + DEADLINE_S
    while True:
        after = scrape(stack)
        named = total(after, "streamhouse_fetch_records_total", topic="metrics-a")
        if named == count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert total(after, "streamhouse_produce_records_total", topic="metrics-a") == count
    assert total(after, "streamhouse_fetch_records_total", topic="metrics-a") == count

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("streamhouse_produce_records_total") == count
    assert moved("streamhouse_fetch_records_total") == count
    assert moved("streamhouse_produce_bytes_total") > 0
    assert moved("streamhouse_fetch_bytes_total") > 0
    assert moved("streamhouse_produce_requests_total", protocol="kafka", result="ok") >= 1
    assert moved("streamhouse_produce_latency_seconds_count") >= 1
    assert moved("streamhouse_requests_total", listener="kafka", api="Produce") >= 1
    assert moved("streamhouse_requests_total", listener="kafka", api="Fetch") >= 1
    assert moved("streamhouse_object_store_requests_total", kind="put") > 0
    assert moved("streamhouse_object_store_request_seconds_count", kind="put") > 0
    assert total(after, "streamhouse_segment_size_bytes_count") > 0
    assert total(after, "streamhouse_ring_capacity_bytes") > 0
    for (name, _), _value in after.items():
        assert name.startswith("streamhouse_"), name


def test_a_restarted_process_keeps_counting(stack: Stack) -> None:
    before = scrape(stack)
    old = stack.kill("uploader")
    stack.wait_restarted("uploader", old)
    produce(stack, "metrics-b", 50)
    after = scrape(stack)
    # The dead uploader's PUTs stay in the totals; the new one adds its own.
    assert total(after, "streamhouse_object_store_requests_total", kind="put") > total(
        before, "streamhouse_object_store_requests_total", kind="put"
    )
    assert total(after, "streamhouse_process_starts_total") == (
        total(before, "streamhouse_process_starts_total") + 1
    )
    deadline = time.monotonic() + DEADLINE_S
    while total(after, "streamhouse_produce_records_total", topic="metrics-b") != 50:
        assert time.monotonic() < deadline, "metrics-b's 50 records were never counted"
        time.sleep(0.05)
        after = scrape(stack)
    assert total(after, "streamhouse_produce_records_total") == (
        total(before, "streamhouse_produce_records_total") + 50
    )
    metrics_dir = metrics.metrics_dir(stack.settings)
    assert any(metrics_dir.glob(f"counter_{old}.db"))
