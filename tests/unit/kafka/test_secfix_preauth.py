"""Before SASL authentication a connection costs the broker little: a request of an API not
allowed before login is refused from the frame's first two bytes (never decoded), a frame over
512 KiB is refused from its size prefix (never buffered), and only one request is in flight
at a time. After login the normal limits apply again. Driven with bytes and a fake transport
(ingest/kafka/connection.py)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

import ingest.kafka.connection as connection
from ingest.kafka.connection import ConnectionLimits, KafkaConnection, RequestBytesPool
from ingest.kafka.sasl import ListenerSecurity
from streamhouse.kafka.framing import encode_request
from streamhouse.kafka.messages import (
    ApiVersionsResponse,
    ProduceRequest,
    ProduceResponse,
    RequestHeader,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)
from streamhouse.scram import ScramCredential

LIMITS = ConnectionLimits(
    max_frame_bytes=8 << 20,
    max_non_produce_frame_bytes=4 << 20,
    max_produce_entries=64,
    max_in_flight_requests=8,
    max_in_flight_bytes=16 << 20,
    send_buffer_bytes=1 << 20,
    idle_timeout=60.0,
    slow_client_timeout=60.0,
)

HANDSHAKE_OK = SaslHandshakeResponse(error_code=0, mechanisms=["PLAIN"])


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


async def _lookup(mechanism: str, user: str) -> ScramCredential | None:
    return None


class _Harness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decoded: list[int] = []
        real = connection.decode_request

        def spy(frame: Any) -> Any:
            self.decoded.append(int.from_bytes(bytes(frame[:2]), "big"))
            return real(frame)

        monkeypatch.setattr(connection, "decode_request", spy)
        self.started: list[tuple[int, asyncio.Future[Any]]] = []
        security = ListenerSecurity("SASL_PLAINTEXT", ("PLAIN",), _lookup)
        self.conn = KafkaConnection(
            self._dispatch,
            ApiVersionsResponse,
            LIMITS,
            lambda _c: None,
            RequestBytesPool(1 << 30),
            security,
        )
        self.transport = _Transport()
        self.conn.connection_made(self.transport)
        self.correlation = 0

    def _dispatch(self, api_key: int, api_version: int) -> Any:
        async def handler(header: RequestHeader, request: Any) -> Any:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.started.append((header.request_api_key, future))
            return await future

        return handler

    def frame(self, api_key: int, version: int, body: Any) -> bytes:
        self.correlation += 1
        header = RequestHeader(
            request_api_key=api_key,
            request_api_version=version,
            correlation_id=self.correlation,
            client_id="secfix",
        )
        return encode_request(header, body)

    def handshake(self) -> bytes:
        return self.frame(17, 1, SaslHandshakeRequest(mechanism="PLAIN"))

    def produce(self, size: int) -> bytes:
        P = ProduceRequest
        part = P.PartitionProduceData(index=0, records=b"x" * size)
        body = P(
            acks=1,
            timeout_ms=1000,
            topic_data=[P.TopicProduceData(name="t", partition_data=[part])],
        )
        return self.frame(0, 9, body)

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)


def _run(test: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        await test(_Harness(monkeypatch))

    asyncio.run(go())


@pytest.mark.parametrize("size", [10, 2 << 20])
def test_an_api_not_allowed_before_login_is_refused_undecoded(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    async def test(h: _Harness) -> None:
        frame = h.produce(size)
        if size > 512 * 1024:  # too large before login: refused from the size prefix
            h.conn.data_received(frame[:4])
        else:
            h.conn.data_received(frame)
        await h.settle()
        assert h.transport.closed
        assert h.decoded == [] and h.started == []

    _run(test, monkeypatch)


def test_a_large_frame_before_login_is_refused_from_its_size_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def test(h: _Harness) -> None:
        h.conn.data_received(struct.pack(">i", 512 * 1024 + 1))
        await h.settle()
        assert h.transport.closed and h.decoded == []

    _run(test, monkeypatch)


def test_one_request_in_flight_until_login_then_the_normal_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def test(h: _Harness) -> None:
        h.conn.data_received(h.handshake() + h.handshake() + h.handshake())
        await h.settle()
        assert [k for k, _ in h.started] == [17]  # the others wait, not decoded
        assert h.decoded == [17] and h.transport.paused
        h.started[0][1].set_result(HANDSHAKE_OK)
        await h.settle()
        assert len(h.started) == 2 and not h.transport.closed
        # Login completes with the second request's answer: the rest flows, big frames too.
        session = h.conn._sasl
        assert session is not None
        session.principal = "User:alice"
        h.started[1][1].set_result(HANDSHAKE_OK)
        await h.settle()
        assert len(h.started) == 3
        big = h.produce(2 << 20)
        h.conn.data_received(big + h.produce(10))
        await h.settle()
        assert [k for k, _ in h.started] == [17, 17, 17, 0, 0]  # several in flight
        assert not h.transport.closed
        h.started[2][1].set_result(HANDSHAKE_OK)
        for _, future in h.started[3:]:
            future.set_result(ProduceResponse(responses=[]))
        await h.settle()

    _run(test, monkeypatch)
