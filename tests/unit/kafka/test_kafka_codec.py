"""The generated Kafka codec: every (API, version) round-trips, and kafka-python agrees.

Sample messages are built from Kafka's JSON specs through the generator's own parser (found at
``$STREAMHOUSE_KAFKA_SPECS`` or ``../shared/kafka-protocol/message`` beside the repo; the
schema-driven tests skip without them). kafka-python ships two independent codecs: hand-written
classes (``kafka.protocol.old``) and its own JSON-driven one; both must read our bytes and
write back the same bytes, and we must read theirs.
"""

from __future__ import annotations

import ast
import os
import random
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamhouse.kafka import generate, messages, primitives
from streamhouse.kafka.framing import (
    DECODE_ERRORS,
    CorruptRequest,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from streamhouse.kafka.generate import FieldSpec, Message, StructSpec
from streamhouse.kafka.messages import (
    REQUEST_DECODERS,
    REQUEST_ENCODERS,
    RESPONSE_DECODERS,
    RESPONSE_ENCODERS,
    SUPPORTED,
    RequestHeader,
    ResponseHeader,
)
from streamhouse.kafka.primitives import EncodeError, tagged_fields, uvarint

SPEC_DIR = Path(
    os.environ.get(
        "STREAMHOUSE_KAFKA_SPECS",
        Path(__file__).resolve().parents[4] / "shared" / "kafka-protocol" / "message",
    )
)
SPECS: list[Message] = generate.load_messages(SPEC_DIR) if SPEC_DIR.is_dir() else []
API_MESSAGES = [m for m in SPECS if m.kind in ("request", "response")]
HEADERS = {m.name: m for m in SPECS if m.kind == "header"}
CASES = [
    pytest.param(m, v, id=f"{m.name}-v{v}") for m in API_MESSAGES for v in generate.versions_of(m)
]
FLEXIBLE_CASES = [c for c in CASES if c.values[1] in c.values[0].flexible]
needs_specs = pytest.mark.skipif(not SPECS, reason=f"Kafka specs not found at {SPEC_DIR}")

# What StreamHouse needs (brief of the codec); every one of these must be generated.
REQUIRED = {
    18: (0, 4),  # ApiVersions
    3: (0, 12),  # Metadata
    0: (3, 11),  # Produce
    1: (4, 12),  # Fetch
    2: (1, 7),  # ListOffsets
    10: (0, 4),  # FindCoordinator
    11: (0, 9),  # JoinGroup
    14: (0, 5),  # SyncGroup
    12: (0, 4),  # Heartbeat
    13: (0, 5),  # LeaveGroup
    8: (2, 9),  # OffsetCommit
    9: (1, 8),  # OffsetFetch
    15: (0, 5),  # DescribeGroups
    16: (0, 4),  # ListGroups
    42: (0, 2),  # DeleteGroups
    47: (0, 0),  # OffsetDelete
    19: (2, 7),  # CreateTopics
    20: (1, 6),  # DeleteTopics
    37: (0, 3),  # CreatePartitions
    32: (1, 4),  # DescribeConfigs
    33: (0, 2),  # AlterConfigs
    44: (0, 1),  # IncrementalAlterConfigs
    60: (0, 1),  # DescribeCluster
    22: (0, 4),  # InitProducerId
    23: (0, 4),  # OffsetForLeaderEpoch
    21: (0, 2),  # DeleteRecords
}


# ------------------------------------------------------------------------------ samples


def struct_type(path: str) -> type[Any]:
    obj: Any = messages
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
}
TEXT = "abcxyz-._ é✓漢"


def scalar(kind: str, rng: random.Random, mode: str) -> Any:
    size = 0 if mode == "empty" else rng.randint(1, 12)
    if kind in INT_RANGES:
        return rng.randint(*INT_RANGES[kind])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "float64":
        return rng.uniform(-1e9, 1e9)
    if kind == "uuid":
        return uuid.UUID(int=rng.getrandbits(128))
    if kind == "string":
        return "".join(rng.choice(TEXT) for _ in range(size))
    return rng.randbytes(size)  # bytes, records


