"""Kafka consumer-group APIs: membership through the in-memory coordinator
(`ingest.kafka.groups`), committed offsets (with their metadata strings and the leader epoch
committed with them, OffsetCommit v6+ / OffsetFetch v5+) in the metadata store, so they
survive restarts.

One coordinator per group (`GroupShell`, the I/O around `GroupCoordinator`):

- Every group API first asks the cluster view whether this agent coordinates the group
  (`ClusterView.is_coordinator`, rendezvous over the live agents). If not, the group is
  answered NOT_COORDINATOR (per group where the API has per-group errors, else for the whole
  request) and the client runs FindCoordinator again. ListGroups lists the groups this agent
  coordinates: those it holds, those with stored state and those known only by committed
  offsets, each on exactly one agent.
- Taking over: the first request about a group this agent coordinates but does not hold loads
  its snapshot from metadata (off the loop, one load per group however many requests wait
  for it) and restores it before answering (groups.py, rule 8). A group with no stored state
  starts new. A group is loaded once per coordination: ids checked since the live set last
  changed are remembered (at most `_CHECKED_MAX`, then forgotten and loaded again).
- Saving: the coordinator's `persist` callback queues the newest snapshot of a group; one
  writer task per group saves them in order (`save_group_state`, with the generation guard) or
  deletes the state. A write that fails is retried every `SAVE_RETRY_S` until a newer snapshot
  supersedes it or `SAVE_ATTEMPTS` were made. A save refused because a newer generation is
  stored means another agent coordinated the group since: the group is dropped from memory
  (parked requests get NOT_COORDINATOR) and reloaded by the next request.
- Losing coordination: when the live set changes (ClusterView listener) every held group this
  agent no longer coordinates is dropped (parked JoinGroup/SyncGroup answered NOT_COORDINATOR)
  and the memory of checked ids is cleared, so a group that comes back is reloaded from
  metadata, never taken from stale memory. Snapshots already queued are still written: the
  generation guard keeps them from overwriting a successor's newer state.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ingest.kafka import errors
from ingest.kafka.api_cluster import GROUP_OPERATIONS, NOT_REQUESTED
from ingest.kafka.groups import GroupCoordinator, JoinResult, SnapshotError, SyncResult
from metadata import MetadataUnavailableError
from metadata.async_store import AsyncMetadata, TopicLookup
from metadata.store import MAX_GROUP_ID_LENGTH
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
from streamhouse.process import describe_failure

if TYPE_CHECKING:
    from ingest.cluster import ClusterView
    from ingest.kafka.broker import KafkaBroker

log = logging.getLogger("ingest.kafka.groups")

SAVE_RETRY_S = 1.0
"""Delay between attempts to write a group's snapshot while metadata fails."""
SAVE_ATTEMPTS = 30
"""Attempts per snapshot before giving up on it (a successor then loads an older one)."""
_CHECKED_MAX = 100_000
CLASSIC = "classic"
"""The type of every group (ListGroups v5): the classic JoinGroup/SyncGroup protocol."""
_LOAD_CONCURRENCY = 16


