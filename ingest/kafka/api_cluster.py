"""Cluster-level Kafka APIs: ApiVersions, Metadata, DescribeCluster, FindCoordinator,
InitProducerId.

Brokers are the live agents of `broker.cluster` (ingest/cluster.py), each with its node id,
Kafka advertised address and zone as rack; the controller is the lowest live node id. A
partition's leader is the rendezvous choice over the live agents (over those of the client's
zone when its client.id carries `streamhouse_az=<zone>` and any of them is alive), its replicas
and ISR just that leader. FindCoordinator answers the coordinator agent of a group or a
transactional id (zones play no part). With one agent all of these are that agent.

Leader epochs in Metadata are -1 ("unknown"), not a constant 0. Older librdkafka 2.x releases
(`rd_kafka_toppar_leader_update`, e.g. the copy vendored in mongodb/mongo) take a new leader
from metadata only if the cached epoch is -1 or the new epoch is greater, so at a constant
epoch 0 a partition stays pinned to its first leader, even after that agent died; current
librdkafka (2.16 here) ignores only strictly older epochs, so both work with it (the agents
integration test moves partitions either way). The Java client accepts any leader when the
epoch is absent. With -1 every metadata refresh may move a partition. The log itself keeps
one epoch, 0 (ListOffsets and OffsetForLeaderEpoch answer `LEADER_EPOCH` with the high
watermark as its end offset), so a consumer's offset validation after a move succeeds.

Authorized operations (Metadata v8+, DescribeCluster, DescribeTopicPartitions, DescribeGroups
v3+), when asked for: these handlers answer the bit set of every operation a resource type
supports (`TOPIC_OPERATIONS`, `CLUSTER_OPERATIONS`, `GROUP_OPERATIONS`, bit i = Kafka's
AclOperation code i), which is the truth with no authorizer (everyone may do everything); with
`authorizer = acl`, ingest/kafka/authorize.py rewrites them to what the caller may do. When not
asked for, Kafka's "not requested" value INT32_MIN.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from ingest.cluster import ClusterView, client_zone
from ingest.kafka import errors
from ingest.kafka.api_txn import init_transactional
from ingest.kafka.broker import CLUSTER_ID
from metadata import AgentInfo, TopicInfo
from metadata.async_store import TopicLookup
from streamhouse.kafka.messages import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    DescribeClusterRequest,
    DescribeClusterResponse,
    DescribeTopicPartitionsRequest,
    DescribeTopicPartitionsResponse,
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    InitProducerIdRequest,
    InitProducerIdResponse,
    MetadataRequest,
    MetadataResponse,
    RequestHeader,
)

if TYPE_CHECKING:
    from ingest.kafka.broker import KafkaBroker

M = MetadataResponse

#: Leader epoch of every partition in Metadata responses: unknown (see the module docstring).
METADATA_LEADER_EPOCH = -1

# Kafka's AclOperation codes.
_READ, _WRITE, _CREATE, _DELETE, _ALTER, _DESCRIBE = 3, 4, 5, 6, 7, 8
_CLUSTER_ACTION, _DESCRIBE_CONFIGS, _ALTER_CONFIGS, _IDEMPOTENT_WRITE = 9, 10, 11, 12


def _bits(*operations: int) -> int:
    return sum(1 << op for op in operations)


#: Every operation Kafka defines on a topic, cluster or group (no authorizer: all allowed).
TOPIC_OPERATIONS = _bits(
    _READ, _WRITE, _CREATE, _DELETE, _ALTER, _DESCRIBE, _DESCRIBE_CONFIGS, _ALTER_CONFIGS
)
CLUSTER_OPERATIONS = _bits(
    _CREATE,
    _ALTER,
    _DESCRIBE,
    _CLUSTER_ACTION,
    _DESCRIBE_CONFIGS,
    _ALTER_CONFIGS,
    _IDEMPOTENT_WRITE,
)
GROUP_OPERATIONS = _bits(_READ, _DELETE, _DESCRIBE)
#: Kafka's value when authorized operations were not asked for.
NOT_REQUESTED = -(2**31)


async def api_versions(
    broker: KafkaBroker, header: RequestHeader, request: ApiVersionsRequest
) -> ApiVersionsResponse:
    return broker.api_versions()


def _topic_entry(
    cluster: ClusterView,
    zone: str,
    topic: TopicInfo | None,
    name: str,
    error: int,
    operations: int = NOT_REQUESTED,
) -> M.MetadataResponseTopic:
    if topic is None:
        return M.MetadataResponseTopic(
            error_code=error or errors.UNKNOWN_TOPIC_OR_PARTITION, name=name
        )
    leaders = cluster.leaders(topic.topic_id, topic.partitions, zone)
    return M.MetadataResponseTopic(
        error_code=0,
        name=topic.name,
        topic_id=uuid.UUID(bytes=topic.uuid),
        is_internal=False,
        topic_authorized_operations=operations,
        partitions=[
            M.MetadataResponsePartition(
                error_code=0,
                partition_index=p,
                leader_id=leader.node_id,
                leader_epoch=METADATA_LEADER_EPOCH,
                replica_nodes=[leader.node_id],
                isr_nodes=[leader.node_id],
                offline_replicas=[],
            )
            for p, leader in enumerate(leaders)
        ],
    )


def _rack(agent: AgentInfo) -> str | None:
    return agent.zone or None


async def metadata(
    broker: KafkaBroker, header: RequestHeader, request: MetadataRequest
) -> MetadataResponse:
    version = header.request_api_version
    cluster = broker.cluster
    zone = client_zone(header.client_id)
    entries: list[M.MetadataResponseTopic] = []
    ops = (
        TOPIC_OPERATIONS
        if version >= 8 and request.include_topic_authorized_operations
        else NOT_REQUESTED
    )
    if request.topics is None or (version == 0 and not request.topics):
        for topic in await broker.meta.list_topics():
            entries.append(_topic_entry(cluster, zone, topic, topic.name, 0, ops))
    else:
        allow = request.allow_auto_topic_creation if version >= 4 else True
        # Every named topic in one metadata call (off the loop); only missing ones are created.
        found = await broker.meta.topic_states(
            [TopicLookup(t.name, t.topic_id.bytes if t.topic_id else None) for t in request.topics]
        )
        for wanted, known in zip(request.topics, found, strict=True):
            name = wanted.name
            if not name and wanted.topic_id is not None and wanted.topic_id.int != 0:
                topic = known.topic if known is not None else None
                if topic is None:
                    entries.append(
                        M.MetadataResponseTopic(
                            error_code=errors.UNKNOWN_TOPIC_ID, name=None, topic_id=wanted.topic_id
                        )
                    )
                    continue
                name = topic.name
            if known is not None and known.topic.name == name:
                topic, error = known.topic, 0
            else:
                topic, error = await broker.topic_or_create(name or "", allow)
            entries.append(_topic_entry(cluster, zone, topic, name or "", error, ops))
    return MetadataResponse(
        brokers=[
            M.MetadataResponseBroker(
                node_id=a.node_id, host=a.kafka_host, port=a.kafka_port, rack=_rack(a)
            )
            for a in cluster.live()
        ],
        cluster_id=CLUSTER_ID,
        controller_id=cluster.controller_id,
        topics=entries,
        cluster_authorized_operations=CLUSTER_OPERATIONS
        if 8 <= version <= 10 and request.include_cluster_authorized_operations
        else NOT_REQUESTED,
    )


async def describe_cluster(
    broker: KafkaBroker, header: RequestHeader, request: DescribeClusterRequest
) -> DescribeClusterResponse:
    cluster = broker.cluster
    return DescribeClusterResponse(
        error_code=0,
        endpoint_type=request.endpoint_type,
        cluster_id=CLUSTER_ID,
        controller_id=cluster.controller_id,
        brokers=[
            DescribeClusterResponse.DescribeClusterBroker(
                broker_id=a.node_id, host=a.kafka_host, port=a.kafka_port, rack=_rack(a)
            )
            for a in cluster.live()
        ],
        cluster_authorized_operations=CLUSTER_OPERATIONS
        if request.include_cluster_authorized_operations
        else NOT_REQUESTED,
    )


async def describe_topic_partitions(
    broker: KafkaBroker, header: RequestHeader, request: DescribeTopicPartitionsRequest
) -> DescribeTopicPartitionsResponse:
    """Topics by name (every topic when none is named) with their partitions, in name order,
    at most `response_partition_limit` partitions per answer (the rest from `next_cursor`), as
    Kafka 3.9's paginated DescribeTopics; authorized operations always answered."""
    D = DescribeTopicPartitionsResponse
    cluster = broker.cluster
    zone = client_zone(header.client_id)
    limit = max(request.response_partition_limit, 1)
    if request.topics:
        names = sorted({t.name for t in request.topics})
    else:  # none named: every topic, as Kafka answers
        names = sorted(t.name for t in await broker.meta.list_topics())
    cursor = request.cursor
    if cursor is not None:
        names = [n for n in names if n >= cursor.topic_name]
    found = await broker.meta.topic_states([TopicLookup(n) for n in names])
    topics: list[D.DescribeTopicPartitionsResponseTopic] = []
    next_cursor = None
    budget = limit
    for name, known in zip(names, found, strict=True):
        if known is None:
            topics.append(
                D.DescribeTopicPartitionsResponseTopic(
                    error_code=errors.UNKNOWN_TOPIC_OR_PARTITION, name=name, partitions=[]
                )
            )
            continue
        topic = known.topic
        first = cursor.partition_index if cursor is not None and name == cursor.topic_name else 0
        if budget == 0:
            next_cursor = D.Cursor(topic_name=name, partition_index=first)
            break
        leaders = cluster.leaders(topic.topic_id, topic.partitions, zone)
        last = min(topic.partitions, first + budget)
        topics.append(
            D.DescribeTopicPartitionsResponseTopic(
                error_code=0,
                name=topic.name,
                topic_id=uuid.UUID(bytes=topic.uuid),
                is_internal=False,
                topic_authorized_operations=TOPIC_OPERATIONS,
                partitions=[
                    D.DescribeTopicPartitionsResponsePartition(
                        error_code=0,
                        partition_index=p,
                        leader_id=leaders[p].node_id,
                        leader_epoch=METADATA_LEADER_EPOCH,
                        replica_nodes=[leaders[p].node_id],
                        isr_nodes=[leaders[p].node_id],
                        eligible_leader_replicas=[],
                        last_known_elr=[],
                        offline_replicas=[],
                    )
                    for p in range(first, last)
                ],
            )
        )
        budget -= last - first
        if last < topic.partitions:
            next_cursor = D.Cursor(topic_name=name, partition_index=last)
            break
    return D(topics=topics, next_cursor=next_cursor)


