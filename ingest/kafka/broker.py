"""The Kafka broker inside ingest: which APIs it serves, the listener, and what handlers share.

Every live agent of the cluster is a broker (its node id, Kafka advertised address and zone as
rack). Which one Kafka clients are told leads a partition or coordinates a group is
`self.cluster` (ingest/cluster.py: rendezvous hashing over the live agents, the same on every
agent); with the SQLite default that is this one agent, node id 0. Every agent still accepts
produce and fetch for every partition (no NOT_LEADER errors): leadership only spreads load.
Metadata reports leader epochs as unknown (-1) so clients follow leader moves; the log keeps
one epoch, `LEADER_EPOCH` (api_cluster.py says why). Handlers live one module per
area (`api_cluster`, `api_produce`, `api_fetch`, `api_groups`, `api_admin`, `api_storage`); each is
`async def handle(broker, header, request) -> response` and works for every version the
generated codec decodes (the codec fills version-specific fields).

Listener limits (settings, README): at most `kafka_max_connections` connections are served;
one more is accepted and closed at once (a warning once per burst of refusals, a count when it
ends). Each connection keeps its own limits (`connection.ConnectionLimits`) and all share one
`RequestBytesPool` of `kafka_max_queued_request_bytes`; one sweeper task
checks every connection's idle and slow-client timeouts a few times per shortest timeout. A
Produce or Fetch naming more than `max_partitions_per_request` partitions is refused whole
with INVALID_REQUEST on every partition (and the Fetch's top-level error), before any handler
or ring sees it; a Produce naming more than four times that many topics and partitions is not
even decoded: the connection closes (see connection.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ingest.cluster import ClusterView
from ingest.kafka import authorize
from ingest.kafka.connection import (
    NO_RESPONSE,
    ConnectionLimits,
    KafkaConnection,
    RequestBytesPool,
)
from ingest.kafka.groups import GroupCoordinator
from ingest.kafka.sasl import ListenerSecurity
from ingest.pipeline import Pipeline
from metadata import InvalidTopicError, TopicExistsError, TopicInfo
from metadata.async_store import AsyncMetadata
from streamhouse.config import Settings
from streamhouse.errors import ErrorCode
from streamhouse.kafka.messages import (
    ApiVersionsResponse,
    FetchRequest,
    FetchResponse,
    ProduceRequest,
    RequestHeader,
)
from streamhouse.process import spawn
from streamhouse.tls import kafka_server_context

log = logging.getLogger("ingest.kafka")

LEADER_EPOCH = 0
CLUSTER_ID = "streamhouse-cluster-0"

# API key -> (name, lowest and highest version advertised in ApiVersions).
ADVERTISED: dict[int, tuple[str, int, int]] = {
    0: ("Produce", 3, 11),
    1: ("Fetch", 4, 12),
    2: ("ListOffsets", 1, 7),
    3: ("Metadata", 0, 12),
    8: ("OffsetCommit", 2, 9),
    9: ("OffsetFetch", 1, 8),
    10: ("FindCoordinator", 0, 4),
    11: ("JoinGroup", 0, 9),
    12: ("Heartbeat", 0, 4),
    13: ("LeaveGroup", 0, 5),
    14: ("SyncGroup", 0, 5),
    15: ("DescribeGroups", 0, 5),
    16: ("ListGroups", 0, 5),
    18: ("ApiVersions", 0, 4),
    19: ("CreateTopics", 2, 7),
    20: ("DeleteTopics", 1, 6),
    21: ("DeleteRecords", 0, 2),
    22: ("InitProducerId", 0, 4),
    23: ("OffsetForLeaderEpoch", 0, 4),
    32: ("DescribeConfigs", 1, 4),
    33: ("AlterConfigs", 0, 2),
    34: ("AlterReplicaLogDirs", 0, 2),
    35: ("DescribeLogDirs", 0, 4),
    37: ("CreatePartitions", 0, 3),
    42: ("DeleteGroups", 0, 2),
    43: ("ElectLeaders", 0, 2),
    44: ("IncrementalAlterConfigs", 0, 1),
    45: ("AlterPartitionReassignments", 0, 0),
    46: ("ListPartitionReassignments", 0, 0),
    47: ("OffsetDelete", 0, 0),
    60: ("DescribeCluster", 0, 1),
    75: ("DescribeTopicPartitions", 0, 0),
}


def _area_apis() -> dict[int, tuple[str, int, int, Any]]:
    """The APIs of the areas that register themselves (api_txn, api_security, api_acls): each
    module's ``APIS`` maps an API key to (name, lowest, highest version, handler)."""
    from ingest.kafka import api_acls, api_security, api_txn

    merged: dict[int, tuple[str, int, int, Any]] = {}
    for module in (api_txn, api_security, api_acls):
        merged.update(module.APIS)
    return merged


ADVERTISED.update({key: (name, lo, hi) for key, (name, lo, hi, _) in _area_apis().items()})

Handler = Callable[["KafkaBroker", RequestHeader, Any], Awaitable[Any]]


