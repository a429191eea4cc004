"""RSS of every StreamHouse process under each abuse pattern, against the configured bounds.

    python3 bench/abuse.py                 # every pattern, 15 s each
    python3 bench/abuse.py --seconds 30 --only slowloris,pipeline-no-read

For each pattern, starts a fresh Stack (streamhouse.testing.Stack) with the listener limits
below (so no pattern inherits another's high-water marks), then runs the pattern for a bounded
time from this process (asyncio raw sockets for Kafka, grpc.aio for gRPC) while a thread
samples the RSS of ingest, segmenter, uploader and reader every 20 ms; at the end each
process's kernel high-water mark (VmHWM) is read too, so a burst between samples still counts.
Prints a Markdown table: per pattern the peak RSS of each process, the growth of the process
the pattern aims at (ingest, or the reader for long polls) over its idle RSS on that stack,
the bound the settings allow for that growth (the process's shared-memory rings, resident
once traffic touches them, plus what the listener limits allow the pattern to hold), and what
the clients saw.

Patterns:
  connection-flood   2 x max connections, each doing ApiVersions in a loop, reconnecting
  idle-connections   max connections that send nothing, reconnecting when dropped
  slowloris          max connections sending a 1 MiB frame one byte every 200 ms
  pipeline-no-read   16 connections pipelining fetches (~240 KB answers), never reading
                     (a client sends more only when its last burst left its own buffer)
  huge-frames        8 connections sending max-size garbage frames and oversize prefixes
  grpc-streams       8 busy ProduceStreams, then a flood of 2 x max concurrent RPCs Subscribe
                     streams over 8 channels (one channel carries at most max concurrent
                     streams)
  long-polls         2 x reader max fetches Kafka long-poll fetches on an empty partition
  many-partitions    Produce and Fetch naming 20 x the partitions-per-request limit
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import pathlib
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import psutil

from streamhouse.client import Client, Record
from streamhouse.config import Settings
from streamhouse.kafka.framing import encode_request
from streamhouse.kafka.messages import (
    ApiVersionsRequest,
    FetchRequest,
    ProduceRequest,
    RequestHeader,
)
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.proto import streamhouse_pb2_grpc
from streamhouse.recordbatch import encode_batch
from streamhouse.testing import PROGRAMS, Stack

MiB = 1024 * 1024
TOPIC = "abuse"
EMPTY_TOPIC = "abuse-empty"

MAX_CONNECTIONS = 256
IN_FLIGHT_REQUESTS = 16
IN_FLIGHT_BYTES = 4 * MiB
QUEUED_BYTES = 32 * MiB
SEND_BUFFER = 256 * 1024
MAX_REQUEST = 8 * MiB
MAX_FETCH = 1 * MiB
IDLE_MS = 5_000
SLOW_MS = 3_000
MAX_PARTITIONS = 1000
GRPC_MAX_RPCS = 200
GRPC_MAX_MESSAGE = 4 * MiB
READER_MAX_FETCHES = 128
READER_MAX_WAITING = 96

SETTINGS = {
    "STREAMHOUSE_KAFKA_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "STREAMHOUSE_KAFKA_MAX_IN_FLIGHT_REQUESTS": str(IN_FLIGHT_REQUESTS),
    "STREAMHOUSE_KAFKA_MAX_IN_FLIGHT_BYTES": str(IN_FLIGHT_BYTES),
    "STREAMHOUSE_KAFKA_MAX_QUEUED_REQUEST_BYTES": str(QUEUED_BYTES),
    "STREAMHOUSE_KAFKA_SEND_BUFFER_BYTES": str(SEND_BUFFER),
    "STREAMHOUSE_KAFKA_MAX_REQUEST_BYTES": str(MAX_REQUEST),
    "STREAMHOUSE_MAX_FETCH_BYTES": str(MAX_FETCH),
    "STREAMHOUSE_KAFKA_IDLE_TIMEOUT_MS": str(IDLE_MS),
    "STREAMHOUSE_SLOW_CLIENT_TIMEOUT_MS": str(SLOW_MS),
    "STREAMHOUSE_MAX_PARTITIONS_PER_REQUEST": str(MAX_PARTITIONS),
    "STREAMHOUSE_GRPC_MAX_CONCURRENT_RPCS": str(GRPC_MAX_RPCS),
    "STREAMHOUSE_GRPC_MAX_MESSAGE_BYTES": str(GRPC_MAX_MESSAGE),
    "STREAMHOUSE_READER_MAX_FETCHES": str(READER_MAX_FETCHES),
    "STREAMHOUSE_READER_MAX_WAITING_FETCHES": str(READER_MAX_WAITING),
    "STREAMHOUSE_LOG_LEVEL": "ERROR",  # a line per dropped connection would measure logging
}
# Per-connection memory the Kafka listener allows (connection.py): admitted requests, one
# frame being received, unsent answers, and the answers of admitted requests.
PER_CONNECTION = IN_FLIGHT_BYTES + MAX_REQUEST + SEND_BUFFER + IN_FLIGHT_REQUESTS * MAX_FETCH


@dataclass
class Counts:
    sent: int = 0
    served: int = 0
    refused: int = 0
    dropped: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1

    def describe(self) -> str:
        parts = [f"served {self.served}", f"refused {self.refused}", f"dropped {self.dropped}"]
        if self.sent:
            parts.insert(0, f"requests sent {self.sent}")
        parts += [f"{k} {v}" for k, v in sorted(self.errors.items())]
        return ", ".join(parts)


class RssSampler:
    """Samples every program's RSS in a thread; `peak()` since the last `reset()`."""

    def __init__(self, stack: Stack) -> None:
        self.procs = {p: psutil.Process(stack.pid(p)) for p in PROGRAMS}
        self._peak: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> dict[str, int]:
        return {name: proc.memory_info().rss for name, proc in self.procs.items()}

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            now = self.current()
            with self._lock:
                for name, rss in now.items():
                    self._peak[name] = max(self._peak.get(name, 0), rss)

    def start(self) -> None:
        self._thread.start()

    def reset(self) -> dict[str, int]:
        now = self.current()
        with self._lock:
            self._peak = dict(now)
        return now

    def peak(self) -> dict[str, int]:
        """The sampled peak, or the kernel's high-water mark (VmHWM) when it is higher: a
        short burst between two samples still counts."""
        with self._lock:
            peak = dict(self._peak)
        for name, proc in self.procs.items():
            peak[name] = max(peak.get(name, 0), _high_water_mark(proc.pid))
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _high_water_mark(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# -- Kafka requests ------------------------------------------------------------------------


def request(api_key: int, version: int, body: object, correlation: int = 1) -> bytes:
    header = RequestHeader(
        request_api_key=api_key,
        request_api_version=version,
        correlation_id=correlation,
        client_id="abuse",
    )
    return encode_request(header, body)


def fetch(topic: str, partitions: int, max_wait_ms: int) -> FetchRequest:
    return FetchRequest(
        replica_id=-1,
        max_wait_ms=max_wait_ms,
        min_bytes=1,
        max_bytes=MAX_FETCH,
        topics=[
            FetchRequest.FetchTopic(
                topic=topic,
                partitions=[
                    FetchRequest.FetchPartition(
                        partition=p, fetch_offset=0, partition_max_bytes=MAX_FETCH
                    )
                    for p in range(partitions)
                ],
            )
        ],
    )


API_VERSIONS = request(18, 3, ApiVersionsRequest(client_software_name="abuse"))


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


DISCONNECTS = (
    ConnectionError,
    asyncio.IncompleteReadError,
    BrokenPipeError,
    OSError,
)


async def forever(deadline: float, counts: Counts, body: Callable[[], Awaitable[None]]) -> None:
    """Runs `body` again and again until the deadline; a disconnect counts as dropped."""
    while time.monotonic() < deadline:
        try:
            await body()
        except DISCONNECTS:
            counts.dropped += 1
            await asyncio.sleep(0.05)  # reconnect pacing of the abusive client


async def with_deadline(deadline: float, *tasks: Awaitable[None]) -> None:
    running = [asyncio.ensure_future(t) for t in tasks]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*running, return_exceptions=True),
            max(0.0, deadline - time.monotonic()) + 5,
        )
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


