"""Lifecycle benchmarks on real stacks.

``hour`` (issue 8's numbers): a topic written at 1,000 records/s for one simulated hour, as a
low produce rate writes it: one small object per flush interval. Measures objects per GB
and the GETs of a full cold read of one partition, before and after compaction (passes
until one finds nothing left), and the passes' throughput (MB/s of input objects) and CPU
seconds.

    python3 bench/lifecycle_bench.py hour                 # the full hour: 3.6 M records
    python3 bench/lifecycle_bench.py hour --minutes 2     # a quick look

How the hour is reproduced (the stack runs in compressed time, the objects are the same):
at the default ``flush_interval_ms`` (50 ms) a topic receiving 1,000 records/s gets one
segment object per flush, 72,000 an hour, each holding the 50 records of its 50 ms. The bench
makes the segmenter seal on size instead of time: records are 200-byte JSON values with
timestamps 1 ms apart (the simulated clock); each Kafka Produce request carries one batch of
10 records for each of 5 partitions (50 records, what one flush holds); every batch then has
the same length L, and ``max_segment_bytes`` is set to 4.5 L with a flush interval of 10 s,
so a segment seals after exactly 5 batches whatever the interleaving: 72,000 objects of
50 records for the hour. (At the real rate, with a 5 ms linger, a partition's block would
hold 5-10 batches of 1-2 records each: 61 B of batch header per batch more, objects ~15-25%
larger before compression; the object and GET counts are the same.) The produce runs as
fast as the stack commits, pipelined on one connection.

GETs are counted on the wire by an HTTP proxy between the stack and SeaweedFS
(tests/faults/lifecycle_tools.py), after a restart of the stack (an empty reader cache),
reading one partition from offset 0 to its end with a confluent-kafka consumer. A
compaction pass is ``python3 -m lifecycle --once --now-ms <now + compaction age + 1 min>``
with compaction on and an unthrottled rewrite budget (``--rewrite-rate``): past
``lifecycle_compaction_min_age_ms`` but short of the grace period (so it deletes nothing);
passes run until one replaces nothing (a step stops after ``STEP_SECONDS``); their CPU is
each child's own rusage (os.wait4). The passes talk to SeaweedFS directly (the
counting proxy is Python and would slow them) unless ``--count-pass-requests``. A pass
past the grace period then deletes the replaced objects; "after" is what the bucket then
holds. The cold reads go through the proxy, so their seconds include its overhead; their GET
counts are exact.

``keys``: one key-compaction pass (``cleanup.policy=compact``) over ``--records`` 200-byte
records spread over ``--keys`` keys (100 updates per key by default), produced at full speed
(objects as the stack's flushes make them); small-object compaction is kept out of the pass
(no object counts as small or partly live), so its time is key compaction's. MB/s of input
is the stored bytes of the topic per second of the pass (straight to SeaweedFS unless
``--count-pass-requests``).

    python3 bench/lifecycle_bench.py keys --records 1000000 --keys 10000

``deletes``: how fast one lifecycle pass reclaims a deleted topic, and how well it keeps to
its budget. Commits N one-block segments of a topic into a fresh SQLite metadata store (or
PostgreSQL with --metadata URL), PUTs their objects into a local folder (or S3 with
--object-store and the usual AWS_* variables), deletes the topic, and times
`LifecyclePass.run` at a clock past the grace period: objects deleted per second, and the
effective rate against `lifecycle_deletes_per_second`.

    python3 bench/lifecycle_bench.py deletes --segments 2000 --rate 100000 --concurrency 4
    python3 bench/lifecycle_bench.py deletes --segments 1000 --rate 200 --concurrency 4

On the 2-core development machine under other load, local folder and SQLite: 3,300-10,400
objects/s unthrottled (the folder's unlinks and directory fsyncs dominate; metadata takes
~2 ms per 1,000 forgotten), and 194-217 objects/s with the 200/s budget.

Results: bench/LIFECYCLE_RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import pathlib
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `python3 bench/lifecycle_bench.py` from anywhere

from lifecycle.runner import LifecyclePass  # noqa: E402
from metadata import BatchRef, CommitBlock  # noqa: E402
from metadata.async_store import AsyncMetadata  # noqa: E402
from metadata.interface import open_store  # noqa: E402
from streamhouse import objectstore  # noqa: E402
from streamhouse.config import load_settings  # noqa: E402

# ------------------------------------------------------------------------------ deletes


async def bench_deletes(args: argparse.Namespace, workdir: pathlib.Path) -> None:
    env = {
        "STREAMHOUSE_DATA_DIR": str(workdir),
        "STREAMHOUSE_LIFECYCLE_DELETES_PER_SECOND": str(args.rate),
        "STREAMHOUSE_LIFECYCLE_DELETE_CONCURRENCY": str(args.concurrency),
    }
    if args.metadata:
        env["STREAMHOUSE_METADATA"] = args.metadata
    if args.object_store:
        env["STREAMHOUSE_OBJECT_STORE"] = args.object_store
    settings = load_settings(env)
    store = objectstore.open_object_store(settings.object_store_url)
    meta = open_store(settings.metadata_target)
    topic = meta.create_topic(f"bench-{time.time_ns()}", 1)
    put_started = time.monotonic()
    sem = asyncio.Semaphore(16)

    async def put(i: int) -> str:
        key = f"segments/{time.time_ns():020d}-bench{i:06d}.seg"
        async with sem:
            await objectstore.put(store, key, b"b" * args.object_bytes)
        return key

    keys = await asyncio.gather(*(put(i) for i in range(args.segments)))
    put_s = time.monotonic() - put_started
    for key in keys:
        block = CommitBlock(topic.topic_id, 0, 0, args.object_bytes, 0, [BatchRef(1)])
        await asyncio.to_thread(meta.commit_segment, key, args.object_bytes, [block])
    await asyncio.to_thread(meta.delete_topic, topic.name)
    await asyncio.to_thread(meta.close)

    async_meta = await AsyncMetadata.open(settings.metadata_target)
    try:
        runner = LifecyclePass(settings, async_meta, store)
        started = time.monotonic()
        report = await runner.run(time.time_ns() // 1_000_000 + settings.lifecycle_grace_ms + 1)
        took = time.monotonic() - started
    finally:
        await async_meta.close()
    print(
        f"{args.segments} segments of {args.object_bytes} B "
        f"({settings.object_store_url.split('://')[0]}, "
        f"{'postgresql' if args.metadata else 'sqlite'}): PUT {args.segments / put_s:.0f}/s; "
        f"pass {took:.2f} s, {report.dead_objects_deleted} deleted + forgotten = "
        f"{report.dead_objects_deleted / took:.0f}/s "
        f"(budget {args.rate}/s, {args.concurrency} concurrent requests)"
    )


# ------------------------------------------------------------------------------ hour

RECORD_BYTES = 200
PARTITIONS = 5
RECORDS_PER_BATCH = 10  # per partition and flush: 5 x 10 = the 50 records of one 50 ms flush
RECORDS_PER_SECOND = 1000
WINDOW = 32  # Produce requests in flight on the connection (the stack allows 64)
HOUR_MS = 3_600_000
DEADLINE_S = 120.0


def record_value(i: int, ts: int) -> bytes:
    """Record `i` of the hour: a 200-byte JSON event. Its ids are pseudo-random hex, so a
    block of them compresses about as well as real events do (~2x), not like padding."""
    ids = hashlib.blake2b(i.to_bytes(8, "big"), digest_size=64).hexdigest()
    head = (
        f'{{"id":{i},"ts":{ts},"user":"u{i * 7919 % 100_000:05d}","event":"page_view",'
        f'"page":"/catalog/item/{i * 104_729 % 50_000}","session":"{ids[:32]}","trace":"'
    )
    tail = '"}'
    fill = ids[32 : 32 + RECORD_BYTES - len(head) - len(tail)]
    return (head + fill + tail).encode()


def hour_batch(partition: int, flush: int, start_ts: int) -> bytes:
    """The batch of `partition` in flush number `flush`: records flush*50 + partition*10 ..."""
    from streamhouse.recordbatch import encode_batch

    first = flush * PARTITIONS * RECORDS_PER_BATCH + partition * RECORDS_PER_BATCH
    stamps = [start_ts + i * 1000 // RECORDS_PER_SECOND for i in range(first, first + 10)]
    values = [record_value(i, ts) for i, ts in zip(range(first, first + 10), stamps, strict=True)]
    return encode_batch([None] * len(values), list(values), [[] for _ in values], stamps)


async def produce_flushes(
    address: str,
    topic: str,
    flushes: int,
    batch: Callable[[int, int], bytes],
    records_per_batch: int = RECORDS_PER_BATCH,
) -> None:
    """Sends `flushes` Produce requests (v9, acks=all) pipelined on one connection, each
    `batch(partition, flush)` for every partition; checks every answer (no error, the base
    offset a flush must get)."""
    from streamhouse.kafka.framing import decode_response, encode_request
    from streamhouse.kafka.messages import ProduceRequest, RequestHeader

    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    window = asyncio.Semaphore(WINDOW)
    bases: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}

    async def send() -> None:
        for flush in range(flushes):
            await window.acquire()
            request = ProduceRequest(
                acks=-1,
                timeout_ms=30_000,
                topic_data=[
                    ProduceRequest.TopicProduceData(
                        name=topic,
                        partition_data=[
                            ProduceRequest.PartitionProduceData(index=p, records=batch(p, flush))
                            for p in range(PARTITIONS)
                        ],
                    )
                ],
            )
            header = RequestHeader(
                request_api_key=0,
                request_api_version=9,
                correlation_id=flush,
                client_id="lifecycle-bench",
            )
            writer.write(encode_request(header, request))
            await writer.drain()

    async def receive() -> None:
        for flush in range(flushes):
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            head, body = decode_response(await reader.readexactly(size), 0, 9)
            window.release()
            if head.correlation_id != flush:
                raise RuntimeError(f"answer {head.correlation_id} where {flush} was due")
            for part in body.responses[0].partition_responses:
                if part.error_code != 0:
                    raise RuntimeError(
                        f"flush {flush} partition {part.index}: error {part.error_code}"
                    )
                bases[part.index].append(part.base_offset)
            if flush % 5000 == 4999:
                print(f"  {flush + 1} flushes acknowledged", flush=True)

    try:
        await asyncio.gather(send(), receive())
    finally:
        writer.close()
    expected = [f * records_per_batch for f in range(flushes)]
    for p, got in bases.items():
        if sorted(got) != expected:
            raise RuntimeError(f"partition {p}: base offsets are not 0, 10, 20, ...")


def cold_read(bootstrap: str, topic: str, partition: int, expected: int) -> float:
    """Reads `partition` from offset 0 to `expected` (confluent-kafka); checks every offset
    is there once, in order; returns the seconds it took."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "lifecycle-bench",
            "enable.auto.commit": False,
            "fetch.max.bytes": 8 * 1024 * 1024,
        }
    )
    started = time.monotonic()
    next_offset = 0
    try:
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 1800
        while next_offset < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"read {next_offset} of {expected} records in 30 min")
            for message in consumer.consume(num_messages=10_000, timeout=1):
                if message.error() is not None:
                    raise RuntimeError(f"reading {topic}[{partition}]: {message.error()}")
                if message.offset() != next_offset:
                    raise RuntimeError(f"offset {message.offset()} where {next_offset} was due")
                next_offset += 1
    finally:
        consumer.close()
    return time.monotonic() - started


