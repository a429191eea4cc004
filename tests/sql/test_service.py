"""The sql service against a real stack (supervisord program ``sql``): statements over gRPC
as Arrow IPC, continuous queries created through ``streamctl sql`` and run by the runners the
service starts, ``streamctl query list/describe/drop``, errors, and a SIGKILLed service
restarted by supervisord with its queries going on.

Records are produced with confluent-kafka; references are computed here from what was
produced (plain Python), never taken from the output checked.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from metadata.interface import open_store
from sql.service_client import SqlClient, SqlServiceError
from streamhouse.testing import Stack, free_port, read_kafka_log

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE_TS = 1_700_000_000_000
USERS = ["ann", "bob", "cid", "dee", "eve"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "STREAMHOUSE_SQL_CHECKPOINT_INTERVAL_MS": "200",
        "STREAMHOUSE_SQL_RESTART_BACKOFF_MS": "200",
    }
    with Stack(tmp_path_factory.mktemp("sqlsvc") / "data", env=env) as running:
        running.wait_sql_ready()
        yield running


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[SqlClient]:
    with SqlClient(stack.sql_address, timeout=120) as c:
        yield c


def streamctl(stack: Stack, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(stack.env)
    proc = subprocess.run(
        [sys.executable, "-m", "streamhouse.streamctl", "--server", stack.grpc_address, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ok:
        assert proc.returncode == 0, f"streamctl {args} failed: {proc.stderr}"
    return proc


def create_topic(stack: Stack, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_address})
    for fut in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        fut.result(timeout=30)


def produce_events(stack: Stack, topic: str, events: list[dict[str, Any]]) -> None:
    p = Producer({"bootstrap.servers": stack.kafka_address, "linger.ms": 5})
    failed: list[str] = []
    for i, e in enumerate(events):
        p.produce(
            topic,
            key=e["user"].encode(),
            value=json.dumps(e).encode(),
            partition=i % 2,
            on_delivery=lambda err, _m: failed.append(str(err)) if err else None,
        )
    assert p.flush(60) == 0
    assert failed == []


def ts_text(ms: int) -> str:
    """Event time as the JSON text a TIMESTAMP column reads (UTC, milliseconds)."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}"


def events(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "user": USERS[(i * 7) % len(USERS)],
            "amount": i % 13,
            "ts": ts_text(BASE_TS + i * 100),
            "ms": BASE_TS + i * 100,
        }
        for i in range(start, start + count)
    ]


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except SqlServiceError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout}s (last: {last!r})")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


@pytest.fixture(scope="module")
def declared(stack: Stack, client: SqlClient) -> list[dict[str, Any]]:
    """Topic ``pay`` (2 partitions) with 400 events, declared as stream ``pay``."""
    create_topic(stack, "pay", 2)
    produced = events(0, 400)
    produce_events(stack, "pay", produced)
    result = client.execute(
        "CREATE STREAM pay (user VARCHAR NOT NULL, amount BIGINT, ts TIMESTAMP, "
        "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (topic = 'pay')"
    )
    assert result.message == "stream pay created over topic pay"
    return produced


def local_result(stack: Stack, sql: str) -> pa.Table:
    from sql.__main__ import _Session

    async def run() -> pa.Table:
        async with _Session(stack.settings, 0) as engine:
            return (await engine.execute(sql)).table

    return asyncio.run(run())


# --------------------------------------------------------------------------- ad-hoc queries


def test_execute_streams_arrow_ipc_equal_to_the_in_process_result(
    stack: Stack, client: SqlClient, declared: list[dict[str, Any]]
) -> None:
    sql = "SELECT user, count(*) AS n, sum(amount) AS total FROM pay GROUP BY user ORDER BY user"
    remote = client.execute(sql)
    assert remote.table is not None
    assert remote.table.equals(local_result(stack, sql))
    counts = Counter(e["user"] for e in declared)
    totals = Counter()
    for e in declared:
        totals[e["user"]] += e["amount"]
    assert remote.table.to_pylist() == [
        {"user": u, "n": counts[u], "total": totals[u]} for u in sorted(counts)
    ]
    assert remote.stats["scans"], remote.stats  # what was read is reported


