"""One Kafka client connection: frames in, handler calls, responses out in request order.

Rules:
- Requests are decoded as they arrive and handled concurrently (a client pipelines produces),
  but responses leave in request order, as Kafka promises.
- A produce with acks=0 gets no response; its place in the order is simply skipped.
- A connection lost with requests pending cancels their handlers and the sender; an answer
  that arrives anyway (a handler that finished despite the cancellation) is dropped, and the
  sender stops without error.
- An ApiVersions request of a version this broker does not know gets an ApiVersions v0
  response with UNSUPPORTED_VERSION and the supported ranges (so the client can retry lower).
- Bytes that break the protocol (a bad size prefix, a corrupt request, an API key nobody
  knows, a version outside what ApiVersions advertises) close this connection only, after a
  log line; other connections are untouched.

Limits (`ConnectionLimits`, from the settings; nothing a client sends is buffered without
bound):
- A frame larger than `max_frame_bytes` is refused from its size prefix, before any of it is
  buffered, and closes the connection.
- Decoding costs up to about eleven times a frame's size and blocks the loop while it runs,
  so two kinds of frame close the connection before they are decoded: a request of another
  API than Produce larger than `max_non_produce_frame_bytes` (only Produce carries bulk
  data), and a Produce naming more than `max_produce_entries` topics and partitions
  (counted by `limits.produce_entries`, which stops at the limit and allocates nothing).
- At most `max_in_flight_requests` requests, and `max_in_flight_bytes` of request frames, are
  admitted and not yet answered; the first request is always admitted, so one frame of any
  accepted size gets through. At the limit the connection stops taking frames and stops
  reading the socket (TCP back-pressure); frames already received wait in the receive buffer
  and are taken first when answers free room.
- Across all connections of the listener, admitted request bytes are bounded by a shared
  `RequestBytesPool` (Kafka's `queued.max.request.bytes`): while it is exhausted no
  connection takes a new request (not even its first) and the connections wait; bytes come
  back when answers leave or a connection closes, and the waiting connections are offered
  them again. Everything in the pool is a request being handled, so it always drains.
- Responses go to the transport while its buffer is under `send_buffer_bytes`; above it the
  sender waits. A client that does not read its responses therefore stalls its own requests
  (in-flight limit, then back-pressure) and is dropped once writing has been blocked for
  `slow_client_timeout`.
- A request frame that started arriving and is not complete within `slow_client_timeout`
  closes the connection (slowloris); the clock does not run while the broker itself has
  stopped reading.
- A connection with no request in flight, nothing buffered and no bytes received or sent for
  `idle_timeout` is closed, like Kafka's `connections.max.idle.ms`.
- Timeouts are checked by the broker's sweeper calling `check_timeouts(now)` (loop time), not
  by one timer per connection.

Security (`sasl.ListenerSecurity`, from the settings): on a TLS listener the transport is
already encrypted when a connection is made, and a verified client certificate gives the
connection its principal (streamhouse/tls.py). On a SASL listener nothing but ApiVersions,
SaslHandshake and SaslAuthenticate is served until the connection has authenticated: anything
else closes it, as Kafka does, refused from the API key in the frame's first two bytes before
anything is decoded. Until then frames are limited to `max_pre_auth_frame_bytes` (512 KiB,
Kafka's `sasl.server.max.receive.size`, refused from the size prefix) and only one request is
in flight at a time (a client cannot queue SCRAM's PBKDF2 work on the broker's threads). A
failed authentication closes the connection once its answer is written
(ingest/kafka/sasl.py). Each request's handler runs as a task in a context holding the
connection's principal (`streamhouse.principal.current_principal`, ANONYMOUS until
authenticated) and SASL session (`sasl.current_sasl`). After a failed authentication's answer
the connection stops reading and closes 100 ms later (Kafka's
`connection.failed.authentication.delay.ms`), so the client reads the error first.

Memory per connection is therefore at most max_in_flight_bytes + max_frame_bytes (requests
admitted plus one being received) + send_buffer_bytes + the answers of the admitted requests
(each bounded by its API: a fetch answer by max_fetch_bytes).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ingest.kafka.limits import PRODUCE, produce_entries
from ingest.kafka.sasl import (
    ALLOWED_BEFORE_AUTH,
    ListenerSecurity,
    RawToken,
    SaslSession,
    current_sasl,
)
from streamhouse import metrics
from streamhouse.kafka.framing import (
    CorruptRequest,
    FrameReceiver,
    InvalidFrame,
    UnsupportedVersion,
    decode_request,
    encode_response,
)
from streamhouse.kafka.messages import ApiVersionsResponse, RequestHeader
from streamhouse.principal import ANONYMOUS, current_principal
from streamhouse.tls import principal_of_peercert

log = logging.getLogger("ingest.kafka")

API_VERSIONS = 18
SASL_AUTHENTICATE = 36
MAX_RAW_TOKEN_BYTES = 64 * 1024  # a SASL token after SaslHandshake v0
# Seconds between the answer to a failed SASL authentication and the close (Kafka: 100 ms).
AUTH_FAILURE_CLOSE_DELAY_S = 0.1
NO_RESPONSE = object()  # a handler's answer when the client expects none (acks=0)

Handler = Callable[[RequestHeader, Any], Awaitable[Any]]


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection bounds; see the module docstring for what each one does."""

    max_frame_bytes: int
    max_non_produce_frame_bytes: int
    max_produce_entries: int
    max_in_flight_requests: int
    max_in_flight_bytes: int
    send_buffer_bytes: int
    idle_timeout: float  # seconds
    slow_client_timeout: float  # seconds
    # Largest frame before SASL authentication (Kafka's sasl.server.max.receive.size).
    max_pre_auth_frame_bytes: int = 512 * 1024


