"""The workload: idempotent Kafka and gRPC producers of unique values and a consumer group,
every operation recorded in the history (see `history.py` for the rules it keeps).

- `KafkaProducerWorker`: confluent-kafka, `enable.idempotence`, acks=all, retrying for as long
  as `message.timeout.ms`; values `k<i>-<n>` paced to a rate, over every partition.
- `GrpcProducerWorker`: `streamhouse.client.IdempotentProducer`, batches of values `g<i>-<n>`
  to one partition at a time. A batch whose outcome is unknown is re-sent with the same
  sequence until it is acknowledged (the server drops a duplicate). Every `poison_every`-th batch
  carries one record over `max_record_bytes`: the whole batch must be refused (INVALID_ARGUMENT,
  recorded as `fail`) and none of its values may ever be read.
- `ConsumerWorker`: one member of a confluent-kafka consumer group; records each assignment
  change, each poll's `(partition, offset, value)` and each synchronous commit.
- `final_read`: after the nemesis healed everything, reads every partition from offset 0 to its
  high watermark over gRPC.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import grpc
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from streamhouse.client import Client, IdempotentProducer, Record, StreamHouseError

from .history import History

# librdkafka's own log (connection refused during every fault...) goes to the run's client log.
CLIENT_LOG = logging.getLogger("nemesis.clients")

# How much of a value the history keeps: values are unique in their first characters.
VALUE_CHARS = 64
# Kafka error codes that prove a message was not stored (everything else is "unknown").
DEFINITE_KAFKA_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_TIMESTAMP,
    }
)


def shown(value: bytes | None) -> str:
    """A value as the history keeps it."""
    if value is None:
        return "<null>"
    return value[:VALUE_CHARS].decode("utf-8", errors="replace")


class Worker(threading.Thread):
    """A thread that runs until `stop` is set and keeps the first exception it dies of."""

    def __init__(self, name: str, history: History) -> None:
        super().__init__(name=name, daemon=True)
        self.history = history
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # reported by the run
            self.error = exc
            self.history.record(self.name, "info", "crash", error=repr(exc))

    def work(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stop_event.set()


class KafkaProducerWorker(Worker):
    def __init__(
        self, index: int, history: History, bootstrap: str, topic: str, partitions: int, rate: float
    ) -> None:
        super().__init__(f"kafka-{index}", history)
        self.topic = topic
        self.partitions = partitions
        self.rate = rate
        self.outstanding = 0
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": self.name,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 120_000,
                "request.timeout.ms": 15_000,
                "retry.backoff.ms": 100,
                "retry.backoff.max.ms": 1000,
                "reconnect.backoff.max.ms": 1000,
            },
            logger=CLIENT_LOG,
        )

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        values = [shown(msg.value())]
        if err is None:
            self.history.record(
                self.name,
                "ok",
                "send",
                values=values,
                partition=msg.partition(),
                offsets=[msg.offset()],
            )
        else:
            definite = err.code() in DEFINITE_KAFKA_ERRORS
            self.history.record(
                self.name,
                "fail" if definite else "info",
                "send",
                values=values,
                partition=msg.partition(),
                error=str(err),
            )

    def work(self) -> None:
        n = 0
        started = time.monotonic()
        while not self.stop_event.is_set():
            ahead = n / self.rate - (time.monotonic() - started)
            if ahead > 0:
                self.producer.poll(min(ahead, 0.1))  # paces the load; serves delivery reports
                continue
            if len(self.producer) >= 10_000:
                self.producer.poll(0.1)  # back-pressure: wait on delivery reports
                continue
            value = f"{self.name}-{n}".encode()
            partition = n % self.partitions
            self.history.record(
                self.name, "invoke", "send", values=[shown(value)], partition=partition
            )
            try:
                self.producer.produce(
                    self.topic, value, partition=partition, on_delivery=self._delivered
                )
            except (BufferError, KafkaException) as exc:
                # Refused locally before it was queued: it was never sent.
                self.history.record(
                    self.name,
                    "fail",
                    "send",
                    values=[shown(value)],
                    partition=partition,
                    error=str(exc),
                )
            n += 1
            self.producer.poll(0)

    def finish(self, timeout: float) -> int:
        """After `stop()` and join: waits for every delivery report; returns how many are left."""
        return self.producer.flush(timeout)


class GrpcProducerWorker(Worker):
    def __init__(
        self,
        index: int,
        history: History,
        address: str,
        topic: str,
        partitions: int,
        batch: int,
        batches_per_s: float,
        poison_every: int,
        max_record_bytes: int,
    ) -> None:
        super().__init__(f"grpc-{index}", history)
        self.address = address
        self.topic = topic
        self.partitions = partitions
        self.batch = batch
        self.batches_per_s = batches_per_s
        self.poison_every = poison_every
        self.max_record_bytes = max_record_bytes
        self.poisoned = 0

    def _producer(self, client: Client) -> IdempotentProducer:
        while True:
            try:
                return IdempotentProducer(client, max_attempts=8, max_backoff=1.0)
            except StreamHouseError:
                if self.stop_event.wait(0.5):  # the stack is down: retry at a steady pace
                    raise

    def work(self) -> None:
        with Client(self.address, timeout=15) as client:
            producer = self._producer(client)
            started = time.monotonic()
            number = 0
            n = 0
            while not self.stop_event.is_set():
                ahead = number / self.batches_per_s - (time.monotonic() - started)
                if ahead > 0 and self.stop_event.wait(ahead):  # paces the load
                    break
                partition = number % self.partitions
                values = [f"{self.name}-{n + i}".encode() for i in range(self.batch)]
                n += self.batch
                number += 1
                poison = self.poison_every > 0 and number % self.poison_every == 0
                if poison:
                    big = f"{self.name}-{n}-too-big|".encode()
                    values.append(big + b"x" * (self.max_record_bytes + 1 - len(big)))
                    n += 1
                producer = self._send(client, producer, partition, values, poison)

    def _send(
        self,
        client: Client,
        producer: IdempotentProducer,
        partition: int,
        values: list[bytes],
        poison: bool,
    ) -> IdempotentProducer:
        """Sends one batch until it is acknowledged or refused; returns the producer to use."""
        names = [shown(v) for v in values]
        self.history.record(self.name, "invoke", "send", values=names, partition=partition)
        records = [Record(value=v) for v in values]
        while True:
            try:
                response = producer.produce_batch(self.topic, partition, records)
            except StreamHouseError as exc:
                if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                    # Refused at validation, before anything reached a ring.
                    self.poisoned += poison
                    self.history.record(
                        self.name,
                        "fail",
                        "send",
                        values=names,
                        partition=partition,
                        error=str(exc),
                    )
                    return producer
                if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    if self.stop_event.is_set():
                        self.history.record(
                            self.name,
                            "info",
                            "send",
                            values=names,
                            partition=partition,
                            error=str(exc),
                        )
                        return producer
                    continue  # same records, same sequence: a duplicate is dropped
                # Anything else leaves the sequence in doubt: the outcome is unknown, and a
                # new producer id starts clean.
                self.history.record(
                    self.name, "info", "send", values=names, partition=partition, error=str(exc)
                )
                return self._producer(client)
            base = response.base_offset
            self.history.record(
                self.name,
                "ok",
                "send",
                values=names,
                partition=partition,
                offsets=list(range(base, base + len(values))),
            )
            return producer


class ConsumerWorker(Worker):
    def __init__(self, index: int, history: History, bootstrap: str, topic: str) -> None:
        super().__init__(f"consumer-{index}", history)
        self.topic = topic
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "nemesis",
                "client.id": self.name,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 1_000,
                "reconnect.backoff.max.ms": 1000,
            },
            logger=CLIENT_LOG,
        )
        self.polled = 0

    def _assigned(self, consumer: Consumer, partitions: list[Any]) -> None:
        self.history.record(
            self.name, "ok", "assign", partitions=[tp.partition for tp in partitions]
        )

    def _revoked(self, consumer: Consumer, partitions: list[Any]) -> None:
        self.history.record(self.name, "ok", "assign", revoked=[tp.partition for tp in partitions])

    def work(self) -> None:
        self.consumer.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )
        try:
            while not self.stop_event.is_set():
                messages = self.consumer.consume(num_messages=500, timeout=0.5)
                records = []
                errors = []
                for message in messages:
                    if message.error() is not None:
                        errors.append(str(message.error()))
                        continue
                    records.append([message.partition(), message.offset(), shown(message.value())])
                if errors:
                    self.history.record(self.name, "info", "poll", errors=errors[:5])
                if not records:
                    continue
                self.polled += len(records)
                self.history.record(self.name, "ok", "poll", records=records)
                self._commit()
        finally:
            self.consumer.close()

    def _commit(self) -> None:
        self.history.record(self.name, "invoke", "commit")
        try:
            committed = self.consumer.commit(asynchronous=False) or []
        except KafkaException as exc:
            self.history.record(self.name, "info", "commit", error=str(exc))
            return
        self.history.record(
            self.name, "ok", "commit", commits=[[tp.partition, tp.offset] for tp in committed]
        )


def final_read(
    history: History, address: str, topic: str, partitions: int, timeout: float = 300
) -> dict[int, int]:
    """Reads every partition from offset 0 to its high watermark; returns the watermarks."""
    watermarks: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    with Client(address, timeout=30) as client:
        for partition in range(partitions):
            history.record("final", "ok", "assign", partitions=[partition])
            offset = 0
            while True:
                try:
                    got, next_offset, hwm, _ = client.consume(
                        topic, partition, offset, max_records=5000
                    )
                except StreamHouseError:
                    if time.monotonic() > deadline:
                        raise
                    continue  # the stack was healed; a retry after a transient error
                if got:
                    history.record(
                        "final",
                        "ok",
                        "read",
                        records=[[partition, r.offset, shown(r.value)] for r in got],
                    )
                offset = next_offset
                if offset >= hwm:
                    watermarks[partition] = hwm
                    break
    return watermarks
