"""The planner's stages (sql/continuous/stages.py) on small hand-made batches, with the
expected rows worked out by hand from the SQL semantics in the module docstring."""

from __future__ import annotations

import pyarrow as pa
import pytest

from sql.continuous.pipeline import PlanError, PlannedInput
from sql.continuous.stages import (
    SIGN,
    DataFusionQuery,
    StageError,
    StatelessStage,
    UpdatingAggregateStage,
    WindowStage,
)
from sql.windows import Aggregate, Hop, Session, Tumble

SCHEMA = pa.schema([("k", pa.string()), ("x", pa.int64()), ("t", pa.timestamp("ms"))])


def source(schema: pa.Schema = SCHEMA) -> PlannedInput:
    return PlannedInput("src", "src", schema, "t")


def batch(ks: list, xs: list, ts: list, schema: pa.Schema = SCHEMA) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(ks, pa.string()), pa.array(xs, pa.int64()), pa.array(ts, pa.timestamp("ms"))],
        schema=schema,
    )


def table_rows(batches: list[pa.RecordBatch]) -> list[dict]:
    return [r for b in batches for r in b.to_pylist()]


def test_datafusion_query_refuses_bad_sql_and_reports_failing_batches() -> None:
    with pytest.raises(PlanError, match="DataFusion refuses"):
        DataFusionQuery('SELECT "nope" FROM "_in"', "_in", SCHEMA, "stage s0")
    q = DataFusionQuery('SELECT CAST("k" AS BIGINT) AS n FROM "_in"', "_in", SCHEMA, "stage s0")
    assert q.output_schema.names == ["n"]
    assert q.run(batch(["12"], [1], [0])).column("n").to_pylist() == [12]
    with pytest.raises(StageError, match="stage s0.*failed on a batch"):
        q.run(batch(["twelve"], [1], [0]))
    # DataFusion types CAST(... AS VARCHAR) as a string view; stages give plain strings
    text = DataFusionQuery('SELECT CAST("x" AS VARCHAR) AS s FROM "_in"', "_in", SCHEMA, "s0")
    assert text.output_schema.field("s").type == pa.string()
    got = text.run(batch(["a"], [42], [0]))
    assert got.schema.field("s").type == pa.string() and got.column("s").to_pylist() == ["42"]


def test_stateless_stage_keeps_field_metadata_and_passes_the_watermark() -> None:
    marked = SCHEMA.set(2, SCHEMA.field(2).with_metadata({b"streamhouse.window": b"end"}))
    stage = StatelessStage(
        "s0",
        source(marked),
        'SELECT "k", "x" * 2 AS "y", "t" AS "when" FROM "_in" WHERE "x" > 1',
        "when",
        passthrough={"k": "k", "when": "t"},
    )
    assert stage.output_schema.field("when").metadata == {b"streamhouse.window": b"end"}
    out = stage.process("src", batch(["a", "b", "c"], [1, 2, 3], [10, 20, 30], marked))
    assert table_rows(out) == [
        {"k": "b", "y": 4, "when": pa.scalar(20, pa.timestamp("ms")).as_py()},
        {"k": "c", "y": 6, "when": pa.scalar(30, pa.timestamp("ms")).as_py()},
    ]
    assert out[0].schema.equals(stage.output_schema, check_metadata=True)
    assert stage.output_watermark() is None
    assert stage.advance_watermark("src", 25) == []
    stage.advance_watermark("src", 5)  # watermarks never go back
    assert stage.output_watermark() == 25
    again = StatelessStage("s0", source(marked), stage.query.sql, "when")
    again.restore(stage.snapshot())
    assert again.output_watermark() == 25
    with pytest.raises(PlanError, match="damaged"):
        again.restore(b"{")


def window_stage(window: object, bound: str | None, lateness: int = 0) -> WindowStage:
    return WindowStage(
        "s1",
        source(),
        'SELECT "k" AS "__k0", "x" AS "__a0", "t" AS "__t" FROM "_in"',
        window,  # type: ignore[arg-type]
        ["__k0"],
        [Aggregate("sum", "__a0", "__g0")],
        'SELECT "__k0" AS "k", "__g0" AS "s", "window_start" AS "ws", "window_end" AS "we" '
        'FROM "_w"',
        allowed_lateness_ms=lateness,
        emit_updates=False,
        output_time_column={"end": "we", "start": "ws", None: None}[bound],
        output_time_bound=bound,
    )


def test_window_stage_emits_closed_windows_and_its_watermark() -> None:
    stage = window_stage(Tumble(10), "end", lateness=5)
    assert stage.process("src", batch(["a", "a", "b"], [1, 2, 3], [1, 9, 12])) == []
    assert stage.advance_watermark("src", 14) == []  # [0, 10) closes at 10 + 5
    assert stage.output_watermark() == 9
    out = table_rows(stage.advance_watermark("src", 15))
    assert [(r["k"], r["s"]) for r in out] == [("a", 3)]
    assert stage.output_watermark() == 10
    start = window_stage(Hop(10, 5), "start")
    start.process("src", batch(["a"], [1], [7]))
    start.advance_watermark("src", 12)
    assert start.output_watermark() == 2  # window starts: the watermark minus the size
    assert window_stage(Session(5), "start").output_watermark() is None
    restored = window_stage(Tumble(10), "end", lateness=5)
    restored.restore(stage.snapshot())
    assert restored.output_watermark() == 10
    with pytest.raises(PlanError, match="another window aggregation"):
        _other_window_snapshot(restored)


