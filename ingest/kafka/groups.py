"""Kafka consumer-group coordinator, classic protocol: in memory, persisted by snapshots, no I/O.

The Kafka listener's request handlers call in with plain values and get result structs back,
with errors as Kafka's numeric codes. JoinGroup and SyncGroup are ``async`` only because their
answers wait for a rebalance; every timer (session, rebalance, initial delay, pending member,
pending sync) is a ``loop.call_later`` on the running loop, so every method must be called on
the event loop's thread. Committed offsets live in the metadata store; this module only says
whether a commit may go ahead (``validate_offset_commit``).

States
------
Empty                no members. Either new, or everybody left; clients that do not use group
                     management may still commit offsets under its name.
PreparingRebalance   a rebalance is under way: JoinGroup requests are parked until every member
                     has rejoined, or the rebalance timeout passes, or (when the group was
                     Empty) the initial rebalance delay is over.
CompletingRebalance  the new generation exists and the JoinGroup answers are out; waiting for
                     the leader's SyncGroup, which carries everybody's assignment.
Stable               the assignment has been handed out; members only heartbeat.
Dead                 deleted (it was Empty) or the coordinator closed; it takes no more requests.

Transitions
-----------
Empty               -> PreparingRebalance   a member joins
PreparingRebalance  -> CompletingRebalance  the rebalance ends with members
PreparingRebalance  -> Empty                the rebalance ends with nobody left
CompletingRebalance -> Stable               the leader's SyncGroup arrives
CompletingRebalance -> PreparingRebalance   a member joins with new metadata, leaves, expires,
                                            or does not send SyncGroup within the rebalance timeout
Stable              -> PreparingRebalance   a member joins, the leader rejoins, a member rejoins
                                            with new metadata, leaves, expires or never syncs
Empty               -> Dead                 delete_group
any                 -> Dead                 close()

Rules
-----
1. Member ids come from the coordinator. A dynamic member of JoinGroup v4+ first gets
   MEMBER_ID_REQUIRED with a fresh id and is remembered as *pending*; it must join again with that
   id within its session timeout. A pending member holds up the end of a rebalance like a member.
2. A static member (group_instance_id set) skips that step. If its instance id is already in
   the group, the old member id is replaced by a new one and fenced: requests naming the old id
   with that instance id get FENCED_INSTANCE_ID, and its parked JoinGroup/SyncGroup are answered
   so. A Stable group whose static member comes back with unchanged protocols does not rebalance:
   the member gets the current generation and, on SyncGroup, its current assignment.
3. A rebalance that starts from Empty waits ``initial_rebalance_delay_ms`` so a fleet of consumers
   starting together lands in one generation; while new members keep arriving (first generation
   only) it waits one more delay, never beyond the rebalance timeout. Other rebalances end as soon
   as every member (and every pending member) has rejoined, or at the largest rebalance timeout
   of the members. Dynamic members that did not rejoin by then are removed; static members stay
   until their session expires.
4. Ending a rebalance: generation + 1; the leader stays if it rejoined, else any rejoined member
   becomes leader; the protocol is the one most members prefer among those every member
   supports; every parked JoinGroup is answered (only the leader gets the member list).
5. SyncGroup: member, then generation, then state. In CompletingRebalance followers wait for the
   leader; the leader's assignments are stored (members it left out get empty bytes) and handed
   to everyone waiting; the group becomes Stable. Members that have not sent SyncGroup within
   the rebalance timeout after the join phase are removed and the group rebalances.
6. Liveness: each member has a session timer, reset by its heartbeats, valid commits and
   completed joins/syncs. A member the coordinator itself keeps waiting (parked JoinGroup or
   SyncGroup) cannot heartbeat, so it does not expire then, except a brand-new member whose first
   rebalance takes longer than ``new_member_join_timeout_ms``. Expiry or LeaveGroup removes the
   member and rebalances the rest (or leaves the group Empty).
7. Every parked request is answered exactly once: a removed member's JoinGroup/SyncGroup gets
   UNKNOWN_MEMBER_ID, a superseded one REBALANCE_IN_PROGRESS, everything at close()
   COORDINATOR_NOT_AVAILABLE, everything of a dropped group (``drop_group``) NOT_COORDINATOR.

Persistence and moving coordinators
-----------------------------------
In a cluster each group has one coordinator agent at a time (rendezvous over the live agents,
ingest/cluster.py); the I/O shell (api_groups.py) answers NOT_COORDINATOR for the others. So
that a successor continues the group, the coordinator is built with a ``persist(group_id,
generation, blob_or_None)`` callback (None = the group is gone) and calls it, once per loop
iteration at most per group (changes in one request are coalesced), after every change a
successor needs: a rebalance starting (with the member that started it) or ending (new
generation, members, leader, protocol); SyncGroup storing the assignments (Stable); a member
renamed (static rejoin), removed or expired; the group becoming Empty; delete_group and a
forgotten never-used group (None). Members joining or rejoining while a rebalance is already
under way are saved when it ends, so a join storm costs one save, not one per member (a
successor that never saw such a member answers its rejoin UNKNOWN_MEMBER_ID and it joins
anew). Heartbeats, valid commits and timers change nothing persisted. The shell writes the
blobs in order per group, off the loop; a write refused because the store holds a newer
generation means another agent coordinated the group since: the shell calls ``drop_group``
and the next request reloads it.

8. Restoring (``restore``) rebuilds a group from its snapshot on the agent that now
   coordinates it, before that agent answers anything about the group. Every member gets a
   fresh session timer, so members that died with the old coordinator expire as usual.
   Empty and Stable come back as they were (generation, leader, protocol, assignments): a
   member of that generation heartbeats and commits on without a rebalance, an older
   generation is fenced (ILLEGAL_GENERATION). PreparingRebalance and CompletingRebalance come
   back as PreparingRebalance at the stored generation with every member (nobody is parked:
   the members learn from REBALANCE_IN_PROGRESS or a refused SyncGroup and rejoin; dynamic
   members that do not within the rebalance timeout are removed). Pending members (those
   told MEMBER_ID_REQUIRED) are not kept: their second JoinGroup gets UNKNOWN_MEMBER_ID and
   they start over.

Snapshot format (the blob ``persist`` gets; metadata stores it opaquely with its generation):
MessagePack (msgspec) of a map ``GroupSnapshot``::

    format          int      1 (readers refuse other values)
    group_id        str
    state           str      Empty | PreparingRebalance | CompletingRebalance | Stable
    generation_id   int      >= 0
    protocol_type   str|nil  e.g. "consumer"
    protocol_name   str|nil  the chosen assignor (nil unless a generation is under way/Stable)
    leader_id       str|nil  a member id of ``members``
    members         array of maps, oldest first:
        member_id, group_instance_id (str|nil), client_id, client_host (str),
        session_timeout_ms, rebalance_timeout_ms (int),
        protocols (array of [name str, metadata bin], the member's order of preference),
        assignment (bin; empty until SyncGroup)

Fields may only be added with defaults (readers ignore unknown keys); anything else takes a
new ``format`` number.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

import msgspec

log = logging.getLogger("ingest.kafka.groups")

# Kafka error codes (the protocol's error table).
from ingest.kafka.errors import (  # noqa: E402  (codes grouped here for readers)
    COORDINATOR_NOT_AVAILABLE,
    FENCED_INSTANCE_ID,
    GROUP_ID_NOT_FOUND,
    ILLEGAL_GENERATION,
    INCONSISTENT_GROUP_PROTOCOL,
    INVALID_GROUP_ID,
    INVALID_SESSION_TIMEOUT,
    MEMBER_ID_REQUIRED,
    NON_EMPTY_GROUP,
    NONE,
    NOT_COORDINATOR,
    REBALANCE_IN_PROGRESS,
    UNKNOWN_MEMBER_ID,
)

NO_GENERATION = -1
"""The generation id of a client outside any generation (simple offset commits)."""

NEW_MEMBER_JOIN_TIMEOUT_MS = 300_000
"""How long a brand-new member's first JoinGroup may stay parked (Kafka's value)."""


class GroupState(StrEnum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


_ALLOWED_FROM: dict[GroupState, frozenset[GroupState]] = {
    GroupState.PREPARING_REBALANCE: frozenset(
        {GroupState.EMPTY, GroupState.STABLE, GroupState.COMPLETING_REBALANCE}
    ),
    GroupState.COMPLETING_REBALANCE: frozenset({GroupState.PREPARING_REBALANCE}),
    GroupState.STABLE: frozenset({GroupState.COMPLETING_REBALANCE}),
    GroupState.EMPTY: frozenset({GroupState.PREPARING_REBALANCE}),
    GroupState.DEAD: frozenset(GroupState),
}


class JoinGroupMember(NamedTuple):
    """One entry of the member list the leader gets in its JoinGroup answer."""

    member_id: str
    group_instance_id: str | None
    metadata: bytes


class DescribedMember(NamedTuple):
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


class LeftMember(NamedTuple):
    """Per-member outcome of a (batch) LeaveGroup."""

    member_id: str
    group_instance_id: str | None
    error: int


class ListedGroup(NamedTuple):
    group_id: str
    protocol_type: str
    state: str


class JoinResult(msgspec.Struct, kw_only=True):
    """A JoinGroup answer. On error only ``error`` and ``member_id`` mean anything."""

    error: int
    generation_id: int = NO_GENERATION
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    skip_assignment: bool = False
    member_id: str = ""
    members: list[JoinGroupMember] = msgspec.field(default_factory=list)


class SyncResult(msgspec.Struct, kw_only=True):
    """A SyncGroup answer. On error the protocol fields are None and the assignment empty."""

    error: int
    protocol_type: str | None = None
    protocol_name: str | None = None
    assignment: bytes = b""


class GroupDescription(msgspec.Struct, kw_only=True):
    """A DescribeGroups entry. Protocol, metadata and assignments are filled in only when
    the group is Stable (as Kafka does); an unknown group is described as Dead, error NONE."""

    error: int
    group_id: str
    state: str
    protocol_type: str = ""
    protocol: str = ""
    members: list[DescribedMember] = msgspec.field(default_factory=list)


SNAPSHOT_FORMAT = 1
"""The ``format`` of the snapshots this module writes (and the only one it reads)."""

PersistFn = Callable[[str, int, "bytes | None"], None]
"""``persist(group_id, generation, blob)``: store a group's snapshot (None: delete it)."""