def sample_value(f: FieldSpec, version: int, rng: random.Random, mode: str) -> Any:
    if mode == "null" and version in f.nullable:
        return None
    if f.is_array:
        count = 0 if mode == "empty" else rng.randint(1, 3)
        if f.struct is not None:
            return [sample(f.struct, version, rng, mode) for _ in range(count)]
        return [scalar(f.elem, rng, "full") for _ in range(count)]
    if f.struct is not None:
        return sample(f.struct, version, rng, mode)
    return scalar(f.type, rng, mode)


def sample(struct: StructSpec, version: int, rng: random.Random, mode: str) -> Any:
    """A message of `struct` with every field of `version` set; mode is full, null or empty:
    random values, nullable fields null, or strings/bytes/arrays empty."""
    values = {
        f.attr: sample_value(f, version, rng, mode) for f in struct.fields if version in f.versions
    }
    return struct_type(struct.path)(**values)


def codecs(message: Message) -> tuple[dict[Any, Any], dict[Any, Any]]:
    if message.kind == "request":
        return REQUEST_ENCODERS, REQUEST_DECODERS
    return RESPONSE_ENCODERS, RESPONSE_DECODERS


def encode_body(message: Message, version: int, value: Any) -> bytes:
    parts: list[Any] = []
    codecs(message)[0][(message.api_key, version)](parts.append, value)
    return b"".join(parts)


def decode_body(message: Message, version: int, data: bytes) -> Any:
    value, pos = codecs(message)[1][(message.api_key, version)](memoryview(data), 0)
    assert pos == len(data)
    return value


# ------------------------------------------------------------------------------ tables


def test_supported_covers_what_streamhouse_needs() -> None:
    for api_key, (lo, hi) in REQUIRED.items():
        have = SUPPORTED[api_key]
        assert have[0] <= lo and hi <= have[1], (messages.API_NAMES[api_key], have)


def test_tables_match_supported() -> None:
    keys = {(k, v) for k, (lo, hi) in SUPPORTED.items() for v in range(lo, hi + 1)}
    assert set(REQUEST_DECODERS) == keys == set(REQUEST_ENCODERS)
    assert set(RESPONSE_DECODERS) == keys == set(RESPONSE_ENCODERS)
    assert messages.API_NAMES[0] == "Produce" and messages.API_NAMES[18] == "ApiVersions"
    assert messages.REQUEST_TYPES[1] is messages.FetchRequest
    assert messages.RESPONSE_TYPES[3] is messages.MetadataResponse


def test_header_versions() -> None:
    assert messages.request_header_version(7, 0) == 0  # ControlledShutdown v0
    assert messages.request_header_version(7, 1) == 1
    assert messages.request_header_version(7, 3) == 2
    assert messages.request_header_version(3, 8) == 1
    assert messages.request_header_version(3, 9) == 2
    assert messages.request_header_version(18, 3) == 2
    assert messages.request_header_version(18, 99) == 2  # unknown newer versions are flexible
    for version in range(0, 5):
        assert messages.response_header_version(18, version) == 0  # ApiVersions: always v0
    assert messages.response_header_version(1, 11) == 0
    assert messages.response_header_version(1, 12) == 1
    assert messages.response_header_version(17, 1) == 0  # SaslHandshake is never flexible


@needs_specs
def test_generated_module_is_fresh(tmp_path: Path) -> None:
    """messages.py is what the generator writes from the specs (re-run it after changes).

    Compared as syntax trees, so that the ruff version formatting it does not matter."""
    out = generate.generate(SPEC_DIR, tmp_path / "messages.py", format_code=False)
    committed = Path(messages.__file__).read_text(encoding="utf-8")
    assert ast.dump(ast.parse(out.read_text(encoding="utf-8"))) == ast.dump(ast.parse(committed)), (
        "streamhouse/kafka/messages.py is stale: "
        "python -m streamhouse.kafka.generate <kafka>/clients/src/main/resources/common/message"
    )


# ------------------------------------------------------------------------------ round trips


@needs_specs
@pytest.mark.parametrize(("message", "version"), CASES)
def test_round_trip_defaults(message: Message, version: int) -> None:
    value = struct_type(message.name)()
    data = encode_body(message, version, value)
    assert decode_body(message, version, data) == value