def block_count(metadata_target: str, topic_id: int, partition: int) -> int:
    store = open_store(metadata_target)
    try:
        count, offset = 0, 0
        while True:
            blocks = store.find_blocks(topic_id, partition, offset, 10_000)
            if not blocks:
                return count
            count += len(blocks)
            offset = blocks[-1].end_offset
    finally:
        store.close()


def timed_pass(env: dict[str, str], now_ms: int) -> tuple[dict[str, Any], float, float]:
    """One `python3 -m lifecycle --once --now-ms` child: (report, wall s, CPU s of the child)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lifecycle", "--once", "--now-ms", str(now_ms)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"lifecycle pass failed ({proc.returncode}): {err.decode()[-2000:]}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    return report, wall, usage.ru_utime + usage.ru_stime


class Snapshot:
    """What the bucket holds and what one partition's cold read costs."""

    def __init__(self, objects: dict[str, int], blocks: int, gets: dict[str, int], read_s: float):
        self.objects = objects
        self.blocks = blocks
        self.gets = gets
        self.read_s = read_s

    def row(self, label: str) -> str:
        n, size = len(self.objects), sum(self.objects.values())
        return (
            f"| {label} | {n:,} | {size / 1e6:,.1f} | {n / (size / 1e9):,.1f} | "
            f"{size / max(n, 1) / 1e3:,.1f} | {self.blocks:,} | {self.gets.get('GET', 0):,} | "
            f"{self.read_s:.1f} |"
        )


