"""Storage faults against a real stack: a locked metadata database, a full data dir, corrupt and
truncated segment objects, and an object uploaded but never committed.

What each test holds the stack to:
- locked metadata: a produce waits for the lock and completes once it is released; held past
  the produce timeout, the produce fails retriably; no process restarts.
- data dir full (a size-limited tmpfs): produces fail retriably, every acknowledged record
  stays readable, nothing that failed is ever read, and produces succeed again once space
  returns, without restarting anything.
- corrupt or truncated object: reading that partition's block is an error, never garbage; the
  other partitions of the same object read fine; the reader keeps running.
- orphan object (the uploader killed between its PUT and its commit): never served; offsets
  stay contiguous.

The size-limited filesystems are tmpfs mounts (the tests run as root) that each test unmounts.
"""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import obstore
import pytest
from obstore.store import S3Store

from metadata import BlockLocation, MetadataStore
from streamhouse.client import Client, Record, StreamHouseError
from streamhouse.kafka.framing import decode_response, encode_request
from streamhouse.kafka.messages import (
    FetchRequest,
    OffsetCommitRequest,
    ProduceRequest,
    RequestHeader,
)
from streamhouse.recordbatch import decode_records, encode_batch, scan_batches
from streamhouse.segment import read_index
from streamhouse.testing import Stack

MiB = 1024 * 1024
POLL_S = 0.05
KAFKA_STORAGE_ERROR = 56
REQUEST_TIMED_OUT = 7
NOT_ENOUGH_REPLICAS = 19  # "nothing was written", retriable (see uploader/__main__.py)


# ----------------------------------------------------------------------------- helpers


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Bounded polling on a condition."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(POLL_S)


def read_all(client: Client, topic: str, partition: int) -> list[tuple[int, bytes]]:
    """Every (offset, value) of the partition, from the start to the high watermark."""
    out: list[tuple[int, bytes]] = []
    offset = 0
    while True:
        records, next_offset, hwm, _ = client.consume(topic, partition, offset)
        out.extend((r.offset, r.value or b"") for r in records)
        if next_offset >= hwm:
            return out
        assert next_offset > offset, f"consume from {offset} made no progress"
        offset = next_offset


def assert_contiguous(entries: list[tuple[int, bytes]]) -> None:
    assert [o for o, _ in entries] == list(range(len(entries))), "offsets are not 0..n-1"


def pids(stack: Stack) -> dict[str, int]:
    return stack.pids()


