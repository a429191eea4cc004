"""Single-producer single-consumer frame rings in POSIX shared memory, between OS processes.

Each pair of processes and direction (e.g. ingest -> segmenter "produce") gets one ring: a
shared-memory segment ``/dev/shm/sh<xxh64(realpath(run_dir) NUL name)>`` holding a ring header
and a data area, plus two doorbell FIFOs in ``run_dir`` (see ``streamhouse.doorbell``):
``<name>.data.fifo`` (writer rings, reader waits) and ``<name>.space.fifo`` (reader rings,
writer waits when the ring is full). Nobody polls or sleeps on the hot path.

A frame is an opaque ``header`` (the caller msgspec-encodes it) followed by a raw ``payload``
(may be empty, may be many MiB; the writer may hand it over as a list of buffers, which are
copied in one after the other). The reader gets ``(header, payload)`` back as ``bytes``, or
lent as views into the ring for the length of a callback (``take_frames``).

Ring header (little-endian; head and tail each sit on their own 128-byte block so the two
processes never write to the same cache line or adjacent-line prefetch pair)::

    offset  size  field           written by / meaning
    ------  ----  --------------  -------------------------------------------------------------
         0     8  magic           creator, LAST: b"SHRING\\0\\0"; absent = still being created
         8     4  layout version  creator: u32, LAYOUT_VERSION (1)
        12     4  header size     creator: u32, offset of the data area (384)
        16     8  capacity        creator: u64, data area size in bytes, a multiple of 8
        24   104  reserved        zero
       128     8  head            writer only: u64 count of bytes ever published
       136     8  writer epoch    writer only: u64, +1 each time a RingWriter attaches
       144   112  reserved        zero
       256     8  tail            reader only: u64 count of bytes ever consumed
       264     8  reader epoch    reader only: u64, +1 each time a RingReader attaches
       272     8  reader hint     reader only: u64, what the reader asks of the writer; its
                                  meaning is the ring's users' (0, the initial value, asks
                                  nothing), see ``RingReader.set_hint``
       280   104  reserved        zero
       384   cap  data area       frames, at data offset (counter % capacity)

Frame record in the data area (starts 8-aligned; records never straddle the end)::

    offset     size  field
    ------     ----  ----------------------------------------------------------------------
         0        4  body length    u32 = header length + payload length;
                                    0xFFFFFFFF = wrap marker (rest of the lap is unused)
         4        4  header length  u32 (0 in a wrap marker)
         8     hlen  header bytes
    8+hlen     plen  payload bytes
         .      0-7  padding to the next multiple of 8 (contents undefined)

    record size = (8 + body length + 7) & ~7; a wrap marker at data offset p occupies
    capacity - p bytes, so the next record starts at data offset 0.

Rules the ring keeps:

1. Only the writer stores ``head`` and ``writer epoch``; only the reader stores ``tail``,
   ``reader epoch`` and ``reader hint``. The static fields are written once, by the creator,
   before ``magic``.
2. ``tail <= head <= tail + capacity`` always; ``head - tail`` bytes are in flight. Counters
   only grow (u64 never wraps in practice); positions in the data area are ``counter % cap``.
3. The writer copies a whole record into free space at ``head`` and only then publishes the new
   ``head`` with one aligned 8-byte store, then rings the data doorbell. Bytes past ``head``
   are never read, so a writer killed mid-frame never publishes half a frame.
4. The reader loads ``head``, copies records out of ``[tail, head)``, then publishes ``tail``
   with one aligned 8-byte store, then rings the space doorbell.
5. A record that does not fit before the end of the data area is preceded by a wrap marker. If
   the marker fits but the record does not fit after it yet, the marker is published on its
   own so the reader consumes it and frees the whole lap (any frame up to
   ``max_frame_size = min(capacity - 8, 2**32 - 2)`` bytes of header + payload fits).
6. Writer attach: ``writer epoch += 1``, continue at the current ``head`` (published frames stay
   readable; a half-written unpublished frame is overwritten).
7. Reader attach: ``tail = head`` (frames in flight were never acknowledged: they are dropped,
   clients retry), then ``reader epoch += 1``, then ring the space doorbell so a writer blocked
   on a full ring sees the space.
8. Creation races: the segment is created ``O_CREAT | O_EXCL``; exactly one process wins,
   sizes it, writes the static fields and writes ``magic`` last. Everyone else attaches and
   waits (bounded, start-up only) until ``magic`` appears, then checks layout version and
   capacity and refuses a mismatch (fix: stop both sides, ``unlink_ring``, restart).
   Segments and doorbell FIFOs are created mode 0600 and the run dir 0700; a segment or FIFO
   owned by another user, or open to group or others, is refused (``RingPermissionError``),
   never attached: whoever can write a ring can make its reader act on forged frames.
9. Survivors detect a restarted peer by comparing ``peer_epoch()`` with the value seen before.
10. One process per role at a time (SPSC). Several asyncio tasks in that process may share the
    object: sync calls are atomic with respect to the loop and waits are serialised.
11. A ring is read with ``async for header, payload in reader`` (frames in order, waiting on
    the doorbell when empty); the bytes are copies, so the space is already released.
    ``take_frames`` instead lends each frame to a callback as views into the ring, released
    (and the space given back) when the callback returns: a reader that keeps only part of a
    frame copies only that part.

Memory ordering: ``head``, ``tail`` and the epochs are read and written through a
``memoryview`` of the header cast to native ``"Q"`` words; item get/set is a ``memcpy`` of a
constant 8 bytes, i.e. one aligned 8-byte load/store, so the peer never sees a torn value.
``struct.pack_into`` must NOT be used for them: it zero-fills the destination before writing
the value, so a concurrent reader can observe ``head == 0`` (seen in the two-process bench).
x86-64 (TSO) keeps store->store and load->load order, which is all rules 3 and 4 need. arm64
may reorder them and CPython offers no fence; there the design relies on the many instructions
the interpreter executes between the two stores (the reader's bounds checks catch a stale
record prefix as ``RingError``, not stale payload bytes).

Segments are mapped straight from ``/dev/shm`` with ``mmap`` instead of
``multiprocessing.shared_memory``: on Python 3.11 that class registers every segment it
creates *or attaches* with the resource tracker, which unlinks it when the process exits and
would destroy the ring under the surviving peer. No tracker process is involved here.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import re
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Self, TypeVar

import xxhash

from streamhouse import metrics
from streamhouse.doorbell import Doorbell, check_private

#: What a frame's payload may be: one buffer, or a list of buffers written one after the other.
Payload = bytes | bytearray | memoryview | list[bytes | bytearray | memoryview]

__all__ = [
    "LAYOUT_VERSION",
    "RingError",
    "RingLayoutError",
    "RingPermissionError",
    "RingReader",
    "RingTimeout",
    "RingWriter",
    "unlink_ring",
]

LAYOUT_VERSION = 1
_T = TypeVar("_T")

_SHM_DIR = "/dev/shm"
_MAGIC = b"SHRING\x00\x00"
_OFF_MAGIC = 0
_OFF_VERSION = 8
_OFF_HEADER_SIZE = 12
_OFF_CAPACITY = 16
_OFF_HEAD = 128
_OFF_WRITER_EPOCH = 136
_OFF_TAIL = 256
_OFF_READER_EPOCH = 264
_OFF_READER_HINT = 272
_HEADER_SIZE = 384
# Indexes of the u64 fields in the header viewed as native "Q" words (see Memory ordering).
_W_MAGIC = _OFF_MAGIC // 8
_W_CAPACITY = _OFF_CAPACITY // 8
_W_HEAD = _OFF_HEAD // 8
_W_WRITER_EPOCH = _OFF_WRITER_EPOCH // 8
_W_TAIL = _OFF_TAIL // 8
_W_READER_EPOCH = _OFF_READER_EPOCH // 8
_W_READER_HINT = _OFF_READER_HINT // 8

_PREFIX_SIZE = 8
_WRAP = 0xFFFFFFFF
_MAX_BODY = _WRAP - 1
_MIN_CAPACITY = 64

# Precompiled structs: the per-frame cost is dominated by Python call overhead. Never use them
# for a field the peer reads concurrently: pack_into zero-fills before it writes.
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_PREFIX = struct.Struct("<II")

if sys.byteorder != "little":  # the "Q" word view below is native-endian
    raise ImportError("streamhouse.ring supports little-endian machines only")

# Start-up only: how long an attacher waits for a concurrent creator to write the magic.
_ATTACH_TIMEOUT_S = 2.0
_ATTACH_RETRY_S = 0.001

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


_SAMPLE_S = 1.0  # occupancy gauge: at most one sample a second per writer


class RingError(Exception):
    """Base class for ring errors (bad shared-memory state, layout problems)."""


class RingLayoutError(RingError):
    """An existing ring cannot be used: other capacity or layout version, or never initialised.

    The message says how to fix it (stop both sides and call ``unlink_ring``).
    """


class RingPermissionError(RingError, PermissionError):
    """A ring file or its directory belongs to another user or is open to group or others."""


class RingTimeout(RingError, TimeoutError):
    """``RingWriter.write`` found no space for the frame before its timeout."""


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"ring name must match {_NAME_RE.pattern!r}, got {name!r}")


def _shm_name(name: str, run_dir: str) -> str:
    # shm names are short on some systems (31 chars on macOS, NAME_MAX on Linux): hash the
    # absolute run dir with the ring name so stacks on one machine never share a segment.
    return "sh" + xxhash.xxh64(f"{run_dir}\0{name}".encode()).hexdigest()


def _paths(name: str, run_dir: str) -> tuple[str, str, str]:
    """Return (shm path, data FIFO path, space FIFO path) for an absolute, real run dir."""
    return (
        os.path.join(_SHM_DIR, _shm_name(name, run_dir)),
        os.path.join(run_dir, f"{name}.data.fifo"),
        os.path.join(run_dir, f"{name}.space.fifo"),
    )


def unlink_ring(name: str, run_dir: str | os.PathLike[str]) -> None:
    """Remove the ring's shared-memory segment and FIFOs if present; never fails if absent.

    Processes still attached keep their mapping, but new attachers create a fresh ring, so
    stop both sides first.
    """
    _check_name(name)
    for path in _paths(name, os.path.realpath(os.fspath(run_dir))):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _fix_hint(name: str, run_dir: str, shm_path: str) -> str:
    return (
        f"stop the processes using it and call streamhouse.ring.unlink_ring({name!r}, "
        f"{run_dir!r}) (or remove {shm_path}), then restart them"
    )


class _RingEnd:
    """Shared attach/detach machinery of RingWriter and RingReader."""

    _peer_epoch_word: int

    def __init__(self, name: str, run_dir: str | os.PathLike[str], capacity: int) -> None:
        _check_name(name)
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, got {capacity!r}")
        if capacity < _MIN_CAPACITY or capacity % 8:
            raise ValueError(
                f"ring capacity must be a multiple of 8 and at least {_MIN_CAPACITY}, "
                f"got {capacity}"
            )
        if not os.path.isdir(_SHM_DIR):
            raise RingError(f"POSIX shared memory directory {_SHM_DIR} is missing (Linux only)")
        real_dir = make_private_dir(run_dir)
        self.name = name
        self.run_dir = real_dir
        self.capacity = capacity
        # Largest header + payload that fits: record (8 + body, 8-aligned) <= whole data area.
        self.max_frame_size: int = min(capacity - _PREFIX_SIZE, _MAX_BODY)
        self._cap = capacity
        shm_path, data_path, space_path = _paths(name, real_dir)
        self._shm_path = shm_path
        self._mm: mmap.mmap | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._mm = self._map(shm_path, capacity)
        self._buf = memoryview(self._mm)
        # Shared counters go through this view: item get/set is one 8-byte memcpy (see
        # Memory ordering in the module docstring).
        self._words = self._buf[:_HEADER_SIZE].cast("Q")
        try:
            head = self._words[_W_HEAD]
            tail = self._words[_W_TAIL]
            if not tail <= head <= tail + capacity or (head | tail) & 7:
                raise RingError(
                    f"ring {name!r} is corrupt (head {head}, tail {tail}, capacity "
                    f"{capacity}); {_fix_hint(name, real_dir, shm_path)}"
                )
            self._data_bell = Doorbell(data_path)
            try:
                self._space_bell = Doorbell(space_path)
            except BaseException:
                self._data_bell.close()
                raise
        except BaseException:
            self._words.release()
            self._buf.release()
            self._mm.close()
            raise

    # -- create or attach -------------------------------------------------------------------

    def _map(self, path: str, capacity: int) -> mmap.mmap:
        """Create the segment (O_EXCL) or attach to an initialised one; return the mapping."""
        deadline = time.monotonic() + _ATTACH_TIMEOUT_S
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                pass
            else:
                try:
                    os.fchmod(fd, 0o600)  # whatever the umask: private to this user
                    return self._create(fd, path, capacity)
                finally:
                    os.close(fd)  # the mapping holds its own reference
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = -1  # unlinked between our two opens: race to create it again
            if fd >= 0:
                try:
                    try:
                        check_private(fd, path, "ring")
                    except PermissionError as exc:
                        raise RingPermissionError(
                            f"{exc.strerror}; {_fix_hint(self.name, self.run_dir, path)}"
                        ) from None
                    mm = self._attach(fd, path, capacity)
                finally:
                    os.close(fd)
                if mm is not None:
                    return mm
            if time.monotonic() >= deadline:
                raise RingLayoutError(
                    f"ring {self.name!r} ({path}) exists but was not initialised within "
                    f"{_ATTACH_TIMEOUT_S} s (its creator probably died while creating it); "
                    + _fix_hint(self.name, self.run_dir, path)
                )
            # Start-up only: a concurrent creator is between O_EXCL and writing the magic.
            time.sleep(_ATTACH_RETRY_S)

    def _create(self, fd: int, path: str, capacity: int) -> mmap.mmap:
        total = _HEADER_SIZE + capacity
        try:
            try:
                # Reserve the pages now: a full /dev/shm then fails here with ENOSPC instead
                # of killing a process with SIGBUS on its first write into the ring.
                os.posix_fallocate(fd, 0, total)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                os.ftruncate(fd, total)
            mm = mmap.mmap(fd, total)
        except OSError as exc:
            # Unlink so peers do not wait for an initialisation that will never happen.
            os.unlink(path)
            if exc.errno == errno.ENOSPC:
                raise OSError(
                    exc.errno,
                    f"no room for a {total}-byte ring in {_SHM_DIR} (in containers raise "
                    "--shm-size, or lower the ring capacity)",
                    path,
                ) from exc
            raise
        # A fresh segment reads as zeros: head, tail and both epochs start at 0.
        _U32.pack_into(mm, _OFF_VERSION, LAYOUT_VERSION)
        _U32.pack_into(mm, _OFF_HEADER_SIZE, _HEADER_SIZE)
        with memoryview(mm) as view, view[:_HEADER_SIZE].cast("Q") as words:
            words[_W_CAPACITY] = capacity
            # Magic last, in one 8-byte store: an attacher that sees it sees the fields above.
            words[_W_MAGIC] = int.from_bytes(_MAGIC, sys.byteorder)
        return mm

    def _attach(self, fd: int, path: str, capacity: int) -> mmap.mmap | None:
        """Map an existing segment; None if it is not initialised yet (caller retries)."""
        size = os.fstat(fd).st_size
        if size < _HEADER_SIZE:
            return None  # creator has not sized it yet
        mm = mmap.mmap(fd, size)
        try:
            if mm[_OFF_MAGIC : _OFF_MAGIC + 8] != _MAGIC:
                mm.close()
                return None
            version = _U32.unpack_from(mm, _OFF_VERSION)[0]
            header_size = _U32.unpack_from(mm, _OFF_HEADER_SIZE)[0]
            existing = _U64.unpack_from(mm, _OFF_CAPACITY)[0]
            hint = _fix_hint(self.name, self.run_dir, path)
            if version != LAYOUT_VERSION or header_size != _HEADER_SIZE:
                raise RingLayoutError(
                    f"ring {self.name!r} ({path}) has layout version {version} (header "
                    f"{header_size} bytes) but this code uses version {LAYOUT_VERSION} "
                    f"(header {_HEADER_SIZE} bytes); {hint}"
                )
            if existing != capacity:
                raise RingLayoutError(
                    f"ring {self.name!r} ({path}) exists with capacity {existing} bytes but "
                    f"{capacity} was requested; use the same capacity on both sides, or {hint}"
                )
            if size < _HEADER_SIZE + capacity:
                raise RingLayoutError(
                    f"ring {self.name!r} ({path}) is {size} bytes, too small for capacity "
                    f"{capacity}; {hint}"
                )
        except BaseException:
            if not mm.closed:
                mm.close()
            raise
        return mm

    # -- common API ---------------------------------------------------------------------------

    def peer_epoch(self) -> int:
        """Return the peer role's current epoch (0 = the peer never attached)."""
        return self._words[self._peer_epoch_word]

    def close(self) -> None:
        """Detach: unmap and close the doorbells. The ring itself stays (see ``unlink_ring``).

        Idempotent. A task still waiting on this object gets ``DoorbellClosed``.
        """
        if self._mm is None:
            return
        self._data_bell.close()
        self._space_bell.close()
        self._words.release()
        self._buf.release()
        self._mm.close()
        self._mm = None

    def _wait_lock(self) -> asyncio.Lock:
        # Serialises waiters of this object (one doorbell waiter at a time). asyncio.Lock binds
        # to the first loop it waits on, so keep one per running loop.
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._mm is None else f"epoch={getattr(self, 'epoch', '?')}"
        return (
            f"<{type(self).__name__} {self.name!r} run_dir={self.run_dir!r} "
            f"capacity={self.capacity} {state}>"
        )


