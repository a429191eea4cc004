"""Cost of not trusting the rings: per-frame checks and ack chunking, measured in-process.

    python3 bench/stage_frames.py

Prints, per case, microseconds per frame for the segmenter's intake (`SegmentBuilder.take`:
decode + `check_frame` + add) against adding an already-decoded frame unchecked
(`SegmentBuilder.add`), and the time to split acks into AckFrames (`ack_headers`).
"""

from __future__ import annotations

import time

from segmenter.builder import SegmentBuilder, check_frame
from streamhouse.errors import RING_OK
from streamhouse.frames import AckResult, BatchMeta, ProduceFrame, ack_headers, header_encoder
from streamhouse.recordbatch import encode_batch, scan_batches


def frame_of(batches: int, records: int, size: int) -> tuple[bytes, bytes, ProduceFrame]:
    one = encode_batch([None] * records, [b"v" * size] * records, [[]] * records, [1] * records)
    payload = one * batches
    infos = scan_batches(payload)
    metas = [BatchMeta(i.record_count, -1, -1, -1, 1, 1) for i in infos]
    frame = ProduceFrame(1 << 59, 0, 1, 0, metas, [i.length for i in infos])
    return header_encoder.encode(frame), payload, frame


def per_frame_us(fn: object, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / n * 1e6


def intake_case(batches: int, records: int, size: int) -> None:
    header, payload, frame = frame_of(batches, records, size)
    n = max(50, min(20_000 // batches, (256 << 20) // len(payload)))
    checked = SegmentBuilder(1, 1 << 40)
    unchecked = SegmentBuilder(1, 1 << 40)
    take = per_frame_us(lambda: checked.take(header, payload, 0), n)
    add = per_frame_us(lambda: unchecked.add(frame, payload, 0), n)
    check = per_frame_us(lambda: check_frame(frame, payload), n)
    print(
        f"frame of {batches} batch(es) x {records} records x {size} B "
        f"({len(payload)} B): take {take:.1f} us (check_frame {check:.1f} us), "
        f"unchecked add {add:.1f} us"
    )


def main() -> None:
    for batches, records, size in ((1, 100, 100), (1, 1000, 1024), (16, 10, 100), (1000, 1, 10)):
        intake_case(batches, records, size)
    for count in (1, 1000, 100_000):
        results = [AckResult(1 << 59, 0, i, i, RING_OK) for i in range(count)]
        start = time.perf_counter()
        frames = list(ack_headers(results, 1024 * 1024))
        took = (time.perf_counter() - start) * 1e3
        size = sum(len(f) for f in frames)
        print(f"{count} ack results: {len(frames)} AckFrame(s), {size} B, {took:.2f} ms")


if __name__ == "__main__":
    main()
