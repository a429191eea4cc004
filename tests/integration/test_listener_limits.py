"""Resource limits on the listeners, over real sockets against one stack with small limits:
connections, idle and slow-client timeouts, a client that pipelines and never reads, partitions
per request, gRPC message size and concurrent RPCs, and the reader's long-poll bound.

Every wait is bounded polling on a condition; the only sleeps pace a client that must look
busy (the idle-timeout case), they never wait for the server.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psutil
import pytest

from streamhouse.client import Client, Record, StreamHouseError
from streamhouse.kafka.framing import decode_response, encode_request
from streamhouse.kafka.messages import (
    ApiVersionsRequest,
    FetchRequest,
    ProduceRequest,
    RequestHeader,
)
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.proto import streamhouse_pb2_grpc
from streamhouse.recordbatch import encode_batch
from streamhouse.testing import Stack

MiB = 1024 * 1024
MAX_CONNECTIONS = 6
IDLE_S = 1.5
SLOW_S = 1.5
MAX_PARTITIONS = 4
GRPC_MAX_MESSAGE = 1 * MiB
GRPC_MAX_RPCS = 6
GRPC_MAX_CONNECTIONS = 6
READER_MAX_WAITING = 2
INVALID_REQUEST = 42
TOPIC = "limits"

LIMITS = {
    "STREAMHOUSE_KAFKA_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "STREAMHOUSE_KAFKA_MAX_IN_FLIGHT_REQUESTS": "4",
    "STREAMHOUSE_KAFKA_MAX_IN_FLIGHT_BYTES": str(64 * 1024),
    "STREAMHOUSE_KAFKA_SEND_BUFFER_BYTES": str(64 * 1024),
    "STREAMHOUSE_KAFKA_IDLE_TIMEOUT_MS": str(int(IDLE_S * 1000)),
    "STREAMHOUSE_SLOW_CLIENT_TIMEOUT_MS": str(int(SLOW_S * 1000)),
    "STREAMHOUSE_MAX_PARTITIONS_PER_REQUEST": str(MAX_PARTITIONS),
    "STREAMHOUSE_GRPC_MAX_MESSAGE_BYTES": str(GRPC_MAX_MESSAGE),
    "STREAMHOUSE_GRPC_MAX_CONCURRENT_RPCS": str(GRPC_MAX_RPCS),
    "STREAMHOUSE_GRPC_MAX_CONNECTIONS": str(GRPC_MAX_CONNECTIONS),
    "STREAMHOUSE_READER_MAX_FETCHES": "8",
    "STREAMHOUSE_READER_MAX_WAITING_FETCHES": str(READER_MAX_WAITING),
}


def batch(*values: bytes) -> bytes:
    n = len(values)
    return encode_batch([None] * n, list(values), [[] for _ in range(n)], [1_700_000_000_000] * n)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls `condition` until it holds; fails with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.02)


class Raw:
    """One TCP connection speaking Kafka frames built with the generated codec."""

    def __init__(self, port: int, timeout: float = 10, small_receive_buffer: bool = False) -> None:
        self.sock = socket.socket()
        if small_receive_buffer:
            # So that the broker's answers stop fitting in the kernel after little data.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, api_key: int, version: int, body: Any) -> tuple[bytes, RequestHeader]:
        self.correlation += 1
        header = RequestHeader(
            request_api_key=api_key,
            request_api_version=version,
            correlation_id=self.correlation,
            client_id="limits-test",
        )
        return encode_request(header, body), header

    def call(self, api_key: int, version: int, body: Any) -> Any | None:
        """The response, or None when the server closed the connection instead."""
        data, header = self.request(api_key, version, body)
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return None
        frame = self.read_frame()
        if frame is None:
            return None
        response_header, response = decode_response(frame, api_key, version)
        assert response_header.correlation_id == header.correlation_id
        return response

    def read_frame(self) -> bytes | None:
        size = self._read_exactly(4)
        if size is None:
            return None
        payload = self._read_exactly(struct.unpack(">i", size)[0])
        assert payload is not None, "connection closed inside a response frame"
        return payload

    def _read_exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            data += chunk
        return data

    def works(self) -> bool:
        response = self.call(18, 3, ApiVersionsRequest(client_software_name="limits-test"))
        return response is not None and response.error_code == 0

    def closed_by_server(self) -> float:
        """Blocks until the server closes the connection; returns how long that took."""
        start = time.monotonic()
        assert self.read_frame() is None, "expected a disconnect, got a response"
        return time.monotonic() - start


def produce_request(partitions: int, topic: str = TOPIC) -> ProduceRequest:
    return ProduceRequest(
        acks=-1,
        timeout_ms=30_000,
        topic_data=[
            ProduceRequest.TopicProduceData(
                name=topic,
                partition_data=[
                    ProduceRequest.PartitionProduceData(index=p, records=batch(b"v%d" % p))
                    for p in range(partitions)
                ],
            )
        ],
    )


def fetch_request(partitions: int, topic: str = TOPIC, max_wait_ms: int = 0) -> FetchRequest:
    return FetchRequest(
        replica_id=-1,
        max_wait_ms=max_wait_ms,
        min_bytes=1,
        max_bytes=4 * MiB,
        topics=[
            FetchRequest.FetchTopic(
                topic=topic,
                partitions=[
                    FetchRequest.FetchPartition(
                        partition=p, fetch_offset=0, partition_max_bytes=1 * MiB
                    )
                    for p in range(partitions)
                ],
            )
        ],
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("limits") / "data", env=LIMITS) as running:
        with Client(running.grpc_address) as client:
            client.create_topic(TOPIC, MAX_PARTITIONS)
        yield running


def open_working(port: int) -> Raw:
    """A connection the broker serves, retried while it still counts closed ones of earlier
    tests (it notices their close asynchronously)."""
    deadline = time.monotonic() + 10
    while True:
        conn = Raw(port)
        if conn.works():
            return conn
        conn.close()
        assert time.monotonic() < deadline, "no Kafka connection was served within 10s"
        time.sleep(0.02)


def test_connection_limit_refuses_the_next_one(stack: Stack) -> None:
    open_ = [open_working(stack.kafka_port) for _ in range(MAX_CONNECTIONS)]
    try:
        extra = Raw(stack.kafka_port)
        assert extra.closed_by_server() < 5  # accepted and closed at once, nothing read
        extra.close()
        assert all(conn.works() for conn in open_), "open connections must be unaffected"
        open_.pop().close()
        open_.append(open_working(stack.kafka_port))  # room again once one left
    finally:
        for conn in open_:
            conn.close()


def test_idle_connection_is_closed_busy_one_is_not(stack: Stack) -> None:
    idle = open_working(stack.kafka_port)
    busy = open_working(stack.kafka_port)
    try:
        start = time.monotonic()
        while time.monotonic() - start < 2 * IDLE_S:
            assert busy.works(), "a connection with requests every IDLE/3 must stay open"
            time.sleep(IDLE_S / 3)  # pacing a busy client, not waiting for the server
        took = idle.closed_by_server() + (time.monotonic() - start)
        assert took >= IDLE_S
        assert busy.works()
    finally:
        idle.close()
        busy.close()


@pytest.mark.parametrize("partial", [b"\x00\x00\x00", struct.pack(">i", 100) + b"\x00\x12"])
def test_slowloris_is_dropped_while_a_good_client_works(stack: Stack, partial: bytes) -> None:
    good = open_working(stack.kafka_port)
    slow = open_working(stack.kafka_port)
    try:
        slow.sock.sendall(partial)
        started = time.monotonic()
        slow.sock.settimeout(0.05)
        closed = False
        while not closed:
            assert good.works()
            try:
                closed = slow.sock.recv(1) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
            assert time.monotonic() - started < SLOW_S + 8, "slow client not dropped"
        assert time.monotonic() - started >= SLOW_S * 0.9
        assert good.works()
    finally:
        good.close()
        slow.close()


def test_pipelining_client_that_never_reads_is_throttled_then_dropped(stack: Stack) -> None:
    with Client(stack.grpc_address) as client:
        client.produce_batch(TOPIC, [Record(value=b"x" * 60_000) for _ in range(4)], partition=0)
    ingest = psutil.Process(stack.pid("ingest"))
    rss_before = ingest.memory_info().rss
    good = open_working(stack.kafka_port)
    hog = Raw(stack.kafka_port, timeout=0.5, small_receive_buffer=True)
    # 50 pipelined fetches per send; each answer carries ~240 KB.
    request = b"".join(hog.request(1, 12, fetch_request(1))[0] for _ in range(50))
    sent = stalls = 0
    peak = rss_before
    dropped = False
    deadline = time.monotonic() + SLOW_S + 20
    try:
        while not dropped:
            assert time.monotonic() < deadline, "the non-reading client was never dropped"
            try:
                hog.sock.sendall(request)
                sent += 1
            except TimeoutError:
                stalls += 1  # the broker stopped reading: back-pressure
                assert good.works(), "a normal client must be unaffected"
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
            peak = max(peak, ingest.memory_info().rss)
        assert stalls > 0, "sends never blocked: no back-pressure"
        # Without limits the broker would hold every answer: sent x 50 x 240 KB.
        assert sent * 50 * 240_000 > 48 * MiB
        assert peak - rss_before < 48 * MiB, f"ingest grew {(peak - rss_before) / MiB:.0f} MiB"
        assert good.works()
    finally:
        hog.close()
        good.close()


def test_partitions_per_request_limit(stack: Stack) -> None:
    conn = open_working(stack.kafka_port)
    try:
        ok = conn.call(0, 9, produce_request(MAX_PARTITIONS))
        assert [p.error_code for p in ok.responses[0].partition_responses] == [0] * MAX_PARTITIONS
        refused = conn.call(0, 9, produce_request(MAX_PARTITIONS + 1))
        parts = refused.responses[0].partition_responses
        assert [p.error_code for p in parts] == [INVALID_REQUEST] * (MAX_PARTITIONS + 1)
        assert "STREAMHOUSE_MAX_PARTITIONS_PER_REQUEST" in parts[0].error_message
        fetched = conn.call(1, 12, fetch_request(MAX_PARTITIONS))
        assert fetched.error_code == 0
        assert all(p.error_code == 0 for p in fetched.responses[0].partitions)
        refused_fetch = conn.call(1, 12, fetch_request(MAX_PARTITIONS + 1))
        assert refused_fetch.error_code == INVALID_REQUEST
        assert all(p.error_code == INVALID_REQUEST for p in refused_fetch.responses[0].partitions)
        assert conn.works(), "a refused request does not close the connection"
    finally:
        conn.close()


def test_requests_too_costly_to_decode_close_the_connection(stack: Stack) -> None:
    """A Produce naming over 4 x the partition limit, or another API's request over
    KAFKA_MAX_NON_PRODUCE_REQUEST_BYTES, closes the connection undecoded; others are served."""
    good = open_working(stack.kafka_port)
    try:
        wide = open_working(stack.kafka_port)
        data, _ = wide.request(0, 9, produce_request(5 * MAX_PARTITIONS))
        wide.sock.sendall(data)
        assert wide.closed_by_server() < 10
        wide.close()
        big = open_working(stack.kafka_port)
        body = ApiVersionsRequest(client_software_name="x" * (1024 * 1024 + 1))
        data, _ = big.request(18, 3, body)
        big.sock.sendall(data)
        assert big.closed_by_server() < 10
        big.close()
        assert good.works()
    finally:
        good.close()


def test_grpc_produce_partitions_per_request_limit(stack: Stack) -> None:
    with Client(stack.grpc_address) as client:
        client.create_topic("limits-wide", 2 * MAX_PARTITIONS)
        records = [Record(key=b"key-%d" % i, value=b"v") for i in range(100)]
        with pytest.raises(StreamHouseError) as err:
            client.produce_batch("limits-wide", records)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "STREAMHOUSE_MAX_PARTITIONS_PER_REQUEST" in str(err.value)
        assert client.produce_batch("limits-wide", records[:MAX_PARTITIONS]).record_count == 4


def test_grpc_oversize_message_is_refused(stack: Stack) -> None:
    with grpc.insecure_channel(
        stack.grpc_address, options=[("grpc.max_send_message_length", 8 * MiB)]
    ) as channel:
        stub = streamhouse_pb2_grpc.StreamHouseStub(channel)
        big = pb.ProduceBatchRequest(
            topic=TOPIC, partition=0, records=[pb.Record(value=b"x" * (GRPC_MAX_MESSAGE + 1))]
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.ProduceBatch(big, timeout=10)
        assert err.value.code() in (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        small = pb.ProduceBatchRequest(topic=TOPIC, partition=0, records=[pb.Record(value=b"ok")])
        assert stub.ProduceBatch(small, timeout=10).record_count == 1


def _consume(stub: Any, max_wait_ms: int, partition: int = 1) -> Any:
    request = pb.ConsumeRequest(
        topic=TOPIC, partition=partition, offset=-1, max_wait_ms=max_wait_ms
    )
    return stub.Consume.future(request, timeout=max_wait_ms / 1000 + 10)


def test_grpc_slow_handshake_is_dropped(stack: Stack) -> None:
    """A TCP connection to the gRPC port that never finishes the HTTP/2 preface is closed
    after the slow-client timeout, while calls on other connections keep working."""
    with (
        socket.create_connection(("127.0.0.1", stack.grpc_port), timeout=SLOW_S + 10) as sock,
        Client(stack.grpc_address) as client,
    ):
        sock.sendall(b"PRI")
        start = time.monotonic()
        assert client.get_topic(TOPIC).partitions == MAX_PARTITIONS
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
        took = time.monotonic() - start
        assert SLOW_S * 0.9 <= took < SLOW_S + 10
        assert client.get_topic(TOPIC).partitions == MAX_PARTITIONS


def _get_topic_on_new_connection(stack: Stack, timeout: float) -> bool:
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(stack.grpc_address, options=options) as channel:
        stub = streamhouse_pb2_grpc.StreamHouseStub(channel)
        return _ok(lambda: stub.GetTopic(pb.GetTopicRequest(name=TOPIC), timeout=timeout))


def _server_connections(stack: Stack) -> int:
    """Established connections on ingest's side of its gRPC port (whoever the clients are)."""
    ingest = psutil.Process(stack.pid("ingest"))
    return sum(
        1
        for c in ingest.net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == stack.grpc_port
    )


