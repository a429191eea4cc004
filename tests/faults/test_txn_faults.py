"""kill -9 during transactions: a confluent-kafka transactional producer commits small
transactions back to back (each ``PER_TXN`` records over two partitions, so kills land both on
produces in flight and on EndTxn's markers) while ingest, or the uploader, is SIGKILLed twice.
Afterwards every transaction is either wholly visible to a read_committed consumer or wholly
absent, never half, and every transaction whose commit was acknowledged is visible.

The producer handles errors as librdkafka documents: an abortable error aborts, a fatal one
(or a failed abort) makes a new producer with the same transactional.id, whose InitProducerId
fences the old one and aborts its open transaction. Each attempt writes a fresh tag, so a
transaction retried after an error is a new one. At the end a fresh producer commits a
sentinel transaction on both partitions: a read_committed consumer that has read it has
passed every earlier transaction.

A third test decides a commit (PrepareCommit stored) while its markers cannot be written, kills
ingest there, and checks that the restarted coordinator completes it. A fourth kills the whole
agent coordinating an open transaction in a two-agent cluster (PostgreSQL metadata): the other
agent takes the transaction over from metadata and commits it.
"""

from __future__ import annotations

import collections
import pathlib
import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamhouse.kafka.messages import FindCoordinatorRequest
from streamhouse.testing import Cluster, Stack, kafka_call, wait_until

PARTITIONS = 2
PER_TXN = 20
DEADLINE_S = 120.0


def make_producer(bootstrap: str, tid: str, stop: threading.Event | None = None) -> Producer:
    """A transactional producer, initialised (retried while ingest is down)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "transactional.id": tid,
                "transaction.timeout.ms": 10_000,
                "message.timeout.ms": 10_000,
                "retry.backoff.ms": 50,
            }
        )
        try:
            producer.init_transactions(30)
            return producer
        except KafkaException as exc:
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                raise AssertionError(f"init_transactions kept failing: {exc}") from exc


class TxnLoop(threading.Thread):
    """Commits transactions tagged 1, 2, … until stopped; records which were acknowledged."""

    def __init__(self, bootstrap: str, topic: str, tid: str) -> None:
        super().__init__(name="txn-loop", daemon=True)
        self.bootstrap, self.topic, self.tid = bootstrap, topic, tid
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.acked: list[int] = []
        self.spans: list[tuple[float, float]] = []  # (begin, end) of every attempt
        self.errors: list[str] = []
        self.tag = 0
        self.failure: BaseException | None = None

    def wait_acked(self, count: int, timeout: float = DEADLINE_S) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.acked) >= count or self.failure, timeout)
        assert self.failure is None, self.failure
        assert ok, f"only {len(self.acked)} of {count} transactions acknowledged; {self.errors}"

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported to the test through wait_acked
            with self.cond:
                self.failure = exc
                self.cond.notify_all()

    def _loop(self) -> None:
        producer = make_producer(self.bootstrap, self.tid, self.stop)
        while not self.stop.is_set():
            self.tag += 1
            tag = self.tag
            began = time.monotonic()
            try:
                producer.begin_transaction()
                for j in range(PER_TXN):
                    producer.produce(self.topic, f"{tag}:{j}".encode(), partition=j % PARTITIONS)
                producer.commit_transaction(30)
            except KafkaException as exc:
                self.spans.append((began, time.monotonic()))
                error = exc.args[0]
                self.errors.append(f"tag {tag}: {error}")
                recovered = False
                if error.txn_requires_abort() and not error.fatal():
                    try:
                        producer.abort_transaction(30)
                        recovered = True
                    except KafkaException as again:
                        self.errors.append(f"tag {tag} abort: {again.args[0]}")
                if not recovered:
                    # Fatal, retriable with an unknown outcome, or a failed abort: a new
                    # instance fences this one and aborts whatever it left open.
                    producer = make_producer(self.bootstrap, self.tid, self.stop)
                continue
            self.spans.append((began, time.monotonic()))
            with self.cond:
                self.acked.append(tag)
                self.cond.notify_all()


def read_committed(bootstrap: str, topic: str, until: set[bytes]) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    seen: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not until <= set(seen):
            assert time.monotonic() < deadline, f"missing {sorted(until - set(seen))[:10]}"
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                assert message.error() is None, message.error()
                seen.append(message.value())
    finally:
        consumer.close()
    return seen


def run_kills(tmp_path: pathlib.Path, program: str) -> None:
    with Stack(
        tmp_path / "data", env={"STREAMHOUSE_TRANSACTION_CHECK_INTERVAL_MS": "200"}
    ) as stack:
        bootstrap = stack.kafka_address
        topic = f"txn-faults-{program}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        tid = f"faults-{program}"
        loop = TxnLoop(bootstrap, topic, tid)
        loop.start()
        kills: list[float] = []
        try:
            loop.wait_acked(5)
            for _ in range(2):
                kills.append(time.monotonic())
                old = stack.kill(program)
                stack.wait_restarted(program, old)
                # Progress after the restart: more commits acknowledged.
                loop.wait_acked(len(loop.acked) + 5)
        finally:
            loop.stop.set()
            loop.join(DEADLINE_S)
        assert not loop.is_alive(), "the transaction loop did not stop"
        assert loop.failure is None, loop.failure

        sentinel = make_producer(bootstrap, tid)
        sentinel.begin_transaction()
        last = [f"sentinel:{j}".encode() for j in range(PER_TXN)]
        for j, value in enumerate(last):
            sentinel.produce(topic, value, partition=j % PARTITIONS)
        sentinel.commit_transaction(30)
        acked = {f"{tag}:{j}".encode() for tag in loop.acked for j in range(PER_TXN)}
        seen = read_committed(bootstrap, topic, acked | set(last))

    by_tag: collections.Counter[str] = collections.Counter(v.split(b":")[0].decode() for v in seen)
    assert len(seen) == len(set(seen)), "no record twice"
    partial = {tag: n for tag, n in by_tag.items() if n != PER_TXN}
    assert not partial, f"transactions seen in part: {partial}"
    assert {str(t) for t in loop.acked} <= set(by_tag), "every acknowledged commit visible"
    # Each kill landed inside a transaction (between its begin and its commit's answer).
    for killed in kills:
        assert any(b <= killed <= e for b, e in loop.spans), f"kill at {killed} between txns"


def test_kill_ingest_during_transactions(tmp_path: pathlib.Path) -> None:
    run_kills(tmp_path, "ingest")


def test_kill_uploader_during_transactions(tmp_path: pathlib.Path) -> None:
    run_kills(tmp_path, "uploader")


def txn_state(stack: Stack, tid: str) -> str | None:
    """The coordinator's stored state of a transactional id, read from metadata."""
    from ingest.kafka.txn_shell import CATALOG_KIND, catalog_name, decode
    from metadata.store import MetadataStore

    store = MetadataStore(stack.settings.metadata_target)
    try:
        blob = store.get_catalog_entry(CATALOG_KIND, catalog_name(tid))
    finally:
        store.close()
    return decode(blob).state.value if blob is not None else None


