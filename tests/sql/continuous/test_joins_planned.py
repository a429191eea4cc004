"""Join stages inside plans compiled from SQL (``plan_continuous``), against references in
plain Python: a stream joined with a declared TABLE (the lookup join) and a LEFT interval
join, fed source-shaped batches (declared columns plus ``_partition``, ``_offset``,
``_timestamp``; a table's also ``_key``), with a snapshot and restore of the whole plan in
the middle. (Nexmark q3, q5, q7 and q8 through the planner are checked in
tests/bench/test_nexmark_queries.py.)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench.nexmark.generator import Generator, create_stream_sql
from bench.nexmark.model import ModelConfig
from sql.catalog import Relation
from sql.continuous.plan import plan_continuous
from sql.statements import CreateRelation, parse_statement

BATCH = 300


def relation(kind: str) -> Relation:
    stmt = parse_statement(create_stream_sql(kind))
    assert isinstance(stmt, CreateRelation)
    return Relation(
        kind=stmt.kind,
        name=stmt.name,
        topic=stmt.options["topic"],
        format=stmt.options["format"],
        columns=stmt.columns,
        watermark=stmt.watermark,
    )


def relations() -> dict[str, Relation]:
    out = {kind: relation(kind) for kind in ("person", "auction", "bid")}
    out["people"] = msgspec.structs.replace(out["person"], kind="table", name="people")
    return out


def source_batches(table: pa.Table, keyed: bool) -> list[pa.RecordBatch]:
    n = table.num_rows
    full = table
    if keyed:
        keys = pc.cast(pc.cast(table.column("id"), pa.string()), pa.binary())
        full = full.append_column("_key", keys)
    full = full.append_column("_partition", pa.array(np.zeros(n, np.int32)))
    full = full.append_column("_offset", pa.array(np.arange(n)))
    full = full.append_column(
        "_timestamp", pc.cast(table.column("dateTime"), pa.timestamp("ms", tz="UTC"))
    )
    return full.combine_chunks().to_batches(max_chunksize=BATCH)


def feed(
    items: dict[str, list[pa.RecordBatch]], lag_ms: dict[str, int] | None = None
) -> list[tuple[str, pa.RecordBatch]]:
    """Every source's batches merged by their first event time (plus the source's lag)."""
    merged = []
    for name, batches in items.items():
        for b in batches:
            first = b.column("dateTime").cast(pa.int64())[0].as_py() + (lag_ms or {}).get(name, 0)
            merged.append((first, name, b))
    merged.sort(key=lambda x: (x[0], x[1]))
    return [(name, b) for _, name, b in merged]


def run(plan: Any, order: list[tuple[str, pa.RecordBatch]], columns: list[str]) -> list[tuple]:
    out = []
    for name, batch in order:
        for b in plan.process(name, batch):
            out += [tuple(r[c] for c in columns) for r in b.to_pylist()]
    return out


def tables(events: int, seed: int) -> dict[str, pa.Table]:
    chunk = next(Generator(seed, ModelConfig(rate=200)).chunks(events))
    return {"person": chunk.person, "auction": chunk.auction, "bid": chunk.bid}


def test_stream_left_join_table_in_a_plan_with_restore() -> None:
    data = tables(10_000, 31)
    sql = (
        "SELECT P.name, P.city, A.id, A.seller FROM auction A LEFT JOIN people P "
        "ON A.seller = P.id WHERE A.category = 10"
    )
    order = feed(
        {
            "auction": source_batches(data["auction"], False),
            "people": source_batches(data["person"], True),
        },
        {"people": 5000},  # the table lags: some auctions come before their seller
    )
    columns = ["name", "city", "id", "seller"]
    plan = plan_continuous(sql, relations(), set())
    assert any(getattr(s, "algorithm", "") == "lookup" for s in plan.stages.values())
    whole = run(plan, order, columns)
    # reference: each auction row against the people seen before its batch
    people: dict[int, dict] = {}
    want = []
    for name, batch in order:
        if name == "people":
            people.update((r["id"], r) for r in batch.to_pylist())
            continue
        for a in batch.to_pylist():
            if a["category"] != 10:
                continue
            p = people.get(a["seller"])
            want.append((p["name"] if p else None, p["city"] if p else None, a["id"], a["seller"]))
    assert sum(1 for r in want if r[0] is None) > 0 and sum(1 for r in want if r[0]) > 20
    assert Counter(whole) == Counter(want)
    cut = len(order) // 2
    first = plan_continuous(sql, relations(), set())
    got = run(first, order[:cut], columns)
    second = plan_continuous(sql, relations(), set())
    second.restore(first.snapshot())
    got += run(second, order[cut:], columns)
    assert Counter(got) == Counter(want)


def test_left_interval_join_in_a_plan_with_restore() -> None:
    """Auctions with the bids of their first 2 seconds (none: one row with nulls)."""
    data = tables(10_000, 37)
    sql = (
        'SELECT A.id, A."dateTime" AS t, B.price FROM auction A LEFT JOIN bid B '
        'ON B.auction = A.id AND B."dateTime" BETWEEN A."dateTime" '
        "AND A.\"dateTime\" + INTERVAL '2' SECOND"
    )
    order = feed(
        {
            "auction": source_batches(data["auction"], False),
            "bid": source_batches(data["bid"], False),
        }
    )
    columns = ["id", "t", "price"]
    plan = plan_continuous(sql, relations(), set())
    assert any(getattr(s, "algorithm", "") == "interval" for s in plan.stages.values())
    whole = run(plan, order, columns)
    # the generator's times only grow, so no row is late; the unmatched auctions that
    # come out are those the final bid watermark (last bid time - 4 s) has passed by 2 s
    last_bid = max(r["dateTime"] for r in data["bid"].to_pylist())
    bid_wm_ms = int(last_bid.timestamp() * 1000) - 4000
    bids: dict[int, list[dict]] = {}
    for b in data["bid"].to_pylist():
        bids.setdefault(b["auction"], []).append(b)
    want = []
    for a in data["auction"].to_pylist():
        t = a["dateTime"]
        hits = [b for b in bids.get(a["id"], []) if 0 <= (b["dateTime"] - t).total_seconds() <= 2]
        want += [(a["id"], t, b["price"]) for b in hits]
        if not hits and int(t.timestamp() * 1000) + 2000 < bid_wm_ms:
            want.append((a["id"], t, None))
    assert sum(1 for r in want if r[2] is None) > 10 and len(want) > 100
    assert Counter(whole) == Counter(want)
    cut = len(order) // 3
    first = plan_continuous(sql, relations(), set())
    got = run(first, order[:cut], columns)
    second = plan_continuous(sql, relations(), set())
    second.restore(first.snapshot())
    got += run(second, order[cut:], columns)
    assert Counter(got) == Counter(want)
