"""Kafka framing: the receive buffer, request/response envelopes and their errors (no sockets)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from streamhouse import kafka
from streamhouse.kafka import framing, messages
from streamhouse.kafka.framing import (
    CorruptRequest,
    FrameReceiver,
    FrameTooLarge,
    InvalidFrame,
    UnsupportedVersion,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from streamhouse.kafka.messages import RequestHeader, ResponseHeader
from streamhouse.kafka.primitives import DecodeError, EncodeError


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def drain(receiver: FrameReceiver) -> list[bytes]:
    out = []
    while (payload := receiver.next_frame()) is not None:
        out.append(bytes(payload))
    return out


def metadata_request(correlation_id: int = 77, version: int = 9) -> bytes:
    header = RequestHeader(
        request_api_key=3,
        request_api_version=version,
        correlation_id=correlation_id,
        client_id="client-1",
    )
    request = messages.MetadataRequest(
        topics=[messages.MetadataRequest.MetadataRequestTopic(name="orders")]
    )
    return encode_request(header, request)


# ------------------------------------------------------------------------------ FrameReceiver


def write(receiver: FrameReceiver, data: bytes) -> memoryview:
    """Writes `data` (no more than the room offered) where get_buffer says; returns the room."""
    room = receiver.get_buffer(-1)
    room[: len(data)] = data
    receiver.buffer_updated(len(data))
    return room


def test_a_large_frame_is_read_straight_into_its_own_buffer() -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB
    stream = frame(payload)
    receiver = FrameReceiver()
    write(receiver, stream[:1000])  # prefix and the first bytes land in scratch memory
    assert receiver.next_frame() is None  # reads the size prefix
    # Until an eighth of the frame is there, reads still go to scratch memory ...
    assert len(receiver.get_buffer(-1)) <= framing.SCRATCH_BYTES
    write(receiver, stream[1000 : 4 + len(payload) // 8])
    # ... then the socket gets exactly the frame's missing bytes, in the frame itself.
    room = receiver.get_buffer(-1)
    assert len(room) == len(stream) - (4 + len(payload) // 8)
    write(receiver, stream[4 + len(payload) // 8 : 50_000])
    assert receiver.next_frame() is None
    rest = write(receiver, stream[50_000:])
    got = receiver.next_frame()
    assert got is not None and bytes(got) == payload
    assert got.obj is rest.obj  # the frame is the memory the socket wrote into
    assert receiver.buffered == 0 and receiver.next_frame() is None


def test_frames_too_large_for_a_buffer_of_their_own_still_arrive_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(framing, "DIRECT_FRAME_MAX_BYTES", 100_000)
    payload = b"z" * 150_000
    stream = frame(payload) + frame(b"small")
    receiver = FrameReceiver()
    sent = 0
    rooms: list[int] = []
    got: list[bytes] = []
    while sent < len(stream):
        room = receiver.get_buffer(-1)
        rooms.append(len(room))
        n = min(len(room), len(stream) - sent)
        room[:n] = stream[sent : sent + n]
        receiver.buffer_updated(n)
        sent += n
        got += drain(receiver)  # the size prefix is read as soon as it is there
    assert max(rooms) <= framing.SCRATCH_BYTES  # never a buffer of the announced size
    assert got == [payload, b"small"]


def test_writing_more_than_the_room_offered_is_refused() -> None:
    receiver = FrameReceiver()
    room = receiver.get_buffer(-1)
    with pytest.raises(ValueError, match="smaller or older buffer"):
        receiver.buffer_updated(len(room) + 1)
    write(receiver, frame(b"x" * 100_000)[:20_000])
    receiver.next_frame()
    room = receiver.get_buffer(-1)
    with pytest.raises(ValueError, match="smaller buffer"):
        receiver.buffer_updated(len(room) + 1)


def test_fed_bytes_complete_a_frame_buffer_started_by_get_buffer() -> None:
    payload = b"q" * 100_000
    receiver = FrameReceiver()
    write(receiver, frame(payload)[:20_000])
    receiver.next_frame()
    receiver.get_buffer(-1)  # starts the frame buffer
    receiver.feed(frame(payload)[20_000:] + frame(b"next"))
    assert drain(receiver) == [payload, b"next"]


def test_partial_frames_byte_by_byte() -> None:
    payloads = [b"first", b"", b"x" * 300]
    stream = b"".join(frame(p) for p in payloads)
    receiver = FrameReceiver()
    got: list[bytes] = []
    for i in range(len(stream)):
        receiver.feed(stream[i : i + 1])
        got.extend(drain(receiver))
    assert got == payloads
    assert receiver.buffered == 0


def test_multiple_frames_in_one_chunk_are_zero_copy() -> None:
    chunk = frame(b"one") + frame(b"two") + frame(b"three")[:5]
    receiver = FrameReceiver()
    receiver.feed(chunk)
    first = receiver.next_frame()
    assert first is not None and first.obj is chunk and bytes(first) == b"one"
    assert drain(receiver) == [b"two"]
    assert receiver.buffered == 5
    receiver.feed(b"hree")
    assert drain(receiver) == [b"three"]


def test_frame_split_across_chunks_and_prefix_split() -> None:
    payload = bytes(range(256)) * 40
    data = frame(payload) + frame(b"tail")
    receiver = FrameReceiver()
    # cuts inside the size prefix, inside the payload, and across the next frame
    pieces = [data[:2], data[2:1000], data[1000:5000], data[5000:]]
    got: list[bytes] = []
    for piece in pieces:
        receiver.feed(piece)
        got.extend(drain(receiver))
    assert got == [payload, b"tail"]


def test_oversize_frame_is_refused_before_its_payload() -> None:
    receiver = FrameReceiver(max_frame_size=1024)
    receiver.feed(frame(b"a" * 1024))
    assert drain(receiver) == [b"a" * 1024]
    receiver.feed(struct.pack(">i", 1025))  # only the prefix has arrived
    with pytest.raises(FrameTooLarge, match="1025 bytes exceeds the maximum of 1024") as info:
        receiver.next_frame()
    assert (info.value.size, info.value.limit) == (1025, 1024)


def test_negative_frame_size_is_invalid() -> None:
    receiver = FrameReceiver()
    receiver.feed(b"\xff\xff\xff\xfe")
    with pytest.raises(InvalidFrame, match="negative"):
        receiver.next_frame()


def test_feed_accepts_any_buffer() -> None:
    receiver = FrameReceiver()
    receiver.feed(bytearray(frame(b"ab")))
    receiver.feed(memoryview(frame(b"cd")))
    receiver.feed(b"")
    assert drain(receiver) == [b"ab", b"cd"]


# ------------------------------------------------------------------------------ requests


def test_request_round_trip_through_receiver() -> None:
    receiver = FrameReceiver()
    receiver.feed(metadata_request(1) + metadata_request(2, version=4))
    first, second = receiver.next_frame(), receiver.next_frame()
    assert first is not None and second is not None
    header, body = decode_request(first)
    assert header == RequestHeader(
        request_api_key=3, request_api_version=9, correlation_id=1, client_id="client-1"
    )
    assert [t.name for t in body.topics] == ["orders"]
    header, _ = decode_request(second)
    assert (header.request_api_version, header.correlation_id) == (4, 2)


def test_truncated_request_is_corrupt_with_correlation_id() -> None:
    payload = metadata_request(correlation_id=4242)[4:]
    for cut in range(8, len(payload)):
        with pytest.raises(CorruptRequest) as info:
            decode_request(payload[:cut])
        error = info.value
        assert (error.api_key, error.api_version, error.correlation_id) == (3, 9, 4242)
        assert "Metadata" in str(error)


def test_too_short_for_a_header() -> None:
    with pytest.raises(CorruptRequest, match="shorter than a request header") as info:
        decode_request(b"\x00\x03\x00\x09\x00\x00")
    assert (info.value.api_key, info.value.api_version, info.value.correlation_id) == (3, 9, None)
    with pytest.raises(CorruptRequest) as info:
        decode_request(b"\x00")
    assert info.value.api_key is None


def test_trailing_bytes_are_ignored_and_garbage_is_corrupt() -> None:
    payload = metadata_request(correlation_id=9)[4:]
    # Kafka ignores bytes after the body (librdkafka 2.x leaves some in a Metadata request).
    assert decode_request(payload + b"xyz") == decode_request(payload)
    garbage = payload[:8] + b"\xff" * 40  # valid api key/version/correlation id, then junk
    with pytest.raises(CorruptRequest) as info:
        decode_request(garbage)
    assert info.value.correlation_id == 9
    bad_utf8 = payload.replace(b"orders", b"\xff\xfe\xfd\xfc\xfb\xfa")
    with pytest.raises(CorruptRequest, match="utf-8"):
        decode_request(bad_utf8)


def test_unknown_api_and_unsupported_version() -> None:
    with pytest.raises(UnsupportedVersion, match="unknown API key 999") as info:
        decode_request(struct.pack(">hhi", 999, 0, 31) + b"\x00\x00")
    assert (info.value.api_key, info.value.correlation_id) == (999, 31)

    # A too-new ApiVersions request: the server answers with an ApiVersions v0 error response.
    too_new = struct.pack(">hhih", 18, 99, 32, 1) + b"c" + b"\x00" + b"\x00\x00\x00"
    with pytest.raises(UnsupportedVersion, match="ApiVersionsRequest v99") as info:
        decode_request(too_new)
    error = info.value
    assert (error.api_key, error.api_version, error.correlation_id) == (18, 99, 32)
    answer = messages.ApiVersionsResponse(
        error_code=35,
        api_keys=[
            messages.ApiVersionsResponse.ApiVersion(api_key=18, min_version=0, max_version=4)
        ],
    )
    data = encode_response(ResponseHeader(correlation_id=error.correlation_id), 18, 0, answer)
    assert data == frame(struct.pack(">ihihhh", 32, 35, 1, 18, 0, 4))


def test_controlled_shutdown_v0_uses_request_header_v0() -> None:
    header = RequestHeader(request_api_key=7, request_api_version=0, correlation_id=5)
    request = messages.ControlledShutdownRequest(broker_id=3)
    data = encode_request(header, request)
    assert data == frame(struct.pack(">hhii", 7, 0, 5, 3))
    decoded_header, body = decode_request(data[4:])
    assert decoded_header.client_id == "" and body.broker_id == 3


def test_request_header_v2_unknown_tags_are_skipped() -> None:
    header = RequestHeader(request_api_key=18, request_api_version=3, correlation_id=6)
    request = messages.ApiVersionsRequest(client_software_name="x", client_software_version="1")
    data = encode_request(header, request)[4:]
    # Header v2 = int16 key, int16 version, int32 correlation, int16-length client id, tags.
    tags_at = 8 + 2 + len(header.client_id or "")
    assert data[tags_at] == 0
    with_tags = data[:tags_at] + b"\x01\x05\x02hi" + data[tags_at + 1 :]
    assert decode_request(with_tags) == decode_request(data)


def test_request_and_response_for_every_flexibility() -> None:
    """Header versions as Kafka uses them, seen in the bytes."""
    for version, client_id_at_end in ((8, False), (9, True)):
        header = RequestHeader(request_api_key=3, request_api_version=version, correlation_id=1)
        data = encode_request(header, messages.MetadataRequest(topics=None))
        assert data[4:14] == struct.pack(">hhih", 3, version, 1, 0)  # client id "": int16 length
        assert (data[14] == 0) == client_id_at_end  # header v2 adds an empty tag section
    response = messages.MetadataResponse()
    assert encode_response(ResponseHeader(correlation_id=1), 3, 8, response)[4:9] == (
        b"\x00\x00\x00\x01\x00"  # v0 header; body starts with throttle time
    )
    data = encode_response(ResponseHeader(correlation_id=1), 3, 9, response)
    assert data[4:9] == b"\x00\x00\x00\x01\x00"  # v1 header: correlation id + empty tags
    assert decode_response(data[4:], 3, 9) == (ResponseHeader(correlation_id=1), response)
    # ApiVersions v3 is flexible in its body, yet its response header stays v0.
    data = encode_response(ResponseHeader(correlation_id=1), 18, 3, messages.ApiVersionsResponse())
    assert data[4:10] == b"\x00\x00\x00\x01\x00\x00"  # correlation id, then error code 0


def test_response_header_may_be_the_request_header() -> None:
    request_header = RequestHeader(request_api_key=12, request_api_version=4, correlation_id=123)
    data = encode_response(request_header, 12, 4, messages.HeartbeatResponse(error_code=27))
    header, body = decode_response(data[4:], 12, 4)
    assert header.correlation_id == 123 and body.error_code == 27


# ------------------------------------------------------------------------------ encode errors


def test_encode_errors_are_clear() -> None:
    with pytest.raises(EncodeError, match="no encoder for Heartbeat"):
        encode_response(ResponseHeader(), 12, 99, messages.HeartbeatResponse())
    bad: Any = messages.HeartbeatResponse(error_code="oops")
    with pytest.raises(EncodeError, match="cannot encode HeartbeatResponse v4"):
        encode_response(ResponseHeader(), 12, 4, bad)
    overflow = messages.HeartbeatResponse(error_code=1 << 20)
    with pytest.raises(EncodeError, match="HeartbeatResponse"):
        encode_response(ResponseHeader(), 12, 4, overflow)
    # A response field the version lacks (node_endpoints is v16+) is dropped, not refused:
    # the broker builds one response for every version.
    data = encode_response(
        ResponseHeader(),
        1,
        12,
        messages.FetchResponse(node_endpoints=[messages.FetchResponse.NodeEndpoint(node_id=1)]),
    )
    assert decode_response(data[4:], 1, 12)[1].node_endpoints == []


def test_decode_response_errors() -> None:
    with pytest.raises(DecodeError, match="no decoder"):
        decode_response(b"", 12, 99)
    data = encode_response(ResponseHeader(correlation_id=1), 12, 4, messages.HeartbeatResponse())
    with pytest.raises(DecodeError, match="corrupt HeartbeatResponse v4"):
        decode_response(data[4:-1], 12, 4)


def test_package_exports() -> None:
    assert kafka.SUPPORTED[0] == (0, 11)
    assert kafka.API_NAMES[1] == "Fetch"
    assert kafka.decode_request is decode_request
    assert kafka.FrameReceiver is FrameReceiver
    with pytest.raises(AttributeError):
        kafka.no_such_name  # noqa: B018