def test_grpc_connection_limit(stack: Stack) -> None:
    """Ingest holds at most GRPC_MAX_CONNECTIONS gRPC connections, whoever opened them (the
    stack's own console holds one): with that many open, a new one is closed as it is accepted
    (UNAVAILABLE); once one leaves, a new one is served.

    The held connections are real gRPC channels that completed a call: a raw socket that sent
    only the HTTP/2 preface is no steady holder, grpc drops it (its SETTINGS not read within
    `server_handshake_timeout_ms`, or the server's SETTINGS never acknowledged within a
    minute), which frees its place: the cause of this test's earlier intermittent failures."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own per channel
    held: list[grpc.Channel] = []

    def works(channel: grpc.Channel) -> bool:
        stub = streamhouse_pb2_grpc.StreamHouseStub(channel)
        return _ok(lambda: stub.GetTopic(pb.GetTopicRequest(name=TOPIC), timeout=5))

    try:
        while True:
            channel = grpc.insecure_channel(stack.grpc_address, options=options)
            if not works(channel):
                channel.close()
                break
            held.append(channel)
            assert len(held) <= GRPC_MAX_CONNECTIONS, "more connections served than the limit"
        # The refusal came at the limit: the server holds exactly that many (the refused
        # connection is closed at accept, so it is not among them for long).
        wait_for(
            lambda: _server_connections(stack) == GRPC_MAX_CONNECTIONS,
            10,
            f"ingest holding {GRPC_MAX_CONNECTIONS} connections when it refused one "
            f"({len(held)} held by the test, {_server_connections(stack)} in all)",
        )
        assert not _get_topic_on_new_connection(stack, 2.0), "a connection over the limit served"
        assert all(works(channel) for channel in held), "a held connection was dropped"
        held.pop().close()
        wait_for(
            lambda: _get_topic_on_new_connection(stack, 2.0),
            20,
            "a gRPC call served on a new connection once a held one closed",
        )
    finally:
        for channel in held:
            channel.close()
    wait_for(
        lambda: _server_connections(stack) < GRPC_MAX_CONNECTIONS,
        20,
        "ingest releasing the held connections",
    )


def test_grpc_concurrent_rpc_limit(stack: Stack) -> None:
    release = threading.Event()

    def nothing_until_released() -> Iterator[pb.ProduceBatchRequest]:
        release.wait(30)
        return
        yield

    with grpc.insecure_channel(stack.grpc_address) as channel:
        stub = streamhouse_pb2_grpc.StreamHouseStub(channel)
        # Open ProduceStreams that send nothing hold one RPC each.
        holders = [stub.ProduceStream(nothing_until_released()) for _ in range(GRPC_MAX_RPCS)]
        try:
            # Once the holders are running, one more RPC is refused at once.
            deadline = time.monotonic() + 10
            while True:
                try:
                    stub.GetTopic(pb.GetTopicRequest(name=TOPIC), timeout=5)
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                    break
                assert time.monotonic() < deadline, "the RPC limit never refused a call"
                time.sleep(0.02)
        finally:
            release.set()
            for call in holders:
                call.cancel()
        # Slots come back when the holders end.
        wait_for(
            lambda: _ok(lambda: stub.GetTopic(pb.GetTopicRequest(name=TOPIC), timeout=5)),
            10,
            "an RPC served again after the holders were cancelled",
        )


def _ok(call: Callable[[], Any]) -> bool:
    try:
        call()
        return True
    except grpc.RpcError:
        return False


def _poll_woken_by_commit(stub: Any, client: Client, partition: int, max_wait_s: float) -> float:
    """Seconds until a long poll at the tail of `partition` answers, when a record is
    committed there right after it was sent; the answer must carry that record."""
    start = time.monotonic()
    poll = _consume(stub, int(max_wait_s * 1000), partition=partition)
    client.produce(TOPIC, b"wake", partition=partition)
    response = poll.result()
    assert [r.value for r in response.records] == [b"wake"]
    return time.monotonic() - start


def test_reader_parks_long_polls_beyond_its_limit(stack: Stack) -> None:
    """With READER_MAX_WAITING long polls waiting, one more is not woken by a commit: it is
    answered at its max_wait (latency, never an early empty answer to spin on)."""
    with (
        grpc.insecure_channel(stack.grpc_address) as channel,
        Client(stack.grpc_address) as client,
    ):
        stub = streamhouse_pb2_grpc.StreamHouseStub(channel)
        assert _poll_woken_by_commit(stub, client, 3, 4.0) < 3.0, "a commit wakes a long poll"
        # Held 12 s: the reader keeps a poll until its max_wait (a cancelled gRPC call does not
        # reach it), so the check after the holders leave waits this out.
        waiting = [_consume(stub, 12_000, partition=2) for _ in range(READER_MAX_WAITING)]
        try:
            # Wait until the holders are in the reader: a further poll is then parked.
            deadline = time.monotonic() + 30
            while _poll_woken_by_commit(stub, client, 3, 4.0) < 3.0:
                assert time.monotonic() < deadline, "a poll beyond the limit was woken early"
            assert not any(call.done() for call in waiting), "the waiting polls keep waiting"
        finally:
            for call in waiting:
                call.cancel()
        wait_for(
            lambda: _poll_woken_by_commit(stub, client, 3, 4.0) < 3.0,
            30,
            "long polls woken by commits again once the holders left",
        )
