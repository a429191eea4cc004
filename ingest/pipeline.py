"""Ingest's side of the rings: sends produce and fetch frames, waits for acks and responses.

Rules:
- Every produce frame and fetch request carries a request id unique to this ingest run; an
  ack or response for an unknown id (sent to an earlier ingest) is ignored.
- A produce is answered only from its ack, which the uploader sends after the durable commit
  or after deciding, for certain, not to commit (see "Produce deadlines").
- Nothing is sent that could not be acknowledged: before any frame of a produce goes out,
  each slot is checked against `max_batches_per_partition` and against the worst-case size
  of its produce frame and of a sealed segment holding it; a slot that does not fit fails
  with RECORD_LIST_TOO_LARGE, and a request over `max_partitions_per_request` fails whole
  with INVALID_REQUEST. A fetch over the partition limit is refused the same way.
- When a downstream process restarts (its ring epoch changes) every request waiting on it is
  failed with a retriable error at once: whatever it held was never acknowledged.
- No frame can stop ingest: an ack or response that does not decode or does not add up is
  logged in one line and fails the request it names (if any can be read); the rest time out.
- Produce deadlines: a produce has a budget (``produce_timeout_ms``, or the Kafka request's
  own ``timeout_ms`` when that is shorter, never under MIN_BUDGET_S). Ingest answers by the
  end of the budget; the uploader must have its definite outcome some grace (see
  :func:`commit_grace`) before that, so it commits a batch only before the batch's *commit
  deadline* and refuses afterwards (nothing written; a retriable error that Kafka clients
  treat as "not persisted"). An answer that says "timed out" is therefore given only when
  the outcome is genuinely unknown (the uploader lost a COMMIT and could not learn its fate,
  or a downstream process restarted), never while the batch may still be committed later.
- Request id format (ProduceFrame.request_id, carried through SealedBatch to AckResult): bits
  63..24 the commit deadline in milliseconds of CLOCK_MONOTONIC (shared by every process on
  the host: the agent's ingest and uploader always run on one host), bits 23..0 a counter
  that starts at a random value per ingest run (`streamhouse.frames.make_request_id`;
  `streamhouse.frames.commit_deadline` reads it back). Fetch
  ids have the same shape (their deadline field is unused).
- The ring loops and the watchdog are spawned through `streamhouse.process.spawn`: if one
  dies the process exits and supervisord restarts it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from metadata.async_store import AsyncMetadata
from streamhouse import metrics, rings
from streamhouse.config import Settings
from streamhouse.errors import ErrorCode, StreamHouseError, from_ring
from streamhouse.frames import (
    ALL_BATCHES,
    SEALED_PER_SEGMENT,
    AckFrame,
    BatchMeta,
    FetchRequest,
    FetchResponse,
    FrameError,
    ProduceFrame,
    check_fetch_response,
    decoder_for,
    header_encoder,
    make_request_id,
    max_frame_size,
    salvage_ids,
    sealed_cost,
)
from streamhouse.process import spawn
from streamhouse.ring import RingTimeout

log = logging.getLogger("ingest.pipeline")

# How often ingest looks at the ring epochs to notice a restarted peer.
WATCHDOG_INTERVAL_S = 0.25


#: The shortest produce budget used, whatever the Kafka request's timeout_ms says.
MIN_BUDGET_S = 1.0


def commit_grace(budget_s: float) -> float:
    """Seconds between a batch's commit deadline and ingest's answer: room for the ack to
    travel and for the metadata store to learn the fate of a COMMIT lost on the wire (at
    least a second past its busy timeout, see metadata/postgres.py rule 4)."""
    return min(max(budget_s / 4, 0.25), 2.5)


class PipelineUnavailable(StreamHouseError):
    """The pipeline could not take or finish the request; retrying is safe and useful.

    ``REQUEST_TIMED_OUT`` (the default) when the data may still have been written; a caller
    that knows nothing was written passes ``NOT_ENOUGH_REPLICAS``, which Kafka clients treat
    as "not persisted" (an idempotent producer then retries without fencing itself)."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.REQUEST_TIMED_OUT) -> None:
        super().__init__(code, message)


