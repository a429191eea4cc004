"""Conformance: continuous queries' checkpoints (claim_query, commit_query_step and the
reads), on both backends. A step commit is fenced by the query's generation and step, commits
its output segment exactly as commit_segment does, and either all of it happens (log and
checkpoint) or none of it."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from typing import Any

import psycopg
import pytest

from metadata import (
    UNKNOWN_TOPIC_OR_PARTITION,
    BatchRef,
    BatchResult,
    BlockLocation,
    CommitBlock,
    DuplicateSegmentError,
    QueryCheckpoint,
    QueryFencedError,
    UnknownTopicError,
)
from metadata.async_store import AsyncMetadata
from metadata.commit_notice import COMMIT_CHANNEL, parse_commit_notification
from metadata.postgres import PostgresMetadataStore
from tests.conformance.conftest import Opener, Store
from tests.conformance.test_metadata_backends import _fail_commits


def block(topic_id: int, partition: int, counts: list[int], byte_offset: int = 0) -> CommitBlock:
    return CommitBlock(
        topic_id=topic_id,
        partition=partition,
        byte_offset=byte_offset,
        byte_length=100 * len(counts),
        max_timestamp=1000 + byte_offset,
        batches=[BatchRef(c) for c in counts],
        raw_length=90 * len(counts),
    )


def hwms(store: Store, topic_id: int) -> list[int]:
    return [p.high_watermark for p in store.list_partitions(topic_id)]


def expected_results(
    blocks: list[CommitBlock], start: dict[tuple[int, int], int]
) -> list[list[BatchResult]]:
    """Base offsets of non-idempotent batches, computed from the record counts alone: each
    batch starts where the previous one of its partition ended."""
    at = dict(start)
    out = []
    for b in blocks:
        tp = (b.topic_id, b.partition)
        row = []
        for batch in b.batches:
            row.append(BatchResult(at[tp]))
            at[tp] += batch.record_count
        out.append(row)
    return out


# --------------------------------------------------------------------------- claims


def test_claim_creates_the_row_then_bumps_the_generation_keeping_step_and_payload(
    store: Store,
) -> None:
    assert store.get_query_checkpoint("q") is None
    first = store.claim_query("q", 1000)
    assert first == QueryCheckpoint("q", 1, 0, b"", 1000)
    assert store.get_query_checkpoint("q") == first
    store.commit_query_step("q", 1, 1, b"state-1", None, 1500)
    second = store.claim_query("q", 2000)
    assert second == QueryCheckpoint("q", 2, 1, b"state-1", 2000)
    assert store.claim_query("q", 3000).generation == 3
    # Another query's generations are its own.
    assert store.claim_query("other", 3000).generation == 1
    assert store.get_query_checkpoint("q") == QueryCheckpoint("q", 3, 1, b"state-1", 3000)


def test_step_commits_advance_the_checkpoint_and_round_trip_the_payload(store: Store) -> None:
    rng = random.Random(9)
    gen = store.claim_query("q", 10).generation
    payloads = [bytes(range(256)), b"\x00" * 7, b"", rng.randbytes(1 << 20), b"\xff\x00end"]
    for step, payload in enumerate(payloads, start=1):
        assert store.commit_query_step("q", gen, step, payload, None, 100 + step) == []
        got = store.get_query_checkpoint("q")
        assert got == QueryCheckpoint("q", gen, step, payload, 100 + step)
        assert got is not None and type(got.payload) is bytes
    assert store.list_query_checkpoints() == [QueryCheckpoint("q", gen, 5, payloads[-1], 105)]


def test_list_is_sorted_by_name_and_delete_removes_the_row(store: Store) -> None:
    names = ["b", "a", "B", "a-2", "é"]
    for i, name in enumerate(names):
        store.claim_query(name, i)
    assert [c.name for c in store.list_query_checkpoints()] == sorted(names)
    assert store.delete_query_checkpoint("a") is True
    assert store.delete_query_checkpoint("a") is False
    assert store.get_query_checkpoint("a") is None
    assert [c.name for c in store.list_query_checkpoints()] == sorted(set(names) - {"a"})


# --------------------------------------------------------------------------- fencing


def test_old_generation_or_wrong_step_is_fenced_and_changes_nothing(store: Store) -> None:
    t = store.create_topic("out", 2)
    tid = t.topic_id
    old = store.claim_query("q", 1).generation
    store.commit_query_step("q", old, 1, b"one", ("segments/q1", 10, [block(tid, 0, [2])]), 2)
    new = store.claim_query("q", 3).generation
    assert new == old + 1
    before = store.get_query_checkpoint("q")
    attempts: list[tuple[int, int, str]] = [
        (old, 2, f"claimed by a newer runner \\(generation {new}\\); this runner must stop"),
        (new + 1, 2, f"claimed by a newer runner \\(generation {new}\\)"),
        (new, 1, "is at step 1, so step 1 cannot follow it"),
        (new, 3, "is at step 1, so step 3 cannot follow it"),
    ]
    for generation, step, match in attempts:
        seg = (f"segments/bad-{generation}-{step}", 10, [block(tid, 0, [3]), block(tid, 1, [1])])
        with pytest.raises(QueryFencedError, match=match):
            store.commit_query_step("q", generation, step, b"nope", seg, 4)
        assert store.known_segments([seg[0]]) == set()
    assert store.get_query_checkpoint("q") == before
    assert hwms(store, tid) == [2, 0]
    assert [b.segment_key for b in store.find_blocks(tid, 0, 0)] == ["segments/q1"]
    assert store.find_blocks(tid, 1, 0) == []
    # The current generation's next step goes through.
    store.commit_query_step("q", new, 2, b"two", None, 5)
    assert store.get_query_checkpoint("q") == QueryCheckpoint("q", new, 2, b"two", 5)


def test_a_dropped_query_fences_its_runner_even_after_the_name_is_reused(store: Store) -> None:
    """A runner of a dropped query is fenced; a query created again under the name starts
    at step 0 with an empty payload but at a newer generation, so that runner (which never
    committed: it would have been at step 0 too) cannot commit into the new query's row."""
    tid = store.create_topic("out", 1).topic_id
    stale = store.claim_query("q", 1).generation
    store.claim_query("keep", 1)
    assert store.delete_query_checkpoint("q") is True
    assert store.delete_query_checkpoint("q") is False
    assert store.delete_query_checkpoint("never") is False
    assert store.get_query_checkpoint("q") is None
    assert [c.name for c in store.list_query_checkpoints()] == ["keep"]
    with pytest.raises(QueryFencedError, match="query q has no checkpoint"):
        store.commit_query_step("q", stale, 1, b"x", ("k0", 1, [block(tid, 0, [1])]), 2)
    with pytest.raises(QueryFencedError, match="never claimed"):
        store.commit_query_step("never", 1, 1, b"x", None, 2)
    fresh = store.claim_query("q", 5)
    assert fresh == QueryCheckpoint("q", stale + 1, 0, b"", 5)
    with pytest.raises(QueryFencedError, match=f"newer runner \\(generation {stale + 1}\\)"):
        store.commit_query_step("q", stale, 1, b"x", ("k1", 1, [block(tid, 0, [1])]), 6)
    assert hwms(store, tid) == [0]
    store.commit_query_step("q", fresh.generation, 1, b"new", None, 7)
    # A drop after steps also forgets the payload and step.
    store.delete_query_checkpoint("q")
    assert store.claim_query("q", 8) == QueryCheckpoint("q", stale + 2, 0, b"", 8)


