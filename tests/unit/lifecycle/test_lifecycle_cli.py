"""`python3 -m lifecycle` at its edges: bad arguments and settings are refused (exit 2) with a
message saying what to do; a pass whose object store refuses every request fails (exit 1)
with one log line and no report."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[3]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMHOUSE_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "lifecycle", *args],
        env={**base, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_arguments_are_refused(tmp_path: pathlib.Path) -> None:
    env = {"STREAMHOUSE_DATA_DIR": str(tmp_path)}
    done = run(["--now-ms", "5"], env)
    assert done.returncode == 2
    assert "use it with --once" in done.stderr
    done = run(["--once", "--now-ms", "-1"], env)
    assert done.returncode == 2
    assert "must be a Unix time in milliseconds" in done.stderr


def test_a_too_short_grace_period_is_refused(tmp_path: pathlib.Path) -> None:
    done = run(
        ["--once"],
        {"STREAMHOUSE_DATA_DIR": str(tmp_path), "STREAMHOUSE_LIFECYCLE_GRACE_MS": "1000"},
    )
    assert done.returncode == 2
    assert "STREAMHOUSE_LIFECYCLE_GRACE_MS=1000 must exceed" in done.stderr
    assert done.stdout == ""


def test_a_refusing_object_store_fails_the_pass_in_one_line(tmp_path: pathlib.Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connections are refused
    done = run(
        ["--once"],
        {
            "STREAMHOUSE_DATA_DIR": str(tmp_path),
            "STREAMHOUSE_OBJECT_STORE": "s3://no-such-bucket",
            "STREAMHOUSE_STORE_TIMEOUT_MS": "2000",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "nobody",
            "AWS_SECRET_ACCESS_KEY": "nothing",
        },
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    failures = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(failures) == 1, done.stderr
    assert "pass failed: listing segments/ in s3://no-such-bucket failed" in failures[0]
