"""`python3 -m lifecycle`: the supervised loop; `--once [--now-ms MS]`: one pass, then exit.

Exit status of ``--once``: 0 when the pass completed (its report is printed on stdout as one
JSON line), 1 when it failed (the reason is logged on stderr), 2 for a bad setting or
argument.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Coroutine
from typing import Any

import msgspec

from lifecycle.plan import Backoff
from lifecycle.runner import LifecyclePass, ObjectStoreFailure, PassReport
from metadata import MetadataUnavailableError
from metadata.async_store import AsyncMetadata
from streamhouse import objectstore
from streamhouse.config import Settings
from streamhouse.process import describe_failure, run_process

log = logging.getLogger("lifecycle")

# Pause after a failed pass: 1 s, doubling per failure in a row, at most 5 min.
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 300.0


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


async def _open(settings: Settings) -> tuple[AsyncMetadata, object]:
    store = objectstore.open_object_store(settings.object_store_url, settings.store_timeout_ms)
    meta = await AsyncMetadata.open(
        settings.metadata_target,
        busy_timeout_ms=settings.produce_timeout_ms,
        forbid_loop_calls=settings.debug_loop_calls,
    )
    return meta, store


async def run_once(settings: Settings, now_ms: int | None) -> None:
    meta, store = await _open(settings)
    try:
        clock = wall_clock_ms() if now_ms is None else now_ms
        try:
            report = await LifecyclePass(settings, meta, store).run(clock)
        except (ObjectStoreFailure, MetadataUnavailableError) as exc:
            log.error("pass failed: %s; nothing whose object may remain was forgotten", exc)
            raise SystemExit(1) from None
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        sys.stdout.flush()
    finally:
        await meta.close()


async def run_loop(settings: Settings, stop: asyncio.Event) -> None:
    if not settings.lifecycle_enabled:
        log.info("lifecycle disabled (STREAMHOUSE_LIFECYCLE_ENABLED=false): idle until stopped")
        await stop.wait()
        return
    meta, store = await _open(settings)
    runner = LifecyclePass(settings, meta, store)
    backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)
    log.info(
        "lifecycle ready: a pass every %d ms, grace %d ms, %d deletes/s, %d concurrent",
        settings.lifecycle_interval_ms,
        settings.lifecycle_grace_ms,
        settings.lifecycle_deletes_per_second,
        settings.lifecycle_delete_concurrency,
    )
    try:
        while not stop.is_set():
            pause = settings.lifecycle_interval_ms / 1000
            try:
                report = await _unless_stopped(runner.run(wall_clock_ms()), stop)
                if report is None:
                    return  # stopped mid-pass: the next start redoes what was left
            except (ObjectStoreFailure, MetadataUnavailableError) as exc:
                pause = backoff.failed()
                log.warning(
                    "pass stopped: %s; nothing whose object may remain was forgotten; "
                    "next try in %.1f s",
                    str(exc) if isinstance(exc, ObjectStoreFailure) else describe_failure(exc),
                    pause,
                )
            else:
                backoff.succeeded()
                if did_something(report):
                    log.info("pass: %s", msgspec.json.encode(report).decode())
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except TimeoutError:
                pass
    finally:
        await meta.close()


def did_something(report: PassReport) -> bool:
    """Whether a pass changed anything (such passes are logged)."""
    key, merged, expiry = report.key_compaction, report.compaction, report.expiry
    return any(
        (
            report.partitions_moved,
            report.segments_marked_dead,
            report.dead_objects_deleted,
            report.orphans_deleted,
            key is not None and (key.objects_written or key.switches_refused),
            merged is not None and (merged.objects_written or merged.switches_refused),
            expiry is not None and (expiry.producer_states_expired or expiry.group_offsets_expired),
        )
    )


async def _unless_stopped(
    pass_: Coroutine[Any, Any, PassReport], stop: asyncio.Event
) -> PassReport | None:
    """The pass's report, or None when `stop` was set first (the pass is then cancelled:
    every step is safe to cut short, see lifecycle/runner.py)."""
    task = asyncio.ensure_future(pass_)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python3 -m lifecycle",
        description="StreamHouse data lifecycle: retention, dead segments, orphan objects.",
    )
    parser.add_argument(
        "--once", action="store_true", help="run one pass, print its report (JSON), and exit"
    )
    parser.add_argument(
        "--now-ms",
        type=int,
        default=None,
        help="the pass's clock in Unix milliseconds (with --once; default: now)",
    )
    args = parser.parse_args(argv)
    if args.now_ms is not None and not args.once:
        parser.error("--now-ms moves the clock of one pass: use it with --once")
    if args.now_ms is not None and args.now_ms < 0:
        parser.error(f"--now-ms {args.now_ms} must be a Unix time in milliseconds (>= 0)")
    if args.once:

        async def once(settings: Settings, stop: asyncio.Event) -> None:
            await run_once(settings, args.now_ms)

        run_process("lifecycle", once)
    else:
        run_process("lifecycle", run_loop)


if __name__ == "__main__":
    main()
