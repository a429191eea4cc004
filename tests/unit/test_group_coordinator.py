"""Classic consumer-group coordinator: joins, syncs, rebalances, fencing, liveness, admin."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from ingest.kafka.groups import (
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
    REBALANCE_IN_PROGRESS,
    UNKNOWN_MEMBER_ID,
    GroupCoordinator,
    JoinGroupMember,
    JoinResult,
    LeftMember,
    SyncResult,
)

T = TypeVar("T")

GROUP = "g1"
RANGE = [("range", b"range-meta")]
LONG = 30_000  # ms: a timeout that must not matter in the test
BOUND = 2.0  # s: upper bound for anything that should happen "now"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make(initial_delay_ms: int = 50, **kwargs: int) -> GroupCoordinator:
    return GroupCoordinator(
        initial_rebalance_delay_ms=initial_delay_ms,
        min_session_timeout_ms=10,
        max_session_timeout_ms=60_000,
        **kwargs,
    )


async def bounded(aw: Awaitable[T], timeout: float = BOUND) -> T:
    return await asyncio.wait_for(aw, timeout)


async def let_tasks_run() -> None:
    """Yield to the loop so already-created tasks run up to their first wait (no timing)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def join(
    c: GroupCoordinator,
    member_id: str = "",
    *,
    group: str = GROUP,
    instance: str | None = None,
    protocols: list[tuple[str, bytes]] = RANGE,
    protocol_type: str = "consumer",
    session_ms: int = LONG,
    rebalance_ms: int = LONG,
    client: str = "client",
    require_known: bool = True,
    skip: bool = False,
) -> JoinResult:
    return await c.join_group(
        group,
        member_id,
        instance,
        protocol_type,
        protocols,
        session_ms,
        rebalance_ms,
        client,
        "/127.0.0.1",
        require_known,
        supports_skip_assignment=skip,
    )


async def join_new(c: GroupCoordinator, client: str = "client", **kwargs: Any) -> JoinResult:
    """The v4+ two-step join of a dynamic member: MEMBER_ID_REQUIRED, then join with the id."""
    first = await join(c, client=client, **kwargs)
    assert first.error == MEMBER_ID_REQUIRED
    return await join(c, first.member_id, client=client, **kwargs)


async def sync(
    c: GroupCoordinator,
    r: JoinResult,
    assignments: list[tuple[str, bytes]] | None = None,
    *,
    group: str = GROUP,
    instance: str | None = None,
) -> SyncResult:
    return await c.sync_group(
        group,
        r.generation_id,
        r.member_id,
        instance,
        "consumer",
        r.protocol_name,
        assignments or [],
    )


async def stable_group(c: GroupCoordinator, n: int, **kwargs: Any) -> list[JoinResult]:
    """n dynamic members joined in one generation and synced (member i gets b"a<i>")."""
    joins = await bounded(asyncio.gather(*(join_new(c, f"c{i}", **kwargs) for i in range(n))))
    leader = next(r for r in joins if r.member_id == r.leader)
    assignments = [(r.member_id, f"a{i}".encode()) for i, r in enumerate(joins)]
    followers = [sync(c, r) for r in joins if r is not leader]
    results = await bounded(asyncio.gather(*followers, sync(c, leader, assignments)))
    assert all(s.error == NONE for s in results)
    assert c.describe_group(GROUP).state == "Stable"
    return joins


def test_member_id_required_then_join() -> None:
    async def main() -> None:
        c = make()
        first = await bounded(join(c, client="app"))
        assert first.error == MEMBER_ID_REQUIRED
        assert first.member_id.startswith("app-")
        assert first.generation_id == -1
        # The handed-out id is pending: the group exists but has no member yet.
        assert c.known(GROUP)
        assert c.describe_group(GROUP).members == []

        second = await bounded(join(c, first.member_id, client="app"))
        assert second.error == NONE
        assert second.member_id == first.member_id
        assert second.leader == first.member_id
        assert second.generation_id == 1
        assert second.protocol_type == "consumer"
        assert second.protocol_name == "range"
        assert second.members == [JoinGroupMember(first.member_id, None, b"range-meta")]

        # A member id the coordinator never handed out is refused.
        stranger = await bounded(join(c, "made-up-id"))
        assert stranger.error == UNKNOWN_MEMBER_ID
        missing = await bounded(join(c, "made-up-id", group="other"))
        assert missing.error == UNKNOWN_MEMBER_ID
        assert not c.known("other")
        # JoinGroup v0-3 clients get an id without the extra round trip.
        old = await bounded(join(c, group="old-client", require_known=False))
        assert old.error == NONE and old.member_id and old.leader == old.member_id
        c.close()

    run(main())


