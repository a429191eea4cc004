"""Which ACL operations each Kafka request needs, and what a denied caller gets back.

Hooked once in ``KafkaBroker._dispatch`` when ``authorizer = acl``: every request runs through
:func:`guarded`, which asks the agent's ACL snapshot (ingest/authorizer.py) on behalf of the
caller (``streamhouse.principal.current_principal`` and the connection's IP address), passes
the handler only what the caller may touch, and puts the refused items back into the answer
with Kafka's error for them. No handler knows about ACLs.

The table follows Kafka's broker (KafkaApis), per API key:

====================================  ====================================================
Produce                               WRITE transactional id (if any), WRITE topic;
                                      auto-creation needs CREATE cluster or CREATE topic
                                      (else UNKNOWN_TOPIC_OR_PARTITION)
Fetch                                 READ topic (CLUSTER_ACTION cluster for a replica)
ListOffsets, OffsetForLeaderEpoch     DESCRIBE topic
Metadata                              DESCRIBE topic (unlisted when listing all; named:
                                      TOPIC_AUTHORIZATION_FAILED), auto-creation needs
                                      CREATE cluster or CREATE topic
OffsetCommit                          READ group, READ topic
OffsetFetch                           DESCRIBE group, DESCRIBE topic (unlisted when all)
FindCoordinator                       DESCRIBE group / transactional id
Join/Sync/Heartbeat/LeaveGroup        READ group
DescribeGroups                        DESCRIBE group
ListGroups                            DESCRIBE cluster, else only groups with DESCRIBE
DeleteGroups                          DELETE group
OffsetDelete                          DELETE group, READ topic
CreateTopics                          CREATE cluster or CREATE topic
DeleteTopics, DeleteRecords           DELETE topic
CreatePartitions                      ALTER topic
DescribeConfigs                       DESCRIBE_CONFIGS topic / cluster (broker) / group
AlterConfigs, IncrementalAlter...     ALTER_CONFIGS topic / cluster (broker) / group
InitProducerId                        WRITE transactional id; else IDEMPOTENT_WRITE cluster
                                      or WRITE on some topic
AddPartitionsToTxn (v0-3)             WRITE transactional id, WRITE topic
AddOffsetsToTxn                       WRITE transactional id, READ group
EndTxn                                WRITE transactional id
TxnOffsetCommit                       WRITE transactional id, READ group, READ topic
DescribeTransactions                  DESCRIBE transactional id
ListTransactions                      only transactional ids with DESCRIBE
DescribeAcls, DescribeCluster,        DESCRIBE cluster
DescribeLogDirs, ListPartitionReas.,
DescribeUserScramCredentials
CreateAcls, DeleteAcls, ElectLeaders, ALTER cluster
AlterReplicaLogDirs, AlterPartition-
Reassignments, AlterUserScramCred.
other (broker-to-broker)              CLUSTER_ACTION cluster
ApiVersions, SaslHandshake,           none
SaslAuthenticate
====================================  ====================================================

Errors: TOPIC_AUTHORIZATION_FAILED (29) per topic or partition, GROUP_AUTHORIZATION_FAILED
(30), CLUSTER_AUTHORIZATION_FAILED (31), TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53), where
Kafka puts them. Authorized-operations fields (Metadata v8+, DescribeCluster, DescribeGroups
v3+, DescribeTopicPartitions) are rewritten to what the caller may do.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace

from ingest.authorizer import acl_cache
from ingest.kafka import errors
from ingest.kafka.connection import NO_RESPONSE
from metadata.async_store import TopicLookup
from streamhouse.acl import CLUSTER_NAME, AclOperation, Authorizer, ResourceType
from streamhouse.kafka import messages as m
from streamhouse.principal import current_principal

if TYPE_CHECKING:
    from ingest.kafka.broker import KafkaBroker

Op = AclOperation
Call = Callable[[m.RequestHeader, Any], Awaitable[Any]]

NOT_REQUESTED = -(2**31)
_ZERO_UUID = uuid.UUID(int=0)


class Caller:
    """The principal and host of one request, with the ACL snapshot that judges it."""

    def __init__(
        self, broker: KafkaBroker, authorizer: Authorizer, principal: str, host: str
    ) -> None:
        self.broker = broker
        self.authorizer = authorizer
        self.principal = principal
        self.host = host

    def may(self, operation: AclOperation, resource_type: ResourceType, name: str) -> bool:
        return self.authorizer.authorize(self.principal, self.host, operation, resource_type, name)

    def topic(self, operation: AclOperation, name: str | None) -> bool:
        return name is not None and self.may(operation, ResourceType.TOPIC, name)

    def group(self, operation: AclOperation, name: str) -> bool:
        return self.may(operation, ResourceType.GROUP, name)

    def txn(self, operation: AclOperation, name: str) -> bool:
        return self.may(operation, ResourceType.TRANSACTIONAL_ID, name)

    def cluster(self, operation: AclOperation) -> bool:
        return self.may(operation, ResourceType.CLUSTER, CLUSTER_NAME)

    def operations(self, resource_type: ResourceType, name: str) -> int:
        return self.authorizer.authorized_operations(self.principal, self.host, resource_type, name)

    def denied(self, operation: AclOperation, resource_type: ResourceType, name: str) -> str:
        """The message of a refusal: who, what, on which resource, and what to do."""
        return (
            f"{self.principal} (from {self.host or 'an unknown host'}) may not "
            f"{operation.name} {resource_type.name} {name!r}: the ACLs do not allow it (streamctl "
            "acl list shows them; an administrator adds one with streamctl acl add or CreateAcls)"
        )


#: The caller of the request being handled in this context (None without ACLs).
_current_caller: ContextVar[Caller | None] = ContextVar("acl_caller", default=None)


async def guarded(
    broker: KafkaBroker, host: str, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    """Answers ``request`` as ``call`` would, for what the caller may do (module docstring)."""
    key = header.request_api_key
    if key in _OPEN:
        return await call(header, request)
    snapshot = await acl_cache(broker.settings, broker.meta).snapshot()
    caller = Caller(broker, snapshot, current_principal.get(), host)
    _current_caller.set(caller)  # the request's own context (a task per request)
    rule = _RULES.get(key, _cluster_action)
    return await rule(caller, header, request, call)


def may_auto_create(name: str) -> bool:
    """May the current request create topic ``name`` by naming it (Produce, Metadata)? Kafka's
    rule: CREATE on the cluster or on the topic. Always true without ACLs."""
    caller = _current_caller.get()
    return caller is None or _may_create(caller, name)


Rule = Callable[[Caller, m.RequestHeader, Any, Call], Awaitable[Any]]
_RULES: dict[int, Rule] = {}
#: ApiVersions, SaslHandshake, SaslAuthenticate: before anyone is known.
_OPEN = frozenset({17, 18, 36})


def _rule(*keys: int) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for key in keys:
            _RULES[key] = fn
        return fn

    return register


def _split(items: list[Any], allowed: Callable[[Any], bool]) -> tuple[list[Any], list[Any]]:
    yes, no = [], []
    for item in items:
        (yes if allowed(item) else no).append(item)
    return yes, no


async def _answer_allowed(
    header: m.RequestHeader,
    request: Any,
    call: Call,
    allowed: list[Any],
    refused: list[Any],
    response_type: Any,
    asked: str = "topics",
    answers: str = "topics",
    ask_when_empty: bool = True,
    **fields: Any,
) -> Any:
    """The answer to ``request`` whose list ``asked`` was split into ``allowed`` items and the
    ``refused`` answers for the others: the handler answers the allowed ones (the request as it
    is when nothing was refused) and the refused answers are appended to the response's list
    ``answers``; when nothing is allowed the handler is not called and the answer is a
    ``response_type`` of the refused answers and ``fields``. A request whose list is empty goes
    to the handler unless ``ask_when_empty`` is false."""
    if not refused and (allowed or ask_when_empty):
        return await call(header, request)
    if not allowed:
        return response_type(**{answers: refused}, **fields)
    response = await call(header, replace(request, **{asked: allowed}))
    getattr(response, answers).extend(refused)
    return response


#: APIs whose request lists topics (``name``) of partitions (``partitions`` of
#: ``partition_index``) and whose answer has an entry per partition: API key -> the response
#: type, the names of its topic and partition entry types, and the other fields of a refused
#: partition's entry.
_PARTITION_ANSWERS: dict[int, tuple[Any, str, str, dict[str, Any]]] = {
    2: (
        m.ListOffsetsResponse,
        "ListOffsetsTopicResponse",
        "ListOffsetsPartitionResponse",
        {"timestamp": -1, "offset": -1},
    ),
    8: (m.OffsetCommitResponse, "OffsetCommitResponseTopic", "OffsetCommitResponsePartition", {}),
    21: (
        m.DeleteRecordsResponse,
        "DeleteRecordsTopicResult",
        "DeleteRecordsPartitionResult",
        {"low_watermark": -1},
    ),
    28: (
        m.TxnOffsetCommitResponse,
        "TxnOffsetCommitResponseTopic",
        "TxnOffsetCommitResponsePartition",
        {},
    ),
    47: (m.OffsetDeleteResponse, "OffsetDeleteResponseTopic", "OffsetDeleteResponsePartition", {}),
}


def _partitions_refused(key: int, topics: list[Any], code: int) -> list[Any]:
    """API ``key``'s answer entries for ``topics``: error ``code`` on every partition."""
    response_type, topic_type, partition_type, fields = _PARTITION_ANSWERS[key]
    T, P = getattr(response_type, topic_type), getattr(response_type, partition_type)
    return [
        T(
            name=t.name,
            partitions=[
                P(partition_index=p.partition_index, error_code=code, **fields)
                for p in t.partitions
            ],
        )
        for t in topics
    ]