# --------------------------------------------------------------------------- the segment


def test_a_step_segment_gets_offsets_exactly_as_commit_segment(store: Store) -> None:
    """The same blocks committed by a query step (topic ``viaquery``) and by commit_segment
    (topic ``direct``) get the same results, rows and high watermarks; the offsets are the
    running sums of the record counts."""
    via = store.create_topic("viaquery", 3).topic_id
    direct = store.create_topic("direct", 3).topic_id
    gen = store.claim_query("q", 1).generation
    steps = [
        [([0], [3, 2]), ([2], [1]), ([0], [4])],
        [([1], [5]), ([0], [1, 1, 1])],
        [([2], [7, 1]), ([1], [2])],
    ]
    for n, step in enumerate(steps, start=1):

        def blocks(tid: int, step: list[tuple[list[int], list[int]]] = step) -> list[CommitBlock]:
            return [block(tid, p[0], counts, 200 * i) for i, (p, counts) in enumerate(step)]

        start = {(via, p): h for p, h in enumerate(hwms(store, via))}
        got = store.commit_query_step("q", gen, n, b"s%d" % n, (f"q/{n}", 999, blocks(via)), 10)
        ref = store.commit_segment(f"d/{n}", 999, blocks(direct))
        assert got == expected_results(blocks(via), start)
        assert [[r.base_offset for r in b] for b in got] == [
            [r.base_offset for r in b] for b in ref
        ]
        assert store.get_query_checkpoint("q") == QueryCheckpoint("q", gen, n, b"s%d" % n, 10)
    totals = [sum(sum(c) for p, c in itertools.chain(*steps) if p[0] == q) for q in range(3)]
    assert hwms(store, via) == hwms(store, direct) == totals

    def strip(found: list[BlockLocation]) -> list[tuple[Any, ...]]:
        return [(b.byte_offset, b.base_offset, b.end_offset, b.record_count) for b in found]

    for p in range(3):
        found = store.find_blocks(via, p, 0, limit=100)
        assert strip(found) == strip(store.find_blocks(direct, p, 0, limit=100))
        assert {b.segment_key for b in found} <= {"q/1", "q/2", "q/3"}
    usage = {u.key: u for u in store.live_segments()}
    assert usage["q/1"].size == 999
    report = store.storage_report(10**13, 0)
    raws = {ts.name: ts.bytes_raw for ts in report.topics}
    assert raws["viaquery"] == raws["direct"] > 0