def test_lone_consumer_join_completes_within_initial_delay() -> None:
    async def main() -> None:
        c = make(initial_delay_ms=50)
        loop = asyncio.get_running_loop()
        first = await join(c)
        started = loop.time()
        # The rebalance timeout is 30 s: only the 50 ms initial delay may be waited for.
        result = await asyncio.wait_for(join(c, first.member_id), 1.0)
        elapsed = loop.time() - started
        assert result.error == NONE and result.generation_id == 1
        assert 0.04 <= elapsed < 1.0
        s = await bounded(sync(c, result, [(result.member_id, b"all")]))
        assert s == SyncResult(
            error=NONE, protocol_type="consumer", protocol_name="range", assignment=b"all"
        )
        c.close()

    run(main())


def test_three_members_join_and_sync() -> None:
    async def main() -> None:
        c = make()
        joins = await bounded(asyncio.gather(*(join_new(c, f"c{i}") for i in range(3))))
        assert {r.error for r in joins} == {NONE}
        assert {r.generation_id for r in joins} == {1}  # the initial delay gathered them
        leader_id = joins[0].leader
        assert {r.leader for r in joins} == {leader_id}
        leader = next(r for r in joins if r.member_id == leader_id)
        followers = [r for r in joins if r is not leader]
        assert sorted(m.member_id for m in leader.members) == sorted(r.member_id for r in joins)
        assert all(m.metadata == b"range-meta" for m in leader.members)
        assert all(r.members == [] for r in followers)
        assert c.describe_group(GROUP).state == "CompletingRebalance"

        # Followers wait for the leader's assignment.
        waiting = [asyncio.create_task(sync(c, r)) for r in followers]
        await let_tasks_run()
        assert not any(t.done() for t in waiting)
        # The leader leaves the second follower out: it gets empty bytes.
        mine = await bounded(
            sync(c, leader, [(leader.member_id, b"L"), (followers[0].member_id, b"F0")])
        )
        assert mine.error == NONE and mine.assignment == b"L"
        got = await bounded(asyncio.gather(*waiting))
        assert [s.assignment for s in got] == [b"F0", b""]
        assert all(s.error == NONE and s.protocol_name == "range" for s in got)

        described = c.describe_group(GROUP)
        assert described.state == "Stable" and described.protocol == "range"
        by_id = {m.member_id: m for m in described.members}
        assert by_id[leader.member_id].assignment == b"L"
        assert by_id[leader.member_id].metadata == b"range-meta"
        assert by_id[leader.member_id].client_id in {"c0", "c1", "c2"}
        # A late SyncGroup in Stable gets the stored assignment.
        again = await bounded(sync(c, followers[0]))
        assert again.assignment == b"F0"
        assert all(c.heartbeat(GROUP, 1, r.member_id, None) == NONE for r in joins)
        c.close()

    run(main())


def test_fourth_member_triggers_rebalance() -> None:
    async def main() -> None:
        c = make()
        joins = await stable_group(c, 3)
        leader_id = joins[0].leader
        first = await join(c, client="c3")
        assert first.error == MEMBER_ID_REQUIRED
        fourth = asyncio.create_task(join(c, first.member_id, client="c3"))
        await let_tasks_run()
        assert not fourth.done()
        assert c.describe_group(GROUP).state == "PreparingRebalance"

        # Existing members learn about it from their heartbeats and rejoin.
        assert [c.heartbeat(GROUP, 1, r.member_id, None) for r in joins] == [
            REBALANCE_IN_PROGRESS
        ] * 3
        rejoins = [asyncio.create_task(join(c, r.member_id)) for r in joins]
        results = await bounded(asyncio.gather(fourth, *rejoins))
        assert {r.error for r in results} == {NONE}
        assert {r.generation_id for r in results} == {2}
        assert {r.leader for r in results} == {leader_id}  # the leader rejoined: it stays
        leader = next(r for r in results if r.member_id == leader_id)
        assert len(leader.members) == 4
        # Stale generation is fenced; the new one syncs.
        assert c.heartbeat(GROUP, 1, leader_id, None) == ILLEGAL_GENERATION
        synced = await bounded(
            asyncio.gather(
                *(sync(c, r) for r in results if r is not leader),
                sync(c, leader, [(r.member_id, b"x") for r in results]),
            )
        )
        assert {s.assignment for s in synced} == {b"x"}
        assert c.describe_group(GROUP).state == "Stable"
        c.close()

    run(main())