def test_execute_many_rows_arrive_in_several_ipc_chunks(
    stack: Stack, client: SqlClient, declared: list[dict[str, Any]]
) -> None:
    # 400 rows x ~20 kB of padding: well over one 1 MiB chunk
    sql = (
        "SELECT _offset, _partition, repeat('x', 20000) AS pad FROM pay "
        "ORDER BY _partition, _offset"
    )
    remote = client.execute(sql)
    assert remote.table is not None and remote.table.num_rows == len(declared)
    assert remote.table.column("pad").to_pylist() == ["x" * 20000] * len(declared)
    by_partition = Counter(i % 2 for i in range(len(declared)))
    assert Counter(remote.table.column("_partition").to_pylist()) == by_partition


@pytest.mark.parametrize(
    ("statement", "code", "words"),
    [
        ("SELEC 1", "INVALID_ARGUMENT", "SELEC"),
        ("SELECT nope FROM pay", "INVALID_ARGUMENT", "nope"),
        ("SELECT * FROM missing_relation", "INVALID_ARGUMENT", "missing_relation"),
        ("DROP QUERY ghost", "NOT_FOUND", "no query called 'ghost'"),
        ("DROP MATERIALIZED VIEW ghost", "NOT_FOUND", "no materialized view called 'ghost'"),
        (
            "CREATE MATERIALIZED VIEW bad AS SELECT nope, count(*) FROM pay GROUP BY nope",
            "INVALID_ARGUMENT",
            "nope",
        ),
        ("CREATE MATERIALIZED VIEW v2 WITH (speed = 1) AS SELECT 1", "INVALID_ARGUMENT", "speed"),
        (
            "CREATE MATERIALIZED VIEW pay AS SELECT user, count(*) AS n FROM pay GROUP BY user",
            "INVALID_ARGUMENT",
            "stream 'pay' already exists",
        ),
        (
            "CREATE STREAM loop WITH (topic = 'pay') AS SELECT user FROM pay",
            "INVALID_ARGUMENT",
            "cannot write what it reads",
        ),
    ],
)
def test_errors_are_statuses_with_the_reason(
    client: SqlClient, declared: list[dict[str, Any]], statement: str, code: str, words: str
) -> None:
    with pytest.raises(SqlServiceError) as err:
        client.execute(statement)
    assert err.value.code == code
    assert words in err.value.message


def test_a_statement_over_its_read_limit_is_refused_before_reading(
    client: SqlClient, declared: list[dict[str, Any]]
) -> None:
    with pytest.raises(SqlServiceError) as err:
        client.execute("SELECT count(*) FROM pay", max_read_bytes=100)
    assert err.value.code == "INVALID_ARGUMENT"
    assert "over the limit of 0.0 MB" in err.value.message
    table = client.execute("SELECT count(*) AS n FROM pay", max_read_bytes=100_000_000).table
    assert table is not None and table.to_pylist() == [{"n": len(declared)}]


def test_drop_and_describe_of_an_unknown_query_through_streamctl(
    stack: Stack, declared: list[dict[str, Any]]
) -> None:
    proc = streamctl(stack, "query", "drop", "ghost", ok=False)
    assert proc.returncode == 1
    assert "no query called 'ghost'" in proc.stderr
    proc = streamctl(stack, "query", "describe", "ghost", ok=False)
    assert proc.returncode == 1 and "no query called 'ghost'" in proc.stderr
    assert streamctl(stack, "query", "drop", "ghost", "--if-exists").returncode == 0


# --------------------------------------------------------------------------- continuous queries


def _view_rows(client: SqlClient, sql: str) -> list[dict[str, Any]]:
    table = client.execute(sql).table
    assert table is not None
    return table.to_pylist()


