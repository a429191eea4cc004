"""plan_produce: gRPC records validated, partitioned and encoded into one v2 batch per partition."""

from __future__ import annotations

import time

import pytest

from ingest.pipeline import ProduceSlot
from ingest.produce import Partitioner, ProduceRejected, plan_produce
from streamhouse.frames import BatchMeta
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.recordbatch import decode_records, default_partition, scan_batches

BIG = 1 << 30


def rec(
    key: bytes | None = None,
    value: bytes | None = b"v",
    headers: list[tuple[str, bytes | None]] | None = None,
    ts: int = 1_000,
) -> pb.Record:
    """A pb.Record; None leaves key/value/header value unset (null)."""
    r = pb.Record(timestamp_ms=ts)
    if key is not None:
        r.key = key
    if value is not None:
        r.value = value
    for hk, hv in headers or []:
        h = r.headers.add(key=hk)
        if hv is not None:
            h.value = hv
    return r


def plan(
    records: list[pb.Record],
    *,
    partitions: int = 4,
    partition: int | None = None,
    partitioner: Partitioner | None = None,
    max_record_bytes: int = BIG,
    max_batch_bytes: int = BIG,
    producer: tuple[int, int, int] | None = None,
    topic_id: int = 7,
) -> list[ProduceSlot]:
    return plan_produce(
        topic_id,
        partitions,
        records,
        partition,
        partitioner if partitioner is not None else Partitioner(),
        max_record_bytes,
        max_batch_bytes,
        producer,
    )


def decoded(slot: ProduceSlot) -> list[tuple]:
    """(timestamp, key, value, headers) of the slot's single batch, checked against its meta."""
    (info,) = scan_batches(slot.payload)
    assert slot.batch_lengths == [len(slot.payload)] == [info.length]
    records = decode_records(slot.payload)
    assert [r[0] for r in records] == list(range(len(records)))
    return [r[1:] for r in records]


def keys_for_partition(target: int, partitions: int, n: int) -> list[bytes]:
    """n distinct keys that Kafka's default partitioner sends to `target`."""
    out = []
    i = 0
    while len(out) < n:
        k = f"key-{i}".encode()
        if default_partition(k, partitions) == target:
            out.append(k)
        i += 1
    return out


def test_empty_request_is_rejected() -> None:
    """A request with no records is refused with a message saying so."""
    with pytest.raises(ProduceRejected, match="empty"):
        plan([])


@pytest.mark.parametrize("partition", [-1, 4, 100])
def test_explicit_partition_out_of_range(partition: int) -> None:
    """A partition outside 0..count-1 is refused, naming it and the valid range."""
    with pytest.raises(ProduceRejected) as exc:
        plan([rec()], partitions=4, partition=partition)
    assert f"partition {partition}" in str(exc.value)
    assert "0..3" in str(exc.value)


def test_explicit_partition_takes_every_record() -> None:
    """With a partition named, keyed and keyless records all go there, in order."""
    records = [rec(key=b"a", value=b"1"), rec(value=b"2"), rec(key=b"zz", value=b"3")]
    p = Partitioner()
    (slot,) = plan(records, partition=2, partitioner=p)
    assert (slot.topic_id, slot.partition) == (7, 2)
    assert [r[2] for r in decoded(slot)] == [b"1", b"2", b"3"]
    # The round robin was not consumed by this request.
    assert p.next_partition(7, 4) == 0


def test_keyed_records_use_default_partition() -> None:
    """Each keyed record goes to default_partition(key); one slot per partition, sorted,
    records keeping their request order inside a partition."""
    keys = [f"user-{i}".encode() for i in range(40)]
    records = [rec(key=k, value=str(i).encode()) for i, k in enumerate(keys)]
    slots = plan(records, partitions=5)
    assert [s.partition for s in slots] == sorted({default_partition(k, 5) for k in keys})
    for slot in slots:
        expected = [
            (k, str(i).encode())
            for i, k in enumerate(keys)
            if default_partition(k, 5) == slot.partition
        ]
        assert [(r[1], r[2]) for r in decoded(slot)] == expected
        assert slot.batches[0].record_count == len(expected)