class KafkaBroker:
    def __init__(
        self,
        settings: Settings,
        meta: AsyncMetadata,
        pipeline: Pipeline,
        cluster: ClusterView,
    ) -> None:
        self.settings = settings
        self.meta = meta
        self.pipeline = pipeline
        self.cluster = cluster
        self.host, self.port = settings.kafka_advertised_address
        self.coordinator = GroupCoordinator(
            initial_rebalance_delay_ms=settings.group_initial_rebalance_delay_ms,
            min_session_timeout_ms=settings.group_min_session_timeout_ms,
            max_session_timeout_ms=settings.group_max_session_timeout_ms,
        )
        self.connections: set[KafkaConnection] = set()
        self._handlers = _handlers()
        self._server: asyncio.Server | None = None
        self._limits = ConnectionLimits(
            max_frame_bytes=settings.kafka_max_request_bytes,
            max_non_produce_frame_bytes=settings.kafka_max_non_produce_request_bytes,
            max_produce_entries=4 * settings.max_partitions_per_request,
            max_in_flight_requests=settings.kafka_max_in_flight_requests,
            max_in_flight_bytes=settings.kafka_max_in_flight_bytes,
            send_buffer_bytes=settings.kafka_send_buffer_bytes,
            idle_timeout=settings.kafka_idle_timeout_ms / 1000,
            slow_client_timeout=settings.slow_client_timeout_ms / 1000,
        )
        self._pool = RequestBytesPool(settings.kafka_max_queued_request_bytes)
        # Authentication (ingest/kafka/sasl.py) and TLS (streamhouse/tls.py) of the listener.
        self._security = _listener_security(settings, meta)
        self._sweeper: asyncio.Task[None] | None = None
        self._refused = 0  # connections refused in the current burst

    # -- shared by handlers --------------------------------------------------------------

    async def topic(self, name: str | None) -> TopicInfo | None:
        return await self.meta.get_topic(name) if name else None

    async def topic_or_create(
        self, name: str, allow_create: bool = True
    ) -> tuple[TopicInfo | None, int]:
        """The topic, created with the default partition count when auto-creation is on.

        Returns (topic, error code) with UNKNOWN_TOPIC_OR_PARTITION or INVALID_TOPIC_EXCEPTION
        when there is no topic; UNKNOWN_TOPIC_OR_PARTITION too when ACLs do not let the caller
        create it.
        """
        topic = await self.topic(name)
        if topic is not None:
            return topic, 0
        if not (allow_create and self.settings.kafka_auto_create_topics):
            return None, 3
        if not authorize.may_auto_create(name):  # with ACLs: CREATE on the cluster or topic
            return None, 3
        try:
            topic = await self.meta.create_topic(name, self.settings.default_partitions, {})
            log.info("auto-created topic %s (%d partitions)", name, topic.partitions)
            return topic, 0
        except TopicExistsError:
            return await self.topic(name), 0
        except InvalidTopicError:
            return None, 17

    def api_versions(self) -> ApiVersionsResponse:
        return ApiVersionsResponse(
            error_code=0,
            api_keys=[
                ApiVersionsResponse.ApiVersion(api_key=key, min_version=lo, max_version=hi)
                for key, (_, lo, hi) in sorted(ADVERTISED.items())
            ],
        )

    # -- listener ------------------------------------------------------------------------

    def _dispatch(
        self, api_key: int, api_version: int, connection: KafkaConnection | None = None
    ) -> Callable[[RequestHeader, Any], Awaitable[Any]] | None:
        """The handler of a request, None for an API or version this broker does not advertise
        (the codec decodes more versions than the handlers serve, e.g. Fetch v13+ by topic id;
        Kafka closes the connection for those). With ``authorizer = acl`` the handler sees
        only what the caller may touch (ingest/kafka/authorize.py)."""
        handler = self._handlers.get(api_key)
        advertised = ADVERTISED.get(api_key)
        if handler is None or advertised is None:
            return None
        if not advertised[1] <= api_version <= advertised[2]:
            return None
        call: Callable[[RequestHeader, Any], Awaitable[Any]]
        if api_key in (PRODUCE, FETCH):
            call = lambda header, request: self._bounded(handler, header, request)  # noqa: E731
        else:
            call = lambda header, request: handler(self, header, request)  # noqa: E731
        if self.settings.authorizer == "none":
            return call
        host = _peer_host(connection)
        return lambda header, request: authorize.guarded(self, host, header, request, call)

    async def _bounded(self, handler: Handler, header: RequestHeader, request: Any) -> Any:
        """Runs a Produce or Fetch handler unless the request names too many partitions."""
        limit = self.settings.max_partitions_per_request
        if isinstance(request, ProduceRequest):
            count = sum(len(t.partition_data) for t in request.topic_data)
        else:
            count = sum(len(t.partitions) for t in request.topics)
        if count <= limit:
            return await handler(self, header, request)
        message = (
            f"the request names {count} partitions; at most {limit} are served per request "
            "(STREAMHOUSE_MAX_PARTITIONS_PER_REQUEST): split it"
        )
        log.warning("refusing a %s request: %s", ADVERTISED[header.request_api_key][0], message)
        if isinstance(request, ProduceRequest):
            return _refuse_produce(request, message)
        return _refuse_fetch(request)

    async def start(self) -> None:
        host, _, port = self.settings.kafka_listen.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._new_connection,
                host,
                int(port),
                reuse_address=True,
                ssl=kafka_server_context(self.settings),
            )
        except OSError as exc:
            raise OSError(
                f"cannot listen on {self.settings.kafka_listen} (STREAMHOUSE_KAFKA_LISTEN): {exc}"
            ) from None
        # Supervised: if the sweeper dies, ingest exits and is restarted (streamhouse.process).
        self._sweeper = spawn(self._sweep(), "Kafka connection sweeper")
        # The transaction coordinator's sweeper (api_txn.py): recovery now, then timeouts.
        from ingest.kafka import api_txn

        api_txn.start(self)

    def _new_connection(self) -> asyncio.BaseProtocol:
        limit = self.settings.kafka_max_connections
        if len(self.connections) >= limit:
            if self._refused == 0:
                log.warning(
                    "refusing Kafka connections: %d are open, the limit "
                    "(STREAMHOUSE_KAFKA_MAX_CONNECTIONS)",
                    limit,
                )
            self._refused += 1
            return _Refused()
        if self._refused:
            log.warning("refused %d Kafka connections while at the limit", self._refused)
            self._refused = 0
        connection = KafkaConnection(
            lambda key, version: self._dispatch(key, version, connection),
            self.api_versions,
            self._limits,
            self.connections.discard,
            self._pool,
            self._security,
        )
        self.connections.add(connection)
        return connection

    async def _sweep(self) -> None:
        """Checks every connection's timeouts, a few times per shortest timeout."""
        loop = asyncio.get_running_loop()
        shortest = min(self._limits.idle_timeout, self._limits.slow_client_timeout)
        interval = min(max(shortest / 5, 0.02), 1.0)
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for connection in list(self.connections):
                connection.check_timeouts(now)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close("the broker is stopping")
        self.coordinator.close()
        from ingest.kafka import api_txn

        api_txn.stop(self)


