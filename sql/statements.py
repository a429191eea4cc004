"""The statements StreamHouse handles itself; everything else is a query for DataFusion.

Grammar (keywords case-insensitive; names lower-cased unless double-quoted)::

    CREATE STREAM [IF NOT EXISTS] name ( column TYPE [NOT NULL], ...
        [, WATERMARK FOR column AS column [- INTERVAL 'n' unit]] )
        WITH ( topic = 'topic', format = 'json' )
    CREATE TABLE [IF NOT EXISTS] name ( column TYPE, ... ) WITH ( topic = '...', format = 'json' )
    DROP STREAM [IF EXISTS] name          DROP TABLE [IF EXISTS] name
    SHOW STREAMS                          SHOW TABLES
    DESCRIBE name

Continuous queries (run by the sql service, one runner process each)::

    CREATE MATERIALIZED VIEW [IF NOT EXISTS] name
        [WITH ( allowed_lateness = INTERVAL '5' SECOND | 5000 | '5 seconds',
                dead_letter_topic = 'topic' )]
        AS SELECT ...
    CREATE STREAM [IF NOT EXISTS] name
        [WITH ( topic = 'topic', format = 'json', partitions = N,
                allowed_lateness = ..., dead_letter_topic = '...' )]
        AS SELECT ...
    DROP MATERIALIZED VIEW [IF EXISTS] name    DROP QUERY [IF EXISTS] name
    SHOW QUERIES                               SHOW MATERIALIZED VIEWS

A view keeps the query's current rows (queryable by name); a stream appends the query's
results to ``topic`` (default: the stream's name; created with ``partitions`` partitions,
default 1, when missing) and declares the stream over it. ``allowed_lateness`` is how long
after the watermark a window still takes late rows (a bare number is milliseconds).
``DROP QUERY`` drops either kind; dropping a stream query keeps its topic.

TYPE is one of ``TYPES`` (with ``DECIMAL(p, s)``, ``VARCHAR(n)``); unit is MILLISECOND,
SECOND, MINUTE or HOUR (or their plurals). A record whose value lacks a ``NOT NULL`` column
(or has it null) does not match: it is counted, like a record that is not JSON. The
watermark column must be a TIMESTAMP column. Column names starting with ``_`` are reserved
for the columns every stream carries (``_partition``, ``_offset``, ``_timestamp``; tables
also ``_key``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

from sql.catalog import Column, Watermark
from sql.formats import FORMATS

__all__ = [
    "CreateQuery",
    "CreateRelation",
    "Describe",
    "DropQuery",
    "DropRelation",
    "Query",
    "ShowQueries",
    "ShowRelations",
    "Statement",
    "StatementError",
    "arrow_type",
    "parse_statement",
]


class StatementError(ValueError):
    """A statement that does not parse or is not allowed; the message says where and why."""


@dataclass(frozen=True)
class CreateRelation:
    kind: str
    name: str
    columns: list[Column]
    watermark: Watermark | None
    options: dict[str, str]
    if_not_exists: bool


@dataclass(frozen=True)
class DropRelation:
    kind: str
    name: str
    if_exists: bool


@dataclass(frozen=True)
class ShowRelations:
    kind: str


@dataclass(frozen=True)
class Describe:
    name: str


@dataclass(frozen=True)
class Query:
    sql: str


@dataclass(frozen=True)
class CreateQuery:
    """``kind``: ``"view"`` or ``"stream"``; ``select`` the query's SELECT as written;
    ``options``: ``topic``, ``format``, ``partitions`` (streams), ``allowed_lateness_ms``,
    ``dead_letter_topic`` (all as strings)."""

    kind: str
    name: str
    select: str
    options: dict[str, str]
    if_not_exists: bool


@dataclass(frozen=True)
class DropQuery:
    """``kind``: ``"view"`` (DROP MATERIALIZED VIEW) or ``None`` (DROP QUERY: either)."""

    kind: str | None
    name: str
    if_exists: bool


@dataclass(frozen=True)
class ShowQueries:
    """``kind``: ``"view"`` (SHOW MATERIALIZED VIEWS) or ``None`` (SHOW QUERIES: all)."""

    kind: str | None


Statement = (
    CreateRelation
    | DropRelation
    | ShowRelations
    | Describe
    | Query
    | CreateQuery
    | DropQuery
    | ShowQueries
)

_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "BOOLEAN": pa.bool_(),
    "TINYINT": pa.int8(),
    "SMALLINT": pa.int16(),
    "INT": pa.int32(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "REAL": pa.float32(),
    "FLOAT": pa.float32(),
    "DOUBLE": pa.float64(),
    "VARCHAR": pa.utf8(),
    "STRING": pa.utf8(),
    "TEXT": pa.utf8(),
    "DATE": pa.date32(),
    "TIMESTAMP": pa.timestamp("ms"),
    "TIMESTAMPTZ": pa.timestamp("ms", tz="UTC"),
}
TYPES = (*_SIMPLE_TYPES, "DECIMAL(p, s)")
RESERVED_COLUMNS = ("_partition", "_offset", "_timestamp", "_key")
OPTIONS = ("topic", "format")
VIEW_OPTIONS = ("allowed_lateness", "dead_letter_topic")
STREAM_QUERY_OPTIONS = ("topic", "format", "partitions", *VIEW_OPTIONS)
#: Partitions of an output topic CREATE STREAM ... AS creates when the WITH gives none.
DEFAULT_OUTPUT_PARTITIONS = 1
MAX_OUTPUT_PARTITIONS = 1000
_UNITS_MS = {"MILLISECOND": 1, "SECOND": 1000, "MINUTE": 60_000, "HOUR": 3_600_000}

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<quoted>"(?:[^"]|"")*")
      | (?P<string>'(?:[^']|'')*')
      | (?P<number>\d+)
      | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
      | (?P<punct>[(),=\-;.])
    )""",
    re.VERBOSE,
)


