"""Throughput of the event-time window operators (sql/windows.py), one core, no I/O.

    python3 bench/sql_windows.py [--kind tumble|hop|session] [--batch-rows 8192] [--size-ms 1000]

A stream of 1,000,000 rows (int64 key with 10,000 values, int64 event time in ms over 100 s
with up to 200 ms of disorder, an int64 value) is fed a batch at a time to a WindowAggregate
computing COUNT(*) and SUM(x) per key and window; the watermark (max event time - 300 ms)
advances after every batch and closes windows as it goes. The run checks that the emitted
counts add up to every row (times the windows per row for HOP), then prints rows/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sql.windows import Aggregate, Hop, Session, Tumble, WatermarkTracker, WindowAggregate

ROWS = 1_000_000
KEYS = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("tumble", "hop", "session"), default="tumble")
    parser.add_argument("--batch-rows", type=int, default=8192)
    parser.add_argument("--size-ms", type=int, default=1000, help="TUMBLE window size")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    keys = rng.integers(0, KEYS, ROWS)
    times = np.arange(ROWS, dtype=np.int64) // 10 - rng.integers(0, 200, ROWS)
    values = rng.integers(0, 1000, ROWS)
    schema = pa.schema([("k", pa.int64()), ("ts", pa.int64()), ("x", pa.int64())])
    step = args.batch_rows
    batches = [
        pa.RecordBatch.from_arrays(
            [
                pa.array(keys[i : i + step]),
                pa.array(times[i : i + step]),
                pa.array(values[i : i + step]),
            ],
            schema=schema,
        )
        for i in range(0, ROWS, step)
    ]
    window = {
        "tumble": Tumble(args.size_ms),
        "hop": Hop(5000, 1000),
        "session": Session(500),
    }[args.kind]
    label = {
        "tumble": f"TUMBLE {args.size_ms} ms",
        "hop": "HOP 5 s / 1 s",
        "session": "SESSION 500 ms",
    }
    op = WindowAggregate(
        schema, window, "ts", ["k"], [Aggregate("count", None, "n"), Aggregate("sum", "x", "s")]
    )
    watermark = WatermarkTracker(delay_ms=300)
    emitted = 0
    counted = 0
    started = time.perf_counter()
    for batch in batches:
        op.process(batch)
        out = op.advance_watermark(watermark.observe(batch.column("ts").to_numpy()))
        emitted += out.num_rows
        counted += pc.sum(out.column("n")).as_py() or 0
    out = op.advance_watermark(10**15)
    emitted += out.num_rows
    counted += pc.sum(out.column("n")).as_py() or 0
    seconds = time.perf_counter() - started
    expected = ROWS * (5 if args.kind == "hop" else 1)
    assert counted == expected, f"windows counted {counted} rows, expected {expected}"
    print(
        f"{label[args.kind]}, batches of {step}: {ROWS:,} rows in {seconds:.2f} s = "
        f"{ROWS / seconds:,.0f} rows/s; {emitted:,} result rows, "
        f"{op.stats.late_rows_dropped} late rows dropped"
    )


if __name__ == "__main__":
    main()