# -- patterns ------------------------------------------------------------------------------


async def connection_flood(stack: Stack, deadline: float, counts: Counts) -> None:
    async def client() -> None:
        async def body() -> None:
            reader, writer = await connect(stack.kafka_port)
            try:
                while time.monotonic() < deadline:
                    writer.write(API_VERSIONS)
                    try:
                        await read_frame(reader)
                    except asyncio.IncompleteReadError:
                        counts.refused += 1  # closed at once: over the connection limit
                        await asyncio.sleep(0.2)
                        return
                    counts.served += 1
                    await asyncio.sleep(0.1)
            finally:
                writer.close()

        await forever(deadline, counts, body)

    await with_deadline(deadline, *(client() for _ in range(2 * MAX_CONNECTIONS)))


async def idle_connections(stack: Stack, deadline: float, counts: Counts) -> None:
    async def client() -> None:
        async def body() -> None:
            reader, writer = await connect(stack.kafka_port)
            try:
                remaining = deadline - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    data = await asyncio.wait_for(reader.read(1), remaining)
                    if data == b"":
                        counts.dropped += 1  # closed by the idle timeout
            finally:
                writer.close()

        await forever(deadline, counts, body)

    await with_deadline(deadline, *(client() for _ in range(MAX_CONNECTIONS)))


