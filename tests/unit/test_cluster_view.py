"""ingest/cluster.py: rendezvous leaders and coordinators, zones, the live-set view and its
listeners, and the agent's registration, heartbeat, re-registration and deregistration against
a real (SQLite) metadata store."""

from __future__ import annotations

import asyncio
import collections
import logging
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from ingest.cluster import (
    ClusterView,
    Membership,
    client_zone,
    group_key,
    partition_key,
    rendezvous,
)
from metadata import AgentInfo, MetadataUnavailableError
from metadata.async_store import AsyncMetadata
from streamhouse.config import load_settings
from streamhouse.errors import ErrorCode


def agent(
    node_id: int, *, zone: str = "", alive: bool = True, agent_id: str | None = None
) -> AgentInfo:
    name = agent_id or f"agent-{node_id}"
    return AgentInfo(
        agent_id=name,
        node_id=node_id,
        kafka_host="127.0.0.1",
        kafka_port=9000 + node_id,
        grpc_address=f"127.0.0.1:{5000 + node_id}",
        zone=zone,
        started_at_ms=1_000,
        heartbeat_at_ms=2_000,
        lease_until_ms=6_000 if alive else 2_000,
        alive=alive,
    )


def view_of(*agents: AgentInfo) -> ClusterView:
    """A view from agents[0]'s point of view, refreshed with all of them."""
    view = ClusterView(agents[0])
    view.update(list(agents))
    return view


PARTITIONS = 1000


def leaders(view: ClusterView, topic_id: int = 7, zone: str = "") -> list[str]:
    return [a.agent_id for a in view.leaders(topic_id, PARTITIONS, zone)]


# ----------------------------------------------------------------------- rendezvous


def test_leaders_spread_evenly_over_three_agents() -> None:
    """1000 partitions over 3 agents: each leads 333 +- 15 % (the binomial sd is about 15)."""
    view = view_of(agent(0), agent(1), agent(2))
    counts = collections.Counter(leaders(view))
    assert set(counts) == {"agent-0", "agent-1", "agent-2"}
    for name, count in counts.items():
        assert 283 <= count <= 383, (name, counts)
    # Another topic gets another, equally even, assignment.
    other = collections.Counter(leaders(view, topic_id=8))
    assert leaders(view, topic_id=8) != leaders(view)
    assert all(283 <= c <= 383 for c in other.values()), other


def test_groups_spread_evenly_and_ignore_zones() -> None:
    view = view_of(agent(0, zone="a"), agent(1, zone="b"), agent(2, zone="b"))
    counts = collections.Counter(view.coordinator_for(f"group-{i}").agent_id for i in range(999))
    assert all(283 <= c <= 383 for c in counts.values()), counts
    assert len(counts) == 3


def test_choices_do_not_depend_on_the_observer_or_the_order_of_the_list() -> None:
    """Every agent computes the same leaders and coordinators from the same live set."""
    a, b, c = agent(0), agent(1), agent(2)
    views = [view_of(a, b, c), view_of(b, c, a), view_of(c, a, b)]
    assert leaders(views[0]) == leaders(views[1]) == leaders(views[2])
    for i in range(200):
        chosen = {v.coordinator_for(f"g{i}").agent_id for v in views}
        assert len(chosen) == 1
    assert [v.is_coordinator("g1") for v in views].count(True) == 1
    # The free function agrees with the view.
    for p in range(50):
        assert (
            rendezvous([c, a, b], partition_key(7, p)).agent_id
            == views[0].leader_for(7, p).agent_id
        )
    assert (
        rendezvous([b, a, c], group_key("g1")).agent_id == views[0].coordinator_for("g1").agent_id
    )


def test_removing_an_agent_moves_only_its_partitions() -> None:
    a, b, c = agent(0), agent(1), agent(2)
    before = leaders(view_of(a, b, c))
    after = leaders(view_of(a, b))  # c left
    moved = [p for p in range(PARTITIONS) if before[p] != after[p]]
    assert moved, "agent-2 led some partitions"
    assert all(before[p] == "agent-2" for p in moved)
    assert all(after[p] in ("agent-0", "agent-1") for p in moved)
    assert len(moved) == before.count("agent-2")


