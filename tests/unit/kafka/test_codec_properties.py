"""Property tests of the generated Kafka codec: round trips, and hostile bytes fail cleanly.

Strategies are built from Kafka's JSON specs through the generator's own spec model (found at
``$STREAMHOUSE_KAFKA_SPECS`` or ``../shared/kafka-protocol/message`` beside the repo), so every
(API, version) in ``messages.SUPPORTED`` is covered, requests and responses. The properties:

  - round trip: any message whose fields the version carries encodes, decodes to an equal
    message and re-encodes to the same bytes, as a body and as a whole frame with its header;
  - hostile bytes: truncated, bit-flipped, spliced frames and frames whose length prefixes lie
    (0x7fffffff, -2, a 5-byte unsigned varint of 2**32 - 1) make ``decode_request`` raise only
    ``KafkaProtocolError`` subclasses and ``decode_response`` only ``DecodeError``; the raw
    generated decoders raise only ``framing.DECODE_ERRORS``; none of them allocates in
    proportion to a lying prefix or runs for long;
  - the frame receiver, fed any byte stream in any chunking, returns exactly the frames sent
    or refuses a bad size prefix, and never buffers more than one frame's limit.

Example counts come from the Hypothesis profile (``tests/conftest.py``): the default keeps this
file well under a minute; ``--hypothesis-profile=long`` runs 20x more examples.
"""

from __future__ import annotations

import struct
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamhouse.kafka import generate, messages
from streamhouse.kafka.framing import (
    DECODE_ERRORS,
    DIRECT_FRAME_MIN_BYTES,
    FrameReceiver,
    InvalidFrame,
    KafkaProtocolError,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from streamhouse.kafka.generate import Message, StructSpec
from streamhouse.kafka.messages import (
    REQUEST_DECODERS,
    REQUEST_ENCODERS,
    RESPONSE_DECODERS,
    RESPONSE_ENCODERS,
    SUPPORTED,
    RequestHeader,
    ResponseHeader,
)
from streamhouse.kafka.primitives import DecodeError, uvarint

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))
from kafka_strategies import (  # noqa: E402  (tests/fuzz is not a package)
    API_MESSAGES,
    INT_RANGES,
    SPEC_DIR,
    SPECS,
    MessageStrategies,
    struct_type,
)

sys.path.pop(0)

MESSAGE_PARAMS = [pytest.param(m, id=m.name) for m in API_MESSAGES]

# A decode of a frame of n bytes may build Python objects worth many times n (small ints,
# strings, structs), but never anything sized by a length prefix the bytes cannot back.
ALLOC_FIXED = 256 * 1024
ALLOC_PER_BYTE = 200
# Decoding a few hundred bytes takes microseconds; a decoder looping on a lying count of
# 2**31 would take minutes. Generous, so a loaded shared machine does not fail it.
DECODE_SECONDS = 2.0


def scaled(n: int) -> int:
    """n examples under the default profile (100 examples), proportionally more or fewer
    under another (``--hypothesis-profile=long`` has 2000)."""
    return max(1, n * settings.default.max_examples // 100)


def examples(n: int) -> settings:
    """Settings of a property test with `scaled(n)` examples."""
    return settings(
        max_examples=scaled(n),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,  # `bounded` is safe to share between examples
        ],
    )


def test_specs_are_present() -> None:
    assert SPECS, (
        f"Kafka message specs not found at {SPEC_DIR}: set STREAMHOUSE_KAFKA_SPECS to "
        "Apache Kafka's clients/src/main/resources/common/message"
    )
    covered = {(m.api_key, v) for m in API_MESSAGES for v in generate.versions_of(m)}
    assert covered == {(k, v) for k, (lo, hi) in SUPPORTED.items() for v in range(lo, hi + 1)}


# ------------------------------------------------------------------------------ strategies

STRATEGIES = MessageStrategies()


def codecs(message: Message) -> tuple[dict[Any, Any], dict[Any, Any]]:
    if message.kind == "request":
        return REQUEST_ENCODERS, REQUEST_DECODERS
    return RESPONSE_ENCODERS, RESPONSE_DECODERS


