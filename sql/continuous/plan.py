"""Compiles a continuous query's SELECT into a graph of stages (``plan_continuous``).

The SELECT is parsed with sqlglot (dialect ``postgres``; unquoted names lower-cased, as the
catalog stores them), decomposed into stages (``sql.continuous.stages``; joins from
``sql.continuous.joins``) and returned as a ``ContinuousPlan`` (``sql.continuous.pipeline``)
that the runner feeds a source batch at a time.

Supported SQL
-------------
::

    query    := [WITH name AS (query), ...] SELECT item, ... FROM from [WHERE cond]
                [GROUP BY key, ... [, window]] [HAVING cond] [ORDER BY ...]
    from     := relation [[AS] alias] | (query) [AS] alias
                | from [INNER | LEFT [OUTER]] JOIN from ON cond  | from, from
    relation := stream | table | topics."topic" | topic | a WITH name
    window   := TUMBLE(t, size) | HOP(t, slide, size) | SESSION(t, gap)
    size     := INTERVAL 'n' unit | INTERVAL 'n unit'   (MILLISECOND .. DAY)
    item     := * | alias.* | expr [[AS] name]

``expr`` is anything DataFusion evaluates on one row (arithmetic, CASE, CAST, scalar
functions), plus in an aggregating SELECT the aggregates COUNT(*), COUNT(x), COUNT(DISTINCT
x), SUM, AVG, MIN, MAX and the window bounds TUMBLE_START / TUMBLE_END, HOP_START / HOP_END,
SESSION_START / SESSION_END (same arguments as the GROUP BY's window; bare ``window_start``
/ ``window_end`` mean the same). GROUP BY keys are expressions, select aliases or ordinals.

How each SELECT runs
--------------------
- No aggregate: a stateless stage (DataFusion runs the WHERE and select list on each batch).
  Its output keeps the input's event time (and watermark) when the select list keeps the
  time column as a bare column.
- GROUP BY with a window: a window stage. ``t`` must be the input's event-time column (a
  stream's declared WATERMARK column, or the time column a sub-query passes on). A window is
  emitted once when the watermark passes its end plus ``allowed_lateness_ms``
  (``emit="final"``; append-only results) or, with ``emit="updates"``, first when the
  watermark passes its end and again each time late rows within the lateness change it
  (upserts keyed by the selected group keys and window bounds). Late rows beyond the
  lateness are dropped and counted (``stats().late_rows_dropped``). The output's event time
  is the selected window end (watermark: input watermark minus lateness), else the selected
  window start (minus the size too).
- GROUP BY containing the input's event-time column (for example the ``window_end`` a
  windowed sub-query selects; Nexmark q5's "max count per window"): a window stage with a
  1 ms tumbling window on that column: each time value is a window, final once the
  watermark passes it.
- Any other GROUP BY: an updating aggregate: after each batch the new rows of the groups it
  changed, upserts keyed by the GROUP BY keys (which must all be selected; no HAVING, since
  a group that stops matching could not be deleted). In a sub-query it feeds its consumer
  a changelog instead (each changed group's old row taken back, its new row added: column
  ``__sign``), which only an aggregate without a window may read, with COUNT, SUM and AVG
  (Nexmark q4: the average of each auction's maximum bid per category).
- JOIN: each side planned on its own (a sub-query is planned recursively), conjuncts of ON
  and WHERE split: those on one stream side are applied below the join (a LEFT JOIN's ON
  conjunct on its left side stays in the condition), those on both sides (with columns
  qualified by the sides' aliases) are the condition ``sql.continuous.joins.plan_join``
  gets, the rest run above it, where columns are the join stage's ``<alias>__<column>``.

Output columns are named by their alias, else the column's name, else the function's
(``count``, ``sum``, ...), else ``_col<i>``; a name may appear once. Inner SELECTs always
emit final (append-only) results; ``emit`` applies to the outermost.
ORDER BY is allowed only above a window aggregation (it orders each emission); LIMIT,
DISTINCT, UNION, window functions (OVER) and sub-queries in expressions are refused, as is an
aggregate without GROUP BY (its updates would have no key).

Watermarks: per partition of a source (the batches' ``_partition``; ``partition`` for a raw
topic) the plan keeps the largest event time seen on the declared watermark column; the
source's watermark is the lowest, over its partitions that are not idle, of that maximum
minus the declared delay (when every partition is idle: the largest), and it never goes
back. It is advanced after each batch has been processed (a row is late if the batches
before it moved the watermark past its window), so a runner reading one partition ahead of
another does not make the other's rows late. The runner tells the plan the partitions a
source has (``set_partitions``: one without rows yet holds the watermark) and which are idle
(``mark_idle``: caught up with nothing new for a while; they stop holding it back, which
may close windows: ``mark_idle`` returns those results). Without these calls the plan
knows only the partitions it has seen rows of, none idle.

Known limits: with ``emit="updates"`` a window row that a later update makes fail the
HAVING keeps its last matching row, and a SESSION that grows earlier gets a new start, so
its earlier row (another key) stays; upserts cannot delete. A group of an aggregate over a
changelog whose rows are all taken back stays with COUNT 0.

Snapshot format
---------------
``snapshot()`` is one Arrow IPC stream of a table ``stage: utf8, state: binary`` (one row per
stage in plan order, ``state`` = that stage's ``snapshot()``; formats in
``sql.continuous.stages`` and the join module) whose schema metadata
``streamhouse.plan`` is JSON: ``{"version": 2, "stages": [ids], "sources": {name:
{"watermark": ms or null, "partitions": {"<partition>": largest event ms}}},
"stage_watermarks": {id: ms or null}, "rows_in": n, "rows_out": n}``. Version 1 (still
restored) had ``"sources": {name: largest event ms over all partitions, or null}``: its
watermark is kept and the per-partition maxima start empty. Which partitions are known or
idle is not stored (the runner says it again). ``restore`` needs a plan compiled from the
same SQL (the stage ids must match).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from sql.catalog import Relation
from sql.continuous.pipeline import DELETE_COLUMN, PlanError, PlannedInput, PlanStats, Source, Stage
from sql.continuous.stages import (
    SIGN,
    WINDOW_META_KEY,
    StatelessStage,
    UpdatingAggregateStage,
    WindowStage,
)
from sql.decode import RAW_SCHEMA
from sql.engine import relation_schema
from sql.windows import Aggregate, Hop, Session, Tumble, WatermarkTracker, Window, event_times_ms

__all__ = ["Plan", "plan_continuous"]


class _Dialect(Postgres):
    """PostgreSQL as sqlglot reads it, except that ``SESSION`` is not a keyword (so
    ``SESSION(t, gap)`` parses as a function call)."""

    class Tokenizer(Postgres.Tokenizer):
        KEYWORDS = {k: v for k, v in Postgres.Tokenizer.KEYWORDS.items() if k != "SESSION"}


DIALECT = "postgres"
SNAPSHOT_VERSION = 2
_META_KEY = b"streamhouse.plan"
_TOPICS = "topics"
_RESOLVED = "\x00stage"  # the qualifier of a column that already names a stage column
_UNIT_MS = {
    "MILLISECOND": 1,
    "SECOND": 1000,
    "MINUTE": 60_000,
    "HOUR": 3_600_000,
    "DAY": 86_400_000,
}
_WINDOW_ARGS = {"TUMBLE": 2, "HOP": 3, "SESSION": 2}
_WINDOW_PARAMS = {"TUMBLE": "size", "HOP": "slide, size", "SESSION": "gap"}
_BOUNDS = {
    f"{w}_{b}": (w, "window_start" if b == "START" else "window_end")
    for w in _WINDOW_ARGS
    for b in ("START", "END")
}
_AGGREGATES: dict[type, str] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Avg: "avg",
    exp.Min: "min",
    exp.Max: "max",
}


def plan_continuous(
    select_sql: str,
    relations: dict[str, Relation],
    topic_names: set[str],
    *,
    emit: str = "final",
    allowed_lateness_ms: int = 0,
) -> Plan:
    """Compiles ``select_sql`` (module docstring: what is supported); PlanError says what
    to change when it cannot run continuously."""
    if emit not in ("final", "updates"):
        raise PlanError(f"emit must be 'final' or 'updates', not {emit!r}")
    if not isinstance(allowed_lateness_ms, int) or allowed_lateness_ms < 0:
        raise PlanError(f"allowed lateness must be >= 0 ms, got {allowed_lateness_ms!r}")
    try:
        trees = sqlglot.parse(select_sql, dialect=_Dialect)
    except ParseError as exc:
        raise PlanError(f"the query does not parse: {exc}") from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise PlanError(f"expected one SELECT, got {len(trees)} statements")
    tree = trees[0]
    if not isinstance(tree, exp.Select):
        raise PlanError(
            f"a continuous query is one SELECT, not {tree.key.upper()}: UNION and the like "
            "are not supported"
        )
    tree = normalize_identifiers(tree, dialect=DIALECT)
    planner = _Planner(relations, topic_names, allowed_lateness_ms)
    top = planner.plan_select(tree, emit=emit, outer=True, ctes={})
    if top.input_name not in planner.stages:
        raise PlanError("a continuous query must compute something from its input")
    return Plan(select_sql, planner.sources, planner.stages, planner.trackers, top.input_name)


# ---------------------------------------------------------------------------------------
# planning


@dataclass
class _Scope:
    """The inputs a SELECT's column references resolve against: one, or the two sides of
    a join (then stage columns are ``<alias>__<column>``)."""

    sides: list[PlannedInput]
    qualifiers: list[set[str]]

    @property
    def join(self) -> bool:
        return len(self.sides) > 1

    def side_of(self, col: exp.Column) -> int:
        name = col.name
        if col.table:
            for i, names in enumerate(self.qualifiers):
                if col.table in names:
                    if name not in self.sides[i].schema.names:
                        raise PlanError(
                            f"unknown column {col.table}.{name}: {col.table} has "
                            f"{_names(self.sides[i].schema)}"
                        )
                    return i
            known = sorted(n for q in self.qualifiers for n in q)
            raise PlanError(
                f"unknown relation {col.table!r} in {col.table}.{name}: the FROM names "
                f"{', '.join(known)}"
            )
        found = [i for i, s in enumerate(self.sides) if name in s.schema.names]
        if not found:
            have = "; ".join(f"{s.alias}: {_names(s.schema)}" for s in self.sides)
            raise PlanError(f"unknown column {name!r}: the input has {have}")
        if len(found) > 1:
            raise PlanError(
                f"column {name!r} is in {' and '.join(self.sides[i].alias for i in found)}: "
                "qualify it (alias.column)"
            )
        return found[0]

    def stage_column(self, col: exp.Column) -> str:
        i = self.side_of(col)
        return f"{self.sides[i].alias}__{col.name}" if self.join else col.name

    def star(self, qualifier: str | None) -> list[tuple[str, str]]:
        """(output name, stage column) of ``*`` or ``qualifier.*``."""
        sides = range(len(self.sides))
        if qualifier is not None:
            sides = [i for i in sides if qualifier in self.qualifiers[i]]
            if not sides:
                raise PlanError(f"unknown relation {qualifier!r} in {qualifier}.*")
        counts: dict[str, int] = {}
        for s in self.sides:
            for n in s.schema.names:
                counts[n] = counts.get(n, 0) + 1
        out = []
        for i in sides:
            s = self.sides[i]
            for n in s.schema.names:
                if self.join:
                    stage = f"{s.alias}__{n}"
                    out.append((n if counts[n] == 1 else stage, stage))
                else:
                    out.append((n, n))
        return out


def _names(schema: pa.Schema) -> str:
    return ", ".join(schema.names)


def _col(name: str) -> exp.Column:
    return exp.column(name, quoted=True)


def _sql(node: exp.Expression) -> str:
    return node.sql(dialect=DIALECT, identify=True)


def _conjuncts(cond: exp.Expression | None) -> list[exp.Expression]:
    if cond is None:
        return []
    if isinstance(cond, exp.Paren):
        return _conjuncts(cond.this)
    if isinstance(cond, exp.And):
        return _conjuncts(cond.left) + _conjuncts(cond.right)
    return [cond]


def _and(conds: list[exp.Expression]) -> exp.Expression | None:
    if not conds:
        return None
    out = conds[0]
    for c in conds[1:]:
        out = exp.and_(out, c)
    return out


def _interval_ms(node: exp.Expression, what: str) -> int:
    """``INTERVAL '10' SECOND`` / ``INTERVAL '10 seconds'`` in milliseconds."""
    if not isinstance(node, exp.Interval):
        raise PlanError(f"{what} must be an INTERVAL like INTERVAL '10' SECOND, not {_sql(node)}")
    text = node.this.name if node.this is not None else ""
    unit = node.unit.name if node.unit is not None else ""
    if not unit:
        parts = text.split()
        if len(parts) != 2:
            raise PlanError(f"{what}: cannot read {_sql(node)}; write INTERVAL '10' SECOND")
        text, unit = parts
    unit = unit.upper()
    unit = unit[:-1] if unit.endswith("S") and unit[:-1] in _UNIT_MS else unit
    if unit not in _UNIT_MS:
        raise PlanError(f"{what}: unit {unit} is not one of {', '.join(_UNIT_MS)}")
    try:
        value = float(text)
    except ValueError:
        raise PlanError(f"{what}: {text!r} is not a number") from None
    ms = value * _UNIT_MS[unit]
    if ms != int(ms) or ms <= 0:
        raise PlanError(f"{what} must be a positive whole number of milliseconds, got {ms}")
    return int(ms)


def _out_name(item: exp.Expression, i: int) -> str:
    if isinstance(item, exp.Alias):
        return item.alias
    if isinstance(item, exp.Column):
        return item.name
    if isinstance(item, exp.Anonymous):
        return item.name.lower()
    if isinstance(item, exp.Func):
        return item.key
    return f"_col{i}"


class _Planner:
    def __init__(
        self, relations: dict[str, Relation], topic_names: set[str], lateness: int
    ) -> None:
        self.relations = relations
        self.topic_names = topic_names
        self.lateness = lateness
        self.sources: dict[str, Source] = {}
        self.trackers: dict[str, tuple[str, WatermarkTracker]] = {}
        self.stages: dict[str, Stage] = {}

    def _stage_id(self) -> str:
        return f"s{len(self.stages)}"

    def _add(self, stage_id: str, stage: Stage) -> PlannedInput:
        self.stages[stage_id] = stage
        return PlannedInput(
            input_name=stage_id,
            alias=stage_id,
            schema=stage.output_schema,
            time_column=stage.output_time_column,
            is_table=bool(stage.key_columns) and SIGN not in stage.output_schema.names,
            key_columns=tuple(stage.key_columns),
        )

    # -- FROM ----------------------------------------------------------------------------
    def _relation(self, node: exp.Expression, ctes: dict[str, exp.Select]) -> PlannedInput:
        """One FROM item (a relation or a sub-query) as a stage input."""
        alias = node.alias if node.alias else None
        if isinstance(node, exp.Subquery):
            inner = node.this
            if not isinstance(inner, exp.Select):
                raise PlanError(f"a sub-query must be a SELECT, not {inner.key.upper()}")
            planned = self.plan_select(inner, emit="final", outer=False, ctes=ctes)
            return _renamed(planned, alias or planned.alias)
        if not isinstance(node, exp.Table):
            raise PlanError(f"cannot read from {_sql(node)}: name a stream, a table or a topic")
        if node.args.get("joins") or node.args.get("pivots"):
            raise PlanError(f"unsupported FROM item {_sql(node)}")
        name, db = node.name, node.db
        if not db and name in ctes:
            # inside its own body a WITH name is not itself (no recursion)
            inner = {k: v for k, v in ctes.items() if k != name}
            planned = self.plan_select(ctes[name], emit="final", outer=False, ctes=inner)
            return _renamed(planned, alias or name)
        relation: Relation | None = None
        if db == _TOPICS:
            if name not in self.topic_names:
                raise PlanError(f'no topic called {name!r} (topics."name" reads a raw topic)')
            source_name = f"{_TOPICS}.{name}"
        elif db:
            raise PlanError(
                f"unknown schema {db!r} in {db}.{name}: name a stream or table, or "
                'topics."topic" for a raw topic'
            )
        elif name in self.relations:
            relation = self.relations[name]
            source_name = name
        elif name in self.topic_names:
            source_name = f"{_TOPICS}.{name}"
        else:
            known = sorted(self.relations)
            raise PlanError(
                f"no stream, table or topic called {name!r}: declared are "
                f'{", ".join(known) if known else "none"}; a raw topic is topics."name" '
                "(names with capitals or dashes need double quotes)"
            )
        topic = relation.topic if relation is not None else name
        is_table = relation is not None and relation.kind == "table"
        schema = relation_schema(relation) if relation is not None else RAW_SCHEMA
        time_column = None
        if relation is not None and relation.watermark is not None and not is_table:
            time_column = relation.watermark.column
            if source_name not in self.trackers:
                self.trackers[source_name] = (
                    time_column,
                    WatermarkTracker(relation.watermark.delay_ms),
                )
        self.sources[source_name] = Source(source_name, topic, relation, is_table)
        return PlannedInput(
            input_name=source_name,
            alias=alias or name,
            schema=schema,
            time_column=time_column,
            is_table=is_table,
            key_columns=("_key",) if is_table else (),
        )

    def _from(
        self, select: exp.Select, ctes: dict[str, exp.Select]
    ) -> tuple[PlannedInput, _Scope, list[exp.Expression]]:
        """The input of a SELECT, the scope its columns resolve in, and the WHERE conjuncts
        still to apply on it."""
        from_ = select.args.get("from_")
        if from_ is None:
            raise PlanError("a continuous query needs a FROM (a stream, a join or a sub-query)")
        where = select.args.get("where")
        conjuncts = _conjuncts(where.this if where is not None else None)
        joins = select.args.get("joins") or []
        first = self._relation(from_.this, ctes)
        if not joins:
            if first.is_table:
                raise PlanError(
                    f"{first.alias} is a table (latest value per key) or an updating result: "
                    "a continuous query reads it only as a JOIN's side with a stream"
                )
            names = {first.alias}
            if isinstance(from_.this, exp.Table) and not from_.this.alias:
                names.add(from_.this.name)
            return first, _Scope([first], [names]), conjuncts
        if len(joins) > 1:
            raise PlanError("one JOIN per SELECT: join the result of a sub-query for more")
        join = joins[0]
        if join.args.get("using"):
            raise PlanError("JOIN ... USING is not supported: write ON a.x = b.x")
        side = (join.side or "").upper()
        kind = (join.kind or "").upper()
        if side == "LEFT" and kind in ("", "OUTER"):
            how = "left"
        elif not side and kind in ("", "INNER"):
            how = "inner"
        else:
            raise PlanError(
                f"{' '.join(x for x in (side, kind) if x)} JOIN is not supported: use JOIN "
                "(inner) or LEFT JOIN"
            )
        second = self._relation(join.this, ctes)
        if first.alias == second.alias:
            raise PlanError(f"both sides of the JOIN are called {first.alias}: alias one")
        scope = _Scope([first, second], [{first.alias}, {second.alias}])
        on = _conjuncts(join.args.get("on"))
        below: list[list[exp.Expression]] = [[], []]
        condition: list[exp.Expression] = []
        above: list[exp.Expression] = []

        def sides(c: exp.Expression) -> set[int]:
            _no_subqueries(c)
            return {scope.side_of(col) for col in c.find_all(exp.Column)}

        for c in on:
            s = sides(c)
            if len(s) == 1:
                (i,) = s
                side_input = scope.sides[i]
                if (how == "inner" or i == 1) and not side_input.is_table:
                    below[i].append(c)
                elif how == "inner":
                    above.append(c)
                else:
                    condition.append(c)
            elif len(s) == 2:
                condition.append(c)
            elif how == "inner":
                above.append(c)
            else:
                condition.append(c)
        for c in conjuncts:
            s = sides(c)
            if len(s) == 1 and how == "inner":
                (i,) = s
                (below[i] if not scope.sides[i].is_table else above).append(c)
            elif len(s) == 1 and 0 in s and not first.is_table:
                below[0].append(c)
            elif len(s) == 2 and how == "inner":
                condition.append(c)
            else:
                above.append(c)
        inputs = list(scope.sides)
        for i in (0, 1):
            if below[i]:
                inputs[i] = self._filter(inputs[i], below[i])
        if inputs[0].input_name == inputs[1].input_name:
            # a self-join: the join stage must tell its inputs apart by name
            inputs[1] = self._filter(inputs[1], [])
        cond = _and([_qualified(c, scope) for c in condition])
        try:
            from sql.continuous import joins as join_module
        except ImportError:
            raise PlanError("joins are not supported yet") from None
        stage_id = self._stage_id()
        stage = join_module.plan_join(inputs[0], inputs[1], cond, how, stage_id)
        planned = self._add(stage_id, stage)
        return planned, _Scope(inputs, scope.qualifiers), above

    def _filter(self, side: PlannedInput, conds: list[exp.Expression]) -> PlannedInput:
        """A stateless filter below a join side (columns unqualified; no conditions: a
        stage passing the side through under a name of its own)."""

        def local(node: exp.Expression) -> exp.Expression:
            if isinstance(node, exp.Column):
                return _col(node.name)
            return node

        where = _and([c.transform(local) for c in conds])
        sql = 'SELECT * FROM "_in"' + ("" if where is None else f" WHERE {_sql(where)}")
        stage_id = self._stage_id()
        passthrough = {n: n for n in side.schema.names}
        stage = StatelessStage(
            stage_id, side, sql, side.time_column, side.key_columns, passthrough=passthrough
        )
        planned = self._add(stage_id, stage)
        return PlannedInput(
            planned.input_name,
            side.alias,
            planned.schema,
            side.time_column,
            side.is_table,
            side.key_columns,
        )

    # -- SELECT ---------------------------------------------------------------------------
    def plan_select(
        self, select: exp.Select, *, emit: str, outer: bool, ctes: dict[str, exp.Select]
    ) -> PlannedInput:
        with_ = select.args.get("with_")
        if with_ is not None:
            ctes = dict(ctes)
            for cte in with_.expressions:
                if not isinstance(cte.this, exp.Select):
                    raise PlanError(f"WITH {cte.alias}: must be a SELECT")
                ctes[cte.alias] = cte.this
        for arg, what in (
            ("distinct", "SELECT DISTINCT (use GROUP BY)"),
            ("limit", "LIMIT (a stream has no end to count to)"),
            ("offset", "OFFSET"),
            ("qualify", "QUALIFY"),
            ("windows", "WINDOW clauses"),
        ):
            if select.args.get(arg):
                raise PlanError(f"{what} is not supported in a continuous query")
        for node in select.expressions:
            if node.find(exp.Window):
                raise PlanError(
                    "window functions (OVER) are not supported: use GROUP BY with TUMBLE, HOP "
                    "or SESSION"
                )
        source, scope, where = self._from(select, ctes)
        for c in where:
            _no_subqueries(c)
        group = select.args.get("group")
        group_exprs = list(group.expressions) if group is not None else []
        having = select.args.get("having")
        aggregating = bool(group_exprs) or any(
            node.find(exp.AggFunc) for node in select.expressions
        )
        if not aggregating:
            for node in [*select.expressions, *where]:
                for call in node.find_all(exp.Anonymous):
                    name = call.name.upper()
                    if name in _BOUNDS or name in _WINDOW_ARGS:
                        family = _BOUNDS[name][0] if name in _BOUNDS else name
                        raise PlanError(
                            f"{name}(...) needs GROUP BY {family}(t, ...) and an aggregate"
                        )
            if having is not None:
                raise PlanError("HAVING needs GROUP BY")
            if select.args.get("order"):
                raise PlanError(
                    "ORDER BY needs a window aggregation (a stream has no end to sort up to)"
                )
            return self._stateless(select, source, scope, where, outer)
        return self._aggregate(select, source, scope, where, group_exprs, emit, outer)

    def _items(self, select: exp.Select, scope: _Scope) -> list[tuple[str, exp.Expression]]:
        """(output name, expression) of the select list, ``*`` expanded, names checked."""
        items: list[tuple[str, exp.Expression]] = []
        for i, item in enumerate(select.expressions):
            if isinstance(item, exp.Star) or (
                isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
            ):
                qualifier = item.table if isinstance(item, exp.Column) else None
                for out, col in scope.star(qualifier or None):
                    items.append((out, exp.column(col, table=_RESOLVED, quoted=True)))
                continue
            _no_subqueries(item)
            name = _out_name(item, i)
            items.append((name, item.this if isinstance(item, exp.Alias) else item))
        seen: set[str] = set()
        for name, _ in items:
            if name in seen:
                raise PlanError(f"output column {name!r} appears twice: name one with AS")
            seen.add(name)
        return items

    @staticmethod
    def _resolve(node: exp.Expression, scope: _Scope, extra: set[str] = frozenset()) -> Any:
        def fn(n: exp.Expression) -> exp.Expression:
            if isinstance(n, exp.Column) and not isinstance(n.this, exp.Star):
                if n.table == _RESOLVED:  # a column ``*`` stands for: a stage column already
                    return _col(n.name)
                if (
                    not n.table
                    and n.name in extra
                    and not any(n.name in s.schema.names for s in scope.sides)
                ):
                    return _col(n.name)
                return _col(scope.stage_column(n))
            return n

        return node.transform(fn)

    def _stateless(
        self,
        select: exp.Select,
        source: PlannedInput,
        scope: _Scope,
        where: list[exp.Expression],
        outer: bool,
    ) -> PlannedInput:
        items = self._items(select, scope)
        if source.key_columns:
            raise PlanError(
                f"{source.alias} gives updates (rows replacing earlier rows by key), which a "
                "SELECT over it can only aggregate (COUNT, SUM, AVG with GROUP BY): "
                "filter and project inside it instead"
            )
        time_out = None
        rendered = []
        passthrough: dict[str, str] = {}
        for name, node in items:
            r = self._resolve(node, scope)
            if isinstance(r, exp.Column):
                passthrough[name] = r.name
            if (
                time_out is None
                and source.time_column is not None
                and isinstance(r, exp.Column)
                and r.name == source.time_column
            ):
                time_out = name
            rendered.append(f"{_sql(r)} AS {_sql(exp.to_identifier(name, quoted=True))}")
        sql = f'SELECT {", ".join(rendered)} FROM "_in"'
        cond = _and([self._resolve(c, scope) for c in where])
        if cond is not None:
            sql += f" WHERE {_sql(cond)}"
        stage_id = self._stage_id()
        stage = StatelessStage(stage_id, source, sql, time_out, passthrough=passthrough)
        return self._add(stage_id, stage)

    def _aggregate(
        self,
        select: exp.Select,
        source: PlannedInput,
        scope: _Scope,
        where: list[exp.Expression],
        group_exprs: list[exp.Expression],
        emit: str,
        outer: bool,
    ) -> PlannedInput:
        changelog_in = SIGN in source.schema.names
        if source.key_columns and not changelog_in:
            raise PlanError(
                f"{source.alias} gives updates (rows replacing earlier rows by key); "
                "aggregating them needs retractions, which are not supported"
            )
        for item in select.expressions:
            if isinstance(item, exp.Star) or (
                isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
            ):
                raise PlanError("SELECT * with GROUP BY: list the group keys and aggregates")
        items = self._items(select, scope)
        by_name = {name: node for name, node in items}
        # GROUP BY ordinals and select aliases -> expressions
        keys_raw: list[exp.Expression] = []
        window_call: exp.Anonymous | None = None
        for g in group_exprs:
            if isinstance(g, exp.Literal) and not g.is_string:
                n = int(g.name)
                if not 1 <= n <= len(items):
                    raise PlanError(f"GROUP BY {n}: the select list has {len(items)} items")
                g = items[n - 1][1]
            elif (
                isinstance(g, exp.Column)
                and not g.table
                and g.name in by_name
                and not any(g.name in s.schema.names for s in scope.sides)
            ):
                g = by_name[g.name]
            if isinstance(g, exp.Anonymous) and g.name.upper() in _WINDOW_ARGS:
                if window_call is not None:
                    raise PlanError("GROUP BY has two windows: use one TUMBLE, HOP or SESSION")
                window_call = g
                continue
            if g.find(*_AGGREGATES) or g.find(exp.AggFunc):
                raise PlanError(f"GROUP BY {_sql(g)}: an aggregate cannot be a group key")
            keys_raw.append(g)
        bounds = {"window_start", "window_end"} if window_call is not None else set()
        keys = [self._resolve(k, scope) for k in keys_raw]
        window: Window | None = None
        time_col: str | None = None
        window_args: list[exp.Expression] = []
        if window_call is not None:
            fname = window_call.name.upper()
            args = list(window_call.expressions)
            if len(args) != _WINDOW_ARGS[fname]:
                raise PlanError(
                    f"{fname} takes {_WINDOW_ARGS[fname]} arguments (time column, "
                    f"{_WINDOW_PARAMS[fname]}), got {len(args)}"
                )
            window_args = [self._resolve(a, scope) for a in args]
            t = window_args[0]
            if not isinstance(t, exp.Column):
                raise PlanError(f"{fname}'s first argument must be the event-time column")
            time_col = t.name
            if source.time_column is None or time_col != source.time_column:
                raise PlanError(
                    f"{fname}({_sql(args[0])}, ...): {_sql(args[0])} has no watermark"
                    + (
                        f"; the event-time column of {source.alias} is {source.time_column}"
                        if source.time_column
                        else f"; {source.alias} has no event time (declare WATERMARK FOR "
                        "a TIMESTAMP column in CREATE STREAM, or select the time column of a "
                        "windowed sub-query)"
                    )
                )
            if fname == "TUMBLE":
                window = Tumble(_interval_ms(args[1], "TUMBLE size"))
            elif fname == "HOP":
                slide = _interval_ms(args[1], "HOP slide")
                size = _interval_ms(args[2], "HOP size")
                if slide > size:
                    raise PlanError(
                        f"HOP slide ({slide} ms) exceeds its size ({size} ms): HOP(t, slide, size)"
                    )
                window = Hop(size, slide)
            else:
                window = Session(_interval_ms(args[1], "SESSION gap"))
        elif source.time_column is not None and any(
            isinstance(k, exp.Column) and k.name == source.time_column for k in keys
        ):
            # GROUP BY the input's event time: each time value is a window, final once the
            # watermark passes it
            window = Tumble(1)
            time_col = source.time_column
            keys = [
                k for k in keys if not (isinstance(k, exp.Column) and k.name == source.time_column)
            ]
            bounds = set()
        # the aggregates and the rewrite of the select list over the stage's columns
        aggs: dict[exp.Expression, int] = {}
        agg_list: list[tuple[str, exp.Expression | None]] = []

        def rewrite(node: exp.Expression) -> exp.Expression:
            def fn(n: exp.Expression) -> exp.Expression:
                if isinstance(n, exp.Filter):
                    raise PlanError(
                        f"{_sql(n)}: aggregate FILTER is not supported; put a CASE inside "
                        "the aggregate (SUM(CASE WHEN ... THEN x END))"
                    )
                if isinstance(n, exp.AggFunc):
                    func = _AGGREGATES.get(type(n))
                    if func is None:
                        raise PlanError(
                            f"aggregate {_sql(n)} is not supported: use COUNT, SUM, AVG, MIN, "
                            "MAX or COUNT(DISTINCT ...)"
                        )
                    arg: exp.Expression | None = n.this
                    if isinstance(arg, exp.Distinct):
                        if func != "count" or len(arg.expressions) != 1:
                            raise PlanError(
                                f"{_sql(n)}: only COUNT(DISTINCT x) of one value is supported"
                            )
                        func, arg = "count_distinct", arg.expressions[0]
                    elif isinstance(arg, exp.Star):
                        arg = None
                    if n.expressions and func != "count_distinct":
                        raise PlanError(f"{_sql(n)}: one argument only")
                    if arg is not None and (arg.find(*_AGGREGATES) or arg.find(exp.AggFunc)):
                        raise PlanError(f"{_sql(n)}: aggregates cannot nest")
                    key = exp.Tuple(expressions=[exp.Var(this=func), arg or exp.Star()])
                    if key not in aggs:
                        aggs[key] = len(agg_list)
                        agg_list.append((func, arg))
                    return _col(f"__g{aggs[key]}")
                if isinstance(n, exp.Anonymous) and n.name.upper() in _BOUNDS:
                    fam, bound = _BOUNDS[n.name.upper()]
                    if window_call is None or window_call.name.upper() != fam:
                        raise PlanError(
                            f"{n.name.upper()} needs GROUP BY {fam}(...), not "
                            f"{_sql(window_call) if window_call is not None else 'no window'}"
                        )
                    if not _same_window_args(list(n.expressions), window_args):
                        raise PlanError(
                            f"{_sql(n)} must repeat the arguments of the GROUP BY's "
                            f"{_sql(window_call)}"
                        )
                    return _col(bound)
                for i, k in enumerate(keys):
                    if n == k:
                        return _col(f"__k{i}")
                if (
                    window is not None
                    and time_col is not None
                    and not bounds
                    and n == _col(time_col)
                ):
                    return _col("window_start")
                return n

            return node.transform(fn)

        generated: set[str] = set(bounds)
        out_items: list[tuple[str, exp.Expression]] = []
        for name, node in items:
            r = rewrite(self._resolve(node, scope, bounds))
            out_items.append((name, r))
        having_node = select.args.get("having")
        having = (
            rewrite(self._resolve(having_node.this, scope, bounds))
            if having_node is not None
            else None
        )
        if window is not None and not bounds:
            generated.add("window_start")
        generated |= {f"__k{i}" for i in range(len(keys))}
        generated |= {f"__g{i}" for i in range(len(agg_list))}
        for name, r in out_items + ([("HAVING", having)] if having is not None else []):
            for col in r.find_all(exp.Column):
                if col.name not in generated:
                    shown = col.name.split("__", 1)[-1] if scope.join else col.name
                    raise PlanError(
                        f"column {shown!r} (in {name}) must be in GROUP BY or inside an aggregate"
                    )
        if not agg_list:
            agg_list.append(("count", None))  # the window operator needs one aggregate
        # pre-projection
        pre_cols = [f"{_sql(k)} AS {_sql(_col(f'__k{i}'))}" for i, k in enumerate(keys)]
        aggregates: list[Aggregate] = []
        labels = {f"__a{j}": _shown(arg, scope) for j, (_, arg) in enumerate(agg_list) if arg}
        for j, (func, arg) in enumerate(agg_list):
            if arg is None:
                aggregates.append(Aggregate(func, None, f"__g{j}"))
            else:
                pre_cols.append(f"{_sql(arg)} AS {_sql(_col(f'__a{j}'))}")
                aggregates.append(Aggregate(func, f"__a{j}", f"__g{j}"))
        if window is not None:
            assert time_col is not None
            pre_cols.append(f'{_sql(_col(time_col))} AS "__t"')
        if changelog_in:
            if window is not None:
                raise PlanError(
                    f"{source.alias} is an aggregate without a window (it gives updates): a "
                    "window over it is not supported; window the inner query instead"
                )
            pre_cols.append(f"{_sql(_col(SIGN))} AS {_sql(_col(SIGN))}")
        if not pre_cols:
            pre_cols.append('1 AS "__one"')
        pre_sql = f'SELECT {", ".join(pre_cols)} FROM "_in"'
        cond = _and([self._resolve(c, scope) for c in where])
        if cond is not None:
            pre_sql += f" WHERE {_sql(cond)}"
        post_sql = "SELECT " + ", ".join(
            f"{_sql(r)} AS {_sql(exp.to_identifier(name, quoted=True))}" for name, r in out_items
        )
        post_sql += ' FROM "_w"'
        if having is not None:
            post_sql += f" WHERE {_sql(having)}"
        order = select.args.get("order")
        key_names = [f"__k{i}" for i in range(len(keys))]
        stage_id = self._stage_id()
        if window is None and not outer:
            # feeding another aggregate: a changelog (old rows taken back, new rows added)
            if order is not None:
                raise PlanError("ORDER BY in a sub-query is not supported")
            stage = UpdatingAggregateStage(
                stage_id,
                source,
                pre_sql,
                key_names,
                aggregates,
                post_sql,
                (SIGN,),
                changelog=True,
                labels=labels,
            )
            return self._add(stage_id, stage)
        if window is None:
            if having is not None:
                raise PlanError(
                    "HAVING over an aggregate without a window would need to delete rows that "
                    "stop matching, which upserts cannot express: filter in an outer query over "
                    "a window, or drop the HAVING"
                )
            if order is not None:
                raise PlanError(
                    "ORDER BY needs a window aggregation (a stream has no end to sort up to)"
                )
            if not keys:
                raise PlanError(
                    "an aggregate without GROUP BY over a stream gives updates with no key: "
                    "add GROUP BY keys or a window (TUMBLE, HOP, SESSION)"
                )
            key_out = self._key_outputs(out_items, key_names, [_shown(k, scope) for k in keys])
            stage: Stage = UpdatingAggregateStage(
                stage_id,
                source,
                pre_sql,
                key_names,
                aggregates,
                post_sql,
                tuple(key_out),
                labels=labels,
            )
            return self._add(stage_id, stage)
        if order is not None:
            post_sql += " " + _sql(
                exp.Order(
                    expressions=[
                        rewrite(self._resolve_order(o, scope, out_items, bounds))
                        for o in order.expressions
                    ]
                )
            )
        # the output's event time: the selected window end, else start
        time_out, time_bound = None, None
        for bound, which in (("window_end", "end"), ("window_start", "start")):
            for name, r in out_items:
                if isinstance(r, exp.Column) and r.name == bound:
                    time_out, time_bound = name, which
                    break
            if time_out is not None:
                break
        if not bounds and time_out is not None:  # the 1 ms window on the input's time: t itself
            time_bound = "end"
        updates = emit == "updates" and outer
        key_columns: tuple[str, ...] = ()
        if updates:
            key_out = self._key_outputs(out_items, key_names, [_shown(k, scope) for k in keys])
            wins = [
                n
                for n, r in out_items
                if isinstance(r, exp.Column) and r.name in ("window_start", "window_end")
            ]
            if not wins:
                raise PlanError(
                    "emit updates keys rows by the group keys and window: select the window "
                    "start or end (TUMBLE_START(...) etc.)"
                )
            key_columns = tuple(key_out + wins)
        # field metadata: the window bounds marked for joins; keys and (1 ms window) the
        # time column keep the marks they had in the input
        marks: dict[str, dict[bytes, bytes]] = {}
        for name, r in out_items:
            if not isinstance(r, exp.Column) or name in marks:
                continue
            src: str | None = None
            if r.name in ("window_start", "window_end") and bounds:
                marks[name] = {WINDOW_META_KEY: r.name.removeprefix("window_").encode()}
            elif r.name == "window_start":
                src = time_col
            elif r.name.startswith("__k"):
                k = keys[int(r.name[3:])]
                src = k.name if isinstance(k, exp.Column) else None
            if src is not None and source.schema.field(src).metadata:
                marks[name] = dict(source.schema.field(src).metadata)
        stage = WindowStage(
            stage_id,
            source,
            pre_sql,
            window,
            key_names,
            aggregates,
            post_sql,
            allowed_lateness_ms=self.lateness,
            emit_updates=updates,
            output_time_column=time_out,
            output_time_bound=time_bound,
            key_columns=key_columns,
            field_metadata=marks,
            labels=labels,
        )
        return self._add(stage_id, stage)

    def _resolve_order(
        self,
        o: exp.Expression,
        scope: _Scope,
        out_items: list[tuple[str, exp.Expression]],
        bounds: set[str],
    ) -> exp.Expression:
        names = {n for n, _ in out_items}
        node = o.this if isinstance(o, exp.Ordered) else o

        def fn(n: exp.Expression) -> exp.Expression:
            if isinstance(n, exp.Column) and not n.table and n.name in names:
                return _col(n.name)
            return n

        if isinstance(node, exp.Column) and not node.table and node.name in names:
            resolved: exp.Expression = _col(node.name)
        else:
            resolved = self._resolve(node.transform(fn), scope, bounds | names)
        if isinstance(o, exp.Ordered):
            ordered = o.copy()
            ordered.set("this", resolved)
            return ordered
        return resolved

    @staticmethod
    def _key_outputs(
        out_items: list[tuple[str, exp.Expression]], key_names: list[str], shown: list[str]
    ) -> list[str]:
        """The output names of the group keys (each must be selected as it is)."""
        out = []
        for k, text in zip(key_names, shown, strict=True):
            found = [n for n, r in out_items if isinstance(r, exp.Column) and r.name == k]
            if not found:
                raise PlanError(
                    f"GROUP BY {text}: select it as it is (the updates are keyed by the group "
                    "keys), or leave it out of GROUP BY"
                )
            out.append(found[0])
        return out


def _same_window_args(a: list[exp.Expression], b: list[exp.Expression]) -> bool:
    """The same time column and the same intervals (however written)."""
    if len(a) != len(b) or not a or a[0] != b[0]:
        return False
    for x, y in zip(a[1:], b[1:], strict=True):
        try:
            if _interval_ms(x, "") != _interval_ms(y, ""):
                return False
        except PlanError:
            return False
    return True


def _shown(node: exp.Expression, scope: _Scope) -> str:
    """An expression over stage columns as the user wrote it (``alias.column`` for a join's
    ``alias__column``)."""

    def fn(n: exp.Expression) -> exp.Expression:
        if isinstance(n, exp.Column) and scope.join and "__" in n.name:
            alias, column = n.name.split("__", 1)
            return exp.column(column, table=alias, quoted=True)
        return n

    return node.transform(fn).sql(dialect=DIALECT)


def _renamed(planned: PlannedInput, alias: str) -> PlannedInput:
    return PlannedInput(
        planned.input_name,
        alias,
        planned.schema,
        planned.time_column,
        planned.is_table,
        planned.key_columns,
    )


def _no_subqueries(node: exp.Expression) -> None:
    if node.find(exp.Subquery, exp.Exists) or (
        isinstance(node, exp.Expression) and any(isinstance(n, exp.Select) for n in node.walk())
    ):
        raise PlanError(f"sub-queries in expressions are not supported: {_sql(node)}")


def _qualified(cond: exp.Expression, scope: _Scope) -> exp.Expression:
    """A join condition with every column qualified by its side's alias."""

    def fn(n: exp.Expression) -> exp.Expression:
        if isinstance(n, exp.Column):
            i = scope.side_of(n)
            return exp.column(n.name, table=scope.sides[i].alias, quoted=True)
        return n

    return cond.transform(fn)


