"""One Kafka client connection: frames in, handler calls, responses out in request order.

Rules:
- Requests are decoded as they arrive and handled concurrently (a client pipelines produces),
  but responses leave in request order, as Kafka promises.
- A produce with acks=0 gets no response; its place in the order is simply skipped.
- An ApiVersions request of a version this broker does not know gets an ApiVersions v0
  response with UNSUPPORTED_VERSION and the supported ranges (so the client can retry lower).
- Bytes that break the protocol (a bad size prefix, a corrupt request, an API key nobody
  knows, a version outside what ApiVersions advertises) close this connection only, after a
  log line; other connections are untouched.
- At most MAX_IN_FLIGHT requests per connection are handled at once; beyond that the
  connection stops reading, which pushes back on the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from streamhouse.kafka.framing import (
    CorruptRequest,
    FrameReceiver,
    InvalidFrame,
    UnsupportedVersion,
    decode_request,
    encode_response,
)
from streamhouse.kafka.messages import ApiVersionsResponse, RequestHeader

log = logging.getLogger("ingest.kafka")

MAX_IN_FLIGHT = 64
API_VERSIONS = 18
NO_RESPONSE = object()  # a handler's answer when the client expects none (acks=0)

Handler = Callable[[RequestHeader, Any], Awaitable[Any]]


class KafkaConnection(asyncio.Protocol):
    def __init__(
        self,
        dispatch: Callable[[int, int], Handler | None],
        api_versions: Callable[[], ApiVersionsResponse],
        max_frame_size: int,
        on_close: Callable[[KafkaConnection], None],
    ) -> None:
        self._dispatch = dispatch
        self._api_versions = api_versions
        self._receiver = FrameReceiver(max_frame_size)
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._pending: deque[tuple[RequestHeader, asyncio.Future[Any]]] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._reading_paused = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.peer = "?"

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  (uvloop's own class)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._sender = asyncio.ensure_future(self._send_in_order())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sender is not None:
            self._sender.cancel()
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._on_close(self)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        try:
            self._receiver.feed(data)
            while (frame := self._receiver.next_frame()) is not None:
                self._admit(frame)
                if self._transport is None or self._transport.is_closing():
                    return  # closed on a protocol error: what followed it is not served
        except InvalidFrame as exc:
            self.close(f"invalid frame: {exc}")

    # -- requests ------------------------------------------------------------------------

    def _admit(self, frame: Any) -> None:
        try:
            header, request = decode_request(frame)
        except UnsupportedVersion as exc:
            if exc.api_key == API_VERSIONS and exc.correlation_id is not None:
                self._queue_ready(
                    RequestHeader(
                        request_api_key=API_VERSIONS,
                        request_api_version=0,
                        correlation_id=exc.correlation_id,
                    ),
                    self._unsupported_api_versions(),
                )
                return
            self.close(f"unsupported request: {exc}")
            return
        except CorruptRequest as exc:
            self.close(f"corrupt request: {exc}")
            return
        handler = self._dispatch(header.request_api_key, header.request_api_version)
        if handler is None:
            if header.request_api_key == API_VERSIONS:
                # A version the codec knows but this broker does not advertise: same answer.
                self._queue_ready(
                    RequestHeader(
                        request_api_key=API_VERSIONS,
                        request_api_version=0,
                        correlation_id=header.correlation_id,
                    ),
                    self._unsupported_api_versions(),
                )
                return
            self.close(
                f"API key {header.request_api_key} v{header.request_api_version} is not served"
            )
            return
        future = asyncio.ensure_future(handler(header, request))
        self._pending.append((header, future))
        self._wake.set()
        if len(self._pending) >= MAX_IN_FLIGHT and self._transport and not self._reading_paused:
            self._transport.pause_reading()
            self._reading_paused = True

    def _queue_ready(self, header: RequestHeader, response: Any) -> None:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(response)
        self._pending.append((header, future))
        self._wake.set()

    def _unsupported_api_versions(self) -> ApiVersionsResponse:
        response = self._api_versions()
        response.error_code = 35  # UNSUPPORTED_VERSION
        return response

    async def _send_in_order(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            header, future = self._pending[0]
            try:
                response = await future
            except Exception:
                log.exception(
                    "%s: API %d v%d failed; closing the connection",
                    self.peer,
                    header.request_api_key,
                    header.request_api_version,
                )
                self.close("internal error")
                return
            self._pending.popleft()
            if self._reading_paused and len(self._pending) < MAX_IN_FLIGHT // 2:
                assert self._transport is not None
                self._transport.resume_reading()
                self._reading_paused = False
            if response is NO_RESPONSE:
                continue
            # (ApiVersions answers with the v0 response header at every version: the codec
            # knows.)
            version = header.request_api_version
            try:
                data = encode_response(header, header.request_api_key, version, response)
            except Exception:
                log.exception(
                    "%s: cannot encode the response to API %d v%d; closing the connection",
                    self.peer,
                    header.request_api_key,
                    version,
                )
                self.close("internal error")
                return
            await self._can_write.wait()
            if self._transport is None or self._transport.is_closing():
                return
            self._transport.write(data)

    def close(self, why: str) -> None:
        log.warning("%s: closing Kafka connection: %s", self.peer, why)
        if self._transport is not None:
            self._transport.close()
