"""The lifecycle under faults, on real stacks over SeaweedFS S3.

1. Readers (a confluent-kafka consumer and gRPC consume) read every partition of a topic from
   offset 0 to its end, over and over, while lifecycle passes at the real clock compact small
   objects, rewrite partly-live ones (a deleted topic shared their segments), enforce
   retention on another topic and delete the replaced objects once the (short) grace period
   is over: no reader ever sees an error, a record at another offset, or bytes other than the
   acknowledged ones. Retention is only on a topic nobody reads in the loop, so no reader
   legitimately falls below a moved log start; that topic is checked exactly afterwards
   (OFFSET_OUT_OF_RANGE below its new log start, the acknowledged records from it).
   The passes use the real clock and a 5 s grace period rather than a clock moved past the
   grace period: a moved clock would delete objects that reads in flight may still fetch,
   which is exactly what the grace period exists to prevent (test 2 moves the clock).
2. The lifecycle process is SIGKILLed mid-rewrite (right after its first PUT went out) and
   mid-delete (right after its first delete request went out), round after round with new
   small objects, new updates of a key-compacted topic and a newly deleted topic each round,
   through a slow S3 proxy; then one clean pass: every acknowledged record reads back cold
   at its offset (of the compacted topic: the newest of every key, and only acknowledged
   records at their offsets), and the bucket holds no object that metadata does not know.

3. The same readers through both agents of a cluster (PostgreSQL, S3) while each agent's
   lifecycle runs passes in turn: exactly one of them rewrites.

The suite runs short variants (about a minute each). The long variant:

    LIFECYCLE_FAULT_ROUNDS=30 python3 -m pytest -q tests/faults/test_lifecycle_faults.py

(`LIFECYCLE_FAULT_ROUNDS` rounds of each: produce-and-pass rounds in test 1, kill rounds in
test 2; default 4.)
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from metadata.interface import open_store
from streamhouse.client import Client, StreamHouseError
from streamhouse.kafka.messages import FetchRequest, ProduceRequest
from streamhouse.recordbatch import encode_batch
from streamhouse.testing import (
    Deliveries,
    Stack,
    kafka_call,
    log_problems,
    read_kafka_log,
    wait_until,
)
from tests.faults.lifecycle_tools import S3CountingProxy, bucket_segments, unknown_objects

REPO = pathlib.Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("LIFECYCLE_FAULT_ROUNDS", "4"))
DAY_MS = 86_400_000
OFFSET_OUT_OF_RANGE = 1
DEADLINE_S = 60.0

# Passes at the real clock with a short grace period (which must outlast every produce, read
# and store request in flight, so those are shortened too); objects count as small below
# 16 KiB and are compacted from 1 ms of age.
FAST = {
    "STREAMHOUSE_LIFECYCLE_ENABLED": "false",
    "STREAMHOUSE_LIFECYCLE_GRACE_MS": "5000",
    "STREAMHOUSE_PRODUCE_TIMEOUT_MS": "4000",
    "STREAMHOUSE_READER_MAX_WAIT_MS": "1000",
    "STREAMHOUSE_STORE_TIMEOUT_MS": "4000",
    "STREAMHOUSE_LIFECYCLE_COMPACTION_ENABLED": "true",
    "STREAMHOUSE_LIFECYCLE_COMPACTION_MIN_AGE_MS": "1",
    "STREAMHOUSE_LIFECYCLE_SMALL_OBJECT_BYTES": str(16 * 1024),
    "STREAMHOUSE_LIFECYCLE_TARGET_OBJECT_BYTES": str(256 * 1024),
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def s3_env(seaweed: Any) -> Iterator[dict[str, str]]:
    """A stack's own prefix of the session's SeaweedFS bucket."""
    env = seaweed.env()
    env["STREAMHOUSE_OBJECT_STORE"] = (
        f"s3://{seaweed.bucket}/lifecycle-faults-{uuid.uuid4().hex[:12]}"
    )
    yield env


# ------------------------------------------------------------------------------- helpers


class Acked:
    """What the test has had acknowledged: value -> (topic, partition, offset)."""

    def __init__(self) -> None:
        self.where: dict[bytes, tuple[str, int, int]] = {}
        self.key_of: dict[bytes, bytes] = {}
        self._serial = 0

    def of(self, topic: str) -> dict[bytes, tuple[int, int]]:
        return {v: (p, o) for v, (t, p, o) in self.where.items() if t == topic}

    def produce(
        self,
        address: str,
        batches: Mapping[str, Mapping[int, int]],
        value_bytes: Mapping[str, int] | None = None,
        timestamp_ms: int | None = None,
        keys: Mapping[str, int] | None = None,
    ) -> None:
        """One Kafka Produce request (v9, acks=all) carrying, for each topic and partition, one
        batch of that many records (so they land in one segment); every answer must be OK.
        A topic in `keys` gets keys ``k0`` .. ``k<n-1>`` (record serial modulo n), recorded in
        `self.key_of`; the others none."""
        stamp = now_ms() if timestamp_ms is None else timestamp_ms
        sent: dict[tuple[str, int], list[bytes]] = {}
        topic_data = []
        for topic, partitions in batches.items():
            size = (value_bytes or {}).get(topic, 40)
            data = []
            key_count = (keys or {}).get(topic)
            for partition, count in partitions.items():
                values: list[bytes] = []
                record_keys: list[bytes | None] = []
                for _ in range(count):
                    self._serial += 1
                    head = f"{topic}/{partition}/{self._serial}/".encode()
                    # Incompressible, so object sizes are what the test means them to be.
                    values.append(head + random.randbytes(max(0, size - len(head))))
                    key = None if key_count is None else f"k{self._serial % key_count}".encode()
                    record_keys.append(key)
                    if key is not None:
                        self.key_of[values[-1]] = key
                sent[(topic, partition)] = values
                batch = encode_batch(record_keys, list(values), [[]] * count, [stamp] * count)
                data.append(ProduceRequest.PartitionProduceData(index=partition, records=batch))
            topic_data.append(ProduceRequest.TopicProduceData(name=topic, partition_data=data))
        request = ProduceRequest(acks=-1, timeout_ms=10_000, topic_data=topic_data)
        body = kafka_call(address, 0, 9, request, timeout=30)
        for topic_answer in body.responses:
            for part in topic_answer.partition_responses:
                assert part.error_code == 0, (topic_answer.name, part)
                values = sent[(topic_answer.name, part.index)]
                for i, value in enumerate(values):
                    self.where[value] = (topic_answer.name, part.index, part.base_offset + i)


def lifecycle_pass(env: Mapping[str, str], at_ms: int | None = None) -> dict[str, Any]:
    """One `python3 -m lifecycle --once` with these settings; its JSON report."""
    command = [sys.executable, "-m", "lifecycle", "--once"]
    if at_ms is not None:
        command += ["--now-ms", str(at_ms)]
    done = subprocess.run(
        command, env=dict(env), cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"lifecycle pass failed ({done.returncode}): {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def compaction(report: Mapping[str, Any], field: str) -> int:
    step = report.get("compaction")
    assert isinstance(step, dict), f"the pass report has no compaction step: {report}"
    return int(step[field])


def fetch_error(address: str, topic: str, offset: int) -> tuple[int, int]:
    """(error code, log start offset) of a raw Kafka Fetch (v11) of partition 0 at `offset`."""
    request = FetchRequest(
        max_wait_ms=0,
        min_bytes=1,
        max_bytes=1 << 20,
        topics=[
            FetchRequest.FetchTopic(
                topic=topic,
                partitions=[
                    FetchRequest.FetchPartition(
                        partition=0, fetch_offset=offset, partition_max_bytes=1 << 20
                    )
                ],
            )
        ],
    )
    part = kafka_call(address, 1, 11, request).responses[0].partitions[0]
    return part.error_code, part.log_start_offset


def read_compacted(bootstrap: str, topic: str, partitions: int) -> dict[int, list[Any]]:
    """Every record of a key-compacted topic, by partition: (offset, key, value), from offset
    0 to the high watermark (whose last offset is always kept: it is the newest of its key)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "compacted", "enable.auto.commit": False}
    )
    out: dict[int, list[Any]] = {p: [] for p in range(partitions)}
    try:
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
            for p in range(partitions)
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = time.monotonic() + DEADLINE_S
        while any(ends[p] and (not out[p] or out[p][-1][0] < ends[p] - 1) for p in ends):
            assert time.monotonic() < deadline, f"{topic} not read to {ends} in {DEADLINE_S}s"
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                assert message.error() is None, message.error()
                out[message.partition()].append((message.offset(), message.key(), message.value()))
    finally:
        consumer.close()
    return out


