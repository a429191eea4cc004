"""The transaction coordinator's I/O shell: durable state in the metadata catalog, markers
through the pipeline, pending offsets into the group's committed offsets, and the sweeper that
recovers and times out transactions.

Every request of a transactional id runs under that id's lock (one at a time on this agent):
load the record from metadata, ask the state machine (``txn_coordinator.py``), store what it
returns, and when the stored record is PrepareCommit/PrepareAbort complete it: write a control
batch to every partition of the transaction (``ingest.txn_markers.write_txn_markers``), apply a
commit's pending offsets (``commit_offsets``), then store the Complete state. Nothing is cached
between requests, so a coordinator that moves to another agent reads the same state.

Every write of a record is a compare-and-set (``swap_catalog_entry``) against the exact
definition this request read: while the set of live agents changes, two agents may both think
they coordinate an id for up to a heartbeat interval, and then exactly one of their writes
lands. The loser changes nothing and answers the client CONCURRENT_TRANSACTIONS (the client
retries; its next request reads the winner's state) or NOT_COORDINATOR when this agent no
longer coordinates the id (the client looks the coordinator up again; TxnOffsetCommit, which
goes to the group's coordinator, always gets NOT_COORDINATOR). A Complete state that loses
leaves the completion to whoever changed the record; markers written twice are harmless.

A Prepare state is the decision: it is durable before any marker is written, so a crash (kill
-9 of ingest, a failing marker write) leaves a transaction that the sweeper finishes the same
way, never half. The sweeper runs at start (recovery) and every ``transaction_check_interval_ms``
over the transactional ids this agent coordinates: it completes Prepare states, aborts, at a
bumped epoch, Ongoing transactions older than their timeout, and deletes the records of idle
ids unused for ``transactional_id_expiration_ms``.

Catalog format (kind ``kafka-txn``): the name is the transactional id when it is 1..255
printable characters (no control characters: PostgreSQL text takes no NUL) and does not start
with ``#``; else ``#sha256:`` and the hex SHA-256 of its UTF-8 bytes (the full id is inside
the definition, checked on load). The definition is a msgpack map
(msgspec) of ``TxnRecord``'s fields, names as keys:
``transactional_id`` str, ``producer_id`` int, ``producer_epoch`` int, ``state`` str (Kafka's
state name: Empty, Ongoing, PrepareCommit, PrepareAbort, CompleteCommit, CompleteAbort),
``timeout_ms`` int, ``start_ms`` int (-1: no transaction open), ``updated_ms`` int,
``previous_epoch`` int (-1: none), ``partitions`` array of [topic id, partition], ``groups``
array of group ids, ``offsets`` array of maps {``group``, ``topic_id``, ``partition``,
``offset``, ``leader_epoch``, ``metadata``}. Fields left at their default are omitted; a
reader takes missing fields as their default and ignores unknown ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import msgspec

from ingest.kafka import txn_coordinator as tc
from ingest.kafka.txn_coordinator import PendingOffset, TxnRecord, TxnState
from metadata.errors import MetadataUnavailableError
from streamhouse.errors import ErrorCode

if TYPE_CHECKING:
    from ingest.pipeline import Pipeline
    from metadata.async_store import AsyncMetadata

log = logging.getLogger("ingest.kafka.txn")

CATALOG_KIND = "kafka-txn"
_MAX_PLAIN_NAME = 255

#: Writes one marker per (topic id, partition): (partitions, producer id, epoch, commit) ->
#: per partition None (durable) or the error.
MarkerWriter = Callable[
    [Sequence[tuple[int, int]], int, int, bool], Awaitable[list[ErrorCode | None]]
]

#: Marker errors that mean there is nothing left to mark there: the partition is gone, or a
#: newer epoch of the producer already wrote to it (writing again cannot succeed).
_GONE = (
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    ErrorCode.UNKNOWN_TOPIC_ID,
    ErrorCode.INVALID_PRODUCER_EPOCH,
)

COORDINATOR_NOT_AVAILABLE = ErrorCode.COORDINATOR_NOT_AVAILABLE.kafka_code
NOT_COORDINATOR = ErrorCode.NOT_COORDINATOR.kafka_code
INVALID_REQUEST = ErrorCode.INVALID_REQUEST.kafka_code

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(TxnRecord)


def catalog_name(transactional_id: str) -> str:
    """The catalog name of a transactional id (see the module docstring)."""
    if (
        1 <= len(transactional_id) <= _MAX_PLAIN_NAME
        and not transactional_id.startswith("#")
        and transactional_id.isprintable()
    ):
        return transactional_id
    digest = hashlib.sha256(transactional_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"#sha256:{digest}"


def encode(record: TxnRecord) -> bytes:
    return _encoder.encode(record)


def decode(blob: bytes) -> TxnRecord:
    """A stored record; ``msgspec.DecodeError``/``ValidationError`` when it is not one."""
    return _decoder.decode(blob)


def pipeline_markers(pipeline: Pipeline) -> MarkerWriter:
    """The marker writer of a running pipeline (TXN-LOG's ``write_txn_markers``)."""

    async def write(
        partitions: Sequence[tuple[int, int]], producer_id: int, epoch: int, commit: bool
    ) -> list[ErrorCode | None]:
        from ingest.txn_markers import write_txn_markers

        return await write_txn_markers(pipeline, partitions, producer_id, epoch, commit)

    return write


class LostRace(Exception):
    """Another coordinator changed a transactional id's record after this request read it."""


class TxnShell:
    """The transaction coordinator of one agent (see the module docstring).

    ``owns(transactional_id)`` says whether this agent coordinates an id (the sweeper only
    touches those); ``clock`` gives wall-clock seconds (timeouts survive restarts)."""

    def __init__(
        self,
        meta: AsyncMetadata,
        write_markers: MarkerWriter,
        *,
        max_timeout_ms: int,
        expiration_ms: int = 7 * 24 * 3600 * 1000,
        owns: Callable[[str], bool] = lambda _tid: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta = meta
        self.write_markers = write_markers
        self.max_timeout_ms = max_timeout_ms
        self.expiration_ms = expiration_ms
        self.owns = owns
        self.clock = clock
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    @contextlib.asynccontextmanager
    async def _locked(self, transactional_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(transactional_id)
        if entry is None:
            entry = self._locks[transactional_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[transactional_id]

    async def load(self, transactional_id: str) -> TxnRecord | None:
        """The stored record of a transactional id, None if there is none (or an unreadable
        one, which is logged and then overwritten by the next request)."""
        return (await self._read(transactional_id))[0]

    async def _read(self, transactional_id: str) -> tuple[TxnRecord | None, bytes | None]:
        """The stored record (as :meth:`load`) and the stored definition it came from (None:
        no entry), which a write of this request expects to find unchanged."""
        blob = await self.meta.get_catalog_entry(CATALOG_KIND, catalog_name(transactional_id))
        if blob is None:
            return None, None
        return self._decoded(transactional_id, blob), blob

    def _decoded(self, transactional_id: str, blob: bytes) -> TxnRecord | None:
        try:
            record = decode(blob)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error(
                "transactional id %r: stored state is unreadable (%s); starting it afresh",
                transactional_id,
                exc,
            )
            return None
        if record.transactional_id != transactional_id:
            log.error(
                "transactional id %r: its catalog entry holds %r (hash collision); "
                "starting it afresh",
                transactional_id,
                record.transactional_id,
            )
            return None
        return record

    async def _settled(self, transactional_id: str) -> tuple[TxnRecord | None, bytes | None]:
        """The stored record and definition (:meth:`_read`), after completing a Prepare state
        left by a failure (it stays Prepare, and requests get CONCURRENT_TRANSACTIONS, while
        that still fails)."""
        record, blob = await self._read(transactional_id)
        if (
            record is not None
            and record.state in tc.PREPARING
            and await self._complete(record, blob, resumed=True)
        ):
            record, blob = await self._read(transactional_id)
        return record, blob

    async def store(self, record: TxnRecord) -> None:
        """Store a record unconditionally (tools and tests; requests use :meth:`_swap`)."""
        await self.meta.put_catalog_entry(
            CATALOG_KIND,
            catalog_name(record.transactional_id),
            encode(record),
            max(record.updated_ms, 0),
            replace=True,
        )

    async def _swap(self, record: TxnRecord, expect: bytes | None) -> bytes:
        """Store ``record`` if the stored definition is still ``expect`` (None: no entry);
        return the new definition (what the next write expects), else raise
        :class:`LostRace`."""
        blob = encode(record)
        if not await self.meta.swap_catalog_entry(
            CATALOG_KIND,
            catalog_name(record.transactional_id),
            blob,
            max(record.updated_ms, 0),
            expect=expect,
        ):
            raise LostRace(record.transactional_id)
        return blob

    def _lost(self, transactional_id: str, what: str, *, to_group: bool = False) -> int:
        """The answer to a request that lost a race with another coordinator (logged)."""
        owned = not to_group and self.owns(transactional_id)
        log.warning(
            "transactional id %r: another coordinator changed its state during %s; %s",
            transactional_id,
            what,
            "answering CONCURRENT_TRANSACTIONS (the client retries)"
            if owned
            else "answering NOT_COORDINATOR (the client finds the coordinator again)",
        )
        return tc.CONCURRENT_TRANSACTIONS if owned else NOT_COORDINATOR

    # -- requests ---------------------------------------------------------------------------

    async def init_producer_id(
        self,
        transactional_id: str,
        timeout_ms: int,
        expected_producer_id: int = -1,
        expected_epoch: int = -1,
    ) -> tuple[int, int, int]:
        """(error, producer id, epoch) for InitProducerId with a transactional id. An open
        transaction of the previous producer is aborted first (it is fenced)."""
        try:
            async with self._locked(transactional_id):
                for _ in range(3):
                    record, blob = await self._settled(transactional_id)
                    step = tc.init_producer_id(
                        record,
                        timeout_ms=timeout_ms,
                        max_timeout_ms=self.max_timeout_ms,
                        now_ms=self.now_ms(),
                        expected_producer_id=expected_producer_id,
                        expected_epoch=expected_epoch,
                    )
                    if step.error != tc.NONE:
                        return step.error, -1, -1
                    if step.needs_producer_id:
                        producer_id, _ = await self.meta.allocate_producer_id()
                        fresh = tc.init_with_producer_id(
                            transactional_id,
                            producer_id,
                            timeout_ms=timeout_ms,
                            now_ms=self.now_ms(),
                        )
                        await self._swap(fresh, blob)
                        return tc.NONE, fresh.producer_id, fresh.producer_epoch
                    assert step.record is not None
                    blob = await self._swap(step.record, blob)
                    if step.record.state is TxnState.PREPARE_ABORT:
                        log.info(
                            "transactional id %r: a new producer fences epoch %d; aborting its "
                            "open transaction",
                            transactional_id,
                            step.record.producer_epoch - 1,
                        )
                        if not await self._complete(step.record, blob):
                            return tc.CONCURRENT_TRANSACTIONS, -1, -1
                        expected_producer_id = expected_epoch = -1
                        continue
                    return tc.NONE, step.record.producer_id, step.record.producer_epoch
                return tc.CONCURRENT_TRANSACTIONS, -1, -1
        except LostRace:
            return self._lost(transactional_id, "InitProducerId"), -1, -1
        except MetadataUnavailableError as exc:
            log.warning("transactional id %r: InitProducerId failed: %s", transactional_id, exc)
            return COORDINATOR_NOT_AVAILABLE, -1, -1

    async def _apply(
        self,
        transactional_id: str,
        change: Callable[[TxnRecord | None, int], tc.Step],
        what: str,
        *,
        to_group: bool = False,
    ) -> int:
        try:
            async with self._locked(transactional_id):
                record, blob = await self._settled(transactional_id)
                step = change(record, self.now_ms())
                if step.error == tc.NONE and step.record is not None:
                    try:
                        blob = await self._swap(step.record, blob)
                    except ValueError as exc:  # the catalog's size limit (store.py)
                        log.warning(
                            "transactional id %r: refusing a request whose state would not fit "
                            "(%s); commit or abort the transaction and split the work",
                            transactional_id,
                            exc,
                        )
                        return INVALID_REQUEST
                    if step.record.state in tc.PREPARING:
                        await self._complete(step.record, blob)
                return step.error
        except LostRace:
            return self._lost(transactional_id, what, to_group=to_group)
        except MetadataUnavailableError as exc:
            log.warning("transactional id %r: request failed: %s", transactional_id, exc)
            return COORDINATOR_NOT_AVAILABLE

    async def add_partitions(
        self, transactional_id: str, producer_id: int, epoch: int, partitions: list[tuple[int, int]]
    ) -> int:
        return await self._apply(
            transactional_id,
            lambda record, now: tc.add_partitions(record, producer_id, epoch, partitions, now),
            "AddPartitionsToTxn",
        )

    async def add_offsets(
        self, transactional_id: str, producer_id: int, epoch: int, group: str
    ) -> int:
        return await self._apply(
            transactional_id,
            lambda record, now: tc.add_offsets(record, producer_id, epoch, group, now),
            "AddOffsetsToTxn",
        )

    async def txn_offset_commit(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        group: str,
        offsets: list[PendingOffset],
    ) -> int:
        return await self._apply(
            transactional_id,
            lambda record, now: tc.txn_offset_commit(
                record, producer_id, epoch, group, offsets, now
            ),
            "TxnOffsetCommit",
            to_group=True,
        )

    async def end_txn(
        self, transactional_id: str, producer_id: int, epoch: int, commit: bool
    ) -> int:
        """NONE once the outcome is durable (PrepareCommit/PrepareAbort stored); the markers
        are written before the answer when they can be, else by the sweeper."""
        return await self._apply(
            transactional_id,
            lambda record, now: tc.end_txn(record, producer_id, epoch, commit, now),
            "EndTxn",
        )

    async def coordinated(self) -> list[TxnRecord]:
        """The records of every transactional id this agent coordinates, by id (ListTransactions;
        unreadable entries are left out)."""
        records: list[TxnRecord] = []
        for _name, blob in await self.meta.list_catalog_entries(CATALOG_KIND):
            try:
                record = decode(blob)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if self.owns(record.transactional_id):
                records.append(record)
        return sorted(records, key=lambda r: r.transactional_id)

    async def pending_offsets(self, group: str) -> set[tuple[int, int]]:
        """(topic id, partition) of ``group``'s transactional offsets waiting for an outcome
        (OffsetFetch's require_stable answers UNSTABLE_OFFSET_COMMIT for them)."""
        pending: set[tuple[int, int]] = set()
        for _name, blob in await self.meta.list_catalog_entries(CATALOG_KIND):
            try:
                record = decode(blob)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if record.state in tc.PENDING_OFFSETS_STATES:
                pending.update(
                    (o.topic_id, o.partition) for o in record.offsets if o.group == group
                )
        return pending

    # -- completion and the sweeper -----------------------------------------------------------

    async def _complete(
        self, record: TxnRecord, blob: bytes | None, *, resumed: bool = False
    ) -> bool:
        """Markers (and a commit's offsets) of a Prepare state, then its Complete state (if the
        stored definition is still ``blob``, the Prepare state's); False (logged, left for the
        sweeper) when a marker or the offsets could not be written, or another coordinator
        changed the record meanwhile (it completes it). ``resumed``: the Prepare state was
        found stored (a crash or a failure interrupted it), which is logged once it
        completes."""
        what = "commit" if record.commit else "abort"
        tid = record.transactional_id
        if record.partitions:
            try:
                results = await self.write_markers(
                    list(record.partitions),
                    record.producer_id,
                    record.producer_epoch,
                    record.commit,
                )
            except Exception as exc:  # a marker write that raises must not lose the decision
                log.warning("transactional id %r: %s markers failed: %r; retrying", tid, what, exc)
                return False
            failed = [
                (p, e)
                for p, e in zip(record.partitions, results, strict=True)
                if e is not None and e not in _GONE
            ]
            for p, e in zip(record.partitions, results, strict=True):
                if e is ErrorCode.INVALID_PRODUCER_EPOCH:
                    log.error(
                        "transactional id %r: the %s marker of epoch %d for partition %s was "
                        "refused: a newer epoch of producer %d wrote there first",
                        tid,
                        what,
                        record.producer_epoch,
                        p,
                        record.producer_id,
                    )
            if failed:
                log.warning(
                    "transactional id %r: %s markers not written to %d partitions (first %s: "
                    "%s); retrying",
                    tid,
                    what,
                    len(failed),
                    failed[0][0],
                    failed[0][1].name,
                )
                return False
        by_group: dict[str, list[tuple[int, int, int, str, int]]] = {}
        for o in record.offsets if record.commit else ():
            by_group.setdefault(o.group, []).append(
                (o.topic_id, o.partition, o.offset, o.metadata, o.leader_epoch)
            )
        try:
            for group, entries in by_group.items():
                await self.meta.commit_offsets(group, entries)
            await self._swap(tc.complete(record, self.now_ms()), blob)
            if resumed:
                log.info(
                    "transactional id %r: completed its interrupted %s (producer %d epoch %d, "
                    "%d partitions)",
                    tid,
                    what,
                    record.producer_id,
                    record.producer_epoch,
                    len(record.partitions),
                )
        except LostRace:
            log.warning(
                "transactional id %r: another coordinator changed its state while this one "
                "completed the %s; leaving the completion to it",
                tid,
                what,
            )
            return False
        except MetadataUnavailableError as exc:
            log.warning(
                "transactional id %r: completing the %s failed: %s; retrying", tid, what, exc
            )
            return False
        return True

    async def sweep(self) -> int:
        """Completes the Prepare states and aborts the timed-out transactions of the ids this
        agent coordinates; returns how many transactions it finished."""
        finished = 0
        now = self.now_ms()
        for _name, blob in await self.meta.list_catalog_entries(CATALOG_KIND):
            try:
                seen = decode(blob)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # logged when its id is next used
            due = seen.state in tc.PREPARING or tc.expire(seen, now) is not None
            stale = tc.forgotten(seen, now, self.expiration_ms)
            if not (due or stale) or not self.owns(seen.transactional_id):
                continue
            async with self._locked(seen.transactional_id):
                record, blob = await self._read(seen.transactional_id)
                if record is None:
                    continue
                if tc.forgotten(record, self.now_ms(), self.expiration_ms):
                    log.info(
                        "transactional id %r: unused for over %d ms; forgetting it",
                        record.transactional_id,
                        self.expiration_ms,
                    )
                    # only the record read: a request that used the id meanwhile keeps it
                    await self.meta.delete_catalog_entry(
                        CATALOG_KIND, catalog_name(record.transactional_id), expect=blob
                    )
                    continue
                aborting = tc.expire(record, self.now_ms())
                if aborting is not None:
                    log.info(
                        "transactional id %r: transaction open for over %d ms; aborting it and "
                        "fencing producer epoch %d",
                        record.transactional_id,
                        record.timeout_ms,
                        record.producer_epoch,
                    )
                    try:
                        blob = await self._swap(aborting, blob)
                    except LostRace:
                        self._lost(record.transactional_id, "the timeout sweep")
                        continue
                if record.state in tc.PREPARING and await self._complete(
                    record, blob, resumed=True
                ):
                    finished += 1
                elif aborting is not None and await self._complete(aborting, blob):
                    finished += 1
        return finished

    async def run(self, interval_s: float) -> None:
        """Sweeps now (recovery at start) and every ``interval_s`` seconds, forever."""
        while True:
            try:
                await self.sweep()
            except MetadataUnavailableError as exc:
                log.warning("transaction sweep skipped: %s", exc)
            except Exception:
                # One bad record or a bug must not stop recovery and timeouts for every other
                # transaction (nor restart ingest over and over): logged, tried again.
                log.exception("transaction sweep failed; trying again in %.1f s", interval_s)
            await asyncio.sleep(interval_s)
