"""Produce-time verification of transactional batches against the coordinator's durable state
(Kafka's KIP-890 verification), no I/O.

A transactional batch opens the producer's transaction on its partition when metadata commits it
(``metadata/transactions.py``), and only the transaction coordinator ends it (markers). A batch
the coordinator does not know about would open a transaction that nobody ever ends, and
read_committed readers would stop at it forever. So before a transactional batch is admitted,
the Produce handler reads the record of the request's transactional id (catalog kind
``kafka-txn``, read and decoded by ``txn_shell``) once per request and asks :func:`verify` for
each partition carrying transactional batches:

- no record for the id (or one of another id): INVALID_PRODUCER_ID_MAPPING;
- another producer id than the record's: INVALID_PRODUCER_ID_MAPPING;
- another epoch than the record's: INVALID_PRODUCER_EPOCH (Kafka answers PRODUCER_FENCED's
  Produce form);
- the transaction is being committed or aborted (Prepare*): NOT_ENOUGH_REPLICAS, retriable, as
  Kafka maps the coordinator's CONCURRENT_TRANSACTIONS for Produce;
- the transaction is not Ongoing, or the partition was not added to it (AddPartitionsToTxn):
  INVALID_TXN_STATE.

A Produce request with a transactional batch but no transactional id is refused by the handler
as Kafka does (TRANSACTIONAL_ID_AUTHORIZATION_FAILED for every partition).
"""

from __future__ import annotations

from ingest.kafka import errors
from ingest.kafka.txn_coordinator import PREPARING, TxnRecord, TxnState


def verify(
    record: TxnRecord | None,
    transactional_id: str,
    producer_id: int,
    producer_epoch: int,
    partition: tuple[int, int],
) -> tuple[int, str | None]:
    """(NONE, None) when a transactional batch of ``producer_id``/``producer_epoch`` for
    ``partition`` ((topic id, partition)) belongs to the open transaction of
    ``transactional_id`` whose stored record is ``record``; else (Kafka error, message)."""
    if record is None or record.transactional_id != transactional_id:
        return errors.INVALID_PRODUCER_ID_MAPPING, (
            f"transactional id {transactional_id!r} has no producer: call InitProducerId with "
            "it before producing transactional batches"
        )
    if record.producer_id != producer_id:
        return errors.INVALID_PRODUCER_ID_MAPPING, (
            f"producer id {producer_id} is not the producer of transactional id "
            f"{transactional_id!r}: use the producer id InitProducerId returned"
        )
    if record.producer_epoch != producer_epoch:
        return errors.INVALID_PRODUCER_EPOCH, (
            f"producer epoch {producer_epoch} of transactional id {transactional_id!r} is not "
            f"the current one ({record.producer_epoch}): this producer was fenced"
        )
    if record.state in PREPARING:
        return errors.NOT_ENOUGH_REPLICAS, (
            f"the transaction of {transactional_id!r} is completing ({record.state.value}); "
            "retry once EndTxn has finished"
        )
    if record.state is not TxnState.ONGOING or partition not in record.partitions:
        return errors.INVALID_TXN_STATE, (
            f"partition {partition[1]} of topic id {partition[0]} is not in an ongoing "
            f"transaction of {transactional_id!r}: add it with AddPartitionsToTxn first"
        )
    return errors.NONE, None