async def slowloris(stack: Stack, deadline: float, counts: Counts) -> None:
    async def client() -> None:
        async def body() -> None:
            reader, writer = await connect(stack.kafka_port)
            try:
                writer.write(struct.pack(">i", MiB))
                while time.monotonic() < deadline:
                    writer.write(b"\x00")
                    await writer.drain()
                    if reader.at_eof():
                        counts.dropped += 1
                        return
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(1), 0.2) == b"":
                            counts.dropped += 1
                            return
            finally:
                writer.close()

        await forever(deadline, counts, body)

    await with_deadline(deadline, *(client() for _ in range(MAX_CONNECTIONS)))


async def pipeline_no_read(stack: Stack, deadline: float, counts: Counts) -> None:
    burst = b"".join(request(1, 12, fetch(TOPIC, 1, 0), i) for i in range(50))

    async def client() -> None:
        async def body() -> None:
            _, writer = await connect(stack.kafka_port)
            try:
                while time.monotonic() < deadline:
                    writer.write(burst)
                    counts.sent += 50
                    while time.monotonic() < deadline:
                        try:
                            await asyncio.wait_for(writer.drain(), 1)
                            break
                        except TimeoutError:
                            counts.error("stalls")  # back-pressure: the broker stopped reading
                    if writer.is_closing():
                        raise ConnectionResetError
            finally:
                writer.close()

        await forever(deadline, counts, body)

    await with_deadline(deadline, *(client() for _ in range(16)))


async def huge_frames(stack: Stack, deadline: float, counts: Counts) -> None:
    garbage = struct.pack(">i", MAX_REQUEST) + b"\x00\x12\x00\x03" + b"\xff" * (MAX_REQUEST - 4)
    oversize = struct.pack(">i", 1 << 30) + b"\x00" * 1024

    async def client(frame: bytes) -> None:
        async def body() -> None:
            reader, writer = await connect(stack.kafka_port)
            try:
                writer.write(frame)
                await writer.drain()
                await reader.read()  # the broker closes the connection after the frame
                counts.refused += 1
            finally:
                writer.close()

        await forever(deadline, counts, body)

    clients = [client(garbage) for _ in range(8)] + [client(oversize) for _ in range(8)]
    await with_deadline(deadline, *clients)


async def grpc_streams(stack: Stack, deadline: float, counts: Counts) -> None:
    # A local subchannel pool per channel: its own TCP connection (channels with the same
    # arguments would otherwise share one, capped at max concurrent streams).
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(stack.grpc_address, options=options) for _ in range(16)]
    try:
        await _grpc_streams(channels, deadline, counts)
    finally:
        for channel in channels:
            await channel.close()