class SnapshotError(ValueError):
    """A stored group snapshot that cannot be restored (the message says why)."""


class MemberSnapshot(msgspec.Struct, kw_only=True, frozen=True):
    """One member in a :class:`GroupSnapshot` (format in the module docstring)."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: list[tuple[str, bytes]]
    assignment: bytes = b""


class GroupSnapshot(msgspec.Struct, kw_only=True, frozen=True):
    """What a successor needs of one group (format in the module docstring)."""

    format: int = SNAPSHOT_FORMAT
    group_id: str
    state: str
    generation_id: int
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str | None = None
    members: list[MemberSnapshot] = msgspec.field(default_factory=list)


_SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()
_SNAPSHOT_DECODER = msgspec.msgpack.Decoder(GroupSnapshot)
_RESTORABLE = frozenset(s.value for s in GroupState if s is not GroupState.DEAD)


def encode_snapshot(snapshot: GroupSnapshot) -> bytes:
    return _SNAPSHOT_ENCODER.encode(snapshot)


def decode_snapshot(blob: bytes, group_id: str) -> GroupSnapshot:
    """The snapshot in ``blob``, checked to be one of ``group_id`` this module can restore;
    SnapshotError otherwise."""
    try:
        snapshot = _SNAPSHOT_DECODER.decode(blob)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(
            f"the stored state of group {group_id!r} is unreadable: {exc}"
        ) from None
    problem = None
    member_ids = [m.member_id for m in snapshot.members]
    if snapshot.format != SNAPSHOT_FORMAT:
        problem = f"format {snapshot.format}, this agent reads format {SNAPSHOT_FORMAT} only"
    elif snapshot.group_id != group_id:
        problem = f"it is the state of group {snapshot.group_id!r}"
    elif snapshot.state not in _RESTORABLE:
        problem = f"unknown state {snapshot.state!r}"
    elif snapshot.generation_id < 0:
        problem = f"negative generation {snapshot.generation_id}"
    elif len(set(member_ids)) != len(member_ids) or not all(member_ids):
        problem = "empty or duplicate member ids"
    elif member_ids and snapshot.leader_id not in member_ids:
        problem = f"leader {snapshot.leader_id!r} is not a member"
    elif not member_ids and snapshot.state != GroupState.EMPTY.value:
        problem = f"no members in state {snapshot.state}"
    if problem is not None:
        raise SnapshotError(f"the stored state of group {group_id!r} cannot be restored: {problem}")
    return snapshot


@dataclass(eq=False, slots=True)
class _Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: list[tuple[str, bytes]]
    assignment: bytes = b""
    # Added during the rebalance under way; liveness is then bounded by the new-member timeout.
    is_new: bool = False
    # A parked JoinGroup / SyncGroup answer (None when the member is not waiting).
    join_future: asyncio.Future[JoinResult] | None = None
    sync_future: asyncio.Future[SyncResult] | None = None
    session_timer: asyncio.TimerHandle | None = None

    def metadata_for(self, protocol: str | None) -> bytes:
        for name, metadata in self.protocols:
            if name == protocol:
                return metadata
        return b""

    def vote(self, candidates: set[str]) -> str | None:
        """This member's most preferred protocol among the candidates."""
        for name, _ in self.protocols:
            if name in candidates:
                return name
        return None


