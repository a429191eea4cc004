"""The rings of one StreamHouse stack: names, directions and sizes (see DESIGN.md)."""

from __future__ import annotations

from streamhouse.config import Settings
from streamhouse.ring import RingReader, RingWriter, unlink_ring

PRODUCE = "produce"  # ingest -> segmenter
SEALED = "sealed"  # segmenter -> uploader
ACK = "ack"  # uploader -> ingest
COMMITTED = "committed"  # uploader -> reader
FETCH_REQUEST = "fetch-request"  # ingest -> reader
FETCH_RESPONSE = "fetch-response"  # reader -> ingest

ALL = (PRODUCE, SEALED, ACK, COMMITTED, FETCH_REQUEST, FETCH_RESPONSE)


def capacity(settings: Settings, name: str) -> int:
    return {
        PRODUCE: settings.produce_ring_bytes,
        SEALED: settings.sealed_ring_bytes,
        ACK: settings.ack_ring_bytes,
        COMMITTED: settings.committed_ring_bytes,
        FETCH_REQUEST: settings.fetch_request_ring_bytes,
        FETCH_RESPONSE: settings.fetch_response_ring_bytes,
    }[name]


def open_reader(settings: Settings, name: str) -> RingReader:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    return RingReader(name, settings.run_dir, capacity(settings, name))


def open_writer(settings: Settings, name: str) -> RingWriter:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    return RingWriter(name, settings.run_dir, capacity(settings, name))


def unlink_all(settings: Settings) -> None:
    """Removes every ring of this stack (only when none of its processes runs)."""
    for name in ALL:
        unlink_ring(name, settings.run_dir)
