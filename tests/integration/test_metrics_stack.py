"""The stack's one Prometheus scrape address, checked against a real stack: records produced
and consumed with confluent-kafka move the counters by exactly that many records; histograms
have counts; the uploader's PUTs are counted; after the uploader is killed and restarted its
counters keep their totals and go on counting.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streamhouse import metrics
from streamhouse.testing import Stack

DEADLINE_S = 30.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"STREAMHOUSE_METRICS_SAMPLE_INTERVAL_MS": "300"}
    with Stack(tmp_path_factory.mktemp("metrics") / "data", env) as running:
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


def scrape_until(stack: Stack, done: Callable[[Samples], bool], what: str) -> Samples:
    """Scrapes until `done` holds (sampled gauges move every sample interval)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        samples = scrape(stack)
        if done(samples):
            return samples
        assert time.monotonic() < deadline, f"{what}: not seen in {DEADLINE_S}s"
        time.sleep(0.1)


def commit(stack: Stack, group: str, topic: str, offset: int) -> None:
    consumer = Consumer({"bootstrap.servers": stack.kafka_address, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_consumer_group_lag_per_partition(stack: Stack) -> None:
    produce(stack, "metrics-lag", 100)
    commit(stack, "lag-group", "metrics-lag", 30)
    series = (
        "streamhouse_consumer_group_lag",
        (("group", "lag-group"), ("partition", "0"), ("topic", "metrics-lag")),
    )
    group_sum = ("streamhouse_consumer_group_lag_sum", (("group", "lag-group"),))
    after = scrape_until(stack, lambda s: s.get(series) == 70, "lag 100 - 30")
    assert after[group_sum] == 70
    commit(stack, "lag-group", "metrics-lag", 90)
    after = scrape_until(stack, lambda s: s.get(series) == 10, "lag 100 - 90")
    assert after[group_sum] == 10
    produce(stack, "metrics-lag", 5)
    scrape_until(stack, lambda s: s.get(series) == 15, "lag grows with produces")


def test_produce_stages_and_uploads_are_measured(stack: Stack) -> None:
    before = scrape(stack)
    produce(stack, "metrics-stages", 20)

    def moved(samples: Samples, name: str, **labels: str) -> float:
        return total(samples, name, **labels) - total(before, name, **labels)

    after = scrape(stack)
    for stage in ("ring_wait", "seal", "put", "commit"):
        assert moved(after, "streamhouse_produce_stage_seconds_count", stage=stage) >= 1, stage
        assert moved(after, "streamhouse_produce_stage_seconds_sum", stage=stage) > 0, stage
    assert moved(after, "streamhouse_segments_uploaded_total", role="uploader") >= 1
    assert moved(after, "streamhouse_segment_uploaded_bytes_total", role="uploader") > 0
    # The ring wait is no longer than the whole produce (admission to ack).
    wait = moved(after, "streamhouse_produce_stage_seconds_sum", stage="ring_wait")
    assert wait <= moved(after, "streamhouse_produce_latency_seconds_sum") + 1e-6
    # What the store holds, sampled from metadata: live objects and their bytes.
    live = scrape_until(
        stack,
        lambda s: total(s, "streamhouse_stored_objects", state="live") > 0,
        "stored objects",
    )
    assert total(live, "streamhouse_stored_bytes", state="live") > 0
    assert total(live, "streamhouse_serving", role="ingest") == 1


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
