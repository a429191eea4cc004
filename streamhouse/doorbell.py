"""Cross-process doorbells on named FIFOs that plug into an asyncio (or uvloop) event loop.

A doorbell carries no data, only "something changed, look again". One side rings it by writing
one byte to the FIFO; the other side waits for the FIFO to become readable with
``loop.add_reader`` and drains it before re-checking the condition it waits for.

Rules the doorbell keeps:

* Both sides open the FIFO ``O_RDWR | O_NONBLOCK``. Opening a FIFO read-write never blocks on
  Linux (no waiting for a peer) and, because every opener is also a writer, a reader never sees
  EOF when the peer dies and a writer never gets EPIPE/SIGPIPE when no reader is attached.
* ``ring()`` never blocks: when the pipe buffer is full the bell is already rung, so EAGAIN is
  ignored.
* A waiter must ``drain()`` *before* it re-checks its condition and only then ``wait()``. Any
  change made after the check is followed by a ring, which makes the FIFO readable, so no
  wake-up is lost. Spurious wake-ups are possible and harmless.
* The FIFO is created mode 0600; one owned by another user or open to group or others is
  refused (``PermissionError``): a stranger must not be able to ring or drain it.
* One waiter per ``Doorbell`` object at a time (``loop.add_reader`` keeps one callback per fd);
  callers that may wait from several tasks serialise those waits themselves.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat

__all__ = ["Doorbell", "DoorbellClosed", "check_private"]

_DRAIN_CHUNK = 4096


class DoorbellClosed(RuntimeError):
    """Raised in a task waiting on a doorbell that was closed under it."""


class Doorbell:
    """One end of a named-FIFO doorbell. Either side may ring, wait or drain."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Create the FIFO at ``path`` if missing and open it non-blocking read-write.

        Safe to call from both sides at once: a concurrent ``mkfifo`` losing the race is fine.
        Raises ``FileExistsError`` if ``path`` exists and is not a FIFO.
        """
        self.path = os.fspath(path)
        try:
            os.mkfifo(self.path, 0o600)
        except FileExistsError:
            pass
        fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                raise FileExistsError(
                    errno.EEXIST, f"{self.path} exists and is not a FIFO; remove it", self.path
                )
            check_private(fd, self.path, "doorbell FIFO")
        except BaseException:
            os.close(fd)
            raise
        self._fd: int = fd
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def fileno(self) -> int:
        """Return the FIFO file descriptor (valid until ``close()``)."""
        return self._fd

    def ring(self) -> None:
        """Wake the peer. Never blocks; ringing a bell that is already rung is a no-op."""
        try:
            os.write(self._fd, b"\x01")
        except BlockingIOError:
            # Pipe buffer full: the peer has plenty of unread rings already.
            pass

    def drain(self) -> None:
        """Consume all pending rings so the next ``wait()`` only returns on a new ring."""
        fd = self._fd
        try:
            while len(os.read(fd, _DRAIN_CHUNK)) == _DRAIN_CHUNK:
                pass
        except BlockingIOError:
            pass

    async def wait(self) -> None:
        """Return once the FIFO is readable (it was rung since the last drain).

        Does not drain. Cancellation-safe: the fd is always unregistered from the loop.
        Raises ``DoorbellClosed`` if ``close()`` is called while waiting and ``RuntimeError``
        if another task is already waiting on this object.
        """
        if self._fd < 0:
            raise DoorbellClosed(f"doorbell {self.path} is closed")
        if self._waiter is not None:
            raise RuntimeError(f"doorbell {self.path} already has a waiter")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = self._fd
        loop.add_reader(fd, _wake, fut)
        self._waiter = (loop, fut)
        try:
            await fut
        finally:
            self._waiter = None
            if self._fd == fd:
                loop.remove_reader(fd)

    def close(self) -> None:
        """Close the fd (the FIFO file stays). A pending ``wait()`` raises ``DoorbellClosed``."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        if self._waiter is not None:
            loop, fut = self._waiter
            self._waiter = None
            # Unregister before closing so the loop never polls a dead or reused fd.
            loop.remove_reader(fd)
            if not fut.done():
                fut.set_exception(DoorbellClosed(f"doorbell {self.path} was closed"))
        os.close(fd)

    def __enter__(self) -> Doorbell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_private(fd: int, path: str, what: str) -> None:
    """Raise ``PermissionError`` unless the open file is this user's and mode 0600 or less."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise PermissionError(
            errno.EACCES,
            f"{what} {path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}); "
            "refusing to attach: remove it (another user's stack, or a forgery)",
            path,
        )
    if st.st_mode & 0o077:
        raise PermissionError(
            errno.EACCES,
            f"{what} {path} is open to group or others (mode {st.st_mode & 0o777:o}); "
            "refusing to attach: remove it and restart the stack",
            path,
        )


def _wake(fut: asyncio.Future[None]) -> None:
    # The reader callback may fire again before the awaiting task runs; set the result once.
    if not fut.done():
        fut.set_result(None)