async def find_coordinator(
    broker: KafkaBroker, header: RequestHeader, request: FindCoordinatorRequest
) -> FindCoordinatorResponse:
    # key_type 0 is a group, 1 a transactional id: both by the same rendezvous over the live
    # agents (ingest/cluster.py).
    if header.request_api_version >= 4:
        return FindCoordinatorResponse(
            coordinators=[
                _coordinator(broker, key, request.key_type) for key in request.coordinator_keys
            ]
        )
    found = _coordinator(broker, request.key, request.key_type)
    return FindCoordinatorResponse(
        error_code=found.error_code,
        error_message=found.error_message,
        node_id=found.node_id,
        host=found.host,
        port=found.port,
    )


#: FindCoordinator key types served: a consumer group, a transactional id.
_GROUP_KEY, _TXN_KEY = 0, 1


def _coordinator(
    broker: KafkaBroker, key: str, key_type: int
) -> FindCoordinatorResponse.Coordinator:
    if key_type not in (_GROUP_KEY, _TXN_KEY) or (key_type == _TXN_KEY and not key):
        what = "an empty transactional id" if key_type == _TXN_KEY else f"key type {key_type}"
        return FindCoordinatorResponse.Coordinator(
            key=key,
            node_id=-1,
            host="",
            port=-1,
            error_code=errors.INVALID_REQUEST,
            error_message=f"{what} has no coordinator: key types 0 (group) and 1 "
            "(transactional id) are served",
        )
    coordinator = broker.cluster.coordinator_for(key)
    return FindCoordinatorResponse.Coordinator(
        key=key,
        node_id=coordinator.node_id,
        host=coordinator.kafka_host,
        port=coordinator.kafka_port,
        error_code=0,
    )


async def init_producer_id(
    broker: KafkaBroker, header: RequestHeader, request: InitProducerIdRequest
) -> InitProducerIdResponse:
    if request.transactional_id:
        # Transactional: the transaction coordinator (api_txn.py) allocates or bumps.
        error, producer_id, epoch = await init_transactional(
            broker,
            request.transactional_id,
            request.transaction_timeout_ms,
            request.producer_id,
            request.producer_epoch,
            header.request_api_version,
        )
        return InitProducerIdResponse(
            error_code=error, producer_id=producer_id, producer_epoch=epoch
        )
    # A metadata write waits for SQLite's lock and an fsync: not on the event loop.
    producer_id, epoch = await broker.meta.allocate_producer_id()
    return InitProducerIdResponse(error_code=0, producer_id=producer_id, producer_epoch=epoch)