def test_leave_rebalances_the_rest_and_last_leave_empties() -> None:
    async def main() -> None:
        c = make()
        joins = await stable_group(c, 3)
        leader_id = joins[0].leader
        rest = [r for r in joins if r.member_id != leader_id]

        # The leader leaves: the others rebalance and one of them leads.
        error, members = c.leave_group(GROUP, [(leader_id, None)])
        assert (error, members) == (NONE, [LeftMember(leader_id, None, NONE)])
        assert c.describe_group(GROUP).state == "PreparingRebalance"
        assert c.heartbeat(GROUP, 1, leader_id, None) == UNKNOWN_MEMBER_ID
        assert [c.heartbeat(GROUP, 1, r.member_id, None) for r in rest] == [
            REBALANCE_IN_PROGRESS
        ] * 2
        results = await bounded(asyncio.gather(*(join(c, r.member_id) for r in rest)))
        assert {r.generation_id for r in results} == {2}
        new_leader = results[0].leader
        assert new_leader in {r.member_id for r in rest}
        assert sorted(
            m.member_id for m in next(r for r in results if r.member_id == new_leader).members
        ) == sorted(r.member_id for r in rest)

        # Unknown members are reported per member; a batch leave of everybody empties the group.
        error, members = c.leave_group(
            GROUP, [(r.member_id, None) for r in rest] + [("ghost", None)]
        )
        assert error == NONE
        assert [m.error for m in members] == [NONE, NONE, UNKNOWN_MEMBER_ID]
        described = c.describe_group(GROUP)
        assert described.state == "Empty" and described.members == []
        assert c.leave_group("nope", [("m", None)]) == (
            NONE,
            [LeftMember("m", None, UNKNOWN_MEMBER_ID)],
        )
        assert c.leave_group("", [("m", None)]) == (INVALID_GROUP_ID, [])
        c.close()

    run(main())


def test_session_expiry_of_silent_member_rebalances() -> None:
    async def main() -> None:
        c = make()
        # The leader's session is long; the follower's is short and it never heartbeats.
        leader_first = await join(c, client="leader")
        follower_first = await join(c, client="follower", session_ms=200)
        joins = await bounded(
            asyncio.gather(
                join(c, leader_first.member_id, client="leader"),
                join(c, follower_first.member_id, client="follower", session_ms=200),
            )
        )
        leader, follower = joins
        assert leader.leader == leader.member_id
        await bounded(asyncio.gather(sync(c, follower), sync(c, leader, [])))

        async def until_rebalance() -> None:
            # Heartbeat like a client does; the behaviour under test is the follower's timeout.
            while c.heartbeat(GROUP, 1, leader.member_id, None) != REBALANCE_IN_PROGRESS:
                await asyncio.sleep(0.02)

        await bounded(until_rebalance())
        assert c.heartbeat(GROUP, 1, follower.member_id, None) == UNKNOWN_MEMBER_ID
        alone = await bounded(join(c, leader.member_id))
        assert alone.generation_id == 2
        assert [m.member_id for m in alone.members] == [leader.member_id]

        # The last member expiring leaves the group Empty.
        solo = make()
        r = await bounded(join_new(solo, group="solo", session_ms=100))
        await bounded(sync(solo, r, [(r.member_id, b"")], group="solo"))

        async def until_empty() -> None:
            while solo.describe_group("solo").state != "Empty":
                await asyncio.sleep(0.02)

        await bounded(until_empty())
        assert solo.validate_offset_commit("solo", -1, "", None) == NONE
        c.close()
        solo.close()

    run(main())


