"""Nexmark q0-q8 in Flink SQL, for running the same queries on PyFlink (``pyflink_bench.py``).

Written from the Nexmark definitions in ``queries.py`` (the same output columns in the same
order, so one reference checks both engines), in Flink's own dialect: backquoted
identifiers, ``MOD``, and windowing table-valued functions (``TABLE(TUMBLE(...))`` /
``TABLE(HOP(...))`` grouped by ``window_start, window_end``), which is how Flink's Nexmark
suite writes q5, q7 and q8 since Flink 1.13. Where the text differs from Flink's suite, the
query says so:

- q1 multiplies by the literal ``0.908`` like Flink's suite (a DECIMAL result).
- q4 averages ``CAST(final AS DOUBLE)`` (Flink's suite averages the BIGINT, and Flink's
  ``AVG`` of a BIGINT is a BIGINT, rounded down); the double is what ``queries.py``'s
  reference and StreamHouse compute.
- q5 also returns each window's start, as ``queries.py`` does.
- q7 keeps the bids in ``[window_end - 10 s, window_end)`` (Flink's suite: ``BETWEEN``, both
  ends inclusive), the same windows as the reference.

Each query reads the three tables ``create_table_sql`` declares: ``person``, ``auction``
and ``bid``, one filesystem source each over a folder of JSON-lines files (the generator's
JSON values, one per line), ``dateTime`` / ``expires`` as ``TIMESTAMP(3)`` (Flink's JSON
format parses the generator's ``"YYYY-MM-DD HH:MM:SS.mmm"``, its ``SQL`` timestamp
standard) and a watermark 4 s behind ``dateTime``, as Flink's Nexmark DDL declares it.

This module imports nothing outside the standard library: it runs inside the interpreter
that has PyFlink, which need not have this project's dependencies.
"""

from __future__ import annotations

__all__ = ["COLUMNS", "FLINK_QUERIES", "create_table_sql", "sink_sql"]

# Flink types of the generator's schemas (generator.PERSON_SCHEMA etc.), in field order.
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "person": (
        ("id", "BIGINT"),
        ("name", "STRING"),
        ("emailAddress", "STRING"),
        ("creditCard", "STRING"),
        ("city", "STRING"),
        ("state", "STRING"),
        ("dateTime", "TIMESTAMP(3)"),
        ("extra", "STRING"),
    ),
    "auction": (
        ("id", "BIGINT"),
        ("itemName", "STRING"),
        ("description", "STRING"),
        ("initialBid", "BIGINT"),
        ("reserve", "BIGINT"),
        ("dateTime", "TIMESTAMP(3)"),
        ("expires", "TIMESTAMP(3)"),
        ("seller", "BIGINT"),
        ("category", "BIGINT"),
        ("extra", "STRING"),
    ),
    "bid": (
        ("auction", "BIGINT"),
        ("bidder", "BIGINT"),
        ("price", "BIGINT"),
        ("channel", "STRING"),
        ("url", "STRING"),
        ("dateTime", "TIMESTAMP(3)"),
        ("extra", "STRING"),
    ),
}


def _quote(path: str) -> str:
    return path.replace("'", "''")


def create_table_sql(kind: str, path: str) -> str:
    """``CREATE TEMPORARY TABLE <kind>``: a filesystem source over the folder ``path`` of
    JSON-lines files, watermark 4 s behind ``dateTime``."""
    if kind not in COLUMNS:
        raise ValueError(f"no Nexmark table {kind!r}: one of {sorted(COLUMNS)}")
    columns = ", ".join(f"`{name}` {kind_}" for name, kind_ in COLUMNS[kind])
    return (
        f"CREATE TEMPORARY TABLE `{kind}` ({columns}, "
        "WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND) "
        f"WITH ('connector' = 'filesystem', 'path' = '{_quote(path)}', 'format' = 'json')"
    )


def sink_sql(name: str, select: str) -> str:
    """A blackhole sink made from the query (``CREATE TABLE ... AS``): every result row is
    produced and dropped, as Flink's Nexmark suite does with its ``discard_sink``."""
    return f"CREATE TABLE `{name}` WITH ('connector' = 'blackhole') AS {select}"


def _hop(table: str) -> str:
    return (
        f"TABLE(HOP(TABLE {table}, DESCRIPTOR(`dateTime`), "
        "INTERVAL '2' SECOND, INTERVAL '10' SECOND))"
    )


def _tumble(table: str) -> str:
    return f"TABLE(TUMBLE(TABLE {table}, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND))"


FLINK_QUERIES: dict[str, str] = {
    "q0": "SELECT auction, bidder, price, `dateTime`, extra FROM bid",
    "q1": "SELECT auction, bidder, 0.908 * price AS price, `dateTime`, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0",
    "q3": (
        "SELECT P.name, P.city, P.state, A.id "
        "FROM auction AS A INNER JOIN person AS P ON A.seller = P.id "
        "WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')"
    ),
    "q4": (
        "SELECT Q.category, AVG(CAST(Q.final AS DOUBLE)) AS avg_final FROM ("
        " SELECT MAX(B.price) AS final, A.category FROM auction AS A, bid AS B"
        " WHERE A.id = B.auction AND B.`dateTime` BETWEEN A.`dateTime` AND A.expires"
        " GROUP BY A.id, A.category"
        ") AS Q GROUP BY Q.category"
    ),
    "q5": (
        "SELECT AuctionBids.auction, AuctionBids.num, AuctionBids.starttime FROM ("
        " SELECT auction, COUNT(*) AS num, window_start AS starttime, window_end AS endtime"
        f" FROM {_hop('bid')} GROUP BY auction, window_start, window_end"
        ") AS AuctionBids JOIN ("
        " SELECT MAX(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime FROM ("
        "  SELECT COUNT(*) AS num, window_start AS starttime, window_end AS endtime"
        f"  FROM {_hop('bid')} GROUP BY auction, window_start, window_end"
        " ) AS CountBids GROUP BY CountBids.starttime, CountBids.endtime"
        ") AS MaxBids ON AuctionBids.starttime = MaxBids.starttime"
        " AND AuctionBids.endtime = MaxBids.endtime AND AuctionBids.num >= MaxBids.maxn"
    ),
    "q7": (
        "SELECT B.auction, B.price, B.bidder, B.`dateTime`, B.extra FROM bid AS B JOIN ("
        " SELECT MAX(price) AS maxprice, window_end AS endtime"
        f" FROM {_tumble('bid')} GROUP BY window_start, window_end"
        ") AS B1 ON B.price = B1.maxprice"
        " WHERE B.`dateTime` >= B1.endtime - INTERVAL '10' SECOND"
        " AND B.`dateTime` < B1.endtime"
    ),
    "q8": (
        "SELECT P.id, P.name, P.starttime FROM ("
        " SELECT id, name, window_start AS starttime, window_end AS endtime"
        f" FROM {_tumble('person')} GROUP BY id, name, window_start, window_end"
        ") AS P JOIN ("
        " SELECT seller, window_start AS starttime, window_end AS endtime"
        f" FROM {_tumble('auction')} GROUP BY seller, window_start, window_end"
        ") AS A ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime"
    ),
}
