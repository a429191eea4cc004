"""Unit tests for streamhouse.ring: SPSC frame rings in shared memory with FIFO doorbells."""

from __future__ import annotations

import asyncio
import mmap
import multiprocessing
import os
import random
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
import uvloop

from streamhouse import ring as ring_mod
from streamhouse.doorbell import Doorbell
from streamhouse.ring import (
    RingLayoutError,
    RingPermissionError,
    RingReader,
    RingTimeout,
    RingWriter,
    make_private_dir,
    unlink_ring,
)

CAP = 4096
SPAWN = multiprocessing.get_context("spawn")

LOOPS = pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


@dataclass
class RingFixture:
    """A ring name in a private run dir; every end opened through it is closed at teardown."""

    name: str
    run_dir: Path
    ends: list[RingWriter | RingReader] = field(default_factory=list)

    def writer(self, capacity: int = CAP) -> RingWriter:
        end = RingWriter(self.name, self.run_dir, capacity)
        self.ends.append(end)
        return end

    def reader(self, capacity: int = CAP) -> RingReader:
        end = RingReader(self.name, self.run_dir, capacity)
        self.ends.append(end)
        return end

    @property
    def shm_path(self) -> str:
        return ring_mod._paths(self.name, os.path.realpath(self.run_dir))[0]


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[RingFixture]:
    fx = RingFixture("produce", tmp_path / "run")
    yield fx
    for end in fx.ends:
        end.close()
    unlink_ring(fx.name, fx.run_dir)
    assert not os.path.exists(fx.shm_path)


def run(loop_factory: Callable[[], asyncio.AbstractEventLoop], coro: Awaitable[None]) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(coro)  # type: ignore[arg-type]


async def assert_blocked(task: asyncio.Task[object]) -> None:
    """Let the loop run a few rounds (no wall-clock sleep) and check the task still waits."""
    for _ in range(10):
        await asyncio.sleep(0)
    assert not task.done()


def frame(i: int, max_payload: int = 3000) -> tuple[bytes, bytes]:
    """Deterministic frame #i: msgspec header, payload of varied size and content."""
    header = msgspec.msgpack.encode({"seq": i, "topic": "t" * (i % 7)})
    payload = random.Random(i).randbytes((i * 7919) % (max_payload + 1))
    return header, payload


def poke_shm(shm_path: str, offset: int, data: bytes) -> None:
    """Write raw bytes into the segment at a documented layout offset (simulates damage)."""
    fd = os.open(shm_path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 0) as mm:
            mm[offset : offset + len(data)] = data
    finally:
        os.close(fd)


def peek_u64(shm_path: str, offset: int) -> int:
    with open(shm_path, "rb") as f:
        f.seek(offset)
        return struct.unpack("<Q", f.read(8))[0]


# -- child process entry points (spawn pickles them by reference) -----------------------------


def child_write_frames(
    name: str, run_dir: str, capacity: int, count: int, use_uvloop: bool
) -> None:
    async def main() -> None:
        with RingWriter(name, run_dir, capacity) as writer:
            for i in range(count):
                await writer.write(*frame(i), timeout=30)

    if use_uvloop:
        uvloop.run(main())
    else:
        asyncio.run(main())


def seq_frame(i: int) -> tuple[bytes, bytes]:
    return i.to_bytes(8, "little"), bytes([i % 256]) * (i % 200)


def child_write_sequence(name: str, run_dir: str, capacity: int, count: int) -> None:
    async def main() -> None:
        with RingWriter(name, run_dir, capacity) as writer:
            for i in range(count):
                await writer.write(*seq_frame(i), timeout=30)

    uvloop.run(main())


def child_attach_and_exit(name: str, run_dir: str, capacity: int, role: str) -> None:
    # Exits without close(): process exit must not take the ring with it.
    end = (RingWriter if role == "writer" else RingReader)(name, run_dir, capacity)
    if role == "writer":
        assert end.try_write(b"from-child", b"payload")


def run_child(target: Callable[..., None], *args: object) -> None:
    proc = SPAWN.Process(target=target, args=args)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0


# -- basic framing ---------------------------------------------------------------------------


