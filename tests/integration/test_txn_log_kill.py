"""Transaction markers across crashes: a marker and the transaction state it changes commit in
one metadata transaction, so whatever dies (kill -9 of the uploader or the segmenter while
markers are in flight, or an uploader that is down), every partition is either still in its
open transaction (no marker stored) or done (marker stored, transaction closed, an abort
recorded once); writing the markers again until they succeed ends every transaction exactly
once, and read_committed consumers then see no aborted record.

As in test_txn_log_markers.py, the markers are written from the test's own ``Pipeline`` on the
stack's rings while its ingest is stopped (the coordinator writes them from inside ingest).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from ingest.pipeline import Pipeline
from ingest.txn_markers import write_txn_markers
from metadata import MetadataStore
from metadata.transactions import AbortedTxn
from streamhouse.testing import Stack, wait_until
from tests.integration.txn_log_tools import DEADLINE_S, create_topic, produce_txn

PARTITIONS = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("txn-log-kill") / "data") as s:
        yield s


def partition_view(stack: Stack, tid: int, partition: int) -> tuple[int, int, list[AbortedTxn]]:
    """(high watermark, last stable offset, aborted transactions) from metadata."""
    with MetadataStore(stack.settings.metadata_path) as meta:
        state = meta.get_partition(tid, partition)
        assert state is not None
        return (
            state.high_watermark,
            state.last_stable_offset,
            meta.aborted_transactions(tid, partition, 0, 1 << 62),
        )


def stop_ingest(stack: Stack) -> None:
    stack.supervisorctl("stop", "ingest")
    wait_until(lambda: stack.pid("ingest") == 0, DEADLINE_S, "ingest stopped")


def start_ingest(stack: Stack) -> None:
    stack.supervisorctl("start", "ingest")
    stack.wait_ready(DEADLINE_S)


async def markers_until_done(
    stack: Stack, pipeline: Pipeline, parts: list[tuple[int, int]], pid: int
) -> int:
    """Writes ABORT markers again until every partition answered None; returns the rounds."""
    left = list(parts)
    deadline = time.monotonic() + DEADLINE_S * 2
    rounds = 0
    while left:
        assert time.monotonic() < deadline, f"markers of {left} never committed"
        rounds += 1
        outcomes = await write_txn_markers(pipeline, left, pid, 0, False, 0, 5_000)
        for outcome in outcomes:
            # only "not written / unknown, retry" answers are expected here
            assert outcome is None or outcome.retriable, outcome
        left = [p for p, o in zip(left, outcomes, strict=True) if o is not None]
    return rounds


def read_all(stack: Stack, topic: str, isolation: str, ends: dict[int, int]) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_address,
            "group.id": f"kill-{isolation}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    values: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while True:
            positions = consumer.position([TopicPartition(topic, p) for p in ends])
            if all(tp.offset >= ends[tp.partition] for tp in positions):
                return values
            assert time.monotonic() < deadline, f"stuck at {positions}"
            for message in consumer.consume(num_messages=100, timeout=0.5):
                assert message.error() is None, message.error()
                values.append(message.value())
    finally:
        consumer.close()


def test_a_marker_that_never_committed_leaves_the_transaction_open(stack: Stack) -> None:
    tid = create_topic(stack, "txn-down")
    produce_txn(stack, "txn-down", 0, [b"a0", b"a1"], pid=2001, seq=0)
    assert partition_view(stack, tid, 0) == (2, 0, [])
    stop_ingest(stack)
    stack.supervisorctl("stop", "uploader")
    wait_until(lambda: stack.pid("uploader") == 0, DEADLINE_S, "uploader stopped")

    async def scenario() -> None:
        pipeline = Pipeline(stack.settings)
        pipeline.start()
        try:
            (outcome,) = await write_txn_markers(pipeline, [(tid, 0)], 2001, 0, False, 0, 1_000)
            assert outcome is not None and outcome.retriable
            # the segmenter holding or having sealed the marker dies too
            segmenter = stack.kill("segmenter")
            stack.wait_restarted("segmenter", segmenter)
            assert partition_view(stack, tid, 0) == (2, 0, [])  # still open, nothing stored
            stack.supervisorctl("start", "uploader")
            wait_until(lambda: stack.pid("uploader") != 0, DEADLINE_S, "uploader started")
            await markers_until_done(stack, pipeline, [(tid, 0)], 2001)
        finally:
            await pipeline.close()

    try:
        asyncio.run(scenario())
    finally:
        start_ingest(stack)
    hwm, lso, aborted = partition_view(stack, tid, 0)
    # 3, or 4 when a retry repeated a marker whose ack was lost to a restart: harmless
    assert lso == hwm >= 3
    assert aborted == [AbortedTxn(2001, 0, 2)]


def test_kill_9_of_the_uploader_during_markers_ends_every_transaction_once(stack: Stack) -> None:
    tid = create_topic(stack, "txn-kill", PARTITIONS)
    for p in range(PARTITIONS):
        produce_txn(stack, "txn-kill", p, [b"x%d" % p, b"y%d" % p], pid=3001, seq=0)
    parts = [(tid, p) for p in range(PARTITIONS)]
    stop_ingest(stack)

    async def scenario() -> None:
        pipeline = Pipeline(stack.settings)
        pipeline.start()
        try:
            uploader = stack.pid("uploader")
            writing = asyncio.ensure_future(
                write_txn_markers(pipeline, parts, 3001, 0, False, 0, 5_000)
            )
            await asyncio.sleep(0)  # the frames are on the produce ring
            os.kill(uploader, signal.SIGKILL)
            outcomes = await writing
            assert all(o is None or o.retriable for o in outcomes), outcomes
            stack.wait_restarted("uploader", uploader)
            # Atomic: a partition is either still open with no marker, or closed with its
            # marker and its abort recorded; never one without the other.
            for p, outcome in enumerate(outcomes):
                hwm, lso, aborted = partition_view(stack, tid, p)
                if hwm == 2:
                    assert (lso, aborted) == (0, []) and outcome is not None
                else:
                    assert (hwm, lso, aborted) == (3, 3, [AbortedTxn(3001, 0, 2)])
            await markers_until_done(stack, pipeline, parts, 3001)
            # once more, as a coordinator retrying after an unknown outcome would
            again = await write_txn_markers(pipeline, parts, 3001, 0, False, 0, 5_000)
            assert again == [None] * PARTITIONS
        finally:
            await pipeline.close()

    try:
        asyncio.run(scenario())
    finally:
        start_ingest(stack)
    ends = {}
    for p in range(PARTITIONS):
        hwm, lso, aborted = partition_view(stack, tid, p)
        assert lso == hwm >= 4  # two markers at least
        assert aborted == [AbortedTxn(3001, 0, 2)]  # recorded once, whatever was retried
        ends[p] = hwm
    assert read_all(stack, "txn-kill", "read_committed", ends) == []
    seen = read_all(stack, "txn-kill", "read_uncommitted", ends)
    assert sorted(seen) == sorted(
        [b"x%d" % p for p in range(PARTITIONS)] + [b"y%d" % p for p in range(PARTITIONS)]
    )