class LoopReader(threading.Thread):
    """Reads every partition of `topic` from offset 0 to its high watermark (as of the start
    of each loop), over and over until stopped. Records each (partition, offset, value) seen
    once per loop position, every problem (an error, an offset out of sequence), and how
    many loops were complete."""

    def __init__(self, name: str, address: str, topic: str, partitions: int) -> None:
        super().__init__(name=name, daemon=True)
        self.address = address
        self.topic = topic
        self.partitions = partitions
        self.stop = threading.Event()
        self.seen: dict[tuple[int, int], bytes] = {}
        self.problems: list[str] = []
        self.loops = 0  # complete loops
        self.records_read = 0

    def note(self, partition: int, offset: int, value: bytes, expected: int) -> None:
        if offset != expected:
            self.problems.append(f"{self.name}: [{partition}] offset {offset}, {expected} due")
        old = self.seen.setdefault((partition, offset), value)
        if old != value:
            self.problems.append(f"{self.name}: [{partition}]@{offset} {value!r} != {old!r}")
        self.records_read += 1

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.one_loop()
                self.loops += 1
        except Exception as exc:  # every failure of a read is a finding, not a crash
            self.problems.append(f"{self.name}: {type(exc).__name__}: {exc}")

    def one_loop(self) -> None:
        raise NotImplementedError


