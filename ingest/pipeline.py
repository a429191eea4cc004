"""Ingest's side of the rings: sends produce and fetch frames, waits for acks and responses.

Rules:
- Every produce frame and fetch request carries a request id unique to this ingest run; an
  ack or response for an unknown id (sent to an earlier ingest) is ignored.
- A produce is answered only from its ack, which the uploader sends after the durable commit.
- When a downstream process restarts (its ring epoch changes) every request waiting on it is
  failed with a retriable error at once: whatever it held was never acknowledged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass

import msgspec

from streamhouse import rings
from streamhouse.config import Settings
from streamhouse.frames import (
    AckFrame,
    FetchRequest,
    FetchResponse,
    ProduceFrame,
    decoder_for,
    header_encoder,
)
from streamhouse.ring import RingTimeout

log = logging.getLogger("ingest.pipeline")

# How often ingest looks at the ring epochs to notice a restarted peer.
WATCHDOG_INTERVAL_S = 0.25


class PipelineUnavailable(Exception):
    """The pipeline could not take or finish the request; retrying is safe and useful."""


@dataclass
class _PendingProduce:
    future: asyncio.Future[list[list[tuple[int, str]]]]
    results: list[list[tuple[int, str] | None]]
    remaining: int


@dataclass
class ProduceSlot:
    """One partition's part of a produce request: its frame header and batch bytes."""

    topic_id: int
    partition: int
    batches: list[tuple[int, int, int, int, int, int]]  # see ProduceFrame.batches
    batch_lengths: list[int]
    payload: bytes | memoryview


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.produce_ring = rings.open_writer(settings, rings.PRODUCE)
        self.ack_ring = rings.open_reader(settings, rings.ACK)
        self.fetch_ring = rings.open_writer(settings, rings.FETCH_REQUEST)
        self.response_ring = rings.open_reader(settings, rings.FETCH_RESPONSE)
        self._ids = itertools.count(int.from_bytes(os.urandom(5), "big") << 20)
        self._produces: dict[int, _PendingProduce] = {}
        self._fetches: dict[int, asyncio.Future[tuple[FetchResponse, bytes]]] = {}
        self._epochs = self._peer_epochs()
        self._tasks: list[asyncio.Task[None]] = []

    def _peer_epochs(self) -> tuple[int, int, int, int]:
        return (
            self.produce_ring.peer_epoch(),
            self.ack_ring.peer_epoch(),
            self.fetch_ring.peer_epoch(),
            self.response_ring.peer_epoch(),
        )

    def start(self) -> None:
        self._tasks = [
            asyncio.ensure_future(self._take_acks()),
            asyncio.ensure_future(self._take_responses()),
            asyncio.ensure_future(self._watch_peers()),
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

    async def produce(self, slots: list[ProduceSlot]) -> list[list[tuple[int, str]]]:
        """Sends the slots and waits for their durable commit: per slot, per batch
        (base_offset, error name or "")."""
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        pending = _PendingProduce(
            loop.create_future(),
            [[None] * len(s.batch_lengths) for s in slots],
            sum(len(s.batch_lengths) for s in slots),
        )
        self._produces[request_id] = pending
        timeout = self.settings.produce_timeout_ms / 1000
        try:
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
                try:
                    # write() keeps call order across tasks, which keeps a connection's
                    # pipelined produces (and their sequence numbers) in order.
                    await self.produce_ring.write(header, slot.payload, timeout=timeout)
                except RingTimeout as exc:
                    raise PipelineUnavailable(
                        "the produce pipeline is saturated; retry with backoff"
                    ) from exc
            try:
                return await asyncio.wait_for(asyncio.shield(pending.future), timeout)
            except TimeoutError:
                raise PipelineUnavailable(
                    f"no durable commit within {self.settings.produce_timeout_ms} ms "
                    "(is the object store reachable?); retry"
                ) from None
        finally:
            self._produces.pop(request_id, None)

    async def fetch(self, request: FetchRequest) -> tuple[FetchResponse, bytes]:
        """Sends a fetch to the reader (its request_id is replaced) and waits for the answer."""
        request_id = next(self._ids)
        request = msgspec.structs.replace(request, request_id=request_id)
        wait_ms = request.max_wait_ms
        future: asyncio.Future[tuple[FetchResponse, bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self._fetches[request_id] = future
        try:
            header = header_encoder.encode(request)
            try:
                await self.fetch_ring.write(header, timeout=10)
            except RingTimeout as exc:
                raise PipelineUnavailable("the reader is saturated; retry") from exc
            try:
                return await asyncio.wait_for(asyncio.shield(future), wait_ms / 1000 + 30)
            except TimeoutError:
                raise PipelineUnavailable("the reader did not answer in time; retry") from None
        finally:
            self._fetches.pop(request_id, None)

    async def _take_acks(self) -> None:
        decode = decoder_for(AckFrame).decode
        ring = self.ack_ring
        while True:
            frames = ring.read_frames()
            if not frames:
                await ring.wait_readable()
                continue
            for header, _ in frames:
                for request_id, slot, ordinal, base_offset, error in decode(header).results:
                    pending = self._produces.get(request_id)
                    if pending is None or pending.future.done():
                        continue
                    slot_results = pending.results[slot]
                    if slot_results[ordinal] is None:
                        pending.remaining -= 1
                    slot_results[ordinal] = (base_offset, error)
                    if pending.remaining == 0:
                        pending.future.set_result(pending.results)  # type: ignore[arg-type]

    async def _take_responses(self) -> None:
        decode = decoder_for(FetchResponse).decode
        ring = self.response_ring
        while True:
            frames = ring.read_frames()
            if not frames:
                await ring.wait_readable()
                continue
            for header, payload in frames:
                response = decode(header)
                future = self._fetches.get(response.request_id)
                if future is not None and not future.done():
                    future.set_result((response, payload))

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
        for future in self._fetches.values():
            if not future.done():
                future.set_exception(PipelineUnavailable(why))
