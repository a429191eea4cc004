"""Decode throughput of the SQL scan on one core: stored blocks -> Arrow, JSON -> columns.

For JSON records of about 100 B and 1 KiB, builds blocks as produce stores them (batches of
``--batch`` records, uncompressed, concatenated up to ~1 MiB per block) and times, pinned to
one CPU:

- ``raw``: ``sql.decode.decode_block_records`` (batch headers by the gap rule in Python,
  records in C into Arrow buffers): the raw columns partition, offset, timestamp, key,
  value, headers;
- ``json``: ``sql.formats.decode_json`` of the value column into a declared schema
  (pyarrow's JSON reader, one parse per block);
- ``both``: the two together, what a query over a declared JSON stream pays per record;
- for comparison: ``json_multiline`` (the same parse with ``newlines_in_values``, what
  pretty-printed values need), ``datafusion_json`` (DataFusion's NDJSON reader over the same
  bytes from a file in /dev/shm) and ``python_records`` (``decode_records``, the Python
  per-record walk the gRPC reads use).

MB/s is of stored batch bytes (headers included) for ``raw``/``both``/``python_records`` and
of value bytes for the JSON rows.

    python3 bench/sql_decode.py                 # both sizes, ~200k records each
    python3 bench/sql_decode.py --records 50000 --sizes 100

``--query``: end to end on a real stack (local folder store, SQLite): produces ``--records``
bids of each size over Kafka, declares a JSON stream, and times queries in this process
(``SqlEngine.execute``: metadata, block reads from the folder store, decode, DataFusion), not
pinned (DataFusion uses both cores): a raw count, a stream aggregate, and a last-5%-by-time
query that reads only the matching blocks.

    python3 bench/sql_decode.py --query --records 200000

Measured (2-core VM shared with other work, so +-30 %; records/s, MB/s):

==========  =======================  =======================
step        100 B JSON               1 KiB JSON
==========  =======================  =======================
raw         14.6 M/s, 2,680 MB/s     1.96 M/s, 2,040 MB/s
json        1.07 M/s, 180 MB/s       348 k/s, 356 MB/s
both        935 k/s, 172 MB/s        311 k/s, 323 MB/s
datafusion  2.26 M/s, 379 MB/s       1.23 M/s, 1,259 MB/s
python      727 k/s, 133 MB/s        457 k/s, 475 MB/s
==========  =======================  =======================

(``datafusion``: its NDJSON reader from a file; ``python``: ``decode_records``, records only,
no columns.) End to end (``--query``, 200,000 records, 2 partitions): raw ``count(*)`` 1.0 M
records/s (100 B) / 1.5 M/s (1 KiB); a stream ``GROUP BY`` 335 k/s / 122 k/s; the last 5 % by
time reads 3 of 51 (58) blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.json as pajson

from sql.decode import decode_block_records
from sql.formats import _parse, decode_json
from streamhouse.recordbatch import decode_records, encode_batch, walk_block

SCHEMA = pa.schema(
    [
        ("auction", pa.int64()),
        ("bidder", pa.int64()),
        ("price", pa.int64()),
        ("channel", pa.utf8()),
        ("url", pa.utf8()),
        ("date_time", pa.timestamp("ms")),
        ("extra", pa.utf8()),
    ]
)


def make_values(n: int, size: int, seed: int = 1) -> list[bytes]:
    """Nexmark-like bids padded with ``extra`` to about ``size`` bytes each."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        bid = {
            "auction": 1000 + rng.randrange(10_000),
            "bidder": 2000 + rng.randrange(100_000),
            "price": rng.randrange(1, 10_000_000),
            "channel": rng.choice(["Google", "Facebook", "Baidu", "Apple"]),
            "url": f"https://www.nexmark.com/item.htm?query={i}",
            "date_time": f"2015-07-15 00:{(i // 60_000) % 60:02d}:{(i // 1000) % 60:02d}."
            f"{i % 1000:03d}",
            "extra": "",
        }
        base = len(json.dumps(bid, separators=(",", ":")))
        bid["extra"] = "x" * max(0, size - base)
        out.append(json.dumps(bid, separators=(",", ":")).encode())
    return out


def make_blocks(values: list[bytes], batch: int, block_bytes: int) -> list[bytes]:
    blocks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for start in range(0, len(values), batch):
        chunk = values[start : start + batch]
        encoded = encode_batch(
            [b"%d" % (start + i) for i in range(len(chunk))],
            chunk,
            [[] for _ in chunk],
            [1_436_918_400_000 + start + i for i in range(len(chunk))],
        )
        current.append(encoded)
        size += len(encoded)
        if size >= block_bytes:
            blocks.append(b"".join(current))
            current, size = [], 0
    if current:
        blocks.append(b"".join(current))
    return blocks


