"""One lifecycle pass against the metadata store and the object store (the I/O shell around
:mod:`lifecycle.plan`).

A pass, at clock `now_ms`:

1. ``enforce_retention(now_ms)``: time and size retention move log starts and drop block rows;
2. the rewriting steps, on one lifecycle process of a cluster (RewriteContext.is_rewriter)
   and only with ``lifecycle_compaction_enabled``: key compaction of ``cleanup.policy=
   compact`` topics (:mod:`lifecycle.keycompact`), then small-object compaction and rewrites
   of partly-live objects (:mod:`lifecycle.compaction`). Both go through one
   :class:`lifecycle.rewrite.RewriteContext` (shared byte budget and PUT limit); the objects
   they replace become dead here and go through the steps below;
3. ``mark_unreferenced_segments(wall clock)``: segments left without block rows (retention,
   DeleteRecords, DeleteTopics, all-duplicate commits) are dead from now on. The moment is
   the real time the pass saw them, never a moved clock: a clock in the past would date
   their death too early and shorten their grace period; with a clock in the future, a
   single ``--once --now-ms <now + grace + 1>`` reclaims what was deleted just before;
4. dead segments: ``dead_segments(now_ms - grace)`` in pages; each page's objects are deleted
   (batched requests, ``lifecycle_delete_concurrency`` at a time, paced by the delete budget)
   and only then are their rows forgotten (``forget_segments``), chunk by chunk;
5. orphan scan: the object store is listed under ``segments/``; of every page, the objects
   last written before ``now_ms - grace`` that no segment row knows (``known_segments``)
   are deleted, under the same budget;
6. expiry of idle state (:mod:`lifecycle.expiry`): producer ids' idempotence state and
   empty groups' committed offsets, as Kafka's ``producer.id.expiration.ms`` and
   ``offsets.retention.minutes``.

Retention, deletes, orphans and expiry run on every agent's lifecycle process (each is safe
to run concurrently, see :mod:`lifecycle`); the rewriting steps on one.

A failed object-store request stops the pass: its chunk's rows stay (dead), so the next pass
deletes those objects again (deleting a missing object succeeds) and then forgets them. A
segment row is therefore never forgotten while its object may still exist, and an object is
never deleted while a row refers to it as live or it is younger than the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

import msgspec

from lifecycle.compaction import CompactionReport, compact_objects
from lifecycle.expiry import ExpiryReport, expire_idle_state
from lifecycle.keycompact import KeyCompactionReport, compact_keys
from lifecycle.plan import (
    SEGMENT_PREFIX,
    DeleteBudget,
    chunk_size,
    chunks,
    orphan_candidates,
    orphans,
)
from lifecycle.rewrite import ObjectStoreFailure, RewriteContext, one_line
from metadata.async_store import AsyncMetadata
from streamhouse import objectstore
from streamhouse.config import Settings

__all__ = ["DEAD_PAGE", "LifecyclePass", "ObjectStoreFailure", "PassReport"]

log = logging.getLogger("lifecycle")

#: Dead segments fetched from metadata at a time.
DEAD_PAGE = 1000
#: Objects listed per page of the orphan scan (one ListObjectsV2 page on S3).
LIST_PAGE = 1000


class PassReport(msgspec.Struct, kw_only=True):
    """What one pass did (printed as JSON by ``python3 -m lifecycle --once``)."""

    now_ms: int
    partitions_moved: int = 0
    blocks_removed: int = 0
    bytes_removed: int = 0
    segments_marked_dead: int = 0
    dead_objects_deleted: int = 0
    dead_bytes_deleted: int = 0
    segments_forgotten: int = 0
    objects_listed: int = 0
    orphans_deleted: int = 0
    #: whether this process ran the rewriting steps, and why (or why not)
    rewriter: bool = False
    rewriter_reason: str = ""
    key_compaction: KeyCompactionReport | None = None
    compaction: CompactionReport | None = None
    expiry: ExpiryReport | None = None
    duration_ms: int = 0


class LifecyclePass:
    """Runs passes for one process: holds the store handles, the delete budget and the
    concurrency limit (both shared by every pass of the process)."""

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
        self._budget = DeleteBudget(settings.lifecycle_deletes_per_second)
        self._requests = asyncio.Semaphore(settings.lifecycle_delete_concurrency)
        self._chunk = chunk_size(
            settings.lifecycle_deletes_per_second, settings.lifecycle_delete_concurrency
        )
        self.rewrites = RewriteContext(settings, meta, store, monotonic, wall_ms)

    async def run(self, now_ms: int) -> PassReport:
        """One whole pass at clock `now_ms`; raises ObjectStoreFailure or the metadata
        store's errors (MetadataUnavailableError...) when a step cannot be done."""
        started = self._monotonic()
        report = PassReport(now_ms=now_ms)
        grace = self.settings.lifecycle_grace_ms
        moves = await self.meta.enforce_retention(now_ms)
        report.partitions_moved = len(moves)
        report.blocks_removed = sum(m.blocks_removed for m in moves)
        report.bytes_removed = sum(m.bytes_removed for m in moves)
        for move in moves:
            log.info(
                "retention: topic id %d partition %d log start %d -> %d (%d blocks, %d bytes)",
                move.topic_id,
                move.partition,
                move.old_log_start,
                move.new_log_start,
                move.blocks_removed,
                move.bytes_removed,
            )
        await self._rewrite(now_ms, report)
        report.segments_marked_dead = await self.meta.mark_unreferenced_segments(self._wall_ms())
        await self._delete_dead(now_ms - grace, report)
        await self._collect_orphans(now_ms, grace, report)
        report.expiry = await expire_idle_state(self.meta, self.settings, now_ms)
        report.duration_ms = int((self._monotonic() - started) * 1000)
        return report

    async def _rewrite(self, now_ms: int, report: PassReport) -> None:
        """The rewriting steps, on the one rewriting process of the cluster."""
        if not self.settings.lifecycle_compaction_enabled:
            report.rewriter_reason = "STREAMHOUSE_LIFECYCLE_COMPACTION_ENABLED=false"
            return
        report.rewriter, report.rewriter_reason = await self.rewrites.is_rewriter()
        if not report.rewriter:
            return
        report.key_compaction = await compact_keys(self.rewrites, now_ms)
        report.compaction = await compact_objects(self.rewrites, now_ms, self._monotonic)

    async def _delete_dead(self, dead_before_ms: int, report: PassReport) -> None:
        while True:
            dead = await self.meta.dead_segments(dead_before_ms, DEAD_PAGE)
            if not dead:
                return
            sizes = {segment.key: segment.size for segment in dead}
            before = report.segments_forgotten
            await self._gather(
                self._delete_dead_chunk(keys, sizes, report)
                for keys in chunks(list(sizes), self._chunk)
            )
            if report.segments_forgotten == before or len(dead) < DEAD_PAGE:
                # A page that forgot nothing (another process forgot those rows meanwhile)
                # must not be fetched again forever; the next pass takes what is left.
                return

    async def _delete_dead_chunk(
        self, keys: list[str], sizes: dict[str, int], report: PassReport
    ) -> None:
        await self._delete(keys, "dead segment objects")
        report.dead_objects_deleted += len(keys)
        report.dead_bytes_deleted += sum(sizes[k] for k in keys)
        # Only now that the objects are gone may their rows go.
        report.segments_forgotten += await self.meta.forget_segments(keys)

    async def _collect_orphans(self, now_ms: int, grace_ms: int, report: PassReport) -> None:
        pages = objectstore.list_objects(self.store, SEGMENT_PREFIX, LIST_PAGE)
        while True:
            try:
                page = await asyncio.wait_for(anext(pages), self.settings.store_timeout_ms / 1000)
            except StopAsyncIteration:
                return
            except Exception as exc:
                raise ObjectStoreFailure(
                    f"listing {SEGMENT_PREFIX} in {self.settings.object_store_url} failed: "
                    f"{one_line(exc)}"
                ) from exc
            report.objects_listed += len(page)
            candidates = orphan_candidates(page, now_ms, grace_ms)
            if not candidates:
                continue
            known = await self.meta.known_segments(candidates)
            unknown = orphans(candidates, known)
            if not unknown:
                continue

            await self._gather(
                self._delete_orphan_chunk(keys, report) for keys in chunks(unknown, self._chunk)
            )

    async def _delete_orphan_chunk(self, keys: list[str], report: PassReport) -> None:
        await self._delete(keys, "orphan objects")
        report.orphans_deleted += len(keys)
        log.info("deleted %d orphan objects, e.g. %s", len(keys), keys[0])

    async def _gather(self, jobs: Iterable[Coroutine[Any, Any, None]]) -> None:
        """Runs the chunk jobs of one page, at most `lifecycle_delete_concurrency` requests
        at a time (the semaphore is taken inside `_delete`). They are awaited here, not
        background tasks: the first failure cancels the others and is raised."""
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

    async def _delete(self, keys: Sequence[str], what: str) -> None:
        async with self._requests:
            wait = self._budget.reserve(len(keys), self._monotonic())
            if wait > 0:
                await asyncio.sleep(wait)  # pacing to the configured delete budget
            try:
                await asyncio.wait_for(
                    objectstore.delete_many(self.store, keys),
                    self.settings.store_timeout_ms / 1000,
                )
            except Exception as exc:
                raise ObjectStoreFailure(
                    f"deleting {len(keys)} {what} ({keys[0]}...) from "
                    f"{self.settings.object_store_url} failed: {one_line(exc)}"
                ) from exc
