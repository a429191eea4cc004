"""Agents of a cluster: this agent's registration and lease, and its view of the live agents.

Every agent (one ingest process and its pipeline) registers in the shared metadata store at
start and renews a lease by heartbeat; the store's rows are the cluster. There is no leader
election and nothing is rebalanced: which agent Kafka clients are told leads a partition, and
which agent coordinates a consumer group, is a pure function of the live set, computed the
same way on every agent (rendezvous hashing below). Any agent still serves produce and fetch
for any partition; leadership only spreads the clients' load.

Registration and lease (:class:`Membership`), every metadata call off the loop through
AsyncMetadata:

1. At start the agent registers (`register_agent`): its id (`agent_id`, by default its Kafka
   advertised host:port), Kafka and gRPC addresses and zone. An id keeps its node id (the Kafka
   broker id) forever; a new id gets the smallest free one. With the SQLite default the store
   belongs to this one stack, so rows of other ids (this stack before its address changed) are
   forgotten first and the agent is node 0, as a single node always was.
2. Every `agent_heartbeat_ms` a heartbeat renews the lease (`agent_lease_ms`) and returns
   every registered agent; the view is refreshed from that list only (no other polling). At
   most one heartbeat is in flight; the next is due one interval after the previous was due.
3. A failed heartbeat (metadata unreachable) is logged once per outage; the agent keeps
   serving with its last view and retries every interval. If no heartbeat succeeded for a
   whole lease, the lease has lapsed (the others dropped this agent), so when metadata answers
   again the agent registers anew (a new incarnation) instead of renewing. A heartbeat that
   finds the row gone (`AgentUnknownError`: an operator forgot the agent) registers again.
   After such an outage (a heartbeat of this agent failed, or one succeeded more than two
   intervals after the previous success: a call can wait out a whole outage) the others'
   leases have likely lapsed too, only because nobody could heartbeat: for one lease period
   after that heartbeat, an agent that was live in the last view stays
   live although its row says its lease lapsed (unless the row shows a clean stop:
   `lease_until_ms` short of `heartbeat_at_ms` plus this agent's lease), so that partition
   leadership does not move back and forth while every agent comes back. An agent that
   really died during the outage is dropped one lease after the store came back.
4. A clean stop deregisters (the lease ends now; the row stays, shown as stopped), so the
   others drop this agent at their next heartbeat instead of after the lease.
5. A heartbeat that shows this agent's row registered by another incarnation (two agents
   given the same id, which would share a node id) logs an error once per intruder.

Rendezvous (highest random weight) hashing: for a key (a partition: topic id and index; a
group: its id) every candidate agent gets the weight `xxh3_64(key, seed=xxh3_64(agent_id))`
and the heaviest wins (ties, which need a 64-bit collision, go to the lower node id). Adding
or removing an agent moves only the keys that agent wins or won; the spread over n agents is
even in expectation. Partition keys are `topic_id` (8 bytes, big-endian) + partition (4 bytes);
group keys are the group id's UTF-8 bytes.

Zones: an agent has a zone (`agent_zone`); a Kafka client announces its own with the token
`streamhouse_az=<zone>` in its `client.id`, at the start or after any character other than a
letter, digit or `_` (e.g. `client.id=billing,streamhouse_az=eu-1a`); the zone is the run of
letters, digits and `. _ -` after the `=` (at most 64).
Partition leaders for that client are then chosen only among live agents of that zone when any
is alive (among all live agents otherwise). Group coordinators ignore zones: a group has one
coordinator for all its members.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
from collections.abc import Callable, Collection, Sequence

import xxhash

from metadata import AgentInfo, AgentUnknownError
from metadata.async_store import AsyncMetadata
from streamhouse.config import Settings
from streamhouse.process import describe_failure

log = logging.getLogger("ingest.cluster")

__all__ = [
    "ZONE_TOKEN",
    "ClusterView",
    "Membership",
    "client_zone",
    "group_key",
    "partition_key",
    "rendezvous",
]

#: The client.id token a Kafka client announces its zone with: `streamhouse_az=<zone>`.
ZONE_TOKEN = "streamhouse_az"
_ZONE_IN_CLIENT_ID = re.compile(rf"(?:^|[^A-Za-z0-9_]){ZONE_TOKEN}=([A-Za-z0-9._\-]{{1,64}})")

# Leader lists kept per (topic id, partition count, zone); cleared when the live set changes.
_LEADER_CACHE_ENTRIES = 4096

_PARTITION_KEY = struct.Struct(">qi")


def client_zone(client_id: str | None) -> str:
    """The zone a Kafka client announces in its client.id (`streamhouse_az=<zone>`), or ""."""
    if not client_id or ZONE_TOKEN not in client_id:
        return ""
    found = _ZONE_IN_CLIENT_ID.search(client_id)
    return found.group(1) if found else ""


def partition_key(topic_id: int, partition: int) -> bytes:
    """The rendezvous key of a partition."""
    return _PARTITION_KEY.pack(topic_id, partition)


def group_key(group_id: str) -> bytes:
    """The rendezvous key of a consumer group."""
    return group_id.encode("utf-8", "surrogatepass")


def _seed(agent: AgentInfo) -> int:
    return xxhash.xxh3_64_intdigest(agent.agent_id.encode())


def rendezvous(candidates: Sequence[AgentInfo], key: bytes) -> AgentInfo:
    """The agent with the highest weight for `key` among `candidates` (not empty)."""
    if not candidates:
        raise ValueError("rendezvous over no agents")
    return _pick([(_seed(a), a) for a in candidates], key)


def _pick(seeded: Sequence[tuple[int, AgentInfo]], key: bytes) -> AgentInfo:
    best = seeded[0][1]
    if len(seeded) == 1:
        return best
    best_weight = -1
    for seed, agent in seeded:
        weight = xxhash.xxh3_64_intdigest(key, seed=seed)
        if weight > best_weight or (weight == best_weight and agent.node_id < best.node_id):
            best, best_weight = agent, weight
    return best


class ClusterView:
    """This agent's view of the live agents, refreshed from its heartbeats (module docstring).

    Listeners are called on the event loop after the live set changed (agents joined, left or
    expired, or one changed its addresses or zone)."""

    def __init__(self, self_agent: AgentInfo) -> None:
        self.self_agent = self_agent
        self._agents: list[AgentInfo] = [self_agent]
        self._live: list[AgentInfo] = []
        self._seeded: list[tuple[int, AgentInfo]] = []
        self._by_zone: dict[str, list[tuple[int, AgentInfo]]] = {}
        self._leaders: dict[tuple[int, int, str], list[AgentInfo]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._set_live([self_agent])

    @staticmethod
    def single(agent: AgentInfo) -> ClusterView:
        """A view of one agent (never refreshed): every key maps to it."""
        return ClusterView(agent)

    # -- queries -------------------------------------------------------------------------

    def live(self) -> list[AgentInfo]:
        """The live agents by node id; always includes this agent while it serves."""
        return list(self._live)

    def agents(self) -> list[AgentInfo]:
        """Every registered agent of the last refresh (live or not), by node id."""
        return list(self._agents)

    @property
    def controller_id(self) -> int:
        """The node id Kafka clients are told is the controller: the lowest live one."""
        return self._live[0].node_id

    def coordinator_for(self, group_id: str) -> AgentInfo:
        """The coordinator of a consumer group: rendezvous over every live agent (no zones)."""
        return _pick(self._seeded, group_key(group_id))

    def is_coordinator(self, group_id: str) -> bool:
        return self.coordinator_for(group_id).agent_id == self.self_agent.agent_id

    def leader_for(self, topic_id: int, partition: int, zone: str = "") -> AgentInfo:
        """The agent clients (of `zone`, if given) are told leads a partition."""
        return _pick(self._candidates(zone), partition_key(topic_id, partition))

    def leaders(self, topic_id: int, partitions: int, zone: str = "") -> list[AgentInfo]:
        """`leader_for` of partitions 0..partitions-1, cached until the live set changes."""
        cache_key = (topic_id, partitions, zone if zone in self._by_zone else "")
        found = self._leaders.get(cache_key)
        if found is None:
            candidates = self._candidates(zone)
            if len(candidates) == 1:
                found = [candidates[0][1]] * partitions
            else:
                found = [_pick(candidates, partition_key(topic_id, p)) for p in range(partitions)]
            if len(self._leaders) >= _LEADER_CACHE_ENTRIES:
                self._leaders.clear()
            self._leaders[cache_key] = found
        return found

    def _candidates(self, zone: str) -> list[tuple[int, AgentInfo]]:
        if zone:
            in_zone = self._by_zone.get(zone)
            if in_zone:
                return in_zone
        return self._seeded

    # -- updates -------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Calls `callback()` on the event loop after every change of the live set."""
        self._listeners.append(callback)

    def update(
        self,
        agents: Sequence[AgentInfo],
        self_agent: AgentInfo | None = None,
        keep: Collection[str] = (),
    ) -> bool:
        """Takes a heartbeat's list of every registered agent; returns whether the live set
        changed (then the listeners have been called). `self_agent` replaces this agent's row
        (after it registered again); otherwise its row is taken from `agents` when there.
        Agents named in `keep` that are live now stay live while their row is listed, even
        if it says their lease lapsed (see rule 3 of the module docstring)."""
        if self_agent is not None:
            self.self_agent = self_agent
        me = self.self_agent.agent_id
        for agent in agents:
            if agent.agent_id == me:
                self.self_agent = agent
        self._agents = sorted(agents, key=lambda a: a.node_id)
        held = {a.agent_id for a in self._live} & set(keep)
        live = [a for a in self._agents if (a.alive or a.agent_id in held) and a.agent_id != me]
        live.append(self.self_agent)  # serving, whatever the store last said
        live.sort(key=lambda a: a.node_id)
        if _identity(live) == _identity(self._live):
            self._live = live  # newer rows (heartbeat times), same membership
            return False
        before = {a.agent_id for a in self._live}
        after = {a.agent_id for a in live}
        self._set_live(live)
        log.info(
            "live agents now %s (joined: %s; left: %s)",
            ", ".join(f"{a.agent_id}=node {a.node_id}" for a in live),
            ", ".join(sorted(after - before)) or "-",
            ", ".join(sorted(before - after)) or "-",
        )
        for callback in list(self._listeners):
            try:
                callback()
            except Exception as exc:  # one listener's bug must not stop the others
                log.error("cluster listener %r failed: %s", callback, describe_failure(exc))
        return True

    def _set_live(self, live: list[AgentInfo]) -> None:
        self._live = live
        self._seeded = [(_seed(a), a) for a in live]
        by_zone: dict[str, list[tuple[int, AgentInfo]]] = {}
        for seeded in self._seeded:
            if seeded[1].zone:
                by_zone.setdefault(seeded[1].zone, []).append(seeded)
        self._by_zone = by_zone
        self._leaders = {}


