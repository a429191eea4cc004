"""Runs one continuous query: tail the sources, feed the plan, commit output and checkpoint at once.

Rules (what makes the output exactly-once)
------------------------------------------
1. On start the runner claims the query (``claim_query``): the claim bumps the query's
   generation, so any older runner of it can no longer commit (rule 4) and stops.
2. It restores the plan from the committed checkpoint's state object and reads every source
   from the committed positions: what was processed after the last commit is read and
   processed again, and what it produced was never written (rule 4).
3. A step reads at most ``sql_max_step_bytes`` of stored blocks over all sources
   (``sql.continuous.source``), decodes them, and hands the batches to ``plan.process``;
   results are held in memory. The next step is read while one is processed.
4. Every ``sql_checkpoint_interval_ms`` (when anything was read since the last commit) the
   results become one output segment object (``sql.continuous.sink``: JSON values, keys for
   upserts; with the step's dead letters), the plan's snapshot a state object and, for a
   view, its rows a view object (``sql.continuous.checkpoint``); all PUT first, then ONE
   ``commit_query_step`` with the new ``CheckpointState`` (positions, keys of the objects,
   counters). Output and positions are committed together or not at all, by the runner of
   the current generation only.
5. After a commit the objects of the previous checkpoint are deleted; objects of
   checkpoints that never committed are swept on start and every ``SWEEP_EVERY`` commits.
6. ``QueryFencedError`` (another runner claimed the query, or it was dropped): one log line,
   exit ``EXIT_FENCED``. The catalog entry gone: exit 0. A commit whose outcome is unknown
   (the metadata store failed during it) is settled by reading the checkpoint back.

Watermarks per partition: before a step's batches the plan is told the partitions of each
source (``set_partitions``), and after each step which of them are idle (``mark_idle``):
caught up to the high watermark last seen, with nothing new, for ``PARTITION_IDLE_S``. An
idle partition no longer holds its source's watermark back, so windows close once every
partition is read (results of ``mark_idle`` are committed like any others). A plan without
these methods is not told.

A materialized view keeps its current rows in memory: for an upsert plan (``key_columns``)
the latest row per key (none when that row is a delete, ``__delete`` true: see
``sql.continuous.pipeline``; an output topic gets a tombstone for it,
``sql.continuous.sink``); for an append-only plan every row, capped at ``VIEW_APPEND_CAP``
(the oldest rows are dropped, and the log says so once). The step's results are merged in
at each checkpoint (one Arrow group-by over the view and the new rows) and the whole view is
written as one object: the cost of a checkpoint grows with the view, which suits views of up
to a few million rows (aggregates, windows), not copies of a stream.

Logs: one line per event (claimed, restored, checkpoint failures, progress every
``PROGRESS_S``, fenced, dropped, exit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from metadata.async_store import AsyncMetadata
from metadata.errors import MetadataError, QueryFencedError, UnknownTopicError
from metadata.store import TopicInfo
from sql.catalog import KINDS, Catalog, Relation
from sql.continuous.checkpoint import (
    delete_objects,
    load_state,
    read_view,
    state_key,
    sweep,
    view_bytes,
    view_key,
)
from sql.continuous.definition import (
    QUERY_CATALOG_KIND,
    CheckpointState,
    QueryDefinition,
    decode_checkpoint,
    decode_definition,
    encode_checkpoint,
)
from sql.continuous.pipeline import DELETE_COLUMN, ContinuousPlan
from sql.continuous.sink import (
    DeadLetters,
    build_segment,
    dead_letter_batches,
    encode_records,
    new_segment_key,
    output_records,
    partition_records,
)
from sql.continuous.source import SourceRead, SourceTail, wait_for_data
from streamhouse import objectstore
from streamhouse.config import Settings

__all__ = [
    "EXIT_FAILED",
    "EXIT_FENCED",
    "EXIT_OK",
    "PlanFactory",
    "QueryRunner",
    "ViewRows",
    "default_plan",
]

log = logging.getLogger("sql.continuous")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_FENCED = 3
#: Rows an append-only materialized view keeps (the newest).
VIEW_APPEND_CAP = 1_000_000
#: Commits between sweeps of uncommitted checkpoint objects.
SWEEP_EVERY = 300
#: Seconds a partition stays caught up (position at its high watermark, nothing new) before
#: the plan is told it is idle (it then no longer holds its source's watermark back).
PARTITION_IDLE_S = 1.0
#: Seconds between progress lines in the log.
PROGRESS_S = 30.0
#: Attempts at a commit whose store calls fail before the runner gives up (exit 1).
COMMIT_ATTEMPTS = 5
DEAD_LETTER_ERROR = "the value does not match the declared schema"

PlanFactory = Callable[[QueryDefinition, dict[str, Relation], set[str]], ContinuousPlan]


class RunnerError(RuntimeError):
    """The query cannot run (its topic is gone, its plan fails...); the message says why."""


class _Dropped(Exception):
    """The query's catalog entry is gone."""