def timed(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(size: int, n: int, batch: int, repeat: int) -> list[dict[str, object]]:
    values = make_values(n, size)
    blocks = make_blocks(values, batch, 1 << 20)
    stored = sum(len(b) for b in blocks)
    value_bytes = sum(len(v) for v in values)
    raw = [decode_block_records(b, 0, 0)[0] for b in blocks]
    assert sum(r.num_rows for r in raw) == n
    joined = b"\n".join(values)
    results = []

    def row(name: str, seconds: float, nbytes: int) -> None:
        results.append(
            {
                "size": size,
                "step": name,
                "records_per_s": round(n / seconds),
                "MB_per_s": round(nbytes / seconds / 1e6, 1),
            }
        )

    row("raw", timed(lambda: [decode_block_records(b, 0, 0) for b in blocks], repeat), stored)
    row(
        "json",
        timed(lambda: [decode_json(r.column("value"), SCHEMA) for r in raw], repeat),
        value_bytes,
    )
    row(
        "both",
        timed(
            lambda: [
                decode_json(decode_block_records(b, 0, 0)[0].column("value"), SCHEMA)
                for b in blocks
            ],
            repeat,
        ),
        stored,
    )
    row(
        "json_multiline",
        timed(lambda: [_parse(r.column("value"), SCHEMA, True) for r in raw], repeat),
        value_bytes,
    )
    with tempfile.NamedTemporaryFile(dir="/dev/shm", suffix=".json") as f:
        f.write(joined)
        f.flush()
        from datafusion import SessionConfig, SessionContext

        ctx = SessionContext(SessionConfig().with_target_partitions(1))

        def datafusion_json() -> None:
            table = ctx.read_json(f.name, schema=SCHEMA).to_arrow_table()
            assert table.num_rows == n

        row("datafusion_json", timed(datafusion_json, repeat), value_bytes)

        def pyarrow_file() -> None:
            opts = pajson.ParseOptions(explicit_schema=SCHEMA)
            pajson.read_json(
                f.name, read_options=pajson.ReadOptions(use_threads=False), parse_options=opts
            )

        row("pyarrow_json_file", timed(pyarrow_file, repeat), value_bytes)

    few = blocks[: max(1, len(blocks) // 10)]
    few_n = sum(w.info.record_count for b in few for w in walk_block(b, 0))

    def python_records() -> None:
        for b in few:
            for w in walk_block(b, 0):
                decode_records(memoryview(b)[w.info.position : w.info.position + w.info.length])

    seconds = timed(python_records, 1) * n / few_n
    row("python_records", seconds, stored)
    return results


def query_bench(n: int, sizes: list[int]) -> None:
    import asyncio

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from metadata.async_store import AsyncMetadata
    from sql.catalog import Catalog
    from sql.engine import SqlEngine
    from streamhouse import objectstore
    from streamhouse.testing import Stack

    with tempfile.TemporaryDirectory() as tmp, Stack(os.path.join(tmp, "data")) as stack:
        admin = AdminClient({"bootstrap.servers": stack.kafka_address})
        producer = Producer(
            {"bootstrap.servers": stack.kafka_address, "linger.ms": 20, "batch.size": 1 << 20}
        )
        base = 1_436_918_400_000
        for size in sizes:
            topic = f"bids{size}"
            for fut in admin.create_topics([NewTopic(topic, 2, 1)]).values():
                fut.result(timeout=30)
            for i, value in enumerate(make_values(n, size)):
                while True:
                    try:
                        producer.produce(topic, value=value, partition=i % 2, timestamp=base + i)
                        break
                    except BufferError:
                        producer.poll(0.05)
            assert producer.flush(120) == 0

        async def queries() -> None:
            settings = stack.settings
            store = objectstore.open_object_store(settings.object_store_url)
            meta = await AsyncMetadata.open(settings.metadata_target)
            engine = SqlEngine(meta, store, Catalog(meta))
            try:
                for size in sizes:
                    cols = ", ".join(
                        f"{f.name} {'BIGINT' if pa.types.is_integer(f.type) else 'TIMESTAMP' if pa.types.is_timestamp(f.type) else 'VARCHAR'}"  # noqa: E501
                        for f in SCHEMA
                    )
                    await engine.execute(
                        f"CREATE STREAM s{size} ({cols}) WITH (topic = 'bids{size}')"
                    )
                    cutoff = base + n * 95 // 100
                    for label, sql in [
                        ("raw count", f"SELECT count(*) FROM bids{size}"),
                        (
                            "stream aggregate",
                            f"SELECT channel, count(*), max(price) FROM s{size} GROUP BY channel",
                        ),
                        (
                            "last 5% by time",
                            f"SELECT count(*) FROM s{size} "
                            f"WHERE _timestamp >= to_timestamp_millis({cutoff})",
                        ),
                    ]:
                        t0 = time.perf_counter()
                        result = await engine.execute(sql)
                        dt = time.perf_counter() - t0
                        st = result.stats
                        print(
                            f"{size:>5} {label:<18} {dt:7.3f} s  {st.records_decoded / dt:>12,.0f} "
                            f"records/s  blocks {st.blocks_read}/{st.blocks_listed}  "
                            f"{st.bytes_read / dt / 1e6:7.1f} MB/s"
                        )
            finally:
                await meta.close()

        asyncio.run(queries())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1024])
    parser.add_argument("--batch", type=int, default=500, help="records per produced batch")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=0, help="the CPU to pin to")
    parser.add_argument("--query", action="store_true", help="end to end on a real stack")
    args = parser.parse_args()
    if args.query:
        query_bench(args.records, args.sizes)
        return
    os.sched_setaffinity(0, {args.cpu})
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    print(f"{'size':>5} {'step':<18} {'records/s':>12} {'MB/s':>8}")
    for size in args.sizes:
        for r in run(size, args.records, args.batch, args.repeat):
            print(f"{r['size']:>5} {r['step']:<18} {r['records_per_s']:>12,} {r['MB_per_s']:>8}")


if __name__ == "__main__":
    main()