def test_keyed_request_does_not_advance_round_robin() -> None:
    """A request of keyed records only leaves the keyless round robin where it was."""
    p = Partitioner()
    plan([rec(key=b"k")], partitioner=p)
    assert p.next_partition(7, 4) == 0


def test_keyless_round_robin_per_request() -> None:
    """A request's keyless records go together to one partition; the next request to the next."""
    p = Partitioner()
    seen = []
    for _ in range(6):
        (slot,) = plan([rec(value=b"a"), rec(value=b"b")], partitions=4, partitioner=p)
        seen.append(slot.partition)
        assert [r[2] for r in decoded(slot)] == [b"a", b"b"]
    assert seen == [0, 1, 2, 3, 0, 1]


def test_round_robin_is_per_topic() -> None:
    """Each topic has its own round robin."""
    p = Partitioner()
    assert plan([rec()], partitioner=p, topic_id=1)[0].partition == 0
    assert plan([rec()], partitioner=p, topic_id=1)[0].partition == 1
    assert plan([rec()], partitioner=p, topic_id=2)[0].partition == 0
    assert plan([rec()], partitioner=p, topic_id=1)[0].partition == 2


def test_mixed_keyed_and_keyless_records() -> None:
    """Keyed records follow their key; keyless ones share the request's round-robin pick."""
    p = Partitioner()
    p.next_partition(7, 4)  # the round robin now points at partition 1
    k3 = keys_for_partition(3, 4, 1)[0]
    k1 = keys_for_partition(1, 4, 1)[0]
    records = [
        rec(value=b"n1"),
        rec(key=k3, value=b"k3"),
        rec(value=b"n2"),
        rec(key=k1, value=b"k1"),
    ]
    slots = plan(records, partitions=4, partitioner=p)
    assert [s.partition for s in slots] == [1, 3]
    assert [r[2] for r in decoded(slots[0])] == [b"n1", b"n2", b"k1"]
    assert [r[2] for r in decoded(slots[1])] == [b"k3"]


def test_empty_key_is_a_key() -> None:
    """An empty (not null) key is hashed like any key, not treated as keyless."""
    p = Partitioner()
    for _ in range(3):
        (slot,) = plan([rec(key=b"")], partitions=7, partitioner=p)
        assert slot.partition == default_partition(b"", 7)
    assert p.next_partition(7, 7) == 0


def test_idempotent_request_needs_a_partition() -> None:
    """producer set and no partition: refused with a message naming the rule."""
    with pytest.raises(ProduceRejected, match="must name its partition"):
        plan([rec(key=b"k")], producer=(5, 0, 0))


def test_idempotent_request_is_one_batch_with_producer_fields() -> None:
    """The records become one batch carrying producer id, epoch and base sequence."""
    records = [rec(key=b"a", value=b"1", ts=10), rec(value=b"2", ts=30), rec(key=b"b", ts=20)]
    (slot,) = plan(records, partition=1, producer=(99, 3, 17))
    (info,) = scan_batches(slot.payload)
    assert (info.producer_id, info.producer_epoch, info.base_sequence) == (99, 3, 17)
    assert info.record_count == 3
    assert slot.batches == [BatchMeta(3, 99, 3, 17, 10, 30)]
    assert slot.partition == 1


def test_non_idempotent_batches_have_no_producer() -> None:
    """Without a producer, the batch has id, epoch and sequence -1."""
    (slot,) = plan([rec(ts=5), rec(ts=9)], partition=0)
    (info,) = scan_batches(slot.payload)
    assert (info.producer_id, info.producer_epoch, info.base_sequence) == (-1, -1, -1)
    assert slot.batches == [BatchMeta(2, -1, -1, -1, 5, 9)]


