"""Consumer-group state across coordinators: snapshots, restore, persistence in order, stale
coordinators, losing coordination. The coordinator is driven directly; the shell runs over a
real SQLite metadata store and a real ClusterView whose live set the tests change."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from test_group_coordinator import (
    BOUND,
    GROUP,
    LONG,
    bounded,
    join,
    join_new,
    let_tasks_run,
    make,
    stable_group,
    sync,
)

from ingest.cluster import ClusterView
from ingest.kafka.api_groups import GroupShell
from ingest.kafka.groups import (
    ILLEGAL_GENERATION,
    NONE,
    NOT_COORDINATOR,
    REBALANCE_IN_PROGRESS,
    UNKNOWN_MEMBER_ID,
    GroupCoordinator,
    GroupSnapshot,
    SnapshotError,
    decode_snapshot,
    encode_snapshot,
)
from metadata import AgentInfo
from metadata.async_store import AsyncMetadata

Saved = list[tuple[str, int, bytes | None]]


def recorder() -> tuple[Saved, Any]:
    saved: Saved = []

    def persist(group_id: str, generation: int, blob: bytes | None) -> None:
        saved.append((group_id, generation, blob))

    return saved, persist


def last_snapshot(saved: Saved, group_id: str = GROUP) -> GroupSnapshot:
    blobs = [blob for g, _, blob in saved if g == group_id]
    assert blobs and blobs[-1] is not None, f"no snapshot of {group_id} persisted: {saved}"
    return decode_snapshot(blobs[-1], group_id)


def comparable(snapshot: GroupSnapshot) -> dict[str, Any]:
    return msgspec.structs.asdict(snapshot) | {
        "members": sorted((msgspec.structs.asdict(m) for m in snapshot.members), key=str)
    }


# -------------------------------------------------------------------------- snapshot / restore


def test_stable_group_round_trips_and_answers_at_its_generation() -> None:
    async def main() -> None:
        saved, persist = recorder()
        old = make(persist=persist)
        joins = await stable_group(old, 3, session_ms=LONG)
        await let_tasks_run()
        snap = last_snapshot(saved)
        assert snap.state == "Stable" and snap.generation_id == 1
        assert {m.assignment for m in snap.members} == {b"a0", b"a1", b"a2"}
        assert saved[-1][1] == 1  # persisted with its generation
        old.close()

        # A successor restores it from the stored blob.
        new_saved, new_persist = recorder()
        new = make(persist=new_persist)
        new.restore(GROUP, saved[-1][2] or b"")
        assert comparable(decode_snapshot(new.snapshot(GROUP) or b"", GROUP)) == comparable(snap)
        described = new.describe_group(GROUP)
        assert described.state == "Stable" and len(described.members) == 3
        for i, r in enumerate(joins):
            assert new.heartbeat(GROUP, r.generation_id, r.member_id, None) == NONE
            assert new.validate_offset_commit(GROUP, r.generation_id, r.member_id, None) == NONE
            # The old generation is fenced as before.
            assert new.heartbeat(GROUP, 0, r.member_id, None) == ILLEGAL_GENERATION
            assert new.validate_offset_commit(GROUP, 0, r.member_id, None) == ILLEGAL_GENERATION
            result = await bounded(sync(new, r))
            assert result.error == NONE and result.assignment == f"a{i}".encode()
        assert new.heartbeat(GROUP, 1, "stranger", None) == UNKNOWN_MEMBER_ID
        await let_tasks_run()
        assert new_saved == []  # answering heartbeats changed nothing a successor needs
        new.close()

    asyncio.run(main())


def test_empty_group_round_trips() -> None:
    async def main() -> None:
        saved, persist = recorder()
        old = make(persist=persist)
        joins = await stable_group(old, 2)
        for r in joins:
            error, left = old.leave_group(GROUP, [(r.member_id, None)])
            assert error == NONE and left[0].error == NONE
        assert old.describe_group(GROUP).state == "Empty"
        await let_tasks_run()
        snap = last_snapshot(saved)
        assert snap.state == "Empty" and snap.members == [] and snap.generation_id == 2
        new = make()
        new.restore(GROUP, saved[-1][2] or b"")
        assert new.describe_group(GROUP).state == "Empty"
        # Simple commits are allowed again; the old members are gone.
        assert new.validate_offset_commit(GROUP, -1, "", None) == NONE
        assert new.heartbeat(GROUP, 1, joins[0].member_id, None) == UNKNOWN_MEMBER_ID
        old.close()
        new.close()

    asyncio.run(main())


@pytest.mark.parametrize("phase", ["PreparingRebalance", "CompletingRebalance"])
def test_mid_rebalance_group_comes_back_preparing_and_rebalances(phase: str) -> None:
    async def main() -> None:
        saved, persist = recorder()
        old = make(persist=persist)
        joins = await stable_group(old, 2)
        if phase == "PreparingRebalance":
            # A third member arrives: the group rebalances; nobody has rejoined yet.
            third = asyncio.ensure_future(join_new(old, "c2"))
            await let_tasks_run()
        else:
            # Everybody rejoins (the leader with new metadata), the join phase ends and the
            # SyncGroups have not come yet.
            rejoins = [
                asyncio.ensure_future(join(old, r.member_id, protocols=[("range", b"new")]))
                for r in joins
            ]
            await bounded(asyncio.gather(*rejoins))
            third = None
        assert old.describe_group(GROUP).state == phase
        await let_tasks_run()
        snap = last_snapshot(saved)
        assert snap.state == phase
        old.close()
        member_ids = [r.member_id for r in joins]
        if third is not None:
            # Answered at close; the new member is in the snapshot and rejoins like the rest.
            member_ids.append((await bounded(third)).member_id)

        new = make()
        new.restore(GROUP, saved[-1][2] or b"")
        assert new.describe_group(GROUP).state == "PreparingRebalance"
        generation = snap.generation_id
        # Members of the stored generation learn about the rebalance and rejoin with their ids.
        for r in joins:
            assert new.heartbeat(GROUP, generation, r.member_id, None) == REBALANCE_IN_PROGRESS
        rejoined = await bounded(asyncio.gather(*(join(new, m) for m in member_ids)))
        assert all(r.error == NONE for r in rejoined)
        assert {r.generation_id for r in rejoined} == {generation + 1}
        assert [r.member_id for r in rejoined] == member_ids
        leader = next(r for r in rejoined if r.member_id == r.leader)
        results = await bounded(
            asyncio.gather(
                *(sync(new, r) for r in rejoined if r is not leader),
                sync(new, leader, [(r.member_id, b"x") for r in rejoined]),
            )
        )
        assert [s.error for s in results] == [NONE] * len(member_ids)
        assert new.describe_group(GROUP).state == "Stable"
        new.close()

    asyncio.run(main())


def test_restored_member_that_is_gone_expires_and_the_rest_rebalance() -> None:
    async def main() -> None:
        saved, persist = recorder()
        old = make(persist=persist)
        # Session 200 ms: long enough for the setup, short enough to expire in the test.
        joins = await stable_group(old, 2, session_ms=200, rebalance_ms=LONG)
        await let_tasks_run()
        old.close()
        new = make()
        new.restore(GROUP, saved[-1][2] or b"")
        alive, dead = joins
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOUND
        # Only `alive` heartbeats; `dead` died with the old coordinator.
        while new.heartbeat(GROUP, 1, alive.member_id, None) == NONE:
            assert loop.time() < deadline, "the silent member never expired"
            await asyncio.sleep(0.02)
        assert new.heartbeat(GROUP, 1, alive.member_id, None) == REBALANCE_IN_PROGRESS
        assert [m.member_id for m in new.describe_group(GROUP).members] == [alive.member_id]
        rejoined = await bounded(join(new, alive.member_id, session_ms=200))
        assert rejoined.error == NONE and rejoined.generation_id == 2
        new.close()

    asyncio.run(main())


def test_static_member_rename_is_persisted() -> None:
    async def main() -> None:
        saved, persist = recorder()
        c = make(persist=persist)
        first = await bounded(join(c, instance="i-1"))
        await bounded(sync(c, first, [(first.member_id, b"mine")], instance="i-1"))
        again = await bounded(join(c, instance="i-1"))
        assert again.error == NONE and again.member_id != first.member_id
        await let_tasks_run()
        snap = last_snapshot(saved)
        assert [(m.member_id, m.group_instance_id) for m in snap.members] == [
            (again.member_id, "i-1")
        ]
        assert snap.leader_id == again.member_id and snap.state == "Stable"
        c.close()

    asyncio.run(main())


def test_delete_and_forgotten_groups_delete_their_state() -> None:
    async def main() -> None:
        saved, persist = recorder()
        c = make(persist=persist)
        joins = await stable_group(c, 1)
        c.leave_group(GROUP, [(joins[0].member_id, None)])
        await let_tasks_run()
        assert c.delete_group(GROUP) == NONE
        await let_tasks_run()
        assert saved[-1] == (GROUP, 2, None)
        # A MEMBER_ID_REQUIRED that is never followed up saves nothing at all.
        before = len(saved)
        first = await bounded(join(c, group="g2"))
        await let_tasks_run()
        assert first.error != NONE and len(saved) == before
        c.close()

    asyncio.run(main())


def test_snapshot_decoding_refuses_bad_blobs() -> None:
    good = GroupSnapshot(group_id="g", state="Empty", generation_id=3)
    assert decode_snapshot(encode_snapshot(good), "g") == good
    bad = {
        b"\xc1garbage": "unreadable",
        encode_snapshot(GroupSnapshot(format=2, group_id="g", state="Empty", generation_id=0)): (
            "format 2"
        ),
        encode_snapshot(GroupSnapshot(group_id="h", state="Empty", generation_id=0)): "group 'h'",
        encode_snapshot(GroupSnapshot(group_id="g", state="Dead", generation_id=0)): "Dead",
        encode_snapshot(GroupSnapshot(group_id="g", state="Stable", generation_id=1)): (
            "no members"
        ),
    }
    for blob, why in bad.items():
        with pytest.raises(SnapshotError, match=why):
            decode_snapshot(blob, "g")


# -------------------------------------------------------------------------- the I/O shell


def agent(name: str, node_id: int, alive: bool = True) -> AgentInfo:
    return AgentInfo(
        agent_id=name,
        node_id=node_id,
        kafka_host="127.0.0.1",
        kafka_port=9000 + node_id,
        grpc_address=f"127.0.0.1:{9100 + node_id}",
        zone="",
        started_at_ms=0,
        heartbeat_at_ms=0,
        lease_until_ms=0,
        alive=alive,
    )


ME, OTHER = agent("me", 0), agent("other", 1)


def group_of(view: ClusterView, owner: AgentInfo, prefix: str = "g") -> str:
    """A group id whose coordinator (over both agents) is `owner`."""
    for i in range(1000):
        if view.coordinator_for(f"{prefix}{i}").agent_id == owner.agent_id:
            return f"{prefix}{i}"
    raise AssertionError("no group id hashes to the agent")


@pytest.fixture
def db(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    yield tmp_path / "meta.db"


async def two_agent_shell(db: pathlib.Path) -> tuple[GroupShell, ClusterView, AsyncMetadata]:
    meta = await AsyncMetadata.open(db, forbid_loop_calls=True)
    view = ClusterView(ME)
    view.update([ME, OTHER])
    return GroupShell(make(), view, meta), view, meta


def test_shell_saves_loads_and_answers_not_coordinator(db: pathlib.Path) -> None:
    async def main() -> None:
        shell, view, meta = await two_agent_shell(db)
        mine, theirs = group_of(view, ME), group_of(view, OTHER)
        assert await shell.ensure(theirs) == NOT_COORDINATOR
        assert await shell.ensure(mine) == NONE
        c = shell.coordinator
        joins = await stable_group_named(c, mine, 2)
        await let_tasks_run()
        await shell.flush()
        stored = await meta.load_group_state(mine)
        assert stored is not None and stored[0] == 1
        assert decode_snapshot(stored[1], mine).state == "Stable"

        # Another agent (a fresh coordinator on the same store) takes the group over.
        other_view = ClusterView(OTHER)
        other_view.update([ME, OTHER])
        other_view.update([agent("me", 0, alive=False), OTHER])  # `me` died
        successor = GroupShell(make(), other_view, meta)
        assert successor.coordinates(mine)
        assert await successor.ensure(mine) == NONE
        s = successor.coordinator
        assert s.describe_group(mine).state == "Stable"
        for r in joins:
            assert s.heartbeat(mine, 1, r.member_id, None) == NONE
        c.close()
        s.close()
        await meta.close()

    asyncio.run(main())


async def stable_group_named(c: GroupCoordinator, group: str, n: int) -> list[Any]:
    joins = await bounded(asyncio.gather(*(join_new(c, f"c{i}", group=group) for i in range(n))))
    leader = next(r for r in joins if r.member_id == r.leader)
    results = await bounded(
        asyncio.gather(
            *(sync(c, r, group=group) for r in joins if r is not leader),
            sync(c, leader, [(r.member_id, b"a") for r in joins], group=group),
        )
    )
    assert all(s.error == NONE for s in results)
    return joins


def test_stale_save_drops_the_group_and_the_next_request_reloads_it(db: pathlib.Path) -> None:
    async def main() -> None:
        shell, view, meta = await two_agent_shell(db)
        mine = group_of(view, ME)
        assert await shell.ensure(mine) == NONE
        c = shell.coordinator
        joins = await stable_group_named(c, mine, 1)
        await let_tasks_run()
        await shell.flush()
        # Meanwhile another coordinator moved the group to generation 5.
        newer = GroupSnapshot(group_id=mine, state="Empty", generation_id=5)
        assert await meta.save_group_state(mine, 5, encode_snapshot(newer))
        # The member leaves here: this coordinator's save (generation 2) is refused.
        c.leave_group(mine, [(joins[0].member_id, None)])
        await let_tasks_run()
        await shell.flush()
        assert not c.known(mine), "a stale coordinator must drop the group"
        stored = await meta.load_group_state(mine)
        assert stored is not None and stored[0] == 5
        # The next request reloads the newer state.
        assert await shell.ensure(mine) == NONE
        described = c.describe_group(mine)
        assert described.state == "Empty"
        assert c.validate_offset_commit(mine, 2, joins[0].member_id, None) == UNKNOWN_MEMBER_ID
        c.close()
        await meta.close()

    asyncio.run(main())


def test_losing_coordination_answers_parked_requests_and_reloads_later(
    db: pathlib.Path,
) -> None:
    async def main() -> None:
        meta = await AsyncMetadata.open(db, forbid_loop_calls=True)
        view = ClusterView(ME)  # alone: every group is ours
        shell = GroupShell(make(), view, meta)
        c = shell.coordinator
        # The group that the other agent will own once it is alive.
        probe = ClusterView(ME)
        probe.update([ME, OTHER])
        moving = group_of(probe, OTHER)
        assert await shell.ensure(moving) == NONE
        joins = await stable_group_named(c, moving, 2)
        await let_tasks_run()
        await shell.flush()
        # One member rejoins with new metadata: parked until the other one rejoins.
        parked = asyncio.ensure_future(
            c.join_group(
                moving, joins[0].member_id, None, "consumer", [("range", b"v2")],
                LONG, LONG, "c0", "/127.0.0.1", True,
            )
        )  # fmt: skip
        await let_tasks_run()
        assert not parked.done()
        view.update([ME, OTHER])  # the other agent joins and now coordinates `moving`
        result = await bounded(parked)
        assert result.error == NOT_COORDINATOR
        assert not c.known(moving)
        assert await shell.ensure(moving) == NOT_COORDINATOR
        # The other agent rebalanced the group meanwhile (generation 7 stored) and left.
        newer = GroupSnapshot(group_id=moving, state="Empty", generation_id=7)
        assert await meta.save_group_state(moving, 7, encode_snapshot(newer))
        view.update([ME, agent("other", 1, alive=False)])
        assert await shell.ensure(moving) == NONE
        assert c.describe_group(moving).state == "Empty"  # reloaded, not the stale memory
        assert c.heartbeat(moving, 2, joins[1].member_id, None) == UNKNOWN_MEMBER_ID
        c.close()
        await meta.close()

    asyncio.run(main())


def test_unreadable_stored_state_starts_empty_at_its_generation(db: pathlib.Path) -> None:
    async def main() -> None:
        shell, view, meta = await two_agent_shell(db)
        mine = group_of(view, ME)
        assert await meta.save_group_state(mine, 4, b"\xc1 not msgpack")
        assert await shell.ensure(mine) == NONE
        c = shell.coordinator
        assert c.describe_group(mine).state == "Empty"
        assert c.validate_offset_commit(mine, 3, "m", None) == UNKNOWN_MEMBER_ID
        await let_tasks_run()
        await shell.flush()
        stored = await meta.load_group_state(mine)
        assert stored is not None and stored[0] == 4
        assert decode_snapshot(stored[1], mine).state == "Empty"  # the bad blob is replaced
        c.close()
        await meta.close()

    asyncio.run(main())


def test_concurrent_first_requests_all_wait_for_the_load(db: pathlib.Path) -> None:
    async def main() -> None:
        shell, view, meta = await two_agent_shell(db)
        mine = group_of(view, ME)
        snap = GroupSnapshot(group_id=mine, state="Empty", generation_id=2)
        assert await meta.save_group_state(mine, 2, encode_snapshot(snap))
        codes = await bounded(asyncio.gather(*(shell.ensure(mine) for _ in range(20))))
        assert codes == [NONE] * 20
        assert shell.coordinator.describe_group(mine).state == "Empty"
        shell.coordinator.close()
        await meta.close()

    asyncio.run(main())


def test_ensure_refuses_group_ids_the_store_cannot_hold(db: pathlib.Path) -> None:
    async def main() -> None:
        shell, _, meta = await two_agent_shell(db)
        assert await shell.ensure("x" * 256) == 24  # INVALID_GROUP_ID
        shell.coordinator.close()
        await meta.close()

    asyncio.run(main())


def test_coordinator_rejects_restore_over_a_held_group() -> None:
    async def main() -> None:
        c = make()
        await stable_group(c, 1)
        with pytest.raises(ValueError, match="already held"):
            c.restore(GROUP, c.snapshot(GROUP) or b"")
        c.close()

    asyncio.run(main())


def test_the_store_ends_with_the_newest_snapshot_of_every_change(db: pathlib.Path) -> None:
    async def main() -> None:
        shell, view, meta = await two_agent_shell(db)
        mine = group_of(view, ME)
        assert await shell.ensure(mine) == NONE
        c = shell.coordinator
        for round_no in range(3):  # joins, syncs and leaves in quick succession
            joins = await stable_group_named(c, mine, 2)
            stored_now = c.snapshot(mine)
            c.leave_group(mine, [(joins[0].member_id, None)])
            if round_no < 2:
                c.leave_group(mine, [(joins[1].member_id, None)])
        await let_tasks_run()
        await shell.flush()
        stored = await meta.load_group_state(mine)
        assert stored is not None and stored_now is not None
        assert stored[1] == c.snapshot(mine) != stored_now
        snapshot = decode_snapshot(stored[1], mine)
        assert (snapshot.state, len(snapshot.members)) == ("PreparingRebalance", 1)
        assert stored[0] == snapshot.generation_id == 5
        c.close()
        await meta.close()

    asyncio.run(main())


def test_a_join_storm_costs_a_few_saves_not_one_per_member() -> None:
    async def main() -> None:
        saved, persist = recorder()
        c = make(persist=persist)
        await stable_group(c, 20)
        await let_tasks_run()
        # The rebalance starting, the generation formed, the assignments stored.
        states = [decode_snapshot(blob or b"", GROUP).state for _, _, blob in saved]
        assert states == ["PreparingRebalance", "CompletingRebalance", "Stable"], states
        assert len(last_snapshot(saved).members) == 20
        c.close()

    asyncio.run(main())