def arrow_type(sql_type: str) -> pa.DataType:
    """The Arrow type of a normalised SQL type name; StatementError for an unknown one."""
    simple = _SIMPLE_TYPES.get(sql_type)
    if simple is not None:
        return simple
    m = re.fullmatch(r"DECIMAL\((\d+),(\d+)\)", sql_type)
    if m:
        precision, scale = int(m[1]), int(m[2])
        if not 1 <= precision <= 38 or scale > precision:
            raise StatementError(
                f"DECIMAL({precision}, {scale}): precision must be 1..38 and scale at most "
                "the precision"
            )
        return pa.decimal128(precision, scale)
    raise StatementError(f"unknown column type {sql_type}: use one of {', '.join(TYPES)}")


class _Tokens:
    def __init__(self, text: str) -> None:
        self.text = text
        self.items: list[tuple[str, str, int]] = []
        pos = 0
        body = text.rstrip().rstrip(";")
        while pos < len(body):
            m = _TOKEN.match(body, pos)
            if m is None or m.end() == pos:
                rest = body[pos:].lstrip()
                if not rest:
                    break
                raise StatementError(f"unexpected text at {rest[:20]!r}")
            kind = m.lastgroup or ""
            self.items.append((kind, m[kind], m.start(kind)))
            pos = m.end()
        self.i = 0

    def peek_word(self) -> str | None:
        if self.i < len(self.items) and self.items[self.i][0] == "word":
            return self.items[self.i][1].upper()
        return None

    def accept(self, word: str) -> bool:
        if self.peek_word() == word:
            self.i += 1
            return True
        return False

    def accept_punct(self, p: str) -> bool:
        if self.i < len(self.items) and self.items[self.i][:2] == ("punct", p):
            self.i += 1
            return True
        return False

    def where(self) -> str:
        if self.i >= len(self.items):
            return "at the end of the statement"
        return f"at {self.text[self.items[self.i][2] :][:20]!r}"

    def expect(self, word: str) -> None:
        if not self.accept(word):
            raise StatementError(f"expected {word} {self.where()}")

    def expect_punct(self, p: str) -> None:
        if not self.accept_punct(p):
            raise StatementError(f"expected {p!r} {self.where()}")

    def name(self, what: str) -> str:
        if self.i < len(self.items):
            kind, value, _ = self.items[self.i]
            if kind == "word":
                self.i += 1
                return value.lower()
            if kind == "quoted":
                self.i += 1
                return value[1:-1].replace('""', '"')
        raise StatementError(f"expected {what} {self.where()}")

    def string(self, what: str) -> str:
        if self.i < len(self.items) and self.items[self.i][0] == "string":
            value = self.items[self.i][1]
            self.i += 1
            return value[1:-1].replace("''", "'")
        raise StatementError(f"expected {what} as a quoted string {self.where()}")

    def number(self, what: str) -> int:
        if self.i < len(self.items) and self.items[self.i][0] == "number":
            self.i += 1
            return int(self.items[self.i - 1][1])
        raise StatementError(f"expected {what} {self.where()}")

    def end(self) -> None:
        if self.i != len(self.items):
            raise StatementError(f"unexpected {self.where()[3:]} after the statement")