class KafkaLoopReader(LoopReader):
    def one_loop(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.address,
                "group.id": "lifecycle-loop",
                "enable.auto.commit": False,
                "max.partition.fetch.bytes": 16
                * 1024,  # many fetches: more chances to meet a switch
            }
        )
        try:
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), 10)[1]
                for p in range(self.partitions)
            }
            next_offset = dict.fromkeys(ends, 0)
            consumer.assign(
                [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(self.partitions)]
            )
            deadline = time.monotonic() + DEADLINE_S
            while any(next_offset[p] < ends[p] for p in ends):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"loop not done in {DEADLINE_S}s: {next_offset} of {ends}")
                for message in consumer.consume(num_messages=500, timeout=0.5):
                    if message.error() is not None:
                        self.problems.append(f"{self.name}: {message.error()}")
                        continue
                    p = message.partition()
                    if message.offset() >= ends[p]:
                        continue  # past this loop's end (produced since it started)
                    self.note(p, message.offset(), message.value(), next_offset[p])
                    next_offset[p] = message.offset() + 1
        finally:
            consumer.close()


class GrpcLoopReader(LoopReader):
    def one_loop(self) -> None:
        with Client(self.address) as client:
            for p in range(self.partitions):
                offset, end = 0, None
                while end is None or offset < end:
                    try:
                        records, next_offset, high, _ = client.consume(
                            self.topic, p, offset, max_bytes=32 * 1024
                        )
                    except StreamHouseError as exc:
                        self.problems.append(f"{self.name}: [{p}]@{offset}: {exc}")
                        return
                    end = high if end is None else end
                    if not records and offset < end:
                        self.problems.append(f"{self.name}: [{p}]@{offset}: nothing below {end}")
                        return
                    for record in records:
                        if record.offset >= end:
                            break
                        self.note(p, record.offset, record.value or b"", offset)
                        offset = record.offset + 1