def snapshot(stack: Any, proxy: Any, topic: str, topic_id: int, records: int) -> Snapshot:
    from tests.faults.lifecycle_tools import bucket_segments

    objects = bucket_segments(stack.env, stack.settings.object_store_url)
    blocks = block_count(stack.settings.metadata_target, topic_id, 0)
    stack.restart()  # an empty reader cache: every block is read from the object store
    proxy.reset()
    read_s = cold_read(stack.kafka_address, topic, 0, records)
    return Snapshot(objects, blocks, proxy.reset(), read_s)


def bench_hour(args: argparse.Namespace, workdir: pathlib.Path) -> None:
    from streamhouse.client import Client
    from streamhouse.testing import Stack
    from tests.faults.lifecycle_tools import S3CountingProxy, bucket_segments
    from tests.faults.nemesis.servers import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer

    flushes = args.minutes * 60_000 // 50
    records_per_partition = flushes * RECORDS_PER_BATCH
    batch_len = len(hour_batch(0, 0, 0))
    seaweed = SeaweedServer(workdir / "seaweed")
    seaweed.start()
    proxy = S3CountingProxy(seaweed.port).start()
    env = {
        "STREAMHOUSE_OBJECT_STORE": f"s3://{BUCKET}/hour-{uuid.uuid4().hex[:8]}",
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "STREAMHOUSE_FLUSH_INTERVAL_MS": "10000",
        "STREAMHOUSE_MAX_SEGMENT_BYTES": str(batch_len * PARTITIONS - batch_len // 2),
        "STREAMHOUSE_LIFECYCLE_ENABLED": "false",
        "STREAMHOUSE_LOG_LEVEL": "WARNING",
    }
    topic = "hour"
    lines: list[str] = []
    try:
        with Stack(workdir / "stack", env=env) as stack:
            with Client(stack.grpc_address) as client:
                created = client.create_topic(topic, PARTITIONS, {"retention.ms": "-1"})
            meta = open_store(stack.settings.metadata_target)
            topic_id = meta.get_topic(topic).topic_id
            meta.close()
            print(f"producing {flushes:,} flushes of {PARTITIONS} x {RECORDS_PER_BATCH} records")
            start_ts = time.time_ns() // 1_000_000 - args.minutes * 60_000
            started = time.monotonic()
            asyncio.run(
                produce_flushes(
                    stack.kafka_address,
                    topic,
                    flushes,
                    lambda p, flush: hour_batch(p, flush, start_ts),
                )
            )
            produce_s = time.monotonic() - started
            del created
            objects = bucket_segments(stack.env, stack.settings.object_store_url)
            if len(objects) != flushes:
                raise RuntimeError(f"{len(objects):,} objects where {flushes:,} flushes were made")
            print(f"produced in {produce_s:.0f} s; {len(objects):,} objects; cold read ...")
            before = snapshot(stack, proxy, topic, topic_id, records_per_partition)
            lines += [
                f"- simulated: {args.minutes} min at {RECORDS_PER_SECOND:,} records/s = "
                f"{flushes * PARTITIONS * RECORDS_PER_BATCH:,} records of {RECORD_BYTES} B "
                f"in {PARTITIONS} partitions, one object per 50 ms flush ({flushes:,} flushes); "
                f"batch of {RECORDS_PER_BATCH} records = {batch_len} B",
                f"- produce (real stack, SeaweedFS): {produce_s:.0f} s = "
                f"{flushes / produce_s:,.0f} objects/s",
                "",
                "| state | objects | MB stored | objects/GB | KB/object | blocks of partition 0 "
                "| GETs to read partition 0 cold | read s |",
                "|---|---|---|---|---|---|---|---|",
                before.row("before compaction"),
            ]
            compact_env = {
                **stack.env,
                "STREAMHOUSE_LIFECYCLE_COMPACTION_ENABLED": "true",
                "STREAMHOUSE_LIFECYCLE_REWRITE_BYTES_PER_SECOND": str(args.rewrite_rate),
            }
            if not args.count_pass_requests:
                # Straight to SeaweedFS: the proxy (Python, in this process) would slow the
                # pass's GETs; its requests are then not counted.
                compact_env["AWS_ENDPOINT_URL"] = seaweed.endpoint
            # Past the compaction age, short of the grace period: the passes compact and
            # delete nothing (the replaced objects wait for the clean-up pass). A compaction
            # step starts no new group after lifecycle.compaction.STEP_SECONDS: passes are
            # run until one finds nothing left.
            min_age = stack.settings.lifecycle_compaction_min_age_ms
            passes: list[tuple[dict[str, Any], float, float, dict[str, int]]] = []
            while True:
                proxy.reset()
                clock = time.time_ns() // 1_000_000 + min_age + 60_000
                report, wall, cpu = timed_pass(compact_env, clock)
                if report["compaction"]["objects_replaced"] == 0 or len(passes) == 10:
                    break
                passes.append((report, wall, cpu, proxy.reset()))
            cleanup_env = {**compact_env, "STREAMHOUSE_LIFECYCLE_DELETES_PER_SECOND": "100000"}
            grace = stack.settings.lifecycle_grace_ms
            cleanup, _, _ = timed_pass(cleanup_env, clock + grace + HOUR_MS)
            after = snapshot(stack, proxy, topic, topic_id, records_per_partition)
            replaced = {k: s for k, s in before.objects.items() if k not in after.objects}
            written = {k: s for k, s in after.objects.items() if k not in before.objects}
            mb_in = sum(replaced.values()) / 1e6
            wall = sum(p[1] for p in passes)
            cpu = sum(p[2] for p in passes)
            step_s = sum(p[0]["compaction"]["duration_ms"] for p in passes) / 1000
            lines += [
                after.row(f"after compaction ({len(passes)} pass(es))"),
                "",
                f"- compaction: {len(passes)} pass(es), {wall:.1f} s wall (the compaction steps "
                f"{step_s:.1f} s), {cpu:.1f} s CPU of the pass processes "
                f"({cpu / wall * 100:.0f}% of a core); {len(replaced):,} objects "
                f"({mb_in:,.1f} MB) replaced by {len(written):,} "
                f"({sum(written.values()) / 1e6:,.1f} MB): {mb_in / wall:,.1f} MB/s of input "
                f"per pass wall second ({mb_in / step_s:,.1f} MB/s in the steps), "
                f"{mb_in / max(cpu, 1e-9):,.1f} MB per CPU second "
                f"(rewrite budget {args.rewrite_rate / 1e6:,.0f} MB/s)",
            ]
            for i, (report, pass_wall, pass_cpu, requests) in enumerate(passes):
                lines.append(
                    f"- pass {i + 1}: {pass_wall:.1f} s wall, {pass_cpu:.1f} s CPU, "
                    f"object-store requests {requests if args.count_pass_requests else '-'}, "
                    "compaction step "
                    f"`{json.dumps(report['compaction'])}`"
                )
            lines.append(
                f"- the clean-up pass past the grace period: "
                f"{cleanup.get('dead_objects_deleted')} dead objects deleted"
            )
    finally:
        proxy.stop()
        seaweed.stop()
    out = "\n".join(lines)
    print("\n" + out)
    if args.output:
        pathlib.Path(args.output).write_text(out + "\n")


# ------------------------------------------------------------------------------ keys


def key_batch(partition: int, flush: int, per_batch: int, keys: int, start_ts: int) -> bytes:
    """Batch `flush` of `partition` for the keys bench: `per_batch` updates of keys that
    belong to this partition (key k lives in partition k % PARTITIONS), cycling through
    them, so every key is updated over and over."""
    from streamhouse.recordbatch import encode_batch

    first = flush * per_batch
    own = keys // PARTITIONS
    key_list = [
        f"key-{((first + j) % own) * PARTITIONS + partition:08d}".encode() for j in range(per_batch)
    ]
    stamp = start_ts + flush
    values = [record_value(first + j, stamp) for j in range(per_batch)]
    return encode_batch(key_list, list(values), [[] for _ in values], [stamp] * per_batch)


def bench_keys(args: argparse.Namespace, workdir: pathlib.Path) -> None:
    from streamhouse.client import Client
    from streamhouse.testing import Stack
    from tests.faults.lifecycle_tools import S3CountingProxy, bucket_segments
    from tests.faults.nemesis.servers import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer

    per_batch = 500
    flushes = args.records // (per_batch * PARTITIONS)
    records = flushes * per_batch * PARTITIONS
    seaweed = SeaweedServer(workdir / "seaweed")
    seaweed.start()
    proxy = S3CountingProxy(seaweed.port).start()
    env = {
        "STREAMHOUSE_OBJECT_STORE": f"s3://{BUCKET}/keys-{uuid.uuid4().hex[:8]}",
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "STREAMHOUSE_LIFECYCLE_ENABLED": "false",
        "STREAMHOUSE_LOG_LEVEL": "WARNING",
    }
    topic = "keyed"
    lines: list[str] = []
    try:
        with Stack(workdir / "stack", env=env) as stack:
            with Client(stack.grpc_address) as client:
                client.create_topic(
                    topic, PARTITIONS, {"cleanup.policy": "compact", "retention.ms": "-1"}
                )
            start_ts = time.time_ns() // 1_000_000 - HOUR_MS
            started = time.monotonic()
            asyncio.run(
                produce_flushes(
                    stack.kafka_address,
                    topic,
                    flushes,
                    lambda p, flush: key_batch(p, flush, per_batch, args.keys, start_ts),
                    per_batch,
                )
            )
            produce_s = time.monotonic() - started
            before = bucket_segments(stack.env, stack.settings.object_store_url)
            pass_env = {
                **stack.env,
                "STREAMHOUSE_LIFECYCLE_COMPACTION_ENABLED": "true",
                "STREAMHOUSE_LIFECYCLE_REWRITE_BYTES_PER_SECOND": str(args.rewrite_rate),
                # Only key compaction: no object counts as small or partly live.
                "STREAMHOUSE_LIFECYCLE_SMALL_OBJECT_BYTES": "1",
                "STREAMHOUSE_LIFECYCLE_MIN_LIVE_PERCENT": "0",
            }
            if not args.count_pass_requests:
                pass_env["AWS_ENDPOINT_URL"] = seaweed.endpoint  # as in `hour`
            proxy.reset()
            clock = time.time_ns() // 1_000_000 + 120_000
            report, wall, cpu = timed_pass(pass_env, clock)
            requests = proxy.reset()
            keyed = report["key_compaction"]
            mb_in = sum(before.values()) / 1e6
            lines += [
                f"- {records:,} records of {RECORD_BYTES} B over {args.keys:,} keys "
                f"({records // args.keys} updates per key) in {PARTITIONS} partitions, "
                f"batches of {per_batch}; produced in {produce_s:.0f} s into {len(before):,} "
                f"objects ({mb_in:,.1f} MB stored)",
                f"- one key-compaction pass: {wall:.1f} s wall, {cpu:.1f} s CPU: "
                f"{mb_in / wall:,.1f} MB/s of input (stored bytes), "
                f"{mb_in / max(cpu, 1e-9):,.1f} MB per CPU second; "
                f"{records / wall / 1e6:,.2f} M records/s",
                f"- object-store requests {requests if args.count_pass_requests else '-'}; "
                f"key-compaction step `{json.dumps(keyed)}`",
            ]
    finally:
        proxy.stop()
        seaweed.stop()
    out = "\n".join(lines)
    print("\n" + out)
    if args.output:
        pathlib.Path(args.output).write_text(out + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["deletes", *argv]  # the older command line, before `hour` existed
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    hour = commands.add_parser("hour", help="objects, cold-read GETs and compaction of an hour")
    hour.add_argument("--minutes", type=int, default=60, help="simulated minutes (default 60)")
    hour.add_argument(
        "--rewrite-rate",
        type=int,
        default=1 << 40,
        help="lifecycle_rewrite_bytes_per_second of the compaction pass (default: unthrottled)",
    )
    hour.add_argument("--output", default="", help="also write the results table to this file")
    hour.add_argument(
        "--count-pass-requests",
        action="store_true",
        help="send the compaction passes through the counting proxy too (slower passes)",
    )
    keys = commands.add_parser("keys", help="one key-compaction pass over many updates per key")
    keys.add_argument("--records", type=int, default=1_000_000)
    keys.add_argument("--keys", type=int, default=10_000)
    keys.add_argument("--rewrite-rate", type=int, default=1 << 40)
    keys.add_argument("--output", default="", help="also write the results to this file")
    keys.add_argument(
        "--count-pass-requests",
        action="store_true",
        help="send the pass through the counting proxy (slower)",
    )
    deletes = commands.add_parser("deletes", help="one pass reclaiming a deleted topic")
    deletes.add_argument("--segments", type=int, default=1000)
    deletes.add_argument("--object-bytes", type=int, default=1024)
    deletes.add_argument("--rate", type=int, default=100_000, help="lifecycle_deletes_per_second")
    deletes.add_argument("--concurrency", type=int, default=4)
    deletes.add_argument("--metadata", default="", help="postgresql:// URL (default: SQLite)")
    deletes.add_argument("--object-store", default="", help="s3://bucket/prefix (default: folder)")
    args = parser.parse_args(argv)
    if args.command == "hour" and args.minutes < 1:
        parser.error(f"--minutes {args.minutes}: simulate at least one minute")
    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-") as tmp:
        if args.command == "hour":
            bench_hour(args, pathlib.Path(tmp))
        elif args.command == "keys":
            bench_keys(args, pathlib.Path(tmp))
        else:
            asyncio.run(bench_deletes(args, pathlib.Path(tmp)))


if __name__ == "__main__":
    main()
