"""Per-partition watermarks of a continuous plan (sql/continuous/plan.py, "Watermarks").

A stream of (k, x, t) over 4 partitions, each partition in event-time order, is fed one
partition after the other (the worst interleaving a runner could produce). The references
are plain Python over the whole input: every row counts (no row may be late, since no
partition has a row out of order), and the windows emitted are those whose end is at or
below the watermark the rules give (lowest per-partition maximum minus the delay while
partitions are active; the largest once all are idle).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sql.catalog import Column, Relation, Watermark
from sql.continuous.pipeline import PlanError
from sql.continuous.plan import plan_continuous

DELAY = 1_000
SIZE = 1_000
EV = Relation(
    kind="stream",
    name="ev",
    topic="ev",
    format="json",
    columns=[Column("k", "VARCHAR"), Column("x", "BIGINT"), Column("t", "TIMESTAMP")],
    watermark=Watermark("t", DELAY),
)
SQL = (
    "SELECT k, TUMBLE_START(t, INTERVAL '1' SECOND) AS ws, COUNT(*) AS n, SUM(x) AS s "
    "FROM ev GROUP BY k, TUMBLE(t, INTERVAL '1' SECOND)"
)


def partition_rows(seed: int, partitions: int, n: int) -> dict[int, list[tuple[str, int, int]]]:
    """Rows (k, x, t) spread over partitions by key hash, times rising in each partition
    at a rate that differs per partition."""
    rnd = random.Random(seed)
    out: dict[int, list[tuple[str, int, int]]] = {p: [] for p in range(partitions)}
    clock = dict.fromkeys(range(partitions), 1_000_000)
    for _ in range(n):
        k = rnd.choice("abcdefgh")
        p = (ord(k) * 7) % partitions
        clock[p] += rnd.randrange(1, 5 + 3 * p)
        out[p].append((k, rnd.randrange(0, 100), clock[p]))
    return out


def batch(rows: list[tuple[str, int, int]], partition: int, first_offset: int) -> pa.RecordBatch:
    n = len(rows)
    t = pa.array([r[2] for r in rows], pa.timestamp("ms"))
    return pa.RecordBatch.from_pydict(
        {
            "k": pa.array([r[0] for r in rows], pa.utf8()),
            "x": pa.array([r[1] for r in rows], pa.int64()),
            "t": t,
            "_partition": pa.array(np.full(n, partition, np.int32)),
            "_offset": pa.array(np.arange(first_offset, first_offset + n, dtype=np.int64)),
            "_timestamp": pc.cast(pc.cast(t, pa.int64()), pa.timestamp("ms", tz="UTC")),
        }
    )


def chunks(rows: dict[int, list[tuple[str, int, int]]], size: int = 250):
    """(partition, batch) one partition after the other, ``size`` rows a batch."""
    for p, prs in rows.items():
        for i in range(0, len(prs), size):
            yield p, batch(prs[i : i + size], p, i)


def reference(rows: dict[int, list[tuple[str, int, int]]], watermark: int) -> list[tuple]:
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for prs in rows.values():
        for k, x, t in prs:
            groups[(k, t - t % SIZE)].append(x)
    return sorted(
        (k, ws, len(xs), sum(xs)) for (k, ws), xs in groups.items() if ws + SIZE <= watermark
    )


def result_rows(batches: list[pa.RecordBatch]) -> list[tuple]:
    out = []
    for b in batches:
        ws = pc.cast(b.column("ws"), pa.int64()).to_pylist()
        out += zip(
            b.column("k").to_pylist(),
            ws,
            b.column("n").to_pylist(),
            b.column("s").to_pylist(),
            strict=True,
        )
    return sorted(out)


def test_partitions_read_one_after_the_other_lose_no_rows() -> None:
    rows = partition_rows(1, 4, 8_000)
    plan = plan_continuous(SQL, {"ev": EV}, set())
    plan.set_partitions("ev", range(4))
    out: list[pa.RecordBatch] = []
    seen: dict[int, int] = {}
    for p, b in chunks(rows):
        out += plan.process("ev", b)
        seen[p] = max(seen.get(p, 0), int(pc.max(pc.cast(b.column("t"), pa.int64())).as_py()))
        wm = plan.watermark_ms()
        if len(seen) < 4:
            assert wm is None  # a partition without rows yet holds the watermark
        else:
            assert wm == min(seen.values()) - DELAY
    active_wm = min(prs[-1][2] for prs in rows.values()) - DELAY
    assert result_rows(out) == reference(rows, active_wm)
    # all idle: the watermark is the largest maximum, every window up to it closes
    out += plan.mark_idle("ev", range(4))
    final_wm = max(prs[-1][2] for prs in rows.values()) - DELAY
    assert plan.watermark_ms() == final_wm
    assert result_rows(out) == reference(rows, final_wm)
    assert plan.stats().late_rows_dropped == 0
    assert plan.stats().rows_out == len(reference(rows, final_wm))


def test_without_per_partition_watermarks_the_same_input_drops_rows() -> None:
    """The old rule (largest event time over all partitions) on the same feed drops rows:
    what the per-partition rule fixes. Shown with one partition id for all batches."""
    rows = partition_rows(1, 4, 8_000)
    plan = plan_continuous(SQL, {"ev": EV}, set())
    for _p, b in chunks(rows):
        b = b.set_column(3, "_partition", pa.array(np.zeros(b.num_rows, np.int32)))
        plan.process("ev", b)
    assert plan.stats().late_rows_dropped > 0


def test_an_idle_partition_does_not_hold_the_watermark() -> None:
    rows = partition_rows(2, 3, 12_000)  # partitions 0..2 get rows, 3 none
    plan = plan_continuous(SQL, {"ev": EV}, set())
    plan.set_partitions("ev", range(4))
    out: list[pa.RecordBatch] = []
    for _p, b in chunks(rows):
        out += plan.process("ev", b)
    assert out == [] and plan.watermark_ms() is None
    out += plan.mark_idle("ev", [3])
    wm = min(prs[-1][2] for prs in rows.values()) - DELAY
    assert plan.watermark_ms() == wm
    assert result_rows(out) == reference(rows, wm) != []
    # partition 2 idle too: the lowest of 0 and 1 now
    out += plan.mark_idle("ev", [2, 3])
    wm2 = min(rows[0][-1][2], rows[1][-1][2]) - DELAY
    assert plan.watermark_ms() == max(wm, wm2)
    # un-idling cannot move the watermark back
    assert plan.mark_idle("ev", []) == []
    assert plan.watermark_ms() == max(wm, wm2)


def test_mark_idle_refuses_an_unknown_source() -> None:
    plan = plan_continuous(SQL, {"ev": EV}, set())
    with pytest.raises(PlanError, match="reads ev, not 'nope'"):
        plan.mark_idle("nope", [0])
    with pytest.raises(PlanError, match="reads ev, not 'nope'"):
        plan.set_partitions("nope", [0])


def test_snapshot_keeps_per_partition_maxima() -> None:
    rows = partition_rows(3, 4, 6_000)
    feed = list(chunks(rows))
    cut = len(feed) // 2
    whole = plan_continuous(SQL, {"ev": EV}, set())
    whole.set_partitions("ev", range(4))
    out_whole: list[pa.RecordBatch] = []
    for _p, b in feed:
        out_whole += whole.process("ev", b)
    out_whole += whole.mark_idle("ev", range(4))

    first = plan_continuous(SQL, {"ev": EV}, set())
    first.set_partitions("ev", range(4))
    out: list[pa.RecordBatch] = []
    for _p, b in feed[:cut]:
        out += first.process("ev", b)
    blob = first.snapshot()
    meta = json.loads(pa.ipc.open_stream(blob).schema.metadata[b"streamhouse.plan"])
    assert meta["version"] == 2
    assert set(meta["sources"]["ev"]["partitions"]) == {str(p) for p, _ in feed[:cut]}
    second = plan_continuous(SQL, {"ev": EV}, set())
    second.restore(blob)
    second.set_partitions("ev", range(4))
    for _p, b in feed[cut:]:
        out += second.process("ev", b)
    out += second.mark_idle("ev", range(4))
    assert result_rows(out) == result_rows(out_whole)
    assert second.stats().late_rows_dropped == 0


def test_a_version_1_snapshot_restores() -> None:
    """Version 1 stored the largest event time per source: its watermark is kept."""
    rows = partition_rows(4, 2, 2_000)
    plan = plan_continuous(SQL, {"ev": EV}, set())
    for _p, b in chunks(rows):
        plan.process("ev", b)
    blob = plan.snapshot()
    table = pa.ipc.open_stream(blob).read_all()
    meta = json.loads(table.schema.metadata[b"streamhouse.plan"])
    top = max(prs[-1][2] for prs in rows.values())
    meta["version"] = 1
    meta["sources"] = {"ev": top}
    table = table.replace_schema_metadata({b"streamhouse.plan": json.dumps(meta).encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    restored = plan_continuous(SQL, {"ev": EV}, set())
    restored.restore(sink.getvalue().to_pybytes())
    assert restored.watermark_ms() == top - DELAY
    # a row older than that watermark's windows is late, as it was before the upgrade
    late = restored.stats().late_rows_dropped
    restored.process("ev", batch([("a", 1, top - 5 * SIZE)], 0, 10_000))
    assert restored.stats().late_rows_dropped == late + 1
