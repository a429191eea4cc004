"""Cross-agent wake latency: produce on agent A, long-poll consume on agent B.

Two agents (full stacks under supervisord, `streamhouse.testing.Stack`) share one PostgreSQL
metadata store and one file:// object store. The bench produces one record at a time on A
(gRPC ProduceBatch) while ``--consumers`` gRPC consumers on B, and one on A, long-poll the same
partition (Consume, max wait 20 s: without the commit feed B would answer only then). A
LISTEN connection of the bench's own timestamps each commit notification, i.e. the commit as
PostgreSQL announces it; each round waits until every consumer has the record.

Reported (milliseconds, over ``--rounds`` records):
  commit -> B   the bench heard the commit notification -> a consumer on B received the record
                (B's feed, wake, metadata read, one range GET, reader -> ingest -> gRPC)
  commit -> A   the same on the producing agent (its own uploader's ring wakes it)
  produce -> B  the produce call started -> a consumer on B received it (end to end)
and how each reader got the blocks its commit feed announced, counted in its log (both
agents run at DEBUG level): A's are its own commits (from the ring, never by a GET, is the
goal), B's come by GET; with how long after the notice A's ring frame came (``notice ->
ring``: what the reader's ``own_commit_grace_s`` must cover).

    python bench/cross_agent_latency.py [--rounds 300] [--consumers 2] [--dsn postgresql://...]

Without ``--dsn`` a throwaway PostgreSQL (the tests' PostgresCluster, fsync on) is started on
a temp dir and stopped afterwards. Everything shares this machine (and the bench's GIL), so
the numbers include that contention.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from metadata.commit_notice import COMMIT_CHANNEL, parse_commit_notification  # noqa: E402
from streamhouse.client import Client, Record  # noqa: E402
from streamhouse.testing import Stack, wait_until  # noqa: E402

TOPIC = "latency"
PARTITION = 0
MAX_WAIT_MS = 20_000


@contextmanager
def _postgres(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    spec = importlib.util.spec_from_file_location("_sh_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    cluster = conftest.PostgresCluster(fsync=True)
    try:
        cluster.start()
        yield cluster.dsn(cluster.create_database())
    finally:
        cluster.stop()


class Clock:
    """Receipt times (time.monotonic) keyed by offset, shared by threads."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}
        self.cond = threading.Condition()

    def mark(self, offset: int) -> None:
        now = time.monotonic()
        with self.cond:
            self.times.setdefault(offset, now)
            self.cond.notify_all()

    def wait_for(self, offset: int, timeout: float) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: offset in self.times, timeout):
                raise RuntimeError(f"offset {offset} not seen within {timeout} s")
            return self.times[offset]


def listen(dsn: str, clock: Clock, stop: threading.Event, ready: threading.Event) -> None:
    """Timestamps each commit notification of the partition (by its last offset)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {COMMIT_CHANNEL}")
        ready.set()
        while not stop.is_set():
            for note in conn.notifies(timeout=0.5):
                _key, entries = parse_commit_notification(note.payload)
                for _topic, partition, _off, _len, end_offset in entries or ():
                    if partition == PARTITION:
                        clock.mark(end_offset - 1)


def consume(address: str, clock: Clock, stop: threading.Event, errors: list[str]) -> None:
    """Long-polls the partition from offset 0, marking each record's receipt."""
    offset = 0
    try:
        with Client(address) as client:
            while not stop.is_set():
                records, offset, _hwm, _lso = client.consume(
                    TOPIC, PARTITION, offset, max_wait_ms=MAX_WAIT_MS
                )
                for r in records:
                    clock.mark(r.offset)
    except Exception as exc:  # reported by main
        errors.append(f"consumer on {address}: {exc}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:<14} p50 {pct(ms, 0.5):7.1f}  p90 {pct(ms, 0.9):7.1f}  p99 {pct(ms, 0.99):7.1f}"
        f"  max {max(ms):7.1f}  mean {statistics.fmean(ms):7.1f}  (n={len(ms)})"
    )


