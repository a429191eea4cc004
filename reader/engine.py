"""The read engine: finds committed batches for a fetch and returns them, long-polling at the tail.

Rules:
- Only committed data is visible: positions come from the metadata segment index, which the
  uploader writes in the same transaction that moves the high watermark.
- A fetch that starts inside a batch returns that whole batch (Kafka format); the records
  format drops the records before the requested offset.
- At least one batch is returned when any is available, even past max_bytes, so a consumer
  never stalls on a batch larger than its limit.
- A fetch waits (up to max_wait_ms) until min_bytes are available; commits wake it. At most
  `max_waiting` fetches wait that way at once; one more is parked until its max_wait and then
  answered with what there is (latency, not a busy loop of empty answers), so the work a
  commit wakes is bounded. No fetch waits longer than `max_wait_ms` (the reader's cap),
  whatever it asked for, so a fetch slot is never held for long.
- Cold reads: with `window_bytes` 0 a cold block is read alone by a range GET of its bytes;
  otherwise by one window GET of its object (`reader/readplan.py`: the whole object when it is
  small, never more than the window) whose other verified blocks are cached too, so a
  catch-up of N partitions written together costs one GET per object, not N. At most one
  window GET per object is in flight: a cold block of an object being read waits for that
  GET (a shared future) and takes its block from it. While unread window blocks and windows
  in flight fill half the cache, cold blocks are read alone (`ahead_limit`). After a cold
  read (a block not cached, or read for the first time after a window cached it) the
  partition's next `prefetch` blocks (with windows, more up to its max_bytes: the next
  fetch's worth) are loaded the same way, so a catch-up keeps its next objects loading; a
  fetch of several partitions looks them up for all its cold partitions in one metadata
  call. A fetch starts the cold loads it will wait for (per partition, the looked-up blocks
  up to its max_bytes) all at once before reading its partitions in order.
- Transactions: every part answers its last stable offset (LSO). A read_committed fetch
  (``isolation_level`` 1) returns only batches below the LSO (a batch never straddles it: an
  open transaction starts at a batch's first offset) and the aborted transactions that
  overlap the returned offsets (one metadata read, only when a returned batch is
  transactional: clients drop no other batch by the list); commits, markers included, wake
  it as any commit does. Kafka-format reads return control batches as stored (clients skip
  them); the records format (gRPC) never renders them, and read_committed it drops the
  batches of aborted transactions itself (gRPC clients get records, not the list): at the
  first transactional batch it reads the aborted transactions from there to the LSO once
  (``AbortedRanges``); when that list reaches its cap, the read stops at the last listed
  transaction's first offset, the end of what the list covers.
- Commits wake long-polls from two sources. This agent's uploader hands each committed
  segment over the committed ring (`on_committed`: the blocks of partitions fetched within
  `tail_interest_s`, or waited on now, go straight into the cache; the others are skipped).
  With a PostgreSQL metadata store, `metadata.commit_feed.CommitFeed` also delivers every
  agent's commits (`on_notice`): for each announced block of a partition that has waiters
  the block is loaded first (one range GET, shared with every fetch that then asks for it
  through `load_block`: N waiting consumers cost one GET), then the waiters are woken; a
  notice whose block list did not fit (``*``) and a gap in the feed (`wake_all`) wake every
  waiter, which re-reads the metadata. The feed also announces this agent's own commits,
  usually before their ring frame arrives; an own commit must cost no GET. So a notified
  block waits up to `own_commit_grace_s` for the ring before its GET, and a segment the ring
  delivered already is ignored (an own commit costs at most one harmless extra pass per
  waiter). The engine learns, per notifying PostgreSQL backend pid, whose connection it is
  (own: the ring delivered one of its segments; foreign: the grace ran out without the
  ring): a foreign backend's blocks are loaded at once, an own backend's wait up to
  `own_pid_grace_s` for the ring (longer: the frame is on its way; only a full ring makes
  them GET after it). A misjudged pid (pids are reused) costs one GET or one grace, never a
  wrong answer.
- A fetch can find a segment in the metadata after its commit and before its committed-ring
  frame has arrived (most often with several consumers at the tail). Segment keys name
  their writer and sequence (`streamhouse/segment_keys.py`); a cold block of a segment of
  the writer the ring delivers, with a sequence above the last one delivered, is on its way:
  it waits up to `ring_grace_s` for the ring (one future per segment, shared by every fetch)
  before its GET, counted from the segment's first wait. A frame of a later sequence
  releases the earlier waits at once (those segments were not delivered: the ring was
  full), and a segment whose wait ran out is never waited for again, so a segment costs at
  most one grace, and only when its frame is really missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from metadata import BlockLocation, MetadataStore
from metadata.async_store import AsyncMetadata, ReadPlan
from metadata.commit_feed import CommitNotice
from metadata.store import MAX_ABORTED_LISTED
from metadata.transactions import AbortedRanges
from reader import readplan
from reader.cache import BlockCache, BlockKey, keepable
from streamhouse import objectstore, segment_keys
from streamhouse.errors import RING_OK, ErrorCode, RingError
from streamhouse.frames import (
    FORMAT_KAFKA,
    CommittedSegment,
    FetchPart,
    FetchPartResult,
    FetchRequest,
    FetchResponse,
    FrameError,
    check_fetch_request,
    decoder_for,
    header_encoder,
    ring_error,
    salvage_ids,
)
from streamhouse.record_wire import render_batch
from streamhouse.recordbatch import (
    BATCH_HEADER_SIZE,
    CONTROL_MASK,
    MAX_INFLATED_BYTES,
    TRANSACTIONAL_MASK,
    patch_base_offset,
    walk_block,
)
from streamhouse.segment import decode_block

log = logging.getLogger("reader")
_decode_request = decoder_for(FetchRequest).decode
#: Blocks looked up per partition and metadata call.
BLOCKS_PER_LOOKUP = 8
#: Segment keys (ring deliveries, notices) and backend pids remembered, each at most.
REMEMBERED = 4096
#: Unread blocks cached by windows remembered (beyond, the oldest count as read).
AHEAD_KEYS = 1 << 16


class ReadEngine:
    def __init__(
        self,
        meta: AsyncMetadata | MetadataStore,
        store: Any,
        cache: BlockCache,
        prefetch: int,
        window_bytes: int = 0,
    ) -> None:
        """`meta` is awaited off the loop; a bare MetadataStore (unit tests) is wrapped.
        `window_bytes` is the largest window GET (`reader/readplan.py`; 0: single blocks)."""
        self.meta = meta if isinstance(meta, AsyncMetadata) else AsyncMetadata(meta)
        self.store = store
        self.cache = cache
        self.prefetch = prefetch
        self.window_bytes = window_bytes
        # The window GET in flight per object: its verified blocks by byte offset.
        self._windows: dict[str, asyncio.Future[dict[int, bytes | memoryview]]] = {}
        # Blocks a window cached ahead of any fetch, not read yet (their stored bytes): the
        # first read of one counts as cold (it prefetches), so a catch-up keeps its next
        # objects loading. While they and the windows in flight (each counted at the recent
        # window size, at first a 32nd of the cache) add up to `ahead_limit` (half the
        # cache) cold blocks are read alone: windows whose blocks would be evicted unread
        # (readers far apart for the cache) cost more than they save.
        self._ahead: OrderedDict[BlockKey, int] = OrderedDict()
        self._ahead_bytes = 0
        self._inflight_bytes = 0
        self._window_estimate = min(window_bytes, max(cache.capacity_bytes // 32, 1))
        self.ahead_limit = cache.capacity_bytes // 2
        cache.on_evict = self._evicted
        #: Window GETs made, blocks they cached, blocks evicted unread, cold blocks read
        #: alone because of `ahead_limit`.
        self.window_gets = 0
        self.window_blocks = 0
        self.window_wasted = 0
        self.window_skipped = 0
        self._waiters: dict[tuple[int, int], set[asyncio.Future[None]]] = {}
        self._loads: dict[BlockKey, asyncio.Task[bytes]] = {}
        self.max_waiting = 1 << 30  # the reader sets reader_max_waiting_fetches
        self.max_wait_ms = 1 << 31  # the reader sets reader_max_wait_ms
        # Bound on one stored batch's decompressed records when rendering them; the reader
        # sets max_batch_bytes (what ingest let in), so a stored bomb costs no more.
        self.max_inflated = MAX_INFLATED_BYTES
        self.waiting = 0
        # How long a notified block waits for this agent's committed ring before its GET.
        self.own_commit_grace_s = 0.010
        # The same for a block whose backend is known to commit for this agent's uploader.
        self.own_pid_grace_s = 0.100
        self._ring_segments: OrderedDict[str, None] = OrderedDict()
        self._arrivals: dict[BlockKey, asyncio.Future[None]] = {}
        # Backend pid of each recent notice's segment; pids known to commit for this agent's
        # uploader (True) or for other agents (False).
        self._notice_pids: OrderedDict[str, int] = OrderedDict()
        self._pid_is_own: OrderedDict[int, bool] = OrderedDict()
        #: Notified blocks loaded by a GET, and found in the cache (ring) instead.
        self.feed_gets = 0
        self.feed_cached = 0
        # How long a cold block of a segment this agent's uploader has committed but not yet
        # handed over the committed ring waits for it before its GET (see the module rules).
        self.ring_grace_s = 0.050
        # The writer of the segment keys the committed ring delivers, and the last sequence
        # delivered (streamhouse/segment_keys.py); a future per segment waited for.
        self._ring_writer: str | None = None
        self._ring_sequence = -1
        self._ring_waits: dict[str, asyncio.Future[None]] = {}
        # Segments whose wait ran out (the frame was lost or skipped): read, never waited for.
        self._ring_given_up: OrderedDict[str, None] = OrderedDict()
        #: Cold blocks that waited for the committed ring: found there, or GET after all.
        self.ring_waited = 0
        self.ring_missed = 0
        # Committed blocks are cached only for partitions fetched within this long (0: all;
        # the reader sets reader_tail_interest_ms): a partition nobody reads costs no copy
        # and takes no cache space. Last fetch time (monotonic) per partition.
        self.tail_interest_s = 0.0
        self._interest: dict[tuple[int, int], float] = {}
        self._interest_pruned = 0.0
        #: Committed blocks not cached because nobody reads their partition (or their
        #: object was not sent: see `wants_committed_objects`).
        self.ring_skipped = 0
        #: Called when a fetch makes a partition interesting that was not (the reader then
        #: asks the uploader for committed objects again: reader/__main__.py).
        self.on_interest: Callable[[], None] | None = None

    def on_committed(
        self, segment: CommittedSegment, obj: bytes | memoryview, *, lent: bool = False
    ) -> None:
        """Caches a freshly committed segment's blocks of the partitions read at their tail
        (`tail_interest_s`) and wakes fetches waiting on them. `lent`: `obj` is a view into
        the committed ring, valid only during this call (kept blocks are copied)."""
        view = memoryview(obj)
        sent = view.nbytes > 0  # else the frame came without its object: nothing to cache
        _remember(self._ring_segments, segment.key, None)
        self._delivered(segment.key)
        pid = self._notice_pids.pop(segment.key, 0)
        if pid:
            _remember(self._pid_is_own, pid, True)
        interested = self._interested()
        for b in segment.blocks:
            key = (segment.key, b.byte_offset)
            tp = (b.topic_id, b.partition)
            # Long-polls and awaited notices count as interest too.
            if sent and (
                interested is None
                or tp in interested
                or tp in self._waiters
                or key in self._arrivals
            ):
                block = view[b.byte_offset : b.byte_offset + b.byte_length]
                # A lent object's blocks are always copied (the ring reuses its space).
                self.cache.put_encoded(key, bytes(block) if lent else keepable(block, len(view)))
            else:
                self.ring_skipped += 1
            arrival = self._arrivals.pop(key, None)
            if arrival is not None and not arrival.done():
                arrival.set_result(None)
            self._wake((b.topic_id, b.partition))

    def wants_committed_objects(self) -> bool:
        """Whether `on_committed` could cache any block now: some partition was fetched
        within `tail_interest_s` (or that is 0: every block is cached), or a fetch waits. If
        not, committed segments may come without their objects (COMMITTED_HEADERS_ONLY): a
        partition nobody reads costs the uploader no copy into the committed ring."""
        return (
            self._interested() is None
            or bool(self._interest)
            or bool(self._waiters)
            or bool(self._arrivals)
            or bool(self._ring_waits)
        )

    def _interested(self) -> dict[tuple[int, int], float] | None:
        """The partitions fetched within `tail_interest_s` (None: cache everything); older
        entries are forgotten here, at most once a second."""
        if self.tail_interest_s <= 0:
            return None
        now = time.monotonic()
        if now >= self._interest_pruned + 1.0:
            self._interest_pruned = now
            horizon = now - self.tail_interest_s
            for tp in [tp for tp, seen in self._interest.items() if seen < horizon]:
                del self._interest[tp]
        return self._interest

    def _delivered(self, key: str) -> None:
        """Notes a segment the committed ring delivered: its writer is this agent's uploader,
        and every segment of that writer up to its sequence has come or never will (those
        waiting are released to their GETs; this one's blocks are cached already)."""
        parsed = segment_keys.parse(key)
        if parsed is None:
            return
        if parsed.writer != self._ring_writer:  # a new uploader process: start over
            self._ring_writer = parsed.writer
            self._ring_sequence = -1
        self._ring_sequence = max(self._ring_sequence, parsed.sequence)
        if not self._ring_waits:
            return
        for waited in list(self._ring_waits):
            earlier = segment_keys.parse(waited)
            if (
                earlier is None
                or earlier.writer != parsed.writer
                or earlier.sequence <= parsed.sequence
            ):
                self._ring_waits.pop(waited).set_result(None)

    def _on_its_way(self, key: str) -> bool:
        """True for a segment of this agent's uploader that the committed ring has not
        delivered yet: committed (a fetch found it in the metadata), its frame follows."""
        if self._ring_writer is None or self.ring_grace_s <= 0 or key in self._ring_given_up:
            return False
        parsed = segment_keys.parse(key)
        return (
            parsed is not None
            and parsed.writer == self._ring_writer
            and parsed.sequence > self._ring_sequence
        )

    async def _from_ring(self, key: BlockKey) -> bytes | None:
        """Waits for the committed ring to deliver the block's segment, at most `ring_grace_s`
        after the segment's first wait began; the block from the cache, or None (it did not
        come, or did not fit the cache). A segment whose wait ran out is given up: every
        fetch waiting on it goes on to its GET at once, and none waits for it again."""
        obj = key[0]
        arrival = self._ring_waits.get(obj)
        if arrival is None:
            arrival = self._ring_waits[obj] = asyncio.get_running_loop().create_future()
            timer = asyncio.get_running_loop().call_later(
                self.ring_grace_s, self._give_up_ring_wait, obj, arrival
            )
            arrival.add_done_callback(lambda _f: timer.cancel())
        await asyncio.shield(arrival)
        data = self.cache.get(key)
        if data is None:
            self.ring_missed += 1
            log.debug("block %s@%d: not delivered by the committed ring in time; GET", *key)
        else:
            self.ring_waited += 1
        return data

    def _give_up_ring_wait(self, obj: str, arrival: asyncio.Future[None]) -> None:
        if self._ring_waits.get(obj) is arrival:
            del self._ring_waits[obj]
        _remember(self._ring_given_up, obj, None)
        if not arrival.done():
            arrival.set_result(None)

    def on_notice(self, notice: CommitNotice) -> None:
        """A segment committed by any agent (commit feed): loads its blocks that fetches wait
        for, then wakes those fetches (see the module rules)."""
        if notice.blocks is None:
            self.wake_all()
            return
        if notice.segment_key in self._ring_segments:
            if notice.pid:
                _remember(self._pid_is_own, notice.pid, True)
            return  # this agent's own commit, cached and woken by on_committed already
        if notice.pid:
            _remember(self._notice_pids, notice.segment_key, notice.pid)
        # No grace for a backend known to commit for another agent, a longer one for a
        # backend of this agent's uploader (its ring frame is on the way).
        own = self._pid_is_own.get(notice.pid) if notice.pid else None
        grace = {None: self.own_commit_grace_s, True: self.own_pid_grace_s, False: 0.0}[own]
        for b in notice.blocks:
            tp = (b.topic_id, b.partition)
            if tp not in self._waiters:
                continue
            key = (notice.segment_key, b.byte_offset)
            if key not in self.cache and key not in self._loads:
                # Registered now: the ring frame may come before the task first runs.
                self._arrivals[key] = asyncio.get_running_loop().create_future()
                task = asyncio.ensure_future(
                    self._feed_block(key, b.byte_length, grace, notice.pid)
                )
                self._loads[key] = task
                task.add_done_callback(lambda _t, key=key: self._loads.pop(key, None))
                task.add_done_callback(_log_failure)
            self._wake(tp)

    def wake_all(self) -> None:
        """Wakes every waiting fetch (commits may have been missed: each re-reads)."""
        for tp in list(self._waiters):
            self._wake(tp)

    def _wake(self, tp: tuple[int, int]) -> None:
        for fut in self._waiters.pop(tp, ()):
            if not fut.done():
                fut.set_result(None)

    async def _feed_block(self, key: BlockKey, length: int, grace: float, pid: int) -> bytes:
        """A notified block: from this agent's committed ring if it comes within `grace`
        (own commit), else one range GET (and `pid`, unless known as own, is foreign)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        arrival = self._arrivals.get(key)
        try:
            if arrival is not None and not arrival.done() and grace > 0:
                await asyncio.wait_for(asyncio.shield(arrival), grace)
        except TimeoutError:
            if pid and not self._pid_is_own.get(pid, False):
                _remember(self._pid_is_own, pid, False)
                log.debug("commit notices of backend %d: another agent's (no ring frame)", pid)
        finally:
            if arrival is not None and self._arrivals.get(key) is arrival:
                del self._arrivals[key]
        data = self.cache.get(key)
        if data is not None:
            self.feed_cached += 1
            log.debug(
                "notified block %s@%d: taken from the committed ring after %.2f ms",
                *key,
                (loop.time() - started) * 1000,
            )
            return data
        self.feed_gets += 1
        log.debug("notified block %s@%d: range GET", *key)
        return await self._fetch_block(key, length)

    async def load_block(self, loc: BlockLocation) -> bytes:
        """The decoded batches of a block: from the cache, else one range GET."""
        key = (loc.segment_key, loc.byte_offset)
        data = self.cache.get(key)
        if data is not None:
            return data
        task = self._loads.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key, loc.byte_length))
            self._loads[key] = task
            task.add_done_callback(lambda _t: self._loads.pop(key, None))
        return await task

    async def _load(self, key: BlockKey, length: int) -> bytes:
        """A cold block: from the committed ring when its segment is on its way there, else
        alone (no windows), or from the window GET of its object in flight, else from a new
        one (module rules)."""
        if self._on_its_way(key[0]):
            data = await self._from_ring(key)
            if data is not None:
                return data
        if self.window_bytes <= 0:
            return await self._fetch_block(key, length)
        obj, offset = key
        awaited: set[asyncio.Future[dict[int, bytes | memoryview]]] = set()
        while (pending := self._windows.get(obj)) is not None and pending not in awaited:
            awaited.add(pending)
            try:
                blocks = await asyncio.shield(pending)
            except Exception:  # that GET failed (logged once): this block is read alone
                return await self._fetch_block(key, length)
            encoded = blocks.get(offset)
            if encoded is not None:
                return self._decode_into_cache(key, encoded)
        if awaited:  # another window may have cached it meanwhile
            data = self.cache.get(key)
            if data is not None:
                return data
        if self._ahead_bytes + self._inflight_bytes >= self.ahead_limit:
            self.window_skipped += 1
            return await self._fetch_block(key, length)
        window = readplan.window_for(offset, length, self.window_bytes)
        estimate = min(window.length, self._window_estimate)
        self._inflight_bytes += estimate
        future = asyncio.ensure_future(self._get_window(obj, window, estimate))
        self._windows[obj] = future
        future.add_done_callback(lambda f: _forget_window(self._windows, obj, f))
        blocks = await asyncio.shield(future)
        encoded = blocks.get(offset)
        if encoded is None:
            # Not a verified whole block of the window (a corrupt or truncated object): read
            # it alone, which fails with the reason.
            return await self._fetch_block(key, length)
        return self._decode_into_cache(key, encoded)

    async def _get_window(
        self, obj: str, window: readplan.Window, estimate: int
    ) -> dict[int, bytes | memoryview]:
        """One window GET: its verified blocks, each also cached (encoded) unless cached.
        `estimate` is what it was counted in flight for."""
        try:
            raw = await objectstore.get_range_upto(self.store, obj, window.start, window.length)
        finally:
            self._inflight_bytes -= estimate
        self.window_gets += 1
        self._window_estimate = max((3 * self._window_estimate + len(raw)) // 4, 1)
        blocks = readplan.split_blocks(raw, window)
        for offset, encoded in blocks.items():
            key = (obj, offset)
            if key not in self.cache:
                self.cache.put_encoded(key, encoded)
                if key in self.cache:  # (not when larger than the whole cache)
                    self._ahead[key] = len(encoded)
                    self._ahead_bytes += len(encoded)
                    self.window_blocks += 1
        while len(self._ahead) > AHEAD_KEYS:
            self._ahead_bytes -= self._ahead.popitem(last=False)[1]
        return blocks

    def _evicted(self, key: BlockKey) -> None:
        size = self._ahead.pop(key, None)
        if size is not None:
            self._ahead_bytes -= size
            self.window_wasted += 1

    def _decode_into_cache(self, key: BlockKey, encoded: bytes | memoryview) -> bytes:
        # `encoded` is a block split_blocks verified; a raw one is kept as a view of it.
        data = decode_block(encoded, verified=True, view=True)
        self.cache.put_decoded(key, data)
        return data

    async def _fetch_block(self, key: BlockKey, length: int) -> bytes:
        raw = await objectstore.get_range(self.store, key[0], key[1], length)
        data = decode_block(raw, view=True)
        self.cache.put_decoded(key, data)
        return data

    def _prefetch_after(self, topic_id: int, partition: int, offset: int) -> None:
        if self.prefetch <= 0:
            return
        task = asyncio.ensure_future(self._prefetch(topic_id, partition, offset))
        task.add_done_callback(_ignore_result)

    def _load_ahead(self, parts: list[FetchPart], plans: list[ReadPlan]) -> None:
        """With windows: starts the cold loads a fetch will wait for, all at once (its parts
        are then read in order, and a later part's object is not read only after an earlier
        part's): per part, the first block of its plan and, while the window budget allows
        (`_affordable`), the next ones until their stored bytes reach its max_bytes."""
        if self.window_bytes <= 0:
            return
        afford = self._affordable()
        for part, plan in zip(parts, plans, strict=True):
            wanted = 0
            for loc in plan.blocks:
                if wanted >= part.max_bytes or (wanted and not afford(loc)):
                    break
                wanted += loc.byte_length
                key = (loc.segment_key, loc.byte_offset)
                if key not in self.cache and key not in self._loads:
                    task = asyncio.ensure_future(self.load_block(loc))
                    task.add_done_callback(_ignore_result)

    def _affordable(self) -> Callable[[BlockLocation], bool]:
        """A judge of extra blocks to load ahead within the window budget (`ahead_limit`):
        a block of an object loading, or already chosen, is free; a new object costs the
        recent window size, while the budget lasts."""
        room = self.ahead_limit - self._ahead_bytes - self._inflight_bytes
        chosen: set[str] = set()

        def afford(loc: BlockLocation) -> bool:
            nonlocal room
            obj = loc.segment_key
            if obj in chosen or obj in self._windows:
                return True
            if room <= 0:
                return False
            room -= self._window_estimate
            chosen.add(obj)
            return True

        return afford

    def _prefetch_parts(self, parts: list[tuple[int, int, int, int]]) -> None:
        """Prefetches after cold reads of several partitions (topic id, partition, next
        offset, max_bytes): one metadata call for all."""
        if self.prefetch <= 0 or not parts:
            return
        task = asyncio.ensure_future(self._prefetch_many(parts))
        task.add_done_callback(_ignore_result)

    async def _prefetch_many(self, parts: list[tuple[int, int, int, int]]) -> None:
        """The next `prefetch` blocks of each partition; with windows, more up to the stored
        bytes of its next fetch (its max_bytes) while the window budget allows, so a
        catch-up's next fetch finds them."""
        windows = self.window_bytes > 0
        limit = max(self.prefetch, BLOCKS_PER_LOOKUP) if windows else self.prefetch
        plans = await self.meta.read_plans([(t, p, o) for t, p, o, _ in parts], limit)
        locs: list[BlockLocation] = []
        afford = self._affordable()
        for (_t, _p, _o, max_bytes), plan in zip(parts, plans, strict=True):
            stored = 0
            for n, loc in enumerate(plan.blocks):
                if n >= self.prefetch and (not windows or stored >= max_bytes or not afford(loc)):
                    break
                stored += loc.byte_length
                locs.append(loc)
        await self._prefetch_blocks(locs)

    async def _prefetch(self, topic_id: int, partition: int, offset: int) -> None:
        """Loads the blocks after `offset` that are neither cached nor loading; done when they
        are (each failure is logged)."""
        await self._prefetch_blocks(
            await self.meta.find_blocks(topic_id, partition, offset, self.prefetch)
        )

    async def _prefetch_blocks(self, locs: list[BlockLocation]) -> None:
        loads = []
        for loc in locs:
            key = (loc.segment_key, loc.byte_offset)
            if key not in self.cache and key not in self._loads:
                task = asyncio.ensure_future(self.load_block(loc))
                task.add_done_callback(_ignore_result)
                loads.append(task)
        await asyncio.gather(*loads, return_exceptions=True)

    async def read_part(
        self,
        part: FetchPart,
        fmt: int,
        max_bytes: int,
        max_records: int,
        allow_oversize: bool = True,
        plan: ReadPlan | None = None,
        isolation_level: int = 0,
        cold_parts: list[tuple[int, int, int, int]] | None = None,
    ) -> tuple[FetchPartResult, bytes | bytearray]:
        """Reads one partition from `part.offset`, up to max_bytes; with allow_oversize the
        first batch is returned even when it alone is larger. `plan` is the partition's
        metadata for `part.offset` when the caller looked it up already. With
        `isolation_level` 1 (read_committed) it stops at the last stable offset and lists
        the aborted transactions of the returned range. After a cold read the next blocks
        are prefetched, or, with `cold_parts`, the partition, its next offset and max_bytes
        are added to it for the caller's one prefetch of all its partitions."""
        if plan is None:
            (plan,) = await self.meta.read_plans(
                [(part.topic_id, part.partition, part.offset)], BLOCKS_PER_LOOKUP
            )
        state = plan.state
        if state is None:
            error = ring_error(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION.kafka_code,
                f"topic id {part.topic_id} partition {part.partition} does not exist",
            )
            return _result(part, error, -1, -1), b""
        hwm, lso = state.high_watermark, state.log_start_offset
        stable = min(state.last_stable_offset, hwm)
        bound = stable if isolation_level == 1 else hwm
        if part.offset < lso or part.offset > hwm:
            error = ring_error(
                ErrorCode.OFFSET_OUT_OF_RANGE.kafka_code,
                f"offset {part.offset} is outside the log: valid offsets are {lso}..{hwm}",
            )
            return _result(part, error, hwm, lso), b""
        # FORMAT_KAFKA: the batches are copied once, into `out`, and patched there (`ends`:
        # where each one ends); FORMAT_RECORDS: the rendered records of each batch.
        out = bytearray()
        ends: list[int] = []
        chunks: list[bytes] = []
        size = 0
        count = 0
        next_offset = part.offset
        limit = max_records if max_records > 0 else 1 << 62
        cold = False
        transactional = 0  # a returned batch is transactional (markers included)
        starts: list[tuple[int, int]] = []  # FORMAT_KAFKA: each chunk's first offset, records
        dropped: AbortedRanges | None = None  # FORMAT_RECORDS read_committed: aborted ranges
        done = part.offset >= bound
        # The least a further batch adds: a Kafka batch header, or one rendered record.
        smallest = BATCH_HEADER_SIZE if fmt == FORMAT_KAFKA else 1
        locs: list[BlockLocation] | None = plan.blocks
        while not done:
            if locs is None:
                locs = await self.meta.find_blocks(
                    part.topic_id, part.partition, next_offset, BLOCKS_PER_LOOKUP
                )
            if not locs:
                break
            for loc in locs:
                if (ends or chunks) and size + smallest > max_bytes:
                    done = True  # nothing more fits: do not load the next block for nothing
                    break
                key = (loc.segment_key, loc.byte_offset)
                cold = cold or key not in self.cache
                if key in self._ahead:  # loaded ahead by a window: read on, keep loading
                    self._ahead_bytes -= self._ahead.pop(key)
                    cold = True
                try:
                    data = await self.load_block(loc)
                except Exception as exc:
                    log.error("cannot read block %s@%d: %s", loc.segment_key, loc.byte_offset, exc)
                    if ends or chunks:
                        done = True
                        break
                    error = ring_error(
                        ErrorCode.KAFKA_STORAGE_ERROR.kafka_code,
                        f"stored block {loc.segment_key}@{loc.byte_offset} could not be read "
                        f"({exc}); retry",
                    )
                    return _result(part, error, hwm, lso), b""
                view = memoryview(data)
                # offsets by the gap rule (streamhouse/recordbatch.py): compacted blocks
                # have gaps between batches and inside them
                for stored in walk_block(
                    view, loc.base_offset, loc.skipped_batches, end_offset=loc.end_offset
                ):
                    info = stored.info
                    batch_base = stored.first_offset
                    last = batch_base + info.last_offset_delta
                    if last < next_offset:
                        continue
                    if batch_base >= bound:
                        done = True
                        break
                    if fmt != FORMAT_KAFKA and info.attributes & CONTROL_MASK:
                        next_offset = last + 1  # a transaction marker: not a record
                        continue
                    if (
                        fmt != FORMAT_KAFKA
                        and isolation_level == 1
                        and info.attributes & TRANSACTIONAL_MASK
                    ):
                        if dropped is None:
                            dropped, bound = await self._aborted_from(part, batch_base, bound)
                            if batch_base >= bound:
                                done = True
                                break
                        if dropped.covers(info.producer_id, batch_base):
                            next_offset = last + 1  # an aborted transaction's records
                            continue
                    bounded = bool(ends or chunks) or not allow_oversize
                    if bounded and size + info.length > max_bytes:
                        done = True
                        break
                    batch = view[info.position : info.position + info.length]
                    if fmt == FORMAT_KAFKA:
                        transactional |= info.attributes & TRANSACTIONAL_MASK
                        out += batch
                        patch_base_offset(out, size, batch_base)
                        ends.append(len(out))
                        starts.append((batch_base, info.record_count))
                        size += info.length
                        count += info.record_count
                        next_offset = last + 1
                    else:
                        # The whole batch in one call (streamhouse/_recordwire.c).
                        rendered, n, after = render_batch(
                            batch,
                            batch_base,
                            next_offset,
                            limit - count,
                            max_inflated=self.max_inflated,
                        )
                        # Rendered records can outgrow the stored batch: check again.
                        if bounded and size + len(rendered) > max_bytes:
                            done = True
                            break
                        chunks.append(rendered)
                        size += len(rendered)
                        count += n
                        # at the limit: after the last record rendered (offsets may have gaps)
                        next_offset = last + 1 if count < limit else after
                    if count >= limit:
                        done = True
                        break
                if done:
                    break
                next_offset = max(next_offset, loc.end_offset)
            if next_offset >= bound:
                break
            locs = None  # read past the blocks looked up: look up the next ones
        if cold and cold_parts is not None:
            cold_parts.append((part.topic_id, part.partition, next_offset, max_bytes))
        elif cold:
            self._prefetch_after(part.topic_id, part.partition, next_offset)
        aborted: list[tuple[int, int]] = []
        if isolation_level == 1 and transactional:
            found = await self.meta.aborted_transactions(
                part.topic_id, part.partition, part.offset, next_offset
            )
            if len(found) >= MAX_ABORTED_LISTED and len(ends) > 1:
                # The list may be cut short: return only the batches it fully covers.
                cut = max(found[-1].first_offset, starts[1][0])
                keep = sum(1 for base, _ in starts if base < cut)
                found = [a for a in found if a.first_offset < cut]
                starts = starts[:keep]
                size = ends[keep - 1]
                del out[size:]
                count = sum(n for _, n in starts)
                next_offset = cut
            aborted = [(a.producer_id, a.first_offset) for a in found]
        result = FetchPartResult(
            part.topic_id,
            part.partition,
            RING_OK,
            hwm,
            lso,
            size,
            next_offset,
            count,
            stable,
            aborted,
        )
        return result, out if fmt == FORMAT_KAFKA else b"".join(chunks)

    async def _aborted_from(
        self, part: FetchPart, start: int, bound: int
    ) -> tuple[AbortedRanges, int]:
        """The aborted transactions overlapping ``[start, bound)`` and the bound they cover:
        ``bound``, or, when the list reached its cap, the first offset of the last one listed
        (first offsets are distinct within a partition; every transaction starting before it
        is listed)."""
        found = await self.meta.aborted_transactions(part.topic_id, part.partition, start, bound)
        if len(found) >= MAX_ABORTED_LISTED and found[-1].first_offset > start:
            bound = found[-1].first_offset
        return AbortedRanges((a.producer_id, a.first_offset, a.last_offset) for a in found), bound

    async def fetch(self, request: FetchRequest) -> tuple[FetchResponse, bytes | bytearray]:
        """Serves a fetch, waiting up to max_wait_ms for min_bytes to be committed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(request.max_wait_ms, self.max_wait_ms) / 1000
        while True:
            wake: asyncio.Future[None] = loop.create_future()
            tps = [(p.topic_id, p.partition) for p in request.parts]
            if self.tail_interest_s > 0:
                now = time.monotonic()
                new = not self._interest.keys() >= set(tps)
                self._interest.update((tp, now) for tp in tps)
                if new and self.on_interest is not None:
                    self.on_interest()
            for tp in tps:
                self._waiters.setdefault(tp, set()).add(wake)
            try:
                results: list[FetchPartResult] = []
                payloads: list[bytes | bytearray] = []
                budget = request.max_bytes
                cold_parts: list[tuple[int, int, int, int]] = []
                # Every partition's state and first blocks in one metadata call.
                plans = await self.meta.read_plans(
                    [(p.topic_id, p.partition, p.offset) for p in request.parts],
                    BLOCKS_PER_LOOKUP,
                )
                self._load_ahead(request.parts, plans)
                for part, plan in zip(request.parts, plans, strict=True):
                    # Only the first partition with data may go past the limit (as in Kafka).
                    res, data = await self.read_part(
                        part,
                        request.format,
                        min(part.max_bytes, max(budget, 0)),
                        request.max_records,
                        allow_oversize=budget == request.max_bytes,
                        plan=plan,
                        isolation_level=request.isolation_level,
                        cold_parts=cold_parts,
                    )
                    budget -= len(data)
                    results.append(res)
                    payloads.append(data)
                self._prefetch_parts(cold_parts)
                total = sum(r.length for r in results)
                errored = any(r.error.code for r in results)
                remaining = deadline - loop.time()
                # The records format answers its next offset: a read that only passed markers
                # or aborted records answers at once (Kafka clients would fetch the same
                # offset again, so a Kafka-format read waits for bytes).
                moved = request.format != FORMAT_KAFKA and any(
                    r.next_offset > p.offset for r, p in zip(results, request.parts, strict=True)
                )
                if total >= max(request.min_bytes, 1) or errored or moved or remaining <= 0:
                    # One partition's bytes go out as they are (no copy to join them).
                    payload = payloads[0] if len(payloads) == 1 else b"".join(payloads)
                    return FetchResponse(request.request_id, results), payload
                if self.waiting >= self.max_waiting:
                    # Over the limit: parked until its deadline and not re-read on commits (no
                    # herd), nor answered early (its client would fetch again at once: a spin).
                    await asyncio.sleep(remaining)
                    continue
                self.waiting += 1
                try:
                    await asyncio.wait_for(wake, timeout=remaining)
                except TimeoutError:
                    pass
                finally:
                    self.waiting -= 1
            finally:
                for tp in tps:
                    waiting = self._waiters.get(tp)
                    if waiting is not None:
                        waiting.discard(wake)
                        if not waiting:
                            del self._waiters[tp]


def _result(part: FetchPart, error: RingError, hwm: int, lso: int) -> FetchPartResult:
    return FetchPartResult(part.topic_id, part.partition, error, hwm, lso, 0, part.offset, 0)


def error_response(request_id: int, code: ErrorCode, message: str) -> FetchResponse:
    """A response that fails a whole fetch (the reader could not serve it as asked)."""
    return FetchResponse(request_id, [], ring_error(code.kafka_code, message))


def parse_request(header: bytes, max_parts: int) -> FetchRequest | FetchResponse | None:
    """The fetch a request frame asks for; or the error response that refuses it (one log
    line); or None when not even its request id can be read (ingest times that fetch out)."""
    try:
        request = _decode_request(header)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        ids = salvage_ids(header, 1)
        if ids is None:
            log.error("dropped a fetch request whose header does not decode: %s", exc)
            return None
        log.error("refusing fetch %d: its header does not decode: %s", ids[0], exc)
        return error_response(
            ids[0], ErrorCode.INVALID_REQUEST, f"the fetch request does not decode: {exc}"
        )
    try:
        check_fetch_request(request, max_parts)
    except FrameError as exc:
        log.error("refusing fetch %d: %s", request.request_id, exc)
        return error_response(request.request_id, ErrorCode.INVALID_REQUEST, str(exc))
    return request


def fit_response(
    request: FetchRequest,
    response: FetchResponse,
    payload: bytes | bytearray,
    max_frame_bytes: int,
) -> tuple[bytes, bytes | bytearray]:
    """The encoded header and payload of `response`, trimmed to fit one ring frame.

    Parts are kept in order while they fit; the later ones are answered with no data and
    their requested offset, so the client simply fetches them again. If not even the first
    part's data fits, the fetch fails with MESSAGE_TOO_LARGE.
    """
    header = header_encoder.encode(response)
    if len(header) + len(payload) <= max_frame_bytes:
        return header, payload
    kept: list[FetchPartResult] = []
    used = 0
    trimming = False  # once a part is cut, every later one is too: the payload is a prefix
    for wanted, part in zip(request.parts, response.parts, strict=True):
        trimming = trimming or bool(kept) and used + part.length + len(header) > max_frame_bytes
        if not trimming:
            kept.append(part)
            used += part.length
        else:
            kept.append(
                FetchPartResult(
                    part.topic_id,
                    part.partition,
                    RING_OK,
                    part.high_watermark,
                    part.log_start_offset,
                    0,
                    wanted.offset,
                    0,
                    part.last_stable_offset,
                )
            )
    header = header_encoder.encode(FetchResponse(response.request_id, kept))
    if len(header) + used > max_frame_bytes:
        first = request.parts[0]
        failed = error_response(
            request.request_id,
            ErrorCode.MESSAGE_TOO_LARGE,
            f"the data at offset {first.offset} of topic id {first.topic_id} partition "
            f"{first.partition} ({used} bytes) does not fit the fetch-response ring "
            f"({max_frame_bytes} bytes); raise fetch_response_ring_bytes",
        )
        return header_encoder.encode(failed), b""
    return header, payload[:used]


def _remember(memory: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    """Sets `key` as the newest entry of a bounded memory, forgetting the oldest."""
    memory[key] = value
    memory.move_to_end(key)
    if len(memory) > REMEMBERED:
        memory.popitem(last=False)


def _forget_window(
    windows: dict[str, asyncio.Future[dict[int, bytes | memoryview]]],
    obj: str,
    done: asyncio.Future[Any],
) -> None:
    if windows.get(obj) is done:
        del windows[obj]
    if not done.cancelled() and done.exception() is not None:
        log.warning("window GET of %s failed (blocks are read alone): %s", obj, done.exception())


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("prefetch failed: %s", task.exception())


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning(
            "loading a block announced by the commit feed failed (fetches retry it): %s",
            task.exception(),
        )