async def _topics_of_partitions(
    caller: Caller,
    header: m.RequestHeader,
    request: Any,
    call: Call,
    operation: AclOperation,
    **fields: Any,
) -> Any:
    """The answer of a :data:`_PARTITION_ANSWERS` API: a topic the caller may not do
    ``operation`` on gets TOPIC_AUTHORIZATION_FAILED on each partition, the handler answers the
    others; ``fields`` are the other fields of an answer that refuses every topic."""
    key = header.request_api_key
    allowed, denied = _split(request.topics, lambda t: caller.topic(operation, t.name))
    refused = _partitions_refused(key, denied, errors.TOPIC_AUTHORIZATION_FAILED)
    response_type = _PARTITION_ANSWERS[key][0]
    return await _answer_allowed(header, request, call, allowed, refused, response_type, **fields)


#: APIs whose topics each need one operation, and nothing else: API key -> the operation.
_TOPIC_OPERATION: dict[int, AclOperation] = {
    2: Op.DESCRIBE,  # ListOffsets
    21: Op.DELETE,  # DeleteRecords
}


async def _topic_operation(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    operation = _TOPIC_OPERATION[header.request_api_key]
    return await _topics_of_partitions(caller, header, request, call, operation)


for _key in _TOPIC_OPERATION:
    _RULES[_key] = _topic_operation


# -- produce and fetch -------------------------------------------------------------------


@_rule(0)
async def _produce(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    from ingest.kafka.api_produce import all_failed

    tid = request.transactional_id
    if tid and not caller.txn(Op.WRITE, tid):
        if request.acks == 0:
            return NO_RESPONSE
        message = caller.denied(Op.WRITE, ResourceType.TRANSACTIONAL_ID, tid)
        return all_failed(request, errors.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, message)
    allowed, denied = _split(request.topic_data, lambda t: caller.topic(Op.WRITE, t.name))
    if not denied:
        return await call(header, request)
    refused = [
        t
        for d in denied
        for t in all_failed(
            replace(request, topic_data=[d]),
            errors.TOPIC_AUTHORIZATION_FAILED,
            caller.denied(Op.WRITE, ResourceType.TOPIC, d.name),
        ).responses
    ]
    if not allowed:
        return NO_RESPONSE if request.acks == 0 else m.ProduceResponse(responses=refused)
    response = await call(header, replace(request, topic_data=allowed))
    if response is NO_RESPONSE:
        return response
    response.responses.extend(refused)
    return response


def fetch_refused(topic: Any, code: int) -> Any:
    """The answer of a Fetch for ``topic`` refused as a whole with error ``code``."""
    F = m.FetchResponse
    return F.FetchableTopicResponse(
        topic=topic.topic,
        topic_id=topic.topic_id,
        partitions=[
            F.PartitionData(
                partition_index=p.partition,
                error_code=code,
                high_watermark=-1,
                last_stable_offset=-1,
                log_start_offset=-1,
                records=b"",  # empty, never null: librdkafka rejects a null set
            )
            for p in topic.partitions
        ],
    )


def _replica_id(request: Any) -> int:
    state = getattr(request, "replica_state", None)
    if state is not None and state.replica_id >= 0:
        return int(state.replica_id)
    return int(request.replica_id)


@_rule(1)
async def _fetch(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    if _replica_id(request) >= 0:
        allowed = list(request.topics) if caller.cluster(Op.CLUSTER_ACTION) else []
        denied = [] if allowed else list(request.topics)
    else:
        allowed, denied = _split(request.topics, lambda t: caller.topic(Op.READ, t.topic))
    refused = [fetch_refused(t, errors.TOPIC_AUTHORIZATION_FAILED) for t in denied]
    return await _answer_allowed(
        header,
        request,
        call,
        allowed,
        refused,
        m.FetchResponse,
        answers="responses",
        error_code=0,
        session_id=0,
    )


@_rule(23)
async def _offset_for_leader_epoch(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    R = m.OffsetForLeaderEpochResponse
    if request.replica_id >= 0 and caller.cluster(Op.CLUSTER_ACTION):
        return await call(header, request)
    allowed, denied = _split(
        request.topics,
        lambda t: request.replica_id < 0 and caller.topic(Op.DESCRIBE, t.topic),
    )
    refused = [
        R.OffsetForLeaderTopicResult(
            topic=t.topic,
            partitions=[
                R.EpochEndOffset(
                    error_code=errors.TOPIC_AUTHORIZATION_FAILED,
                    partition=p.partition,
                    leader_epoch=-1,
                    end_offset=-1,
                )
                for p in t.partitions
            ],
        )
        for t in denied
    ]
    return await _answer_allowed(header, request, call, allowed, refused, R)


# -- metadata ----------------------------------------------------------------------------


def _may_create(caller: Caller, name: str) -> bool:
    return caller.cluster(Op.CREATE) or caller.topic(Op.CREATE, name)


def _metadata_refused(name: str | None) -> Any:
    """Metadata's answer for a topic the caller may not describe (or create)."""
    return m.MetadataResponse.MetadataResponseTopic(
        error_code=errors.TOPIC_AUTHORIZATION_FAILED, name=name, topic_id=_ZERO_UUID, partitions=[]
    )


@_rule(3)
async def _metadata(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    version = header.request_api_version
    listing_all = request.topics is None or (version == 0 and not request.topics)
    refused: list[Any] = []
    nothing_left = False
    if not listing_all:
        creates = caller.broker.settings.kafka_auto_create_topics and (
            version < 4 or request.allow_auto_topic_creation
        )
        kept = []
        for t in request.topics:
            if not t.name:
                kept.append(t)  # by topic id: judged on the answer, by the topic's name
            elif not caller.topic(Op.DESCRIBE, t.name):
                refused.append(_metadata_refused(t.name))
            else:
                kept.append(t)
        if creates:  # a missing topic the caller may not create is refused, not created
            uncreatable = [t for t in kept if t.name and not _may_create(caller, t.name)]
            if uncreatable:
                found = await caller.broker.meta.topic_states(
                    [TopicLookup(t.name) for t in uncreatable]
                )
                missing = {t.name for t, known in zip(uncreatable, found, strict=True) if not known}
                kept = [t for t in kept if t.name not in missing]
                refused.extend(_metadata_refused(name) for name in sorted(missing))
        nothing_left = not kept
        request = replace(request, topics=kept)
    response = await call(header, request)
    topics = [] if nothing_left else response.topics
    answered = []
    for entry in topics:
        if entry.error_code == 0 and not caller.topic(Op.DESCRIBE, entry.name):
            if listing_all:
                continue
            entry = _metadata_refused(None if version >= 10 else entry.name)
        elif entry.error_code == 0 and entry.topic_authorized_operations != NOT_REQUESTED:
            entry.topic_authorized_operations = caller.operations(ResourceType.TOPIC, entry.name)
        answered.append(entry)
    response.topics = answered + refused
    if response.cluster_authorized_operations != NOT_REQUESTED:
        response.cluster_authorized_operations = (
            caller.operations(ResourceType.CLUSTER, CLUSTER_NAME)
            if caller.cluster(Op.DESCRIBE)
            else 0
        )
    return response


@_rule(75)
async def _describe_topic_partitions(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    D = m.DescribeTopicPartitionsResponse
    refused = []
    if request.topics:
        allowed, denied = _split(request.topics, lambda t: caller.topic(Op.DESCRIBE, t.name))
        refused = [
            D.DescribeTopicPartitionsResponseTopic(
                error_code=errors.TOPIC_AUTHORIZATION_FAILED,
                name=t.name,
                topic_id=_ZERO_UUID,
                partitions=[],
            )
            for t in denied
        ]
    else:  # every topic: those the caller may describe, named before paging (no cursor leaks)
        allowed = [
            m.DescribeTopicPartitionsRequest.TopicRequest(name=t.name)
            for t in await caller.broker.meta.list_topics()
            if caller.topic(Op.DESCRIBE, t.name)
        ]
    if not allowed:
        return D(topics=refused, next_cursor=None)
    response = await call(header, replace(request, topics=allowed))
    for t in response.topics:
        if t.error_code == 0:
            t.topic_authorized_operations = caller.operations(ResourceType.TOPIC, t.name)
    response.topics.extend(refused)
    return response


@_rule(60)
async def _describe_cluster(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    if not caller.cluster(Op.DESCRIBE):
        return m.DescribeClusterResponse(
            error_code=errors.CLUSTER_AUTHORIZATION_FAILED,
            error_message=caller.denied(Op.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME),
            endpoint_type=request.endpoint_type,
            cluster_id="",
            controller_id=-1,
            brokers=[],
        )
    response = await call(header, request)
    if request.include_cluster_authorized_operations:
        response.cluster_authorized_operations = caller.operations(
            ResourceType.CLUSTER, CLUSTER_NAME
        )
    return response


# -- groups ------------------------------------------------------------------------------


#: A group member's APIs (READ on the group) and their answer when refused with ``code``.
_GROUP_MEMBER_REFUSED: dict[int, Callable[[int], Any]] = {
    11: lambda code: m.JoinGroupResponse(
        error_code=code, generation_id=-1, member_id="", members=[]
    ),
    12: lambda code: m.HeartbeatResponse(error_code=code),
    13: lambda code: m.LeaveGroupResponse(error_code=code, members=[]),
    14: lambda code: m.SyncGroupResponse(error_code=code, assignment=b""),
}


@_rule(*_GROUP_MEMBER_REFUSED)
async def _group_member(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    if caller.group(Op.READ, request.group_id):
        return await call(header, request)
    return _GROUP_MEMBER_REFUSED[header.request_api_key](errors.GROUP_AUTHORIZATION_FAILED)


@_rule(8)
async def _offset_commit(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    if not caller.group(Op.READ, request.group_id):
        return m.OffsetCommitResponse(
            topics=_partitions_refused(8, request.topics, errors.GROUP_AUTHORIZATION_FAILED)
        )
    return await _topics_of_partitions(caller, header, request, call, Op.READ)


@_rule(28)
async def _txn_offset_commit(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    R = m.TxnOffsetCommitResponse
    if not caller.txn(Op.WRITE, request.transactional_id):
        code = errors.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        return R(topics=_partitions_refused(28, request.topics, code))
    if not caller.group(Op.READ, request.group_id):
        return R(topics=_partitions_refused(28, request.topics, errors.GROUP_AUTHORIZATION_FAILED))
    return await _topics_of_partitions(caller, header, request, call, Op.READ)


def _offset_fetch_refused(topics: list[Any], topic_cls: Any, part_cls: Any, code: int) -> list[Any]:
    return [
        topic_cls(
            name=t.name,
            partitions=[
                part_cls(partition_index=p, committed_offset=-1, metadata="", error_code=code)
                for p in t.partition_indexes
            ],
        )
        for t in topics
    ]


@_rule(9)
async def _offset_fetch(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    R = m.OffsetFetchResponse
    if header.request_api_version >= 8:
        return await _offset_fetch_groups(caller, header, request, call)
    if not caller.group(Op.DESCRIBE, request.group_id):
        return R(
            error_code=errors.GROUP_AUTHORIZATION_FAILED,
            topics=_offset_fetch_refused(
                request.topics or [],
                R.OffsetFetchResponseTopic,
                R.OffsetFetchResponsePartition,
                errors.GROUP_AUTHORIZATION_FAILED,
            ),
        )
    if request.topics is None:  # every committed topic: only those the caller may describe
        response = await call(header, request)
        response.topics = [t for t in response.topics if caller.topic(Op.DESCRIBE, t.name)]
        return response
    allowed, denied = _split(request.topics, lambda t: caller.topic(Op.DESCRIBE, t.name))
    refused = _offset_fetch_refused(
        denied,
        R.OffsetFetchResponseTopic,
        R.OffsetFetchResponsePartition,
        errors.TOPIC_AUTHORIZATION_FAILED,
    )
    return await _answer_allowed(header, request, call, allowed, refused, R, error_code=0)


async def _offset_fetch_groups(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    R = m.OffsetFetchResponse
    allowed_groups, denied_groups = _split(
        request.groups, lambda g: caller.group(Op.DESCRIBE, g.group_id)
    )
    refused_groups = [
        R.OffsetFetchResponseGroup(
            group_id=g.group_id, topics=[], error_code=errors.GROUP_AUTHORIZATION_FAILED
        )
        for g in denied_groups
    ]
    refused_topics: dict[str, list[Any]] = {}
    asked = []
    for g in allowed_groups:
        if g.topics is None:
            asked.append(g)
            continue
        allowed, denied = _split(g.topics, lambda t: caller.topic(Op.DESCRIBE, t.name))
        refused_topics[g.group_id] = _offset_fetch_refused(
            denied,
            R.OffsetFetchResponseTopics,
            R.OffsetFetchResponsePartitions,
            errors.TOPIC_AUTHORIZATION_FAILED,
        )
        asked.append(replace(g, topics=allowed))
    if not asked:
        return R(groups=refused_groups)
    response = await call(header, replace(request, groups=asked))
    for group in response.groups:
        group.topics = [t for t in group.topics if caller.topic(Op.DESCRIBE, t.name)]
        group.topics.extend(refused_topics.get(group.group_id, []))
    response.groups.extend(refused_groups)
    return response


@_rule(10)
async def _find_coordinator(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    R = m.FindCoordinatorResponse
    if request.key_type == 1:
        rtype, code = ResourceType.TRANSACTIONAL_ID, errors.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    else:
        rtype, code = ResourceType.GROUP, errors.GROUP_AUTHORIZATION_FAILED
    if header.request_api_version < 4:
        if caller.may(Op.DESCRIBE, rtype, request.key):
            return await call(header, request)
        return R(
            error_code=code,
            error_message=caller.denied(Op.DESCRIBE, rtype, request.key),
            node_id=-1,
            host="",
            port=-1,
        )
    allowed, denied = _split(request.coordinator_keys, lambda k: caller.may(Op.DESCRIBE, rtype, k))
    refused = [
        R.Coordinator(
            key=k,
            node_id=-1,
            host="",
            port=-1,
            error_code=code,
            error_message=caller.denied(Op.DESCRIBE, rtype, k),
        )
        for k in denied
    ]
    return await _answer_allowed(
        header,
        request,
        call,
        allowed,
        refused,
        R,
        asked="coordinator_keys",
        answers="coordinators",
        ask_when_empty=False,
    )


@_rule(15)
async def _describe_groups(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    R = m.DescribeGroupsResponse
    allowed, denied = _split(request.groups, lambda g: caller.group(Op.DESCRIBE, g))
    refused = [
        R.DescribedGroup(error_code=errors.GROUP_AUTHORIZATION_FAILED, group_id=g, members=[])
        for g in denied
    ]
    response = await _answer_allowed(
        header, request, call, allowed, refused, R, "groups", "groups", ask_when_empty=False
    )
    if request.include_authorized_operations:
        for g in response.groups:
            if g.error_code == 0:
                g.authorized_operations = caller.operations(ResourceType.GROUP, g.group_id)
    return response


@_rule(16)
async def _list_groups(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    response = await call(header, request)
    if not caller.cluster(Op.DESCRIBE):
        response.groups = [g for g in response.groups if caller.group(Op.DESCRIBE, g.group_id)]
    return response


@_rule(42)
async def _delete_groups(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    R = m.DeleteGroupsResponse
    allowed, denied = _split(request.groups_names, lambda g: caller.group(Op.DELETE, g))
    refused = [
        R.DeletableGroupResult(group_id=g, error_code=errors.GROUP_AUTHORIZATION_FAILED)
        for g in denied
    ]
    return await _answer_allowed(
        header,
        request,
        call,
        allowed,
        refused,
        R,
        asked="groups_names",
        answers="results",
        ask_when_empty=False,
    )


@_rule(47)
async def _offset_delete(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    R = m.OffsetDeleteResponse
    if not caller.group(Op.DELETE, request.group_id):
        return R(error_code=errors.GROUP_AUTHORIZATION_FAILED, topics=[])
    return await _topics_of_partitions(caller, header, request, call, Op.READ, error_code=0)


# -- topics and configs ------------------------------------------------------------------


@_rule(19)
async def _create_topics(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    R = m.CreateTopicsResponse
    allowed, denied = _split(request.topics, lambda t: _may_create(caller, t.name))
    refused = [
        R.CreatableTopicResult(
            name=t.name,
            error_code=errors.TOPIC_AUTHORIZATION_FAILED,
            error_message=caller.denied(Op.CREATE, ResourceType.TOPIC, t.name),
            topic_config_error_code=errors.TOPIC_AUTHORIZATION_FAILED,
            configs=None,
        )
        for t in denied
    ]
    response = await _answer_allowed(
        header, request, call, allowed, refused, R, ask_when_empty=False
    )
    for result in response.topics:  # configs are shown only with DESCRIBE_CONFIGS (Kafka's rule)
        if result.error_code == 0 and not caller.topic(Op.DESCRIBE_CONFIGS, result.name):
            result.topic_config_error_code = errors.TOPIC_AUTHORIZATION_FAILED
            result.configs = None
    return response


@_rule(20)
async def _delete_topics(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    R = m.DeleteTopicsResponse
    code = errors.TOPIC_AUTHORIZATION_FAILED
    if header.request_api_version < 6:
        allowed, denied = _split(request.topic_names, lambda n: caller.topic(Op.DELETE, n))
        refused = [
            R.DeletableTopicResult(
                name=n,
                error_code=code,
                error_message=caller.denied(Op.DELETE, ResourceType.TOPIC, n),
            )
            for n in denied
        ]
        return await _answer_allowed(
            header, request, call, allowed, refused, R, asked="topic_names", answers="responses"
        )
    by_id: dict[uuid.UUID, str] = {}
    if any(not t.name for t in request.topics):
        by_id = {uuid.UUID(bytes=t.uuid): t.name for t in await caller.broker.meta.list_topics()}

    def name_of(t: Any) -> str | None:
        return t.name or by_id.get(t.topic_id)

    # A topic id that names no topic is left to the handler (UNKNOWN_TOPIC_ID).
    allowed, denied = _split(
        request.topics,
        lambda t: name_of(t) is None or caller.topic(Op.DELETE, name_of(t)),
    )
    refused = [
        R.DeletableTopicResult(
            name=t.name,
            topic_id=t.topic_id or _ZERO_UUID,
            error_code=code,
            error_message=caller.denied(Op.DELETE, ResourceType.TOPIC, name_of(t) or ""),
        )
        for t in denied
    ]
    return await _answer_allowed(header, request, call, allowed, refused, R, answers="responses")


@_rule(37)
async def _create_partitions(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    R = m.CreatePartitionsResponse
    allowed, denied = _split(request.topics, lambda t: caller.topic(Op.ALTER, t.name))
    refused = [
        R.CreatePartitionsTopicResult(
            name=t.name,
            error_code=errors.TOPIC_AUTHORIZATION_FAILED,
            error_message=caller.denied(Op.ALTER, ResourceType.TOPIC, t.name),
        )
        for t in denied
    ]
    return await _answer_allowed(header, request, call, allowed, refused, R, answers="results")


# Config resource types (Kafka's ConfigResource.Type codes).
_CONFIG_TOPIC, _CONFIG_BROKER, _CONFIG_BROKER_LOGGER, _CONFIG_GROUP = 2, 4, 8, 32


def _config_check(caller: Caller, operation: AclOperation, resource: Any) -> tuple[int, str] | None:
    """(error code, message) when the caller may not do ``operation`` on a config resource."""
    kind, name = resource.resource_type, resource.resource_name
    if kind == _CONFIG_TOPIC:
        target, code = (ResourceType.TOPIC, name), errors.TOPIC_AUTHORIZATION_FAILED
    elif kind in (_CONFIG_BROKER, _CONFIG_BROKER_LOGGER):
        target, code = (ResourceType.CLUSTER, CLUSTER_NAME), errors.CLUSTER_AUTHORIZATION_FAILED
    elif kind == _CONFIG_GROUP:
        target, code = (ResourceType.GROUP, name), errors.GROUP_AUTHORIZATION_FAILED
    else:  # a type the handler refuses anyway
        return None
    if caller.may(operation, *target):
        return None
    return code, caller.denied(operation, *target)


@_rule(32)
async def _describe_configs(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    R = m.DescribeConfigsResponse
    checks = [(r, _config_check(caller, Op.DESCRIBE_CONFIGS, r)) for r in request.resources]
    allowed = [r for r, problem in checks if problem is None]
    refused = [
        R.DescribeConfigsResult(
            error_code=problem[0],
            error_message=problem[1],
            resource_type=r.resource_type,
            resource_name=r.resource_name,
            configs=[],
        )
        for r, problem in checks
        if problem is not None
    ]
    return await _answer_allowed(
        header, request, call, allowed, refused, R, asked="resources", answers="results"
    )


@_rule(33, 44)
async def _alter_configs(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    R = (
        m.AlterConfigsResponse
        if header.request_api_key == 33
        else m.IncrementalAlterConfigsResponse
    )
    checks = [(r, _config_check(caller, Op.ALTER_CONFIGS, r)) for r in request.resources]
    allowed = [r for r, problem in checks if problem is None]
    refused = [
        R.AlterConfigsResourceResponse(
            error_code=problem[0],
            error_message=problem[1],
            resource_type=r.resource_type,
            resource_name=r.resource_name,
        )
        for r, problem in checks
        if problem is not None
    ]
    return await _answer_allowed(
        header, request, call, allowed, refused, R, asked="resources", answers="responses"
    )


# -- producers and transactions ----------------------------------------------------------


@_rule(22)
async def _init_producer_id(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    tid = request.transactional_id
    if tid:
        if caller.txn(Op.WRITE, tid):
            return await call(header, request)
        code = errors.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    elif caller.cluster(Op.IDEMPOTENT_WRITE) or caller.authorizer.authorize_any(
        caller.principal, caller.host, Op.WRITE, ResourceType.TOPIC
    ):
        return await call(header, request)
    else:
        code = errors.CLUSTER_AUTHORIZATION_FAILED
    return m.InitProducerIdResponse(error_code=code, producer_id=-1, producer_epoch=-1)


@_rule(24)
async def _add_partitions_to_txn(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    R = m.AddPartitionsToTxnResponse
    if header.request_api_version >= 4:  # brokers verifying a transaction
        if caller.cluster(Op.CLUSTER_ACTION):
            return await call(header, request)
        return R(error_code=errors.CLUSTER_AUTHORIZATION_FAILED, results_by_transaction=[])
    topics = request.v3_and_below_topics

    def result(code_of: Callable[[str], int]) -> Any:
        return R(
            results_by_topic_v3_and_below=[
                R.AddPartitionsToTxnTopicResult(
                    name=t.name,
                    results_by_partition=[
                        R.AddPartitionsToTxnPartitionResult(
                            partition_index=p, partition_error_code=code_of(t.name)
                        )
                        for p in t.partitions
                    ],
                )
                for t in topics
            ]
        )

    if not caller.txn(Op.WRITE, request.v3_and_below_transactional_id):
        return result(lambda _: errors.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    denied = {t.name for t in topics if not caller.topic(Op.WRITE, t.name)}
    if not denied:
        return await call(header, request)
    return result(
        lambda name: (
            errors.TOPIC_AUTHORIZATION_FAILED if name in denied else errors.OPERATION_NOT_ATTEMPTED
        )
    )


@_rule(25)
async def _add_offsets_to_txn(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    if not caller.txn(Op.WRITE, request.transactional_id):
        return m.AddOffsetsToTxnResponse(error_code=errors.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    if not caller.group(Op.READ, request.group_id):
        return m.AddOffsetsToTxnResponse(error_code=errors.GROUP_AUTHORIZATION_FAILED)
    return await call(header, request)


@_rule(26)
async def _end_txn(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    if caller.txn(Op.WRITE, request.transactional_id):
        return await call(header, request)
    return m.EndTxnResponse(
        error_code=errors.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, producer_id=-1, producer_epoch=-1
    )


@_rule(65)
async def _describe_transactions(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    R = m.DescribeTransactionsResponse
    allowed, denied = _split(request.transactional_ids, lambda t: caller.txn(Op.DESCRIBE, t))
    refused = [
        R.TransactionState(
            error_code=errors.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            transactional_id=t,
            transaction_state="",
            producer_id=-1,
            producer_epoch=-1,
            topics=[],
        )
        for t in denied
    ]
    response = await _answer_allowed(
        header,
        request,
        call,
        allowed,
        refused,
        R,
        asked="transactional_ids",
        answers="transaction_states",
        ask_when_empty=False,
    )
    for state in response.transaction_states:  # refused ones have no topics
        state.topics = [t for t in state.topics if caller.topic(Op.DESCRIBE, t.topic)]
    return response


@_rule(66)
async def _list_transactions(
    caller: Caller, header: m.RequestHeader, request: Any, call: Call
) -> Any:
    response = await call(header, request)
    response.transaction_states = [
        s for s in response.transaction_states if caller.txn(Op.DESCRIBE, s.transactional_id)
    ]
    return response


# -- cluster-wide ------------------------------------------------------------------------


def _refused_replica_log_dirs(code: int, message: str, request: Any) -> Any:
    R = m.AlterReplicaLogDirsResponse
    return R(
        results=[
            R.AlterReplicaLogDirTopicResult(
                topic_name=t.name,
                partitions=[
                    R.AlterReplicaLogDirPartitionResult(partition_index=p, error_code=code)
                    for p in t.partitions
                ],
            )
            for d in request.dirs
            for t in d.topics
        ]
    )


def _refused_scram_users(code: int, message: str, request: Any) -> Any:
    R = m.AlterUserScramCredentialsResponse
    users = dict.fromkeys(u.name for u in [*request.deletions, *request.upsertions])
    return R(
        results=[
            R.AlterUserScramCredentialsResult(user=u, error_code=code, error_message=message)
            for u in users
        ]
    )


#: Cluster-level APIs whose refusal is per item, not one error code: API key -> the answer
#: to ``request`` refused with ``code`` and ``message``.
_CLUSTER_REFUSED: dict[int, Callable[[int, str, Any], Any]] = {
    30: lambda code, message, request: m.CreateAclsResponse(
        results=[
            m.CreateAclsResponse.AclCreationResult(error_code=code, error_message=message)
            for _ in request.creations
        ]
    ),
    31: lambda code, message, request: m.DeleteAclsResponse(
        filter_results=[
            m.DeleteAclsResponse.DeleteAclsFilterResult(error_code=code, error_message=message)
            for _ in request.filters
        ]
    ),
    34: _refused_replica_log_dirs,
    51: _refused_scram_users,
}


def _cluster_refusal(
    caller: Caller, header: m.RequestHeader, request: Any, op: AclOperation
) -> Any:
    """The answer of a cluster-level API the caller may not use: per item where the API
    answers per item (:data:`_CLUSTER_REFUSED`), else its error code (and message)."""
    code = errors.CLUSTER_AUTHORIZATION_FAILED
    message = caller.denied(op, ResourceType.CLUSTER, CLUSTER_NAME)
    key = header.request_api_key
    if key in _CLUSTER_REFUSED:
        return _CLUSTER_REFUSED[key](code, message, request)
    response = m.RESPONSE_TYPES[key]()
    if hasattr(response, "error_code"):
        response.error_code = code
    if hasattr(response, "error_message"):
        response.error_message = message
    return response


#: Cluster-level APIs and the operation each needs.
_CLUSTER_OPERATION: dict[int, AclOperation] = {
    29: Op.DESCRIBE,  # DescribeAcls
    30: Op.ALTER,  # CreateAcls
    31: Op.ALTER,  # DeleteAcls
    34: Op.ALTER,  # AlterReplicaLogDirs
    35: Op.DESCRIBE,  # DescribeLogDirs
    43: Op.ALTER,  # ElectLeaders
    45: Op.ALTER,  # AlterPartitionReassignments
    46: Op.DESCRIBE,  # ListPartitionReassignments
    50: Op.DESCRIBE,  # DescribeUserScramCredentials
    51: Op.ALTER,  # AlterUserScramCredentials
}


async def _cluster_action(caller: Caller, header: m.RequestHeader, request: Any, call: Call) -> Any:
    op = _CLUSTER_OPERATION.get(header.request_api_key, Op.CLUSTER_ACTION)
    if caller.cluster(op):
        return await call(header, request)
    return _cluster_refusal(caller, header, request, op)


for _key in _CLUSTER_OPERATION:
    _RULES[_key] = _cluster_action
