"""One nemesis run: SeaweedFS behind a latency proxy, a stack on it, the workload, the nemesis
for `duration` seconds, healing, a final full read, and the checker's verdict.

Everything lives under `out/`: `history.jsonl`, `verdict.txt`, the stack's data dir
(`data/`, logs in `data/logs/`) and SeaweedFS's (`weed/`, `weed.log`).
"""

from __future__ import annotations

import logging
import pathlib
import re
import time
from collections import Counter
from dataclasses import dataclass, field

from streamhouse.client import Client, StreamHouseError
from streamhouse.testing import Stack

from .checker import Verdict, check
from .history import History, read_history
from .nemesis import Nemesis
from .servers import ACCESS_KEY, BUCKET, SECRET_KEY, LatencyProxy, SeaweedServer
from .workload import (
    CLIENT_LOG,
    ConsumerWorker,
    GrpcProducerWorker,
    KafkaProducerWorker,
    final_read,
)

TOPIC = "nemesis"
MAX_RECORD_BYTES = 4096


@dataclass
class RunConfig:
    duration: float = 600.0
    seed: int = 7
    interval: float = 10.0  # mean seconds between faults
    partitions: int = 4
    kafka_producers: int = 3
    kafka_rate: float = 100.0  # values per second per Kafka producer
    grpc_producers: int = 2
    grpc_batch: int = 20
    grpc_batches_per_s: float = 5.0
    poison_every: int = 10  # every n-th gRPC batch carries an oversize record
    consumers: int = 2
    max_pause: float = 6.0


@dataclass
class RunResult:
    verdict: Verdict
    faults: Counter[str]
    watermarks: dict[int, int]
    polled: int
    poisoned: int
    failed_in_flight: int = 0
    protocol_errors: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.verdict.valid and not self.problems

    def report(self) -> str:
        lines = ["faults: " + ", ".join(f"{k}={n}" for k, n in sorted(self.faults.items()))]
        lines.append(f"high watermarks: {self.watermarks}")
        lines.append(f"records polled by the consumer group: {self.polled}")
        lines.append(f"poisoned gRPC batches refused: {self.poisoned}")
        lines.append(
            f"produces in flight failed by a pipeline restart (ingest log): {self.failed_in_flight}"
        )
        lines.append(f"Kafka protocol errors seen by clients: {self.protocol_errors}")
        lines.extend(f"PROBLEM: {p}" for p in self.problems)
        lines.append(self.verdict.report())
        if self.problems:
            lines.append("INVALID (see PROBLEM lines)")
        return "\n".join(lines)


def stack_env(proxy: LatencyProxy) -> dict[str, str]:
    return {
        "STREAMHOUSE_OBJECT_STORE": f"s3://{BUCKET}",
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "STREAMHOUSE_MAX_RECORD_BYTES": str(MAX_RECORD_BYTES),
        "STREAMHOUSE_STORE_TIMEOUT_MS": "5000",
        # Consumers rejoin quickly after each ingest restart.
        "STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": "500",
    }


def failed_in_flight(log_dir: pathlib.Path) -> int:
    """Produces ingest failed because a peer restarted under them: evidence the faults hit."""
    total = 0
    for log in log_dir.glob("ingest.log*"):
        text = log.read_text(errors="replace")
        total += sum(int(n) for n in re.findall(r"restarted; failing (\d+) pending", text))
    return total


def protocol_errors(client_log: pathlib.Path) -> list[str]:
    """librdkafka's PROTOERR lines: a response it could not parse is a broker bug."""
    if not client_log.exists():
        return []
    return [
        line for line in client_log.read_text(errors="replace").splitlines() if "PROTOERR" in line
    ]


def wait_for_acks(history: History, minimum: int, timeout: float) -> None:
    """Bounded wait until the workload has `minimum` acknowledged sends (polls the counter)."""
    deadline = time.monotonic() + timeout
    while history.counts.get("send:ok", 0) < minimum:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workload got no {minimum} acknowledgements in {timeout}s")
        time.sleep(0.1)


