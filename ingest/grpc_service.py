"""The gRPC front door: service `streamhouse.v1.StreamHouse`, health and reflection.

Consume and Subscribe answer with ConsumeResponse bytes built by the reader and ingest
(streamhouse.record_wire), so their handlers use an identity serializer. ProduceBatch and
ProduceStream requests stay bytes: their scalar fields are read and their records transcoded
into Kafka batches in C (ingest/produce.py, ingest/_grpcproduce.c). Every other call uses the
generated protobuf classes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ingest.cluster import ClusterView
from ingest.grpc_acl import guarded
from ingest.grpc_auth import AuthenticationFailed, GrpcAuthenticator
from ingest.pipeline import Pipeline
from ingest.produce import (
    MalformedRequest,
    Partitioner,
    ProduceRejected,
    RawProduceBatch,
    plan_request,
)
from ingest.serving import ServingMonitor
from metadata import (
    AgentInfo,
    InvalidTopicError,
    TopicExistsError,
    TopicInfo,
    UnknownTopicError,
)
from metadata.async_store import AsyncMetadata
from streamhouse.config import Settings
from streamhouse.errors import StreamHouseError, from_ring
from streamhouse.frames import FORMAT_RECORDS, FetchPart, FetchRequest
from streamhouse.grpc_options import server_options
from streamhouse.principal import current_principal
from streamhouse.proto import streamhouse_pb2 as pb
from streamhouse.record_wire import consume_response_tail
from streamhouse.tls import grpc_server_credentials
from streamhouse.topic_config import (
    REPLICA_ASSIGNMENT,
    TopicConfigError,
    effective_config,
    validate_topic_config,
)

log = logging.getLogger("ingest.grpc")

SERVICE = "streamhouse.v1.StreamHouse"
DEFAULT_MAX_RECORDS = 10_000
DEFAULT_MAX_BYTES = 1024 * 1024
SUBSCRIBE_WAIT_MS = 1_000
_ASSIGNMENT_READ_ONLY = (
    f"{REPLICA_ASSIGNMENT} records the replica assignment a Kafka CreateTopics or "
    "CreatePartitions request was given; it cannot be set or removed as a config"
)


class StreamHouseService:
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
        self.partitioner = Partitioner()
        self.authenticator = GrpcAuthenticator(settings, meta)  # ingest/grpc_auth.py

    # -- helpers -------------------------------------------------------------------------

    async def _topic(self, name: str) -> TopicInfo:
        topic = await self.meta.get_topic(name)
        if topic is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"topic {name!r} does not exist")
        return topic

    def _effective_config(self, config: dict[str, str]) -> dict[str, str]:
        """Every topic config key with its value: the topic's own, or what this agent applies
        (max.message.bytes not set on the topic is the max_batch_bytes setting, as Kafka's
        DescribeConfigs reports it from message.max.bytes)."""
        effective = effective_config(config)
        if "max.message.bytes" not in config:
            effective["max.message.bytes"] = str(self.settings.max_batch_bytes)
        return effective

    async def _topic_message(self, topic: TopicInfo) -> pb.Topic:
        parts = [
            pb.PartitionInfo(
                partition=p.partition,
                log_start_offset=p.log_start_offset,
                high_watermark=p.high_watermark,
            )
            for p in await self.meta.list_partitions(topic.topic_id)
        ]
        return pb.Topic(
            name=topic.name,
            partitions=topic.partitions,
            config=self._effective_config(topic.config),
            topic_id=topic.uuid.hex(),
            partition_info=parts,
        )

    # -- admin ---------------------------------------------------------------------------

    async def CreateTopic(
        self, request: pb.CreateTopicRequest, context: Any
    ) -> pb.CreateTopicResponse:
        partitions = request.partitions or self.settings.default_partitions
        if REPLICA_ASSIGNMENT in request.config:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, _ASSIGNMENT_READ_ONLY)
        try:
            config = validate_topic_config(dict(request.config))
            # Metadata writes wait for SQLite's lock and an fsync: not on the event loop.
            topic = await self.meta.create_topic(request.name, partitions, config)
        except (TopicConfigError, InvalidTopicError) as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except TopicExistsError:
            raise _Abort(
                grpc.StatusCode.ALREADY_EXISTS, f"topic {request.name!r} already exists"
            ) from None
        log.info("created topic %s with %d partitions", topic.name, topic.partitions)
        return pb.CreateTopicResponse(topic=await self._topic_message(topic))

    async def GetTopic(self, request: pb.GetTopicRequest, context: Any) -> pb.GetTopicResponse:
        topic = await self._topic(request.name)
        return pb.GetTopicResponse(topic=await self._topic_message(topic))

    async def ListTopics(
        self, request: pb.ListTopicsRequest, context: Any
    ) -> pb.ListTopicsResponse:
        return pb.ListTopicsResponse(
            topics=[await self._topic_message(t) for t in await self.meta.list_topics()]
        )

    async def AlterTopicConfig(
        self, request: pb.AlterTopicConfigRequest, context: Any
    ) -> pb.AlterTopicConfigResponse:
        """Sets `set_entries` and removes `delete_entries` (back to their defaults) in the
        topic's stored config, as IncrementalAlterConfigs SET and DELETE, in one metadata
        transaction (alterations of other keys at the same moment all stay); the whole new
        config is validated before anything is stored."""
        if (
            REPLICA_ASSIGNMENT in request.set_entries
            or REPLICA_ASSIGNMENT in request.delete_entries
        ):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, _ASSIGNMENT_READ_ONLY)
        both = sorted(set(request.set_entries) & set(request.delete_entries))
        if both:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"config {', '.join(both)} is both set and deleted: give each entry once",
            )
        try:
            topic = await self.meta.alter_topic_config(
                request.name,
                dict(request.set_entries),
                list(dict.fromkeys(request.delete_entries)),
                request.validate_only,
            )
        except UnknownTopicError:
            raise _Abort(
                grpc.StatusCode.NOT_FOUND, f"topic {request.name!r} does not exist"
            ) from None
        except InvalidTopicError as exc:  # InvalidConfigError: the new config is not valid
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if not request.validate_only:
            log.info("altered the config of topic %s: %s", topic.name, topic.config)
        message = await self._topic_message(topic)
        if request.validate_only:
            message.config.clear()
            message.config.update(self._effective_config(topic.config))
        return pb.AlterTopicConfigResponse(topic=message)

    async def DeleteTopic(
        self, request: pb.DeleteTopicRequest, context: Any
    ) -> pb.DeleteTopicResponse:
        try:
            await self.meta.delete_topic(request.name)
        except UnknownTopicError:
            raise _Abort(
                grpc.StatusCode.NOT_FOUND, f"topic {request.name!r} does not exist"
            ) from None
        log.info("deleted topic %s", request.name)
        return pb.DeleteTopicResponse()

    # -- produce -------------------------------------------------------------------------

    async def _produce(
        self,
        topic_name: str,
        partition: int | None,
        data: bytes,
        record_count: int,
        producer: tuple[int, int, int] | None,
    ) -> pb.ProduceBatchResponse:
        """Produces the records of ``data``, a ProduceBatchRequest's bytes (ingest/produce.py)."""
        topic = await self._topic(topic_name)
        try:
            slots = plan_request(
                topic.topic_id,
                topic.partitions,
                data,
                record_count,
                partition,
                self.partitioner,
                self.settings.max_record_bytes,
                self.settings.max_batch_bytes,
                producer,
                log_append_time=topic.config.get("message.timestamp.type") == "LogAppendTime",
                topic_config=topic.config,
            )
        except ProduceRejected as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        limit = self.settings.max_partitions_per_request
        if len(slots) > limit:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the records go to {len(slots)} partitions; at most {limit} are served per "
                "request (STREAMHOUSE_MAX_PARTITIONS_PER_REQUEST): split the batch",
            )
        try:
            self.pipeline.name_topic(topic.topic_id, topic.name)
            outcome = await self.pipeline.produce(slots, protocol="grpc")
        except StreamHouseError as exc:
            raise _abort_for(exc, f"produce to topic {topic_name!r}") from None
        results = []
        for slot, slot_results in zip(slots, outcome, strict=True):
            base_offset, error = slot_results[0]
            if error is not None:
                raise _abort_for(error, f"produce to topic {topic_name!r}")
            results.append(
                pb.PartitionResult(
                    partition=slot.partition,
                    base_offset=base_offset,
                    record_count=slot.batches[0].record_count,
                )
            )
        return pb.ProduceBatchResponse(
            partition=results[0].partition,
            base_offset=results[0].base_offset,
            record_count=record_count,
            results=results,
        )

    async def Produce(self, request: pb.ProduceRequest, context: Any) -> pb.ProduceResponse:
        partition = request.partition if request.HasField("partition") else None
        data = pb.ProduceBatchRequest(records=[request.record]).SerializeToString()
        result = await self._produce(request.topic, partition, data, 1, None)
        return pb.ProduceResponse(partition=result.partition, base_offset=result.base_offset)

    async def ProduceBatch(self, request: RawProduceBatch, context: Any) -> pb.ProduceBatchResponse:
        # The request arrives as its bytes and scalar fields (_produce_parser): its records are
        # transcoded in C, never parsed into protobuf objects.
        _refuse_malformed(request)  # ProduceStream passes its requests through here
        partition = request.partition
        producer = None
        if request.producer_id is not None:
            producer = (request.producer_id, request.producer_epoch, request.base_sequence)
            # A batch carries the epoch as int16; Kafka's rules for the three fields.
            if not (producer[0] >= 0 and 0 <= producer[1] <= 32767 and producer[2] >= 0):
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"producer_id {producer[0]}, producer_epoch {producer[1]}, base_sequence "
                    f"{producer[2]}: an idempotent producer needs producer_id >= 0, "
                    "0 <= producer_epoch <= 32767 and base_sequence >= 0 (use InitProducer)",
                )
        return await self._produce(
            request.topic, partition, request.data, request.record_count, producer
        )

    async def ProduceStream(
        self, requests: AsyncIterator[RawProduceBatch], context: Any
    ) -> AsyncIterator[pb.ProduceBatchResponse]:
        # Requests are admitted as they arrive; answers go out in request order.
        # At most grpc_stream_max_in_flight requests are admitted and unanswered; beyond that
        # the stream is not read (HTTP/2 flow control pushes back on the client).
        answers: asyncio.Queue[asyncio.Task[pb.ProduceBatchResponse] | None] = asyncio.Queue(
            self.settings.grpc_stream_max_in_flight
        )

        async def admit() -> None:
            try:
                async for request in requests:
                    task = asyncio.ensure_future(self.ProduceBatch(request, context))
                    # Once one answer fails the stream ends and the tasks queued behind it are
                    # never awaited: retrieve their outcome so none is left unobserved.
                    task.add_done_callback(_retrieve_outcome)
                    await answers.put(task)
            finally:
                await answers.put(None)

        admitter = asyncio.ensure_future(admit())
        try:
            while True:
                task = await answers.get()
                if task is None:
                    break
                yield await task
            await admitter
        finally:
            admitter.cancel()

    # -- consume -------------------------------------------------------------------------

    async def _fetch_request(
        self, request: Any, max_wait_ms: int
    ) -> tuple[TopicInfo, FetchRequest]:
        topic = await self._topic(request.topic)
        if not 0 <= request.partition < topic.partitions:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"partition {request.partition} is out of range: topic {topic.name!r} has "
                f"partitions 0..{topic.partitions - 1}",
            )
        if request.max_records < 0 or request.max_bytes < 0:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "max_records and max_bytes must be >= 0")
        isolation = int(request.isolation_level)
        if isolation not in (pb.READ_UNCOMMITTED, pb.READ_COMMITTED):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"isolation_level {isolation} is invalid: use READ_UNCOMMITTED (0) or "
                "READ_COMMITTED (1)",
            )
        offset = request.offset
        if offset < 0:
            state = await self.meta.get_partition(topic.topic_id, request.partition)
            if state is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"topic {topic.name!r} does not exist")
            if offset == -2:
                offset = state.log_start_offset
            elif offset == -1:  # read_committed: the latest a committed reader may read
                offset = (
                    state.last_stable_offset
                    if isolation == pb.READ_COMMITTED
                    else state.high_watermark
                )
            else:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"offset {offset} is invalid: use >= 0, -2 (earliest) or -1 (latest)",
                )
        max_bytes = min(request.max_bytes or DEFAULT_MAX_BYTES, self.settings.max_fetch_bytes)
        fetch = FetchRequest(
            request_id=0,
            max_wait_ms=max_wait_ms,
            min_bytes=1,
            max_bytes=max_bytes,
            format=FORMAT_RECORDS,
            parts=[FetchPart(topic.topic_id, request.partition, offset, max_bytes)],
            max_records=request.max_records or DEFAULT_MAX_RECORDS,
            isolation_level=isolation,
        )
        return topic, fetch

    async def _consume_once(self, topic: TopicInfo, fetch: FetchRequest) -> tuple[bytes, int]:
        try:
            self.pipeline.name_topic(topic.topic_id, topic.name)
            response, payload = await self.pipeline.fetch(fetch, protocol="grpc")
        except StreamHouseError as exc:
            raise _abort_for(exc, f"consume from topic {topic.name!r}") from None
        part = response.parts[0]
        error = from_ring(part.error)
        if error is not None:
            raise _abort_for(error, f"topic {topic.name!r} partition {part.partition}")
        tail = consume_response_tail(part.high_watermark, part.log_start_offset, part.next_offset)
        return payload + tail, part.next_offset

    async def Consume(self, request: pb.ConsumeRequest, context: Any) -> bytes:
        if request.max_wait_ms < 0:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "max_wait_ms must be >= 0")
        topic, fetch = await self._fetch_request(request, min(request.max_wait_ms, 60_000))
        body, _ = await self._consume_once(topic, fetch)
        return body

    async def Subscribe(self, request: pb.SubscribeRequest, context: Any) -> AsyncIterator[bytes]:
        topic, fetch = await self._fetch_request(request, SUBSCRIBE_WAIT_MS)
        part = fetch.parts[0]
        while True:
            body, next_offset = await self._consume_once(topic, fetch)
            if next_offset != part.offset:
                yield body
            part = FetchPart(part.topic_id, part.partition, next_offset, part.max_bytes)
            fetch = FetchRequest(
                request_id=0,
                max_wait_ms=fetch.max_wait_ms,
                min_bytes=1,
                max_bytes=fetch.max_bytes,
                format=fetch.format,
                parts=[part],
                max_records=fetch.max_records,
                isolation_level=fetch.isolation_level,
            )

    # -- offsets and producers -----------------------------------------------------------

    async def _check_offset_target(self, group: str, topic_name: str, partition: int) -> TopicInfo:
        if not group:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "group must not be empty")
        topic = await self._topic(topic_name)
        if not 0 <= partition < topic.partitions:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"partition {partition} is out of range: topic {topic.name!r} has "
                f"partitions 0..{topic.partitions - 1}",
            )
        return topic

    async def CommitOffset(
        self, request: pb.CommitOffsetRequest, context: Any
    ) -> pb.CommitOffsetResponse:
        topic = await self._check_offset_target(request.group, request.topic, request.partition)
        if request.offset < 0:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "offset must be >= 0")
        await self.meta.commit_offset(
            request.group,
            topic.topic_id,
            request.partition,
            request.offset,
            request.metadata,
        )
        return pb.CommitOffsetResponse()

    async def GetOffset(self, request: pb.GetOffsetRequest, context: Any) -> pb.GetOffsetResponse:
        topic = await self._check_offset_target(request.group, request.topic, request.partition)
        found = await self.meta.get_offset(request.group, topic.topic_id, request.partition)
        if found is None:
            return pb.GetOffsetResponse(offset=-1, metadata="")
        return pb.GetOffsetResponse(offset=found[0], metadata=found[1])

    async def InitProducer(
        self, request: pb.InitProducerRequest, context: Any
    ) -> pb.InitProducerResponse:
        producer_id, epoch = await self.meta.allocate_producer_id()
        return pb.InitProducerResponse(producer_id=producer_id, producer_epoch=epoch)

    # -- cluster -------------------------------------------------------------------------

    async def DescribeCluster(
        self, request: pb.DescribeClusterRequest, context: Any
    ) -> pb.DescribeClusterResponse:
        """Every registered agent, read from metadata now (not this agent's cached view)."""
        agents = await self.meta.list_agents()
        return pb.DescribeClusterResponse(
            agents=[_agent_message(a, self.settings.agent_lease_ms) for a in agents],
            answered_by=self.cluster.self_agent.agent_id,
            now_ms=int(time.time() * 1000),
        )

    # -- storage -------------------------------------------------------------------------

    async def DescribeStorage(
        self, request: pb.DescribeStorageRequest, context: Any
    ) -> pb.DescribeStorageResponse:
        """Storage per topic and in total, read from metadata now (one storage_report call,
        off the loop, plus the topic list for the topics' UUIDs)."""
        if request.small_object_bytes < 0:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"small_object_bytes {request.small_object_bytes} is negative: give a size in "
                "bytes, or 0 for the agent's lifecycle_small_object_bytes",
            )
        small = request.small_object_bytes or self.settings.lifecycle_small_object_bytes
        now_ms = int(time.time() * 1000)
        report = await self.meta.storage_report(now_ms, small)
        uuids = {t.topic_id: t.uuid.hex() for t in await self.meta.list_topics()}
        topics = [
            pb.TopicStorage(
                name=t.name,
                topic_id=uuids.get(t.topic_id, ""),
                partitions=t.partitions,
                objects=t.objects,
                bytes_stored=t.bytes_stored,
                bytes_live=t.bytes_live,
                records=t.records,
                oldest_offset=t.oldest_offset,
                oldest_timestamp_ms=t.oldest_timestamp_ms,
                cleanup_policy=t.cleanup_policy,
                dirty_bytes=t.dirty_bytes,
            )
            for t in sorted(report.topics, key=lambda t: t.name)
        ]
        return pb.DescribeStorageResponse(
            topics=topics,
            objects=report.objects,
            bytes_stored=report.bytes_stored,
            bytes_live=report.bytes_live,
            dead_objects=report.dead_objects,
            dead_bytes=report.dead_bytes,
            small_objects=report.small_objects,
            small_bytes=report.small_bytes,
            segments_created_last_hour=report.segments_created_last_hour,
            bytes_created_last_hour=report.bytes_created_last_hour,
            small_object_bytes=small,
            now_ms=now_ms,
            answered_by=self.cluster.self_agent.agent_id,
        )


