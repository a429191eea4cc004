"""The group-commit feedback channel (streamhouse/upload_progress.py) survives kill -9 of
either end: a restarted uploader never leaves the segmenter believing segments are still
uploading (which would hold every produce for the whole flush interval), and a restarted
segmenter starts with nothing in flight."""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time

import pytest

from streamhouse.client import Client, Record, StreamHouseError
from streamhouse.testing import Stack, wait_until

FLUSH_MS = 5000
INTERVAL_S = FLUSH_MS / 1000


def timed_produce(client: Client, value: bytes) -> float:
    started = time.perf_counter()
    client.produce_batch("gc", [Record(value=value)], partition=0)
    return time.perf_counter() - started


@pytest.fixture
def stack(tmp_path: pathlib.Path) -> Stack:
    env = {"STREAMHOUSE_FLUSH_INTERVAL_MS": str(FLUSH_MS)}
    with Stack(tmp_path / "data", env=env) as stack:
        with Client(stack.grpc_address) as client:
            client.create_topic("gc", 1)
            assert timed_produce(client, b"warm-up") < INTERVAL_S
        yield stack


def test_uploader_killed_with_a_segment_in_flight(stack: Stack) -> None:
    uploader = stack.pid("uploader")
    # Stopped, the uploader reports nothing: the next segment stays "uploading" for the
    # segmenter, exactly as when the uploader dies in the middle of a PUT.
    os.kill(uploader, signal.SIGSTOP)
    outcome: list[BaseException | None] = []

    def in_flight() -> None:
        try:
            with Client(stack.grpc_address, timeout=60) as own:
                own.produce_batch("gc", [Record(value=b"lost")], partition=0)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=in_flight)
    try:
        thread.start()
        # The segment is sealed at once (the uploader was idle) and written to the sealed ring.
        wait_until(lambda: _sealed_ring_used(stack) > 0, timeout=30, what="the segment in the ring")
    finally:
        os.kill(uploader, signal.SIGKILL)  # a stopped process dies of SIGKILL too
    stack.wait_restarted("uploader", uploader)
    thread.join(timeout=60)
    # Never acknowledged: ingest fails it when it sees the uploader's restart.
    assert len(outcome) == 1 and isinstance(outcome[0], StreamHouseError), outcome
    with Client(stack.grpc_address) as client:
        waits = [timed_produce(client, f"after-{i}".encode()) for i in range(3)]
        assert max(waits) < INTERVAL_S, waits  # the segmenter knows the old segment is gone
        records, _, _, _ = client.consume("gc", 0, 0, max_records=100)
    values = [r.value for r in records]
    assert values == [b"warm-up", b"after-0", b"after-1", b"after-2"]
    assert "uploader restarted: no segment of ours is in flight" in _log(stack, "segmenter")


def test_segmenter_killed_starts_with_nothing_in_flight(stack: Stack) -> None:
    for _ in range(2):
        segmenter = stack.kill("segmenter")
        stack.wait_restarted("segmenter", segmenter)
        stack.wait_ready()
        with Client(stack.grpc_address, timeout=60) as client:
            # The first produce may meet the ring switch-over; the next ones are quick.
            _produce_retrying(client, b"first")
            waits = [timed_produce(client, f"v{i}".encode()) for i in range(3)]
        assert max(waits) < INTERVAL_S, waits


def _produce_retrying(client: Client, value: bytes) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            client.produce_batch("gc", [Record(value=value)], partition=0)
            return
        except StreamHouseError:
            if time.monotonic() > deadline:
                raise


def _sealed_ring_used(stack: Stack) -> int:
    from streamhouse.status import ring_state

    state = ring_state(stack.settings, "sealed")
    return 0 if state is None else state["used"]


def _log(stack: Stack, program: str) -> str:
    return (stack.settings.log_dir / f"{program}.log").read_text(errors="replace")