def _other_window_snapshot(target: WindowStage) -> None:
    other = WindowStage(
        "s1",
        source(),
        'SELECT "x" AS "__a0", "t" AS "__t" FROM "_in"',
        Tumble(10),
        [],
        [Aggregate("count", None, "__g0")],
        'SELECT "__g0" AS "n" FROM "_w"',
        allowed_lateness_ms=0,
        emit_updates=False,
        output_time_column=None,
        output_time_bound=None,
    )
    target.restore(other.snapshot())


def updating(
    changelog: bool, pre: str | None = None, schema: pa.Schema = SCHEMA
) -> UpdatingAggregateStage:
    aggs = [
        Aggregate("count", None, "__g0"),
        Aggregate("sum", "__a1", "__g1"),
        Aggregate("avg", "__a2", "__g2"),
    ]
    if pre is None:
        aggs.append(Aggregate("count_distinct", "__a3", "__g3"))
        pre = 'SELECT "k" AS "__k0", "x" AS "__a1", "x" AS "__a2", "x" AS "__a3" FROM "_in"'
    post = 'SELECT "__k0" AS "k", "__g0" AS "n", "__g1" AS "s", "__g2" AS "a"'
    post += ', "__g3" AS "d"' if len(aggs) == 4 else ""
    return UpdatingAggregateStage(
        "s2",
        PlannedInput("src", "src", schema, None),
        pre,
        ["__k0"],
        aggs,
        post + ' FROM "_w"',
        ("k",),
        changelog=changelog,
    )


def test_updating_stage_emits_changed_groups_and_restores() -> None:
    stage = updating(False)
    out = table_rows(stage.process("src", batch(["a", "b", "a"], [1, 2, 3], [0, 0, 0])))
    assert sorted(out, key=lambda r: r["k"]) == [
        {"k": "a", "n": 2, "s": 4, "a": 2.0, "d": 2},
        {"k": "b", "n": 1, "s": 2, "a": 2.0, "d": 1},
    ]
    blob = stage.snapshot()
    again = updating(False)
    again.restore(blob)
    for s in (stage, again):
        assert table_rows(s.process("src", batch(["a"], [3], [0]))) == [
            {"k": "a", "n": 3, "s": 7, "a": 7 / 3, "d": 2}
        ]
    with pytest.raises(PlanError, match="not a snapshot of this aggregate"):
        updating(False).restore(b"nonsense")


def test_updating_stage_changelog_takes_old_rows_back() -> None:
    stage = updating(True)
    assert stage.output_schema.names[-1] == SIGN
    first = table_rows(stage.process("src", batch(["a", "b"], [1, 2], [0, 0])))
    assert sorted((r["k"], r["n"], r[SIGN]) for r in first) == [("a", 1, 1), ("b", 1, 1)]
    second = table_rows(stage.process("src", batch(["a", "c"], [5, 7], [0, 0])))
    assert sorted((r["k"], r["n"], r["s"], r["d"], r[SIGN]) for r in second) == [
        ("a", 1, 1, 1, -1),  # a's old row, with its distinct count before this batch
        ("a", 2, 6, 2, 1),
        ("c", 1, 7, 1, 1),
    ]


def test_aggregate_over_a_changelog_sums_signs() -> None:
    schema = pa.schema([("k", pa.string()), ("x", pa.int64()), (SIGN, pa.int64())])
    stage = updating(
        False,
        'SELECT "k" AS "__k0", "x" AS "__a1", "x" AS "__a2", "__sign" AS "__sign" FROM "_in"',
        schema,
    )
    rows = pa.RecordBatch.from_pylist(
        [
            {"k": "a", "x": 4, SIGN: 1},
            {"k": "a", "x": 6, SIGN: 1},
            {"k": "a", "x": None, SIGN: 1},
            {"k": "a", "x": 4, SIGN: -1},  # 4 replaced by 10
            {"k": "a", "x": 10, SIGN: 1},
        ],
        schema=schema,
    )
    out = table_rows(stage.process("src", rows))
    assert out == [{"k": "a", "n": 3, "s": 16, "a": 8.0}]
    with pytest.raises(PlanError, match="MAX over an updating result"):
        UpdatingAggregateStage(
            "s3",
            PlannedInput("src", "src", schema, None),
            'SELECT "k" AS "__k0", "x" AS "__a0", "__sign" AS "__sign" FROM "_in"',
            ["__k0"],
            [Aggregate("max", "__a0", "__g0")],
            'SELECT "__k0" AS "k", "__g0" AS "m" FROM "_w"',
            ("k",),
        )