def test_adding_an_agent_moves_partitions_only_to_it() -> None:
    a, b, c, d = agent(0), agent(1), agent(2), agent(3)
    before = leaders(view_of(a, b, c))
    after = leaders(view_of(a, b, c, d))
    moved = [p for p in range(PARTITIONS) if before[p] != after[p]]
    assert all(after[p] == "agent-3" for p in moved)
    assert 180 <= len(moved) <= 320  # about a quarter


def test_zone_filter_picks_leaders_in_the_clients_zone() -> None:
    view = view_of(agent(0, zone="a"), agent(1, zone="a"), agent(2, zone="b"))
    in_a = collections.Counter(leaders(view, zone="a"))
    assert set(in_a) == {"agent-0", "agent-1"}
    assert all(400 <= n <= 600 for n in in_a.values()), in_a
    assert set(leaders(view, zone="b")) == {"agent-2"}
    # No live agent in the zone (or no zone): every live agent.
    assert set(leaders(view, zone="c")) == {"agent-0", "agent-1", "agent-2"}
    assert leaders(view, zone="c") == leaders(view, zone="")
    # The zone's choice is the rendezvous choice among the zone's agents.
    assert view.leader_for(7, 3, "a").zone == "a"


def test_zone_filter_ignores_dead_agents_of_the_zone() -> None:
    view = view_of(agent(0, zone="a"), agent(1, zone="b", alive=False), agent(2, zone="a"))
    assert set(leaders(view, zone="b")) == {"agent-0", "agent-2"}


@pytest.mark.parametrize(
    ("client_id", "zone"),
    [
        ("streamhouse_az=eu-1a", "eu-1a"),
        ("billing,streamhouse_az=eu-1a", "eu-1a"),
        ("billing streamhouse_az=us.east_2;x=y", "us.east_2"),
        ("app-streamhouse_az=z1", "z1"),
        ("rdkafka", ""),
        ("", ""),
        (None, ""),
        ("streamhouse_az=", ""),
        ("mystreamhouse_az=a", ""),  # the token must start a word
        ("streamhouse_az=a b", "a"),
    ],
)
def test_client_zone_from_client_id(client_id: str | None, zone: str) -> None:
    assert client_zone(client_id) == zone


# ----------------------------------------------------------------------- the view


def test_single_view_maps_everything_to_its_agent() -> None:
    me = agent(0)
    view = ClusterView.single(me)
    assert view.live() == [me]
    assert view.controller_id == 0
    assert view.coordinator_for("any") == me and view.is_coordinator("any")
    assert {a.node_id for a in view.leaders(1, 64)} == {0}
    assert view.leader_for(1, 5, zone="somewhere") == me


def test_update_tracks_the_live_set_and_calls_listeners_on_changes_only() -> None:
    me, b, c = agent(0), agent(1), agent(2)
    view = ClusterView(me)
    calls: list[list[int]] = []
    view.add_listener(lambda: calls.append([a.node_id for a in view.live()]))

    assert view.update([me, b]) is True
    assert calls == [[0, 1]]
    # Same members with newer heartbeats: no call.
    renewed = AgentInfo(**{**_fields(b), "heartbeat_at_ms": 9_000, "lease_until_ms": 13_000})
    assert view.update([renewed, me]) is False
    assert calls == [[0, 1]]
    assert view.live()[1].heartbeat_at_ms == 9_000
    # c joins, b's lease lapses.
    assert view.update([me, agent(1, alive=False), c]) is True
    assert calls[-1] == [0, 2]
    assert view.controller_id == 0
    assert [a.node_id for a in view.agents()] == [0, 1, 2]
    # An agent moving to another address is a change clients must see.
    moved = AgentInfo(**{**_fields(c), "kafka_port": 1234})
    assert view.update([me, moved]) is True
    assert view.live()[1].kafka_port == 1234


def test_this_agent_stays_live_whatever_the_store_says() -> None:
    me, b = agent(0), agent(1)
    view = ClusterView(me)
    view.update([agent(0, alive=False), b])
    assert [a.agent_id for a in view.live()] == ["agent-0", "agent-1"]
    view.update([b])  # even without its row
    assert [a.agent_id for a in view.live()] == ["agent-0", "agent-1"]


def test_controller_is_the_lowest_live_node_id() -> None:
    me = agent(3)
    view = ClusterView(me)
    view.update([agent(1, alive=False), agent(2), me])
    assert view.controller_id == 2