def parse_statement(text: str) -> Statement:
    """Parses one statement; a query is returned as is (DataFusion parses it)."""
    if not text.strip():
        raise StatementError("empty statement: give a SELECT or a CREATE/DROP/SHOW/DESCRIBE")
    first = re.match(r"\s*(\w+)(?:\s+(\w+))?", text)
    head = (first[1].upper(), (first[2] or "").upper()) if first else ("", "")
    if head[0] == "CREATE" and head[1] in ("STREAM", "MATERIALIZED"):
        split = _split_as(text)
        if split is not None:
            return _create_query(text, *split)
        if head[1] == "MATERIALIZED":
            raise StatementError(
                "CREATE MATERIALIZED VIEW name [WITH (...)] AS SELECT ...: the AS SELECT is missing"
            )
    if head[0] == "CREATE" and head[1] in ("STREAM", "TABLE"):
        return _create(_Tokens(text))
    if head[0] == "DROP" and head[1] in ("MATERIALIZED", "QUERY"):
        tokens = _Tokens(text)
        tokens.i = 2
        if head[1] == "MATERIALIZED":
            tokens.expect("VIEW")
        if_exists = tokens.accept("IF")
        if if_exists:
            tokens.expect("EXISTS")
        name = tokens.name("the view's name" if head[1] == "MATERIALIZED" else "the query's name")
        tokens.end()
        return DropQuery("view" if head[1] == "MATERIALIZED" else None, name, if_exists)
    if head[0] == "SHOW" and head[1] in ("QUERIES", "MATERIALIZED"):
        tokens = _Tokens(text)
        tokens.i = 2
        if head[1] == "MATERIALIZED":
            tokens.expect("VIEWS")
        tokens.end()
        return ShowQueries("view" if head[1] == "MATERIALIZED" else None)
    if head[0] == "DROP" and head[1] in ("STREAM", "TABLE"):
        tokens = _Tokens(text)
        tokens.i = 2
        if_exists = tokens.accept("IF")
        if if_exists:
            tokens.expect("EXISTS")
        name = tokens.name(f"the {head[1].lower()}'s name")
        tokens.end()
        return DropRelation(head[1].lower(), name, if_exists)
    if head[0] == "SHOW" and head[1] in ("STREAMS", "TABLES"):
        tokens = _Tokens(text)
        tokens.i = 2
        tokens.end()
        return ShowRelations(head[1][:-1].lower())
    if head[0] in ("DESCRIBE", "DESC"):
        tokens = _Tokens(text)
        tokens.i = 1
        tokens.accept("STREAM") or tokens.accept("TABLE") or tokens.accept("TOPIC")
        name = tokens.name("the name of a stream, table or topic")
        tokens.end()
        return Describe(name)
    if head[0] == "CREATE":
        raise StatementError(
            f"CREATE {head[1]} is not supported: declare data with CREATE STREAM or CREATE "
            "TABLE, run a query with CREATE MATERIALIZED VIEW or CREATE STREAM ... AS SELECT"
        )
    return Query(text)


def _type(tokens: _Tokens) -> str:
    word = tokens.peek_word()
    if word is None:
        raise StatementError(f"expected a column type {tokens.where()}")
    tokens.i += 1
    if word == "DOUBLE":
        tokens.accept("PRECISION")
    if word in ("VARCHAR", "CHAR") and tokens.accept_punct("("):
        tokens.number("a length")
        tokens.expect_punct(")")
        word = "VARCHAR"
    if word in ("DECIMAL", "NUMERIC"):
        precision, scale = 38, 10
        if tokens.accept_punct("("):
            precision = tokens.number("a precision")
            scale = tokens.number("a scale") if tokens.accept_punct(",") else 0
            tokens.expect_punct(")")
        word = f"DECIMAL({precision},{scale})"
    if word == "TIMESTAMP" and tokens.accept("WITH"):
        tokens.expect("TIME")
        tokens.expect("ZONE")
        word = "TIMESTAMPTZ"
    arrow_type(word)  # refuse an unknown type here, where the statement is
    return word