def _identity(agents: Sequence[AgentInfo]) -> list[tuple[str, int, str, int, str, str]]:
    """What makes two live sets the same for clients: ids, node ids, addresses, zones."""
    return [
        (a.agent_id, a.node_id, a.kafka_host, a.kafka_port, a.grpc_address, a.zone) for a in agents
    ]


class Membership:
    """This agent's registration, lease heartbeat and deregistration (module docstring)."""

    def __init__(self, settings: Settings, meta: AsyncMetadata) -> None:
        self.settings = settings
        self.meta = meta
        self.agent_id = settings.agent_name
        self.kafka_host, self.kafka_port = settings.kafka_advertised_address
        self.view: ClusterView | None = None
        self._interval = settings.agent_heartbeat_ms / 1000
        self._lease = settings.agent_lease_ms / 1000
        self._last_renewed: float | None = None  # loop time a successful renewal started
        self._outage_since: float | None = None
        self._hold_until: float | None = None  # loop time the post-outage hold ends (rule 3)
        self._failures = 0
        self._incarnation = 0  # started_at_ms of this agent's registration
        self._intruder = 0  # started_at_ms of another agent last seen under this agent's id

    async def join(self) -> ClusterView:
        """Registers this agent and returns its view of the cluster (raises if metadata fails:
        an agent that cannot register does not start)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if not self.settings.metadata:
            await self._forget_others()
        me = await self._register()
        agents = await self.meta.list_agents()
        self._last_renewed = started
        self.view = ClusterView(me)
        self.view.update(agents, me)
        log.info(
            "registered as agent %s, node id %d (Kafka %s:%d, gRPC %s, zone %s); %d live",
            me.agent_id,
            me.node_id,
            me.kafka_host,
            me.kafka_port,
            me.grpc_address,
            me.zone or "-",
            len(self.view.live()),
        )
        return self.view

    async def _forget_others(self) -> None:
        for agent in await self.meta.list_agents():
            if agent.agent_id != self.agent_id:
                await self.meta.forget_agent(agent.agent_id)
                log.info(
                    "forgot agent %s (node %d): the SQLite metadata belongs to this one agent",
                    agent.agent_id,
                    agent.node_id,
                )

    async def _register(self) -> AgentInfo:
        me = await self.meta.register_agent(
            self.agent_id,
            self.kafka_host,
            self.kafka_port,
            self.settings.grpc_advertised_address,
            self.settings.agent_zone,
            self.settings.agent_lease_ms,
        )
        self._incarnation = me.started_at_ms
        return me

    async def run(self) -> None:
        """Heartbeats forever, one interval apart (spawn it; cancel it to stop)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self.beat()
            due = max(due + self._interval, loop.time())

    async def beat(self) -> None:
        """One heartbeat: renew (or register again) and refresh the view; failures logged."""
        assert self.view is not None, "join() first"
        loop = asyncio.get_running_loop()
        started = loop.time()
        me: AgentInfo | None = None
        try:
            lapsed = self._last_renewed is None or started - self._last_renewed >= self._lease
            if lapsed:
                me = await self._register()
                agents = await self.meta.list_agents()
            else:
                try:
                    agents = await self.meta.heartbeat_agent(
                        self.agent_id, self.settings.agent_lease_ms
                    )
                except AgentUnknownError:
                    log.warning(
                        "agent %s is no longer registered (forgotten?): registering again",
                        self.agent_id,
                    )
                    me = await self._register()
                    agents = await self.meta.list_agents()
        except Exception as exc:  # metadata down or failing: keep serving, retry next beat
            self._failures += 1
            if self._outage_since is None:
                self._outage_since = started
                log.warning(
                    "agent heartbeat failed: %s; serving on with the last view of the cluster "
                    "and retrying every %d ms (this agent's lease lapses after %d ms without "
                    "one; it registers again when metadata answers)",
                    describe_failure(exc),
                    self.settings.agent_heartbeat_ms,
                    self.settings.agent_lease_ms,
                )
            return
        # Trouble reaching the store (a failed heartbeat, or this one or the previous one
        # slow: a call can wait out a whole outage): the others' leases may have lapsed only
        # for that (rule 3).
        troubled = (
            self._outage_since is not None
            or self._last_renewed is None
            or loop.time() - self._last_renewed > 2 * self._interval
        )
        if troubled:
            self._hold_until = loop.time() + self._lease
        if self._outage_since is not None:
            log.warning(
                "agent heartbeat succeeded again after %.1f s and %d failed attempts%s",
                loop.time() - self._outage_since,
                self._failures,
                "; the lease had lapsed, so the agent registered again" if me else "",
            )
            self._outage_since = None
            self._failures = 0
        self._last_renewed = started
        if me is None:
            self._check_shared_id(agents)
        keep: list[str] = []
        if self._hold_until is not None:
            if loop.time() < self._hold_until:
                keep = self._lapsed_in_outage(agents)
            else:
                self._hold_until = None
        self.view.update(agents, me, keep)

    def _lapsed_in_outage(self, agents: Sequence[AgentInfo]) -> list[str]:
        """Agents whose lease lapsed without a clean stop (rule 3): kept live for a while."""
        lease_ms = self.settings.agent_lease_ms
        held = [
            a.agent_id
            for a in agents
            if not a.alive
            and a.agent_id != self.agent_id
            and a.lease_until_ms >= a.heartbeat_at_ms + lease_ms
        ]
        if held:
            log.info(
                "keeping %s live for up to %d ms: their leases lapsed during the metadata outage",
                ", ".join(held),
                lease_ms,
            )
        return held

    def _check_shared_id(self, agents: Sequence[AgentInfo]) -> None:
        """Warns (once per intruder) when this agent's row shows another incarnation: a second
        agent registered with the same id, so the two share one node id and overwrite each
        other's addresses."""
        for agent in agents:
            if agent.agent_id != self.agent_id or agent.started_at_ms == self._incarnation:
                continue
            if agent.started_at_ms != self._intruder:
                self._intruder = agent.started_at_ms
                log.error(
                    "another agent registered as %s (Kafka %s:%d, gRPC %s) while this one "
                    "runs (Kafka %s:%d): two agents share this id and node id %d; give each "
                    "agent its own STREAMHOUSE_AGENT_ID (or Kafka advertised address)",
                    self.agent_id,
                    agent.kafka_host,
                    agent.kafka_port,
                    agent.grpc_address,
                    self.kafka_host,
                    self.kafka_port,
                    agent.node_id,
                )

    async def leave(self, timeout: float = 3.0) -> None:
        """Deregisters (clean stop); gives up after `timeout` seconds with one log line."""
        try:
            await asyncio.wait_for(self.meta.deregister_agent(self.agent_id), timeout)
            log.info("deregistered agent %s", self.agent_id)
        except Exception as exc:
            log.warning(
                "could not deregister agent %s (%s); the others drop it when its lease lapses",
                self.agent_id,
                describe_failure(exc),
            )
