"""Join stages of continuous queries: ``plan_join`` picks one of four algorithms (issue 9).

Sans-I/O like every stage (``sql.continuous.pipeline.Stage``): fed Arrow batches of its two
inputs (``process``) and their watermarks (``advance_watermark``, called after the batches
that raised them), it returns the joined rows; ``snapshot()`` / ``restore()`` carry its whole
state. Output columns are every column of the left input then of the right, named
``<alias>__<column>`` (right columns nullable for a LEFT join; string_view / binary_view
columns become string / binary, which Arrow's take, filter and hash join handle); results
are append-only (``key_columns`` empty). ``output_time_column`` is the left input's time
column renamed (``A__dateTime``): the left side is the one the query is "about" (a LEFT
join keeps all of its rows), and its time is defined for every output row, the right one
not for an unmatched row. ``stats`` (``JoinStats``) counts rows in, out, late and with a null time;
``buffered_rows()`` gives the state's size.

The algorithm (``algorithm``), chosen from the inputs and the condition
(``sql.continuous.join_condition`` reads equi pairs and time bounds off it):

``lookup`` - the right input is a table (``right.is_table``): stream-table join.
    State: the table's latest row per key (``right.key_columns``; rows are upserts, a row
    whose declared columns other than the key are all null deletes its key: how a
    tombstone arrives). Each stream batch is joined at arrival against the table as it is
    then (processing order, as Flink's lookup join), so a table row that arrives later does
    not join earlier stream rows. LEFT: unmatched stream rows are emitted at once with
    nulls. The condition needs equi pairs and they must cover the table's key columns,
    unless the key is the record key ``_key`` (not a declared column; then every current
    row the equi pairs match joins).
    Output watermark: the stream's.

``window`` - both inputs are windowed sub-queries (``window_start`` / ``window_end``
    columns, or fields marked ``streamhouse.window: start|end`` in their metadata) and the
    condition equates both pairs. Rows are buffered until ``min(left, right watermark) >=
    window end`` (an upstream window aggregate has emitted every window whose end is at or
    below its watermark); then the window's rows of both sides are joined (hash join on the
    equi pairs, window bounds included), emitted (LEFT: with the unmatched left rows) and
    dropped. A row of an already emitted window is late: dropped and counted. Nothing is
    emitted before both inputs have a watermark. (An input whose time column is its window
    start has a watermark a window size behind, as the planner gives it: windows then close
    that much later, never too early.)

``interval`` - otherwise, both inputs streams: symmetric hash join, each new batch of one
    side joined with the other side's buffer, then buffered. A conjunct bounding one side's
    time by the other side's columns (``B.t BETWEEN A.t AND A.t + INTERVAL '10' SECOND``,
    ``B.t <= A.expires``, ``A.t >= B.t - INTERVAL '5' SECOND``) gives each row of the other
    side a bound (``X.t <= bound``); once X's watermark passes it (``bound < watermark``)
    the row is pruned: no later X row can match it. LEFT needs the left rows bounded: an
    unmatched left row is emitted (with nulls) when it is pruned. A row below its own
    side's watermark when it arrives is late, dropped and counted, whenever the other side
    is pruned (it could have matched pruned rows; dropping it keeps results exactly those
    of the join of the rows kept). A row with a null time can never satisfy a bound: it is
    dropped (LEFT: emitted unmatched at once) and counted.

``regular`` - the same symmetric join with no bound on either side: **both buffers are kept
    for ever** (memory grows with the inputs, as in Flink's regular joins without a state
    TTL) and nothing is late. Only INNER: a LEFT join of two streams needs a bound to know
    when a left row has no match. Since any kept left row may still match, the output
    watermark stays at the earliest left row's time: windows over a regular join's output
    never close (bound the join in time to window its output; Flink drops the time
    attribute of such joins altogether).

Output watermark of ``interval``/``regular``/``window``: ``min(left watermark, earliest left
time still buffered)``: every later output row is a buffered left row or a later left row.

Matching: every join is a pyarrow (Acero, one thread) hash join of a batch against the
other side's buffer on the equi pairs alone (the key columns and row numbers: keys of
different types are cast to a common one; no equi pair: a constant key, so a cross
product), then, when the condition has more than equalities of equal-typed columns, the whole
condition is evaluated on the candidate pairs: by Arrow compute calls when it is made of
comparisons, ``+ -``, intervals, ``BETWEEN``, ``AND OR NOT`` and ``IS NULL`` over columns and
literals (``join_condition.compile_residual``), else (or once Arrow cannot combine the
types) by DataFusion (postgres-dialect SQL over the ``<alias>__<column>`` names it uses);
then the matching rows of both sides are taken. No loop runs per row.

Costs: a batch costs a hash join against the other side's whole buffer (the smaller of the
two is hashed), so O(buffer) per batch: bounded by time for ``interval`` and ``window``,
growing for ``regular``, and the table's size for ``lookup`` (whose upserts rewrite only a
narrow index of keys and row positions, by a hash lookup of the new keys when the table has
one key column; stale wide rows are dropped when they are most of those kept; with one
integer equi key the index is kept sorted by it and a stream batch binary-searches it):
with a 1,000,000-row table, 3 ms per 1,000-row stream batch, 50 ms when 20 upserts came
before it. Output rows carry every column of both sides: the planner's projection above the join
decides what survives, so wide inputs (Nexmark's ``extra``) make output the larger
cost. Measured on this repo's 2 shared cores, the stage alone fed Nexmark streams in
1,000-row batches at 10,000 events/s of event time, watermarks 4 s behind: bids to
auctions, interval LEFT join, 590,000 input rows/s (980,000 rows, 908,000 out, peak state
40,000 rows); auction x person lookup 370,000-850,000 rows/s for tables of 100,000-20,000
rows; regular 150,000-240,000 (state of 400,000-80,000 rows).

Snapshot format (Arrow IPC)
---------------------------
One Arrow IPC stream holding a table ``part: utf8, ipc: binary``; its schema metadata
``streamhouse.joins`` is JSON ``{"version": 1, "algorithm", "stage_id", "fingerprint"
(sha256 of the algorithm, kind, output schema, keys, bounds and residual: a snapshot is only
restored into the same join), "watermarks": [left, right] (null before the first),
"closed" (window: the last window end emitted, or null), "next_id" (the next left row id),
"stats": {...}}``. Each row is one buffer as an Arrow IPC stream: ``left``,
``right`` (the prefixed columns plus hidden ones: ``__lid`` int64 left row id (LEFT joins),
``__lb`` / ``__rb`` int64 prune bound in ms (bounded sides), ``__lwe`` / ``__rwe`` int64
window end in ms (window), ``__lk<i>`` / ``__rk<i>`` cast join keys, ``__lk`` / ``__rk``
constant keys), ``matched`` (``__lid`` of buffered left rows that have matched: LEFT
interval joins) and ``table`` (lookup: the table's current rows).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import datafusion
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot.expressions as exp

from sql.continuous.join_condition import (
    Bound,
    ConditionInfo,
    Evaluator,
    analyse_condition,
    compile_residual,
    residual_sql,
    window_columns,
)
from sql.continuous.pipeline import PlanError, PlannedInput, Stage
from sql.windows import WindowError, event_times_ms

__all__ = ["JoinError", "JoinStats", "LookupJoin", "SymmetricJoin", "WindowJoin", "plan_join"]

SNAPSHOT_VERSION = 1
_META_KEY = b"streamhouse.joins"
_INT64_MIN = np.iinfo(np.int64).min
_COMPACT_CHUNKS = 16
_SIDE = ("l", "r")


class JoinError(ValueError):
    """An input batch or snapshot a join stage refuses; the message says what to do."""


@dataclass
class JoinStats:
    rows_in: int = 0
    rows_out: int = 0
    late_rows_dropped: int = 0
    null_time_rows: int = 0


def plan_join(
    left: PlannedInput,
    right: PlannedInput,
    condition: exp.Expression | None,
    kind: str,
    stage_id: str,
) -> Stage:
    """The join stage of ``left JOIN right ON condition`` (module docstring: which one)."""
    if kind not in ("inner", "left"):
        raise PlanError(
            f"{kind.upper()} JOIN cannot run continuously; use JOIN or LEFT JOIN "
            "(swap the inputs for a RIGHT JOIN)"
        )
    if left.alias == right.alias:
        raise PlanError(
            f"both sides of a join are named {left.alias}; give each input its own alias"
        )
    if left.is_table:
        raise PlanError(
            f"the left side of a join ({left.alias}) is a table; a continuous join reads a "
            "stream on the left and looks rows up in a table on the right: put the table second"
        )
    if left.key_columns or (right.key_columns and not right.is_table):
        updating = left.alias if left.key_columns else right.alias
        raise PlanError(
            f"{updating} is an updating result (upserts by key), which a join cannot take; "
            "join the streams first and aggregate the join's output"
        )
    info = analyse_condition(condition, left, right)
    if right.is_table:
        return LookupJoin(left, right, info, kind, stage_id)
    wl, wr = window_columns(left.schema), window_columns(right.schema)
    if wl and wr and (wl[0], wr[0]) in info.equi and (wl[1], wr[1]) in info.equi:
        return WindowJoin(left, right, info, kind, stage_id, (wl[1], wr[1]))
    if kind == "left" and not info.bounds[0]:
        raise PlanError(
            f"a LEFT JOIN of two streams needs a time bound on {right.alias}'s time column "
            f"in terms of {left.alias} (e.g. {right.alias}.t BETWEEN {left.alias}.t AND "
            f"{left.alias}.t + INTERVAL '10' SECOND), so a {left.alias} row's wait for a "
            "match ends; or join windowed results on window_start and window_end"
        )
    return SymmetricJoin(left, right, info, kind, stage_id)


def _output_schema(left: PlannedInput, right: PlannedInput, kind: str) -> pa.Schema:
    fields = [f.with_name(f"{left.alias}__{f.name}").with_type(_plain(f.type)) for f in left.schema]
    fields += [
        f.with_name(f"{right.alias}__{f.name}")
        .with_type(_plain(f.type))
        .with_nullable(f.nullable or kind == "left")
        for f in right.schema
    ]
    names = [f.name for f in fields]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise PlanError(
            f"the join's output columns would repeat {', '.join(clash)}; rename the inputs "
            "(alias) so that <alias>__<column> names differ"
        )
    return pa.schema(fields)


def _common_type(a: pa.DataType, b: pa.DataType, what: str) -> pa.DataType:
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return pa.int64()
    if (pa.types.is_integer(a) or pa.types.is_floating(a)) and (
        pa.types.is_integer(b) or pa.types.is_floating(b)
    ):
        return pa.float64()
    strings = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if any(t(a) for t in strings) and any(t(b) for t in strings):
        return pa.large_string()
    binaries = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)
    if any(t(a) for t in binaries) and any(t(b) for t in binaries):
        return pa.large_binary()
    if pa.types.is_timestamp(a) and pa.types.is_timestamp(b):
        return pa.timestamp("us", a.tz)
    raise PlanError(f"the join compares {what} of types {a} and {b}; CAST one side to the other's")


def _plain(typ: pa.DataType) -> pa.DataType:
    """The type a join keeps a column as: view types (which DataFusion stages may produce)
    as their plain kind, since Arrow's take, filter and hash join do not take them."""
    if pa.types.is_string_view(typ):
        return pa.string()
    if pa.types.is_binary_view(typ):
        return pa.binary()
    return typ


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return None
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _latest_per_key(index: pa.Table, keys: list[str]) -> pa.Table:
    """The rows of ``index`` with the highest ``__pos`` of their key."""
    if index.num_rows < 2:
        return index
    latest = index.group_by(keys, use_threads=False).aggregate([("__pos", "max")])
    return index.filter(pc.is_in(index.column("__pos"), value_set=latest.column("__pos_max")))