def test_an_unknown_output_partition_leaves_log_and_checkpoint_unchanged(store: Store) -> None:
    tid = store.create_topic("out", 2).topic_id
    gen = store.claim_query("q", 1).generation
    store.commit_query_step("q", gen, 1, b"one", ("k1", 1, [block(tid, 0, [2])]), 2)
    before = store.get_query_checkpoint("q")
    bad = [block(tid, 0, [4]), block(tid, 1, [1]), block(tid, 2, [1]), block(tid + 77, 0, [1])]
    match = f"output partition\\(s\\) {tid}/2, {tid + 77}/0 of segment 'k2' do not exist"
    with pytest.raises(UnknownTopicError, match=match):
        store.commit_query_step("q", gen, 2, b"two", ("k2", 1, bad), 3)
    assert store.get_query_checkpoint("q") == before
    assert hwms(store, tid) == [2, 0]
    assert [b.segment_key for b in store.find_blocks(tid, 0, 0)] == ["k1"]
    assert store.find_blocks(tid, 1, 0) == []
    assert store.known_segments(["k1", "k2"]) == {"k1"}
    # commit_segment itself would have taken the good blocks (only the bad ones refused):
    # a query step never commits half a step.
    probe = store.commit_segment("probe", 1, [block(tid + 77, 0, [1])])
    assert probe == [[BatchResult(-1, UNKNOWN_TOPIC_OR_PARTITION)]]
    # The same step, retried with a good segment under the same key, commits.
    good = [block(tid, 0, [4]), block(tid, 1, [1])]
    assert store.commit_query_step("q", gen, 2, b"two", ("k2", 1, good), 3) == [
        [BatchResult(2)],
        [BatchResult(0)],
    ]
    assert hwms(store, tid) == [6, 1]


def test_a_segment_key_committed_before_fails_the_whole_step(store: Store) -> None:
    tid = store.create_topic("out", 1).topic_id
    gen = store.claim_query("q", 1).generation
    store.commit_query_step("q", gen, 1, b"one", ("k", 1, [block(tid, 0, [1])]), 2)
    with pytest.raises(DuplicateSegmentError, match="'k' is already committed"):
        store.commit_query_step("q", gen, 2, b"two", ("k", 1, [block(tid, 0, [5])]), 3)
    assert store.get_query_checkpoint("q") == QueryCheckpoint("q", gen, 1, b"one", 2)
    assert hwms(store, tid) == [1]


