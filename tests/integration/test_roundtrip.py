"""Records produced over gRPC come back intact, in order, with contiguous offsets."""

from __future__ import annotations

import pathlib

import pytest

from streamhouse.client import Client, Record, StreamHouseError
from streamhouse.recordbatch import default_partition
from streamhouse.testing import Stack

PARTITIONS = 3


def make_records(batch: int, size: int) -> list[Record]:
    """A mix of keyed, null-key and empty-key records with headers (duplicates included)."""
    out = []
    for i in range(size):
        n = batch * size + i
        kind = n % 4
        key = None if kind == 0 else b"" if kind == 1 else f"key-{n % 97}".encode()
        headers = [] if kind == 2 else [("trace", f"t{n}".encode()), ("dup", None), ("dup", b"2")]
        value = None if n % 1000 == 999 else f"value-{n:08d}-".encode() + bytes(60)
        out.append(
            Record(key=key, value=value, headers=headers, timestamp_ms=1_700_000_000_000 + n)
        )
    return out


def read_all(client: Client, topic: str, partition: int) -> list[Record]:
    records: list[Record] = []
    offset = 0
    while True:
        got, next_offset, hwm, _ = client.consume(topic, partition, offset, max_records=5000)
        records.extend(got)
        offset = next_offset
        if offset >= hwm:
            return records


def check_partition_contents(client: Client, topic: str, expected: dict[int, list[Record]]) -> None:
    for partition in range(PARTITIONS):
        got = read_all(client, topic, partition)
        assert [r.offset for r in got] == list(range(len(got))), "offsets must be contiguous from 0"
        want = expected[partition]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert (g.key, g.value, list(g.headers), g.timestamp_ms) == (
                w.key,
                w.value,
                list(w.headers),
                w.timestamp_ms,
            )


def produce_all(client: Client, topic: str, batches: int, size: int) -> dict[int, list[Record]]:
    expected: dict[int, list[Record]] = {p: [] for p in range(PARTITIONS)}
    for b in range(batches):
        records = make_records(b, size)
        keyed = [r for r in records if r.key is not None]
        unkeyed = [r for r in records if r.key is None]
        response = client.produce_batch(topic, keyed)
        for r in keyed:
            expected[default_partition(r.key, PARTITIONS)].append(r)
        assert sum(res.record_count for res in response.results) == len(keyed)
        target = b % PARTITIONS
        response = client.produce_batch(topic, unkeyed, partition=target)
        assert response.partition == target and response.record_count == len(unkeyed)
        expected[target].extend(unkeyed)
    return expected


def test_100k_records_round_trip_and_survive_restart(tmp_path: pathlib.Path) -> None:
    with Stack(tmp_path / "data") as stack:
        with Client(stack.grpc_address) as client:
            client.create_topic("orders", PARTITIONS)
            expected = produce_all(client, "orders", batches=100, size=1000)
            check_partition_contents(client, "orders", expected)
        stack.restart()
        with Client(stack.grpc_address) as client:
            check_partition_contents(client, "orders", expected)
            topic = client.get_topic("orders")
            assert sum(p.high_watermark for p in topic.partition_info) == 100_000


def test_round_trip_on_real_s3(tmp_path: pathlib.Path, seaweed) -> None:
    with Stack(tmp_path / "data", env=seaweed.env()) as stack:
        with Client(stack.grpc_address) as client:
            client.create_topic("s3-topic", PARTITIONS)
            expected = produce_all(client, "s3-topic", batches=10, size=1000)
            check_partition_contents(client, "s3-topic", expected)
        stack.restart()  # empty cache: every read is a range GET from S3
        with Client(stack.grpc_address) as client:
            check_partition_contents(client, "s3-topic", expected)
    assert not (tmp_path / "data" / "objects").exists(), "objects must go to S3, not the folder"


def test_deleted_topic_disappears_and_name_reuse_shows_no_old_data(stack: Stack) -> None:
    with Client(stack.grpc_address) as client:
        client.create_topic("reuse", 1)
        client.produce_batch("reuse", [Record(value=b"old") for _ in range(10)], partition=0)
        client.delete_topic("reuse")
        with pytest.raises(StreamHouseError) as err:
            client.get_topic("reuse")
        assert err.value.code.name == "NOT_FOUND"
        assert "reuse" not in [t.name for t in client.list_topics()]
        client.create_topic("reuse", 1)
        records, next_offset, hwm, lso = client.consume("reuse", 0, 0)
        assert (records, hwm, lso) == ([], 0, 0)
        client.produce("reuse", b"new", partition=0)
        records, *_ = client.consume("reuse", 0, 0)
        assert [(r.offset, r.value) for r in records] == [(0, b"new")]


def test_subscribe_follows_the_tail(stack: Stack) -> None:
    with Client(stack.grpc_address) as client:
        client.create_topic("tail", 1)
        client.produce_batch("tail", [Record(value=b"a"), Record(value=b"b")], partition=0)
        stream = client.subscribe("tail", 0, 0)
        first = [next(stream).value for _ in range(2)]
        client.produce("tail", b"c", partition=0)
        third = next(stream)
        assert first == [b"a", b"b"] and (third.offset, third.value) == (2, b"c")
        stream.close()


def test_produce_stream_acks_in_order(stack: Stack) -> None:
    with Client(stack.grpc_address) as client:
        client.create_topic("streamed", 1)
        batches = [[Record(value=f"{b}-{i}".encode()) for i in range(100)] for b in range(20)]
        responses = list(client.produce_stream("streamed", batches, partition=0))
        assert [r.base_offset for r in responses] == [100 * b for b in range(20)]


def test_long_poll_is_woken_by_a_commit(stack: Stack) -> None:
    import threading

    with Client(stack.grpc_address) as client:
        client.create_topic("poll", 1)
        result: list = []
        waiter = threading.Thread(
            target=lambda: result.append(client.consume("poll", 0, 0, max_wait_ms=20_000))
        )
        waiter.start()
        client.produce("poll", b"wake", partition=0)
        waiter.join(30)
        records = result[0][0]
        assert [r.value for r in records] == [b"wake"]


def test_committed_offsets_with_metadata(stack: Stack) -> None:
    with Client(stack.grpc_address) as client:
        client.create_topic("offsets", 2)
        assert client.get_offset("g1", "offsets", 1) == (-1, "")
        client.commit_offset("g1", "offsets", 1, 42, "checkpoint-a")
        assert client.get_offset("g1", "offsets", 1) == (42, "checkpoint-a")
        assert client.get_offset("g2", "offsets", 1) == (-1, "")
