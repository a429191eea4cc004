"""Query results as text: an aligned table, JSON lines or CSV.

Values are rendered the same way in every format: binary (keys, values, header values) as
UTF-8 text, bytes that are not UTF-8 as ``\\xNN`` escapes; timestamps in ISO 8601 (UTC when
the column has a zone); decimals as their exact text; lists and structs as JSON. NULL is an
empty cell in a table and in CSV, ``null`` in JSON lines.
"""

from __future__ import annotations

import csv
import datetime
import decimal
from collections.abc import Iterator
from typing import Any, TextIO

import msgspec
import pyarrow as pa

__all__ = ["FORMATS", "write_result"]

FORMATS = ("table", "jsonl", "csv")
_BATCH_ROWS = 4096


def _plain(value: Any) -> Any:
    """A value as JSON-able Python: str, int, float, bool, None, list, dict."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | datetime.timedelta):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _cell(value: Any) -> str:
    plain = _plain(value)
    if plain is None:
        return ""
    if isinstance(plain, list | dict):
        return msgspec.json.encode(plain).decode()
    if isinstance(plain, bool):
        return "true" if plain else "false"
    return str(plain)


def _rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
        yield from batch.to_pylist()


def write_result(table: pa.Table, fmt: str, out: TextIO) -> None:
    """Writes ``table`` to ``out`` as ``fmt`` (one of FORMATS)."""
    names = table.column_names
    if fmt == "jsonl":
        encode = msgspec.json.encode
        for row in _rows(table):
            out.write(encode({k: _plain(v) for k, v in row.items()}).decode())
            out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        for row in _rows(table):
            writer.writerow([_cell(row[n]) for n in names])
    elif fmt == "table":
        cells = [[_cell(row[n]) for n in names] for row in _rows(table)]
        widths = [len(n) for n in names]
        for line in cells:
            widths = [max(w, len(c)) for w, c in zip(widths, line, strict=True)]
        numeric = [
            pa.types.is_integer(f.type)
            or pa.types.is_floating(f.type)
            or pa.types.is_decimal(f.type)
            for f in table.schema
        ]

        def fmt_line(line: list[str]) -> str:
            return " | ".join(
                c.rjust(w) if num else c.ljust(w)
                for c, w, num in zip(line, widths, numeric, strict=True)
            ).rstrip()

        out.write(fmt_line(list(names)) + "\n")
        out.write("-+-".join("-" * w for w in widths) + "\n")
        for line in cells:
            out.write(fmt_line(line) + "\n")
        count = table.num_rows
        out.write(f"({count} row{'' if count == 1 else 's'})\n")
    else:
        raise ValueError(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}")