def test_rebalance_timeout_removes_members_that_do_not_rejoin() -> None:
    async def main() -> None:
        c = make()
        joins = await stable_group(c, 2, rebalance_ms=200)
        leader_id = joins[0].leader
        other = next(r for r in joins if r.member_id != leader_id)
        # The leader asks for a new assignment; the follower stays silent (its session is
        # long), so only the 200 ms rebalance timeout ends the rebalance.
        started = asyncio.get_running_loop().time()
        result = await bounded(join(c, leader_id, rebalance_ms=200))
        assert asyncio.get_running_loop().time() - started >= 0.15
        assert result.generation_id == 2
        assert [m.member_id for m in result.members] == [leader_id]
        assert c.heartbeat(GROUP, 2, other.member_id, None) == UNKNOWN_MEMBER_ID
        c.close()

    run(main())


def test_leader_that_never_syncs_is_removed() -> None:
    async def main() -> None:
        c = make()
        joins = await bounded(
            asyncio.gather(*(join_new(c, f"c{i}", rebalance_ms=200) for i in range(2)))
        )
        leader_id = joins[0].leader
        follower = next(r for r in joins if r.member_id != leader_id)
        # The follower's SyncGroup waits for an assignment that never comes; after the
        # rebalance timeout the leader is dropped and the follower told to rejoin.
        waited = await bounded(sync(c, follower))
        assert waited.error == REBALANCE_IN_PROGRESS
        assert c.heartbeat(GROUP, 1, leader_id, None) == UNKNOWN_MEMBER_ID
        again = await bounded(join(c, follower.member_id, rebalance_ms=200))
        assert again.generation_id == 2 and again.leader == follower.member_id
        c.close()

    run(main())


def test_generation_fencing_on_sync_heartbeat_and_commit() -> None:
    async def main() -> None:
        c = make()
        joins = await bounded(asyncio.gather(*(join_new(c, f"c{i}") for i in range(2))))
        leader = next(r for r in joins if r.member_id == r.leader)
        follower = next(r for r in joins if r is not leader)
        # CompletingRebalance: heartbeats are fine, commits wait for the assignment.
        assert c.heartbeat(GROUP, 1, follower.member_id, None) == NONE
        assert c.validate_offset_commit(GROUP, 1, follower.member_id, None) == REBALANCE_IN_PROGRESS

        stale = await bounded(c.sync_group(GROUP, 0, follower.member_id, None, None, None, []))
        assert stale.error == ILLEGAL_GENERATION and stale.assignment == b""
        unknown = await bounded(c.sync_group(GROUP, 1, "ghost", None, None, None, []))
        assert unknown.error == UNKNOWN_MEMBER_ID
        wrong_proto = await bounded(
            c.sync_group(GROUP, 1, leader.member_id, None, "consumer", "sticky", [])
        )
        assert wrong_proto.error == INCONSISTENT_GROUP_PROTOCOL
        await bounded(asyncio.gather(sync(c, follower), sync(c, leader, [])))

        assert c.heartbeat(GROUP, 0, follower.member_id, None) == ILLEGAL_GENERATION
        assert c.heartbeat(GROUP, 7, follower.member_id, None) == ILLEGAL_GENERATION
        assert c.heartbeat(GROUP, 1, "ghost", None) == UNKNOWN_MEMBER_ID
        assert c.heartbeat("no-such-group", 1, "ghost", None) == UNKNOWN_MEMBER_ID
        assert c.heartbeat("", 1, "ghost", None) == INVALID_GROUP_ID

        assert c.validate_offset_commit(GROUP, 1, follower.member_id, None) == NONE
        assert c.validate_offset_commit(GROUP, 0, follower.member_id, None) == ILLEGAL_GENERATION
        assert c.validate_offset_commit(GROUP, 1, "ghost", None) == UNKNOWN_MEMBER_ID
        # A "simple" commit (no group management) is refused while the group has members...
        assert c.validate_offset_commit(GROUP, -1, "", None) == UNKNOWN_MEMBER_ID
        # ...and fine for a group the coordinator does not manage.
        assert c.validate_offset_commit("standalone", -1, "", None) == NONE
        assert c.validate_offset_commit("standalone", 3, "m", None) == ILLEGAL_GENERATION
        assert not c.known("standalone")

        # After a rebalance the old generation is fenced everywhere.
        assert c.leave_group(GROUP, [(follower.member_id, None)])[0] == NONE
        # PreparingRebalance: the member may still commit its current generation.
        assert c.validate_offset_commit(GROUP, 1, leader.member_id, None) == NONE
        again = await bounded(join(c, leader.member_id))
        assert again.generation_id == 2
        assert c.validate_offset_commit(GROUP, 1, leader.member_id, None) == ILLEGAL_GENERATION
        old = await bounded(c.sync_group(GROUP, 1, leader.member_id, None, None, None, []))
        assert old.error == ILLEGAL_GENERATION
        assert c.heartbeat(GROUP, 1, leader.member_id, None) == ILLEGAL_GENERATION
        c.close()

    run(main())