class RequestBytesPool:
    """Request bytes admitted and not yet answered, over every connection of a listener."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiting: dict[KafkaConnection, None] = {}  # insertion-ordered set

    def exhausted(self, connection: KafkaConnection) -> bool:
        """True when `connection` must wait; it is then offered bytes when some come back."""
        if self.used < self.capacity:
            return False
        self._waiting[connection] = None
        return True

    def take(self, n: int) -> None:
        self.used += n

    def give_back(self, n: int) -> None:
        self.used -= n
        while self._waiting and self.used < self.capacity:
            waiting = next(iter(self._waiting))
            del self._waiting[waiting]
            waiting.offer()

    def forget(self, connection: KafkaConnection) -> None:
        self._waiting.pop(connection, None)


class KafkaConnection(asyncio.BufferedProtocol):
    def __init__(
        self,
        dispatch: Callable[[int, int], Handler | None],
        api_versions: Callable[[], ApiVersionsResponse],
        limits: ConnectionLimits,
        on_close: Callable[[KafkaConnection], None],
        pool: RequestBytesPool,
        security: ListenerSecurity | None = None,
    ) -> None:
        self._pool = pool
        self._sasl = security.new_session() if security is not None else None
        self._tls = security is not None and security.tls
        self._principal = ANONYMOUS  # until SASL or a client certificate says otherwise
        self._dispatch = dispatch
        self._api_versions = api_versions
        self._limits = limits
        self._receiver = FrameReceiver(limits.max_frame_bytes)
        if self._sasl is not None:  # until authenticated (see _take_frames)
            self._receiver.max_frame_size = min(
                limits.max_frame_bytes, limits.max_pre_auth_frame_bytes
            )
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        # (request header, its answer, the request frame's size)
        self._pending: deque[tuple[RequestHeader, asyncio.Future[Any], int]] = deque()
        self._in_flight_bytes = 0
        self._sender: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._reading_paused = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._closing = False
        now = asyncio.get_running_loop().time()
        self._last_activity = now
        self._frame_started: float | None = None  # when the partial frame began arriving
        self._write_blocked_since: float | None = None
        self.peer = "?"

    # -- asyncio.BufferedProtocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  (uvloop's own class)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._transport.set_write_buffer_limits(high=self._limits.send_buffer_bytes)
        if self._tls:
            principal = principal_of_peercert(transport.get_extra_info("peercert"))
            if principal is not None:
                self._principal = principal
        self._sender = asyncio.ensure_future(self._send_in_order())
        metrics.child(metrics.CONNECTIONS, "kafka").inc()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        metrics.child(metrics.CONNECTIONS, "kafka").dec()
        if self._pending:
            metrics.child(metrics.IN_FLIGHT, "kafka").dec(len(self._pending))
        if self._sender is not None:
            self._sender.cancel()
        for _, future, _ in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.forget(self)
        in_flight, self._in_flight_bytes = self._in_flight_bytes, 0
        self._pool.give_back(in_flight)
        self._on_close(self)

    def pause_writing(self) -> None:
        self._can_write.clear()
        self._write_blocked_since = asyncio.get_running_loop().time()

    def resume_writing(self) -> None:
        self._can_write.set()
        self._write_blocked_since = None
        self._last_activity = asyncio.get_running_loop().time()

    def get_buffer(self, sizehint: int) -> memoryview:
        # The socket reads straight into the receiver's memory: a large produce frame into
        # a buffer of its own (FrameReceiver).
        return self._receiver.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._last_activity = asyncio.get_running_loop().time()
        self._receiver.buffer_updated(nbytes)
        self._take_frames()

    def data_received(self, data: bytes) -> None:
        """Bytes from a transport that does not read into `get_buffer`'s memory."""
        self._last_activity = asyncio.get_running_loop().time()
        self._receiver.feed(data)
        self._take_frames()

    # -- limits --------------------------------------------------------------------------

    def _full(self) -> bool:
        """True when no more requests may be admitted until answers leave."""
        if self._pool.exhausted(self):
            return True
        if not self._pending:
            return False
        if self._sasl is not None and not self._sasl.authenticated:
            return True  # one request at a time until authenticated (PBKDF2 is costly)
        return (
            len(self._pending) >= self._limits.max_in_flight_requests
            or self._in_flight_bytes >= self._limits.max_in_flight_bytes
        )

    def offer(self) -> None:
        """The listener's pool has room again: take waiting frames, resume reading."""
        self._take_frames()

    def _take_frames(self) -> None:
        """Admits received frames while the limits allow, then pauses or resumes reading."""
        sasl = self._sasl
        if self._closing or (sasl is not None and sasl.failed):
            return
        if sasl is not None and sasl.authenticated:
            self._receiver.max_frame_size = self._limits.max_frame_bytes
        took = False
        try:
            while not self._full():
                frame = self._receiver.next_frame()
                if frame is None:
                    break
                took = True
                self._admit(frame)
                if self._closing:
                    return  # closed on a protocol error: what followed it is not served
        except InvalidFrame as exc:
            if sasl is not None and not sasl.authenticated:
                self.close(
                    f"invalid frame before SASL authentication: {exc} (frames before "
                    "authentication are limited as Kafka's sasl.server.max.receive.size)"
                )
            else:
                self.close(f"invalid frame: {exc}")
            return
        transport = self._transport
        if transport is None or self._closing:
            return
        if self._full():
            if not self._reading_paused:
                transport.pause_reading()
                self._reading_paused = True
            self._frame_started = None  # the broker stopped reading: not the client's fault
            return
        if self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False
        if self._receiver.buffered == 0:
            self._frame_started = None
        elif took or self._frame_started is None:
            self._frame_started = asyncio.get_running_loop().time()

    def check_timeouts(self, now: float) -> None:
        """Closes the connection when a slow-client or idle timeout has passed (loop time)."""
        if self._closing:
            return
        limits = self._limits
        started = self._frame_started
        if started is not None and now - started > limits.slow_client_timeout:
            self.close(
                f"a request frame was not completed within {limits.slow_client_timeout:g} s "
                "(slow client; see STREAMHOUSE_SLOW_CLIENT_TIMEOUT_MS)"
            )
        elif (
            self._write_blocked_since is not None
            and now - self._write_blocked_since > limits.slow_client_timeout
        ):
            self.close(
                f"the client has not read its responses for {limits.slow_client_timeout:g} s "
                "(slow client; see STREAMHOUSE_SLOW_CLIENT_TIMEOUT_MS)",
                abort=True,  # what is buffered for it would never drain
            )
        elif (
            not self._pending
            and self._receiver.buffered == 0
            and now - self._last_activity > limits.idle_timeout
        ):
            self.close(
                f"idle for {limits.idle_timeout:g} s (see STREAMHOUSE_KAFKA_IDLE_TIMEOUT_MS)",
                level=logging.INFO,
            )

    # -- requests ------------------------------------------------------------------------

    def _refusal_before_decoding(self, frame: memoryview) -> str | None:
        limits = self._limits
        api_key = int.from_bytes(frame[:2], "big", signed=True)
        sasl = self._sasl
        if sasl is not None and not sasl.authenticated and api_key not in ALLOWED_BEFORE_AUTH:
            # Refused from the header's first two bytes: nothing is decoded for it.
            return (
                f"API key {api_key} before SASL authentication completed (the listener "
                "requires SASL: STREAMHOUSE_KAFKA_SECURITY_PROTOCOL)"
            )
        if api_key != PRODUCE:
            if len(frame) > limits.max_non_produce_frame_bytes:
                return (
                    f"a request of API key {api_key} has {len(frame)} bytes; only Produce may "
                    f"exceed {limits.max_non_produce_frame_bytes} "
                    "(STREAMHOUSE_KAFKA_MAX_NON_PRODUCE_REQUEST_BYTES)"
                )
            return None
        entries = produce_entries(frame, limits.max_produce_entries)
        if entries is not None and entries > limits.max_produce_entries:
            return (
                f"a Produce names more than {limits.max_produce_entries} topics and partitions "
                "(4 x STREAMHOUSE_MAX_PARTITIONS_PER_REQUEST); it was not decoded"
            )
        return None

    def _admit(self, frame: Any) -> None:
        sasl = self._sasl
        if sasl is not None and sasl.raw_tokens and not sasl.authenticated:
            self._admit_raw_token(sasl, frame)
            return
        refusal = self._refusal_before_decoding(frame)
        if refusal is not None:
            self.close(refusal)
            return
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
        metrics.child(metrics.REQUESTS, "kafka", _api_name(request)).inc()
        self._start(header, handler(header, request), len(frame))

    def _admit_raw_token(self, sasl: SaslSession, frame: Any) -> None:
        """A SASL token without Kafka framing (after SaslHandshake v0)."""
        if len(frame) > MAX_RAW_TOKEN_BYTES:
            self.close(f"a raw SASL token of {len(frame)} bytes (at most {MAX_RAW_TOKEN_BYTES})")
            return
        header = RequestHeader(request_api_key=SASL_AUTHENTICATE, correlation_id=-1)
        self._start(header, sasl.raw_step(bytes(frame)), len(frame))

    def _start(self, header: RequestHeader, coro: Any, size: int) -> None:
        """Runs a request's handler as a task in the connection's context, in the queue."""
        context = contextvars.copy_context()
        context.run(self._enter_context)
        future = asyncio.get_running_loop().create_task(coro, context=context)
        metrics.child(metrics.IN_FLIGHT, "kafka").inc()
        self._pending.append((header, future, size))
        self._in_flight_bytes += size
        self._pool.take(size)
        self._wake.set()

    def _enter_context(self) -> None:
        """Sets what a request's handler task sees (run inside its fresh context)."""
        sasl = self._sasl
        if sasl is not None and sasl.principal is not None:
            self._principal = sasl.principal
        current_principal.set(self._principal)
        current_sasl.set(sasl)

    def _queue_ready(self, header: RequestHeader, response: Any) -> None:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(response)
        self._pending.append((header, future, 0))
        metrics.child(metrics.IN_FLIGHT, "kafka").inc()
        self._wake.set()

    def _unsupported_api_versions(self) -> ApiVersionsResponse:
        response = self._api_versions()
        response.error_code = 35  # UNSUPPORTED_VERSION
        return response

    async def _send_in_order(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            entry = self._pending[0]
            header, future, size = entry
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
            if isinstance(response, RawToken):
                if response.token is not None:
                    await self._can_write.wait()
                    if self._transport is None or self._transport.is_closing():
                        return
                    self._transport.write(response.frame())
                if self._sasl is not None and self._sasl.failed:
                    self.close("SASL authentication (handshake v0) failed", level=logging.INFO)
                    return
            elif response is not NO_RESPONSE:
                # (ApiVersions answers with the v0 response header at every version: the
                # codec knows.)
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
                del response
                await self._can_write.wait()
                if self._transport is None or self._transport.is_closing():
                    return
                self._transport.write(data)
                del data
                if self._sasl is not None and self._sasl.failed:
                    # As Kafka (connection.failed.authentication.delay.ms): the answer is read
                    # before the close, and nothing more is taken from this client.
                    self._transport.pause_reading()
                    self._reading_paused = True
                    loop.call_later(
                        AUTH_FAILURE_CLOSE_DELAY_S,
                        self.close,
                        "SASL authentication failed",
                        logging.INFO,
                    )
                    return
            if not self._pending or self._pending[0] is not entry:
                # The connection was lost while this answer was awaited (connection_lost
                # emptied the queue and gave its bytes back); a handler that finished despite
                # its cancellation must not make the sender pop an empty queue.
                return
            # The request leaves the in-flight count only once its answer is written, so a
            # client that does not read holds its own slots, not the broker's memory.
            self._pending.popleft()
            metrics.child(metrics.IN_FLIGHT, "kafka").dec()
            self._in_flight_bytes -= size
            self._pool.give_back(size)
            self._last_activity = loop.time()
            if self._reading_paused or self._receiver.buffered:
                self._take_frames()

    def close(self, why: str, level: int = logging.WARNING, abort: bool = False) -> None:
        if self._closing:
            return
        if level >= logging.WARNING:
            metrics.child(metrics.ERRORS, "kafka", "CONNECTION_CLOSED").inc()
        self._closing = True
        log.log(level, "%s: closing Kafka connection: %s", self.peer, why)
        if self._transport is not None:
            if abort:
                self._transport.abort()
            else:
                self._transport.close()


_API_NAMES: dict[type, str] = {}


def _api_name(request: object) -> str:
    """The metric label of a request: its message class without "Request" (e.g. Produce)."""
    kind = type(request)
    name = _API_NAMES.get(kind)
    if name is None:
        name = _API_NAMES[kind] = kind.__name__.removesuffix("Request")
    return name