def run(out: pathlib.Path, config: RunConfig, log: bool = True) -> RunResult:
    """Runs the whole thing; every server started here is stopped before it returns."""
    out.mkdir(parents=True, exist_ok=True)
    say = print if log else (lambda *_: None)
    history = History(out / "history.jsonl")
    client_log = logging.FileHandler(out / "clients.log")
    client_log.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    CLIENT_LOG.addHandler(client_log)
    CLIENT_LOG.setLevel(logging.INFO)
    CLIENT_LOG.propagate = False
    store = SeaweedServer(out)
    proxy = LatencyProxy(store.port)
    stack: Stack | None = None
    workers: list = []
    consumers: list[ConsumerWorker] = []
    grpc_producers: list[GrpcProducerWorker] = []
    faults: Counter[str] = Counter()
    watermarks: dict[int, int] = {}
    problems: list[str] = []
    try:
        store.start()
        proxy.start()
        # The stack's dirs private to this user, as ring files require.
        (out / "data" / "run").mkdir(mode=0o700, parents=True, exist_ok=True)
        (out / "data").chmod(0o700)
        stack = Stack(out / "data", env=stack_env(proxy))
        stack.start()
        with Client(stack.grpc_address) as client:
            client.create_topic(TOPIC, config.partitions)
        bootstrap = f"127.0.0.1:{stack.kafka_port}"
        kafka = [
            KafkaProducerWorker(i, history, bootstrap, TOPIC, config.partitions, config.kafka_rate)
            for i in range(config.kafka_producers)
        ]
        grpc_producers = [
            GrpcProducerWorker(
                i,
                history,
                stack.grpc_address,
                TOPIC,
                config.partitions,
                config.grpc_batch,
                config.grpc_batches_per_s,
                config.poison_every,
                MAX_RECORD_BYTES,
            )
            for i in range(config.grpc_producers)
        ]
        consumers = [ConsumerWorker(i, history, bootstrap, TOPIC) for i in range(config.consumers)]
        workers = [*kafka, *grpc_producers, *consumers]
        for worker in workers:
            worker.start()
        wait_for_acks(history, 50, timeout=60)
        say(f"workload running; nemesis for {config.duration:.0f}s (seed {config.seed})")
        nemesis = Nemesis(
            history, stack, store, proxy, config.seed, config.interval, config.max_pause
        )
        started = time.monotonic()
        nemesis.start()
        nemesis.join(config.duration)
        nemesis.stop()
        nemesis.join(300)  # the last fault, and any kind not yet done
        if nemesis.is_alive():
            problems.append("the nemesis did not finish its faults within 300s of the stop")
        if nemesis.error is not None:
            problems.append(f"the nemesis failed: {nemesis.error!r}")
        say(f"nemesis done after {time.monotonic() - started:.0f}s: {dict(nemesis.done)}")
        nemesis.heal()
        # A healthy stretch: everything retried during the faults gets through now.
        before = history.counts.get("send:ok", 0)
        wait_for_acks(history, before + 50, timeout=120)
        for worker in [*kafka, *grpc_producers]:
            worker.stop()
        for worker in [*kafka, *grpc_producers]:
            worker.join(120)
            if worker.is_alive():
                problems.append(f"{worker.name} did not stop within 120s")
        for producer in kafka:
            left = producer.finish(150)
            if left:
                problems.append(f"{producer.name}: {left} sends never reported after healing")
        for consumer in consumers:
            consumer.stop()
        for consumer in consumers:
            consumer.join(60)
        for worker in workers:
            if worker.error is not None:
                problems.append(f"{worker.name} died: {worker.error!r}")
        say("final read of every partition")
        try:
            watermarks = final_read(history, stack.grpc_address, TOPIC, config.partitions)
        except StreamHouseError as exc:
            problems.append(f"final read failed: {exc}")
        faults = nemesis.done
    finally:
        for worker in workers:
            worker.stop()
        if stack is not None:
            stack.stop()
        proxy.stop()
        store.stop()
        history.close()
        CLIENT_LOG.removeHandler(client_log)
        client_log.close()
    verdict = check(read_history(out / "history.jsonl"))
    bad_responses = protocol_errors(out / "clients.log")
    if bad_responses:
        problems.append(
            f"{len(bad_responses)} Kafka responses clients could not parse, e.g. "
            f"{bad_responses[0]} (see {out / 'clients.log'})"
        )
    result = RunResult(
        verdict=verdict,
        faults=faults,
        watermarks=watermarks,
        polled=sum(c.polled for c in consumers),
        poisoned=sum(g.poisoned for g in grpc_producers),
        failed_in_flight=failed_in_flight(out / "data" / "logs"),
        protocol_errors=len(bad_responses),
        problems=problems,
    )
    (out / "verdict.txt").write_text(result.report() + "\n")
    return result