def test_sync_during_preparing_rebalance_is_refused() -> None:
    async def main() -> None:
        c = make()
        joins = await stable_group(c, 2)
        follower = next(r for r in joins if r.member_id != r.leader)
        pending = asyncio.create_task(join(c, joins[0].leader))  # the leader rejoins: rebalance
        await let_tasks_run()
        s = await bounded(sync(c, follower))
        assert s.error == REBALANCE_IN_PROGRESS
        await bounded(join(c, follower.member_id))
        assert (await bounded(pending)).generation_id == 2
        c.close()

    run(main())


def test_static_member_rejoin_fences_old_id_without_rebalance() -> None:
    async def main() -> None:
        c = make()
        # Static members need no MEMBER_ID_REQUIRED round trip.
        a, b = await bounded(
            asyncio.gather(
                join(c, instance="inst-a", client="ca"),
                join(c, instance="inst-b", client="cb"),
            )
        )
        assert a.error == NONE and a.member_id.startswith("inst-a-")
        leader, follower = (a, b) if a.member_id == a.leader else (b, a)
        f_inst = "inst-b" if follower is b else "inst-a"
        l_inst = "inst-a" if follower is b else "inst-b"
        assert sorted(m.group_instance_id for m in leader.members) == ["inst-a", "inst-b"]
        await bounded(
            asyncio.gather(
                sync(c, follower, instance=f_inst),
                sync(
                    c,
                    leader,
                    [(leader.member_id, b"LA"), (follower.member_id, b"FA")],
                    instance=l_inst,
                ),
            )
        )

        # The follower restarts: same instance id, unchanged protocols, no member id.
        back = await bounded(join(c, instance=f_inst, client="restarted"))
        assert back.error == NONE
        assert back.member_id != follower.member_id
        assert back.generation_id == 1  # no rebalance: the current generation
        assert back.leader == leader.member_id and back.members == []
        assert c.describe_group(GROUP).state == "Stable"
        assert c.heartbeat(GROUP, 1, leader.member_id, l_inst) == NONE
        # The old incarnation is fenced.
        assert c.heartbeat(GROUP, 1, follower.member_id, f_inst) == FENCED_INSTANCE_ID
        assert c.validate_offset_commit(GROUP, 1, follower.member_id, f_inst) == FENCED_INSTANCE_ID
        old_sync = await bounded(sync(c, follower, instance=f_inst))
        assert old_sync.error == FENCED_INSTANCE_ID
        old_join = await bounded(join(c, follower.member_id, instance=f_inst))
        assert old_join.error == FENCED_INSTANCE_ID
        # The new one carries on with the current assignment.
        assert c.heartbeat(GROUP, 1, back.member_id, f_inst) == NONE
        mine = await bounded(sync(c, back, instance=f_inst))
        assert mine.error == NONE and mine.assignment == b"FA"
        described = {m.group_instance_id: m for m in c.describe_group(GROUP).members}
        assert described[f_inst].member_id == back.member_id
        assert described[f_inst].client_id == "restarted"

        # A restarted leader: a v9 client is told it leads but must skip the assignment; an
        # older one is given the previous leader id so that it acts as a follower.
        v9 = await bounded(join(c, instance=l_inst, skip=True))
        assert v9.skip_assignment and v9.leader == v9.member_id and len(v9.members) == 2
        old_client = await bounded(join(c, instance=l_inst))
        assert not old_client.skip_assignment and old_client.members == []
        assert old_client.leader == v9.member_id != old_client.member_id
        assert c.describe_group(GROUP).state == "Stable"
        assert c.heartbeat(GROUP, 1, old_client.member_id, l_inst) == NONE

        # Admin removal by instance id.
        error, left = c.leave_group(GROUP, [("", f_inst), ("", "inst-z")])
        assert error == NONE and [m.error for m in left] == [NONE, UNKNOWN_MEMBER_ID]
        assert c.heartbeat(GROUP, 1, back.member_id, f_inst) == UNKNOWN_MEMBER_ID
        c.close()

    run(main())