def test_records_round_trip_through_the_batch() -> None:
    """Keys, values (null vs empty), headers (order, duplicates, null values) and timestamps
    decode back from the produced batch exactly."""
    specs: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]] = [
        (None, None, [], 1),
        (b"", b"", [("h", b"")], 2),
        (b"k", None, [("h", None), ("h", b"x"), ("é", b"\x00")], 3),
        (None, b"v" * 300, [], -50),
        (b"\xff" * 20, b"val", [("a", b"1"), ("b", None)], 1_700_000_000_000),
    ]
    records = [rec(k, v, h, ts) for k, v, h, ts in specs]
    (slot,) = plan(records, partition=0)
    assert decoded(slot) == [(ts, k, v, h) for k, v, h, ts in specs]
    assert slot.batches == [BatchMeta(5, -1, -1, -1, -50, 1_700_000_000_000)]


def test_zero_timestamp_means_server_time() -> None:
    """timestamp_ms 0 becomes the server's current time in ms; others are kept."""
    before = int(time.time() * 1000)
    (slot,) = plan([rec(ts=0), rec(ts=123), rec(ts=0)], partition=0)
    after = int(time.time() * 1000)
    stamps = [r[0] for r in decoded(slot)]
    assert before <= stamps[0] <= after
    assert stamps[1] == 123
    assert stamps[2] == stamps[0]
    assert (slot.batches[0].min_timestamp, slot.batches[0].max_timestamp) == (123, stamps[0])


def test_negative_timestamps_are_kept() -> None:
    """Negative timestamps are the producer's to choose (only 0 is special)."""
    (slot,) = plan([rec(ts=-1), rec(ts=-1_000)], partition=0)
    assert [r[0] for r in decoded(slot)] == [-1, -1_000]
    assert (slot.batches[0].min_timestamp, slot.batches[0].max_timestamp) == (-1_000, -1)


def test_record_size_limit_counts_key_value_and_headers() -> None:
    """A record is key + value + header keys and values; at the limit passes, over it fails
    with a message naming the record, its size and the limit."""
    at_limit = rec(key=b"kk", value=b"vvv", headers=[("hh", b"x"), ("n", None)])  # 2+3+3+1 = 9
    assert plan([at_limit], partition=0, max_record_bytes=9)
    over = rec(key=b"kk", value=b"vvv", headers=[("hh", b"xy"), ("n", None)])  # 10
    with pytest.raises(ProduceRejected) as exc:
        plan([at_limit, over], partition=0, max_record_bytes=9)
    assert str(exc.value) == "record 1 is 10 bytes, over the 9-byte limit"


def test_record_size_limit_counts_header_keys_in_bytes() -> None:
    """Header keys count by their UTF-8 bytes (what is stored), not by characters."""
    record = rec(key=None, value=None, headers=[("é" * 6, None)])  # 6 characters, 12 bytes
    with pytest.raises(ProduceRejected, match="record 0 is 12 bytes"):
        plan([record], partition=0, max_record_bytes=10)


def test_request_size_limit() -> None:
    """The records' total size may reach max_batch_bytes; over it the request is refused."""
    records = [rec(value=b"x" * 10) for _ in range(5)]
    (slot,) = plan(records, partition=0, max_batch_bytes=1000)
    assert plan(records, partition=0, max_batch_bytes=len(slot.payload))
    with pytest.raises(ProduceRejected, match="encodes to over"):
        plan(records, partition=0, max_batch_bytes=len(slot.payload) - 1)
    with pytest.raises(ProduceRejected) as exc:
        plan(records, partition=0, max_batch_bytes=49)
    assert str(exc.value) == "the batch is 50 bytes, over the 49-byte limit: split it"


