"""The local-folder PUT drops its pages from the page cache only after they are on disk."""

from __future__ import annotations

import os
import pathlib

import pytest

from streamhouse import objectstore


def test_put_fadvises_dontneed_after_the_fsync_of_the_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = objectstore.open_object_store((tmp_path / "objects").as_uri())
    calls: list[tuple[str, int]] = []
    real_fsync, real_fadvise, real_replace = os.fsync, os.posix_fadvise, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", fd))
        real_fsync(fd)

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert (offset, length, advice) == (0, 0, os.POSIX_FADV_DONTNEED)
        calls.append(("fadvise", fd))
        real_fadvise(fd, offset, length, advice)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(("rename", -1))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    monkeypatch.setattr(os, "replace", replace)
    data = os.urandom(300_000)
    store.put_blocking("segments/a.seg", memoryview(data))
    kinds = [kind for kind, _ in calls]
    # file fsync, then the hint on that same fd, then the rename, then the directory fsyncs
    assert kinds[:3] == ["fsync", "fadvise", "rename"]
    assert calls[0][1] == calls[1][1]
    assert kinds[3:] and set(kinds[3:]) == {"fsync"}
    assert (tmp_path / "objects" / "segments" / "a.seg").read_bytes() == data
    assert store.get_range_blocking("segments/a.seg", 1000, 10) == data[1000:1010]


def test_failed_write_never_reaches_the_hint(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = objectstore.open_object_store((tmp_path / "objects").as_uri())
    advised: list[int] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, *a: advised.append(fd))

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        store.put_blocking("segments/b.seg", b"x" * 100)
    assert advised == []
    assert not list((tmp_path / "objects" / "segments").iterdir())  # temp file removed
