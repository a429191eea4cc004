"""Transactions in the log, end to end on a real stack, without the coordinator: transactional
batches produced over the Kafka protocol, markers written with ``ingest.txn_markers`` through
the real pipeline (segmenter -> uploader -> metadata commit), read back by confluent-kafka
consumers. read_committed consumers see only committed transactions and stop at an open one;
read_uncommitted consumers see every data record; nobody sees a marker as a record.

The markers need the produce ring's writing end, which ingest holds: the test stops ingest
(supervisorctl), writes the markers from its own ``Pipeline`` on the stack's rings, and starts
ingest again, as the coordinator inside ingest would have written them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from streamhouse.errors import ErrorCode
from streamhouse.kafka.messages import ProduceRequest
from streamhouse.recordbatch import encode_batch
from streamhouse.testing import Stack, kafka_call
from tests.integration.txn_log_tools import (
    consume,
    create_topic,
    offsets,
    produce_plain,
    produce_txn,
    write_markers,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("txn-log") / "data") as s:
        yield s


def test_a_marker_takes_one_offset_that_consumers_skip(stack: Stack) -> None:
    tid = create_topic(stack, "txn-marker")
    produce_plain(stack, "txn-marker", 0, [b"a", b"b"])
    assert offsets(stack, "txn-marker", 0, 0) == 2
    # no open transaction: the marker is stored, changes nothing else
    assert write_markers(stack, [(tid, 0)], pid=4242, commit=True) == [None]
    assert offsets(stack, "txn-marker", 0, 0) == 3
    assert offsets(stack, "txn-marker", 0, 1) == 3
    produce_plain(stack, "txn-marker", 0, [b"c"])
    for isolation in ("read_uncommitted", "read_committed"):
        values, position = consume(stack, "txn-marker", 0, isolation, 4)
        assert values == [b"a", b"b", b"c"]
        assert position == 4


def test_read_committed_sees_committed_transactions_only_and_stops_at_an_open_one(
    stack: Stack,
) -> None:
    tid = create_topic(stack, "txn-log", 2)
    produce_plain(stack, "txn-log", 0, [b"p0"])
    # producer 1001 aborts, producer 1002 commits; their transactions interleave
    assert produce_txn(stack, "txn-log", 0, [b"a0", b"a1"], pid=1001, seq=0) == 1
    assert produce_txn(stack, "txn-log", 0, [b"c0"], pid=1002, seq=0) == 3
    produce_plain(stack, "txn-log", 0, [b"p1"])  # offset 4
    assert produce_txn(stack, "txn-log", 0, [b"a2"], pid=1001, seq=2) == 5
    assert produce_txn(stack, "txn-log", 1, [b"x0"], pid=1002, seq=0) == 0
    assert offsets(stack, "txn-log", 0, 0) == 6
    assert offsets(stack, "txn-log", 0, 1) == 1  # held by producer 1001's first batch
    # by timestamp: the first record at or after it, if read_committed may see it
    assert offsets(stack, "txn-log", 0, 0, timestamp=0) == 0
    assert offsets(stack, "txn-log", 1, 0, timestamp=0) == 0
    assert offsets(stack, "txn-log", 1, 1, timestamp=0) == -1  # only an open transaction

    # read_committed stops at the open transaction; read_uncommitted sees all
    values, position = consume(stack, "txn-log", 0, "read_committed", 1)
    assert (values, position) == ([b"p0"], 1)
    values, _ = consume(stack, "txn-log", 0, "read_uncommitted", 6)
    assert values == [b"p0", b"a0", b"a1", b"c0", b"p1", b"a2"]

    assert write_markers(stack, [(tid, 0)], pid=1001, commit=False) == [None]  # offset 6
    assert offsets(stack, "txn-log", 0, 1) == 3  # now held by producer 1002
    assert write_markers(stack, [(tid, 0), (tid, 1)], pid=1002, commit=True) == [None, None]
    assert offsets(stack, "txn-log", 0, 0) == 8
    assert offsets(stack, "txn-log", 0, 1) == 8
    assert offsets(stack, "txn-log", 1, 1) == 2

    produce_plain(stack, "txn-log", 0, [b"p2"])  # offset 8
    values, position = consume(stack, "txn-log", 0, "read_committed", 9)
    assert (values, position) == ([b"p0", b"c0", b"p1", b"p2"], 9)
    values, _ = consume(stack, "txn-log", 0, "read_uncommitted", 9)
    assert values == [b"p0", b"a0", b"a1", b"c0", b"p1", b"a2", b"p2"]
    values, _ = consume(stack, "txn-log", 1, "read_committed", 2)
    assert values == [b"x0"]


def test_clients_may_not_write_control_batches(stack: Stack) -> None:
    create_topic(stack, "txn-control")
    now = int(time.time() * 1000)
    batch = encode_batch(
        [b"\x00\x00\x00\x01"],
        [b"\x00\x00\x00\x00\x00\x00"],
        [[]],
        [now],
        producer_id=5,
        producer_epoch=0,
        base_sequence=-1,
        attributes=0x30,
    )
    P = ProduceRequest
    request = P(
        transactional_id="t",
        acks=-1,
        timeout_ms=10_000,
        topic_data=[
            P.TopicProduceData(
                name="txn-control", partition_data=[P.PartitionProduceData(index=0, records=batch)]
            )
        ],
    )
    (answer,) = kafka_call(stack.kafka_address, 0, 8, request).responses[0].partition_responses
    assert answer.error_code == ErrorCode.INVALID_RECORD.kafka_code
    assert "control" in (answer.error_message or "")
    assert offsets(stack, "txn-control", 0, 0) == 0