class InBackground:
    """Runs `fn` in a thread; `done` is set when it returned or raised."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:  # inspected by the test
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self, timeout: float) -> None:
        assert self.done.wait(timeout), f"still running after {timeout}s"
        self.thread.join()


class KafkaConnection:
    """One raw Kafka connection: Produce v9 and Fetch v12 built with the generated codec."""

    def __init__(self, stack: Stack) -> None:
        self.sock = socket.create_connection(("127.0.0.1", stack.kafka_port), timeout=30)
        self.correlation = 0

    def __enter__(self) -> KafkaConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _read_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the server closed the Kafka connection"
            data += chunk
        return data

    def call(self, api_key: int, version: int, request: Any) -> Any:
        self.correlation += 1
        header = RequestHeader(
            request_api_key=api_key,
            request_api_version=version,
            correlation_id=self.correlation,
            client_id="storage-faults",
        )
        self.sock.sendall(encode_request(header, request))
        (length,) = struct.unpack(">i", self._read_exactly(4))
        response_header, response = decode_response(self._read_exactly(length), api_key, version)
        assert response_header.correlation_id == self.correlation
        return response

    def produce(self, topic: str, values: dict[int, list[bytes]]) -> dict[int, int]:
        """One acks=all Produce of a batch per partition; partition -> error code."""
        data = [
            ProduceRequest.PartitionProduceData(
                index=p,
                records=encode_batch([None] * len(vs), list(vs), [[] for _ in vs], [1] * len(vs)),
            )
            for p, vs in values.items()
        ]
        request = ProduceRequest(
            acks=-1,
            timeout_ms=30_000,
            topic_data=[ProduceRequest.TopicProduceData(name=topic, partition_data=data)],
        )
        (topic_response,) = self.call(0, 9, request).responses
        return {p.index: p.error_code for p in topic_response.partition_responses}

    def offset_commit(self, group: str, topic: str, offsets: dict[int, int]) -> dict[int, int]:
        """One OffsetCommit v8 outside group management; partition -> error code."""
        request = OffsetCommitRequest(
            group_id=group,
            topics=[
                OffsetCommitRequest.OffsetCommitRequestTopic(
                    name=topic,
                    partitions=[
                        OffsetCommitRequest.OffsetCommitRequestPartition(
                            partition_index=p, committed_offset=o
                        )
                        for p, o in offsets.items()
                    ],
                )
            ],
        )
        (topic_response,) = self.call(8, 8, request).topics
        return {p.partition_index: p.error_code for p in topic_response.partitions}

    def fetch(self, topic: str, partitions: list[int]) -> dict[int, tuple[int, list[bytes]]]:
        """One Fetch from offset 0 of each partition; partition -> (error code, values)."""
        request = FetchRequest(
            max_wait_ms=0,
            min_bytes=0,
            topics=[
                FetchRequest.FetchTopic(
                    topic=topic,
                    partitions=[
                        FetchRequest.FetchPartition(partition=p, partition_max_bytes=MiB)
                        for p in partitions
                    ],
                )
            ],
        )
        (topic_response,) = self.call(1, 12, request).responses
        out: dict[int, tuple[int, list[bytes]]] = {}
        for part in topic_response.partitions:
            records = bytes(part.records or b"")
            values: list[bytes] = []
            if records:
                for info in scan_batches(records):
                    batch = records[info.position : info.position + info.length]
                    values.extend(r[3] or b"" for r in decode_records(batch))
            out[part.partition_index] = (part.error_code, values)
        return out


def hold_write_lock(path: pathlib.Path) -> apsw.Connection:
    """A second connection holding SQLite's write lock (as another agent's long commit)."""
    blocker = apsw.Connection(str(path))
    # A write of the stack's own in progress (an agent lease renewal, a commit) holds the lock
    # for milliseconds: wait it out instead of failing the test with "database is locked".
    blocker.setbusytimeout(10_000)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def release(blocker: apsw.Connection) -> None:
    blocker.execute("ROLLBACK")
    blocker.close()


def log_text(stack: Stack, program: str) -> str:
    path = stack.data_dir / "logs" / f"{program}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def mount_tmpfs(path: pathlib.Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )


def unmount(path: pathlib.Path) -> None:
    subprocess.run(["umount", str(path)], check=True)


def fill(directory: pathlib.Path) -> pathlib.Path:
    """Writes a filler file until the filesystem has no byte left; returns its path."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        chunk = 1 * MiB
        while chunk >= 512:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk //= 2
    finally:
        os.close(fd)
    return filler


# ----------------------------------------------------------------------------- locked metadata


def test_produce_waits_out_a_locked_metadata_database_and_fails_retriably_past_the_timeout(
    tmp_path: pathlib.Path,
) -> None:
    env = {"STREAMHOUSE_PRODUCE_TIMEOUT_MS": "4000"}
    with Stack(tmp_path / "data", env=env) as stack, Client(stack.grpc_address) as client:
        client.create_topic("locked", 1)
        assert client.produce("locked", b"before", partition=0) == (0, 0)
        started = pids(stack)

        # Held briefly: the produce waits for the commit and then succeeds.
        blocker = hold_write_lock(stack.settings.metadata_path)
        try:
            produce = InBackground(lambda: client.produce("locked", b"waited", partition=0))
            assert not produce.done.wait(1.0), f"produce did not wait: {produce.error}"
        finally:
            release(blocker)
        produce.join(10)
        assert produce.error is None and produce.result == (0, 1)

        # Held past the produce timeout: the produce fails retriably; the uploader gives the
        # commit up (the log says so) and stays up.
        blocker = hold_write_lock(stack.settings.metadata_path)
        try:
            with pytest.raises(StreamHouseError) as err:
                client.produce("locked", b"timed out", partition=0)
            wait_until(
                lambda: "could not be committed" in log_text(stack, "uploader"),
                15,
                "the uploader giving up the commit",
            )
        finally:
            release(blocker)
        assert err.value.code.name == "UNAVAILABLE"
        assert "retry" in str(err.value)
        assert "locked by another writer" in log_text(stack, "uploader")

        assert client.produce("locked", b"after", partition=0) == (0, 2)
        assert read_all(client, "locked", 0) == [(0, b"before"), (1, b"waited"), (2, b"after")]
        assert pids(stack) == started
        # The object of the commit given up was deleted: every object left is committed.
        assert stored_keys(stack) == committed_keys(stack, "locked", 1)


