"""kill -9 each pipeline process while producers keep producing with retries: every
acknowledged record is readable afterwards, with no gaps and no duplicates."""

from __future__ import annotations

import pathlib
import threading

import pytest

from streamhouse.client import Client, IdempotentProducer, Record
from streamhouse.testing import Stack

PARTITIONS = 2
BATCH = 200


class Progress:
    """Acknowledged record count, with a condition the test waits on (no sleeping)."""

    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()
        self.errors: list[BaseException] = []

    def add(self, n: int) -> None:
        with self.cond:
            self.count += n
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            self.errors.append(exc)
            self.cond.notify_all()

    def wait_for(self, target: int, timeout: float = 120) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.count >= target or self.errors, timeout)
        assert ok, f"only {self.count} of {target} records acknowledged in {timeout}s"


def producer_loop(
    address: str,
    topic: str,
    partition: int,
    stop: threading.Event,
    acked: list[bytes],
    progress: Progress,
) -> None:
    try:
        with Client(address, timeout=60) as client:
            producer = IdempotentProducer(client, max_attempts=200)
            n = 0
            while not stop.is_set():
                values = [f"p{partition}-{n + i}".encode() for i in range(BATCH)]
                producer.produce_batch(topic, partition, [Record(value=v) for v in values])
                acked.extend(values)
                progress.add(len(values))
                n += BATCH
    except BaseException as exc:  # surfaced by the test
        progress.fail(exc)


@pytest.mark.parametrize("victim", ["segmenter", "uploader", "reader", "ingest"])
def test_kill_minus_nine_loses_nothing_acknowledged(tmp_path: pathlib.Path, victim: str) -> None:
    with Stack(tmp_path / "data") as stack:
        with Client(stack.grpc_address) as client:
            client.create_topic("faults", PARTITIONS)
        stop = threading.Event()
        acked: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
        progress = Progress()
        threads = [
            threading.Thread(
                target=producer_loop,
                args=(stack.grpc_address, "faults", p, stop, acked[p], progress),
            )
            for p in range(PARTITIONS)
        ]
        for t in threads:
            t.start()
        try:
            for _ in range(2):
                # Kill once data is flowing, wait for the restart, then let more flow.
                progress.wait_for(progress.count + 2000)
                old = stack.kill(victim)
                stack.wait_restarted(victim, old)
            progress.wait_for(progress.count + 2000)
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        assert not progress.errors, progress.errors
        stack.wait_ready()
        with Client(stack.grpc_address, timeout=60) as client:
            for p in range(PARTITIONS):
                values: list[bytes] = []
                offsets: list[int] = []
                offset = 0
                while True:
                    got, offset, hwm, _ = client.consume("faults", p, offset, max_records=10_000)
                    values.extend(r.value for r in got)
                    offsets.extend(r.offset for r in got)
                    if offset >= hwm:
                        break
                assert offsets == list(range(len(offsets))), "no gaps"
                assert len(set(values)) == len(values), "no duplicates"
                assert values[: len(acked[p])] == acked[p], "every acked record, in order"