def _expected_totals(produced: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts = Counter(e["user"] for e in produced)
    totals: Counter[str] = Counter()
    for e in produced:
        totals[e["user"]] += e["amount"]
    return [{"user": u, "n": counts[u], "total": totals[u]} for u in sorted(counts)]


def test_materialized_view_through_streamctl_runs_lists_describes_and_drops(
    stack: Stack, client: SqlClient, declared: list[dict[str, Any]]
) -> None:
    out = streamctl(
        stack,
        "sql",
        "CREATE MATERIALIZED VIEW totals AS SELECT user, count(*) AS n, sum(amount) AS total "
        "FROM pay GROUP BY user",
    )
    assert "materialized view totals created" in out.stdout
    expected = _expected_totals(declared)
    wait_for(
        lambda: _view_rows(client, "SELECT user, n, total FROM totals ORDER BY user") == expected,
        90,
        "the view holds every produced event",
    )
    # streamctl sql reads the view too (through the service), as JSON lines
    out = streamctl(stack, "sql", "SELECT user, n FROM totals ORDER BY user", "--format", "jsonl")
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"user": r["user"], "n": r["n"]} for r in expected
    ]

    listed = [
        json.loads(line) for line in streamctl(stack, "query", "list", "--json").stdout.splitlines()
    ]
    assert [q["name"] for q in listed] == ["totals"]
    described = json.loads(streamctl(stack, "query", "describe", "totals", "--json").stdout)
    assert described["kind"] == "view"
    assert described["runner"]["state"] == "running" and described["runner"]["pid"] > 0
    runner_pid = described["runner"]["pid"]
    assert _alive(runner_pid)
    # lag per source partition: high watermark - position, all read
    assert {(s["topic"], s["partition"]) for s in described["sources"]} == {("pay", 0), ("pay", 1)}
    wait_for(
        lambda: (
            json.loads(streamctl(stack, "query", "describe", "totals", "--json").stdout)["lag"] == 0
        ),
        60,
        "no input lag",
    )
    described = json.loads(streamctl(stack, "query", "describe", "totals", "--json").stdout)
    assert described["rows_in"] == len(declared)
    for s in described["sources"]:
        assert s["position"] == s["high_watermark"] == 200
    text = streamctl(stack, "query", "describe", "totals").stdout
    assert "query totals (materialized view)" in text and "input lag:  0 records" in text

    # more events: the view follows
    more = events(400, 100)
    produce_events(stack, "pay", more)
    expected = _expected_totals(declared + more)
    wait_for(
        lambda: _view_rows(client, "SELECT user, n, total FROM totals ORDER BY user") == expected,
        90,
        "the view holds the new events",
    )
    declared.extend(more)

    out = streamctl(stack, "query", "drop", "totals")
    assert "materialized view totals dropped" in out.stdout
    assert not _alive(runner_pid)
    assert streamctl(stack, "query", "list", "--json").stdout.strip() == ""
    store = open_store(stack.settings.metadata_target)
    try:
        assert store.get_query_checkpoint("totals") is None
    finally:
        store.close()
    with pytest.raises(SqlServiceError) as err:
        client.execute("SELECT * FROM totals")
    assert err.value.code == "INVALID_ARGUMENT"


def test_create_stream_as_writes_the_output_topic_and_declares_the_stream(
    stack: Stack, client: SqlClient, declared: list[dict[str, Any]]
) -> None:
    result = client.execute(
        "CREATE STREAM big WITH (topic = 'big_out', partitions = 1) AS "
        "SELECT user, amount, ts FROM pay WHERE amount >= 10"
    )
    assert result.message is not None and "topic big_out created" in result.message
    expected = sorted((e["user"], e["amount"], e["ms"]) for e in declared if e["amount"] >= 10)

    def output() -> list[tuple[str, int, int]]:
        log = read_kafka_log(stack.kafka_address, "big_out", 1)
        rows = [json.loads(v) for _o, v in log[0]]
        return sorted((r["user"], r["amount"], _ms(r["ts"])) for r in rows)

    wait_for(lambda: output() == expected, 90, "the output topic holds every matching event")
    # the declared stream is queryable like any other
    rows = _view_rows(client, "SELECT count(*) AS n FROM big")
    assert rows == [{"n": len(expected)}]
    shown = client.execute("SHOW QUERIES").table
    assert shown is not None
    assert shown.to_pylist()[0]["name"] == "big" and shown.to_pylist()[0]["output"] == "big_out"

    message = client.drop("big")
    assert "dropped" in message and "big_out kept" in message
    topics = {t.name for t in _topics(stack)}
    assert "big_out" in topics
    with pytest.raises(SqlServiceError):
        client.execute("SELECT count(*) FROM big")