def encode_body(message: Message, version: int, value: Any) -> bytes:
    parts: list[Any] = []
    codecs(message)[0][(message.api_key, version)](parts.append, value)
    return b"".join(parts)


def encode_frame(message: Message, version: int, value: Any, correlation_id: int) -> bytes:
    """The frame's payload (no size prefix) of `value` behind its header."""
    assert message.api_key is not None
    if message.kind == "request":
        header = RequestHeader(
            request_api_key=message.api_key,
            request_api_version=version,
            correlation_id=correlation_id,
            client_id="fuzz",
        )
        return encode_request(header, value)[4:]
    header = ResponseHeader(correlation_id=correlation_id)
    return encode_response(header, message.api_key, version, value)[4:]


def versioned_message(message: Message) -> st.SearchStrategy[tuple[int, Any]]:
    return STRATEGIES.message(message)


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("message", MESSAGE_PARAMS)
@examples(12)
@given(data=st.data())
def test_round_trip(message: Message, data: st.DataObject) -> None:
    version, value = data.draw(versioned_message(message))
    body = encode_body(message, version, value)
    decoded, pos = codecs(message)[1][(message.api_key, version)](memoryview(body), 0)
    assert pos == len(body)
    assert decoded == value
    assert encode_body(message, version, decoded) == body

    correlation_id = data.draw(st.integers(-(2**31), 2**31 - 1))
    frame = encode_frame(message, version, value, correlation_id)
    if message.kind == "request":
        header, decoded = decode_request(frame)
        assert (header.request_api_key, header.request_api_version) == (message.api_key, version)
    else:
        header, decoded = decode_response(frame, message.api_key, version)
    assert header.correlation_id == correlation_id
    assert decoded == value


# ------------------------------------------------------------------------------ hostile bytes

# Length prefixes that lie: int32 counts/lengths, int16 string lengths, compact uvarints.
LYING_INT32 = [0x7FFFFFFF, 0x40000000, 0x10000, -2, -(2**31)]
LYING_INT16 = [0x7FFF, -2]
LYING_UVARINTS = [b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x08", b"\xff\xff\x03"]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with one to three mutations: truncation, bit flip, lying length, splice."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(out)))
        kind = draw(
            st.sampled_from(["truncate", "flip", "int32", "int16", "uvarint", "splice", "byte"])
        )
        if kind == "truncate":
            del out[pos:]
        elif kind == "flip" and pos < len(out):
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "int32":
            out[pos : pos + 4] = struct.pack(">i", draw(st.sampled_from(LYING_INT32)))
        elif kind == "int16":
            out[pos : pos + 2] = struct.pack(">h", draw(st.sampled_from(LYING_INT16)))
        elif kind == "uvarint":
            out[pos : pos + 1] = draw(st.sampled_from(LYING_UVARINTS))
        elif kind == "splice":
            out[pos : pos + draw(st.integers(0, 8))] = draw(st.binary(max_size=16))
        elif kind == "byte" and pos < len(out):
            out[pos] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
    return bytes(out)


class Bounded:
    """Runs a decode and checks it was quick and allocated in proportion to its input only."""

    def __init__(self) -> None:
        tracemalloc.start()

    def run(self, size: int, decode: Any, *args: Any) -> Any:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        try:
            return decode(*args)
        finally:
            elapsed = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1] - before
            assert elapsed < DECODE_SECONDS, f"decoding {size} bytes took {elapsed:.1f} s"
            limit = ALLOC_FIXED + ALLOC_PER_BYTE * size
            assert peak < limit, f"decoding {size} bytes allocated {peak} bytes (limit {limit})"

    def close(self) -> None:
        tracemalloc.stop()


@pytest.fixture
def bounded() -> Any:
    checker = Bounded()
    yield checker
    checker.close()


def decode_hostile_frame(bounded: Bounded, message: Message, version: int, frame: bytes) -> None:
    """Decode `frame` as a request/response of `message` at `version`: it must decode or raise
    only the codec's errors, quickly and without a large allocation."""
    if message.kind == "request":
        try:
            bounded.run(len(frame), decode_request, frame)
        except KafkaProtocolError:
            pass
    else:
        try:
            bounded.run(len(frame), decode_response, frame, message.api_key, version)
        except DecodeError:
            pass