def agent_state(agent: AgentInfo, lease_ms: int) -> str:
    """An agent's health: "alive"; "stopped" for a clean stop (deregistering ends the lease
    early, before a whole lease has run since the last heartbeat); "expired" for a lease that ran
    out. An agent configured with another lease than `lease_ms` may be told apart wrongly."""
    if agent.alive:
        return "alive"
    if agent.lease_until_ms - agent.heartbeat_at_ms < lease_ms:
        return "stopped"
    return "expired"


def _agent_message(agent: AgentInfo, lease_ms: int) -> pb.Agent:
    return pb.Agent(
        agent_id=agent.agent_id,
        node_id=agent.node_id,
        kafka_address=f"{agent.kafka_host}:{agent.kafka_port}",
        grpc_address=agent.grpc_address,
        zone=agent.zone,
        alive=agent.alive,
        state=agent_state(agent, lease_ms),
        started_at_ms=agent.started_at_ms,
        heartbeat_at_ms=agent.heartbeat_at_ms,
        lease_until_ms=agent.lease_until_ms,
    )


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _abort_for(error: StreamHouseError, what: str) -> _Abort:
    """The gRPC status of a pipeline error (its ErrorCode's grpc_status) with its message."""
    return _Abort(error.code.grpc_status, f"{what}: {error.message} ({error.code.name})")


