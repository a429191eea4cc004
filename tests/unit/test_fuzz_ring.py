"""Property tests of a ring reader facing a damaged ring (shared memory of this process only).

The peer of a ring is another process; whatever it leaves in the data area, `read_frames`
returns frames that lie inside what was published, or raises `RingError`: it never raises
anything else, never reads past `head` and never loops. The ring is poked through its
documented layout (``streamhouse/ring.py``: u32 header size at byte 12, u64 head at 128, u64
tail at 256, data area after the header), not through private names.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamhouse.ring import RingError, RingReader, RingWriter, unlink_ring

CAPACITY = 512
NAME = "fuzz"
READ_SECONDS = 2


def scaled(n: int) -> int:
    return max(1, n * settings.default.max_examples // 100)


class RingBytes:
    """The shared memory of one ring, mapped a second time, to damage it on purpose."""

    def __init__(self, run_dir: str) -> None:
        real = os.path.realpath(run_dir)
        path = "/dev/shm/sh" + xxhash.xxh64(f"{real}\0{NAME}".encode()).hexdigest()
        fd = os.open(path, os.O_RDWR)
        try:
            self.mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        (self.data_at,) = struct.unpack_from("<I", self.mm, 12)

    def word(self, offset: int, value: int | None = None) -> int:
        if value is not None:
            struct.pack_into("<Q", self.mm, offset, value)
        return struct.unpack_from("<Q", self.mm, offset)[0]

    def head(self, value: int | None = None) -> int:
        return self.word(128, value)

    def tail(self, value: int | None = None) -> int:
        return self.word(256, value)

    def fill(self, data: bytes, at: int = 0) -> None:
        data = data[: CAPACITY - at]
        self.mm[self.data_at + at : self.data_at + at + len(data)] = data

    def close(self) -> None:
        self.mm.close()


@pytest.fixture(scope="module")
def ring_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ring")
    path.chmod(0o700)  # rings refuse directories open to others
    return str(path)


@contextmanager
def fresh_ring(run_dir: str) -> Iterator[str]:
    """A ring of its own for one example (the damage of one must not leak into the next)."""
    unlink_ring(NAME, run_dir)
    try:
        yield run_dir
    finally:
        unlink_ring(NAME, run_dir)


def bounded_read(reader: RingReader) -> list[tuple[bytes, bytes]]:
    """All readable frames, failing the test if reading does not finish in READ_SECONDS."""

    def expired(*_: Any) -> None:
        raise TimeoutError(f"read_frames did not return within {READ_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, READ_SECONDS)
    try:
        out: list[tuple[bytes, bytes]] = []
        for _ in range(CAPACITY):
            frames = reader.read_frames()
            if not frames:
                return out
            out.extend(frames)
        raise AssertionError(f"a ring of {CAPACITY} bytes gave more than {CAPACITY} reads")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


SETTINGS = settings(
    max_examples=scaled(150),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(
    garbage=st.binary(min_size=CAPACITY, max_size=CAPACITY),
    start=st.integers(0, CAPACITY).map(lambda n: 8 * n),
    published=st.integers(0, CAPACITY),
    wraps=st.lists(st.integers(0, CAPACITY // 8 - 1), max_size=4),
)
def test_reader_on_garbage_returns_frames_or_ring_error(
    ring_dir: str, garbage: bytes, start: int, published: int, wraps: list[int]
) -> None:
    """Random data area (with wrap markers sprinkled in), random tail, random head published
    after the reader attached (unaligned or short of a whole record included)."""
    with fresh_ring(ring_dir) as run_dir, RingWriter(NAME, run_dir, CAPACITY):
        ring = RingBytes(run_dir)
        try:
            ring.fill(garbage)
            for slot in wraps:  # counted from the tail's record, where they matter most
                at = (start // 8 + slot) % (CAPACITY // 8) * 8
                ring.fill(b"\xff\xff\xff\xff\x00\x00\x00\x00", at)
            ring.head(start)
            ring.tail(start)
            with RingReader(NAME, run_dir, CAPACITY) as reader:
                ring.head(start + published)
                try:
                    frames = bounded_read(reader)
                except RingError:
                    return
                assert sum(len(h) + len(p) for h, p in frames) <= published
                assert start <= ring.tail() <= start + published
        finally:
            ring.close()


@SETTINGS
@given(
    frames=st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=120)), max_size=6),
    damage=st.lists(st.tuples(st.integers(0, CAPACITY - 1), st.integers(0, 255)), max_size=4),
)
def test_reader_on_damaged_frames_returns_frames_or_ring_error(
    ring_dir: str, frames: list[tuple[bytes, bytes]], damage: list[tuple[int, int]]
) -> None:
    """Real frames written by a RingWriter, then bytes of the data area overwritten."""
    with (
        fresh_ring(ring_dir) as run_dir,
        RingWriter(NAME, run_dir, CAPACITY) as writer,
        RingReader(NAME, run_dir, CAPACITY) as r,
    ):
        ring = RingBytes(run_dir)
        try:
            written = [f for f in frames if writer.try_write(*f)]
            for at, value in damage:
                ring.fill(bytes([value]), at)
            try:
                got = bounded_read(r)
            except RingError:
                return
            if not damage:
                assert got == written
            assert ring.tail() <= ring.head()
        finally:
            ring.close()


@pytest.mark.parametrize(("head", "tail"), [(1, 1), (13, 8), (8, 16), (4096, 8)])
def test_attach_to_a_ring_with_impossible_counters_is_refused(
    ring_dir: str, head: int, tail: int
) -> None:
    with fresh_ring(ring_dir) as run_dir, RingWriter(NAME, run_dir, CAPACITY):
        ring = RingBytes(run_dir)
        try:
            ring.head(head)
            ring.tail(tail)
            with pytest.raises(RingError, match="corrupt"):
                RingReader(NAME, run_dir, CAPACITY)
        finally:
            ring.close()


def test_wrap_marker_past_head_is_corrupt_not_a_hang(ring_dir: str) -> None:
    """Found by the properties above: a wrap marker that claims more than was published
    moved the reader past head, and a second marker at offset 0 then made it loop forever."""
    with fresh_ring(ring_dir) as run_dir, RingWriter(NAME, run_dir, CAPACITY):
        ring = RingBytes(run_dir)
        try:
            ring.head(16)
            ring.tail(16)
            with RingReader(NAME, run_dir, CAPACITY) as reader:
                marker = b"\xff\xff\xff\xff\x00\x00\x00\x00"
                ring.fill(marker, 0)
                ring.fill(marker, 16)
                ring.head(24)
                with pytest.raises(RingError, match="corrupt"):
                    bounded_read(reader)
        finally:
            ring.close()
