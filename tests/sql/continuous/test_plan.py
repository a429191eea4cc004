"""plan_continuous (sql/continuous/plan.py) against references computed independently.

Inputs are Nexmark bids from the generator (rate 1000 events/s of event time, so a chunk of
50,000 events spans 50 s and windows of seconds close as the watermark moves) or, where
records must arrive late, a small hand-made stream. Every plan is fed the input in several
batches; references are plain Python or pyarrow over the whole input, with the watermark
rules of the plan's docstring (a source's watermark is its largest event time minus the
declared delay, moved after each batch; a window is emitted once the watermark passes its
end plus the allowed lateness) applied in Python where lateness matters. Results compare as
multisets of rows, since a plan emits in its own order.
"""

from __future__ import annotations

import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sql.catalog import Column, Relation, Watermark
from sql.continuous import stages
from sql.continuous.pipeline import PlanError
from sql.continuous.plan import plan_continuous
from sql.decode import RAW_SCHEMA
from sql.statements import parse_statement

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.nexmark.generator import Generator, create_stream_sql  # noqa: E402
from bench.nexmark.model import ModelConfig  # noqa: E402
from bench.nexmark.queries import QUERIES  # noqa: E402

DELAY_MS = 4_000  # create_stream_sql's watermark delay
BATCH = 6_000


def nexmark_relation(kind: str) -> Relation:
    st = parse_statement(create_stream_sql(kind))
    return Relation(
        kind="stream",
        name=st.name,
        topic=kind,
        format="json",
        columns=st.columns,
        watermark=st.watermark,
    )


RELATIONS = {k: nexmark_relation(k) for k in ("bid", "person", "auction")}
EV = Relation(
    kind="stream",
    name="ev",
    topic="ev",
    format="json",
    columns=[Column("k", "VARCHAR"), Column("x", "BIGINT"), Column("t", "TIMESTAMP")],
    watermark=Watermark("t", 1_000),
)
PRICES = Relation(
    kind="table",
    name="prices",
    topic="prices",
    format="json",
    columns=[Column("item", "VARCHAR"), Column("p", "BIGINT")],
)
ALL = {**RELATIONS, "ev": EV, "prices": PRICES}


def with_record_columns(table: pa.Table) -> pa.RecordBatch:
    """A declared stream's batch: its columns, then _partition, _offset, _timestamp."""
    n = table.num_rows
    ts = table.column("dateTime" if "dateTime" in table.column_names else "t")
    table = table.append_column("_partition", pa.array(np.zeros(n, np.int32)))
    table = table.append_column("_offset", pa.array(np.arange(n, dtype=np.int64)))
    table = table.append_column(
        "_timestamp", pc.cast(pc.cast(ts, pa.int64()), pa.timestamp("ms", tz="UTC"))
    )
    return table.combine_chunks().to_batches()[0]


@pytest.fixture(scope="module")
def nexmark() -> dict[str, pa.Table]:
    gen = Generator(7, ModelConfig(rate=1_000))
    chunks = list(gen.chunks(100_000))
    return {k: pa.concat_tables([getattr(c, k) for c in chunks]) for k in RELATIONS}


@pytest.fixture(scope="module")
def bids(nexmark: dict[str, pa.Table]) -> pa.RecordBatch:
    return with_record_columns(nexmark["bid"])


def run(plan: Any, source: str, batch: pa.RecordBatch, size: int = BATCH) -> pa.Table:
    out: list[pa.RecordBatch] = []
    for i in range(0, batch.num_rows, size):
        out += plan.process(source, batch.slice(i, size))
    for b in out:
        assert b.schema.equals(plan.output_schema), (b.schema, plan.output_schema)
    return pa.Table.from_batches(out, schema=plan.output_schema)


def rows(table: pa.Table, columns: list[str] | None = None) -> list[tuple]:
    """Rows as tuples (timestamps as int ms, floats rounded), sorted."""
    cols = []
    for name in columns or table.column_names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = pc.cast(col, pa.int64())
        values = col.to_pylist()
        if pa.types.is_floating(col.type):
            values = [None if v is None else round(v, 6) for v in values]
        cols.append(values)
    return sorted(zip(*cols, strict=True), key=repr)


def ms(table: pa.Table, column: str = "dateTime") -> np.ndarray:
    return pc.cast(table.column(column), pa.int64()).to_numpy()


def agg_values(prices: list[int], bidders: list[int]) -> tuple:
    return (
        len(prices),
        sum(prices),
        round(sum(prices) / len(prices), 6),
        min(prices),
        max(prices),
        len(set(bidders)),
    )


AGG_SQL = (
    "COUNT(*) AS n, SUM(price) AS s, AVG(price) AS a, MIN(price) AS lo, MAX(price) AS hi, "
    "COUNT(DISTINCT bidder) AS d"
)


# -- stateless ----------------------------------------------------------------------------


def test_stateless_filter_projection_case_and_functions(bids: pa.RecordBatch) -> None:
    plan = plan_continuous(
        "SELECT B.auction, price * 2 + 1 AS p2, "
        "CASE WHEN price > 10000000 THEN 'high' WHEN price > 1000000 THEN 'mid' ELSE 'low' END "
        'AS band, upper(channel) AS ch, char_length(url) AS ulen, "dateTime" '
        "FROM bid AS B WHERE auction % 5 = 0 AND bidder > 1010",
        RELATIONS,
        set(),
    )
    assert plan.key_columns == ()
    assert plan.output_time_column == "dateTime"
    assert list(plan.sources) == ["bid"]
    got = run(plan, "bid", bids)
    expected = []
    for auction, bidder, price, channel, url, when in zip(
        *(bids.column(c).to_pylist() for c in ("auction", "bidder", "price", "channel", "url")),
        ms(pa.Table.from_batches([bids])).tolist(),
        strict=True,
    ):
        if auction % 5 == 0 and bidder > 1010:
            band = "high" if price > 10_000_000 else "mid" if price > 1_000_000 else "low"
            expected.append((auction, price * 2 + 1, band, channel.upper(), len(url), when))
    assert len(expected) > 100
    assert rows(got) == sorted(expected, key=repr)
    assert plan.stats().rows_in == bids.num_rows
    assert plan.stats().rows_out == len(expected)
    # the watermark of the source: max event time - 4 s
    assert plan.watermark_ms() == int(ms(pa.Table.from_batches([bids])).max()) - DELAY_MS


