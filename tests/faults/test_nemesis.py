"""A short Jepsen-style nemesis run (every fault kind at least once, fixed seed) against a whole
stack on SeaweedFS: idempotent Kafka and gRPC producers and a consumer group, every operation
recorded, then the checker. Every anomaly count must be zero and plenty must be acknowledged.

The long run is one command: `python3 -m tests.faults.nemesis --duration 600 --seed 7 --out DIR`
(see tests/faults/nemesis/__init__.py).
"""

from __future__ import annotations

import logging
import pathlib
import re
import threading

import pytest
from confluent_kafka import Consumer, TopicPartition

from streamhouse.client import Client
from streamhouse.testing import Stack
from tests.faults.nemesis.checker import ANOMALIES
from tests.faults.nemesis.nemesis import KINDS
from tests.faults.nemesis.run import RunConfig, run


@pytest.mark.timeout(600)
def test_short_nemesis_run_has_no_anomalies(tmp_path: pathlib.Path) -> None:
    config = RunConfig(duration=45, seed=11, interval=2.0, max_pause=3.0)
    result = run(tmp_path / "nemesis", config, log=False)
    report = result.report()
    assert set(result.faults) == set(KINDS), report
    assert not result.problems, report
    verdict = result.verdict
    assert {name: getattr(verdict, name) for name in ANOMALIES} == dict.fromkeys(ANOMALIES, 0), (
        report
    )
    assert verdict.acknowledged >= 2000, report
    # The consumer group read, and the refused (poisoned) batches were really refused.
    assert result.polled > 0, report
    assert result.poisoned > 0 and verdict.sends_failed > 0, report
    assert sum(result.watermarks.values()) >= verdict.acknowledged, report
    assert verdict.valid, report


class LogLines(logging.Handler):
    """librdkafka's log lines, kept for the test to look at."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock:
            self.lines.append(record.getMessage())


def test_fetches_failed_by_a_reader_restart_are_parsable(stack: Stack) -> None:
    """Found by the nemesis: fetches waiting when the reader restarts were answered with a null
    record set, which librdkafka cannot parse ("invalid MessageSetSize -1"): it dropped the
    whole response. Kafka answers an error partition with an empty record set."""
    with Client(stack.grpc_address) as client:
        client.create_topic("tail", 1)
        client.produce("tail", b"first", partition=0)
    lines = LogLines()
    logger = logging.getLogger("test.librdkafka")
    logger.addHandler(lines)
    logger.propagate = False
    consumer = Consumer(
        {
            "bootstrap.servers": f"127.0.0.1:{stack.kafka_port}",
            "group.id": "tail",
            "fetch.wait.max.ms": 1000,  # a long poll is pending almost all the time
        },
        logger=logger,
    )
    try:
        consumer.assign([TopicPartition("tail", 0, 0)])
        message = consumer.poll(30)
        assert message is not None and message.value() == b"first"
        log = stack.data_dir / "logs" / "ingest.log"
        failed = 0
        for _ in range(10):  # until a kill caught long polls in flight (bounded)
            old = stack.kill("reader")
            stack.wait_restarted("reader", old)
            stack.wait_ready()
            found = re.findall(r"reader restarted; failing (\d+) pending", log.read_text())
            failed = sum(int(n) for n in found)
            if failed:
                break
            consumer.poll(1.5)  # the consumer's next long polls reach the new reader
        assert failed > 0, "no reader kill caught a fetch in flight"
        # The consumer goes on reading; the failed fetches were answered in a form it parses.
        with Client(stack.grpc_address) as client:
            client.produce("tail", b"second", partition=0)
        message = consumer.poll(30)
        assert message is not None and message.error() is None and message.value() == b"second"
    finally:
        consumer.close()
        logger.removeHandler(lines)
    protocol_errors = [line for line in lines.lines if "MessageSetSize" in line or "parse" in line]
    assert not protocol_errors, protocol_errors