def _create(tokens: _Tokens) -> CreateRelation:
    tokens.i = 1
    kind = (tokens.peek_word() or "").lower()
    tokens.i = 2
    if_not_exists = tokens.accept("IF")
    if if_not_exists:
        tokens.expect("NOT")
        tokens.expect("EXISTS")
    name = tokens.name(f"the {kind}'s name")
    tokens.expect_punct("(")
    columns: list[Column] = []
    watermark: Watermark | None = None
    while True:
        if tokens.accept("WATERMARK"):
            if kind != "stream":
                raise StatementError("WATERMARK belongs to a STREAM, not a TABLE")
            if watermark is not None:
                raise StatementError("a stream has one WATERMARK")
            tokens.expect("FOR")
            column = tokens.name("the watermark's column")
            tokens.expect("AS")
            again = tokens.name("the watermark expression (column - INTERVAL 'n' SECOND)")
            if again != column:
                raise StatementError(
                    f"WATERMARK FOR {column} AS {again}: the expression must be {column} "
                    f"[- INTERVAL 'n' unit]"
                )
            delay = 0
            if tokens.accept_punct("-"):
                tokens.expect("INTERVAL")
                amount_text = tokens.string("the interval amount, like '4'")
                try:
                    amount = int(amount_text)
                except ValueError:
                    raise StatementError(
                        f"INTERVAL {amount_text!r}: the amount must be a whole number"
                    ) from None
                unit = (tokens.peek_word() or "").rstrip("S")
                if unit not in _UNITS_MS:
                    raise StatementError(
                        f"expected an interval unit ({', '.join(_UNITS_MS)}) {tokens.where()}"
                    )
                tokens.i += 1
                delay = amount * _UNITS_MS[unit]
                if delay < 0:
                    raise StatementError("the watermark delay must not be negative")
            watermark = Watermark(column, delay)
        else:
            column = tokens.name("a column name or WATERMARK")
            if column.startswith("_"):
                raise StatementError(
                    f"column {column!r}: names starting with '_' are reserved for "
                    f"{', '.join(RESERVED_COLUMNS)}"
                )
            if any(c.name == column for c in columns):
                raise StatementError(f"column {column!r} is declared twice")
            sql_type = _type(tokens)
            not_null = tokens.accept("NOT")
            if not_null:
                tokens.expect("NULL")
            columns.append(Column(column, sql_type, not_null))
        if tokens.accept_punct(")"):
            break
        tokens.expect_punct(",")
    if not columns:
        raise StatementError(f"{kind} {name!r} declares no columns")
    if watermark is not None:
        target = next((c for c in columns if c.name == watermark.column), None)
        if target is None:
            raise StatementError(f"WATERMARK FOR {watermark.column}: no such column declared")
        if not target.type.startswith("TIMESTAMP"):
            raise StatementError(
                f"WATERMARK FOR {watermark.column}: the column is {target.type}, it must be "
                "a TIMESTAMP"
            )
    tokens.expect("WITH")
    tokens.expect_punct("(")
    options: dict[str, str] = {}
    while True:
        key = tokens.name("an option name").lower()
        if key not in OPTIONS:
            raise StatementError(f"unknown option {key!r}: the options are {', '.join(OPTIONS)}")
        tokens.expect_punct("=")
        options[key] = tokens.string(f"the value of {key}")
        if tokens.accept_punct(")"):
            break
        tokens.expect_punct(",")
    tokens.end()
    if "topic" not in options:
        raise StatementError(f"WITH (topic = '...') is required: the topic {name!r} reads")
    fmt = options.setdefault("format", "json").lower()
    if fmt not in FORMATS:
        raise StatementError(f"format {fmt!r} is not supported: use one of {', '.join(FORMATS)}")
    options["format"] = fmt
    return CreateRelation(kind, name, columns, watermark, options, if_not_exists)


_LEX = re.compile(r"""\s*("(?:[^"]|"")*"|'(?:[^']|'')*'|[A-Za-z_][A-Za-z0-9_$]*|\S)""")


def _split_as(text: str) -> tuple[str, str] | None:
    """``CREATE ... name [WITH (...)] AS <query>`` -> (the part before AS, the query), or
    None when no AS stands outside parentheses (a declaration, whose WATERMARK ... AS is
    inside its column list)."""
    depth = 0
    pos = 0
    while True:
        m = _LEX.match(text, pos)
        if m is None:
            return None
        token = m[1]
        pos = m.end()
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif depth == 0 and token.upper() == "AS":
            return text[: m.start(1)], text[pos:].strip().rstrip(";").strip()


