"""The rings of one StreamHouse stack: names, directions and sizes (see DESIGN.md)."""

from __future__ import annotations

import os

from streamhouse.config import Settings
from streamhouse.ring import RingReader, RingWriter, unlink_ring
from streamhouse.ring import make_private_dir as _make_private_dir

PRODUCE = "produce"  # ingest -> segmenter
SEALED = "sealed"  # segmenter -> uploader
ACK = "ack"  # uploader -> ingest
COMMITTED = "committed"  # uploader -> reader
FETCH_REQUEST = "fetch-request"  # ingest -> reader
FETCH_RESPONSE = "fetch-response"  # reader -> ingest
UPLOAD_PROGRESS = "upload-progress"  # uploader -> segmenter (group commit feedback)

ALL = (PRODUCE, SEALED, ACK, COMMITTED, FETCH_REQUEST, FETCH_RESPONSE, UPLOAD_PROGRESS)

#: The upload-progress ring carries frames of about 30 bytes, at most a few per segment; a
#: full ring only drops reports (streamhouse/upload_progress.py), so it is small and fixed.
UPLOAD_PROGRESS_RING_BYTES = 256 * 1024


def capacity(settings: Settings, name: str) -> int:
    return {
        PRODUCE: settings.produce_ring_bytes,
        SEALED: settings.sealed_ring_bytes,
        ACK: settings.ack_ring_bytes,
        COMMITTED: settings.committed_ring_bytes,
        FETCH_REQUEST: settings.fetch_request_ring_bytes,
        FETCH_RESPONSE: settings.fetch_response_ring_bytes,
        UPLOAD_PROGRESS: UPLOAD_PROGRESS_RING_BYTES,
    }[name]


def make_private_dir(path: os.PathLike[str] | str) -> None:
    """Create a stack directory mode 0700, closing an existing one of ours to group and others;
    raises RingPermissionError if another user owns it."""
    _make_private_dir(path, tighten=True)


def open_reader(settings: Settings, name: str) -> RingReader:
    """Attach (or create) the reading end of one of this stack's rings."""
    make_private_dir(settings.run_dir)
    return RingReader(name, settings.run_dir, capacity(settings, name))


def open_writer(settings: Settings, name: str) -> RingWriter:
    """Attach (or create) the writing end of one of this stack's rings."""
    make_private_dir(settings.run_dir)
    return RingWriter(name, settings.run_dir, capacity(settings, name))


def unlink_all(settings: Settings) -> None:
    """Removes every ring of this stack (only when none of its processes runs)."""
    for name in ALL:
        unlink_ring(name, settings.run_dir)
