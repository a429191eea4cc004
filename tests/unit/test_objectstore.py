"""The local-folder object store: durable PUTs (fsync of the file and of every directory entry
before returning), exact range reads, truncation detected, failed PUTs leave nothing behind."""

from __future__ import annotations

import asyncio
import errno
import os
import pathlib
import stat
import threading
import time

import pytest

from streamhouse import objectstore
from streamhouse.objectstore import LocalFolderStore, ObjectTruncatedError


def open_local(tmp_path: pathlib.Path) -> LocalFolderStore:
    store = objectstore.open_object_store((tmp_path / "objects").as_uri())
    assert isinstance(store, LocalFolderStore)
    return store


class FsyncLog:
    """Records what each os.fsync call synced: ('file', path) or ('dir', path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        real = os.fsync

        def recording_fsync(fd: int) -> None:
            mode = os.fstat(fd).st_mode
            kind = "dir" if stat.S_ISDIR(mode) else "file"
            self.calls.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
            real(fd)

        monkeypatch.setattr(os, "fsync", recording_fsync)


def test_put_fsyncs_the_file_then_its_directory_and_new_parents(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_local(tmp_path)
    fsyncs = FsyncLog(monkeypatch)
    replaced: list[str] = []
    real_replace = os.replace

    def recording_replace(src: str, dst: str) -> None:
        replaced.append(str(dst))
        # The file's bytes were synced before it got its name.
        assert fsyncs.calls == [("file", str(src))]
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    asyncio.run(objectstore.put(store, "segments/a/1.seg", b"x" * 100_000))

    root = store.root
    target = root / "segments" / "a" / "1.seg"
    assert replaced == [str(target)]
    kinds = [kind for kind, _ in fsyncs.calls]
    assert kinds == ["file", "dir", "dir", "dir"]
    # The temp file (now renamed), the object's directory, then the parents of the two
    # directories this PUT created, deepest first.
    assert [path for _, path in fsyncs.calls[1:]] == [
        str(root / "segments" / "a"),
        str(root / "segments"),
        str(root),
    ]
    assert target.read_bytes() == b"x" * 100_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_second_put_in_an_existing_directory_fsyncs_file_and_directory_only(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_local(tmp_path)
    asyncio.run(objectstore.put(store, "segments/1.seg", b"one"))
    fsyncs = FsyncLog(monkeypatch)
    asyncio.run(objectstore.put(store, "segments/2.seg", b"two"))
    assert [kind for kind, _ in fsyncs.calls] == ["file", "dir"]
    assert fsyncs.calls[1][1] == str(store.root / "segments")


def test_round_trip_range_reads_and_delete(tmp_path: pathlib.Path) -> None:
    store = open_local(tmp_path)
    data = bytes(range(256)) * 40

    async def go() -> None:
        await objectstore.put(store, "segments/k.seg", memoryview(data))
        assert await objectstore.get(store, "segments/k.seg") == data
        assert await objectstore.get_range(store, "segments/k.seg", 100, 50) == data[100:150]
        assert await objectstore.get_range(store, "segments/k.seg", 0, len(data)) == data
        await objectstore.put(store, "segments/k.seg", b"replaced")
        assert await objectstore.get(store, "segments/k.seg") == b"replaced"
        await objectstore.delete(store, "segments/k.seg")
        await objectstore.delete(store, "segments/k.seg")  # missing: still fine
        with pytest.raises(FileNotFoundError):
            await objectstore.get_range(store, "segments/k.seg", 0, 1)

    asyncio.run(go())
    # Nothing but the (now empty) segments folder is left: no temp files.
    assert [p.name for p in store.root.rglob("*")] == ["segments"]


def test_range_past_the_end_of_a_truncated_object_is_an_error(tmp_path: pathlib.Path) -> None:
    store = open_local(tmp_path)

    async def go() -> None:
        await objectstore.put(store, "segments/t.seg", b"0123456789")
        os.truncate(store.root / "segments" / "t.seg", 6)
        assert await objectstore.get_range(store, "segments/t.seg", 2, 4) == b"2345"
        with pytest.raises(ObjectTruncatedError, match="6 bytes, too short for the range 4..10"):
            await objectstore.get_range(store, "segments/t.seg", 4, 6)

    asyncio.run(go())


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "refused_o_direct"])
def test_window_reads_return_exactly_the_bytes_asked_at_any_alignment(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    store = open_local(tmp_path)
    data = os.urandom(3 * objectstore.DIRECT_ALIGN + 123)
    opened_direct: list[bool] = []
    real_open = os.open

    def recording_open(path: object, flags: int, *args: object) -> int:
        if str(path).endswith("w.seg"):
            opened_direct.append(bool(flags & os.O_DIRECT))
            if flags & os.O_DIRECT and not direct:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    async def go() -> None:
        await objectstore.put(store, "segments/w.seg", data)
        monkeypatch.setattr(os, "open", recording_open)
        size = len(data)
        for start, length in [(0, size), (1, 10), (4095, 2), (4096, 4096), (5000, 10**6)]:
            got = await objectstore.get_range_upto(store, "segments/w.seg", start, length)
            assert bytes(got) == data[start : start + length]
            assert memoryview(got).readonly
        with pytest.raises(ObjectTruncatedError, match=f"{size} bytes, it ends before byte"):
            await objectstore.get_range_upto(store, "segments/w.seg", size, 1)

    asyncio.run(go())
    # Direct reads are tried until the file system refuses one, then never again.
    assert opened_direct[0] is True
    assert all(opened_direct) if direct else not any(opened_direct[1:])


def test_a_direct_window_read_of_an_object_that_shrank_is_an_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_local(tmp_path)
    path = store.root / "segments" / "s.seg"
    real_preadv = os.preadv

    def shrinking_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        os.truncate(path, 5000)  # between the size check and the read
        return real_preadv(fd, buffers, offset)

    async def go() -> None:
        await objectstore.put(store, "segments/s.seg", os.urandom(3 * objectstore.DIRECT_ALIGN))
        monkeypatch.setattr(os, "preadv", shrinking_preadv)
        with pytest.raises(ObjectTruncatedError, match="gave 904 of 8192 bytes at 4096"):
            await objectstore.get_range_upto(store, "segments/s.seg", 4096, 10**6)

    asyncio.run(go())


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 3 * 4096 + 5])
@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "refused_o_direct"])
def test_a_page_aligned_copy_is_put_whole_with_or_without_o_direct(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, size: int, direct: bool
) -> None:
    store = open_local(tmp_path)
    data = os.urandom(size)
    opened: list[int] = []
    real_open = os.open

    def recording_open(path: object, flags: int, *args: object) -> int:
        if str(path).endswith(".tmp"):
            opened.append(flags)
            if flags & os.O_DIRECT and not direct:
                # As Linux does: the file is created, then O_DIRECT is refused.
                os.close(real_open(path, flags & ~os.O_DIRECT, *args))  # type: ignore[arg-type]
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording_open)
    aligned = objectstore.page_aligned_copy(data)
    assert bytes(aligned) == data
    for key in ("segments/a.seg", "segments/b.seg"):
        asyncio.run(objectstore.put(store, key, aligned))
        # The object is exactly the bytes: the page padding written with them is cut off.
        assert (store.root / key).read_bytes() == data
    # Refused once, the PUT opens the file again without O_DIRECT, and so do later PUTs.
    expected = [True, True] if direct else [True, False, False]
    assert [bool(f & os.O_DIRECT) for f in opened] == expected
    assert not list((store.root / "segments").glob(".*.tmp"))


@pytest.mark.parametrize(
    "data",
    [b"plain bytes", bytearray(b"a bytearray"), memoryview(b"read-only view")],
    ids=["bytes", "bytearray", "readonly_view"],
)
def test_other_bytes_are_put_through_the_page_cache(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    store = open_local(tmp_path)
    opened: list[int] = []
    real_open = os.open

    def recording_open(path: object, flags: int, *args: object) -> int:
        if str(path).endswith(".tmp"):
            opened.append(flags)
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording_open)
    asyncio.run(objectstore.put(store, "segments/p.seg", data))
    assert (store.root / "segments" / "p.seg").read_bytes() == bytes(data)
    assert len(opened) == 1 and not opened[0] & os.O_DIRECT


def test_a_slice_of_a_page_aligned_copy_is_not_written_directly(tmp_path: pathlib.Path) -> None:
    """A slice that does not start on a page is written through the page cache."""
    store = open_local(tmp_path)
    data = os.urandom(10_000)
    aligned = objectstore.page_aligned_copy(data)
    asyncio.run(objectstore.put(store, "segments/s.seg", aligned[1:]))
    assert (store.root / "segments" / "s.seg").read_bytes() == data[1:]


def test_a_refused_first_direct_write_falls_back_to_the_page_cache_for_good(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system may take the O_DIRECT open and refuse the write (blocks larger than
    4 KiB): the PUT is redone through the page cache, and so is every later one."""
    store = open_local(tmp_path)
    data = os.urandom(10_000)
    real_write = os.write
    refused: list[int] = []

    def refusing_write(fd: int, chunk: object) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and not refused:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, chunk)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", refusing_write)
    for key in ("segments/r1.seg", "segments/r2.seg"):
        asyncio.run(objectstore.put(store, key, objectstore.page_aligned_copy(data)))
        assert (store.root / key).read_bytes() == data
    assert len(refused) == 1
    assert not list((store.root / "segments").glob(".*.tmp"))


