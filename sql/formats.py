"""Record values -> a declared schema's Arrow columns, a batch of records at a time.

JSON (``format = 'json'``): each record value is one JSON object; its fields are matched to
the declared columns by name (other fields are ignored, a missing field is null). The values
of a batch are joined with newlines and parsed by Arrow's JSON reader in one call
(``pyarrow.json.read_json`` with the declared schema as its explicit schema), so no Python
object is made per record.

Values are parsed as one JSON document per line (Arrow's fastest mode, in 1 MiB blocks); a
chunk that fails is parsed again allowing newlines inside values (pretty-printed JSON).

A record that does not match — not JSON, not an object, a field of the wrong type, a null or
empty value, a value holding several objects — is left out and counted (``errors``); it
never stops the query. Finding it costs a bisection: a chunk that fails to parse, or parses
into a different number of rows than it has records, is split in two and each half parsed
again, down to single records (``log2(n)`` extra parses per bad record).
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

__all__ = ["FORMATS", "JsonDecoded", "decode_json"]

FORMATS = ("json",)
_NEWLINE = pa.scalar(b"\n", pa.binary())
BLOCK = 1 << 20


class JsonDecoded:
    """The rows that decoded (a Table of the schema) and the positions, in the input, of the
    records they came from (``rows``, ascending), and how many records did not match."""

    __slots__ = ("errors", "rows", "table")

    def __init__(self, table: pa.Table, rows: np.ndarray, errors: int) -> None:
        self.table = table
        self.rows = rows
        self.errors = errors


def _parse(values: pa.Array, schema: pa.Schema, multiline: bool) -> pa.Table | None:
    """One parse of ``values`` joined by newlines; None when it fails or its row count
    differs from the record count."""
    joined = pc.binary_join(pa.ListArray.from_arrays([0, len(values)], values), _NEWLINE)
    data = joined[0].as_buffer()
    if data is None:
        return None
    # Arrow parses block by block and a row must fit in one; 1 MiB blocks parse fastest.
    longest = pc.max(pc.binary_length(values)).as_py() or 0
    try:
        table = pajson.read_json(
            io.BytesIO(data),
            read_options=pajson.ReadOptions(
                use_threads=False, block_size=max(BLOCK, 2 * longest + 2)
            ),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema,
                newlines_in_values=multiline,
                unexpected_field_behavior="ignore",
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if table.num_rows != len(values):
        return None
    return table


def decode_json(values: pa.Array, schema: pa.Schema) -> JsonDecoded:
    """Decode the JSON object of each value of a binary array into ``schema``'s columns."""
    # Arrow's JSON reader has no DATE conversion: read dates as timestamps, cast after.
    dates = [i for i, f in enumerate(schema) if pa.types.is_date(f.type)]
    if dates:
        parse_schema = pa.schema(
            f.with_type(pa.timestamp("s")) if i in dates else f for i, f in enumerate(schema)
        )
        decoded = decode_json(values, parse_schema)
        table = decoded.table
        for i in dates:
            table = table.set_column(
                i, schema.field(i), table.column(i).cast(schema.field(i).type, safe=False)
            )
        return JsonDecoded(table, decoded.rows, decoded.errors)
    n = len(values)
    usable = pc.and_kleene(pc.is_valid(values), pc.greater(pc.binary_length(values), 0))
    usable = pc.fill_null(usable, False)
    positions = np.flatnonzero(usable.to_numpy(zero_copy_only=False))
    errors = n - len(positions)
    if len(positions) == 0:
        return JsonDecoded(schema.empty_table(), positions, errors)
    chunk = values.take(pa.array(positions)) if errors else values
    tables: list[pa.Table] = []
    kept: list[np.ndarray] = []
    pending = [(0, len(positions))]
    while pending:
        lo, hi = pending.pop()
        piece = chunk.slice(lo, hi - lo)
        # A value with a newline inside (pretty-printed JSON) needs the multi-line parse.
        table = _parse(piece, schema, False) or _parse(piece, schema, True)
        if table is not None:
            tables.append(table)
            kept.append(positions[lo:hi])
        elif hi - lo == 1:
            errors += 1
        else:
            mid = (lo + hi) // 2
            pending.append((mid, hi))  # popped second: the pieces stay in order
            pending.append((lo, mid))
    if not tables:
        return JsonDecoded(schema.empty_table(), np.empty(0, dtype=np.int64), errors)
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    return JsonDecoded(table, np.concatenate(kept), errors)
