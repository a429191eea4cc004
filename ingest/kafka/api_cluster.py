"""Cluster-level Kafka APIs: ApiVersions, Metadata, DescribeCluster, FindCoordinator,
InitProducerId.

Brokers are the live agents of `broker.cluster` (ingest/cluster.py), each with its node id,
Kafka advertised address and zone as rack; the controller is the lowest live node id. A
partition's leader is the rendezvous choice over the live agents (over those of the client's
zone when its client.id carries `streamhouse_az=<zone>` and any of them is alive), its replicas
and ISR just that leader. FindCoordinator answers the group's coordinator agent (zones play no
part). With one agent all of these are that agent.

Leader epochs in Metadata are -1 ("unknown"), not a constant 0. Older librdkafka 2.x releases
(`rd_kafka_toppar_leader_update`, e.g. the copy vendored in mongodb/mongo) take a new leader
from metadata only if the cached epoch is -1 or the new epoch is greater, so at a constant
epoch 0 a partition stays pinned to its first leader, even after that agent died; current
librdkafka (2.16 here) ignores only strictly older epochs, so both work with it (the agents
integration test moves partitions either way). The Java client accepts any leader when the
epoch is absent. With -1 every metadata refresh may move a partition. The log itself keeps
one epoch, 0 (ListOffsets and OffsetForLeaderEpoch answer `LEADER_EPOCH` with the high
watermark as its end offset), so a consumer's offset validation after a move succeeds.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from ingest.cluster import ClusterView, client_zone
from ingest.kafka import errors
from ingest.kafka.broker import CLUSTER_ID
from metadata import AgentInfo, TopicInfo
from metadata.async_store import TopicLookup
from streamhouse.kafka.messages import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    DescribeClusterRequest,
    DescribeClusterResponse,
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


async def api_versions(
    broker: KafkaBroker, header: RequestHeader, request: ApiVersionsRequest
) -> ApiVersionsResponse:
    return broker.api_versions()


def _topic_entry(
    cluster: ClusterView, zone: str, topic: TopicInfo | None, name: str, error: int
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
    if request.topics is None or (version == 0 and not request.topics):
        for topic in await broker.meta.list_topics():
            entries.append(_topic_entry(cluster, zone, topic, topic.name, 0))
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
            entries.append(_topic_entry(cluster, zone, topic, name or "", error))
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
    )


async def find_coordinator(
    broker: KafkaBroker, header: RequestHeader, request: FindCoordinatorRequest
) -> FindCoordinatorResponse:
    # key_type 0 is a group, 1 a transactional id (transactions are not supported).
    if header.request_api_version >= 4:
        return FindCoordinatorResponse(
            coordinators=[
                _coordinator(broker, key, request.key_type) for key in request.coordinator_keys
            ]
        )
    if request.key_type != 0:
        return FindCoordinatorResponse(
            error_code=errors.COORDINATOR_NOT_AVAILABLE,
            error_message="transactions are not supported",
            node_id=-1,
            host="",
            port=-1,
        )
    coordinator = broker.cluster.coordinator_for(request.key)
    return FindCoordinatorResponse(
        error_code=0,
        error_message=None,
        node_id=coordinator.node_id,
        host=coordinator.kafka_host,
        port=coordinator.kafka_port,
    )


def _coordinator(
    broker: KafkaBroker, key: str, key_type: int
) -> FindCoordinatorResponse.Coordinator:
    if key_type != 0:
        return FindCoordinatorResponse.Coordinator(
            key=key,
            node_id=-1,
            host="",
            port=-1,
            error_code=errors.COORDINATOR_NOT_AVAILABLE,
            error_message="transactions are not supported",
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
        return InitProducerIdResponse(
            error_code=errors.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            producer_id=-1,
            producer_epoch=-1,
        )
    # A metadata write waits for SQLite's lock and an fsync: not on the event loop.
    producer_id, epoch = await broker.meta.allocate_producer_id()
    return InitProducerIdResponse(error_code=0, producer_id=producer_id, producer_epoch=epoch)