def test_a_failing_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    view = ClusterView(agent(0))
    seen: list[int] = []

    def broken() -> None:
        raise RuntimeError("boom")

    view.add_listener(broken)
    view.add_listener(lambda: seen.append(len(view.live())))
    with caplog.at_level(logging.ERROR, logger="ingest.cluster"):
        view.update([agent(0), agent(1)])
    assert seen == [2]
    assert "boom" in caplog.text


def _fields(info: AgentInfo) -> dict[str, Any]:
    return {f: getattr(info, f) for f in info.__struct_fields__}


# ----------------------------------------------------------------------- membership


@pytest.fixture
def meta_path(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    yield tmp_path / "metadata.sqlite"


def _settings(tmp_path: pathlib.Path, **extra: str) -> Any:
    env = {
        "STREAMHOUSE_DATA_DIR": str(tmp_path),
        "STREAMHOUSE_KAFKA_LISTEN": "127.0.0.1:9311",
        "STREAMHOUSE_GRPC_LISTEN": "127.0.0.1:50311",
        "STREAMHOUSE_AGENT_HEARTBEAT_MS": "20",
        "STREAMHOUSE_AGENT_LEASE_MS": "200",
    }
    env.update({f"STREAMHOUSE_{k.upper()}": v for k, v in extra.items()})
    return load_settings(env)


class FlakyMetadata:
    """A real AsyncMetadata whose heartbeats and registrations fail while `down` is set, as
    they do when the metadata service is unreachable."""

    def __init__(self, meta: AsyncMetadata) -> None:
        self.meta = meta
        self.down = False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.meta, name)
        if name not in ("heartbeat_agent", "register_agent", "list_agents"):
            return real

        async def call(*args: Any) -> Any:
            if self.down:
                raise MetadataUnavailableError(
                    ErrorCode.REQUEST_TIMED_OUT, "metadata unreachable (test)"
                )
            return await real(*args)

        return call


def test_membership_registers_heartbeats_and_deregisters(tmp_path: pathlib.Path) -> None:
    settings = _settings(tmp_path, agent_zone="z1", grpc_advertised="grpc.example:443")

    async def scenario() -> None:
        meta = await AsyncMetadata.open(tmp_path / "metadata.sqlite", forbid_loop_calls=True)
        try:
            membership = Membership(settings, meta)
            view = await membership.join()
            me = view.self_agent
            assert (me.agent_id, me.node_id, me.zone) == ("127.0.0.1:9311", 0, "z1")
            assert (me.kafka_host, me.kafka_port) == ("127.0.0.1", 9311)
            assert me.grpc_address == "grpc.example:443"
            first_beat = me.heartbeat_at_ms
            # A second agent registers in the same store; the next heartbeat sees it.
            other = await meta.register_agent("other", "127.0.0.1", 9312, "127.0.0.1:1", "", 5000)
            changes: list[int] = []
            view.add_listener(lambda: changes.append(len(view.live())))
            await membership.beat()
            assert [a.agent_id for a in view.live()] == [me.agent_id, "other"]
            assert changes == [2]
            assert other.node_id == 1
            assert view.self_agent.heartbeat_at_ms >= first_beat
            # It stops cleanly: gone from the view at the next heartbeat.
            await meta.deregister_agent("other")
            await membership.beat()
            assert [a.agent_id for a in view.live()] == [me.agent_id]
            assert changes == [2, 1]
            await membership.leave()
            (row,) = [a for a in await meta.list_agents() if a.agent_id == me.agent_id]
            assert not row.alive
        finally:
            await meta.close()

    asyncio.run(scenario())


def test_membership_on_sqlite_forgets_earlier_incarnations_and_stays_node_0(
    tmp_path: pathlib.Path,
) -> None:
    """The SQLite store belongs to one stack: a stack restarted on other ports is node 0 again."""

    async def scenario() -> None:
        meta = await AsyncMetadata.open(tmp_path / "metadata.sqlite", forbid_loop_calls=True)
        try:
            first = Membership(_settings(tmp_path), meta)
            assert (await first.join()).self_agent.node_id == 0
            await first.leave()
            moved = Membership(_settings(tmp_path, kafka_listen="127.0.0.1:9400"), meta)
            view = await moved.join()
            assert (view.self_agent.agent_id, view.self_agent.node_id) == ("127.0.0.1:9400", 0)
            assert [a.agent_id for a in await meta.list_agents()] == ["127.0.0.1:9400"]
        finally:
            await meta.close()

    asyncio.run(scenario())


