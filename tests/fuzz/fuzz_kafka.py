"""Fuzz target: the Kafka codec and framing (``streamhouse.kafka``).

    python tests/fuzz/fuzz_kafka.py -max_total_time=60

Input: one mode byte, then

  mode 0  a request frame's payload (size prefix removed), as the broker decodes it;
  mode 1  two bytes choosing one (API, version) of ``SUPPORTED``, then a response payload, as a
          client decodes it;
  mode 2  a byte stream for ``FrameReceiver`` (limit 256 bytes), cut into chunks at the
          positions its first byte's bits give.

What must hold: ``decode_request`` raises only ``KafkaProtocolError`` subclasses and
``decode_response`` only ``DecodeError``, quickly and without allocating for lying lengths
(libFuzzer's ``-rss_limit_mb`` and ``-timeout`` catch both); anything that decodes re-encodes,
and the re-encoded bytes decode to the same message (a canonical form); the receiver returns
frames that re-frame to a prefix of the stream or refuses a bad size prefix with
``InvalidFrame``, holding at most one frame.
"""

from __future__ import annotations

import struct

import harness

with harness.instrumented():
    from streamhouse.kafka import messages
    from streamhouse.kafka.framing import (
        FrameReceiver,
        InvalidFrame,
        KafkaProtocolError,
        decode_request,
        decode_response,
        encode_request,
        encode_response,
    )
    from streamhouse.kafka.primitives import DecodeError

KEYS = sorted((k, v) for k, (lo, hi) in messages.SUPPORTED.items() for v in range(lo, hi + 1))
RECEIVER_LIMIT = 256


def check_request(payload: bytes) -> None:
    try:
        header, body = decode_request(payload)
    except KafkaProtocolError:
        return
    frame = encode_request(header, body)  # whatever decodes must re-encode
    header2, body2 = decode_request(frame[4:])
    assert encode_request(header2, body2) == frame, "re-encoded request is not canonical"


def check_response(data: bytes) -> None:
    if len(data) < 2:
        return
    api_key, version = KEYS[int.from_bytes(data[:2], "big") % len(KEYS)]
    try:
        header, body = decode_response(data[2:], api_key, version)
    except DecodeError:
        return
    frame = encode_response(header, api_key, version, body)
    header2, body2 = decode_response(frame[4:], api_key, version)
    assert encode_response(header2, api_key, version, body2) == frame, "not canonical"


def check_receiver(data: bytes) -> None:
    if not data:
        return
    cuts, stream = data[0], data[1:]
    receiver = FrameReceiver(RECEIVER_LIMIT)
    got: list[bytes] = []
    start = 0
    bounds = [i * len(stream) // 8 for i in range(1, 8) if cuts >> i & 1] + [len(stream)]
    try:
        for end in bounds:
            receiver.feed(stream[start:end])
            start = end
            while (frame := receiver.next_frame()) is not None:
                assert len(frame) <= RECEIVER_LIMIT
                got.append(bytes(frame))
            assert receiver.buffered <= RECEIVER_LIMIT + 4
    except InvalidFrame as exc:
        consumed = sum(4 + len(f) for f in got)
        (size,) = struct.unpack_from(">i", stream, consumed)
        assert size == exc.size and not 0 <= size <= RECEIVER_LIMIT
        return
    framed = b"".join(struct.pack(">i", len(f)) + f for f in got)
    assert stream.startswith(framed)


def check(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        check_request(rest)
    elif mode == 1:
        check_response(rest)
    else:
        check_receiver(rest)


def seeds() -> list[bytes]:
    out = []
    for index, (api_key, version) in enumerate(KEYS):
        header = messages.RequestHeader(
            request_api_key=api_key, request_api_version=version, correlation_id=9, client_id="f"
        )
        out.append(b"\x00" + encode_request(header, messages.REQUEST_TYPES[api_key]())[4:])
        response = encode_response(
            messages.ResponseHeader(correlation_id=9),
            api_key,
            version,
            messages.RESPONSE_TYPES[api_key](),
        )
        out.append(b"\x01" + index.to_bytes(2, "big") + response[4:])
    produce = messages.ProduceRequest(
        acks=-1,
        timeout_ms=1000,
        topic_data=[
            messages.ProduceRequest.TopicProduceData(
                name="orders",
                partition_data=[
                    messages.ProduceRequest.PartitionProduceData(index=0, records=b"r" * 70)
                ],
            )
        ],
    )
    metadata = messages.MetadataRequest(
        topics=[messages.MetadataRequest.MetadataRequestTopic(name="orders")]
    )
    for api_key, request, versions in ((0, produce, (3, 9, 11)), (3, metadata, (1, 9, 12))):
        for version in versions:
            header = messages.RequestHeader(
                request_api_key=api_key, request_api_version=version, correlation_id=1
            )
            out.append(b"\x00" + encode_request(header, request)[4:])
    frames = b"".join(struct.pack(">i", len(p)) + p for p in (b"abc", b"", b"x" * 100))
    out.append(b"\x02\x55" + frames)
    return out


if __name__ == "__main__":
    harness.main(check, seeds())
