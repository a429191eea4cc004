"""The stages ``sql.continuous.plan`` builds that are not joins: stateless, window aggregate,
updating aggregate. Each implements ``sql.continuous.pipeline.Stage`` and is sans-I/O.

- ``StatelessStage``: one SQL text (filters, projections, CASE, scalar functions) run by
  DataFusion on each batch, the batch registered under ``_in``. Passes the input watermark
  through when its output keeps the input's event-time column.
- ``WindowStage``: a DataFusion pre-projection (``__k<i>`` group keys, ``__a<j>`` aggregate
  arguments, ``__t`` event time; the WHERE applied), ``sql.windows.WindowAggregate``, and a
  DataFusion post-projection over the emitted rows registered as ``_w`` (``__k<i>``,
  ``window_start``, ``window_end``, ``__g<j>``) giving the select list (HAVING as its WHERE).
- ``UpdatingAggregateStage``: the same pre- and post-projection around keyed partial
  aggregates without a window; after each batch it emits the new rows of the groups the
  batch changed (upserts keyed by the group keys). Feeding another aggregate it emits a
  changelog instead: per changed group its previous row with ``__sign`` = -1 (if it had
  one) and its new row with ``__sign`` = +1; an aggregate over a changelog sums signs
  (COUNT), signed values (SUM) or both (AVG), so rows taken back leave the totals (MIN,
  MAX and COUNT DISTINCT cannot take rows back and are refused). A group whose rows are
  all taken back stays, with COUNT 0 (upserts cannot delete).

State formats (``snapshot``)
----------------------------
- ``StatelessStage``: UTF-8 JSON ``{"watermark": int | null}``.
- ``WindowStage``: ``WindowAggregate.snapshot()`` (format in ``sql.windows``).
- ``UpdatingAggregateStage``: one Arrow IPC stream of a table ``part: utf8, ipc: binary``
  (schema metadata ``streamhouse.updating`` = JSON ``{"version": 1}``); parts: ``groups``
  (one row per group: keys as ``__k<i>`` (nulls filled with 0 / "" / epoch) and
  ``__k<i>_null`` (bool), or ``__nokey`` (int8 0) without keys; partial columns ``__p<j>_n``
  count int64, ``__p<j>_s`` sum, ``__p<j>_m`` min or max) and ``distinct<j>`` (the key
  columns, ``__a<j>``: the distinct values of COUNT(DISTINCT) aggregate j per group), each
  one Arrow IPC stream; taken after merging pending partials.
"""

from __future__ import annotations

import decimal
import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from datafusion import SessionContext

from sql.continuous.pipeline import PlanError, PlannedInput
from sql.windows import Aggregate, Hop, Session, Tumble, Window, WindowAggregate, WindowError

__all__ = [
    "DataFusionQuery",
    "StageError",
    "StatelessStage",
    "UpdatingAggregateStage",
    "WindowStage",
]

_UPDATING_META = b"streamhouse.updating"
#: Field metadata marking a window stage's output columns that are its window bounds
#: (value ``start`` / ``end``); ``sql.continuous.join_condition`` reads it.
WINDOW_META_KEY = b"streamhouse.window"
_UPDATING_VERSION = 1
_NOKEY = "__nokey"
#: ``pending`` partials of an updating aggregate are merged into its ``base`` when they
#: outgrow it and this many rows.
_COMPACT_MIN_ROWS = 65_536
#: The column of a changelog (an updating aggregate feeding another aggregate): -1 takes a
#: row back, +1 adds one.
SIGN = "__sign"


class StageError(RuntimeError):
    """A batch a stage cannot process (an expression failing on the data, a changed input
    schema); the message names the stage and its SQL."""


