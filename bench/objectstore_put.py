"""Cost of a durable PUT into the local-folder object store.

Compares, per object size, sequential PUTs of:
- `durable`: `streamhouse.objectstore.put` on a file:// store (temp file, fsync, rename, fsync
  of the directory; in a worker thread), what the uploader does now;
- `obstore`: obstore's LocalStore put (rename into place, no fsync), what it did before.

    python3 bench/objectstore_put.py [--dir PATH] [--count N] [--sizes 65536,1048576,8388608]

`--dir` should be on the disk the data dir lives on (tmpfs makes fsync free). Prints one line
per size and store: PUTs per second, MiB/s, p50 and p99 latency in ms. Each run deletes what
it wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import tempfile
import time

import obstore
from obstore.store import LocalStore

from streamhouse import objectstore


async def run_durable(root: pathlib.Path, data: bytes, count: int) -> list[float]:
    store = objectstore.open_object_store(root.as_uri())
    times = []
    for i in range(count):
        started = time.perf_counter()
        await objectstore.put(store, f"segments/{i:08d}.seg", data)
        times.append(time.perf_counter() - started)
    return times


async def run_obstore(root: pathlib.Path, data: bytes, count: int) -> list[float]:
    root.mkdir(parents=True, exist_ok=True)
    store = LocalStore(str(root), mkdir=True)
    times = []
    for i in range(count):
        started = time.perf_counter()
        await obstore.put_async(store, f"segments/{i:08d}.seg", data)
        times.append(time.perf_counter() - started)
    return times


def report(name: str, size: int, times: list[float]) -> None:
    times = sorted(times)
    total = sum(times)
    p50 = times[len(times) // 2] * 1000
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
    print(
        f"{name:8s} {size // 1024:6d} KiB  {len(times) / total:8.1f} PUT/s  "
        f"{len(times) * size / total / (1 << 20):8.1f} MiB/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=None, help="folder on the disk to measure")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--sizes", default="65536,1048576,8388608")
    args = parser.parse_args()
    base = pathlib.Path(tempfile.mkdtemp(prefix="put-bench-", dir=args.dir))
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            data = os.urandom(size)
            for name, runner in (("obstore", run_obstore), ("durable", run_durable)):
                root = base / f"{name}-{size}"
                report(name, size, asyncio.run(runner(root, data, args.count)))
                shutil.rmtree(root)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
