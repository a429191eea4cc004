"""Ingest's side of the rings: sends produce and fetch frames, waits for acks and responses.

Rules:
- Every produce frame and fetch request carries a request id unique to this ingest run; an
  ack or response for an unknown id (sent to an earlier ingest) is ignored.
- A produce is answered only from its ack, which the uploader sends after the durable commit.
- Nothing is sent that could not be acknowledged: before any frame of a produce goes out,
  each slot is checked against `max_batches_per_partition` and against the worst-case size
  of its produce frame and of a sealed segment holding it; a slot that does not fit fails
  with RECORD_LIST_TOO_LARGE, and a request over `max_partitions_per_request` fails whole
  with INVALID_REQUEST. A fetch over the partition limit is refused the same way.
- When a downstream process restarts (its ring epoch changes) every request waiting on it is
  failed with a retriable error at once: whatever it held was never acknowledged.
- No frame can stop ingest: an ack or response that does not decode or does not add up is
  logged in one line and fails the request it names (if any can be read); the rest time out.
- The ring loops and the watchdog are spawned through `streamhouse.process.spawn`: if one
  dies the process exits and supervisord restarts it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from streamhouse import rings
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
    max_frame_size,
    salvage_ids,
    sealed_cost,
)
from streamhouse.process import spawn
from streamhouse.ring import RingTimeout

log = logging.getLogger("ingest.pipeline")

# How often ingest looks at the ring epochs to notice a restarted peer.
WATCHDOG_INTERVAL_S = 0.25


class PipelineUnavailable(StreamHouseError):
    """The pipeline could not take or finish the request; retrying is safe and useful."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.REQUEST_TIMED_OUT, message)


class BatchOutcome(NamedTuple):
    """One produced batch's outcome: its first offset, or an error (base_offset -1)."""

    base_offset: int
    error: StreamHouseError | None


@dataclass
class _PendingProduce:
    future: asyncio.Future[None]
    results: list[list[BatchOutcome | None]]
    remaining: int


@dataclass
class _PendingFetch:
    future: asyncio.Future[tuple[FetchResponse, bytes]]
    parts: int


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
        self._ids = itertools.count(int.from_bytes(os.urandom(5), "big") << 20)
        self._produces: dict[int, _PendingProduce] = {}
        self._fetches: dict[int, _PendingFetch] = {}
        self._epochs = self._peer_epochs()
        self._tasks: list[asyncio.Task[None]] = []
        self._decode_ack = decoder_for(AckFrame).decode
        self._decode_response = decoder_for(FetchResponse).decode

    def _peer_epochs(self) -> tuple[int, int, int, int]:
        return (
            self.produce_ring.peer_epoch(),
            self.ack_ring.peer_epoch(),
            self.fetch_ring.peer_epoch(),
            self.response_ring.peer_epoch(),
        )

    def start(self) -> None:
        self._tasks = [
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

    async def produce(self, slots: list[ProduceSlot]) -> list[list[BatchOutcome]]:
        """Sends the slots and waits for their durable commit: per slot, per batch, its base
        offset or its error. Slots that could not fit are refused without being sent (see the
        module rules); raises PipelineUnavailable when the pipeline is saturated or slow."""
        limit = self.settings.max_partitions_per_request
        if len(slots) > limit:
            error = StreamHouseError(
                ErrorCode.INVALID_REQUEST,
                f"the request writes {len(slots)} partitions, over the limit of {limit} "
                "(max_partitions_per_request); split it",
            )
            return [[BatchOutcome(-1, error)] * len(s.batch_lengths) for s in slots]
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        results: list[list[BatchOutcome | None]] = []
        frames: list[tuple[bytes, ProduceSlot]] = []
        for slot_index, slot in enumerate(slots):
            frame = ProduceFrame(
                request_id,
                slot_index,
                slot.topic_id,
                slot.partition,
                slot.batches,
                slot.batch_lengths,
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
                frames.append((header, slot))
        remaining = sum(r.count(None) for r in results)
        pending = _PendingProduce(loop.create_future(), results, remaining)
        if remaining == 0:
            return results  # type: ignore[return-value]
        self._produces[request_id] = pending
        timeout = self.settings.produce_timeout_ms / 1000
        try:
            for header, slot in frames:
                try:
                    # write() keeps call order across tasks, which keeps a connection's
                    # pipelined produces (and their sequence numbers) in order.
                    await self.produce_ring.write(header, slot.payload, timeout=timeout)
                except RingTimeout as exc:
                    raise PipelineUnavailable(
                        "the produce pipeline is saturated; retry with backoff"
                    ) from exc
            try:
                await asyncio.wait_for(asyncio.shield(pending.future), timeout)
            except TimeoutError:
                raise PipelineUnavailable(
                    f"no durable commit within {self.settings.produce_timeout_ms} ms "
                    "(is the object store reachable?); retry"
                ) from None
            return results  # type: ignore[return-value]
        finally:
            self._produces.pop(request_id, None)

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

    async def fetch(self, request: FetchRequest) -> tuple[FetchResponse, bytes]:
        """Sends a fetch to the reader (its request_id is replaced) and waits for the answer.

        Raises StreamHouseError when the fetch is refused (too many partitions, or the
        reader refused it) and PipelineUnavailable when the reader is saturated or slow.
        """
        limit = self.settings.max_partitions_per_request
        if len(request.parts) > limit:
            raise StreamHouseError(
                ErrorCode.INVALID_REQUEST,
                f"the fetch reads {len(request.parts)} partitions, over the limit of {limit} "
                "(max_partitions_per_request); split it",
            )
        request_id = next(self._ids)
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
        self._fetches[request_id] = _PendingFetch(future, len(request.parts))
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
            epochs = self._peer_epochs()
            segmenter, uploader, reader_in, reader_out = epochs
            old = self._epochs
            self._epochs = epochs
            if segmenter != old[0] or uploader != old[1]:
                who = "segmenter" if segmenter != old[0] else "uploader"
                log.warning(
                    "the %s restarted; failing %d pending produces", who, len(self._produces)
                )
                self._fail_produces(f"the {who} restarted before the data was durable; retry")
            if reader_in != old[2] or reader_out != old[3]:
                log.warning("the reader restarted; failing %d pending fetches", len(self._fetches))
                self._fail_fetches("the reader restarted; retry")

    def _fail_produces(self, why: str) -> None:
        for pending in self._produces.values():
            if not pending.future.done():
                pending.future.set_exception(PipelineUnavailable(why))

    def _fail_fetches(self, why: str) -> None:
        for pending in self._fetches.values():
            if not pending.future.done():
                pending.future.set_exception(PipelineUnavailable(why))
