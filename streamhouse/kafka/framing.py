"""Kafka frames, headers and whole messages, sans-I/O: bytes in, frames and messages out.

Wire layout (big-endian):

    frame              size:int32  payload[size]
    request payload    request header, request body
      header v0        api_key:int16 api_version:int16 correlation_id:int32
      header v1        v0 + client_id: nullable string with an int16 length
      header v2        v1 + tagged fields (client_id keeps its int16 length)
    response payload   response header, response body
      header v0        correlation_id:int32
      header v1        v0 + tagged fields

Rules kept here:
  - A request uses header v2 when its API version is flexible, else v1; ControlledShutdown v0
    uses v0. A response uses header v1 when flexible, else v0, except ApiVersions, which always
    uses v0 so that any client can read the UNSUPPORTED_VERSION answer.
  - api_key, api_version and correlation_id sit at the same offsets in every request header
    version, so they are read before anything else and travel with every error raised about a
    request: the server answers UnsupportedVersion on ApiVersions with an ApiVersions v0
    response carrying UNSUPPORTED_VERSION (error code 35) and closes the connection for other
    APIs, as Kafka does; CorruptRequest means the connection should be closed. Clients read
    any ApiVersions response whose error code is not 0 as v0 (KIP-511), so such answers must
    be encoded at version 0 whatever version was asked.
  - A frame whose declared size is negative or larger than the receiver's limit is refused
    before any of it is buffered (InvalidFrame); the receiver is unusable afterwards, the
    connection must be closed.
  - Bytes after a request's body are ignored, as Kafka's own parser does: librdkafka 2.x sends
    its all-topics Metadata v12 request with a 4-byte placeholder left in it.
  - `records` fields of decoded messages are memoryview slices of the frame (no copy); the
    frame stays alive as long as they do. Frames from FrameReceiver are never reused.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

from streamhouse._memory import uninitialized_bytearray
from streamhouse.kafka.messages import (
    API_NAMES,
    REQUEST_DECODERS,
    REQUEST_ENCODERS,
    REQUEST_HEADER_DECODERS,
    REQUEST_HEADER_ENCODERS,
    RESPONSE_DECODERS,
    RESPONSE_ENCODERS,
    RESPONSE_HEADER_DECODERS,
    RESPONSE_HEADER_ENCODERS,
    RequestHeader,
    ResponseHeader,
    request_header_version,
    response_header_version,
)
from streamhouse.kafka.primitives import Buffer, DecodeError, EncodeError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DECODE_ERRORS",
    "KafkaProtocolError",
    "InvalidFrame",
    "FrameTooLarge",
    "RequestError",
    "UnsupportedVersion",
    "CorruptRequest",
    "FrameReceiver",
    "decode_request",
    "encode_request",
    "decode_response",
    "encode_response",
]

DEFAULT_MAX_FRAME_SIZE = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes
"""Errors a decoder raises on malformed input (all become CorruptRequest at the edge)."""
DECODE_ERRORS = (ValueError, IndexError, struct.error, OverflowError)

_SIZE = struct.Struct(">i")
_INT16 = struct.Struct(">h")
_PEEK = struct.Struct(">hhi")


class KafkaProtocolError(Exception):
    """Base of the errors raised for bytes that break the Kafka protocol."""


class InvalidFrame(KafkaProtocolError):
    """A frame's size prefix is negative or too large; the connection must be closed."""

    def __init__(self, size: int, limit: int, message: str) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class FrameTooLarge(InvalidFrame):
    """A frame is larger than the configured maximum."""


class RequestError(KafkaProtocolError):
    """A request that cannot be served; carries what of its header could be read (or None)."""

    def __init__(
        self,
        message: str,
        api_key: int | None,
        api_version: int | None,
        correlation_id: int | None,
    ) -> None:
        super().__init__(message)
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id


class UnsupportedVersion(RequestError):
    """Unknown API key, or a version of it this codec does not have."""


