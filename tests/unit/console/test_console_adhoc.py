"""console/adhoc.py: the query form runs one reading statement, nothing else."""

from __future__ import annotations

import pytest

from console.adhoc import StatementRefused, read_only_statement


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("select 1", "select 1"),
        ("  SELECT ';' FROM \"a;b\" ;  ", "SELECT ';' FROM \"a;b\""),
        ("WITH x AS (SELECT 1) SELECT * FROM x;", "WITH x AS (SELECT 1) SELECT * FROM x"),
        ("SHOW QUERIES", "SHOW QUERIES"),
    ],
)
def test_reads_are_run(text: str, expected: str) -> None:
    assert read_only_statement(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "type a SELECT"),
        (" ; ", "type a SELECT"),
        ("DROP QUERY top", "DROP statements are not run here"),
        ("CREATE STREAM s WITH (topic = 't') AS SELECT 1", "CREATE statements"),
        ("SELECT 1; DROP QUERY top", "one statement at a time"),
        ("SELECT 'unterminated", "does not parse"),
        ("SELECT " + "1," * 20_000 + "1", "at most"),
    ],
)
def test_everything_else_is_refused(text: str, reason: str) -> None:
    with pytest.raises(StatementRefused, match=reason):
        read_only_statement(text)
