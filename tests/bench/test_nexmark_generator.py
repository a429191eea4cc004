"""The Nexmark generator (bench/nexmark): determinism, the event mix, id relations, timestamps,
the JSON records, and an end-to-end run into a real stack read back with ``python3 -m sql``.

References here are computed independently of the model's helper functions where it matters:
"created so far" is a running count of the events of each kind, not ``last_*_id``.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pytest

from streamhouse.testing import Stack, free_port

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.nexmark.generator import (  # noqa: E402
    AUCTION_SCHEMA,
    BID_SCHEMA,
    CHUNK_EVENTS,
    PERSON_SCHEMA,
    Generator,
    create_stream_sql,
)
from bench.nexmark.model import ModelConfig  # noqa: E402

TOPICS = ("person", "auction", "bid")
SCHEMAS = {"person": PERSON_SCHEMA, "auction": AUCTION_SCHEMA, "bid": BID_SCHEMA}


def tables(generator: Generator, events: int) -> dict[str, pa.Table]:
    chunks = list(generator.chunks(events))
    return {t: pa.concat_tables([getattr(c, t) for c in chunks]) for t in TOPICS}


def kinds_of(events: int) -> np.ndarray:
    """0 person, 1 auction, 2 bid for event ids 0 .. events-1: of every 50, 1, 3 and 46."""
    rem = np.arange(events) % 50
    return np.where(rem == 0, 0, np.where(rem <= 3, 1, 2))


@pytest.fixture(scope="module")
def run() -> dict[str, pa.Table]:
    return tables(Generator(seed=11), 3 * CHUNK_EVENTS + 12_345)


def test_same_seed_same_bytes_and_a_shorter_run_is_a_prefix() -> None:
    events = CHUNK_EVENTS + 7_000
    first = [c.records(t) for c in Generator(5).chunks(events) for t in TOPICS]
    again = [c.records(t) for c in Generator(5).chunks(events) for t in TOPICS]
    for a, b in zip(first, again, strict=True):
        assert a.values.equals(b.values) and a.keys.equals(b.keys)
        assert np.array_equal(a.timestamps, b.timestamps)
    other = [c.records(t) for c in Generator(6).chunks(events) for t in TOPICS]
    assert not any(a.values.equals(b.values) for a, b in zip(first, other, strict=True))
    short = tables(Generator(5), 20_000)
    long = tables(Generator(5), events)
    for t in TOPICS:
        assert short[t].num_rows > 0
        assert long[t].slice(0, short[t].num_rows).equals(short[t])


def test_event_mix_and_dense_ids(run: dict[str, pa.Table]) -> None:
    events = 3 * CHUNK_EVENTS + 12_345
    expected = np.bincount(kinds_of(events), minlength=3)
    assert [run[t].num_rows for t in TOPICS] == expected.tolist()
    assert expected.tolist() == [3_247, 9_741, 149_357]  # 1 : 3 : 46 of every 50
    people = run["person"].column("id").to_numpy()
    auctions = run["auction"].column("id").to_numpy()
    assert np.array_equal(people, 1000 + np.arange(len(people)))
    assert np.array_equal(auctions, 1000 + np.arange(len(auctions)))
    for t in TOPICS:
        assert run[t].schema == SCHEMAS[t]


def test_references_exist_earlier_or_within_the_lead(run: dict[str, pa.Table]) -> None:
    events = 3 * CHUNK_EVENTS + 12_345
    kinds = kinds_of(events)
    people_so_far = np.cumsum(kinds == 0)  # people created up to and including each event
    auctions_so_far = np.cumsum(kinds == 1)
    bid_events = np.flatnonzero(kinds == 2)
    auction_events = np.flatnonzero(kinds == 1)

    auction = run["bid"].column("auction").to_numpy()
    newest_auction = 1000 + auctions_so_far[bid_events] - 1
    assert auction.min() >= 1000
    assert np.all(auction <= newest_auction + 10)  # the model's lead of 10 auctions
    hot = np.mean(auction == 1000 + (auctions_so_far[bid_events] - 1) // 100 * 100)
    assert 0.45 < hot < 0.56  # 1/2 hot, plus random picks that land on it
    # Otherwise among the last 100 in flight (or the lead).
    assert np.all(
        auction >= np.minimum(newest_auction - 100, (newest_auction - 1000) // 100 * 100 + 1000)
    )
    assert np.mean(auction <= newest_auction) > 0.95

    for ids, at in (
        (run["bid"].column("bidder").to_numpy(), bid_events),
        (run["auction"].column("seller").to_numpy(), auction_events),
    ):
        newest_person = 1000 + people_so_far[at] - 1
        assert ids.min() >= 1000
        assert np.all(ids <= newest_person + 10)  # the lead of 10 people
        assert np.all(ids >= np.minimum(newest_person - 1000, newest_person // 100 * 100))
        assert np.mean(ids <= newest_person) > 0.98

    bidders = run["bid"].column("bidder").to_numpy()
    hot_bidder = 1000 + (people_so_far[bid_events] - 1) // 100 * 100 + 1
    assert 0.74 < np.mean(bidders == hot_bidder) < 0.80  # 3/4 hot


def test_timestamps_advance_at_the_rate() -> None:
    rate = 2_000  # events per second of event time: one every 0.5 ms
    events = CHUNK_EVENTS + 1_000
    config = ModelConfig(rate=rate, base_time_ms=1_000_000)
    got = tables(Generator(3, config), events)
    kinds = kinds_of(events)
    merged = np.empty(events, dtype=np.int64)
    for kind, t in enumerate(TOPICS):
        merged[kinds == kind] = got[t].column("dateTime").cast(pa.int64()).to_numpy()
    assert np.all(np.diff(merged) >= 0)
    assert np.array_equal(merged, 1_000_000 + np.arange(events) * 1000 // rate)
    assert merged[-1] - merged[0] == (events - 1) * 1000 // rate
    auctions = got["auction"]
    assert pc.all(pc.greater(auctions.column("expires"), auctions.column("dateTime"))).as_py()


def test_values_are_json_of_the_table_and_fields_are_in_range(run: dict[str, pa.Table]) -> None:
    chunk = next(Generator(11).chunks(CHUNK_EVENTS))
    for t in TOPICS:
        records = chunk.records(t)
        table = getattr(chunk, t)
        data = b"\n".join(v.as_py() for v in records.values)
        parsed = pajson.read_json(
            io.BytesIO(data), parse_options=pajson.ParseOptions(explicit_schema=SCHEMAS[t])
        )
        assert parsed.equals(table)
        assert list(json.loads(records.values[0].as_py())) == SCHEMAS[t].names
        key_column = "auction" if t == "bid" else "id"
        assert [int(k) for k in records.keys.to_pylist()] == table.column(key_column).to_pylist()
        assert np.array_equal(
            records.timestamps, table.column("dateTime").cast(pa.int64()).to_numpy()
        )
    bid, auction = run["bid"], run["auction"]
    price = bid.column("price").to_numpy()
    assert price.min() >= 100 and price.max() <= 100_000_000
    assert np.all(auction.column("reserve").to_numpy() > auction.column("initialBid").to_numpy())
    assert set(auction.column("category").to_pylist()) == {10, 11, 12, 13, 14}
    channels = pc.value_counts(bid.column("channel").combine_chunks())
    hot = {"Google", "Facebook", "Baidu", "Apple"}
    hot_share = sum(c["counts"].as_py() for c in channels if c["values"].as_py() in hot)
    assert 0.47 < hot_share / bid.num_rows < 0.53
    others = bid.filter(pc.invert(pc.is_in(bid.column("channel"), pa.array(sorted(hot)))))
    assert pc.all(pc.starts_with(others.column("channel"), "channel-")).as_py()
    tagged = pc.mean(pc.match_substring(others.column("url"), "&channel_id=")).as_py()
    assert 0.85 < tagged < 0.95  # 9 in 10 non-hot channels carry their id
    assert pc.all(
        pc.match_substring_regex(
            bid.column("url"),
            r"^https://www\.nexmark\.com/[a-z_]+/[a-z_]+/[a-z_]+/item\.htm\?query=1",
        )
    ).as_py()
    person = run["person"]
    assert pc.all(pc.match_substring_regex(person.column("emailAddress"), r"@.*\.com$")).as_py()
    assert pc.all(
        pc.match_substring_regex(person.column("creditCard"), r"^\d{4} \d{4} \d{4} \d{4}$")
    ).as_py()
    for t, average in (("person", 200), ("auction", 500), ("bid", 100)):
        extra = pc.binary_length(run[t].column("extra")).to_numpy()
        assert extra.max() > 0
        # The extra field pads an event towards its average size (Flink's defaults).
        assert (
            abs(extra.mean() + {"person": 60, "auction": 90, "bid": 32}[t] - average)
            < average * 0.2
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("nexmark") / "data") as running:
        yield running


def run_sql(stack: Stack, statement: str) -> str:
    env = dict(os.environ)
    env.update(stack.env)
    proc = subprocess.run(
        [sys.executable, "-m", "sql", "query", statement, "--format", "jsonl"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{statement!r} failed: {proc.stderr}"
    return proc.stdout


def sql(stack: Stack, query: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in run_sql(stack, query).splitlines()]


def test_generate_into_a_stack_and_query_it_back(stack: Stack) -> None:
    events, seed = 2 * CHUNK_EVENTS + 3_000, 21
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "nexmark.py"), "generate", "--events", str(events),
         "--bootstrap", stack.kafka_address, "--seed", str(seed), "--partitions", "3", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    reference = tables(Generator(seed), events)
    assert report["events"] == events and report["events_per_s"] > 0
    assert [report[t] for t in TOPICS] == [reference[t].num_rows for t in TOPICS]

    for kind in TOPICS:
        created = run_sql(stack, create_stream_sql(kind))
        assert created.strip() == f"stream {kind} created over topic {kind}"
    bid = reference["bid"]
    rows = sql(
        stack,
        "SELECT count(*) AS n, sum(price) AS total, count(DISTINCT auction) AS auctions, "
        'max("dateTime") AS last FROM bid',
    )
    assert rows == [
        {
            "n": bid.num_rows,
            "total": pc.sum(bid.column("price")).as_py(),
            "auctions": pc.count_distinct(bid.column("auction")).as_py(),
            "last": rows[0]["last"],
        }
    ]
    last = datetime.datetime.fromisoformat(str(rows[0]["last"]))
    assert last == pc.max(bid.column("dateTime")).as_py()
    person, auction = reference["person"], reference["auction"]
    assert sql(stack, "SELECT count(*) AS n, min(id) AS low, max(id) AS high FROM person") == [
        {"n": person.num_rows, "low": 1000, "high": 1000 + person.num_rows - 1}
    ]
    by_category = sql(
        stack,
        "SELECT category, count(*) AS n, sum(reserve) AS reserve, "
        "count(DISTINCT seller) AS sellers FROM auction GROUP BY category ORDER BY category",
    )
    expected = (
        auction.group_by("category")
        .aggregate([("id", "count"), ("reserve", "sum"), ("seller", "count_distinct")])
        .sort_by("category")
    )
    assert by_category == [
        {"category": c, "n": n, "reserve": r, "sellers": s}
        for c, n, r, s in zip(
            expected.column("category").to_pylist(),
            expected.column("id_count").to_pylist(),
            expected.column("reserve_sum").to_pylist(),
            expected.column("seller_count_distinct").to_pylist(),
            strict=True,
        )
    ]
    # Keys: a bid's key is its auction, so one auction's bids share a partition.
    spread = sql(
        stack,
        'SELECT max(parts) AS most FROM (SELECT count(DISTINCT "partition") AS parts '
        'FROM topics."bid" GROUP BY key)',
    )
    assert spread == [{"most": 1}]


def test_several_producer_processes_write_the_same_events(stack: Stack) -> None:
    events, seed = 3 * CHUNK_EVENTS + 500, 4
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "nexmark.py"), "generate", "--events", str(events),
         "--bootstrap", stack.kafka_address, "--seed", str(seed), "--processes", "2",
         "--topic-prefix", "two_", "--partitions", "2", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    reference = tables(Generator(seed), events)
    report = json.loads(proc.stdout)
    assert [report[t] for t in TOPICS] == [reference[t].num_rows for t in TOPICS]
    run_sql(stack, create_stream_sql("bid", name="two_bid", topic="two_bid"))
    bid = reference["bid"]
    assert sql(
        stack,
        "SELECT count(*) AS n, sum(price) AS total, sum(bidder) AS bidders, "
        "min(\"dateTime\") = TIMESTAMP '2026-01-01 00:00:00' AS starts FROM two_bid",
    ) == [
        {
            "n": bid.num_rows,
            "total": pc.sum(bid.column("price")).as_py(),
            "bidders": pc.sum(bid.column("bidder")).as_py(),
            "starts": True,
        }
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--events", "0"], "argument --events: must be >= 1: 0"),
        (["--events", "ten"], "argument --events: not an integer: 'ten'"),
        (["--events", "10", "--seed", "-1"], "seed must be 0 .. 2**63 - 1: -1"),
        (["--events", "10", "--rate", "0"], "argument --rate: must be >= 1: 0"),
        (["--events", "10", "--base-time-ms", "-5"], "base time must be >= 0 ms"),
        (["--events", "10", "--compression", "brotli"], "invalid choice: 'brotli'"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "nexmark.py"), "generate", *args, "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert message in proc.stderr


def test_an_unreachable_broker_is_an_error_that_says_so() -> None:
    port = free_port()  # nothing listens there
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "nexmark.py"), "generate", "--events", "10",
         "--bootstrap", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"nexmark: cannot reach the broker at 127.0.0.1:{port}" in proc.stderr
    assert proc.stdout == ""
