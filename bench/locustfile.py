"""Locust load test of StreamHouse over gRPC: users that ProduceBatch and Consume.

Headless, against a running server (`streamhouse up` listens on 127.0.0.1:50051 by default),
gRPC users only:

    locust -f bench/locustfile.py StreamHouseGrpcUser --headless -u 8 -r 8 -t 60s \
        --host 127.0.0.1:50051

(Without a user class name Locust runs every class in this file, the KafkaUser below included.)
The gRPC users need only the bench extra's locust (``pip install -e '.[bench]'``): confluent-kafka
is imported when a KafkaUser starts, so this file loads without it.

Extra options (after the command): --sh-topic NAME (default locust-bench), --sh-partitions 3,
--sh-batch-size 1000, --sh-record-size 100, --sh-consume-max-records 10000, and
--sh-produce-weight / --sh-consume-weight (task weights, default 3 and 1). Add --csv PREFIX for
CSV stats, or drop --headless to get the web UI on http://localhost:8089.

Every call is reported as request_type "grpc" with name "ProduceBatch" or "Consume";
response_time is the call's round trip in ms (a ProduceBatch returns once the batch is durable,
so it includes the flush interval and the upload); response_length is the request size for
ProduceBatch (the payload sent) and the response size for Consume (the payload received). A
failed call (any gRPC status but OK) is a failure with the status code and message.

Locust runs every user as a greenlet in one process: fine for shaping load and watching latency
under it, but one core at most. For maximum throughput use bench/grpc_bench.py, which spreads
the client over processes.

Kafka: the class KafkaUser does the same over the Kafka protocol with confluent-kafka. Pick
the user classes on the command line; --host stays the gRPC address (the topic is created
over gRPC at test start), --sh-kafka-address is the Kafka listener:

    locust -f bench/locustfile.py KafkaUser --headless -u 4 -r 4 -t 20s \
        --host 127.0.0.1:50051 --sh-kafka-address 127.0.0.1:9092

Each KafkaUser has its own Producer (linger.ms 5, acks=all) and Consumer (assigned every
partition from the beginning, no group). "produce" queues --sh-kafka-batch records (default
100) and reports once all are acknowledged (durable): response_time is that wait,
response_length the value bytes. "consume" waits for records and takes up to
--sh-consume-max-records of them: response_time is the wait for the first, response_length the
value bytes (0 when nothing arrived within 2 s, which is not a failure). A delivery or consume
error is a failure. confluent-kafka's C library blocks outside Python, so the user only makes
non-blocking calls (produce, poll(0), consume(timeout=0)) and yields to gevent between them.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, events, task

if TYPE_CHECKING:
    from confluent_kafka import KafkaError

# grpc's sync API blocks in C; this makes it cooperate with gevent's loop. Call once, after gevent's
# monkey-patching (locust did it when it was imported, before loading this file) and before any
# channel exists.
grpc_gevent.init_gevent()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamhouse.proto import streamhouse_pb2 as pb  # noqa: E402
from streamhouse.proto import streamhouse_pb2_grpc as pb_grpc  # noqa: E402

DEFAULT_HOST = "127.0.0.1:50051"
MAX_MESSAGE = 256 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
EARLIEST = -2


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    group = parser.add_argument_group("StreamHouse")
    group.add_argument("--sh-topic", default="locust-bench", help="topic to produce to")
    group.add_argument("--sh-partitions", type=int, default=3, help="partitions if created")
    group.add_argument("--sh-batch-size", type=int, default=1000, help="records per ProduceBatch")
    group.add_argument("--sh-record-size", type=int, default=100, help="value bytes per record")
    group.add_argument(
        "--sh-consume-max-records", type=int, default=10_000, help="max_records per Consume"
    )
    group.add_argument(
        "--sh-kafka-address", default="127.0.0.1:9092", help="Kafka listener (KafkaUser)"
    )
    group.add_argument(
        "--sh-kafka-batch", type=int, default=100, help="records per KafkaUser produce"
    )
    group.add_argument("--sh-produce-weight", type=int, default=3, help="ProduceBatch weight")
    group.add_argument("--sh-consume-weight", type=int, default=1, help="Consume weight")


def _address(environment) -> str:
    host = environment.host or DEFAULT_HOST
    return host.split("://", 1)[-1].rstrip("/")  # tolerate http://host:port from the web UI


@events.test_start.add_listener
def _create_topic(environment, **_kwargs) -> None:
    """Creates the topic if it does not exist yet (on the master or the standalone runner)."""
    opts = environment.parsed_options
    with grpc.insecure_channel(_address(environment), options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.StreamHouseStub(channel)
        try:
            stub.CreateTopic(
                pb.CreateTopicRequest(name=opts.sh_topic, partitions=opts.sh_partitions),
                timeout=30,
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise


class StreamHouseGrpcUser(User):
    """One gRPC channel per user; produces pre-built batches and consumes them back."""

    host = DEFAULT_HOST
    wait_time = constant(0)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.topic = opts.sh_topic
        self.channel = grpc.insecure_channel(_address(self.environment), options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.StreamHouseStub(self.channel)
        partitions = self.stub.GetTopic(pb.GetTopicRequest(name=self.topic), timeout=30)
        count = partitions.topic.partitions
        # The request is built once and reused: only its partition changes between calls.
        values = [os.urandom(opts.sh_record_size) for _ in range(64)]
        records = [pb.Record(value=values[i % 64]) for i in range(opts.sh_batch_size)]
        self.request = pb.ProduceBatchRequest(topic=self.topic, records=records)
        self.request_bytes = self.request.ByteSize()
        start = int.from_bytes(os.urandom(2), "big")
        self.produce_partitions = itertools.cycle([(start + i) % count for i in range(count)])
        self.consume_partitions = itertools.cycle(range(count))
        self.offsets = dict.fromkeys(range(count), EARLIEST)
        self.max_records = opts.sh_consume_max_records
        self.tasks = [StreamHouseGrpcUser.produce_batch] * opts.sh_produce_weight + [
            StreamHouseGrpcUser.consume
        ] * opts.sh_consume_weight

    def on_stop(self) -> None:
        self.channel.close()

    def _report(self, name: str, start: float, length: int, exc: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=exc,
            context={},
        )

    @task(3)
    def produce_batch(self) -> None:
        self.request.partition = next(self.produce_partitions)
        start = time.perf_counter()
        try:
            self.stub.ProduceBatch(self.request, timeout=60)
        except grpc.RpcError as exc:
            self._report("ProduceBatch", start, 0, _error(exc))
        else:
            self._report("ProduceBatch", start, self.request_bytes, None)

    @task(1)
    def consume(self) -> None:
        partition = next(self.consume_partitions)
        request = pb.ConsumeRequest(
            topic=self.topic,
            partition=partition,
            offset=self.offsets[partition],
            max_records=self.max_records,
            max_wait_ms=0,
        )
        start = time.perf_counter()
        try:
            response = self.stub.Consume(request, timeout=60)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                self.offsets[partition] = EARLIEST
            self._report("Consume", start, 0, _error(exc))
        else:
            self.offsets[partition] = response.next_offset
            self._report("Consume", start, response.ByteSize(), None)


def _error(exc: grpc.RpcError) -> Exception:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "ERROR"
    return RuntimeError(f"{name}: {details}")


class KafkaUser(User):
    """One confluent-kafka Producer and Consumer per user; see the module docstring."""

    host = DEFAULT_HOST
    wait_time = constant(0)

    def on_start(self) -> None:
        # Imported here, not at the top: the gRPC users run without a Kafka client installed.
        try:
            from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
        except ImportError as exc:
            raise RuntimeError(
                "KafkaUser needs confluent-kafka: pip install -e '.[bench]' (or pip install "
                "confluent-kafka), or run the gRPC users only (StreamHouseGrpcUser)"
            ) from exc
        opts = self.environment.parsed_options
        self.topic = opts.sh_topic
        bootstrap = opts.sh_kafka_address
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "batch.size": 1048576}
        )
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "locust-kafka",  # required by the client; no group membership
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )
        count = self._partition_count()
        self.consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(count)]
        )
        self.value = os.urandom(opts.sh_record_size)
        self.batch = opts.sh_kafka_batch
        self.max_records = opts.sh_consume_max_records
        self.tasks = [KafkaUser.produce] * opts.sh_produce_weight + [
            KafkaUser.consume
        ] * opts.sh_consume_weight

    def _partition_count(self) -> int:
        # Over gRPC (gevent-friendly), like the topic's creation; a Kafka metadata call would
        # block the gevent loop in C.
        with grpc.insecure_channel(_address(self.environment), options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.StreamHouseStub(channel)
            return stub.GetTopic(pb.GetTopicRequest(name=self.topic), timeout=30).topic.partitions

    def on_stop(self) -> None:
        deadline = time.monotonic() + 10
        while len(self.producer) and time.monotonic() < deadline:
            self.producer.poll(0)
            gevent.sleep(0.01)
        self.consumer.close()

    def _report(self, name: str, start: float, length: int, exc: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type="kafka",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=exc,
            context={},
        )

    @task(3)
    def produce(self) -> None:
        outcome = {"left": self.batch, "error": None}

        def delivered(err: KafkaError | None, _msg: object) -> None:
            outcome["left"] -= 1
            if err is not None and outcome["error"] is None:
                outcome["error"] = err

        start = time.perf_counter()
        queued = 0
        while queued < self.batch:
            try:
                self.producer.produce(self.topic, self.value, on_delivery=delivered)
                queued += 1
            except BufferError:  # the client's queue is full: let it drain
                self.producer.poll(0)
                gevent.sleep(0.001)
        deadline = start + 60
        while True:
            self.producer.poll(0)  # serves delivery reports, never blocks
            if outcome["left"] <= 0:
                break
            if time.perf_counter() > deadline:
                outcome["error"] = f"{outcome['left']} records unacknowledged after 60s"
                break
            gevent.sleep(0.001)
        error = outcome["error"]
        exc = RuntimeError(str(error)) if error is not None else None
        self._report("produce", start, 0 if exc else self.batch * len(self.value), exc)

    @task(1)
    def consume(self) -> None:
        start = time.perf_counter()
        deadline = start + 2
        messages = self.consumer.consume(num_messages=self.max_records, timeout=0)
        while not messages and time.perf_counter() < deadline:
            gevent.sleep(0.002)
            messages = self.consumer.consume(num_messages=self.max_records, timeout=0)
        length = 0
        exc = None
        for message in messages:
            if message.error() is not None:
                exc = RuntimeError(str(message.error()))
                break
            length += len(message.value() or b"")
        self._report("consume", start, length, exc)
