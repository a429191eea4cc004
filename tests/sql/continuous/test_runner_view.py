"""The rows a materialized view keeps (sql.continuous.runner.ViewRows; pure code), and their
checkpoint object round trip (sql.continuous.checkpoint.view_bytes / read_view)."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from sql.continuous import runner
from sql.continuous.checkpoint import read_view, view_bytes
from sql.continuous.runner import ViewRows

SCHEMA = pa.schema([("k", pa.utf8()), ("w", pa.int64()), ("n", pa.int64())])


def batch(rows: list[tuple[str | None, int, int]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [dict(zip(SCHEMA.names, r, strict=True)) for r in rows], SCHEMA
    )


def test_upserts_keep_the_latest_row_per_key_like_a_dict() -> None:
    rng = random.Random(3)
    view = ViewRows(SCHEMA, ("k", "w"))
    reference: dict[tuple[str | None, int], int] = {}
    for _step in range(20):
        batches = []
        for _b in range(rng.randint(0, 3)):
            rows = [
                (rng.choice(["a", "b", "c", None]), rng.randint(0, 3), rng.randint(0, 10**6))
                for _ in range(rng.randint(0, 50))
            ]
            for k, w, n in rows:
                reference[(k, w)] = n
            batches.append(batch(rows))
        view.apply(batches)
        got = {(r["k"], r["w"]): r["n"] for r in view.table.to_pylist()}
        assert view.table.num_rows == len(got)
        assert got == reference


def test_an_append_only_view_keeps_its_newest_rows_up_to_the_cap(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runner, "VIEW_APPEND_CAP", 100)
    view = ViewRows(SCHEMA, ())
    view.apply([batch([("a", 0, i) for i in range(60)])])
    assert view.table.num_rows == 60 and not view.capped
    view.apply([batch([("a", 0, i) for i in range(60, 130)])])
    assert view.table.column("n").to_pylist() == list(range(30, 130))
    assert view.capped
    assert "newest 100 rows" in caplog.text


def test_view_rows_round_trip_through_their_object() -> None:
    view = ViewRows(SCHEMA, ("k",))
    view.apply([batch([("a", 1, 2), ("b", 3, 4), ("a", 5, 6)])])
    again = read_view(view_bytes(view.table))
    assert again.equals(view.table)
    assert read_view(view_bytes(SCHEMA.empty_table())).num_rows == 0


def test_deletes_drop_keys_like_a_dict() -> None:
    """Batches with ``__delete`` (some without the column) against a dict reference."""
    rng = random.Random(5)
    view = ViewRows(SCHEMA, ("k", "w"))
    reference: dict[tuple[str | None, int], int] = {}
    deleted = 0
    for _step in range(30):
        batches = []
        for _b in range(rng.randint(0, 3)):
            rows = [
                (rng.choice(["a", "b", "c", None]), rng.randint(0, 3), rng.randint(0, 10**6))
                for _ in range(rng.randint(0, 40))
            ]
            if rng.random() < 0.3:  # a batch without deletes has no __delete column
                for k, w, n in rows:
                    reference[(k, w)] = n
                batches.append(batch(rows))
                continue
            flags = [rng.random() < 0.4 for _ in rows]
            for (k, w, n), gone in zip(rows, flags, strict=True):
                if gone:
                    deleted += reference.pop((k, w), None) is not None
                else:
                    reference[(k, w)] = n
            # a delete row's value columns may be null
            values = [None if gone else n for (_k, _w, n), gone in zip(rows, flags, strict=True)]
            batches.append(
                pa.RecordBatch.from_arrays(
                    [
                        pa.array([r[0] for r in rows], pa.utf8()),
                        pa.array([r[1] for r in rows], pa.int64()),
                        pa.array(values, pa.int64()),
                        pa.array(flags, pa.bool_()),
                    ],
                    names=[*SCHEMA.names, "__delete"],
                )
            )
        view.apply(batches)
        assert view.table.schema.equals(SCHEMA)
        got = {(r["k"], r["w"]): r["n"] for r in view.table.to_pylist()}
        assert view.table.num_rows == len(got)
        assert got == reference
    assert deleted > 0