def _ms(value: Any) -> int:
    """A timestamp of the output's JSON (epoch ms, or ISO text in UTC) -> epoch ms."""
    if isinstance(value, int):
        return value
    moment = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return round(moment.timestamp() * 1000)


def _topics(stack: Stack) -> list[Any]:
    store = open_store(stack.settings.metadata_target)
    try:
        return store.list_topics()
    finally:
        store.close()


def test_a_killed_sql_service_is_restarted_and_its_queries_go_on(
    stack: Stack, client: SqlClient, declared: list[dict[str, Any]]
) -> None:
    client.execute(
        "CREATE MATERIALIZED VIEW counts AS SELECT user, count(*) AS n, sum(amount) AS total "
        "FROM pay GROUP BY user"
    )
    expected = _expected_totals(declared)
    wait_for(
        lambda: _view_rows(client, "SELECT user, n, total FROM counts ORDER BY user") == expected,
        90,
        "the view is complete",
    )
    old_runner = client.describe("counts").runner.pid
    assert old_runner > 0
    old = stack.kill("sql")
    stack.wait_restarted("sql", old)
    stack.wait_sql_ready()
    # the old runner got its parent-death signal; the new service runs a new one
    wait_for(lambda: not _alive(old_runner), 30, "the orphaned runner is gone")
    wait_for(
        lambda: client.describe("counts").runner.state == "running",
        60,
        "the restarted service runs the query",
    )
    assert client.describe("counts").runner.pid != old_runner
    more = events(1000, 150)
    produce_events(stack, "pay", more)
    declared.extend(more)
    expected = _expected_totals(declared)
    wait_for(
        lambda: _view_rows(client, "SELECT user, n, total FROM counts ORDER BY user") == expected,
        90,
        "the view follows after the restart",
    )
    with pytest.raises(SqlServiceError) as err:
        client.execute("DROP STREAM pay")
    assert "read by continuous query counts" in err.value.message
    assert client.drop("counts").startswith("materialized view counts dropped")