@needs_specs
@pytest.mark.parametrize("mode", ["full", "null", "empty"])
@pytest.mark.parametrize(("message", "version"), CASES)
def test_round_trip_populated(message: Message, version: int, mode: str) -> None:
    rng = random.Random(f"{message.name}-{version}-{mode}")
    for _ in range(3):
        value = sample(message.root, version, rng, mode)
        data = encode_body(message, version, value)
        decoded = decode_body(message, version, data)
        assert decoded == value
        assert encode_body(message, version, decoded) == data


@needs_specs
@pytest.mark.parametrize(("message", "version"), CASES)
def test_truncated_bodies_raise_decode_errors(message: Message, version: int) -> None:
    value = sample(message.root, version, random.Random(version), "full")
    data = encode_body(message, version, value)
    decoder = codecs(message)[1][(message.api_key, version)]
    cuts = range(len(data)) if len(data) < 200 else random.Random(1).sample(range(len(data)), 200)
    for cut in cuts:
        try:
            _, pos = decoder(memoryview(data[:cut]), 0)
        except DECODE_ERRORS:
            continue
        pytest.fail(f"a {cut}-byte prefix of a {len(data)}-byte body decoded (up to {pos})")


@needs_specs
@pytest.mark.parametrize(("message", "version"), CASES)
def test_absent_fields_ignored_or_refused(message: Message, version: int) -> None:
    """A non-default value in a field the version lacks is dropped when the field is
    ignorable or the message is a response (the broker builds one response for all versions),
    and refused (EncodeError) in a request otherwise."""
    rng = random.Random(version)
    for f in message.root.fields:
        if version in f.versions:
            continue
        other = next(v for v in generate.versions_of(message) if v in f.versions)
        default = getattr(struct_type(message.name)(), f.attr)
        value = sample(message.root, version, rng, "full")
        while getattr(value, f.attr) == default:
            setattr(value, f.attr, sample_value(f, other, rng, "full"))
        if f.ignorable or message.kind == "response":
            decoded = decode_body(message, version, encode_body(message, version, value))
            assert getattr(decoded, f.attr) == default
        else:
            with pytest.raises(EncodeError, match=f.attr):
                encode_body(message, version, value)


@needs_specs
@pytest.mark.parametrize(("message", "version"), FLEXIBLE_CASES)
def test_unknown_tagged_fields_are_skipped(message: Message, version: int) -> None:
    value = struct_type(message.name)()
    data = encode_body(message, version, value)
    assert data.endswith(b"\x00")  # the top-level tagged-field section, empty at defaults
    unknown = tagged_fields([(1000, [b"future"]), (70000, [b"\x01" * 200])])
    assert decode_body(message, version, data[:-1] + unknown) == value


@needs_specs
def test_headers_round_trip() -> None:
    rng = random.Random(7)
    for name, header_type in (("RequestHeader", RequestHeader), ("ResponseHeader", None)):
        spec = HEADERS[name]
        prefix = "REQUEST" if header_type else "RESPONSE"
        encoders = getattr(messages, f"{prefix}_HEADER_ENCODERS")
        decoders = getattr(messages, f"{prefix}_HEADER_DECODERS")
        for version in generate.versions_of(spec):
            for mode in ("full", "null"):
                value = sample(spec.root, version, rng, mode)
                parts: list[Any] = []
                encoders[version](parts.append, value)
                data = b"".join(parts)
                assert decoders[version](memoryview(data), 0) == (value, len(data))


def test_request_header_v2_keeps_int16_client_id() -> None:
    header = RequestHeader(
        request_api_key=18, request_api_version=3, correlation_id=5, client_id="ab"
    )
    parts: list[Any] = []
    messages.REQUEST_HEADER_ENCODERS[2](parts.append, header)
    assert b"".join(parts) == struct.pack(">hhih", 18, 3, 5, 2) + b"ab" + b"\x00"


# ------------------------------------------------------------------------------ specific rules


