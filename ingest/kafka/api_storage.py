"""Kafka's log-dir, reassignment and leader-election APIs, answered as a Kafka cluster on
object storage truthfully would.

There are no broker replicas to place or move: every partition's log is in the object store,
every agent serves every partition, and the leader Kafka clients are told of is the rendezvous
choice over the live agents (ingest/cluster.py), which is already the preferred one.

- DescribeLogDirs: one log dir per agent, the object store URL (`api_admin.log_dir`, without
  credentials), holding the partitions this agent leads, each with its size (the stored bytes
  of its live blocks, summed from the metadata block rows) and offset lag 0 (there is no
  replica behind). Each agent answers for its own partitions, so a client that sums over the
  brokers counts each partition once. Total and usable bytes are unknown (-1): object storage
  has no volume size. The sizes come from every block row of those partitions, a page at a
  time; an agent computes one DescribeLogDirs at a time (others wait), so repeating it cannot
  multiply the metadata load.
- AlterReplicaLogDirs: moving a replica to the dir it is in succeeds with nothing to do; any
  other path is LOG_DIR_NOT_FOUND (there is one dir); an unknown partition
  UNKNOWN_TOPIC_OR_PARTITION.
- ListPartitionReassignments: none is ever in progress: an empty list.
- AlterPartitionReassignments: a target of distinct registered agents succeeds at once with
  nothing moved (the object store already holds the data for every agent); unknown brokers or
  an empty or repeated list are INVALID_REPLICA_ASSIGNMENT; cancelling (replicas null) is
  NO_REASSIGNMENT_IN_PROGRESS; an unknown partition UNKNOWN_TOPIC_OR_PARTITION.
- ElectLeaders (preferred or unclean): the leader is always the preferred one and available,
  so a named partition is ELECTION_NOT_NEEDED, as Kafka answers when the preferred replica
  leads; all partitions (null) lists none, as Kafka lists only partitions it elected.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

from ingest.kafka import errors
from ingest.kafka.api_admin import INVALID_REPLICA_ASSIGNMENT, log_dir
from metadata import TopicInfo
from metadata.async_store import TopicLookup
from streamhouse.kafka.messages import (
    AlterPartitionReassignmentsRequest,
    AlterPartitionReassignmentsResponse,
    AlterReplicaLogDirsRequest,
    AlterReplicaLogDirsResponse,
    DescribeLogDirsRequest,
    DescribeLogDirsResponse,
    ElectLeadersRequest,
    ElectLeadersResponse,
    ListPartitionReassignmentsRequest,
    ListPartitionReassignmentsResponse,
    RequestHeader,
)

if TYPE_CHECKING:
    from ingest.kafka.broker import KafkaBroker

# Kafka error codes the shared table (streamhouse/errors.py) does not list.
LOG_DIR_NOT_FOUND = 57
ELECTION_NOT_NEEDED = 84
NO_REASSIGNMENT_IN_PROGRESS = 85

_BLOCK_PAGE = 1000


async def _topics(broker: KafkaBroker, names: list[str]) -> dict[str, TopicInfo]:
    """The named topics that exist, in one metadata call."""
    found = await broker.meta.topic_states([TopicLookup(n) for n in names])
    return {n: f.topic for n, f in zip(names, found, strict=True) if f is not None}


async def _partition_bytes(broker: KafkaBroker, topic_id: int, partition: int) -> int:
    """The stored bytes of a partition's live blocks (block rows, a page at a time)."""
    total, offset = 0, 0
    while True:
        blocks = await broker.meta.partition_blocks(topic_id, partition, offset, _BLOCK_PAGE)
        total += sum(b.byte_length for b in blocks)
        if len(blocks) < _BLOCK_PAGE:
            return total
        offset = blocks[-1].end_offset


_SIZING: weakref.WeakKeyDictionary[KafkaBroker, asyncio.Lock] = weakref.WeakKeyDictionary()


async def describe_log_dirs(
    broker: KafkaBroker, header: RequestHeader, request: DescribeLogDirsRequest
) -> DescribeLogDirsResponse:
    # Sizing reads every block row of the partitions asked for (a page at a time): one such
    # request at a time per agent, so clients repeating it cannot multiply the metadata load.
    lock = _SIZING.get(broker)
    if lock is None:
        lock = _SIZING[broker] = asyncio.Lock()
    async with lock:
        return await _describe_log_dirs(broker, request)


