"""The commit feed: segment commits made by any agent, as PostgreSQL notifications, on the loop.

With a PostgreSQL metadata store every segment commit also sends, inside its transaction,
``pg_notify('streamhouse_commit', payload)`` (see ``metadata/postgres.py``), so PostgreSQL
delivers the notification to every listener if and only if the commit committed. The reader
of every agent listens to that channel through a `CommitFeed`, which wakes its long-polls and
feeds its block cache within milliseconds of a commit made on another agent, with no polling.
With SQLite (one agent) there is no feed: the uploader's committed-segment ring is enough.

The payload format is `metadata.commit_notice`'s (version 1: the segment key and, per block,
``topic_id:partition:byte_offset:byte_length:end_offset``, or ``*`` when the list did not fit:
anything may have changed). A payload that does not parse (another version, malformed) is
logged and treated like a gap: every waiter re-reads the metadata.

Behaviour of `CommitFeed.run` (spawn it with ``streamhouse.process.spawn``):

- One dedicated psycopg 3 ``AsyncConnection`` (autocommit, TCP keepalives) runs ``LISTEN
  streamhouse_commit`` and iterates ``conn.notifies()``; it never blocks the event loop.
- Each notification is parsed and handed to ``on_notice`` (a plain callback, run on the loop;
  it must not block), with the backend pid of the connection that committed.
- After every successful ``LISTEN`` (the first one too: commits made before it were not
  heard) ``on_gap`` is called: notifications may have been missed, so the reader wakes every
  waiting fetch and each re-reads the metadata. Nothing is ever lost that way, only delayed.
- Losing the connection (PostgreSQL restarted, the backend terminated, the network gone) is
  an outage, not a bug: one warning line, then reconnection attempts with a capped
  exponential backoff (0.1 s doubling up to ``max_backoff_s``), one more line when the feed
  listens again. While the feed is down the reader still answers every fetch; long-polls
  just wait for their ``max_wait`` (or for this agent's own commits).
- Every ``probe_interval_s`` the connection is probed with ``SELECT 1`` so a half-open
  connection is noticed too (keepalives catch it at the TCP level as well); psycopg keeps the
  notifications that arrive meanwhile.
- Anything else raised (a bug, an exception from a callback) ends `run` with that exception,
  which makes the process exit so supervisord restarts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, NamedTuple

import psycopg

from metadata import commit_notice
from metadata.commit_notice import COMMIT_CHANNEL

__all__ = [
    "COMMIT_CHANNEL",
    "CommitFeed",
    "CommitNotice",
    "NoticeBlock",
    "NoticeFormatError",
    "parse_commit_notification",
]

log = logging.getLogger("metadata.commit_feed")


class NoticeFormatError(ValueError):
    """A commit notification payload that does not follow the documented format."""


class NoticeBlock(NamedTuple):
    """One block of a committed segment, as announced."""

    topic_id: int
    partition: int
    byte_offset: int
    byte_length: int
    end_offset: int


class CommitNotice(NamedTuple):
    """A committed segment: its object key and blocks; ``blocks`` None means "anything may
    have changed" (the payload said ``*``). ``pid`` is the PostgreSQL backend process that
    sent it (the committing connection; 0 when unknown)."""

    segment_key: str
    blocks: tuple[NoticeBlock, ...] | None
    pid: int = 0


def parse_commit_notification(payload: str) -> CommitNotice:
    """The notice a payload announces (`metadata.commit_notice` format); raises
    NoticeFormatError naming what is wrong."""
    try:
        key, entries = commit_notice.parse_commit_notification(payload)
    except ValueError as exc:
        raise NoticeFormatError(str(exc)) from None
    if not key:
        raise NoticeFormatError(f"commit notification {payload[:80]!r} has no segment key")
    if entries is None:
        return CommitNotice(key, None)
    blocks = tuple(NoticeBlock(*e) for e in entries)
    if any(min(b) < 0 for b in blocks):
        raise NoticeFormatError(
            f"commit notification for segment {key!r} has a negative field: {payload[:200]!r}"
        )
    return CommitNotice(key, blocks)


#: libpq options of the listening connection: notice a dead peer within about 20 s.
_CONNECT_OPTIONS: Final = {
    "autocommit": True,
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 2,
    "application_name": "streamhouse-commit-feed",
}


class CommitFeed:
    """Listens to `COMMIT_CHANNEL` on `dsn` and calls back on the event loop (module rules)."""

    def __init__(
        self,
        dsn: str,
        on_notice: Callable[[CommitNotice], None],
        on_gap: Callable[[], None],
        *,
        max_backoff_s: float = 5.0,
        probe_interval_s: float = 30.0,
    ) -> None:
        if max_backoff_s <= 0 or probe_interval_s <= 0:
            raise ValueError(
                f"CommitFeed: max_backoff_s ({max_backoff_s}) and probe_interval_s "
                f"({probe_interval_s}) must be positive"
            )
        self.dsn = dsn
        self.on_notice = on_notice
        self.on_gap = on_gap
        self.max_backoff_s = max_backoff_s
        self.probe_interval_s = probe_interval_s
        #: Set while LISTEN is active (tests and readiness wait on it).
        self.listening = asyncio.Event()
        #: Successful LISTENs so far (1 after the first connection).
        self.connections = 0
        #: Connection attempts that failed (PostgreSQL down or refusing this login).
        self.failed_connects = 0
        #: Notifications handed to on_notice, and payloads refused.
        self.notices = 0
        self.bad_payloads = 0
        #: Backend pid of the current listening connection (tests terminate it).
        self.backend_pid: int | None = None

    async def run(self) -> None:
        """Listens until cancelled; reconnects after any loss of the connection."""
        backoff = 0.1
        down_since_logged = False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, **_CONNECT_OPTIONS)
            except psycopg.OperationalError as exc:
                self.failed_connects += 1
                if not down_since_logged:
                    log.warning(
                        "commit feed cannot connect to PostgreSQL (%s); retrying every "
                        "%.1f s at most: long-polls wake only on this agent's commits meanwhile",
                        _one_line(exc),
                        self.max_backoff_s,
                    )
                    down_since_logged = True
                await asyncio.sleep(backoff)  # reconnect backoff, not synchronisation
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            try:
                await conn.execute(f"LISTEN {COMMIT_CHANNEL}")
                self.backend_pid = conn.info.backend_pid
                self.connections += 1
                if self.connections > 1 or down_since_logged:
                    log.info("commit feed listening again (backend pid %d)", self.backend_pid)
                down_since_logged = False
                backoff = 0.1
                self.listening.set()
                self.on_gap()  # commits made while not listening were not heard
                await self._listen(conn)
            except psycopg.OperationalError as exc:
                self.listening.clear()
                if not down_since_logged:
                    log.warning(
                        "commit feed lost its PostgreSQL connection (%s); reconnecting",
                        _one_line(exc),
                    )
                    down_since_logged = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            finally:
                self.listening.clear()
                await _close_quietly(conn)

    async def _listen(self, conn: psycopg.AsyncConnection[object]) -> None:
        # notifies() ends every probe_interval_s; psycopg keeps what arrives in between.
        while True:
            async for note in conn.notifies(timeout=self.probe_interval_s):
                if note.channel != COMMIT_CHANNEL:
                    continue
                try:
                    notice = parse_commit_notification(note.payload)
                except NoticeFormatError as exc:
                    self.bad_payloads += 1
                    log.error("%s; waking every waiter instead", exc)
                    self.on_gap()
                    continue
                self.notices += 1
                self.on_notice(notice._replace(pid=note.pid))
            await conn.execute("SELECT 1")  # a half-open connection fails here


async def _close_quietly(conn: psycopg.AsyncConnection[object]) -> None:
    try:
        await conn.close()
    except psycopg.Error as exc:  # already broken: nothing left to release
        log.debug("closing the commit feed connection: %s", exc)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
