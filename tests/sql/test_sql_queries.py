"""Streaming SQL, first increment, against a real stack: ad-hoc queries over what the log holds.

Records are produced with confluent-kafka over the Kafka protocol; queries run as users run
them, ``python3 -m sql query ...`` with the stack's environment, and are checked against
references computed here from what was produced. Pushdown is proven by counting the blocks a
query read (``--stats``) against the block rows metadata holds.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from metadata.interface import open_store
from streamhouse.testing import Stack

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE_TS = 1_700_000_000_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("sql") / "data") as running:
        yield running


def run_sql(
    stack: Stack, sql: str, *args: str, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(stack.env)
    proc = subprocess.run(
        [sys.executable, "-m", "sql", "query", sql, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ok:
        assert proc.returncode == 0, f"{sql!r} failed: {proc.stderr}"
    return proc


def jsonl(stack: Stack, sql: str) -> list[dict[str, Any]]:
    out = run_sql(stack, sql, "--format", "jsonl").stdout
    return [json.loads(line) for line in out.splitlines()]


def stats_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("{")]
    assert lines, proc.stderr
    return json.loads(lines[-1])


def create_topic(stack: Stack, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_address})
    for fut in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        fut.result(timeout=30)


def producer(stack: Stack) -> Producer:
    return Producer(
        {"bootstrap.servers": stack.kafka_address, "linger.ms": 5, "enable.idempotence": True}
    )


def produce(
    stack: Stack, topic: str, records: list[tuple[int, bytes | None, bytes | None, int, list]]
) -> None:
    """(partition, key, value, timestamp, headers) in order; waits for every ack."""
    p = producer(stack)
    acked: list[int] = []
    failed: list[str] = []

    def done(err: Any, msg: Any) -> None:
        if err is None:
            acked.append(msg.offset())
        else:
            failed.append(str(err))

    for partition, key, value, ts, headers in records:
        p.produce(
            topic,
            value=value,
            key=key,
            partition=partition,
            timestamp=ts,
            headers=headers or None,
            on_delivery=done,
        )
    assert p.flush(60) == 0
    assert failed == []
    assert len(acked) == len(records)


def blocks_of(stack: Stack, topic: str) -> list[tuple[int, Any]]:
    """(partition, block row) of every block metadata holds for the topic."""
    store = open_store(stack.settings.metadata_target)
    try:
        info = store.get_topic(topic)
        assert info is not None
        out = []
        for partition in range(info.partitions):
            out += [(partition, b) for b in store.find_blocks(info.topic_id, partition, 0, 100_000)]
        return out
    finally:
        store.close()


# --------------------------------------------------------------------------- raw columns


def test_raw_columns_of_any_topic(stack: Stack) -> None:
    create_topic(stack, "raw", 3)
    records = []
    for i in range(300):
        key = None if i % 10 == 0 else f"k{i % 7}".encode()
        value = None if i % 50 == 49 else f"v{i}".encode()
        headers = [("h", f"{i}".encode()), ("n", None)] if i % 3 == 0 else []
        records.append((i % 3, key, value, BASE_TS + i, headers))
    produce(stack, "raw", records)

    rows = jsonl(
        stack,
        'SELECT partition, "offset", timestamp, key, value, headers FROM raw '
        'ORDER BY partition, "offset"',
    )
    expected = []
    for part in range(3):
        mine = [r for r in records if r[0] == part]
        for offset, (_p, key, value, ts, headers) in enumerate(mine):
            expected.append(
                {
                    "partition": part,
                    "offset": offset,
                    "timestamp": f"{_iso(ts)}+00:00",
                    "key": None if key is None else key.decode(),
                    "value": None if value is None else value.decode(),
                    "headers": [
                        {"key": k, "value": None if v is None else v.decode()} for k, v in headers
                    ],
                }
            )
    assert rows == expected

    counts = jsonl(stack, "SELECT partition, count(*) AS n FROM raw GROUP BY partition ORDER BY 1")
    assert counts == [{"partition": p, "n": 100} for p in range(3)]
    # the topics schema reaches a topic by name whatever shadows it
    assert jsonl(stack, 'SELECT count(*) AS n FROM topics."raw" WHERE key IS NULL') == [{"n": 30}]
    table = run_sql(stack, 'SELECT value FROM raw WHERE partition = 1 AND "offset" < 2').stdout
    assert table.splitlines()[2:] == ["v1", "v4", "(2 rows)"]
    csv_out = run_sql(
        stack, 'SELECT partition, value FROM raw WHERE "offset" = 0 ORDER BY 1', "--format", "csv"
    ).stdout
    assert csv_out.splitlines() == ["partition,value", "0,v0", "1,v1", "2,v2"]


def _iso(ms: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).replace(tzinfo=None).isoformat()


# --------------------------------------------------------------------------- declared JSON streams

COUNTRIES = ["de", "fr", "us", "jp", "br"]


def test_declared_json_stream_filters_and_aggregates(stack: Stack) -> None:
    create_topic(stack, "orders", 2)
    orders = []
    for i in range(1000):
        orders.append(
            {
                "id": i,
                "country": COUNTRIES[(i * 7) % 5],
                "amount": (i * 37) % 101,
                "price": round(((i * 13) % 1000) / 10, 1),
                "placed": f"2024-01-01 00:{(i // 60) % 60:02d}:{i % 60:02d}",
                "ignored": {"nested": [1, 2]},
            }
        )
    bad = [b"not json", b'{"id": "seven", "country": "de"}', b"[1, 2]", None, b""]
    records = [
        (i % 2, str(o["id"]).encode(), json.dumps(o).encode(), BASE_TS + i, [])
        for i, o in enumerate(orders)
    ]
    records += [(0, b"bad", v, BASE_TS + 5000 + i, []) for i, v in enumerate(bad)]
    produce(stack, "orders", records)

    out = run_sql(
        stack,
        "CREATE STREAM orders_s (id BIGINT, country VARCHAR, amount INT, price DOUBLE, "
        "placed TIMESTAMP, WATERMARK FOR placed AS placed - INTERVAL '5' SECOND) "
        "WITH (topic = 'orders', format = 'json')",
    )
    assert out.stdout.strip() == "stream orders_s created over topic orders"

    proc = run_sql(
        stack,
        "SELECT country, count(*) AS n, sum(amount) AS total, max(price) AS top "
        "FROM orders_s WHERE amount > 10 AND country <> 'jp' GROUP BY country ORDER BY country",
        "--format",
        "jsonl",
        "--stats",
    )
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    ref: dict[str, list[Any]] = defaultdict(lambda: [0, 0, 0.0])
    for o in orders:
        if o["amount"] > 10 and o["country"] != "jp":
            r = ref[o["country"]]
            r[0] += 1
            r[1] += o["amount"]
            r[2] = max(r[2], o["price"])
    assert got == [
        {"country": c, "n": n, "total": t, "top": top} for c, (n, t, top) in sorted(ref.items())
    ]
    assert stats_of(proc)["invalid_records"] == {"orders_s": len(bad)}
    assert f"{len(bad)} records of orders_s did not match its declared schema" in proc.stderr

    # record columns ride along; event time is a real timestamp
    rows = jsonl(
        stack,
        "SELECT id, _partition, _offset, placed FROM orders_s "
        "WHERE placed >= TIMESTAMP '2024-01-01 00:16:30' ORDER BY id LIMIT 3",
    )
    first = next(i for i, o in enumerate(orders) if o["placed"] >= "2024-01-01 00:16:30")
    assert [r["id"] for r in rows] == [first, first + 1, first + 2]
    assert rows[0] == {
        "id": first,
        "_partition": first % 2,
        "_offset": first // 2,
        "placed": orders[first]["placed"].replace(" ", "T"),
    }
    # a per-key aggregate over both partitions
    top = jsonl(
        stack,
        "SELECT country, count(DISTINCT amount) AS amounts FROM orders_s GROUP BY country "
        "ORDER BY amounts DESC, country LIMIT 2",
    )
    distinct = Counter()
    for c in COUNTRIES:
        distinct[c] = len({o["amount"] for o in orders if o["country"] == c})
    want = sorted(distinct.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    assert top == [{"country": c, "amounts": n} for c, n in want]


# --------------------------------------------------------------------------- pushdown


def test_time_offset_and_partition_bounds_read_only_matching_blocks(stack: Stack) -> None:
    create_topic(stack, "ticks", 2)
    rounds = 6
    for r in range(rounds):  # each round its own produce, so its own blocks
        produce(
            stack,
            "ticks",
            [(i % 2, None, f"r{r}-{i}".encode(), BASE_TS + r * 60_000 + i, []) for i in range(50)],
        )
    blocks = blocks_of(stack, "ticks")
    assert len(blocks) >= rounds * 2

    bound = BASE_TS + (rounds - 2) * 60_000  # the last two rounds
    proc = run_sql(
        stack,
        f"SELECT count(*) AS n FROM ticks WHERE timestamp >= to_timestamp_millis({bound})",
        "--format",
        "jsonl",
        "--stats",
    )
    assert json.loads(proc.stdout) == {"n": 100}
    stats = stats_of(proc)
    matching = [b for _p, b in blocks if b.max_timestamp >= bound]
    assert stats["blocks_read"] == len(matching)
    assert stats["blocks_read"] < len(blocks)
    assert stats["bytes_read"] == sum(b.byte_length for b in matching)

    # an interval relative to a fixed instant, and a declared stream's record time
    proc = run_sql(
        stack,
        "SELECT count(*) AS n FROM ticks WHERE partition = 1 AND timestamp > "
        f"to_timestamp_millis({bound}) + INTERVAL '1 minute' - INTERVAL '1 millisecond'",
        "--format",
        "jsonl",
        "--stats",
    )
    assert json.loads(proc.stdout) == {"n": 25}
    stats = stats_of(proc)
    last_round = BASE_TS + (rounds - 1) * 60_000
    assert stats["partitions"] == 1
    assert stats["blocks_read"] == sum(
        1 for p, b in blocks if p == 1 and b.max_timestamp >= last_round - 1
    )

    # offsets: partition 0 from offset 100 on
    proc = run_sql(
        stack,
        'SELECT min("offset") AS lo, count(*) AS n FROM ticks '
        'WHERE partition = 0 AND "offset" >= 100',
        "--format",
        "jsonl",
        "--stats",
    )
    assert json.loads(proc.stdout) == {"lo": 100, "n": rounds * 25 - 100}
    stats = stats_of(proc)
    assert stats["blocks_read"] == sum(1 for p, b in blocks if p == 0 and b.end_offset > 100)

    assert stats["scans"] == {
        "ticks": {"partitions": [0], "from_offset": 100, "to_offset": None, "min_timestamp": None}
    }

    # no bound: every block
    proc = run_sql(stack, "SELECT count(*) AS n FROM ticks", "--format", "jsonl", "--stats")
    assert json.loads(proc.stdout) == {"n": rounds * 50}
    assert stats_of(proc)["blocks_read"] == len(blocks)

    # a read limit: the bounded query fits, the unbounded one is refused before reading
    limit_mb = str((sum(b.byte_length for b in matching) + 1) / 1e6)
    bounded = f"SELECT count(*) FROM ticks WHERE timestamp >= to_timestamp_millis({bound})"
    assert run_sql(stack, bounded, "--max-read-mb", limit_mb).returncode == 0
    proc = run_sql(stack, "SELECT count(*) FROM ticks", "--max-read-mb", limit_mb, ok=False)
    assert proc.returncode == 1
    assert "over the limit of" in proc.stderr and "narrow it with WHERE bounds" in proc.stderr

    # EXPLAIN plans over the placeholders and reads nothing; EXPLAIN ANALYZE runs the query
    proc = run_sql(stack, "EXPLAIN SELECT count(*) FROM ticks WHERE partition = 1", "--stats")
    assert "TableScan: ticks" in proc.stdout
    assert stats_of(proc)["blocks_read"] == 0
    proc = run_sql(
        stack, "EXPLAIN ANALYZE SELECT count(*) FROM ticks WHERE partition = 1", "--stats"
    )
    assert stats_of(proc)["blocks_read"] == sum(1 for p, _b in blocks if p == 1)


# --------------------------------------------------------------------------- tables


def test_table_holds_the_latest_value_per_key(stack: Stack) -> None:
    create_topic(stack, "people", 2)
    records = []
    latest: dict[str, dict[str, Any] | None] = {}
    for i in range(200):
        key = f"p{i % 20}"
        person = {"name": f"name-{i}", "age": i}
        value = json.dumps(person).encode()
        if i % 37 == 36:
            value = None  # tombstone
        part = int(key[1:]) % 2
        records.append((part, key.encode(), value, BASE_TS + i, []))
        latest[key] = None if value is None else person
    produce(stack, "people", records)
    run_sql(
        stack,
        "CREATE TABLE people_t (name VARCHAR, age BIGINT) WITH (topic = 'people', format = 'json')",
    )
    rows = jsonl(stack, "SELECT _key, name, age FROM people_t ORDER BY age")
    want = sorted(
        ({"_key": k, "name": v["name"], "age": v["age"]} for k, v in latest.items() if v),
        key=lambda r: r["age"],
    )
    assert rows == want
    assert len(rows) < 20  # the tombstoned keys are gone


# --------------------------------------------------------------------------- catalog statements


def test_show_describe_and_drop(stack: Stack) -> None:
    create_topic(stack, "events", 1)
    run_sql(
        stack,
        "CREATE STREAM events_s (kind VARCHAR, at TIMESTAMP, "
        "WATERMARK FOR at AS at - INTERVAL '2' SECOND) WITH (topic = 'events')",
    )
    shown = jsonl(stack, "SHOW STREAMS")
    mine = [s for s in shown if s["name"] == "events_s"]
    assert mine == [
        {
            "name": "events_s",
            "topic": "events",
            "format": "json",
            "columns": "kind VARCHAR, at TIMESTAMP",
            "watermark": "at - 2000 ms",
        }
    ]
    described = jsonl(stack, "DESCRIBE events_s")
    assert [(d["column"], d["type"]) for d in described] == [
        ("kind", "string"),
        ("at", "timestamp[ms]"),
        ("_partition", "int32 not null"),
        ("_offset", "int64 not null"),
        ("_timestamp", "timestamp[ms, tz=UTC] not null"),
    ]
    assert described[1]["note"] == "watermark: at - 2000 ms"
    assert [d["column"] for d in jsonl(stack, "DESCRIBE events")] == [
        "partition",
        "offset",
        "timestamp",
        "key",
        "value",
        "headers",
    ]
    again = run_sql(
        stack, "CREATE STREAM events_s (kind VARCHAR) WITH (topic = 'events')", ok=False
    )
    assert again.returncode == 1 and "already exists" in again.stderr
    assert run_sql(stack, "DROP STREAM events_s").stdout.strip() == "stream events_s dropped"
    assert not [s for s in jsonl(stack, "SHOW STREAMS") if s["name"] == "events_s"]
    gone = run_sql(stack, "SELECT * FROM events_s", ok=False)
    assert gone.returncode == 1 and "no stream, table or topic called 'events_s'" in gone.stderr


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC 1", "Expected: an SQL statement, found: SELEC"),
        ("SELECT nosuch FROM raw", "No field named nosuch"),
        ("SELECT * FROM nosuch_topic", "no stream, table or topic called 'nosuch_topic'"),
        (
            "CREATE STREAM s (a BIGINT) WITH (topic = 'no_such_topic')",
            "topic 'no_such_topic' does not exist",
        ),
        ("CREATE STREAM s (a WIDGET) WITH (topic = 'raw')", "unknown column type WIDGET"),
        ("CREATE STREAM s (a BIGINT) WITH (topic = 'raw', format = 'xml')", "format 'xml'"),
        ("DROP STREAM never_declared", "no stream called 'never_declared'"),
        ("CREATE VIEW v AS SELECT 1", "CREATE VIEW is not supported"),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", "DML not supported"),
        ("SET datafusion.execution.batch_size = 1", "not supported"),
    ],
)
def test_bad_statements_are_refused_clearly(stack: Stack, sql: str, message: str) -> None:
    if "raw" in sql:
        _ensure_raw(stack)
    proc = run_sql(stack, sql, ok=False)
    assert proc.returncode == 1, proc.stdout
    assert message in proc.stderr
    assert proc.stderr.startswith("sql: ")
    assert "Traceback" not in proc.stderr


def _ensure_raw(stack: Stack) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_address})
    if "raw" not in admin.list_topics(timeout=10).topics:
        create_topic(stack, "raw", 3)


def test_bad_format_argument_exits_2(stack: Stack) -> None:
    proc = run_sql(stack, "SELECT 1", "--format", "xml", ok=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_shell_runs_statements_from_stdin_and_goes_on_after_an_error(stack: Stack) -> None:
    create_topic(stack, "shell_in", 1)
    produce(stack, "shell_in", [(0, None, b'{"n": %d}' % i, BASE_TS + i, []) for i in range(3)])
    script = (
        "CREATE STREAM shell_s (n BIGINT) WITH (topic = 'shell_in');\n"
        "SELEC 1;\n"
        "SELECT sum(n) AS total,\n  count(*) AS rows\nFROM shell_s;\n"
        "SELECT max(n) AS top FROM shell_s"  # the last statement needs no ';'
    )
    env = dict(os.environ)
    env.update(stack.env)
    proc = subprocess.run(
        [sys.executable, "-m", "sql", "shell", "--format", "jsonl"],
        input=script,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1  # one statement failed (not a terminal)
    assert proc.stdout.splitlines() == [
        "stream shell_s created over topic shell_in",
        '{"total":3,"rows":3}',
        '{"top":2}',
    ]
    assert proc.stderr.startswith("sql: ") and "SELEC" in proc.stderr


def test_topics_with_dashes_and_capitals_are_reached_by_quoting(stack: Stack) -> None:
    create_topic(stack, "Web-Clicks", 1)
    produce(stack, "Web-Clicks", [(0, None, b"x", BASE_TS + i, []) for i in range(4)])
    assert jsonl(stack, 'SELECT count(*) AS n FROM "Web-Clicks"') == [{"n": 4}]
    assert jsonl(stack, 'SELECT count(*) AS n FROM topics."Web-Clicks"') == [{"n": 4}]
    unquoted = run_sql(stack, "SELECT count(*) FROM Web_Clicks", ok=False)
    assert unquoted.returncode == 1
    assert "no stream, table or topic called 'web_clicks'" in unquoted.stderr
    assert "quote names" in unquoted.stderr


def test_a_stream_whose_topic_was_deleted_says_so(stack: Stack) -> None:
    create_topic(stack, "short_lived", 1)
    run_sql(stack, "CREATE STREAM short_s (a BIGINT) WITH (topic = 'short_lived')")
    admin = AdminClient({"bootstrap.servers": stack.kafka_address})
    for fut in admin.delete_topics(["short_lived"]).values():
        fut.result(timeout=30)
    proc = run_sql(stack, "SELECT * FROM short_s", ok=False)
    assert proc.returncode == 1
    assert "stream 'short_s' reads topic 'short_lived', which no longer exists" in proc.stderr
    assert run_sql(stack, "DROP STREAM short_s").returncode == 0


def test_not_null_columns_make_records_without_them_not_match(stack: Stack) -> None:
    create_topic(stack, "sparse", 1)
    values = [b'{"a": 1, "b": 2}', b'{"b": 3}', b'{"a": null, "b": 4}', b'{"a": 5}']
    produce(stack, "sparse", [(0, None, v, BASE_TS + i, []) for i, v in enumerate(values)])
    run_sql(stack, "CREATE STREAM sparse_s (a BIGINT NOT NULL, b BIGINT) WITH (topic = 'sparse')")
    proc = run_sql(stack, "SELECT a, b FROM sparse_s ORDER BY a", "--format", "jsonl", "--stats")
    assert [json.loads(line) for line in proc.stdout.splitlines()] == [
        {"a": 1, "b": 2},
        {"a": 5, "b": None},
    ]
    assert stats_of(proc)["invalid_records"] == {"sparse_s": 2}
    described = {d["column"]: d["type"] for d in jsonl(stack, "DESCRIBE sparse_s")}
    assert (described["a"], described["b"]) == ("int64 not null", "int64")


def test_streamctl_sql_runs_a_statement_and_a_shell(stack: Stack) -> None:
    """`streamctl sql "..."` runs one statement; `streamctl sql` with none reads a shell's
    statements from stdin; both against the stack the environment names."""
    create_topic(stack, "ctl-sql", 1)
    produce(stack, "ctl-sql", [(0, b"k", b"v%d" % i, BASE_TS + i, []) for i in range(3)])
    env = dict(os.environ)
    env.update(stack.env)
    one = subprocess.run(
        ["streamctl", "sql", 'SELECT "offset", value FROM "ctl-sql"', "--format", "csv"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines() == ["offset,value", "0,v0", "1,v1", "2,v2"]
    shell = subprocess.run(
        ["streamctl", "sql", "--format", "jsonl"],
        input='SELECT count(*) AS n FROM "ctl-sql";\nSELECT nope FROM "ctl-sql";\n',
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(shell.stdout.splitlines()[0]) == {"n": 3}
    assert shell.returncode == 1  # the second statement failed, and said why
    assert "nope" in shell.stderr