def test_static_member_with_new_protocols_rebalances() -> None:
    async def main() -> None:
        c = make()
        r = await bounded(join(c, instance="i1"))
        await bounded(sync(c, r, [(r.member_id, b"x")], instance="i1"))
        changed = [("range", b"new-subscription")]
        again = await bounded(join(c, instance="i1", protocols=changed))
        assert again.error == NONE and again.generation_id == 2
        assert again.members == [JoinGroupMember(again.member_id, "i1", b"new-subscription")]
        c.close()

    run(main())


def test_parked_join_of_fenced_static_member_is_answered() -> None:
    async def main() -> None:
        c = make()
        a, k = await bounded(asyncio.gather(join(c, instance="ia"), join(c, instance="ik")))
        leader, follower = (a, k) if a.member_id == a.leader else (k, a)
        await bounded(asyncio.gather(sync(c, follower), sync(c, leader, [])))
        # A third static member starts a rebalance; "ia" rejoins and waits for "ik".
        b_task = asyncio.create_task(join(c, instance="ib"))
        old = asyncio.create_task(join(c, a.member_id, instance="ia"))
        await let_tasks_run()
        assert not old.done()
        # A second process with instance id "ia" takes over: the parked join is fenced.
        new = asyncio.create_task(join(c, instance="ia"))
        fenced = await bounded(old)
        assert fenced.error == FENCED_INSTANCE_ID and fenced.member_id == a.member_id
        k_again = asyncio.create_task(join(c, k.member_id, instance="ik"))
        results = await bounded(asyncio.gather(b_task, new, k_again))
        assert {r.error for r in results} == {NONE}
        assert {r.generation_id for r in results} == {2}
        assert results[1].member_id != a.member_id
        c.close()

    run(main())


def test_inconsistent_protocols_and_protocol_vote() -> None:
    async def main() -> None:
        c = make()
        a = await bounded(join_new(c, "a", protocols=[("range", b"")]))
        assert a.protocol_name == "range"
        bad = await bounded(join(c, protocols=[("roundrobin", b"")]))
        assert bad.error == INCONSISTENT_GROUP_PROTOCOL
        other_type = await bounded(join(c, protocol_type="connect"))
        assert other_type.error == INCONSISTENT_GROUP_PROTOCOL
        empty = await bounded(join(c, group="fresh", protocols=[]))
        assert empty.error == INCONSISTENT_GROUP_PROTOCOL
        assert not c.known("fresh")  # a failed first join leaves nothing behind
        c.close()

        # Two of three prefer roundrobin; all support both: roundrobin wins the vote.
        v = make()
        both_rr = [("roundrobin", b"rr"), ("range", b"r")]
        both_range = [("range", b"r"), ("roundrobin", b"rr")]
        joins = await bounded(
            asyncio.gather(
                join_new(v, "x", protocols=both_range),
                join_new(v, "y", protocols=both_rr),
                join_new(v, "z", protocols=both_rr),
            )
        )
        assert {r.protocol_name for r in joins} == {"roundrobin"}
        leader = next(r for r in joins if r.member_id == r.leader)
        assert {m.metadata for m in leader.members} == {b"rr"}
        # A newcomer needs one protocol that every member supports; its preference is free.
        assert (await bounded(join(v, protocols=[("sticky", b"")]))).error == (
            INCONSISTENT_GROUP_PROTOCOL
        )
        ok = await bounded(join(v, protocols=[("sticky", b""), ("range", b"r")]))
        assert ok.error == MEMBER_ID_REQUIRED
        v.close()

    run(main())


def test_invalid_group_id_and_session_timeout() -> None:
    async def main() -> None:
        c = make()
        assert (await join(c, group="")).error == INVALID_GROUP_ID
        assert (await join(c, session_ms=5)).error == INVALID_SESSION_TIMEOUT
        assert (await join(c, session_ms=60_001)).error == INVALID_SESSION_TIMEOUT
        assert not c.known(GROUP)
        c.close()

    run(main())