# ---------------------------------------------------------------------------------------
# the plan


class _SourceWatermark:
    """One source's watermark from per-partition event-time maxima (module docstring)."""

    def __init__(self, column: str, delay_ms: int) -> None:
        self.column = column
        self.delay_ms = delay_ms
        self.maxima: dict[int, int] = {}  # partition -> largest event ms seen
        self.known: set[int] = set()  # partitions the runner says the source has
        self.idle: set[int] = set()
        self.value: int | None = None  # the watermark so far (it never goes back)

    def observe(self, batch: pa.RecordBatch) -> None:
        t, valid = event_times_ms(batch.column(self.column))
        names = batch.schema.names
        part_col = "_partition" if "_partition" in names else "partition"
        if part_col in names:
            parts = batch.column(part_col).to_numpy(zero_copy_only=False).astype(np.int64)
        else:
            parts = np.full(len(t), -1, dtype=np.int64)
        if valid is not None:
            t, parts = t[valid], parts[valid]
        if not len(t):
            return
        order = np.argsort(parts, kind="stable")
        parts, t = parts[order], t[order]
        starts = np.flatnonzero(np.r_[True, parts[1:] != parts[:-1]])
        maxima = np.maximum.reduceat(t, starts).tolist()
        for p, m in zip(parts[starts].tolist(), maxima, strict=True):
            if p not in self.maxima or m > self.maxima[p]:
                self.maxima[p] = m

    def advance(self) -> int | None:
        """The watermark now: the lowest (largest event time - delay) over the partitions
        that are not idle (a known partition with no rows yet: none); all idle: the
        largest. Never lower than before."""
        active = (self.known | self.maxima.keys()) - self.idle
        if active:
            if any(p not in self.maxima for p in active):
                return self.value
            candidate = min(self.maxima[p] for p in active) - self.delay_ms
        elif self.maxima:
            candidate = max(self.maxima.values()) - self.delay_ms
        else:
            return self.value
        if self.value is None or candidate > self.value:
            self.value = candidate
        return self.value

    def state(self) -> dict[str, Any]:
        return {"watermark": self.value, "partitions": {str(p): m for p, m in self.maxima.items()}}

    def restore(self, state: Any, version: int) -> None:
        self.known, self.idle = set(), set()
        if version == 1:  # {name: largest event ms over all partitions, or null}
            self.maxima = {}
            self.value = None if state is None else int(state) - self.delay_ms
            return
        state = state or {}
        wm = state.get("watermark")
        self.value = None if wm is None else int(wm)
        self.maxima = {int(p): int(m) for p, m in (state.get("partitions") or {}).items()}