def default_plan(
    definition: QueryDefinition, relations: dict[str, Relation], topics: set[str]
) -> ContinuousPlan:
    """The SQL planner's plan of ``definition`` (a view emits updates, a stream final rows)."""
    from sql.continuous.plan import plan_continuous

    options = definition.options
    lateness = int(options.get("allowed_lateness_ms", "0") or 0)
    emit = "updates" if definition.kind == "view" else "final"
    return plan_continuous(
        definition.sql, relations, topics, emit=emit, allowed_lateness_ms=lateness
    )


class ViewRows:
    """A materialized view's current rows (module docstring)."""

    def __init__(self, schema: pa.Schema, key_columns: tuple[str, ...]) -> None:
        self.schema = schema
        self.key_columns = key_columns
        self.table = schema.empty_table()
        self.capped = False

    def apply(self, batches: list[pa.RecordBatch]) -> None:
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        if self.key_columns and any(DELETE_COLUMN in b.schema.names for b in batches):
            # deletes (sql.continuous.pipeline): the latest row of a key may delete it
            parts = [self.table] + [pa.Table.from_batches([b]) for b in batches]
            table = pa.concat_tables(parts, promote_options="permissive")
            deletes = pc.fill_null(table.column(DELETE_COLUMN), False)
            table = table.drop_columns([DELETE_COLUMN]).cast(self.schema)
        else:
            new = pa.Table.from_batches(batches, schema=self.schema)
            table = pa.concat_tables([self.table, new]) if self.table.num_rows else new
            deletes = None
        if self.key_columns:
            index = pa.array(np.arange(table.num_rows, dtype=np.int64))
            latest = (
                table.select(list(self.key_columns))
                .append_column("__row", index)
                .group_by(list(self.key_columns), use_threads=False)
                .aggregate([("__row", "max")])
                .column("__row_max")
            )
            rows = pa.array(np.sort(latest.to_numpy()))
            if deletes is not None:
                rows = rows.filter(pc.invert(deletes.take(rows)))
            table = table.take(rows)
        elif table.num_rows > VIEW_APPEND_CAP:
            if not self.capped:
                log.warning(
                    "the view holds only its newest %d rows (an append-only view grows without "
                    "end: aggregate or window it to keep it bounded)",
                    VIEW_APPEND_CAP,
                )
                self.capped = True
            table = table.slice(table.num_rows - VIEW_APPEND_CAP)
        self.table = table.combine_chunks()


