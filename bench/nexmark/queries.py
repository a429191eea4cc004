"""Nexmark queries q0-q8 in StreamHouse SQL, and a reference result for each.

The SQL runs over the three streams ``create_stream_sql`` declares (``person``, ``auction``,
``bid``; camelCase columns quoted; a watermark 4 s behind ``"dateTime"``). Windows use the
group-window functions continuous queries plan (``TUMBLE``/``HOP`` in GROUP BY,
``*_START``/``*_END`` in the select list, see ``sql/continuous/plan.py``). Where Flink's
Nexmark text needs something StreamHouse SQL spells differently, the query says so:

- q2 uses ``%`` for ``MOD``.
- q5 also returns each window's start (Flink's q5 returns auction and count only), so a
  result row says which window it is for.
- q7 joins back on ``TUMBLE_END`` with a half-open range (Flink: ``TUMBLE_ROWTIME`` and
  ``BETWEEN``), the same windows.
- q4 (average closing price per category) averages an updating aggregate (each auction's
  running maximum, taken back and replaced as bids arrive): its results are upserts keyed
  by category (``updating``), and the reference is the latest row per category.

References
----------
Each reference is computed from the generated tables directly in Python and pyarrow, knowing
nothing of the planner: it is what the query must produce once its input is fully read and
the watermark stands at ``final_watermark_ms`` (the largest ``dateTime`` of the streams the
query windows, minus 4 s): only windows that watermark closes (``end <= watermark``) are in
the expected result. Results compare as multisets of rows (``canonical_rows``), since a
continuous query emits in its own order.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

__all__ = [
    "QUERIES",
    "WATERMARK_DELAY_MS",
    "NexmarkQuery",
    "canonical_rows",
    "final_watermark_ms",
]

WATERMARK_DELAY_MS = 4_000
TEN_S = 10_000
TWO_S = 2_000

Tables = dict[str, pa.Table]
Row = tuple[Any, ...]


@dataclass(frozen=True)
class NexmarkQuery:
    """``streams``: what the query reads; ``columns``: its output columns in order;
    ``reference(tables, watermark_ms)``: the expected rows; ``windowed``: results depend on
    the watermark; ``updating``: results are upserts (not an append-only stream)."""

    name: str
    sql: str
    streams: tuple[str, ...]
    columns: tuple[str, ...]
    reference: Callable[[Tables, int], list[Row]]
    windowed: bool = False
    updating: bool = False


def final_watermark_ms(tables: Tables, streams: tuple[str, ...]) -> int:
    """The watermark once every row of ``streams`` is read: the smallest of the streams'
    (largest event time - 4 s); a query joining two streams waits for the slower one."""
    marks = []
    for name in streams:
        times = tables[name].column("dateTime").cast(pa.int64()).to_pylist()
        if times:
            marks.append(max(times) - WATERMARK_DELAY_MS)
    return min(marks) if marks else -(2**63)


def canonical_rows(table: pa.Table, columns: tuple[str, ...]) -> list[Row]:
    """The rows of ``columns`` as sorted tuples (timestamps as int ms; floats rounded to 9
    places), the form references are in."""
    cols = []
    for name in columns:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        values = col.to_pylist()
        if pa.types.is_floating(col.type):
            values = [None if v is None else round(v, 9) for v in values]
        cols.append(values)
    return sorted(zip(*cols, strict=True), key=repr)


def _rows(table: pa.Table, *names: str) -> list[Row]:
    cols = []
    for name in names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        cols.append(col.to_pylist())
    return list(zip(*cols, strict=True))


def _sorted(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=repr)


# ------------------------------------------------------------------ q0 q1 q2: stateless


def _q0(t: Tables, _wm: int) -> list[Row]:
    return _sorted(_rows(t["bid"], "auction", "bidder", "price", "dateTime", "extra"))


def _q1(t: Tables, _wm: int) -> list[Row]:
    rows = _rows(t["bid"], "auction", "bidder", "price", "dateTime", "extra")
    return _sorted([(a, b, round(0.908 * p, 9), d, e) for a, b, p, d, e in rows])


def _q2(t: Tables, _wm: int) -> list[Row]:
    return _sorted([(a, p) for a, p in _rows(t["bid"], "auction", "price") if a % 123 == 0])


# ------------------------------------------------------------------ q3: join


def _q3(t: Tables, _wm: int) -> list[Row]:
    people = defaultdict(list)
    for pid, name, city, state in _rows(t["person"], "id", "name", "city", "state"):
        if state in ("OR", "ID", "CA"):
            people[pid].append((name, city, state))
    out = []
    for aid, seller, category in _rows(t["auction"], "id", "seller", "category"):
        if category == 10:
            out.extend((name, city, state, aid) for name, city, state in people.get(seller, ()))
    return _sorted(out)


# ------------------------------------------------------------------ q4: updating aggregate


def _q4(t: Tables, _wm: int) -> list[Row]:
    auctions = {
        aid: (start, expires, category)
        for aid, start, expires, category in _rows(
            t["auction"], "id", "dateTime", "expires", "category"
        )
    }
    final: dict[int, int] = {}
    for auction, price, when in _rows(t["bid"], "auction", "price", "dateTime"):
        a = auctions.get(auction)
        if a is not None and a[0] <= when <= a[1]:
            final[auction] = max(final.get(auction, price), price)
    per_category: dict[int, list[int]] = defaultdict(list)
    for aid, price in final.items():
        per_category[auctions[aid][2]].append(price)
    return _sorted([(c, round(sum(p) / len(p), 9)) for c, p in per_category.items()])


# ------------------------------------------------------------------ q5: hot items (hop)


def _hop_starts(when: int, size: int, slide: int) -> range:
    last = when - when % slide
    return range(last - size + slide, last + 1, slide)


def _q5(t: Tables, wm: int) -> list[Row]:
    counts: dict[int, Counter[int]] = defaultdict(Counter)
    for auction, when in _rows(t["bid"], "auction", "dateTime"):
        for start in _hop_starts(when, TEN_S, TWO_S):
            counts[start][auction] += 1
    out = []
    for start, per_auction in counts.items():
        if start + TEN_S > wm:
            continue  # not closed by the final watermark
        top = max(per_auction.values())
        out.extend((a, n, start) for a, n in per_auction.items() if n >= top)
    return _sorted(out)


# ------------------------------------------------------------------ q7: highest bid (tumble)


def _q7(t: Tables, wm: int) -> list[Row]:
    rows = _rows(t["bid"], "auction", "price", "bidder", "dateTime", "extra")
    best: dict[int, int] = {}
    for _a, price, _b, when, _e in rows:
        start = when - when % TEN_S
        best[start] = max(best.get(start, price), price)
    out = []
    for auction, price, bidder, when, extra in rows:
        start = when - when % TEN_S
        if start + TEN_S <= wm and price == best[start]:
            out.append((auction, price, bidder, when, extra))
    return _sorted(out)


# ------------------------------------------------------------------ q8: new users (window join)


def _q8(t: Tables, wm: int) -> list[Row]:
    people = set()
    for pid, name, when in _rows(t["person"], "id", "name", "dateTime"):
        people.add((pid, name, when - when % TEN_S))
    sellers = set()
    for seller, when in _rows(t["auction"], "seller", "dateTime"):
        sellers.add((seller, when - when % TEN_S))
    out = [
        (pid, name, start)
        for pid, name, start in people
        if (pid, start) in sellers and start + TEN_S <= wm
    ]
    return _sorted(out)


QUERIES: dict[str, NexmarkQuery] = {
    q.name: q
    for q in (
        NexmarkQuery(
            "q0",
            'SELECT auction, bidder, price, "dateTime", extra FROM bid',
            ("bid",),
            ("auction", "bidder", "price", "dateTime", "extra"),
            _q0,
        ),
        NexmarkQuery(
            "q1",
            'SELECT auction, bidder, 0.908 * price AS price, "dateTime", extra FROM bid',
            ("bid",),
            ("auction", "bidder", "price", "dateTime", "extra"),
            _q1,
        ),
        NexmarkQuery(
            "q2",
            "SELECT auction, price FROM bid WHERE auction % 123 = 0",
            ("bid",),
            ("auction", "price"),
            _q2,
        ),
        NexmarkQuery(
            "q3",
            "SELECT P.name, P.city, P.state, A.id "
            "FROM auction AS A INNER JOIN person AS P ON A.seller = P.id "
            "WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')",
            ("auction", "person"),
            ("name", "city", "state", "id"),
            _q3,
        ),
        NexmarkQuery(
            "q4",
            "SELECT Q.category, AVG(Q.final) AS avg_final FROM ("
            " SELECT MAX(B.price) AS final, A.category FROM auction A, bid B"
            ' WHERE A.id = B.auction AND B."dateTime" BETWEEN A."dateTime" AND A.expires'
            " GROUP BY A.id, A.category"
            ") Q GROUP BY Q.category",
            ("auction", "bid"),
            ("category", "avg_final"),
            _q4,
            updating=True,
        ),
        NexmarkQuery(
            "q5",
            "SELECT AuctionBids.auction, AuctionBids.num, AuctionBids.starttime FROM ("
            " SELECT B1.auction, COUNT(*) AS num,"
            "  HOP_START(B1.\"dateTime\", INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS starttime,"
            "  HOP_END(B1.\"dateTime\", INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS endtime"
            " FROM bid B1"
            " GROUP BY B1.auction, HOP(B1.\"dateTime\", INTERVAL '2' SECOND, INTERVAL '10' SECOND)"
            ") AS AuctionBids JOIN ("
            " SELECT MAX(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime FROM ("
            "  SELECT COUNT(*) AS num,"
            "   HOP_START(B2.\"dateTime\", INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS starttime,"
            "   HOP_END(B2.\"dateTime\", INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS endtime"
            "  FROM bid B2"
            "  GROUP BY B2.auction, HOP(B2.\"dateTime\", INTERVAL '2' SECOND, INTERVAL '10' SECOND)"
            " ) AS CountBids GROUP BY CountBids.starttime, CountBids.endtime"
            ") AS MaxBids ON AuctionBids.starttime = MaxBids.starttime"
            " AND AuctionBids.endtime = MaxBids.endtime AND AuctionBids.num >= MaxBids.maxn",
            ("bid",),
            ("auction", "num", "starttime"),
            _q5,
            windowed=True,
        ),
        NexmarkQuery(
            "q7",
            'SELECT B.auction, B.price, B.bidder, B."dateTime", B.extra FROM bid B JOIN ('
            " SELECT MAX(B1.price) AS maxprice,"
            "  TUMBLE_END(B1.\"dateTime\", INTERVAL '10' SECOND) AS endtime"
            " FROM bid B1 GROUP BY TUMBLE(B1.\"dateTime\", INTERVAL '10' SECOND)"
            ") B1 ON B.price = B1.maxprice"
            " WHERE B.\"dateTime\" >= B1.endtime - INTERVAL '10' SECOND"
            ' AND B."dateTime" < B1.endtime',
            ("bid",),
            ("auction", "price", "bidder", "dateTime", "extra"),
            _q7,
            windowed=True,
        ),
        NexmarkQuery(
            "q8",
            "SELECT P.id, P.name, P.starttime FROM ("
            " SELECT P.id, P.name,"
            "  TUMBLE_START(P.\"dateTime\", INTERVAL '10' SECOND) AS starttime,"
            "  TUMBLE_END(P.\"dateTime\", INTERVAL '10' SECOND) AS endtime"
            " FROM person P GROUP BY P.id, P.name, TUMBLE(P.\"dateTime\", INTERVAL '10' SECOND)"
            ") P JOIN ("
            " SELECT A.seller,"
            "  TUMBLE_START(A.\"dateTime\", INTERVAL '10' SECOND) AS starttime,"
            "  TUMBLE_END(A.\"dateTime\", INTERVAL '10' SECOND) AS endtime"
            " FROM auction A GROUP BY A.seller, TUMBLE(A.\"dateTime\", INTERVAL '10' SECOND)"
            ") A ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime",
            ("person", "auction"),
            ("id", "name", "starttime"),
            _q8,
            windowed=True,
        ),
    )
}
