"""Group commit on a real stack: with a long flush interval, a produce at low load is
acknowledged after its own PUT and commit, far sooner than the interval (the segmenter seals
at once while the uploader is idle; segmenter/policy.py)."""

from __future__ import annotations

import pathlib
import statistics
import threading
import time

from streamhouse.client import Client, Record
from streamhouse.testing import Stack

FLUSH_MS = 5000


def timed_produce(client: Client, topic: str, value: bytes) -> float:
    """Seconds from sending one single-record batch to its acknowledgement."""
    started = time.perf_counter()
    client.produce_batch(topic, [Record(value=value)], partition=0)
    return time.perf_counter() - started


def test_low_rate_produce_is_acknowledged_well_before_the_flush_interval(
    tmp_path: pathlib.Path,
) -> None:
    env = {"STREAMHOUSE_FLUSH_INTERVAL_MS": str(FLUSH_MS)}
    with Stack(tmp_path / "data", env=env) as stack, Client(stack.grpc_address) as client:
        client.create_topic("gc", 1)
        # One at a time: each produce finds the uploader idle. Without group commit every one
        # of them would wait the whole flush interval for its seal.
        waits = [timed_produce(client, "gc", f"one-{i}".encode()) for i in range(8)]
        interval = FLUSH_MS / 1000
        assert max(waits) < interval, waits
        assert statistics.median(waits) < interval / 4, waits

        # Several at once: those arriving while an upload runs go into the next segment, and
        # every one is still acknowledged long before the interval.
        results: list[float] = []
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                with Client(stack.grpc_address) as own:
                    for i in range(4):
                        results.append(timed_produce(own, "gc", f"w{n}-{i}".encode()))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert len(results) == 16 and max(results) < interval, results

        # Everything acknowledged is there, in order per producer.
        records, _, high_watermark, _ = client.consume("gc", 0, 0, max_records=100)
        assert high_watermark == 8 + 16
        values = [r.value for r in records]
        assert len(values) == 8 + 16
        assert values[:8] == [f"one-{i}".encode() for i in range(8)]
        for n in range(4):
            mine = [v for v in values if v.startswith(f"w{n}-".encode())]
            assert mine == [f"w{n}-{i}".encode() for i in range(4)]