def test_a_refused_direct_read_is_read_again_with_pread_for_good(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_local(tmp_path)
    data = os.urandom(5 * objectstore.DIRECT_ALIGN)
    direct_opens: list[str] = []
    real_open = os.open

    def recording_open(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT and str(path).endswith("r.seg"):
            direct_opens.append(str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    def refusing_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    async def go() -> None:
        await objectstore.put(store, "segments/r.seg", data)
        monkeypatch.setattr(os, "open", recording_open)
        monkeypatch.setattr(os, "preadv", refusing_preadv)
        for start in (0, 100):
            got = await objectstore.get_range_upto(store, "segments/r.seg", start, 10**6)
            assert bytes(got) == data[start:]

    asyncio.run(go())
    assert len(direct_opens) == 1


def test_a_small_window_read_is_a_copy_not_a_view_of_its_page_buffer(
    tmp_path: pathlib.Path,
) -> None:
    """A cache that keeps views of what it is given must not keep 8 KiB alive for 300 B."""
    store = open_local(tmp_path)
    small, large = os.urandom(300), os.urandom(4 * objectstore.DIRECT_ALIGN)

    async def go() -> None:
        await objectstore.put(store, "segments/small.seg", small)
        await objectstore.put(store, "segments/large.seg", large)
        got = await objectstore.get_range_upto(store, "segments/small.seg", 0, 10**6)
        assert type(got) is bytes and got == small
        view = await objectstore.get_range_upto(store, "segments/large.seg", 0, 10**6)
        assert isinstance(view, memoryview) and bytes(view) == large
        assert 2 * len(view) >= len(view.obj)  # type: ignore[arg-type]

    asyncio.run(go())


def test_failed_put_removes_its_temp_file_and_leaves_no_object(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_local(tmp_path)
    real_write = os.write

    def disk_full(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError) as err:
        asyncio.run(objectstore.put(store, "segments/big.seg", b"y" * 5000))
    assert err.value.errno == errno.ENOSPC
    assert list((store.root / "segments").iterdir()) == []
    # Once space returns, the same PUT works.
    monkeypatch.setattr(os, "write", real_write)
    asyncio.run(objectstore.put(store, "segments/big.seg", b"y" * 5000))
    assert (store.root / "segments" / "big.seg").read_bytes() == b"y" * 5000


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../escape", "segments/.hidden", "a/./b"])
def test_keys_that_are_not_plain_relative_paths_are_refused(
    tmp_path: pathlib.Path, key: str
) -> None:
    store = open_local(tmp_path)
    with pytest.raises(ValueError, match="object key"):
        asyncio.run(objectstore.put(store, key, b"data"))
    assert list(store.root.iterdir()) == []


def test_put_does_not_run_on_the_event_loop_thread(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_local(tmp_path)
    threads: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        threads.append(threading.get_ident())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)

    async def go() -> int:
        await objectstore.put(store, "segments/1.seg", b"data")
        return threading.get_ident()

    loop_thread = asyncio.run(go())
    assert threads and loop_thread not in threads


def test_bad_urls_are_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(objectstore.ObjectStoreConfigError, match="must be absolute"):
        objectstore.open_object_store("file://relative/path")
    with pytest.raises(objectstore.ObjectStoreConfigError, match="not supported"):
        objectstore.open_object_store("ftp://host/x")
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(objectstore.ObjectStoreConfigError, match="cannot create the folder"):
        objectstore.open_object_store((blocker / "objects").as_uri())


def test_opening_creates_the_folder_durably(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs = FsyncLog(monkeypatch)
    store = objectstore.open_object_store((tmp_path / "data" / "objects").as_uri())
    assert isinstance(store, LocalFolderStore) and store.root.is_dir()
    # "objects" is named in data/, "data" in tmp_path: both fsynced, deepest first.
    assert fsyncs.calls == [("dir", str(tmp_path / "data")), ("dir", str(tmp_path))]
    fsyncs.calls.clear()
    objectstore.open_object_store((tmp_path / "data" / "objects").as_uri())
    assert fsyncs.calls == []  # nothing created, nothing to sync


def test_directory_made_by_a_concurrent_put_is_still_synced_before_returning(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If another PUT creates `segments/` between our check and our mkdir, that PUT may not
    have fsynced the root yet: this PUT must do it before returning."""
    store = open_local(tmp_path)
    real_mkdir = os.mkdir

    def raced_mkdir(path: str | os.PathLike[str], mode: int = 0o777) -> None:
        real_mkdir(path, mode)  # the other PUT got there first
        raise FileExistsError(errno.EEXIST, "File exists", str(path))

    monkeypatch.setattr(os, "mkdir", raced_mkdir)
    fsyncs = FsyncLog(monkeypatch)
    asyncio.run(objectstore.put(store, "segments/1.seg", b"data"))
    assert [path for kind, path in fsyncs.calls if kind == "dir"] == [
        str(store.root / "segments"),
        str(store.root),
    ]


def test_a_directory_made_by_another_process_is_synced_by_the_first_put(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_local(tmp_path)
    (store.root / "segments").mkdir()  # e.g. by an uploader that crashed before syncing it
    fsyncs = FsyncLog(monkeypatch)
    asyncio.run(objectstore.put(store, "segments/1.seg", b"one"))
    assert fsyncs.calls[1:] == [("dir", str(store.root / "segments")), ("dir", str(store.root))]
    fsyncs.calls.clear()
    asyncio.run(objectstore.put(store, "segments/2.seg", b"two"))
    assert [kind for kind, _ in fsyncs.calls] == ["file", "dir"]


# -- listing and batched deletes (the lifecycle's orphan scan and reclaiming) ------------------


@pytest.mark.parametrize("kind", ["folder", "memory"])
def test_list_objects_pages_keys_sizes_and_times(tmp_path: pathlib.Path, kind: str) -> None:
    store = open_local(tmp_path) if kind == "folder" else objectstore.open_object_store("memory://")

    async def scenario() -> list[list[objectstore.ObjectInfo]]:
        for i in range(5):
            await objectstore.put(store, f"segments/{i:03d}.seg", b"x" * i)
        await objectstore.put(store, "segments/deeper/a.seg", b"abc")
        await objectstore.put(store, "other/b", b"not listed")
        return [page async for page in objectstore.list_objects(store, "segments/", page_size=2)]

    before_ms = int(time.time() * 1000) - 5_000
    pages = asyncio.run(scenario())
    assert all(1 <= len(page) <= 2 for page in pages)
    listed = {info.key: info for page in pages for info in page}
    expected = {f"segments/{i:03d}.seg": i for i in range(5)} | {"segments/deeper/a.seg": 3}
    assert {k: v.size for k, v in listed.items()} == expected
    assert all(before_ms < info.last_modified_ms < before_ms + 120_000 for info in listed.values())


def test_list_objects_skips_temporary_files_and_a_missing_prefix(tmp_path: pathlib.Path) -> None:
    store = open_local(tmp_path)

    async def scenario() -> tuple[list[str], list[str]]:
        missing = [i.key async for p in objectstore.list_objects(store, "segments/") for i in p]
        await objectstore.put(store, "segments/a.seg", b"a")
        (store.root / "segments" / ".a.seg.0123456789abcdef.tmp").write_bytes(b"in flight")
        keys = [i.key async for p in objectstore.list_objects(store, "segments/") for i in p]
        return missing, keys

    missing, keys = asyncio.run(scenario())
    assert missing == []
    assert keys == ["segments/a.seg"]


@pytest.mark.parametrize("kind", ["folder", "memory"])
def test_delete_many_removes_exactly_those_keys(tmp_path: pathlib.Path, kind: str) -> None:
    store = open_local(tmp_path) if kind == "folder" else objectstore.open_object_store("memory://")

    async def scenario() -> list[str]:
        for i in range(6):
            await objectstore.put(store, f"segments/{i}.seg", b"data")
        # Missing keys are not an error: a retried delete after a crash finds them gone.
        await objectstore.delete_many(store, ["segments/1.seg", "segments/4.seg", "segments/9"])
        await objectstore.delete_many(store, ["segments/1.seg"])
        await objectstore.delete_many(store, [])
        return sorted(
            [i.key async for p in objectstore.list_objects(store, "segments/") for i in p]
        )

    assert asyncio.run(scenario()) == [f"segments/{i}.seg" for i in (0, 2, 3, 5)]


def test_delete_many_refuses_a_bad_key_before_deleting_anything(tmp_path: pathlib.Path) -> None:
    store = open_local(tmp_path)
    asyncio.run(objectstore.put(store, "segments/a.seg", b"a"))
    with pytest.raises(ValueError, match="relative path"):
        asyncio.run(objectstore.delete_many(store, ["segments/a.seg", "../escape"]))
    assert (store.root / "segments" / "a.seg").exists()