def stored_keys(stack: Stack) -> set[str]:
    root = stack.data_dir / "objects"
    return {p.relative_to(root).as_posix() for p in root.rglob("*.seg")}


def committed_keys(stack: Stack, topic: str, partitions: int) -> set[str]:
    with MetadataStore(stack.settings.metadata_path) as meta:
        info = meta.get_topic(topic)
        assert info is not None
        return {
            b.segment_key
            for p in range(partitions)
            for b in meta.find_blocks(info.topic_id, p, 0, 1000)
        }


def test_offset_commits_on_a_locked_database_fail_retriably_while_ingest_keeps_serving(
    tmp_path: pathlib.Path,
) -> None:
    """Offset commits (gRPC and Kafka) wait for the lock off ingest's event loop: meanwhile
    ingest answers other requests at once; past ingest's busy timeout (10 s) they fail
    retriably (UNAVAILABLE; Kafka REQUEST_TIMED_OUT), and succeed once the lock is gone."""
    with (
        Stack(tmp_path / "data") as stack,
        Client(stack.grpc_address) as client,
        KafkaConnection(stack) as kafka,
    ):
        client.create_topic("offsets", 1)
        assert client.produce("offsets", b"x", partition=0) == (0, 0)
        ingest = stack.pid("ingest")
        blocker = hold_write_lock(stack.settings.metadata_path)
        try:
            grpc_commit = InBackground(lambda: client.commit_offset("g1", "offsets", 0, 1))
            kafka_commit = InBackground(lambda: kafka.offset_commit("g2", "offsets", {0: 1}))
            assert not grpc_commit.done.wait(1.0), grpc_commit.error
            started = time.monotonic()
            assert client.get_topic("offsets").partition_info[0].high_watermark == 1
            records, *_ = client.consume("offsets", 0, 0)
            assert [r.value for r in records] == [b"x"]
            assert time.monotonic() - started < 5, "ingest's event loop was blocked"
            grpc_commit.join(30)
            kafka_commit.join(30)
        finally:
            release(blocker)
        assert isinstance(grpc_commit.error, StreamHouseError), grpc_commit.result
        assert grpc_commit.error.code.name == "UNAVAILABLE"
        # (Whichever of the two commits queued behind the other says so; both name the cause.)
        assert "(the busy timeout)" in str(grpc_commit.error)
        assert "locked by another writer" in str(grpc_commit.error)
        assert kafka_commit.error is None and kafka_commit.result == {0: REQUEST_TIMED_OUT}

        client.commit_offset("g1", "offsets", 0, 1)
        assert client.get_offset("g1", "offsets", 0) == (1, "")
        assert kafka.offset_commit("g2", "offsets", {0: 1}) == {0: 0}
        assert client.get_offset("g2", "offsets", 0) == (1, "")
        assert stack.pid("ingest") == ingest


# ----------------------------------------------------------------------------- data dir full