def test_select_star_and_raw_topic(bids: pa.RecordBatch) -> None:
    plan = plan_continuous("SELECT * FROM bid WHERE price < 1000", RELATIONS, set())
    assert plan.output_schema.names == bids.schema.names
    got = run(plan, "bid", bids)
    mask = pc.less(bids.column("price"), 1000)
    assert got.num_rows == pc.sum(mask).as_py() > 0
    raw = plan_continuous(
        'SELECT "partition", length(value) AS n FROM topics."bid-raw"', {}, {"bid-raw"}
    )
    assert list(raw.sources) == ["topics.bid-raw"]
    assert raw.sources["topics.bid-raw"].topic == "bid-raw"
    assert raw.sources["topics.bid-raw"].relation is None
    values = [b"{}", b"hello", None]
    records = pa.Table.from_pylist(
        [
            {"partition": 2, "offset": i, "timestamp": i, "key": None, "value": v, "headers": []}
            for i, v in enumerate(values)
        ],
        schema=RAW_SCHEMA,
    )
    got = raw.process("topics.bid-raw", records.to_batches()[0])
    assert rows(pa.Table.from_batches(got)) == sorted(
        [(2, None if v is None else len(v)) for v in values], key=repr
    )
    assert raw.watermark_ms() is None  # a raw topic declares no event time


# -- windows ------------------------------------------------------------------------------


