"""The group-commit feedback channel (streamhouse/upload_progress.py): the uploader's marks
computed from its state, their frames over a real upload-progress ring, and decoding."""

from __future__ import annotations

import pathlib

import msgspec

from streamhouse.frames import UploadProgress, header_encoder
from streamhouse.ring import RingReader, RingWriter, unlink_ring
from streamhouse.upload_progress import (
    HELLO,
    ProgressReporter,
    decode_progress,
    progress_of,
)

E = 5  # the current segmenter run
OLD = 4  # the run before it


def test_nothing_received_is_the_hello() -> None:
    assert progress_of(None, []) == HELLO == UploadProgress(0, -1, -1)


def test_nothing_pending_means_everything_received_is_done() -> None:
    assert progress_of((E, 7), []) == UploadProgress(E, 7, 7)


def test_uploading_segments_hold_the_stored_mark() -> None:
    pending = [(E, 3, True), (E, 4, False), (E, 5, True)]
    # 3 is stored but not acknowledged; 4 still uploads (5 finished first, out of order).
    assert progress_of((E, 5), pending) == UploadProgress(E, 3, 2)


def test_all_pending_stored_means_stored_through_the_last_received() -> None:
    assert progress_of((E, 5), [(E, 4, True), (E, 5, True)]) == UploadProgress(E, 5, 3)


def test_first_segment_of_a_run_pending() -> None:
    assert progress_of((E, 0), [(E, 0, False)]) == UploadProgress(E, -1, -1)


def test_segments_of_an_older_run_hold_the_marks_at_minus_one() -> None:
    # The old run's segment is not acknowledged yet: nothing of this run is either.
    pending = [(OLD, 40, True), (E, 0, True), (E, 1, False)]
    assert progress_of((E, 1), pending) == UploadProgress(E, 0, -1)
    assert progress_of((E, 1), [(OLD, 40, False), (E, 0, True)]) == UploadProgress(E, -1, -1)


def test_decode_refuses_garbage_and_bad_marks(caplog: object) -> None:
    assert decode_progress(b"\xc1") is None
    assert decode_progress(msgspec.msgpack.encode(["x", 1, 2])) is None
    assert decode_progress(header_encoder.encode(UploadProgress(E, -2, 0))) is None
    good = UploadProgress(E, 3, 2)
    assert decode_progress(header_encoder.encode(good)) == good


def _ring(tmp_path: pathlib.Path, capacity: int) -> tuple[RingWriter, RingReader]:
    run_dir = tmp_path / "run"
    unlink_ring("upload-progress", run_dir)
    return (
        RingWriter("upload-progress", run_dir, capacity),
        RingReader("upload-progress", run_dir, capacity),
    )


def test_reporter_sends_the_hello_then_only_changes(tmp_path: pathlib.Path) -> None:
    writer, reader = _ring(tmp_path, 4096)
    try:
        reporter = ProgressReporter(writer)
        reporter.report((E, 0), [(E, 0, False)])
        reporter.report((E, 0), [(E, 0, False)])  # same marks: nothing sent
        reporter.report((E, 0), [(E, 0, True)])
        reporter.report((E, 0), [])
        frames = [decode_progress(h) for h, payload in reader.read_frames() if not payload]
        assert frames == [
            HELLO,
            UploadProgress(E, -1, -1),
            UploadProgress(E, 0, -1),
            UploadProgress(E, 0, 0),
        ]
    finally:
        writer.close()
        reader.close()
        unlink_ring("upload-progress", tmp_path / "run")


def test_reporter_never_waits_on_a_full_ring_and_resends_later(tmp_path: pathlib.Path) -> None:
    writer, reader = _ring(tmp_path, 64)  # room for two reports
    try:
        reporter = ProgressReporter(writer)
        for sequence in range(5):  # the segmenter reads nothing: the ring fills up
            reporter.report((E, sequence), [])
        first = [decode_progress(h) for h, _ in reader.read_frames()]
        assert first[0] == HELLO and len(first) < 6
        reporter.report((E, 4), [])  # same marks as the dropped report: sent now
        assert [decode_progress(h) for h, _ in reader.read_frames()] == [UploadProgress(E, 4, 4)]
        reporter.close()
        reporter.report((E, 5), [])  # after close (uploads finishing at shutdown): nothing
    finally:
        reader.close()
        unlink_ring("upload-progress", tmp_path / "run")
