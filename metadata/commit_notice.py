"""The commit notification: what a PostgreSQL segment commit tells listening agents.

:meth:`metadata.postgres.PostgresMetadataStore.commit_segment` sends one notification on the
channel :data:`COMMIT_CHANNEL` from inside its transaction (``SELECT pg_notify(...)`` after the
blocks are written), so PostgreSQL delivers it if and only if the commit commits, once per
committed segment, to every session listening on the channel. Readers use it to learn
about new data without polling (metadata/commit_feed.py).

Payload format (text, version 1; always shorter than :data:`MAX_PAYLOAD_BYTES`, PostgreSQL's
limit being 8000 bytes)::

    1|<segment_key>|<entry>;<entry>;...
    entry = <topic_id>:<partition>:<byte_offset>:<byte_length>:<end_offset>

* ``1`` is the format version; a parser refuses any other.
* ``segment_key`` is the object key of the committed segment. It may contain ``|`` (the
  entries never do: the payload is split at the first and the last ``|``).
* One entry per block the commit indexed (a block whose batches all got offsets or some of
  them), in the order of the commit's blocks: the block's partition, where its bytes are in
  the object, and ``end_offset``, the partition's high watermark after this commit. Blocks
  of unknown partitions and blocks that took no offsets (only duplicates or refused batches)
  are left out. A segment with no such block has an empty entry list (``1|<key>|``).
* If the entries would make the payload :data:`MAX_PAYLOAD_BYTES` bytes or more, the payload
  is ``1|<segment_key>|*`` instead, meaning "anything may have changed": a listener re-reads
  what it cares about.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

#: The ``LISTEN``/``NOTIFY`` channel of commit notifications.
COMMIT_CHANNEL: Final = "streamhouse_commit"
#: Payloads are always shorter than this many bytes (UTF-8); PostgreSQL refuses 8000 or more.
MAX_PAYLOAD_BYTES: Final = 8000
#: The payload format version written first.
VERSION: Final = "1"
#: The entry list of a payload too large to list its blocks.
EVERYTHING: Final = "*"

#: One entry: (topic_id, partition, byte_offset, byte_length, end_offset).
Entry = tuple[int, int, int, int, int]


def commit_notification(key: str, entries: Sequence[Entry]) -> str:
    """The payload announcing segment ``key`` with its indexed blocks ``entries``; the ``*``
    form when listing them would reach :data:`MAX_PAYLOAD_BYTES`. Raises ``ValueError`` when
    even that form would (a key of ~8000 bytes: no object store takes one)."""
    head = f"{VERSION}|{key}|"
    head_bytes = len(head.encode())
    body = ";".join(f"{t}:{p}:{o}:{n}:{e}" for t, p, o, n, e in entries)
    if head_bytes + len(body) < MAX_PAYLOAD_BYTES:  # body is ASCII: len is its byte count
        return head + body
    if head_bytes + len(EVERYTHING) >= MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"segment key of {head_bytes - 3} bytes is too long for a commit notification "
            f"(limit {MAX_PAYLOAD_BYTES - 4} bytes); use shorter object keys"
        )
    return head + EVERYTHING


def parse_commit_notification(payload: str) -> tuple[str, list[Entry] | None]:
    """``(segment_key, entries)`` from a payload written by :func:`commit_notification`;
    ``entries`` is None for the ``*`` form (anything may have changed). Raises ``ValueError``
    saying what is wrong with a payload of another version or a malformed one."""
    version, sep, rest = payload.partition("|")
    if not sep:
        raise ValueError(f"commit notification {payload[:80]!r} has no '|': not this format")
    if version != VERSION:
        raise ValueError(
            f"commit notification version {version[:20]!r} is unknown (this code reads "
            f"{VERSION!r}): upgrade the agent that listens"
        )
    key, sep, body = rest.rpartition("|")
    if not sep:
        raise ValueError(f"commit notification {payload[:80]!r} has no entry list")
    if body == EVERYTHING:
        return key, None
    entries: list[Entry] = []
    if body:
        for item in body.split(";"):
            fields = item.split(":")
            if len(fields) != 5:
                raise ValueError(
                    f"commit notification entry {item[:80]!r} of segment {key!r} does not "
                    "have 5 fields (topic_id:partition:byte_offset:byte_length:end_offset)"
                )
            try:
                t, p, o, n, e = (int(f) for f in fields)
            except ValueError:
                raise ValueError(
                    f"commit notification entry {item[:80]!r} of segment {key!r} has a "
                    "field that is not an integer"
                ) from None
            entries.append((t, p, o, n, e))
    return key, entries
