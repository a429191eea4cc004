"""What a rewriting step of the lifecycle needs: paced reads of stored blocks, paced PUTs of
new segment objects, and the one-transaction switch of block rows to a new object.

The rewriting steps (key compaction, :mod:`lifecycle.keycompact`; small-object compaction and
rewrites of partly-live objects, :mod:`lifecycle.compaction`) all go through one
:class:`RewriteContext` per lifecycle process, so they share its byte budget and its limit on
concurrent requests.

A rewrite, whatever decides its content, is always the same three moves:

1. read the live blocks it replaces (:meth:`RewriteContext.get_blocks`: range GETs, several
   adjacent blocks of one object per request, each block's checksum verified and decoded);
2. write a NEW segment object holding the new blocks (:meth:`RewriteContext.put_object`; the
   object format is :mod:`streamhouse.segment`'s, the key ``segments/<ns>-<random>.seg``
   like the uploader's, never reused);
3. switch the metadata in one transaction (:meth:`RewriteContext.switch`:
   ``replace_blocks``): the old rows go, the new object's segment row and rows come, and
   every old object left without a row is dead from then on.

Killing the process at any moment is safe: before step 3 the new object is an orphan no row
knows (the orphan scan deletes it after the grace period) and the old rows still serve every
read; after it, the old objects are dead segments deleted after the grace period, which is
longer than any read in flight that looked up the old rows. When ``replace_blocks`` refuses
(retention, DeleteRecords, DeleteTopics or another rewriter changed a replaced row first),
it records the new object as a dead segment, so it too is deleted after the grace period.

Budget (the promise to produce and consume, which share the object store): every byte a
rewrite reads or writes is paced to ``lifecycle_rewrite_bytes_per_second`` (averaged from
the first request of the process; a request waits for the bytes booked before it), at most
``lifecycle_upload_concurrency`` PUTs and ``GETS_PER_PUT`` (4) times as many GETs are in
flight at once (merging small objects is one GET per object: at 10-30 ms per S3 GET, two at
a time would be the bottleneck, while the bytes are small and the byte budget still paces
them), and each request is bounded by ``store_timeout_ms``. A failed request raises
:class:`ObjectStoreFailure`: the pass stops there and the process backs off, like the delete
steps. Metadata work is a few reads per group of objects and one short transaction per
switch, on AsyncMetadata's threads.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from lifecycle.plan import ByteBudget
from metadata.async_store import AsyncMetadata
from streamhouse import objectstore
from streamhouse.config import Settings
from streamhouse.segment import SegmentCorruptError, SegmentWriter, decode_block

if TYPE_CHECKING:
    from metadata.store import BlockRewrite, NewBlock, StoredBlock
    from streamhouse.recordbatch import BlockBatch

__all__ = [
    "COALESCE_GAP_BYTES",
    "GETS_PER_PUT",
    "MAX_GET_BYTES",
    "BlockData",
    "BlockUnreadableError",
    "block_data",
    "gather_all",
    "NewObject",
    "ObjectStoreFailure",
    "RewriteContext",
    "new_object_key",
    "one_line",
]

log = logging.getLogger("lifecycle")

#: Blocks of one object read with one range GET when the bytes between them are at most this
#: (reading a few unneeded bytes is cheaper than another request).
COALESCE_GAP_BYTES = 256 * 1024
#: GETs in flight per allowed PUT (lifecycle_upload_concurrency) of the rewriting steps.
GETS_PER_PUT = 4
#: One range GET reads at most this many bytes (unless a single block is larger).
MAX_GET_BYTES = 16 * 1024 * 1024


class ObjectStoreFailure(RuntimeError):
    """An object-store request of the pass failed; the pass stopped there (nothing whose
    object may remain was forgotten, no row was switched to an object not fully written).
    The message says which request and why."""


class BlockUnreadableError(ValueError):
    """A stored block failed its checksum or does not decode: the step leaves the rows it
    would have replaced as they are (never copying bad bytes) and goes on with other work;
    the message names the object and the byte range."""


class BlockData(msgspec.Struct, frozen=True):
    """One block of a new object: record batches of one partition, ``data`` laid out by the
    gap rule relative to ``base_offset`` (``streamhouse.recordbatch.encode_block``), covering
    offsets ``[base_offset, end_offset)``; ``record_count`` records in ``batch_count``
    batches; timestamps for the segment index and the block row."""

    topic_id: int
    partition: int
    base_offset: int
    end_offset: int
    data: bytes
    batch_count: int
    record_count: int
    min_timestamp: int
    max_timestamp: int


class NewObject(msgspec.Struct, frozen=True):
    """A segment object written by :meth:`RewriteContext.put_object` and not yet switched:
    its key, its size and the block rows it holds (``metadata.NewBlock``, in block order)."""

    key: str
    size: int
    blocks: tuple[NewBlock, ...]


def block_data(
    topic_id: int,
    partition: int,
    base_offset: int,
    data: bytes,
    batches: Sequence[BlockBatch],
    max_timestamp: int | None = None,
) -> BlockData:
    """The :class:`BlockData` of block bytes `data` whose batches (``walk_block(data,
    base_offset)``) are `batches`: it ends after the last offset of its last batch, counts
    the records present, and takes its timestamps from the batch headers (`max_timestamp`,
    when given, is kept as the row's: a merge keeps the max timestamp of the rows it
    replaces). Raises ValueError for a block without batches."""
    if not batches:
        raise ValueError(
            f"a block of topic id {topic_id} partition {partition} needs at least one batch"
        )
    last = batches[-1]
    newest = max(b.info.max_timestamp for b in batches) if max_timestamp is None else max_timestamp
    return BlockData(
        topic_id=topic_id,
        partition=partition,
        base_offset=base_offset,
        end_offset=last.first_offset + last.info.last_offset_delta + 1,
        data=data,
        batch_count=len(batches),
        record_count=sum(b.info.record_count for b in batches),
        # The segment index wants min <= max (a row without timestamps has max -1).
        min_timestamp=min(newest, *(b.info.base_timestamp for b in batches)),
        max_timestamp=newest,
    )


def new_object_key() -> str:
    """Key of a new segment object, of the uploader's form (uploader.new_segment_key):
    time-ordered, random, never reused."""
    return f"segments/{time.time_ns():020d}-{secrets.token_hex(8)}.seg"


def one_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message (obstore appends a multi-line
    debug dump that would spread one failure over many log lines)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def coalesce(
    blocks: Sequence[StoredBlock], gap: int = COALESCE_GAP_BYTES, limit: int = MAX_GET_BYTES
) -> list[tuple[str, int, int, list[int]]]:
    """Range GETs that read `blocks`: ``(key, start, length, indexes of the blocks in it)``.

    Blocks of one object are read together when the bytes between them are at most `gap` and
    the request stays within `limit` bytes (a block larger than `limit` gets a request of its
    own). Requests come in (key, start) order."""
    order = sorted(range(len(blocks)), key=lambda i: (blocks[i].segment_key, blocks[i].byte_offset))
    out: list[tuple[str, int, int, list[int]]] = []
    for i in order:
        b = blocks[i]
        if out:
            key, start, length, members = out[-1]
            end = start + length
            block_end = b.byte_offset + b.byte_length
            if (
                key == b.segment_key
                and b.byte_offset >= start
                and b.byte_offset - end <= gap
                and max(end, block_end) - start <= limit
            ):
                out[-1] = (key, start, max(end, block_end) - start, [*members, i])
                continue
        out.append((b.segment_key, b.byte_offset, b.byte_length, [i]))
    return out


class RewriteContext:
    """The I/O of the rewriting steps of one lifecycle process (see the module docstring).

    ``settings``, ``meta`` and ``store`` are the process's; ``monotonic`` is the clock of the
    byte budget and ``wall_ms`` the real time that dates dead segments (tests pass their
    own)."""

    def __init__(
        self,
        settings: Settings,
        meta: AsyncMetadata,
        store: object,
        monotonic: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.settings = settings
        self.meta = meta
        self.store = store
        self._monotonic = monotonic
        self._wall_ms = wall_ms
        self._budget = ByteBudget(settings.lifecycle_rewrite_bytes_per_second)
        self._puts = asyncio.Semaphore(settings.lifecycle_upload_concurrency)
        self._gets = asyncio.Semaphore(settings.lifecycle_upload_concurrency * GETS_PER_PUT)
        #: Bytes read and written so far by this context (for the pass reports).
        self.bytes_read = 0
        self.bytes_written = 0
        #: When the PUT of each object not yet switched started (this context's monotonic
        #: clock), for the switch deadline.
        self._put_started: dict[str, float] = {}

    @property
    def switch_deadline_ms(self) -> int:
        """Longest time from the start of a rewritten object's PUT to the start of its switch.
        Until the switch commits, the object is unknown to metadata, and an orphan scan
        (of any agent) deletes unknown objects older than the grace period; the switch itself
        may wait up to ``produce_timeout_ms`` for the metadata store. Half of what is left of
        the grace period after that wait leaves the other half for clock skew between the
        object store and the agents. A later switch is not attempted: the object stays an
        orphan and the orphan scan deletes it (nothing was switched, nothing is lost)."""
        s = self.settings
        return max(0, (s.lifecycle_grace_ms - s.produce_timeout_ms) // 2)

    @property
    def _timeout_s(self) -> float:
        return self.settings.store_timeout_ms / 1000

    async def pace(self, nbytes: int) -> None:
        """Waits until `nbytes` more bytes fit the shared budget
        (lifecycle_rewrite_bytes_per_second); the first request of the process never waits."""
        wait = self._budget.reserve(nbytes, self._monotonic())
        if wait > 0:
            await asyncio.sleep(wait)  # pacing to the configured byte budget

    async def get_block(self, block: StoredBlock) -> bytes:
        """The record batches of one stored block (one paced range GET, checksum verified,
        decoded). Raises ObjectStoreFailure or BlockUnreadableError."""
        return (await self.get_blocks([block]))[0]

    async def get_blocks(self, blocks: Sequence[StoredBlock]) -> list[bytes]:
        """The record batches of each block, in the order given: adjacent blocks of an
        object are read with one range GET (:func:`coalesce`), at most
        lifecycle_upload_concurrency * GETS_PER_PUT GETs at once, each paced; every block's
        checksum is verified. Raises ObjectStoreFailure (the pass stops) or BlockUnreadableError."""
        out: list[bytes | None] = [None] * len(blocks)

        async def read(key: str, start: int, length: int, members: list[int]) -> None:
            await self.pace(length)
            async with self._gets:
                try:
                    data = await asyncio.wait_for(
                        objectstore.get_range(self.store, key, start, length), self._timeout_s
                    )
                except Exception as exc:
                    raise ObjectStoreFailure(
                        f"reading bytes {start}..{start + length} of {key} from "
                        f"{self.settings.object_store_url} failed: {one_line(exc)}"
                    ) from exc
            self.bytes_read += len(data)
            if len(data) != length:
                raise ObjectStoreFailure(
                    f"reading bytes {start}..{start + length} of {key} returned {len(data)} "
                    "bytes: the object is shorter than its block rows say"
                )
            await asyncio.to_thread(decode, key, start, data, members)

        def decode(key: str, start: int, data: bytes, members: list[int]) -> None:
            view = memoryview(data)
            for i in members:
                b = blocks[i]
                at = b.byte_offset - start
                try:
                    out[i] = decode_block(view[at : at + b.byte_length])
                except SegmentCorruptError as exc:
                    raise BlockUnreadableError(
                        f"block of topic id {b.topic_id} partition {b.partition} at bytes "
                        f"{b.byte_offset}..{b.byte_offset + b.byte_length} of {key} "
                        f"(offsets {b.base_offset}..{b.end_offset}) is unreadable: {exc}; "
                        "it is left as it is (a reader of those offsets gets an error)"
                    ) from exc

        await gather_all(read(*request) for request in coalesce(blocks))
        got = [data for data in out if data is not None]
        assert len(got) == len(blocks), "coalesce() covers every block"
        return got

    async def put_object(self, blocks: Sequence[BlockData]) -> NewObject:
        """Builds a segment object of `blocks` (in that order; compression as the segmenter
        does it), PUTs it under a new key (paced by its size, at most
        lifecycle_upload_concurrency at once) and returns its key, size and block rows.
        Raises ObjectStoreFailure (the object, if it was written, is an orphan that the orphan
        scan deletes after the grace period) or ValueError for an empty list or a bad block."""
        from metadata.store import NewBlock

        if not blocks:
            raise ValueError("a rewritten object needs at least one block")

        def build() -> tuple[bytes, list[NewBlock]]:
            writer = SegmentWriter()
            for b in blocks:
                writer.add_block(
                    b.topic_id,
                    b.partition,
                    [b.data],
                    b.batch_count,
                    b.record_count,
                    b.min_timestamp,
                    b.max_timestamp,
                )
            obj, entries = writer.finish()
            rows = [
                NewBlock(
                    topic_id=b.topic_id,
                    partition=b.partition,
                    base_offset=b.base_offset,
                    end_offset=b.end_offset,
                    byte_offset=e.offset,
                    byte_length=e.length,
                    record_count=b.record_count,
                    max_timestamp=b.max_timestamp,
                    raw_length=len(b.data),  # batch bytes: what retention.bytes counts
                )
                for b, e in zip(blocks, entries, strict=True)
            ]
            return obj, rows

        obj, rows = await asyncio.to_thread(build)
        key = new_object_key()
        await self.pace(len(obj))
        async with self._puts:
            started = self._monotonic()
            try:
                await asyncio.wait_for(objectstore.put(self.store, key, obj), self._timeout_s)
            except Exception as exc:
                raise ObjectStoreFailure(
                    f"PUT of rewritten object {key} ({len(obj)} bytes) to "
                    f"{self.settings.object_store_url} failed: {one_line(exc)}; nothing was "
                    "switched (if it was written, the orphan scan deletes it after the grace "
                    "period)"
                ) from exc
        self.bytes_written += len(obj)
        self._put_started[key] = started
        return NewObject(key=key, size=len(obj), blocks=tuple(rows))

    async def switch(self, rewrite: BlockRewrite, now_ms: int | None = None) -> bool:
        """``replace_blocks`` in one transaction: True when the new object replaced the rows,
        False when one of them had changed first (the new object is then a dead segment,
        deleted after the grace period).

        The old objects (and a refused new one) are dated dead by the WALL clock, whatever
        `now_ms` (a pass's clock, accepted for symmetry) says: a clock moved into the past
        would date their death too early and shorten the grace period of reads in flight.
        An object whose PUT started more than :attr:`switch_deadline_ms` ago is not switched
        (False; it stays an orphan the orphan scan deletes)."""
        del now_ms
        started = self._put_started.pop(rewrite.key, None)
        if started is not None:
            waited_ms = (self._monotonic() - started) * 1000
            if waited_ms > self.switch_deadline_ms:
                log.warning(
                    "rewritten object %s not switched: %.0f ms since its PUT started, over the "
                    "%d ms a switch may start after it (an orphan scan may delete it once it "
                    "is older than the grace period); the orphan scan deletes it, the next pass "
                    "rewrites again",
                    rewrite.key,
                    waited_ms,
                    self.switch_deadline_ms,
                )
                return False
        return bool(await self.meta.replace_blocks(rewrite, self._wall_ms()))

    async def is_rewriter(self) -> tuple[bool, str]:
        """Whether this process does the rewriting steps, and why.

        Only one agent of a cluster rewrites: with a SQLite metadata store (one node) always;
        with PostgreSQL the live agent with the smallest node id, this process's agent being
        ``settings.agent_name``. When no agent is live (the cluster is starting or down) every
        lifecycle process rewrites: two racing rewriters are safe (``replace_blocks`` refuses
        the second) and only waste a PUT. An agent that is not live itself while others are
        leaves the work to them."""
        if not self.settings.metadata:
            return True, "SQLite metadata: one node"
        agents = [a for a in await self.meta.list_agents() if a.alive]
        if not agents:
            return True, "no live agent: every lifecycle process rewrites"
        first = min(agents, key=lambda a: a.node_id)
        if first.agent_id == self.settings.agent_name:
            return True, f"smallest live node id ({first.node_id})"
        return False, f"agent {first.agent_id} (node id {first.node_id}) rewrites"


async def gather_all(jobs: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Runs the coroutines together; the first failure cancels the others and is raised
    (they are awaited here, never left running in the background)."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
