"""Every frame fits its ring, no stage trusts its ring, no process is left up but deaf.

One stack for the module, with a small ack ring and a raised batches-per-partition limit so a
single Kafka produce of many tiny batches needs several AckFrames:

- Many small batches in one produce: acknowledged once, committed once, nobody restarts
  (before, the uploader's one AckFrame outgrew the ack ring after the commit, the uploader
  crash-looped and every client retry committed the data again).
- More batches than max_batches_per_partition: refused up front, nothing committed.
- Garbage and lying frames written into every ring of the live stack (from this process,
  while the ring's own writer is stopped, so each ring keeps one writer): every reading
  process logs them and keeps running with the same pid; the stack then works.
- A ring loop that dies (a corrupt record in the committed ring) takes the reader down with
  one log line; supervisord restarts it and it serves again.
"""

from __future__ import annotations

import pathlib
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from streamhouse import ring as ring_module
from streamhouse import rings
from streamhouse.client import Client
from streamhouse.frames import (
    AckFrame,
    AckResult,
    BatchMeta,
    CommittedBlock,
    CommittedSegment,
    FetchPart,
    FetchRequest,
    FetchResponse,
    ProduceFrame,
    SealedBatch,
    SealedBlock,
    SealedSegment,
    header_encoder,
)
from streamhouse.kafka.framing import decode_response, encode_request
from streamhouse.kafka.messages import ProduceRequest, RequestHeader
from streamhouse.recordbatch import encode_batch, scan_batches
from streamhouse.testing import PROGRAMS, Stack

MiB = 1024 * 1024
MAX_BATCHES = 50_000
TOPIC = "ring-frames"
RECORD_LIST_TOO_LARGE = 18
encode = header_encoder.encode
GARBAGE = [b"", b"\xc1", b"\xff" * 64, encode({"not": "a frame"}), encode(["x", 1, 2])]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "STREAMHOUSE_ACK_RING_BYTES": str(512 * 1024),
        "STREAMHOUSE_MAX_BATCHES_PER_PARTITION": str(MAX_BATCHES),
    }
    with Stack(tmp_path_factory.mktemp("ring-frames") / "data", env=env) as running:
        with Client(running.grpc_address) as client:
            client.create_topic(TOPIC, 2)
        yield running


def tiny_batches(n: int, tag: str) -> bytes:
    one = encode_batch([None], [f"{tag}".encode()], [[]], [1_700_000_000_000])
    return one * n


def kafka_produce(port: int, partition: int, records: bytes) -> tuple[int, int, str | None]:
    """(error code, base offset, message) of one acks=all Produce v9 of `records`."""
    header = RequestHeader(
        request_api_key=0, request_api_version=9, correlation_id=1, client_id="ring-frames"
    )
    request = ProduceRequest(
        acks=-1,
        timeout_ms=60_000,
        topic_data=[
            ProduceRequest.TopicProduceData(
                name=TOPIC,
                partition_data=[
                    ProduceRequest.PartitionProduceData(index=partition, records=records)
                ],
            )
        ],
    )
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(encode_request(header, request))
        size = struct.unpack(">i", recv_exactly(sock, 4))[0]
        _, response = decode_response(recv_exactly(sock, size), 0, 9)
    part = response.responses[0].partition_responses[0]
    return part.error_code, part.base_offset, part.error_message


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the broker closed the connection"
        data += chunk
    return data


def high_watermark(stack: Stack, partition: int) -> int:
    with Client(stack.grpc_address) as client:
        topic = client.get_topic(TOPIC)
    return {p.partition: p.high_watermark for p in topic.partition_info}[partition]


def pids(stack: Stack) -> dict[str, int]:
    return {p: stack.pid(p) for p in PROGRAMS}