class GroupShell:
    """One broker's group coordination across agents (module docstring)."""

    def __init__(
        self, coordinator: GroupCoordinator, cluster: ClusterView, meta: AsyncMetadata
    ) -> None:
        self.coordinator = coordinator
        self.cluster = cluster
        self.meta = meta
        self._checked: set[str] = set()
        self._loading: dict[str, asyncio.Future[int]] = {}
        self._epoch = 0  # +1 at every change of the live set
        self._queued: dict[str, tuple[int, bytes | None]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}
        coordinator.persist = self._persist
        cluster.add_listener(self._on_live_set_changed)

    # -- coordination ---------------------------------------------------------------------

    def coordinates(self, group_id: str) -> bool:
        return self.cluster.is_coordinator(group_id)

    async def ensure(self, group_id: str) -> int:
        """NONE when this agent coordinates the group and holds it (loaded from metadata if
        it was not held); NOT_COORDINATOR, INVALID_GROUP_ID or (metadata failing)
        COORDINATOR_NOT_AVAILABLE otherwise, all of which clients act on."""
        if not group_id:
            return errors.NONE  # the coordinator answers INVALID_GROUP_ID where it applies
        if len(group_id) > MAX_GROUP_ID_LENGTH:
            return errors.INVALID_GROUP_ID
        if not self.coordinates(group_id):
            return errors.NOT_COORDINATOR
        if group_id in self._checked or self.coordinator.known(group_id):
            return errors.NONE
        loading = self._loading.get(group_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load(group_id))
            self._loading[group_id] = loading
        # Shielded: a waiter whose client went away must not cancel the others' load.
        return await asyncio.shield(loading)

    async def _load(self, group_id: str) -> int:
        try:
            while True:
                # This agent's own writes of the group go first (a deletion in flight must not
                # be read back as the group).
                while (writer := self._writers.get(group_id)) is not None:
                    await asyncio.shield(writer)
                epoch = self._epoch
                try:
                    found = await self.meta.load_group_state(group_id)
                except MetadataUnavailableError as exc:
                    log.warning(
                        "group %s: cannot load its state (%s); answering "
                        "COORDINATOR_NOT_AVAILABLE, clients retry",
                        group_id,
                        describe_failure(exc),
                    )
                    return errors.COORDINATOR_NOT_AVAILABLE
                if not self.coordinates(group_id):
                    return errors.NOT_COORDINATOR
                if epoch == self._epoch:
                    break
                # The live set changed while loading: the state may have moved on; load again.
            if not self.coordinator.known(group_id) and found is not None:
                generation, blob = found
                try:
                    self.coordinator.restore(group_id, blob)
                except SnapshotError as exc:
                    log.error(
                        "%s; starting the group Empty at generation %d (its members rejoin; "
                        "committed offsets are kept)",
                        exc,
                        generation,
                    )
                    self.coordinator.restore_empty(group_id, generation)
            if len(self._checked) >= _CHECKED_MAX:
                self._checked.clear()
            self._checked.add(group_id)
            return errors.NONE
        finally:
            self._loading.pop(group_id, None)

    def _on_live_set_changed(self) -> None:
        self._epoch += 1
        self._checked.clear()
        for group_id in self.coordinator.group_ids():
            if not self.coordinates(group_id):
                self.coordinator.drop_group(group_id, errors.NOT_COORDINATOR)
                log.info(
                    "group %s: now coordinated by agent %s",
                    group_id,
                    self.cluster.coordinator_for(group_id).agent_id,
                )

    async def coordinated(self, group_ids: Iterable[str]) -> list[str]:
        """The given groups this agent coordinates, each loaded (held) when it has state."""
        mine = [g for g in dict.fromkeys(group_ids) if g and self.coordinates(g)]
        limit = asyncio.Semaphore(_LOAD_CONCURRENCY)

        async def load(group_id: str) -> int:
            async with limit:
                return await self.ensure(group_id)

        codes = await asyncio.gather(*(load(g) for g in mine))
        return [g for g, code in zip(mine, codes, strict=True) if code == errors.NONE]

    # -- saving ---------------------------------------------------------------------------

    def _persist(self, group_id: str, generation: int, blob: bytes | None) -> None:
        self._queued[group_id] = (generation, blob)  # newest wins; written in order below
        if group_id not in self._writers:
            self._writers[group_id] = asyncio.get_running_loop().create_task(
                self._write(group_id), name=f"save group {group_id}"
            )

    async def _write(self, group_id: str) -> None:
        failures = 0
        try:
            while (item := self._queued.pop(group_id, None)) is not None:
                generation, blob = item
                try:
                    if blob is None:
                        await self.meta.delete_group_state(group_id)
                    elif not await self.meta.save_group_state(group_id, generation, blob):
                        self._stale(group_id, generation)
                    failures = 0
                except ValueError as exc:  # refused by the store's validation: never retried
                    log.error("group %s: its state was not saved: %s", group_id, exc)
                except Exception as exc:
                    failures += 1
                    if failures >= SAVE_ATTEMPTS:
                        log.error(
                            "group %s: gave up saving its state after %d attempts (%s); if "
                            "another agent takes the group over it starts from the last saved "
                            "state",
                            group_id,
                            failures,
                            describe_failure(exc),
                        )
                        failures = 0
                        continue
                    if failures == 1:
                        log.warning(
                            "group %s: saving its state failed (%s); retrying every %.1f s",
                            group_id,
                            describe_failure(exc),
                            SAVE_RETRY_S,
                        )
                    self._queued.setdefault(group_id, item)  # unless a newer one came
                    await asyncio.sleep(SAVE_RETRY_S)
        finally:
            self._writers.pop(group_id, None)

    def _stale(self, group_id: str, generation: int) -> None:
        """A newer generation is stored: another agent coordinated the group since."""
        log.warning(
            "group %s: the store holds a newer generation than %d, so another agent "
            "coordinated the group since; dropping it here (the next request reloads it)",
            group_id,
            generation,
        )
        self._queued.pop(group_id, None)
        self._checked.discard(group_id)
        self.coordinator.drop_group(group_id, errors.NOT_COORDINATOR)

    async def flush(self) -> None:
        """Wait until every queued snapshot is written (tests, clean stops)."""
        while self._writers:
            await asyncio.gather(*list(self._writers.values()), return_exceptions=True)


