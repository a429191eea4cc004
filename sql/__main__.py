"""`python3 -m sql query "SQL" [--format table|jsonl|csv] [--stats]`: one statement, then exit.

The statement runs against the StreamHouse the environment names (the same ``STREAMHOUSE_*``
settings as every process: metadata store, object store, data dir). Queries print their rows
on stdout in the chosen format; CREATE/DROP print one line. With ``--stats`` a JSON line on
stderr says what was read (partitions, block rows looked at, blocks and bytes read, batches
and records decoded, records that did not match their stream's schema, by stream); records
that did not match are always reported on stderr.

Exit status: 0 done, 1 the statement failed (the reason is on stderr), 2 a bad argument or
setting.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec

from metadata.async_store import AsyncMetadata
from metadata.errors import MetadataError
from sql.catalog import Catalog
from sql.engine import QueryResult, SqlEngine, SqlError
from sql.output import FORMATS, write_result
from streamhouse import objectstore
from streamhouse.config import ConfigError, Settings, load_settings
from streamhouse.objectstore import ObjectStoreConfigError


async def run_statement(settings: Settings, text: str) -> QueryResult:
    """Opens the stack's metadata and object store, runs ``text``, closes them."""
    store = objectstore.open_object_store(settings.object_store_url, settings.store_timeout_ms)
    meta = await AsyncMetadata.open(
        settings.metadata_target,
        busy_timeout_ms=settings.produce_timeout_ms,
        forbid_loop_calls=settings.debug_loop_calls,
    )
    try:
        engine = SqlEngine(meta, store, Catalog(meta), max_inflated=settings.max_batch_bytes)
        return await engine.execute(text)
    finally:
        await meta.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python3 -m sql", description="StreamHouse SQL over topics (one statement)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    query = sub.add_parser(
        "query",
        help="run one statement: SELECT ..., CREATE STREAM/TABLE, DROP, SHOW, DESCRIBE",
    )
    query.add_argument("sql", help="the statement")
    query.add_argument("--format", choices=FORMATS, default="table", help="output (table)")
    query.add_argument("--stats", action="store_true", help="what was read, as JSON on stderr")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"sql: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        result = asyncio.run(run_statement(settings, args.sql))
    except SqlError as exc:
        print(f"sql: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except MetadataError as exc:
        print(f"sql: the metadata store failed: {exc}; retry when it is back", file=sys.stderr)
        raise SystemExit(1) from None
    except ObjectStoreConfigError as exc:
        print(f"sql: object store setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if result.message is not None:
        print(result.message)
    if result.table is not None:
        write_result(result.table, args.format, sys.stdout)
    sys.stdout.flush()
    for name, count in sorted(result.stats.invalid_records.items()):
        print(
            f"sql: {count} record{'s' if count != 1 else ''} of {name} did not match its "
            "declared schema and were left out",
            file=sys.stderr,
        )
    if args.stats:
        print(msgspec.json.encode(result.stats).decode(), file=sys.stderr)


if __name__ == "__main__":
    main()