def test_streamctl_sql_shell_through_the_service(
    stack: Stack, declared: list[dict[str, Any]]
) -> None:
    env = dict(os.environ)
    env.update(stack.env)
    shell = subprocess.run(
        [sys.executable, "-m", "streamhouse.streamctl", "sql", "--format", "jsonl", "--via",
         "service"],
        input="SELECT count(*) AS n FROM pay WHERE amount = 3;\nSELECT nope FROM pay;\n",
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    produced = sum(1 for e in declared if e["amount"] == 3)
    assert [json.loads(line) for line in shell.stdout.splitlines()] == [{"n": produced}]
    assert shell.returncode == 1
    assert "nope" in shell.stderr


def test_without_the_service_statements_and_query_commands_run_in_process(
    stack: Stack, declared: list[dict[str, Any]]
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    out = streamctl(
        stack, "sql", "SELECT count(*) AS n FROM pay", "--format", "jsonl", "--service", dead
    )
    assert json.loads(out.stdout) == {"n": len(declared)}
    proc = streamctl(stack, "sql", "SELECT 1", "--via", "service", "--service", dead, ok=False)
    assert proc.returncode == 1 and "does not answer" in proc.stderr
    client = SqlClient(stack.sql_address)
    try:
        client.execute(
            "CREATE MATERIALIZED VIEW local_check AS "
            "SELECT user, count(*) AS n FROM pay GROUP BY user"
        )
        runner = wait_for(lambda: client.describe("local_check").runner.pid, 30, "runner up")
        listed = streamctl(stack, "query", "list", "--json", "--sql-server", dead).stdout
        rows = [json.loads(line) for line in listed.splitlines()]
        assert [(r["name"], r["runner"]["state"]) for r in rows] == [("local_check", "unknown")]
        out = streamctl(stack, "query", "drop", "local_check", "--sql-server", dead)
        assert "materialized view local_check dropped" in out.stdout
        # the service sees the definition gone and stops the runner
        wait_for(lambda: client.list_queries() == [], 30, "the query is gone")
        wait_for(lambda: not _alive(runner), 30, "its runner stopped")
    finally:
        client.close()


def test_stopping_the_sql_program_stops_its_runners(
    stack: Stack, client: SqlClient, declared: list[dict[str, Any]]
) -> None:
    client.execute(
        "CREATE MATERIALIZED VIEW stopper AS SELECT user, count(*) AS n FROM pay GROUP BY user"
    )
    runner = wait_for(lambda: client.describe("stopper").runner.pid, 30, "runner up")
    service = stack.pid("sql")
    assert runner in _children(service)
    stack.supervisorctl("stop", "sql")  # SIGTERM, as supervisord stops it
    assert not _alive(service)
    wait_for(lambda: not _alive(runner), 5, "the runner stopped with the service")
    stack.supervisorctl("start", "sql")
    stack.wait_sql_ready()
    wait_for(lambda: client.describe("stopper").runner.state == "running", 30, "runner again")
    assert client.drop("stopper").startswith("materialized view stopper dropped")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_with_sql_disabled_the_service_answers_statements_but_runs_no_query(
    tmp_path: pathlib.Path,
) -> None:
    with Stack(tmp_path / "data", env={"STREAMHOUSE_SQL_ENABLED": "false"}) as off:
        off.wait_sql_ready()
        create_topic(off, "few", 2)
        produce_events(off, "few", events(0, 10))
        with SqlClient(off.sql_address) as c:
            assert c.execute("SELECT count(*) AS n FROM few").table.to_pylist() == [{"n": 10}]
            c.execute("CREATE STREAM few (user VARCHAR, amount BIGINT) WITH (topic = 'few')")
            c.execute(
                "CREATE MATERIALIZED VIEW idle AS SELECT user, count(*) AS n FROM few GROUP BY user"
            )
            assert c.describe("idle").runner.state == "disabled"
            # nothing was started: the sql program has no children, now or a moment later
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                assert _children(off.pid("sql")) == []
                time.sleep(0.1)
            assert "dropped" in c.drop("idle")


def test_a_stream_query_output_is_a_stream_other_queries_read(
    stack: Stack, client: SqlClient, declared: list[dict[str, Any]]
) -> None:
    """CREATE STREAM ... AS with a window declares its output with a watermark on the window
    end; a view over that stream sums the closed windows."""
    client.execute(
        "CREATE STREAM per_window WITH (topic = 'per_window') AS SELECT user, "
        "TUMBLE_END(ts, INTERVAL '10' SECOND) AS wend, count(*) AS n FROM pay "
        "GROUP BY user, TUMBLE(ts, INTERVAL '10' SECOND)"
    )
    described = client.execute("DESCRIBE per_window").table
    assert described is not None
    notes = {r["column"]: (r["type"], r["note"]) for r in described.to_pylist()}
    assert notes["wend"][0].startswith("timestamp") and "watermark: wend" in notes["wend"][1]
    assert notes["n"][0].startswith("int64")
    client.execute(
        "CREATE MATERIALIZED VIEW window_sums AS SELECT user, sum(n) AS n FROM per_window "
        "GROUP BY user"
    )
    # reference: windows of 10 s closed by pay's watermark (latest ts - 1 s)
    watermark = max(e["ms"] for e in declared) - 1000
    assert (watermark - BASE_TS) % 10_000 != 0  # no window ends exactly at the watermark
    closed = Counter(
        e["user"]
        for e in declared
        if BASE_TS + ((e["ms"] - BASE_TS) // 10_000 + 1) * 10_000 <= watermark
    )
    expected = [{"user": u, "n": closed[u]} for u in sorted(closed)]
    wait_for(
        lambda: _view_rows(client, "SELECT user, n FROM window_sums ORDER BY user") == expected,
        90,
        "the view over the stream query's output sums the closed windows",
    )
    with pytest.raises(SqlServiceError) as err:
        client.drop("per_window")  # window_sums reads it
    assert "is read by continuous query window_sums" in err.value.message
    assert "dropped" in client.drop("window_sums")
    assert "dropped" in client.drop("per_window")
