"""A Kafka connection that drops while responses are pending leaves no error behind.

The in-order sender used to pop the pending queue after every answer, even when the
connection had been lost meanwhile (connection_lost clears the queue): a handler that finished
despite its cancellation (Python 3.11's `asyncio.wait_for` returns a result that races a
cancellation, and an acks=0 produce answers NO_RESPONSE) made it pop an empty deque, and the
sender task died with an unhandled IndexError ("Task exception was never retrieved").
Driven with bytes and a fake transport, on a real event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ingest.kafka.connection import NO_RESPONSE, ConnectionLimits, KafkaConnection, RequestBytesPool
from streamhouse.kafka.framing import encode_request
from streamhouse.kafka.messages import ApiVersionsRequest, ApiVersionsResponse, RequestHeader

LIMITS = ConnectionLimits(
    max_frame_bytes=1024 * 1024,
    max_non_produce_frame_bytes=64 * 1024,
    max_produce_entries=8,
    max_in_flight_requests=16,
    max_in_flight_bytes=1 << 20,
    send_buffer_bytes=1 << 20,
    idle_timeout=60.0,
    slow_client_timeout=60.0,
)


class Transport(asyncio.Transport):
    """Records writes; closing is what a real transport reports once the peer is gone."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def _frame(correlation: int) -> bytes:
    header = RequestHeader(
        request_api_key=18, request_api_version=3, correlation_id=correlation, client_id="unit"
    )
    return encode_request(header, ApiVersionsRequest(client_software_name="unit"))


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def _drop_with_pending(answer: Any, requests: int) -> tuple[list[dict[str, Any]], Any]:
    """Sends `requests` frames whose handlers wait, drops the connection, then lets the
    handlers finish (ignoring their cancellation) with `answer`. Returns the loop's unhandled
    errors and the sender task."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    release = loop.create_future()

    def dispatch(api_key: int, api_version: int) -> Any:
        async def handler(header: RequestHeader, request: Any) -> Any:
            try:
                await asyncio.shield(release)
            except asyncio.CancelledError:
                # Finishing anyway: what wait_for does when its inner result races the cancel.
                await release
            return answer

        return handler

    closed: list[KafkaConnection] = []
    pool = RequestBytesPool(1 << 30)
    connection = KafkaConnection(
        dispatch, lambda: ApiVersionsResponse(error_code=0), LIMITS, closed.append, pool
    )
    transport = Transport()
    connection.connection_made(transport)
    connection.data_received(b"".join(_frame(i) for i in range(requests)))
    await _settle()
    transport.closing = True
    connection.connection_lost(ConnectionResetError("peer reset"))
    release.set_result(None)
    await _settle()
    sender = connection._sender
    assert closed == [connection]
    assert pool.used == 0
    return unhandled, sender


@pytest.mark.parametrize("requests", [1, 3])
@pytest.mark.parametrize("answer", ["none", "response"])
def test_a_dropped_connection_leaves_no_error(answer: str, requests: int) -> None:
    async def scenario() -> None:
        response = NO_RESPONSE if answer == "none" else ApiVersionsResponse(error_code=0)
        unhandled, sender = await _drop_with_pending(response, requests)
        assert sender is not None and sender.done()
        if not sender.cancelled():
            assert sender.exception() is None, repr(sender.exception())
        assert unhandled == []

    asyncio.run(scenario())