def test_nullable_string_and_array_null_differs_from_empty() -> None:
    null = messages.MetadataRequest(topics=None)
    empty = messages.MetadataRequest(topics=[])
    header = RequestHeader(request_api_key=3, request_api_version=1, correlation_id=1)
    frame_null, frame_empty = encode_request(header, null), encode_request(header, empty)
    assert frame_null.endswith(b"\xff\xff\xff\xff") and frame_empty.endswith(b"\x00\x00\x00\x00")
    assert decode_request(frame_null[4:])[1].topics is None
    assert decode_request(frame_empty[4:])[1].topics == []

    header = RequestHeader(request_api_key=3, request_api_version=12, correlation_id=1)
    assert decode_request(encode_request(header, null)[4:])[1].topics is None
    assert decode_request(encode_request(header, empty)[4:])[1].topics == []

    for transactional_id in (None, ""):
        request = messages.ProduceRequest(transactional_id=transactional_id)
        for version in (3, 9):
            header = RequestHeader(request_api_key=0, request_api_version=version)
            decoded = decode_request(encode_request(header, request)[4:])[1]
            assert decoded.transactional_id == transactional_id


def test_null_in_non_nullable_field_is_refused() -> None:
    header = RequestHeader(request_api_key=0, request_api_version=3)
    request = messages.ProduceRequest(
        topic_data=[messages.ProduceRequest.TopicProduceData(name=None)]  # type: ignore[arg-type]
    )
    with pytest.raises(EncodeError, match="Produce"):
        encode_request(header, request)
    # ...and a null length where the spec allows none is corrupt on decode.
    frame = encode_request(header, messages.ProduceRequest(topic_data=[]))[4:]
    broken = frame[:-4] + b"\xff\xff\xff\xff"  # topic_data array -> null
    with pytest.raises(CorruptRequest, match="null"):
        decode_request(broken)


def test_known_tagged_fields_are_written_only_when_not_default() -> None:
    leader = messages.FetchResponse.LeaderIdAndEpoch(leader_id=7, leader_epoch=9)
    plain = messages.FetchResponse.PartitionData(partition_index=1, records=b"r")
    tagged = messages.FetchResponse.PartitionData(
        partition_index=1, records=b"r", current_leader=leader
    )
    header = ResponseHeader(correlation_id=3)

    def frame(partition: Any) -> bytes:
        response = messages.FetchResponse(
            responses=[messages.FetchResponse.FetchableTopicResponse(partitions=[partition])]
        )
        return encode_response(header, 1, 12, response)

    section = b"\x01" + uvarint(1) + uvarint(9) + struct.pack(">ii", 7, 9) + b"\x00"
    assert section not in frame(plain) and section in frame(tagged)
    assert len(frame(tagged)) == len(frame(plain)) + len(section) - 1
    decoded = decode_response(frame(tagged)[4:], 1, 12)[1].responses[0].partitions[0]
    assert decoded.current_leader == leader
    assert decoded.diverging_epoch == messages.FetchResponse.EpochEndOffset()

    # Unknown tags beside a known one, inside a nested struct, are skipped.
    mixed = tagged_fields([(1, [struct.pack(">ii", 7, 9), b"\x00"]), (5, [b"??"]), (99, [b""])])
    data = frame(tagged).replace(section, mixed)
    data = struct.pack(">i", len(data) - 4) + data[4:]
    assert decode_response(data[4:], 1, 12)[1].responses[0].partitions[0] == decoded


def test_tagged_field_with_wrong_size_is_corrupt() -> None:
    leader = messages.FetchResponse.LeaderIdAndEpoch(leader_id=7, leader_epoch=9)
    response = messages.FetchResponse(
        responses=[
            messages.FetchResponse.FetchableTopicResponse(
                partitions=[messages.FetchResponse.PartitionData(current_leader=leader)]
            )
        ]
    )
    data = encode_response(ResponseHeader(correlation_id=3), 1, 12, response)[4:]
    good = b"\x01\x01\x09" + struct.pack(">ii", 7, 9) + b"\x00"
    bad = b"\x01\x01\x0a" + struct.pack(">ii", 7, 9) + b"\x00\x00"
    with pytest.raises(ValueError, match="CurrentLeader"):
        decode_response(data.replace(good, bad), 1, 12)