def _ms_column(table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        return event_times_ms(table.column(column))
    except WindowError as exc:
        raise JoinError(f"join time column {column}: {exc}") from exc


class _JoinBase:
    """Shared by the algorithms: input checks, prefixing, hash join + residual, emission,
    snapshot framing."""

    algorithm = ""

    def __init__(
        self,
        left: PlannedInput,
        right: PlannedInput,
        info: ConditionInfo,
        kind: str,
        stage_id: str,
    ) -> None:
        self.sides = (left, right)
        self.kind = kind
        self.stage_id = stage_id
        self.inputs: tuple[str, ...] = (left.input_name, right.input_name)
        self.key_columns: tuple[str, ...] = ()
        self.output_schema = _output_schema(left, right, kind)
        self.output_time_column = f"{left.alias}__{left.time_column}" if left.time_column else None
        self.stats = JoinStats()
        self.info = info
        self._watermarks: list[int | None] = [None, None]
        self._next_id = 0
        self._left_names = [f"{left.alias}__{n}" for n in left.schema.names]
        self._right_fields = list(self.output_schema)[len(left.schema) :]
        # Join keys: per side, the prefixed (or cast hidden) columns, pairwise aligned.
        self._keys: tuple[list[str], list[str]] = ([], [])
        self._casts: tuple[list[tuple[str, str, pa.DataType]], ...] = ([], [])
        for i, (lc, rc) in enumerate(info.equi):
            lt, rt = left.schema.field(lc).type, right.schema.field(rc).type
            ln, rn = f"{left.alias}__{lc}", f"{right.alias}__{rc}"
            lt, rt = _plain(lt), _plain(rt)
            if lt == rt:
                self._keys[0].append(ln)
                self._keys[1].append(rn)
            else:
                common = _common_type(lt, rt, f"{left.alias}.{lc} and {right.alias}.{rc}")
                self._casts[0].append((ln, f"__lk{i}", common))
                self._casts[1].append((rn, f"__rk{i}", common))
                self._keys[0].append(f"__lk{i}")
                self._keys[1].append(f"__rk{i}")
        self._constant_key = not info.equi
        if self._constant_key:
            self._keys = (["__lk"], ["__rk"])
        self._residual: str | None = None
        self._residual_columns: list[str] = []
        self._evaluator: Evaluator | None = None
        if info.residual:
            residual = exp.and_(*info.residual)
            self._residual, self._residual_columns = residual_sql(residual, (left, right))
            self._evaluator = compile_residual(residual, (left, right))
        self._ctx: datafusion.SessionContext | None = None
        if self._residual is not None:
            self._check_residual()

    def _check_residual(self) -> None:
        """Plan the residual condition in DataFusion over no rows, so SQL it cannot run is
        refused now rather than at the first match."""
        fields = [self.output_schema.field(name) for name in self._residual_columns]
        empty = pa.RecordBatch.from_pylist([], schema=pa.schema([*fields, ("__row", pa.int64())]))
        try:
            self._ctx = datafusion.SessionContext()
            self._ctx.register_record_batches("candidates", [[empty]])
            self._ctx.sql(f'SELECT "__row" FROM candidates WHERE {self._residual}').collect()
        except Exception as exc:
            raise PlanError(
                f"the join condition {self._residual} cannot be evaluated ({exc}); rewrite it "
                "with comparisons, arithmetic and functions DataFusion knows"
            ) from None
        finally:
            if self._ctx is not None and self._ctx.table_exist("candidates"):
                self._ctx.deregister_table("candidates")

    # -- the Stage surface shared by all ----------------------------------------------------

    def output_watermark(self) -> int | None:
        return self._watermarks[0]

    @property
    def late_rows_dropped(self) -> int:
        """Rows dropped as late (what ``Plan.stats`` sums over its stages)."""
        return self.stats.late_rows_dropped

    def buffered_rows(self) -> tuple[int, int]:
        """Rows held per side (left, right): the state's size."""
        return (0, 0)

    def _sides_of(self, input_name: str) -> list[int]:
        sides = [i for i, name in enumerate(self.inputs) if name == input_name]
        if not sides:
            raise JoinError(
                f"join stage {self.stage_id} has inputs {' and '.join(self.inputs)}, "
                f"not {input_name}; route the batch to the stage that reads it"
            )
        return sides

    def _set_watermark(self, side: int, watermark_ms: int) -> bool:
        current = self._watermarks[side]
        if current is not None and watermark_ms <= current:
            return False
        self._watermarks[side] = int(watermark_ms)
        return True

    # -- batches ----------------------------------------------------------------------------

    def _prefixed(self, side: int, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        """The batch's declared columns renamed ``<alias>__<column>``, plus cast join keys."""
        inp = self.sides[side]
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        columns = []
        for f in inp.schema:
            idx = table.schema.get_field_index(f.name)
            if idx < 0 or table.schema.field(idx).type != f.type:
                got = "no such column" if idx < 0 else f"type {table.schema.field(idx).type}"
                raise JoinError(
                    f"join stage {self.stage_id}: batch of {inp.input_name} has {got} for "
                    f"{f.name} (planned {f.type}); feed batches of the planned schema"
                )
            column = table.column(idx)
            columns.append(column if _plain(f.type) == f.type else column.cast(_plain(f.type)))
        names = [f"{inp.alias}__{n}" for n in inp.schema.names]
        out = pa.Table.from_arrays(columns, names=names)
        for source, hidden, typ in self._casts[side]:
            out = out.append_column(hidden, pc.cast(out.column(source), typ))
        if self._constant_key:
            out = out.append_column(self._keys[side][0], pa.array(np.zeros(len(out), np.int8)))
        return out

    def _with_ids(self, table: pa.Table) -> pa.Table:
        ids = np.arange(self._next_id, self._next_id + table.num_rows, dtype=np.int64)
        self._next_id += table.num_rows
        return table.append_column("__lid", pa.array(ids))

    def _match(
        self, left: pa.Table, right: pa.Table, right_rows: pa.Table | None = None
    ) -> pa.Table | None:
        """Pairs of left and right rows satisfying the condition (both sides' columns).

        The hash join runs on the keys and row numbers alone (wide payloads such as long
        strings are never hashed or copied by it); the residual condition sees only the
        columns it names; then each side's rows are taken once. With ``right_rows``,
        ``right`` is an index: its keys and ``__pos``, the row of ``right_rows`` it stands
        for."""
        if not left.num_rows or not right.num_rows:
            return None
        found = self._pairs(left, right)
        if found is None:
            return None
        li, ri = found
        if right_rows is not None:
            ri, right = pc.take(right.column("__pos"), ri), right_rows
        if self._residual is not None:
            keep = self._residual_rows(left, right, li, ri)
            if keep is None:
                return None
            li, ri = li.take(keep), ri.take(keep)
        arrays = [c.take(li) for c in left.columns] + [c.take(ri) for c in right.columns]
        return pa.Table.from_arrays(arrays, names=left.schema.names + right.schema.names)

    def _pairs(self, left: pa.Table, right: pa.Table) -> tuple[Any, Any] | None:
        """Row numbers (left, right) of the rows whose equi keys are equal."""
        narrow = [
            pa.table(
                [table.column(k).combine_chunks() for k in keys]
                + [pa.array(np.arange(table.num_rows))],
                names=[*keys, row],
            )
            for table, keys, row in ((left, self._keys[0], "__li"), (right, self._keys[1], "__ri"))
        ]
        # Acero builds its hash table on the second table: give it the smaller one.
        first, second = narrow if left.num_rows >= right.num_rows else narrow[::-1]
        keys = self._keys if first is narrow[0] else self._keys[::-1]
        # one thread: the runner has a process per query, and Acero's pool costs more than
        # it gives on batch-sized joins
        pairs = first.join(
            second, keys[0], keys[1], join_type="inner", coalesce_keys=False, use_threads=False
        )
        if not pairs.num_rows:
            return None
        return pairs.column("__li"), pairs.column("__ri")

    def _residual_rows(
        self, left: pa.Table, right: pa.Table, li: pa.ChunkedArray, ri: pa.ChunkedArray
    ) -> pa.Array | None:
        """Positions among the candidate pairs (li, ri) where the condition is true: by
        Arrow compute calls when the condition compiles to them, else by DataFusion."""
        columns = [
            (left if name in left.schema.names else right)
            .column(name)
            .take(li if name in left.schema.names else ri)
            for name in self._residual_columns
        ]
        if self._evaluator is not None:
            try:
                mask = self._evaluator(dict(zip(self._residual_columns, columns, strict=True)))
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
                self._evaluator = None  # types Arrow does not combine: DataFusion from now on
            else:
                if isinstance(mask, pa.Scalar):
                    mask = pa.array(np.full(len(li), mask.as_py() is True))
                found = pc.indices_nonzero(pc.fill_null(mask, False)).cast(pa.int64())
                return found if len(found) else None
        if self._ctx is None:
            self._ctx = datafusion.SessionContext()
        candidates = pa.table(
            [*columns, pa.array(np.arange(len(li)))], names=[*self._residual_columns, "__row"]
        )
        self._ctx.register_record_batches("candidates", [candidates.to_batches()])
        try:
            result = self._ctx.sql(
                f'SELECT "__row" FROM candidates WHERE {self._residual}'
            ).collect()
        except Exception as exc:
            raise JoinError(
                f"join stage {self.stage_id}: DataFusion could not evaluate the join condition "
                f"{self._residual} ({exc}); simplify the condition"
            ) from exc
        finally:
            self._ctx.deregister_table("candidates")
        rows = [b.column(0) for b in result if b.num_rows]
        if not rows:
            return None
        found = pa.chunked_array(rows).combine_chunks()
        return found.take(pc.sort_indices(found))

    def _emit(self, tables: list[pa.Table]) -> list[pa.RecordBatch]:
        tables = [t for t in tables if t is not None and t.num_rows]
        if not tables:
            return []
        parts = [t.select(self.output_schema.names).cast(self.output_schema) for t in tables]
        out = pa.concat_tables(parts).combine_chunks()
        self.stats.rows_out += out.num_rows
        return [b for b in out.to_batches() if b.num_rows]

    def _with_nulls(self, left_rows: pa.Table) -> pa.Table:
        n = left_rows.num_rows
        columns = [left_rows.column(name) for name in self._left_names]
        columns += [pa.nulls(n, f.type) for f in self._right_fields]
        return pa.Table.from_arrays(columns, schema=self.output_schema)

    def _unmatched(self, left_rows: pa.Table, matched: pa.Table | None) -> pa.Table | None:
        """LEFT join: the rows of ``left_rows`` whose ``__lid`` is not among ``matched``'s."""
        if self.kind != "left" or not left_rows.num_rows:
            return None
        if matched is not None and matched.num_rows:
            hit = pc.is_in(left_rows.column("__lid"), value_set=matched.column("__lid"))
            left_rows = left_rows.filter(pc.invert(hit))
        return self._with_nulls(left_rows) if left_rows.num_rows else None

    # -- snapshot ---------------------------------------------------------------------------

    def _fingerprint(self) -> str:
        text = json.dumps(
            [
                self.algorithm,
                self.kind,
                self.output_schema.to_string(show_schema_metadata=False),
                self._keys,
                [[asdict(b) for b in side] for side in self.info.bounds],
                self._residual,
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def _state_parts(self) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        raise NotImplementedError

    def _load_parts(self, parts: dict[str, pa.Table], meta: dict[str, Any]) -> None:
        raise NotImplementedError

    def snapshot(self) -> bytes:
        """The whole state as bytes (module docstring: the format)."""
        parts, extra = self._state_parts()
        meta = {
            "version": SNAPSHOT_VERSION,
            "algorithm": self.algorithm,
            "stage_id": self.stage_id,
            "fingerprint": self._fingerprint(),
            "watermarks": self._watermarks,
            "next_id": self._next_id,
            "stats": asdict(self.stats),
            **extra,
        }
        schema = pa.schema([("part", pa.string()), ("ipc", pa.binary())]).with_metadata(
            {_META_KEY: json.dumps(meta).encode()}
        )
        names = sorted(parts)
        table = pa.table([names, [_ipc(parts[n]) for n in names]], schema=schema)
        return _ipc(table)

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot's; JoinError when it is damaged or belongs to
        another join."""
        try:
            table = _from_ipc(data)
            meta = json.loads((table.schema.metadata or {})[_META_KEY])
            parts = {
                name: _from_ipc(blob)
                for name, blob in zip(
                    table.column("part").to_pylist(), table.column("ipc").to_pylist(), strict=True
                )
            }
        except (pa.ArrowInvalid, KeyError, ValueError, TypeError) as exc:
            raise JoinError(
                f"join stage {self.stage_id}: the snapshot is damaged or not a join snapshot "
                f"({exc}); restore the checkpoint the query wrote, or drop and recreate it"
            ) from exc
        if meta.get("version") != SNAPSHOT_VERSION or meta.get("algorithm") != self.algorithm:
            raise JoinError(
                f"join stage {self.stage_id}: the snapshot is a {meta.get('algorithm')} join "
                f"version {meta.get('version')}, this stage is a {self.algorithm} join version "
                f"{SNAPSHOT_VERSION}; drop and recreate the query"
            )
        if meta.get("fingerprint") != self._fingerprint():
            raise JoinError(
                f"join stage {self.stage_id}: the snapshot was taken by a join with other "
                "inputs or condition; drop and recreate the query to start from its new plan"
            )
        self._watermarks = list(meta["watermarks"])
        self._next_id = int(meta["next_id"])
        self.stats = JoinStats(**meta["stats"])
        self._load_parts(parts, meta)


# -- lookup: stream x table ------------------------------------------------------------------


class LookupJoin(_JoinBase):
    """Stream-table join against the table's latest row per key (module docstring)."""

    algorithm = "lookup"

    def __init__(
        self,
        left: PlannedInput,
        right: PlannedInput,
        info: ConditionInfo,
        kind: str,
        stage_id: str,
    ) -> None:
        keys = right.key_columns or (("_key",) if "_key" in right.schema.names else ())
        if not keys:
            raise PlanError(
                f"table {right.alias} has no key columns; declare it as a TABLE (keyed by the "
                "record key) to join it"
            )
        missing = [k for k in keys if k not in right.schema.names]
        if missing:
            raise PlanError(f"table {right.alias} has no key column {', '.join(missing)}")
        if not info.equi:
            raise PlanError(
                f"a join with table {right.alias} needs equality conditions between "
                f"{left.alias}'s columns and {right.alias}'s key (e.g. {left.alias}.x = "
                f"{right.alias}.{keys[0]}); non-equi joins with tables cannot run continuously"
            )
        covered = {rc for _, rc in info.equi}
        uncovered = [k for k in keys if k not in covered and k != "_key"]
        if uncovered:
            raise PlanError(
                f"the join condition does not cover table {right.alias}'s key column(s) "
                f"{', '.join(uncovered)}; add {right.alias}.{uncovered[0]} = "
                f"{left.alias}.<column> to the ON clause"
            )
        super().__init__(left, right, info, kind, stage_id)
        self._table_keys = [f"{right.alias}__{k}" for k in keys]
        declared = [n for n in right.schema.names if not n.startswith("_") and n not in keys]
        self._declared = [f"{right.alias}__{n}" for n in declared]
        # State: ``_rows`` every table row received since the last rebuild (wide, append
        # only); ``_index`` the current ones: their key and join-key columns and ``__pos``
        # (row in ``_rows``). An upsert rewrites only the narrow index.
        self._index_columns = list(dict.fromkeys(self._table_keys + self._keys[1]))
        self._rows: pa.Table | None = None
        self._index: pa.Table | None = None
        self._pending: list[pa.Table] = []
        # One integer equi key: the index is kept sorted by it (``_sorted``: its values,
        # nulls as the largest int64 and ``_sorted_valid`` false), and a stream batch finds
        # its matches by binary search instead of probing every table row.
        key_type = self._key_type(right, info)
        self._by_search = len(self._keys[1]) == 1 and pa.types.is_integer(key_type)
        self._sorted: np.ndarray | None = None
        self._sorted_valid: np.ndarray | None = None

    def _key_type(self, right: PlannedInput, info: ConditionInfo) -> pa.DataType:
        if len(info.equi) != 1:
            return pa.null()
        if self._casts[1]:
            return self._casts[1][0][2]
        return _plain(right.schema.field(info.equi[0][1]).type)

    def buffered_rows(self) -> tuple[int, int]:
        self._compact()
        return 0, self._index.num_rows if self._index is not None else 0

    def _pairs(self, left: pa.Table, right: pa.Table) -> tuple[Any, Any] | None:
        if self._sorted is None or right is not self._index:
            return super()._pairs(left, right)
        assert self._sorted_valid is not None
        column = left.column(self._keys[0][0])
        keys = pc.fill_null(column.cast(pa.int64()), 0).to_numpy()
        # searching in key order walks the index forwards (far fewer cache misses)
        order = np.argsort(keys)
        lo, hi = np.empty(len(keys), np.int64), np.empty(len(keys), np.int64)
        lo[order] = np.searchsorted(self._sorted, keys[order], "left")
        hi[order] = np.searchsorted(self._sorted, keys[order], "right")
        counts = hi - lo
        if column.null_count:
            counts[~pc.is_valid(column).to_numpy(zero_copy_only=False)] = 0
        total = int(counts.sum())
        if not total:
            return None
        li = np.repeat(np.arange(len(keys)), counts)
        ri = np.repeat(lo, counts) + (
            np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        if not self._sorted_valid.all():  # a null table key matches nothing
            hit = self._sorted_valid[ri]
            li, ri = li[hit], ri[hit]
            if not len(li):
                return None
        return pa.array(li), pa.array(ri)

    def _sort_index(self, index: pa.Table) -> pa.Table:
        """The index ordered by the join key (the rows kept in order before: a stable sort
        of one sorted run and a short one is close to a merge)."""
        column = index.column(self._keys[1][0])
        keys = pc.fill_null(column.cast(pa.int64()), np.iinfo(np.int64).max).to_numpy()
        order = np.argsort(keys, kind="stable")
        if not np.array_equal(order, np.arange(len(order))):
            index = index.take(pa.array(order)).combine_chunks()
        self._sorted = keys[order]
        self._sorted_valid = pc.is_valid(index.column(self._keys[1][0])).to_numpy(
            zero_copy_only=False
        )
        return index

    def process(self, input_name: str, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        out: list[pa.RecordBatch] = []
        for side in self._sides_of(input_name):
            rows = self._prefixed(side, batch)
            self.stats.rows_in += rows.num_rows
            if side == 1:
                if rows.num_rows:
                    self._pending.append(rows)
                if len(self._pending) > _COMPACT_CHUNKS:
                    self._compact()
                continue
            if self.kind == "left":
                rows = self._with_ids(rows)
            self._compact()
            matched = None
            if self._index is not None and self._rows is not None:
                matched = self._match(rows, self._index, self._rows)
            out += self._emit([matched, self._unmatched(rows, matched)])
        return out

    def advance_watermark(self, input_name: str, watermark_ms: int) -> list[pa.RecordBatch]:
        for side in self._sides_of(input_name):
            if side == 0:
                self._set_watermark(0, watermark_ms)
        return []

    def _compact(self) -> None:
        """Fold pending upserts into the index: the latest row per key, deleted keys gone.
        Rows no longer current stay in ``_rows`` until they are most of it (then it is
        rebuilt from the current rows)."""
        new = _concat(self._pending)
        self._pending = []
        if new is None:
            return
        start = self._rows.num_rows if self._rows is not None else 0
        self._rows = new if self._rows is None else pa.concat_tables([self._rows, new])
        dead = pa.array(np.zeros(new.num_rows, bool))
        if self._declared:
            alive = functools.reduce(pc.or_, [pc.is_valid(new.column(n)) for n in self._declared])
            dead = pc.invert(alive)
        added = pa.table(
            [new.column(n) for n in self._index_columns]
            + [pa.array(np.arange(start, start + new.num_rows)), dead],
            names=[*self._index_columns, "__pos", "__dead"],
        )
        if self._index is not None and len(self._table_keys) == 1:
            # one key column: the new rows' latest per key replace the index rows of their
            # keys (a hash lookup of the few new keys over the index, no re-aggregation)
            added = _latest_per_key(added, self._table_keys)
            key = self._table_keys[0]
            stale = pc.is_in(self._index.column(key), value_set=added.column(key))
            index = pa.concat_tables([self._index.filter(pc.invert(stale)), added])
        else:
            index = added if self._index is None else pa.concat_tables([self._index, added])
            index = _latest_per_key(index, self._table_keys)
        index = index.filter(pc.invert(index.column("__dead"))).combine_chunks()
        if self._rows.num_rows > 2 * index.num_rows + 4096 or self._rows.column(0).num_chunks > 64:
            self._rows = self._rows.take(index.column("__pos")).combine_chunks()
            positions = pa.array(np.arange(index.num_rows))
            index = index.set_column(index.schema.get_field_index("__pos"), "__pos", positions)
        self._index = self._sort_index(index) if self._by_search else index

    def _current_rows(self) -> pa.Table | None:
        self._compact()
        if self._index is None or self._rows is None:
            return None
        return self._rows.take(self._index.column("__pos"))

    def _state_parts(self) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        table = self._current_rows()
        return ({"table": table} if table is not None else {}), {}

    def _load_parts(self, parts: dict[str, pa.Table], meta: dict[str, Any]) -> None:
        self._rows, self._index, self._pending = None, None, []
        self._sorted = self._sorted_valid = None
        table = parts.get("table")
        if table is not None:
            self._pending = [table.combine_chunks()]
            self._compact()


# -- interval / regular: symmetric hash join -------------------------------------------------


@dataclass
class _Chunk:
    table: pa.Table
    min_bound: int | None  # smallest prune bound (bounded sides)
    min_time: int | None  # earliest time column value (left side with a time column)


class SymmetricJoin(_JoinBase):
    """Symmetric hash join of two streams, state pruned by time bounds when the condition
    has them (``interval``), else kept for ever (``regular``): module docstring."""

    def __init__(
        self,
        left: PlannedInput,
        right: PlannedInput,
        info: ConditionInfo,
        kind: str,
        stage_id: str,
    ) -> None:
        super().__init__(left, right, info, kind, stage_id)
        self.algorithm = "interval" if any(info.bounds) else "regular"
        self._bounds: tuple[list[Bound], list[Bound]] = info.bounds
        self._chunks: tuple[list[_Chunk], list[_Chunk]] = ([], [])
        self._matched: list[pa.Array] = []

    def buffered_rows(self) -> tuple[int, int]:
        return tuple(sum(c.table.num_rows for c in chunks) for chunks in self._chunks)  # type: ignore[return-value]

    def output_watermark(self) -> int | None:
        wm = self._watermarks[0]
        if wm is None:
            return None
        times = [c.min_time for c in self._chunks[0] if c.min_time is not None]
        return min([wm, *times])

    def process(self, input_name: str, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        out: list[pa.RecordBatch] = []
        for side in self._sides_of(input_name):
            out += self._process_side(side, self._prefixed(side, batch))
        return out

    def _process_side(self, side: int, rows: pa.Table) -> list[pa.RecordBatch]:
        inp, other = self.sides[side], 1 - side
        self.stats.rows_in += rows.num_rows
        out: list[pa.Table | None] = []
        if side == 0 and self.kind == "left":
            rows = self._with_ids(rows)
        times: np.ndarray | None = None
        if inp.time_column is not None:
            times, valid = _ms_column(rows, f"{inp.alias}__{inp.time_column}")
            if self._bounds[other]:
                # the other side is pruned by this side's watermark: rows below it are late,
                # and a null time can never satisfy the bound
                keep = np.ones(len(times), bool) if valid is None else valid.copy()
                nulls = int(len(times) - keep.sum())
                wm = self._watermarks[side]
                late = keep & (times < wm) if wm is not None else np.zeros(len(times), bool)
                keep &= ~late
                if nulls and side == 0 and self.kind == "left":
                    out.append(self._with_nulls(rows.filter(pa.array(~keep & ~late))))
                self.stats.null_time_rows += nulls
                self.stats.late_rows_dropped += int(late.sum())
                if not keep.all():
                    rows = rows.filter(pa.array(keep))
                    times = times[keep]
            elif valid is not None:
                times = times[valid]  # only for the buffer's earliest time
        if self._bounds[side]:
            rows = rows.append_column(f"__{_SIDE[side]}b", pa.array(self._bound_of(side, rows)))
        buffered = _concat([c.table for c in self._chunks[other]])
        if buffered is not None and rows.num_rows:
            pair = (rows, buffered) if side == 0 else (buffered, rows)
            matched = self._match(*pair)
            out.append(matched)
            if self.kind == "left" and matched is not None:
                self._matched.append(matched.column("__lid").combine_chunks())
                if len(self._matched) > _COMPACT_CHUNKS:
                    merged = pa.chunked_array(self._matched, pa.int64()).combine_chunks()
                    self._matched = [pc.unique(merged)]
        if rows.num_rows:
            self._add(side, rows, times)
        return self._emit(out)

    def _bound_of(self, side: int, rows: pa.Table) -> np.ndarray:
        """Per row, the least ``column + offset`` over the side's bounds (null -> -inf)."""
        alias = self.sides[side].alias
        result = np.full(rows.num_rows, np.iinfo(np.int64).max, np.int64)
        for bound in self._bounds[side]:
            ms, valid = _ms_column(rows, f"{alias}__{bound.column}")
            value = ms + bound.offset_ms
            if valid is not None:
                value = np.where(valid, value, _INT64_MIN)
            np.minimum(result, value, out=result)
        return result

    def _add(self, side: int, rows: pa.Table, times: np.ndarray | None) -> None:
        chunks = self._chunks[side]
        chunks.append(self._chunk(side, rows, times))
        if len(chunks) > _COMPACT_CHUNKS:
            merged = pa.concat_tables([c.table for c in chunks]).combine_chunks()
            chunks[:] = [self._chunk(side, merged, None)]

    def _chunk(self, side: int, table: pa.Table, times: np.ndarray | None) -> _Chunk:
        min_bound = None
        if self._bounds[side]:
            min_bound = int(pc.min(table.column(f"__{_SIDE[side]}b")).as_py())
        min_time = None
        inp = self.sides[side]
        if side == 0 and inp.time_column is not None:
            if times is None:
                times, valid = _ms_column(table, f"{inp.alias}__{inp.time_column}")
                times = times if valid is None else times[valid]
            min_time = int(times.min()) if len(times) else None
        return _Chunk(table, min_bound, min_time)

    def advance_watermark(self, input_name: str, watermark_ms: int) -> list[pa.RecordBatch]:
        out: list[pa.RecordBatch] = []
        for side in self._sides_of(input_name):
            if self._set_watermark(side, watermark_ms) and self._bounds[1 - side]:
                out += self._prune(1 - side, int(watermark_ms))
        return out

    def _prune(self, side: int, watermark: int) -> list[pa.RecordBatch]:
        """Drop the rows of ``side`` whose bound is below the other side's watermark; LEFT:
        emit the pruned left rows that never matched."""
        column = f"__{_SIDE[side]}b"
        kept: list[_Chunk] = []
        removed: list[pa.Table] = []
        for chunk in self._chunks[side]:
            if chunk.min_bound is None or chunk.min_bound >= watermark:
                kept.append(chunk)
                continue
            alive = pc.greater_equal(chunk.table.column(column), watermark)
            removed.append(chunk.table.filter(pc.invert(alive)))
            rest = chunk.table.filter(alive)
            if rest.num_rows:
                kept.append(self._chunk(side, rest, None))
        self._chunks[side][:] = kept
        if not removed or side != 0 or self.kind != "left":
            return []
        gone = pa.concat_tables(removed)
        matched = pa.chunked_array(self._matched, pa.int64())
        hit = pc.is_in(gone.column("__lid"), value_set=matched)
        unmatched = gone.filter(pc.invert(hit))
        # forget the matches of rows no longer buffered
        remaining = _concat([c.table for c in kept])
        if remaining is None or not len(matched):
            self._matched = []
        else:
            still = pc.is_in(matched, value_set=remaining.column("__lid"))
            self._matched = [pc.unique(matched.filter(still).combine_chunks())]
        return self._emit([self._with_nulls(unmatched)] if unmatched.num_rows else [])

    def _state_parts(self) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        parts: dict[str, pa.Table] = {}
        for side, name in ((0, "left"), (1, "right")):
            table = _concat([c.table for c in self._chunks[side]])
            if table is not None:
                parts[name] = table
        if self._matched:
            parts["matched"] = pa.table({"__lid": pa.chunked_array(self._matched, pa.int64())})
        return parts, {}

    def _load_parts(self, parts: dict[str, pa.Table], meta: dict[str, Any]) -> None:
        self._chunks = ([], [])
        for side, name in ((0, "left"), (1, "right")):
            if name in parts:
                self._chunks[side].append(self._chunk(side, parts[name].combine_chunks(), None))
        matched = parts.get("matched")
        self._matched = [matched.column("__lid").combine_chunks()] if matched else []


# -- window join ----------------------------------------------------------------------------


class WindowJoin(_JoinBase):
    """Join of two windowed results per window, when both watermarks pass its end."""

    algorithm = "window"

    def __init__(
        self,
        left: PlannedInput,
        right: PlannedInput,
        info: ConditionInfo,
        kind: str,
        stage_id: str,
        window_end: tuple[str, str],
    ) -> None:
        super().__init__(left, right, info, kind, stage_id)
        self._end = window_end
        self._buffers: tuple[list[pa.Table], list[pa.Table]] = ([], [])
        self._closed: int | None = None
        # cached over the buffers: earliest window end per side, earliest left time
        self._min_end: list[int | None] = [None, None]
        self._min_left_time: int | None = None

    def buffered_rows(self) -> tuple[int, int]:
        return tuple(sum(t.num_rows for t in buffers) for buffers in self._buffers)  # type: ignore[return-value]

    def output_watermark(self) -> int | None:
        wm = self._watermarks[0]
        if wm is None or self.sides[0].time_column is None:
            return None
        return wm if self._min_left_time is None else min(wm, self._min_left_time)

    def _left_min_time(self, rows: pa.Table) -> int | None:
        left = self.sides[0]
        if left.time_column is None or not rows.num_rows:
            return None
        times, valid = _ms_column(rows, f"{left.alias}__{left.time_column}")
        times = times if valid is None else times[valid]
        return int(times.min()) if len(times) else None

    def _recount(self) -> None:
        """Recompute the cached minima from the buffers."""
        for side in (0, 1):
            ends = [
                int(pc.min(t.column(f"__{_SIDE[side]}we")).as_py()) for t in self._buffers[side]
            ]
            self._min_end[side] = min(ends) if ends else None
        times = [self._left_min_time(t) for t in self._buffers[0]]
        known = [t for t in times if t is not None]
        self._min_left_time = min(known) if known else None

    def process(self, input_name: str, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        for side in self._sides_of(input_name):
            rows = self._prefixed(side, batch)
            self.stats.rows_in += rows.num_rows
            ends, valid = _ms_column(rows, f"{self.sides[side].alias}__{self._end[side]}")
            keep = np.ones(len(ends), bool) if valid is None else valid.copy()
            self.stats.null_time_rows += int(len(ends) - keep.sum())
            if self._closed is not None:
                late = keep & (ends <= self._closed)
                self.stats.late_rows_dropped += int(late.sum())
                keep &= ~late
            if not keep.all():
                rows, ends = rows.filter(pa.array(keep)), ends[keep]
            if not rows.num_rows:
                continue
            rows = rows.append_column(f"__{_SIDE[side]}we", pa.array(ends, pa.int64()))
            if side == 0 and self.kind == "left":
                rows = self._with_ids(rows)
            self._buffers[side].append(rows)
            if len(self._buffers[side]) > _COMPACT_CHUNKS:
                self._buffers[side][:] = [pa.concat_tables(self._buffers[side]).combine_chunks()]
            first_end = int(ends.min())
            current = self._min_end[side]
            self._min_end[side] = first_end if current is None else min(current, first_end)
            if side == 0:
                first = self._left_min_time(rows)
                if first is not None:
                    current = self._min_left_time
                    self._min_left_time = first if current is None else min(current, first)
        return []

    def advance_watermark(self, input_name: str, watermark_ms: int) -> list[pa.RecordBatch]:
        for side in self._sides_of(input_name):
            self._set_watermark(side, watermark_ms)
        if self._watermarks[0] is None or self._watermarks[1] is None:
            return []
        closing = min(self._watermarks[0], self._watermarks[1])  # type: ignore[type-var]
        if self._closed is not None and closing <= self._closed:
            return []
        self._closed = closing
        if all(end is None or end > closing for end in self._min_end):
            return []  # no buffered row's window closes
        ready: list[pa.Table | None] = []
        for side in (0, 1):
            table = _concat(self._buffers[side])
            if table is None:
                ready.append(None)
                continue
            done = pc.less_equal(table.column(f"__{_SIDE[side]}we"), closing)
            ready.append(table.filter(done))
            rest = table.filter(pc.invert(done))
            self._buffers[side][:] = [rest] if rest.num_rows else []
        self._recount()
        left, right = ready
        if left is None or not left.num_rows:
            return []
        matched = self._match(left, right) if right is not None else None
        return self._emit([matched, self._unmatched(left, matched)])

    def _state_parts(self) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        parts: dict[str, pa.Table] = {}
        for side, name in ((0, "left"), (1, "right")):
            table = _concat(self._buffers[side])
            if table is not None:
                parts[name] = table
        return parts, {"closed": self._closed}

    def _load_parts(self, parts: dict[str, pa.Table], meta: dict[str, Any]) -> None:
        self._closed = meta.get("closed")
        self._buffers = tuple(
            [parts[name].combine_chunks()] if name in parts else [] for name in ("left", "right")
        )  # type: ignore[assignment]
        self._recount()
