"""Micro-benchmark of the segment object codec and the record batch hot paths.

Builds and decodes segments of ``--size`` MiB (default 8) made of real Kafka record
batches spread over ``--partitions`` partitions, for compressible (JSON-like) and
incompressible (random) payloads, and prints MB/s of raw batch bytes. Also times
``encode_batch`` (ns/record) and ``scan_batches`` (MB/s), the per-produce costs.

    python bench/segment_codec.py [--size 8] [--partitions 64] [--rounds 5]

Single-threaded, best of ``--rounds``; numbers are for the machine it runs on.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamhouse.recordbatch import encode_batch, scan_batches  # noqa: E402
from streamhouse.segment import (  # noqa: E402
    BlockEntry,
    SegmentWriter,
    decode_block,
    read_index,
)

RECORDS_PER_BATCH = 100
VALUE_SIZE = 100
BASE_TS = 1_700_000_000_000


def json_value(rng: random.Random) -> bytes:
    value = b'{"order_id":%d,"customer":"c-%05d","amount":%d.%02d,"status":"%s","items":%d}' % (
        rng.randrange(10**9),
        rng.randrange(50_000),
        rng.randrange(1000),
        rng.randrange(100),
        rng.choice([b"pending", b"shipped", b"delivered", b"cancelled"]),
        rng.randrange(1, 9),
    )
    return value.ljust(VALUE_SIZE, b" ")[:VALUE_SIZE]


def make_batches(total: int, payload: str, rng: random.Random) -> list[bytes]:
    """Record batches of 100 x 100-byte records, ``total`` bytes or a little more."""
    batches: list[bytes] = []
    size = 0
    while size < total:
        if payload == "json":
            values = [json_value(rng) for _ in range(RECORDS_PER_BATCH)]
        else:
            values = [os.urandom(VALUE_SIZE) for _ in range(RECORDS_PER_BATCH)]
        keys = [b"user-%06d" % rng.randrange(10**6) for _ in range(RECORDS_PER_BATCH)]
        batch = encode_batch(
            keys,
            values,
            [[] for _ in range(RECORDS_PER_BATCH)],
            [BASE_TS + i for i in range(RECORDS_PER_BATCH)],
        )
        batches.append(batch)
        size += len(batch)
    return batches


def best_of(rounds: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_segments(size_mib: int, partitions: int, rounds: int) -> None:
    total = size_mib << 20
    for payload in ("json", "random"):
        rng = random.Random(1)
        batches = make_batches(total, payload, rng)
        raw_bytes = sum(map(len, batches))
        # deal the batches to partitions, consecutive runs per partition like the segmenter
        per_part: list[list[bytes]] = [[] for _ in range(partitions)]
        for i, batch in enumerate(batches):
            per_part[i * partitions // len(batches)].append(batch)
        per_part = [p for p in per_part if p]

        obj, _ = build_segment(per_part)
        assert decode_segment(obj) == raw_bytes
        t_build = best_of(rounds, functools.partial(build_segment, per_part))
        t_decode = best_of(rounds, functools.partial(decode_segment, obj))
        print(
            f"segment {payload:6}: {raw_bytes / 2**20:.1f} MiB raw in {len(per_part)} blocks -> "
            f"{len(obj) / 2**20:.1f} MiB object ({len(obj) / raw_bytes:.0%}); "
            f"build {raw_bytes / t_build / 1e6:5.0f} MB/s, "
            f"decode {raw_bytes / t_decode / 1e6:5.0f} MB/s"
        )


def build_segment(per_part: list[list[bytes]]) -> tuple[bytes, list[BlockEntry]]:
    """One block per partition, like the segmenter's flush."""
    w = SegmentWriter()
    for partition, blk in enumerate(per_part):
        w.add_block(7, partition, blk, len(blk), len(blk) * 100, BASE_TS, BASE_TS + 99)
    return w.finish()


def decode_segment(obj: bytes) -> int:
    """Read the index and decode every block, as a full-object reader would."""
    mv = memoryview(obj)
    n = 0
    for e in read_index(obj):
        n += len(decode_block(mv[e.offset : e.offset + e.length], e))
    return n


def bench_record_batches(rounds: int) -> None:
    rng = random.Random(2)
    n = RECORDS_PER_BATCH
    values = [json_value(rng) for _ in range(n)]
    cases = {
        "null keys, one timestamp": ([None] * n, [BASE_TS] * n, [[]] * n),
        "16-byte keys, rising timestamps": (
            [b"user-%011d" % i for i in range(n)],
            [BASE_TS + i for i in range(n)],
            [[]] * n,
        ),
        "16-byte keys, one header each": (
            [b"user-%011d" % i for i in range(n)],
            [BASE_TS] * n,
            [[("trace-id", b"0123456789abcdef")] for _ in range(n)],
        ),
    }
    reps = 2000
    for label, (keys, timestamps, headers) in cases.items():

        def run(keys=keys, timestamps=timestamps, headers=headers) -> None:
            for _ in range(reps):
                encode_batch(keys, values, headers, timestamps)

        t = best_of(rounds, run)
        print(f"encode_batch {label:32}: {t / reps / n * 1e9:6.0f} ns/record (100-byte values)")

    batch = encode_batch([None] * n, values, [[]] * n, [BASE_TS] * n)
    payload = batch * 1000  # ~11 MB of 100-record batches
    for verify in (True, False):
        t = best_of(rounds, lambda verify=verify: scan_batches(payload, verify_crc=verify))
        print(
            f"scan_batches verify_crc={verify!s:5}: {len(payload) / t / 1e6:6.0f} MB/s "
            f"({t / 1000 * 1e6:.2f} us per {len(batch)}-byte batch)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8, help="segment size in MiB")
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, best of {args.rounds}")
    bench_segments(args.size, args.partitions, args.rounds)
    bench_record_batches(args.rounds)


if __name__ == "__main__":
    main()