def _interval_ms(text: str, what: str) -> int:
    """``5000``, ``'5 seconds'``, ``'250 ms'``, ``'2m'`` -> milliseconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = (m[2] if m else "").upper()
    aliases = {"": "MILLISECOND", "MS": "MILLISECOND", "S": "SECOND", "SEC": "SECOND",
               "M": "MINUTE", "MIN": "MINUTE", "H": "HOUR"}  # fmt: skip
    unit = aliases.get(unit, unit.rstrip("S") if unit.endswith("S") else unit)
    if m is None or unit not in _UNITS_MS:
        raise StatementError(
            f"{what} = {text!r}: give milliseconds (5000), INTERVAL '5' SECOND or '5 seconds'"
        )
    return int(m[1]) * _UNITS_MS[unit]


def _query_option(tokens: _Tokens, key: str) -> str:
    """One option value: a quoted string, a number, or (allowed_lateness) an INTERVAL."""
    if tokens.accept("INTERVAL"):
        amount = tokens.string("the interval amount, like '5'")
        unit = tokens.peek_word()
        if unit is None:
            raise StatementError(f"expected an interval unit {tokens.where()}")
        tokens.i += 1
        return f"{amount} {unit}"
    if tokens.i < len(tokens.items) and tokens.items[tokens.i][0] == "number":
        return str(tokens.number(f"the value of {key}"))
    return tokens.string(f"the value of {key}")


def _create_query(text: str, prefix: str, select: str) -> CreateQuery:
    tokens = _Tokens(prefix)
    tokens.i = 1
    kind = "stream"
    if tokens.accept("MATERIALIZED"):
        tokens.expect("VIEW")
        kind = "view"
    else:
        tokens.expect("STREAM")
    if_not_exists = tokens.accept("IF")
    if if_not_exists:
        tokens.expect("NOT")
        tokens.expect("EXISTS")
    name = tokens.name(f"the {kind}'s name")
    if name.startswith("_"):
        raise StatementError(f"{kind} {name!r}: names starting with '_' are reserved")
    allowed = VIEW_OPTIONS if kind == "view" else STREAM_QUERY_OPTIONS
    raw: dict[str, str] = {}
    if tokens.accept("WITH"):
        tokens.expect_punct("(")
        while True:
            key = tokens.name("an option name").lower()
            if key not in allowed:
                what = "materialized view" if kind == "view" else "stream query"
                raise StatementError(
                    f"unknown option {key!r} of a {what}: the options are {', '.join(allowed)}"
                )
            if key in raw:
                raise StatementError(f"option {key!r} is given twice")
            tokens.expect_punct("=")
            raw[key] = _query_option(tokens, key)
            if tokens.accept_punct(")"):
                break
            tokens.expect_punct(",")
    tokens.end()
    if not select:
        raise StatementError(f"{kind} {name!r}: the query after AS is missing")
    if not re.match(r"(?is)\s*(SELECT|WITH)\b", select):
        raise StatementError(
            f"{kind} {name!r}: AS must be followed by a SELECT, not {select[:20]!r}"
        )
    options: dict[str, str] = {}
    if "allowed_lateness" in raw:
        options["allowed_lateness_ms"] = str(
            _interval_ms(raw["allowed_lateness"], "allowed_lateness")
        )
    if raw.get("dead_letter_topic") is not None:
        if not raw["dead_letter_topic"]:
            raise StatementError("dead_letter_topic must name a topic")
        options["dead_letter_topic"] = raw["dead_letter_topic"]
    if kind == "stream":
        options["topic"] = raw.get("topic") or name
        fmt = raw.get("format", "json").lower()
        if fmt not in FORMATS:
            raise StatementError(
                f"format {fmt!r} is not supported: use one of {', '.join(FORMATS)}"
            )
        options["format"] = fmt
        partitions_text = raw.get("partitions", str(DEFAULT_OUTPUT_PARTITIONS))
        if not partitions_text.isdigit() or not 1 <= int(partitions_text) <= MAX_OUTPUT_PARTITIONS:
            raise StatementError(
                f"partitions = {partitions_text!r}: give a whole number from 1 to "
                f"{MAX_OUTPUT_PARTITIONS}"
            )
        options["partitions"] = partitions_text
    return CreateQuery(kind, name, select, options, if_not_exists)