class RingWriter(_RingEnd):
    """The producing end. One per ring at a time (across all processes)."""

    _peer_epoch_word = _W_READER_EPOCH

    def __init__(self, name: str, run_dir: str | os.PathLike[str], capacity: int) -> None:
        """Create or attach the ring ``name`` in ``run_dir`` and bump the writer epoch.

        Continues at the current head: frames already published stay readable. Raises
        ``RingLayoutError`` if the ring exists with another capacity or layout.
        """
        super().__init__(name, run_dir, capacity)
        words = self._words
        self._head: int = words[_W_HEAD]
        # Cached tail: it only grows, so a stale value under-estimates free space (safe); it is
        # reloaded only when the frame does not seem to fit.
        self._tail: int = words[_W_TAIL]
        self.epoch: int = words[_W_WRITER_EPOCH] + 1
        words[_W_WRITER_EPOCH] = self.epoch
        self._queued = 0  # write() calls waiting for space in this process
        # Occupancy gauge (streamhouse_ring_used_bytes{ring}), sampled by the writer at most
        # every SAMPLE_S seconds on a write: one clock read per write, no timer.
        self._used_gauge = metrics.child(metrics.RING_USED, name)
        metrics.child(metrics.RING_CAPACITY, name).set(self._cap)
        self._next_sample = 0.0

    def try_write(self, header: bytes, payload: Payload = b"") -> bool:
        """Publish one frame and ring the reader; return False (nothing written) if full.

        ``payload`` is one buffer, or a list of buffers that make the payload concatenated
        in order (copied into the ring one after the other: no joined copy is made).
        Raises ``ValueError`` at once if header + payload exceeds ``max_frame_size``.
        """
        if type(header) is not bytes:
            header = _byte_view(header)
        tp = type(payload)
        parts: list[bytes | bytearray | memoryview] | None = None
        if tp is list:
            parts = [p if type(p) is bytes else _byte_view(p) for p in payload]  # type: ignore[union-attr]
            plen = sum(len(p) for p in parts)
        else:
            if tp is not bytes and tp is not bytearray:
                payload = _byte_view(payload)  # type: ignore[arg-type]
            plen = len(payload)  # type: ignore[arg-type]
        hlen = len(header)
        body = hlen + plen
        if body > self.max_frame_size:
            raise ValueError(self._too_big(hlen, plen))
        size = (body + 15) & ~7  # 8-byte prefix + body, rounded up to 8
        cap = self._cap
        head = self._head
        pos = head % cap
        room = cap - pos
        skip = 0 if size <= room else room
        if head + skip + size - self._tail > cap:
            self._tail = tail = self._words[_W_TAIL]
            if head + skip + size - tail > cap:
                if skip and head + skip - tail <= cap:
                    # Publish the wrap marker alone: once the reader passes it, the whole lap
                    # is free, so a frame larger than the space left at either end still fits.
                    _PREFIX.pack_into(self._buf, _HEADER_SIZE + pos, _WRAP, 0)
                    self._head = head + skip
                    self._words[_W_HEAD] = head + skip
                    self._data_bell.ring()
                return False
        buf = self._buf
        if skip:
            _PREFIX.pack_into(buf, _HEADER_SIZE + pos, _WRAP, 0)
            head += skip
            pos = 0
        base = _HEADER_SIZE + pos
        _PREFIX.pack_into(buf, base, body, hlen)
        start = base + _PREFIX_SIZE
        mid = start + hlen
        buf[start:mid] = header
        if parts is not None:
            for part in parts:
                end = mid + len(part)
                buf[mid:end] = part
                mid = end
        elif plen:
            buf[mid : start + body] = payload  # type: ignore[assignment]
        head += size
        self._head = head
        # Publish only after every byte of the record is in place (rule 3).
        self._words[_W_HEAD] = head
        self._data_bell.ring()
        now = time.monotonic()
        if now >= self._next_sample:
            self._next_sample = now + _SAMPLE_S
            self._used_gauge.set(head - self._words[_W_TAIL])
        return True

    async def write(
        self,
        header: bytes,
        payload: Payload = b"",
        timeout: float | None = None,
    ) -> None:
        """Publish one frame, waiting on the space doorbell while the ring is full.

        Frames written with ``write`` from several tasks keep their call order. Raises
        ``RingTimeout`` if no space appeared within ``timeout`` seconds (None = forever) and
        ``ValueError`` at once for a frame larger than ``max_frame_size``.
        """
        # Fast path unless other writes already wait for space: they go first (call order).
        if not self._queued and self.try_write(header, payload):
            return
        hlen, plen = _frame_len(header), _frame_len(payload)
        if hlen + plen > self.max_frame_size:
            raise ValueError(self._too_big(hlen, plen))  # at once, even behind queued writes
        self._queued += 1
        try:
            async with asyncio.timeout(timeout), self._wait_lock():
                bell = self._space_bell
                while True:
                    # Drain before checking: a read that frees space after the check rings
                    # again, so the wait below cannot miss it.
                    bell.drain()
                    if self.try_write(header, payload):
                        return
                    await bell.wait()
        except TimeoutError:
            used = self._head - self._words[_W_TAIL]
            raise RingTimeout(
                f"ring {self.name!r}: no space for a frame of {hlen + plen} bytes within "
                f"{timeout} s "
                f"({used} of {self._cap} bytes in flight, reader epoch {self.peer_epoch()}); "
                "the reader is not keeping up or not running"
            ) from None
        finally:
            self._queued -= 1

    def reader_hint(self) -> int:
        """The reader's current hint (``RingReader.set_hint``; 0 when it never set one)."""
        return self._words[_W_READER_HINT]

    def _too_big(self, hlen: int, plen: int) -> str:
        return (
            f"frame of {hlen + plen} bytes (header {hlen} + payload {plen}) is larger than the "
            f"max frame size {self.max_frame_size} bytes of ring {self.name!r} (capacity "
            f"{self._cap} bytes; a frame needs header + payload + 8 bytes, rounded up to 8). "
            "Raise the ring capacity on both sides (unlink_ring the existing ring first) or "
            "split the payload"
        )