async def _describe_log_dirs(
    broker: KafkaBroker, request: DescribeLogDirsRequest
) -> DescribeLogDirsResponse:
    D = DescribeLogDirsResponse
    me = broker.cluster.self_agent.agent_id
    if request.topics is None:
        asked = {t.name: None for t in await broker.meta.list_topics()}
        known = await _topics(broker, list(asked))
    else:
        asked_parts: dict[str, set[int] | None] = {}
        for t in request.topics:
            asked_parts.setdefault(t.topic, set())
            parts = asked_parts[t.topic]
            assert parts is not None
            parts.update(t.partitions)
        asked = asked_parts  # type: ignore[assignment]
        known = await _topics(broker, list(asked))
    topics = []
    for name in sorted(known):
        topic = known[name]
        wanted = asked.get(name)
        leaders = broker.cluster.leaders(topic.topic_id, topic.partitions)
        partitions = []
        for p in range(topic.partitions):
            if wanted is not None and p not in wanted:
                continue
            if leaders[p].agent_id != me:
                continue
            partitions.append(
                D.DescribeLogDirsPartition(
                    partition_index=p,
                    partition_size=await _partition_bytes(broker, topic.topic_id, p),
                    offset_lag=0,
                    is_future_key=False,
                )
            )
        if partitions:
            topics.append(D.DescribeLogDirsTopic(name=name, partitions=partitions))
    return D(
        error_code=0,
        results=[
            D.DescribeLogDirsResult(
                error_code=0,
                log_dir=log_dir(broker),
                topics=topics,
                total_bytes=-1,
                usable_bytes=-1,
            )
        ],
    )


async def alter_replica_log_dirs(
    broker: KafkaBroker, header: RequestHeader, request: AlterReplicaLogDirsRequest
) -> AlterReplicaLogDirsResponse:
    R = AlterReplicaLogDirsResponse
    here = log_dir(broker)
    names = sorted({t.name for d in request.dirs for t in d.topics})
    known = await _topics(broker, names)
    results = []
    for d in request.dirs:
        for t in d.topics:
            topic = known.get(t.name)
            partitions = []
            for p in t.partitions:
                if topic is None or not 0 <= p < topic.partitions:
                    code = errors.UNKNOWN_TOPIC_OR_PARTITION
                elif d.path != here:
                    code = LOG_DIR_NOT_FOUND
                else:
                    code = 0
                partitions.append(
                    R.AlterReplicaLogDirPartitionResult(partition_index=p, error_code=code)
                )
            results.append(
                R.AlterReplicaLogDirTopicResult(topic_name=t.name, partitions=partitions)
            )
    return R(results=results)


async def list_partition_reassignments(
    broker: KafkaBroker, header: RequestHeader, request: ListPartitionReassignmentsRequest
) -> ListPartitionReassignmentsResponse:
    return ListPartitionReassignmentsResponse(error_code=0, error_message=None, topics=[])


async def alter_partition_reassignments(
    broker: KafkaBroker, header: RequestHeader, request: AlterPartitionReassignmentsRequest
) -> AlterPartitionReassignmentsResponse:
    R = AlterPartitionReassignmentsResponse
    known = await _topics(broker, sorted({t.name for t in request.topics}))
    brokers = {a.node_id for a in broker.cluster.agents()}
    responses = []
    for t in request.topics:
        topic = known.get(t.name)
        partitions = []
        for p in t.partitions:
            code, message = 0, None
            replicas = p.replicas
            if topic is None or not 0 <= p.partition_index < topic.partitions:
                code = errors.UNKNOWN_TOPIC_OR_PARTITION
                message = f"{t.name}[{p.partition_index}] does not exist"
            elif replicas is None:
                code = NO_REASSIGNMENT_IN_PROGRESS
                message = "no reassignment is in progress: reassignments complete at once here"
            elif not replicas or len(set(replicas)) != len(replicas):
                code = INVALID_REPLICA_ASSIGNMENT
                message = f"the replicas must be distinct broker ids, got {list(replicas)}"
            elif unknown := sorted(set(replicas) - brokers):
                code = INVALID_REPLICA_ASSIGNMENT
                message = (
                    f"broker {unknown[0]} is not a registered agent (brokers: {sorted(brokers)})"
                )
            partitions.append(
                R.ReassignablePartitionResponse(
                    partition_index=p.partition_index, error_code=code, error_message=message
                )
            )
        responses.append(R.ReassignableTopicResponse(name=t.name, partitions=partitions))
    return R(error_code=0, error_message=None, responses=responses)


async def elect_leaders(
    broker: KafkaBroker, header: RequestHeader, request: ElectLeadersRequest
) -> ElectLeadersResponse:
    E = ElectLeadersResponse
    if request.topic_partitions is None:
        return E(error_code=0, replica_election_results=[])
    known = await _topics(broker, sorted({t.topic for t in request.topic_partitions}))
    results = []
    for t in request.topic_partitions:
        topic = known.get(t.topic)
        partitions = []
        for p in t.partitions:
            if topic is None or not 0 <= p < topic.partitions:
                code, message = errors.UNKNOWN_TOPIC_OR_PARTITION, f"{t.topic}[{p}] does not exist"
            else:
                code, message = (
                    ELECTION_NOT_NEEDED,
                    "the preferred leader already leads (every agent serves every partition)",
                )
            partitions.append(
                E.PartitionResult(partition_id=p, error_code=code, error_message=message)
            )
        results.append(E.ReplicaElectionResult(topic=t.topic, partition_result=partitions))
    return E(error_code=0, replica_election_results=results)
