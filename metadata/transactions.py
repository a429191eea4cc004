"""Transactions in the log: which are open, which were aborted (sans-I/O, both backends).

A commit (``metadata.store.assign_offsets``) walks batches in log order; this module keeps
what it learns about transactions while it does, and tells the backend which rows to change
in the same transaction. Rules (Kafka's ProducerStateManager, per partition):

1. A transactional data batch (attributes bit 4) that gets offsets opens its producer's
   transaction on the partition at the batch's first offset, unless one is open already.
2. A control batch (a COMMIT or ABORT marker, written by the coordinator through
   ``ingest/txn_markers.py``) takes one offset and ends the producer's open transaction on
   the partition. An ABORT also records the aborted transaction (producer id, its first
   offset, last offset = the marker's offset), which read_committed fetches list.
3. A marker for a producer with no open transaction is stored (it takes its offset) but
   changes nothing else: writing the same marker twice is harmless.
4. The last stable offset (LSO) of a partition is the smallest first offset of its open
   transactions, or its high watermark when none is open. read_committed consumers read
   only below it.
5. All of it changes in the commit's own metadata transaction: a marker and the state it
   changes are durable together or not at all (a crash before the commit leaves the
   transaction open, and the coordinator writes the marker again).

Rows (schema: ``metadata.migrations`` v7, ``metadata.postgres_migrations`` v8):
``open_txns (topic_id, partition, producer_id) -> first_offset`` and
``aborted_txns (topic_id, partition, last_offset) -> producer_id, first_offset``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from typing import NamedTuple

#: (topic_id, partition, producer_id)
ProducerKey = tuple[int, int, int]


class AbortedTxn(NamedTuple):
    """An aborted transaction on one partition: its producer and its offset range (the last
    offset is its ABORT marker's)."""

    producer_id: int
    first_offset: int
    last_offset: int


class TxnLog:
    """The open transactions of the partitions one commit touches, as the commit changes
    them (rules 1-3). Built from the rows read for those keys (``open_firsts``)."""

    __slots__ = ("_start", "open", "aborted")

    def __init__(self, open_firsts: Mapping[ProducerKey, int]) -> None:
        self._start = dict(open_firsts)
        self.open = dict(open_firsts)
        #: (topic_id, partition, last_offset, producer_id, first_offset) rows to insert
        self.aborted: list[tuple[int, int, int, int, int]] = []

    def data(self, key: ProducerKey, offset: int) -> None:
        """A transactional batch of the producer got offsets from ``offset`` (rule 1)."""
        if key not in self.open:
            self.open[key] = offset

    def marker(self, key: ProducerKey, offset: int, commit: bool) -> None:
        """The producer's marker got ``offset`` (rules 2, 3)."""
        first = self.open.pop(key, None)
        if first is not None and not commit:
            self.aborted.append((key[0], key[1], offset, key[2], first))

    def closed(self) -> list[ProducerKey]:
        """Open-transaction rows to delete."""
        return [key for key in self._start if key not in self.open]

    def opened(self) -> list[tuple[int, int, int, int]]:
        """Open-transaction rows to insert or replace: (topic_id, partition, producer_id,
        first_offset)."""
        return [(*key, first) for key, first in self.open.items() if self._start.get(key) != first]


class AbortedRanges:
    """The aborted transactions of one partition, by producer: ``covers(producer_id,
    offset)`` says whether ``offset`` lies in one of that producer's aborted ranges (first
    offset .. its ABORT marker's offset). Built from ``(producer_id, first_offset,
    last_offset)`` triples (``metadata.transactions.AbortedTxn``); duplicates are harmless."""

    __slots__ = ("_firsts", "_lasts")

    def __init__(self, aborted: Iterable[tuple[int, int, int]] = ()) -> None:
        by_producer: dict[int, set[tuple[int, int]]] = {}
        for producer_id, first, last in aborted:
            by_producer.setdefault(producer_id, set()).add((first, last))
        self._firsts: dict[int, list[int]] = {}
        self._lasts: dict[int, list[int]] = {}
        for producer_id, ranges in by_producer.items():
            ordered = sorted(ranges)
            self._firsts[producer_id] = [f for f, _l in ordered]
            self._lasts[producer_id] = [last for _f, last in ordered]

    def __bool__(self) -> bool:
        return bool(self._firsts)

    def covers(self, producer_id: int, offset: int) -> bool:
        firsts = self._firsts.get(producer_id)
        if not firsts:
            return False
        i = bisect_right(firsts, offset) - 1
        return i >= 0 and offset <= self._lasts[producer_id][i]
