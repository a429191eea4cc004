"""What a join condition says, read off its sqlglot expression (used by ``joins.plan_join``).

A condition is the AND of conjuncts referencing both sides. Each conjunct is classified:

- ``L.x = R.y`` (plain columns of different sides): an *equi pair*, a hash-join key.
- a comparison of the two sides' columns, each side optionally plus or minus a constant
  (``INTERVAL 'n' UNIT`` for timestamps, a number of milliseconds for integer times):
  ``<``, ``<=``, ``>``, ``>=``, ``=`` and ``BETWEEN``. Read as ``X.a + c1 <= Y.b + c2``
  (strict comparisons are read as non-strict: bounds only decide what state is kept, the
  whole condition is evaluated on every candidate pair). When ``a`` is X's time column this
  is an *upper bound* on X's time in terms of a Y row: ``X.t <= Y.b + (c2 - c1)``; once
  X's watermark passes ``Y.b + c2 - c1``, no later X row can match that Y row.
- anything else is only evaluated (by DataFusion, on the candidate pairs).

Every conjunct, classified or not, is part of the residual filter, so the bounds and pairs
only ever decide how candidates are found and how long rows are kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot.expressions as exp

from sql.continuous.pipeline import PlanError, PlannedInput

__all__ = [
    "Bound",
    "ConditionInfo",
    "analyse_condition",
    "compile_residual",
    "conjuncts",
    "interval_ms",
    "residual_sql",
    "window_columns",
]

_UNIT_MS = {
    "millisecond": 1,
    "ms": 1,
    "second": 1000,
    "s": 1000,
    "sec": 1000,
    "minute": 60_000,
    "min": 60_000,
    "hour": 3_600_000,
    "h": 3_600_000,
    "day": 86_400_000,
    "d": 86_400_000,
}
WINDOW_META_KEY = b"streamhouse.window"


@dataclass(frozen=True)
class Bound:
    """``other.time <= own.column + offset_ms``: a row of this side cannot match any row of
    the other side whose time is above the value."""

    column: str
    offset_ms: int


@dataclass
class ConditionInfo:
    """The classified condition. Side 0 is the left input, 1 the right."""

    equi: list[tuple[str, str]] = field(default_factory=list)  # (left column, right column)
    bounds: tuple[list[Bound], list[Bound]] = field(default_factory=lambda: ([], []))
    conjuncts: list[exp.Expression] = field(default_factory=list)
    residual: list[exp.Expression] = field(default_factory=list)  # not enforced by equi keys


def interval_ms(node: exp.Expression) -> int | None:
    """Milliseconds of ``INTERVAL '10' SECOND`` / ``INTERVAL '10 seconds'``; None if not one."""
    if not isinstance(node, exp.Interval):
        return None
    text = node.this.name if node.this is not None else ""
    unit = node.unit.name if node.unit is not None else ""
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", f"{text} {unit}".strip())
    if match is None:
        return None
    number, name = match.group(1), match.group(2).lower()
    if name.endswith("s") and name[:-1] in _UNIT_MS:
        name = name[:-1]
    if name not in _UNIT_MS:
        return None
    return round(float(number) * _UNIT_MS[name])


def window_columns(schema: pa.Schema) -> tuple[str, str] | None:
    """The (window start, window end) columns of a windowed sub-query's output: fields whose
    metadata ``streamhouse.window`` is ``start`` / ``end``, else ones named ``window_start``
    / ``window_end``."""
    marked: dict[bytes, str] = {}
    for f in schema:
        role = (f.metadata or {}).get(WINDOW_META_KEY)
        if role in (b"start", b"end"):
            marked.setdefault(role, f.name)
    if len(marked) == 2:
        return marked[b"start"], marked[b"end"]
    names = set(schema.names)
    if {"window_start", "window_end"} <= names:
        return "window_start", "window_end"
    return None


def _strip(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def conjuncts(condition: exp.Expression) -> list[exp.Expression]:
    node = _strip(condition)
    if isinstance(node, exp.And):
        return conjuncts(node.this) + conjuncts(node.expression)
    return [node]


class _Resolver:
    def __init__(self, left: PlannedInput, right: PlannedInput) -> None:
        self.inputs = (left, right)

    def side(self, column: exp.Column) -> tuple[int, str]:
        """(side, column name) of a column reference; PlanError when it names neither side."""
        name, table = column.name, column.table
        sides = [0, 1]
        if table:
            sides = [i for i in (0, 1) if self.inputs[i].alias == table]
            if not sides:
                sides = [i for i in (0, 1) if self.inputs[i].alias.lower() == table.lower()]
            if not sides:
                aliases = " or ".join(i.alias for i in self.inputs)
                raise PlanError(
                    f"the join condition names {column.sql()} but the joined inputs are "
                    f"{aliases}; qualify columns with one of those names"
                )
        found = [(i, n) for i in sides for n in self.inputs[i].schema.names if n == name]
        if not found:
            found = [
                (i, n)
                for i in sides
                for n in self.inputs[i].schema.names
                if n.lower() == name.lower()
            ]
        if len(found) != 1:
            where = " and ".join(self.inputs[i].alias for i in sides)
            problem = "is not a column of" if not found else "is ambiguous between columns of"
            raise PlanError(
                f"the join condition's {column.sql()} {problem} {where}; "
                "qualify it with the input's alias and use a declared column name"
            )
        return found[0]

    def linear(self, node: exp.Expression) -> tuple[int, str, int] | None:
        """``col``, ``col + c`` or ``col - c`` (c an interval or an integer) -> (side, col, c)."""
        node = _strip(node)
        if isinstance(node, exp.Column):
            side, name = self.side(node)
            return side, name, 0
        if isinstance(node, (exp.Add, exp.Sub)):
            a, b = _strip(node.this), _strip(node.expression)
            if isinstance(node, exp.Add) and not isinstance(a, exp.Column):
                a, b = b, a
            if not isinstance(a, exp.Column):
                return None
            offset = _constant_ms(b)
            if offset is None:
                return None
            side, name = self.side(a)
            return side, name, offset if isinstance(node, exp.Add) else -offset
        return None


def _constant_ms(node: exp.Expression) -> int | None:
    node = _strip(node)
    ms = interval_ms(node)
    if ms is not None:
        return ms
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return int(node.this)
        except ValueError:
            return None
    if isinstance(node, exp.Neg):
        inner = _constant_ms(node.this)
        return None if inner is None else -inner
    return None


def _time_like(schema: pa.Schema, column: str) -> bool:
    typ = schema.field(column).type
    return pa.types.is_timestamp(typ) or pa.types.is_integer(typ)


def analyse_condition(
    condition: exp.Expression | None, left: PlannedInput, right: PlannedInput
) -> ConditionInfo:
    """Equi pairs and time bounds of ``condition`` (see the module docstring); every column
    it names is checked against the two inputs (PlanError names the bad one)."""
    info = ConditionInfo()
    if condition is None:
        return info
    resolver = _Resolver(left, right)
    for column in condition.find_all(exp.Column):
        resolver.side(column)
    inputs = (left, right)
    for node in conjuncts(condition):
        info.conjuncts.append(node)
        enforced = False
        if isinstance(node, exp.EQ):
            a, b = _strip(node.this), _strip(node.expression)
            if isinstance(a, exp.Column) and isinstance(b, exp.Column):
                sa, na = resolver.side(a)
                sb, nb = resolver.side(b)
                if sa != sb:
                    pair = (na, nb) if sa == 0 else (nb, na)
                    if pair not in info.equi:
                        info.equi.append(pair)
                    # a hash join on equal types is exactly SQL's = (nulls never match)
                    enforced = left.schema.field(pair[0]).type == right.schema.field(pair[1]).type
        if not enforced:
            info.residual.append(node)
        pairs: list[tuple[exp.Expression, exp.Expression]] = []  # (p, q): p <= q
        if isinstance(node, (exp.LT, exp.LTE)):
            pairs = [(node.this, node.expression)]
        elif isinstance(node, (exp.GT, exp.GTE)):
            pairs = [(node.expression, node.this)]
        elif isinstance(node, exp.EQ):
            pairs = [(node.this, node.expression), (node.expression, node.this)]
        elif isinstance(node, exp.Between) and not node.args.get("symmetric"):
            pairs = [(node.args["low"], node.this), (node.this, node.args["high"])]
        for p, q in pairs:
            lp, lq = resolver.linear(p), resolver.linear(q)
            if lp is None or lq is None or lp[0] == lq[0]:
                continue
            (sp, cp, op), (sq, cq, oq) = lp, lq
            # sp.cp + op <= sq.cq + oq; with cp sp's time column: a bound for sq's rows
            if cp == inputs[sp].time_column and _time_like(inputs[sq].schema, cq):
                bound = Bound(cq, oq - op)
                if bound not in info.bounds[sq]:
                    info.bounds[sq].append(bound)
    return info


def residual_sql(
    condition: exp.Expression, resolver_inputs: tuple[PlannedInput, PlannedInput]
) -> tuple[str, list[str]]:
    """The condition as SQL over the joined columns ``<alias>__<column>`` (postgres dialect,
    which DataFusion reads), and those columns in order of first use."""
    resolver = _Resolver(*resolver_inputs)
    tree = exp.Paren(this=condition.copy())  # a parent, so even a bare column is replaced
    used: list[str] = []
    for column in list(tree.find_all(exp.Column)):
        side, name = resolver.side(column)
        joined = f"{resolver_inputs[side].alias}__{name}"
        if joined not in used:
            used.append(joined)
        column.replace(exp.column(joined, quoted=True))
    return tree.sql(dialect="postgres"), used


Evaluator = Callable[[Mapping[str, pa.Array]], Any]

_BINARY: dict[type[exp.Expression], Callable[..., Any]] = {
    exp.EQ: pc.equal,
    exp.NEQ: pc.not_equal,
    exp.GT: pc.greater,
    exp.GTE: pc.greater_equal,
    exp.LT: pc.less,
    exp.LTE: pc.less_equal,
    exp.Add: pc.add_checked,
    exp.Sub: pc.subtract_checked,
    exp.And: pc.and_kleene,
    exp.Or: pc.or_kleene,
}


def compile_residual(
    condition: exp.Expression, inputs: tuple[PlannedInput, PlannedInput]
) -> Evaluator | None:
    """The condition as Arrow compute calls over the joined columns' arrays (a boolean
    array, nulls as SQL's unknown), for the forms whose meaning Arrow and SQL share:
    columns, number / string / boolean literals, ``INTERVAL`` (as a millisecond duration),
    ``+ -``, comparisons, ``BETWEEN``, ``AND OR NOT``, ``IS [NOT] NULL``. None for anything
    else (then DataFusion evaluates the SQL). Types Arrow cannot combine raise when called,
    and the caller falls back to DataFusion too."""
    resolver = _Resolver(*inputs)

    def build(node: exp.Expression) -> Evaluator | None:
        node = _strip(node)
        if isinstance(node, exp.Column):
            side, name = resolver.side(node)
            joined = f"{inputs[side].alias}__{name}"
            return lambda cols: cols[joined]
        value: Any = None
        if isinstance(node, exp.Boolean):
            value = pa.scalar(bool(node.this))
        elif isinstance(node, exp.Literal):
            if node.is_string:
                value = pa.scalar(node.this, pa.string())
            else:
                try:
                    value = pa.scalar(int(node.this))
                except ValueError:
                    value = pa.scalar(float(node.this))
        elif isinstance(node, exp.Interval):
            ms = interval_ms(node)
            if ms is not None:
                value = pa.scalar(ms, pa.duration("ms"))
        if value is not None:
            return lambda cols: value
        if isinstance(node, exp.Neg):
            inner = build(node.this)
            return None if inner is None else (lambda cols: pc.negate_checked(inner(cols)))
        if isinstance(node, exp.Not):
            inner = build(node.this)
            return None if inner is None else (lambda cols: pc.invert(inner(cols)))
        if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
            inner = build(node.this)
            test = pc.is_valid if node.args.get("negate") else pc.is_null
            return None if inner is None else (lambda cols: test(inner(cols)))
        if node.args.get("negate") or node.args.get("symmetric"):
            return None  # NOT ..., BETWEEN SYMMETRIC and the like: left to DataFusion
        if isinstance(node, exp.Between):
            x, lo, hi = build(node.this), build(node.args["low"]), build(node.args["high"])
            if x is None or lo is None or hi is None:
                return None
            return lambda cols: pc.and_kleene(
                pc.greater_equal(x(cols), lo(cols)), pc.less_equal(x(cols), hi(cols))
            )
        func = _BINARY.get(type(node))
        if func is not None:
            a, b = build(node.this), build(node.expression)
            if a is None or b is None:
                return None
            return lambda cols: func(a(cols), b(cols))
        return None

    return build(condition)
