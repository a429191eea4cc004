"""ingest/_grpcproduce.c against the Python encoder: the same batches, byte for byte, and the
same refusals, word for word, on many generated requests.

The reference below is the produce planner as it was in Python (one pb.Record at a time,
batches from ``recordbatch.encode_batch``), with the round robin moving on only for an accepted
request (as ingest/produce.py documents).
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Sequence

import crc32c
import pytest

import ingest.produce as produce
from ingest import _grpcproduce
from ingest.pipeline import ProduceSlot
from ingest.produce import Partitioner, ProduceRejected, RawProduceBatch, plan_request
from streamhouse.frames import BatchMeta
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.recordbatch import default_partition, encode_batch, murmur2
from streamhouse.topic_config import batch_rules

NOW_MS = 1_764_000_000_000


def reference_plan(
    topic_id: int,
    partition_count: int,
    records: Sequence[pb.Record],
    partition: int | None,
    partitioner: Partitioner,
    max_record_bytes: int,
    max_batch_bytes: int,
    producer: tuple[int, int, int] | None,
    topic_config: dict[str, str],
) -> list[ProduceSlot]:
    if not records:
        raise ProduceRejected("the batch is empty: send at least one record")
    if partition is not None and not 0 <= partition < partition_count:
        raise ProduceRejected(
            f"partition {partition} is out of range: "
            f"the topic has partitions 0..{partition_count - 1}"
        )
    if producer is not None and partition is None:
        raise ProduceRejected("an idempotent produce (producer_id set) must name its partition")
    now_ms = NOW_MS
    rules = batch_rules(topic_config, max_batch_bytes)
    ts_low = max(-(2**63), now_ms - rules.timestamp_before_ms)
    ts_high = min(2**63 - 1, now_ms + rules.timestamp_after_ms)
    keyless = partition
    used_keyless = False
    groups: dict[int, tuple[list, list, list, list]] = {}
    total = 0
    for index, rec in enumerate(records):
        key = rec.key if rec.HasField("key") else None
        if key is None and rules.key_required:
            raise ProduceRejected(
                f"record {index} has no key: a compacted topic (cleanup.policy=compact) keeps "
                "the latest record of each key, so every record needs one"
            )
        value = rec.value if rec.HasField("value") else None
        size = (len(key) if key is not None else 0) + (len(value) if value is not None else 0)
        headers = []
        for h in rec.headers:
            hv = h.value if h.HasField("value") else None
            headers.append((h.key, hv))
            size += len(h.key.encode()) + (len(hv) if hv is not None else 0)
        if size > max_record_bytes:
            raise ProduceRejected(
                f"record {index} is {size} bytes, over the {max_record_bytes}-byte limit"
            )
        total += size
        if partition is not None:
            target = partition
        elif key is not None:
            target = default_partition(key, partition_count)
        else:
            if keyless is None:
                keyless = partitioner.peek(topic_id, partition_count)
            used_keyless = True
            target = keyless
        group = groups.setdefault(target, ([], [], [], []))
        group[0].append(key)
        group[1].append(value)
        group[2].append(headers)
        if rules.log_append_time:
            timestamp = now_ms
        else:
            timestamp = rec.timestamp_ms or now_ms
            if not ts_low <= timestamp <= ts_high:
                raise ProduceRejected(
                    f"record {index}: timestamp_ms {timestamp} is out of range; the topic "
                    f"accepts {ts_low}..{ts_high} (message.timestamp.before.max.ms / "
                    "after.max.ms around the server's clock): fix the producer's clock or "
                    "send 0 for server time"
                )
        group[3].append(timestamp)
    if total > max_batch_bytes:
        raise ProduceRejected(
            f"the batch is {total} bytes, over the {max_batch_bytes}-byte limit: split it"
        )
    pid, epoch, seq = producer if producer is not None else (-1, -1, -1)
    slots = []
    encoded = 0
    for target in sorted(groups):
        keys, values, headers_list, timestamps = groups[target]
        batch = encode_batch(
            keys,
            values,
            headers_list,
            timestamps,
            producer_id=pid,
            producer_epoch=epoch,
            base_sequence=seq,
        )
        encoded += len(batch)
        if encoded > max_batch_bytes:
            raise ProduceRejected(
                f"the batch encodes to over {max_batch_bytes} bytes (the limit): split it"
            )
        if len(batch) > rules.max_message_bytes:
            raise ProduceRejected(
                f"the records for partition {target} encode to {len(batch)} bytes, over the "
                f"topic's max.message.bytes {rules.max_message_bytes}: split the batch"
            )
        meta = BatchMeta(len(keys), pid, epoch, seq, min(timestamps), max(timestamps))
        slots.append(ProduceSlot(topic_id, target, [meta], [len(batch)], batch))
    if used_keyless and partition is None:
        partitioner.advance(topic_id)
    return slots


# ------------------------------------------------------------------------------------------
# generated requests

_HEADER_KEYS = ["trace", "content-type", "", "é", "ключ", "\u2603" * 3, "x" * 70]
_TIMESTAMPS = [0, 0, 1, -1, -1_000, NOW_MS, NOW_MS - 5_000, NOW_MS + 5_000, 2**61, -(2**61)]


def _blob(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, 5, 63, 64, 100, 200, 8191, 8192, 9000, 16_383, 16_384, 20_000])
    if size > 1_000 and rng.random() < 0.7:
        size = rng.randrange(0, 300)
    return rng.randbytes(size)


def random_record(rng: random.Random, keyed: float) -> pb.Record:
    rec = pb.Record(timestamp_ms=rng.choice(_TIMESTAMPS))
    if rng.random() < keyed:
        rec.key = _blob(rng) if rng.random() < 0.5 else f"user-{rng.randrange(50)}".encode()
    if rng.random() < 0.9:
        rec.value = _blob(rng)
    for _ in range(rng.choice([0, 0, 0, 1, 2, 3])):
        h = rec.headers.add(key=rng.choice(_HEADER_KEYS))
        if rng.random() < 0.7:
            h.value = rng.randbytes(rng.randrange(0, 40))
    if rng.random() < 0.1:
        rec.offset = rng.randrange(-5, 1 << 40)  # ignored on produce
    return rec


def random_case(rng: random.Random) -> dict:
    partition_count = rng.choice([1, 2, 3, 5, 7, 64])
    n = rng.choice([1, 2, 3, 10, 50, 200])
    keyed = rng.choice([0.0, 0.5, 1.0])
    records = [random_record(rng, keyed) for _ in range(n)]
    partition = rng.randrange(partition_count) if rng.random() < 0.3 else None
    producer = None
    if partition is not None and rng.random() < 0.5:
        producer = (rng.randrange(0, 1 << 40), rng.randrange(0, 32768), rng.randrange(0, 1 << 31))
    config: dict[str, str] = {}
    if rng.random() < 0.3:
        config["message.timestamp.before.max.ms"] = str(rng.choice([0, 10_000, 10**15]))
        config["message.timestamp.after.max.ms"] = str(rng.choice([0, 10_000, 10**15]))
    if rng.random() < 0.1:
        config["message.timestamp.type"] = "LogAppendTime"
    if rng.random() < 0.1:
        config["cleanup.policy"] = "compact"
    if rng.random() < 0.2:
        config["max.message.bytes"] = str(rng.choice([100, 2_000, 50_000]))
    big = 1 << 40
    return {
        "partition_count": partition_count,
        "records": records,
        "partition": partition,
        "producer": producer,
        "config": config,
        "max_record_bytes": rng.choice([big, big, 300, 10_000]),
        "max_batch_bytes": rng.choice([big, big, 5_000, 100_000]),
    }


def outcome(fn, *args) -> list[ProduceSlot] | str:
    try:
        return fn(*args)
    except ProduceRejected as exc:
        return f"refused: {exc}"


def run_both(case: dict, ours: Partitioner, theirs: Partitioner, topic_id: int = 3) -> tuple:
    data = pb.ProduceBatchRequest(topic="t", records=case["records"]).SerializeToString()
    got = outcome(
        plan_request,
        topic_id,
        case["partition_count"],
        data,
        len(case["records"]),
        case["partition"],
        ours,
        case["max_record_bytes"],
        case["max_batch_bytes"],
        case["producer"],
        False,
        case["config"],
    )
    want = outcome(
        reference_plan,
        topic_id,
        case["partition_count"],
        case["records"],
        case["partition"],
        theirs,
        case["max_record_bytes"],
        case["max_batch_bytes"],
        case["producer"],
        case["config"],
    )
    return got, want


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        produce, "time", type("Clock", (), {"time": staticmethod(lambda: NOW_MS / 1000)})
    )


@pytest.mark.parametrize("seed", range(8))
def test_generated_requests_match_the_python_encoder(seed: int, fixed_clock: None) -> None:
    """Batches (bytes, CRC included), their metadata and the partitions chosen are the
    reference's; refused requests are refused with the reference's message; the round robin
    moves the same way across a run of requests."""
    rng = random.Random(seed)
    ours, theirs = Partitioner(), Partitioner()
    accepted = refused = 0
    for _ in range(60):
        case = random_case(rng)
        got, want = run_both(case, ours, theirs)
        assert got == want
        if isinstance(want, str):
            refused += 1
        else:
            accepted += 1
        assert ours.peek(3, 1000) == theirs.peek(3, 1000)
    assert accepted > 10 and refused > 5  # both branches exercised


def test_every_refusal_matches_the_reference(fixed_clock: None) -> None:
    """One request per rule, each refused with the reference's exact message."""
    now = NOW_MS
    k = pb.Record(key=b"k", value=b"v" * 20, timestamp_ms=now)
    keyless = pb.Record(value=b"v", timestamp_ms=now)
    cases = [
        ({"records": [k, keyless], "config": {"cleanup.policy": "compact"}}, "record 1 has no key"),
        ({"records": [k, k], "max_record_bytes": 10}, "record 0 is 21 bytes, over the 10-byte"),
        (
            {
                "records": [k, pb.Record(timestamp_ms=now + 10**6)],
                "config": {"message.timestamp.after.max.ms": "1000"},
            },
            f"record 1: timestamp_ms {now + 10**6} is out of range",
        ),
        ({"records": [k] * 5, "max_batch_bytes": 100}, "the batch is 105 bytes, over the 100-byte"),
        ({"records": [k] * 5, "max_batch_bytes": 200}, "the batch encodes to over 200 bytes"),
        (
            {"records": [k] * 5, "config": {"max.message.bytes": "150"}},
            "encode to 201 bytes, over the topic's max.message.bytes 150",
        ),
        ({"records": [k], "partition": 9}, "partition 9 is out of range"),
        ({"records": [k], "producer": (1, 0, 0)}, "must name its partition"),
        ({"records": []}, "the batch is empty"),
    ]
    for overrides, expected in cases:
        case = {
            "partition_count": 1,
            "partition": None,
            "producer": None,
            "config": {},
            "max_record_bytes": 1 << 30,
            "max_batch_bytes": 1 << 30,
            **overrides,
        }
        got, want = run_both(case, Partitioner(), Partitioner())
        assert isinstance(got, str) and expected in got, (expected, got)
        assert got == want