PRODUCE = 0
FETCH = 1


def _peer_host(connection: KafkaConnection | None) -> str:
    """The IP address of a connection's client ("" when unknown), for host-specific ACLs."""
    peer = connection.peer if connection is not None else "?"
    host = peer.rpartition(":")[0] if peer != "?" else ""
    return host.removeprefix("::ffff:")  # an IPv4 client of a dual-stack listener


def _listener_security(settings: Settings, meta: AsyncMetadata) -> ListenerSecurity:
    from ingest.kafka.api_security import lookup_credential
    from ingest.kafka.sasl import cluster_decoy_secret

    mechanisms = tuple(m.strip() for m in settings.sasl_mechanisms.split(",") if m.strip())

    async def lookup(mechanism: str, user: str) -> Any:
        return await lookup_credential(meta, mechanism, user)

    return ListenerSecurity(
        settings.kafka_security_protocol, mechanisms, lookup, cluster_decoy_secret(meta)
    )


class _Refused(asyncio.Protocol):
    """A connection beyond the limit: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _refuse_produce(request: ProduceRequest, message: str) -> Any:
    from ingest.kafka.api_produce import all_failed

    if request.acks == 0:
        return NO_RESPONSE
    return all_failed(request, ErrorCode.INVALID_REQUEST.kafka_code, message)


def _refuse_fetch(request: FetchRequest) -> FetchResponse:
    code = ErrorCode.INVALID_REQUEST.kafka_code
    return FetchResponse(
        error_code=code, responses=[authorize.fetch_refused(t, code) for t in request.topics]
    )


def _handlers() -> dict[int, Handler]:
    from ingest.kafka import (
        api_admin,
        api_cluster,
        api_fetch,
        api_groups,
        api_produce,
        api_storage,
    )

    return {
        0: api_produce.produce,
        1: api_fetch.fetch,
        2: api_fetch.list_offsets,
        3: api_cluster.metadata,
        8: api_groups.offset_commit,
        9: api_groups.offset_fetch,
        10: api_cluster.find_coordinator,
        11: api_groups.join_group,
        12: api_groups.heartbeat,
        13: api_groups.leave_group,
        14: api_groups.sync_group,
        15: api_groups.describe_groups,
        16: api_groups.list_groups,
        18: api_cluster.api_versions,
        19: api_admin.create_topics,
        20: api_admin.delete_topics,
        21: api_admin.delete_records,
        22: api_cluster.init_producer_id,
        23: api_fetch.offset_for_leader_epoch,
        32: api_admin.describe_configs,
        33: api_admin.alter_configs,
        34: api_storage.alter_replica_log_dirs,
        35: api_storage.describe_log_dirs,
        37: api_admin.create_partitions,
        42: api_groups.delete_groups,
        43: api_storage.elect_leaders,
        44: api_admin.incremental_alter_configs,
        45: api_storage.alter_partition_reassignments,
        46: api_storage.list_partition_reassignments,
        47: api_groups.offset_delete,
        60: api_cluster.describe_cluster,
        75: api_cluster.describe_topic_partitions,
    } | {key: handler for key, (_, _, _, handler) in _area_apis().items()}