def test_round_trip_empty_and_large_payloads(ring: RingFixture) -> None:
    capacity = 8 << 20
    writer, reader = ring.writer(capacity), ring.reader(capacity)
    big = random.Random(1).randbytes(5 << 20)
    sent = [
        (b"", b""),
        (b"hdr-only", b""),
        (b"", b"payload-only"),
        (msgspec.msgpack.encode({"seq": 1}), big),
        (b"h", bytearray(b"from a bytearray")),
        (b"h", memoryview(big)[1000:3000]),
        (b"h", memoryview(bytearray(b"\x01\x02\x03\x04" * 3)).cast("I")),  # non-byte format
    ]
    for header, payload in sent[:4]:
        assert writer.try_write(header, payload)
    got = reader.read_frames()
    assert got == [(h, bytes(p)) for h, p in sent[:4]]
    assert all(type(h) is bytes and type(p) is bytes for h, p in got)
    for header, payload in sent[4:]:
        assert writer.try_write(header, payload)
    assert reader.read_frames() == [(h, memoryview(p).tobytes()) for h, p in sent[4:]]
    assert reader.read_frames() == []


def test_a_payload_given_as_parts_arrives_as_their_concatenation(ring: RingFixture) -> None:
    writer, reader = ring.writer(), ring.reader()
    data = random.Random(3).randbytes(3000)
    parts = [
        data[:10],
        memoryview(data)[10:1000],
        bytearray(data[1000:1001]),
        b"",
        memoryview(bytearray(data[1001:1401])).cast("I"),  # counted in bytes, not items
        data[1401:],
    ]
    for _ in range(4):  # around the ring more than once: parts are written across wraps too
        assert writer.try_write(b"hdr", parts)
        assert reader.read_frames() == [(b"hdr", data)]
    assert writer.try_write(b"", [])
    assert reader.read_frames() == [(b"", b"")]
    # The size check counts every part (header + payload over max_frame_size is refused).
    with pytest.raises(ValueError, match="payload 4089"):
        writer.try_write(b"", [b"x" * 4000, b"y" * 89])

    async def main() -> None:
        with pytest.raises(ValueError, match="max frame size"):
            await writer.write(b"", [b"x" * 4000, b"y" * 90], timeout=None)
        while writer.try_write(b"", b"z" * 1000):  # fill the ring: write() must wait
            pass
        task = asyncio.create_task(writer.write(b"h", [b"a" * 600, b"b" * 600], timeout=10))
        await assert_blocked(task)
        reader.read_frames()
        await task
        assert reader.read_frames() == [(b"h", b"a" * 600 + b"b" * 600)]

    run(asyncio.new_event_loop, main())


