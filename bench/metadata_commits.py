"""Metadata commits per second and their latency: N simulated agents, P partitions per segment.

Each agent is a thread with its own store (on PostgreSQL: its own one-connection pool, as an
agent process has), committing segments back to back; the agents are spread over ``--procs``
worker processes, so the client side is not capped by one Python interpreter's GIL. Every
segment holds one block of one 10-record batch for each of P partitions. Two layouts:

* ``shared``: all agents write the same P partitions of one topic (any agent accepts any
  partition; the worst case: every commit queues on the same rows);
* ``owned``: each agent writes the P partitions of a topic of its own (each partition has one
  leader, as issue 7's cluster assigns them; commits of different agents touch disjoint rows).

With ``--batch K`` each agent commits K segments per transaction (``commit_segments``), as
an agent flushing K segments' worth of data per metadata round trip would.

Prints, per (backend, layout, N, P, K): segments/s and partition-blocks/s over the measured
window, and p50/p99 latency of the commit calls that finished in it. After each point it checks
that every topic's high watermark is 10 x its commits (no offset lost or assigned twice).

    python bench/metadata_commits.py [--points pg:1:10,pg:8:10,sqlite:1:10,...]
        [--matrix] [--layouts shared,owned] [--batch 1] [--seconds 5] [--procs 2]
        [--dsn postgresql://...]

``--matrix`` runs the grid N in 1, 10, 100 x P in 1, 100, 10,000 on PostgreSQL for each
layout. Without ``--dsn`` the bench starts a throwaway PostgreSQL (Debian's packages, fsync
on, shared_buffers ``--shared-buffers``) on a temp dir and a free 127.0.0.1 port and stops it
afterwards. SQLite runs on a temp file with ``synchronous=FULL`` (the default). The load
generator shares the machine with the server, so the numbers are a floor.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metadata import BatchRef, CommitBlock, MetadataStore  # noqa: E402
from metadata.interface import MetadataBackend  # noqa: E402
from metadata.postgres import PostgresMetadataStore  # noqa: E402

DEFAULT_POINTS = "pg:1:10,pg:8:10,pg:32:10,pg:1:1000,pg:8:1000,pg:32:1000,sqlite:1:10,sqlite:1:1000"
MATRIX_AGENTS = (1, 10, 100)
MATRIX_PARTITIONS = (1, 100, 10_000)
RECORDS_PER_BATCH = 10


@contextmanager
def _throwaway_postgres(shared_buffers: str) -> Iterator[Callable[[], str]]:
    """Start the tests' throwaway cluster (tests/conftest.py) with fsync on; yields a function
    creating a fresh database and returning its URL."""
    spec = importlib.util.spec_from_file_location("_sh_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    cluster = conftest.PostgresCluster(fsync=True)
    try:
        cluster.start()
        import psycopg

        with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}'")  # type: ignore[arg-type]
        cluster.restart_server()
        yield lambda: cluster.dsn(cluster.create_database())
    finally:
        cluster.stop()


def _open(target: str) -> MetadataBackend:
    if target.startswith("postgresql://"):
        return PostgresMetadataStore(target, pool_size=1, busy_timeout_ms=600_000)
    return MetadataStore(target, busy_timeout_ms=600_000)


def _worker(
    target: str,
    agents: list[tuple[int, int]],
    partitions: int,
    batch: int,
    run: str,
    ready: Any,
    go: Event,
    stop: Event,
    results: Any,
) -> None:
    """One worker process: a thread per agent ``(agent number, topic id)``; each reports
    ``(agent, [(finished_at, latency_s), ...], error or None)`` on ``results``."""
    stores = [_open(target) for _ in agents]
    out: list[tuple[int, list[tuple[float, float]], str | None]] = []
    lock = threading.Lock()

    def agent(index: int) -> None:
        n, topic_id = agents[index]
        store = stores[index]
        blocks = [
            CommitBlock(topic_id, p, 0, 1000, 0, [BatchRef(RECORDS_PER_BATCH)])
            for p in range(partitions)
        ]
        done: list[tuple[float, float]] = []
        error: str | None = None
        try:
            go.wait()
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                if batch == 1:
                    store.commit_segment(f"{run}-agent{n}-{i}", 1000 * partitions, blocks)
                else:
                    store.commit_segments(
                        [
                            (f"{run}-agent{n}-{i}-{k}", 1000 * partitions, blocks)
                            for k in range(batch)
                        ]
                    )
                ended = time.monotonic()
                done.append((ended, ended - started))
                i += 1
        except BaseException as exc:
            error = f"agent {n}: {type(exc).__name__}: {exc}"
        with lock:
            out.append((n, done, error))

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(len(agents))]
    for th in threads:
        th.start()
    ready.put(len(agents))
    for th in threads:
        th.join()
    for store in stores:
        store.close()
    for item in out:
        results.put(item)


def run_point(
    target: str,
    layout: str,
    agents: int,
    partitions: int,
    seconds: float,
    procs: int,
    batch: int = 1,
) -> dict[str, float]:
    """Measure one point on ``target`` (a database URL or SQLite path) and return its numbers."""
    setup = _open(target)
    run = uuid.uuid4().hex[:12]  # names unique across points sharing one database
    if layout == "shared":
        tid = setup.create_topic(f"bench-{run}", partitions).topic_id
        topic_of = [tid] * agents
    else:
        topic_of = [
            setup.create_topic(f"bench-{run}-{n}", partitions).topic_id for n in range(agents)
        ]
    setup.close()
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    procs = max(1, min(procs, agents))
    share = [[(n, topic_of[n]) for n in range(agents) if n % procs == k] for k in range(procs)]
    workers = [
        ctx.Process(
            target=_worker,
            args=(target, mine, partitions, batch, run, ready, go, stop, results),
            daemon=True,
        )
        for mine in share
    ]
    for w in workers:
        w.start()
    started = sum(ready.get(timeout=600) for _ in workers)
    assert started == agents
    go.set()
    began = time.monotonic()
    stop.wait(seconds)  # the measured window
    ended = time.monotonic()
    stop.set()
    reports = [results.get(timeout=900) for _ in range(agents)]
    for w in workers:
        w.join(timeout=60)
    errors = [e for _, _, e in reports if e is not None]
    if errors:
        raise RuntimeError("; ".join(errors[:3]))
    window = [lat for _, done, _ in reports for at, lat in done if at <= ended]
    every = sorted(window)
    commits_per_topic: dict[int, int] = {}
    for n, done, _ in reports:
        commits_per_topic[topic_of[n]] = commits_per_topic.get(topic_of[n], 0) + len(done) * batch
    check = _open(target)
    try:
        for tid, commits in commits_per_topic.items():
            state = check.get_partition(tid, 0)
            assert state is not None and state.high_watermark == RECORDS_PER_BATCH * commits, (
                "offsets lost or doubled"
            )
    finally:
        check.close()
    elapsed = ended - began
    n_window = len(every)
    return {
        "commits_per_s": n_window * batch / elapsed,
        "blocks_per_s": n_window * batch * partitions / elapsed,
        "p50_ms": statistics.median(every) * 1000 if every else float("nan"),
        "p99_ms": every[min(n_window - 1, int(n_window * 0.99))] * 1000 if every else float("nan"),
        "commits": n_window * batch,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default=DEFAULT_POINTS, help="backend:N:P,... (pg or sqlite)")
    ap.add_argument("--matrix", action="store_true", help="pg: N in 1,10,100 x P in 1,100,10000")
    ap.add_argument("--layouts", default="shared", help="shared, owned or shared,owned")
    ap.add_argument("--batch", type=int, default=1, help="segments per transaction")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument("--dsn", help="an existing PostgreSQL database URL (else a throwaway one)")
    ap.add_argument("--shared-buffers", default="512MB", help="the throwaway server's")
    args = ap.parse_args()
    if args.batch < 1:
        ap.error(f"--batch must be at least 1, got {args.batch}")
    layouts = args.layouts.split(",")
    for layout in layouts:
        if layout not in ("shared", "owned"):
            ap.error(f"a layout is shared or owned, got {layout!r}")
    points: list[tuple[str, int, int]] = []
    if args.matrix:
        points = [("pg", n, p) for n in MATRIX_AGENTS for p in MATRIX_PARTITIONS]
    else:
        for item in args.points.split(","):
            backend, n, p = item.split(":")
            if backend not in ("pg", "sqlite"):
                ap.error(f"backend must be pg or sqlite, got {backend!r} in {item!r}")
            points.append((backend, int(n), int(p)))

    print("| backend | layout | N agents | P partitions | K per txn | segments/s "
          "| partition-blocks/s | p50 ms | p99 ms | segments |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)  # fmt: skip
    with (
        tempfile.TemporaryDirectory() as directory,
        _maybe_postgres(args.dsn, points, args.shared_buffers) as new_db,
    ):
        for index, (backend, n, p) in enumerate(points):
            for layout in layouts:
                if backend == "pg":
                    target = new_db()
                else:
                    target = str(Path(directory) / f"point{index}-{layout}.sqlite")
                r = run_point(target, layout, n, p, args.seconds, args.procs, args.batch)
                name = "PostgreSQL" if backend == "pg" else "SQLite"
                print(
                    f"| {name} | {layout} | {n} | {p:,} | {args.batch} | "
                    f"{r['commits_per_s']:,.1f} | "
                    f"{r['blocks_per_s']:,.0f} | {r['p50_ms']:,.2f} | {r['p99_ms']:,.2f} | "
                    f"{r['commits']:,.0f} |",
                    flush=True,
                )


@contextmanager
def _maybe_postgres(
    dsn: str | None, points: list[tuple[str, int, int]], shared_buffers: str
) -> Iterator[Callable[[], str]]:
    if dsn is not None:
        yield lambda: dsn  # topic names are unique per point
    elif any(b == "pg" for b, _, _ in points):
        with _throwaway_postgres(shared_buffers) as new_db:
            yield new_db
    else:
        yield lambda: ""


if __name__ == "__main__":
    main()
