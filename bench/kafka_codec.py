"""Micro-benchmark of the Kafka wire codec (streamhouse.kafka) against kio when it is installed.

Cases, in operations per second (best of ``--rounds`` runs of ``--seconds`` each):

  produce v9 decode     ProduceRequest v9, 1 topic x 3 partitions x 1 MiB records:
                        frame -> (header, request)  [the ingest hot path]
  fetch v12 encode      FetchResponse v12, 1 topic x 12 partitions x 1 MiB records:
                        (header, response) -> size-prefixed frame  [the fetch hot path]
  fetch v12 req decode  FetchRequest v12, 1 topic x 12 partitions: frame -> (header, request)
                        [what every polling consumer sends]
  metadata v12 encode   MetadataResponse v12, 3 brokers, 4 topics x 3 partitions
  metadata v12 decode   the same response, frame -> (header, response)

    python bench/kafka_codec.py [--rounds 5] [--seconds 0.5]

kio (``pip install kio``, Aiven's codec generated from the same specs) is timed in the same
process, doing the same work: header and body, size prefix on encode. Before timing, the
script checks that both libraries produce identical bytes for each message. Single-threaded;
numbers are for the machine it runs on.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamhouse.kafka.framing import (  # noqa: E402
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from streamhouse.kafka.messages import (  # noqa: E402
    FetchRequest,
    FetchResponse,
    MetadataResponse,
    ProduceRequest,
    RequestHeader,
    ResponseHeader,
)

MIB = 1 << 20
TOPIC_IDS = [uuid.UUID(int=0x1234_5678_9ABC_DEF0 + i) for i in range(4)]


def ours_produce(records: bytes) -> bytes:
    request = ProduceRequest(
        acks=-1,
        timeout_ms=30_000,
        topic_data=[
            ProduceRequest.TopicProduceData(
                name="orders",
                partition_data=[
                    ProduceRequest.PartitionProduceData(index=i, records=records) for i in range(3)
                ],
            )
        ],
    )
    header = RequestHeader(
        request_api_key=0, request_api_version=9, correlation_id=42, client_id="bench"
    )
    return encode_request(header, request)[4:]


def ours_fetch_request() -> bytes:
    request = FetchRequest(
        replica_id=-1,
        max_wait_ms=500,
        min_bytes=1,
        max_bytes=50 * MIB,
        isolation_level=0,
        session_id=0,
        session_epoch=-1,
        topics=[
            FetchRequest.FetchTopic(
                topic="orders",
                partitions=[
                    FetchRequest.FetchPartition(
                        partition=i,
                        current_leader_epoch=5,
                        fetch_offset=1_000_000 + i,
                        log_start_offset=-1,
                        partition_max_bytes=MIB,
                    )
                    for i in range(12)
                ],
            )
        ],
        rack_id="",
    )
    header = RequestHeader(
        request_api_key=1, request_api_version=12, correlation_id=43, client_id="bench"
    )
    return encode_request(header, request)[4:]


def ours_fetch(records: bytes) -> FetchResponse:
    partitions = [
        FetchResponse.PartitionData(
            partition_index=i,
            high_watermark=1_000_000 + i,
            last_stable_offset=1_000_000 + i,
            log_start_offset=0,
            aborted_transactions=None,
            records=records,
        )
        for i in range(12)
    ]
    topic = FetchResponse.FetchableTopicResponse(topic="orders", partitions=partitions)
    return FetchResponse(session_id=0, responses=[topic])


def ours_metadata() -> MetadataResponse:
    brokers = [
        MetadataResponse.MetadataResponseBroker(node_id=i, host=f"broker-{i}.local", port=9092)
        for i in range(3)
    ]
    topics = [
        MetadataResponse.MetadataResponseTopic(
            name=f"topic-{t}",
            topic_id=TOPIC_IDS[t],
            partitions=[
                MetadataResponse.MetadataResponsePartition(
                    partition_index=p,
                    leader_id=p % 3,
                    leader_epoch=5,
                    replica_nodes=[0, 1, 2],
                    isr_nodes=[0, 1, 2],
                )
                for p in range(3)
            ],
        )
        for t in range(4)
    ]
    return MetadataResponse(
        brokers=brokers, cluster_id="streamhouse", controller_id=0, topics=topics
    )


def kio_cases(records: bytes) -> dict[str, tuple[Callable[[], object], bytes]] | None:
    """kio's version of each case, with the bytes it produces (None when kio is missing)."""
    try:
        import datetime

        from kio.schema.errors import ErrorCode
        from kio.schema.fetch.v12 import response as fetch
        from kio.schema.fetch.v12.request import FetchRequest as KioFetchRequest
        from kio.schema.metadata.v12 import response as metadata
        from kio.schema.produce.v9.request import ProduceRequest as KioProduce
        from kio.schema.request_header.v2.header import RequestHeader as KioRequestHeader
        from kio.schema.response_header.v1.header import ResponseHeader as KioHeaderV1
        from kio.serial import entity_reader, entity_writer
        from kio.static.primitive import Records
    except ImportError:
        return None
    zero = datetime.timedelta(0)

    kio_records = Records(records)
    fetch_response = fetch.FetchResponse(
        throttle_time=zero,
        error_code=ErrorCode.none,
        session_id=0,
        responses=(
            fetch.FetchableTopicResponse(
                topic="orders",
                partitions=tuple(
                    fetch.PartitionData(
                        partition_index=i,
                        error_code=ErrorCode.none,
                        high_watermark=1_000_000 + i,
                        last_stable_offset=1_000_000 + i,
                        log_start_offset=0,
                        aborted_transactions=None,
                        records=kio_records,
                    )
                    for i in range(12)
                ),
            ),
        ),
    )
    metadata_response = metadata.MetadataResponse(
        throttle_time=zero,
        brokers=tuple(
            metadata.MetadataResponseBroker(node_id=i, host=f"broker-{i}.local", port=9092)
            for i in range(3)
        ),
        cluster_id="streamhouse",
        controller_id=0,
        topics=tuple(
            metadata.MetadataResponseTopic(
                error_code=ErrorCode.none,
                name=f"topic-{t}",
                topic_id=TOPIC_IDS[t],
                partitions=tuple(
                    metadata.MetadataResponsePartition(
                        error_code=ErrorCode.none,
                        partition_index=p,
                        leader_id=p % 3,
                        leader_epoch=5,
                        replica_nodes=(0, 1, 2),
                        isr_nodes=(0, 1, 2),
                    )
                    for p in range(3)
                ),
            )
            for t in range(4)
        ),
    )
    write_header = entity_writer(KioHeaderV1)
    header = KioHeaderV1(correlation_id=42)

    def encode(writer: Callable[[io.BytesIO, object], None], message: object) -> bytes:
        out = io.BytesIO()
        out.write(b"\0\0\0\0")
        write_header(out, header)
        writer(out, message)
        view = out.getbuffer()
        view[:4] = (len(view) - 4).to_bytes(4, "big")
        del view
        return out.getvalue()

    write_fetch = entity_writer(fetch.FetchResponse)
    write_metadata = entity_writer(metadata.MetadataResponse)
    read_request_header = entity_reader(KioRequestHeader)
    read_produce = entity_reader(KioProduce)
    read_fetch_request = entity_reader(KioFetchRequest)
    read_response_header = entity_reader(KioHeaderV1)
    read_metadata = entity_reader(metadata.MetadataResponse)

    # kio's readers return (value, bytes consumed).
    def decode_produce(frame: bytes) -> object:
        head, size = read_request_header(frame, 0)
        body, body_size = read_produce(frame, size)
        assert size + body_size == len(frame)
        return head, body

    def decode_fetch_request(frame: bytes) -> object:
        head, size = read_request_header(frame, 0)
        body, body_size = read_fetch_request(frame, size)
        assert size + body_size == len(frame)
        return head, body

    def decode_metadata(frame: bytes) -> object:
        head, size = read_response_header(frame, 4)
        body, body_size = read_metadata(frame, 4 + size)
        assert 4 + size + body_size == len(frame)
        return head, body

    produce_frame = ours_produce(records)
    fetch_request_frame = ours_fetch_request()
    metadata_frame = encode(write_metadata, metadata_response)
    return {
        "produce v9 decode": (lambda: decode_produce(produce_frame), produce_frame),
        "fetch v12 encode": (
            lambda: encode(write_fetch, fetch_response),
            encode(write_fetch, fetch_response),
        ),
        "fetch v12 req decode": (
            lambda: decode_fetch_request(fetch_request_frame),
            fetch_request_frame,
        ),
        "metadata v12 encode": (lambda: encode(write_metadata, metadata_response), metadata_frame),
        "metadata v12 decode": (lambda: decode_metadata(metadata_frame), metadata_frame),
    }


