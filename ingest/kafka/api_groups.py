"""Kafka consumer-group APIs: membership through the in-memory coordinator
(`ingest.kafka.groups`), committed offsets (with their metadata strings) in the metadata
store, so they survive restarts."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from ingest.kafka import errors
from metadata import MetadataUnavailableError
from metadata.async_store import TopicLookup
from streamhouse.kafka.messages import (
    DeleteGroupsRequest,
    DeleteGroupsResponse,
    DescribeGroupsRequest,
    DescribeGroupsResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinGroupRequest,
    JoinGroupResponse,
    LeaveGroupRequest,
    LeaveGroupResponse,
    ListGroupsRequest,
    ListGroupsResponse,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetDeleteRequest,
    OffsetDeleteResponse,
    OffsetFetchRequest,
    OffsetFetchResponse,
    RequestHeader,
    SyncGroupRequest,
    SyncGroupResponse,
)

if TYPE_CHECKING:
    from ingest.kafka.broker import KafkaBroker


def _client_host(broker: KafkaBroker) -> str:
    return "/127.0.0.1"


async def join_group(
    broker: KafkaBroker, header: RequestHeader, request: JoinGroupRequest
) -> JoinGroupResponse:
    version = header.request_api_version
    result = await broker.coordinator.join_group(
        request.group_id,
        request.member_id,
        request.group_instance_id,
        request.protocol_type,
        [(p.name, bytes(p.metadata)) for p in request.protocols],
        request.session_timeout_ms,
        request.rebalance_timeout_ms if version >= 1 else -1,
        header.client_id or "",
        _client_host(broker),
        require_known_member_id=version >= 4,
        reason=request.reason,
        supports_skip_assignment=version >= 9,
    )
    return JoinGroupResponse(
        error_code=result.error,
        generation_id=result.generation_id,
        protocol_type=result.protocol_type,
        protocol_name=result.protocol_name if version >= 7 else (result.protocol_name or ""),
        leader=result.leader,
        skip_assignment=result.skip_assignment,
        member_id=result.member_id,
        members=[
            JoinGroupResponse.JoinGroupResponseMember(
                member_id=m.member_id, group_instance_id=m.group_instance_id, metadata=m.metadata
            )
            for m in result.members
        ],
    )


async def sync_group(
    broker: KafkaBroker, header: RequestHeader, request: SyncGroupRequest
) -> SyncGroupResponse:
    version = header.request_api_version
    result = await broker.coordinator.sync_group(
        request.group_id,
        request.generation_id,
        request.member_id,
        request.group_instance_id,
        request.protocol_type if version >= 5 else None,
        request.protocol_name if version >= 5 else None,
        [(a.member_id, bytes(a.assignment)) for a in request.assignments],
    )
    return SyncGroupResponse(
        error_code=result.error,
        protocol_type=result.protocol_type,
        protocol_name=result.protocol_name,
        assignment=result.assignment,
    )


async def heartbeat(
    broker: KafkaBroker, header: RequestHeader, request: HeartbeatRequest
) -> HeartbeatResponse:
    error = broker.coordinator.heartbeat(
        request.group_id, request.generation_id, request.member_id, request.group_instance_id
    )
    return HeartbeatResponse(error_code=error)


async def leave_group(
    broker: KafkaBroker, header: RequestHeader, request: LeaveGroupRequest
) -> LeaveGroupResponse:
    if header.request_api_version < 3:
        error, left = broker.coordinator.leave_group(request.group_id, [(request.member_id, None)])
        if error == errors.NONE and left:
            error = left[0].error  # v0-2 have no per-member errors: the member's is the answer
        return LeaveGroupResponse(error_code=error)
    error, left = broker.coordinator.leave_group(
        request.group_id, [(m.member_id, m.group_instance_id) for m in request.members]
    )
    return LeaveGroupResponse(
        error_code=error,
        members=[
            LeaveGroupResponse.MemberResponse(
                member_id=m.member_id, group_instance_id=m.group_instance_id, error_code=m.error
            )
            for m in left
        ],
    )


async def offset_commit(
    broker: KafkaBroker, header: RequestHeader, request: OffsetCommitRequest
) -> OffsetCommitResponse:
    R = OffsetCommitResponse
    error = broker.coordinator.validate_offset_commit(
        request.group_id,
        request.generation_id_or_member_epoch,
        request.member_id,
        request.group_instance_id,
    )
    response = R(topics=[])
    for wanted in request.topics:
        topic = await broker.topic(wanted.name)
        partitions = []
        commits = []
        slots = []
        for p in wanted.partitions:
            code = error
            if code == 0:
                if topic is None or not 0 <= p.partition_index < topic.partitions:
                    code = errors.UNKNOWN_TOPIC_OR_PARTITION
            partitions.append(
                R.OffsetCommitResponsePartition(partition_index=p.partition_index, error_code=code)
            )
            if code == 0 and topic is not None:
                commits.append(
                    (
                        topic.topic_id,
                        p.partition_index,
                        p.committed_offset,
                        p.committed_metadata or "",
                    )
                )
                slots.append(len(partitions) - 1)
        if commits:
            # A metadata write waits for SQLite's lock and an fsync: not on the event loop.
            try:
                stored = await broker.meta.commit_offsets(request.group_id, commits)
            except MetadataUnavailableError as exc:
                # Kafka's mapping for an offsets append that failed: a storage error becomes
                # NOT_COORDINATOR, a timeout stays REQUEST_TIMED_OUT; clients retry both.
                code = exc.code.kafka_code
                if code != errors.REQUEST_TIMED_OUT:
                    code = errors.NOT_COORDINATOR
                for slot in slots:
                    partitions[slot].error_code = code
            else:
                for slot, ok in zip(slots, stored, strict=True):
                    if not ok:
                        partitions[slot].error_code = errors.UNKNOWN_TOPIC_OR_PARTITION
        response.topics.append(R.OffsetCommitResponseTopic(name=wanted.name, partitions=partitions))
    return response


async def _fetch_group_offsets(
    broker: KafkaBroker, group_id: str, topics: list[tuple[str, list[int]]] | None
) -> list[tuple[str, list[tuple[int, int, str, int]]]]:
    """[(topic, [(partition, offset, metadata, error)])] for the asked partitions, or for every
    committed partition when `topics` is None. Two metadata calls, off the loop."""
    if topics is None:
        by_topic: dict[str, list[tuple[int, int, str, int]]] = {}
        all_committed = await broker.meta.list_group_offsets(group_id)
        names = await broker.meta.topics_by_id(c.topic_id for c in all_committed)
        for committed in all_committed:
            topic = names.get(committed.topic_id)
            if topic is not None:
                by_topic.setdefault(topic.name, []).append(
                    (committed.partition, committed.offset, committed.metadata, 0)
                )
        return list(by_topic.items())
    found = await broker.meta.topic_states([TopicLookup(name) for name, _ in topics])
    commits = await broker.meta.group_offsets(group_id)
    out = []
    for (name, partitions), known in zip(topics, found, strict=True):
        topic = known.topic if known is not None else None
        rows = []
        for partition in partitions:
            if topic is None or not 0 <= partition < topic.partitions:
                rows.append((partition, -1, "", errors.UNKNOWN_TOPIC_OR_PARTITION))
                continue
            c = commits.get((topic.topic_id, partition))
            rows.append((partition, c.offset, c.metadata, 0) if c else (partition, -1, "", 0))
        out.append((name, rows))
    return out


async def offset_fetch(
    broker: KafkaBroker, header: RequestHeader, request: OffsetFetchRequest
) -> OffsetFetchResponse:
    R = OffsetFetchResponse
    if header.request_api_version >= 8:
        return R(
            groups=[
                R.OffsetFetchResponseGroup(
                    group_id=g.group_id,
                    error_code=0,
                    topics=await _offset_topics(
                        broker,
                        g.group_id,
                        g.topics,
                        R.OffsetFetchResponseTopics,
                        R.OffsetFetchResponsePartitions,
                    ),
                )
                for g in request.groups
            ]
        )
    return R(
        error_code=0,
        topics=await _offset_topics(
            broker,
            request.group_id,
            request.topics,
            R.OffsetFetchResponseTopic,
            R.OffsetFetchResponsePartition,
        ),
    )


async def _offset_topics(
    broker: KafkaBroker, group_id: str, topics: Any, topic_type: Any, partition_type: Any
) -> list[Any]:
    """OffsetFetch topic entries of one group (v8+ and older versions name the same fields
    differently-typed structs, hence the types as arguments)."""
    asked = None if topics is None else [(t.name, t.partition_indexes) for t in topics]
    return [
        topic_type(
            name=name,
            partitions=[
                partition_type(
                    partition_index=p,
                    committed_offset=offset,
                    committed_leader_epoch=-1,
                    metadata=metadata,
                    error_code=code,
                )
                for p, offset, metadata, code in rows
            ],
        )
        for name, rows in await _fetch_group_offsets(broker, group_id, asked)
    ]


async def describe_groups(
    broker: KafkaBroker, header: RequestHeader, request: DescribeGroupsRequest
) -> DescribeGroupsResponse:
    R = DescribeGroupsResponse
    described = []
    for group_id in request.groups:
        d = broker.coordinator.describe_group(group_id)
        state = d.state
        if state == "Dead" and await broker.meta.list_group_offsets(group_id):
            state = "Empty"  # a group known only by its committed offsets
        described.append(
            R.DescribedGroup(
                error_code=d.error,
                group_id=group_id,
                group_state=state,
                protocol_type=d.protocol_type,
                protocol_data=d.protocol,
                members=[
                    R.DescribedGroupMember(
                        member_id=m.member_id,
                        group_instance_id=m.group_instance_id,
                        client_id=m.client_id,
                        client_host=m.client_host,
                        member_metadata=m.metadata,
                        member_assignment=m.assignment,
                    )
                    for m in d.members
                ],
            )
        )
    return R(groups=described)


async def list_groups(
    broker: KafkaBroker, header: RequestHeader, request: ListGroupsRequest
) -> ListGroupsResponse:
    R = ListGroupsResponse
    states = list(request.states_filter) if request.states_filter else None
    listed = {g.group_id: g for g in broker.coordinator.list_groups(states)}
    groups = [
        R.ListedGroup(group_id=g.group_id, protocol_type=g.protocol_type, group_state=g.state)
        for g in listed.values()
    ]
    if states is None or any(s.lower() == "empty" for s in states):
        for group_id in await broker.meta.list_offset_groups():
            if group_id not in listed and not broker.coordinator.known(group_id):
                groups.append(
                    R.ListedGroup(group_id=group_id, protocol_type="", group_state="Empty")
                )
    return R(error_code=0, groups=groups)


async def delete_groups(
    broker: KafkaBroker, header: RequestHeader, request: DeleteGroupsRequest
) -> DeleteGroupsResponse:
    R = DeleteGroupsResponse
    results = []
    for group_id in request.groups_names:
        has_offsets = bool(await broker.meta.list_group_offsets(group_id))
        error = broker.coordinator.delete_group(group_id)
        if error == errors.GROUP_ID_NOT_FOUND and has_offsets:
            error = 0
        if error == 0:
            await broker.meta.delete_group_offsets(group_id)
        results.append(R.DeletableGroupResult(group_id=group_id, error_code=error))
    return R(results=results)


async def offset_delete(
    broker: KafkaBroker, header: RequestHeader, request: OffsetDeleteRequest
) -> OffsetDeleteResponse:
    R = OffsetDeleteResponse
    described = broker.coordinator.describe_group(request.group_id)
    if described.state == "Dead" and not await broker.meta.list_group_offsets(request.group_id):
        return R(error_code=errors.GROUP_ID_NOT_FOUND)
    protocol_type, member_metadata = broker.coordinator.member_protocols(request.group_id)
    subscribed: set[str] | None = set()
    if member_metadata:
        if protocol_type != "consumer":
            return R(error_code=errors.NON_EMPTY_GROUP)
        for offered in member_metadata:
            for metadata in offered:
                topics_of = _subscribed_topics(metadata)
                if topics_of is None:
                    subscribed = None  # unreadable: treat every topic as subscribed
                    break
                if subscribed is not None:
                    subscribed |= topics_of
    topics = []
    for wanted in request.topics:
        topic = await broker.topic(wanted.name)
        partitions = []
        for p in wanted.partitions:
            if topic is None or not 0 <= p.partition_index < topic.partitions:
                code = errors.UNKNOWN_TOPIC_OR_PARTITION
            elif member_metadata and (subscribed is None or wanted.name in subscribed):
                code = errors.GROUP_SUBSCRIBED_TO_TOPIC
            else:
                await broker.meta.delete_group_offsets(
                    request.group_id, [(topic.topic_id, p.partition_index)]
                )
                code = 0
            partitions.append(
                R.OffsetDeleteResponsePartition(partition_index=p.partition_index, error_code=code)
            )
        topics.append(R.OffsetDeleteResponseTopic(name=wanted.name, partitions=partitions))
    return R(error_code=0, topics=topics)


def _subscribed_topics(metadata: bytes) -> set[str] | None:
    """Topics of a consumer-protocol subscription (versions 0-3 share the prefix: version
    int16, topics as an int32 count of int16-length strings); None when unreadable."""
    try:
        view = memoryview(metadata)
        (count,) = struct.unpack_from(">i", view, 2)
        pos, topics = 6, set()
        for _ in range(count):
            (length,) = struct.unpack_from(">h", view, pos)
            topics.add(bytes(view[pos + 2 : pos + 2 + length]).decode())
            pos += 2 + length
        return topics
    except (struct.error, UnicodeDecodeError, ValueError):
        return None
