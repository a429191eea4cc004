"""End-to-end tests of streamctl, run as a subprocess against a running stack.

The ``stack`` fixture (tests/conftest.py) provides ``grpc_address`` ("127.0.0.1:PORT").
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT = 60


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("STREAMHOUSE_ADDR", None)
    env.update(extra)
    return env


def _argv(stack: Any, *args: str) -> list[str]:
    return [sys.executable, "-m", "streamhouse.streamctl", "--server", stack.grpc_address, *args]


def streamctl(
    stack: Any, *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Runs ``python -m streamhouse.streamctl`` with ``--server`` pointing at the stack."""
    return subprocess.run(
        _argv(stack, *args),
        input=input if input is not None else b"",
        capture_output=True,
        cwd=REPO_ROOT,
        env=_env(),
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    """Asserts success and returns stdout as text."""
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stderr == b"", result.stderr.decode(errors="replace")
    return result.stdout.decode()


def one_error_line(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    """Asserts a failure with ``code`` and exactly one ``streamctl: error:`` line on stderr."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("streamctl: error: "), lines
    return lines[0]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def consume_json(
    stack: Any, topic: str, partition: int, offset: str, limit: int, expect: int
) -> list[dict[str, Any]]:
    """Consumes with --output json, polling briefly until ``expect`` records are visible."""
    deadline = time.monotonic() + 20
    while True:
        out = ok(
            streamctl(
                stack,
                "consume",
                topic,
                "--partition",
                str(partition),
                "--offset",
                offset,
                "--limit",
                str(limit),
                "--output",
                "json",
            )
        )
        rows = json_lines(out)
        if len(rows) >= expect or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


@pytest.fixture
def topic(stack: Any) -> str:
    """A fresh single-partition topic."""
    name = f"ctl-{uuid.uuid4().hex[:12]}"
    ok(streamctl(stack, "topic", "create", name, "--partitions", "1"))
    return name


def test_topic_create_list_get_delete(stack: Any) -> None:
    name = f"ctl-{uuid.uuid4().hex[:12]}"
    out = ok(
        streamctl(
            stack,
            "topic",
            "create",
            name,
            "--partitions",
            "3",
            "--retention-ms",
            "3600000",
            "--output",
            "json",
        )
    )
    created = json.loads(out)
    assert created["name"] == name
    assert created["partitions"] == 3
    assert created["config"].get("retention.ms") == "3600000"

    listed = json_lines(ok(streamctl(stack, "topic", "list", "--output", "json")))
    mine = [t for t in listed if t["name"] == name]
    assert len(mine) == 1 and mine[0]["partitions"] == 3
    assert name in ok(streamctl(stack, "topic", "list")).split()

    got = json.loads(ok(streamctl(stack, "topic", "get", name, "--output", "json")))
    assert got["name"] == name and got["partitions"] == 3
    assert got["topic_id"] == created["topic_id"]
    assert sorted(p["partition"] for p in got["partition_info"]) in ([], [0, 1, 2])
    text = ok(streamctl(stack, "topic", "get", name))
    assert f"name: {name}" in text and "partitions: 3" in text

    ok(streamctl(stack, "topic", "delete", name))
    err = one_error_line(streamctl(stack, "topic", "get", name), 1)
    assert "NOT_FOUND" in err and name in err
    listed = json_lines(ok(streamctl(stack, "topic", "list", "--output", "json")))
    assert name not in [t["name"] for t in listed]


def test_create_existing_topic_fails(stack: Any, topic: str) -> None:
    err = one_error_line(streamctl(stack, "topic", "create", topic, "--partitions", "1"), 1)
    assert "ALREADY_EXISTS" in err


def test_produce_key_value_and_consume(stack: Any) -> None:
    name = f"ctl-{uuid.uuid4().hex[:12]}"
    ok(streamctl(stack, "topic", "create", name, "--partitions", "3"))
    out = ok(
        streamctl(stack, "produce", name, "--key", "user-1", "--value", "hello", "--output", "json")
    )
    ack = json.loads(out)
    assert ack["topic"] == name and 0 <= ack["partition"] < 3 and ack["offset"] >= 0

    # The same key goes to the same partition.
    again = json.loads(
        ok(streamctl(stack, "produce", name, "--key", "user-1", "--value", "", "--output", "json"))
    )
    assert again["partition"] == ack["partition"]
    assert again["offset"] == ack["offset"] + 1

    rows = consume_json(stack, name, ack["partition"], str(ack["offset"]), 10, 2)
    assert [(r["offset"], r["key"], r["value"]) for r in rows] == [
        (ack["offset"], "user-1", "hello"),
        (ack["offset"] + 1, "user-1", ""),
    ]
    assert all(r["partition"] == ack["partition"] and r["timestamp_ms"] > 0 for r in rows)

    text = ok(
        streamctl(stack, "consume", name, "--partition", str(ack["partition"]), "--offset", "-2")
    )
    assert text.splitlines()[0] == f"{ack['offset']}\tuser-1\thello"


def test_produce_explicit_partition(stack: Any) -> None:
    name = f"ctl-{uuid.uuid4().hex[:12]}"
    ok(streamctl(stack, "topic", "create", name, "--partitions", "2"))
    out = ok(
        streamctl(stack, "produce", name, "--partition", "1", "--value", "p1", "--output", "json")
    )
    assert json.loads(out)["partition"] == 1
    rows = consume_json(stack, name, 1, "earliest", 10, 1)
    assert [r["value"] for r in rows] == ["p1"]
    assert consume_json(stack, name, 0, "earliest", 10, 0) == []


def test_produce_file_of_500_lines(stack: Any, topic: str, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "records.txt"
    path.write_text("".join(f"record-{i}\n" for i in range(500)))
    out = ok(
        streamctl(
            stack,
            "produce",
            topic,
            "--partition",
            "0",
            "--key",
            "k",
            "--file",
            str(path),
            "--batch-size",
            "200",
            "--output",
            "json",
        )
    )
    summary = json.loads(out)
    assert summary["record_count"] == 500
    assert len(summary["partitions"]) == 1
    part = summary["partitions"][0]
    assert part["partition"] == 0 and part["record_count"] == 500
    first = part["first_offset"]
    assert part["last_offset"] == first + 499

    rows = consume_json(stack, topic, 0, str(first), 500, 500)
    assert len(rows) == 500
    assert [r["offset"] for r in rows] == list(range(first, first + 500))
    assert [r["value"] for r in rows] == [f"record-{i}" for i in range(500)]
    assert {r["key"] for r in rows} == {"k"}
    assert not any(r["value_base64"] or r["key_base64"] for r in rows)

    # --limit stops early, and a later offset starts in the middle.
    rows = consume_json(stack, topic, 0, str(first + 100), 7, 7)
    assert [r["value"] for r in rows] == [f"record-{i}" for i in range(100, 107)]
    # latest without --follow returns nothing.
    assert ok(streamctl(stack, "consume", topic, "--partition", "0", "--offset", "latest")) == ""


def test_produce_from_stdin_with_binary_values(stack: Any, topic: str) -> None:
    data = b"alpha\n\xff\xfe\x00raw\n\ngamma\n"
    out = ok(streamctl(stack, "produce", topic, "--partition", "0", "--output", "json", input=data))
    summary = json.loads(out)
    assert summary["record_count"] == 4
    first = summary["partitions"][0]["first_offset"]

    rows = consume_json(stack, topic, 0, str(first), 10, 4)
    assert [r["offset"] for r in rows] == [first, first + 1, first + 2, first + 3]
    assert all(r["key"] is None for r in rows)
    assert rows[0]["value"] == "alpha" and not rows[0]["value_base64"]
    assert rows[1]["value_base64"] and base64.b64decode(rows[1]["value"]) == b"\xff\xfe\x00raw"
    assert rows[2]["value"] == "" and rows[3]["value"] == "gamma"


def test_produce_with_key_separator(stack: Any, topic: str) -> None:
    data = b"a:1\nb:2:x\n"
    ok(streamctl(stack, "produce", topic, "--partition", "0", "--key-separator", ":", input=data))
    rows = consume_json(stack, topic, 0, "earliest", 10, 2)
    assert [(r["key"], r["value"]) for r in rows] == [("a", "1"), ("b", "2:x")]


def test_offset_commit_and_get(stack: Any, topic: str) -> None:
    group = f"group-{uuid.uuid4().hex[:8]}"
    base = ["--group", group, "--topic", topic, "--partition", "0"]
    before = json.loads(ok(streamctl(stack, "offset", "get", *base, "--output", "json")))
    assert before["offset"] == -1

    ok(streamctl(stack, "offset", "commit", *base, "--offset", "42", "--metadata", "note"))
    after = json.loads(ok(streamctl(stack, "offset", "get", *base, "--output", "json")))
    assert (after["offset"], after["metadata"]) == (42, "note")
    assert ok(streamctl(stack, "offset", "get", *base)).strip() == "42\tnote"

    ok(streamctl(stack, "offset", "commit", *base, "--offset", "43"))
    assert ok(streamctl(stack, "offset", "get", *base)).strip() == "43"


def test_errors_are_one_line(stack: Any) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    err = one_error_line(streamctl(stack, "topic", "get", missing), 1)
    assert err.startswith("streamctl: error: NOT_FOUND: ")
    assert missing in err

    result = streamctl(stack, "consume", missing, "--partition", "0", "--offset", "0")
    assert "NOT_FOUND" in one_error_line(result, 1)
    result = streamctl(stack, "produce", missing, "--value", "v")
    assert "NOT_FOUND" in one_error_line(result, 1)
    result = streamctl(stack, "topic", "delete", missing)
    assert "NOT_FOUND" in one_error_line(result, 1)

    # Usage errors exit 2 without contacting the server.
    one_error_line(streamctl(stack, "consume", missing, "--offset", "soon"), 2)
    one_error_line(streamctl(stack, "topic", "create", missing), 2)

    # An unreachable server is a server error.
    result = streamctl(stack, "topic", "list", "--server", "127.0.0.1:1")
    assert "UNAVAILABLE" in one_error_line(result, 1)


def test_server_address_from_environment(stack: Any, topic: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamhouse.streamctl", "topic", "list"],
        capture_output=True,
        cwd=REPO_ROOT,
        env=_env(STREAMHOUSE_ADDR=stack.grpc_address),
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert topic in ok(result).split()


def _start_follow(stack: Any, topic: str, *extra: str) -> subprocess.Popen[bytes]:
    argv = _argv(stack, "consume", topic, "--partition", "0", "--offset", "latest", "--follow")
    return subprocess.Popen(
        [*argv, "--output", "json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=_env(),
    )


def test_follow_sees_new_records_and_stops_at_limit(stack: Any, topic: str) -> None:
    proc = _start_follow(stack, topic, "--limit", "2")
    try:
        # Keep producing until the follower, whose subscription starts at some point after
        # launch, has seen two records and exited.
        deadline = time.monotonic() + 30
        number = 0
        while proc.poll() is None and time.monotonic() < deadline:
            ok(streamctl(stack, "produce", topic, "--partition", "0", "--value", f"n{number}"))
            number += 1
            time.sleep(0.3)
        out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err == b""
    rows = json_lines(out.decode())
    assert len(rows) == 2
    assert rows[1]["offset"] == rows[0]["offset"] + 1
    assert rows[0]["value"].startswith("n")


def test_follow_ctrl_c_exits_zero_quietly(stack: Any, topic: str) -> None:
    proc = _start_follow(stack, topic)
    try:
        # Produce until the follower prints a record: then it is surely inside the stream.
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        number = 0
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            ok(streamctl(stack, "produce", topic, "--partition", "0", "--value", f"n{number}"))
            number += 1
            readable, _, _ = select.select([proc.stdout], [], [], 0.3)
            if readable:
                break
        first = json.loads(proc.stdout.readline())
        assert first["value"].startswith("n")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err == b""


def test_cluster_lists_the_single_agent(stack: Any) -> None:
    """One stack on its SQLite metadata is one agent, node 0, alive, with its own addresses."""
    rows = json_lines(ok(streamctl(stack, "cluster", "--json")))
    assert len(rows) == 1
    (row,) = rows
    kafka = f"127.0.0.1:{stack.kafka_port}"
    assert (row["agent_id"], row["node_id"], row["state"], row["alive"]) == (
        kafka,
        0,
        "alive",
        True,
    )
    assert (row["kafka_address"], row["grpc_address"], row["zone"]) == (
        kafka,
        stack.grpc_address,
        "",
    )
    assert 0 <= row["seconds_since_heartbeat"] < 4
    assert row["started_at_ms"] <= row["heartbeat_at_ms"] < row["lease_until_ms"]
    table = ok(streamctl(stack, "cluster")).splitlines()
    assert table[0].split()[:3] == ["NODE", "AGENT", "STATE"]
    assert table[1].split()[:3] == ["0", kafka, "alive"]
