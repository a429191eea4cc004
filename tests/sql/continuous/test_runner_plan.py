"""A hand-written ContinuousPlan for the runner's tests, and its own unit tests.

``SelectPlan`` runs one DataFusion SELECT over each batch of one source, after adding a
column ``_seq``: the row's index among the rows of its partition the plan was ever given
(its state: rows seen per partition, restored from its snapshot). So an output row says
exactly which input row it came from and in what position, and a runner that replays
input, loses state or skips a checkpoint produces rows a reference can tell apart.

The runner's tests start ``python3 -m sql.continuous run NAME --plan <this file>:make_plan``;
the query's definition names the source in ``options["source"]`` and may name upsert keys in
``options["key_columns"]`` (comma separated).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
from datafusion import SessionContext

from sql.catalog import Column, Relation
from sql.continuous.definition import QueryDefinition
from sql.continuous.pipeline import PlanStats, Source
from sql.engine import relation_schema


class SelectPlan:
    """See the module docstring."""

    def __init__(
        self,
        sql: str,
        source: Source,
        input_schema: pa.Schema,
        key_columns: tuple[str, ...] = (),
    ) -> None:
        self.sql = sql
        self.sources = {source.name: source}
        self.source = source
        self.input_schema = input_schema.append(pa.field("_seq", pa.int64()))
        self.key_columns = key_columns
        self.output_time_column: str | None = None
        self.counts: dict[int, int] = {}
        self._stats = PlanStats()
        self.ctx = SessionContext()
        self.output_schema = self._run(self.input_schema.empty_table().to_batches() or []).schema

    def _run(self, batches: list[pa.RecordBatch]) -> pa.Table:
        name = '"' + self.source.name + '"'
        if self.ctx.table_exist(self.source.name):
            self.ctx.deregister_table(name)
        empty = pa.RecordBatch.from_pylist([], schema=self.input_schema)
        self.ctx.register_record_batches(name, [batches or [empty]])
        return self.ctx.sql(self.sql).to_arrow_table()

    def process(self, source: str, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        assert source == self.source.name, source
        partition_column = "_partition" if "_partition" in batch.schema.names else "partition"
        parts = batch.column(partition_column).to_numpy()
        seq = np.empty(len(parts), dtype=np.int64)
        for p in np.unique(parts):
            mask = parts == p
            n = int(mask.sum())
            start = self.counts.get(int(p), 0)
            seq[mask] = np.arange(start, start + n)
            self.counts[int(p)] = start + n
        batch = batch.append_column("_seq", pa.array(seq))
        out = self._run([batch]).cast(self.output_schema)
        self._stats.rows_in += batch.num_rows
        self._stats.rows_out += out.num_rows
        return out.to_batches()

    def watermark_ms(self) -> int | None:
        return None

    def stats(self) -> PlanStats:
        return self._stats

    def snapshot(self) -> bytes:
        return msgspec.json.encode(self.counts)

    def restore(self, data: bytes) -> None:
        self.counts = {int(k): v for k, v in msgspec.json.decode(data).items()}


def make_plan(
    definition: QueryDefinition, relations: dict[str, Relation], topics: set[str]
) -> SelectPlan:
    """The runner's ``--plan`` hook (module docstring)."""
    name = definition.options["source"]
    relation = relations.get(name)
    if relation is None:
        assert name in topics, f"no stream or topic {name}"
        from sql.decode import RAW_SCHEMA

        source = Source(name, name, None)
        schema = RAW_SCHEMA
    else:
        source = Source(name, relation.topic, relation, relation.kind == "table")
        schema = relation_schema(relation)
    keys = tuple(k for k in definition.options.get("key_columns", "").split(",") if k)
    return SelectPlan(definition.sql, source, schema, keys)


# -- the plan's own tests --------------------------------------------------------------------

ORDERS = Relation(
    kind="stream",
    name="orders",
    topic="orders",
    format="json",
    columns=[Column("id", "BIGINT"), Column("item", "VARCHAR"), Column("price", "DOUBLE")],
)


def _batch(partition: int, ids: list[int]) -> pa.RecordBatch:
    schema = relation_schema(ORDERS)
    n = len(ids)
    data: dict[str, Any] = {
        "id": ids,
        "item": [f"i{i % 3}" for i in ids],
        "price": [float(i) for i in ids],
        "_partition": [partition] * n,
        "_offset": list(range(n)),
        "_timestamp": [0] * n,
    }
    return pa.RecordBatch.from_pydict(data, schema=schema)


def test_select_plan_numbers_rows_per_partition_and_restores_its_counts() -> None:
    definition = QueryDefinition(
        name="q",
        kind="stream",
        sql="SELECT id, _partition, _seq FROM orders WHERE price >= 2",
        options={"source": "orders"},
    )
    plan = make_plan(definition, {"orders": ORDERS}, {"orders"})
    first = pa.Table.from_batches(plan.process("orders", _batch(0, [1, 2, 3])))
    assert first.column("_seq").to_pylist() == [1, 2]
    again = make_plan(definition, {"orders": ORDERS}, {"orders"})
    again.restore(plan.snapshot())
    out = pa.Table.from_batches(again.process("orders", _batch(0, [4, 5])))
    assert out.column("_seq").to_pylist() == [3, 4]
    assert out.column("id").to_pylist() == [4, 5]
    other = pa.Table.from_batches(again.process("orders", _batch(1, [7])))
    assert other.column("_seq").to_pylist() == [0]