@dataclass(eq=False, slots=True)
class _Group:
    """The data of one group and the pure rules over it (no futures, no timers started here)."""

    group_id: str
    state: GroupState = GroupState.EMPTY
    generation_id: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str | None = None
    # Insertion-ordered: "the first member" is the oldest one.
    members: dict[str, _Member] = field(default_factory=dict)
    static_members: dict[str, str] = field(default_factory=dict)  # instance id -> member id
    pending_members: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    pending_sync: set[str] = field(default_factory=set)
    join_timer: asyncio.TimerHandle | None = None
    sync_timer: asyncio.TimerHandle | None = None
    # True while the running join timer is the initial delay, which joins never cut short.
    initial_delay_active: bool = False
    new_member_added: bool = False
    # A snapshot of this incarnation was handed to persist (so forgetting it must delete it).
    saved: bool = False

    def transition(self, to: GroupState) -> None:
        if self.state not in _ALLOWED_FROM[to]:
            raise RuntimeError(f"group {self.group_id!r}: illegal transition {self.state} -> {to}")
        self.state = to

    def is_leader(self, member_id: str) -> bool:
        return self.leader_id == member_id

    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def all_joined(self) -> bool:
        return not self.pending_members and all(
            m.join_future is not None for m in self.members.values()
        )

    def candidate_protocols(self) -> set[str]:
        """Protocols every member supports."""
        found: set[str] | None = None
        for member in self.members.values():
            names = {name for name, _ in member.protocols}
            found = names if found is None else found & names
        return found or set()

    def supports(self, protocol_type: str, protocols: Sequence[tuple[str, bytes]]) -> bool:
        """May a member with these protocols join (or rejoin with them)?"""
        names = {name for name, _ in protocols}
        if not self.members:
            return bool(protocol_type) and bool(names)
        return protocol_type == self.protocol_type and bool(names & self.candidate_protocols())

    def select_protocol(self) -> str | None:
        """The candidate protocol most members prefer; a tie keeps the current protocol, else
        goes to the first member's vote, so the choice is stable across identical rejoins."""
        candidates = self.candidate_protocols()
        votes = Counter(
            vote for m in self.members.values() if (vote := m.vote(candidates)) is not None
        )
        if not votes:
            return None
        best = max(votes.values())
        if self.protocol_name is not None and votes.get(self.protocol_name) == best:
            return self.protocol_name
        return next(name for name, count in votes.items() if count == best)

    def is_fenced(self, member_id: str, group_instance_id: str | None) -> bool:
        """The instance id now belongs to another member id: this one was replaced."""
        if group_instance_id is None:
            return False
        current = self.static_members.get(group_instance_id)
        return current is not None and current != member_id

    def validate_member(self, member_id: str, group_instance_id: str | None) -> int:
        """NONE if the request comes from the current holder of (member id, instance id)."""
        if group_instance_id is not None:
            if group_instance_id not in self.static_members:
                return UNKNOWN_MEMBER_ID
            if self.is_fenced(member_id, group_instance_id):
                return FENCED_INSTANCE_ID
        if member_id not in self.members:
            return UNKNOWN_MEMBER_ID
        return NONE

    def add(self, member: _Member, protocol_type: str) -> None:
        if not self.members:
            self.protocol_type = protocol_type
        if self.leader_id is None:
            self.leader_id = member.member_id
        self.members[member.member_id] = member
        if member.group_instance_id is not None:
            self.static_members[member.group_instance_id] = member.member_id

    def remove(self, member_id: str) -> _Member | None:
        member = self.members.pop(member_id, None)
        if member is None:
            return None
        iid = member.group_instance_id
        if iid is not None and self.static_members.get(iid) == member_id:
            del self.static_members[iid]
        if self.leader_id == member_id:
            self.leader_id = next(iter(self.members), None)
        self.pending_sync.discard(member_id)
        return member

    def rename(self, old_id: str, new_id: str) -> _Member:
        """Give a static member a new member id, keeping everything else it had."""
        member = self.members.pop(old_id)
        member.member_id = new_id
        self.members[new_id] = member
        if member.group_instance_id is not None:
            self.static_members[member.group_instance_id] = new_id
        if self.leader_id == old_id:
            self.leader_id = new_id
        if old_id in self.pending_sync:
            self.pending_sync.discard(old_id)
            self.pending_sync.add(new_id)
        return member

    def elect_joined_leader(self) -> bool:
        """Keep the leader if it rejoined, else promote any rejoined member; False if none did."""
        if self.leader_id is None:
            return False
        leader = self.members[self.leader_id]
        if leader.join_future is not None:
            return True
        for member_id, member in self.members.items():
            if member.join_future is not None:
                self.leader_id = member_id
                return True
        return False

    def join_members(self) -> list[JoinGroupMember]:
        return [
            JoinGroupMember(m.member_id, m.group_instance_id, m.metadata_for(self.protocol_name))
            for m in self.members.values()
        ]

    def snapshot(self) -> GroupSnapshot:
        return GroupSnapshot(
            group_id=self.group_id,
            state=self.state.value,
            generation_id=self.generation_id,
            protocol_type=self.protocol_type,
            protocol_name=self.protocol_name,
            leader_id=self.leader_id if self.members else None,
            members=[
                MemberSnapshot(
                    member_id=m.member_id,
                    group_instance_id=m.group_instance_id,
                    client_id=m.client_id,
                    client_host=m.client_host,
                    session_timeout_ms=m.session_timeout_ms,
                    rebalance_timeout_ms=m.rebalance_timeout_ms,
                    protocols=list(m.protocols),
                    assignment=m.assignment,
                )
                for m in self.members.values()
            ],
        )

    def current_join_result(self, member_id: str, *, with_members: bool) -> JoinResult:
        return JoinResult(
            error=NONE,
            generation_id=self.generation_id,
            protocol_type=self.protocol_type,
            protocol_name=self.protocol_name,
            leader=self.leader_id or "",
            member_id=member_id,
            members=self.join_members() if with_members else [],
        )