_SHELLS: weakref.WeakKeyDictionary[KafkaBroker, GroupShell] = weakref.WeakKeyDictionary()


def shell(broker: KafkaBroker) -> GroupShell:
    """The broker's GroupShell, made (and attached to its coordinator and cluster view) on the
    first group request."""
    found = _SHELLS.get(broker)
    if found is None:
        found = _SHELLS[broker] = GroupShell(broker.coordinator, broker.cluster, broker.meta)
    return found


async def _gate(broker: KafkaBroker, group_id: str) -> int:
    return await shell(broker).ensure(group_id)


def _client_host(broker: KafkaBroker) -> str:
    return "/127.0.0.1"


async def join_group(
    broker: KafkaBroker, header: RequestHeader, request: JoinGroupRequest
) -> JoinGroupResponse:
    version = header.request_api_version
    error = await _gate(broker, request.group_id)
    if error != errors.NONE:
        result = JoinResult(error=error, member_id=request.member_id)
    else:
        result = await _join(broker, header, request)
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


async def _join(
    broker: KafkaBroker, header: RequestHeader, request: JoinGroupRequest
) -> JoinResult:
    version = header.request_api_version
    return await broker.coordinator.join_group(
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


async def sync_group(
    broker: KafkaBroker, header: RequestHeader, request: SyncGroupRequest
) -> SyncGroupResponse:
    version = header.request_api_version
    error = await _gate(broker, request.group_id)
    if error != errors.NONE:
        result = SyncResult(error=error)
    else:
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
    error = await _gate(broker, request.group_id)
    if error == errors.NONE:
        error = broker.coordinator.heartbeat(
            request.group_id, request.generation_id, request.member_id, request.group_instance_id
        )
    return HeartbeatResponse(error_code=error)


async def leave_group(
    broker: KafkaBroker, header: RequestHeader, request: LeaveGroupRequest
) -> LeaveGroupResponse:
    error = await _gate(broker, request.group_id)
    if error != errors.NONE:
        return LeaveGroupResponse(error_code=error, members=[])
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
    error = await _gate(broker, request.group_id)
    if error == errors.NONE:
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
                        # v6+; as Kafka, a negative epoch means none (-1).
                        max(p.committed_leader_epoch, -1),
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


_Row = tuple[int, int, int, str, int]  # (partition, offset, leader epoch, metadata, error)


async def _fetch_group_offsets(
    broker: KafkaBroker, group_id: str, topics: list[tuple[str, list[int]]] | None
) -> list[tuple[str, list[_Row]]]:
    """[(topic, [(partition, offset, leader epoch, metadata, error)])] for the asked
    partitions, or for every committed partition when `topics` is None. Two metadata calls,
    off the loop. The leader epoch is the one committed with the offset (-1: none)."""
    if topics is None:
        by_topic: dict[str, list[_Row]] = {}
        all_committed = await broker.meta.list_group_offsets(group_id)
        names = await broker.meta.topics_by_id(c.topic_id for c in all_committed)
        for committed in all_committed:
            topic = names.get(committed.topic_id)
            if topic is not None:
                by_topic.setdefault(topic.name, []).append(
                    (
                        committed.partition,
                        committed.offset,
                        committed.leader_epoch,
                        committed.metadata,
                        0,
                    )
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
                rows.append((partition, -1, -1, "", errors.UNKNOWN_TOPIC_OR_PARTITION))
                continue
            c = commits.get((topic.topic_id, partition))
            rows.append(
                (partition, c.offset, c.leader_epoch, c.metadata, 0)
                if c
                else (partition, -1, -1, "", 0)
            )
        out.append((name, rows))
    return out


async def offset_fetch(
    broker: KafkaBroker, header: RequestHeader, request: OffsetFetchRequest
) -> OffsetFetchResponse:
    R = OffsetFetchResponse
    if header.request_api_version >= 8:
        groups = []
        for g in request.groups:
            error = await _gate(broker, g.group_id)
            groups.append(
                R.OffsetFetchResponseGroup(
                    group_id=g.group_id,
                    error_code=error,
                    topics=[]
                    if error != errors.NONE
                    else await _offset_topics(
                        broker,
                        g.group_id,
                        g.topics,
                        R.OffsetFetchResponseTopics,
                        R.OffsetFetchResponsePartitions,
                        request.require_stable,
                    ),
                )
            )
        return R(groups=groups)
    error = await _gate(broker, request.group_id)
    if error != errors.NONE:
        # v1 has no top-level error: each asked partition carries it too.
        return R(
            error_code=error,
            topics=[
                R.OffsetFetchResponseTopic(
                    name=t.name,
                    partitions=[
                        R.OffsetFetchResponsePartition(
                            partition_index=p,
                            committed_offset=-1,
                            committed_leader_epoch=-1,
                            metadata="",
                            error_code=error,
                        )
                        for p in t.partition_indexes
                    ],
                )
                for t in request.topics or ()
            ],
        )
    return R(
        error_code=0,
        topics=await _offset_topics(
            broker,
            request.group_id,
            request.topics,
            R.OffsetFetchResponseTopic,
            R.OffsetFetchResponsePartition,
            request.require_stable,
        ),
    )


async def _offset_topics(
    broker: KafkaBroker,
    group_id: str,
    topics: Any,
    topic_type: Any,
    partition_type: Any,
    require_stable: bool = False,
) -> list[Any]:
    """OffsetFetch topic entries of one group (v8+ and older versions name the same fields
    differently-typed structs, hence the types as arguments). With ``require_stable`` (v7+),
    partitions with transactional offsets pending answer UNSTABLE_OFFSET_COMMIT (api_txn)."""
    asked = None if topics is None else [(t.name, t.partition_indexes) for t in topics]
    entries = [
        topic_type(
            name=name,
            partitions=[
                partition_type(
                    partition_index=p,
                    committed_offset=offset,
                    committed_leader_epoch=epoch,
                    metadata=metadata,
                    error_code=code,
                )
                for p, offset, epoch, metadata, code in rows
            ],
        )
        for name, rows in await _fetch_group_offsets(broker, group_id, asked)
    ]
    if require_stable:
        from ingest.kafka.api_txn import hold_unstable_offsets

        await hold_unstable_offsets(broker, group_id, entries)
    return entries


async def describe_groups(
    broker: KafkaBroker, header: RequestHeader, request: DescribeGroupsRequest
) -> DescribeGroupsResponse:
    R = DescribeGroupsResponse
    described = []
    operations = (
        GROUP_OPERATIONS
        if header.request_api_version >= 3 and request.include_authorized_operations
        else NOT_REQUESTED
    )
    for group_id in request.groups:
        error = await _gate(broker, group_id)
        if error != errors.NONE:
            described.append(
                R.DescribedGroup(
                    error_code=error,
                    group_id=group_id,
                    group_state="",
                    protocol_type="",
                    protocol_data="",
                    members=[],
                    authorized_operations=operations,
                )
            )
            continue
        d = broker.coordinator.describe_group(group_id)
        state = d.state
        if state == "Dead" and await broker.meta.list_group_offsets(group_id):
            state = "Empty"  # a group known only by its committed offsets
        described.append(
            R.DescribedGroup(
                error_code=d.error,
                group_id=group_id,
                group_state=state,
                authorized_operations=operations,
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
    groups_shell = shell(broker)
    states = list(request.states_filter) if request.states_filter else None
    # Every group here is a classic group (JoinGroup/SyncGroup); v5's type filter (Kafka
    # compares case-insensitively) either keeps them all or none. An unknown type lists none.
    types = {t.lower() for t in request.types_filter} if request.types_filter else None
    if types is not None and CLASSIC not in types:
        return R(error_code=0, groups=[])
    # Kafka's per-broker answer: the groups this agent coordinates. Those with stored state
    # are loaded first (this agent is their coordinator now), so they show their real state.
    stored = await broker.meta.list_group_states()
    offset_only = await broker.meta.list_offset_groups()
    mine = await groups_shell.coordinated([*stored, *offset_only])
    listed = {
        g.group_id: g
        for g in broker.coordinator.list_groups(states)
        if groups_shell.coordinates(g.group_id)
    }
    groups = [
        R.ListedGroup(
            group_id=g.group_id,
            protocol_type=g.protocol_type,
            group_state=g.state,
            group_type=CLASSIC,
        )
        for g in listed.values()
    ]
    if states is None or any(s.lower() == "empty" for s in states):
        # Not held after loading: known only by committed offsets (a stored state not held is
        # being deleted, or could not be loaded).
        offset_groups = set(offset_only)
        for group_id in mine:
            if group_id in offset_groups and not broker.coordinator.known(group_id):
                groups.append(
                    R.ListedGroup(
                        group_id=group_id, protocol_type="", group_state="Empty", group_type=CLASSIC
                    )
                )
    return R(error_code=0, groups=groups)


async def delete_groups(
    broker: KafkaBroker, header: RequestHeader, request: DeleteGroupsRequest
) -> DeleteGroupsResponse:
    R = DeleteGroupsResponse
    results = []
    for group_id in request.groups_names:
        gate = await _gate(broker, group_id)
        if gate != errors.NONE:
            results.append(R.DeletableGroupResult(group_id=group_id, error_code=gate))
            continue
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
    error = await _gate(broker, request.group_id)
    if error != errors.NONE:
        return R(error_code=error, topics=[])
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
