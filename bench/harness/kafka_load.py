"""Kafka load processes of the harness (spawned: no GIL shared with the harness or each other).

- `producer_main`: the lean confluent-kafka loop (``produce(topic, value)`` in a tight loop,
  ``poll(0)`` every 1,000 records, no per-message callback, linger.ms 5 unless told otherwise,
  batch.size 1 MiB, acks as asked, null keys spread by librdkafka's sticky partitioner; values
  cycled from 16 MiB of distinct random values, which do not compress), for a duration or a
  record count, optionally paced to a rate (open loop, in chunks of one millisecond's records,
  at most 1,000). Its shared counter holds the records acknowledged so far (queued minus still
  in librdkafka's queue), which the harness samples for throughput over time. Each record's
  Kafka timestamp is its CreateTime (set by librdkafka at ``produce()``), which the consumers
  use for end-to-end latency.
  **Load latency**: the acknowledgement latency of the load itself, without a per-message
  callback: after each chunk the producer notes (time, records queued so far); whenever it
  looks again (after every chunk, and every LOOK_S while it waits for the rate's schedule or
  for the final acknowledgements) the acknowledged count (queued minus ``len(producer)``, which
  counts queued, in-flight and unreported records) tells which chunks are now fully
  acknowledged, and each gives one sample: now minus the time its last record was queued. On
  one partition acknowledgements come in order, so this is the latency of the chunk's last
  record within LOOK_S (or one chunk's time at full speed); on several partitions it is the
  time until that many records were acknowledged in all. Chunks queued in the first WARMUP_S
  are not sampled (connection and first metadata).
- `consumer_main`: one consumer assigned a list of partitions from given offsets
  (``queued.min.messages`` raised and ``fetch.queue.backoff.ms=0``: with librdkafka's defaults a
  response of ~100,000 small records makes the client pause each partition for a second),
  reading until it has reached the end offsets the harness publishes in a shared array and
  then received nothing for DRAIN_S (a broker's ListOffsets may lag its log: Tansu 0.6 answers
  an end offset below the records it acknowledged); its time ends at the last record.
  One record in ``sample_every`` (by offset) gives an end-to-end latency sample: receive time
  minus the record's CreateTime (milliseconds; both clocks are this machine's).
- `probe_main`: a separate producer (acks as asked, linger.ms 0) sending ``rate`` records/s and
  timing each delivery report: produce latency (send -> acknowledgement) under the load.
"""

from __future__ import annotations

import os
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

MiB = 1024 * 1024
CHUNK = 1000  # records queued between two poll(0) calls at full speed
PACE_S = 0.001  # with a rate, a chunk is this long's worth of records (1 to CHUNK)
LOOK_S = 0.001  # while waiting, the acknowledged count is looked at this often
WARMUP_S = 1.0  # load-latency samples start this long after the first record
DRAIN_S = 1.0  # past the end offsets, a consumer stops after this long without a record
POOL_BYTES = 16 * MiB  # distinct random record values a producer cycles through


def producer_config(
    bootstrap: str, acks: str, compression: str, linger_ms: float = 5.0
) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "acks": acks,
        "linger.ms": linger_ms,
        "batch.size": MiB,
        "message.max.bytes": 2 * MiB,
        "compression.type": compression,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "enable.idempotence": False,
        "delivery.report.only.error": True,
    }