@pytest.fixture
def small_fs(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """An 8 MiB tmpfs at tmp_path/small, unmounted afterwards."""
    mount = tmp_path / "small"
    mount_tmpfs(mount, "8m")
    try:
        yield mount
    finally:
        unmount(mount)


@pytest.mark.parametrize("full", ["data_dir", "metadata_only"])
def test_full_data_dir_fails_produces_retriably_and_recovers(
    tmp_path: pathlib.Path, small_fs: pathlib.Path, full: str
) -> None:
    """`data_dir`: the whole data dir (metadata and objects) on the small filesystem.
    `metadata_only`: only the data dir (metadata.sqlite) there, objects elsewhere; the
    failures then come from SQLite (SQLITE_FULL) instead of the object PUT. Logs live on the
    big disk in both (bind mount), as an operator would put them."""
    data_dir = small_fs / "data"
    logs = data_dir / "logs"
    logs.mkdir(parents=True)
    real_logs = tmp_path / "logs"
    real_logs.mkdir()
    subprocess.run(["mount", "--bind", str(real_logs), str(logs)], check=True)
    env = {
        "STREAMHOUSE_UPLOAD_ATTEMPTS": "2",
        "STREAMHOUSE_STORE_TIMEOUT_MS": "2000",
        "STREAMHOUSE_PRODUCE_TIMEOUT_MS": "8000",
        "STREAMHOUSE_CACHE_BYTES": str(1 * MiB),
    }
    if full == "metadata_only":
        env["STREAMHOUSE_OBJECT_STORE"] = (tmp_path / "objects").as_uri()
    try:
        with Stack(data_dir, env=env) as stack, Client(stack.grpc_address) as client:
            client.create_topic("full", 2)
            acked: dict[int, list[bytes]] = {0: [], 1: []}
            failed: list[bytes] = []
            payload = b"x" * 2000

            def produce(n: int) -> None:
                partition = n % 2
                values = [b"%d-%d-" % (n, i) + payload for i in range(20)]
                client.produce_batch("full", [Record(value=v) for v in values], partition)
                acked[partition].extend(values)

            for n in range(10):
                produce(n)
            started = pids(stack)
            filler = fill(small_fs)

            # Produce until writes fail (at once for objects; SQLite may first reuse WAL room).
            n = 10
            error: StreamHouseError | None = None
            while error is None:
                assert n < 400, "produces kept succeeding on a full filesystem"
                try:
                    produce(n)
                except StreamHouseError as exc:
                    error = exc
                    failed.extend(b"%d-%d-" % (n, i) + payload for i in range(20))
                n += 1
            assert error.code.name == "UNAVAILABLE", error
            assert "retry" in str(error)
            with KafkaConnection(stack) as kafka:
                refused = [b"kafka-while-full-%d" % i for i in range(5)]
                code = kafka.produce("full", {0: refused})[0]
                assert code in (KAFKA_STORAGE_ERROR, NOT_ENOUGH_REPLICAS, REQUEST_TIMED_OUT), code
                failed.extend(refused)
            expected = "No space left" if full == "data_dir" else "disk is full"
            assert expected in log_text(stack, "uploader")
            assert pids(stack) == started

            # Everything acknowledged is readable, nothing that failed is, offsets contiguous.
            for partition in (0, 1):
                entries = read_all(client, "full", partition)
                assert_contiguous(entries)
                assert [v for _, v in entries] == acked[partition]

            # Space returns: produces succeed again, nothing restarted.
            filler.unlink()
            for m in range(n, n + 4):
                produce(m)
            with KafkaConnection(stack) as kafka:
                accepted = [b"kafka-after-%d" % i for i in range(5)]
                assert kafka.produce("full", {1: accepted}) == {1: 0}
                acked[1].extend(accepted)
            assert pids(stack) == started
            for partition in (0, 1):
                entries = read_all(client, "full", partition)
                assert_contiguous(entries)
                assert [v for _, v in entries] == acked[partition]
                assert not set(failed) & {v for _, v in entries}
    finally:
        unmount(logs)


# ----------------------------------------------------------------------------- corrupt objects


def blocks_by_partition(stack: Stack, topic: str, partitions: int) -> dict[int, BlockLocation]:
    with MetadataStore(stack.settings.metadata_path) as meta:
        info = meta.get_topic(topic)
        assert info is not None
        found = {p: meta.find_blocks(info.topic_id, p, 0, 10) for p in range(partitions)}
    assert all(len(b) == 1 for b in found.values()), found
    return {p: b[0] for p, b in found.items()}


def damage_object(stack: Stack, key: str, change: Callable[[bytes], bytes]) -> None:
    """Replaces the stored object `key` with `change(its bytes)`, in whichever store."""
    url = stack.settings.object_store_url
    if url.startswith("file://"):
        path = stack.data_dir / "objects" / key
        path.write_bytes(change(path.read_bytes()))
        return
    bucket = url.removeprefix("s3://")
    store = S3Store(
        bucket,
        config={
            "endpoint": stack.env["AWS_ENDPOINT_URL"],
            "access_key_id": stack.env["AWS_ACCESS_KEY_ID"],
            "secret_access_key": stack.env["AWS_SECRET_ACCESS_KEY"],
            "region": stack.env["AWS_REGION"],
            "virtual_hosted_style_request": False,
        },
        client_options={"allow_http": True},
    )
    data = bytes(obstore.get(store, key).bytes())
    obstore.put(store, key, change(data))


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_corrupt_and_truncated_blocks_fail_only_their_partition(
    tmp_path: pathlib.Path, request: pytest.FixtureRequest, backend: str
) -> None:
    # A cache too small for any block: every read is a range GET of the object.
    env = {"STREAMHOUSE_CACHE_BYTES": "1", "STREAMHOUSE_FLUSH_INTERVAL_MS": "300"}
    if backend == "s3":
        env.update(request.getfixturevalue("seaweed").env())
    with (
        Stack(tmp_path / "data", env=env) as stack,
        Client(stack.grpc_address) as client,
        KafkaConnection(stack) as kafka,
    ):
        client.create_topic("corrupt", 3)
        produced = {p: [b"p%d-value-%d" % (p, i) for i in range(20)] for p in range(3)}
        # One Kafka request for all three partitions: one segment, three blocks.
        assert kafka.produce("corrupt", produced) == {0: 0, 1: 0, 2: 0}
        blocks = blocks_by_partition(stack, "corrupt", 3)
        keys = {b.segment_key for b in blocks.values()}
        assert len(keys) == 1, f"the partitions landed in different segments: {keys}"
        before = {p: read_all(client, "corrupt", p) for p in range(3)}
        assert {p: [v for _, v in e] for p, e in before.items()} == produced
        assert kafka.fetch("corrupt", [0, 1, 2]) == {p: (0, produced[p]) for p in range(3)}

        first, middle, last = sorted(blocks, key=lambda p: blocks[p].byte_offset)
        flip_at = blocks[first].byte_offset + 20 + 3  # inside the stored bytes, past the header
        cut_at = blocks[last].byte_offset + blocks[last].byte_length - 5

        def damage(data: bytes) -> bytes:
            flipped = bytes(b ^ 0xFF for b in data[flip_at : flip_at + 2])
            return (data[:flip_at] + flipped + data[flip_at + 2 :])[:cut_at]

        damage_object(stack, keys.pop(), damage)
        reader = stack.pid("reader")

        for bad in (first, last):
            for _ in range(2):  # not cached afterwards either
                with pytest.raises(StreamHouseError) as err:
                    client.consume("corrupt", bad, 0)
                assert err.value.code.name == "UNAVAILABLE"
                assert "KAFKA_STORAGE_ERROR" in str(err.value)
        assert read_all(client, "corrupt", middle) == before[middle]
        # Kafka: one fetch of all three; only the damaged partitions carry the error.
        assert kafka.fetch("corrupt", [0, 1, 2]) == {
            first: (KAFKA_STORAGE_ERROR, []),
            middle: (0, produced[middle]),
            last: (KAFKA_STORAGE_ERROR, []),
        }
        assert stack.pid("reader") == reader
        reader_log = log_text(stack, "reader")
        assert "checksum mismatch" in reader_log
        assert "truncated" in reader_log  # a short file (local) or short range (S3)


# ----------------------------------------------------------------------------- orphan objects


def segment_objects(stack: Stack) -> set[pathlib.Path]:
    folder = stack.data_dir / "objects" / "segments"
    return set(folder.glob("*.seg")) if folder.exists() else set()


def test_object_uploaded_but_never_committed_is_never_served(tmp_path: pathlib.Path) -> None:
    """The uploader is killed after its PUT, while its commit waits for the metadata lock:
    the object stays in the store, uncommitted, and no consumer ever sees its records."""
    with Stack(tmp_path / "data") as stack, Client(stack.grpc_address) as client:
        client.create_topic("orphan", 1)
        assert client.produce("orphan", b"first", partition=0) == (0, 0)
        committed = segment_objects(stack)

        blocker = hold_write_lock(stack.settings.metadata_path)
        try:
            produce = InBackground(lambda: client.produce("orphan", b"orphaned", partition=0))
            wait_until(lambda: segment_objects(stack) - committed, 15, "the PUT of the object")
            old = stack.kill("uploader")
            stack.wait_restarted("uploader", old)
        finally:
            release(blocker)
        produce.join(30)
        assert isinstance(produce.error, StreamHouseError), produce.result
        assert produce.error.code.name == "UNAVAILABLE"

        (orphan,) = segment_objects(stack) - committed
        index = read_index(orphan.read_bytes())
        assert [e.record_count for e in index] == [1]  # a whole, valid segment object

        assert client.produce("orphan", b"second", partition=0) == (0, 1)
        entries = read_all(client, "orphan", 0)
        assert entries == [(0, b"first"), (1, b"second")]
        with MetadataStore(stack.settings.metadata_path) as meta:
            info = meta.get_topic("orphan")
            assert info is not None
            keys = {b.segment_key for b in meta.find_blocks(info.topic_id, 0, 0, 10)}
        assert orphan.relative_to(stack.data_dir / "objects").as_posix() not in keys