def test_records_are_zero_copy_both_ways() -> None:
    records = bytes(range(256)) * 4
    request = messages.ProduceRequest(
        acks=1,
        timeout_ms=100,
        topic_data=[
            messages.ProduceRequest.TopicProduceData(
                name="t",
                partition_data=[
                    messages.ProduceRequest.PartitionProduceData(index=0, records=records),
                    messages.ProduceRequest.PartitionProduceData(index=1, records=None),
                ],
            )
        ],
    )
    for version in (3, 8, 9, 11):
        header = RequestHeader(request_api_key=0, request_api_version=version, client_id="c")
        frame = encode_request(header, request)[4:]
        _, decoded = decode_request(frame)
        first, second = decoded.topic_data[0].partition_data
        assert isinstance(first.records, memoryview) and first.records.obj is frame
        assert first.records == records and second.records is None

    # Encoding writes the caller's buffer as is: a memoryview slice of a larger buffer works.
    big = bytearray(b"x" * 10 + records + b"y" * 10)
    view = memoryview(big)[10:-10]
    partition = messages.FetchResponse.PartitionData(partition_index=0, records=view)
    response = messages.FetchResponse(
        responses=[messages.FetchResponse.FetchableTopicResponse(topic="t", partitions=[partition])]
    )
    for version in (4, 11, 12):
        frame = encode_response(ResponseHeader(correlation_id=1), 1, version, response)
        decoded = decode_response(frame[4:], 1, version)[1]
        assert decoded.responses[0].partitions[0].records == records


# ------------------------------------------------------------------------------ kafka-python

OLD_CROSS_CHECK = [
    ("metadata", "MetadataRequest", "MetadataResponse", range(1, 9)),
    ("produce", "ProduceRequest", "ProduceResponse", range(3, 9)),
    ("fetch", "FetchRequest", "FetchResponse", range(4, 12)),
    ("api_versions", "ApiVersionsRequest", "ApiVersionsResponse", range(0, 4)),
]


def _spec(name: str) -> Message:
    return next(m for m in API_MESSAGES if m.name == name)


def _readable_by_kafka_python(value: Any) -> None:
    # Clients read an ApiVersions response with an error as v0 (KIP-511), so a server sends
    # errors in a v0 body; kafka-python does exactly that on any non-zero error code.
    if isinstance(value, messages.ApiVersionsResponse):
        value.error_code = 0


def _old_class(module: str, name: str, version: int) -> Any:
    import importlib

    return getattr(importlib.import_module(f"kafka.protocol.old.{module}"), f"{name}_v{version}")


@needs_specs
@pytest.mark.parametrize(
    ("module", "name", "version"),
    [
        (module, name, version)
        for module, request, response, versions in OLD_CROSS_CHECK
        for name in (request, response)
        for version in versions
    ],
)
def test_kafka_python_hand_written_classes_read_and_write_our_bytes(
    module: str, name: str, version: int
) -> None:
    spec = _spec(name)
    old = _old_class(module, name, version)
    rng = random.Random(f"old-{name}-{version}")
    for mode in ("full", "empty"):
        value = sample(spec.root, version, rng, mode)
        if spec.name == "ProduceRequest":  # kafka-python's writer wants real bytes
            for topic in value.topic_data:
                for partition in topic.partition_data:
                    partition.records = partition.records or b""
        _readable_by_kafka_python(value)
        ours = encode_body(spec, version, value)
        theirs = old.decode(ours)
        assert bytes(theirs.encode()) == ours
        assert decode_body(spec, version, bytes(theirs.encode())) == value