def our_cases(records: bytes) -> dict[str, tuple[Callable[[], object], bytes]]:
    produce_frame = ours_produce(records)
    fetch_request_frame = ours_fetch_request()
    fetch_response = ours_fetch(records)
    metadata_response = ours_metadata()
    header = ResponseHeader(correlation_id=42)
    metadata_frame = encode_response(header, 3, 12, metadata_response)
    return {
        "produce v9 decode": (lambda: decode_request(produce_frame), produce_frame),
        "fetch v12 encode": (
            lambda: encode_response(header, 1, 12, fetch_response),
            encode_response(header, 1, 12, fetch_response),
        ),
        "fetch v12 req decode": (
            lambda: decode_request(fetch_request_frame),
            fetch_request_frame,
        ),
        "metadata v12 encode": (
            lambda: encode_response(header, 3, 12, metadata_response),
            metadata_frame,
        ),
        "metadata v12 decode": (
            lambda: decode_response(memoryview(metadata_frame)[4:], 3, 12),
            metadata_frame,
        ),
    }


def ops_per_second(fn: Callable[[], object], seconds: float, rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(10):
                fn()
            count += 10
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, count / (now - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()

    records = os.urandom(MIB)
    ours = our_cases(records)
    theirs = kio_cases(records)
    if theirs is None:
        print("kio is not installed: timing streamhouse.kafka only (pip install kio)")
    else:
        for name, (_, expected) in ours.items():
            if theirs[name][1] != expected:
                raise SystemExit(f"{name}: kio and streamhouse.kafka produce different bytes")
    print(f"{'case':<22}{'streamhouse ops/s':>18}{'kio ops/s':>12}{'ratio':>8}")
    for name, (fn, _) in ours.items():
        mine = ops_per_second(fn, args.seconds, args.rounds)
        if theirs is None:
            print(f"{name:<22}{mine:>18,.0f}")
            continue
        other = ops_per_second(theirs[name][0], args.seconds, args.rounds)
        print(f"{name:<22}{mine:>18,.0f}{other:>12,.0f}{mine / other:>7.1f}x")


if __name__ == "__main__":
    main()