def test_describe_list_and_delete_groups() -> None:
    async def main() -> None:
        c = make()
        unknown = c.describe_group("nope")
        assert (unknown.error, unknown.state, unknown.members) == (NONE, "Dead", [])
        assert c.delete_group("nope") == GROUP_ID_NOT_FOUND

        joins = await stable_group(c, 2)
        other = await bounded(join_new(c, group="g2"))  # CompletingRebalance
        assert sorted(c.list_groups()) == [
            (GROUP, "consumer", "Stable"),
            ("g2", "consumer", "CompletingRebalance"),
        ]
        assert c.list_groups(["stable"]) == [(GROUP, "consumer", "Stable")]
        assert c.list_groups(["Empty"]) == []
        assert c.list_groups([]) == c.list_groups()

        described = c.describe_group(GROUP)
        assert described.protocol_type == "consumer" and described.protocol == "range"
        assert sorted(m.assignment for m in described.members) == [b"a0", b"a1"]
        not_stable = c.describe_group("g2")
        assert not_stable.protocol == "" and not_stable.members[0].metadata == b""

        assert c.delete_group(GROUP) == NON_EMPTY_GROUP
        assert c.delete_group("g2") == NON_EMPTY_GROUP
        c.leave_group(GROUP, [(r.member_id, None) for r in joins])
        assert c.list_groups(["Empty"]) == [(GROUP, "consumer", "Empty")]
        assert c.delete_group(GROUP) == NONE
        assert not c.known(GROUP)
        assert c.describe_group(GROUP).state == "Dead"
        assert c.delete_group(GROUP) == GROUP_ID_NOT_FOUND
        assert [g.group_id for g in c.list_groups()] == ["g2"]
        assert other.error == NONE
        c.close()

    run(main())


def test_removed_member_parked_join_gets_unknown_member_id() -> None:
    async def main() -> None:
        c = make()
        joins = await stable_group(c, 3)
        leader_id = joins[0].leader
        f1, f2 = [r for r in joins if r.member_id != leader_id]
        # The leader rejoins (a rebalance), f1 rejoins too; both wait for f2.
        leader_join = asyncio.create_task(join(c, leader_id))
        parked = asyncio.create_task(join(c, f1.member_id))
        await let_tasks_run()
        assert not parked.done() and not leader_join.done()
        # f1 is removed while parked: its JoinGroup is answered, not left hanging.
        assert c.leave_group(GROUP, [(f1.member_id, None)])[0] == NONE
        assert (await bounded(parked)).error == UNKNOWN_MEMBER_ID
        assert not leader_join.done()
        f2_join = await bounded(join(c, f2.member_id))
        assert f2_join.generation_id == 2
        led = await bounded(leader_join)
        assert sorted(m.member_id for m in led.members) == sorted([leader_id, f2.member_id])
        c.close()

    run(main())


def test_close_answers_every_waiter() -> None:
    async def main() -> None:
        c = make(initial_delay_ms=LONG)
        # Group 1: a JoinGroup parked in the (long) initial delay.
        first = await join(c, group="waiting-join")
        parked_join = asyncio.create_task(join(c, first.member_id, group="waiting-join"))
        # Group 2: a follower's SyncGroup parked until the leader syncs.
        quick = make(initial_delay_ms=10)
        joins = await bounded(asyncio.gather(*(join_new(quick, f"c{i}") for i in range(2))))
        follower = next(r for r in joins if r.member_id != r.leader)
        parked_sync = asyncio.create_task(sync(quick, follower))
        await let_tasks_run()
        assert not parked_join.done() and not parked_sync.done()

        c.close()
        quick.close()
        joined = await bounded(parked_join)
        synced = await bounded(parked_sync)
        assert joined.error == COORDINATOR_NOT_AVAILABLE
        assert synced.error == COORDINATOR_NOT_AVAILABLE
        # A closed coordinator refuses everything the same way.
        assert (await bounded(join(c))).error == COORDINATOR_NOT_AVAILABLE
        assert quick.heartbeat(GROUP, 1, follower.member_id, None) == COORDINATOR_NOT_AVAILABLE
        assert (
            quick.validate_offset_commit(GROUP, 1, follower.member_id, None)
            == COORDINATOR_NOT_AVAILABLE
        )
        assert c.list_groups() == [] and not c.known("waiting-join")

    run(main())
