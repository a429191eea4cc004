"""The transaction APIs (ingest/kafka/api_txn.py) called as the broker calls them, on agent 1
of a three-agent cluster view: ids another agent coordinates are answered NOT_COORDINATOR, the
ones this agent coordinates go through the state machine; markers are recorded, not written."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ingest.cluster import ClusterView
from ingest.kafka import api_cluster, api_txn
from ingest.kafka.broker import KafkaBroker
from ingest.kafka.txn_shell import TxnShell
from metadata import AgentInfo
from metadata.async_store import AsyncMetadata
from streamhouse.config import load_settings
from streamhouse.errors import ErrorCode
from streamhouse.kafka.messages import (
    AddOffsetsToTxnRequest,
    AddPartitionsToTxnRequest,
    DescribeTransactionsRequest,
    EndTxnRequest,
    InitProducerIdRequest,
    ListTransactionsRequest,
    RequestHeader,
    TxnOffsetCommitRequest,
)

NOT_COORDINATOR = ErrorCode.NOT_COORDINATOR.kafka_code
INVALID_REQUEST = ErrorCode.INVALID_REQUEST.kafka_code


def agent(node_id: int) -> AgentInfo:
    return AgentInfo(
        agent_id=f"agent-{node_id}",
        node_id=node_id,
        kafka_host=f"host{node_id}",
        kafka_port=9090 + node_id,
        grpc_address=f"host{node_id}:50051",
        zone="",
        started_at_ms=1,
        heartbeat_at_ms=2,
        lease_until_ms=10**13,
        alive=True,
    )


def header(api_key: int, version: int) -> RequestHeader:
    return RequestHeader(
        request_api_key=api_key, request_api_version=version, correlation_id=1, client_id="t"
    )


Markers = list[tuple[tuple[tuple[int, int], ...], int, int, bool]]


def run(tmp_path: pathlib.Path, body: Callable[[KafkaBroker, Markers], Awaitable[Any]]) -> Any:
    view = ClusterView(agent(1))
    view.update([agent(0), agent(1), agent(2)])
    settings = load_settings({"STREAMHOUSE_DATA_DIR": str(tmp_path)})
    written: Markers = []

    async def markers(
        partitions: Sequence[tuple[int, int]], producer_id: int, epoch: int, commit: bool
    ) -> list[ErrorCode | None]:
        written.append((tuple(partitions), producer_id, epoch, commit))
        return [None for _ in partitions]

    async def scenario() -> Any:
        meta = await AsyncMetadata.open(tmp_path / "metadata.sqlite", forbid_loop_calls=True)
        try:
            await meta.create_topic("events", 4, {})
            broker = KafkaBroker(settings, meta, None, view)  # type: ignore[arg-type]
            api_txn._SHELLS[broker] = TxnShell(
                meta, markers, max_timeout_ms=900_000, owns=view.is_coordinator
            )
            try:
                return await body(broker, written)
            finally:
                await broker.stop()
        finally:
            await meta.close()

    return asyncio.run(scenario())


def ids(view_self: int, coordinated: bool, prefix: str = "tx") -> str:
    """A transactional id that agent `view_self` does (or does not) coordinate."""
    view = ClusterView(agent(view_self))
    view.update([agent(0), agent(1), agent(2)])
    for n in range(1000):
        if view.is_coordinator(f"{prefix}-{n}") == coordinated:
            return f"{prefix}-{n}"
    raise AssertionError("no such id")


def test_ids_of_other_agents_are_not_coordinated_here(tmp_path: pathlib.Path) -> None:
    foreign = ids(1, False)

    async def body(broker: KafkaBroker, written: Markers) -> list[int]:
        init = await api_cluster.init_producer_id(
            broker,
            header(22, 4),
            InitProducerIdRequest(transactional_id=foreign, transaction_timeout_ms=1000),
        )
        add = await api_txn.add_partitions_to_txn(
            broker,
            header(24, 3),
            AddPartitionsToTxnRequest(
                v3_and_below_transactional_id=foreign,
                v3_and_below_topics=[
                    AddPartitionsToTxnRequest.AddPartitionsToTxnTopic(name="events", partitions=[0])
                ],
            ),
        )
        offsets = await api_txn.add_offsets_to_txn(
            broker,
            header(25, 3),
            AddOffsetsToTxnRequest(transactional_id=foreign, group_id="g"),
        )
        end = await api_txn.end_txn(
            broker, header(26, 3), EndTxnRequest(transactional_id=foreign, committed=True)
        )
        commit = await api_txn.txn_offset_commit(
            broker,
            header(28, 3),
            TxnOffsetCommitRequest(
                transactional_id=foreign,
                group_id=ids(1, False, "group"),
                topics=[
                    TxnOffsetCommitRequest.TxnOffsetCommitRequestTopic(
                        name="events",
                        partitions=[TxnOffsetCommitRequest.TxnOffsetCommitRequestPartition()],
                    )
                ],
            ),
        )
        assert written == []
        return [
            init.error_code,
            add.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code,
            offsets.error_code,
            end.error_code,
            commit.topics[0].partitions[0].error_code,
        ]

    assert run(tmp_path, body) == [NOT_COORDINATOR] * 5


def test_a_local_transaction_commits_through_the_handlers(tmp_path: pathlib.Path) -> None:
    local = ids(1, True)

    async def body(broker: KafkaBroker, written: Markers) -> Any:
        init = await api_cluster.init_producer_id(
            broker,
            header(22, 4),
            InitProducerIdRequest(transactional_id=local, transaction_timeout_ms=60_000),
        )
        assert init.error_code == 0
        pid, epoch = init.producer_id, init.producer_epoch
        add = await api_txn.add_partitions_to_txn(
            broker,
            header(24, 1),
            AddPartitionsToTxnRequest(
                v3_and_below_transactional_id=local,
                v3_and_below_producer_id=pid,
                v3_and_below_producer_epoch=epoch,
                v3_and_below_topics=[
                    AddPartitionsToTxnRequest.AddPartitionsToTxnTopic(
                        name="events", partitions=[2, 0]
                    )
                ],
            ),
        )
        (topic,) = add.results_by_topic_v3_and_below
        assert [
            (r.partition_index, r.partition_error_code) for r in topic.results_by_partition
        ] == [
            (2, 0),
            (0, 0),
        ]
        end = await api_txn.end_txn(
            broker,
            header(26, 0),
            EndTxnRequest(
                transactional_id=local, producer_id=pid, producer_epoch=epoch, committed=True
            ),
        )
        assert end.error_code == 0
        events = await broker.meta.get_topic("events")
        assert events is not None
        return written, (events.topic_id, pid, epoch)

    written, (topic_id, pid, epoch) = run(tmp_path, body)
    assert written == [(((topic_id, 0), (topic_id, 2)), pid, epoch, True)]


def test_an_empty_transactional_id_is_invalid(tmp_path: pathlib.Path) -> None:
    async def body(broker: KafkaBroker, written: Markers) -> int:
        end = await api_txn.end_txn(broker, header(26, 3), EndTxnRequest(transactional_id=""))
        return end.error_code

    assert run(tmp_path, body) == INVALID_REQUEST


def test_list_and_describe_cover_only_this_agents_ids(tmp_path: pathlib.Path) -> None:
    local, foreign = ids(1, True), ids(1, False)

    async def body(broker: KafkaBroker, written: Markers) -> Any:
        shell = api_txn.shell(broker)
        _, pid, epoch = await shell.init_producer_id(local, 60_000)
        await shell.init_producer_id(foreign, 60_000)  # stored, but another agent's
        events = await broker.meta.get_topic("events")
        assert events is not None
        await shell.add_partitions(local, pid, epoch, [(events.topic_id, 3)])

        async def listing(**filters: Any) -> tuple[list[str], list[str]]:
            answer = await api_txn.list_transactions(
                broker, header(66, 1), ListTransactionsRequest(**filters)
            )
            return [t.transactional_id for t in answer.transaction_states], list(
                answer.unknown_state_filters
            )

        described = await api_txn.describe_transactions(
            broker,
            header(65, 0),
            DescribeTransactionsRequest(
                transactional_ids=[local, foreign, ids(1, True, "unknown")]
            ),
        )
        return (
            await listing(),
            await listing(state_filters=["Ongoing", "Bogus"]),
            await listing(state_filters=["Empty"]),
            await listing(state_filters=["Bogus"]),
            await listing(producer_id_filters=[pid + 1000]),
            await listing(duration_filter=3_600_000),
            await listing(duration_filter=0),
            [(s.error_code, s.transaction_state, s.topics) for s in described.transaction_states],
            pid,
        )

    (every, ongoing, empty, bogus, stranger, old, any_open, described, pid) = run(tmp_path, body)
    local = ids(1, True)
    assert every == ([local], [])
    assert ongoing == ([local], ["Bogus"])
    assert empty == ([], [])
    assert bogus == ([], ["Bogus"])  # only unknown states asked for: nothing matches
    assert stranger == ([], [])
    assert old == ([], [])  # not open for an hour
    assert any_open == ([local], [])
    ((code, state, topics), (foreign_code, *_), (missing_code, *_)) = described
    assert (code, state) == (0, "Ongoing")
    assert [(t.topic, t.partitions) for t in topics] == [("events", [3])]
    assert foreign_code == NOT_COORDINATOR
    assert missing_code == ErrorCode.TRANSACTIONAL_ID_NOT_FOUND.kafka_code


def test_offsets_go_to_the_group_coordinator_not_the_transactions(tmp_path: pathlib.Path) -> None:
    """TxnOffsetCommit is sent to the group's coordinator: it is served here for a group this
    agent coordinates even when another agent coordinates the transactional id."""
    foreign, group = ids(1, False), ids(1, True, "group")

    async def body(broker: KafkaBroker, written: Markers) -> Any:
        shell = api_txn.shell(broker)  # the other agent's coordinator, as far as metadata goes
        _, pid, epoch = await shell.init_producer_id(foreign, 60_000)
        await shell.add_offsets(foreign, pid, epoch, group)
        answer = await api_txn.txn_offset_commit(
            broker,
            header(28, 3),
            TxnOffsetCommitRequest(
                transactional_id=foreign,
                group_id=group,
                producer_id=pid,
                producer_epoch=epoch,
                topics=[
                    TxnOffsetCommitRequest.TxnOffsetCommitRequestTopic(
                        name="events",
                        partitions=[
                            TxnOffsetCommitRequest.TxnOffsetCommitRequestPartition(
                                partition_index=1, committed_offset=9
                            )
                        ],
                    )
                ],
            ),
        )
        record = await shell.load(foreign)
        assert record is not None
        return answer.topics[0].partitions[0].error_code, [o.offset for o in record.offsets]

    assert run(tmp_path, body) == (0, [9])
