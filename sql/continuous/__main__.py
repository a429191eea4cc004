"""`python3 -m sql.continuous run NAME [--plan FILE.py:FUNCTION]`: run one continuous query.

Runs the query ``NAME`` (the catalog entry ``CREATE MATERIALIZED VIEW`` / ``CREATE STREAM ...
AS`` stored) until it is dropped or the process is stopped (SIGTERM/SIGINT: it stops between
steps, without committing what it has not committed: a restart redoes it). Settings come from
the ``STREAMHOUSE_*`` environment like every StreamHouse process (metadata store, object
store, ``sql_checkpoint_interval_ms``, ``sql_max_step_bytes``); logs go to stderr, one line
per event. See ``sql.continuous.runner`` for what it does.

``--plan FILE.py:FUNCTION`` (or ``module:FUNCTION``) plans the query with
``FUNCTION(definition, relations, topic_names) -> ContinuousPlan`` instead of the SQL planner
(for tests and experiments with hand-written plans).

Exit status: 0 the query is not defined (dropped) or the process was stopped; 1 the query
failed (the reason is logged; a restart resumes from the last checkpoint); 2 a bad argument
or setting; 3 another runner claimed the query (this one was fenced off).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import logging
import pathlib
import signal
import sys

import uvloop

from metadata.async_store import AsyncMetadata
from metadata.errors import MetadataError
from sql.continuous.runner import EXIT_FAILED, PlanFactory, QueryRunner, RunnerError, default_plan
from sql.continuous.source import SourceError
from streamhouse import objectstore
from streamhouse.config import ConfigError, Settings, load_settings
from streamhouse.objectstore import ObjectStoreConfigError
from streamhouse.process import describe_failure

log = logging.getLogger("sql.continuous")


def load_factory(spec: str) -> PlanFactory:
    """``FILE.py:FUNCTION`` or ``module:FUNCTION`` -> the function."""
    where, _, func = spec.rpartition(":")
    if not where or not func:
        raise ValueError(f"--plan {spec!r}: expected FILE.py:FUNCTION or module:FUNCTION")
    if where.endswith(".py"):
        path = pathlib.Path(where)
        module_spec = importlib.util.spec_from_file_location(f"_plan_{path.stem}", path)
        if module_spec is None or module_spec.loader is None or not path.exists():
            raise ValueError(f"--plan {spec!r}: no Python file {where}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    factory = getattr(module, func, None)
    if not callable(factory):
        raise ValueError(f"--plan {spec!r}: {where} has no function {func}")
    return factory  # type: ignore[no-any-return]


async def run(settings: Settings, name: str, factory: PlanFactory) -> int:
    store = objectstore.open_object_store(settings.object_store_url, settings.store_timeout_ms)
    meta = await AsyncMetadata.open(
        settings.metadata_target,
        busy_timeout_ms=settings.produce_timeout_ms,
        forbid_loop_calls=settings.debug_loop_calls,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        runner = QueryRunner(settings, meta, store, name, factory)
        code = await runner.run(stop)
        if stop.is_set():
            log.info("query %s: stopped by signal", name)
        return code
    except (RunnerError, SourceError) as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    except MetadataError as exc:
        log.error("query %s: the metadata store failed: %s; restart the runner", name, exc)
        return EXIT_FAILED
    finally:
        await meta.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python3 -m sql.continuous", description="Run one StreamHouse continuous query."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_cmd = sub.add_parser("run", help="run query NAME until it is dropped or stopped")
    run_cmd.add_argument("name", help="the query's name (SHOW QUERIES)")
    run_cmd.add_argument(
        "--plan", help="FILE.py:FUNCTION or module:FUNCTION planning the query (tests)"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"sql.continuous: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s sql-query %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        factory = load_factory(args.plan) if args.plan else default_plan
    except (ValueError, ImportError) as exc:
        print(f"sql.continuous: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        code = uvloop.run(run(settings, args.name, factory))
    except ObjectStoreConfigError as exc:
        print(f"sql.continuous: object store setting: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:
        log.error("query %s failed: %s", args.name, describe_failure(exc))
        code = EXIT_FAILED
    logging.shutdown()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