def test_kafka_python_requests_decode_with_ours() -> None:
    from kafka.protocol.old.api_versions import ApiVersionsRequest_v3
    from kafka.protocol.old.fetch import FetchRequest_v4
    from kafka.protocol.old.metadata import MetadataRequest_v1, MetadataRequest_v8
    from kafka.protocol.old.produce import ProduceRequest_v3

    def ours(request: Any, correlation_id: int = 11) -> tuple[RequestHeader, Any]:
        request.with_header(correlation_id=correlation_id, client_id="kp")
        frame = bytes(request.encode(header=True, framed=True))
        assert struct.unpack(">i", frame[:4])[0] == len(frame) - 4
        return decode_request(frame[4:])

    header, body = ours(MetadataRequest_v1(topics=["a", "b"]))
    assert (header.request_api_key, header.request_api_version) == (3, 1)
    assert (header.correlation_id, header.client_id) == (11, "kp")
    assert [t.name for t in body.topics] == ["a", "b"]

    _, body = ours(
        MetadataRequest_v8(
            topics=None,
            allow_auto_topic_creation=False,
            include_cluster_authorized_operations=True,
            include_topic_authorized_operations=False,
        )
    )
    assert body.topics is None and body.allow_auto_topic_creation is False
    assert body.include_cluster_authorized_operations is True

    _, body = ours(
        ProduceRequest_v3(
            transactional_id=None,
            required_acks=-1,
            timeout=1500,
            topics=[("orders", [(2, b"batch-bytes")])],
        )
    )
    assert (body.acks, body.timeout_ms, body.transactional_id) == (-1, 1500, None)
    partition = body.topic_data[0].partition_data[0]
    assert (body.topic_data[0].name, partition.index, bytes(partition.records)) == (
        "orders",
        2,
        b"batch-bytes",
    )

    _, body = ours(
        FetchRequest_v4(
            replica_id=-1,
            max_wait_time=500,
            min_bytes=1,
            max_bytes=1 << 20,
            isolation_level=1,
            topics=[("orders", [(0, 42, 65536)])],
        )
    )
    assert (body.max_wait_ms, body.isolation_level) == (500, 1)
    fetch_partition = body.topics[0].partitions[0]
    assert (fetch_partition.partition, fetch_partition.fetch_offset) == (0, 42)
    assert fetch_partition.partition_max_bytes == 65536

    header, body = ours(
        ApiVersionsRequest_v3(
            client_software_name="kafka-python", client_software_version="3.0", tags={}
        )
    )
    assert header.request_api_version == 3 and header.client_id == "kp"
    assert (body.client_software_name, body.client_software_version) == ("kafka-python", "3.0")


def test_our_responses_decode_with_kafka_python() -> None:
    from kafka.protocol.old.api_versions import ApiVersionsResponse_v3
    from kafka.protocol.old.fetch import FetchResponse_v11
    from kafka.protocol.old.metadata import MetadataResponse_v5

    keys = [
        messages.ApiVersionsResponse.ApiVersion(api_key=k, min_version=lo, max_version=hi)
        for k, (lo, hi) in sorted(REQUIRED.items())
    ]
    frame = encode_response(
        ResponseHeader(correlation_id=9),
        18,
        3,
        messages.ApiVersionsResponse(api_keys=keys, throttle_time_ms=5),
    )
    assert frame[4:8] == struct.pack(">i", 9) and frame[8:10] == b"\x00\x00"  # header v0
    theirs = ApiVersionsResponse_v3.decode(frame[8:])
    assert [tuple(k[:3]) for k in theirs.api_keys] == [
        (k, lo, hi) for k, (lo, hi) in sorted(REQUIRED.items())
    ]

    response = messages.MetadataResponse(
        brokers=[messages.MetadataResponse.MetadataResponseBroker(node_id=1, host="h", port=9092)],
        cluster_id="c",
        controller_id=1,
        topics=[
            messages.MetadataResponse.MetadataResponseTopic(
                name="t",
                partitions=[
                    messages.MetadataResponse.MetadataResponsePartition(
                        partition_index=0, leader_id=1, replica_nodes=[1], isr_nodes=[1]
                    )
                ],
            )
        ],
    )
    frame = encode_response(ResponseHeader(correlation_id=9), 3, 5, response)
    theirs = MetadataResponse_v5.decode(frame[8:])
    assert theirs.brokers[0][:3] == (1, "h", 9092) and theirs.cluster_id == "c"
    assert theirs.topics[0][1] == "t" and list(theirs.topics[0][3][0][4]) == [1]

    partition = messages.FetchResponse.PartitionData(
        partition_index=3,
        high_watermark=100,
        last_stable_offset=90,
        log_start_offset=0,
        preferred_read_replica=-1,
        records=b"stored-batches",
    )
    response = messages.FetchResponse(
        responses=[messages.FetchResponse.FetchableTopicResponse(topic="t", partitions=[partition])]
    )
    frame = encode_response(ResponseHeader(correlation_id=9), 1, 11, response)
    theirs = FetchResponse_v11.decode(frame[8:])
    topic, partitions = theirs.topics[0]
    assert topic == "t" and partitions[0][0] == 3 and partitions[0][2] == 100
    assert partitions[0][-1] == b"stored-batches"