def run(dsn: str, rounds: int, consumers: int, work: Path) -> None:
    objects = work / "objects"
    objects.mkdir()
    env = {"STREAMHOUSE_METADATA": dsn, "STREAMHOUSE_OBJECT_STORE": objects.as_uri()}
    with (
        Stack(work / "a", {**env, "STREAMHOUSE_LOG_LEVEL": "DEBUG"}) as a,
        Stack(work / "b", {**env, "STREAMHOUSE_LOG_LEVEL": "DEBUG"}) as b,
        Client(a.grpc_address) as producer,
    ):
        producer.create_topic(TOPIC, 1)
        with Client(b.grpc_address) as probe:
            wait_until(
                lambda: any(t.name == TOPIC for t in probe.list_topics()), 30, "B sees the topic"
            )
        stop = threading.Event()
        ready = threading.Event()
        errors: list[str] = []
        committed = Clock()
        on_b = [Clock() for _ in range(consumers)]
        on_a = Clock()
        threads = [threading.Thread(target=listen, args=(dsn, committed, stop, ready))]
        threads += [
            threading.Thread(target=consume, args=(b.grpc_address, c, stop, errors)) for c in on_b
        ]
        threads.append(threading.Thread(target=consume, args=(a.grpc_address, on_a, stop, errors)))
        for t in threads:
            t.start()
        ready.wait(30)
        produced: dict[int, float] = {}
        try:
            for i in range(rounds + 1):  # the last record releases the consumers
                if i == rounds:
                    stop.set()
                produced[i] = time.monotonic()
                producer.produce_batch(TOPIC, [Record(value=f"r{i}".encode())], partition=PARTITION)
                for clock in (*on_b, on_a):
                    clock.wait_for(i, MAX_WAIT_MS / 1000 + 30)
                # Let every consumer get back to its long-poll before the next record.
                time.sleep(0.02)
        finally:
            stop.set()
            for t in threads:
                t.join(MAX_WAIT_MS / 1000 + 30)
        if errors:
            raise SystemExit("; ".join(errors))
        measured = range(1, rounds)  # round 0 warms up (topic lookups, first connections)
        to_b = [c.times[i] - committed.times[i] for c in on_b for i in measured]
        to_a = [on_a.times[i] - committed.times[i] for i in measured]
        e2e = [c.times[i] - produced[i] for c in on_b for i in measured]
        print(f"{rounds - 1} records, {consumers} consumers on B + 1 on A, one PostgreSQL")
        print(summary("commit -> B", to_b))
        print(summary("commit -> A", to_a))
        print(summary("produce -> B", e2e))
        log = (work / "a" / "logs" / "reader.log").read_text(errors="replace")
        from_ring = log.count("taken from the committed ring")
        by_get = log.count(": range GET")
        print(f"A's reader, blocks its feed announced: {from_ring} from the ring, {by_get} by GET")
        log_b = (work / "b" / "logs" / "reader.log").read_text(errors="replace")
        print(
            f"B's reader: {log_b.count(': range GET')} blocks by GET, "
            f"{log_b.count('taken from the committed ring')} from the ring, "
            f"{log_b.count(': another agent')} backends learned as another agent's"
        )
        delays = [float(m) / 1000 for m in re.findall(r"committed ring after ([0-9.]+) ms", log)]
        if delays:
            print(summary("notice -> ring", delays))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--dsn", help="an empty PostgreSQL database (default: a throwaway one)")
    args = parser.parse_args()
    if args.rounds < 2 or args.consumers < 1:
        parser.error("--rounds must be >= 2 and --consumers >= 1")
    with _postgres(args.dsn) as dsn, tempfile.TemporaryDirectory(prefix="sh-xagent-") as tmp:
        run(dsn, args.rounds, args.consumers, Path(tmp))


if __name__ == "__main__":
    main()
