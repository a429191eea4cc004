"""What moving metadata reads off the event loop costs per request.

Compares, on one idle loop and a fresh store, the reads a Kafka Produce and a reader pass
made inline before (``MetadataStore`` on the loop) with the one ``AsyncMetadata`` call each
makes now (a hop to its read thread and back), in wall and CPU microseconds per request:

    python bench/metadata_hop.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metadata import MetadataStore  # noqa: E402
from metadata.async_store import AsyncMetadata, TopicLookup  # noqa: E402


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(name: str, calls: int, step: Callable[[], Awaitable[object] | None]) -> None:
    cpu, wall = _cpu(), time.perf_counter()
    for _ in range(calls):
        pending = step()
        if pending is not None:
            await pending
    wall_us = (time.perf_counter() - wall) / calls * 1e6
    cpu_us = (_cpu() - cpu) / calls * 1e6
    print(f"{name:<58} {wall_us:7.1f} us wall {cpu_us:7.1f} us cpu")


async def _run(calls: int, directory: str) -> None:
    store = MetadataStore(Path(directory) / "meta.sqlite", synchronous="NORMAL")
    topic = store.create_topic("events", 1)
    tid = topic.topic_id
    meta = AsyncMetadata(store)

    def produce_inline() -> None:
        store.get_topic("events")
        store.get_topic("events")
        store.get_partition(tid, 0)

    def reader_inline() -> None:
        store.get_partition(tid, 0)
        store.find_blocks(tid, 0, 0, 8)

    await _measure("produce, before: 3 reads inline on the loop", calls, produce_inline)
    await _measure(
        "produce, after: one topic_states call",
        calls,
        lambda: meta.topic_states([TopicLookup("events", None, [0])]),
    )
    await _measure("reader pass, before: 2 reads inline on the loop", calls, reader_inline)
    await _measure(
        "reader pass, after: one read_plans call", calls, lambda: meta.read_plans([(tid, 0, 0)], 8)
    )
    await meta.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000, help="requests per measurement")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_run(args.calls, directory))


if __name__ == "__main__":
    main()