@pytest.mark.parametrize(
    "args, match",
    [
        (("", 1, 1, b"", None, 1), "query name must be 1..255"),
        (("q" * 256, 1, 1, b"", None, 1), "query name must be 1..255"),
        ((7, 1, 1, b"", None, 1), "query name must be a string"),
        (("q", 0, 1, b"", None, 1), "generation must be between 1"),
        (("q", 1, 0, b"", None, 1), "step must be between 1"),
        (("q", 1, True, b"", None, 1), "step must be an integer"),
        (("q", 1, 1, "text", None, 1), "payload must be bytes"),
        (("q", 1, 1, b"", None, -1), "now_ms must be between 0"),
        (("q", 1, 1, b"", ("k", 1), 1), "must be None or a \\(key, size, blocks\\) tuple"),
        (("q", 1, 1, b"", ("", 1, []), 1), "segment key must be a non-empty string"),
        (("q", 1, 1, b"", ("k", -1, []), 1), "segment size must be between 0"),
        (("q", 1, 1, b"", ("k", 1, [None]), 1), "must be a list of CommitBlock"),
    ],
)
def test_bad_step_arguments_are_refused_before_any_work(
    store: Store, args: tuple[Any, ...], match: str
) -> None:
    store.claim_query("q", 0)
    with pytest.raises(ValueError, match=match):
        store.commit_query_step(*args)
    assert store.get_query_checkpoint("q") == QueryCheckpoint("q", 1, 0, b"", 0)


def test_idempotent_output_batches_and_huge_payloads_are_refused(store: Store) -> None:
    tid = store.create_topic("out", 1).topic_id
    store.claim_query("q", 0)
    idem = CommitBlock(tid, 0, 0, 100, 1, [BatchRef(1, 5, 0, 0)])
    with pytest.raises(ValueError, match="non-idempotent, write them with producer_id -1"):
        store.commit_query_step("q", 1, 1, b"", ("k", 1, [idem]), 1)
    with pytest.raises(ValueError, match="keep operator state in the object store"):
        store.commit_query_step("q", 1, 1, bytes(16 * 1024 * 1024 + 1), None, 1)
    with pytest.raises(ValueError, match="query name"):
        store.claim_query("", 1)
    with pytest.raises(ValueError, match="now_ms"):
        store.claim_query("q", -5)
    assert hwms(store, tid) == [0]
    assert store.get_query_checkpoint("q") == QueryCheckpoint("q", 1, 0, b"", 0)


# --------------------------------------------------------------------------- concurrency


def test_concurrent_claims_get_distinct_generations(backend_opener: Opener) -> None:
    stores = [backend_opener() for _ in range(4)]
    stores[0].claim_query("q", 0)
    got: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(stores))

    def claim(s: Store) -> None:
        barrier.wait()
        for _ in range(5):
            g = s.claim_query("q", 1).generation
            with lock:
                got.append(g)

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(got) == list(range(2, 2 + 5 * len(stores)))