def log_of(stack: Stack, program: str) -> str:
    path = stack.data_dir / "logs" / f"{program}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 30) -> None:
    """Bounded polling on a condition (log lines appear asynchronously)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def count_in_log(stack: Stack, program: str, text: str) -> int:
    return log_of(stack, program).count(text)


def write_frames(stack: Stack, ring: str, frames: list[tuple[bytes, bytes]]) -> None:
    """Writes frames into a ring whose own writer is stopped (one writer at a time)."""
    writer = rings.open_writer(stack.settings, ring)
    try:
        for header, payload in frames:
            assert writer.try_write(header, payload), f"ring {ring} is full"
    finally:
        writer.close()


def stopped(stack: Stack, program: str) -> None:
    assert "stopped" in stack.supervisorctl("stop", program).lower()


def started(stack: Stack, program: str) -> None:
    assert "started" in stack.supervisorctl("start", program).lower()
    stack.wait_ready()


def roundtrip(stack: Stack, value: bytes) -> None:
    with Client(stack.grpc_address, timeout=60) as client:
        partition, offset = client.produce(TOPIC, value, partition=1)
        records, _, _, _ = client.consume(TOPIC, partition, offset, max_records=1)
    assert [r.value for r in records] == [value]


# -- every frame fits its ring -----------------------------------------------------------------


def test_many_small_batches_in_one_produce_are_committed_once(stack: Stack) -> None:
    before = pids(stack)
    n = 40_000  # ~900 KB of ack results for a 512 KiB ack ring: several AckFrames
    start = high_watermark(stack, 0)
    code, base, message = kafka_produce(stack.kafka_port, 0, tiny_batches(n, "many"))
    assert (code, message) == (0, None)
    assert base == start
    assert high_watermark(stack, 0) == start + n
    assert pids(stack) == before, "a process restarted"
    assert "died" not in log_of(stack, "uploader")


def test_more_batches_than_the_limit_are_refused_before_anything_is_stored(stack: Stack) -> None:
    before = pids(stack)
    start = high_watermark(stack, 0)
    code, base, message = kafka_produce(stack.kafka_port, 0, tiny_batches(MAX_BATCHES + 1, "x"))
    assert (code, base) == (RECORD_LIST_TOO_LARGE, -1)
    assert message is not None and "max_batches_per_partition" in message
    assert high_watermark(stack, 0) == start
    code, _, _ = kafka_produce(stack.kafka_port, 0, tiny_batches(3, "ok"))
    assert code == 0 and high_watermark(stack, 0) == start + 3
    assert pids(stack) == before


# -- no stage trusts its ring ------------------------------------------------------------------


def produce_frames(topic_id: int) -> list[tuple[bytes, bytes]]:
    payload = tiny_batches(3, "lie")
    infos = scan_batches(payload)
    metas = [BatchMeta(1, -1, -1, -1, i.base_timestamp, i.max_timestamp) for i in infos]
    lengths = [i.length for i in infos]
    frame = ProduceFrame(1 << 40, 0, topic_id, 0, metas, lengths)
    return [
        *((g, b"") for g in GARBAGE),
        (encode([1 << 40, 1, "not a topic id"]), payload),  # salvaged: refusal for its slot
        (encode(ProduceFrame(1 << 40, 2, topic_id, 0, metas, [1, 2, 3])), payload),
        (encode(frame), b"\x00" * len(payload)),  # not batches
        (encode(ProduceFrame(1 << 40, 3, 999_999, 0, metas, lengths)), payload),  # no such topic
    ]


def test_garbage_on_every_ring_leaves_every_process_running(stack: Stack) -> None:
    # TOPIC is the stack's first topic: topic id 1 on the rings.
    expected = pids(stack)

    # Produce and fetch-request rings (ingest writes them): the segmenter and the reader.
    stopped(stack, "ingest")
    seg_lines = count_in_log(stack, "segmenter", "segmenter ERROR")
    reader_lines = count_in_log(stack, "reader", "reader ERROR")
    write_frames(stack, rings.PRODUCE, produce_frames(1))
    fetches = [
        *((g, b"") for g in GARBAGE),
        (encode([1 << 41, "junk"]), b""),
        (encode(FetchRequest(1 << 41, 0, 0, 100, 9, [FetchPart(1, 0, 0, 100)])), b""),
        (encode(FetchRequest(1 << 41, 0, 0, 100, 0, [FetchPart(999_999, 0, 0, 100)])), b""),
    ]
    write_frames(stack, rings.FETCH_REQUEST, fetches)
    wait_for(
        "the segmenter's refusals",
        lambda: count_in_log(stack, "segmenter", "segmenter ERROR") >= seg_lines + 8,
    )
    wait_for(
        "the reader's refusals",
        lambda: count_in_log(stack, "reader", "reader ERROR") >= reader_lines + 7,
    )
    started(stack, "ingest")
    expected["ingest"] = stack.pid("ingest")

    # Ack and committed rings (the uploader writes them): ingest and the reader.
    stopped(stack, "uploader")
    ingest_lines = count_in_log(stack, "ingest", "ERROR")
    reader_lines = count_in_log(stack, "reader", "dropped a committed-segment frame")
    acks = [
        *((g, b"") for g in GARBAGE),
        (encode(AckFrame([AckResult(12345, 0, 0, 7)])), b""),  # nobody asked: ignored
    ]
    write_frames(stack, rings.ACK, acks)
    block = CommittedBlock(1, 0, 0, 4096, 0, 10)
    committed = [*((g, b"") for g in GARBAGE), (encode(CommittedSegment("k", [block])), b"x")]
    write_frames(stack, rings.COMMITTED, committed)
    wait_for(
        "ingest's log lines",
        lambda: count_in_log(stack, "ingest", "ERROR") >= ingest_lines + len(GARBAGE),
    )
    wait_for(
        "the reader's log lines",
        lambda: (
            count_in_log(stack, "reader", "dropped a committed-segment frame")
            >= reader_lines + len(committed)
        ),
    )
    started(stack, "uploader")
    expected["uploader"] = stack.pid("uploader")

    # Sealed ring (the segmenter writes it): the uploader.
    stopped(stack, "segmenter")
    uploader_lines = count_in_log(stack, "uploader", "uploader ERROR")
    lying = SealedSegment(
        1, 0, [SealedBlock(1, 0, 0, 9999, 0)], [SealedBatch(1 << 42, 0, 0, 0, 1, -1, -1, -1)]
    )
    dangling = SealedSegment(
        1, 1, [SealedBlock(1, 0, 0, 4, 0)], [SealedBatch(1 << 42, 0, 0, 3, 1, -1, -1, -1)]
    )
    sealed = [*((g, b"") for g in GARBAGE), (encode(lying), b"1234"), (encode(dangling), b"1234")]
    write_frames(stack, rings.SEALED, sealed)
    wait_for(
        "the uploader's log lines",
        lambda: count_in_log(stack, "uploader", "uploader ERROR") >= uploader_lines + len(sealed),
    )
    started(stack, "segmenter")
    expected["segmenter"] = stack.pid("segmenter")

    # Fetch-response ring (the reader writes it): ingest.
    stopped(stack, "reader")
    ingest_lines = count_in_log(stack, "ingest", "does not decode")
    responses = [*((g, b"") for g in GARBAGE), (encode(FetchResponse(777, [])), b"")]
    write_frames(stack, rings.FETCH_RESPONSE, responses)
    wait_for(
        "ingest's log lines",
        lambda: count_in_log(stack, "ingest", "does not decode") >= ingest_lines + len(GARBAGE),
    )
    started(stack, "reader")
    expected["reader"] = stack.pid("reader")

    # Nobody else restarted, nothing died, and the stack works.
    assert pids(stack) == expected
    roundtrip(stack, b"after the garbage")
    for program in PROGRAMS:
        text = log_of(stack, program)
        assert "died" not in text and "Traceback" not in text, program


# -- no process left up but deaf ---------------------------------------------------------------


def test_a_dead_ring_loop_takes_its_process_down_and_supervisord_restarts_it(
    stack: Stack,
) -> None:
    roundtrip(stack, b"before")
    old_reader = stack.pid("reader")
    # A record in the committed ring that claims more bytes than were published: the
    # reader's ring loop raises RingError (a corrupt ring is not a bad frame: nothing after
    # it can be trusted), so the process must exit and start over on a fresh tail.
    stopped(stack, "uploader")
    writer = rings.open_writer(stack.settings, rings.COMMITTED)
    try:
        head = writer._head
        at = ring_module._HEADER_SIZE + head % writer.capacity
        struct.pack_into("<II", writer._buf, at, writer.capacity * 2, 0)
        writer._head = head + 16
        writer._words[ring_module._W_HEAD] = head + 16
        writer._data_bell.ring()
    finally:
        writer.close()
    new_reader = stack.wait_restarted("reader", old_reader)
    assert new_reader != old_reader
    text = log_of(stack, "reader")
    died = "background task committed-segment intake died: RingError: ring 'committed' is corrupt"
    assert died in text
    assert "exiting so supervisord restarts reader" in text
    started(stack, "uploader")
    roundtrip(stack, b"after the restart")
    assert stack.pid("reader") == new_reader


def test_ring_files_and_dirs_of_the_stack_are_private(stack: Stack) -> None:
    settings = stack.settings
    for path in (settings.data_path, settings.run_dir, settings.log_dir):
        assert pathlib.Path(path).stat().st_mode & 0o777 == 0o700, path
    for name in rings.ALL:
        shm = ring_module._paths(name, str(settings.run_dir.resolve()))[0]
        assert pathlib.Path(shm).stat().st_mode & 0o777 == 0o600, name
    for fifo in settings.run_dir.glob("*.fifo"):
        assert fifo.stat().st_mode & 0o777 == 0o600, fifo