@pytest.mark.parametrize("message", MESSAGE_PARAMS)
@examples(12)
@given(data=st.data())
def test_mutated_frames_fail_cleanly(message: Message, data: st.DataObject, bounded: Any) -> None:
    version, value = data.draw(versioned_message(message))
    frame = data.draw(mutated(encode_frame(message, version, value, 1)))
    decode_hostile_frame(bounded, message, version, frame)
    # The generated body decoder on its own raises only the documented primitive errors.
    body = data.draw(mutated(encode_body(message, version, value)))
    try:
        bounded.run(len(body), codecs(message)[1][(message.api_key, version)], memoryview(body), 0)
    except DECODE_ERRORS:
        pass


@examples(300)
@given(
    key_version=st.sampled_from(
        sorted((k, v) for k, (lo, hi) in SUPPORTED.items() for v in range(lo, hi + 1))
    ),
    tail=st.binary(max_size=200),
)
def test_random_request_bodies_fail_cleanly(
    key_version: tuple[int, int], tail: bytes, bounded: Any
) -> None:
    """A valid request header prefix followed by arbitrary bytes."""
    api_key, version = key_version
    frame = struct.pack(">hhi", api_key, version, 7) + tail
    try:
        bounded.run(len(frame), decode_request, frame)
    except KafkaProtocolError:
        pass


@examples(300)
@given(frame=st.binary(max_size=120))
def test_random_frames_fail_cleanly(frame: bytes, bounded: Any) -> None:
    try:
        bounded.run(len(frame), decode_request, frame)
    except KafkaProtocolError:
        pass


FIXED_SAMPLES: dict[str, Any] = {
    **dict.fromkeys(INT_RANGES, 1),
    "bool": True,
    "float64": 1.0,
    "uuid": messages._ZERO_UUID,
}


def _sample_value(struct: StructSpec, version: int) -> Any:
    """A message with one element in every array and a non-empty string/bytes everywhere, so
    that each length prefix of the encoding has a position to lie at."""
    values: dict[str, Any] = {}
    for f in struct.fields:
        if version not in f.versions:
            continue
        if f.struct is not None:
            element = _sample_value(f.struct, version)
        elif f.elem == "string":
            element = "ab"
        elif f.elem in ("bytes", "records"):
            element = b"ab"
        elif f.is_array:
            element = FIXED_SAMPLES[f.elem]
        else:
            continue  # fixed-width fields keep their defaults
        values[f.attr] = [element] if f.is_array else element
    return struct_type(struct.path)(**values)


def test_every_lying_length_prefix_fails_fast(bounded: Any) -> None:
    """Exhaustive for small messages: a lying int32, int16 or uvarint at every position of every
    (API, version)'s body (first 96 positions) is refused without a large allocation."""
    checked = 0
    for message in API_MESSAGES:
        for version in generate.versions_of(message):
            value = _sample_value(message.root, version)
            body = encode_body(message, version, value)
            decoder = codecs(message)[1][(message.api_key, version)]
            for pos in range(min(len(body), 96)):
                for lie in (
                    struct.pack(">i", 0x7FFFFFFF),
                    struct.pack(">h", 0x7FFF),
                    b"\xff\xff\xff\xff\x0f",
                ):
                    width = 1 if lie[0] == 0xFF else len(lie)
                    data = body[:pos] + lie + body[pos + width :]
                    try:
                        bounded.run(len(data), decoder, memoryview(data), 0)
                    except DECODE_ERRORS:
                        pass
                    checked += 1
    assert checked > 10_000


@pytest.mark.parametrize("count", [2**31 - 1, 2**32 - 1, 2**20])
def test_uuid_array_with_lying_count_fails_before_allocating(count: int, bounded: Any) -> None:
    """BrokerRegistration's LogDirs is an array of UUIDs: its count used to be checked only
    after building the list, so a count of 2**31 made two billion UUIDs out of ten bytes."""
    spec = next(m for m in API_MESSAGES if m.name == "BrokerRegistrationRequest")
    version = 2  # LogDirs is its last field
    body = encode_body(spec, version, messages.BrokerRegistrationRequest(log_dirs=[]))
    assert body.endswith(b"\x01\x00")  # LogDirs: compact count 0 (+1), then no tagged fields
    lying = body[:-2] + uvarint(count) + bytes(10)
    decoder = REQUEST_DECODERS[(spec.api_key, version)]
    with pytest.raises(DecodeError, match="LogDirs"):
        bounded.run(len(lying), decoder, memoryview(lying), 0)