def window_reference(table: pa.Table, starts_of: Any, size: int, watermark: int) -> list[tuple]:
    """Per (auction % 10, window start): the aggregates of AGG_SQL, for the windows whose
    end the watermark has passed (no record is late: the generator's times never go back)."""
    groups: dict[tuple[int, int], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for auction, bidder, price, when in zip(
        table.column("auction").to_pylist(),
        table.column("bidder").to_pylist(),
        table.column("price").to_pylist(),
        ms(table).tolist(),
        strict=True,
    ):
        for start in starts_of(when):
            g = groups[(auction % 10, start)]
            g[0].append(price)
            g[1].append(bidder)
    return sorted(
        (
            (k, start, start + size, *agg_values(p, b))
            for (k, start), (p, b) in groups.items()
            if start + size <= watermark
        ),
        key=repr,
    )


def test_tumble_every_aggregate(nexmark: dict[str, pa.Table], bids: pa.RecordBatch) -> None:
    plan = plan_continuous(
        f"SELECT auction % 10 AS k, TUMBLE_START(\"dateTime\", INTERVAL '5' SECOND) AS ws, "
        f"TUMBLE_END(\"dateTime\", INTERVAL '5' SECOND) AS we, {AGG_SQL} FROM bid "
        "GROUP BY auction % 10, TUMBLE(\"dateTime\", INTERVAL '5' SECOND)",
        RELATIONS,
        set(),
    )
    assert plan.output_time_column == "we" and plan.key_columns == ()
    got = run(plan, "bid", bids)
    table = nexmark["bid"]
    wm = int(ms(table).max()) - DELAY_MS
    expected = window_reference(table, lambda t: [t - t % 5000], 5000, wm)
    assert len(expected) > 100
    assert rows(got) == expected
    assert plan.stats().late_rows_dropped == 0


def test_tumble_count_equals_bounded_datafusion_group_by(bids: pa.RecordBatch) -> None:
    """With no late record a tumbling count is a bounded GROUP BY floor(t / size)."""
    from datafusion import SessionContext

    plan = plan_continuous(
        "SELECT channel, COUNT(*) AS n, TUMBLE_START(\"dateTime\", INTERVAL '3' SECOND) AS ws "
        "FROM bid WHERE channel LIKE 'channel-1%' "
        "GROUP BY channel, TUMBLE(\"dateTime\", INTERVAL '3' SECOND)",
        RELATIONS,
        set(),
    )
    got = run(plan, "bid", bids, 4_000)
    ctx = SessionContext()
    ctx.register_record_batches("b", [[bids]])
    wm = int(ms(pa.Table.from_batches([bids])).max()) - DELAY_MS
    ref = ctx.sql(
        'SELECT channel, COUNT(*) AS n, floor(CAST("dateTime" AS BIGINT) / 3000) * 3000 AS ws '
        'FROM (SELECT channel, arrow_cast("dateTime", \'Int64\') AS "dateTime" FROM b '
        "WHERE channel LIKE 'channel-1%') GROUP BY 1, 3"
    ).to_arrow_table()
    expected = sorted(
        ((c, n, int(ws)) for c, n, ws in rows(ref, ["channel", "n", "ws"]) if ws + 3000 <= wm),
        key=repr,
    )
    assert len(expected) > 100
    assert rows(got, ["channel", "n", "ws"]) == expected


def test_hop_every_aggregate(nexmark: dict[str, pa.Table], bids: pa.RecordBatch) -> None:
    hop = "\"dateTime\", INTERVAL '2' SECOND, INTERVAL '6' SECOND"
    plan = plan_continuous(
        f"SELECT auction % 10 AS k, HOP_START({hop}) AS ws, HOP_END({hop}) AS we, {AGG_SQL} "
        f"FROM bid GROUP BY 1, HOP({hop})",
        RELATIONS,
        set(),
    )
    got = run(plan, "bid", bids)
    table = nexmark["bid"]
    wm = int(ms(table).max()) - DELAY_MS

    def starts(t: int) -> list[int]:
        last = t - t % 2000
        return [s for s in range(last - 4000, last + 1, 2000) if s <= t < s + 6000]

    expected = window_reference(table, starts, 6000, wm)
    assert rows(got) == expected


def test_session_every_aggregate(nexmark: dict[str, pa.Table]) -> None:
    """Sessions of each bidder's bids (gap 3 s), on the Nexmark persons' bids only."""
    table = nexmark["bid"]
    table = table.filter(pc.less(table.column("bidder"), 1040))
    batch = with_record_columns(table)
    plan = plan_continuous(
        "SELECT bidder, SESSION_START(\"dateTime\", INTERVAL '3' SECOND) AS ss, "
        "SESSION_END(\"dateTime\", INTERVAL '3' SECOND) AS se, COUNT(*) AS n, SUM(price) AS s, "
        "AVG(price) AS a, MIN(price) AS lo, MAX(price) AS hi, COUNT(DISTINCT auction) AS d "
        "FROM bid GROUP BY bidder, SESSION(\"dateTime\", INTERVAL '3' SECOND)",
        RELATIONS,
        set(),
    )
    assert plan.output_time_column == "se"
    got = run(plan, "bid", batch, 500)
    wm = int(ms(table).max()) - DELAY_MS
    per: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for bidder, auction, price, when in zip(
        table.column("bidder").to_pylist(),
        table.column("auction").to_pylist(),
        table.column("price").to_pylist(),
        ms(table).tolist(),
        strict=True,
    ):
        per[bidder].append((when, price, auction))
    expected = []
    for bidder, events in per.items():
        events.sort()
        sessions: list[list[tuple[int, int, int]]] = []
        for e in events:
            if sessions and e[0] - sessions[-1][-1][0] < 3000:
                sessions[-1].append(e)
            else:
                sessions.append([e])
        for s in sessions:
            end = s[-1][0] + 3000
            if end <= wm:
                prices = [p for _, p, _ in s]
                expected.append((bidder, s[0][0], end, *agg_values(prices, [a for _, _, a in s])))
    assert len(expected) > 50
    assert rows(got) == sorted(expected, key=repr)


# -- lateness -----------------------------------------------------------------------------


def late_stream(seed: int, n: int = 6_000) -> list[pa.RecordBatch]:
    """Batches of (k, x, t) whose times mostly rise, a tenth of them up to 4 s late."""
    rnd = random.Random(seed)
    batches = []
    k, x, t = [], [], []
    for i in range(n):
        when = 1_000_000 + i * 7
        if rnd.random() < 0.1:
            when -= rnd.randrange(0, 4_000)
        k.append(rnd.choice("abc"))
        x.append(rnd.randrange(0, 50))
        t.append(when)
        if len(k) == 300:
            table = pa.table(
                {"k": k, "x": pa.array(x, pa.int64()), "t": pa.array(t, pa.timestamp("ms"))}
            )
            batches.append(with_record_columns(table))
            k, x, t = [], [], []
    return batches


def tumble_reference(
    batches: list[pa.RecordBatch], size: int, lateness: int, delay: int = 1_000
) -> tuple[dict[tuple[str, int], list[int]], int, int]:
    """Python, one record at a time: a record whose window the watermark before its batch
    has closed (end + lateness <= watermark) is dropped; the watermark moves after each
    batch. Returns the kept values per (k, window start), the final watermark, the drops."""
    wm: int | None = None
    kept: dict[tuple[str, int], list[int]] = defaultdict(list)
    dropped = 0
    for b in batches:
        times = ms(pa.Table.from_batches([b]), "t").tolist()
        for k, x, t in zip(
            b.column("k").to_pylist(), b.column("x").to_pylist(), times, strict=True
        ):
            start = t - t % size
            if wm is not None and start + size + lateness <= wm:
                dropped += 1
                continue
            kept[(k, start)].append(x)
        top = max(times) - delay
        wm = top if wm is None else max(wm, top)
    assert wm is not None
    return kept, wm, dropped


TUMBLE_EV = (
    "SELECT k, TUMBLE_START(t, INTERVAL '1' SECOND) AS ws, COUNT(*) AS n, SUM(x) AS s, "
    "MIN(x) AS lo, MAX(x) AS hi, COUNT(DISTINCT x) AS d FROM ev "
    "GROUP BY k, TUMBLE(t, INTERVAL '1' SECOND)"
)


def ev_values(xs: list[int]) -> tuple:
    return (len(xs), sum(xs), min(xs), max(xs), len(set(xs)))


@pytest.mark.parametrize("lateness", [0, 2_000])
def test_late_records_final(lateness: int) -> None:
    batches = late_stream(lateness)
    plan = plan_continuous(TUMBLE_EV, ALL, set(), allowed_lateness_ms=lateness)
    out: list[pa.RecordBatch] = []
    for b in batches:
        out += plan.process("ev", b)
    got = pa.Table.from_batches(out, schema=plan.output_schema)
    kept, wm, dropped = tumble_reference(batches, 1_000, lateness)
    expected = sorted(
        ((k, s, *ev_values(xs)) for (k, s), xs in kept.items() if s + 1_000 + lateness <= wm),
        key=repr,
    )
    assert dropped > 0
    assert rows(got) == expected
    assert plan.stats().late_rows_dropped == dropped
    assert len(got) == len({(k, s) for k, s, *_ in rows(got)})  # each window once


def test_late_records_updates_converge_to_the_kept_rows() -> None:
    """emit='updates': upserts keyed by (k, ws); the latest row per key is the aggregate of
    every record kept, for each window the watermark has passed."""
    lateness = 2_000
    batches = late_stream(3)
    plan = plan_continuous(TUMBLE_EV, ALL, set(), emit="updates", allowed_lateness_ms=lateness)
    assert plan.key_columns == ("k", "ws")
    view: dict[tuple, tuple] = {}
    updates = 0
    for b in batches:
        for r in rows(pa.Table.from_batches(plan.process("ev", b), schema=plan.output_schema)):
            updates += (r[0], r[1]) in view
            view[(r[0], r[1])] = r
    kept, wm, dropped = tumble_reference(batches, 1_000, lateness)
    expected = sorted(
        ((k, s, *ev_values(xs)) for (k, s), xs in kept.items() if s + 1_000 <= wm), key=repr
    )
    assert sorted(view.values(), key=repr) == expected
    assert updates > 0  # late records within the lateness changed emitted windows
    assert plan.stats().late_rows_dropped == dropped


# -- updating aggregate -------------------------------------------------------------------


@pytest.mark.parametrize("compact_rows", [1, 65_536])
def test_updating_aggregate(
    bids: pa.RecordBatch, compact_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch emits its groups' totals; with state merged after every batch or held
    as pending partials (merged when they outgrow the state)."""
    monkeypatch.setattr(stages, "_COMPACT_MIN_ROWS", compact_rows)
    plan = plan_continuous(
        f"SELECT auction, {AGG_SQL} FROM bid WHERE price > 100000 GROUP BY auction",
        RELATIONS,
        set(),
    )
    assert plan.key_columns == ("auction",)
    view: dict[int, tuple] = {}
    seen: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for i in range(0, bids.num_rows, BATCH):
        part = bids.slice(i, BATCH)
        got = rows(pa.Table.from_batches(plan.process("bid", part), schema=plan.output_schema))
        changed = set()
        for auction, bidder, price in zip(
            *(part.column(c).to_pylist() for c in ("auction", "bidder", "price")), strict=True
        ):
            if price > 100000:
                seen[auction][0].append(price)
                seen[auction][1].append(bidder)
                changed.add(auction)
        # each batch emits exactly the groups it changed, with their totals so far
        assert got == sorted(((a, *agg_values(*seen[a])) for a in changed), key=repr)
        for r in got:
            view[r[0]] = r
    assert len(view) > 1000
    assert sorted(view.values(), key=repr) == sorted(
        ((a, *agg_values(p, b)) for a, (p, b) in seen.items()), key=repr
    )


@pytest.mark.parametrize("compact_rows", [1, 65_536])
def test_updating_aggregate_null_keys_and_values(
    compact_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stages, "_COMPACT_MIN_ROWS", compact_rows)
    table = pa.table(
        {
            "k": pa.array(["a", None, "a", None, "b"]),
            "x": pa.array([1, 2, None, 4, None], pa.int64()),
            "t": pa.array([1, 2, 3, 4, 5], pa.timestamp("ms")),
        }
    )
    plan = plan_continuous(
        "SELECT k, COUNT(*) AS n, COUNT(x) AS nx, SUM(x) AS s, COUNT(DISTINCT x) AS d "
        "FROM ev GROUP BY k",
        ALL,
        set(),
    )
    view = {}
    batch = with_record_columns(table)
    for i in range(5):
        for r in rows(pa.Table.from_batches(plan.process("ev", batch.slice(i, 1)))):
            view[r[0]] = r
    assert sorted(view.values(), key=repr) == sorted(
        [("a", 2, 1, 1, 1), (None, 2, 2, 6, 2), ("b", 1, 0, None, 0)], key=repr
    )


# -- nested -------------------------------------------------------------------------------

HOP = "\"dateTime\", INTERVAL '2' SECOND, INTERVAL '10' SECOND"
MAX_PER_WINDOW = (
    "SELECT MAX(num) AS maxn, starttime, endtime FROM ("
    f" SELECT auction, COUNT(*) AS num, HOP_START({HOP}) AS starttime, HOP_END({HOP}) AS endtime"
    f" FROM bid GROUP BY auction, HOP({HOP})) AS c GROUP BY starttime, endtime"
)


def test_aggregate_over_window_aggregate(
    nexmark: dict[str, pa.Table], bids: pa.RecordBatch
) -> None:
    """Nexmark q5's "max count per window": a GROUP BY on the windowed sub-query's window
    end is itself final once the watermark passes that end."""
    plan = plan_continuous(MAX_PER_WINDOW, RELATIONS, set())
    assert plan.output_time_column == "endtime"
    assert plan.output_schema.field("endtime").metadata == {b"streamhouse.window": b"end"}
    assert plan.output_schema.field("starttime").metadata == {b"streamhouse.window": b"start"}
    got = run(plan, "bid", bids)
    table = nexmark["bid"]
    wm = int(ms(table).max()) - DELAY_MS
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for auction, when in zip(table.column("auction").to_pylist(), ms(table).tolist(), strict=True):
        last = when - when % 2000
        for s in range(last - 8000, last + 1, 2000):
            counts[(auction, s)] += 1
    best: dict[int, int] = defaultdict(int)
    for (_, s), n in counts.items():
        best[s] = max(best[s], n)
    expected = sorted(((n, s, s + 10_000) for s, n in best.items() if s + 10_000 <= wm), key=repr)
    assert len(expected) > 20
    assert rows(got) == expected


def test_window_over_stateless_subquery_and_cte(
    nexmark: dict[str, pa.Table], bids: pa.RecordBatch
) -> None:
    inner = 'SELECT auction, price / 100 AS cents, "dateTime" FROM bid WHERE bidder % 3 = 0'
    for sql in (
        "SELECT SUM(cents) AS s, TUMBLE_END(\"dateTime\", INTERVAL '4' SECOND) AS we "
        f"FROM ({inner}) q GROUP BY TUMBLE(q.\"dateTime\", INTERVAL '4' SECOND)",
        f"WITH q AS ({inner}) SELECT SUM(cents) AS s, window_end AS we FROM q "
        "GROUP BY TUMBLE(\"dateTime\", INTERVAL '4' SECOND)",
    ):
        plan = plan_continuous(sql, RELATIONS, set())
        got = run(plan, "bid", bids)
        table = nexmark["bid"]
        wm = int(ms(table).max()) - DELAY_MS
        sums: dict[int, int] = defaultdict(int)
        for bidder, price, when in zip(
            table.column("bidder").to_pylist(),
            table.column("price").to_pylist(),
            ms(table).tolist(),
            strict=True,
        ):
            if bidder % 3 == 0:
                sums[when - when % 4000 + 4000] += price // 100
        expected = sorted(((s, end) for end, s in sums.items() if end <= wm), key=repr)
        assert rows(got) == expected


# -- snapshot / restore -------------------------------------------------------------------

OVER_UPDATING = (
    "SELECT k, COUNT(*) AS auctions, SUM(top) AS total, AVG(top) AS mean FROM ("
    " SELECT auction % 7 AS k, auction, MAX(price) AS top FROM bid"
    " WHERE bidder % 2 = 0 GROUP BY auction % 7, auction"
    ") q GROUP BY k"
)

SNAPSHOT_QUERIES = {
    "stateless": "SELECT auction, price FROM bid WHERE price % 7 = 1",
    "tumble": "SELECT auction % 10 AS k, TUMBLE_END(\"dateTime\", INTERVAL '5' SECOND) AS we, "
    f"{AGG_SQL} FROM bid GROUP BY auction % 10, TUMBLE(\"dateTime\", INTERVAL '5' SECOND)",
    "session": "SELECT bidder, SESSION_END(\"dateTime\", INTERVAL '1' SECOND) AS se, "
    "COUNT(DISTINCT auction) AS d FROM bid WHERE bidder < 1100 "
    "GROUP BY bidder, SESSION(\"dateTime\", INTERVAL '1' SECOND)",
    "updating": f"SELECT channel, {AGG_SQL} FROM bid GROUP BY channel",
    "nested": MAX_PER_WINDOW,
    "window join (q5)": QUERIES["q5"].sql,
    "over updating": OVER_UPDATING,
}


@pytest.mark.parametrize("name", sorted(SNAPSHOT_QUERIES))
def test_restore_at_cut_points_gives_the_same_results(
    name: str, bids: pa.RecordBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stages, "_COMPACT_MIN_ROWS", 10_000)
    sql = SNAPSHOT_QUERIES[name]
    parts = [bids.slice(i, 7_000) for i in range(0, bids.num_rows, 7_000)]
    whole = plan_continuous(sql, RELATIONS, set())
    expected = [
        rows(pa.Table.from_batches(whole.process("bid", p), schema=whole.output_schema))
        for p in parts
    ]
    assert any(expected)
    for cut in (1, len(parts) // 2, len(parts) - 1):
        first = plan_continuous(sql, RELATIONS, set())
        for p in parts[:cut]:
            first.process("bid", p)
        blob = first.snapshot()
        first.process("bid", parts[cut])  # the old plan moves on; the snapshot must not
        second = plan_continuous(sql, RELATIONS, set())
        second.restore(blob)
        got = [
            rows(pa.Table.from_batches(second.process("bid", p), schema=second.output_schema))
            for p in parts[cut:]
        ]
        assert got == expected[cut:], f"cut {cut}"
        assert second.stats().rows_in == whole.stats().rows_in
        assert second.watermark_ms() == whole.watermark_ms()


def test_restore_refuses_another_query(bids: pa.RecordBatch) -> None:
    a = plan_continuous(SNAPSHOT_QUERIES["tumble"], RELATIONS, set())
    a.process("bid", bids.slice(0, 1000))
    b = plan_continuous(SNAPSHOT_QUERIES["nested"], RELATIONS, set())
    with pytest.raises(PlanError, match="another query"):
        b.restore(a.snapshot())
    c = plan_continuous(SNAPSHOT_QUERIES["updating"], RELATIONS, set())
    with pytest.raises(PlanError):
        c.restore(a.snapshot())
    with pytest.raises(PlanError, match="not a continuous query snapshot"):
        a.restore(b"garbage")


# -- errors -------------------------------------------------------------------------------

ERRORS = [
    ("SELECT * FROM bids", "no stream, table or topic called 'bids': declared are auction, bid"),
    ("SELECT nope FROM bid", "unknown column 'nope'.*auction, bidder, price"),
    ("SELECT x.price FROM bid b", "unknown relation 'x'"),
    ("SELECT price FROM bid ORDER BY price", "ORDER BY needs a window"),
    ("SELECT price FROM bid LIMIT 3", "LIMIT"),
    ("SELECT auction, price, COUNT(*) FROM bid GROUP BY auction", "'price'.*GROUP BY"),
    (
        "SELECT COUNT(*) FROM bid GROUP BY TUMBLE(price, INTERVAL '1' SECOND)",
        "price.? has no watermark; the event-time column of bid is dateTime",
    ),
    (
        "SELECT COUNT(*) FROM topics.t GROUP BY TUMBLE(\"timestamp\", INTERVAL '1' SECOND)",
        "has no event time",
    ),
    ("SELECT auction, stddev(price) FROM bid GROUP BY auction", "(?i)stddev.*not supported"),
    ("SELECT COUNT(*) FROM bid", "no key"),
    ("SELECT auction, COUNT(*) FROM bid GROUP BY auction HAVING COUNT(*) > 2", "HAVING"),
    (
        "SELECT auction, MAX(n) FROM (SELECT auction, COUNT(*) AS n FROM bid GROUP BY auction) q "
        "GROUP BY auction",
        "MAX over an updating result cannot take rows back",
    ),
    (
        "SELECT n FROM (SELECT auction, COUNT(*) AS n FROM bid GROUP BY auction) q",
        "can only aggregate",
    ),
    ("SELECT * FROM prices", "table"),
    ("SELECT FROM WHERE", "does not parse"),
    ("SELECT 1; SELECT 2", "one SELECT"),
    ("SELECT price FROM bid UNION SELECT price FROM bid", "UNION"),
    ("SELECT row_number() OVER () FROM bid", "OVER"),
    ("SELECT price FROM bid WHERE price IN (SELECT 1)", "sub-queries"),
    ("WITH x AS (SELECT * FROM x) SELECT * FROM x", "no stream, table or topic called 'x'"),
    (
        "SELECT COUNT(*) AS n FROM bid GROUP BY TUMBLE(\"dateTime\", INTERVAL '1' FORTNIGHT)",
        "unit",
    ),
    ("SELECT auction AS a, price AS a FROM bid", "appears twice"),
    ("SELECT auction, COUNT(*) FROM bid GROUP BY auction, bidder", 'GROUP BY "bidder": select it'),
    (
        "SELECT auction, COUNT(*) FILTER (WHERE price > 1) FROM bid GROUP BY auction",
        "FILTER is not supported",
    ),
    (
        "SELECT TUMBLE_START(\"dateTime\", INTERVAL '1' SECOND) FROM bid",
        "needs GROUP BY TUMBLE",
    ),
    (
        "SELECT SUM(channel) FROM bid GROUP BY TUMBLE(\"dateTime\", INTERVAL '1' SECOND)",
        'SUM."channel". needs a number, not string',
    ),
    (
        "SELECT TUMBLE_START(\"dateTime\", INTERVAL '2' SECOND), COUNT(*) FROM bid "
        "GROUP BY TUMBLE(\"dateTime\", INTERVAL '1' SECOND)",
        "repeat the arguments",
    ),
    (
        "SELECT HOP_START(\"dateTime\", INTERVAL '1' SECOND), COUNT(*) FROM bid "
        "GROUP BY TUMBLE(\"dateTime\", INTERVAL '1' SECOND)",
        "needs GROUP BY HOP",
    ),
    (
        "SELECT COUNT(*) FROM bid GROUP BY HOP(\"dateTime\", INTERVAL '5' SECOND, "
        "INTERVAL '1' SECOND)",
        "exceeds its size",
    ),
    ("SELECT b.price FROM bid b RIGHT JOIN bid c ON b.auction = c.auction", "RIGHT JOIN"),
    ("SELECT price + 'x' FROM bid", "DataFusion refuses"),
]


@pytest.mark.parametrize(("sql", "message"), ERRORS)
def test_errors_say_what_to_change(sql: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan_continuous(sql, ALL, {"t"})


def test_bad_options() -> None:
    with pytest.raises(PlanError, match="emit"):
        plan_continuous("SELECT price FROM bid", RELATIONS, set(), emit="sometimes")
    with pytest.raises(PlanError, match="lateness"):
        plan_continuous("SELECT price FROM bid", RELATIONS, set(), allowed_lateness_ms=-1)
    with pytest.raises(PlanError, match="window start or end"):
        plan_continuous(
            "SELECT COUNT(*) AS n FROM bid GROUP BY TUMBLE(\"dateTime\", INTERVAL '1' SECOND)",
            RELATIONS,
            set(),
            emit="updates",
        )
    plan = plan_continuous("SELECT price FROM bid", RELATIONS, set())
    with pytest.raises(PlanError, match="reads bid, not 'person'"):
        plan.process("person", pa.RecordBatch.from_pylist([]))


def test_interval_forms() -> None:
    for text in ("INTERVAL '1500' MILLISECOND", "INTERVAL '1.5 seconds'", "INTERVAL '1.5' SECOND"):
        plan = plan_continuous(
            # the select list may write the interval another way
            "SELECT COUNT(*) AS n, TUMBLE_END(\"dateTime\", INTERVAL '1500 milliseconds') AS e "
            f'FROM bid GROUP BY TUMBLE("dateTime", {text})',
            RELATIONS,
            set(),
        )
        stage = list(plan.stages.values())[-1]
        assert stage.op.window.size_ms == 1500, text


# -- an aggregate over an updating aggregate (retractions) ---------------------------------


def over_updating_reference(table: pa.Table) -> list[tuple]:
    top: dict[int, int] = {}
    for auction, bidder, price in zip(
        *(table.column(c).to_pylist() for c in ("auction", "bidder", "price")), strict=True
    ):
        if bidder % 2 == 0:
            top[auction] = max(top.get(auction, price), price)
    per: dict[int, list[int]] = defaultdict(list)
    for auction, p in top.items():
        per[auction % 7].append(p)
    return sorted(
        ((k, len(ps), sum(ps), round(sum(ps) / len(ps), 6)) for k, ps in per.items()), key=repr
    )


def test_aggregate_over_updating_aggregate(nexmark: dict[str, pa.Table]) -> None:
    """Nexmark q4's shape: the inner GROUP BY's changes reach the outer one as a changelog
    (old row taken back, new row added), so the view converges to the aggregate of the
    inner result over the whole input, after every batch."""
    table = nexmark["bid"]
    batch = with_record_columns(table)
    plan = plan_continuous(OVER_UPDATING, RELATIONS, set())
    assert plan.key_columns == ("k",)
    assert "__sign" not in plan.output_schema.names
    view: dict[int, tuple] = {}
    for i in range(0, batch.num_rows, 9_000):
        for r in rows(pa.Table.from_batches(plan.process("bid", batch.slice(i, 9_000)))):
            view[r[0]] = r
        # after each batch, the view is the reference over the rows read so far
        assert sorted(view.values(), key=repr) == over_updating_reference(table.slice(0, i + 9_000))
    blob = plan.snapshot()
    again = plan_continuous(OVER_UPDATING, RELATIONS, set())
    again.restore(blob)
    extra = batch.slice(0, 3_000)  # the same bids once more: maxima do not change
    assert rows(pa.Table.from_batches(again.process("bid", extra))) == rows(
        pa.Table.from_batches(plan.process("bid", extra))
    )


# -- joins (the planner's part: conjuncts split, columns renamed, sides told apart) --------


def test_self_join_and_conjuncts_below_the_join(nexmark: dict[str, pa.Table]) -> None:
    table = nexmark["bid"].slice(0, 3_000)
    plan = plan_continuous(
        "SELECT a.auction, a.price, c.price AS p2 FROM bid a JOIN bid c "
        'ON a.auction = c.auction AND c."dateTime" BETWEEN a."dateTime" AND '
        "a.\"dateTime\" + INTERVAL '1' SECOND WHERE a.bidder <> c.bidder AND a.price > 1000",
        RELATIONS,
        set(),
    )
    kinds = [type(s).__name__ for s in plan.stages.values()]
    # a.price > 1000 runs below the join on a's side (a filter stage), the rest of the WHERE
    # in the join's condition, the select list above the join
    assert kinds == ["StatelessStage", "SymmetricJoin", "StatelessStage"]
    plain = plan_continuous(
        'SELECT a.price FROM bid a JOIN bid c ON a.auction = c.auction AND c."dateTime" '
        'BETWEEN a."dateTime" AND a."dateTime" + INTERVAL \'1\' SECOND',
        RELATIONS,
        set(),
    )
    # without filters a self-join's second input gets a stage of its own: the join stage
    # tells its inputs apart by name
    join = list(plain.stages.values())[1]
    assert join.inputs == ("bid", "s0")
    got = run(plan, "bid", with_record_columns(table), 500)
    events = list(
        zip(
            *(table.column(c).to_pylist() for c in ("auction", "bidder", "price")),
            ms(table),
            strict=True,
        )
    )
    by_auction: dict[int, list[tuple]] = defaultdict(list)
    for e in events:
        by_auction[e[0]].append(e)
    expected = [
        (x[0], x[2], y[2])
        for group in by_auction.values()
        for x in group
        for y in group
        if x[3] <= y[3] <= x[3] + 1000 and x[1] != y[1] and x[2] > 1000
    ]
    assert len(expected) > 1000
    assert rows(got) == sorted(expected, key=repr)


def test_left_join_on_condition_of_the_left_side_stays_in_the_join(
    nexmark: dict[str, pa.Table],
) -> None:
    """In a LEFT JOIN, ``ON b.price > X`` must not drop bids (they come out unmatched), so
    the planner hands it to the join instead of filtering below it."""
    bids = nexmark["bid"].slice(0, 5_000)
    threshold = int(np.median(bids.column("price").to_numpy()))
    plan = plan_continuous(
        "SELECT b.auction, b.price, p.p FROM bid b LEFT JOIN prices p "
        f"ON b.channel = p.item AND b.price > {threshold}",
        ALL,
        set(),
    )
    prices = {"Google": 1, "Apple": 2, "Baidu": 3}
    table = pa.table(
        {
            "item": list(prices),
            "p": pa.array(list(prices.values()), pa.int64()),
            "_key": pa.array([k.encode() for k in prices], pa.binary()),
        }
    )
    n = table.num_rows
    table = table.append_column("_partition", pa.array(np.zeros(n, np.int32)))
    table = table.append_column("_offset", pa.array(np.arange(n, dtype=np.int64)))
    table = table.append_column(
        "_timestamp", pa.array(np.zeros(n, np.int64), pa.timestamp("ms", "UTC"))
    )
    assert plan.process("prices", table.to_batches()[0]) == []
    got = run(plan, "bid", with_record_columns(bids), 1_000)
    expected = [
        (a, price, prices.get(ch) if price > threshold else None)
        for a, price, ch in zip(
            *(bids.column(c).to_pylist() for c in ("auction", "price", "channel")), strict=True
        )
    ]
    assert got.num_rows == bids.num_rows
    assert rows(got) == sorted(expected, key=repr)
    assert any(r[2] is not None for r in expected) and any(r[2] is None for r in expected)


def test_window_having_order_and_expressions_over_aggregates(
    nexmark: dict[str, pa.Table], bids: pa.RecordBatch
) -> None:
    """HAVING filters the emitted windows, ORDER BY orders each emission, and the select
    list may compute over aggregates and keys; GROUP BY may name a select alias."""
    plan = plan_continuous(
        "SELECT auction % 50 AS bucket, COUNT(*) AS n, SUM(price) / COUNT(*) AS mean, "
        "MAX(price) - MIN(price) AS spread, TUMBLE_END(\"dateTime\", INTERVAL '5' SECOND) AS we "
        "FROM bid GROUP BY bucket, TUMBLE(\"dateTime\", INTERVAL '5' SECOND) "
        "HAVING COUNT(*) >= 30 ORDER BY n DESC, bucket",
        RELATIONS,
        set(),
    )
    out: list[pa.RecordBatch] = []
    for i in range(0, bids.num_rows, BATCH):
        emitted = plan.process("bid", bids.slice(i, BATCH))
        for b in emitted:
            pairs = list(
                zip(b.column("n").to_pylist(), b.column("bucket").to_pylist(), strict=True)
            )
            assert pairs == sorted(pairs, key=lambda p: (-p[0], p[1]))
        out += emitted
    got = pa.Table.from_batches(out, schema=plan.output_schema)
    table = nexmark["bid"]
    wm = int(ms(table).max()) - DELAY_MS
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for auction, price, when in zip(
        table.column("auction").to_pylist(),
        table.column("price").to_pylist(),
        ms(table).tolist(),
        strict=True,
    ):
        groups[(auction % 50, when - when % 5000 + 5000)].append(price)
    expected = sorted(
        (
            (b, len(p), sum(p) // len(p), max(p) - min(p), end)
            for (b, end), p in groups.items()
            if end <= wm and len(p) >= 30
        ),
        key=repr,
    )
    assert len(expected) > 20
    assert rows(got) == expected


def test_stats_count_null_times_and_join_state(nexmark: dict[str, pa.Table]) -> None:
    table = pa.table(
        {
            "k": pa.array(["a", "a", "b"]),
            "x": pa.array([1, 2, 3], pa.int64()),
            "t": pa.array([1_000, None, 2_000], pa.timestamp("ms")),
        }
    )
    plan = plan_continuous(TUMBLE_EV, ALL, set())
    plan.process("ev", with_record_columns(table))
    assert plan.stats().extra["null_time_rows"] == 1
    assert plan.watermark_ms() == 1_000  # null times do not move the watermark
    join = plan_continuous(QUERIES["q3"].sql, RELATIONS, set())
    auctions = nexmark["auction"].slice(0, 500)
    join.process("auction", with_record_columns(auctions))
    # a regular join keeps every row of the filtered auctions (category 10)
    kept = pc.sum(pc.equal(auctions.column("category"), 10)).as_py()
    assert kept > 0 and join.stats().extra["join_buffered_rows"] == kept


def test_select_star_over_a_join_names_columns_once(nexmark: dict[str, pa.Table]) -> None:
    plan = plan_continuous(
        "SELECT * FROM auction a JOIN person p ON a.seller = p.id", RELATIONS, set()
    )
    names = plan.output_schema.names
    # unique columns keep their names, shared ones are <alias>__<column>
    assert "a__id" in names and "p__id" in names
    assert "seller" in names and "emailAddress" in names and "a__dateTime" in names
    people = nexmark["person"].slice(0, 300)
    auctions = nexmark["auction"].slice(0, 900)
    plan.process("person", with_record_columns(people))
    got = pa.Table.from_batches(
        plan.process("auction", with_record_columns(auctions)), schema=plan.output_schema
    )
    ids = set(people.column("id").to_pylist())
    expected = [s for s in auctions.column("seller").to_pylist() if s in ids]
    assert len(expected) > 0
    assert sorted(got.column("seller").to_pylist()) == sorted(expected)
    assert got.column("seller").to_pylist() == got.column("p__id").to_pylist()


@pytest.mark.parametrize("lateness", [0, 1_500])
def test_late_records_hop_and_session(lateness: int) -> None:
    """HOP: a record counts in those of its windows still open (dropped and counted when
    none is); SESSION: a record older than the watermark minus the lateness is dropped."""
    batches = late_stream(10 + lateness)
    hop = plan_continuous(
        "SELECT k, HOP_START(t, INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND) AS ws, "
        "COUNT(*) AS n, SUM(x) AS s FROM ev "
        "GROUP BY k, HOP(t, INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND)",
        ALL,
        set(),
        allowed_lateness_ms=lateness,
    )
    session = plan_continuous(
        "SELECT k, SESSION_START(t, INTERVAL '40' MILLISECOND) AS ss, "
        "SESSION_END(t, INTERVAL '40' MILLISECOND) AS se, COUNT(*) AS n, SUM(x) AS s FROM ev "
        "GROUP BY k, SESSION(t, INTERVAL '40' MILLISECOND)",
        ALL,
        set(),
        allowed_lateness_ms=lateness,
    )
    got_hop: list[pa.RecordBatch] = []
    got_session: list[pa.RecordBatch] = []
    for b in batches:
        got_hop += hop.process("ev", b)
        got_session += session.process("ev", b)
    # the references, a record at a time, the watermark moved after each batch
    wm: int | None = None
    windows: dict[tuple[str, int], list[int]] = defaultdict(list)
    kept: dict[str, list[tuple[int, int]]] = defaultdict(list)
    hop_dropped = session_dropped = 0
    for b in batches:
        times = ms(pa.Table.from_batches([b]), "t").tolist()
        for k, x, t in zip(
            b.column("k").to_pylist(), b.column("x").to_pylist(), times, strict=True
        ):
            last = t - t % 500
            starts = [s for s in range(last - 1500, last + 1, 500)]
            open_ = [s for s in starts if wm is None or s + 2000 + lateness > wm]
            hop_dropped += not open_
            for s in open_:
                windows[(k, s)].append(x)
            if wm is not None and t < wm - lateness:
                session_dropped += 1
            else:
                kept[k].append((t, x))
        top = max(times) - 1_000
        wm = top if wm is None else max(wm, top)
    assert wm is not None
    expected_hop = sorted(
        ((k, s, len(xs), sum(xs)) for (k, s), xs in windows.items() if s + 2000 + lateness <= wm),
        key=repr,
    )
    assert rows(pa.Table.from_batches(got_hop, schema=hop.output_schema)) == expected_hop
    assert hop.stats().late_rows_dropped == hop_dropped
    expected_session = []
    for k, events in kept.items():
        events.sort()
        runs: list[list[tuple[int, int]]] = []
        for e in events:
            if runs and e[0] - runs[-1][-1][0] < 40:
                runs[-1].append(e)
            else:
                runs.append([e])
        for r in runs:
            end = r[-1][0] + 40
            if end + lateness <= wm:
                expected_session.append((k, r[0][0], end, len(r), sum(x for _, x in r)))
    got = rows(pa.Table.from_batches(got_session, schema=session.output_schema))
    assert got == sorted(expected_session, key=repr)
    assert session.stats().late_rows_dropped == session_dropped > 0