class DataFusionQuery:
    """One SQL text run on each batch, registered under ``table`` in a SessionContext the
    query keeps. ``output_schema`` comes from running it on an empty batch at construction
    (PlanError if DataFusion refuses the SQL; view types made plain strings and binaries);
    every result is cast to it."""

    def __init__(
        self,
        sql: str,
        table: str,
        schema: pa.Schema,
        what: str,
        field_metadata: dict[str, dict[bytes, bytes]] | None = None,
    ) -> None:
        self.sql = sql
        self.table = table
        self.input_schema = schema
        self.what = what
        self._ctx = SessionContext()
        self._registered = False
        try:
            result = self._execute(schema.empty_table())
        except Exception as exc:  # DataFusion raises plain Exception subclasses
            raise PlanError(f"{what}: DataFusion refuses {sql!r}: {_clean(exc)}") from None
        out = pa.schema([f.with_type(_plain(f.type)) for f in result.schema])
        for name, meta in (field_metadata or {}).items():
            i = out.get_field_index(name)
            if i >= 0:
                out = out.set(i, out.field(i).with_metadata(meta))
        self.output_schema = out

    def _execute(self, data: pa.Table | pa.RecordBatch) -> pa.Table:
        if self._registered:
            self._ctx.deregister_table(self.table)
        batches = data.to_batches() if isinstance(data, pa.Table) else [data]
        if not batches:
            batches = [pa.RecordBatch.from_pylist([], schema=data.schema)]
        self._ctx.register_record_batches(self.table, [batches])
        self._registered = True
        return self._ctx.sql(self.sql).to_arrow_table()

    def run(self, data: pa.Table | pa.RecordBatch) -> pa.Table:
        try:
            table = self._execute(data)
        except Exception as exc:
            raise StageError(
                f"{self.what}: {self.sql!r} failed on a batch: {_clean(exc)}"
            ) from None
        if table.schema.equals(self.output_schema, check_metadata=True):
            return table
        if [f.type for f in table.schema] != self.output_schema.types:
            try:
                table = table.cast(self.output_schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                raise StageError(
                    f"{self.what}: a batch gave columns {table.schema}, the plan has "
                    f"{self.output_schema} ({exc}); did the input's declaration change?"
                ) from None
        return pa.Table.from_arrays(table.columns, schema=self.output_schema)


def _labelled(text: str, labels: dict[str, str] | None) -> str:
    """``text`` with the stage's internal column names (``__a0``...) as the SQL they hold."""
    if not labels:
        return text
    return re.sub(r"__[akg]\d+", lambda m: labels.get(m[0], m[0]), text)


def _plain(typ: pa.DataType) -> pa.DataType:
    """View types (which DataFusion gives for some expressions, e.g. a CAST to VARCHAR) as
    the plain types every consumer reads."""
    if pa.types.is_string_view(typ):
        return pa.string()
    if pa.types.is_binary_view(typ):
        return pa.binary()
    return typ


def _clean(exc: Exception) -> str:
    text = str(exc).strip()
    for prefix in ("DataFusion error: ", "Error during planning: ", "Schema error: "):
        text = text.removeprefix(prefix)
    return text


def _batches(table: pa.Table) -> list[pa.RecordBatch]:
    if table.num_rows == 0:
        return []
    return table.combine_chunks().to_batches()


class StatelessStage:
    """A filter / projection over one input, run by DataFusion on each batch."""

    def __init__(
        self,
        stage_id: str,
        source: PlannedInput,
        sql: str,
        output_time_column: str | None,
        key_columns: tuple[str, ...] = (),
        passthrough: dict[str, str] | None = None,
    ) -> None:
        """``passthrough``: output column -> the input column it is (its field metadata,
        such as ``streamhouse.window``, is kept)."""
        self.stage_id = stage_id
        self.inputs = (source.input_name,)
        meta = {
            out: dict(source.schema.field(src).metadata)
            for out, src in (passthrough or {}).items()
            if src in source.schema.names and source.schema.field(src).metadata
        }
        self.query = DataFusionQuery(sql, "_in", source.schema, f"stage {stage_id}", meta)
        self.output_schema = self.query.output_schema
        self.output_time_column = output_time_column
        self.key_columns = key_columns
        self._watermark: int | None = None

    def process(self, input_name: str, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        if batch.num_rows == 0:
            return []
        return _batches(self.query.run(batch))

    def advance_watermark(self, input_name: str, watermark_ms: int) -> list[pa.RecordBatch]:
        if self._watermark is None or watermark_ms > self._watermark:
            self._watermark = watermark_ms
        return []

    def output_watermark(self) -> int | None:
        return self._watermark if self.output_time_column is not None else None

    def snapshot(self) -> bytes:
        return json.dumps({"watermark": self._watermark}).encode()

    def restore(self, data: bytes) -> None:
        try:
            state = json.loads(data)
            wm = state["watermark"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PlanError(f"stage {self.stage_id}: damaged state ({exc!r})") from None
        self._watermark = None if wm is None else int(wm)


class WindowStage:
    """GROUP BY with TUMBLE / HOP / SESSION: pre-projection, ``WindowAggregate``,
    post-projection (module docstring)."""

    def __init__(
        self,
        stage_id: str,
        source: PlannedInput,
        pre_sql: str,
        window: Window,
        keys: list[str],
        aggregates: list[Aggregate],
        post_sql: str,
        *,
        allowed_lateness_ms: int,
        emit_updates: bool,
        output_time_column: str | None,
        output_time_bound: str | None,  # "start" | "end": which window bound that column is
        key_columns: tuple[str, ...] = (),
        field_metadata: dict[str, dict[bytes, bytes]] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        """``field_metadata``: metadata of output fields, such as ``streamhouse.window``
        (``start`` / ``end``) marking the window's bounds for joins. ``labels``: the SQL of
        the pre-projection's columns, for messages."""
        self.stage_id = stage_id
        self.inputs = (source.input_name,)
        self.pre = DataFusionQuery(pre_sql, "_in", source.schema, f"stage {stage_id}")
        try:
            self.op = WindowAggregate(
                self.pre.output_schema,
                window,
                "__t",
                keys,
                aggregates,
                allowed_lateness_ms=allowed_lateness_ms,
                emit_updates=emit_updates,
            )
        except WindowError as exc:
            raise PlanError(f"stage {stage_id}: {_labelled(str(exc), labels)}") from None
        self.post = DataFusionQuery(
            post_sql, "_w", self.op.output_schema(), f"stage {stage_id}", field_metadata
        )
        self.output_schema = self.post.output_schema
        self.output_time_column = output_time_column
        self._bound = output_time_bound
        self.key_columns = key_columns

    @property
    def late_rows_dropped(self) -> int:
        return self.op.stats.late_rows_dropped

    def process(self, input_name: str, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        if batch.num_rows == 0:
            return []
        pre = self.pre.run(batch)
        try:
            self.op.process(pre)
        except WindowError as exc:
            raise StageError(f"stage {self.stage_id}: {exc}") from None
        return []

    def advance_watermark(self, input_name: str, watermark_ms: int) -> list[pa.RecordBatch]:
        emitted = self.op.advance_watermark(watermark_ms)
        if emitted.num_rows == 0:
            return []
        return _batches(self.post.run(emitted))

    def output_watermark(self) -> int | None:
        wm = self.op.watermark
        if wm is None or self._bound is None:
            return None
        wm -= self.op.allowed_lateness_ms
        if self._bound == "start":
            window = self.op.window
            if isinstance(window, Tumble | Hop):
                wm -= window.size_ms
            elif isinstance(window, Session):
                return None
        return wm

    def snapshot(self) -> bytes:
        return self.op.snapshot()

    def restore(self, data: bytes) -> None:
        try:
            op = WindowAggregate.restore(data)
        except WindowError as exc:
            raise PlanError(f"stage {self.stage_id}: {exc}") from None
        if op.output_schema() != self.op.output_schema():
            raise PlanError(
                f"stage {self.stage_id}: the snapshot is of another window aggregation "
                f"({op.output_schema()}); was the query changed?"
            )
        self.op = op


class UpdatingAggregateStage:
    """GROUP BY without a window: per-group partial aggregates; each batch emits the new
    rows of the groups it changed.

    State (Arrow tables, pyarrow hash aggregation and hash joins, nothing per row in
    Python): ``base``, one merged row of partials per group, and ``pending``, the partials
    of the batches since the last merge. A batch's groups are found in both with a semi
    join (its keys are the hash table, the state is probed: no rehash of the state), merged
    with the batch's partials, emitted, and the batch's partials appended to ``pending``;
    ``pending`` is merged into ``base`` when it outgrows it (so a row is merged O(1) times
    amortised). COUNT(DISTINCT) keeps the distinct (group, value) rows the same way. Group
    keys are held as the value with nulls filled (``__k<i>``) and a null flag
    (``__k<i>_null``), so a null key joins like any other (one group, as in GROUP BY)."""

    def __init__(
        self,
        stage_id: str,
        source: PlannedInput,
        pre_sql: str,
        keys: list[str],
        aggregates: list[Aggregate],
        post_sql: str,
        key_columns: tuple[str, ...],
        *,
        changelog: bool = False,
        labels: dict[str, str] | None = None,
    ) -> None:
        """``labels``: the SQL of the pre-projection's columns, for messages.
        ``changelog``: emit each change as the group's old row with ``__sign`` -1 (when
        the group existed) and its new row with ``__sign`` +1, for an aggregate downstream
        (see the module docstring); else the new rows (upserts by ``key_columns``). When
        the pre-projection has a ``__sign`` column the input is such a changelog: rows
        with -1 are taken back (COUNT, SUM and AVG only)."""
        self.stage_id = stage_id
        self.inputs = (source.input_name,)
        self.pre = DataFusionQuery(pre_sql, "_in", source.schema, f"stage {stage_id}")
        schema = self.pre.output_schema
        self.signed = SIGN in schema.names
        self.changelog = changelog
        if self.signed:
            for a in aggregates:
                if a.func not in ("count", "sum", "avg"):
                    raise PlanError(
                        f"stage {stage_id}: {a.func.upper().replace('_', ' ')} over an "
                        "updating result cannot take rows back; use COUNT, SUM or AVG"
                    )
        for a in aggregates:
            if a.column is not None and a.func in ("sum", "avg"):
                t = schema.field(a.column).type
                if not (
                    pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
                ):
                    arg = _labelled(a.column, labels)
                    raise PlanError(
                        f"stage {stage_id}: {a.func.upper()}({arg}) needs a number, not {t}"
                    )
        self.keys = list(keys)
        self._fill: dict[str, pa.Scalar] = {}
        for k in self.keys:
            zero = _zero(schema.field(k).type)
            if zero is None:
                raise PlanError(
                    f"stage {stage_id}: GROUP BY a value of type {schema.field(k).type} is "
                    "not supported without a window; group by a number, string or time"
                )
            self._fill[k] = zero
        self._gkeys = [c for k in self.keys for c in (k, f"{k}_null")] or [_NOKEY]
        self.aggregates = list(aggregates)
        self._distinct = [i for i, a in enumerate(aggregates) if a.func == "count_distinct"]
        empty = self._input(schema.empty_table())
        self._empty = self._partials(empty)
        self._base = self._empty
        self._pending = self._empty
        self._empty_distinct = {i: self._distinct_of(empty, i) for i in self._distinct}
        self._dbase = dict(self._empty_distinct)
        self._dpending = dict(self._empty_distinct)
        final = self._final(self._with_counts(self._empty, self._empty_distinct))
        self.post = DataFusionQuery(post_sql, "_w", final.schema, f"stage {stage_id}")
        self.output_schema = self.post.output_schema
        if changelog:
            self.output_schema = self.output_schema.append(pa.field(SIGN, pa.int64(), False))
        self.output_time_column: str | None = None
        self.key_columns = key_columns

    # -- partial aggregates ------------------------------------------------------------
    def _input(self, table: pa.Table) -> pa.Table:
        cols: dict[str, Any] = {}
        for k in self.keys:
            col = table.column(k)
            cols[k] = pc.fill_null(col, self._fill[k])
            cols[f"{k}_null"] = pc.is_null(col)
        if not self.keys:
            cols[_NOKEY] = pa.array([0] * table.num_rows, pa.int8())
        sign = table.column(SIGN) if self.signed else None
        for i, a in enumerate(self.aggregates):
            if a.column is None:
                cols[f"__a{i}"] = sign if sign is not None else pa.nulls(table.num_rows, pa.int8())
                continue
            col = table.column(a.column)
            if a.func == "avg":
                col = pc.cast(col, pa.float64())
            if sign is None:
                cols[f"__a{i}"] = col
                continue
            # a changelog: rows with sign -1 take their values back
            if a.func in ("sum", "avg"):
                cols[f"__a{i}"] = pc.multiply(col, pc.cast(sign, col.type))
            if a.func in ("count", "avg"):
                zero = pa.scalar(0, sign.type)
                cols[f"__v{i}"] = pc.if_else(pc.is_valid(col), sign, zero)
        return pa.table(cols)

    def _specs(self) -> list[tuple[str, str, Any, str, str, Any]]:
        """(input column, batch function, options, partial name, merge function, options)."""
        valid = pc.CountOptions("only_valid")
        one = pc.ScalarAggregateOptions(min_count=1)
        specs: list[tuple[str, str, Any, str, str, Any]] = []
        for i, a in enumerate(self.aggregates):
            c = f"__a{i}"
            if self.signed:  # counts are sums of signs (module docstring)
                if a.func in ("sum", "avg"):
                    specs.append((c, "sum", one, f"__p{i}_s", "sum", one))
                if a.func in ("count", "avg"):
                    c = c if a.column is None else f"__v{i}"
                    specs.append((c, "sum", None, f"__p{i}_n", "sum", None))
                continue
            if a.func == "count":
                mode = pc.CountOptions("all") if a.column is None else valid
                specs.append((c, "count", mode, f"__p{i}_n", "sum", None))
            elif a.func == "sum":
                specs.append((c, "sum", one, f"__p{i}_s", "sum", one))
            elif a.func == "avg":
                specs.append((c, "sum", one, f"__p{i}_s", "sum", one))
                specs.append((c, "count", valid, f"__p{i}_n", "sum", None))
            elif a.func in ("min", "max"):
                specs.append((c, a.func, one, f"__p{i}_m", a.func, one))
        return specs

    @staticmethod
    def _group(table: pa.Table, by: list[str], specs: list[tuple[str, str, Any, str]]) -> pa.Table:
        aggs = [(c, f, o) if o is not None else (c, f) for c, f, o, _ in specs]
        res = table.group_by(by, use_threads=False).aggregate(aggs)
        cols = {k: res.column(k) for k in by}
        for c, f, _, name in specs:
            cols[name] = res.column(f"{c}_{f}")
        return pa.table(cols)

    def _partials(self, table: pa.Table) -> pa.Table:
        specs = [(c, f, o, n) for c, f, o, n, _, _ in self._specs()]
        return self._group(table, self._gkeys, specs)

    def _merged(self, partials: pa.Table) -> pa.Table:
        specs = [(n, mf, mo, n) for _, _, _, n, mf, mo in self._specs()]
        return self._group(partials, self._gkeys, specs)

    def _distinct_of(self, table: pa.Table, i: int) -> pa.Table:
        return _unique(table.select([*self._gkeys, f"__a{i}"]))

    def _touched(self, table: pa.Table, keys: pa.Table) -> pa.Table:
        """The rows of ``table`` whose group is in ``keys`` (a semi join: ``keys`` is hashed,
        ``table`` probed)."""
        if table.num_rows == 0:
            return table
        return table.join(keys, self._gkeys, join_type="left semi", use_threads=False).select(
            table.column_names
        )

    def _with_counts(self, groups: pa.Table, distinct: dict[int, pa.Table]) -> pa.Table:
        """``groups`` plus ``__p<i>_d``: the count of the distinct rows ``distinct[i]``
        (unique, non-null values) of each of its groups."""
        if not self._distinct:
            return groups
        valid = pc.CountOptions("only_valid")
        extra = []
        for i in self._distinct:
            d = distinct[i]
            extra.append(self._group(d, self._gkeys, [(f"__a{i}", "count", valid, f"__p{i}_d")]))
        marker = pa.array([True] * groups.num_rows, pa.bool_())
        table = pa.concat_tables(
            [groups.append_column("__in", marker), *extra], promote_options="default"
        )
        specs: list[tuple[str, str, Any, str]] = [
            (c, "max", None, c) for c in groups.column_names if c not in self._gkeys
        ]
        specs += [(f"__p{i}_d", "max", None, f"__p{i}_d") for i in self._distinct]
        specs.append(("__in", "any", None, "__in"))
        merged = self._group(table, self._gkeys, specs)
        merged = merged.filter(pc.fill_null(merged.column("__in"), False))
        return merged.drop_columns(["__in"])

    def _final(self, partial: pa.Table) -> pa.Table:
        cols: dict[str, Any] = {}
        for k in self.keys:
            value = partial.column(k)
            cols[k] = pc.if_else(partial.column(f"{k}_null"), pa.scalar(None, value.type), value)
        for i, a in enumerate(self.aggregates):
            if a.func == "count":
                cols[f"__g{i}"] = partial.column(f"__p{i}_n")
            elif a.func == "count_distinct":
                cols[f"__g{i}"] = pc.cast(pc.fill_null(partial.column(f"__p{i}_d"), 0), pa.int64())
            elif a.func == "sum":
                cols[f"__g{i}"] = partial.column(f"__p{i}_s")
            elif a.func == "avg":
                n = partial.column(f"__p{i}_n")
                nz = pc.if_else(pc.equal(n, 0), None, n)
                cols[f"__g{i}"] = pc.divide(partial.column(f"__p{i}_s"), pc.cast(nz, pa.float64()))
            else:
                cols[f"__g{i}"] = partial.column(f"__p{i}_m")
        return pa.table(cols)

    def _compact(self) -> None:
        """Merges ``pending`` into ``base`` (and the distinct rows likewise)."""
        if self._pending.num_rows:
            both = pa.concat_tables([self._base, self._pending])
            self._base = self._merged(both).combine_chunks()
            self._pending = self._empty
        for i in self._distinct:
            if self._dpending[i].num_rows:
                both = pa.concat_tables([self._dbase[i], self._dpending[i]])
                self._dbase[i] = _unique(both).combine_chunks()
                self._dpending[i] = self._empty_distinct[i]

    # -- Stage -----------------------------------------------------------------------
    def process(self, input_name: str, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        if batch.num_rows == 0:
            return []
        table = self._input(self.pre.run(batch))
        if table.num_rows == 0:
            return []
        new = self._partials(table)
        keys = new.select(self._gkeys)
        old = pa.concat_tables(
            [self._touched(self._base, keys), self._touched(self._pending, keys)]
        )
        chg, had = "__chg", "__had"
        partial_names = [n for _, _, _, n, _, _ in self._specs()]
        old_t = old.append_column(chg, pa.array([False] * old.num_rows, pa.bool_()))
        new_t = new.append_column(chg, pa.array([True] * new.num_rows, pa.bool_()))
        specs = [(n, mf, mo, n) for _, _, _, n, mf, mo in self._specs()]
        specs.append((chg, "any", None, chg))
        if self.changelog:  # keep the old partials of the groups that change, to retract
            old_t = old_t.append_column(had, pa.array([True] * old.num_rows, pa.bool_()))
            new_t = new_t.append_column(had, pa.array([False] * new.num_rows, pa.bool_()))
            for n in partial_names:
                old_t = old_t.append_column(f"__o{n}", old.column(n))
                new_t = new_t.append_column(
                    f"__o{n}", pa.nulls(new.num_rows, old.schema.field(n).type)
                )
            specs.append((had, "any", None, had))
            one = pc.ScalarAggregateOptions(min_count=1)
            specs += [(f"__o{n}", mf, one, f"__o{n}") for _, _, _, n, mf, _ in self._specs()]
        both = pa.concat_tables([old_t, new_t], promote_options="permissive")
        changed = self._group(both, self._gkeys, specs)
        extra = [chg] + ([had] + [f"__o{n}" for n in partial_names] if self.changelog else [])
        # the distinct rows of the batch's groups, before and after it
        d_before: dict[int, pa.Table] = {}
        d_after: dict[int, pa.Table] = {}
        for i in self._distinct:
            before = pa.concat_tables(
                [self._touched(self._dbase[i], keys), self._touched(self._dpending[i], keys)]
            )
            d_before[i] = _unique(before)
            d_batch = self._distinct_of(table, i)
            d_after[i] = _unique(pa.concat_tables([d_before[i], d_batch]))
            self._dpending[i] = pa.concat_tables([self._dpending[i], d_batch])
        retract: pa.Table | None = None
        if self.changelog:
            prior = changed.filter(changed.column(had))
            prior = prior.select(self._gkeys + [f"__o{n}" for n in partial_names])
            prior = prior.rename_columns(self._gkeys + partial_names)
            retract = self._final(self._with_counts(prior, d_before))
        emitted = self._final(self._with_counts(changed.drop_columns(extra), d_after))
        self._pending = pa.concat_tables([self._pending, new])
        if self._pending.num_rows > max(self._base.num_rows, _COMPACT_MIN_ROWS) or any(
            self._dpending[i].num_rows > max(self._dbase[i].num_rows, _COMPACT_MIN_ROWS)
            for i in self._distinct
        ):
            self._compact()
        if retract is None:
            return _batches(self.post.run(emitted))
        out = []
        for rows, sign in ((retract, -1), (emitted, 1)):
            if rows.num_rows == 0:
                continue
            result = self.post.run(rows)
            signs = pa.array([sign] * result.num_rows, pa.int64())
            out.append(pa.Table.from_arrays([*result.columns, signs], schema=self.output_schema))
        return _batches(pa.concat_tables(out)) if out else []

    def advance_watermark(self, input_name: str, watermark_ms: int) -> list[pa.RecordBatch]:
        return []

    def output_watermark(self) -> int | None:
        return None

    def snapshot(self) -> bytes:
        self._compact()
        parts = {"groups": _ipc(self._base)}
        for i, d in self._dbase.items():
            parts[f"distinct{i}"] = _ipc(d)
        outer = pa.table(
            {
                "part": pa.array(list(parts), pa.utf8()),
                "ipc": pa.array(list(parts.values()), pa.binary()),
            }
        ).replace_schema_metadata(
            {_UPDATING_META: json.dumps({"version": _UPDATING_VERSION}).encode()}
        )
        return _ipc(outer)

    def restore(self, data: bytes) -> None:
        try:
            outer = pa.ipc.open_stream(data).read_all()
            meta = json.loads((outer.schema.metadata or {})[_UPDATING_META])
            if meta.get("version") != _UPDATING_VERSION:
                raise ValueError(f"version {meta.get('version')}, this code reads 1")
            parts = {
                name: pa.ipc.open_stream(blob).read_all()
                for name, blob in zip(
                    outer.column("part").to_pylist(), outer.column("ipc").to_pylist(), strict=True
                )
            }
            groups = parts["groups"]
            if groups.schema != self._empty.schema:
                raise ValueError(f"groups have columns {groups.schema}, the plan has others")
            distinct = {i: parts[f"distinct{i}"] for i in self._distinct}
            for i, d in distinct.items():
                if d.schema != self._empty_distinct[i].schema:
                    raise ValueError(f"distinct rows have columns {d.schema}")
        except (pa.ArrowInvalid, KeyError, ValueError, TypeError, AttributeError) as exc:
            raise PlanError(
                f"stage {self.stage_id}: not a snapshot of this aggregate ({exc}); was the "
                "query changed?"
            ) from None
        self._base, self._pending = groups, self._empty
        self._dbase = distinct
        self._dpending = dict(self._empty_distinct)


def _unique(table: pa.Table) -> pa.Table:
    by = table.column_names
    return table.group_by(by, use_threads=False).aggregate([]).select(by)


def _zero(typ: pa.DataType) -> pa.Scalar | None:
    """A value of ``typ`` to hold a null group key's place (None: no such value here)."""
    if pa.types.is_boolean(typ):
        return pa.scalar(False, typ)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return pa.scalar(0, pa.int64()).cast(typ)
    if pa.types.is_decimal(typ):
        return pa.scalar(decimal.Decimal(0), typ)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return pa.scalar("", typ)
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        return pa.scalar(b"", typ)
    if pa.types.is_timestamp(typ) or pa.types.is_duration(typ) or pa.types.is_time64(typ):
        return pa.scalar(0, pa.int64()).cast(typ)
    if pa.types.is_date32(typ) or pa.types.is_time32(typ):
        return pa.scalar(0, pa.int32()).cast(typ)
    return None


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
