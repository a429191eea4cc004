"""Continuous queries in a cluster: every agent runs the sql program, each query runs on
exactly one live agent, and when that agent dies (SIGKILL of all its processes) another
takes the query over and the view goes on from the last checkpoint. Real PostgreSQL
metadata shared by two agents, a shared local object store."""

from __future__ import annotations

import json
import pathlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from sql.service_client import SqlClient, SqlServiceError
from streamhouse.testing import Cluster

VIEWS = ["v_a", "v_b", "v_c", "v_d"]


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
        time.sleep(0.2)


def produce(bootstrap: str, start: int, count: int) -> list[int]:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    keys = [i % 5 for i in range(start, start + count)]
    for i, k in zip(range(start, start + count), keys, strict=True):
        p.produce("clicks", value=json.dumps({"k": k, "i": i}).encode(), partition=i % 2)
    assert p.flush(60) == 0
    return keys


def counts(client: SqlClient, view: str) -> dict[int, int]:
    table = client.execute(f"SELECT k, n FROM {view}").table
    assert table is not None
    return {r["k"]: r["n"] for r in table.to_pylist()}


def test_each_query_runs_on_one_agent_and_moves_when_it_dies(
    tmp_path: pathlib.Path, postgres_dsn: str
) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    env = {"STREAMHOUSE_SQL_CHECKPOINT_INTERVAL_MS": "200", "STREAMHOUSE_LOG_LEVEL": "WARNING"}
    with Cluster(tmp_path / "cluster", 2, postgres_dsn, f"file://{objects}", env) as cluster:
        cluster.wait_brokers(2)
        for agent in cluster.agents:
            agent.wait_sql_ready()
        admin = AdminClient({"bootstrap.servers": cluster.kafka_bootstrap})
        for fut in admin.create_topics([NewTopic("clicks", 2, 1)]).values():
            fut.result(timeout=30)
        keys = produce(cluster.kafka_bootstrap, 0, 300)
        clients = [SqlClient(a.sql_address, timeout=60) for a in cluster.agents]
        try:
            clients[0].execute("CREATE STREAM clicks (k BIGINT, i BIGINT) WITH (topic = 'clicks')")
            for view in VIEWS:
                clients[1].execute(
                    f"CREATE MATERIALIZED VIEW {view} AS SELECT k, count(*) AS n FROM clicks "
                    "GROUP BY k"
                )
            expected = dict(Counter(keys))
            for view in VIEWS:
                wait_for(lambda v=view: counts(clients[0], v) == expected, 90, f"{view} complete")

            def placement() -> dict[str, int]:
                """view -> the agent running it; exactly one runs each, the other says so."""
                where: dict[str, int] = {}
                for view in VIEWS:
                    states = [c.describe(view).runner.state for c in clients]
                    assert sorted(states) == ["elsewhere", "running"], (view, states)
                    where[view] = states.index("running")
                return where

            where = wait_for(placement, 30, "one runner per query")
            # the agent running the first view dies: its queries move to the other one
            victim = where[VIEWS[0]]
            survivor = 1 - victim
            moved = [v for v in VIEWS if where[v] == victim]
            cluster.kill_agent(victim)

            def taken_over() -> bool:
                return all(clients[survivor].describe(v).runner.state == "running" for v in VIEWS)

            wait_for(taken_over, 60, f"agent {survivor} runs {moved} too")
            keys += produce(cluster.kafka_bootstrap, 300, 200)
            expected = dict(Counter(keys))
            for view in VIEWS:
                wait_for(
                    lambda v=view: counts(clients[survivor], v) == expected,
                    90,
                    f"{view} follows on agent {survivor}",
                )
        finally:
            for c in clients:
                c.close()
