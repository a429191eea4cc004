"""txn_verify.verify: a transactional batch is admitted only for the transactional id's current
producer id and epoch, into a partition of its Ongoing transaction (KIP-890's checks)."""

from __future__ import annotations

import pytest

from ingest.kafka import errors
from ingest.kafka.txn_coordinator import TxnRecord, TxnState
from ingest.kafka.txn_verify import verify

ONGOING = TxnRecord(
    transactional_id="t",
    producer_id=7,
    producer_epoch=3,
    state=TxnState.ONGOING,
    timeout_ms=60_000,
    start_ms=1,
    partitions=((1, 0), (1, 2)),
)


def _with(**changes: object) -> TxnRecord:
    fields = {f: getattr(ONGOING, f) for f in ONGOING.__struct_fields__}
    return TxnRecord(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("record", "tid", "pid", "epoch", "partition", "code"),
    [
        (ONGOING, "t", 7, 3, (1, 2), errors.NONE),
        (None, "t", 7, 3, (1, 2), errors.INVALID_PRODUCER_ID_MAPPING),
        (_with(transactional_id="other"), "t", 7, 3, (1, 2), errors.INVALID_PRODUCER_ID_MAPPING),
        (ONGOING, "t", 8, 3, (1, 2), errors.INVALID_PRODUCER_ID_MAPPING),
        (ONGOING, "t", 7, 2, (1, 2), errors.INVALID_PRODUCER_EPOCH),
        (ONGOING, "t", 7, 4, (1, 2), errors.INVALID_PRODUCER_EPOCH),
        (ONGOING, "t", 7, 3, (1, 1), errors.INVALID_TXN_STATE),
        (ONGOING, "t", 7, 3, (2, 0), errors.INVALID_TXN_STATE),
        (_with(state=TxnState.EMPTY, partitions=()), "t", 7, 3, (1, 2), errors.INVALID_TXN_STATE),
        (_with(state=TxnState.COMPLETE_COMMIT), "t", 7, 3, (1, 2), errors.INVALID_TXN_STATE),
        (_with(state=TxnState.PREPARE_ABORT), "t", 7, 3, (1, 2), errors.NOT_ENOUGH_REPLICAS),
    ],
)
def test_verify(
    record: TxnRecord | None,
    tid: str,
    pid: int,
    epoch: int,
    partition: tuple[int, int],
    code: int,
) -> None:
    got, message = verify(record, tid, pid, epoch, partition)
    assert got == code
    assert (message is None) == (code == errors.NONE)