def test_first_refusal_in_request_order_wins(fixed_clock: None) -> None:
    """A record too big before a record without a key on a compacted topic: the first one
    named is the first in the request, whichever rule it breaks."""
    records = [pb.Record(key=b"k", value=b"x" * 50), pb.Record(value=b"v")]
    case = {
        "partition_count": 2,
        "records": records,
        "partition": None,
        "producer": None,
        "config": {"cleanup.policy": "compact"},
        "max_record_bytes": 10,
        "max_batch_bytes": 1 << 30,
    }
    got, want = run_both(case, Partitioner(), Partitioner())
    assert got == want == "refused: record 0 is 51 bytes, over the 10-byte limit"


def test_a_refused_request_leaves_the_round_robin(fixed_clock: None) -> None:
    """Keyless records of a refused request do not move the round robin; an accepted one does."""
    p = Partitioner()
    data = pb.ProduceBatchRequest(records=[pb.Record(value=b"x" * 50)]).SerializeToString()
    with pytest.raises(ProduceRejected):
        plan_request(1, 4, data, 1, None, p, 10, 1 << 30)
    assert p.peek(1, 4) == 0
    (slot,) = plan_request(1, 4, data, 1, None, p, 100, 1 << 30)
    assert slot.partition == 0 and p.peek(1, 4) == 1


