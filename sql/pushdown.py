"""Scan bounds from a DataFusion logical plan: which partitions, offsets and times to read.

DataFusion plans the query over empty placeholder tables of the right schemas; its optimiser
pushes every filter it can down to sit directly above the table scan it applies to (and
rewrites ``IN`` lists into ``OR`` chains, ``BETWEEN`` into two comparisons, folds ``now()``
and interval arithmetic into literals). This module walks the optimised plan and, for each
``Filter`` over a ``TableScan``, reads the conjuncts that bound the relation's partition,
offset and timestamp columns:

===========================================  ===============================================
conjunct (either side may be the literal)    bound
===========================================  ===============================================
``partition = n``, ``partition IN (...)``,   the partitions listed
an ``OR`` of such equalities
``offset >= n`` / ``> n`` / ``= n``          ``from_offset`` n / n + 1 / n (and to n + 1)
``offset < n`` / ``<= n``                    ``to_offset`` n / n + 1
``timestamp >= t`` / ``> t`` / ``= t``       ``min_timestamp`` t (in ms, rounded down)
===========================================  ===============================================

Anything else bounds nothing. A relation scanned several times (a self-join) gets the union
of its scans' bounds; a scan without a filter reads everything. Upper time bounds are not
pushed: block rows carry only a max timestamp.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa

from sql.scan import ScanBounds

__all__ = ["BoundColumns", "scan_bounds"]

_SCAN_LINE = re.compile(
    r"\s*TableScan: (.+?)(?: projection=| partial_filters=| full_filters=| fetch=|$)"
)
_FLIP = {">": "<", ">=": "<=", "<": ">", "<=": ">=", "=": "="}
# (multiply, floor-divide) turning a timestamp of each unit into ms
_TO_MS = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000), "ns": (1, 1_000_000)}


class BoundColumns:
    """The names of a relation's partition, offset and record-timestamp columns."""

    __slots__ = ("offset", "partition", "timestamp")

    def __init__(self, partition: str, offset: str, timestamp: str) -> None:
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp


def _kind(obj: Any) -> str:
    return type(obj).__name__


def _conjuncts(expr: Any) -> list[Any]:
    v = expr.to_variant()
    if _kind(v) == "BinaryExpr" and v.op() == "AND":
        return _conjuncts(v.left()) + _conjuncts(v.right())
    return [expr]


def _column(expr: Any) -> str | None:
    v = expr.to_variant()
    return v.name() if _kind(v) == "Column" else None


def _literal(expr: Any) -> Any:
    """The literal's pyarrow scalar, or None when ``expr`` is not a literal."""
    if _kind(expr.to_variant()) != "Literal":
        return None
    try:
        return expr.python_value()
    except Exception:  # a literal type pyarrow cannot hold: not a bound
        return None


def _as_int(scalar: Any) -> int | None:
    if scalar is None or not pa.types.is_integer(scalar.type) or not scalar.is_valid:
        return None
    return int(scalar.as_py())


def _as_ms(scalar: Any) -> int | None:
    if scalar is None or not scalar.is_valid:
        return None
    if pa.types.is_timestamp(scalar.type):
        mul, div = _TO_MS[scalar.type.unit]
        return int(scalar.value) * mul // div
    return None


def _comparison(expr: Any) -> tuple[str, str, Any] | None:
    """``(column, op, literal scalar)`` with the column on the left, or None."""
    v = expr.to_variant()
    if _kind(v) != "BinaryExpr" or v.op() not in _FLIP:
        return None
    left, right, op = v.left(), v.right(), v.op()
    col = _column(left)
    lit = _literal(right)
    if col is None or lit is None:
        col, lit, op = _column(right), _literal(left), _FLIP[op]
    if col is None or lit is None:
        return None
    return col, op, lit