def test_request_limit_counts_every_partition() -> None:
    """The request limit is on the whole request, across partitions."""
    k0, k1 = keys_for_partition(0, 2, 1)[0], keys_for_partition(1, 2, 1)[0]
    records = [rec(key=k0, value=b"x" * 20), rec(key=k1, value=b"y" * 20)]
    limit = len(k0) + len(k1) + 39
    with pytest.raises(ProduceRejected, match="split it"):
        plan(records, partitions=2, max_batch_bytes=limit)


def test_encoded_payload_never_exceeds_max_batch_bytes() -> None:
    """What reaches the produce ring (the encoded batches) stays within max_batch_bytes:
    the ring is sized for two batches of that size. Many small records carry more framing
    than data, so counting only key/value/header bytes under-counts the payload."""
    records = [rec(value=b"x", ts=1) for _ in range(300)]
    max_batch_bytes = 1_024
    try:
        slots = plan(records, partition=0, max_batch_bytes=max_batch_bytes)
    except ProduceRejected:
        return
    payload = sum(len(s.payload) for s in slots)
    assert payload <= max_batch_bytes, (
        f"accepted a request whose batch is {payload} bytes, over max_batch_bytes {max_batch_bytes}"
    )


def test_log_append_time_topic_stamps_every_record_with_server_time() -> None:
    """On a LogAppendTime topic the producer's timestamps are replaced by the server's."""
    before = int(time.time() * 1000)
    (slot,) = plan_produce(
        7, 1, [rec(ts=5), rec(ts=0)], 0, Partitioner(), BIG, BIG, log_append_time=True
    )
    after = int(time.time() * 1000)
    stamps = [r[0] for r in decoded(slot)]
    assert stamps[0] == stamps[1] and before <= stamps[0] <= after


# ------------------------------------------------------------------------------------------
# the edge's topic rules (message.timestamp.*, max.message.bytes), as on the Kafka path


def plan_with_config(records: list[pb.Record], config: dict[str, str]) -> list[ProduceSlot]:
    return plan_produce(7, 1, records, 0, Partitioner(), BIG, BIG, None, topic_config=config)


def test_timestamps_outside_the_topic_bounds_are_rejected_naming_the_record() -> None:
    now = int(time.time() * 1000)
    config = {"message.timestamp.before.max.ms": "60000", "message.timestamp.after.max.ms": "1000"}
    (slot,) = plan_with_config([rec(ts=now - 50_000), rec(ts=now), rec(ts=0)], config)
    assert scan_batches(slot.payload)[0].record_count == 3  # 0 is server time
    with pytest.raises(ProduceRejected, match=r"record 1: timestamp_ms \d+ is out of range"):
        plan_with_config([rec(ts=now), rec(ts=now + 3_600_000)], config)
    with pytest.raises(ProduceRejected, match="record 0: timestamp_ms"):
        plan_with_config([rec(ts=now - 3_600_000)], config)


def test_difference_max_ms_bounds_both_sides() -> None:
    now = int(time.time() * 1000)
    config = {"message.timestamp.difference.max.ms": "60000"}
    with pytest.raises(ProduceRejected, match="out of range"):
        plan_with_config([rec(ts=now + 3_600_000)], config)
    with pytest.raises(ProduceRejected, match="out of range"):
        plan_with_config([rec(ts=now - 3_600_000)], config)


def test_log_append_time_topic_ignores_producer_timestamps() -> None:
    config = {"message.timestamp.type": "LogAppendTime", "message.timestamp.before.max.ms": "0"}
    (slot,) = plan_with_config([rec(ts=5)], config)
    assert decoded(slot)[0][0] >= int(time.time() * 1000) - 60_000


def test_topic_max_message_bytes_bounds_each_encoded_batch() -> None:
    with pytest.raises(ProduceRejected, match="max.message.bytes 100: split the batch"):
        plan_with_config([rec(value=b"x" * 200)], {"max.message.bytes": "100"})
    assert plan_with_config([rec(value=b"x" * 20)], {"max.message.bytes": "100"})