def _kafka_python_json_classes() -> dict[str, Any]:
    import importlib
    import inspect
    import pkgutil

    import kafka.protocol as protocol
    from kafka.protocol.api_message import ApiMessage

    found: dict[str, Any] = {}
    for info in pkgutil.walk_packages(protocol.__path__, "kafka.protocol."):
        if any(part in info.name for part in (".old", "generate_stubs", "benchmarks")):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, ApiMessage) and obj is not ApiMessage:
                if getattr(obj, "_json", None):
                    found[obj.__name__] = obj
    return found


def _json_cases() -> list[Any]:
    if not SPECS:
        return []
    classes = _kafka_python_json_classes()
    cases = []
    for spec in API_MESSAGES:
        theirs = classes.get(spec.name)
        if theirs is None:
            continue
        lo, hi = theirs.valid_versions
        for version in generate.versions_of(spec):
            if lo <= version <= hi:
                cases.append(pytest.param(spec, theirs, version, id=f"{spec.name}-v{version}"))
    return cases


@needs_specs
@pytest.mark.parametrize(("spec", "theirs", "version"), _json_cases())
def test_kafka_python_json_codec_reads_and_writes_our_bytes(
    spec: Message, theirs: Any, version: int
) -> None:
    rng = random.Random(f"json-{spec.name}-{version}")
    for mode in ("full", "null", "empty"):
        value = sample(spec.root, version, rng, mode)
        _readable_by_kafka_python(value)
        ours = encode_body(spec, version, value)
        decoded = theirs[version].decode(ours)
        decoded._header = None  # some of its decoders leave it unset, which encode() needs
        assert bytes(decoded.encode()) == ours


# ------------------------------------------------------------------------------ primitives


def test_varints() -> None:
    for value in (0, 1, 127, 128, 300, 2**31 - 1, 2**32 - 1):
        data = uvarint(value)
        assert primitives.read_uvarint(memoryview(data + b"!"), 0) == (value, len(data))
    assert uvarint(300) == b"\xac\x02"
    with pytest.raises(EncodeError):
        uvarint(-1)
    with pytest.raises(primitives.DecodeError, match="longer than 5 bytes"):
        primitives.read_uvarint(memoryview(b"\xff" * 6), 0)
    for value in (0, -1, 1, -64, 64, -(2**31), 2**31 - 1):
        data = primitives.varint(value)
        assert primitives.read_varint(memoryview(data), 0) == (value, len(data))
    assert primitives.varint(-1) == b"\x01" and primitives.varint(1) == b"\x02"
    for value in (0, -1, 2**40, -(2**63), 2**63 - 1):
        data = primitives.varlong(value)
        assert primitives.read_varlong(memoryview(data), 0) == (value, len(data))
    with pytest.raises(EncodeError):
        primitives.varint(2**31)


def test_strings_bytes_and_lengths() -> None:
    view = memoryview(primitives.compact_nullable_string(None) + primitives.string("é"))
    assert primitives.read_compact_nullable_string(view, 0) == (None, 1)
    assert primitives.read_string(view, 1) == ("é", 5)
    with pytest.raises(primitives.DecodeError, match="runs past the end"):
        primitives.read_string(memoryview(b"\x00\x05abc"), 0)
    with pytest.raises(primitives.DecodeError, match="non-nullable"):
        primitives.read_string(memoryview(b"\xff\xff"), 0)
    with pytest.raises(primitives.DecodeError, match="length -2"):
        primitives.read_nullable_bytes(memoryview(b"\xff\xff\xff\xfe"), 0)
    parts: list[Any] = []
    primitives.write_compact_nullable_bytes(parts.append, memoryview(b"\x01\x00\x00\x00").cast("I"))
    assert b"".join(parts) == b"\x05\x01\x00\x00\x00"  # counted in bytes, not items
    assert primitives.array_length(None) == b"\xff\xff\xff\xff"
    assert primitives.compact_array_length([1, 2]) == b"\x03"
    raw = bytes(range(16))
    assert primitives.uuid_from_bytes(raw) == uuid.UUID(bytes=raw)
