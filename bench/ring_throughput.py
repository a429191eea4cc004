"""Throughput of streamhouse.ring between two processes (prints numbers, asserts nothing).

The writer runs in a spawned child and the reader in this process, both on uvloop, using the
same calls production does: ``await RingWriter.write`` and ``await wait_readable`` +
``read_frames``. The clock runs on the reader side from the first frame received to the last,
so process start-up is not counted. Run from the repo root:

    python -m bench.ring_throughput [--capacity BYTES] [--small N] [--large N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time

import uvloop

from streamhouse.ring import RingReader, RingWriter, unlink_ring

HEADER = b"h" * 32  # about the size of a msgspec-encoded batch header


def writer_main(name: str, run_dir: str, capacity: int, frame_size: int, count: int) -> None:
    async def main() -> None:
        payload = os.urandom(frame_size)
        with RingWriter(name, run_dir, capacity) as writer:
            for _ in range(count):
                await writer.write(HEADER, payload, timeout=60)

    uvloop.run(main())


def measure(run_dir: str, capacity: int, frame_size: int, count: int) -> None:
    """Send ``count`` frames of ``frame_size`` payload bytes through a fresh ring; print rates."""
    name = f"bench{frame_size}"
    unlink_ring(name, run_dir)
    reader = RingReader(name, run_dir, capacity)  # exists before the writer: no frame dropped
    proc = multiprocessing.get_context("spawn").Process(
        target=writer_main, args=(name, run_dir, capacity, frame_size, count)
    )

    async def consume() -> tuple[float, int]:
        received = 0
        nbytes = 0
        await reader.wait_readable()
        start = time.perf_counter()
        while received < count:
            await reader.wait_readable()
            for header, payload in reader.read_frames():
                nbytes += len(header) + len(payload)
                received += 1
        return time.perf_counter() - start, nbytes

    try:
        proc.start()
        elapsed, nbytes = uvloop.run(consume())
        proc.join(60)
    finally:
        reader.close()
        unlink_ring(name, run_dir)
    print(
        f"payload {frame_size:>8} B  frames {count:>7}  {elapsed:7.3f} s  "
        f"{count / elapsed:>11,.0f} frames/s  {nbytes / elapsed / 1e6:>9,.1f} MB/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=64 << 20, help="ring data area bytes")
    parser.add_argument("--small", type=int, default=300_000, help="number of 1 KiB frames")
    parser.add_argument("--large", type=int, default=3_000, help="number of 1 MiB frames")
    args = parser.parse_args()
    print(f"ring capacity {args.capacity} B, header {len(HEADER)} B, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="ringbench-") as run_dir:
        measure(run_dir, args.capacity, 1 << 10, args.small)
        measure(run_dir, args.capacity, 1 << 20, args.large)


if __name__ == "__main__":
    main()