def test_timestamps_too_far_apart_for_one_batch_are_refused(fixed_clock: None) -> None:
    """A batch stores timestamp deltas in 64 bits; records further apart are refused with a
    message saying what to do (the Python encoder wrote an unreadable varint for them)."""
    records = [pb.Record(timestamp_ms=2**63 - 1), pb.Record(timestamp_ms=-(2**62))]
    data = pb.ProduceBatchRequest(records=records).SerializeToString()
    with pytest.raises(ProduceRejected, match="record 1: timestamp_ms .* too far from .* separate"):
        plan_request(1, 1, data, 2, 0, Partitioner(), 1 << 30, 1 << 30)


def test_large_requests_and_many_partitions(fixed_clock: None) -> None:
    """10,000 keyed records over 1,000 partitions: one batch per partition used, the reference's."""
    rng = random.Random(99)
    records = [pb.Record(key=rng.randbytes(8), value=rng.randbytes(20)) for _ in range(10_000)]
    case = {
        "partition_count": 1_000,
        "records": records,
        "partition": None,
        "producer": None,
        "config": {},
        "max_record_bytes": 1 << 30,
        "max_batch_bytes": 1 << 30,
    }
    got, want = run_both(case, Partitioner(), Partitioner())
    assert isinstance(got, list) and len(got) > 900
    assert got == want


