"""Event-time window aggregation on Arrow: the state continuous queries keep (issue 9).

Sans-I/O: a ``WindowAggregate`` is fed Arrow record batches (``process``) and a watermark the
caller computes (``advance_watermark``, usually ``WatermarkTracker``: max event time seen minus
the declared delay); it returns the windows the watermark closes as one Arrow RecordBatch
(group columns, ``window_start``, ``window_end``, one column per aggregate). It reads and
writes nothing; ``snapshot()`` gives its whole state as bytes and ``WindowAggregate.restore``
rebuilds it, so a checkpoint is whatever stores those bytes beside the input offsets.

Windows (event time in milliseconds: an integer column, or a timestamp column of any unit
truncated to milliseconds; windows are half-open ``[start, end)``)
---------------------------------------------------------------------------------------
- ``Tumble(size_ms, offset_ms=0)``: ``start = floor((t - offset) / size) * size + offset``.
- ``Hop(size_ms, slide_ms, offset_ms=0)``: every ``[s, s + size)`` with ``s`` on the slide grid
  (``s = k * slide + offset``) that contains ``t``; ``slide <= size``.
- ``Session(gap_ms)``: per group, records less than ``gap`` apart (sorted by time) share a
  session; a session is ``[first, last + gap)``. A record exactly ``gap`` after the last one
  starts a new session (half-open windows touch but do not overlap).

Rules
-----
1. The watermark ``W`` only grows; a lower value passed to ``advance_watermark`` is ignored.
2. Tumble and hop: a window ``[s, e)`` *closes* when ``W >= e + allowed_lateness``. A record's
   assignment to a closed window is dropped (a hop record still counts in its open windows);
   a record all of whose windows are closed is dropped and counted in
   ``stats.late_rows_dropped``.
3. Session: a record with ``t < W - allowed_lateness`` is dropped and counted (a session
   closes when ``W >= end + allowed_lateness``, and every closed session has
   ``end <= W - lateness``, so a record kept can never touch a closed session).
4. ``emit_updates=False`` (default): each window is emitted once, when it closes, with its
   final value. ``emit_updates=True``: a window is emitted first when ``W >= end``, and the
   groups that changed since (records late but within the lateness) again at the next
   ``advance_watermark``; the later row replaces the earlier one for the same group and
   ``window_start`` (a session that grows may also change its start: it replaces every row of
   its group whose range it covers). State is kept until the window closes.
5. Rows with a null event time are dropped and counted (``stats.null_time_rows``). Null group
   keys form one group, as in SQL ``GROUP BY``.
6. Aggregates as in SQL: ``COUNT(*)`` counts rows; ``COUNT(col)``, ``SUM``, ``AVG``, ``MIN``,
   ``MAX`` ignore nulls (``SUM``/``AVG``/``MIN``/``MAX`` of no values is null);
   ``COUNT(DISTINCT col)`` is exact (the distinct values of each open window are kept).
7. Output rows are ordered by ``window_start``, then ``window_end``, then group keys.

How a batch is processed (whole-batch Arrow compute, loops only per window or per hop step)
---------------------------------------------------------------------------------------
Tumble/hop: rows are bucketed into *panes* of ``gcd(size, slide)`` ms and aggregated per
(group, pane) with pyarrow's hash aggregation into partial aggregates (count, sum, min, max;
distinct values as unique (group, value) rows); each pane partial is then copied to the
``size / slide`` windows covering the pane and appended to those windows' pending partials.
A window's partials are merged (a second hash aggregation: sums of counts and sums, min of
mins...) when they grow past twice the merged state, when the window is emitted and at a
snapshot, so the work is proportional to the input, not to the state, per batch.
Session: a batch is sorted by (group, time) and cut into sessions where the group changes or
the time jumps by ``gap`` or more; its session partials wait until the next
``advance_watermark``, which sorts them with the open sessions by (group, start) and merges
overlapping ones (a running maximum of the ends within each group, in numpy).

Snapshot format (Arrow IPC)
---------------------------
One Arrow IPC stream holding a table with two columns, ``part: utf8`` and ``ipc: binary``;
its schema metadata ``streamhouse.windows`` is JSON: ``{"version": 1, "window": {"kind":
"tumble"|"hop"|"session", ...sizes}, "time_column", "keys", "aggregates": [[func, column,
name]...], "allowed_lateness_ms", "emit_updates", "watermark" (null before the first),
"stats": {...}, "next_sid"}``. Each row is a part, its ``ipc`` one Arrow IPC stream:
``schema`` (the input schema, no rows); tumble/hop: ``windows`` (``_w`` window start int64,
``_emitted`` bool, ``_dirty`` bool), ``partials`` (``_w``, group keys, partial columns,
``_chg`` bool: the group changed since the window was emitted),
``distinct<i>`` (``_w``, group keys, ``_a<i>``: distinct values of aggregate i); session:
``sessions`` (group keys, ``_sid``, ``_start``, ``_end``, ``_emitted``, ``_dirty``, partial
columns) and ``sdistinct<i>`` (``_sid``, ``_a<i>``). Partial columns: ``_p<i>_n`` (count,
int64), ``_p<i>_s`` (sum), ``_p<i>_m`` (min or max).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "Aggregate",
    "Hop",
    "Session",
    "Tumble",
    "WatermarkTracker",
    "Window",
    "WindowAggregate",
    "WindowError",
    "WindowStats",
    "event_times_ms",
]

SNAPSHOT_VERSION = 1
_META_KEY = b"streamhouse.windows"
_FUNCS = ("count", "sum", "avg", "min", "max", "count_distinct")
_NO_KEY = "_nokey"


class WindowError(ValueError):
    """A window query or input the operator refuses; the message says what to change."""


@dataclass(frozen=True)
class Tumble:
    size_ms: int
    offset_ms: int = 0


@dataclass(frozen=True)
class Hop:
    size_ms: int
    slide_ms: int
    offset_ms: int = 0


@dataclass(frozen=True)
class Session:
    gap_ms: int


Window = Tumble | Hop | Session


@dataclass(frozen=True)
class Aggregate:
    """``func`` one of count, sum, avg, min, max, count_distinct; ``column`` None = COUNT(*)."""

    func: str
    column: str | None
    name: str


@dataclass
class WindowStats:
    rows_in: int = 0
    late_rows_dropped: int = 0
    null_time_rows: int = 0
    rows_emitted: int = 0


@dataclass
class WatermarkTracker:
    """The watermark a declaration gives: max event time seen minus ``delay_ms``."""

    delay_ms: int
    max_event_ms: int | None = None

    def observe(self, event_ms: np.ndarray) -> int | None:
        if len(event_ms):
            m = int(event_ms.max())
            if self.max_event_ms is None or m > self.max_event_ms:
                self.max_event_ms = m
        return self.value

    @property
    def value(self) -> int | None:
        return None if self.max_event_ms is None else self.max_event_ms - self.delay_ms


def event_times_ms(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None]:
    """Event times as int64 milliseconds, and a validity mask (None when no nulls)."""
    typ = column.type
    if pa.types.is_timestamp(typ):
        column = pc.cast(column, pa.timestamp("ms", typ.tz), safe=False)
    elif not pa.types.is_integer(typ):
        raise WindowError(
            f"event time column has type {typ}; use a TIMESTAMP or an integer (milliseconds)"
        )
    ints = pc.cast(column, pa.int64())
    valid = None
    if ints.null_count:
        valid = pc.is_valid(ints).to_numpy(zero_copy_only=False)
        ints = pc.fill_null(ints, 0)
    if isinstance(ints, pa.ChunkedArray):
        ints = ints.combine_chunks()
    return ints.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), valid


@dataclass
class _PaneWindow:
    """Tumble/hop state of one window: merged partials and pending ones, per aggregate."""

    parts: list[pa.Table] = field(default_factory=list)
    merged_rows: int = 0
    pending_rows: int = 0
    distinct: dict[int, list[pa.Table]] = field(default_factory=dict)
    distinct_pending: bool = False
    emitted: bool = False
    dirty: bool = False


class WindowAggregate:
    """Keyed event-time window aggregation, a batch at a time (module docstring: the rules)."""

    def __init__(
        self,
        schema: pa.Schema,
        window: Window,
        time_column: str,
        keys: list[str],
        aggregates: list[Aggregate],
        *,
        allowed_lateness_ms: int = 0,
        emit_updates: bool = False,
    ) -> None:
        self._check_config(schema, window, time_column, keys, aggregates, allowed_lateness_ms)
        self.schema = schema
        self.window = window
        self.time_column = time_column
        self.keys = list(keys)
        self.aggregates = list(aggregates)
        self.allowed_lateness_ms = allowed_lateness_ms
        self.emit_updates = emit_updates
        self.watermark: int | None = None
        self.stats = WindowStats()
        self._gkeys = self.keys or [_NO_KEY]
        tt = schema.field(time_column).type
        self._out_time_type = pa.timestamp("ms", tt.tz) if pa.types.is_timestamp(tt) else pa.int64()
        self._distinct = [i for i, a in enumerate(aggregates) if a.func == "count_distinct"]
        # tumble / hop
        self._windows: dict[int, _PaneWindow] = {}
        if isinstance(window, Tumble):
            self._size, self._slide, self._offset = window.size_ms, window.size_ms, window.offset_ms
        elif isinstance(window, Hop):
            self._size, self._slide, self._offset = (
                window.size_ms,
                window.slide_ms,
                window.offset_ms,
            )
        else:
            self._size = self._slide = self._offset = 0
        self._pane = math.gcd(self._size, self._slide) if self._size else 0
        self._gap = window.gap_ms if isinstance(window, Session) else 0
        # session
        self._sessions: pa.Table | None = None
        self._sdistinct: dict[int, pa.Table] = {}
        self._spending: list[pa.Table] = []
        self._sdpending: dict[int, list[pa.Table]] = {i: [] for i in self._distinct}
        self._next_sid = 0
        empty = self._input_table(schema.empty_table(), np.zeros(0, np.int64))
        extra = "_pane" if self._pane else "_sid"
        empty = empty.append_column(extra, pa.array([], pa.int64()))
        self._empty_partial = self._batch_partials(empty, [extra])
        if self._pane:  # which groups changed since the window was emitted (updates mode)
            self._empty_partial = self._empty_partial.append_column(
                "_chg", pa.array([], pa.bool_())
            )
        self._empty_distinct = {i: self._distinct_rows(empty, i, []) for i in self._distinct}

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _check_config(
        schema: pa.Schema,
        window: Window,
        time_column: str,
        keys: list[str],
        aggregates: list[Aggregate],
        lateness: int,
    ) -> None:
        names = set(schema.names)
        if time_column not in names:
            raise WindowError(f"event time column {time_column!r} is not in the input {names}")
        tt = schema.field(time_column).type
        if not (pa.types.is_timestamp(tt) or pa.types.is_integer(tt)):
            raise WindowError(
                f"event time column {time_column!r} has type {tt}; "
                "use a TIMESTAMP or an integer (milliseconds)"
            )
        if isinstance(window, Tumble):
            if window.size_ms <= 0:
                raise WindowError(f"TUMBLE size must be positive, got {window.size_ms} ms")
        elif isinstance(window, Hop):
            if window.size_ms <= 0 or window.slide_ms <= 0:
                raise WindowError(f"HOP size and slide must be positive, got {window}")
            if window.slide_ms > window.size_ms:
                raise WindowError(
                    f"HOP slide {window.slide_ms} ms exceeds size {window.size_ms} ms: "
                    "records between windows would be lost; use a slide <= size"
                )
        elif isinstance(window, Session):
            if window.gap_ms <= 0:
                raise WindowError(f"SESSION gap must be positive, got {window.gap_ms} ms")
        else:
            raise WindowError(f"unknown window {window!r}: use Tumble, Hop or Session")
        if lateness < 0:
            raise WindowError(f"allowed lateness must be >= 0, got {lateness} ms")
        for k in keys:
            if k not in names:
                raise WindowError(f"group key {k!r} is not in the input columns {sorted(names)}")
        if len(set(keys)) != len(keys):
            raise WindowError(f"group keys repeat: {keys}")
        if not aggregates:
            raise WindowError("a window aggregation needs at least one aggregate")
        out = set(keys) | {"window_start", "window_end"}
        for a in aggregates:
            if a.func not in _FUNCS:
                raise WindowError(f"unknown aggregate {a.func!r}; known: {', '.join(_FUNCS)}")
            if a.column is None and a.func != "count":
                raise WindowError(f"{a.func.upper()} needs a column (only COUNT(*) has none)")
            if a.column is not None and a.column not in names:
                raise WindowError(f"aggregate column {a.column!r} is not in the input")
            if a.column is not None and a.func in ("sum", "avg"):
                t = schema.field(a.column).type
                if not (
                    pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
                ):
                    raise WindowError(f"{a.func.upper()}({a.column}) needs a number, not {t}")
            if a.name in out:
                raise WindowError(f"output column {a.name!r} appears twice; rename the aggregate")
            out.add(a.name)

    # ------------------------------------------------------------------ input
    def _input_table(self, batch: pa.RecordBatch | pa.Table, t: np.ndarray) -> pa.Table:
        """Group keys, ``_t`` (event ms) and one ``_a<i>`` column per aggregate."""
        cols: dict[str, Any] = {}
        if self.keys:
            for k in self.keys:
                cols[k] = batch.column(k)
        else:
            cols[_NO_KEY] = pa.nulls(len(t), pa.int8())
        cols["_t"] = pa.array(t, pa.int64())
        for i, a in enumerate(self.aggregates):
            col = batch.column(a.column) if a.column is not None else cols["_t"]
            if a.func == "avg":
                col = pc.cast(col, pa.float64())
            cols[f"_a{i}"] = col
        return pa.table(cols)

    def _batch_specs(self) -> list[tuple[str, str, Any, str]]:
        specs: list[tuple[str, str, Any, str]] = []
        valid = pc.CountOptions("only_valid")
        one = pc.ScalarAggregateOptions(min_count=1)
        for i, a in enumerate(self.aggregates):
            c = f"_a{i}"
            if a.func == "count":
                mode = pc.CountOptions("all") if a.column is None else valid
                specs.append((c, "count", mode, f"_p{i}_n"))
            elif a.func == "sum":
                specs.append((c, "sum", one, f"_p{i}_s"))
            elif a.func == "avg":
                specs.append((c, "sum", one, f"_p{i}_s"))
                specs.append((c, "count", valid, f"_p{i}_n"))
            elif a.func in ("min", "max"):
                specs.append((c, a.func, one, f"_p{i}_m"))
        return specs

    def _merge_specs(self) -> list[tuple[str, str, Any, str]]:
        one = pc.ScalarAggregateOptions(min_count=1)
        specs: list[tuple[str, str, Any, str]] = []
        for _, _, _, name in self._batch_specs():
            if name.endswith("_n"):
                specs.append((name, "sum", None, name))
            elif name.endswith("_s"):
                specs.append((name, "sum", one, name))
            else:
                i = int(name[2:].split("_")[0])
                specs.append((name, self.aggregates[i].func, one, name))
        return specs

    @staticmethod
    def _group(table: pa.Table, by: list[str], specs: list[tuple[str, str, Any, str]]) -> pa.Table:
        aggs = [(c, f, o) if o is not None else (c, f) for c, f, o, _ in specs]
        res = table.group_by(by, use_threads=False).aggregate(aggs)
        cols = {k: res.column(k) for k in by}
        for c, f, _, name in specs:
            cols[name] = res.column(f"{c}_{f}")
        return pa.table(cols)

    def _batch_partials(self, table: pa.Table, extra: list[str]) -> pa.Table:
        return self._group(table, self._gkeys + extra, self._batch_specs())

    def _distinct_rows(self, table: pa.Table, i: int, extra: list[str]) -> pa.Table:
        by = self._gkeys + extra + [f"_a{i}"]
        return table.select(by).group_by(by, use_threads=False).aggregate([]).select(by)

    # ------------------------------------------------------------------ process
    def process(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Adds a batch of input rows to the open windows (late rows dropped, counted)."""
        for name in self._used_columns():
            got = batch.schema.field(name).type if name in batch.schema.names else None
            want = self.schema.field(name).type
            if got != want:
                raise WindowError(
                    f"input column {name!r} is {got if got is not None else 'missing'}, "
                    f"the query was declared with {want}"
                )
        n = batch.num_rows
        if n == 0:
            return
        self.stats.rows_in += n
        t, valid = event_times_ms(batch.column(self.time_column))
        keep = valid
        if valid is not None:
            self.stats.null_time_rows += int(n - valid.sum())
        if self.watermark is not None:
            if self._pane:
                last_start = (t - self._offset) // self._slide * self._slide + self._offset
                on_time = last_start + self._size + self.allowed_lateness_ms > self.watermark
            else:
                on_time = t >= self.watermark - self.allowed_lateness_ms
            if valid is not None:
                self.stats.late_rows_dropped += int((valid & ~on_time).sum())
                keep = valid & on_time
            else:
                self.stats.late_rows_dropped += int(n - on_time.sum())
                keep = on_time
        if keep is not None and not keep.all():
            idx = np.flatnonzero(keep)
            batch = batch.take(pa.array(idx))
            t = t[idx]
        if len(t) == 0:
            return
        table = self._input_table(batch, t)
        if self._pane:
            self._process_panes(table, t)
        else:
            self._process_sessions(table)

    def _used_columns(self) -> list[str]:
        cols = [self.time_column, *self.keys]
        cols += [a.column for a in self.aggregates if a.column is not None]
        return list(dict.fromkeys(cols))

    def _process_panes(self, table: pa.Table, t: np.ndarray) -> None:
        pane = (t - self._offset) // self._pane * self._pane + self._offset
        table = table.append_column("_pane", pa.array(pane, pa.int64()))
        partial = self._batch_partials(table, ["_pane"])
        self._append_to_windows(partial, None)
        for i in self._distinct:
            self._append_to_windows(self._distinct_rows(table, i, ["_pane"]), i)

    def _append_to_windows(self, rows: pa.Table, distinct: int | None) -> None:
        """Copies each pane row to every open window covering its pane (``_w``)."""
        panes = rows.column("_pane").to_numpy()
        rows = rows.drop_columns(["_pane"])
        base = (panes - self._offset) // self._slide * self._slide + self._offset
        takes: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        for k in range(-(-self._size // self._slide)):
            s = base - k * self._slide
            ok = s + self._size >= panes + self._pane
            if self.watermark is not None:
                ok &= s + self._size + self.allowed_lateness_ms > self.watermark
            idx = np.flatnonzero(ok)
            if len(idx):
                takes.append(idx)
                starts.append(s[idx])
        if not takes:
            return
        idx = np.concatenate(takes)
        w = np.concatenate(starts)
        order = np.argsort(w, kind="stable")
        w = w[order]
        rows = rows.take(pa.array(idx[order]))
        uniq, first = np.unique(w, return_index=True)
        bounds = [*first.tolist(), len(w)]
        for j, start in enumerate(uniq.tolist()):
            part = rows.slice(bounds[j], bounds[j + 1] - bounds[j])
            win = self._windows.get(start)
            if win is None:
                win = self._windows[start] = _PaneWindow(distinct={i: [] for i in self._distinct})
            if self.emit_updates and win.emitted:
                win.dirty = True
            if distinct is None:
                changed = np.full(part.num_rows, win.emitted)
                win.parts.append(part.append_column("_chg", pa.array(changed, pa.bool_())))
                win.pending_rows += part.num_rows
                if win.pending_rows > max(4096, 2 * win.merged_rows):
                    self._merge_window(win)
            else:
                win.distinct[distinct].append(part)
                win.distinct_pending = True
                if len(win.distinct[distinct]) > 16:
                    self._merge_window(win)

    def _merge_window(self, win: _PaneWindow) -> None:
        # a part appended may hold several rows of one group (one per pane): merged even alone
        if win.pending_rows:
            table = pa.concat_tables(win.parts)
            specs = [*self._merge_specs(), ("_chg", "any", None, "_chg")]
            win.parts = [self._group(table, self._gkeys, specs)]
        win.merged_rows = win.parts[0].num_rows if win.parts else 0
        win.pending_rows = 0
        for i, parts in win.distinct.items():
            if win.distinct_pending and parts:
                by = [*self._gkeys, f"_a{i}"]
                table = pa.concat_tables(parts)
                win.distinct[i] = [table.group_by(by, use_threads=False).aggregate([]).select(by)]
        win.distinct_pending = False

    # ------------------------------------------------------------------ sessions
    def _process_sessions(self, table: pa.Table) -> None:
        gap = self._gap
        order = pc.sort_indices(
            table,
            sort_keys=[(k, "ascending", "at_end") for k in self._gkeys] + [("_t", "ascending")],
        )
        table = table.take(order)
        t = table.column("_t").to_numpy()
        new = _key_changes(table, self._gkeys)
        new[1:] |= (t[1:] - t[:-1]) >= gap
        sid = np.cumsum(new) - 1 + self._next_sid
        self._next_sid += int(sid[-1] - self._next_sid + 1)
        table = table.append_column("_sid", pa.array(sid, pa.int64()))
        specs = [
            *self._batch_specs(),
            ("_t", "min", None, "_start"),
            ("_t", "max", None, "_end"),
        ]
        part = self._group(table, [*self._gkeys, "_sid"], specs)
        part = part.set_column(
            part.schema.get_field_index("_end"), "_end", pc.add(part.column("_end"), gap)
        )
        ones = pa.array(np.ones(part.num_rows, bool))
        part = part.append_column("_emitted", pa.array(np.zeros(part.num_rows, bool)))
        part = part.append_column("_dirty", ones)
        self._spending.append(part)
        for i in self._distinct:
            by = ["_sid", f"_a{i}"]
            self._sdpending[i].append(
                table.select(by).group_by(by, use_threads=False).aggregate([]).select(by)
            )

    def _merge_sessions(self) -> None:
        if not self._spending:
            return
        parts = ([self._sessions] if self._sessions is not None else []) + self._spending
        self._spending = []
        table = pa.concat_tables(parts)
        order = pc.sort_indices(
            table,
            sort_keys=[(k, "ascending", "at_end") for k in self._gkeys] + [("_start", "ascending")],
        )
        table = table.take(order)
        start = table.column("_start").to_numpy()
        end = table.column("_end").to_numpy()
        new = _key_changes(table, self._gkeys)
        reach = _grouped_cummax(end, np.cumsum(new) - 1)
        new[1:] |= start[1:] >= reach[:-1]
        m = np.cumsum(new) - 1 + self._next_sid
        self._next_sid = int(m[-1]) + 1
        old_sid = table.column("_sid")
        table = table.drop_columns(["_sid"]).append_column("_m", pa.array(m, pa.int64()))
        specs = [
            *self._merge_specs(),
            ("_start", "min", None, "_start"),
            ("_end", "max", None, "_end"),
            ("_emitted", "any", None, "_emitted"),
            ("_dirty", "any", None, "_dirty"),
        ]
        merged = self._group(table, [*self._gkeys, "_m"], specs)
        self._sessions = merged.rename_columns(
            ["_sid" if c == "_m" else c for c in merged.column_names]
        )
        for i in self._distinct:
            dparts = ([self._sdistinct[i]] if i in self._sdistinct else []) + self._sdpending[i]
            self._sdpending[i] = []
            d = pa.concat_tables(dparts)
            pos = pc.index_in(d.column("_sid"), value_set=old_sid.combine_chunks())
            d = d.set_column(0, "_sid", pa.array(m[pos.to_numpy(zero_copy_only=False)]))
            by = ["_sid", f"_a{i}"]
            self._sdistinct[i] = d.group_by(by, use_threads=False).aggregate([]).select(by)

    # ------------------------------------------------------------------ emission
    def advance_watermark(self, watermark: int) -> pa.RecordBatch:
        """Moves the watermark; returns the windows it closes (and, with ``emit_updates``,
        the windows it reaches or that changed since emitted), possibly no rows."""
        if self.watermark is None or watermark > self.watermark:
            self.watermark = int(watermark)
        wm = self.watermark
        late = self.allowed_lateness_ms
        out = self._emit_panes(wm, late) if self._pane else self._emit_sessions(wm, late)
        self.stats.rows_emitted += out.num_rows
        return out

    def _emit_panes(self, wm: int, late: int) -> pa.RecordBatch:
        results: list[pa.Table] = []
        for start in sorted(self._windows):
            win = self._windows[start]
            end = start + self._size
            closing = end + late <= wm
            if self.emit_updates:
                emit = end <= wm and (not win.emitted or win.dirty)
            else:
                emit = closing
            if emit:
                self._merge_window(win)
                results.append(self._finalize_window(win, start))
                win.emitted, win.dirty = True, False
            if closing:
                del self._windows[start]
        return self._output(results)

    def _window_partials(self, win: _PaneWindow) -> pa.Table:
        return win.parts[0] if win.parts else self._empty_partial.drop_columns(["_pane"])

    def _finalize_window(self, win: _PaneWindow, start: int) -> pa.Table:
        partial = self._with_distinct_counts(
            self._window_partials(win),
            {
                i: (parts[0] if parts else self._empty_distinct[i])
                for i, parts in win.distinct.items()
            },
            self._gkeys,
        )
        if win.emitted:  # an update: only the groups that changed since
            partial = partial.filter(partial.column("_chg"))
            part = win.parts[0]
            unchanged = pa.array(np.zeros(part.num_rows, bool))
            win.parts[0] = part.set_column(part.schema.get_field_index("_chg"), "_chg", unchanged)
        n = partial.num_rows
        partial = partial.append_column("_start", pa.array(np.full(n, start), pa.int64()))
        partial = partial.append_column(
            "_end", pa.array(np.full(n, start + self._size), pa.int64())
        )
        return self._final_columns(partial)

    def _with_distinct_counts(
        self, partial: pa.Table, distinct: dict[int, pa.Table], by: list[str]
    ) -> pa.Table:
        """Adds ``_p<i>_d`` (distinct count) columns; null keys join like SQL GROUP BY."""
        if not distinct:
            return partial
        valid = pc.CountOptions("only_valid")
        extra = []
        for i, d in distinct.items():
            c = self._group(d, by, [(f"_a{i}", "count", valid, f"_p{i}_d")])
            extra.append(c)
        specs = [
            (c, "first" if c in self._gkeys else "any" if c == "_chg" else "max", None, c)
            for c in partial.column_names
            if c not in by
        ]
        specs += [(f"_p{i}_d", "sum", None, f"_p{i}_d") for i in distinct]
        # every distinct row's group is in the partials; the union then one aggregation keeps
        # the partial values (max of one non-null value) and null keys in one group.
        table = pa.concat_tables([partial, *extra], promote_options="default")
        return self._group(table, by, specs)

    def _final_columns(self, partial: pa.Table) -> pa.Table:
        cols: dict[str, Any] = {k: partial.column(k) for k in self.keys}
        cols["window_start"] = pc.cast(partial.column("_start"), self._out_time_type)
        cols["window_end"] = pc.cast(partial.column("_end"), self._out_time_type)
        for i, a in enumerate(self.aggregates):
            if a.func == "count":
                cols[a.name] = partial.column(f"_p{i}_n")
            elif a.func == "count_distinct":
                cols[a.name] = pc.cast(partial.column(f"_p{i}_d"), pa.int64())
            elif a.func == "sum":
                cols[a.name] = partial.column(f"_p{i}_s")
            elif a.func == "avg":
                s = partial.column(f"_p{i}_s")
                nz = pc.if_else(
                    pc.equal(partial.column(f"_p{i}_n"), 0), None, partial.column(f"_p{i}_n")
                )
                cols[a.name] = pc.divide(s, pc.cast(nz, pa.float64()))
            else:
                cols[a.name] = partial.column(f"_p{i}_m")
        table = pa.table(cols)
        sort = [("window_start", "ascending"), ("window_end", "ascending")]
        sort += [(k, "ascending", "at_end") for k in self.keys]
        return table.take(pc.sort_indices(table, sort_keys=sort))

    def _output(self, results: list[pa.Table]) -> pa.RecordBatch:
        if not results:
            return pa.RecordBatch.from_pylist([], schema=self.output_schema())
        table = pa.concat_tables(results).combine_chunks()
        if table.num_rows == 0:
            return pa.RecordBatch.from_pylist([], schema=table.schema)
        return table.to_batches()[0]

    def output_schema(self) -> pa.Schema:
        """The schema of every batch ``advance_watermark`` returns."""
        partial = self._with_distinct_counts(
            self._empty_partial.drop_columns(["_pane" if self._pane else "_sid"]),
            self._empty_distinct,
            self._gkeys,
        )
        partial = partial.append_column("_start", pa.array([], pa.int64()))
        partial = partial.append_column("_end", pa.array([], pa.int64()))
        return self._final_columns(partial).schema

    def _emit_sessions(self, wm: int, late: int) -> pa.RecordBatch:
        self._merge_sessions()
        s = self._sessions
        if s is None or s.num_rows == 0:
            return self._output([])
        end = s.column("_end").to_numpy()
        closing = end + late <= wm
        if self.emit_updates:
            emitted = s.column("_emitted").to_numpy(zero_copy_only=False)
            dirty = s.column("_dirty").to_numpy(zero_copy_only=False)
            emit = (end <= wm) & (~emitted | dirty)
        else:
            emit = closing
        results: list[pa.Table] = []
        if emit.any():
            rows = s.filter(pa.array(emit))
            sids = rows.column("_sid")
            distinct = {}
            for i in self._distinct:
                d = self._sdistinct[i]
                distinct[i] = d.filter(pc.is_in(d.column("_sid"), value_set=sids.combine_chunks()))
            partial = self._with_distinct_counts(
                rows.drop_columns(["_emitted", "_dirty"]), distinct, ["_sid"]
            )
            results.append(self._final_columns(partial))
            flags = pa.array(s.column("_emitted").to_numpy(zero_copy_only=False) | emit)
            s = s.set_column(s.schema.get_field_index("_emitted"), "_emitted", flags)
            dirty_now = s.column("_dirty").to_numpy(zero_copy_only=False) & ~emit
            s = s.set_column(s.schema.get_field_index("_dirty"), "_dirty", pa.array(dirty_now))
        if closing.any():
            gone = s.column("_sid").filter(pa.array(closing)).combine_chunks()
            s = s.filter(pa.array(~closing))
            for i in self._distinct:
                d = self._sdistinct[i]
                self._sdistinct[i] = d.filter(pc.invert(pc.is_in(d.column("_sid"), value_set=gone)))
        self._sessions = s
        return self._output(results)

    # ------------------------------------------------------------------ snapshot
    def snapshot(self) -> bytes:
        """The whole state as Arrow IPC bytes (format in the module docstring)."""
        parts: dict[str, bytes] = {"schema": _ipc(self.schema.empty_table())}
        if self._pane:
            starts = sorted(self._windows)
            wins = [self._windows[s] for s in starts]
            for w in wins:
                self._merge_window(w)
            parts["windows"] = _ipc(
                pa.table(
                    {
                        "_w": pa.array(starts, pa.int64()),
                        "_emitted": pa.array([w.emitted for w in wins], pa.bool_()),
                        "_dirty": pa.array([w.dirty for w in wins], pa.bool_()),
                    }
                )
            )
            empty = self._empty_partial.drop_columns(["_pane"])
            parts["partials"] = _ipc(
                _tagged([self._window_partials(w) for w in wins], starts, empty)
            )
            for i in self._distinct:
                tables = [
                    w.distinct[i][0] if w.distinct[i] else self._empty_distinct[i] for w in wins
                ]
                parts[f"distinct{i}"] = _ipc(_tagged(tables, starts, self._empty_distinct[i]))
        else:
            self._merge_sessions()
            if self._sessions is not None:
                parts["sessions"] = _ipc(self._sessions)
            for i, d in self._sdistinct.items():
                parts[f"sdistinct{i}"] = _ipc(d)
        w = self.window
        spec: dict[str, Any]
        if isinstance(w, Tumble):
            spec = {"kind": "tumble", "size_ms": w.size_ms, "offset_ms": w.offset_ms}
        elif isinstance(w, Hop):
            spec = {
                "kind": "hop",
                "size_ms": w.size_ms,
                "slide_ms": w.slide_ms,
                "offset_ms": w.offset_ms,
            }
        else:
            spec = {"kind": "session", "gap_ms": w.gap_ms}
        meta = {
            "version": SNAPSHOT_VERSION,
            "window": spec,
            "time_column": self.time_column,
            "keys": self.keys,
            "aggregates": [[a.func, a.column, a.name] for a in self.aggregates],
            "allowed_lateness_ms": self.allowed_lateness_ms,
            "emit_updates": self.emit_updates,
            "watermark": self.watermark,
            "stats": vars(self.stats),
            "next_sid": self._next_sid,
        }
        outer = pa.table(
            {
                "part": pa.array(list(parts), pa.utf8()),
                "ipc": pa.array(list(parts.values()), pa.binary()),
            }
        ).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
        return _ipc(outer)

    @classmethod
    def restore(cls, data: bytes) -> WindowAggregate:
        """The operator a ``snapshot()`` was taken of, in the same state."""
        try:
            outer = pa.ipc.open_stream(data).read_all()
            meta = json.loads((outer.schema.metadata or {})[_META_KEY])
        except (pa.ArrowInvalid, KeyError, ValueError) as e:
            raise WindowError(
                f"not a window operator snapshot ({e}); was it written by snapshot()?"
            ) from e
        if not isinstance(meta, dict) or meta.get("version") != SNAPSHOT_VERSION:
            found = meta.get("version") if isinstance(meta, dict) else None
            raise WindowError(
                f"window snapshot version {found}, this code reads {SNAPSHOT_VERSION}"
            )
        try:
            return cls._restore_parts(outer, meta)
        except (pa.ArrowInvalid, KeyError, TypeError, ValueError) as e:
            if isinstance(e, WindowError):
                raise
            raise WindowError(
                f"window snapshot is damaged ({e!r}); restore an older checkpoint"
            ) from e

    @classmethod
    def _restore_parts(cls, outer: pa.Table, meta: dict[str, Any]) -> WindowAggregate:
        parts = {
            name: pa.ipc.open_stream(blob).read_all()
            for name, blob in zip(
                outer.column("part").to_pylist(), outer.column("ipc").to_pylist(), strict=True
            )
        }
        spec = meta["window"]
        window: Window
        if spec["kind"] == "tumble":
            window = Tumble(spec["size_ms"], spec["offset_ms"])
        elif spec["kind"] == "hop":
            window = Hop(spec["size_ms"], spec["slide_ms"], spec["offset_ms"])
        else:
            window = Session(spec["gap_ms"])
        op = cls(
            parts["schema"].schema,
            window,
            meta["time_column"],
            meta["keys"],
            [Aggregate(f, c, n) for f, c, n in meta["aggregates"]],
            allowed_lateness_ms=meta["allowed_lateness_ms"],
            emit_updates=meta["emit_updates"],
        )
        op.watermark = meta["watermark"]
        op.stats = WindowStats(**meta["stats"])
        op._next_sid = meta["next_sid"]
        if op._pane:
            wins = parts["windows"]
            for s, e, d in zip(
                *(wins.column(c).to_pylist() for c in ("_w", "_emitted", "_dirty")), strict=True
            ):
                op._windows[s] = _PaneWindow(
                    distinct={i: [] for i in op._distinct}, emitted=e, dirty=d
                )
            for s, table in _untag(parts["partials"]):
                op._windows[s].parts = [table]
                op._windows[s].merged_rows = table.num_rows
            for i in op._distinct:
                for s, table in _untag(parts[f"distinct{i}"]):
                    op._windows[s].distinct[i] = [table]
        else:
            if "sessions" in parts:
                op._sessions = parts["sessions"]
            for i in op._distinct:
                if f"sdistinct{i}" in parts:
                    op._sdistinct[i] = parts[f"sdistinct{i}"]
        return op


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _tagged(tables: list[pa.Table], starts: list[int], empty: pa.Table) -> pa.Table:
    """The tables of several windows as one, with their window start in ``_w``."""
    tagged = [
        t.add_column(0, "_w", pa.array(np.full(t.num_rows, s), pa.int64()))
        for t, s in zip(tables, starts, strict=True)
    ]
    if not tagged:
        return empty.add_column(0, "_w", pa.array([], pa.int64()))
    return pa.concat_tables(tagged)


def _untag(table: pa.Table) -> list[tuple[int, pa.Table]]:
    w = table.column("_w").to_numpy()
    rest = table.drop_columns(["_w"])
    out = []
    uniq, first = np.unique(w, return_index=True)
    bounds = [*first.tolist(), len(w)]
    for j, s in enumerate(uniq.tolist()):
        out.append((s, rest.slice(bounds[j], bounds[j + 1] - bounds[j])))
    return out


def _key_changes(table: pa.Table, keys: list[str]) -> np.ndarray:
    """True where a row's group differs from the previous row's (row 0: True); null == null."""
    n = table.num_rows
    out = np.zeros(n, bool)
    if n == 0:
        return out
    out[0] = True
    for k in keys:
        col = table.column(k).combine_chunks()
        a, b = col.slice(1), col.slice(0, n - 1)
        an, bn = pc.is_null(a), pc.is_null(b)
        diff = pc.if_else(pc.or_(an, bn), pc.xor(an, bn), pc.not_equal(a, b))
        out[1:] |= diff.to_numpy(zero_copy_only=False)
    return out


def _grouped_cummax(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Running maximum of ``values`` within runs of equal, ascending ``group`` numbers."""
    if len(values) == 0:
        return values
    lo = int(values.min())
    rel = values - lo
    span = int(rel.max()) + 1
    if (int(group[-1]) + 1) * span < 2**62:
        shift = group.astype(np.int64) * span
        return np.maximum.accumulate(rel + shift) - shift + lo
    out = np.empty_like(values)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    bounds = [*starts.tolist(), len(values)]
    for j in range(len(starts)):  # per group, only when the packed form would overflow
        out[bounds[j] : bounds[j + 1]] = np.maximum.accumulate(values[bounds[j] : bounds[j + 1]])
    return out