class CorruptRequest(RequestError):
    """The request's bytes do not decode as its header says (truncated, garbage, trailing)."""


#: A frame with at least this many bytes still to arrive gets a buffer of its own that the
#: socket reads into directly (``get_buffer``) ...
DIRECT_FRAME_MIN_BYTES = 64 * 1024
#: ... unless it is larger than this ...
DIRECT_FRAME_MAX_BYTES = 16 * 1024 * 1024
#: ... and only once at least this fraction of it has arrived (1/8). A frame buffer is
#: allocated before the rest of the bytes it is for: this way a client must send an eighth
#: of what the broker sets aside, never just a size prefix (a 4-byte prefix per connection
#: must not make the broker allocate 16 MiB on each).
DIRECT_FRAME_ARRIVED_PART = 8
#: Reads that are not for one large frame go into shared scratch buffers of this size; a new
#: one is started when less than ``SCRATCH_MIN_ROOM`` is left.
SCRATCH_BYTES = 64 * 1024
SCRATCH_MIN_ROOM = 4 * 1024


class FrameReceiver:
    """Turns a byte stream into size-prefixed frames.

    Bytes come in one of two ways:

    - `feed(data)`: what `asyncio.Protocol.data_received` delivers. A frame that lies within
      one fed chunk is returned as a memoryview of that chunk (no copy); one split across
      chunks is assembled once into its own buffer. Chunks must not be modified after they
      are fed (pass `bytes`, as asyncio's `data_received` does).
    - `get_buffer()` / `buffer_updated(n)`: `asyncio.BufferedProtocol`, the socket reads
      straight into memory the receiver hands out. While a frame of at least
      ``DIRECT_FRAME_MIN_BYTES`` still to come (at most ``DIRECT_FRAME_MAX_BYTES`` in all, an
      eighth of it arrived) is being received, that memory is the frame's own buffer, exactly
      as long as what is missing: most of a large produce request reaches its buffer with
      the kernel's one copy and none in Python. Other reads fill 64 KiB scratch buffers,
      each used until less than 4 KiB is left and never reused (frames cut from them may be
      kept by their handlers, and keep the whole scratch buffer alive meanwhile), much as
      uvloop's own reads into 256 KiB chunks do for `feed`. The size prefix is read by
      `next_frame`, so a frame buffer starts once the caller has asked for the frame.

    Either way, `next_frame` returns each complete frame once, as a memoryview.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._chunks: deque[memoryview] = deque()
        self._buffered = 0
        self._size = -1  # size of the frame being received, -1 until its prefix is read
        # The frame buffer being read into (get_buffer) and how much of it holds bytes; while
        # it exists every received byte belongs to it and `_chunks` is empty.
        self._frame: bytearray | None = None
        self._frame_filled = 0
        self._scratch: bytearray | None = None
        self._scratch_used = 0
        self._lent = 0  # where the memory get_buffer handed out starts (scratch only)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames (size prefixes included)."""
        return self._buffered + (4 if self._size >= 0 else 0)

    def feed(self, data: Buffer) -> None:
        """Append received bytes."""
        if data:
            view = memoryview(data)
            if view.itemsize != 1 or view.ndim != 1:
                view = view.cast("B")
            if self._frame is not None:  # the frame buffer takes what it is missing
                into = min(len(view), len(self._frame) - self._frame_filled)
                self._frame[self._frame_filled : self._frame_filled + into] = view[:into]
                self._frame_filled += into
                self._buffered += into
                view = view[into:]
                if not view:
                    return
            self._chunks.append(view)
            self._buffered += len(view)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable memory for the next bytes received (``BufferedProtocol.get_buffer``);
        report how many were written with `buffer_updated` before asking again."""
        if self._frame is None:
            size, arrived = self._size, self._buffered
            if (
                DIRECT_FRAME_MIN_BYTES <= size - arrived
                and size <= DIRECT_FRAME_MAX_BYTES
                and arrived * DIRECT_FRAME_ARRIVED_PART >= size
            ):
                self._start_frame_buffer()
        if self._frame is not None:
            return memoryview(self._frame)[self._frame_filled :]
        if self._scratch is None or len(self._scratch) - self._scratch_used < SCRATCH_MIN_ROOM:
            self._scratch = uninitialized_bytearray(SCRATCH_BYTES)  # only read once written
            self._scratch_used = 0
        self._lent = self._scratch_used
        return memoryview(self._scratch)[self._scratch_used :]

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` were written at the start of the memory `get_buffer` returned last."""
        if nbytes <= 0:
            return
        if self._frame is not None:
            if nbytes > len(self._frame) - self._frame_filled:
                raise ValueError(f"{nbytes} bytes written into a smaller buffer")
            self._frame_filled += nbytes
            self._buffered += nbytes
            return
        assert self._scratch is not None, "buffer_updated without get_buffer"
        start = self._lent
        if start != self._scratch_used or start + nbytes > len(self._scratch):
            raise ValueError(f"{nbytes} bytes written into a smaller or older buffer")
        self._scratch_used = start + nbytes
        self._chunks.append(memoryview(self._scratch)[start : start + nbytes])
        self._buffered += nbytes

    def _start_frame_buffer(self) -> None:
        """Moves what arrived of the current frame into a buffer of its whole size."""
        frame = uninitialized_bytearray(self._size)  # returned only once every byte arrived
        filled = 0
        for chunk in self._chunks:
            frame[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        self._chunks.clear()
        self._frame, self._frame_filled = frame, filled

    def next_frame(self) -> memoryview | None:
        """The next complete frame's payload (size prefix removed), or None if incomplete.

        Raises FrameTooLarge or InvalidFrame when the size prefix is unacceptable.
        """
        if self._size < 0:
            if self._buffered < 4:
                return None
            (size,) = _SIZE.unpack(self._take(4))
            if size < 0:
                raise InvalidFrame(size, self.max_frame_size, f"frame size {size} is negative")
            if size > self.max_frame_size:
                raise FrameTooLarge(
                    size,
                    self.max_frame_size,
                    f"frame of {size} bytes exceeds the maximum of {self.max_frame_size}",
                )
            self._size = size
        if self._buffered < self._size:
            return None
        if self._frame is not None:
            frame = memoryview(self._frame)
            self._frame = None
            self._buffered -= self._size
        else:
            frame = self._take(self._size)
        self._size = -1
        return frame

    def _take(self, n: int) -> memoryview:
        """Remove and return the first n buffered bytes (caller checked they are there)."""
        if n == 0:
            return memoryview(b"")
        self._buffered -= n
        chunks = self._chunks
        first = chunks[0]
        if len(first) >= n:
            if len(first) == n:
                chunks.popleft()
            else:
                chunks[0] = first[n:]
            return first[:n]
        out = bytearray(n)
        filled = 0
        while filled < n:
            chunk = chunks[0]
            want = n - filled
            if len(chunk) <= want:
                out[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
                chunks.popleft()
            else:
                out[filled:n] = chunk[:want]
                chunks[0] = chunk[want:]
                filled = n
        return memoryview(out)


def _view(frame: Buffer) -> memoryview:
    view = memoryview(frame)
    if view.itemsize != 1 or view.ndim != 1:
        view = view.cast("B")
    return view


def _message_name(api_key: int, api_version: int, kind: str) -> str:
    return f"{API_NAMES.get(api_key, f'API {api_key}')}{kind} v{api_version}"


def decode_request(frame: Buffer) -> tuple[RequestHeader, Any]:
    """Header and body of one request frame (payload without its size prefix).

    Raises UnsupportedVersion for unknown API keys and versions, CorruptRequest for bytes that
    do not decode; both carry api_key, api_version and correlation_id when they were readable.
    """
    buf = _view(frame)
    if len(buf) < 8:
        raw = bytes(buf)
        api_key = _INT16.unpack_from(raw, 0)[0] if len(raw) >= 2 else None
        api_version = _INT16.unpack_from(raw, 2)[0] if len(raw) >= 4 else None
        raise CorruptRequest(
            f"request of {len(buf)} bytes is shorter than a request header",
            api_key,
            api_version,
            None,
        )
    api_key, api_version, correlation_id = _PEEK.unpack_from(buf, 0)
    decoder = REQUEST_DECODERS.get((api_key, api_version))
    if decoder is None:
        if api_key not in API_NAMES:
            reason = f"unknown API key {api_key}"
        else:
            reason = f"unsupported version: {_message_name(api_key, api_version, 'Request')}"
        raise UnsupportedVersion(reason, api_key, api_version, correlation_id)
    try:
        header, pos = REQUEST_HEADER_DECODERS[request_header_version(api_key, api_version)](buf, 0)
        body, pos = decoder(buf, pos)
    except DECODE_ERRORS as exc:
        raise CorruptRequest(
            f"corrupt {_message_name(api_key, api_version, 'Request')}: {exc}",
            api_key,
            api_version,
            correlation_id,
        ) from exc
    return header, body


def _frame(parts: list[Any]) -> bytes:
    """Join encoded parts behind a size prefix (parts[0] is the prefix's placeholder)."""
    parts[0] = _SIZE.pack(sum(map(len, parts)))
    return b"".join(parts)


def _encode(encode_header: Any, header: Any, encoder: Any, body: Any, name: str) -> bytes:
    parts: list[Any] = [b""]
    write = parts.append
    try:
        encode_header(write, header)
        encoder(write, body)
    except EncodeError:
        raise
    except (TypeError, AttributeError, ValueError, struct.error, OverflowError) as exc:
        raise EncodeError(f"cannot encode {name}: {exc}") from exc
    return _frame(parts)


def encode_response(
    header: RequestHeader | ResponseHeader,
    api_key: int,
    api_version: int,
    response: Any,
) -> bytes:
    """Size-prefixed frame of a response; `header` gives the correlation id (the request's
    header will do). Raises EncodeError for values the version cannot carry."""
    encoder = RESPONSE_ENCODERS.get((api_key, api_version))
    name = _message_name(api_key, api_version, "Response")
    if encoder is None:
        raise EncodeError(f"no encoder for {name}")
    encode_header = RESPONSE_HEADER_ENCODERS[response_header_version(api_key, api_version)]
    return _encode(encode_header, header, encoder, response, name)


def encode_request(header: RequestHeader, request: Any) -> bytes:
    """Size-prefixed frame of a request; the header says which API and version."""
    api_key, api_version = header.request_api_key, header.request_api_version
    encoder = REQUEST_ENCODERS.get((api_key, api_version))
    name = _message_name(api_key, api_version, "Request")
    if encoder is None:
        raise EncodeError(f"no encoder for {name}")
    encode_header = REQUEST_HEADER_ENCODERS[request_header_version(api_key, api_version)]
    return _encode(encode_header, header, encoder, request, name)


def decode_response(frame: Buffer, api_key: int, api_version: int) -> tuple[ResponseHeader, Any]:
    """Header and body of one response frame to a request of that API and version.

    Raises DecodeError for bytes that do not decode as that response.
    """
    buf = _view(frame)
    decoder = RESPONSE_DECODERS.get((api_key, api_version))
    name = _message_name(api_key, api_version, "Response")
    if decoder is None:
        raise DecodeError(f"no decoder for {name}")
    try:
        header, pos = RESPONSE_HEADER_DECODERS[response_header_version(api_key, api_version)](
            buf, 0
        )
        body, pos = decoder(buf, pos)
    except DECODE_ERRORS as exc:
        raise DecodeError(f"corrupt {name}: {exc}") from exc
    if pos != len(buf):
        raise DecodeError(f"corrupt {name}: {len(buf) - pos} bytes after the end of the body")
    return header, body
