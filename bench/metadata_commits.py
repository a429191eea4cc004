"""Metadata commits per second and their latency: N simulated agents, P partitions per segment.

Each agent is a thread with its own store (on PostgreSQL: its own one-connection pool, as a
separate agent process would have) committing segments back to back for ``--seconds``; every
segment holds one block of one 10-record batch for each of the P partitions of one shared
topic, so all agents contend for the same partition rows (any agent accepts any partition).
Prints commits/s (and partition-blocks/s) with p50/p99 commit latency, per (backend, N, P):

    python bench/metadata_commits.py [--points pg:1:10,pg:8:10,sqlite:1:10,...] [--seconds 5]
        [--dsn postgresql://...]

Without ``--dsn`` it starts a throwaway PostgreSQL (Debian's packages, fsync on, as the tests
do but durable) on a temp dir and a free 127.0.0.1 port and stops it afterwards. SQLite runs
on a temp file with ``synchronous=FULL`` (the default). The load generator shares the machine
(and Python's GIL) with the server, so the numbers are a floor, not PostgreSQL's ceiling.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metadata import BatchRef, CommitBlock, MetadataStore  # noqa: E402
from metadata.interface import MetadataBackend  # noqa: E402
from metadata.postgres import PostgresMetadataStore  # noqa: E402

DEFAULT_POINTS = "pg:1:10,pg:8:10,pg:32:10,pg:1:1000,pg:8:1000,pg:32:1000,sqlite:1:10,sqlite:1:1000"


@contextmanager
def _throwaway_postgres() -> Iterator[Callable[[], str]]:
    """Start the tests' throwaway cluster (tests/conftest.py) with fsync on; yields a function
    creating a fresh database and returning its URL."""
    spec = importlib.util.spec_from_file_location("_sh_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    cluster = conftest.PostgresCluster(fsync=True)
    try:
        cluster.start()
        yield lambda: cluster.dsn(cluster.create_database())
    finally:
        cluster.stop()


def _run_point(
    open_store: Callable[[], MetadataBackend], agents: int, partitions: int, seconds: float
) -> dict[str, float]:
    setup = open_store()
    topic = setup.create_topic("bench", partitions)
    setup.close()
    blocks = [CommitBlock(topic.topic_id, p, 0, 1000, 0, [BatchRef(10)]) for p in range(partitions)]
    run = uuid.uuid4().hex[:12]  # segment keys unique across points sharing one database
    latencies: list[list[float]] = [[] for _ in range(agents)]
    errors: list[BaseException] = []
    stores = [open_store() for _ in range(agents)]
    barrier = threading.Barrier(agents + 1)
    stop = threading.Event()

    def agent(n: int) -> None:
        store = stores[n]
        mine = latencies[n]
        try:
            barrier.wait()
            i = 0
            while not stop.is_set():
                started = time.perf_counter()
                store.commit_segment(f"{run}-agent{n}-{i}", 1000 * partitions, blocks)
                mine.append(time.perf_counter() - started)
                i += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(agents)]
    for th in threads:
        th.start()
    barrier.wait()
    began = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - began
    for store in stores:
        store.close()
    if errors:
        raise errors[0]
    every = sorted(x for lat in latencies for x in lat)
    commits = len(every)
    check = open_store()
    hwm = check.get_partition(topic.topic_id, 0)
    check.close()
    assert hwm is not None and hwm.high_watermark == 10 * commits, "offsets lost or doubled"
    return {
        "commits_per_s": commits / elapsed,
        "blocks_per_s": commits * partitions / elapsed,
        "p50_ms": statistics.median(every) * 1000,
        "p99_ms": every[min(len(every) - 1, int(len(every) * 0.99))] * 1000,
        "commits": commits,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default=DEFAULT_POINTS, help="backend:N:P,... (pg or sqlite)")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    ap.add_argument("--dsn", help="an existing PostgreSQL database URL (else a throwaway one)")
    args = ap.parse_args()
    points = []
    for item in args.points.split(","):
        backend, n, p = item.split(":")
        if backend not in ("pg", "sqlite"):
            ap.error(f"backend must be pg or sqlite, got {backend!r} in {item!r}")
        points.append((backend, int(n), int(p)))

    print(f"{'backend':<8} {'N':>4} {'P':>6} {'commits/s':>10} {'blocks/s':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'commits':>8}")  # fmt: skip
    with tempfile.TemporaryDirectory() as directory, _maybe_postgres(args.dsn, points) as new_db:
        for index, (backend, n, p) in enumerate(points):
            if backend == "pg":
                dsn = new_db()

                def open_store(dsn: str = dsn) -> MetadataBackend:
                    return PostgresMetadataStore(dsn, pool_size=1, busy_timeout_ms=120_000)
            else:
                path = Path(directory) / f"point{index}.sqlite"

                def open_store(path: Path = path) -> MetadataBackend:
                    return MetadataStore(path, busy_timeout_ms=120_000)

            r = _run_point(open_store, n, p, args.seconds)
            print(
                f"{backend:<8} {n:>4} {p:>6} {r['commits_per_s']:>10.1f} "
                f"{r['blocks_per_s']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                f"{r['commits']:>8.0f}",
                flush=True,
            )


@contextmanager
def _maybe_postgres(
    dsn: str | None, points: list[tuple[str, int, int]]
) -> Iterator[Callable[[], str]]:
    if dsn is not None:
        # One database for every point: the topic name repeats, so drop it between points.
        def reuse() -> str:
            store = PostgresMetadataStore(dsn)
            try:
                if store.get_topic("bench") is not None:
                    store.delete_topic("bench")
            finally:
                store.close()
            return dsn

        yield reuse
    elif any(b == "pg" for b, _, _ in points):
        with _throwaway_postgres() as new_db:
            yield new_db
    else:
        yield lambda: ""


if __name__ == "__main__":
    main()