async def _grpc_streams(channels: list[grpc.aio.Channel], deadline: float, counts: Counts) -> None:
    stubs = [streamhouse_pb2_grpc.StreamHouseStub(channel) for channel in channels]

    async def subscriber(stub: streamhouse_pb2_grpc.StreamHouseStub) -> None:
        while time.monotonic() < deadline:
            call = stub.Subscribe(
                pb.SubscribeRequest(topic=EMPTY_TOPIC, partition=0, offset=-1),
                timeout=max(0.5, deadline - time.monotonic()),
            )
            try:
                async for _ in call:
                    counts.served += 1
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    counts.refused += 1
                    await asyncio.sleep(0.2)
                elif err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    counts.error(f"{err.code().name} ({err.details()})")

    async def producer(stub: streamhouse_pb2_grpc.StreamHouseStub) -> None:
        batch = pb.ProduceBatchRequest(
            topic=TOPIC, partition=1, records=[pb.Record(value=b"s" * 1000)] * 100
        )

        async def requests():  # type: ignore[no-untyped-def]
            while time.monotonic() < deadline:
                yield batch

        while time.monotonic() < deadline:
            call = stub.ProduceStream(requests(), timeout=max(0.5, deadline - time.monotonic()))
            try:
                async for _ in call:
                    counts.served += 1
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    counts.refused += 1
                    await asyncio.sleep(0.2)
                elif err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    counts.error(f"{err.code().name} ({err.details()})")

    async def flood() -> None:
        # The producers were there first; the flood of subscribers comes a second later.
        await asyncio.sleep(1)
        await asyncio.gather(*(subscriber(stubs[i % 8]) for i in range(2 * GRPC_MAX_RPCS - 8)))

    await with_deadline(deadline, flood(), *(producer(stubs[8 + i]) for i in range(8)))


async def long_polls(stack: Stack, deadline: float, counts: Counts) -> None:
    poll = request(1, 12, fetch(EMPTY_TOPIC, 1, 5_000))

    async def client() -> None:
        async def body() -> None:
            reader, writer = await connect(stack.kafka_port)
            try:
                while time.monotonic() < deadline:
                    writer.write(poll)
                    await read_frame(reader)
                    counts.served += 1
            finally:
                writer.close()

        await forever(deadline, counts, body)

    await with_deadline(deadline, *(client() for _ in range(2 * READER_MAX_FETCHES)))


async def many_partitions(stack: Stack, deadline: float, counts: Counts) -> None:
    n = 20 * MAX_PARTITIONS
    one = encode_batch([None], [b"p"], [[]], [1_700_000_000_000])
    produce = request(
        0,
        9,
        ProduceRequest(
            acks=-1,
            timeout_ms=30_000,
            topic_data=[
                ProduceRequest.TopicProduceData(
                    name=TOPIC,
                    partition_data=[
                        ProduceRequest.PartitionProduceData(index=p, records=one) for p in range(n)
                    ],
                )
            ],
        ),
    )
    wide_fetch = request(1, 12, fetch(TOPIC, n, 0))

    async def client(frame: bytes) -> None:
        async def body() -> None:
            reader, writer = await connect(stack.kafka_port)
            try:
                while time.monotonic() < deadline:
                    writer.write(frame)
                    await read_frame(reader)
                    counts.refused += 1
            finally:
                writer.close()

        await forever(deadline, counts, body)

    await with_deadline(deadline, *[client(produce) for _ in range(4)], client(wide_fetch))


@dataclass
class Pattern:
    name: str
    run: Callable[[Stack, float, Counts], Awaitable[None]]
    process: str  # the process the bound is about
    bound: str  # how the settings bound its growth
    bound_bytes: int


PATTERNS = [
    Pattern(
        "connection-flood",
        connection_flood,
        "ingest",
        "max connections x (64 KiB read + send buffer)",
        MAX_CONNECTIONS * (SEND_BUFFER + 64 * 1024),
    ),
    Pattern(
        "idle-connections",
        idle_connections,
        "ingest",
        "max connections x 64 KiB",
        MAX_CONNECTIONS * 64 * 1024,
    ),
    Pattern(
        "slowloris",
        slowloris,
        "ingest",
        "max connections x (1 MiB partial frame + 64 KiB)",
        MAX_CONNECTIONS * (MiB + 64 * 1024),
    ),
    Pattern(
        "pipeline-no-read",
        pipeline_no_read,
        "ingest",
        "16 connections x (in-flight bytes + max frame + send buffer + in-flight x max fetch)",
        16 * PER_CONNECTION,
    ),
    Pattern(
        "huge-frames",
        huge_frames,
        "ingest",
        "8 connections x max request frame (+ 8 refused from the size prefix)",
        8 * (MAX_REQUEST + 256 * 1024),
    ),
    Pattern(
        "grpc-streams",
        grpc_streams,
        "ingest",
        "max RPCs x 64 KiB + 8 ProduceStreams x (1 MiB window + 32 in flight x 2 x 100 KB)",
        GRPC_MAX_RPCS * 64 * 1024 + 8 * (MiB + 32 * 2 * 100 * 1024),
    ),
    Pattern(
        "long-polls",
        long_polls,
        "reader",
        "reader max fetches x max fetch bytes",
        READER_MAX_FETCHES * MAX_FETCH,
    ),
    Pattern(
        "many-partitions",
        many_partitions,
        "ingest",
        "5 connections x (max request frame + in-flight bytes)",
        5 * (MAX_REQUEST + IN_FLIGHT_BYTES),
    ),
]


