"""KafkaConnection's limits, driven with bytes and a fake transport (no sockets): in-flight
requests and bytes pause and resume reading, buffered frames are taken first, and the
slow-client, unread-responses and idle timeouts are checked on an explicit clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ingest.kafka.connection import ConnectionLimits, KafkaConnection, RequestBytesPool
from ingest.kafka.limits import produce_entries
from streamhouse.kafka.framing import encode_request
from streamhouse.kafka.messages import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    ProduceRequest,
    RequestHeader,
)

LIMITS = ConnectionLimits(
    max_frame_bytes=1024 * 1024,
    max_non_produce_frame_bytes=64 * 1024,
    max_produce_entries=8,
    max_in_flight_requests=3,
    max_in_flight_bytes=10_000,
    send_buffer_bytes=1024,
    idle_timeout=10.0,
    slow_client_timeout=2.0,
)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.written: list[bytes] = []
        self.closed = False
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class Harness:
    """One connection whose handlers wait until the test answers them."""

    def __init__(
        self, limits: ConnectionLimits = LIMITS, pool: RequestBytesPool | None = None
    ) -> None:
        self.answers: list[asyncio.Future[Any]] = []
        self.closed: list[KafkaConnection] = []
        self.pool = pool or RequestBytesPool(1 << 30)
        self.connection = KafkaConnection(
            self._dispatch, _versions, limits, self.closed.append, self.pool
        )
        self.transport = FakeTransport()
        self.connection.connection_made(self.transport)
        self.correlation = 0

    def _dispatch(self, api_key: int, api_version: int) -> Any:
        async def handler(header: RequestHeader, request: Any) -> Any:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.answers.append(future)
            return await future

        return handler

    def frame(self, padding: int = 0) -> bytes:
        self.correlation += 1
        header = RequestHeader(
            request_api_key=18,
            request_api_version=3,
            correlation_id=self.correlation,
            client_id="unit",
        )
        body = ApiVersionsRequest(client_software_name="unit" + "x" * padding)
        return encode_request(header, body)

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def answer_first(self) -> None:
        self.answers.pop(0).set_result(_versions())
        await self.settle()


def _versions() -> ApiVersionsResponse:
    return ApiVersionsResponse(error_code=0, api_keys=[])


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_in_flight_request_limit_pauses_reading_and_answers_resume_it() -> None:
    async def scenario() -> None:
        h = Harness()
        h.connection.data_received(b"".join(h.frame() for _ in range(5)))
        await h.settle()
        assert len(h.answers) == 3, "only max_in_flight_requests are admitted"
        assert h.transport.paused
        await h.answer_first()
        assert len(h.transport.written) == 1
        assert len(h.answers) == 3, "a buffered frame is admitted as soon as one leaves"
        assert h.transport.paused, "still full: two buffered frames were waiting"
        await h.answer_first()
        await h.answer_first()
        assert len(h.answers) == 2 and not h.transport.paused
        while h.answers:
            await h.answer_first()
        assert len(h.transport.written) == 5

    run(scenario())


def test_in_flight_bytes_limit_admits_the_first_request_whatever_its_size() -> None:
    async def scenario() -> None:
        h = Harness()
        h.connection.data_received(h.frame(padding=12_000) + h.frame())
        await h.settle()
        assert len(h.answers) == 1, "the big first request passes, the next one waits"
        assert h.transport.paused
        await h.answer_first()
        assert len(h.answers) == 1 and not h.transport.paused

    run(scenario())


def test_slow_frame_is_dropped_after_the_slow_client_timeout() -> None:
    async def scenario() -> None:
        h = Harness()
        now = asyncio.get_running_loop().time()
        h.connection.data_received(h.frame()[:3])
        h.connection.check_timeouts(now + 1.0)
        assert not h.transport.closed
        h.connection.check_timeouts(now + 2.5)
        assert h.transport.closed

    run(scenario())


def test_the_slow_clock_does_not_run_while_the_broker_stopped_reading() -> None:
    async def scenario() -> None:
        h = Harness()
        now = asyncio.get_running_loop().time()
        h.connection.data_received(b"".join(h.frame() for _ in range(3)) + h.frame()[:5])
        await h.settle()
        assert h.transport.paused
        h.connection.check_timeouts(now + 100)
        assert not h.transport.closed and not h.transport.aborted
        await h.answer_first()
        assert not h.transport.paused
        later = asyncio.get_running_loop().time()
        h.connection.check_timeouts(later + 1.0)
        assert not h.transport.closed
        h.connection.check_timeouts(later + 2.5)
        assert h.transport.closed

    run(scenario())


def test_a_client_that_does_not_read_is_aborted_after_the_slow_client_timeout() -> None:
    async def scenario() -> None:
        h = Harness()
        now = asyncio.get_running_loop().time()
        h.connection.pause_writing()
        h.connection.data_received(h.frame())
        await h.settle()
        await h.answer_first()
        assert h.transport.written == [], "answers wait while the transport is over its limit"
        h.connection.check_timeouts(now + 1.0)
        assert not h.transport.aborted
        h.connection.check_timeouts(now + 2.5)
        assert h.transport.aborted

    run(scenario())


@pytest.mark.parametrize("busy", [False, True])
def test_idle_timeout_closes_only_a_connection_with_nothing_in_flight(busy: bool) -> None:
    async def scenario() -> None:
        h = Harness()
        now = asyncio.get_running_loop().time()
        if busy:
            h.connection.data_received(h.frame())
            await h.settle()
        h.connection.check_timeouts(now + 5)
        assert not h.transport.closed
        h.connection.check_timeouts(now + 11)
        assert h.transport.closed != busy

    run(scenario())


def _produce_frame(version: int, topics: int, partitions: int) -> bytes:
    P = ProduceRequest
    request = P(
        transactional_id=None,
        acks=-1,
        timeout_ms=1000,
        topic_data=[
            P.TopicProduceData(
                name=f"t{t}",
                partition_data=[
                    P.PartitionProduceData(index=p, records=b"x" * 70 if p % 2 else None)
                    for p in range(partitions)
                ],
            )
            for t in range(topics)
        ],
    )
    header = RequestHeader(
        request_api_key=0, request_api_version=version, correlation_id=7, client_id="c"
    )
    return encode_request(header, request)[4:]


@pytest.mark.parametrize("version", [3, 8, 9, 11])
def test_produce_entries_counts_topics_and_partitions_without_decoding(version: int) -> None:
    assert produce_entries(_produce_frame(version, 3, 5), 1000) == 3 + 15
    assert produce_entries(_produce_frame(version, 1, 0), 1000) == 1
    # It stops one past the limit, however many there are.
    assert produce_entries(_produce_frame(version, 2, 50_000), 10) == 11


def test_produce_entries_leaves_other_apis_and_broken_frames_to_the_decoder() -> None:
    frame = _produce_frame(9, 2, 3)
    assert produce_entries(frame[:-7], 1000) is None
    assert produce_entries(frame[:9], 1000) is None
    header = RequestHeader(request_api_key=18, request_api_version=3, correlation_id=1)
    versions = encode_request(header, ApiVersionsRequest(client_software_name="unit"))[4:]
    assert produce_entries(versions, 1000) is None


def test_a_produce_naming_too_many_partitions_closes_before_decoding() -> None:
    async def scenario() -> None:
        h = Harness()
        frame = _produce_frame(9, 1, 20)
        h.connection.data_received(len(frame).to_bytes(4, "big") + frame)
        await h.settle()
        assert h.transport.closed and h.answers == []

    run(scenario())


def test_a_large_request_of_another_api_closes_before_decoding() -> None:
    async def scenario() -> None:
        h = Harness()
        h.connection.data_received(h.frame(padding=30_000))
        await h.settle()
        assert not h.transport.closed and len(h.answers) == 1
        await h.answer_first()
        h.connection.data_received(h.frame(padding=70_000))
        await h.settle()
        assert h.transport.closed and h.answers == []

    run(scenario())


def test_the_listener_pool_bounds_request_bytes_over_all_connections() -> None:
    async def scenario() -> None:
        pool = RequestBytesPool(5_000)
        a, b = Harness(pool=pool), Harness(pool=pool)
        a.connection.data_received(a.frame(padding=6_000))
        await a.settle()
        assert len(a.answers) == 1 and pool.used > pool.capacity
        b.connection.data_received(b.frame())
        await b.settle()
        assert b.answers == [] and b.transport.paused, "not even a first request: pool is full"
        await a.answer_first()
        assert pool.used < pool.capacity
        assert len(b.answers) == 1 and not b.transport.paused, "b is offered the freed bytes"
        await b.answer_first()
        assert pool.used == 0

    run(scenario())


def test_a_closed_connection_gives_its_bytes_back() -> None:
    async def scenario() -> None:
        pool = RequestBytesPool(5_000)
        a, b = Harness(pool=pool), Harness(pool=pool)
        a.connection.data_received(a.frame(padding=6_000))
        b.connection.data_received(b.frame())
        await a.settle()
        assert b.answers == []
        a.connection.connection_lost(None)
        await b.settle()
        assert len(b.answers) == 1

    run(scenario())
