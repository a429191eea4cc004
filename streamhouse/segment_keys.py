"""Object keys of the segments an uploader writes, and what a reader can learn from one.

Key layout (ASCII, 50 characters)::

    segments/<ns:20 decimal digits>-<writer:8 hex><sequence:8 hex>.seg

- ``ns``: wall-clock nanoseconds when the key was made (keys sort by time of writing);
- ``writer``: random per uploader process (`SegmentKeys`), so two agents, or an uploader and
  its restart, never make the same key;
- ``sequence``: 1, 2, 3, … within one writer, in the order the uploader takes segments off
  the sealed ring. Sequence 0 names no object: it is the writer's hello (`hello_key`), which
  the uploader sends over the committed ring when it starts, so its reader knows the writer
  before the first segment. The uploader commits them in that order and hands each committed one to
  its agent's reader over the committed ring, so a reader that has seen sequence ``s`` of a
  writer over the ring has seen, or will never see, every earlier one
  (`reader/engine.py`: a block of a later sequence is on its way, worth a short wait instead
  of a GET).

Other writers (lifecycle rewrites, the SQL sink, older uploaders) use 16 random hex digits
in the same place; `parse` reads those too, as a writer nobody delivers over a ring.
Readers otherwise treat keys as opaque.
"""

from __future__ import annotations

import secrets
import time
from typing import NamedTuple

PREFIX = "segments/"
SUFFIX = ".seg"
# segments/ + 20 digits + "-" + 16 hex + .seg
_KEY_LENGTH = len(PREFIX) + 20 + 1 + 16 + len(SUFFIX)
_SEQUENCE_LIMIT = 1 << 32


class KeyWriter(NamedTuple):
    """The writer and sequence fields of a segment key."""

    writer: str
    sequence: int


class SegmentKeys:
    """Makes the keys of one uploader process: one random writer, sequences from 1."""

    def __init__(self, writer: str | None = None) -> None:
        self.writer = writer if writer is not None else secrets.token_hex(4)
        if len(self.writer) != 8 or not _is_hex(self.writer):
            raise ValueError(f"a segment key writer is 8 hex digits, not {self.writer!r}")
        self._next = 1

    def hello_key(self) -> str:
        """The writer's hello: sequence 0, the key of no object."""
        return f"{PREFIX}{time.time_ns():020d}-{self.writer}{0:08x}{SUFFIX}"

    def new_key(self) -> str:
        """The next key: time-ordered, unique, free of user-supplied text."""
        writer, sequence = self.writer, self._next
        # After 2^32 keys a new writer starts (a reader just sees another writer).
        if sequence + 1 >= _SEQUENCE_LIMIT:
            self.writer = secrets.token_hex(4)
            self._next = 1
        else:
            self._next = sequence + 1
        return f"{PREFIX}{time.time_ns():020d}-{writer}{sequence:08x}{SUFFIX}"


def parse(key: str) -> KeyWriter | None:
    """The writer and sequence of a segment key; None for a key of another shape."""
    if len(key) != _KEY_LENGTH or not key.startswith(PREFIX) or not key.endswith(SUFFIX):
        return None
    tail = key[len(PREFIX) + 21 : -len(SUFFIX)]
    if key[len(PREFIX) + 20] != "-" or not _is_hex(tail):
        return None
    return KeyWriter(tail[:8], int(tail[8:], 16))


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