class _MalformedRequest:
    """Stands in for a request body that did not parse, so the handler can refuse it."""

    def __init__(self, kind: str, why: str) -> None:
        self.message = f"the request is not a valid {kind}: {why}"


def _parser(kind: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return kind.FromString(data)
        except DecodeError as exc:
            return _MalformedRequest(kind.DESCRIPTOR.full_name, str(exc))

    return parse


def _produce_parser(data: bytes) -> RawProduceBatch | _MalformedRequest:
    """ProduceBatch and ProduceStream requests stay bytes, their scalar fields read in C."""
    try:
        return RawProduceBatch(data)
    except MalformedRequest as exc:
        return _MalformedRequest("streamhouse.v1.ProduceBatchRequest", str(exc))


def _refuse_malformed(request: Any) -> None:
    if isinstance(request, _MalformedRequest):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


def _retrieve_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _authenticate(auth: GrpcAuthenticator | None, context: Any) -> None:
    """Sets the call's principal (ingest/grpc_auth.py); UNAUTHENTICATED when there is none."""
    if auth is None:
        return
    try:
        current_principal.set(await auth.principal(context))
    except AuthenticationFailed as exc:
        raise _Abort(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None


def _wrap_unary(
    fn: Callable[..., Awaitable[Any]], auth: GrpcAuthenticator | None = None
) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            await _authenticate(auth, context)
            _refuse_malformed(request)
            return await fn(request, context)
        except _Abort as exc:
            await context.abort(exc.code, exc.message)
        except StreamHouseError as exc:  # e.g. the metadata store stayed locked: retriable
            await context.abort(exc.code.grpc_status, exc.message)
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the ingest log")

    return handler


def _wrap_stream(
    fn: Callable[..., AsyncIterator[Any]], auth: GrpcAuthenticator | None = None
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            await _authenticate(auth, context)
            _refuse_malformed(request)
            async for item in fn(request, context):
                yield item
        except _Abort as exc:
            await context.abort(exc.code, exc.message)
        except StreamHouseError as exc:  # e.g. the metadata store stayed locked: retriable
            await context.abort(exc.code.grpc_status, exc.message)
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the ingest log")

    return handler


def _identity(data: bytes) -> bytes:
    return data


def method_handlers(service: StreamHouseService) -> grpc.GenericRpcHandler:
    auth = service.authenticator
    unary = {
        "CreateTopic": (pb.CreateTopicRequest, pb.CreateTopicResponse),
        "GetTopic": (pb.GetTopicRequest, pb.GetTopicResponse),
        "ListTopics": (pb.ListTopicsRequest, pb.ListTopicsResponse),
        "DeleteTopic": (pb.DeleteTopicRequest, pb.DeleteTopicResponse),
        "Produce": (pb.ProduceRequest, pb.ProduceResponse),
        "CommitOffset": (pb.CommitOffsetRequest, pb.CommitOffsetResponse),
        "GetOffset": (pb.GetOffsetRequest, pb.GetOffsetResponse),
        "InitProducer": (pb.InitProducerRequest, pb.InitProducerResponse),
        "DescribeCluster": (pb.DescribeClusterRequest, pb.DescribeClusterResponse),
        "DescribeStorage": (pb.DescribeStorageRequest, pb.DescribeStorageResponse),
        "AlterTopicConfig": (pb.AlterTopicConfigRequest, pb.AlterTopicConfigResponse),
    }

    def method(name: str) -> Any:
        """The service method, refusing what the caller's ACLs do not allow (grpc_acl.py)."""
        return guarded(name, getattr(service, name), service.settings, service.meta)

    handlers: dict[str, grpc.RpcMethodHandler] = {
        name: grpc.unary_unary_rpc_method_handler(
            _wrap_unary(method(name), auth),
            request_deserializer=_parser(req),
            response_serializer=resp.SerializeToString,
        )
        for name, (req, resp) in unary.items()
    }
    handlers["ProduceBatch"] = grpc.unary_unary_rpc_method_handler(
        _wrap_unary(method("ProduceBatch"), auth),
        request_deserializer=_produce_parser,
        response_serializer=pb.ProduceBatchResponse.SerializeToString,
    )
    handlers["Consume"] = grpc.unary_unary_rpc_method_handler(
        _wrap_unary(method("Consume"), auth),
        request_deserializer=_parser(pb.ConsumeRequest),
        response_serializer=_identity,
    )
    handlers["Subscribe"] = grpc.unary_stream_rpc_method_handler(
        _wrap_stream(method("Subscribe"), auth),
        request_deserializer=_parser(pb.SubscribeRequest),
        response_serializer=_identity,
    )
    handlers["ProduceStream"] = grpc.stream_stream_rpc_method_handler(
        _wrap_stream(method("ProduceStream"), auth),
        request_deserializer=_produce_parser,
        response_serializer=pb.ProduceBatchResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def start_grpc_server(
    settings: Settings,
    meta: AsyncMetadata,
    pipeline: Pipeline,
    cluster: ClusterView,
    serving: ServingMonitor | None = None,
) -> grpc.aio.Server:
    """Starts the gRPC server on settings.grpc_listen with health and reflection on.

    Limits: at most grpc_max_connections connections (more are closed when accepted);
    messages above grpc_message_limit get RESOURCE_EXHAUSTED; each HTTP/2 connection
    carries at most grpc_max_concurrent_streams streams (more wait in the client); beyond
    grpc_max_concurrent_rpcs RPCs in the whole server a new one gets RESOURCE_EXHAUSTED; a
    connection with no RPC for grpc_idle_timeout_ms is closed with GOAWAY (clients reconnect
    on their next call); a connection that does not finish its HTTP/2 handshake within
    slow_client_timeout_ms is dropped; pings are answered at most every 10 s without data
    (a ping flood ends the connection); a stream's HTTP/2 window stays at 1 MiB. With
    `serving`, the health status is the monitor's (NOT_SERVING while the object store is
    unusable); without it, SERVING.
    """
    pipeline.use_metadata(meta)  # names the topics of the per-topic metrics
    server = grpc.aio.server(
        options=server_options(settings, send_limit=settings.grpc_message_limit),
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
    )
    server.add_generic_rpc_handlers(
        (method_handlers(StreamHouseService(settings, meta, pipeline, cluster)),)
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    # TLS (and mTLS) per the settings; the health service is served without a token.
    credentials = grpc_server_credentials(settings)
    if credentials is None:
        bound = server.add_insecure_port(settings.grpc_listen)
    else:
        bound = server.add_secure_port(settings.grpc_listen, credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {settings.grpc_listen} (STREAMHOUSE_GRPC_LISTEN): in use?")
    await server.start()
    if serving is not None:  # health follows the object store (ingest/serving.py)
        await serving.attach(health_servicer, SERVICE)
        return server
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    return server