class QueryRunner:
    """One continuous query's runner (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        meta: AsyncMetadata,
        store: Any,
        name: str,
        plan_factory: PlanFactory = default_plan,
    ) -> None:
        self.settings = settings
        self.meta = meta
        self.store = store
        self.name = name
        self.plan_factory = plan_factory
        self.interval_s = settings.sql_checkpoint_interval_ms / 1000
        self.generation = 0
        self.state = CheckpointState()
        self.plan: ContinuousPlan | None = None
        self.tails: dict[str, SourceTail] = {}
        self.view: ViewRows | None = None
        self.output: TopicInfo | None = None
        self.dead_letter: TopicInfo | None = None
        self.definition: QueryDefinition | None = None
        # since the last commit
        self.results: list[pa.RecordBatch] = []
        self.rejected: list[tuple[str, pa.RecordBatch]] = []
        self.rows_in = 0
        self.errors = 0
        self.last_error: str | None = None
        self.dirty = False
        self.late_seen = 0  # the plan's late-row count (since it was made) at the last commit
        self.last_commit = time.monotonic()
        self.last_progress = time.monotonic()
        self.progress_rows = (0, 0)
        self.prefetch: asyncio.Future[list[SourceRead]] | None = None
        # per source: partition -> time.monotonic() since it is caught up; the idle set told
        self.caught_up: dict[str, dict[int, float]] = {}
        self.idle_told: dict[str, frozenset[int]] = {}

    # -- start ----------------------------------------------------------------------------

    async def _definition(self) -> QueryDefinition | None:
        data = await self.meta.get_catalog_entry(QUERY_CATALOG_KIND, self.name)
        return None if data is None else decode_definition(data)

    async def _topic(self, name: str, what: str) -> TopicInfo:
        topic = await self.meta.get_topic(name)
        if topic is None:
            raise RunnerError(
                f"query {self.name}: {what} topic {name!r} does not exist: create it, or drop "
                "and re-create the query"
            )
        return topic

    async def start(self) -> bool:
        """Claims and restores the query; False when it is not defined (dropped)."""
        definition = await self._definition()
        if definition is None:
            return False
        self.definition = definition
        catalog = Catalog(self.meta)
        relations = {r.name: r for kind in KINDS for r in await catalog.list(kind)}
        topics = {t.name for t in await self.meta.list_topics()}
        try:
            plan = await asyncio.to_thread(self.plan_factory, definition, relations, topics)
        except ValueError as exc:  # PlanError: the query no longer plans
            raise RunnerError(f"query {self.name} does not plan: {exc}") from None
        self.plan = plan
        claim = await self.meta.claim_query(self.name, _now_ms())
        self.generation = claim.generation
        self.state = decode_checkpoint(claim.payload)
        if claim.step != self.state.step:
            self.state.step = claim.step
        if self.state.state_key is not None:
            snapshot = await load_state(self.store, self.state.state_key)
            await asyncio.to_thread(plan.restore, snapshot)
        if definition.kind == "view":
            self.view = ViewRows(plan.output_schema, tuple(plan.key_columns))
            if self.state.view_key is not None:
                data = await objectstore.get(self.store, self.state.view_key)
                self.view.table = read_view(data)
        if definition.output_topic:
            self.output = await self._topic(definition.output_topic, "output")
        dead = definition.options.get("dead_letter_topic")
        if dead:
            self.dead_letter = await self._topic(dead, "dead-letter")
        for source_name, source in plan.sources.items():
            topic = await self._topic(source.topic, f"source {source_name!r}:")
            self.tails[source_name] = SourceTail(
                self.meta,
                self.store,
                source,
                topic,
                self.state.positions.get(source_name, {}),
                max_inflated=self.settings.max_batch_bytes,
                timeout_s=self.settings.store_timeout_ms / 1000,
            )
        swept = await sweep(self.store, self.name, self.state.step, self._live_keys())
        log.info(
            "query %s claimed (generation %d) at step %d: %d sources, positions %s%s",
            self.name,
            self.generation,
            self.state.step,
            len(self.tails),
            {s: dict(t.positions) for s, t in self.tails.items()},
            f"; {swept} uncommitted checkpoint objects deleted" if swept else "",
        )
        return True

    def _live_keys(self) -> set[str]:
        return {k for k in (self.state.state_key, self.state.view_key) if k is not None}

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Runs until dropped (``EXIT_OK``), fenced (``EXIT_FENCED``) or ``stop`` is set."""
        stop = stop or asyncio.Event()
        try:
            if not await self.start():
                log.info("query %s is not defined (dropped): nothing to run", self.name)
                return EXIT_OK
            while not stop.is_set():
                await self.step(stop)
        except QueryFencedError as exc:
            log.warning("query %s: %s", self.name, exc)
            return EXIT_FENCED
        except _Dropped:
            log.info("query %s was dropped: the runner stops", self.name)
            return EXIT_OK
        finally:
            if self.prefetch is not None:
                self.prefetch.cancel()
        return EXIT_OK

    async def _read(self) -> list[SourceRead]:
        budget = max(1, self.settings.sql_max_step_bytes // max(1, len(self.tails)))
        return list(await asyncio.gather(*(t.read(budget) for t in self.tails.values())))

    async def step(self, stop: asyncio.Event | None = None) -> None:
        """Reads one step of every source and processes it; commits when due; waits for
        data when there is none."""
        assert self.plan is not None
        names = list(self.tails)
        pending, self.prefetch = self.prefetch, None
        reads = await (pending if pending is not None else self._read())
        if any(not r.empty for r in reads):
            for n, r in zip(names, reads, strict=True):
                self.tails[n].advance(r.positions)
            # the next step is read while this one is processed (positions moved already;
            # a checkpoint stores the tails' positions: those of what was processed)
            self.prefetch = asyncio.ensure_future(self._read())
            await asyncio.to_thread(self._process, names, reads)
            self.dirty = True
        elif self.dirty:
            due = self.last_commit + self.interval_s
            if time.monotonic() < due:
                await wait_for_data(list(self.tails.values()), due, stop)
        else:
            await self._check_owner()
            await wait_for_data(list(self.tails.values()), time.monotonic() + self.interval_s, stop)
        await self._mark_idle()
        if self.dirty and time.monotonic() - self.last_commit >= self.interval_s:
            await self.commit()
        self._progress()

    async def _mark_idle(self) -> None:
        """Tells the plan which partitions are idle: caught up (position at the high
        watermark last seen) for ``PARTITION_IDLE_S``. A plan without ``mark_idle`` (another
        ContinuousPlan) is not told."""
        plan = self.plan
        mark = getattr(plan, "mark_idle", None)
        if mark is None:
            return
        now = time.monotonic()
        for name, tail in self.tails.items():
            since = self.caught_up.setdefault(name, {})
            for p, st in tail.states.items():
                if tail.positions.get(p, 0) >= st.high_watermark:
                    since.setdefault(p, now)
                else:
                    since.pop(p, None)
            idle = frozenset(p for p, t in since.items() if now - t >= PARTITION_IDLE_S)
            if idle == self.idle_told.get(name, frozenset()):
                continue
            before = plan.watermark_ms()
            out = await asyncio.to_thread(mark, name, sorted(idle))
            self.idle_told[name] = idle
            self.results.extend(r for r in out if r.num_rows)
            if out or plan.watermark_ms() != before:
                self.dirty = True

    def _process(self, names: list[str], reads: list[Any]) -> None:
        """Decode and process one step (CPU; runs on a worker thread)."""
        assert self.plan is not None
        known = getattr(self.plan, "set_partitions", None)
        for n, read in zip(names, reads, strict=True):
            tail = self.tails[n]
            if known is not None:
                known(n, list(tail.states))
            if read.empty:
                continue
            decoded = tail.decode(read.raw)
            if decoded.errors:
                self.errors += decoded.errors
                self.last_error = (
                    f"{decoded.errors} records of {n} (topic {tail.topic.name}) did not match "
                    "its declared schema"
                )
                if decoded.rejected is not None:
                    self.rejected.append((tail.topic.name, decoded.rejected))
            self.rows_in += decoded.rows
            for batch in decoded.batches:
                self.results.extend(r for r in self.plan.process(n, batch) if r.num_rows)

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self.last_progress < PROGRESS_S:
            return
        rows_in, rows_out = self.state.rows_in, self.state.rows_out
        elapsed = now - self.last_progress
        log.info(
            "query %s: step %d, %.0f rows/s in, %.0f rows/s out, lag %d records, "
            "%d decode errors, watermark %s",
            self.name,
            self.state.step,
            (rows_in - self.progress_rows[0]) / elapsed,
            (rows_out - self.progress_rows[1]) / elapsed,
            sum(t.lag() for t in self.tails.values()),
            self.state.decode_errors,
            self.state.watermark_ms,
        )
        self.last_progress = now
        self.progress_rows = (rows_in, rows_out)

    # -- the commit -----------------------------------------------------------------------

    def _segment(self, now_ms: int, step: int) -> tuple[Any, int, int]:
        """The output segment (or None), rows written and records dead-lettered."""
        assert self.plan is not None
        parts: list[tuple[int, int, list[bytes]]] = []
        rows_out = 0
        if self.output is not None and self.results:
            records = output_records(
                self.results, self.plan.key_columns, self.plan.output_time_column, now_ms
            )
            if records is not None:
                rows_out = len(records)
                for partition, keys, values, ts in partition_records(
                    records, self.output.partitions, step
                ):
                    parts.append(
                        (self.output.topic_id, partition, encode_records(keys, values, ts))
                    )
        elif self.results:
            rows_out = sum(b.num_rows for b in self.results)
        dead = 0
        if self.dead_letter is not None and self.rejected:
            letters = [DeadLetters(topic, raw) for topic, raw in self.rejected]
            dead = sum(r.num_rows for _t, r in self.rejected)
            parts.append(
                (
                    self.dead_letter.topic_id,
                    step % max(1, self.dead_letter.partitions),
                    dead_letter_batches(letters, DEAD_LETTER_ERROR),
                )
            )
        return build_segment(parts), rows_out, dead

    async def commit(self) -> None:
        """Rule 4 of the module docstring; raises QueryFencedError, _Dropped, RunnerError."""
        assert self.plan is not None
        if await self._definition() is None:
            raise _Dropped
        plan = self.plan
        step = self.state.step + 1
        now_ms = _now_ms()
        segment, rows_out, dead = await asyncio.to_thread(self._segment, now_ms, step)
        snapshot = await asyncio.to_thread(plan.snapshot)
        view_data = None
        if self.view is not None:
            await asyncio.to_thread(self.view.apply, self.results)
            view_data = await asyncio.to_thread(view_bytes, self.view.table)
        elapsed = max(1e-3, time.monotonic() - self.last_commit)
        stats = plan.stats()
        old = self.state
        state = CheckpointState(
            step=step,
            positions={n: dict(t.positions) for n, t in self.tails.items()},
            watermark_ms=plan.watermark_ms(),
            rows_in=old.rows_in + self.rows_in,
            rows_out=old.rows_out + rows_out,
            decode_errors=old.decode_errors + self.errors,
            late_rows_dropped=old.late_rows_dropped + stats.late_rows_dropped - self.late_seen,
            dead_lettered=old.dead_lettered + dead,
            rows_in_per_s=self.rows_in / elapsed,
            rows_out_per_s=rows_out / elapsed,
            updated_ms=now_ms,
            last_error=self.last_error or old.last_error,
        )
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            written: list[str] = []
            seg_arg = None
            try:
                state.state_key = state_key(self.name, step)
                objects = [(state.state_key, snapshot)]
                if view_data is not None:
                    state.view_key = view_key(self.name, step)
                    objects.append((state.view_key, view_data))
                if segment is not None:
                    key = new_segment_key()
                    seg_arg = (key, len(segment.data), segment.blocks)
                    objects.append((key, segment.data))
                written = [k for k, _data in objects]
                await asyncio.wait_for(
                    asyncio.gather(*(objectstore.put(self.store, k, d) for k, d in objects)),
                    self.settings.store_timeout_ms / 1000,
                )
                await self.meta.commit_query_step(
                    self.name, self.generation, step, encode_checkpoint(state), seg_arg, now_ms
                )
            except QueryFencedError:
                await delete_objects(self.store, written)
                raise
            except Exception as exc:  # a store or metadata failure: did the commit happen?
                if await self._committed(step):
                    break
                await delete_objects(self.store, written)
                if attempt == COMMIT_ATTEMPTS or isinstance(exc, UnknownTopicError):
                    raise RunnerError(
                        f"query {self.name}: checkpoint {step} could not be committed ({exc}); "
                        "the runner stops and restarts from its last checkpoint"
                    ) from exc
                log.warning(
                    "query %s: checkpoint %d failed (attempt %d of %d): %s",
                    self.name,
                    step,
                    attempt,
                    COMMIT_ATTEMPTS,
                    exc,
                )
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
                continue
            break
        await delete_objects(self.store, sorted(self._live_keys() - _keys(state)))
        self.state = state
        self.late_seen = stats.late_rows_dropped
        self.results = []
        self.rejected = []
        self.rows_in = 0
        self.errors = 0
        self.dirty = False
        self.last_commit = time.monotonic()
        log.debug("query %s: checkpoint %d committed (%d rows out)", self.name, step, rows_out)
        if step % SWEEP_EVERY == 0:
            await sweep(self.store, self.name, step, self._live_keys())

    async def _check_owner(self) -> None:
        """An idle runner's check (once per interval) that the query is still defined
        (else _Dropped) and still its own (else QueryFencedError)."""
        if await self._definition() is None:
            raise _Dropped
        row = await self.meta.get_query_checkpoint(self.name)
        if row is None or row.generation != self.generation:
            raise QueryFencedError(
                f"query {self.name} was claimed by a newer runner (generation "
                f"{'none' if row is None else row.generation}); this runner must stop"
            )

    async def _committed(self, step: int) -> bool:
        """After a failed commit: True when the store shows it happened anyway; raises
        QueryFencedError when the query moved on without this runner."""
        try:
            row = await self.meta.get_query_checkpoint(self.name)
        except MetadataError:
            return False
        if row is None:
            raise _Dropped
        if row.generation != self.generation:
            raise QueryFencedError(
                f"query {self.name} was claimed by a newer runner (generation "
                f"{row.generation}); this runner must stop"
            )
        return row.step == step


def _keys(state: CheckpointState) -> set[str]:
    return {k for k in (state.state_key, state.view_key) if k is not None}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