def test_max_frame_fits_even_mid_ring(ring: RingFixture) -> None:
    writer, reader = ring.writer(), ring.reader()
    assert writer.max_frame_size == CAP - 8
    biggest = bytes(range(256)) * (CAP // 256)
    assert writer.try_write(b"", biggest[: writer.max_frame_size])  # at offset 0: fits
    assert reader.read_frames()[0][1] == biggest[: writer.max_frame_size]
    assert writer.try_write(b"small", b"x")
    assert reader.read_frames() == [(b"small", b"x")]
    # Mid-ring: the wrap marker is published on its own, the frame fits once it is consumed.
    assert not writer.try_write(b"", biggest[: writer.max_frame_size])
    assert reader.read_frames() == []
    assert writer.try_write(b"", biggest[: writer.max_frame_size])
    assert reader.read_frames() == [(b"", biggest[: writer.max_frame_size])]


def test_wrap_around_many_varied_frames(ring: RingFixture) -> None:
    writer, reader = ring.writer(), ring.reader()
    rnd = random.Random(42)
    expected: deque[tuple[bytes, bytes]] = deque()
    seq = 0
    received = 0
    while received < 5000:
        for _ in range(rnd.randint(1, 12)):
            header = seq.to_bytes(4, "little") * rnd.randint(0, 10)
            payload = rnd.randbytes(rnd.choice([0, 1, 7, 8, 9, rnd.randint(0, 1500)]))
            if not writer.try_write(header, payload):
                break
            expected.append((header, payload))
            seq += 1
        for got in reader.read_frames(max_frames=rnd.randint(1, 8)):
            assert got == expected.popleft()  # every byte of header and payload
            received += 1
    for got in reader.read_frames(max_frames=10_000):
        assert got == expected.popleft()
    assert not expected
    assert writer._head > 50 * CAP  # many laps around the data area


def test_full_ring_pushes_back_then_accepts_after_read(ring: RingFixture) -> None:
    writer, reader = ring.writer(), ring.reader()
    payload = b"p" * 48  # 8 prefix + 8 header + 48 payload = 64-byte records
    written = 0
    while writer.try_write(written.to_bytes(8, "little"), payload):
        written += 1
    assert written == CAP // 64
    assert not writer.try_write(b"x" * 8, payload)
    first = reader.read_frames(max_frames=1)
    assert first == [((0).to_bytes(8, "little"), payload)]
    assert writer.try_write(written.to_bytes(8, "little"), payload)
    rest = reader.read_frames()
    assert [int.from_bytes(h, "little") for h, _ in rest] == list(range(1, written + 1))


def test_oversize_frame_raises_value_error(ring: RingFixture) -> None:
    writer = ring.writer()
    with pytest.raises(ValueError, match=r"max frame size 4088 bytes.*capacity 4096") as info:
        writer.try_write(b"hh", b"x" * 4087)
    assert "Raise the ring capacity" in str(info.value)

    async def main() -> None:
        with pytest.raises(ValueError, match="max frame size"):
            await writer.write(b"", b"x" * (CAP + 1), timeout=None)

    run(asyncio.new_event_loop, main())


def test_bad_arguments(ring: RingFixture) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        RingWriter("x", ring.run_dir, 4100)
    with pytest.raises(ValueError, match="ring name"):
        RingWriter("../escape", ring.run_dir, CAP)
    reader = ring.reader()
    with pytest.raises(ValueError, match="max_frames"):
        reader.read_frames(0)


# -- async waiting ---------------------------------------------------------------------------


@LOOPS
def test_async_write_waits_for_space_and_is_released_by_read(
    ring: RingFixture, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    writer, reader = ring.writer(), ring.reader()
    payload = b"p" * 56  # 64-byte records

    async def main() -> None:
        while writer.try_write(b"", payload):
            pass
        first = asyncio.create_task(writer.write(b"first", b"a" * 40))
        second = asyncio.create_task(writer.write(b"second", b"b" * 40))
        await assert_blocked(first)
        assert not second.done()
        with pytest.raises(ValueError, match="max frame size"):  # not queued behind them
            await writer.write(b"", b"x" * CAP)
        reader.read_frames(max_frames=1)  # frees one record and rings the space doorbell
        await asyncio.wait_for(first, 10)
        await assert_blocked(second)
        reader.read_frames(max_frames=1)
        await asyncio.wait_for(second, 10)
        frames = reader.read_frames()
        assert frames[-2:] == [(b"first", b"a" * 40), (b"second", b"b" * 40)]  # order kept

    run(loop_factory, main())


@LOOPS
def test_async_write_timeout_and_cancel(
    ring: RingFixture, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    writer, reader = ring.writer(), ring.reader()

    async def main() -> None:
        while writer.try_write(b"", b"x" * 100):
            pass
        with pytest.raises(RingTimeout, match="no space for a frame of 100 bytes within 0.05 s"):
            await writer.write(b"", b"x" * 100, timeout=0.05)
        with pytest.raises(TimeoutError):  # RingTimeout is a TimeoutError too
            await writer.write(b"", b"x" * 100, timeout=0)
        task = asyncio.create_task(writer.write(b"", b"y" * 100))
        await assert_blocked(task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The cancelled waiter left no registration behind: a new wait works.
        again = asyncio.create_task(writer.write(b"z", b"", timeout=10))
        await assert_blocked(again)
        assert reader.read_frames()
        await again

    run(loop_factory, main())


@LOOPS
def test_async_write_of_max_frame_across_wrap(
    ring: RingFixture, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    writer, reader = ring.writer(), ring.reader()
    big = bytes(range(256)) * 15

    async def consume(n: int) -> list[tuple[bytes, bytes]]:
        got: list[tuple[bytes, bytes]] = []
        while len(got) < n:
            await reader.wait_readable()
            got += reader.read_frames()
        return got

    async def main() -> None:
        consumer = asyncio.create_task(consume(20))
        for i in range(20):
            # Alternating sizes put head mid-ring, so big frames need a lone wrap marker.
            await writer.write(i.to_bytes(2, "little"), big if i % 2 else b"s" * 100, timeout=10)
        got = await asyncio.wait_for(consumer, 10)
        assert got == [(i.to_bytes(2, "little"), big if i % 2 else b"s" * 100) for i in range(20)]

    run(loop_factory, main())


@LOOPS
@pytest.mark.timeout(120)
def test_wait_readable_woken_by_write_from_another_process(
    ring: RingFixture, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    capacity = 16384  # much smaller than the total sent: the child also waits for space
    count = 300
    reader = ring.reader(capacity)
    use_uvloop = loop_factory is uvloop.new_event_loop

    async def main() -> None:
        waiter = asyncio.create_task(reader.wait_readable())
        await assert_blocked(waiter)
        proc = SPAWN.Process(
            target=child_write_frames,
            args=(ring.name, str(ring.run_dir), capacity, count, use_uvloop),
        )
        proc.start()
        try:
            await asyncio.wait_for(waiter, 60)  # woken by the child's data doorbell
            got: list[tuple[bytes, bytes]] = []
            while len(got) < count:
                await asyncio.wait_for(reader.wait_readable(), 60)
                got += reader.read_frames(max_frames=7)
            assert got == [frame(i) for i in range(count)]
            assert reader.read_frames() == []
            assert reader.peer_epoch() == 1
        finally:
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 60)
        assert proc.exitcode == 0

    run(loop_factory, main())


@pytest.mark.timeout(120)
def test_cross_process_stress_keeps_every_frame(ring: RingFixture) -> None:
    # Many small frames through a small ring: the writer publishes head while the reader loads
    # it, laps after laps. A torn or transiently zeroed counter shows up as RingError or a gap.
    capacity, count = 8192, 60_000
    reader = ring.reader(capacity)
    proc = SPAWN.Process(
        target=child_write_sequence, args=(ring.name, str(ring.run_dir), capacity, count)
    )

    async def main() -> None:
        expected = 0
        while expected < count:
            await asyncio.wait_for(reader.wait_readable(), 60)
            for got in reader.read_frames():
                assert got == seq_frame(expected)
                expected += 1

    proc.start()
    try:
        uvloop.run(main())
    finally:
        proc.join(60)
    assert proc.exitcode == 0


# -- lifetime, restarts, epochs --------------------------------------------------------------


@pytest.mark.timeout(120)
def test_child_process_exit_does_not_unlink_ring(ring: RingFixture) -> None:
    run_dir = str(ring.run_dir)
    # A child creates the ring and exits without closing it.
    run_child(child_attach_and_exit, ring.name, run_dir, CAP, "writer")
    assert os.path.exists(ring.shm_path)
    assert peek_u64(ring.shm_path, 136) == 1  # writer epoch from the child
    writer = ring.writer()
    assert writer.epoch == 2  # same segment, not a fresh one
    assert writer.peer_epoch() == 0  # no reader ever attached
    # A child attaches as reader and exits.
    run_child(child_attach_and_exit, ring.name, run_dir, CAP, "reader")
    assert os.path.exists(ring.shm_path)
    assert writer.peer_epoch() == 1
    reader = ring.reader()
    assert reader.epoch == 2
    assert writer.try_write(b"after", b"children")
    assert reader.read_frames() == [(b"after", b"children")]


def test_writer_restart_continues_at_head(ring: RingFixture) -> None:
    w1, reader = ring.writer(), ring.reader()
    assert reader.peer_epoch() == 1 and w1.peer_epoch() == 1
    for i in range(3):
        assert w1.try_write(*frame(i, 500))
    assert reader.read_frames(max_frames=1) == [frame(0, 500)]
    seen = reader.peer_epoch()
    # Simulate a writer killed mid-frame: record bytes past head that were never published.
    head = peek_u64(ring.shm_path, 128)
    poke_shm(ring.shm_path, 384 + head % CAP, struct.pack("<II", 200, 10) + b"\xee" * 64)
    w1.close()
    w2 = ring.writer()
    assert w2.epoch == 2
    assert reader.peer_epoch() == 2 != seen  # the reader can notice the restart
    assert reader.read_frames() == [frame(1, 500), frame(2, 500)]  # published frames survive
    for i in range(3, 40):
        assert w2.try_write(*frame(i, 500))
        assert reader.read_frames() == [frame(i, 500)]


def test_reader_restart_drops_in_flight_frames(ring: RingFixture) -> None:
    writer, r1 = ring.writer(), ring.reader()
    for i in range(3):
        assert writer.try_write(*frame(i, 300))
    assert r1.read_frames(max_frames=1) == [frame(0, 300)]
    seen = writer.peer_epoch()
    assert seen == 1
    r1.close()
    r2 = ring.reader()
    assert r2.epoch == 2
    assert writer.peer_epoch() == 2 != seen
    assert r2.read_frames() == []  # frames 1 and 2 were never acknowledged: dropped
    for i in range(3, 30):
        assert writer.try_write(*frame(i, 300))
        assert r2.read_frames() == [frame(i, 300)]


@LOOPS
def test_reader_restart_releases_blocked_writer(
    ring: RingFixture, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    writer = ring.writer()
    ring.reader()

    async def main() -> None:
        while writer.try_write(b"", b"x" * 200):
            pass
        task = asyncio.create_task(writer.write(b"next", b"x" * 200, timeout=10))
        await assert_blocked(task)
        new_reader = ring.reader()  # drops everything in flight and rings the space doorbell
        await asyncio.wait_for(task, 10)
        assert new_reader.read_frames() == [(b"next", b"x" * 200)]

    run(loop_factory, main())


# -- create/attach and layout checks ---------------------------------------------------------


def test_capacity_mismatch_raises_clear_error(ring: RingFixture) -> None:
    ring.writer(CAP)
    with pytest.raises(RingLayoutError, match=r"capacity 4096 bytes but 8192 was requested") as e:
        RingReader(ring.name, ring.run_dir, 8192)
    assert "unlink_ring('produce'" in str(e.value)


def test_layout_version_mismatch_raises_clear_error(ring: RingFixture) -> None:
    ring.writer().close()
    poke_shm(ring.shm_path, 8, struct.pack("<I", 99))
    with pytest.raises(RingLayoutError, match=r"layout version 99 .* version 1 .*unlink_ring"):
        RingReader(ring.name, ring.run_dir, CAP)


def test_uninitialised_ring_times_out_with_fix(
    ring: RingFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ring_mod, "_ATTACH_TIMEOUT_S", 0.05)
    os.makedirs(ring.run_dir, mode=0o700)
    fd = os.open(ring.shm_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, 384 + CAP)  # sized, but the creator "died" before writing the magic
    os.close(fd)
    with pytest.raises(RingLayoutError, match="not initialised.*unlink_ring"):
        RingWriter(ring.name, ring.run_dir, CAP)


def test_attacher_waits_for_creator_to_finish(
    ring: RingFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.makedirs(ring.run_dir, mode=0o700)
    fd = os.open(ring.shm_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)  # created (O_EXCL won) but not even sized yet
    steps: list[str] = []

    def creator_progresses(_seconds: float) -> None:
        # Stands in for the attacher's start-up retry sleep: each retry, the "creator" moves on.
        if not steps:
            os.truncate(ring.shm_path, 384 + CAP)
            steps.append("sized")
        elif len(steps) == 1:
            poke_shm(ring.shm_path, 8, struct.pack("<IIQ", 1, 384, CAP))
            steps.append("fields")
        else:
            poke_shm(ring.shm_path, 0, b"SHRING\0\0")  # magic last
            steps.append("magic")

    # The retry sleep is start-up only; patching it makes the interleaving deterministic.
    monkeypatch.setattr(time, "sleep", creator_progresses)
    writer = ring.writer()
    assert steps == ["sized", "fields", "magic"]
    assert writer.epoch == 1
    reader = ring.reader()
    assert writer.try_write(b"h", b"p")
    assert reader.read_frames() == [(b"h", b"p")]


def test_concurrent_create_or_attach(ring: RingFixture) -> None:
    def attach(role: type[RingWriter | RingReader], barrier: threading.Barrier, out: list) -> None:
        try:
            barrier.wait()
            out.append(role(ring.name, ring.run_dir, CAP))
        except BaseException as exc:  # checked in the main thread
            out.append(exc)

    for attempt in range(25):
        barrier = threading.Barrier(2)
        w_out: list[RingWriter | BaseException] = []
        r_out: list[RingReader | BaseException] = []
        threads = [
            threading.Thread(target=attach, args=(RingWriter, barrier, w_out)),
            threading.Thread(target=attach, args=(RingReader, barrier, r_out)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (writer,), (reader,) = w_out, r_out
        assert isinstance(writer, RingWriter) and isinstance(reader, RingReader)
        assert writer.epoch == reader.epoch == 1
        assert writer.try_write(b"n", attempt.to_bytes(4, "little"))
        assert reader.read_frames() == [(b"n", attempt.to_bytes(4, "little"))]
        writer.close()
        reader.close()
        unlink_ring(ring.name, ring.run_dir)


def test_fifos_and_unlink_ring(ring: RingFixture) -> None:
    ring.writer()
    for suffix in ("data", "space"):
        path = ring.run_dir / f"{ring.name}.{suffix}.fifo"
        assert stat.S_ISFIFO(path.stat().st_mode)
    assert os.path.basename(ring.shm_path).startswith("sh")
    assert len(os.path.basename(ring.shm_path)) <= 31
    # Another run dir (another stack on the same machine) gets another segment.
    other = ring_mod._paths(ring.name, os.path.realpath(ring.run_dir / "other"))[0]
    assert other != ring.shm_path
    for end in ring.ends:
        end.close()
    unlink_ring(ring.name, ring.run_dir)
    assert not os.path.exists(ring.shm_path)
    assert not list(ring.run_dir.iterdir())
    unlink_ring(ring.name, ring.run_dir)  # absent: no error
    unlink_ring(ring.name, ring.run_dir / "never-existed")


def test_doorbell_ring_never_blocks(tmp_path: Path) -> None:
    with Doorbell(tmp_path / "bell.fifo") as bell:
        for _ in range(200_000):  # far more than a pipe buffer holds
            bell.ring()
        bell.drain()
        with pytest.raises(BlockingIOError):
            os.read(bell.fileno(), 1)
    (tmp_path / "plain").write_text("x")
    with pytest.raises(FileExistsError, match="not a FIFO"):
        Doorbell(tmp_path / "plain")


# -- permissions: rings are private to the stack's user (rule 8) ------------------------------

OTHER_UID = 4242  # any uid but ours; chown to it works because the tests run as root


def needs_root() -> None:
    assert os.geteuid() == 0, "these tests chown files to another uid, which needs root"


def test_ring_files_and_run_dir_are_created_private_whatever_the_umask(
    ring: RingFixture,
) -> None:
    old = os.umask(0)
    try:
        ring.writer()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(ring.shm_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ring.run_dir).st_mode) == 0o700
    for fifo in ring.run_dir.iterdir():
        assert stat.S_IMODE(os.stat(fifo).st_mode) == 0o600, fifo


def test_ring_file_of_another_user_is_refused_not_attached(ring: RingFixture) -> None:
    needs_root()
    ring.writer().close()
    os.chown(ring.shm_path, OTHER_UID, OTHER_UID)
    for end in (RingReader, RingWriter):
        with pytest.raises(RingPermissionError, match=f"belongs to uid {OTHER_UID}.*unlink_ring"):
            end(ring.name, ring.run_dir, CAP)


def test_ring_file_open_to_others_is_refused(ring: RingFixture) -> None:
    ring.writer().close()
    os.chmod(ring.shm_path, 0o644)
    with pytest.raises(RingPermissionError, match="open to group or others.*mode 644"):
        RingReader(ring.name, ring.run_dir, CAP)


def test_doorbell_fifo_of_another_user_or_open_to_others_is_refused(tmp_path: Path) -> None:
    needs_root()
    path = tmp_path / "x.data.fifo"
    os.mkfifo(path, 0o600)
    os.chown(path, OTHER_UID, OTHER_UID)
    with pytest.raises(PermissionError, match=f"belongs to uid {OTHER_UID}"):
        Doorbell(path)
    os.chown(path, os.geteuid(), os.getegid())
    os.chmod(path, 0o622)
    with pytest.raises(PermissionError, match="open to group or others"):
        Doorbell(path)
    os.chmod(path, 0o600)
    Doorbell(path).close()


def test_run_dir_of_another_user_or_open_to_others_is_refused(ring: RingFixture) -> None:
    needs_root()
    os.makedirs(ring.run_dir, mode=0o700)
    os.chown(ring.run_dir, OTHER_UID, OTHER_UID)
    with pytest.raises(RingPermissionError, match=f"belongs to uid {OTHER_UID}"):
        RingWriter(ring.name, ring.run_dir, CAP)
    with pytest.raises(RingPermissionError, match=f"belongs to uid {OTHER_UID}"):
        make_private_dir(ring.run_dir, tighten=True)
    os.chown(ring.run_dir, os.geteuid(), os.getegid())
    os.chmod(ring.run_dir, 0o755)
    with pytest.raises(RingPermissionError, match="chmod 700"):
        RingWriter(ring.name, ring.run_dir, CAP)
    make_private_dir(ring.run_dir, tighten=True)  # the stack's own dirs are tightened
    assert stat.S_IMODE(os.stat(ring.run_dir).st_mode) == 0o700
    ring.writer()


# -- async for over a ring (rule 11) ------------------------------------------------------------


@LOOPS
def test_async_for_yields_every_frame_in_order_and_waits_when_empty(
    ring: RingFixture, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    writer, reader = ring.writer(), ring.reader()

    async def go() -> None:
        got: list[tuple[bytes, bytes]] = []

        async def consume() -> None:
            async for frame in reader:
                got.append(frame)
                if len(got) == 300:
                    return

        task = asyncio.ensure_future(consume())
        for i in range(300):
            await writer.write(f"h{i}".encode(), b"p" * (i % 50))
        await asyncio.wait_for(task, 10)
        assert got == [(f"h{i}".encode(), b"p" * (i % 50)) for i in range(300)]

    run(loop_factory, go())


# ----------------------------------------------------------------------------- take_frames


def test_take_frames_lends_views_of_every_frame_across_wraps(ring: RingFixture) -> None:
    """take_frames sees the same frames as read_frames, in order, across many laps; the
    callback keeps only a copy of part of each payload."""
    writer, reader = ring.writer(), ring.reader()
    rnd = random.Random(7)
    expected: deque[tuple[bytes, bytes]] = deque()
    seq = received = 0

    def take(header: memoryview, payload: memoryview) -> tuple[bytes, bytes]:
        assert isinstance(header, memoryview) and isinstance(payload, memoryview)
        return bytes(header), bytes(payload[:5])

    while received < 3000:
        for _ in range(rnd.randint(1, 12)):
            header = seq.to_bytes(4, "little") * rnd.randint(1, 6)
            payload = rnd.randbytes(rnd.choice([0, 3, 9, rnd.randint(0, 1500)]))
            if not writer.try_write(header, payload):
                break
            expected.append((header, payload))
            seq += 1
        for got in reader.take_frames(take, max_frames=rnd.randint(1, 8)):
            header, payload = expected.popleft()
            assert got == (header, payload[:5])
            received += 1
    assert writer._head > 20 * CAP
    assert reader.take_frames(take) == [] or expected


def test_take_frames_views_die_with_the_call_and_the_space_is_released(
    ring: RingFixture,
) -> None:
    writer, reader = ring.writer(), ring.reader()
    payload = b"p" * 48
    while writer.try_write(b"h" * 8, payload):
        pass
    kept: list[memoryview] = []
    got = reader.take_frames(lambda h, p: kept.append(p) or len(p), max_frames=2)
    assert got == [48, 48]
    with pytest.raises(ValueError):
        bytes(kept[0])  # released: a view cannot outlive the call
    assert writer.try_write(b"h" * 8, payload)  # the two frames' space is free again


def test_take_frames_consumes_the_frame_whose_callback_failed(ring: RingFixture) -> None:
    """A callback that raises consumes the frames before it and the failing one; the next
    call starts after them."""
    writer, reader = ring.writer(), ring.reader()
    for n in range(4):
        assert writer.try_write(n.to_bytes(8, "little"), b"x")

    def take(header: memoryview, _payload: memoryview) -> int:
        n = int.from_bytes(header, "little")
        if n == 1:
            raise RuntimeError("bad frame")
        return n

    with pytest.raises(RuntimeError, match="bad frame"):
        reader.take_frames(take)
    assert reader.take_frames(take) == [2, 3]


def test_the_reader_hint_reaches_the_writer_and_outlives_the_reader(ring: RingFixture) -> None:
    writer, reader = ring.writer(), ring.reader()
    assert writer.reader_hint() == 0 and reader.hint == 0  # a new ring asks nothing
    reader.set_hint(1)
    assert writer.reader_hint() == 1 and reader.hint == 1
    reader.set_hint(2**64 - 1)  # any u64
    assert writer.reader_hint() == 2**64 - 1
    reader.close()
    again = ring.reader()  # a restarted reader sees (and replaces) what was hinted before
    assert again.hint == 2**64 - 1
    again.set_hint(0)
    assert writer.reader_hint() == 0
    assert writer.try_write(b"h", b"p") and again.read_frames() == [(b"h", b"p")]