def ring_bytes(process: str, settings: Settings) -> int:
    """Shared-memory ring bytes a process maps: resident once traffic has touched them, so
    they are part of its fixed overhead."""
    rings = {
        "ingest": ("produce", "ack", "fetch_request", "fetch_response"),
        "reader": ("fetch_request", "fetch_response", "committed"),
    }[process]
    return sum(getattr(settings, f"{ring}_ring_bytes") for ring in rings)


def mib(n: int) -> str:
    return f"{n / MiB:.0f}"


def run_pattern(pattern: Pattern, seconds: float, tmp: str) -> tuple[Any, ...]:
    """Runs one pattern on a fresh stack; returns its table row."""
    stack = Stack(pathlib.Path(tmp) / pattern.name / "data", env=SETTINGS)
    stack.start()
    try:
        with Client(stack.grpc_address) as client:
            client.create_topic(TOPIC, 4)
            client.create_topic(EMPTY_TOPIC, 1)
            client.produce_batch(
                TOPIC, [Record(value=b"x" * 60_000) for _ in range(4)], partition=0
            )
        sampler = RssSampler(stack)
        sampler.start()
        idle = sampler.reset()
        counts = Counts()
        asyncio.run(pattern.run(stack, time.monotonic() + seconds, counts))
        peak = sampler.peak()
        sampler.stop()
        print(f"{pattern.name}: {counts.describe()}", file=sys.stderr)
        stack.wait_ready(30)  # every process still up and serving
        if any(stack.pid(p) != sampler.procs[p].pid for p in PROGRAMS):
            raise SystemExit(f"a process restarted during {pattern.name}")
    finally:
        stack.stop()
    growth = peak[pattern.process] - idle[pattern.process]
    rings = ring_bytes(pattern.process, stack.settings)
    return (
        pattern.name,
        idle,
        peak,
        f"{growth / MiB:.1f} ({pattern.process})",
        f"{mib(rings + pattern.bound_bytes)}: rings {mib(rings)} + {pattern.bound}",
        counts.describe(),
    )


def compile_bytecode() -> None:
    """Writes the stack's bytecode caches first, as an installed package has them: a process
    that compiles the generated Kafka codec at start-up keeps ~60 MiB of freed heap, which
    would hide growth (PYTHONDONTWRITEBYTECODE stops only the writing, not the reading)."""
    root = pathlib.Path(__file__).resolve().parent.parent
    for package in ("streamhouse", "ingest", "segmenter", "uploader", "reader", "metadata"):
        compileall.compile_dir(root / package, quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="length of each pattern")
    parser.add_argument("--only", default="", help="comma-separated pattern names")
    args = parser.parse_args()
    wanted = [p for p in PATTERNS if not args.only or p.name in args.only.split(",")]
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="streamhouse-abuse-") as tmp:
        rows = [run_pattern(pattern, args.seconds, tmp) for pattern in wanted]
    head = " | ".join(f"{p} idle / peak MiB" for p in PROGRAMS)
    print(f"| pattern | {head} | growth MiB (process) | bound MiB | clients saw |")
    print("|---" * (len(PROGRAMS) + 4) + "|")
    for name, idle, peak, grown, bound, seen in rows:
        cells = " | ".join(f"{mib(idle[p])} / {mib(peak[p])}" for p in PROGRAMS)
        print(f"| {name} | {cells} | {grown} | {bound} | {seen} |")


if __name__ == "__main__":
    main()
