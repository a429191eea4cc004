"""streamctl's continuous-query output (``query list`` table, ``query describe`` text, the
--json form) from QueryStatus messages, and that ``streamctl [--server A] sql ...`` reaches
the sql command. No server."""

from __future__ import annotations

import json
import subprocess
import sys

from sql.service_client import status_to_dict
from streamhouse.proto import sql_pb2 as pb
from streamhouse.streamctl import queries_table, query_text

NOW = 1_700_000_000_000


def status(name: str, lag: int, state: str = "running") -> pb.QueryStatus:
    q = pb.QueryStatus(
        name=name,
        kind="view",
        sql="SELECT k, count(*) AS n FROM s GROUP BY k",
        created_ms=NOW,
        step=12,
        checkpoint_ms=NOW + 5000,
        rows_in=1000,
        rows_out=5,
        rows_in_per_s=250.0,
        rows_out_per_s=1.5,
        lag=lag,
        sources=[
            pb.SourceLag(
                source="s", topic="t", partition=p, high_watermark=100, position=100 - x, lag=x
            )
            for p, x in enumerate([lag, 0])
        ],  # fmt: skip
        runner=pb.RunnerStatus(state=state, pid=4242 if state == "running" else 0, restarts=2),
    )
    q.watermark_ms = NOW + 4000
    if state == "backoff":
        q.runner.last_exit_code = 1
        q.runner.last_error = "runner v: the plan does not restore"
        q.runner.backoff_ms = 2000
    return q


def test_list_table_has_one_row_per_query() -> None:
    text = queries_table([status("v1", 7), status("v2", 0, "backoff")])
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["NAME", "KIND", "RUNNER", "RESTARTS", "LAG"]
    assert lines[1].split()[:5] == ["v1", "view", "running", "2", "7"]
    assert lines[2].split()[:5] == ["v2", "view", "backoff", "2", "0"]
    assert "2023-11-14" in lines[1]  # the watermark, in UTC
    assert "no continuous queries" in queries_table([])


def test_describe_text_and_json() -> None:
    q = status("v", 3, "backoff")
    text = query_text(q)
    assert text.startswith("query v (materialized view)")
    assert "backoff, 2 restarts, last exit status 1, next start in 2000 ms" in text
    assert "last error: runner v: the plan does not restore" in text
    assert "input lag:  3 records" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("    ")]
    assert rows[0] == ["SOURCE", "TOPIC", "PARTITION", "POSITION", "HIGH", "WATERMARK", "LAG"]
    assert rows[1] == ["s", "t", "0", "97", "100", "3"]
    as_dict = json.loads(json.dumps(status_to_dict(q)))
    assert as_dict["runner"] == {
        "state": "backoff",
        "pid": 0,
        "restarts": 2,
        "last_exit_code": 1,
        "last_error": "runner v: the plan does not restore",
        "started_ms": 0,
        "backoff_ms": 2000,
    }
    assert as_dict["watermark_ms"] == NOW + 4000
    assert as_dict["output_topic"] is None
    assert [s["lag"] for s in as_dict["sources"]] == [3, 0]


def test_global_options_before_sql_reach_the_sql_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamhouse.streamctl", "--server", "127.0.0.1:1", "sql", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--via" in proc.stdout and "--format" in proc.stdout
