"""Micro-benchmark of the ingest edge's batch validation, the validator alone (no sockets).

    python bench/batch_validation.py [--batch-bytes 1048576] [--rounds 7]

For 100-byte and 1 KiB record values, uncompressed and LZ4, one batch of about
``--batch-bytes`` uncompressed records (librdkafka's batch.size in the Kafka bench is 1 MiB)
is validated over and over. Printed per case, best of ``--rounds``:
- ``scan``: ``scan_batches`` (61-byte header + CRC-32C), what the edge did before validation;
- ``validate``: ``validate_batches`` (header, CRC, attributes, producer fields, bounded
  decompression, the C record walk, timestamps) with the default topic rules;
- MB/s of batch bytes as received (compressed for LZ4), batches/s and ns per record.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import crc32c  # noqa: E402
import lz4.frame  # noqa: E402

from streamhouse.recordbatch import (  # noqa: E402
    BATCH_HEADER_SIZE,
    encode_batch,
    scan_batches,
    validate_batches,
)
from streamhouse.topic_config import batch_rules  # noqa: E402

NOW = int(time.time() * 1000)


def make_batch(value_size: int, batch_bytes: int, lz4_codec: bool) -> tuple[bytes, int]:
    """(batch, record count): null keys, distinct values, timestamps 1 ms apart."""
    n = max(1, batch_bytes // (value_size + 8))
    values = [(b"%08d" % i) * (value_size // 8) + b"x" * (value_size % 8) for i in range(n)]
    batch = encode_batch([None] * n, values, [[] for _ in range(n)], [NOW + i for i in range(n)])
    if not lz4_codec:
        return batch, n
    records = lz4.frame.compress(batch[BATCH_HEADER_SIZE:])
    # attributes (offset 21) -> codec 3, then batch_length and the CRC for the new body
    body = bytearray(batch[21:BATCH_HEADER_SIZE] + records)
    struct.pack_into(">h", body, 0, 3)
    head = struct.pack(">qiibI", 0, len(body) + 9, -1, 2, crc32c.crc32c(bytes(body)))
    return head + bytes(body), n


def best_of(rounds: int, fn: Callable[[], object], min_seconds: float = 0.2) -> float:
    """Seconds per call, best of `rounds` timings of enough calls to last min_seconds."""
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start >= min_seconds / 4:
            break
        calls *= 2
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-bytes", type=int, default=1024 * 1024)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rules = batch_rules({}, 16 * 1024 * 1024)
    print(f"one batch of ~{args.batch_bytes} bytes of records, best of {args.rounds}")
    header = (
        f"{'case':<18} {'batch B':>9} {'records':>7}  {'scan MB/s':>9}  {'validate MB/s':>13} "
        f"{'batches/s':>9} {'ns/record':>9}  {'validate/scan':>13}"
    )
    print(header)
    for value_size in (100, 1024):
        for lz4_codec in (False, True):
            batch, n = make_batch(value_size, args.batch_bytes, lz4_codec)
            assert validate_batches(batch, rules, NOW)[0].record_count == n
            scan = best_of(args.rounds, lambda batch=batch: scan_batches(batch))
            check = best_of(args.rounds, lambda batch=batch: validate_batches(batch, rules, NOW))
            name = f"{value_size} B {'lz4' if lz4_codec else 'none'}"
            print(
                f"{name:<18} {len(batch):>9} {n:>7}  {len(batch) / scan / 1e6:>9.0f}  "
                f"{len(batch) / check / 1e6:>13.0f} {1 / check:>9.0f} {check / n * 1e9:>9.1f}  "
                f"{check / scan:>12.1f}x"
            )


if __name__ == "__main__":
    main()
