"""`streamhouse status` shows produce and fetch throughput over the last minute, per topic and in
total (ingest/throughput.py writes run/throughput.json, streamhouse/status.py reads it), against
a real stack."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from streamhouse.client import Client, Record
from streamhouse.testing import Stack, wait_until

TOPIC = "status-rates"
QUIET = "status-quiet"
N = 40


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("status-throughput") / "data") as running:
        yield running


def status(stack: Stack, *flags: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "streamhouse.cli", "status", *flags],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout


def throughput(stack: Stack) -> dict[str, Any]:
    rc, out = status(stack, "--json")
    shown = json.loads(out)
    assert rc == 0, shown
    value = shown["throughput"]
    assert value is not None, "ingest wrote no current run/throughput.json"
    return value


def test_status_shows_the_produce_and_fetch_rates_of_a_topic(stack: Stack) -> None:
    with Client(stack.grpc_address) as client:
        client.create_topic(TOPIC, 1)
        client.create_topic(QUIET, 1)
        client.produce_batch(TOPIC, [Record(value=b"v%03d" % i) for i in range(N)], partition=0)
        seen: dict[str, Any] = {}

        def produce_rate_shown() -> bool:
            seen.update(throughput(stack))
            return TOPIC in seen["topics"]

        wait_until(produce_rate_shown, 30, "status showing a produce rate for the topic")
        rates = seen["topics"][TOPIC]
        assert rates["produce_records_per_s"] > 0 and rates["produce_bytes_per_s"] > 0
        # Within the window: the rate times the window's seconds is the records produced.
        assert rates["produce_records_per_s"] * seen["window_s"] == pytest.approx(N, rel=0.01)
        assert seen["total"]["produce_records_per_s"] >= rates["produce_records_per_s"]
        assert QUIET not in seen["topics"]  # nothing moved on it

        records, _, _, _ = client.consume(TOPIC, 0, 0)
        assert len(records) == N

        def fetch_rate_shown() -> bool:
            seen.update(throughput(stack))
            return seen["topics"].get(TOPIC, {}).get("fetch_records_per_s", 0) > 0

        wait_until(fetch_rate_shown, 30, "status showing a fetch rate for the topic")
        assert seen["topics"][TOPIC]["fetch_bytes_per_s"] > 0
        assert seen["total"]["fetch_records_per_s"] >= seen["topics"][TOPIC]["fetch_records_per_s"]

    # The text output has the same figures on a line per topic.
    rc, text = status(stack)
    assert rc == 0, text
    assert "throughput (last" in text
    assert f"topic {TOPIC}: produce" in text