def _partitions(expr: Any, column: str) -> set[int] | None:
    """The partitions an equality, IN list or OR of equalities on ``column`` allows."""
    v = expr.to_variant()
    if _kind(v) == "BinaryExpr" and v.op() == "OR":
        left = _partitions(v.left(), column)
        right = _partitions(v.right(), column)
        return None if left is None or right is None else left | right
    if _kind(v) == "InList" and not v.negated() and _column(v.expr()) == column:
        values = [_as_int(_literal(e)) for e in v.list()]
        return None if any(x is None for x in values) else {int(x) for x in values if x is not None}
    cmp = _comparison(expr)
    if cmp is not None and cmp[0] == column and cmp[1] == "=":
        value = _as_int(cmp[2])
        return None if value is None else {value}
    return None


def bounds_of(predicate: Any, cols: BoundColumns) -> ScanBounds:
    """The bounds one filter predicate puts on a scan."""
    partitions: set[int] | None = None
    from_offset, to_offset, min_ts = 0, None, None
    for conjunct in _conjuncts(predicate):
        allowed = _partitions(conjunct, cols.partition)
        if allowed is not None:
            partitions = allowed if partitions is None else partitions & allowed
            continue
        cmp = _comparison(conjunct)
        if cmp is None:
            continue
        col, op, lit = cmp
        if col == cols.offset:
            n = _as_int(lit)
            if n is None:
                continue
            if op in (">=", "=", ">"):
                from_offset = max(from_offset, n + 1 if op == ">" else n)
            if op in ("<", "<=", "="):
                end = n if op == "<" else n + 1
                to_offset = end if to_offset is None else min(to_offset, end)
        elif col == cols.timestamp and op in (">=", ">", "="):
            ms = _as_ms(lit)
            if ms is not None:
                min_ts = ms if min_ts is None else max(min_ts, ms)
    return ScanBounds(
        None if partitions is None else frozenset(partitions), from_offset, to_offset, min_ts
    )


def scan_bounds(plan: Any, columns: dict[str, BoundColumns]) -> dict[str, ScanBounds]:
    """Bounds per scanned table (keyed by the plan's table name) of an optimised plan;
    ``columns`` names the bound columns of each table that has them."""
    found: dict[str, ScanBounds] = {}

    def add(name: str, bounds: ScanBounds) -> None:
        found[name] = bounds if name not in found else found[name].union(bounds)

    def scan_name(node: Any) -> str | None:
        v = node.to_variant()
        return v.table_name() if _kind(v) == "TableScan" else None

    def walk(node: Any) -> None:
        v = node.to_variant()
        if _kind(v) == "Filter":
            (child,) = node.inputs()
            name = scan_name(child)
            if name is not None:
                cols = columns.get(name)
                bounds = ScanBounds()
                if cols is not None:
                    bounds = bounds_of(v.predicate(), cols)
                    for pushed in child.to_variant().filters():
                        bounds = _intersect(bounds, bounds_of(pushed, cols))
                add(name, bounds)
                return
        name = scan_name(node)
        if name is not None:
            add(name, ScanBounds())
            return
        for child in node.inputs():
            walk(child)

    walk(plan)
    # Scans the walk does not reach (a scalar subquery lives inside an expression): read whole.
    for line in plan.display_indent().splitlines():
        m = _SCAN_LINE.match(line)
        if m is not None and m[1] not in found:
            found[m[1]] = ScanBounds()
    return found


def _intersect(a: ScanBounds, b: ScanBounds) -> ScanBounds:
    parts = (
        a.partitions
        if b.partitions is None
        else (b.partitions if a.partitions is None else a.partitions & b.partitions)
    )
    to = (
        a.to_offset
        if b.to_offset is None
        else (b.to_offset if a.to_offset is None else min(a.to_offset, b.to_offset))
    )
    ts = (
        a.min_timestamp
        if b.min_timestamp is None
        else (b.min_timestamp if a.min_timestamp is None else max(a.min_timestamp, b.min_timestamp))
    )
    return ScanBounds(parts, max(a.from_offset, b.from_offset), to, ts)