class _JoinRequest(NamedTuple):
    """The parts of a JoinGroup request the join paths pass around."""

    future: asyncio.Future[JoinResult]
    instance_id: str | None
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    session_ms: int
    rebalance_ms: int
    client_id: str
    client_host: str
    supports_skip: bool


_T = TypeVar("_T")


def _answer(future: asyncio.Future[_T] | None, result: _T) -> None:
    # A handler whose client went away cancels its future; the answer then goes nowhere.
    if future is not None and not future.done():
        future.set_result(result)


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


class GroupCoordinator:
    """All classic consumer groups of this node. See the module docstring for the rules."""

    def __init__(
        self,
        initial_rebalance_delay_ms: int = 3000,
        min_session_timeout_ms: int = 6000,
        max_session_timeout_ms: int = 1_800_000,
        new_member_join_timeout_ms: int = NEW_MEMBER_JOIN_TIMEOUT_MS,
        persist: PersistFn | None = None,
    ) -> None:
        """Timeouts as Kafka's group.initial.rebalance.delay.ms, group.min.session.timeout.ms
        and group.max.session.timeout.ms. ``persist`` (also settable later as the attribute of
        that name) gets every group's snapshot after each change (module docstring); without
        it the groups live in memory only."""
        self._initial_delay_ms = initial_rebalance_delay_ms
        self._min_session_ms = min_session_timeout_ms
        self._max_session_ms = max_session_timeout_ms
        self._new_member_timeout_ms = new_member_join_timeout_ms
        self._groups: dict[str, _Group] = {}
        self._closed = False
        self.persist = persist
        self._dirty: set[str] = set()
        self._flush_scheduled = False

    # ---- requests ------------------------------------------------------------------------

    async def join_group(
        self,
        group_id: str,
        member_id: str,
        group_instance_id: str | None,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        client_id: str,
        client_host: str,
        require_known_member_id: bool,
        reason: str | None = None,
        supports_skip_assignment: bool = False,
    ) -> JoinResult:
        """JoinGroup. Returns at once for errors, MEMBER_ID_REQUIRED and rejoins that need no
        rebalance; otherwise when the rebalance ends (or the member is removed, or close()).

        ``require_known_member_id`` is True for JoinGroup v4+, ``supports_skip_assignment`` for
        v9+; ``rebalance_timeout_ms`` <= 0 (v0) means the session timeout. The leader's answer
        lists every member with its metadata for the chosen protocol.
        """
        future: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        self._join(
            future,
            group_id,
            member_id,
            group_instance_id,
            protocol_type,
            protocols,
            session_timeout_ms,
            rebalance_timeout_ms if rebalance_timeout_ms > 0 else session_timeout_ms,
            client_id,
            client_host,
            require_known_member_id,
            supports_skip_assignment,
            reason,
        )
        return await future

    async def sync_group(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
        protocol_type: str | None,
        protocol_name: str | None,
        assignments: list[tuple[str, bytes]],
    ) -> SyncResult:
        """SyncGroup. ``assignments`` matter only from the leader. A follower in
        CompletingRebalance waits for the leader's SyncGroup; otherwise returns at once.
        ``protocol_type``/``protocol_name`` (v5+, else None) must match the group's."""
        future: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()
        self._sync(
            future,
            group_id,
            generation_id,
            member_id,
            group_instance_id,
            protocol_type,
            protocol_name,
            assignments,
        )
        return await future

    def heartbeat(
        self, group_id: str, generation_id: int, member_id: str, group_instance_id: str | None
    ) -> int:
        """Heartbeat: keeps the member alive. REBALANCE_IN_PROGRESS tells it to rejoin."""
        if self._closed:
            return COORDINATOR_NOT_AVAILABLE
        if not group_id:
            return INVALID_GROUP_ID
        group = self._groups.get(group_id)
        if group is None:
            return UNKNOWN_MEMBER_ID
        if group.state is GroupState.DEAD:
            return COORDINATOR_NOT_AVAILABLE
        error = group.validate_member(member_id, group_instance_id)
        if error != NONE:
            return error
        if generation_id != group.generation_id:
            return ILLEGAL_GENERATION
        member = group.members[member_id]
        self._restart_session(group, member)
        if group.state is GroupState.PREPARING_REBALANCE:
            return REBALANCE_IN_PROGRESS
        return NONE

    def leave_group(
        self, group_id: str, members: list[tuple[str, str | None]]
    ) -> tuple[int, list[LeftMember]]:
        """LeaveGroup for (member id, instance id) pairs: the top-level error and one
        (member id, instance id, error) per pair. An empty member id with an instance id removes
        whoever holds that instance id (admin removal). For v0-2 the caller passes its single
        member and answers with that member's error when the top-level error is NONE."""
        if self._closed:
            return COORDINATOR_NOT_AVAILABLE, []
        if not group_id:
            return INVALID_GROUP_ID, []
        group = self._groups.get(group_id)
        if group is None:
            return NONE, [LeftMember(mid, iid, UNKNOWN_MEMBER_ID) for mid, iid in members]
        if group.state is GroupState.DEAD:
            return COORDINATOR_NOT_AVAILABLE, []
        results: list[LeftMember] = []
        for member_id, instance_id in members:
            results.append(
                LeftMember(member_id, instance_id, self._leave(group, member_id, instance_id))
            )
        self._forget_if_unused(group)
        return NONE, results

    def validate_offset_commit(
        self, group_id: str, generation_id: int, member_id: str, group_instance_id: str | None
    ) -> int:
        """May this OffsetCommit be stored? NONE, or the error for every partition.

        Generation -1 with no member id and no instance id is a commit by a client outside
        group management: allowed while the group has no members (unknown or Empty). Anything
        else must come from the current member in the current generation; a valid commit also
        counts as a heartbeat. In CompletingRebalance a valid member gets REBALANCE_IN_PROGRESS
        (it has its new generation but not yet its assignment).
        """
        if self._closed:
            return COORDINATOR_NOT_AVAILABLE
        group = self._groups.get(group_id)
        simple = generation_id < 0 and not member_id and group_instance_id is None
        if group is None:
            if simple:
                return NONE
            # A group we do not know cannot have this generation or this member.
            return ILLEGAL_GENERATION if generation_id >= 0 else UNKNOWN_MEMBER_ID
        if group.state is GroupState.DEAD:
            return COORDINATOR_NOT_AVAILABLE
        if simple:
            # Only members may commit while the group has members.
            return NONE if group.state is GroupState.EMPTY else UNKNOWN_MEMBER_ID
        error = group.validate_member(member_id, group_instance_id)
        if error != NONE:
            return error
        if generation_id != group.generation_id:
            return ILLEGAL_GENERATION
        if group.state is GroupState.COMPLETING_REBALANCE:
            return REBALANCE_IN_PROGRESS
        # Stable, or PreparingRebalance: the commit is fine; the member learns about the
        # rebalance from its next heartbeat.
        self._restart_session(group, group.members[member_id])
        return NONE

    def describe_group(self, group_id: str) -> GroupDescription:
        """DescribeGroups entry for one group (unknown groups read as Dead, error NONE)."""
        if self._closed:
            return GroupDescription(
                error=COORDINATOR_NOT_AVAILABLE, group_id=group_id, state=GroupState.DEAD.value
            )
        group = self._groups.get(group_id)
        if group is None:
            return GroupDescription(error=NONE, group_id=group_id, state=GroupState.DEAD.value)
        stable = group.state is GroupState.STABLE
        protocol = group.protocol_name if stable else None
        return GroupDescription(
            error=NONE,
            group_id=group_id,
            state=group.state.value,
            protocol_type=group.protocol_type or "",
            protocol=protocol or "",
            members=[
                DescribedMember(
                    m.member_id,
                    m.group_instance_id,
                    m.client_id,
                    m.client_host,
                    m.metadata_for(protocol) if stable else b"",
                    m.assignment if stable else b"",
                )
                for m in group.members.values()
            ],
        )

    def member_protocols(self, group_id: str) -> tuple[str, list[list[bytes]]]:
        """The group's protocol type and, per member, the metadata of every protocol it
        offered (whatever the state); ("", []) for a group without members."""
        group = self._groups.get(group_id)
        if group is None or not group.members:
            return "", []
        return group.protocol_type or "", [
            [metadata for _, metadata in m.protocols] for m in group.members.values()
        ]

    def list_groups(self, states_filter: list[str] | None = None) -> list[ListedGroup]:
        """(group id, protocol type, state) of every group, optionally only those in the given
        states (compared case-insensitively; an empty filter means all)."""
        wanted = {s.lower() for s in states_filter or ()}
        return [
            ListedGroup(g.group_id, g.protocol_type or "", g.state.value)
            for g in self._groups.values()
            if not wanted or g.state.value.lower() in wanted
        ]

    def delete_group(self, group_id: str) -> int:
        """Forget an Empty group. GROUP_ID_NOT_FOUND if this coordinator does not know it (a
        group known only by committed offsets is the caller's business), NON_EMPTY_GROUP while it
        has members or a rebalance is under way. Committed offsets are the caller's to delete."""
        if self._closed:
            return COORDINATOR_NOT_AVAILABLE
        group = self._groups.get(group_id)
        if group is None:
            return GROUP_ID_NOT_FOUND
        if group.state is not GroupState.EMPTY:
            return NON_EMPTY_GROUP
        self._kill(group)
        del self._groups[group_id]
        self._forgotten(group)
        return NONE

    def snapshot(self, group_id: str) -> bytes | None:
        """The group's snapshot as ``persist`` would get it (None for an unknown group)."""
        group = self._groups.get(group_id)
        return None if group is None else encode_snapshot(group.snapshot())

    def restore(self, group_id: str, blob: bytes) -> None:
        """Rebuild a group this coordinator does not hold from its snapshot (rule 8).
        SnapshotError if the blob cannot be restored, ValueError if the group is held."""
        if group_id in self._groups:
            raise ValueError(f"group {group_id!r} is already held; drop_group it first")
        snapshot = decode_snapshot(blob, group_id)
        self._restore(snapshot)

    def restore_empty(self, group_id: str, generation_id: int) -> None:
        """Start a group Empty at ``generation_id`` (its stored snapshot was unreadable: keep
        fencing the old generations and let the next save replace the bad blob)."""
        if group_id in self._groups:
            raise ValueError(f"group {group_id!r} is already held; drop_group it first")
        self._restore(
            GroupSnapshot(
                group_id=group_id, state=GroupState.EMPTY.value, generation_id=generation_id
            )
        )
        self._changed(self._groups[group_id])

    def drop_group(self, group_id: str, error: int = NOT_COORDINATOR) -> bool:
        """Forget a group without persisting anything (another agent coordinates it now):
        its timers stop, its parked JoinGroup/SyncGroup are answered ``error``. False if the
        group was not held."""
        group = self._groups.pop(group_id, None)
        if group is None:
            return False
        self._dirty.discard(group_id)
        self._kill(group, error)
        log.info("group %s: dropped (generation %d)", group_id, group.generation_id)
        return True

    def group_ids(self) -> list[str]:
        """The ids of every group held in memory."""
        return list(self._groups)

    def known(self, group_id: str) -> bool:
        """Does the coordinator hold state for this group (any state but Dead)?"""
        return group_id in self._groups

    def close(self) -> None:
        """Stop: cancel every timer, answer every parked JoinGroup/SyncGroup with
        COORDINATOR_NOT_AVAILABLE (clients look for the coordinator again) and refuse further
        requests the same way."""
        self._closed = True
        for group in self._groups.values():
            self._kill(group)
        self._groups.clear()

    # ---- JoinGroup -----------------------------------------------------------------------

    def _join(
        self,
        future: asyncio.Future[JoinResult],
        group_id: str,
        member_id: str,
        instance_id: str | None,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
        session_ms: int,
        rebalance_ms: int,
        client_id: str,
        client_host: str,
        require_known_member_id: bool,
        supports_skip: bool,
        reason: str | None,
    ) -> None:
        def fail(error: int) -> None:
            _answer(future, JoinResult(error=error, member_id=member_id))

        if self._closed:
            return fail(COORDINATOR_NOT_AVAILABLE)
        if not group_id:
            return fail(INVALID_GROUP_ID)
        if not self._min_session_ms <= session_ms <= self._max_session_ms:
            return fail(INVALID_SESSION_TIMEOUT)
        group = self._groups.get(group_id)
        if group is None:
            if member_id:
                # It names a member of a group that does not exist: it must start over.
                return fail(UNKNOWN_MEMBER_ID)
            group = self._groups[group_id] = _Group(group_id)
        if group.state is GroupState.DEAD:
            fail(COORDINATOR_NOT_AVAILABLE)
        elif not group.supports(protocol_type, protocols):
            fail(INCONSISTENT_GROUP_PROTOCOL)
        else:
            request = _JoinRequest(
                future,
                instance_id,
                protocol_type,
                list(protocols),
                session_ms,
                rebalance_ms,
                client_id,
                client_host,
                supports_skip,
            )
            if reason:
                log.debug("group %s: join from %r (%s): %s", group_id, member_id, client_id, reason)
            if not member_id:
                self._join_new_member(group, request, require_known_member_id)
            else:
                self._join_known_member(group, member_id, request)
            self._maybe_complete_join(group)
        self._forget_if_unused(group)

    def _join_new_member(self, group: _Group, req: _JoinRequest, require_known: bool) -> None:
        # Static members' ids start with their instance id, as in Kafka, for readable logs.
        new_id = f"{req.instance_id or req.client_id}-{uuid.uuid4()}"
        if req.instance_id is not None:
            old_id = group.static_members.get(req.instance_id)
            if old_id is not None:
                self._replace_static_member(group, old_id, new_id, req)
            else:
                self._add_member_and_rebalance(group, new_id, req)
        elif require_known:
            group.pending_members[new_id] = self._later(
                req.session_ms, self._on_pending_member_expired, group, new_id
            )
            _answer(req.future, JoinResult(error=MEMBER_ID_REQUIRED, member_id=new_id))
        else:
            self._add_member_and_rebalance(group, new_id, req)

    def _join_known_member(self, group: _Group, member_id: str, req: _JoinRequest) -> None:
        if req.instance_id is None and member_id in group.pending_members:
            # The second step of rule 1: the id we handed out comes back.
            _cancel(group.pending_members.pop(member_id))
            self._add_member_and_rebalance(group, member_id, req)
            return
        error = group.validate_member(member_id, req.instance_id)
        if error != NONE:
            _answer(req.future, JoinResult(error=error, member_id=member_id))
            return
        member = group.members[member_id]
        same = member.protocols == req.protocols
        match group.state:
            case GroupState.PREPARING_REBALANCE:
                self._update_member(member, req)
            case GroupState.COMPLETING_REBALANCE if same:
                # Probably a retry of a lost JoinGroup answer: repeat it.
                _answer(
                    req.future,
                    group.current_join_result(member_id, with_members=group.is_leader(member_id)),
                )
            case GroupState.STABLE if same and not group.is_leader(member_id):
                # A follower with nothing new: let it SyncGroup for its current assignment.
                _answer(req.future, group.current_join_result(member_id, with_members=False))
            case GroupState.COMPLETING_REBALANCE | GroupState.STABLE:
                # New metadata, or the leader asking for a new assignment (e.g. topics changed).
                self._update_member(member, req)
                self._prepare_rebalance(group)
            case _:
                # Empty or Dead with this member in it cannot happen; make it start over.
                _answer(req.future, JoinResult(error=UNKNOWN_MEMBER_ID, member_id=member_id))

    def _replace_static_member(
        self, group: _Group, old_id: str, new_id: str, req: _JoinRequest
    ) -> None:
        member = group.members[old_id]
        leader_before = group.leader_id or ""
        old_protocols = member.protocols
        # Rule 2: the old incarnation is fenced, and so are its parked requests.
        _answer(member.join_future, JoinResult(error=FENCED_INSTANCE_ID, member_id=old_id))
        _answer(member.sync_future, SyncResult(error=FENCED_INSTANCE_ID))
        member.join_future = None
        member.sync_future = None
        group.rename(old_id, new_id)
        self._changed(group)
        member.client_id, member.client_host = req.client_id, req.client_host
        self._update_member(member, req)
        self._restart_session(group, member)
        log.info(
            "group %s: static member %s rejoined as %s", group.group_id, req.instance_id, new_id
        )
        match group.state:
            case GroupState.STABLE:
                if (
                    req.protocols == old_protocols
                    and group.select_protocol() == group.protocol_name
                ):
                    # No rebalance. A v9+ leader is told it leads but must skip the assignment;
                    # an older one is given the previous leader id so that it does not recompute
                    # an assignment a Stable group would never hand out.
                    skip = req.supports_skip and group.is_leader(new_id)
                    result = group.current_join_result(new_id, with_members=skip)
                    result.leader = new_id if skip else leader_before
                    result.skip_assignment = skip
                    member.join_future = None
                    _answer(req.future, result)
                else:
                    self._prepare_rebalance(group)
            case GroupState.COMPLETING_REBALANCE:
                # The leader may be assigning to the old member id: redo the rebalance.
                self._prepare_rebalance(group)
            case _:
                pass  # PreparingRebalance: it is simply one more member that has rejoined.

    def _add_member_and_rebalance(self, group: _Group, member_id: str, req: _JoinRequest) -> None:
        member = _Member(
            member_id=member_id,
            group_instance_id=req.instance_id,
            client_id=req.client_id,
            client_host=req.client_host,
            session_timeout_ms=req.session_ms,
            rebalance_timeout_ms=req.rebalance_ms,
            protocols=req.protocols,
            is_new=True,
            join_future=req.future,
        )
        if group.state is GroupState.PREPARING_REBALANCE and group.generation_id == 0:
            group.new_member_added = True  # rule 3: the initial delay gets extended
        group.add(member, req.protocol_type)
        # A parked new member cannot heartbeat and we cannot see it disconnect; bound its wait.
        self._restart_session(group, member, self._new_member_timeout_ms)
        log.info("group %s: member %s added", group.group_id, member_id)
        self._maybe_prepare_rebalance(group)

    def _update_member(self, member: _Member, req: _JoinRequest) -> None:
        member.protocols = req.protocols
        member.session_timeout_ms = req.session_ms
        member.rebalance_timeout_ms = req.rebalance_ms
        if member.join_future is not req.future:
            _answer(
                member.join_future,
                JoinResult(error=REBALANCE_IN_PROGRESS, member_id=member.member_id),
            )
        member.join_future = req.future

    # ---- SyncGroup -----------------------------------------------------------------------

    def _sync(
        self,
        future: asyncio.Future[SyncResult],
        group_id: str,
        generation_id: int,
        member_id: str,
        instance_id: str | None,
        protocol_type: str | None,
        protocol_name: str | None,
        assignments: list[tuple[str, bytes]],
    ) -> None:
        def fail(error: int) -> None:
            _answer(future, SyncResult(error=error))

        if self._closed:
            return fail(COORDINATOR_NOT_AVAILABLE)
        if not group_id:
            return fail(INVALID_GROUP_ID)
        group = self._groups.get(group_id)
        if group is None:
            return fail(UNKNOWN_MEMBER_ID)
        if group.state is GroupState.DEAD:
            return fail(COORDINATOR_NOT_AVAILABLE)
        error = group.validate_member(member_id, instance_id)
        if error != NONE:
            return fail(error)
        if generation_id != group.generation_id:
            return fail(ILLEGAL_GENERATION)
        if protocol_type is not None and protocol_type != group.protocol_type:
            return fail(INCONSISTENT_GROUP_PROTOCOL)
        if protocol_name is not None and protocol_name != group.protocol_name:
            return fail(INCONSISTENT_GROUP_PROTOCOL)
        member = group.members[member_id]
        match group.state:
            case GroupState.PREPARING_REBALANCE:
                fail(REBALANCE_IN_PROGRESS)
            case GroupState.COMPLETING_REBALANCE:
                if member.sync_future is not None and member.sync_future is not future:
                    _answer(member.sync_future, SyncResult(error=REBALANCE_IN_PROGRESS))
                member.sync_future = future
                group.pending_sync.discard(member_id)
                if group.is_leader(member_id):
                    self._complete_sync(group, dict(assignments))
            case GroupState.STABLE:
                group.pending_sync.discard(member_id)
                _answer(future, self._sync_result(group, member))
                self._restart_session(group, member)
            case _:
                fail(UNKNOWN_MEMBER_ID)

    def _complete_sync(self, group: _Group, assignments: dict[str, bytes]) -> None:
        # Ids the leader invented are ignored; members it left out get nothing to consume.
        for member in group.members.values():
            member.assignment = assignments.get(member.member_id, b"")
        group.transition(GroupState.STABLE)
        self._changed(group)
        for member in group.members.values():
            if member.sync_future is not None:
                _answer(member.sync_future, self._sync_result(group, member))
                member.sync_future = None
                self._restart_session(group, member)

    @staticmethod
    def _sync_result(group: _Group, member: _Member) -> SyncResult:
        return SyncResult(
            error=NONE,
            protocol_type=group.protocol_type,
            protocol_name=group.protocol_name,
            assignment=member.assignment,
        )

    # ---- LeaveGroup ----------------------------------------------------------------------

    def _leave(self, group: _Group, member_id: str, instance_id: str | None) -> int:
        if not member_id:
            current = group.static_members.get(instance_id) if instance_id is not None else None
            if current is None:
                return UNKNOWN_MEMBER_ID
            member_id = current
        elif member_id in group.pending_members:
            _cancel(group.pending_members.pop(member_id))
            self._maybe_complete_join(group)
            return NONE
        else:
            error = group.validate_member(member_id, instance_id)
            if error != NONE:
                return error
        log.info("group %s: member %s left", group.group_id, member_id)
        self._remove_member_and_update_group(group, group.members[member_id])
        return NONE

    # ---- the rebalance -------------------------------------------------------------------

    def _maybe_prepare_rebalance(self, group: _Group) -> None:
        if group.state in _ALLOWED_FROM[GroupState.PREPARING_REBALANCE]:
            self._prepare_rebalance(group)

    def _prepare_rebalance(self, group: _Group) -> None:
        if group.state is GroupState.COMPLETING_REBALANCE:
            # The assignment being computed is void: everyone waiting in SyncGroup rejoins.
            for member in group.members.values():
                member.assignment = b""
                _answer(member.sync_future, SyncResult(error=REBALANCE_IN_PROGRESS))
                member.sync_future = None
        _cancel(group.sync_timer)
        group.sync_timer = None
        group.pending_sync.clear()
        _cancel(group.join_timer)
        if group.state is GroupState.EMPTY:
            delay = self._initial_delay_ms
            remaining = max(group.rebalance_timeout_ms() - delay, 0)
            group.initial_delay_active = True
            group.new_member_added = False
            group.join_timer = self._later(delay, self._on_initial_delay_over, group, remaining)
        else:
            group.initial_delay_active = False
            group.join_timer = self._later(
                group.rebalance_timeout_ms(), self._on_rebalance_timeout, group
            )
        group.transition(GroupState.PREPARING_REBALANCE)
        self._changed(group)
        log.info("group %s: rebalancing (generation %d)", group.group_id, group.generation_id)
        self._maybe_complete_join(group)

    def _maybe_complete_join(self, group: _Group) -> None:
        if (
            group.state is GroupState.PREPARING_REBALANCE
            and not group.initial_delay_active
            and group.all_joined()
        ):
            self._complete_join(group)

    def _on_initial_delay_over(self, group: _Group, remaining_ms: int) -> None:
        if not self._live(group) or group.state is not GroupState.PREPARING_REBALANCE:
            return
        group.join_timer = None
        if group.new_member_added and remaining_ms > 0:
            group.new_member_added = False
            delay = min(self._initial_delay_ms, remaining_ms)
            group.join_timer = self._later(
                delay, self._on_initial_delay_over, group, remaining_ms - delay
            )
            return
        group.initial_delay_active = False
        self._complete_join(group)

    def _on_rebalance_timeout(self, group: _Group) -> None:
        if not self._live(group) or group.state is not GroupState.PREPARING_REBALANCE:
            return
        group.join_timer = None
        self._complete_join(group)

    def _complete_join(self, group: _Group) -> None:
        _cancel(group.join_timer)
        group.join_timer = None
        group.initial_delay_active = False
        group.new_member_added = False
        for member in list(group.members.values()):
            if member.join_future is None and member.group_instance_id is None:
                log.info(
                    "group %s: member %s did not rejoin in time", group.group_id, member.member_id
                )
                self._evict(group, member)
        if group.members and not group.elect_joined_leader():
            # Only static members remain and none rejoined: wait another round for them (their
            # session timeout removes them if they are gone for good).
            group.join_timer = self._later(
                group.rebalance_timeout_ms(), self._on_rebalance_timeout, group
            )
            return
        group.generation_id += 1
        self._changed(group)
        if not group.members:
            group.protocol_name = None
            group.transition(GroupState.EMPTY)
            log.info("group %s: empty (generation %d)", group.group_id, group.generation_id)
            return
        group.protocol_name = group.select_protocol()
        group.transition(GroupState.COMPLETING_REBALANCE)
        log.info(
            "group %s: generation %d, leader %s, %d members, protocol %s",
            group.group_id,
            group.generation_id,
            group.leader_id,
            len(group.members),
            group.protocol_name,
        )
        for member in group.members.values():
            leader = group.is_leader(member.member_id)
            _answer(
                member.join_future, group.current_join_result(member.member_id, with_members=leader)
            )
            member.join_future = None
            member.is_new = False
            self._restart_session(group, member)
        group.pending_sync = set(group.members)
        group.sync_timer = self._later(group.rebalance_timeout_ms(), self._on_sync_timeout, group)

    def _on_sync_timeout(self, group: _Group) -> None:
        if not self._live(group):
            return
        group.sync_timer = None
        if group.state not in (GroupState.COMPLETING_REBALANCE, GroupState.STABLE):
            return
        if not group.pending_sync:
            return
        for member_id in list(group.pending_sync):
            member = group.members.get(member_id)
            if member is not None:
                log.info("group %s: member %s never synced", group.group_id, member_id)
                self._evict(group, member)
        self._prepare_rebalance(group)

    # ---- liveness ------------------------------------------------------------------------

    def _restart_session(
        self, group: _Group, member: _Member, timeout_ms: int | None = None
    ) -> None:
        _cancel(member.session_timer)
        member.session_timer = self._later(
            member.session_timeout_ms if timeout_ms is None else timeout_ms,
            self._on_session_expired,
            group,
            member,
        )

    def _on_session_expired(self, group: _Group, member: _Member) -> None:
        if not self._live(group) or group.members.get(member.member_id) is not member:
            return
        member.session_timer = None
        if not member.is_new and (member.join_future is not None or member.sync_future is not None):
            # Rule 6: it is waiting on us, not silent; look again one session later.
            self._restart_session(group, member)
            return
        log.info("group %s: member %s session expired", group.group_id, member.member_id)
        self._remove_member_and_update_group(group, member)

    def _on_pending_member_expired(self, group: _Group, member_id: str) -> None:
        if not self._live(group) or group.pending_members.pop(member_id, None) is None:
            return
        self._maybe_complete_join(group)
        self._forget_if_unused(group)

    def _remove_member_and_update_group(self, group: _Group, member: _Member) -> None:
        self._evict(group, member)
        match group.state:
            case GroupState.STABLE | GroupState.COMPLETING_REBALANCE:
                self._prepare_rebalance(group)
            case GroupState.PREPARING_REBALANCE:
                self._maybe_complete_join(group)
            case _:
                pass

    def _evict(self, group: _Group, member: _Member) -> None:
        """Remove a member; a parked request of its own is answered UNKNOWN_MEMBER_ID so the
        client (if still there) starts over with a fresh join."""
        _answer(member.join_future, JoinResult(error=UNKNOWN_MEMBER_ID))
        _answer(member.sync_future, SyncResult(error=UNKNOWN_MEMBER_ID))
        member.join_future = None
        member.sync_future = None
        _cancel(member.session_timer)
        member.session_timer = None
        group.remove(member.member_id)
        self._changed(group)

    # ---- housekeeping --------------------------------------------------------------------

    def _kill(self, group: _Group, error: int = COORDINATOR_NOT_AVAILABLE) -> None:
        """Dead: no timer left, every parked request answered ``error``."""
        _cancel(group.join_timer)
        _cancel(group.sync_timer)
        group.join_timer = group.sync_timer = None
        for timer in group.pending_members.values():
            _cancel(timer)
        group.pending_members.clear()
        for member in group.members.values():
            _cancel(member.session_timer)
            member.session_timer = None
            _answer(member.join_future, JoinResult(error=error, member_id=member.member_id))
            _answer(member.sync_future, SyncResult(error=error))
            member.join_future = member.sync_future = None
        group.transition(GroupState.DEAD)

    def _forget_if_unused(self, group: _Group) -> None:
        # A group that never had a member (a failed first join, an expired MEMBER_ID_REQUIRED)
        # would otherwise stay listed forever.
        if (
            group.state is GroupState.EMPTY
            and group.generation_id == 0
            and not group.members
            and not group.pending_members
            and self._groups.get(group.group_id) is group
        ):
            group.transition(GroupState.DEAD)
            del self._groups[group.group_id]
            self._forgotten(group)

    # ---- persistence ---------------------------------------------------------------------

    def _restore(self, snapshot: GroupSnapshot) -> None:
        group = _Group(
            snapshot.group_id,
            generation_id=snapshot.generation_id,
            protocol_type=snapshot.protocol_type,
            protocol_name=snapshot.protocol_name,
            leader_id=snapshot.leader_id,
            saved=True,
        )
        for m in snapshot.members:
            member = _Member(
                member_id=m.member_id,
                group_instance_id=m.group_instance_id,
                client_id=m.client_id,
                client_host=m.client_host,
                session_timeout_ms=m.session_timeout_ms,
                rebalance_timeout_ms=m.rebalance_timeout_ms,
                protocols=list(m.protocols),
                assignment=m.assignment,
            )
            group.members[member.member_id] = member
            if member.group_instance_id is not None:
                group.static_members[member.group_instance_id] = member.member_id
        self._groups[group.group_id] = group
        for member in group.members.values():
            self._restart_session(group, member)
        state = GroupState(snapshot.state)
        if state in (GroupState.EMPTY, GroupState.STABLE):
            group.state = state
        else:
            # Mid-rebalance: nobody is parked here, so run the rebalance again (rule 8).
            group.state = GroupState.STABLE
            self._prepare_rebalance(group)
        log.info(
            "group %s: restored %s (generation %d, %d members)",
            group.group_id,
            snapshot.state,
            group.generation_id,
            len(group.members),
        )

    def _changed(self, group: _Group) -> None:
        """Something a successor needs changed: persist the group at the end of this loop
        iteration (coalescing every change the current request or timer makes)."""
        if self.persist is None or self._closed:
            return
        self._dirty.add(group.group_id)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        if self.persist is None or self._closed:
            return
        for group_id in sorted(dirty):
            group = self._groups.get(group_id)
            if group is None or group.state is GroupState.DEAD:
                continue  # dropped or deleted meanwhile (a deletion persisted None itself)
            group.saved = True
            self.persist(group_id, group.generation_id, encode_snapshot(group.snapshot()))

    def _forgotten(self, group: _Group) -> None:
        """The group is gone from this coordinator for good: delete its snapshot."""
        self._dirty.discard(group.group_id)
        if self.persist is not None and group.saved and not self._closed:
            self.persist(group.group_id, group.generation_id, None)

    def _live(self, group: _Group) -> bool:
        # Timers are cancelled when a group dies; this guards against a callback already queued.
        return not self._closed and self._groups.get(group.group_id) is group

    @staticmethod
    def _later(delay_ms: int, callback: Callable[..., None], *args: Any) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(max(delay_ms, 0) / 1000, callback, *args)