def value_pool(size: int) -> list[bytes]:
    """Distinct random values covering POOL_BYTES: a compressor finds no repeats within its
    window, as in real data that does not compress (one value repeated would shrink every
    block to almost nothing and flatter a broker that compresses its log)."""
    count = max(POOL_BYTES // size, 4 * CHUNK)
    pool = os.urandom(count * size)
    return [pool[i * size : (i + 1) * size] for i in range(count)]


class AckLatency:
    """The load-latency bookkeeping of a producer (no I/O; see the module's docstring): chunks
    queued, as (time, records queued so far), become samples once the acknowledged count
    covers them."""

    def __init__(self, sample_from: float) -> None:
        self.sample_from = sample_from  # chunks queued before this time give no sample
        self.pending: deque[tuple[float, int]] = deque()
        self.samples: list[tuple[float, float]] = []  # (time queued, seconds to acknowledged)

    def queued(self, now: float, total: int) -> None:
        self.pending.append((now, total))

    def acknowledged(self, now: float, acked: int) -> None:
        pending = self.pending
        while pending and pending[0][1] <= acked:
            sent, _ = pending.popleft()
            if sent >= self.sample_from:
                self.samples.append((sent, now - sent))


def producer_main(
    bootstrap: str,
    topic: str,
    size: int,
    acks: str,
    compression: str,
    seconds: float,
    records: int,
    rate: float,
    counter: Any,
    conn: Connection,
    linger_ms: float = 5.0,
) -> None:
    """Produces until `seconds` have passed or `records` are queued (0: no limit), at `rate`
    records/s (0: as fast as the broker takes them); sends its result dict on `conn`, with the
    load-latency samples as [[wall time queued, seconds], ...]."""
    failures: list[str] = []

    def on_error(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    values = value_pool(size)
    config = producer_config(bootstrap, acks, compression, linger_ms)
    producer = Producer({**config, "on_delivery": on_error})
    producer.list_topics(topic, timeout=30)  # metadata before the clock starts
    conn.send("ready")
    conn.recv()  # all producers start together
    produce, poll = producer.produce, producer.poll
    count = chunk = full_waits = pos = 0
    step = CHUNK if rate <= 0 else max(1, min(CHUNK, int(rate * PACE_S)))
    cpu0 = time.process_time()
    started = time.perf_counter()
    t_first = time.time()
    clock = AckLatency(started + WARMUP_S)
    deadline = started + seconds if seconds > 0 else float("inf")
    limit = records if records > 0 else 1 << 62

    def look() -> None:
        acked = count - len(producer)
        counter.value = acked
        clock.acknowledged(time.perf_counter(), acked)

    while count < limit and time.perf_counter() < deadline:
        want = min(step, limit - count)
        try:
            while chunk < want:
                produce(topic, values[pos + chunk])
                chunk += 1
        except BufferError:
            full_waits += 1
            poll(0.005)  # librdkafka's queue is full: the broker is the limit
            continue
        count += chunk
        pos = (pos + chunk) % (len(values) - CHUNK)
        chunk = 0
        clock.queued(time.perf_counter(), count)
        poll(0)
        look()
        if rate > 0:  # open loop: the schedule says when the next chunk is due
            due = started + count / rate
            while (ahead := due - time.perf_counter()) > 0:
                poll(min(ahead, LOOK_S))
                look()
    flush_deadline = time.monotonic() + 300
    while len(producer) and time.monotonic() < flush_deadline:
        producer.flush(LOOK_S)  # the acknowledgements of what is queued, the counter current
        look()
    remaining = len(producer)
    t_last = time.time()
    failed_reports = len(failures)
    counter.value = count - remaining - failed_reports
    if remaining:
        failures.append(f"{remaining} records not acknowledged 300 s after the produce loop")
    conn.send(
        {
            "records": count - remaining - failed_reports,
            "t_first": t_first,
            "t_last": t_last,
            "cpu_s": time.process_time() - cpu0,
            "failures": failures[:20],
            "failure_count": len(failures),
            "queue_full_waits": full_waits,
            "latency": [[t_first + (t - started), lat] for t, lat in clock.samples],
        }
    )


def consumer_config(bootstrap: str, group: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "max.partition.fetch.bytes": 8 * MiB,
        "fetch.max.bytes": 64 * MiB,
        "queued.min.messages": 1_000_000,
        "queued.max.messages.kbytes": 256 * 1024,
        "fetch.queue.backoff.ms": 0,
    }


def consumer_main(
    bootstrap: str,
    topic: str,
    partitions: list[int],
    start: list[int],
    ends: Any,
    sample_every: int,
    timeout_s: float,
    counter: Any,
    conn: Connection,
) -> None:
    """Reads `partitions` from the `start` offsets (-2: the beginning) until every one reached
    its entry of the shared `ends` array (-1 while the end is not known yet)."""
    consumer = Consumer(consumer_config(bootstrap, f"harness-{os.getpid()}"))
    consumer.assign(
        [
            TopicPartition(topic, p, OFFSET_BEGINNING if s < 0 else s)
            for p, s in zip(partitions, start, strict=True)
        ]
    )
    position = {p: (0 if s < 0 else s) for p, s in zip(partitions, start, strict=True)}
    e2e: list[tuple[float, float]] = []
    errors = 0
    count = 0
    conn.send("ready")
    conn.recv()
    cpu0 = time.process_time()
    t_first = t_last = 0.0  # wall times of the first and last batch received
    deadline = time.monotonic() + timeout_s
    drained_at = 0.0  # when every partition reached its end offset
    while time.monotonic() < deadline:
        if not drained_at and all(ends[p] >= 0 and position[p] >= ends[p] for p in partitions):
            drained_at = time.monotonic()
        batch = consumer.consume(num_messages=10_000, timeout=0.2)
        if not batch:
            if drained_at and time.monotonic() - drained_at >= DRAIN_S:
                break
            continue
        if drained_at:
            drained_at = time.monotonic()
        now = time.time()
        t_last = now
        if not t_first:
            t_first = now
        for message in batch:
            if message.error() is not None:
                errors += 1
                continue
            offset = message.offset()
            position[message.partition()] = offset + 1
            if offset % sample_every == 0:
                e2e.append((now, now * 1000 - message.timestamp()[1]))
        count += len(batch)
        counter.value = count
    consumer.close()
    conn.send(
        {
            "records": count - errors,
            "errors": errors,
            "t_first": t_first,
            "t_last": t_last,
            "cpu_s": time.process_time() - cpu0,
            "e2e": e2e,
            "complete": all(ends[p] >= 0 and position[p] >= ends[p] for p in partitions),
        }
    )


def probe_main(
    bootstrap: str, topic: str, rate: float, size: int, acks: str, conn: Connection
) -> None:
    """Sends `rate` records/s until told to stop; replies with [(send time, latency s)]."""
    samples: list[tuple[float, float]] = []
    errors: list[str] = []
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 0, "enable.idempotence": False}
    )
    producer.list_topics(topic, timeout=30)
    value = os.urandom(size)

    def report(sent_wall: float, sent: float) -> Any:
        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if err is None:
                samples.append((sent_wall, time.perf_counter() - sent))
            else:
                errors.append(str(err))

        return on_delivery

    conn.send("ready")
    interval = 1 / rate
    next_send = time.perf_counter()
    while not conn.poll():
        now = time.perf_counter()
        if now >= next_send:
            producer.produce(topic, value, callback=report(time.time(), now))
            next_send += interval
        producer.poll(max(0.0, min(0.05, next_send - time.perf_counter())))
    producer.flush(60)
    conn.send({"samples": samples, "errors": errors[:20], "error_count": len(errors)})