class RingReader(_RingEnd):
    """The consuming end. One per ring at a time (across all processes)."""

    _peer_epoch_word = _W_WRITER_EPOCH

    def __init__(self, name: str, run_dir: str | os.PathLike[str], capacity: int) -> None:
        """Create or attach the ring, drop frames in flight, bump the reader epoch.

        Raises ``RingLayoutError`` if the ring exists with another capacity or layout.
        """
        super().__init__(name, run_dir, capacity)
        words = self._words
        # Rule 7: frames in flight were never acknowledged to clients; they retry.
        self._tail: int = words[_W_HEAD]
        words[_W_TAIL] = self._tail
        self.epoch: int = words[_W_READER_EPOCH] + 1
        words[_W_READER_EPOCH] = self.epoch
        self._space_bell.ring()  # a writer blocked on a full ring now has the whole ring

    def set_hint(self, hint: int) -> None:
        """Publishes a u64 the writer reads with ``RingWriter.reader_hint`` (one aligned
        8-byte store). What it means is up to the ring's users; it is advice, not a
        handshake: a frame written just before the writer sees a new hint follows the old
        one. A hint outlives this object (a reader that attaches later sets its own)."""
        self._words[_W_READER_HINT] = hint

    @property
    def hint(self) -> int:
        """The hint published last (by this object or an earlier reader)."""
        return self._words[_W_READER_HINT]

    def read_frames(self, max_frames: int = 1024) -> list[tuple[bytes, bytes]]:
        """Copy out up to ``max_frames`` frames as (header, payload) and release their space.

        Returns ``[]`` when nothing is readable. The returned bytes are independent copies.
        Rings the space doorbell when it consumed anything.
        """
        spans, tail = self._scan(max_frames)
        if not spans:
            self._release(tail)  # a wrap marker alone is consumed too
            return []
        mm = self._mm
        # Slicing the mmap makes the bytes in one memcpy, ~3x faster than bytes(view[...]).
        out = [(mm[start:mid], mm[mid:end]) for start, mid, end, _ in spans]
        self._release(tail)  # only after the copies are done (rule 4)
        return out

    def take_frames(
        self, take: Callable[[memoryview, memoryview], _T], max_frames: int = 64
    ) -> list[_T]:
        """Hands up to ``max_frames`` frames to ``take`` as (header, payload) views into the
        ring, then releases their space; returns what ``take`` returned (``[]`` when nothing
        is readable). No copy is made: ``take`` copies what it keeps. The views are valid
        only during its call and released after it (the view itself then raises ValueError
        when used; a slice of it is not caught, so never keep one): the writer may reuse
        the space at once. If ``take`` raises, the frames before the failing one and that
        one are consumed and the exception propagates."""
        spans, tail = self._scan(max_frames)
        if not spans:
            self._release(tail)  # a wrap marker alone is consumed too
            return []
        buf = self._buf
        out: list[_T] = []
        done = self._tail
        try:
            for start, mid, end, after in spans:
                with buf[start:mid] as header, buf[mid:end] as payload:
                    done = after
                    out.append(take(header, payload))
            done = tail
        finally:
            self._release(done)
        return out

    def _scan(self, max_frames: int) -> tuple[list[tuple[int, int, int, int]], int]:
        """The byte spans (start, header end, payload end) in the mapping of up to
        ``max_frames`` readable frames, each with the tail after it, and the tail after them
        all (wrap markers skipped)."""
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        buf = self._buf
        tail = self._tail
        head = self._words[_W_HEAD]
        if tail == head:
            return [], tail
        if head & 7:  # records are 8-aligned: a peer published garbage
            raise RingError(
                f"ring {self.name!r} is corrupt: head {head} is not a multiple of 8; "
                + _fix_hint(self.name, self.run_dir, self._shm_path)
            )
        cap = self._cap
        spans: list[tuple[int, int, int, int]] = []
        while tail != head and len(spans) < max_frames:
            pos = tail % cap
            base = _HEADER_SIZE + pos
            body, hlen = _PREFIX.unpack_from(buf, base)
            if body == _WRAP:
                if cap - pos > head - tail:  # a marker past head: corrupt, never loop on it
                    raise self._corrupt(tail, head, body, hlen)
                tail += cap - pos
                continue
            size = (body + 15) & ~7
            if hlen > body or size > head - tail or size > cap - pos:
                raise self._corrupt(tail, head, body, hlen)
            start = base + _PREFIX_SIZE
            tail += size
            spans.append((start, start + hlen, start + body, tail))
        return spans, tail

    def _release(self, tail: int) -> None:
        """Gives the space up to ``tail`` back to the writer and rings it (rule 4)."""
        if tail == self._tail:
            return
        self._tail = tail
        self._words[_W_TAIL] = tail
        self._space_bell.ring()

    def __aiter__(self) -> AsyncIterator[tuple[bytes, bytes]]:
        """Every frame from now on, in order, as (header, payload) copies (rule 11)."""
        return self.frames()

    async def frames(
        self,
        batch: int = 64,
        take: Callable[[memoryview, memoryview], _T] | None = None,
    ) -> AsyncIterator[Any]:
        """Like ``async for`` over the ring, taking at most ``batch`` frames out of the ring
        at a time (``batch=1`` leaves the rest in the ring, for back-pressure). With
        ``take``, yields what it returns for each frame lent to it (``take_frames``) instead
        of copies."""
        while True:
            frames = self.read_frames(batch) if take is None else self.take_frames(take, batch)
            if not frames:
                await self.wait_readable()
                continue
            for frame in frames:
                yield frame

    async def wait_readable(self) -> None:
        """Return once at least one frame is readable; checks first, then waits on the doorbell.

        Several tasks may wait at once; each returns once a frame is readable.
        """
        if self._readable():
            return
        async with self._wait_lock():
            bell = self._data_bell
            while True:
                # Drain before checking so a frame published after the check is not missed.
                bell.drain()
                if self._readable():
                    return
                await bell.wait()

    def _readable(self) -> bool:
        """True if a frame (not just wrap markers) is readable; consumes leading wrap markers."""
        buf = self._buf
        tail = self._tail
        head = self._words[_W_HEAD]
        if tail == head:
            return False
        if head & 7:
            return True  # read_frames reports the corruption
        cap = self._cap
        skipped = False
        while tail != head:
            pos = tail % cap
            if _U32.unpack_from(buf, _HEADER_SIZE + pos)[0] != _WRAP:
                break
            if cap - pos > head - tail:
                return True  # a marker past head: read_frames reports the corruption
            tail += cap - pos
            skipped = True
        if skipped:
            # The writer may be waiting for exactly this space (rule 5).
            self._tail = tail
            self._words[_W_TAIL] = tail
            self._space_bell.ring()
        return tail != head

    def _corrupt(self, tail: int, head: int, body: int, hlen: int) -> RingError:
        return RingError(
            f"ring {self.name!r} is corrupt: record at {tail} (head {head}, capacity {self._cap}) "
            f"claims body {body} / header {hlen} bytes; "
            + _fix_hint(self.name, self.run_dir, self._shm_path)
        )


def make_private_dir(path: str | os.PathLike[str], *, tighten: bool = False) -> str:
    """Create ``path`` (and parents) mode 0700 if missing and return its real path.

    A directory owned by another user raises ``RingPermissionError``; so does one open to
    group or others, unless ``tighten`` (then it is chmod 0700: for the stack's own dirs).
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    real = os.path.realpath(os.fspath(path))
    st = os.stat(real)
    if st.st_uid != os.geteuid():
        raise RingPermissionError(
            f"directory {real} belongs to uid {st.st_uid}, not to this user (uid "
            f"{os.geteuid()}); run StreamHouse as its owner or use a data dir of your own"
        )
    if st.st_mode & 0o077:
        if not tighten:
            raise RingPermissionError(
                f"directory {real} is open to group or others (mode {st.st_mode & 0o777:o}); "
                f"rings and doorbells must be private: chmod 700 {real}"
            )
        os.chmod(real, 0o700)
    return real


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """Flat unsigned-byte view of any buffer, so len() counts bytes."""
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _frame_len(data: Payload) -> int:
    if type(data) is list:
        return sum(memoryview(part).nbytes for part in data)
    return memoryview(data).nbytes  # type: ignore[arg-type]