def test_heartbeat_failures_are_logged_once_per_outage_and_the_agent_serves_on(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        real = await AsyncMetadata.open(tmp_path / "metadata.sqlite", forbid_loop_calls=True)
        meta = FlakyMetadata(real)
        try:
            membership = Membership(_settings(tmp_path), meta)  # type: ignore[arg-type]
            view = await membership.join()
            started = view.self_agent.started_at_ms
            meta.down = True
            with caplog.at_level(logging.WARNING, logger="ingest.cluster"):
                for _ in range(5):
                    await membership.beat()
            failures = [r for r in caplog.records if "heartbeat failed" in r.getMessage()]
            assert len(failures) == 1
            assert "metadata unreachable" in failures[0].getMessage()
            assert view.live() == [view.self_agent]  # the last view serves on
            # Back within the lease: a plain renewal (same incarnation).
            meta.down = False
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="ingest.cluster"):
                await membership.beat()
            assert "succeeded again" in caplog.text and "registered again" not in caplog.text
            assert view.self_agent.started_at_ms == started
            # Down for longer than a lease: when metadata answers the agent registers anew.
            meta.down = True
            await membership.beat()
            loop = asyncio.get_running_loop()
            membership._last_renewed = loop.time() - 1.0  # the 200 ms lease has lapsed
            meta.down = False
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="ingest.cluster"):
                await membership.beat()
            assert "the agent registered again" in caplog.text
            # A new incarnation: registration sets started_at (= heartbeat_at) anew.
            me = view.self_agent
            assert me.started_at_ms == me.heartbeat_at_ms >= started
            assert view.self_agent.node_id == 0
        finally:
            await real.close()

    asyncio.run(scenario())


