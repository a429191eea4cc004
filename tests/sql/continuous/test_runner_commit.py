"""The runner's checkpoint commit when the metadata store or the object store fails, in process
on a real SQLite metadata file and a real local folder store (no stack): a commit whose reply
was lost (it happened) is not repeated, a commit that failed is retried, a failed PUT is
retried, a fenced runner stops; the output holds every row exactly once each time.

The faults are injected by wrapping the AsyncMetadata / store calls of one runner (the store
and database underneath are real).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from metadata.async_store import AsyncMetadata
from metadata.errors import MetadataUnavailableError, QueryFencedError
from sql.catalog import Catalog, Column, Relation
from sql.continuous import runner as runner_module
from sql.continuous.checkpoint import delete_objects, load_view_rows, put_view
from sql.continuous.definition import (
    CheckpointState,
    QueryDefinition,
    decode_checkpoint,
    encode_checkpoint,
    encode_definition,
)
from sql.continuous.runner import QueryRunner
from sql.continuous.sink import build_segment, encode_records, new_segment_key
from sql.continuous.source import SourceError
from sql.decode import decode_block_records
from streamhouse import objectstore
from streamhouse.config import load_settings
from streamhouse.segment import decode_block

_spec = importlib.util.spec_from_file_location(
    "_runner_plan", pathlib.Path(__file__).with_name("test_runner_plan.py")
)
assert _spec is not None and _spec.loader is not None
plans: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plans)

ROWS = 500


class Env:
    def __init__(self, folder: pathlib.Path, meta: AsyncMetadata, store: Any) -> None:
        self.settings = load_settings(
            {"STREAMHOUSE_DATA_DIR": str(folder), "STREAMHOUSE_SQL_CHECKPOINT_INTERVAL_MS": "1"}
        )
        self.meta = meta
        self.store = store

    async def output(self) -> list[dict[str, Any]]:
        topic = await self.meta.get_topic("out")
        assert topic is not None
        rows: list[dict[str, Any]] = []
        for p in range(topic.partitions):
            for loc in await self.meta.find_blocks(topic.topic_id, p, 0, 10_000):
                data = await objectstore.get_range(
                    self.store, loc.segment_key, loc.byte_offset, loc.byte_length
                )
                batch, _n = decode_block_records(decode_block(data), p, loc.base_offset)
                rows += [json.loads(v) for v in batch.column("value").to_pylist()]
        return rows


def scenario(tmp_path: pathlib.Path, body: Callable[[Env], Awaitable[None]]) -> None:
    """Runs ``body`` on a fresh metadata file and store holding the input and the query."""
    asyncio.run(_scenario(tmp_path, body))


async def _scenario(tmp_path: pathlib.Path, body: Callable[[Env], Awaitable[None]]) -> None:
    settings = load_settings({"STREAMHOUSE_DATA_DIR": str(tmp_path)})
    (tmp_path / "objects").mkdir(parents=True, exist_ok=True)
    meta = await AsyncMetadata.open(settings.metadata_target)
    store = objectstore.open_object_store(settings.object_store_url)
    try:
        orders = await meta.create_topic("orders", 2)
        await meta.create_topic("out", 2)
        values = pa.array(
            [json.dumps({"id": i, "price": float(i % 100)}).encode() for i in range(ROWS)]
        )
        parts = [
            (
                orders.topic_id,
                p,
                encode_records(
                    pa.nulls(ROWS // 2, pa.binary()), values[p::2], np.zeros(ROWS // 2, np.int64)
                ),
            )
            for p in range(2)
        ]
        segment = build_segment(parts)
        assert segment is not None
        key = new_segment_key()
        await objectstore.put(store, key, segment.data)
        await meta.commit_segment(key, len(segment.data), segment.blocks)
        relation = Relation(
            "stream",
            "orders",
            "orders",
            "json",
            [Column("id", "BIGINT"), Column("price", "DOUBLE")],
        )
        await Catalog(meta).put(relation)
        definition = QueryDefinition(
            name="q",
            kind="stream",
            sql="SELECT id, _partition AS p, _seq FROM orders WHERE price >= 50",
            output_topic="out",
            options={"source": "orders"},
        )
        await meta.put_catalog_entry("query", "q", encode_definition(definition), 0)
        await body(Env(tmp_path, meta, store))
    finally:
        await meta.close()


def expected_rows() -> list[dict[str, Any]]:
    out = []
    for p in range(2):
        ids = list(range(p, ROWS, 2))
        out += [{"id": i, "p": p, "_seq": s} for s, i in enumerate(ids) if i % 100 >= 50]
    return sorted(out, key=lambda r: r["id"])


class FaultyMeta:
    """AsyncMetadata whose next commit_query_step raises after (``lost_reply``) or before
    doing its work."""

    def __init__(self, meta: AsyncMetadata, lost_reply: bool) -> None:
        self._meta = meta
        self.lost_reply = lost_reply
        self.faults = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meta, name)

    async def commit_query_step(self, *args: Any) -> Any:
        if self.faults:
            self.faults -= 1
            if self.lost_reply:
                await self._meta.commit_query_step(*args)
            raise MetadataUnavailableError("injected: the database went away")
        return await self._meta.commit_query_step(*args)


async def run_to_end(r: QueryRunner) -> None:
    await r.start()
    for _ in range(10):
        await r.step()
        if not r.dirty and all(not t.has_new() for t in r.tails.values()):
            return
    raise AssertionError("the runner did not finish the input in 10 steps")


@pytest.mark.parametrize("lost_reply", [True, False])
def test_a_failed_commit_is_settled_and_output_once(
    tmp_path: pathlib.Path, lost_reply: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_wait(asyncio.sleep))
    scenario(tmp_path, lambda env: _failed_commit(env, lost_reply))


async def _failed_commit(env: Env, lost_reply: bool) -> None:
    meta = FaultyMeta(env.meta, lost_reply)
    r = QueryRunner(env.settings, meta, env.store, "q", plans.make_plan)  # type: ignore[arg-type]
    await run_to_end(r)
    assert meta.faults == 0
    got = sorted(await env.output(), key=lambda row: row["id"])
    assert got == expected_rows()
    row = await env.meta.get_query_checkpoint("q")
    assert row is not None and row.step == r.state.step
    assert decode_checkpoint(row.payload).rows_out == len(expected_rows())


def _no_wait(sleep: Any) -> Any:
    async def short(delay: float, *args: Any) -> Any:
        return await sleep(min(delay, 0.01), *args)

    return short


def test_a_failed_put_is_retried(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_wait(asyncio.sleep))
    real_put = objectstore.put
    failures = [1]

    async def flaky_put(store: Any, key: str, data: Any) -> None:
        if key.startswith("segments/") and failures[0]:
            failures[0] -= 1
            raise OSError("injected: the store refused the PUT")
        await real_put(store, key, data)

    async def body(env: Env) -> None:
        monkeypatch.setattr(runner_module.objectstore, "put", flaky_put)  # after the setup
        r = QueryRunner(env.settings, env.meta, env.store, "q", plans.make_plan)
        await run_to_end(r)
        assert sorted(await env.output(), key=lambda row: row["id"]) == expected_rows()

    scenario(tmp_path, body)
    assert failures == [0]


def test_a_runner_claimed_over_is_fenced_and_its_objects_are_deleted(
    tmp_path: pathlib.Path,
) -> None:
    scenario(tmp_path, _fenced)


async def _fenced(env: Env) -> None:
    first = QueryRunner(env.settings, env.meta, env.store, "q", plans.make_plan)
    await first.start()
    await first.step()  # reads and commits the first step
    assert first.state.step == 1
    second = QueryRunner(env.settings, env.meta, env.store, "q", plans.make_plan)
    await run_to_end(second)
    first.dirty = True
    with pytest.raises(QueryFencedError):
        await first.commit()
    assert sorted(await env.output(), key=lambda row: row["id"]) == expected_rows()
    keys = []
    async for page in objectstore.list_objects(env.store, "sql/state/q/"):
        keys += [o.key for o in page]
    assert keys == [second.state.state_key]  # the fenced runner's PUT was deleted


def test_a_view_read_follows_a_checkpoint_that_replaced_its_object(tmp_path: pathlib.Path) -> None:
    async def body(env: Env) -> None:
        claim = await env.meta.claim_query("v", 1)
        tables = [pa.table({"k": ["a"], "n": [i]}) for i in (1, 2)]
        keys = []
        stale = None
        for step, table in enumerate(tables, start=1):
            keys.append(await put_view(env.store, "v", step, table))
            payload = encode_checkpoint(CheckpointState(step=step, view_key=keys[-1]))
            await env.meta.commit_query_step("v", claim.generation, step, payload, None, step)
            if step == 1:
                stale = await env.meta.get_query_checkpoint("v")
        await delete_objects(env.store, [keys[0]])

        class StaleFirst:
            """Answers the checkpoint read before the second commit once (the reader's
            view of the race), then the real one."""

            def __init__(self) -> None:
                self.reads = 0

            async def get_query_checkpoint(self, name: str) -> Any:
                self.reads += 1
                return stale if self.reads == 1 else await env.meta.get_query_checkpoint(name)

        reader = StaleFirst()
        rows = await load_view_rows(reader, env.store, "v")  # type: ignore[arg-type]
        assert rows is not None and rows.equals(tables[1])
        assert reader.reads == 2
        assert await load_view_rows(env.meta, env.store, "nothing") is None

    scenario(tmp_path, body)


def test_a_deleted_source_topic_stops_the_runner_with_the_reason(tmp_path: pathlib.Path) -> None:
    async def body(env: Env) -> None:
        r = QueryRunner(env.settings, env.meta, env.store, "q", plans.make_plan)
        await run_to_end(r)
        await env.meta.delete_topic("orders")
        with pytest.raises(SourceError, match="'orders' .* was deleted"):
            await r.step()

    scenario(tmp_path, body)