def start_readers(stack: Stack, topic: str, partitions: int) -> list[LoopReader]:
    readers = [
        KafkaLoopReader("kafka-reader", stack.kafka_address, topic, partitions),
        GrpcLoopReader("grpc-reader", stack.grpc_address, topic, partitions),
    ]
    for reader in readers:
        reader.start()
    return readers


# --------------------------------------------------------------------------------- tests


def test_readers_see_only_acknowledged_bytes_while_passes_compact_rewrite_and_delete(
    tmp_path: pathlib.Path, s3_env: dict[str, str]
) -> None:
    with Stack(tmp_path / "data", env={**s3_env, **FAST}) as stack:
        address = stack.kafka_address
        with Client(stack.grpc_address) as client:
            client.create_topic("steady", 3, {"retention.ms": "-1"})
            client.create_topic("doomed", 3, {"retention.ms": "-1"})
            client.create_topic("retained", 1, {"retention.ms": str(DAY_MS)})
        acked = Acked()
        three = {0: 5, 1: 5, 2: 5}
        # Small objects of the read topic alone; objects it shares with a topic about to be
        # deleted, whose records are most of their bytes (partly live once it is gone).
        for _ in range(20):
            acked.produce(address, {"steady": three})
        for _ in range(10):
            acked.produce(address, {"steady": three, "doomed": three}, {"doomed": 2000})
        # Retention: three batches two days old, then two current ones.
        for _ in range(3):
            acked.produce(address, {"retained": {0: 5}}, timestamp_ms=now_ms() - 2 * DAY_MS)
        for _ in range(2):
            acked.produce(address, {"retained": {0: 5}})
        with Client(stack.grpc_address) as client:
            client.delete_topic("doomed")

        readers = start_readers(stack, "steady", 3)
        try:
            wait_until(
                lambda: all(r.loops >= 1 or not r.is_alive() for r in readers),
                60,
                "a first read loop",
            )
            assert all(r.is_alive() for r in readers), [r.problems[:5] for r in readers]
            loops_before = [r.loops for r in readers]
            reports = []
            for _ in range(ROUNDS):
                reports.append(lifecycle_pass(stack.env))
                for _ in range(5):
                    acked.produce(address, {"steady": three})
            # Passes until the replaced objects outlived the grace period and are deleted,
            # while the readers keep reading.
            deadline = time.monotonic() + 60
            while sum(r["dead_objects_deleted"] for r in reports) == 0 or any(
                r.loops < n + 2 for r, n in zip(readers, loops_before, strict=True)
            ):
                assert time.monotonic() < deadline, f"no deletes or no read loops: {reports}"
                reports.append(lifecycle_pass(stack.env))
        finally:
            for reader in readers:
                reader.stop.set()
            for reader in readers:
                reader.join(DEADLINE_S + 10)
        assert not any(r.is_alive() for r in readers), "a reader did not finish its loop"

        # What the passes did, in total (shown with -s).
        totals = {
            "passes": len(reports),
            "read loops": [r.loops for r in readers],
            "records read": [r.records_read for r in readers],
            **{
                f: sum(compaction(r, f) for r in reports)
                for f in ("small_objects", "partly_live_objects", "objects_replaced")
            },
            **{f: sum(r[f] for r in reports) for f in ("dead_objects_deleted", "partitions_moved")},
        }
        print(f"lifecycle under readers: {totals}")
        assert sum(compaction(r, "small_objects") for r in reports) > 0, reports
        assert sum(compaction(r, "partly_live_objects") for r in reports) > 0, reports
        assert sum(compaction(r, "objects_replaced") for r in reports) > 0, reports
        assert sum(r["dead_objects_deleted"] for r in reports) > 0, reports
        assert sum(r["partitions_moved"] for r in reports) == 1, reports

        # Every read was right: no error, every record at its acknowledged offset.
        steady = acked.of("steady")
        for reader in readers:
            assert reader.problems == [], reader.problems[:10]
            assert reader.records_read > len(steady), f"{reader.name} read too little"
            wrong = [
                (pv, steady.get(value))
                for pv, value in reader.seen.items()
                if steady.get(value) != pv
            ]
            assert wrong == [], f"{reader.name}: records not where acknowledged: {wrong[:5]}"

        # Retention moved the other topic's log start by exactly its three old batches.
        assert fetch_error(address, "retained", 0) == (OFFSET_OUT_OF_RANGE, 15)
        assert fetch_error(address, "retained", 14)[0] == OFFSET_OUT_OF_RANGE
        with Client(stack.grpc_address) as client:
            records, _, high, start = client.consume("retained", 0, 15)
        assert (start, high) == (15, 25)
        retained = acked.of("retained")
        assert sorted((r.offset, r.value) for r in records) == sorted(
            (o, v) for v, (_, o) in retained.items() if o >= 15
        )

        # Cold, the whole topic once more.
        stack.restart()
        log = read_kafka_log(stack.kafka_address, "steady", 3)
        assert log_problems(log, steady) == []
        assert sum(len(records) for records in log.values()) == len(steady)