def test_racing_runners_commit_each_step_exactly_once(backend_opener: Opener) -> None:
    """Two stores (two connections, two processes' worth) commit the same steps of one
    generation at once, each with its own segment: per step exactly one wins, the other is
    fenced, and the log holds exactly the winners' records."""
    a, b = backend_opener(), backend_opener()
    tid = a.create_topic("out", 1).topic_id
    gen = a.claim_query("q", 0).generation
    steps = 15
    outcome: dict[str, list[tuple[int, str]]] = {"a": [], "b": []}

    def run(name: str, s: Store, count: int) -> None:
        for step in range(1, steps + 1):
            barrier.wait()
            seg = (f"{name}/{step}", 1, [block(tid, 0, [count])])
            try:
                s.commit_query_step("q", gen, step, f"{name}{step}".encode(), seg, step)
                outcome[name].append((step, "won"))
            except QueryFencedError:
                outcome[name].append((step, "fenced"))

    barrier = threading.Barrier(2)
    threads = [
        threading.Thread(target=run, args=("a", a, 1)),
        threading.Thread(target=run, args=("b", b, 1000)),
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    winners = []
    for step in range(1, steps + 1):
        results = {outcome[n][step - 1][1] for n in ("a", "b")}
        assert results == {"won", "fenced"}, (step, outcome)
        winners.append("a" if outcome["a"][step - 1][1] == "won" else "b")
    want_hwm = sum(1 if w == "a" else 1000 for w in winners)
    assert hwms(a, tid) == [want_hwm]
    keys = [loc.segment_key for loc in a.find_blocks(tid, 0, 0, limit=100)]
    assert keys == [f"{w}/{n}" for n, w in enumerate(winners, start=1)]
    cp = a.get_query_checkpoint("q")
    assert cp is not None and (cp.step, cp.payload) == (steps, f"{winners[-1]}{steps}".encode())


def _waiting_on_locks(dsn: str, holder_pid: int) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database() AND pid <> %s",
            (holder_pid,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_postgres_two_commits_queued_on_the_query_row_one_wins(postgres_dsn: str) -> None:
    """Both commits of step 1 are made to wait on the query row (held by a third
    connection) and so really run at the same time once it is released: one commits, the
    other then reads the row the winner left and is fenced; one segment in the log."""
    with (
        PostgresMetadataStore(postgres_dsn, busy_timeout_ms=30_000) as a,
        PostgresMetadataStore(postgres_dsn, busy_timeout_ms=30_000) as b,
    ):
        tid = a.create_topic("out", 1).topic_id
        gen = a.claim_query("q", 0).generation
        results: dict[str, object] = {}
        with psycopg.connect(postgres_dsn) as holder:
            holder.execute("SELECT 1 FROM query_checkpoints WHERE name = 'q' FOR UPDATE")
            pid = holder.info.backend_pid

            def run(name: str, s: Store, count: int) -> None:
                try:
                    seg = (f"{name}/1", 1, [block(tid, 0, [count])])
                    results[name] = s.commit_query_step("q", gen, 1, name.encode(), seg, 5)
                except QueryFencedError as exc:
                    results[name] = exc

            threads = [
                threading.Thread(target=run, args=("a", a, 3)),
                threading.Thread(target=run, args=("b", b, 4)),
            ]
            for th in threads:
                th.start()
            deadline = time.monotonic() + 20
            while _waiting_on_locks(postgres_dsn, pid) < 2:
                assert time.monotonic() < deadline, "the two commits never queued on the row"
                time.sleep(0.01)
            holder.commit()
        for th in threads:
            th.join()
        won = [n for n, r in results.items() if isinstance(r, list)]
        lost = [n for n, r in results.items() if isinstance(r, QueryFencedError)]
        assert len(won) == 1 and len(lost) == 1, results
        assert "is at step 1, so step 1 cannot follow it" in str(results[lost[0]])
        count = 3 if won[0] == "a" else 4
        assert results[won[0]] == [[BatchResult(0)]]
        assert hwms(a, tid) == [count]
        assert a.get_query_checkpoint("q") == QueryCheckpoint("q", gen, 1, won[0].encode(), 5)
        assert a.known_segments(["a/1", "b/1"]) == {f"{won[0]}/1"}


@pytest.mark.parametrize("first", ["commit", "claim"])
def test_postgres_a_claim_racing_a_step_commit_leaves_them_consistent(
    postgres_dsn: str, first: str
) -> None:
    """A new runner's claim and the old runner's step commit queue on the query row (held
    by a third connection), ``first`` queued first: whichever goes second sees the first.
    The step commits before the claim (its segment is in the log and the claimed row
    carries it) or is fenced by it (nothing of it anywhere)."""
    with (
        PostgresMetadataStore(postgres_dsn, busy_timeout_ms=30_000) as a,
        PostgresMetadataStore(postgres_dsn, busy_timeout_ms=30_000) as b,
    ):
        tid = a.create_topic("out", 1).topic_id
        gen = a.claim_query("q", 0).generation
        outcome: dict[str, object] = {}
        with psycopg.connect(postgres_dsn) as holder:
            holder.execute("SELECT 1 FROM query_checkpoints WHERE name = 'q' FOR UPDATE")
            pid = holder.info.backend_pid

            def commit() -> None:
                seg = ("q/1", 1, [block(tid, 0, [2])])
                try:
                    outcome["commit"] = a.commit_query_step("q", gen, 1, b"s1", seg, 1)
                except QueryFencedError as exc:
                    outcome["commit"] = exc

            def claim() -> None:
                outcome["claim"] = b.claim_query("q", 2)

            calls = {"commit": commit, "claim": claim}
            order = [first, *(set(calls) - {first})]
            threads = [threading.Thread(target=calls[c]) for c in order]
            deadline = time.monotonic() + 20
            for queued, th in enumerate(threads, start=1):
                th.start()
                while _waiting_on_locks(postgres_dsn, pid) < queued:  # lock queue is FIFO
                    assert time.monotonic() < deadline, "the calls never queued on the row"
                    time.sleep(0.01)
            holder.commit()
        for th in threads:
            th.join()
        claimed = outcome["claim"]
        assert isinstance(claimed, QueryCheckpoint) and claimed.generation == gen + 1
        committed = isinstance(outcome["commit"], list)
        assert committed == (first == "commit")
        if not committed:
            assert "newer runner" in str(outcome["commit"])
        assert (claimed.step, claimed.payload) == ((1, b"s1") if committed else (0, b""))
        assert hwms(a, tid) == ([2] if committed else [0])
        assert a.known_segments(["q/1"]) == ({"q/1"} if committed else set())
        assert a.get_query_checkpoint("q") == claimed


# --------------------------------------------------------------------------- notices


def _drain(conn: psycopg.Connection[Any], quiet_s: float = 0.3) -> list[str]:
    got: list[str] = []
    while True:
        batch = [n.payload for n in conn.notifies(timeout=quiet_s, stop_after=1)]
        if not batch:
            return got
        got.extend(batch)


def test_postgres_a_step_segment_is_announced_once_and_only_when_committed(
    postgres_dsn: str,
) -> None:
    with PostgresMetadataStore(postgres_dsn) as s:
        tid = s.create_topic("out", 2).topic_id
        gen = s.claim_query("q", 0).generation
        listener = psycopg.connect(postgres_dsn, autocommit=True)
        try:
            listener.execute(f"LISTEN {COMMIT_CHANNEL}")
            seg = ("q/1", 10, [block(tid, 0, [2, 3]), block(tid, 1, [1], byte_offset=200)])
            s.commit_query_step("q", gen, 1, b"1", seg, 1)
            s.commit_query_step("q", gen, 2, b"2", None, 2)  # no segment: no notice
            with pytest.raises(QueryFencedError):
                s.commit_query_step("q", gen, 2, b"x", ("q/fenced", 1, [block(tid, 0, [1])]), 3)
            with pytest.raises(UnknownTopicError):
                s.commit_query_step("q", gen, 3, b"x", ("q/bad", 1, [block(tid, 5, [1])]), 3)
            assert [parse_commit_notification(p) for p in _drain(listener)] == [
                ("q/1", [(tid, 0, 0, 200, 5), (tid, 1, 200, 100, 1)])
            ]
        finally:
            listener.close()


# --------------------------------------------------------------------------- async


def test_async_metadata_wraps_the_query_calls(open_store: Opener) -> None:
    store = open_store(forbid_loop_calls=True)
    tid = store.create_topic("out", 1).topic_id

    async def main() -> None:
        meta = AsyncMetadata(store)
        try:
            cp = await meta.claim_query("q", 7)
            assert cp == QueryCheckpoint("q", 1, 0, b"", 7)
            res = await meta.commit_query_step("q", 1, 1, b"p", ("k", 1, [block(tid, 0, [2])]), 8)
            assert res == [[BatchResult(0)]]
            assert await meta.get_query_checkpoint("q") == QueryCheckpoint("q", 1, 1, b"p", 8)
            assert [c.name for c in await meta.list_query_checkpoints()] == ["q"]
            with pytest.raises(QueryFencedError):
                await meta.commit_query_step("q", 1, 1, b"p", None, 9)
            assert await meta.delete_query_checkpoint("q") is True
            assert await meta.get_query_checkpoint("q") is None
            state = await meta.get_partition(tid, 0)
            assert state is not None and state.high_watermark == 2
        finally:
            await meta.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- lost connections


@pytest.mark.parametrize("committed", [True, False])
def test_postgres_a_step_whose_commit_was_lost_happens_exactly_once(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    """The connection drops at COMMIT: either after the server committed (the store asks it
    and returns the result, rather than retrying into QueryFencedError) or before (the store
    retries the whole step). Either way the step, its segment and its notice happen once."""
    with PostgresMetadataStore(postgres_dsn) as s:
        tid = s.create_topic("out", 1).topic_id
        gen = s.claim_query("q", 0).generation
        listener = psycopg.connect(postgres_dsn, autocommit=True)
        try:
            listener.execute(f"LISTEN {COMMIT_CHANNEL}")
            hits = _fail_commits(monkeypatch, 1, committed=committed)
            res = s.commit_query_step("q", gen, 1, b"one", ("k1", 1, [block(tid, 0, [3])]), 1)
            monkeypatch.undo()
            assert hits == [1]
            assert res == [[BatchResult(0)]]
            assert s.get_query_checkpoint("q") == QueryCheckpoint("q", gen, 1, b"one", 1)
            assert hwms(s, tid) == [3]
            assert [p.split("|")[1] for p in _drain(listener)] == ["k1"]
        finally:
            listener.close()