class Plan:
    """A compiled continuous query (``sql.continuous.pipeline.ContinuousPlan``)."""

    def __init__(
        self,
        sql: str,
        sources: dict[str, Source],
        stages: dict[str, Stage],
        trackers: dict[str, tuple[str, WatermarkTracker]],
        final: str,
    ) -> None:
        self.sql = sql
        self.sources = sources
        self._stages = stages
        self._watermarks = {
            name: _SourceWatermark(column, tracker.delay_ms)
            for name, (column, tracker) in trackers.items()
        }
        self._final = final
        top = stages[final]
        self.output_schema: pa.Schema = top.output_schema
        self.key_columns: tuple[str, ...] = tuple(top.key_columns)
        self.output_time_column: str | None = top.output_time_column
        self._consumers: dict[str, list[str]] = {}
        for sid, stage in stages.items():
            for name in stage.inputs:
                self._consumers.setdefault(name, []).append(sid)
        self._stage_wm: dict[str, int | None] = {sid: None for sid in stages}
        self._rows_in = 0
        self._rows_out = 0
        self._results: list[pa.RecordBatch] = []

    @property
    def stages(self) -> dict[str, Stage]:
        return dict(self._stages)

    def process(self, source: str, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        self._check_source(source)
        self._results = []
        if batch.num_rows:
            self._rows_in += batch.num_rows
            self._deliver(source, [batch])
            tracked = self._watermarks.get(source)
            if tracked is not None:
                tracked.observe(batch)
                self._move(source, tracked)
        return self._take_results()

    def set_partitions(self, source: str, partitions: Iterable[int]) -> None:
        """Tells the plan the partitions ``source`` has now: one never seen (and not idle)
        holds the source's watermark back until it delivers rows or is marked idle. Without
        this call the plan knows the partitions it has seen rows of."""
        self._check_source(source)
        tracked = self._watermarks.get(source)
        if tracked is not None:
            tracked.known.update(int(p) for p in partitions)

    def mark_idle(self, source: str, partitions: Iterable[int]) -> list[pa.RecordBatch]:
        """Sets which partitions of ``source`` are idle (caught up, nothing new for a while;
        replaces the previous set): they no longer hold the source's watermark back. Returns
        the results this releases (windows the watermark now passes)."""
        self._check_source(source)
        self._results = []
        tracked = self._watermarks.get(source)
        if tracked is not None:
            tracked.idle = {int(p) for p in partitions}
            self._move(source, tracked)
        return self._take_results()

    def _check_source(self, source: str) -> None:
        if source not in self.sources:
            raise PlanError(f"this query reads {', '.join(sorted(self.sources))}, not {source!r}")

    def _move(self, source: str, tracked: _SourceWatermark) -> None:
        before = tracked.value
        wm = tracked.advance()
        if wm is not None and wm != before:
            self._advance(source, wm)

    def _take_results(self) -> list[pa.RecordBatch]:
        out = [self._conform(b) for b in self._results if b.num_rows]
        self._results = []
        self._rows_out += sum(b.num_rows for b in out)
        return out

    def _conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.schema == self.output_schema:
            return batch
        if DELETE_COLUMN in batch.schema.names and self.key_columns:  # pipeline: deletes
            flag = batch.column(DELETE_COLUMN)
            rest = batch.drop_columns([DELETE_COLUMN]).cast(self.output_schema)
            return rest.append_column(DELETE_COLUMN, flag)
        return batch.cast(self.output_schema)

    def _emit(self, stage_id: str, batches: list[pa.RecordBatch]) -> None:
        if not batches:
            return
        if stage_id == self._final:
            self._results.extend(batches)
        else:
            self._deliver(stage_id, batches)

    def _deliver(self, name: str, batches: list[pa.RecordBatch]) -> None:
        for sid in self._consumers.get(name, []):
            stage = self._stages[sid]
            out: list[pa.RecordBatch] = []
            for b in batches:
                out.extend(stage.process(name, b))
            self._emit(sid, out)

    def _advance(self, name: str, watermark: int) -> None:
        for sid in self._consumers.get(name, []):
            stage = self._stages[sid]
            self._emit(sid, stage.advance_watermark(name, watermark))
            wm = stage.output_watermark()
            if wm is not None and (self._stage_wm[sid] is None or wm > self._stage_wm[sid]):
                self._stage_wm[sid] = wm
                self._advance(sid, wm)

    def watermark_ms(self) -> int | None:
        """The lowest watermark over the sources that have one (None before any)."""
        values = [t.value for t in self._watermarks.values()]
        known = [v for v in values if v is not None]
        return min(known) if known and len(known) == len(values) else None

    def stats(self) -> PlanStats:
        """Rows in (source rows) and out (result rows), late rows dropped by every stage;
        ``extra``: ``null_time_rows`` (rows a window dropped for a null event time) and
        ``join_buffered_rows`` (rows the join stages hold)."""
        stages = list(self._stages.values())
        late = sum(int(getattr(s, "late_rows_dropped", 0)) for s in stages)
        extra = {
            "null_time_rows": sum(
                s.op.stats.null_time_rows for s in stages if isinstance(s, WindowStage)
            ),
            "join_buffered_rows": sum(
                sum(s.buffered_rows()) for s in stages if hasattr(s, "buffered_rows")
            ),
        }
        return PlanStats(
            rows_in=self._rows_in, rows_out=self._rows_out, late_rows_dropped=late, extra=extra
        )

    def snapshot(self) -> bytes:
        meta = {
            "version": SNAPSHOT_VERSION,
            "stages": list(self._stages),
            "sources": {n: t.state() for n, t in self._watermarks.items()},
            "stage_watermarks": self._stage_wm,
            "rows_in": self._rows_in,
            "rows_out": self._rows_out,
        }
        table = pa.table(
            {
                "stage": pa.array(list(self._stages), pa.utf8()),
                "state": pa.array([s.snapshot() for s in self._stages.values()], pa.binary()),
            }
        ).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    def restore(self, data: bytes) -> None:
        try:
            table = pa.ipc.open_stream(data).read_all()
            meta = json.loads((table.schema.metadata or {})[_META_KEY])
        except (pa.ArrowInvalid, KeyError, ValueError, TypeError) as exc:
            raise PlanError(
                f"not a continuous query snapshot ({exc}); was it written by snapshot()?"
            ) from None
        version = meta.get("version") if isinstance(meta, dict) else None
        if version not in (1, SNAPSHOT_VERSION):
            raise PlanError(
                f"plan snapshot version {version}, this code reads 1 and {SNAPSHOT_VERSION}"
            )
        ids = table.column("stage").to_pylist()
        if ids != list(self._stages) or meta.get("stages") != ids:
            raise PlanError(
                f"the snapshot has stages {ids}, this plan {list(self._stages)}: it was taken "
                "of another query (was the SQL changed?)"
            )
        for sid, blob in zip(ids, table.column("state").to_pylist(), strict=True):
            self._stages[sid].restore(blob)
        for name, tracked in self._watermarks.items():
            tracked.restore(meta["sources"].get(name), version)
        self._stage_wm = {sid: meta["stage_watermarks"].get(sid) for sid in self._stages}
        self._rows_in = int(meta.get("rows_in", 0))
        self._rows_out = int(meta.get("rows_out", 0))
