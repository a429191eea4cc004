"""group_lags and SampleCollector (ingest/sampler.py): lag = high watermark - committed
offset per partition, sums per group, gone topics left out, the largest lags kept."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from ingest.sampler import LagRow, Sample, SampleCollector, group_lags
from metadata.store import GroupOffset, TopicInfo


def topic(topic_id: int, name: str, partitions: int) -> TopicInfo:
    return TopicInfo(topic_id, name, bytes(16), partitions, {}, 0)


def commit(topic_id: int, partition: int, offset: int) -> GroupOffset:
    return GroupOffset(topic_id, partition, offset, "", 0)


def test_lag_per_partition_and_per_group() -> None:
    topics = {1: topic(1, "orders", 2), 2: topic(2, "clicks", 1)}
    hws = {(1, 0): 100, (1, 1): 50, (2, 0): 7}
    commits = {
        "billing": [commit(1, 0, 30), commit(1, 1, 50)],
        "ads": [commit(2, 0, 9), commit(3, 0, 1), commit(1, 0, -1)],  # ahead, gone, unset
    }
    rows, sums = group_lags(commits, topics, hws)
    assert rows == [
        LagRow("billing", "orders", 0, 70),
        LagRow("ads", "clicks", 0, 0),
        LagRow("billing", "orders", 1, 0),
    ]
    assert sums == {"billing": 70, "ads": 0}


def test_only_the_largest_lags_are_kept() -> None:
    topics = {1: topic(1, "t", 5)}
    hws = {(1, p): 100 for p in range(5)}
    rows, sums = group_lags({"g": [commit(1, p, p * 10) for p in range(5)]}, topics, hws, 2)
    assert [(r.partition, r.lag) for r in rows] == [(0, 100), (1, 90)]
    assert sums == {"g": 100 + 90 + 80 + 70 + 60}


def test_collector_serves_the_last_sample() -> None:
    collector = SampleCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    assert b"consumer_group_lag" not in generate_latest(registry)
    collector.sample = Sample(
        [LagRow("g", "t", 3, 12)], {"g": 12}, {"live": (4, 4096), "dead": (1, 10)}
    )
    text = generate_latest(registry).decode()
    assert 'streamhouse_consumer_group_lag{group="g",partition="3",topic="t"} 12.0' in text
    assert 'streamhouse_consumer_group_lag_sum{group="g"} 12.0' in text
    assert 'streamhouse_stored_objects{state="live"} 4.0' in text
    assert 'streamhouse_stored_bytes{state="dead"} 10.0' in text
    collector.sample = Sample()
    assert 'group="g"' not in generate_latest(registry).decode()