class BatchOutcome(NamedTuple):
    """One produced batch's outcome: its first offset, or an error (base_offset -1)."""

    base_offset: int
    error: StreamHouseError | None


@dataclass
class _PendingProduce:
    future: asyncio.Future[None]
    results: list[list[BatchOutcome | None]]
    remaining: int
    # The segmenter's and the uploader's epochs before the first frame was written: a restart
    # of either after that may have lost the request (the watchdog fails it), one before not.
    epochs: tuple[int, int] = (0, 0)


@dataclass
class _PendingFetch:
    future: asyncio.Future[tuple[FetchResponse, bytes]]
    parts: int
    # The reader's epochs (its fetch-request and fetch-response ends) before the request was
    # written, as for produces.
    epochs: tuple[int, int] = (0, 0)


@dataclass
class ProduceSlot:
    """One partition's part of a produce request: its frame header and batch bytes."""

    topic_id: int
    partition: int
    batches: list[BatchMeta]
    batch_lengths: list[int]
    payload: bytes | memoryview


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.produce_ring = rings.open_writer(settings, rings.PRODUCE)
        self.ack_ring = rings.open_reader(settings, rings.ACK)
        self.fetch_ring = rings.open_writer(settings, rings.FETCH_REQUEST)
        self.response_ring = rings.open_reader(settings, rings.FETCH_RESPONSE)
        self._sealed_max = max_frame_size(rings.capacity(settings, rings.SEALED))
        self._counter = itertools.count(int.from_bytes(os.urandom(3), "big"))
        self._produces: dict[int, _PendingProduce] = {}
        self._fetches: dict[int, _PendingFetch] = {}
        self._epochs = self._peer_epochs()
        self._tasks: list[asyncio.Task[None]] = []
        self._decode_ack = decoder_for(AckFrame).decode
        self._decode_response = decoder_for(FetchResponse).decode
        # Topic id -> name for metric labels. Callers that resolved a topic fill it
        # (`name_topic`); counts of an id not named yet wait in `_unnamed` until the namer
        # task (started by `use_metadata`) looked the ids up off the loop.
        self.topic_names: dict[int, str] = {}
        self._unnamed: dict[int, list[int]] = {}  # id -> [produced rec, bytes, fetched rec, bytes]
        self._name_wanted = asyncio.Event()
        self._meta: AsyncMetadata | None = None

    def name_topic(self, topic_id: int, name: str) -> None:
        """Records a topic's name for the per-topic metrics (one dict store)."""
        self.topic_names[topic_id] = name

    def use_metadata(self, meta: AsyncMetadata) -> None:
        """Names topics of the per-topic metrics from metadata (a task, off the loop)."""
        if self._meta is None:
            self._meta = meta
            self._tasks.append(spawn(self._name_topics(), "metrics topic namer"))

    def _count_topic(self, topic_id: int, at: int, records: int, size: int) -> None:
        name = self.topic_names.get(topic_id)
        if name is None:
            pending = self._unnamed.setdefault(topic_id, [0, 0, 0, 0])
            pending[at] += records
            pending[at + 1] += size
            self._name_wanted.set()
            return
        if at == 0:
            metrics.child(metrics.PRODUCE_RECORDS, name).inc(records)
            metrics.child(metrics.PRODUCE_BYTES, name).inc(size)
        else:
            metrics.child(metrics.FETCH_RECORDS, name).inc(records)
            metrics.child(metrics.FETCH_BYTES, name).inc(size)

    async def _name_topics(self) -> None:
        assert self._meta is not None
        while True:
            await self._name_wanted.wait()
            self._name_wanted.clear()
            ids = [i for i in self._unnamed if i not in self.topic_names]
            try:
                found = await self._meta.topics_by_id(ids) if ids else {}
            except Exception as exc:  # metadata down: keep the counts, try again later
                log.warning("metrics: cannot name topics %s (%s); retrying in 5 s", ids, exc)
                self._name_wanted.set()
                await asyncio.sleep(5)
                continue
            for topic_id in ids:
                info = found.get(topic_id)
                # A topic deleted meanwhile keeps its id as the label.
                self.topic_names[topic_id] = info.name if info is not None else f"id:{topic_id}"
            pending, self._unnamed = self._unnamed, {}
            for topic_id, (p_rec, p_bytes, f_rec, f_bytes) in pending.items():
                if p_rec or p_bytes:
                    self._count_topic(topic_id, 0, p_rec, p_bytes)
                if f_rec or f_bytes:
                    self._count_topic(topic_id, 2, f_rec, f_bytes)

    def _count_produced(
        self, slots: list[ProduceSlot], results: list[list[BatchOutcome]], protocol: str
    ) -> None:
        """Per request: acknowledged records and bytes per topic (batch counts, not records),
        and refused batches by error code."""
        records: dict[int, int] = {}
        sizes: dict[int, int] = {}
        for slot, outcomes in zip(slots, results, strict=False):
            for meta, length, outcome in zip(
                slot.batches, slot.batch_lengths, outcomes, strict=False
            ):
                if outcome is not None and outcome.error is None:
                    records[slot.topic_id] = records.get(slot.topic_id, 0) + meta.record_count
                    sizes[slot.topic_id] = sizes.get(slot.topic_id, 0) + length
                elif outcome is not None and outcome.error is not None:
                    metrics.child(metrics.ERRORS, protocol, outcome.error.code.name).inc()
        for topic_id, count in records.items():
            self._count_topic(topic_id, 0, count, sizes[topic_id])

    def _count_fetched(self, response: FetchResponse) -> None:
        records: dict[int, int] = {}
        sizes: dict[int, int] = {}
        for part in response.parts:
            if part.record_count:
                records[part.topic_id] = records.get(part.topic_id, 0) + part.record_count
                sizes[part.topic_id] = sizes.get(part.topic_id, 0) + part.length
        for topic_id, count in records.items():
            self._count_topic(topic_id, 2, count, sizes[topic_id])

    def _peer_epochs(self) -> tuple[int, int, int, int]:
        return (
            self.produce_ring.peer_epoch(),
            self.ack_ring.peer_epoch(),
            self.fetch_ring.peer_epoch(),
            self.response_ring.peer_epoch(),
        )

    def start(self) -> None:
        self._tasks += [
            spawn(self._take_acks(), "ack-ring intake"),
            spawn(self._take_responses(), "fetch-response intake"),
            spawn(self._watch_peers(), "peer watchdog"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._fail_produces("ingest is shutting down")
        self._fail_fetches("ingest is shutting down")
        self.produce_ring.close()
        self.ack_ring.close()
        self.fetch_ring.close()
        self.response_ring.close()

    # -- produce ---------------------------------------------------------------------------

    def refuse_slot(self, slot: ProduceSlot, header: bytes) -> StreamHouseError | None:
        """Why this slot cannot be sent (its frame or its segment would not fit), or None."""
        n = len(slot.batches)
        limit = self.settings.max_batches_per_partition
        if n > limit:
            return StreamHouseError(
                ErrorCode.RECORD_LIST_TOO_LARGE,
                f"{n} batches for one partition in one request, over the limit of {limit} "
                "(max_batches_per_partition); send fewer, larger batches",
            )
        if n != len(slot.batch_lengths) or sum(slot.batch_lengths) != len(slot.payload):
            return StreamHouseError(
                ErrorCode.CORRUPT_MESSAGE, "batch lengths do not add up to the partition's data"
            )
        size = len(header) + len(slot.payload)
        worst = SEALED_PER_SEGMENT + sealed_cost(n, len(slot.payload))
        room = min(self.produce_ring.max_frame_size, self._sealed_max)
        if size > self.produce_ring.max_frame_size or worst > self._sealed_max:
            return StreamHouseError(
                ErrorCode.RECORD_LIST_TOO_LARGE,
                f"{len(slot.payload)} bytes in {n} batches for one partition in one request "
                f"do not fit the pipeline (at most about {room} bytes including per-batch "
                "overhead); send less per request",
            )
        return None

    def _next_id(self, deadline: float) -> int:
        return make_request_id(deadline, next(self._counter))

    def budget(self, timeout_ms: int | None = None) -> float:
        """Seconds a produce may take: ``produce_timeout_ms``, or the request's own timeout
        when that is shorter (but at least MIN_BUDGET_S)."""
        budget = self.settings.produce_timeout_ms / 1000
        if timeout_ms is not None and timeout_ms > 0:
            budget = min(budget, max(timeout_ms / 1000, MIN_BUDGET_S))
        return budget

    async def produce(
        self, slots: list[ProduceSlot], timeout_ms: int | None = None, protocol: str = "kafka"
    ) -> list[list[BatchOutcome]]:
        """Sends the slots (counted in the produce metrics, latency from here to the
        outcome) and waits for their definite outcome: per slot, per batch, its base
        offset or its error. Slots that could not fit are refused without being sent (see the
        module rules); a slot the saturated produce ring did not take in time fails with
        NOT_ENOUGH_REPLICAS (not written). Raises PipelineUnavailable (REQUEST_TIMED_OUT)
        only when the outcome is unknown at the end of the budget (see "Produce deadlines";
        ``timeout_ms`` is the Kafka request's own timeout, if any)."""
        started = time.perf_counter()
        result = "ok"
        try:
            results = await self._produce(slots, timeout_ms)
        except StreamHouseError as exc:
            result = exc.code.name
            raise
        finally:
            metrics.child(metrics.PRODUCE_REQUESTS, protocol, result).inc()
            metrics.child(metrics.PRODUCE_LATENCY, protocol).observe(time.perf_counter() - started)
        self._count_produced(slots, results, protocol)
        return results

    async def _produce(
        self, slots: list[ProduceSlot], timeout_ms: int | None
    ) -> list[list[BatchOutcome]]:
        limit = self.settings.max_partitions_per_request
        if len(slots) > limit:
            error = StreamHouseError(
                ErrorCode.INVALID_REQUEST,
                f"the request writes {len(slots)} partitions, over the limit of {limit} "
                "(max_partitions_per_request); split it",
            )
            return [[BatchOutcome(-1, error)] * len(s.batch_lengths) for s in slots]
        admitted_ns = time.monotonic_ns()  # the ring-wait metric's start (frames.py)
        budget = self.budget(timeout_ms)
        answer_by = time.monotonic() + budget
        commit_by = answer_by - commit_grace(budget)
        request_id = self._next_id(commit_by)
        loop = asyncio.get_running_loop()
        results: list[list[BatchOutcome | None]] = []
        frames: list[tuple[bytes, ProduceSlot, int]] = []
        sent: list[ProduceFrame] = []
        for slot_index, slot in enumerate(slots):
            frame = ProduceFrame(
                request_id,
                slot_index,
                slot.topic_id,
                slot.partition,
                slot.batches,
                slot.batch_lengths,
                admitted_ns,
                len(slots) - 1 - slot_index,  # frames that follow (ProduceFrame.following)
            )
            header = header_encoder.encode(frame)
            refused = self.refuse_slot(slot, header)
            if refused is not None:
                log.info(
                    "refused a produce to topic id %d partition %d: %s",
                    slot.topic_id,
                    slot.partition,
                    refused.message,
                )
                results.append([BatchOutcome(-1, refused)] * max(len(slot.batch_lengths), 1))
            else:
                results.append([None] * len(slot.batch_lengths))
                frames.append((header, slot, slot_index))
                sent.append(frame)
        if len(frames) < len(slots):
            # Refused slots are not sent: `following` counts the frames that are (the header
            # only gets shorter, so it still fits where it was checked).
            last = len(frames) - 1
            frames = [
                (header_encoder.encode(msgspec.structs.replace(f, following=last - i)), slot, at)
                for i, (f, (_, slot, at)) in enumerate(zip(sent, frames, strict=True))
            ]
        remaining = sum(r.count(None) for r in results)
        epochs = (self.produce_ring.peer_epoch(), self.ack_ring.peer_epoch())
        pending = _PendingProduce(loop.create_future(), results, remaining, epochs)
        if remaining == 0:
            return results  # type: ignore[return-value]
        self._produces[request_id] = pending
        try:
            for position, (header, slot, _) in enumerate(frames):
                try:
                    # write() keeps call order across tasks, which keeps a connection's
                    # pipelined produces (and their sequence numbers) in order.
                    await self.produce_ring.write(
                        header, slot.payload, timeout=max(commit_by - time.monotonic(), 0.001)
                    )
                except RingTimeout:
                    # These slots were never sent: certainly not written.
                    self._not_sent(pending, [index for _, _, index in frames[position:]])
                    break
            if not pending.future.done():
                try:
                    await asyncio.wait_for(
                        asyncio.shield(pending.future), max(answer_by - time.monotonic(), 0)
                    )
                except TimeoutError:
                    log.warning(
                        "produce %d: no outcome from the uploader within %.1f s; answering "
                        "that the outcome is unknown",
                        request_id,
                        budget,
                    )
                    raise PipelineUnavailable(
                        f"no outcome within {budget * 1000:.0f} ms: the data may or may not "
                        "have been written (is the metadata store or the object store "
                        "reachable?); retry"
                    ) from None
            return results  # type: ignore[return-value]
        finally:
            self._produces.pop(request_id, None)

    def _not_sent(self, pending: _PendingProduce, slot_indices: list[int]) -> None:
        error = StreamHouseError(
            ErrorCode.NOT_ENOUGH_REPLICAS,
            "the produce pipeline is saturated and did not take the data in time; nothing "
            "was written; retry with backoff",
        )
        for index in slot_indices:
            slot_results = pending.results[index]
            for ordinal, outcome in enumerate(slot_results):
                if outcome is None:
                    pending.remaining -= 1
                    slot_results[ordinal] = BatchOutcome(-1, error)
        if pending.remaining == 0 and not pending.future.done():
            pending.future.set_result(None)

    def on_ack(self, header: bytes) -> None:
        """Applies one AckFrame (sans-I/O: the ack-ring loop calls it per frame)."""
        try:
            ack = self._decode_ack(header)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("dropped an ack frame that does not decode (%s); its produces time out", exc)
            return
        bad = 0
        for result in ack.results:
            pending = self._produces.get(result.request_id)
            if pending is None or pending.future.done():
                continue
            if not 0 <= result.slot < len(pending.results):
                bad += 1
                continue
            slot_results = pending.results[result.slot]
            outcome = BatchOutcome(result.base_offset, from_ring(result.error))
            if result.ordinal == ALL_BATCHES:
                ordinals: range = range(len(slot_results))
            elif 0 <= result.ordinal < len(slot_results):
                ordinals = range(result.ordinal, result.ordinal + 1)
            else:
                bad += 1
                continue
            for ordinal in ordinals:
                if slot_results[ordinal] is None:
                    pending.remaining -= 1
                slot_results[ordinal] = outcome
            if pending.remaining == 0:
                pending.future.set_result(None)
        if bad:
            log.error("ignored %d ack results naming a slot or batch no request has", bad)

    async def _take_acks(self) -> None:
        async for header, _ in self.ack_ring:
            self.on_ack(header)

    # -- fetch -----------------------------------------------------------------------------

    async def fetch(
        self, request: FetchRequest, protocol: str = "kafka"
    ) -> tuple[FetchResponse, bytes]:
        """Sends a fetch to the reader (its request_id is replaced) and waits for the answer
        (counted in the fetch metrics).

        Raises StreamHouseError when the fetch is refused (too many partitions, or the
        reader refused it) and PipelineUnavailable when the reader is saturated or slow.
        """
        result = "ok"
        try:
            response, payload = await self._fetch(request)
        except StreamHouseError as exc:
            result = exc.code.name
            metrics.child(metrics.ERRORS, protocol, result).inc()
            raise
        finally:
            metrics.child(metrics.FETCH_REQUESTS, protocol, result).inc()
        self._count_fetched(response)
        return response, payload

    async def _fetch(self, request: FetchRequest) -> tuple[FetchResponse, bytes]:
        limit = self.settings.max_partitions_per_request
        if len(request.parts) > limit:
            raise StreamHouseError(
                ErrorCode.INVALID_REQUEST,
                f"the fetch reads {len(request.parts)} partitions, over the limit of {limit} "
                "(max_partitions_per_request); split it",
            )
        request_id = self._next_id(time.monotonic())
        request = msgspec.structs.replace(request, request_id=request_id)
        wait_ms = request.max_wait_ms
        header = header_encoder.encode(request)
        if len(header) > self.fetch_ring.max_frame_size:
            raise StreamHouseError(
                ErrorCode.INVALID_REQUEST,
                f"the fetch request is {len(header)} bytes, more than the fetch-request ring "
                f"takes ({self.fetch_ring.max_frame_size}); fetch fewer partitions at once",
            )
        future: asyncio.Future[tuple[FetchResponse, bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        epochs = (self.fetch_ring.peer_epoch(), self.response_ring.peer_epoch())
        self._fetches[request_id] = _PendingFetch(future, len(request.parts), epochs)
        try:
            try:
                await self.fetch_ring.write(header, timeout=10)
            except RingTimeout as exc:
                raise PipelineUnavailable("the reader is saturated; retry") from exc
            try:
                response, payload = await asyncio.wait_for(
                    asyncio.shield(future), wait_ms / 1000 + 30
                )
            except TimeoutError:
                raise PipelineUnavailable("the reader did not answer in time; retry") from None
            error = from_ring(response.error)
            if error is not None:
                raise error
            return response, payload
        finally:
            self._fetches.pop(request_id, None)

    def on_response(self, header: bytes, payload: bytes) -> None:
        """Applies one FetchResponse frame (sans-I/O: the response-ring loop calls it)."""
        try:
            response = self._decode_response(header)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            ids = salvage_ids(header, 1)
            pending = self._fetches.get(ids[0]) if ids is not None else None
            log.error("a fetch response does not decode: %s", exc)
            if pending is not None and not pending.future.done():
                pending.future.set_exception(
                    PipelineUnavailable(f"the reader's response did not decode ({exc}); retry")
                )
            return
        pending = self._fetches.get(response.request_id)
        if pending is None or pending.future.done():
            return
        try:
            check_fetch_response(response, pending.parts, len(payload))
        except FrameError as exc:
            log.error("fetch %d: the response does not add up: %s", response.request_id, exc)
            pending.future.set_exception(
                PipelineUnavailable(f"the reader's response does not add up ({exc}); retry")
            )
            return
        pending.future.set_result((response, payload))

    async def _take_responses(self) -> None:
        async for header, payload in self.response_ring:
            self.on_response(header, payload)

    # -- restarts ----------------------------------------------------------------------------

    async def _watch_peers(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            self.check_peers()

    def check_peers(self) -> None:
        """Fails the requests a restarted (or first attached) peer may have lost: those
        written before its epoch changed. Requests written after it are its own and wait for
        their answers (at start-up a peer attaching after ingest fails nothing sent since)."""
        epochs = self._peer_epochs()
        segmenter, uploader, reader_in, reader_out = epochs
        old = self._epochs
        self._epochs = epochs
        if segmenter != old[0] or uploader != old[1]:
            who = "segmenter" if segmenter != old[0] else "uploader"
            failed = self._fail_produces(
                f"the {who} restarted before the data was durable; retry", (segmenter, uploader)
            )
            log.warning("the %s restarted; failing %d pending produces", who, failed)
        if reader_in != old[2] or reader_out != old[3]:
            failed = self._fail_fetches("the reader restarted; retry", (reader_in, reader_out))
            log.warning("the reader restarted; failing %d pending fetches", failed)

    def _fail_produces(self, why: str, unless_epochs: tuple[int, int] | None = None) -> int:
        """Fails the pending produces (only those sent before `unless_epochs`, if given)."""
        return _fail_pending(self._produces.values(), why, unless_epochs)

    def _fail_fetches(self, why: str, unless_epochs: tuple[int, int] | None = None) -> int:
        """Fails the pending fetches (only those sent before `unless_epochs`, if given)."""
        return _fail_pending(self._fetches.values(), why, unless_epochs)


def _fail_pending(
    pending: Iterable[_PendingProduce | _PendingFetch],
    why: str,
    unless_epochs: tuple[int, int] | None,
) -> int:
    """Fails each unanswered request not sent under `unless_epochs`; returns how many."""
    failed = 0
    for request in pending:
        if not request.future.done() and request.epochs != unless_epochs:
            request.future.set_exception(PipelineUnavailable(why))
            failed += 1
    return failed