def test_raw_request_fields() -> None:
    """RawProduceBatch reads the scalar fields (absent optional ones: None) and counts records."""
    message = pb.ProduceBatchRequest(
        topic="orders-é", records=[pb.Record(), pb.Record()], producer_epoch=4, base_sequence=9
    )
    raw = RawProduceBatch(message.SerializeToString())
    assert (raw.topic, raw.partition, raw.producer_id, raw.record_count) == (
        "orders-é",
        None,
        None,
        2,
    )
    assert (raw.producer_epoch, raw.base_sequence) == (4, 9)
    message.partition = 0
    message.producer_id = 0
    raw = RawProduceBatch(message.SerializeToString())
    assert (raw.partition, raw.producer_id) == (0, 0)
    message.partition = -3
    message.producer_id = -(2**63)
    raw = RawProduceBatch(message.SerializeToString())
    assert (raw.partition, raw.producer_id) == (-3, -(2**63))


def test_crc32c_and_murmur2_match_the_python_ones() -> None:
    """The C CRC-32C (every alignment and tail length) and murmur2 (every tail length)."""
    rng = random.Random(5)
    blob = rng.randbytes(4_096)
    for start in range(9):
        for length in [0, 1, 7, 8, 9, 15, 16, 17, 100, 1_000, 4_000]:
            part = blob[start : start + length]
            assert _grpcproduce.crc32c(part) == crc32c.crc32c(part)
    for length in range(40):
        key = rng.randbytes(length)
        assert _grpcproduce.murmur2(key) == murmur2(key)
    assert _grpcproduce.murmur2(b"\xff" * 7) == murmur2(b"\xff" * 7)


def test_transcode_refuses_partitions_outside_the_topic() -> None:
    """The C entry point checks its own arguments (a caller bug, not a client's)."""
    data = pb.ProduceBatchRequest(records=[pb.Record()]).SerializeToString()
    with pytest.raises(ValueError, match="must lie in 0..2"):
        _grpcproduce.transcode(data, 3, 3, 0, 1, 1, -1, -1, -1, False, 0, 0, 0, False, 1)
    with pytest.raises(ValueError, match="must lie in 0..-1"):
        _grpcproduce.transcode(data, 0, -1, 0, 1, 1, -1, -1, -1, False, 0, 0, 0, False, 1)


def test_server_time_is_the_clock() -> None:
    """Timestamp 0 is the server's clock when planned (no fixed clock here)."""
    before = int(time.time() * 1000)
    data = pb.ProduceBatchRequest(records=[pb.Record(value=b"v")]).SerializeToString()
    (slot,) = plan_request(1, 1, data, 1, 0, Partitioner(), 100, 1 << 20)
    after = int(time.time() * 1000)
    assert before <= slot.batches[0].min_timestamp == slot.batches[0].max_timestamp <= after


def test_crc32c_software_and_hardware_agree() -> None:
    """The table code (used where the CPU has no crc32 instruction) gives the same CRCs."""
    rng = random.Random(6)
    for length in [0, 1, 7, 8, 9, 63, 64, 65, 1_000, 70_001]:
        data = rng.randbytes(length)
        assert _grpcproduce.crc32c(data, True) == _grpcproduce.crc32c(data) == crc32c.crc32c(data)


def test_millions_of_empty_records_cost_no_memory_per_record() -> None:
    """4 million empty records (an 8 MiB request) are refused by the encoded size without
    memory per record: the high-water RSS grows far less than 4M x even 24 bytes."""
    data = b"\x1a\x00" * 4_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ProduceRejected, match="the batch encodes to over 16777216 bytes"):
        plan_request(1, 3, data, 4_000_000, None, Partitioner(), 1 << 20, 16 << 20)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 40_000