def test_a_forgotten_agent_registers_again_at_its_next_heartbeat(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        meta = await AsyncMetadata.open(tmp_path / "metadata.sqlite", forbid_loop_calls=True)
        try:
            membership = Membership(_settings(tmp_path), meta)
            view = await membership.join()
            assert await meta.forget_agent(view.self_agent.agent_id)
            with caplog.at_level(logging.WARNING, logger="ingest.cluster"):
                await membership.beat()
            assert "no longer registered" in caplog.text
            rows = await meta.list_agents()
            assert [(a.agent_id, a.alive) for a in rows] == [(view.self_agent.agent_id, True)]
        finally:
            await meta.close()

    asyncio.run(scenario())


def test_the_heartbeat_task_renews_the_lease_on_its_own(tmp_path: pathlib.Path) -> None:
    """run() heartbeats every agent_heartbeat_ms (20 ms here): the lease keeps moving."""

    async def scenario() -> None:
        meta = await AsyncMetadata.open(tmp_path / "metadata.sqlite", forbid_loop_calls=True)
        try:
            membership = Membership(_settings(tmp_path), meta)
            view = await membership.join()
            first = view.self_agent.lease_until_ms
            task = asyncio.ensure_future(membership.run())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while view.self_agent.lease_until_ms <= first + 40:
                assert loop.time() < deadline, "no heartbeat renewed the lease"
                assert not task.done(), task
                await asyncio.sleep(0.01)
            task.cancel()
        finally:
            await meta.close()

    asyncio.run(scenario())


def test_a_second_agent_with_the_same_id_is_reported(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        meta = await AsyncMetadata.open(tmp_path / "metadata.sqlite", forbid_loop_calls=True)
        try:
            membership = Membership(_settings(tmp_path), meta)
            view = await membership.join()
            mine = view.self_agent
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:  # another process registers under the same id (a later millisecond)
                other = await meta.register_agent(
                    mine.agent_id, "10.9.9.9", 9999, "10.9.9.9:1", "", 5000
                )
                if other.started_at_ms != mine.started_at_ms:
                    break
                assert loop.time() < deadline
            with caplog.at_level(logging.ERROR, logger="ingest.cluster"):
                await membership.beat()
                await membership.beat()
            errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1, errors
            assert "another agent registered as 127.0.0.1:9311 (Kafka 10.9.9.9:9999" in errors[0]
            assert "STREAMHOUSE_AGENT_ID" in errors[0]
        finally:
            await meta.close()

    asyncio.run(scenario())


def test_kept_agents_stay_live_while_listed_and_only_if_live_before() -> None:
    """`keep` holds agents of the current live set whose lease lapsed; it adds no agent."""
    me, b, c = agent(0), agent(1), agent(2)
    view = view_of(me, b)
    calls: list[int] = []
    view.add_listener(lambda: calls.append(len(view.live())))
    lapsed_b, lapsed_c = agent(1, alive=False), agent(2, alive=False)
    assert view.update([me, lapsed_b, lapsed_c], keep=["agent-1", "agent-2"]) is False
    assert [a.agent_id for a in view.live()] == ["agent-0", "agent-1"]
    assert calls == []
    # Not listed any more (forgotten): gone although kept.
    assert view.update([me], keep=["agent-1"]) is True
    assert [a.agent_id for a in view.live()] == ["agent-0"]
    # Not kept: a lapsed lease drops the agent as before.
    view = view_of(me, b, c)
    assert view.update([me, lapsed_b, c]) is True
    assert [a.agent_id for a in view.live()] == ["agent-0", "agent-2"]


def test_after_a_metadata_outage_lapsed_agents_stay_live_for_one_lease(
    tmp_path: pathlib.Path,
) -> None:
    """Every lease lapsed while metadata was unreachable: when it answers again the others
    stay in the view (no leadership moves) for one lease, a cleanly stopped agent leaves at
    once, and an agent that did not come back is dropped when the lease has passed."""
    settings = _settings(tmp_path)  # 20 ms heartbeats, 200 ms lease

    async def scenario() -> None:
        real = await AsyncMetadata.open(tmp_path / "metadata.sqlite", forbid_loop_calls=True)
        meta = FlakyMetadata(real)
        try:
            membership = Membership(settings, meta)  # type: ignore[arg-type]
            view = await membership.join()
            for name in ("b", "c"):
                await real.register_agent(name, "127.0.0.1", 9400, "127.0.0.1:1", "", 200)
            await membership.beat()
            everyone = [view.self_agent.agent_id, "b", "c"]
            assert [a.agent_id for a in view.live()] == everyone
            changes: list[list[str]] = []
            view.add_listener(lambda: changes.append([a.agent_id for a in view.live()]))
            meta.down = True
            await membership.beat()  # fails: the outage starts
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while any(a.alive for a in await real.list_agents() if a.agent_id in ("b", "c")):
                assert loop.time() < deadline, "the others' 200 ms leases never lapsed"
                await asyncio.sleep(0.02)
            meta.down = False
            await membership.beat()  # back: b and c lapsed, but only for the outage
            assert [a.agent_id for a in view.live()] == everyone
            assert changes == []
            # b stops cleanly: it leaves the view at once, hold or not.
            await real.register_agent("b", "127.0.0.1", 9400, "127.0.0.1:1", "", 200)
            await real.deregister_agent("b")
            await membership.beat()
            assert changes == [[view.self_agent.agent_id, "c"]]
            # c never heartbeats again: dropped once a lease has passed since the recovery.
            deadline = loop.time() + 5
            while [a.agent_id for a in view.live()] != [view.self_agent.agent_id]:
                assert loop.time() < deadline, "c was kept past the lease after the outage"
                await asyncio.sleep(0.02)
                await membership.beat()
            assert changes[-1] == [view.self_agent.agent_id]
        finally:
            await real.close()

    asyncio.run(scenario())


def test_a_heartbeat_that_waited_out_the_outage_also_keeps_the_others(
    tmp_path: pathlib.Path,
) -> None:
    """No heartbeat failed, but the one that succeeded came long after the previous one (its
    call waited for the store the whole outage): the others' lapsed leases are held too."""
    settings = _settings(tmp_path)  # 20 ms heartbeats, 200 ms lease

    async def scenario() -> None:
        meta = await AsyncMetadata.open(tmp_path / "metadata.sqlite", forbid_loop_calls=True)
        try:
            membership = Membership(settings, meta)
            view = await membership.join()
            await meta.register_agent("b", "127.0.0.1", 9400, "127.0.0.1:1", "", 200)
            await membership.beat()
            assert [a.agent_id for a in view.live()][1:] == ["b"]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while any(a.alive for a in await meta.list_agents() if a.agent_id == "b"):
                assert loop.time() < deadline, "b's 200 ms lease never lapsed"
                await asyncio.sleep(0.02)
            # The previous renewal started 100 ms ago (5 intervals, within this lease).
            membership._last_renewed = loop.time() - 0.1
            await membership.beat()
            assert [a.agent_id for a in view.live()][1:] == ["b"]
        finally:
            await meta.close()

    asyncio.run(scenario())