def test_commit_decided_before_its_markers_survives_kill_of_ingest(
    tmp_path: pathlib.Path,
) -> None:
    """EndTxn(commit) stores PrepareCommit, then its markers cannot commit (the uploader is
    stopped); ingest is SIGKILLed there. The restarted ingest's recovery writes the markers:
    the whole transaction becomes visible, and the producer's commit succeeds."""
    env = {"STREAMHOUSE_TRANSACTION_CHECK_INTERVAL_MS": "200"}
    with Stack(tmp_path / "data", env=env) as stack:
        bootstrap = stack.kafka_address
        topic = "txn-recovery"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        tid = "recovery"
        producer = make_producer(bootstrap, tid)
        producer.begin_transaction()
        records = [f"decided:{j}".encode() for j in range(PER_TXN)]
        for j, value in enumerate(records):
            producer.produce(topic, value, partition=j % PARTITIONS)
        assert producer.flush(30) == 0  # the data is durable; only the markers are left
        stack.supervisorctl("stop", "uploader")
        outcome: list[BaseException | None] = []
        committer = threading.Thread(
            target=lambda: outcome.append(_commit(producer)), name="committer", daemon=True
        )
        committer.start()
        wait_until(lambda: txn_state(stack, tid) == "PrepareCommit", 30, "the commit to be decided")
        old = stack.kill("ingest")
        stack.wait_restarted("ingest", old)
        assert txn_state(stack, tid) == "PrepareCommit"  # no marker could be written yet
        stack.supervisorctl("start", "uploader")
        wait_until(lambda: txn_state(stack, tid) == "CompleteCommit", 60, "recovery")
        committer.join(DEADLINE_S)
        assert outcome == [None], outcome
        seen = read_committed(bootstrap, topic, set(records))
    assert sorted(seen) == sorted(records)
    ingest_log = (tmp_path / "data" / "logs" / "ingest.log").read_text()
    assert "transactional id 'recovery': completed its interrupted commit" in ingest_log


def _commit(producer: Producer) -> BaseException | None:
    try:
        producer.commit_transaction(DEADLINE_S)
    except KafkaException as exc:
        return exc
    return None


def coordinated_by(address: str, agent_port: int) -> str:
    """A transactional id whose coordinator, as the agent at ``address`` sees it, listens on
    ``agent_port``."""
    for n in range(1000):
        tid = f"failover-{n}"
        answer = kafka_call(address, 10, 3, FindCoordinatorRequest(key=tid, key_type=1))
        if answer.error_code == 0 and answer.port == agent_port:
            return tid
    raise AssertionError(f"no transactional id is coordinated by the agent on port {agent_port}")


def test_open_transaction_commits_after_its_coordinator_agent_died(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Two agents on PostgreSQL: a transaction's coordinator agent is killed whole (kill -9 of
    supervisord and every process) with the transaction open; the producer's commit goes to
    the surviving agent, which reads the state from metadata and commits it as a whole."""
    cluster = make_cluster(2, env={"STREAMHOUSE_TRANSACTION_CHECK_INTERVAL_MS": "200"})
    survivor = cluster[1].kafka_address
    topic = "txn-failover"
    admin = AdminClient({"bootstrap.servers": survivor})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    tid = coordinated_by(survivor, cluster[0].kafka_port)
    producer = Producer(
        {
            "bootstrap.servers": cluster.kafka_bootstrap,
            "transactional.id": tid,
            "topic.metadata.refresh.interval.ms": 1000,
            "reconnect.backoff.max.ms": 1000,
            "socket.connection.setup.timeout.ms": 3000,
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    records = [f"survives:{j}".encode() for j in range(PER_TXN)]
    for j, value in enumerate(records):
        producer.produce(topic, value, partition=j % PARTITIONS)
    assert producer.flush(30) == 0
    cluster.kill_agent(0)
    producer.commit_transaction(DEADLINE_S)
    # The next transaction runs on the survivor from the start.
    producer.begin_transaction()
    more = [f"after:{j}".encode() for j in range(PER_TXN)]
    for j, value in enumerate(more):
        producer.produce(topic, value, partition=j % PARTITIONS)
    producer.commit_transaction(DEADLINE_S)
    seen = read_committed(survivor, topic, set(records + more))
    assert sorted(seen) == sorted(records + more)