def test_kill_9_mid_rewrite_and_mid_delete_then_one_clean_pass(
    tmp_path: pathlib.Path, s3_env: dict[str, str], seaweed: Any
) -> None:
    # The passes go through their own slow proxy: a kill can be timed on their requests.
    with S3CountingProxy(seaweed.port) as proxy, Stack(tmp_path / "data", env=s3_env) as stack:
        proxy.delay_s = 0.02
        address = stack.kafka_address
        pass_env = {
            **stack.env,
            "STREAMHOUSE_LIFECYCLE_COMPACTION_ENABLED": "true",
            # Objects of a round (~1.3 KB each) are small; a group is about three of them, so a
            # pass rewrites several groups, one PUT and one switch each.
            "STREAMHOUSE_LIFECYCLE_SMALL_OBJECT_BYTES": "2048",
            "STREAMHOUSE_LIFECYCLE_TARGET_OBJECT_BYTES": "4096",
            "AWS_ENDPOINT_URL": proxy.endpoint,
            "STREAMHOUSE_LIFECYCLE_DELETES_PER_SECOND": "4",
            "STREAMHOUSE_LIFECYCLE_DELETE_CONCURRENCY": "1",
        }
        grace = stack.settings.lifecycle_grace_ms
        with Client(stack.grpc_address) as client:
            client.create_topic("kept", 3, {"retention.ms": "-1"})
            client.create_topic("keyed", 2, {"cleanup.policy": "compact"})
        acked = Acked()
        rng = random.Random(os.environ.get("LIFECYCLE_FAULT_SEED", "8"))
        kills = {"rewrite": 0, "delete": 0}
        history: list[tuple[str, int | None, dict[str, int]]] = []
        for round_ in range(ROUNDS * 2):
            doomed = f"doomed-{round_}"
            with Client(stack.grpc_address) as client:
                client.create_topic(doomed, 2, {"retention.ms": "-1"})
            for _ in range(8):
                acked.produce(
                    address,
                    {"kept": {0: 4, 1: 4, 2: 4}, doomed: {0: 3, 1: 3}, "keyed": {0: 4, 1: 4}},
                    keys={"keyed": 5},
                )
            with Client(stack.grpc_address) as client:
                client.delete_topic(doomed)
            # Past the grace period of everything dead so far: the pass rewrites, then
            # deletes. Killed right after its first PUT (mid-rewrite: the new object may be
            # uploaded but not switched in) or delete request (mid-delete).
            what = "rewrite" if round_ % 2 == 0 else "delete"
            triggers = ("PUT",) if what == "rewrite" else ("POST", "DELETE")
            at = now_ms() + grace + 60_000
            proxy.reset()
            proc = subprocess.Popen(
                [sys.executable, "-m", "lifecycle", "--once", "--now-ms", str(at)],
                env=pass_env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                fired = _when(
                    lambda triggers=triggers, proc=proc: (
                        any(proxy.counts().get(t, 0) for t in triggers) or proc.poll() is not None
                    ),
                    60,
                )
                assert fired, f"round {round_}: the pass made no {triggers} in 60 s"
                # The fault: a kill at a random moment within about three slowed requests
                # after the first such request of the pass went out (a PUT: still in flight,
                # done but not switched in, switched; a delete: one chunk gone or not).
                time.sleep(rng.uniform(0, 0.06))
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                proc.wait(30)
            if proc.returncode == -signal.SIGKILL:
                kills[what] += 1
            history.append((what, proc.returncode, proxy.counts()))
        print(f"kill rounds (what, exit, the pass's requests): {history}")
        assert kills == {"rewrite": ROUNDS, "delete": ROUNDS}, history

        proxy.delay_s = 0
        clean_env = {**pass_env, "STREAMHOUSE_LIFECYCLE_DELETES_PER_SECOND": "1000"}
        report = lifecycle_pass(clean_env, now_ms() + grace + 60_000)
        print(f"clean pass: {report}")
        assert compaction(report, "switches_refused") == 0, report
        # The kills left work behind (the last one stopped a pass mid-delete).
        assert report["dead_objects_deleted"] + report["orphans_deleted"] > 0, report
        objects = set(bucket_segments(stack.env, stack.settings.object_store_url))
        assert objects, "the kept topic's objects must remain"
        assert unknown_objects(stack.settings.metadata_target, objects) == set()
        meta = open_store(stack.settings.metadata_target)
        try:
            dead = meta.dead_segments(now_ms() + 100 * DAY_MS, 100_000)
        finally:
            meta.close()
        assert dead == [], f"dead segment rows left after a clean pass: {dead[:5]}"

        stack.restart()  # cold reads only
        kept = acked.of("kept")
        log = read_kafka_log(stack.kafka_address, "kept", 3)
        assert log_problems(log, kept) == []
        assert sum(len(records) for records in log.values()) == len(kept)

        # The key-compacted topic: every record left is an acknowledged one at its offset, the
        # newest record of every key is there, and compaction did remove older ones.
        keyed = acked.of("keyed")
        newest: dict[tuple[int, bytes], tuple[int, bytes]] = {}
        for value, (p, offset) in keyed.items():
            key = acked.key_of[value]
            if offset > newest.get((p, key), (-1, b""))[0]:
                newest[(p, key)] = (offset, value)
        compacted = read_compacted(stack.kafka_address, "keyed", 2)
        read = [(p, o, k, v) for p, records in compacted.items() for o, k, v in records]
        wrong = [(p, o, v[:20]) for p, o, k, v in read if keyed.get(v) != (p, o)]
        assert wrong == [], f"records not where acknowledged: {wrong[:5]}"
        assert all(acked.key_of[v] == k for _, _, k, v in read), "a record with another key"
        for p, records in compacted.items():
            offsets = [o for o, _, _ in records]
            assert offsets == sorted(set(offsets)), f"partition {p}: offsets out of order"
        present = {(p, o) for p, o, _, _ in read}
        lost = [pk for pk, (o, _) in newest.items() if (pk[0], o) not in present]
        assert lost == [], f"the newest record of keys {lost[:5]} is gone"
        assert len(newest) <= len(read) < len(keyed), (len(newest), len(read), len(keyed))


def _when(predicate: Callable[[], bool], timeout: float) -> bool:
    """Polls `predicate` every millisecond until it holds (True) or `timeout` passes (False):
    the kill must follow the request it is timed on closely."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.001)
    return False


def test_readers_on_both_agents_while_the_cluster_rewriter_compacts_and_deletes(
    make_cluster: Any,
) -> None:
    """Two agents on PostgreSQL and S3, a pass of each agent's lifecycle in turn: only one of
    them rewrites, and readers through both agents see only acknowledged bytes at their
    offsets while it compacts and the replaced objects are deleted."""
    cluster = make_cluster(2, env=FAST)
    with Client(cluster[0].grpc_address) as client:
        client.create_topic("steady", 3, {"retention.ms": "-1"})
    deliveries = Deliveries()
    producer = Producer({"bootstrap.servers": cluster.kafka_bootstrap, "linger.ms": 2})

    def produce_round(n: int) -> None:
        for _ in range(n):  # a flush each: one small object per partition leader
            for p in range(3):
                for _ in range(5):
                    value = f"steady/{p}/{uuid.uuid4().hex}".encode()
                    producer.produce("steady", value=value, partition=p, on_delivery=deliveries)
            assert producer.flush(DEADLINE_S) == 0
        assert deliveries.failed == [], deliveries.failed[:5]

    produce_round(20)
    readers = [
        KafkaLoopReader("kafka-reader", cluster.kafka_bootstrap, "steady", 3),
        GrpcLoopReader("grpc-reader-0", cluster[0].grpc_address, "steady", 3),
        GrpcLoopReader("grpc-reader-1", cluster[1].grpc_address, "steady", 3),
    ]
    for reader in readers:
        reader.start()
    reports: list[tuple[int, dict[str, Any]]] = []
    try:
        wait_until(
            lambda: all(r.loops >= 1 or not r.is_alive() for r in readers), 60, "a first loop"
        )
        assert all(r.is_alive() for r in readers), [r.problems[:5] for r in readers]
        loops_before = [r.loops for r in readers]
        deadline = time.monotonic() + 90
        turn = 0
        while (
            turn < 2 * ROUNDS
            or sum(r["dead_objects_deleted"] for _, r in reports) == 0
            or any(r.loops < n + 2 for r, n in zip(readers, loops_before, strict=True))
        ):
            assert time.monotonic() < deadline, f"no deletes or no read loops: {reports}"
            agent = turn % 2
            reports.append((agent, lifecycle_pass(cluster[agent].env)))
            if turn < 2 * ROUNDS:
                produce_round(3)
            turn += 1
    finally:
        producer.flush(DEADLINE_S)
        producer.close()
        for reader in readers:
            reader.stop.set()
        for reader in readers:
            reader.join(DEADLINE_S + 10)
    assert not any(r.is_alive() for r in readers), "a reader did not finish its loop"

    rewriters = {agent for agent, r in reports if r["rewriter"]}
    print(
        f"cluster: {len(reports)} passes, rewriters {rewriters}, loops "
        f"{[r.loops for r in readers]}, replaced "
        f"{sum(compaction(r, 'objects_replaced') for a, r in reports if a in rewriters)}, "
        f"deleted {sum(r['dead_objects_deleted'] for _, r in reports)}"
    )
    assert len(rewriters) == 1, [(a, r["rewriter"], r["rewriter_reason"]) for a, r in reports]
    assert all(r["compaction"] is None for agent, r in reports if agent not in rewriters)
    assert sum(compaction(r, "objects_replaced") for a, r in reports if a in rewriters) > 0
    assert sum(r["dead_objects_deleted"] for _, r in reports) > 0, reports
    acked = deliveries.acked
    for reader in readers:
        assert reader.problems == [], reader.problems[:10]
        wrong = [(pv, acked.get(v)) for pv, v in reader.seen.items() if acked.get(v) != pv]
        assert wrong == [], f"{reader.name}: records not where acknowledged: {wrong[:5]}"
    log = read_kafka_log(cluster.kafka_bootstrap, "steady", 3)
    assert log_problems(log, acked) == []
