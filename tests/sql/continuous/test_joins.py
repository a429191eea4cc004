"""Join stages (sql/continuous/joins.py) against references computed independently.

Inputs are Nexmark-shaped (bench/nexmark: person, auction, bid at 200 events/s of event time,
so a few thousand events span tens of seconds). A *schedule* interleaves batches of the
inputs in time order (random batch sizes), each followed by its input's watermark (max time
seen minus 4 s, as the Nexmark declarations say), and ends with watermarks far in the
future. The stage is fed the schedule; the reference is plain Python over whole inputs: a
nested loop (pairs grouped by the equi key, then the condition checked in Python), over the
rows that were not late when fed (a row below its side's watermark at its batch), or, for
the stream-table join, the table as it was when each stream batch arrived. Output rows are
compared as multisets.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlglot

from bench.nexmark.generator import AUCTION_SCHEMA, BID_SCHEMA, PERSON_SCHEMA, Generator
from bench.nexmark.model import ModelConfig
from sql.continuous.join_condition import WINDOW_META_KEY
from sql.continuous.joins import JoinError, plan_join
from sql.continuous.pipeline import PlanError, PlannedInput
from sql.windows import Aggregate, Tumble, WindowAggregate

DELAY_MS = 4000
FAR = 2**62
TS = pa.timestamp("ms")

Step = tuple[str, str, Any]  # ("batch" | "wm", input name, RecordBatch | int)


def cond(sql: str) -> sqlglot.exp.Expression:
    return sqlglot.parse_one(sql, dialect="postgres")


def nexmark(events: int, seed: int = 7) -> dict[str, pa.Table]:
    gen = Generator(seed, ModelConfig(rate=200))
    chunk = next(gen.chunks(events))
    return {"person": chunk.person, "auction": chunk.auction, "bid": chunk.bid}


def shake(table: pa.Table, column: str, fraction: float, seed: int) -> pa.Table:
    """Move a fraction of the rows back in time by up to 3 delays (some become late)."""
    rng = np.random.default_rng(seed)
    ms = table.column(column).cast(pa.int64()).to_numpy()
    moved = rng.random(len(ms)) < fraction
    ms = ms - np.where(moved, rng.integers(0, 3 * DELAY_MS, len(ms)), 0)
    idx = table.schema.get_field_index(column)
    return table.set_column(idx, column, pa.array(ms, pa.int64()).cast(TS))


def schedule(inputs: dict[str, tuple[pa.Table, str | None]], seed: int) -> list[Step]:
    """Batches of every input in time order, each followed by its watermark; then FAR."""
    rng = random.Random(seed)
    pieces: list[tuple[int, float, str, pa.RecordBatch]] = []
    for name, (table, time_column) in inputs.items():
        start = 0
        while start < table.num_rows:
            size = rng.randint(1, max(2, table.num_rows // 12))
            piece = table.slice(start, size)
            order = start
            if time_column is not None:
                order = int(pc.min(piece.column(time_column).cast(pa.int64())).as_py())
            pieces.append((order, rng.random(), name, piece.combine_chunks().to_batches()[0]))
            start += size
    pieces.sort(key=lambda p: (p[0], p[1]))
    steps: list[Step] = []
    seen: dict[str, int] = {}
    for _, _, name, batch in pieces:
        steps.append(("batch", name, batch))
        time_column = inputs[name][1]
        if time_column is not None:
            top = int(pc.max(batch.column(time_column).cast(pa.int64())).as_py())
            seen[name] = max(seen.get(name, top), top)
            steps.append(("wm", name, seen[name] - DELAY_MS))
    for name, (_, time_column) in inputs.items():
        if time_column is not None:
            steps.append(("wm", name, FAR))
    return steps


def run(stage: Any, steps: list[Step], sizes: list[tuple[int, int]] | None = None) -> list[tuple]:
    out: list[pa.RecordBatch] = []
    for kind, name, value in steps:
        if kind == "batch":
            out += stage.process(name, value)
        else:
            out += stage.advance_watermark(name, value)
        if sizes is not None:
            sizes.append(stage.buffered_rows())
    for b in out:
        assert b.schema == stage.output_schema
    return [tuple(r.values()) for b in out for r in b.to_pylist()]


def kept_rows(steps: list[Step], name: str, time_column: str) -> list[dict]:
    """The rows of input ``name`` not below its own watermark when their batch was fed."""
    wm: int | None = None
    rows = []
    for kind, n, value in steps:
        if n != name:
            continue
        if kind == "wm":
            wm = value if wm is None else max(wm, value)
            continue
        for r in value.to_pylist():
            t = r[time_column]
            if t is None:
                continue
            ms = int(t.timestamp() * 1000) if not isinstance(t, int) else t
            if wm is None or ms >= wm:
                rows.append(r)
    return rows


def all_rows(steps: list[Step], name: str) -> list[dict]:
    return [r for kind, n, v in steps if kind == "batch" and n == name for r in v.to_pylist()]


def nested_loop(
    left: list[dict],
    right: list[dict],
    left_key: str,
    right_key: str,
    match: Callable[[dict, dict], bool],
    kind: str,
    right_names: list[str],
) -> list[tuple]:
    by_key: dict[Any, list[dict]] = defaultdict(list)
    for r in right:
        by_key[r[right_key]].append(r)
    out = []
    for lrow in left:
        hits = [r for r in by_key.get(lrow[left_key], []) if match(lrow, r)]
        if lrow[left_key] is None:
            hits = []
        for r in hits:
            out.append(tuple(lrow.values()) + tuple(r.values()))
        if not hits and kind == "left":
            out.append(tuple(lrow.values()) + (None,) * len(right_names))
    return out


def stream(name: str, alias: str, schema: pa.Schema, time_column: str | None) -> PlannedInput:
    return PlannedInput(name, alias, schema, time_column)


AUCTION = stream("auction", "A", AUCTION_SCHEMA, "dateTime")
PERSON = stream("person", "P", PERSON_SCHEMA, "dateTime")
BID = stream("bid", "B", BID_SCHEMA, "dateTime")


# -- regular join (q3-like: auction x person by seller = id) ----------------------------------


def test_regular_join_keeps_state_and_matches_nested_loop() -> None:
    data = nexmark(6000)
    steps = schedule(
        {"auction": (data["auction"], "dateTime"), "person": (data["person"], "dateTime")}, 1
    )
    stage = plan_join(AUCTION, PERSON, cond("A.seller = P.id"), "inner", "j")
    assert stage.algorithm == "regular"
    assert stage.output_time_column == "A__dateTime"
    assert stage.output_schema.names[0] == "A__id" and "P__name" in stage.output_schema.names
    sizes: list[tuple[int, int]] = []
    got = run(stage, steps, sizes)
    want = nested_loop(
        all_rows(steps, "auction"),
        all_rows(steps, "person"),
        "seller",
        "id",
        lambda a, p: True,
        "inner",
        PERSON_SCHEMA.names,
    )
    assert len(want) > 200
    assert Counter(got) == Counter(want)
    # state is kept for ever: never shrinks, ends holding every row
    assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in zip(sizes, sizes[1:], strict=False))
    assert sizes[-1] == (data["auction"].num_rows, data["person"].num_rows)
    assert stage.stats.late_rows_dropped == 0
    # any kept auction may still match: the output watermark stays at the earliest one
    earliest = pc.min(data["auction"].column("dateTime").cast(pa.int64())).as_py()
    assert stage.output_watermark() == earliest


def test_regular_join_residual_condition_and_cast_keys() -> None:
    """A non-equi conjunct is evaluated on the candidates; keys of different integer types
    are joined after a cast."""
    data = nexmark(4000)
    person32 = data["person"].set_column(0, "id", pc.cast(data["person"].column("id"), pa.int32()))
    p32 = stream("person", "P", person32.schema, "dateTime")
    steps = schedule(
        {"auction": (data["auction"], "dateTime"), "person": (person32, "dateTime")}, 2
    )
    stage = plan_join(
        AUCTION,
        p32,
        cond("A.seller = P.id AND A.reserve > P.id * 2 AND P.\"state\" <> 'OR'"),
        "inner",
        "j",
    )
    got = run(stage, steps)
    want = nested_loop(
        all_rows(steps, "auction"),
        all_rows(steps, "person"),
        "seller",
        "id",
        lambda a, p: a["reserve"] > p["id"] * 2 and p["state"] != "OR",
        "inner",
        PERSON_SCHEMA.names,
    )
    assert want and Counter(got) == Counter(want)


# -- stream-table lookup join (q3-like with person as a table) ---------------------------------


def person_table_log(people: pa.Table, seed: int) -> pa.Table:
    """People as a table's upsert log: ``_key`` = id, later a renamed copy of some, and
    tombstones (declared columns null) for others."""
    rng = np.random.default_rng(seed)
    keys = pc.cast(pc.cast(people.column("id"), pa.string()), pa.binary())
    log = people.append_column("_key", keys)
    n = people.num_rows
    renamed = log.filter(pa.array(rng.random(n) < 0.3))
    renamed = renamed.set_column(
        1, "name", pc.binary_join_element_wise(renamed.column("name"), "v2", " ")
    )
    dead = log.filter(pa.array(rng.random(n) < 0.2))
    nulls = [pa.nulls(dead.num_rows, f.type) for f in PERSON_SCHEMA]
    tomb = pa.Table.from_arrays([*nulls, dead.column("_key")], schema=log.schema)
    # updates and deletes come a little after the original rows
    shift = pa.array(np.full(renamed.num_rows, 7000, np.int64))
    renamed = renamed.set_column(
        6, "dateTime", pc.add(renamed.column("dateTime"), shift.cast(pa.duration("ms")))
    )
    mixed = pa.concat_tables([log, renamed, tomb])
    tomb_times = pc.add(
        dead.column("dateTime"), pa.array(np.full(dead.num_rows, 9000)).cast(pa.duration("ms"))
    )
    order_ms = pa.concat_arrays(
        [
            log.column("dateTime").combine_chunks(),
            renamed.column("dateTime").combine_chunks(),
            tomb_times.combine_chunks(),
        ]
    ).cast(pa.int64())
    return mixed.take(pc.sort_indices(order_ms))


def lookup_reference(steps: list[Step], kind: str) -> list[tuple]:
    table: dict[bytes, dict] = {}
    out = []
    for k, name, value in steps:
        if k != "batch":
            continue
        if name == "person":
            for r in value.to_pylist():
                declared = [r[f] for f in PERSON_SCHEMA.names]
                if all(v is None for v in declared):
                    table.pop(r["_key"], None)
                else:
                    table[r["_key"]] = r
            continue
        for a in value.to_pylist():
            hits = [p for p in table.values() if p["id"] == a["seller"] and a["seller"] is not None]
            out += [tuple(a.values()) + tuple(p.values()) for p in hits]
            if not hits and kind == "left":
                out.append(tuple(a.values()) + (None,) * (len(PERSON_SCHEMA) + 1))
    return out


@pytest.mark.parametrize("kind", ["inner", "left"])
def test_lookup_join_against_latest_table_rows(kind: str) -> None:
    data = nexmark(8000, seed=3)
    log = person_table_log(data["person"], 5)
    table = PlannedInput("person", "P", log.schema, None, is_table=True, key_columns=("_key",))
    steps = interleave_table(schedule({"auction": (data["auction"], "dateTime")}, 4), log)
    stage = plan_join(AUCTION, table, cond("A.seller = P.id"), kind, "j")
    assert stage.algorithm == "lookup"
    got = run(stage, steps)
    want = lookup_reference(steps, kind)
    assert Counter(got) == Counter(want)
    names = [r[len(AUCTION_SCHEMA) + 1] for r in got if r[-1] is not None]
    assert any(n.endswith(" v2") for n in names) and not all(n.endswith(" v2") for n in names)
    if kind == "left":
        assert any(r[-1] is None for r in got)
    live = {r["_key"]: r for r in log.to_pylist()}
    alive = sum(1 for r in live.values() if r["id"] is not None)
    assert stage.buffered_rows() == (0, alive)
    assert stage.output_watermark() == FAR


def interleave_table(steps: list[Step], log: pa.Table) -> list[Step]:
    """Replace the table's batches: cut the log in time order and put each cut before the
    first auction batch that starts after it (the table is read as it is written)."""
    rng = random.Random(9)
    cuts, start = [], 0
    while start < log.num_rows:
        size = rng.randint(1, 40)
        cuts.append(log.slice(start, size).combine_chunks().to_batches()[0])
        start += size
    out: list[Step] = []
    pos = 0
    for step in steps:
        if step[1] == "person":
            continue
        if step[0] == "batch":
            first = int(pc.min(step[2].column("dateTime").cast(pa.int64())).as_py())
            while pos < len(cuts) and _first_ms(cuts[pos]) <= first:
                out.append(("batch", "person", cuts[pos]))
                pos += 1
        out.append(step)
    out += [("batch", "person", c) for c in cuts[pos:]]
    return out


def _first_ms(batch: pa.RecordBatch) -> int:
    values = [v for v in batch.column("dateTime").cast(pa.int64()).to_pylist() if v is not None]
    return min(values) if values else -1


# -- interval join: bids within their auction's [dateTime, expires] ------------------------------

BID_AUCTION = 'B.auction = A.id AND B."dateTime" BETWEEN A."dateTime" AND A.expires'


def within_auction(b: dict, a: dict) -> bool:
    return a["dateTime"] <= b["dateTime"] <= a["expires"]


@pytest.mark.parametrize("kind", ["inner", "left"])
def test_interval_join_bids_to_auctions_prunes_and_drops_late_rows(kind: str) -> None:
    data = nexmark(12000, seed=11)
    bids = shake(data["bid"], "dateTime", 0.05, 1)
    auctions = shake(data["auction"], "dateTime", 0.05, 2)
    steps = schedule({"bid": (bids, "dateTime"), "auction": (auctions, "dateTime")}, 5)
    stage = plan_join(BID, AUCTION, cond(BID_AUCTION), kind, "j")
    assert stage.algorithm == "interval"
    sizes: list[tuple[int, int]] = []
    got = run(stage, steps, sizes)
    kept_b = kept_rows(steps, "bid", "dateTime")
    kept_a = kept_rows(steps, "auction", "dateTime")
    late = bids.num_rows + auctions.num_rows - len(kept_b) - len(kept_a)
    assert late > 10 and stage.stats.late_rows_dropped == late
    want = nested_loop(kept_b, kept_a, "auction", "id", within_auction, kind, AUCTION_SCHEMA.names)
    assert len(want) > 1000
    assert Counter(got) == Counter(want)
    if kind == "left":
        assert any(r[-1] is None for r in got)
    # state is pruned as watermarks pass: it shrinks, stays well below the input, ends empty
    totals = [a + b for a, b in sizes]
    assert any(b < a for a, b in zip(totals, totals[1:], strict=False))
    assert max(totals) < 0.5 * (bids.num_rows + auctions.num_rows)
    assert sizes[-1] == (0, 0)


def test_interval_join_constant_bounds_written_either_way() -> None:
    data = nexmark(6000, seed=13)
    bids = shake(data["bid"], "dateTime", 0.05, 3)
    for text in (
        'B.auction = A.id AND B."dateTime" BETWEEN A."dateTime" '
        "AND A.\"dateTime\" + INTERVAL '10' SECOND",
        'A.id = B.auction AND A."dateTime" >= B."dateTime" - INTERVAL \'10 seconds\' '
        'AND A."dateTime" <= B."dateTime"',
    ):
        steps = schedule({"auction": (data["auction"], "dateTime"), "bid": (bids, "dateTime")}, 6)
        stage = plan_join(AUCTION, BID, cond(text), "left", "j")
        assert stage.info.bounds[0] and stage.info.bounds[1]
        sizes: list[tuple[int, int]] = []
        got = run(stage, steps, sizes)

        def near(a: dict, b: dict) -> bool:
            return 0 <= (b["dateTime"] - a["dateTime"]).total_seconds() <= 10

        want = nested_loop(
            kept_rows(steps, "auction", "dateTime"),
            kept_rows(steps, "bid", "dateTime"),
            "id",
            "auction",
            near,
            "left",
            BID_SCHEMA.names,
        )
        assert want and Counter(got) == Counter(want)
        assert max(a + b for a, b in sizes) < 0.5 * (data["auction"].num_rows + bids.num_rows)
        # the output watermark never passes a row still to come
        assert stage.output_watermark() == FAR


def test_interval_left_join_null_time_rows_are_unmatched_at_once() -> None:
    schema = pa.schema([("k", pa.int64()), ("t", pa.int64())])
    left = PlannedInput("l", "L", schema, "t")
    right = PlannedInput("r", "R", schema, "t")
    stage = plan_join(left, right, cond("L.k = R.k AND R.t BETWEEN L.t AND L.t + 5"), "left", "j")
    stage.process("r", pa.record_batch({"k": [1, 2], "t": [10, 10]}, schema=schema))
    out = stage.process("l", pa.record_batch({"k": [1, 2], "t": [8, None]}, schema=schema))
    rows = sorted(tuple(r.values()) for b in out for r in b.to_pylist())
    assert rows == [(1, 8, 1, 10), (2, None, None, None)]
    assert stage.stats.null_time_rows == 1
    # a left row waiting for a match is emitted unmatched once the right watermark passes it
    assert stage.process("l", pa.record_batch({"k": [3], "t": [20]}, schema=schema)) == []
    assert stage.advance_watermark("r", 25) == []
    out = stage.advance_watermark("r", 26)
    assert [tuple(r.values()) for b in out for r in b.to_pylist()] == [(3, 20, None, None)]


def test_self_join_on_one_input() -> None:
    """Both sides read the same input (bids of one auction within 2 s of each other)."""
    data = nexmark(3000, seed=17)
    b1 = PlannedInput("bid", "B1", BID_SCHEMA, "dateTime")
    b2 = PlannedInput("bid", "B2", BID_SCHEMA, "dateTime")
    text = (
        'B1.auction = B2.auction AND B2."dateTime" BETWEEN B1."dateTime" '
        "AND B1.\"dateTime\" + INTERVAL '2' SECOND"
    )
    stage = plan_join(b1, b2, cond(text), "inner", "j")
    steps = schedule({"bid": (data["bid"], "dateTime")}, 8)
    got = run(stage, steps)
    rows = kept_rows(steps, "bid", "dateTime")

    def near(x: dict, y: dict) -> bool:
        return 0 <= (y["dateTime"] - x["dateTime"]).total_seconds() <= 2

    want = nested_loop(rows, rows, "auction", "auction", near, "inner", BID_SCHEMA.names)
    assert len(want) > len(rows) and Counter(got) == Counter(want)


# -- window join (q8-like: people and their auctions per 10 s tumble) ---------------------------

WINDOW_MS = 10_000


def windowed(table: pa.Table, keys: list[str], marked: bool) -> tuple[WindowAggregate, pa.Schema]:
    op = WindowAggregate(
        table.schema, Tumble(WINDOW_MS), "dateTime", keys, [Aggregate("count", None, "n")]
    )
    schema = op.output_schema()
    if marked:  # as the planner marks a windowed sub-query's bounds
        names = [
            "starttime" if n == "window_start" else "endtime" if n == "window_end" else n
            for n in schema.names
        ]
        fields = [
            f.with_name(n).with_metadata(
                {WINDOW_META_KEY: b"start" if n == "starttime" else b"end"}
            )
            if n in ("starttime", "endtime")
            else f.with_name(n)
            for f, n in zip(schema, names, strict=True)
        ]
        schema = pa.schema(fields)
    return op, schema


def window_steps(
    data: dict[str, pa.Table], marked: bool, seed: int
) -> tuple[list[Step], pa.Schema, pa.Schema]:
    """The raw schedule run through a window aggregate per input: its emissions are the
    window join's batches, each followed by that input's watermark."""
    raw = schedule(
        {"person": (data["person"], "dateTime"), "auction": (data["auction"], "dateTime")}, seed
    )
    ops = {
        "person": windowed(data["person"], ["id", "name"], marked),
        "auction": windowed(data["auction"], ["seller"], marked),
    }
    steps: list[Step] = []
    for kind, name, value in raw:
        op, schema = ops[name]
        if kind == "batch":
            op.process(value)
            continue
        emitted = op.advance_watermark(min(value, 2**60))
        if emitted.num_rows:
            steps.append(
                ("batch", name, pa.RecordBatch.from_arrays(emitted.columns, schema=schema))
            )
        steps.append(("wm", name, value))
    return steps, ops["person"][1], ops["auction"][1]


@pytest.mark.parametrize(("kind", "marked"), [("inner", True), ("left", False)])
def test_window_join_people_and_auctions_per_window(kind: str, marked: bool) -> None:
    data = nexmark(12000, seed=19)
    steps, pschema, aschema = window_steps(data, marked, 7)
    start, end = ("starttime", "endtime") if marked else ("window_start", "window_end")
    p = PlannedInput("p_win", "P", pschema, end)
    a = PlannedInput("a_win", "A", aschema, end)
    steps = [(k, "p_win" if n == "person" else "a_win", v) for k, n, v in steps]
    text = f"P.id = A.seller AND P.{start} = A.{start} AND P.{end} = A.{end}"
    stage = plan_join(p, a, cond(text), kind, "j")
    assert stage.algorithm == "window"
    sizes: list[tuple[int, int]] = []
    got = run(stage, steps, sizes)

    # reference from the raw events: per 10 s window, people (id, name, count) and sellers
    def win(t: Any) -> int:
        return int(t.timestamp() * 1000) // WINDOW_MS * WINDOW_MS

    people: Counter = Counter(
        (r["id"], r["name"], win(r["dateTime"])) for r in data["person"].to_pylist()
    )
    sellers: Counter = Counter(
        (r["seller"], win(r["dateTime"])) for r in data["auction"].to_pylist()
    )
    want = []
    for (pid, name, w), n in people.items():
        row = (pid, name, w, w + WINDOW_MS, n)
        if (pid, w) in sellers:
            want.append(row + (pid, w, w + WINDOW_MS, sellers[(pid, w)]))
        elif kind == "left":
            want.append(row + (None,) * 4)
    norm = [
        tuple(int(v.timestamp() * 1000) if hasattr(v, "timestamp") else v for v in r) for r in got
    ]
    assert len({r[2] for r in want}) >= 4 and sum(1 for r in want if r[-1] is not None) > 3
    assert Counter(norm) == Counter(want)
    totals = [x + y for x, y in sizes]
    assert any(b < a for a, b in zip(totals, totals[1:], strict=False)) and sizes[-1] == (0, 0)


def test_window_join_drops_rows_of_emitted_windows() -> None:
    schema = pa.schema(
        [("k", pa.int64()), ("window_start", pa.int64()), ("window_end", pa.int64())]
    )
    left = PlannedInput("l", "L", schema, "window_end")
    right = PlannedInput("r", "R", schema, "window_end")
    text = "L.k = R.k AND L.window_start = R.window_start AND L.window_end = R.window_end"
    stage = plan_join(left, right, cond(text), "inner", "j")
    batch = pa.record_batch(
        {"k": [1, 2], "window_start": [0, 10], "window_end": [10, 20]}, schema=schema
    )
    assert stage.process("l", batch) == [] and stage.process("r", batch) == []
    assert stage.advance_watermark("l", 10) == []  # the right side has no watermark yet
    out = stage.advance_watermark("r", 12)
    assert [tuple(r.values()) for b in out for r in b.to_pylist()] == [(1, 0, 10, 1, 0, 10)]
    assert stage.buffered_rows() == (1, 1)
    assert stage.process("l", batch) == []  # window [0, 10) was emitted: its row is late
    assert stage.stats.late_rows_dropped == 1
    out = stage.advance_watermark("l", 20) + stage.advance_watermark("r", 20)
    assert (
        sorted(tuple(r.values()) for b in out for r in b.to_pylist())
        == [(2, 10, 20, 2, 10, 20)] * 2
    )
    assert stage.buffered_rows() == (0, 0)


# -- snapshot / restore -----------------------------------------------------------------------


def scenarios() -> dict[str, tuple[Callable[[], Any], list[Step]]]:
    data = nexmark(8000, seed=23)
    bids = shake(data["bid"], "dateTime", 0.05, 4)
    log = person_table_log(data["person"], 6)
    table = PlannedInput("person", "P", log.schema, None, is_table=True, key_columns=("_key",))
    lookup_steps = interleave_table(schedule({"auction": (data["auction"], "dateTime")}, 9), log)
    wsteps, pschema, aschema = window_steps(data, True, 10)
    wsteps = [(k, "p_win" if n == "person" else "a_win", v) for k, n, v in wsteps]
    p = PlannedInput("p_win", "P", pschema, "endtime")
    a = PlannedInput("a_win", "A", aschema, "endtime")
    return {
        "regular": (
            lambda: plan_join(AUCTION, PERSON, cond("A.seller = P.id"), "inner", "j"),
            schedule(
                {"auction": (data["auction"], "dateTime"), "person": (data["person"], "dateTime")},
                11,
            ),
        ),
        "lookup": (
            lambda: plan_join(AUCTION, table, cond("A.seller = P.id"), "left", "j"),
            lookup_steps,
        ),
        "interval": (
            lambda: plan_join(BID, AUCTION, cond(BID_AUCTION), "left", "j"),
            schedule({"bid": (bids, "dateTime"), "auction": (data["auction"], "dateTime")}, 12),
        ),
        "window": (
            lambda: plan_join(
                p,
                a,
                cond("P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime"),
                "left",
                "j",
            ),
            wsteps,
        ),
    }


@pytest.mark.parametrize("algorithm", ["regular", "lookup", "interval", "window"])
def test_restored_stage_fed_the_rest_gives_the_same_results(algorithm: str) -> None:
    make, steps = scenarios()[algorithm]
    whole = make()
    assert whole.algorithm == algorithm
    want = run(whole, steps)
    assert want
    for cut in (1, len(steps) // 3, len(steps) * 2 // 3, len(steps) - 1):
        first = make()
        got = run(first, steps[:cut])
        snap = first.snapshot()
        second = make()
        second.restore(snap)
        assert second.buffered_rows() == first.buffered_rows()
        assert second.output_watermark() == first.output_watermark()
        got += run(second, steps[cut:])
        assert Counter(got) == Counter(want), f"cut at step {cut}"
        assert second.stats == whole.stats


def test_snapshot_of_another_join_or_damaged_is_refused() -> None:
    stage = plan_join(BID, AUCTION, cond(BID_AUCTION), "left", "j")
    other = plan_join(BID, AUCTION, cond(BID_AUCTION), "inner", "j")
    with pytest.raises(JoinError, match="other inputs or condition"):
        other.restore(stage.snapshot())
    lookup = plan_join(
        AUCTION,
        PlannedInput("person", "P", PERSON_SCHEMA, None, is_table=True, key_columns=("id",)),
        cond("A.seller = P.id"),
        "inner",
        "j",
    )
    with pytest.raises(JoinError, match="lookup join"):
        lookup.restore(stage.snapshot())
    with pytest.raises(JoinError, match="damaged"):
        stage.restore(b"not a snapshot")


# -- refused plans and inputs -------------------------------------------------------------------


def test_refused_joins_say_what_to_change() -> None:
    ptable = PlannedInput("person", "P", PERSON_SCHEMA, None, is_table=True, key_columns=("id",))
    cases = [
        (AUCTION, PERSON, "A.seller = P.id", "right", "RIGHT JOIN cannot run"),
        (AUCTION, PERSON, "A.seller = P.id", "full", "FULL JOIN cannot run"),
        (ptable, AUCTION, "A.seller = P.id", "inner", "put the table second"),
        (AUCTION, ptable, "A.reserve > P.id", "inner", "needs equality conditions"),
        (AUCTION, ptable, 'A.seller = P."state"', "inner", "does not cover table P's key"),
        (AUCTION, PERSON, "A.seller = P.id", "left", "LEFT JOIN of two streams needs a time bound"),
        (AUCTION, PERSON, "A.seller = X.id", "inner", "joined inputs are A or P"),
        (AUCTION, PERSON, "A.seller = P.nope", "inner", "is not a column of P"),
        (AUCTION, PERSON, "A.seller = P.name", "inner", "CAST one side"),
        (
            AUCTION,
            PERSON,
            "A.seller = P.id AND A.id BETWEEN SYMMETRIC P.id AND 3",
            "inner",
            "cannot be evaluated",
        ),
        (
            AUCTION,
            stream("bid", "A", BID_SCHEMA, "dateTime"),
            "A.id = A.auction",
            "inner",
            "own alias",
        ),
        (
            PlannedInput("agg", "G", BID_SCHEMA, None, key_columns=("auction",)),
            AUCTION,
            "G.auction = A.id",
            "inner",
            "updating result",
        ),
    ]
    for left, right, text, kind, message in cases:
        with pytest.raises(PlanError, match=message):
            plan_join(left, right, cond(text), kind, "j")


def test_refused_batches() -> None:
    stage = plan_join(AUCTION, PERSON, cond("A.seller = P.id"), "inner", "j")
    with pytest.raises(JoinError, match="not bid"):
        stage.process("bid", pa.record_batch([], schema=pa.schema([])))
    wrong = pa.record_batch({"id": pa.array([1], pa.int32())})
    with pytest.raises(JoinError, match="planned int64"):
        stage.process("person", wrong)


def test_view_typed_keys_are_joined_after_a_cast() -> None:
    """Acero cannot hash string_view keys (DataFusion stages may produce them)."""
    schema = pa.schema([("k", pa.string_view()), ("v", pa.int64())])
    left = PlannedInput("l", "L", schema, None)
    right = PlannedInput("r", "R", pa.schema([("k", pa.string()), ("w", pa.int64())]), None)
    stage = plan_join(left, right, cond("L.k = R.k"), "inner", "j")
    stage.process(
        "r", pa.record_batch({"k": ["a", "b", None], "w": [1, 2, 3]}, schema=right.schema)
    )
    out = stage.process(
        "l", pa.record_batch({"k": ["b", "c", None], "v": [7, 8, 9]}, schema=schema)
    )
    assert [tuple(r.values()) for b in out for r in b.to_pylist()] == [("b", 7, "b", 2)]


def test_lookup_on_a_declared_key_column_with_tombstones() -> None:
    """A table keyed by a declared column: a row with only the key set deletes it."""
    schema = pa.schema([("id", pa.int64()), ("name", pa.string())])
    table = PlannedInput("t", "T", schema, None, is_table=True, key_columns=("id",))
    left = PlannedInput("s", "S", pa.schema([("x", pa.int64()), ("t", TS)]), "t")
    stage = plan_join(left, table, cond("S.x = T.id"), "left", "j")
    stage.process("t", pa.record_batch({"id": [1, 2, 3], "name": ["a", "b", "c"]}, schema=schema))
    stage.process("t", pa.record_batch({"id": [2, 3], "name": ["B", None]}, schema=schema))
    rows = pa.record_batch({"x": [1, 2, 3], "t": pa.array([0, 1, 2], TS)})
    out = stage.process("s", rows)
    got = sorted(tuple(r.values())[::2] + (r["T__name"],) for b in out for r in b.to_pylist())
    assert got == [(1, 1, "a"), (2, 2, "B"), (3, None, None)]
    assert stage.buffered_rows() == (0, 2)
    stage.advance_watermark("s", 5)
    assert stage.output_watermark() == 5


def test_lookup_table_with_many_updates_keeps_only_current_rows() -> None:
    """20,000 upserts and deletes of 50 keys: results follow the latest rows, and the rows
    kept stay near the current ones (stale ones are dropped when they are most of them)."""
    rng = np.random.default_rng(29)
    tschema = pa.schema([("id", pa.int64()), ("v", pa.int64()), ("_key", pa.binary())])
    table = PlannedInput("t", "T", tschema, None, is_table=True, key_columns=("_key",))
    sschema = pa.schema([("x", pa.int64()), ("t", TS)])
    stage = plan_join(
        PlannedInput("s", "S", sschema, "t"), table, cond("S.x = T.id AND T.v > S.x"), "left", "j"
    )
    assert stage._by_search  # one integer key: matches are found by binary search
    current: dict[bytes, tuple[int | None, int]] = {}
    got, want = [], []
    for step in range(200):
        ids = rng.integers(0, 50, 100)
        values = rng.integers(0, 100, 100)
        dead = rng.random(100) < 0.1
        no_id = rng.random(100) < 0.05  # a current row with a null join key matches nothing
        keys = [str(i).encode() for i in ids]
        ids_col = pa.array(np.where(dead, 0, ids), mask=dead | no_id)
        vals_col = pa.array(values, mask=dead)
        batch = pa.record_batch([ids_col, vals_col, pa.array(keys)], schema=tschema)
        stage.process("t", batch)
        for key, i, v, d, n in zip(keys, ids, values, dead, no_id, strict=True):
            if d:
                current.pop(key, None)
            else:
                current[key] = (None if n else int(i), int(v))
        xs = rng.integers(0, 60, 20)
        x_null = rng.random(20) < 0.1
        probe = pa.record_batch(
            [pa.array(xs, mask=x_null), pa.array(np.full(20, step), TS)], schema=sschema
        )
        got += [tuple(r.values()) for b in stage.process("s", probe) for r in b.to_pylist()]
        for x, xn in zip(xs, x_null, strict=True):
            x_value = None if xn else int(x)
            hits = [(i, v, k) for k, (i, v) in current.items() if i == x_value and v > x]
            if x_value is None:
                hits = []
            ts = probe.column("t")[0].as_py()
            want += [(x_value, ts, *h) for h in hits] or [(x_value, ts, None, None, None)]
        assert stage.buffered_rows() == (0, len(current))
        assert stage._rows is not None and stage._rows.num_rows <= 2 * len(current) + 4096 + 100
    assert Counter(got) == Counter(want)


@pytest.mark.parametrize(
    ("text", "compiled"),
    [
        (
            "L.k = R.k AND R.t BETWEEN L.t - INTERVAL '1' SECOND AND L.t + INTERVAL '2 seconds'",
            True,
        ),
        ("L.k = R.k AND (L.x > R.x OR R.s = 'b') AND NOT L.x IS NULL", True),
        ("L.k = R.k AND L.x + R.x <> 7 AND R.s IS NOT NULL AND -L.x < 0", True),
        ("L.k = R.k AND R.x NOT BETWEEN 2 AND L.x AND (R.s < L.s OR L.x IS NULL)", True),
        ("L.k = R.k AND R.t > '1970-01-01 00:00:05'", True),  # Arrow refuses: DataFusion
        ("L.k = R.k AND L.x * 2 > R.x", False),
        ("L.k = R.k AND LOWER(R.s) = 'a'", False),
    ],
)
def test_residual_by_arrow_compute_equals_datafusion(text: str, compiled: bool) -> None:
    rng = np.random.default_rng(41)
    n = 400
    schema = pa.schema([("k", pa.int64()), ("x", pa.int64()), ("s", pa.string()), ("t", TS)])

    def batch() -> pa.RecordBatch:
        x = rng.integers(0, 10, n)
        return pa.record_batch(
            [
                pa.array(rng.integers(0, 5, n)),
                pa.array(x, mask=x == 0),
                pa.array(rng.choice(["a", "b", "c"], n), mask=rng.random(n) < 0.1),
                pa.array(rng.integers(0, 10_000, n), pa.int64()).cast(TS),
            ],
            schema=schema,
        )

    left, right = PlannedInput("l", "L", schema, None), PlannedInput("r", "R", schema, None)
    results = []
    for use_compute in (True, False):
        stage = plan_join(left, right, cond(text), "inner", "j")
        assert (stage._evaluator is not None) == compiled
        if not use_compute:
            stage._evaluator = None
        rng = np.random.default_rng(41)
        out = stage.process("r", batch()) + stage.process("l", batch())
        results.append(Counter(tuple(r.values()) for b in out for r in b.to_pylist()))
    assert results[0] == results[1] and sum(results[0].values()) > 10


@pytest.mark.parametrize("seed", range(12))
def test_interval_join_random_small_inputs(seed: int) -> None:
    """Random keys (with nulls), out-of-order integer times, random bounds and delays, random
    cut for a snapshot: the rows kept, nested-loop joined, are exactly what comes out."""
    rng = random.Random(seed)
    schema = pa.schema([("k", pa.int64()), ("t", pa.int64()), ("v", pa.int64())])
    lo = rng.randint(-20, 10)
    hi = lo + rng.randint(0, 30)
    kind = rng.choice(["inner", "left"])
    text = f"L.k = R.k AND R.t BETWEEN L.t + ({lo}) AND L.t + {hi}"
    if rng.random() < 0.5:
        text += " AND L.v <> R.v"
    delay = rng.randint(0, 40)
    steps: list[Step] = []
    top: dict[str, int] = {}
    serial = 0
    for _ in range(rng.randint(5, 40)):
        name = rng.choice(["l", "r"])
        n = rng.randint(0, 12)
        base = top.get(name, 0)
        ts = [max(0, base + rng.randint(-60, 25)) for _ in range(n)]
        keys = [rng.choice([1, 2, 3, None]) for _ in range(n)]
        vals = list(range(serial, serial + n))
        serial += n
        steps.append(("batch", name, pa.record_batch([keys, ts, vals], schema=schema)))
        if ts:
            top[name] = max(top.get(name, 0), *ts)
            steps.append(("wm", name, top[name] - delay))
    steps += [("wm", "l", FAR), ("wm", "r", FAR)]
    left, right = PlannedInput("l", "L", schema, "t"), PlannedInput("r", "R", schema, "t")

    def make() -> Any:
        return plan_join(left, right, cond(text), kind, "j")

    cut = rng.randint(0, len(steps))
    first = make()
    got = run(first, steps[:cut])
    second = make()
    second.restore(first.snapshot())
    got += run(second, steps[cut:])
    # the output watermark is honest: no row emitted after it has an earlier left time
    stage, promised = make(), None
    for kind_, name, value in steps:
        if kind_ == "batch":
            out = stage.process(name, value)
        else:
            out = stage.advance_watermark(name, value)
        times = [t for b in out for t in b.column("L__t").to_pylist()]
        assert promised is None or all(t >= promised for t in times)
        promised = stage.output_watermark()

    def match(a: dict, b: dict) -> bool:
        ok = a["t"] + lo <= b["t"] <= a["t"] + hi
        return ok and (" L.v <> R.v" not in text or a["v"] != b["v"])

    want = nested_loop(
        kept_rows(steps, "l", "t"),
        kept_rows(steps, "r", "t"),
        "k",
        "k",
        match,
        kind,
        schema.names,
    )
    assert Counter(got) == Counter(want)
    assert second.buffered_rows() == (0, 0)


@pytest.mark.parametrize("seed", range(12))
def test_window_join_random_small_inputs(seed: int) -> None:
    """Random windowed rows and watermarks (some rows late for emitted windows), a random
    cut for a snapshot: the rows kept, joined per window, are exactly what comes out."""
    rng = random.Random(seed)
    schema = pa.schema([("k", pa.int64()), ("window_start", TS), ("window_end", TS)])
    kind = rng.choice(["inner", "left"])
    steps: list[Step] = []
    wm = {"l": 0, "r": 0}
    for _ in range(rng.randint(5, 40)):
        name = rng.choice(["l", "r"])
        if rng.random() < 0.3:
            wm[name] += rng.randint(0, 30)
            steps.append(("wm", name, wm[name]))
            continue
        n = rng.randint(0, 8)
        starts = [max(0, (wm[name] // 10 + rng.randint(-2, 3)) * 10) for _ in range(n)]
        keys = [rng.choice([1, 2, None]) for _ in range(n)]
        arrays = [keys, pa.array(starts).cast(TS), pa.array([s + 10 for s in starts]).cast(TS)]
        steps.append(("batch", name, pa.record_batch(arrays, schema=schema)))
    steps += [("wm", "l", FAR), ("wm", "r", FAR)]
    left, right = (
        PlannedInput("l", "L", schema, "window_end"),
        PlannedInput("r", "R", schema, "window_end"),
    )
    text = "L.k = R.k AND L.window_start = R.window_start AND L.window_end = R.window_end"

    def make() -> Any:
        return plan_join(left, right, cond(text), kind, "j")

    cut = rng.randint(0, len(steps))
    first = make()
    got = run(first, steps[:cut])
    second = make()
    second.restore(first.snapshot())
    got += run(second, steps[cut:])
    # reference: a row is kept unless its window end is at or below the last closing point
    marks: dict[str, int | None] = {"l": None, "r": None}
    closed: int | None = None
    kept: dict[str, list[dict]] = {"l": [], "r": []}
    for kind_, name, value in steps:
        if kind_ == "wm":
            marks[name] = value
            if marks["l"] is not None and marks["r"] is not None:
                closed = min(marks["l"], marks["r"])
            continue
        for r in value.to_pylist():
            end_ms = int(r["window_end"].timestamp() * 1000) if r["window_end"] else 0
            if closed is None or end_ms > closed:
                kept[name].append(r)

    def same_window(a: dict, b: dict) -> bool:
        return a["window_start"] == b["window_start"] and a["window_end"] == b["window_end"]

    want = nested_loop(kept["l"], kept["r"], "k", "k", same_window, kind, schema.names)
    assert Counter(got) == Counter(want)
    assert second.buffered_rows() == (0, 0)


def test_lookup_on_a_two_column_key() -> None:
    schema = pa.schema([("a", pa.int64()), ("b", pa.string()), ("v", pa.int64())])
    table = PlannedInput("t", "T", schema, None, is_table=True, key_columns=("a", "b"))
    left = PlannedInput("s", "S", pa.schema([("a", pa.int64()), ("b", pa.string())]), None)
    stage = plan_join(left, table, cond("S.a = T.a AND S.b = T.b"), "left", "j")
    rng = random.Random(43)
    current: dict[tuple, int] = {}
    got, want = [], []
    for step in range(60):
        rows = [(rng.randint(0, 3), rng.choice("xy"), step * 10 + i) for i in range(5)]
        dead = [rng.random() < 0.2 for _ in rows]
        vals = [None if d else v for (_, _, v), d in zip(rows, dead, strict=True)]
        stage.process(
            "t",
            pa.record_batch([[r[0] for r in rows], [r[1] for r in rows], vals], schema=schema),
        )
        for (a, b, v), d in zip(rows, dead, strict=True):
            if d:
                current.pop((a, b), None)
            else:
                current[(a, b)] = v
        probe = [(rng.randint(0, 4), rng.choice("xy")) for _ in range(4)]
        batch = pa.record_batch([[p[0] for p in probe], [p[1] for p in probe]], schema=left.schema)
        got += [tuple(r.values()) for b in stage.process("s", batch) for r in b.to_pylist()]
        for a, b in probe:
            v = current.get((a, b))
            want.append((a, b, a, b, v) if v is not None else (a, b, None, None, None))
        assert stage.buffered_rows() == (0, len(current))
    assert Counter(got) == Counter(want)


def test_lookup_null_table_key_never_matches_the_largest_key() -> None:
    """The sorted index stores null join keys as the largest int64: they still match nothing."""
    big = 2**63 - 1
    schema = pa.schema([("id", pa.int64()), ("v", pa.int64()), ("_key", pa.binary())])
    table = PlannedInput("t", "T", schema, None, is_table=True, key_columns=("_key",))
    left = PlannedInput("s", "S", pa.schema([("x", pa.int64())]), None)
    stage = plan_join(left, table, cond("S.x = T.id"), "left", "j")
    rows = [[None, big, 3], [1, 2, 3], [b"a", b"b", b"c"]]
    stage.process("t", pa.record_batch(rows, schema=schema))
    assert stage.buffered_rows() == (0, 3)
    out = stage.process("s", pa.record_batch([[big, 3, None, 4]], schema=left.schema))
    got = sorted((tuple(r.values()) for b in out for r in b.to_pylist()), key=str)
    unmatched = (None, None, None)
    want = [(big, big, 2, b"b"), (3, 3, 3, b"c"), (None, *unmatched), (4, *unmatched)]
    assert got == sorted(want, key=str)
