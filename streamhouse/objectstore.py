"""The object store behind the log, opened from a URL.

- `file:///abs/path`  a local folder (the embedded default: `<data_dir>/objects`), written
  durably by :class:`LocalFolderStore` (see "Durability of the local folder" below).
- `s3://bucket[/prefix]` S3 or any S3-compatible server through obstore; endpoint, region and
  keys come from the usual `AWS_*` variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
  `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`); an `http://` endpoint is allowed. A PUT that
  returns is durable as S3 defines it.
- `memory://` objects live in one process's memory (obstore): nothing is durable and other
  processes cannot read them, so a multi-process stack on it serves reads from the reader's
  cache only. For tests of the write path.

Every backend is used through the same coroutines, `put`, `get`, `get_range`, `delete`,
`delete_many` and `list_objects`, which take the store returned by `open_object_store`.

Listing (for the lifecycle's orphan scan): `list_objects(store, prefix)` yields pages (lists
of :class:`ObjectInfo`: key, size, last modified in Unix milliseconds) of every object whose
key starts with `prefix`. On S3 a page is one ListObjectsV2 page; on the local folder a page
is up to `page_size` files of one walk, in no particular order. The local folder never lists
the temporary files of PUTs in flight (dot-named, see below).

Durability of the local folder
------------------------------

A PUT of `key` with bytes `data` into the folder `root` does, in this order:

1. create missing directories on the way to `root/key` (one `mkdir` each; `root` itself was
   created the same way, with its parents fsynced, when the store was opened);
2. write `data` to a new temporary file in the object's own directory, named
   `.<name>.<16 hex>.tmp` (created with `O_EXCL`, mode 0600; never a valid object key, since
   keys never start with a dot);
3. `fsync` the temporary file (its bytes and size are on disk);
4. `rename` it onto `root/key` (atomic: a reader sees the old object or the whole new one);
5. `fsync` the object's directory (the new name is on disk), then, deepest first, the parent
   of every directory on the way whose name this store object has not synced before (created
   now, or by another PUT or process that may not have synced it yet): their names are on
   disk. After the first PUT into `segments/` that is just the object's directory.

Only then does the coroutine return, and the uploader commits metadata referring to `key`
only after it returned. Crash consistency, for an OS crash or power loss at any point:

- before step 4 returns: at most a temporary file is left behind (never read; a janitor may
  delete `.*.tmp` files older than any PUT in flight); `root/key` does not exist or is an
  older whole object. No metadata refers to the key yet, so nothing acknowledged is lost.
- between step 4 and the end of step 5: the rename may or may not survive the crash; again
  no metadata refers to the key, so at worst an orphan object or nothing remains. Orphans are
  never served: reads go through the metadata segment index only.
- after step 5: the object's bytes and every directory entry leading to it are durable, so
  a metadata commit made afterwards (itself durable: SQLite WAL with `synchronous=FULL`)
  never refers to a missing or partial object.

Page cache. A PUT of bytes made by `page_aligned_copy` (the uploader's segments) writes them
with `O_DIRECT`: the whole pages of the buffer go straight to the disk, then `ftruncate` cuts
the file to the object's size before the fsync of step 3, so the file never holds more than
the object once it is durable (a crash before that leaves only the temporary file). No page
cache is filled and dropped, and no kernel copy is made: the uploader's PUT thread spent about
a third of its time there. A file system that refuses `O_DIRECT`, at the open or at the first
write (blocks larger than 4 KiB), gets buffered PUTs from then on, the refused attempt's
temporary file removed. Other PUTs write through the page cache, and after the fsync of step
3 tell the kernel they will not read the file (`posix_fadvise(POSIX_FADV_DONTNEED)`), so the
written pages leave the page cache and are reused by the next PUT. Without it every PUT's
bytes go to pages the kernel has to find anew while the folder grows, which cost the uploader
1-2 CPU-seconds per GB written against 0.3 (this machine, 5 MB objects); the reader keeps its
own cache of fresh segments (fed by the uploader). Only a hint: durability comes from the
fsyncs alone.

A failed PUT (disk full, permissions, ...) removes its temporary file, so space is given back,
and raises `OSError`; the uploader retries it with backoff and finally fails the produce
requests retriably. The blocking file I/O runs in the event loop's default thread pool, never
on the loop itself. Reads are plain `pread`s of the object file, also in the thread pool; a
range that reaches past the end of the object (a truncated object) raises
:class:`ObjectTruncatedError` instead of returning fewer bytes.

Window reads bypass the page cache. `get_range_upto` (the reader's window GETs of up to 16
MiB, `reader/readplan.py`) opens the object with `O_DIRECT` and reads the range, widened to
whole 4 KiB pages, into a page-aligned slice of a fresh, unzeroed `bytearray`
(`streamhouse/_memory.c`); it returns a read-only `memoryview` of the asked bytes within it
(a copy when they are less than half of that buffer: a small object).
The objects were dropped from the page cache after their PUT (or never entered it), so a
buffered read would have the kernel fill page-cache pages and then copy them out: on this
machine 0.3-1.4 system CPU-s per GB, varying by the hour with the kernel's memory reclaim,
against about 0.05 CPU-s per GB for the direct read. A folder whose file system refuses
`O_DIRECT` (at the open or at the first read) is read with plain `pread`s from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import pathlib
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any, NamedTuple

import obstore
from obstore.store import MemoryStore, S3Store

from streamhouse import metrics
from streamhouse._memory import page_offset, uninitialized_bytearray

__all__ = [
    "LocalFolderStore",
    "ObjectInfo",
    "ObjectStoreConfigError",
    "ObjectTruncatedError",
    "delete",
    "delete_many",
    "list_objects",
    "get",
    "page_aligned_copy",
    "get_range",
    "get_range_upto",
    "open_object_store",
    "put",
]


class ObjectStoreConfigError(ValueError):
    """The object store URL or its settings cannot be used; the message says why."""


class ObjectTruncatedError(OSError):
    """A range read reaches past the end of the stored object: it was truncated."""


class ObjectInfo(NamedTuple):
    """One listed object: its key (relative to the store's root or URL prefix), its size in
    bytes and when it was last written, in Unix milliseconds."""

    key: str
    size: int
    last_modified_ms: int


class LocalFolderStore:
    """A local folder used as an object store: keys are relative paths under `root`.

    PUTs are durable when they return (temp file, fsync, rename, fsync of the directories);
    see the module docstring for the exact steps and the crash-consistency argument.
    """

    __slots__ = ("root", "_synced_dirs", "_direct_reads", "_direct_writes")

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        #: directories below root whose names this object fsynced into their parents
        self._synced_dirs: set[pathlib.Path] = set()
        #: False once the folder's file system refused an O_DIRECT open (see "Window reads")
        self._direct_reads = hasattr(os, "O_DIRECT")
        #: False once the folder's file system refused an O_DIRECT PUT (see "Page cache")
        self._direct_writes = hasattr(os, "O_DIRECT")

    def __repr__(self) -> str:
        return f"LocalFolderStore({str(self.root)!r})"

    def path_of(self, key: str) -> pathlib.Path:
        """The file holding `key`; raises ValueError for a key that is not a plain relative
        path (empty parts, `.`/`..`, a leading `/` or dot-named parts)."""
        parts = key.split("/")
        if not key or any(not p or p.startswith(".") for p in parts):
            raise ValueError(
                f"object key {key!r} is not a relative path of non-empty parts that do not "
                "start with '.'"
            )
        return self.root.joinpath(*parts)

    # The blocking halves of the coroutines below; they run in a worker thread.

    def put_blocking(self, key: str, data: bytes | bytearray | memoryview) -> None:
        target = self.path_of(key)
        created = self._make_parents(target.parent)
        directory = target.parent
        tmp = directory / f".{target.name}.{secrets.token_hex(8)}.tmp"
        try:
            pages = _aligned_pages(data) if self._direct_writes else None
            if pages is None or not self._write_direct(tmp, pages, _padding(data)):
                self._write_buffered(tmp, data)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_directory(directory)
        # Each directory's name lives in its parent; fsync those not yet synced, deepest first.
        for made in reversed(created):
            _fsync_directory(made.parent)
            self._synced_dirs.add(made)

    def _write_direct(self, tmp: pathlib.Path, pages: memoryview, padding: int) -> bool:
        """Writes the whole `pages` to a new file `tmp` with O_DIRECT, cuts the `padding`
        off and fsyncs it; False (and from now on for every PUT: `tmp` is removed again)
        when the file system refuses direct writes, at the open or at the first write
        (EINVAL: e.g. logical blocks larger than DIRECT_ALIGN)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DIRECT
        fd = -1
        try:
            fd = os.open(tmp, flags, 0o600)
            _write_all(fd, pages)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            if exc.errno != errno.EINVAL:
                raise
            # Linux creates the file before it refuses O_DIRECT: remove it for the retry.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            self._direct_writes = False
            return False
        try:
            os.ftruncate(fd, len(pages) - padding)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    @staticmethod
    def _write_buffered(tmp: pathlib.Path, data: bytes | bytearray | memoryview) -> None:
        """Writes `data` to a new file `tmp` through the page cache, fsyncs it and drops its
        pages (see "Page cache")."""
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, memoryview(data).cast("B"))
            os.fsync(fd)
            # The bytes are on disk: drop them from the page cache. Only a hint: a platform
            # without it, or an error from it, never fails a PUT whose bytes are durable.
            if hasattr(os, "posix_fadvise"):
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def _make_parents(self, directory: pathlib.Path) -> list[pathlib.Path]:
        """Creates `directory` and its missing ancestors below `root`; returns those whose
        names this object has not fsynced into their parents yet, shallowest first. That
        includes directories another PUT or process just created and may not have synced:
        this PUT must not return before they are durable.
        """
        chain: list[pathlib.Path] = []
        probe = directory
        while probe != self.root:
            chain.append(probe)
            probe = probe.parent
        chain.reverse()
        pending = [path for path in chain if path not in self._synced_dirs]
        for path in pending:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
        return pending

    def get_range_blocking(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"range start {start} and length {length} must not be negative")
        fd = os.open(self.path_of(key), os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if start + length > size:
                raise ObjectTruncatedError(
                    errno.EIO,
                    f"object {key!r} is {size} bytes, too short for the range {start}.."
                    f"{start + length}: it is truncated or the index is wrong",
                )
            data = os.pread(fd, length, start)
            if len(data) != length:  # shrank between fstat and pread
                raise ObjectTruncatedError(
                    errno.EIO, f"object {key!r} gave {len(data)} of {length} bytes at {start}"
                )
            return data
        finally:
            os.close(fd)

    def get_range_upto_blocking(self, key: str, start: int, length: int) -> bytes | memoryview:
        if start < 0 or length < 0:
            raise ValueError(f"range start {start} and length {length} must not be negative")
        path = self.path_of(key)
        fd = self._open_direct(path) if self._direct_reads else None
        if fd is not None:
            try:
                return _read_direct(fd, key, start, length)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct_reads = False  # e.g. blocks larger than DIRECT_ALIGN: read below
            finally:
                os.close(fd)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            _check_starts_inside(key, start, size)
            return os.pread(fd, min(length, size - start), start)
        finally:
            os.close(fd)

    def _open_direct(self, path: pathlib.Path) -> int | None:
        """`path` opened for direct reads, or None (from now on) when its file system refuses
        them."""
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._direct_reads = False
            return None

    def get_blocking(self, key: str) -> bytes:
        return self.path_of(key).read_bytes()

    def delete_blocking(self, key: str) -> None:
        path = self.path_of(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return  # deleting a missing object succeeds, as in S3
        _fsync_directory(path.parent)

    def delete_many_blocking(self, keys: Sequence[str]) -> None:
        """Unlinks every key (missing ones are fine), then fsyncs each directory touched once."""
        paths = [self.path_of(key) for key in keys]  # refuse a bad key before deleting any
        touched: set[pathlib.Path] = set()
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            touched.add(path.parent)
        for directory in touched:
            _fsync_directory(directory)

    def list_blocking(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix` (temporary files excluded)."""
        base, _, name_start = prefix.rpartition("/")
        start = self.root.joinpath(*base.split("/")) if base else self.root
        out: list[ObjectInfo] = []
        todo = [(start, f"{base}/" if base else "")]
        first = True
        while todo:
            directory, key_prefix = todo.pop()
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # a PUT's temporary file, never an object
                if first and not entry.name.startswith(name_start):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        todo.append((pathlib.Path(entry.path), f"{key_prefix}{entry.name}/"))
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        out.append(
                            ObjectInfo(
                                f"{key_prefix}{entry.name}", st.st_size, st.st_mtime_ns // 1_000_000
                            )
                        )
                except FileNotFoundError:
                    continue  # deleted while listing
            first = False
        return out


def make_dirs_durably(path: pathlib.Path) -> None:
    """`mkdir -p path`, then fsync the parent of every directory it created, deepest first,
    so the folder itself survives a crash (not only the objects in it)."""
    missing: list[pathlib.Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:  # made meanwhile by another process: synced below as well
            if not directory.is_dir():
                raise
    for directory in missing:  # deepest first
        _fsync_directory(directory.parent)


#: O_DIRECT reads start, end and land on multiples of this (the page size; a multiple of
#: every logical block size a disk uses).
DIRECT_ALIGN = 4096


def page_aligned_copy(data: bytes | bytearray | memoryview) -> memoryview:
    """A copy of `data` that a local-folder PUT can write with O_DIRECT (see "Page cache"):
    a view of its bytes at the start of a page-aligned span of a bytearray, padded with
    zeros to whole pages. Any store takes it like any other bytes; nothing may write to it
    (it stays writable only so that the PUT can find its address)."""
    size = memoryview(data).nbytes
    pages = _page_buffer(size)  # the bytes and the padding are set here
    pages[:size] = memoryview(data).cast("B")
    pages[size:] = bytes(len(pages) - size)  # the padding the PUT writes, then cuts off
    return pages[:size]


def _page_buffer(size: int) -> memoryview:
    """Whole pages for `size` bytes: a page-aligned, unzeroed view into a new bytearray."""
    span = size + _padding_for(size)
    buffer = uninitialized_bytearray(span + DIRECT_ALIGN)
    lead = page_offset(buffer, DIRECT_ALIGN)
    return memoryview(buffer)[lead : lead + span]


def _padding_for(size: int) -> int:
    return -size % DIRECT_ALIGN


def _address(buffer: bytearray | memoryview) -> int:
    """Where the first byte of a writable buffer is in memory."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def _padding(data: bytes | bytearray | memoryview) -> int:
    return _padding_for(memoryview(data).nbytes)


def _aligned_pages(data: bytes | bytearray | memoryview) -> memoryview | None:
    """The whole pages holding `data` when it is a `page_aligned_copy`, else None."""
    if not isinstance(data, memoryview) or not isinstance(data.obj, bytearray):
        return None
    if data.readonly or not data.c_contiguous or data.itemsize != 1 or data.nbytes == 0:
        return None
    address = _address(data)
    start = address - _address(data.obj)
    stop = start + data.nbytes + _padding(data)
    if address % DIRECT_ALIGN or start < 0 or stop > len(data.obj):
        return None
    return memoryview(data.obj)[start:stop]


def _write_all(fd: int, view: memoryview) -> None:
    written = 0
    while written < len(view):
        written += os.write(fd, view[written:])


def _check_starts_inside(key: str, start: int, size: int) -> None:
    if start >= size:
        raise ObjectTruncatedError(
            errno.EIO,
            f"object {key!r} is {size} bytes, it ends before byte {start}: it is "
            "truncated or the index is wrong",
        )


def _read_direct(fd: int, key: str, start: int, length: int) -> bytes | memoryview:
    """Up to `length` bytes of the object open (O_DIRECT) as `fd` from byte `start`, as a
    read-only view into a page-aligned slice of a new bytearray (see "Window reads"), or as
    bytes when they are less than half of that bytearray."""
    size = os.fstat(fd).st_size
    _check_starts_inside(key, start, size)
    stop = min(start + length, size)
    first = start - start % DIRECT_ALIGN
    pages = _page_buffer(stop - first)  # only the bytes read are returned
    got = os.preadv(fd, [pages], first)
    if got < stop - first:  # shrank between fstat and the read
        raise ObjectTruncatedError(
            errno.EIO,
            f"object {key!r} gave {got - (start - first)} of {stop - start} bytes at {start}",
        )
    asked = pages[start - first : stop - first]
    if 2 * len(asked) < len(pages.obj):  # type: ignore[arg-type]  (a bytearray)
        # A small object (or the end of one): copy it rather than keep the pages around it
        # alive, so a cache that keeps views of what it is given never holds more than
        # twice what it counts (reader.cache.keepable).
        return bytes(asked)
    return asked.toreadonly()


def _fsync_directory(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_object_store(url: str, timeout_ms: int = 30_000) -> Any:
    """Returns the store for `url`; raises ObjectStoreConfigError on a bad URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ObjectStoreConfigError(
            f"object store {url!r} is not a URL (file://, s3://, memory://)"
        )
    timeout = timedelta(milliseconds=timeout_ms)
    if scheme == "file":
        path = pathlib.Path(rest)
        if not path.is_absolute():
            raise ObjectStoreConfigError(f"object store {url!r}: a file:// path must be absolute")
        try:
            make_dirs_durably(path)
        except OSError as exc:
            raise ObjectStoreConfigError(
                f"object store {url!r}: cannot create the folder: {exc}"
            ) from exc
        return LocalFolderStore(path.resolve())
    if scheme == "memory":
        return MemoryStore()
    if scheme == "s3":
        if not rest.split("/", 1)[0]:
            raise ObjectStoreConfigError(f"object store {url!r} names no bucket")
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""
        client_options: dict[str, Any] = {
            "timeout": timeout,
            "connect_timeout": timedelta(seconds=5),
        }
        if endpoint.startswith("http://"):
            client_options["allow_http"] = True
        retry = {"max_retries": 3, "retry_timeout": timeout}
        config: dict[str, Any] = {}
        if endpoint:
            # Path-style requests work with every S3-compatible server.
            config["virtual_hosted_style_request"] = False
        if not os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
            config["region"] = "us-east-1"
        return S3Store.from_url(
            url, config=config, client_options=client_options, retry_config=retry
        )
    raise ObjectStoreConfigError(
        f"object store scheme {scheme!r} is not supported: use file://, s3:// or memory://"
    )


class _Measured:
    """Counts one object-store request in the metrics (`streamhouse.metrics`): requests and
    errors by kind and process role, latency by kind, bytes put or got."""

    __slots__ = ("kind", "started", "nbytes")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.nbytes = 0

    def __enter__(self) -> _Measured:
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        role = metrics.role()
        metrics.child(metrics.OBJECT_REQUESTS, self.kind, role).inc()
        metrics.child(metrics.OBJECT_LATENCY, self.kind).observe(time.perf_counter() - self.started)
        if exc_type is not None and not issubclass(exc_type, asyncio.CancelledError):
            metrics.child(metrics.OBJECT_ERRORS, self.kind, role).inc()
        elif self.nbytes:
            metrics.child(metrics.OBJECT_BYTES, self.kind).inc(self.nbytes)


async def put(store: Any, key: str, data: bytes | bytearray | memoryview) -> None:
    """Stores `data` under `key`, replacing any object there; durable when it returns."""
    with _Measured("put") as measured:
        measured.nbytes = len(data) if not isinstance(data, memoryview) else data.nbytes
        if isinstance(store, LocalFolderStore):
            await asyncio.to_thread(store.put_blocking, key, data)
            return
        await obstore.put_async(store, key, data)


async def get_range(store: Any, key: str, start: int, length: int) -> bytes:
    """Exactly `length` bytes of `key` from byte `start`."""
    with _Measured("get") as measured:
        if isinstance(store, LocalFolderStore):
            data = await asyncio.to_thread(store.get_range_blocking, key, start, length)
        else:
            data = bytes(await obstore.get_range_async(store, key, start=start, length=length))
        measured.nbytes = len(data)
        return data


async def get_range_upto(store: Any, key: str, start: int, length: int) -> bytes | memoryview:
    """Up to `length` bytes of `key` from byte `start`: fewer when the object ends first (one
    request, as large as the range asked; the reader's window reads, `reader/readplan.py`).
    A `start` at or past the object's end is an error. From a local folder the bytes are a
    read-only view of a buffer of their own (see "Window reads")."""
    with _Measured("get") as measured:
        if isinstance(store, LocalFolderStore):
            data = await asyncio.to_thread(store.get_range_upto_blocking, key, start, length)
        else:
            end = start + length
            data = bytes(await obstore.get_range_async(store, key, start=start, end=end))
        measured.nbytes = len(data)
        return data


async def get(store: Any, key: str) -> bytes:
    """The whole object `key`."""
    with _Measured("get") as measured:
        if isinstance(store, LocalFolderStore):
            data = await asyncio.to_thread(store.get_blocking, key)
        else:
            result = await obstore.get_async(store, key)
            data = bytes(await result.bytes_async())
        measured.nbytes = len(data)
        return data


async def delete(store: Any, key: str) -> None:
    """Removes `key`; removing a missing object is not an error on the local folder."""
    with _Measured("delete"):
        if isinstance(store, LocalFolderStore):
            await asyncio.to_thread(store.delete_blocking, key)
            return
        await obstore.delete_async(store, key)


async def delete_many(store: Any, keys: Sequence[str]) -> None:
    """Removes every key in one call where the backend allows it (S3 DeleteObjects, up to
    1,000 keys a request); a missing object is not an error. Raises on the first failure:
    some of the keys may be gone then, and deleting them again later is harmless."""
    if not keys:
        return
    with _Measured("delete"):
        if isinstance(store, LocalFolderStore):
            await asyncio.to_thread(store.delete_many_blocking, list(keys))
            return
        await obstore.delete_async(store, list(keys))


async def list_objects(
    store: Any, prefix: str, page_size: int = 1000
) -> AsyncIterator[list[ObjectInfo]]:
    """Pages of the objects whose key starts with `prefix` (see the module docstring)."""
    if isinstance(store, LocalFolderStore):
        with _Measured("list"):
            found = await asyncio.to_thread(store.list_blocking, prefix)
        for i in range(0, len(found), page_size):
            yield found[i : i + page_size]
        return
    stream = obstore.list(store, prefix, chunk_size=page_size)
    while True:
        with _Measured("list"):  # one page, one LIST request
            try:
                chunk = await anext(stream)
            except StopAsyncIteration:
                return
        yield [
            ObjectInfo(meta["path"], meta["size"], int(meta["last_modified"].timestamp() * 1000))
            for meta in chunk
        ]