# ------------------------------------------------------------------------------ frame receiver


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """`stream` cut at arbitrary points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def frames_of(payloads: list[bytes]) -> bytes:
    return b"".join(struct.pack(">i", len(p)) + p for p in payloads)


@examples(200)
@given(data=st.data(), payloads=st.lists(st.binary(max_size=300), max_size=6))
def test_receiver_returns_exactly_the_frames_sent(data: st.DataObject, payloads: list) -> None:
    receiver = FrameReceiver(max_frame_size=300)
    got: list[bytes] = []
    for chunk in data.draw(chunked(frames_of(payloads))):
        receiver.feed(chunk)
        while (frame := receiver.next_frame()) is not None:
            got.append(bytes(frame))
        assert receiver.buffered <= 300 + 4
    assert got == payloads
    assert receiver.buffered == 0


@examples(60)
@given(
    data=st.data(),
    sizes=st.lists(st.integers(0, 3 * DIRECT_FRAME_MIN_BYTES), max_size=5),
)
def test_receiver_reading_into_its_own_memory_returns_exactly_the_frames_sent(
    data: st.DataObject, sizes: list[int]
) -> None:
    """The BufferedProtocol path: the socket writes any number of bytes up to the room of
    each buffer handed out; frames large and small come out exactly as sent."""
    pattern = bytes(range(256)) * (3 * DIRECT_FRAME_MIN_BYTES // 256 + 2)
    payloads = [pattern[i : i + n] for i, n in enumerate(sizes)]
    stream = frames_of(payloads)
    receiver = FrameReceiver(max_frame_size=3 * DIRECT_FRAME_MIN_BYTES)
    got: list[bytes] = []
    sent = 0
    while sent < len(stream):
        room = receiver.get_buffer(-1)
        assert len(room) > 0 and not room.readonly
        n = min(data.draw(st.integers(1, len(room))), len(stream) - sent)
        room[:n] = stream[sent : sent + n]
        sent += n
        receiver.buffer_updated(n)
        while (frame := receiver.next_frame()) is not None:
            got.append(bytes(frame))
        assert receiver.buffered <= 3 * DIRECT_FRAME_MIN_BYTES + 4
    assert got == payloads
    assert receiver.buffered == 0


@examples(300)
@given(data=st.data(), stream=st.binary(max_size=400), limit=st.integers(0, 64))
def test_receiver_on_arbitrary_bytes_frames_or_refuses(
    data: st.DataObject, stream: bytes, limit: int
) -> None:
    """Any byte stream gives frames that re-frame to a prefix of it, or InvalidFrame for the
    first bad size prefix; nothing else is raised and at most one frame is held back."""
    receiver = FrameReceiver(max_frame_size=limit)
    got: list[bytes] = []
    refused: InvalidFrame | None = None
    for chunk in data.draw(chunked(stream)):
        receiver.feed(chunk)
        try:
            while (frame := receiver.next_frame()) is not None:
                assert len(frame) <= limit
                got.append(bytes(frame))
        except InvalidFrame as exc:
            refused = exc
            break
        assert receiver.buffered <= limit + 4
    consumed = frames_of(got)
    assert stream.startswith(consumed)
    if refused is not None:
        (size,) = struct.unpack_from(">i", stream, len(consumed))
        assert size == refused.size and (size < 0 or size > limit)


def test_receiver_refuses_huge_prefix_before_buffering() -> None:
    receiver = FrameReceiver(max_frame_size=1024)
    receiver.feed(struct.pack(">i", 0x7FFFFFFF) + b"x" * 10)
    with pytest.raises(InvalidFrame, match="exceeds"):
        receiver.next_frame()
