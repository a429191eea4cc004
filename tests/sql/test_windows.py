"""Event-time windows (sql/windows.py) against references computed independently.

The reference is plain Python over the same rows, one record at a time: each record is put
in its windows (or merged into its group's sessions) unless the watermark at its batch says
it is too late, and windows are closed in Python by the same watermark. The operator works on
whole batches with Arrow hash aggregations; the two must agree row for row. On-time streams
are also checked against a DataFusion GROUP BY over all rows.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from datafusion import SessionContext

from sql.windows import (
    Aggregate,
    Hop,
    Session,
    Tumble,
    WatermarkTracker,
    Window,
    WindowAggregate,
    WindowError,
    event_times_ms,
)

SCHEMA = pa.schema([("k", pa.string()), ("ts", pa.int64()), ("x", pa.int64())])
AGGS = [
    Aggregate("count", None, "n"),
    Aggregate("count", "x", "nx"),
    Aggregate("sum", "x", "s"),
    Aggregate("avg", "x", "a"),
    Aggregate("min", "x", "lo"),
    Aggregate("max", "x", "hi"),
    Aggregate("count_distinct", "x", "d"),
]
Row = tuple[str | None, int | None, int | None]


def aggregate_rows(rows: list[Row]) -> dict[str, Any]:
    xs = [x for _, _, x in rows if x is not None]
    return {
        "n": len(rows),
        "nx": len(xs),
        "s": sum(xs) if xs else None,
        "a": sum(xs) / len(xs) if xs else None,
        "lo": min(xs) if xs else None,
        "hi": max(xs) if xs else None,
        "d": len(set(xs)),
    }


def out_key(row: dict[str, Any]) -> tuple:
    return (row["window_start"], row["window_end"], row["k"] is None, row["k"] or "")


class Reference:
    """The window semantics of sql/windows.py, one record at a time in plain Python."""

    def __init__(self, window: Window, lateness: int) -> None:
        self.window = window
        self.lateness = lateness
        self.wm: int | None = None
        self.dropped = 0
        self.null_time = 0
        self.panes: dict[tuple[int, str | None], list[Row]] = defaultdict(list)
        self.sessions: dict[str | None, list[list[Any]]] = defaultdict(list)

    def windows_of(self, t: int) -> list[tuple[int, int]]:
        w = self.window
        size, slide, off = (
            (w.size_ms, w.size_ms, w.offset_ms)
            if isinstance(w, Tumble)
            else (w.size_ms, w.slide_ms, w.offset_ms)  # type: ignore[union-attr]
        )
        s = (t - off) // slide * slide + off
        out = []
        while s + size > t:
            out.append((s, s + size))
            s -= slide
        return out

    def process(self, rows: list[Row]) -> None:
        for row in rows:
            k, t, _ = row
            if t is None:
                self.null_time += 1
                continue
            if isinstance(self.window, Session):
                if self.wm is not None and t < self.wm - self.lateness:
                    self.dropped += 1
                    continue
                new = [t, t + self.window.gap_ms, [row]]
                keep = []
                for sess in self.sessions[k]:
                    if sess[0] < new[1] and new[0] < sess[1]:
                        new = [min(sess[0], new[0]), max(sess[1], new[1]), sess[2] + new[2]]
                    else:
                        keep.append(sess)
                # merging may make the new session reach others it skipped: repeat until stable
                changed = True
                while changed:
                    changed = False
                    for sess in list(keep):
                        if sess[0] < new[1] and new[0] < sess[1]:
                            new = [min(sess[0], new[0]), max(sess[1], new[1]), sess[2] + new[2]]
                            keep.remove(sess)
                            changed = True
                self.sessions[k] = [*keep, new]
                continue
            kept = 0
            for s, e in self.windows_of(t):
                if self.wm is None or e + self.lateness > self.wm:
                    self.panes[(s, k)].append(row)
                    kept += 1
            if kept == 0:
                self.dropped += 1

    def advance(self, wm: int) -> list[dict[str, Any]]:
        self.wm = wm if self.wm is None else max(self.wm, wm)
        out = []
        if isinstance(self.window, Session):
            for k, sessions in self.sessions.items():
                for sess in list(sessions):
                    if sess[1] + self.lateness <= self.wm:
                        out.append(
                            {"k": k, "window_start": sess[0], "window_end": sess[1]}
                            | aggregate_rows(sess[2])
                        )
                        sessions.remove(sess)
        else:
            size = self.window.size_ms
            for (s, k), rows in list(self.panes.items()):
                if s + size + self.lateness <= self.wm:
                    out.append(
                        {"k": k, "window_start": s, "window_end": s + size} | aggregate_rows(rows)
                    )
                    del self.panes[(s, k)]
        return sorted(out, key=out_key)


def make_stream(
    seed: int, n: int, keys: int, span_ms: int, jitter_ms: int, batch: int
) -> list[list[Row]]:
    """Rows in batches: times rising over ``span_ms`` with up to ``jitter_ms`` of disorder."""
    rnd = random.Random(seed)
    rows: list[Row] = []
    for i in range(n):
        t = i * span_ms // n + rnd.randint(-jitter_ms, 0)
        k = None if rnd.random() < 0.05 else f"k{rnd.randrange(keys)}"
        x = None if rnd.random() < 0.1 else rnd.randint(-5, 20)
        rows.append((k, None if rnd.random() < 0.01 else t, x))
    return [rows[i : i + batch] for i in range(0, n, batch)]


def to_batch(rows: list[Row]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [{"k": k, "ts": t, "x": x} for k, t, x in rows], schema=SCHEMA
    )


def run_both(
    window: Window,
    batches: list[list[Row]],
    *,
    lateness: int,
    delay: int,
    snapshot_at: int | None = None,
) -> tuple[list[dict], list[dict], WindowAggregate, Reference]:
    op = WindowAggregate(SCHEMA, window, "ts", ["k"], AGGS, allowed_lateness_ms=lateness)
    ref = Reference(window, lateness)
    tracker = WatermarkTracker(delay)
    got: list[dict] = []
    want: list[dict] = []
    for i, rows in enumerate(batches):
        if i == snapshot_at:
            op = WindowAggregate.restore(op.snapshot())
        batch = to_batch(rows)
        op.process(batch)
        ref.process(rows)
        t, valid = event_times_ms(batch.column("ts"))
        wm = tracker.observe(t if valid is None else t[valid])
        if wm is not None:
            got += op.advance_watermark(wm).to_pylist()
            want += ref.advance(wm)
    end = 10**12
    got += op.advance_watermark(end).to_pylist()
    want += ref.advance(end)
    return got, want, op, ref


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want), (len(got), len(want))
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for name in g:
            if name == "a" and w[name] is not None:
                assert g[name] == pytest.approx(w[name]), (g, w)
            else:
                assert g[name] == w[name], (name, g, w)


WINDOWS = [Tumble(1000), Tumble(700, offset_ms=100), Hop(1000, 250), Hop(1000, 400), Session(120)]


@pytest.mark.parametrize("window", WINDOWS, ids=repr)
def test_in_order_stream_matches_reference(window: Window) -> None:
    batches = make_stream(seed=1, n=3000, keys=7, span_ms=20_000, jitter_ms=0, batch=256)
    got, want, op, ref = run_both(window, batches, lateness=0, delay=0)
    assert_same(got, want)
    assert len(got) > 20
    assert op.stats.late_rows_dropped == ref.dropped == 0
    assert op.stats.null_time_rows == ref.null_time > 0


@pytest.mark.parametrize("window", WINDOWS, ids=repr)
@pytest.mark.parametrize(("lateness", "delay"), [(0, 0), (300, 0), (0, 200), (1500, 100)])
def test_out_of_order_with_late_data_matches_reference(
    window: Window, lateness: int, delay: int
) -> None:
    batches = make_stream(seed=2, n=4000, keys=5, span_ms=30_000, jitter_ms=2500, batch=300)
    got, want, op, ref = run_both(window, batches, lateness=lateness, delay=delay)
    assert_same(got, want)
    assert op.stats.late_rows_dropped == ref.dropped
    assert op.stats.null_time_rows == ref.null_time
    if lateness + delay < 1000:
        assert ref.dropped > 0  # the stream really has records beyond the lateness
    assert op.stats.rows_emitted == len(got)


@pytest.mark.parametrize("window", WINDOWS, ids=repr)
@pytest.mark.parametrize("at", [1, 7, 13])
def test_snapshot_restore_mid_stream_gives_the_same_output(window: Window, at: int) -> None:
    batches = make_stream(seed=3, n=4000, keys=6, span_ms=30_000, jitter_ms=900, batch=250)
    straight, want, op1, _ = run_both(window, batches, lateness=400, delay=100)
    restored, _, op2, _ = run_both(window, batches, lateness=400, delay=100, snapshot_at=at)
    assert_same(straight, want)
    assert restored == straight
    assert op2.stats == op1.stats


def test_on_time_tumble_matches_a_datafusion_group_by() -> None:
    batches = make_stream(seed=4, n=5000, keys=9, span_ms=50_000, jitter_ms=0, batch=512)
    op = WindowAggregate(SCHEMA, Tumble(2000), "ts", ["k"], AGGS)
    got: list[dict] = []
    for rows in batches:
        op.process(to_batch(rows))
        got += op.advance_watermark(max(t for _, t, _ in rows if t is not None)).to_pylist()
    got += op.advance_watermark(10**12).to_pylist()
    ctx = SessionContext()
    ctx.register_record_batches("t", [[to_batch(r) for r in batches]])
    df = ctx.sql(
        "SELECT k, (ts / 2000) * 2000 AS window_start, (ts / 2000) * 2000 + 2000 AS window_end,"
        " count(*) AS n, count(x) AS nx, sum(x) AS s, avg(x) AS a, min(x) AS lo, max(x) AS hi,"
        " count(DISTINCT x) AS d FROM t WHERE ts IS NOT NULL GROUP BY 1, 2, 3"
        " ORDER BY window_start, window_end, k NULLS LAST"
    )
    want = pa.Table.from_batches(df.collect()).to_pylist()
    assert_same(got, want)


def test_updates_reemit_late_rows_within_lateness_and_drop_beyond() -> None:
    op = WindowAggregate(
        SCHEMA, Tumble(10), "ts", ["k"], AGGS[:3], allowed_lateness_ms=5, emit_updates=True
    )
    op.process(to_batch([("a", 1, 1), ("a", 4, 2), ("b", 2, 5)]))
    assert op.advance_watermark(9).num_rows == 0  # window [0, 10) not reached
    first = op.advance_watermark(10).to_pylist()
    assert first == [
        {"k": "a", "window_start": 0, "window_end": 10, "n": 2, "nx": 2, "s": 3},
        {"k": "b", "window_start": 0, "window_end": 10, "n": 1, "nx": 1, "s": 5},
    ]
    assert op.advance_watermark(11).num_rows == 0  # nothing changed
    op.process(to_batch([("a", 7, 10)]))  # late, within lateness: updates the window
    update = op.advance_watermark(12).to_pylist()
    # only the group that changed
    assert update == [{"k": "a", "window_start": 0, "window_end": 10, "n": 3, "nx": 3, "s": 13}]
    assert op.advance_watermark(15).num_rows == 0  # closes, nothing new to say
    op.process(to_batch([("a", 8, 100)]))  # beyond the lateness: dropped, counted
    assert op.stats.late_rows_dropped == 1
    assert op.advance_watermark(40).num_rows == 0


def test_final_mode_emits_once_when_lateness_passes() -> None:
    op = WindowAggregate(SCHEMA, Tumble(10), "ts", [], AGGS[:3], allowed_lateness_ms=5)
    op.process(to_batch([("a", 1, 1), ("b", 4, 2)]))
    assert op.advance_watermark(14).num_rows == 0
    op.process(to_batch([("c", 9, 4)]))
    assert op.advance_watermark(15).to_pylist() == [
        {"window_start": 0, "window_end": 10, "n": 3, "nx": 3, "s": 7}
    ]


def test_session_updates_replace_a_grown_session() -> None:
    op = WindowAggregate(
        SCHEMA, Session(10), "ts", ["k"], AGGS[:1], allowed_lateness_ms=20, emit_updates=True
    )
    op.process(to_batch([("a", 0, 1)]))
    assert op.advance_watermark(10).to_pylist() == [
        {"k": "a", "window_start": 0, "window_end": 10, "n": 1}
    ]
    op.process(to_batch([("a", 5, 1), ("a", 30, 1)]))  # 5 is late within lateness: grows it
    assert op.advance_watermark(15).to_pylist() == [
        {"k": "a", "window_start": 0, "window_end": 15, "n": 2}
    ]
    assert op.advance_watermark(40).to_pylist() == [
        {"k": "a", "window_start": 30, "window_end": 40, "n": 1}
    ]


def test_timestamp_event_time_gives_timestamp_windows() -> None:
    schema = pa.schema([("k", pa.int32()), ("ts", pa.timestamp("us", "UTC")), ("x", pa.float64())])
    batch = pa.RecordBatch.from_pydict(
        {"k": [1, 1, 2], "ts": [1_500, 999_999, 1_000_000], "x": [1.5, 2.5, None]}, schema=schema
    )
    op = WindowAggregate(schema, Tumble(1), "ts", ["k"], [Aggregate("avg", "x", "a")])
    op.process(batch)
    assert op.advance_watermark(10).num_rows == 1  # [1, 2) ms closed; 999 and 1000 open
    out = op.advance_watermark(2000)
    assert out.schema.field("window_start").type == pa.timestamp("ms", "UTC")
    rows = [(r["k"], r["window_start"].timestamp() * 1000, r["a"]) for r in out.to_pylist()]
    assert rows == [(1, 999.0, 2.5), (2, 1000.0, None)]
    assert out.schema == op.output_schema()


def test_empty_output_has_the_output_schema() -> None:
    for window in WINDOWS:
        op = WindowAggregate(SCHEMA, window, "ts", ["k"], AGGS)
        out = op.advance_watermark(0)
        assert out.num_rows == 0
        assert out.schema == op.output_schema()
        assert out.schema.names == [
            "k",
            "window_start",
            "window_end",
            "n",
            "nx",
            "s",
            "a",
            "lo",
            "hi",
            "d",
        ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": Tumble(0)}, "TUMBLE size must be positive"),
        ({"window": Hop(10, 20)}, "slide 20 ms exceeds size"),
        ({"window": Session(-1)}, "SESSION gap must be positive"),
        ({"time_column": "nope"}, "event time column 'nope'"),
        ({"time_column": "k"}, "has type string"),
        ({"keys": ["zz"]}, "group key 'zz'"),
        ({"aggregates": [Aggregate("median", "x", "m")]}, "unknown aggregate 'median'"),
        ({"aggregates": [Aggregate("sum", None, "m")]}, "SUM needs a column"),
        ({"aggregates": [Aggregate("sum", "k", "m")]}, "SUM(k) needs a number"),
        ({"aggregates": [Aggregate("count", None, "k")]}, "'k' appears twice"),
        ({"aggregates": []}, "at least one aggregate"),
        ({"allowed_lateness_ms": -1}, "lateness must be >= 0"),
    ],
)
def test_bad_queries_are_refused(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "window": Tumble(10),
        "time_column": "ts",
        "keys": ["k"],
        "aggregates": AGGS[:1],
    }
    lateness = kwargs.pop("allowed_lateness_ms", 0)
    args.update(kwargs)
    with pytest.raises(WindowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        WindowAggregate(SCHEMA, allowed_lateness_ms=lateness, **args)


def test_a_batch_of_another_schema_and_a_bad_snapshot_are_refused() -> None:
    op = WindowAggregate(SCHEMA, Tumble(10), "ts", ["k"], AGGS[:1])
    wrong = pa.RecordBatch.from_pydict({"k": ["a"], "ts": [1.0], "x": [1]})
    with pytest.raises(WindowError, match="'ts' is double, the query was declared with int64"):
        op.process(wrong)
    with pytest.raises(WindowError, match="not a window operator snapshot"):
        WindowAggregate.restore(b"garbage")


def test_hop_counts_a_row_in_its_open_windows_only() -> None:
    op = WindowAggregate(SCHEMA, Hop(30, 10), "ts", [], AGGS[:1])
    op.advance_watermark(25)  # windows ending at or before 25 are closed: [-10, 20) ...
    op.process(to_batch([(None, 15, None)]))  # in [-10,20) closed, [0,30) and [10,40) open
    assert op.stats.late_rows_dropped == 0
    out = op.advance_watermark(100).to_pylist()
    assert [(r["window_start"], r["n"]) for r in out] == [(0, 1), (10, 1)]
    np.testing.assert_array_equal(event_times_ms(pa.array([3, None]))[1], [True, False])


@pytest.mark.parametrize("window", WINDOWS, ids=repr)
def test_updates_mode_snapshots_and_upserts_end_at_the_final_results(window: Window) -> None:
    batches = make_stream(seed=5, n=3000, keys=4, span_ms=20_000, jitter_ms=1500, batch=200)

    def run(emit_updates: bool, snapshot_at: int | None) -> list[dict]:
        op = WindowAggregate(
            SCHEMA, window, "ts", ["k"], AGGS, allowed_lateness_ms=800, emit_updates=emit_updates
        )
        tracker = WatermarkTracker(50)
        out: list[dict] = []
        for i, rows in enumerate(batches):
            if i == snapshot_at:
                op = WindowAggregate.restore(op.snapshot())
            batch = to_batch(rows)
            op.process(batch)
            t, valid = event_times_ms(batch.column("ts"))
            wm = tracker.observe(t if valid is None else t[valid])
            if wm is not None:
                out += op.advance_watermark(wm).to_pylist()
        return out + op.advance_watermark(10**12).to_pylist()

    updates = run(True, None)
    assert run(True, 4) == updates
    assert run(True, 11) == updates
    final = run(False, None)
    assert len(updates) > len(final)  # some windows really were updated
    if not isinstance(window, Session):
        latest = {(r["k"], r["window_start"]): r for r in updates}
        assert sorted(latest.values(), key=out_key) == sorted(final, key=out_key)


@pytest.mark.parametrize("keys", [["k", "g"], []], ids=["two-keys", "no-keys"])
def test_group_keys_match_a_datafusion_group_by(keys: list[str]) -> None:
    rnd = random.Random(6)
    schema = pa.schema(
        [("k", pa.string()), ("g", pa.int32()), ("ts", pa.int64()), ("x", pa.int64())]
    )
    batches = []
    for b in range(20):
        rows = [
            {
                "k": rnd.choice(["a", "b", None]),
                "g": rnd.choice([1, 2, None]),
                "ts": b * 500 + i,
                "x": rnd.choice([1, 2, 3, None]),
            }
            for i in range(500)
        ]
        batches.append(pa.RecordBatch.from_pylist(rows, schema=schema))
    aggs = [
        Aggregate("count", None, "n"),
        Aggregate("sum", "x", "s"),
        Aggregate("count_distinct", "x", "d"),
    ]
    op = WindowAggregate(schema, Hop(2000, 1000), "ts", keys, aggs)
    got: list[dict] = []
    for batch in batches:
        op.process(batch)
        got += op.advance_watermark(pa.compute.max(batch.column("ts")).as_py()).to_pylist()
    got += op.advance_watermark(10**12).to_pylist()
    ctx = SessionContext()
    ctx.register_record_batches("t", [batches])
    cols = "".join(f"{k}, " for k in keys)
    order = "".join(f", {k} NULLS LAST" for k in keys)
    sql = (
        f"SELECT {cols}ws AS window_start, ws + 2000 AS window_end, count(*) AS n, sum(x) AS s,"
        " count(DISTINCT x) AS d FROM (SELECT *, (ts / 1000) * 1000 AS ws FROM t UNION ALL"
        " SELECT *, (ts / 1000) * 1000 - 1000 AS ws FROM t)"
        f" GROUP BY {cols}ws ORDER BY window_start{order}"
    )
    want = pa.Table.from_batches(ctx.sql(sql).collect()).to_pylist()
    assert got == want
    assert len(got) > 10  # 11 windows over 10 s, times the key groups


def test_a_damaged_or_foreign_snapshot_is_refused() -> None:
    op = WindowAggregate(SCHEMA, Tumble(10), "ts", ["k"], AGGS)
    op.process(to_batch([("a", 1, 1)]))
    good = pa.ipc.open_stream(op.snapshot()).read_all()
    meta = json.loads(good.schema.metadata[b"streamhouse.windows"])
    meta["version"] = 99
    with pytest.raises(WindowError, match="snapshot version 99, this code reads 1"):
        WindowAggregate.restore(
            ipc_bytes(good.replace_schema_metadata({b"streamhouse.windows": json.dumps(meta)}))
        )
    missing = good.filter(pa.compute.not_equal(good.column("part"), "partials"))
    with pytest.raises(WindowError, match="snapshot is damaged"):
        WindowAggregate.restore(ipc_bytes(missing))


def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_a_chunked_table_with_an_int32_time_column() -> None:
    schema = pa.schema([("k", pa.string()), ("ts", pa.int32()), ("x", pa.int64())])
    part = pa.table({"k": ["a", "b"], "ts": [1, 12], "x": [1, 2]}, schema=schema)
    table = pa.concat_tables(
        [part, part.slice(0, 1), pa.table({"k": ["a"], "ts": [None], "x": [3]}, schema=schema)]
    )
    assert table.column("ts").num_chunks == 3
    op = WindowAggregate(schema, Tumble(10), "ts", ["k"], AGGS[:3])
    op.process(table)
    assert op.stats.null_time_rows == 1
    assert op.advance_watermark(100).to_pylist() == [
        {"k": "a", "window_start": 0, "window_end": 10, "n": 2, "nx": 2, "s": 2},
        {"k": "b", "window_start": 10, "window_end": 20, "n": 1, "nx": 1, "s": 2},
    ]


def test_sessions_far_apart_in_time_merge_per_group() -> None:
    # ends spread over 2**60 ms with 40 groups: the packed running maximum would overflow
    # int64, so sessions are merged group by group; the result must not change.
    far = 2**60
    rows: list[Row] = []
    for g in range(40):
        rows += [(f"k{g:02}", 0, 1), (f"k{g:02}", 5, 2), (f"k{g:02}", far + g, 3)]
    op = WindowAggregate(SCHEMA, Session(10), "ts", ["k"], AGGS[:1])
    ref = Reference(Session(10), 0)
    for i in range(0, len(rows), 7):  # batches of 7 rows: sessions merge across batches
        op.process(to_batch(rows[i : i + 7]))
        ref.process(rows[i : i + 7])
        # nothing closes yet (and no row is late): merges the pending sessions
        assert op.advance_watermark(0).num_rows == 0
        assert ref.advance(0) == []
    got = op.advance_watermark(2**62).to_pylist()
    want = [{k: r[k] for k in ("k", "window_start", "window_end", "n")} for r in ref.advance(2**62)]
    assert got == want
    assert len(got) == 80
