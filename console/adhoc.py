"""Which statements the console's query form runs: reads only, one at a time.

Sans-I/O. The console writes nothing (no page action changes the stack), so the form takes one
statement that starts with a reading keyword (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, VALUES)
and refuses everything else (CREATE, DROP, INSERT, ...) with a message saying to use
`streamctl sql`. Statements are split by sqlglot's tokenizer, so a `;` inside a string literal
or a quoted name is not taken for a separator; one trailing `;` is allowed.
"""

from __future__ import annotations

from sqlglot.errors import TokenError
from sqlglot.tokens import Tokenizer, TokenType

__all__ = ["MAX_STATEMENT_CHARS", "READ_KEYWORDS", "StatementRefused", "read_only_statement"]

READ_KEYWORDS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "EXPLAIN", "VALUES")
MAX_STATEMENT_CHARS = 20_000


class StatementRefused(ValueError):
    pass


def read_only_statement(text: str) -> str:
    """The statement to run (stripped, without a trailing `;`); raises StatementRefused saying
    why it is not run."""
    statement = text.strip()
    if not statement:
        raise StatementRefused("type a SELECT statement to run")
    if len(statement) > MAX_STATEMENT_CHARS:
        raise StatementRefused(
            f"the statement has {len(statement)} characters; at most {MAX_STATEMENT_CHARS}"
        )
    try:
        tokens = Tokenizer().tokenize(statement)
    except TokenError as exc:
        raise StatementRefused(f"the statement does not parse: {exc}") from None
    while tokens and tokens[-1].token_type == TokenType.SEMICOLON:
        tokens.pop()
    if not tokens:
        raise StatementRefused("type a SELECT statement to run")
    if any(t.token_type == TokenType.SEMICOLON for t in tokens):
        raise StatementRefused("one statement at a time: remove the ';' between statements")
    first = tokens[0].text.upper()
    if first not in READ_KEYWORDS:
        raise StatementRefused(
            f"the console only reads: {first} statements are not run here (it runs "
            f"{', '.join(READ_KEYWORDS)}); use `streamctl sql` to change anything"
        )
    return statement[: tokens[-1].end + 1]
